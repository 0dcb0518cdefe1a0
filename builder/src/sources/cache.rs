//! A content-addressed blob cache: `<root>/blobs/sha256/<hex>`, verified on every read.
//!
//! Blobs land through a temporary file in `<root>/tmp` and one atomic rename, so
//! concurrent builds sharing the cache never see half a blob. A build holds a
//! shared lock on `<root>/cache.lock` for its whole run and `berth cache prune`
//! an exclusive one, so a prune never removes a blob a build is using; one
//! download of a blob at a time holds `<root>/locks/<hex>` (a second build waits,
//! then finds the blob in the cache). Interrupted downloads stay in
//! `<root>/partial/<hex>` and are resumed. `<root>/notes/<hex>` says what a blob
//! is, for `berth cache ls`; a blob's mtime is when a build last used it.
//! `<root>/extracted` holds what was derived from blobs or built once (kernel
//! packages unpacked, compressed initramfs images), `<root>/apt` apt's own
//! binary package cache.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fs4::FileExt;
use sha2::{Digest, Sha256};

/// Failure in the blob cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Filesystem access failed.
    #[error("cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Content does not have the digest it should have.
    #[error("{what}: sha256 is {actual}, expected {expected}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// No home folder to put the default cache in.
    #[error("no cache folder: set BERTH_CACHE or HOME")]
    NoHome,
    /// A build is using the cache.
    #[error("the cache {path} is in use by a build: prune it when no build runs")]
    Busy { path: PathBuf },
}

/// A lock on the cache (or on one blob), released on drop.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

