//! The read-only root filesystem: a squashfs (zstd) written in process from a tree,
//! with owners and modes from the tree and every time fixed.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::progress::{Bytes, Progress};
use crate::tree::{NodeKind, Tree};

/// Failure writing the squashfs image.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("writing squashfs {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("squashfs entry {entry}: {reason}")]
    Entry { entry: String, reason: String },
}

/// squashfs device numbers use the kernel's "new" encoding.
fn device_number(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A file of the tree, opened only when the squashfs writer reads it (one open
/// file at a time, however many the tree holds), its bytes counted for the
/// progress bar. The writer reads it exactly as it reads a path it opens
/// itself, so the image is the same bytes.
struct CountedFile<'a> {
    path: PathBuf,
    file: Option<io::BufReader<File>>,
    done: bool,
    bytes: &'a Bytes,
}

impl Read for CountedFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self
                .file
                .insert(io::BufReader::new(File::open(&self.path)?)),
        };
        let n = file.read(buf)?;
        if n == 0 {
            // Closed at its end, before the writer moves on to the next file.
            self.file = None;
            self.done = true;
        }
        self.bytes.inc(n as u64);
        Ok(n)
    }
}

/// Writes `tree` as a squashfs image to `out`; returns its size in bytes. The
/// bytes read from the tree's files show on `progress`.
pub fn write(
    tree: &Tree,
    out: &Path,
    mtime: u32,
    progress: &Progress,
) -> Result<u64, SquashfsError> {
    let total = tree
        .nodes()
        .filter_map(|(_, node)| match &node.kind {
            NodeKind::File(source) => std::fs::metadata(source).ok().map(|m| m.len()),
            _ => None,
        })
        .sum();
    let bytes = progress.bytes(Some(total));
    let mut fs = FilesystemWriter::default();
    fs.set_time(mtime);
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    let compressor =
        FilesystemCompressor::new(Compressor::Zstd, None).map_err(|e| SquashfsError::Entry {
            entry: "/".into(),
            reason: e.to_string(),
        })?;
    fs.set_compressor(compressor);
    for (key, node) in tree.nodes() {
        let header = NodeHeader {
            permissions: u16::try_from(node.mode & 0o7777).unwrap_or(0o755),
            uid: node.uid,
            gid: node.gid,
            mtime,
        };
        let entry_err = |e: backhand::BackhandError| SquashfsError::Entry {
            entry: key.clone(),
            reason: e.to_string(),
        };
        let path = format!("/{key}");
        match &node.kind {
            NodeKind::Dir => fs.push_dir(&path, header),
            NodeKind::File(source) => fs.push_file(
                CountedFile {
                    path: source.clone(),
                    file: None,
                    done: false,
                    bytes: &bytes,
                },
                &path,
                header,
            ),
            NodeKind::Symlink(target) => fs.push_symlink(target, &path, header),
            NodeKind::CharDevice { major, minor } => {
                fs.push_char_device(device_number(*major, *minor), &path, header)
            }
            NodeKind::BlockDevice { major, minor } => {
                fs.push_block_device(device_number(*major, *minor), &path, header)
            }
            NodeKind::Fifo => fs.push_fifo(&path, header),
        }
        .map_err(entry_err)?;
    }
    let file = File::create(out).map_err(|source| SquashfsError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let (_, size) = fs
        .write(BufWriter::new(file))
        .map_err(|e| SquashfsError::Entry {
            entry: "/".into(),
            reason: e.to_string(),
        })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers() {
        assert_eq!(device_number(5, 1), 0x501);
        assert_eq!(device_number(1, 3), 0x103);
        assert_eq!(device_number(8, 0x123), 0x10_0823);
    }
}
