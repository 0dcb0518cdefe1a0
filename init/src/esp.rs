//! The EFI system partition: found as the partition labelled `esp` on the disk
//! that holds the root partition (sysfs `uevent` carries `PARTNAME`), mounted as
//! vfat. The main stage mounts it read-write on `/efi` for the boot assessment and
//! the device agent; the early stage mounts it read-only for a moment to read the
//! booted entry's boot counter when it refuses a slot.

use std::path::{Path, PathBuf};

use berth_updater::entries::{Counter, EspState};
use berth_updater::layout::{ESP_LABEL, ESP_MOUNT};
use berth_updater::Slot;
use nix::mount::{umount2, MntFlags, MsFlags};

use crate::blockdev::{self, Roots};
use crate::cmdline;
use crate::mounts;

/// vfat options: the code pages the initramfs has modules for (not the kernel's
/// defaults, which may name one it lacks), and `flush`, so every file is written
/// out when it is closed: a boot entry renamed by the assessment does not wait in
/// the page cache for a power cut. The updater's `fsync` of file and folder does
/// the rest.
pub const VFAT_OPTIONS: &str = "codepage=437,iocharset=iso8859-1,shortname=mixed,flush";

/// The device node of the partition labelled `label` on the same disk as the
/// partition whose node is `partition`; `None` when there is none.
pub fn sibling_by_label(roots: &Roots, partition: &Path, label: &str) -> Option<PathBuf> {
    let name = partition.file_name()?.to_str()?;
    let own = std::fs::canonicalize(roots.sys.join("class/block").join(name)).ok()?;
    let disk = own.parent()?;
    let mut children: Vec<PathBuf> = std::fs::read_dir(disk)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("partition").is_file())
        .collect();
    children.sort();
    children.into_iter().find_map(|dir| {
        let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
        let found = uevent
            .lines()
            .any(|line| line.strip_prefix("PARTNAME=") == Some(label));
        let sys_name = dir.file_name()?.to_str()?.to_string();
        found.then(|| blockdev::device_node(&dir, &roots.dev, &sys_name))
    })
}

/// The ESP's device node, found next to the root partition named on the command
/// line.
pub fn find() -> Result<PathBuf, String> {
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|e| e.to_string())?;
    let partuuid =
        cmdline::root_partuuid(&cmdline).ok_or("the command line names no root=PARTUUID=")?;
    let roots = Roots::system();
    let mut notes = Vec::new();
    let root = blockdev::find_partition(&roots, partuuid, &mut notes)
        .ok_or_else(|| format!("root partition {partuuid} not found ({})", notes.join("; ")))?;
    sibling_by_label(&roots, &root, ESP_LABEL).ok_or_else(|| {
        format!(
            "no partition labelled {ESP_LABEL:?} on the disk of {}",
            root.display()
        )
    })
}

/// Mounts the ESP on [`ESP_MOUNT`] (read-write unless `read_only`).
pub fn mount(read_only: bool) -> Result<PathBuf, String> {
    let node = find()?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let target = Path::new(ESP_MOUNT);
    mounts::mount_on_dir(
        &node.to_string_lossy(),
        target,
        "vfat",
        flags,
        Some(VFAT_OPTIONS),
    )
    .map_err(|e| e.to_string())?;
    Ok(node)
}

/// What the boot loader does after a reboot, as far as the booted slot's entry
/// tells: its counter (`None`: blessed, or no entry) and whether the other slot
/// has an entry systemd-boot can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    pub counter: Option<Counter>,
    pub other_can_boot: bool,
}

/// Reads the booted slot's entry from the ESP mounted at `esp`.
pub fn counting(esp: &Path, slot: Slot) -> Result<Counting, String> {
    let state = EspState::read(esp).map_err(|e| e.to_string())?;
    Ok(Counting {
        counter: state.slot(slot).and_then(|entry| entry.counter()),
        other_can_boot: state
            .slot(slot.other())
            .is_some_and(|entry| entry.can_boot()),
    })
}

/// For the early stage: mounts the ESP read-only for a moment and reads the booted
/// slot's entry.
pub fn counting_now() -> Result<Counting, String> {
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|e| e.to_string())?;
    let slot = cmdline
        .slot
        .ok_or("the command line names no berth.slot=")?;
    mount(true)?;
    let result = counting(Path::new(ESP_MOUNT), slot);
    if let Err(errno) = umount2(ESP_MOUNT, MntFlags::MNT_DETACH) {
        log!("unmounting {ESP_MOUNT}: {errno}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn finds_the_esp_next_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        let parts = [
            ("vda", "vda1", "esp"),
            ("vda", "vda2", "root-a"),
            ("vdb", "vdb1", "esp"),
        ];
        for (disk, part, label) in parts {
            let path = sys.join("devices/virtio/block").join(disk).join(part);
            fs::create_dir_all(&path).unwrap();
            fs::write(path.join("partition"), &part[3..]).unwrap();
            fs::write(
                path.join("uevent"),
                format!("MAJOR=254\nDEVNAME={part}\nDEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
            fs::create_dir_all(sys.join("class/block")).unwrap();
            std::os::unix::fs::symlink(&path, sys.join("class/block").join(part)).unwrap();
        }
        // The disk itself has a uevent but no `partition` file.
        fs::write(
            sys.join("devices/virtio/block/vda/uevent"),
            "DEVNAME=vda\nDEVTYPE=disk\n",
        )
        .unwrap();
        let roots = Roots {
            sys: sys.clone(),
            dev: dev.clone(),
        };
        assert_eq!(
            sibling_by_label(&roots, &dev.join("vda2"), "esp"),
            Some(dev.join("vda1"))
        );
        assert_eq!(sibling_by_label(&roots, &dev.join("vda2"), "data"), None);
        assert_eq!(sibling_by_label(&roots, &dev.join("vdc1"), "esp"), None);
    }

    #[test]
    fn counting_reads_both_slots() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        fs::create_dir_all(esp.join("loader/entries")).unwrap();
        fs::create_dir_all(esp.join("berth/a")).unwrap();
        fs::write(esp.join("berth/a/vmlinuz"), "k").unwrap();
        fs::write(
            esp.join("loader/entries/berth-a.conf"),
            "title berth x 1.0.0\nversion 1\nsort-key berth\nlinux /berth/a/vmlinuz\n",
        )
        .unwrap();
        fs::write(
            esp.join("loader/entries/berth-b+2-1.conf"),
            "title berth x 1.1.0\nversion 2\nsort-key berth\nlinux /berth/b/vmlinuz\n",
        )
        .unwrap();
        let b = counting(esp, Slot::B).unwrap();
        assert_eq!(b.counter, Some(Counter { left: 2, done: 1 }));
        assert!(b.other_can_boot);
        let a = counting(esp, Slot::A).unwrap();
        assert_eq!(a.counter, None);
        assert!(!a.other_can_boot, "slot b's kernel is missing");
    }
}
