//! Finding a partition by its PARTUUID without udev: list the whole disks in sysfs,
//! read each one's GPT, and map the matching entry's number to the partition's
//! device node (created by devtmpfs).
//!
//! The sysfs and /dev roots are parameters so tests can point them at a fake tree.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Disk name prefixes never searched: loop and RAM disks hold no berth partitions,
/// and opening an empty CD-ROM or floppy drive can stall for seconds.
const SKIPPED_DISKS: [&str; 5] = ["loop", "ram", "zram", "sr", "fd"];

/// Where to look: the sysfs mount and the device node folder.
#[derive(Debug, Clone)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Roots {
    /// The real ones, `/sys` and `/dev`.
    pub fn system() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// A partition that did not show up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// No disk carried a partition with this PARTUUID before the deadline.
    #[error("no partition with PARTUUID={partuuid} after {:.1} s ({seen})", waited.as_secs_f64())]
    NotFound {
        partuuid: String,
        waited: Duration,
        /// What the last scan saw, for the console.
        seen: String,
    },
}

/// Waits up to `timeout`, scanning every `interval`, for the partition with this
/// PARTUUID, and returns its device node.
pub fn wait_for_partition(
    roots: &Roots,
    partuuid: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<PathBuf, BlockError> {
    let start = Instant::now();
    loop {
        let mut notes = Vec::new();
        if let Some(node) = find_partition(roots, partuuid, &mut notes) {
            return Ok(node);
        }
        if start.elapsed() >= timeout {
            return Err(BlockError::NotFound {
                partuuid: partuuid.to_string(),
                waited: start.elapsed(),
                seen: if notes.is_empty() {
                    "no disks".to_string()
                } else {
                    notes.join("; ")
                },
            });
        }
        std::thread::sleep(interval);
    }
}

/// One scan: the device node of the partition with this PARTUUID, if a disk has it
/// and its node exists yet. `notes` collects what each disk looked like, for the
/// error message when the partition never shows up.
pub fn find_partition(roots: &Roots, partuuid: &str, notes: &mut Vec<String>) -> Option<PathBuf> {
    let block = roots.sys.join("block");
    let entries = match std::fs::read_dir(&block) {
        Ok(entries) => entries,
        Err(err) => {
            notes.push(format!("{}: {err}", block.display()));
            return None;
        }
    };
    let mut disks: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !SKIPPED_DISKS.iter().any(|prefix| name.starts_with(prefix)))
        .collect();
    disks.sort();
    for disk in disks {
        let sys_dir = block.join(&disk);
        let node = device_node(&sys_dir, &roots.dev, &disk);
        let number = match partition_number(&sys_dir, &node, partuuid) {
            Ok(Some(number)) => number,
            Ok(None) => {
                notes.push(format!("{disk}: no such partition"));
                continue;
            }
            Err(note) => {
                notes.push(format!("{disk}: {note}"));
                continue;
            }
        };
        match partition_node(&sys_dir, &roots.dev, number) {
            Some(node) if node.exists() => return Some(node),
            Some(node) => notes.push(format!("{disk}: {} not created yet", node.display())),
            None => notes.push(format!("{disk}: partition {number} not in sysfs yet")),
        }
    }
    None
}

/// Reads the disk's GPT and returns the number of the entry with this PARTUUID.
fn partition_number(sys_dir: &Path, node: &Path, partuuid: &str) -> Result<Option<u32>, String> {
    let block_size = read_trimmed(&sys_dir.join("queue/logical_block_size"))
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(512);
    let mut file = File::open(node).map_err(|err| format!("{}: {err}", node.display()))?;
    let parts = berth_updater::gpt::read_partitions_with_block(&mut file, block_size)
        .map_err(|err| err.to_string())?;
    Ok(parts
        .iter()
        .find(|part| part.part_guid.eq_ignore_ascii_case(partuuid))
        .map(|part| part.number))
}

/// The device node of partition `number` of the disk whose sysfs folder is
/// `disk_dir`: the child folder whose `partition` file holds that number.
fn partition_node(disk_dir: &Path, dev: &Path, number: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(disk_dir).ok()?;
    for entry in entries.filter_map(|entry| entry.ok()) {
        let path = entry.path();
        let Some(found) = read_trimmed(&path.join("partition")) else {
            continue;
        };
        if found.parse::<u32>().ok() == Some(number) {
            let name = entry.file_name().to_string_lossy().into_owned();
            return Some(device_node(&path, dev, &name));
        }
    }
    None
}

