//! The EFI system partition: found as the partition labelled `esp` on the disk
//! that holds the root partition (sysfs `uevent` carries `PARTNAME`), mounted as
//! vfat. The main stage mounts it read-write on `/efi` for the boot assessment and
//! the device agent; the early stage mounts it read-only for a moment to read the
//! booted entry's boot counter when it refuses a slot.

use std::path::{Path, PathBuf};

use berth_format::entries::{Counter, EspState};
use berth_format::layout::{ESP_LABEL, ESP_MOUNT};
use berth_format::Slot;
use nix::mount::{umount2, MntFlags, MsFlags};

use crate::shared::cmdline;
use crate::shared::mounts;
use berth_format::blockdev::{self, Roots};

/// vfat options: the code pages the initramfs has modules for (not the kernel's
/// defaults, which may name one it lacks), and `flush`, so every file is written
/// out when it is closed: a boot entry renamed by the assessment does not wait in
/// the page cache for a power cut. The updater's `fsync` of file and folder does
/// the rest.
pub const VFAT_OPTIONS: &str = "codepage=437,iocharset=iso8859-1,shortname=mixed,flush";

/// The ESP's device node: the partition labelled `esp` on the disk that holds the
/// root partition named on the command line.
pub fn find() -> Result<PathBuf, String> {
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|e| e.to_string())?;
    let partuuid =
        cmdline::root_partuuid(&cmdline).ok_or("the command line names no root=PARTUUID=")?;
    let disk =
        blockdev::disk_with_partuuid(&Roots::system(), partuuid).map_err(|e| e.to_string())?;
    disk.by_label(ESP_LABEL)
        .and_then(|part| part.node.clone())
        .ok_or_else(|| {
            format!(
                "no partition labelled {ESP_LABEL:?} on {}",
                disk.node.display()
            )
        })
}

/// Mounts the ESP on [`ESP_MOUNT`] (read-write unless `read_only`).
pub fn mount(read_only: bool) -> Result<PathBuf, String> {
    let node = find()?;
    mount_node(&node, read_only)?;
    Ok(node)
}

/// Mounts the ESP's device node `node` on [`ESP_MOUNT`].
pub fn mount_node(node: &Path, read_only: bool) -> Result<(), String> {
    // noatime: reading entries must not write access dates to the FAT.
    let mut flags =
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
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
    .map_err(|e| e.to_string())
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
    let slot = cmdline::booted_slot(&Roots::system(), &cmdline)?;
    mount(true)?;
    let result = counting(Path::new(ESP_MOUNT), slot);
    if let Err(errno) = umount2(ESP_MOUNT, MntFlags::MNT_DETACH) {
        log!("unmounting {ESP_MOUNT}: {errno}");
    }
    result
}

/// Where the early stage records why it refused a slot and fell back to the
/// other one (on the ESP: the data partition is not mounted yet).
pub const FALLBACK_RECORD: &str = "berth/fallback.txt";

/// For the early stage, when the booted slot's root is refused although its
/// entry is blessed: mounts the ESP read-write, makes the other slot boot next
/// and records why in [`FALLBACK_RECORD`]. Returns the other slot.
pub fn fall_back(why: &str) -> Result<Slot, String> {
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|e| e.to_string())?;
    let slot = cmdline::booted_slot(&Roots::system(), &cmdline)?;
    mount(false)?;
    let result = fall_back_on(Path::new(ESP_MOUNT), slot, why);
    if let Err(errno) = umount2(ESP_MOUNT, MntFlags::MNT_DETACH) {
        log!("unmounting {ESP_MOUNT}: {errno}");
    }
    result
}

/// [`fall_back`] on the ESP mounted at `esp`: the record first, so a cut
/// before the switch leaves the reason and the same decision to take again.
fn fall_back_on(esp: &Path, slot: Slot, why: &str) -> Result<Slot, String> {
    let other = slot.other();
    let record = esp.join(FALLBACK_RECORD);
    berth_format::atomic::write_atomically(
        &record,
        format!("slot {slot} refused, slot {other} boots next: {why}\n").as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", record.display()))?;
    berth_format::entries::make_next(esp, other).map_err(|e| e.to_string())?;
    Ok(other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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

    #[test]
    fn a_refused_blessed_slot_falls_back_to_the_other_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path();
        fs::create_dir_all(esp.join("loader/entries")).unwrap();
        for slot in ["a", "b"] {
            fs::create_dir_all(esp.join("berth").join(slot)).unwrap();
            fs::write(esp.join("berth").join(slot).join("vmlinuz"), "k").unwrap();
        }
        fs::write(
            esp.join("loader/entries/berth-a.conf"),
            "title berth x 1.1.0\nversion 2\nsort-key berth\nlinux /berth/a/vmlinuz\n",
        )
        .unwrap();
        fs::write(
            esp.join("loader/entries/berth-b.conf"),
            "title berth x 1.0.0\nversion 1\nsort-key berth\nlinux /berth/b/vmlinuz\n",
        )
        .unwrap();
        assert_eq!(EspState::read(esp).unwrap().next_boot(), Some(Slot::A));
        let other = fall_back_on(esp, Slot::A, "root failed dm-verity").unwrap();
        assert_eq!(other, Slot::B);
        assert_eq!(EspState::read(esp).unwrap().next_boot(), Some(Slot::B));
        assert_eq!(
            fs::read_to_string(esp.join(FALLBACK_RECORD)).unwrap(),
            "slot a refused, slot b boots next: root failed dm-verity\n"
        );
    }
}
