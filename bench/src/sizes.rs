//! Image sizes: the boot files, the root squashfs and the whole disk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use berth_format::Slot;
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
    Ok(berth_image::Image::open(image)?
        .squashfs(Slot::A)?
        .bytes_used)
}
