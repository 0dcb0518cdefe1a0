//! A disk whose primary GPT is damaged (a torn write, a bad block in LBA 1–33)
//! but whose backup at the disk's end is valid: the kernel makes no partitions
//! of it (it falls back to the backup only with `gpt` on its command line), so
//! the root would never appear. The early stage rewrites the primary from the
//! backup, syncs, and asks the kernel to read the table again — what UEFI
//! firmware does for its own use when it finds a damaged primary.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use berth_format::blockdev::Disk;
use berth_format::gpt::{self, TableCopy};

/// `BLKRRPART`, `_IO(0x12, 95)`: re-read the partition table (allowed while no
/// partition of the disk is open, as in the early stage).
const BLKRRPART: libc::Ioctl = 0x125f;

/// Rewrites the damaged primary table of `disk` from its backup and has the
/// kernel read it again. `Ok(false)`: the primary is valid, nothing was done.
pub fn repair(disk: &Disk) -> Result<bool, String> {
    if disk.table != TableCopy::Backup {
        return Ok(false);
    }
    let node = disk.node.display();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.node)
        .map_err(|err| format!("opening {node}: {err}"))?;
    if !gpt::repair_primary(&mut file, disk.block_size).map_err(|err| format!("{node}: {err}"))? {
        return Ok(false);
    }
    file.sync_all()
        .map_err(|err| format!("syncing {node}: {err}"))?;
    if file.metadata().is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    }) {
        // SAFETY: `file` is an open block device; BLKRRPART takes no argument.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART, 0) };
        if rc < 0 {
            return Err(format!(
                "{node}: the primary GPT was rewritten, but the kernel did not read it again (BLKRRPART: {})",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_damaged_primary_is_rewritten_from_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4 << 20))
            .unwrap();
        let made = Command::new("sgdisk")
            .args(["-n", "1:2048:0", "-c", "1:root-a"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let disk = |table| Disk {
            name: "test".into(),
            node: path.clone(),
            block_size: 512,
            partitions: Vec::new(),
            table,
        };
        assert_eq!(repair(&disk(TableCopy::Primary)), Ok(false));
        {
            use std::os::unix::fs::FileExt;
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[0u8; 512], 512).unwrap();
        }
        let read = gpt::read_table(&mut std::fs::File::open(&path).unwrap(), 512).unwrap();
        assert_eq!(read.copy, TableCopy::Backup);
        assert_eq!(repair(&disk(TableCopy::Backup)), Ok(true));
        let read = gpt::read_table(&mut std::fs::File::open(&path).unwrap(), 512).unwrap();
        assert_eq!(read.copy, TableCopy::Primary);
        assert_eq!(read.partitions[0].label, "root-a");
        let verify = Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .unwrap();
        // sgdisk names a damaged copy on stderr only.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            text.contains("No problems found") && !text.contains("ERROR"),
            "{text}"
        );
    }
}
