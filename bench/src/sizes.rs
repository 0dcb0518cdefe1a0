//! Image sizes: the boot files, the root squashfs and the whole disk.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use berth_qemu::extract_direct_boot;

/// The sizes of one image, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub kernel: u64,
    pub initramfs: u64,
    /// The squashfs in root-a (its `bytes_used`), without the verity hash tree.
    pub root: u64,
    /// The disk image file: apparent length, and bytes allocated on the host's
    /// file system (`du`; the image is sparse).
    pub disk_apparent: u64,
    pub disk_allocated: u64,
}

impl Sizes {
    /// What the minimal-image goal counts: kernel + initramfs + root.
    pub fn boot_set(&self) -> u64 {
        self.kernel + self.initramfs + self.root
    }
}

/// Measures `image`.
pub fn measure(image: &Path) -> anyhow::Result<Sizes> {
    let dir = tempfile::tempdir()?;
    let direct = extract_direct_boot(image, dir.path())?;
    let meta = fs::metadata(image)?;
    Ok(Sizes {
        kernel: fs::metadata(&direct.kernel)?.len(),
        initramfs: fs::metadata(&direct.initrd)?.len(),
        root: squashfs_bytes(image).with_context(|| format!("root-a of {}", image.display()))?,
        disk_apparent: meta.len(),
        disk_allocated: meta.blocks() * 512,
    })
}

/// `bytes_used` from the squashfs superblock at the start of root-a.
fn squashfs_bytes(image: &Path) -> anyhow::Result<u64> {
    let mut file = File::open(image)?;
    let parts = berth_format::gpt::read_partitions(&mut file)?;
    let part = parts
        .iter()
        .find(|p| p.label == "root-a")
        .context("no root-a partition")?;
    let mut sb = [0u8; 96];
    file.seek(SeekFrom::Start(part.first_lba * 512))?;
    file.read_exact(&mut sb)?;
    parse_superblock(&sb)
}

fn parse_superblock(sb: &[u8; 96]) -> anyhow::Result<u64> {
    anyhow::ensure!(&sb[..4] == b"hsqs", "no squashfs magic");
    let mut used = [0u8; 8];
    used.copy_from_slice(&sb[40..48]);
    Ok(u64::from_le_bytes(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bytes_used() {
        let mut sb = [0u8; 96];
        sb[..4].copy_from_slice(b"hsqs");
        sb[40..48].copy_from_slice(&123_456u64.to_le_bytes());
        assert_eq!(parse_superblock(&sb).unwrap(), 123_456);
        sb[0] = b'x';
        assert!(parse_superblock(&sb).is_err());
    }
}