/// A block device's node: `DEVNAME` from its uevent file, else its sysfs name
/// (with `!` standing for `/`, as the kernel does).
pub fn device_node(sys_dir: &Path, dev: &Path, sys_name: &str) -> PathBuf {
    let from_uevent = read_trimmed(&sys_dir.join("uevent")).and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("DEVNAME="))
            .map(str::to_string)
    });
    let name = from_uevent.unwrap_or_else(|| sys_name.replace('!', "/"));
    dev.join(name.trim_start_matches('/'))
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    const ROOT_UUID: &str = "2a5e3f43-6c1b-4d2e-9a57-0d9e8f1c2b3a";
    const DATA_UUID: &str = "7b6a5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";

    /// A fake sysfs + /dev: disk `vda` is a real file with a GPT made by sgdisk
    /// (esp, root, data), `loop0` is skipped, `vdb` has no GPT.
    fn fake_tree(with_partition_nodes: bool) -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        let disk = dev.join("vda");
        let file = File::create(&disk).unwrap();
        file.set_len(8 * 1024 * 1024).unwrap();
        drop(file);
        let status = Command::new("sgdisk")
            .arg("-o")
            .args(["-n", "1:2048:+1M", "-c", "1:esp"])
            .args([
                "-n",
                "2:0:+2M",
                "-c",
                "2:root-a",
                "-u",
                &format!("2:{ROOT_UUID}"),
            ])
            .args([
                "-n",
                "3:0:0",
                "-c",
                "3:data",
                "-u",
                &format!("3:{DATA_UUID}"),
            ])
            .arg(&disk)
            .output()
            .expect("sgdisk is installed");
        assert!(status.status.success(), "{status:?}");

        fs::create_dir_all(sys.join("block/vda/queue")).unwrap();
        fs::write(sys.join("block/vda/queue/logical_block_size"), "512\n").unwrap();
        fs::write(
            sys.join("block/vda/uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        for n in 1..=3 {
            let part = sys.join(format!("block/vda/vda{n}"));
            fs::create_dir_all(&part).unwrap();
            fs::write(part.join("partition"), format!("{n}\n")).unwrap();
            fs::write(
                part.join("uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME=vda{n}\nDEVTYPE=partition\nPARTN={n}\n"),
            )
            .unwrap();
            if with_partition_nodes {
                fs::write(dev.join(format!("vda{n}")), "").unwrap();
            }
        }
        // A disk without a partition table, and a loop device that must be skipped
        // (its node does not even exist).
        fs::create_dir_all(sys.join("block/vdb")).unwrap();
        fs::write(dev.join("vdb"), vec![0u8; 64 * 1024]).unwrap();
        fs::create_dir_all(sys.join("block/loop0")).unwrap();
        (dir, Roots { sys, dev })
    }

    #[test]
    fn finds_partitions_by_partuuid() {
        let (_dir, roots) = fake_tree(true);
        let mut notes = Vec::new();
        assert_eq!(
            find_partition(&roots, ROOT_UUID, &mut notes),
            Some(roots.dev.join("vda2"))
        );
        assert_eq!(
            find_partition(&roots, &DATA_UUID.to_ascii_uppercase(), &mut notes),
            Some(roots.dev.join("vda3"))
        );
    }

    #[test]
    fn unknown_partuuid_is_reported_per_disk() {
        let (_dir, roots) = fake_tree(true);
        let mut notes = Vec::new();
        let missing = "00000000-0000-0000-0000-000000000001";
        assert_eq!(find_partition(&roots, missing, &mut notes), None);
        let text = notes.join("; ");
        assert!(text.contains("vda: no such partition"), "{text}");
        assert!(text.contains("vdb: no GPT header"), "{text}");
        assert!(!text.contains("loop0"), "{text}");
    }

    #[test]
    fn waits_for_the_node_and_then_times_out() {
        let (_dir, roots) = fake_tree(false);
        let err = wait_for_partition(
            &roots,
            ROOT_UUID,
            Duration::from_millis(30),
            Duration::from_millis(10),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(ROOT_UUID), "{text}");
        assert!(text.contains("vda2 not created yet"), "{text}");
    }

    #[test]
    fn node_appearing_later_is_found() {
        let (_dir, roots) = fake_tree(false);
        let node = roots.dev.join("vda2");
        let creator = {
            let node = node.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                fs::write(node, "").unwrap();
            })
        };
        let found = wait_for_partition(
            &roots,
            ROOT_UUID,
            Duration::from_secs(10),
            Duration::from_millis(5),
        )
        .unwrap();
        creator.join().unwrap();
        assert_eq!(found, node);
    }

    #[test]
    fn device_node_prefers_devname() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Path::new("/dev");
        assert_eq!(
            device_node(dir.path(), dev, "cciss!c0d0"),
            dev.join("cciss/c0d0")
        );
        fs::write(dir.path().join("uevent"), "DEVNAME=mapper/x\n").unwrap();
        assert_eq!(device_node(dir.path(), dev, "dm-0"), dev.join("mapper/x"));
    }

    #[test]
    fn missing_sysfs_is_a_note() {
        let roots = Roots {
            sys: PathBuf::from("/nonexistent/sys"),
            dev: PathBuf::from("/nonexistent/dev"),
        };
        let mut notes = Vec::new();
        assert_eq!(find_partition(&roots, ROOT_UUID, &mut notes), None);
        assert!(notes[0].contains("/nonexistent/sys/block"), "{notes:?}");
    }
}
