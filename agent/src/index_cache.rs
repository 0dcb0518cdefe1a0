//! The last channel index a device verified, kept on the data partition so an
//! idle check costs only the signature: the index is fetched again only when
//! the repository's signature file changed (every `berth publish` signs anew).
//!
//! Nothing here is trusted: a cached index is verified against the signature
//! just fetched, the same as a downloaded one (signature, channel, expiry), and
//! the replay check runs on it too. A cache that is missing, garbled, from
//! another repository or for another signature is simply not used.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Folder of the cache, next to the state file.
pub const CACHE_DIR: &str = "index-cache";

/// One channel's cached pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    repository: String,
    signature: String,
    index: String,
}

/// The cache of one device (a folder).
#[derive(Debug, Clone)]
pub struct IndexCache {
    dir: PathBuf,
}

impl IndexCache {
    /// The cache beside the state file `state_path`.
    pub fn beside(state_path: &Path) -> IndexCache {
        IndexCache {
            dir: state_path.with_file_name(CACHE_DIR),
        }
    }

    fn path(&self, channel: &str) -> PathBuf {
        self.dir.join(format!("{channel}.json"))
    }

    /// The cached index of `channel` from `repository`, if its signature is
    /// byte for byte `signature`.
    pub fn index_for(&self, repository: &str, channel: &str, signature: &[u8]) -> Option<Vec<u8>> {
        let text = fs::read_to_string(self.path(channel)).ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        (entry.repository == repository && entry.signature.as_bytes() == signature)
            .then(|| entry.index.into_bytes())
    }

    /// Keeps a verified pair (written whole: temp file, then rename). The index
    /// and signature are text (JSON and minisign); others are not kept.
    pub fn store(
        &self,
        repository: &str,
        channel: &str,
        index: &[u8],
        signature: &[u8],
    ) -> std::io::Result<()> {
        let (Ok(index), Ok(signature)) =
            (std::str::from_utf8(index), std::str::from_utf8(signature))
        else {
            return Ok(());
        };
        let entry = Entry {
            repository: repository.to_string(),
            signature: signature.to_string(),
            index: index.to_string(),
        };
        let text = serde_json::to_string(&entry)?;
        berth_format::atomic::write_atomically(&self.path(channel), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_pair_is_found_only_for_its_repository_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IndexCache::beside(&dir.path().join("state.toml"));
        assert_eq!(cache.index_for("http://r", "stable", b"sig"), None);
        cache
            .store("http://r", "stable", b"{\"a\":1}", b"sig")
            .unwrap();
        assert_eq!(
            cache.index_for("http://r", "stable", b"sig").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(cache.index_for("http://r", "stable", b"sig2"), None);
        assert_eq!(cache.index_for("http://other", "stable", b"sig"), None);
        assert_eq!(cache.index_for("http://r", "beta", b"sig"), None);
        // A newer pair replaces it.
        cache
            .store("http://r", "stable", b"{\"a\":2}", b"sig2")
            .unwrap();
        assert_eq!(cache.index_for("http://r", "stable", b"sig"), None);
        assert!(cache.index_for("http://r", "stable", b"sig2").is_some());
        // No temp files left.
        let names: Vec<_> = fs::read_dir(dir.path().join(CACHE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["stable.json"]);
    }

    #[test]
    fn a_garbled_cache_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IndexCache::beside(&dir.path().join("state.toml"));
        fs::create_dir_all(dir.path().join(CACHE_DIR)).unwrap();
        fs::write(dir.path().join(CACHE_DIR).join("stable.json"), "{not json").unwrap();
        assert_eq!(cache.index_for("http://r", "stable", b"sig"), None);
    }
}
