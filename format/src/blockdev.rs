//! Finding berth's partitions without udev: list the whole disks in sysfs, read
//! each one's GPT, and map entries to their device nodes (created by devtmpfs).
//!
//! The sysfs and /dev roots are parameters so tests can point them at a fake tree.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::gpt::{self, GptPartition};
use crate::layout::Slot;

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

/// A disk that was looked for and not found.
#[derive(Debug, thiserror::Error)]
#[error("no disk has a partition with PARTUUID={partuuid} ({seen})")]
pub struct NotFound {
    pub partuuid: String,
    /// What the scan saw, disk by disk.
    pub seen: String,
}

/// A partition that did not show up in time.
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
/// PARTUUID, and returns its device node (the early stage waiting for the root
/// disk to appear).
pub fn wait_for_partition(
    roots: &Roots,
    partuuid: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<PathBuf, BlockError> {
    wait_for_partition_with(roots, partuuid, timeout, interval, &mut |_| {})
}

/// [`wait_for_partition`], handing the disks of every scan that did not find
/// the partition to `unseen` (where the init repairs a disk whose primary GPT
/// is damaged: the kernel made no partitions of it).
pub fn wait_for_partition_with(
    roots: &Roots,
    partuuid: &str,
    timeout: Duration,
    interval: Duration,
    unseen: &mut dyn FnMut(&[Disk]),
) -> Result<PathBuf, BlockError> {
    let start = Instant::now();
    loop {
        let mut notes = Vec::new();
        let disks = scan(roots, &mut notes);
        if let Some(node) = partition_in(&disks, partuuid, &mut notes) {
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
        unseen(&disks);
        std::thread::sleep(interval);
    }
}

/// One scan: the device node of the partition with this PARTUUID, if a disk has it
/// and its node exists yet. `notes` collects what each disk looked like, for the
/// error message when the partition never shows up.
pub fn find_partition(roots: &Roots, partuuid: &str, notes: &mut Vec<String>) -> Option<PathBuf> {
    let disks = scan(roots, notes);
    partition_in(&disks, partuuid, notes)
}

/// The device node of the partition with this PARTUUID among `disks`.
fn partition_in(disks: &[Disk], partuuid: &str, notes: &mut Vec<String>) -> Option<PathBuf> {
    for disk in disks {
        match disk.by_partuuid(partuuid) {
            None => notes.push(format!("{}: no such partition", disk.name)),
            Some(part) => match &part.node {
                Some(node) if node.exists() => return Some(node.clone()),
                Some(node) => notes.push(format!(
                    "{}: {} not created yet{}",
                    disk.name,
                    node.display(),
                    match disk.table {
                        gpt::TableCopy::Backup => " (only the backup GPT is valid)",
                        gpt::TableCopy::Primary => "",
                    }
                )),
                None => notes.push(format!(
                    "{}: partition {} not in sysfs yet{}",
                    disk.name,
                    part.gpt.number,
                    match disk.table {
                        gpt::TableCopy::Backup => " (only the backup GPT is valid)",
                        gpt::TableCopy::Primary => "",
                    }
                )),
            },
        }
    }
    None
}

/// A whole disk with a GPT.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Kernel name, `vda`.
    pub name: String,
    /// Device node, `/dev/vda`.
    pub node: PathBuf,
    /// Logical block size in bytes.
    pub block_size: u64,
    pub partitions: Vec<Partition>,
    /// Which copy of the GPT the partitions were read from: the backup when
    /// the primary is damaged (the kernel then creates no partition nodes).
    pub table: gpt::TableCopy,
}

/// One GPT entry of a disk, with its device node when the kernel created one.
#[derive(Debug, Clone)]
pub struct Partition {
    pub gpt: GptPartition,
    /// `/dev/vda3`; `None` when sysfs has no such partition (yet).
    pub node: Option<PathBuf>,
}

impl Partition {
    /// Size in bytes.
    pub fn size(&self, block_size: u64) -> u64 {
        self.gpt.size_bytes(block_size)
    }
}

impl Disk {
    /// The partition with this label (GPT name).
    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|part| part.gpt.label == label)
    }

    /// The slot whose root partition has this PARTUUID (any case), by the
    /// partition's GPT label (`root-a`, `root-b`): the slot a system booted from
    /// `root=PARTUUID=…` really runs, whatever else its command line says.
    pub fn slot_of(&self, partuuid: &str) -> Option<Slot> {
        let label = &self.by_partuuid(partuuid)?.gpt.label;
        Slot::ALL
            .into_iter()
            .find(|slot| slot.partition_label() == label)
    }

    /// The partition with this PARTUUID (any case).
    pub fn by_partuuid(&self, partuuid: &str) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|part| part.gpt.part_guid.eq_ignore_ascii_case(partuuid))
    }
}

