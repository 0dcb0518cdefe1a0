//! The initramfs: a newc cpio of a tree, zstd-compressed. Inode numbers, times and
//! order are fixed so the same tree always gives the same bytes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::sources::cache::{sha256_bytes, Cache, CacheError};
use crate::tree::{NodeKind, Tree};

/// Failure writing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading the tree or writing the file failed.
    #[error("writing initramfs {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The cache of compressed initramfs images failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// zstd level: the initramfs is small, so spend the time for size.
const LEVEL: i32 = 19;

/// The prefix of the cache's folders of compressed initramfs images.
pub const CACHE_PREFIX: &str = "initramfs-";

/// Writes `tree` as a zstd-compressed newc cpio to `out`.
///
/// Compressing at level 19 takes seconds, and the same cpio always compresses to
/// the same bytes, so the compressed file is kept in the cache under the cpio's
/// sha256: a rebuild with the same modules and init takes it from there. What the
/// cache holds is checked against the cpio before it is used (decompressing takes
/// milliseconds), so a damaged entry is rebuilt, never put in an image. Without
/// a cache it is compressed afresh.
pub fn write(
    tree: &Tree,
    out: &Path,
    mtime: u32,
    cache: Option<&Cache>,
) -> Result<(), InitramfsError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitramfsError::Io { path, source }
    };
    let mut cpio = Vec::new();
    write_cpio(tree, &mut cpio, mtime).map_err(err(out))?;
    let Some(cache) = cache else {
        fs::write(out, compress(&cpio).map_err(err(out))?).map_err(err(out))?;
        return File::open(out).and_then(|f| f.sync_all()).map_err(err(out));
    };
    // The key names what decides the compressed bytes: the cpio, the level and
    // the zstd library (another version may compress differently, and a cache
    // from an older berth must not give an image a fresh machine would not).
    let key = format!(
        "{CACHE_PREFIX}{}-zstd{}-{LEVEL}",
        sha256_bytes(&cpio),
        zstd::zstd_safe::version_number()
    );
    let compress = |dir: &Path| -> Result<(), InitramfsError> {
        let file = dir.join("initramfs.img");
        fs::write(&file, compress(&cpio).map_err(err(&file))?).map_err(err(&file))
    };
    let mut cached = cache.derived(&key, compress)?.join("initramfs.img");
    if !holds(&cached, &cpio) {
        cache.remove_derived(&key)?;
        cached = cache.derived(&key, compress)?.join("initramfs.img");
    }
    // Last used now: `berth cache prune --unused-for` keeps it.
    if let Ok(f) = File::options().append(true).open(&cached) {
        let _ = f.set_modified(SystemTime::now());
    }
    fs::copy(&cached, out).map_err(err(out))?;
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(err(out))?;
    Ok(())
}

/// The cpio, zstd-compressed in one checksum-free frame (the kernel's decompressor
/// needs nothing more); multithreading would make the output depend on the machine.
fn compress(cpio: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), LEVEL)?;
    encoder.write_all(cpio)?;
    encoder.finish()
}

/// Whether `compressed` decompresses to exactly `cpio`.
fn holds(compressed: &Path, cpio: &[u8]) -> bool {
    fs::read(compressed)
        .and_then(|bytes| zstd::stream::decode_all(&bytes[..]))
        .is_ok_and(|bytes| bytes == cpio)
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

    #[test]
    fn compressed_images_come_from_the_cache_and_a_damaged_one_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        let staging = dir.path().join("s");
        std::fs::create_dir(&staging).unwrap();
        let mut tree = Tree::new(&staging);
        tree.add_bytes("init", b"#!", 0o755).unwrap();
        let cached_entries = || {
            fs::read_dir(cache.root().join("extracted"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(CACHE_PREFIX))
                .map(|e| e.path().join("initramfs.img"))
                .collect::<Vec<_>>()
        };
        let first = dir.path().join("first.img");
        write(&tree, &first, 0, Some(&cache)).unwrap();
        let entries = cached_entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(fs::read(&entries[0]).unwrap(), fs::read(&first).unwrap());

        // A damaged cache entry is found out and replaced, never copied.
        fs::write(&entries[0], b"damaged").unwrap();
        let second = dir.path().join("second.img");
        write(&tree, &second, 0, Some(&cache)).unwrap();
        assert_eq!(fs::read(&second).unwrap(), fs::read(&first).unwrap());
        assert_eq!(fs::read(&entries[0]).unwrap(), fs::read(&first).unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | cpio -t --quiet", second.display()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "init\n");
        // Without the cache: the same bytes, compressed afresh.
        let fresh = dir.path().join("fresh.img");
        write(&tree, &fresh, 0, None).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), fs::read(&first).unwrap());

        // Another tree is another entry; pruning everything removes both.
        tree.add_bytes("etc/hostname", b"x", 0o644).unwrap();
        write(&tree, &dir.path().join("third.img"), 0, Some(&cache)).unwrap();
        assert_eq!(cached_entries().len(), 2);
        cache.prune(None).unwrap();
        assert!(cached_entries().is_empty());
    }
}