/// One blob of the cache, for `berth cache ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Hex sha256.
    pub sha256: String,
    pub size: u64,
    /// When a build last used it.
    pub last_used: SystemTime,
    /// What it is (a package file, an image layer, ...), when known.
    pub what: String,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub blobs: usize,
    pub bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blob cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache at `root`, created if missing.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        for sub in [
            "blobs/sha256",
            "tmp",
            "extracted",
            "partial",
            "locks",
            "notes",
            "apt",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    /// The default location: `$BERTH_CACHE`, else `$XDG_CACHE_HOME/berth`, else
    /// `~/.cache/berth`.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        if let Some(dir) = std::env::var_os("BERTH_CACHE") {
            return Ok(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(dir).join("berth"));
        }
        let home = std::env::var_os("HOME").ok_or(CacheError::NoHome)?;
        Ok(PathBuf::from(home).join(".cache/berth"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh temporary folder inside the cache (same filesystem as the blobs).
    pub fn tempdir(&self) -> Result<tempfile::TempDir, CacheError> {
        let dir = self.root.join("tmp");
        tempfile::tempdir_in(&dir).map_err(io_err(&dir))
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    fn lock_file(&self, path: &Path) -> Result<File, CacheError> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))
    }

    /// A build's lock: shared with other builds, exclusive of `prune`.
    pub fn lock_shared(&self) -> Result<CacheLock, CacheError> {
        let path = self.root.join("cache.lock");
        let file = self.lock_file(&path)?;
        FileExt::lock_shared(&file).map_err(io_err(&path))?;
        Ok(CacheLock { _file: file })
    }

    /// The lock for downloading one blob (waits for another download of it).
    pub fn lock_blob(&self, sha256: &str) -> Result<CacheLock, CacheError> {
        let path = self.root.join("locks").join(sha256);
        let file = self.lock_file(&path)?;
        FileExt::lock(&file).map_err(io_err(&path))?;
        Ok(CacheLock { _file: file })
    }

    /// Where the bytes of an unfinished download of a blob are kept (hold
    /// [`Cache::lock_blob`] while writing it).
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(sha256)
    }

    /// Records what a blob is, for `berth cache ls` (best effort).
    pub fn note(&self, sha256: &str, what: &str) {
        let path = self.root.join("notes").join(sha256);
        if fs::read_to_string(&path).is_ok_and(|t| t == what) {
            return;
        }
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(self.root.join("tmp")) {
            if tmp.write_all(what.as_bytes()).is_ok() {
                let _ = tmp.persist(&path);
            }
        }
    }

    /// Stores `bytes` under their digest, which must be `expected`.
    pub fn insert_bytes(
        &self,
        bytes: &[u8],
        expected: &str,
        what: &str,
    ) -> Result<PathBuf, CacheError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        let (_, path) = tmp.keep().map_err(|e| CacheError::Io {
            path: tmp_dir.clone(),
            source: e.error,
        })?;
        let result = self.insert(&path, expected, what);
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Every blob, sorted by digest.
    pub fn list(&self) -> Result<Vec<CacheEntry>, CacheError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            let what = fs::read_to_string(self.root.join("notes").join(&name))
                .unwrap_or_else(|_| "(unknown)".into());
            out.push(CacheEntry {
                sha256: name,
                size: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                what,
            });
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    /// Removes blobs no build used for `unused_for` (every blob with `None`),
    /// what was derived from them, unfinished downloads and temporary files.
    /// Refuses while a build holds the cache.
    pub fn prune(&self, unused_for: Option<Duration>) -> Result<Pruned, CacheError> {
        let path = self.root.join("cache.lock");
        let file = self.lock_file(&path)?;
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(CacheError::Busy {
                    path: self.root.clone(),
                })
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let cutoff = unused_for.map(|d| SystemTime::now() - d);
        let mut pruned = Pruned::default();
        for entry in self.list()? {
            if cutoff.is_some_and(|c| entry.last_used >= c) {
                continue;
            }
            let blob = self.blob_path(&entry.sha256);
            fs::remove_file(&blob).map_err(io_err(&blob))?;
            let _ = fs::remove_file(self.root.join("notes").join(&entry.sha256));
            let _ = fs::remove_dir_all(
                self.root
                    .join("extracted")
                    .join(format!("kernel-{}", entry.sha256)),
            );
            pruned.blobs += 1;
            pruned.bytes += entry.size;
        }
        // Compressed initramfs images are keyed by their content, not by a blob:
        // they go by the time a build last used them (the mtime of the file).
        let extracted = self.root.join("extracted");
        for entry in fs::read_dir(&extracted)
            .map_err(io_err(&extracted))?
            .flatten()
        {
            let name = entry.file_name();
            if !name
                .to_string_lossy()
                .starts_with(crate::filesystem::initramfs::CACHE_PREFIX)
            {
                continue;
            }
            let used = fs::metadata(entry.path().join("initramfs.img"))
                .and_then(|m| m.modified())
                .ok();
            if cutoff.is_some_and(|c| used.is_some_and(|u| u >= c)) {
                continue;
            }
            let _ = fs::remove_dir_all(entry.path());
        }
        for sub in ["partial", "tmp", "locks"] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        drop(file);
        Ok(pruned)
    }

    /// The path of a blob if it is in the cache and its content still has its
    /// digest. A corrupt blob is removed and reported as missing.
    pub fn get(&self, sha256: &str) -> Result<Option<PathBuf>, CacheError> {
        let path = self.blob_path(sha256);
        if !path.exists() {
            return Ok(None);
        }
        let actual = sha256_file(&path).map_err(io_err(&path))?;
        if actual != sha256 {
            fs::remove_file(&path).map_err(io_err(&path))?;
            return Ok(None);
        }
        // Last used now: `berth cache prune --unused-for` keeps it.
        if let Ok(f) = File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(path))
    }

    /// Moves `file` into the cache after checking it has the `expected` digest.
    pub fn insert(&self, file: &Path, expected: &str, what: &str) -> Result<PathBuf, CacheError> {
        let actual = sha256_file(file).map_err(io_err(file))?;
        if actual != expected {
            return Err(CacheError::Digest {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        let target = self.blob_path(expected);
        fs::rename(file, &target).map_err(io_err(&target))?;
        self.note(expected, what);
        Ok(target)
    }

    /// A folder for derived data keyed by a blob digest (for instance an extracted
    /// kernel package); `fill` populates a temporary folder that is renamed into
    /// place when it succeeds, so a half-done extraction is never used.
    pub fn derived<E: From<CacheError>>(
        &self,
        key: &str,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        let target = self.root.join("extracted").join(key);
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.tempdir()?;
        fill(tmp.path())?;
        let staged = tmp.keep();
        if let Err(e) = fs::rename(&staged, &target) {
            // Another build won the race: use its copy.
            let _ = fs::remove_dir_all(&staged);
            if !target.is_dir() {
                return Err(CacheError::Io {
                    path: target,
                    source: e,
                }
                .into());
            }
        }
        Ok(target)
    }

    /// Removes a folder of derived data (found damaged), so `derived` fills it anew.
    pub fn remove_derived(&self, key: &str) -> Result<(), CacheError> {
        let target = self.root.join("extracted").join(key);
        match fs::remove_dir_all(&target) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&target)(e)),
            _ => Ok(()),
        }
    }
}

