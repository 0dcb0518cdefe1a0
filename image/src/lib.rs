//! One offline reader of a built berth disk image, for everything on the host that
//! looks inside an image without booting it: `berth bundle` (slot A's boot files,
//! root filesystem and image configuration), direct boot in `berth run` (the entry
//! systemd-boot would boot), the end-to-end tests and the benchmarks.
//!
//! The formats are `berth_format`'s (GPT, layout, boot entries); this crate only
//! finds them in an image file: partitions by label ([`Image`]), files of the FAT
//! ESP ([`Esp`]), and a slot's squashfs and `/etc/berth/image.toml`. Nothing is
//! mounted. An image opened with [`Image::open_writable`] can have ESP files
//! written and renamed, for tests that prepare a device offline.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use berth_format::gpt::{self, GptError, GptPartition};
use berth_format::layout::{self, Slot, ESP_LABEL};
use berth_format::window::Window;
use berth_format::ImageConfig;

mod esp;

pub use berth_format::layout::SECTOR_SIZE;
pub use esp::Esp;

/// squashfs superblock magic (`hsqs`).
const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
/// Length of the squashfs superblock.
const SQUASHFS_SUPERBLOCK_LEN: usize = 96;

/// Failure to read (or edit) a disk image offline. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image file could not be opened or read.
    #[error("reading the image {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The partition table could not be read.
    #[error("reading the partition table of {path}: {source}")]
    Gpt { path: PathBuf, source: GptError },
    /// No partition carries the label.
    #[error("no partition labelled {label:?} in {path} (found: {found})")]
    NoPartition {
        path: PathBuf,
        label: String,
        found: String,
    },
    /// The ESP is not a FAT file system fatfs can read.
    #[error("opening the FAT file system of the ESP in {path}: {source}")]
    Fat { path: PathBuf, source: io::Error },
    /// A file or folder on the ESP could not be read or written.
    #[error("{esp_path} on the ESP of {path}: {source}")]
    EspFile {
        path: PathBuf,
        esp_path: String,
        source: io::Error,
    },
    /// A slot's boot entry is missing, ambiguous, or not one berth wrote.
    #[error("the ESP of {path}: {reason}")]
    Entry { path: PathBuf, reason: String },
    /// A slot's root partition does not hold a readable squashfs.
    #[error("{label} of {path}: {reason}")]
    RootFs {
        path: PathBuf,
        label: String,
        reason: String,
    },
    /// The image configuration in a slot's root is missing or invalid.
    #[error("{} in {label} of {path}: {reason}", layout::IMAGE_CONFIG_PATH)]
    ImageConfig {
        path: PathBuf,
        label: String,
        reason: String,
    },
}

/// A disk image file and its partition table.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: File,
    partitions: Vec<GptPartition>,
}

/// What a slot's squashfs superblock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squashfs {
    /// Bytes of the partition the file system uses (its end; verity's hash tree
    /// and padding follow).
    pub bytes_used: u64,
    /// The build time recorded in the file system (seconds since the epoch).
    pub created: u64,
}

impl Image {
    /// Opens `path` read-only and reads its partition table.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        Image::open_with(path, OpenOptions::new().read(true))
    }

    /// Opens `path` for reading and writing (ESP edits through [`Image::esp`]).
    pub fn open_writable(path: &Path) -> Result<Image, ImageError> {
        Image::open_with(path, OpenOptions::new().read(true).write(true))
    }

    fn open_with(path: &Path, options: &OpenOptions) -> Result<Image, ImageError> {
        let mut file = options.open(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let partitions = gpt::read_partitions(&mut file).map_err(|source| ImageError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Image {
            path: path.to_path_buf(),
            file,
            partitions,
        })
    }

    /// The image file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The used entries of the partition table, in table order.
    pub fn partitions(&self) -> &[GptPartition] {
        &self.partitions
    }

    /// The partition labelled `label`.
    pub fn partition(&self, label: &str) -> Result<&GptPartition, ImageError> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .ok_or_else(|| ImageError::NoPartition {
                path: self.path.clone(),
                label: label.to_string(),
                found: self
                    .partitions
                    .iter()
                    .map(|p| format!("{:?}", p.label))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The byte range `(offset, length)` of the partition labelled `label`.
    pub fn partition_range(&self, label: &str) -> Result<(u64, u64), ImageError> {
        let part = self.partition(label)?;
        Ok((part.first_lba * SECTOR_SIZE, part.size_bytes(SECTOR_SIZE)))
    }

    /// The partition labelled `label` as a stream of its own.
    pub fn partition_window(&self, label: &str) -> Result<Window<&File>, ImageError> {
        let (start, len) = self.partition_range(label)?;
        Ok(Window::new(&self.file, start, len))
    }

    /// The ESP's FAT file system. Writes need [`Image::open_writable`].
    pub fn esp(&self) -> Result<Esp<'_>, ImageError> {
        Esp::open(self, self.partition_window(ESP_LABEL)?)
    }

    /// The superblock of the squashfs at the start of `slot`'s root partition.
    pub fn squashfs(&self, slot: Slot) -> Result<Squashfs, ImageError> {
        let label = slot.partition_label();
        let mut superblock = [0u8; SQUASHFS_SUPERBLOCK_LEN];
        self.partition_window(label)?
            .read_exact(&mut superblock)
            .map_err(|e| self.root_error(slot, format!("reading its start: {e}")))?;
        if &superblock[0..4] != SQUASHFS_MAGIC {
            return Err(self.root_error(slot, "does not hold a squashfs".into()));
        }
        let created = u32::from_le_bytes(superblock[8..12].try_into().expect("4 bytes"));
        let bytes_used = u64::from_le_bytes(superblock[40..48].try_into().expect("8 bytes"));
        Ok(Squashfs {
            bytes_used,
            created: u64::from(created),
        })
    }

    /// The image configuration (`/etc/berth/image.toml`) inside `slot`'s root
    /// filesystem, parsed.
    pub fn image_config(&self, slot: Slot) -> Result<ImageConfig, ImageError> {
        let squashfs = self.squashfs(slot)?;
        let (start, _) = self.partition_range(slot.partition_label())?;
        let window = Window::new(&self.file, start, squashfs.bytes_used);
        let reader = backhand::FilesystemReader::from_reader(BufReader::new(window))
            .map_err(|e| self.root_error(slot, format!("reading its squashfs: {e}")))?;
        let config_error = |reason: String| ImageError::ImageConfig {
            path: self.path.clone(),
            label: slot.partition_label().to_string(),
            reason,
        };
        let config_path = Path::new(layout::IMAGE_CONFIG_PATH);
        let node = reader
            .files()
            .find(|n| n.fullpath == config_path)
            .and_then(|n| match &n.inner {
                backhand::InnerNode::File(f) => Some(f),
                _ => None,
            })
            .ok_or_else(|| config_error("no such file".into()))?;
        let mut text = String::new();
        reader
            .file(node)
            .reader()
            .read_to_string(&mut text)
            .map_err(|e| config_error(e.to_string()))?;
        ImageConfig::parse(&text).map_err(|e| config_error(e.to_string()))
    }

    fn root_error(&self, slot: Slot, reason: String) -> ImageError {
        ImageError::RootFs {
            path: self.path.clone(),
            label: slot.partition_label().to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