/// The disk holding the partition with this PARTUUID.
pub fn disk_with_partuuid(roots: &Roots, partuuid: &str) -> Result<Disk, NotFound> {
    let mut notes = Vec::new();
    for disk in scan(roots, &mut notes) {
        if disk.by_partuuid(partuuid).is_some() {
            return Ok(disk);
        }
        notes.push(format!("{}: no such partition", disk.name));
    }
    Err(NotFound {
        partuuid: partuuid.to_string(),
        seen: if notes.is_empty() {
            "no disks".to_string()
        } else {
            notes.join("; ")
        },
    })
}

/// Every whole disk with a readable GPT, sorted by name. `notes` collects why
/// other disks were passed over.
pub fn scan(roots: &Roots, notes: &mut Vec<String>) -> Vec<Disk> {
    let block = roots.sys.join("block");
    let entries = match std::fs::read_dir(&block) {
        Ok(entries) => entries,
        Err(err) => {
            notes.push(format!("{}: {err}", block.display()));
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !SKIPPED_DISKS.iter().any(|prefix| name.starts_with(prefix)))
        .collect();
    names.sort();
    let mut disks = Vec::new();
    for name in names {
        let sys_dir = block.join(&name);
        let node = device_node(&sys_dir, &roots.dev, &name);
        let block_size = read_trimmed(&sys_dir.join("queue/logical_block_size"))
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(crate::layout::SECTOR_SIZE);
        let table = File::open(&node)
            .map_err(|err| format!("{}: {err}", node.display()))
            .and_then(|mut file| {
                gpt::read_table(&mut file, block_size).map_err(|err| err.to_string())
            });
        match table {
            Ok(table) => {
                let copy = table.copy;
                let partitions = table
                    .partitions
                    .into_iter()
                    .map(|gpt| Partition {
                        node: partition_node(&sys_dir, &roots.dev, gpt.number),
                        gpt,
                    })
                    .collect();
                disks.push(Disk {
                    name,
                    node,
                    block_size,
                    partitions,
                    table: copy,
                });
            }
            Err(note) => notes.push(format!("{name}: {note}")),
        }
    }
    disks
}

/// The device node of partition `number` of the disk whose sysfs folder is
/// `disk_dir`: the child folder whose `partition` file holds that number.
pub fn partition_node(disk_dir: &Path, dev: &Path, number: u32) -> Option<PathBuf> {
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

/// Test kit: a fake sysfs + /dev tree with a real GPT disk image, for the tests of
/// this crate and of its users (the agent). Needs `sgdisk`; panics on failure.
#[doc(hidden)]
pub mod fake {
    use super::*;
    use std::fs;
    use std::process::Command;

    pub const ROOT_A_UUID: &str = "2a5e3f43-6c1b-4d2e-9a57-0d9e8f1c2b3a";
    pub const ROOT_B_UUID: &str = "3a5e3f43-6c1b-4d2e-9a57-0d9e8f1c2b3b";
    pub const DATA_UUID: &str = "7b6a5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";

    /// The tree inside `dir`: `vda` is a real file with a GPT made by sgdisk (esp,
    /// root-a, root-b, data; partition nodes are regular files unless
    /// `with_partition_nodes` is false, as before devtmpfs created them), `vdb` has
    /// no GPT, `loop0` is skipped.
    pub fn tree_in(dir: &Path, with_partition_nodes: bool) -> Roots {
        let sys = dir.join("sys");
        let dev = dir.join("dev");
        fs::create_dir_all(&dev).unwrap();
        let disk = dev.join("vda");
        File::create(&disk)
            .unwrap()
            .set_len(12 * 1024 * 1024)
            .unwrap();
        let out = Command::new("sgdisk")
            .arg("-o")
            .args(["-n", "1:2048:+1M", "-c", "1:esp"])
            .args(["-n", "2:0:+2M", "-c", "2:root-a"])
            .args(["-u", &format!("2:{ROOT_A_UUID}")])
            .args(["-n", "3:0:+2M", "-c", "3:root-b"])
            .args(["-u", &format!("3:{ROOT_B_UUID}")])
            .args(["-n", "4:0:0", "-c", "4:data"])
            .args(["-u", &format!("4:{DATA_UUID}")])
            .arg(&disk)
            .output()
            .expect("sgdisk is installed");
        assert!(out.status.success(), "{out:?}");
        fs::create_dir_all(sys.join("block/vda/queue")).unwrap();
        fs::write(sys.join("block/vda/queue/logical_block_size"), "512\n").unwrap();
        fs::write(sys.join("block/vda/uevent"), "DEVNAME=vda\nDEVTYPE=disk\n").unwrap();
        for n in 1..=4 {
            let part = sys.join(format!("block/vda/vda{n}"));
            fs::create_dir_all(&part).unwrap();
            fs::write(part.join("partition"), format!("{n}\n")).unwrap();
            fs::write(part.join("uevent"), format!("DEVNAME=vda{n}\nPARTN={n}\n")).unwrap();
            if with_partition_nodes {
                fs::write(dev.join(format!("vda{n}")), "").unwrap();
            }
        }
        fs::create_dir_all(sys.join("block/vdb")).unwrap();
        fs::write(dev.join("vdb"), vec![0u8; 64 * 1024]).unwrap();
        fs::create_dir_all(sys.join("block/loop0")).unwrap();
        Roots { sys, dev }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;

    fn tree() -> (tempfile::TempDir, Roots) {
        tree_with_nodes(true)
    }

    fn tree_with_nodes(with_partition_nodes: bool) -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = tree_in(dir.path(), with_partition_nodes);
        (dir, roots)
    }
    use super::*;

    #[test]
    fn a_root_partuuid_names_its_slot_by_label() {
        let (_dir, roots) = tree();
        let disk = disk_with_partuuid(&roots, ROOT_B_UUID).unwrap();
        assert_eq!(
            disk.slot_of(&ROOT_B_UUID.to_ascii_uppercase()),
            Some(Slot::B)
        );
        assert_eq!(disk.slot_of(ROOT_A_UUID), Some(Slot::A));
        assert_eq!(disk.slot_of(DATA_UUID), None);
        assert_eq!(disk.slot_of("00000000-0000-0000-0000-000000000000"), None);
    }

    #[test]
    fn finds_the_disk_and_its_partitions() {
        let (_dir, roots) = tree();
        let disk = disk_with_partuuid(&roots, &ROOT_A_UUID.to_ascii_uppercase()).unwrap();
        assert_eq!(disk.name, "vda");
        assert_eq!(disk.node, roots.dev.join("vda"));
        let b = disk.by_label("root-b").unwrap();
        assert_eq!(b.node, Some(roots.dev.join("vda3")));
        assert_eq!(b.gpt.part_guid, ROOT_B_UUID);
        assert_eq!(b.size(disk.block_size), 2 * 1024 * 1024);
        assert_eq!(
            disk.by_partuuid(DATA_UUID).unwrap().gpt.label,
            "data".to_string()
        );
    }

    #[test]
    fn unknown_partuuid_names_what_was_seen() {
        let (_dir, roots) = tree();
        let err = disk_with_partuuid(&roots, "00000000-0000-0000-0000-000000000001")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vda: no such partition"), "{err}");
        assert!(err.contains("vdb: no GPT header"), "{err}");
        assert!(!err.contains("loop0"), "{err}");
    }

    #[test]
    fn finds_partitions_by_partuuid() {
        let (_dir, roots) = tree();
        let mut notes = Vec::new();
        assert_eq!(
            find_partition(&roots, ROOT_B_UUID, &mut notes),
            Some(roots.dev.join("vda3"))
        );
        assert_eq!(
            find_partition(&roots, &DATA_UUID.to_ascii_uppercase(), &mut notes),
            Some(roots.dev.join("vda4"))
        );
    }

    #[test]
    fn waits_for_the_node_and_then_times_out() {
        let (_dir, roots) = tree_with_nodes(false);
        let err = wait_for_partition(
            &roots,
            ROOT_A_UUID,
            Duration::from_millis(30),
            Duration::from_millis(10),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(ROOT_A_UUID), "{err}");
        assert!(err.contains("vda2 not created yet"), "{err}");
    }

    #[test]
    fn node_appearing_later_is_found() {
        let (_dir, roots) = tree_with_nodes(false);
        let node = roots.dev.join("vda2");
        let creator = {
            let node = node.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(node, "").unwrap();
            })
        };
        let found = wait_for_partition(
            &roots,
            ROOT_A_UUID,
            Duration::from_secs(10),
            Duration::from_millis(5),
        )
        .unwrap();
        creator.join().unwrap();
        assert_eq!(found, node);
    }

    #[test]
    fn missing_sysfs_is_a_note() {
        let roots = Roots {
            sys: PathBuf::from("/nonexistent/sys"),
            dev: PathBuf::from("/nonexistent/dev"),
        };
        let mut notes = Vec::new();
        assert_eq!(find_partition(&roots, ROOT_A_UUID, &mut notes), None);
        assert!(notes[0].contains("/nonexistent/sys/block"), "{notes:?}");
    }

    #[test]
    fn device_node_prefers_devname() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Path::new("/dev");
        assert_eq!(
            device_node(dir.path(), dev, "cciss!c0d0"),
            dev.join("cciss/c0d0")
        );
        std::fs::write(dir.path().join("uevent"), "DEVNAME=mapper/x\n").unwrap();
        assert_eq!(device_node(dir.path(), dev, "dm-0"), dev.join("mapper/x"));
    }
}