/// sha256 of a file, lowercase hex.
///
/// Holes of a sparse file (a disk image is mostly holes) are hashed as the zeros
/// they read as, without reading them: the first read of a hole makes the kernel
/// allocate and clear page-cache pages, which cost more than the hashing itself.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use rustix::fs::SeekFrom as Seek;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < len {
        // Where the next data is: ENXIO means none (holes to the end); a
        // filesystem without SEEK_DATA answers with an error, and everything is
        // read as data.
        let data = match rustix::fs::seek(&file, Seek::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(_) => pos,
        };
        hash_zeros(&mut hasher, data - pos);
        if data == len {
            break;
        }
        let hole = rustix::fs::seek(&file, Seek::Hole(data))
            .map_or(len, |h| h.min(len))
            .max(data + 1);
        io::Seek::seek(&mut file, io::SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was hashed",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds `count` zero bytes to `hasher`.
fn hash_zeros(hasher: &mut Sha256, mut count: u64) {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    while count > 0 {
        let n = ZEROS
            .len()
            .min(usize::try_from(count).unwrap_or(usize::MAX));
        hasher.update(&ZEROS[..n]);
        count -= n as u64;
    }
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A writer that hashes what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the sha256 (hex) and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.hasher.finalize()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_hash_like_sha256sum() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        // Holes at the start, between data and at the end, data not on a block
        // boundary, and a file of only a hole.
        let sparse = dir.path().join("sparse");
        let f = File::create(&sparse).unwrap();
        f.write_all_at(b"first data", 3 << 20).unwrap();
        f.write_all_at(&[7u8; 100_000], (5 << 20) + 123).unwrap();
        f.set_len(9 << 20).unwrap();
        let hole = dir.path().join("hole");
        File::create(&hole).unwrap().set_len(1 << 20).unwrap();
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        for path in [&sparse, &hole, &empty] {
            let out = std::process::Command::new("sha256sum")
                .arg(path)
                .output()
                .unwrap();
            let expected = String::from_utf8(out.stdout).unwrap();
            let expected = expected.split_whitespace().next().unwrap();
            assert_eq!(sha256_file(path).unwrap(), expected, "{}", path.display());
        }
        assert!(
            sparse.metadata().unwrap().len() > 9 * sparse_allocated(&sparse),
            "the test file should be sparse"
        );
    }

    fn sparse_allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        path.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn insert_checks_digest_and_get_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let f = dir.path().join("x");
        fs::write(&f, b"hello").unwrap();
        let bad = cache.insert(&f, "00", "x");
        assert!(matches!(bad, Err(CacheError::Digest { .. })));
        let sha = sha256_bytes(b"hello");
        let path = cache.insert(&f, &sha, "x").unwrap();
        assert_eq!(cache.get(&sha).unwrap(), Some(path.clone()));
        fs::write(&path, b"tampered").unwrap();
        assert_eq!(cache.get(&sha).unwrap(), None);
        assert!(!path.exists());
    }

    #[test]
    fn ls_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let old = sha256_bytes(b"old");
        let new = sha256_bytes(b"new");
        let old_path = cache.insert_bytes(b"old", &old, "an old layer").unwrap();
        cache.insert_bytes(b"new", &new, "a new layer").unwrap();
        assert!(cache.insert_bytes(b"x", &old, "wrong").is_err());
        let long_ago = SystemTime::now() - Duration::from_secs(90 * 86400);
        File::options()
            .append(true)
            .open(&old_path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let list = cache.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list
            .iter()
            .any(|e| e.sha256 == old && e.what == "an old layer"));
        // A build holds the cache: prune refuses.
        let build = cache.lock_shared().unwrap();
        assert!(matches!(cache.prune(None), Err(CacheError::Busy { .. })));
        drop(build);
        let pruned = cache.prune(Some(Duration::from_secs(30 * 86400))).unwrap();
        assert_eq!(pruned, Pruned { blobs: 1, bytes: 3 });
        assert_eq!(cache.get(&old).unwrap(), None);
        assert!(cache.get(&new).unwrap().is_some());
        assert_eq!(cache.prune(None).unwrap().blobs, 1);
        assert!(cache.list().unwrap().is_empty());
        // Only tmp/ leftovers of the rejected insert were cleaned too.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn derived_is_filled_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut calls = 0;
        for _ in 0..2 {
            let p = cache
                .derived::<CacheError>("k", |d| {
                    calls += 1;
                    fs::write(d.join("f"), b"1").unwrap();
                    Ok(())
                })
                .unwrap();
            assert!(p.join("f").is_file());
        }
        assert_eq!(calls, 1);
    }
}
