//! Ordering a new file's writes on the FAT of the ESP.
//!
//! Linux's vfat writes a file's data, its cluster chain in the FAT and its
//! directory entry (start cluster and size, at inode writeback) all inside one
//! `fsync`, with a single cache flush at its end: a disk that loses power with
//! its write cache full may keep the directory entry and lose the FAT sectors.
//! The entry then names clusters the FAT calls free (`fsck.fat`: "Contains a
//! free cluster"): the next write on the ESP may hand them to another file,
//! and removing the leftover file (as berth does with a cut install's
//! temporaries) frees clusters it does not own — or fails and remounts the
//! ESP read-only. The crash-state test (`tests/tests/crash_states.rs`) found
//! such states in the temporaries of an install.
//!
//! [`flush_device_of`] puts a cache flush in between: called after a new
//! file's data is written and before its `fsync`, it writes the block
//! device's dirty buffers — the FAT sectors of the new chain, and the file's
//! directory entry as it still is on disk (no clusters, size 0) — and flushes
//! the cache. The `fsync` that follows then only writes the data and points
//! the entry at a chain that is already durable. A cut in between leaves an
//! empty file and a chain no entry reaches: clusters leaked until `fsck`, never
//! shared.
//!
//! Removing a file has the opposite order to keep: its directory entry gone
//! before its clusters are free. vfat frees them when the inode is evicted,
//! and a folder's `fsync` writes the FAT with the folder's sectors, so the
//! files berth removes on the ESP are held open ([`File::open`]) until the
//! folder's `fsync` made the removal durable: the clusters are freed only
//! after, when the handle is dropped. (A rename over a file removes it the
//! same way; berth never renames over a file on the ESP.)

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The device node of the block device holding `path`'s file system, found
/// through sysfs (`/sys/dev/block/MAJ:MIN/uevent` names it); `None` for a file
/// system on no block device (tmpfs, overlay).
pub fn device_of(path: &Path) -> Option<PathBuf> {
    let dev = fs::metadata(path).ok()?.dev();
    // The glibc/musl encoding of dev_t.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let uevent = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(Path::new("/dev").join(name))
}

/// Writes the dirty buffers of the block device holding `path` and flushes its
/// cache (`fsync` of the device node); see the module docs. Returns `false`
/// when `path` is on no block device (nothing to order) or one this process
/// may not open.
pub fn flush_device_of(path: &Path) -> io::Result<bool> {
    let Some(device) = device_of(path) else {
        return Ok(false);
    };
    let node = match File::open(&device) {
        Ok(node) => node,
        // Not ours to open (a test's sandbox): the writes stay unordered, as
        // they were before this flush was added.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(false),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("open {}: {e}", device.display()),
            ))
        }
    };
    node.sync_all()
        .map_err(|e| io::Error::new(e.kind(), format!("fsync {}: {e}", device.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_on_no_block_device_has_nothing_to_order() {
        // /proc is on no block device, whatever the machine.
        assert_eq!(device_of(Path::new("/proc/self")), None);
        assert!(!flush_device_of(Path::new("/proc/self")).expect("no error"));
    }
}
