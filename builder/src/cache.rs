//! A content-addressed blob cache: `<root>/blobs/sha256/<hex>`, verified on every read.
//!
//! Blobs land through a temporary file in `<root>/tmp` and one atomic rename, so
//! concurrent builds sharing the cache never see half a blob.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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
        for sub in ["blobs/sha256", "tmp", "extracted"] {
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
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
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
