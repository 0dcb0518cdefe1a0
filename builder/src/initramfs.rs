//! The initramfs: a newc cpio of a tree, zstd-compressed. Inode numbers, times and
//! order are fixed so the same tree always gives the same bytes.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::tree::{NodeKind, Tree};

/// Failure writing the initramfs.
#[derive(Debug, thiserror::Error)]
#[error("writing initramfs {path}: {source}")]
pub struct InitramfsError {
    path: PathBuf,
    source: io::Error,
}

/// zstd level: the initramfs is small, so spend the time for size.
const LEVEL: i32 = 19;

/// Writes `tree` as a zstd-compressed newc cpio to `out`.
pub fn write(tree: &Tree, out: &Path, mtime: u32) -> Result<(), InitramfsError> {
    let err = |source| InitramfsError {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(err)?;
    let mut encoder = zstd::stream::write::Encoder::new(file, LEVEL).map_err(err)?;
    // The kernel's decompressor wants the content size and a checksum-free frame is
    // fine; multithreading would make the output depend on the machine.
    write_cpio(tree, &mut encoder, mtime).map_err(err)?;
    let file = encoder.finish().map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}

fn write_cpio<W: Write>(tree: &Tree, w: &mut W, mtime: u32) -> io::Result<()> {
    let mut ino = 1u32;
    for (key, node) in tree.nodes() {
        ino += 1;
        let (kind_bits, data): (u32, Vec<u8>) = match &node.kind {
            NodeKind::Dir => (0o040000, Vec::new()),
            NodeKind::File(path) => (0o100000, std::fs::read(path)?),
            NodeKind::Symlink(target) => (0o120000, target.as_bytes().to_vec()),
            NodeKind::CharDevice { .. } => (0o020000, Vec::new()),
            NodeKind::BlockDevice { .. } => (0o060000, Vec::new()),
            NodeKind::Fifo => (0o010000, Vec::new()),
        };
        let size = u32::try_from(data.len()).map_err(io::Error::other)?;
        let mut builder = cpio::newc::Builder::new(key)
            .ino(ino)
            .mode(kind_bits | node.mode)
            .uid(node.uid)
            .gid(node.gid)
            .mtime(mtime)
            .nlink(if kind_bits == 0o040000 { 2 } else { 1 });
        if let NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } =
            node.kind
        {
            builder = builder.rdev_major(major).rdev_minor(minor);
        }
        let mut writer = builder.write(&mut *w, size);
        writer.write_all(&data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_with_the_standard_tool() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s");
        std::fs::create_dir(&staging).unwrap();
        let mut tree = Tree::new(&staging);
        tree.add_bytes("init", b"#!", 0o755).unwrap();
        tree.add_symlink("bin/sh", "../init");
        let mut raw = Vec::new();
        write_cpio(&tree, &mut raw, 0).unwrap();
        let mut cpio = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is installed");
        cpio.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = cpio.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bin\nbin/sh\ninit\n");
    }
}
