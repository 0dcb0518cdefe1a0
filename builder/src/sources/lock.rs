//! `RECIPE.lock`: the exact inputs of a recipe, so the next build uses the same.
//!
//! Like Cargo.lock: TOML, sorted, one table per input, written by `berth build`
//! and `berth lock`, read by every build. Images are pinned by the digest their
//! reference stood for (an index or a manifest) plus the linux/amd64 manifest
//! used; Debian packages by exact version and the sha256 of the `.deb`.
//! Credentials never go here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the lock file format.
pub const LOCK_VERSION: u32 = 1;

/// Failure to read or write a lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock file {path} is not valid: {reason} (delete it, or run `berth lock --update RECIPE`, to write a new one)")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "lock file {path} has format version {found}; this berth writes version {LOCK_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    /// `--locked` and the lock would change.
    #[error("{path} is out of date and --locked forbids changing it:\n{changes}\nrun `berth lock --update RECIPE` (or build without --locked) to accept these changes")]
    Changed { path: PathBuf, changes: String },
}

/// One image, pinned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The container it is for.
    pub container: String,
    /// The reference as the recipe writes it.
    pub reference: String,
    /// What the reference stood for when locked (`sha256:…`).
    pub digest: String,
    /// The linux/amd64 image manifest used (`sha256:…`).
    pub manifest: String,
}

/// One Debian package, pinned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
}

/// The whole lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    #[serde(default, rename = "image")]
    pub images: Vec<LockedImage>,
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
}

/// How a build uses the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Use what the lock pins; resolve and add what it lacks; write it back.
    #[default]
    Use,
    /// Resolve everything afresh (tags from the registry, candidates from apt)
    /// and fail, naming the differences, if the lock would change (`--locked`).
    Locked,
    /// Resolve afresh the images of these containers and these packages (all
    /// of them when empty) and write the lock (`berth lock --update RECIPE [NAME...]`).
    Update(Vec<String>),
}

impl Lock {
    /// Reads `path`; an absent file is an empty lock.
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
            Err(source) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                found: lock.version,
            });
        }
        Ok(lock)
    }

    /// The lock as text: a header comment, then images and packages sorted.
    pub fn render(&self, recipe_name: &str) -> String {
        let mut lock = self.clone();
        lock.version = LOCK_VERSION;
        lock.images.sort();
        lock.images.dedup();
        lock.packages.sort();
        lock.packages.dedup();
        let body = toml::to_string(&lock).unwrap_or_default();
        format!(
            "# berth lock file of {recipe_name}: the exact images and Debian packages it was\n\
             # built from. Written by `berth build` and `berth lock`; refresh with\n\
             # `berth lock --update {recipe_name} [NAME...]`. Not meant to be edited by hand.\n{body}"
        )
    }

    /// Writes the lock to `path` by an atomic rename, unless it is unchanged.
    pub fn write(&self, path: &Path, recipe_name: &str) -> Result<bool, LockError> {
        let text = self.render(recipe_name);
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(true)
    }

    /// The pinned digest of `container`'s image, if the lock has one for the
    /// same reference.
    pub fn image(&self, container: &str, reference: &str) -> Option<&LockedImage> {
        self.images
            .iter()
            .find(|i| i.container == container && i.reference == reference)
    }

    /// The pinned version of a package.
    pub fn package(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// What changed from `self` (the old lock) to `new`, one line each; empty
    /// when nothing did.
    pub fn changes(&self, new: &Lock) -> String {
        let mut out = String::new();
        let old_images: BTreeMap<&str, &LockedImage> = self
            .images
            .iter()
            .map(|i| (i.container.as_str(), i))
            .collect();
        let new_images: BTreeMap<&str, &LockedImage> = new
            .images
            .iter()
            .map(|i| (i.container.as_str(), i))
            .collect();
        let containers: BTreeSet<&str> = old_images
            .keys()
            .chain(new_images.keys())
            .copied()
            .collect();
        for c in containers {
            match (old_images.get(c), new_images.get(c)) {
                (Some(o), Some(n)) if o.reference != n.reference => {
                    let _ = writeln!(
                        out,
                        "  image of container {c:?}: the recipe now says {} (the lock has {} at {})",
                        n.reference, o.reference, o.digest
                    );
                }
                (Some(o), Some(n)) if o.digest != n.digest || o.manifest != n.manifest => {
                    let _ = writeln!(
                        out,
                        "  image of container {c:?}: {} moved from {} (in the lock) to {} (now)",
                        n.reference, o.digest, n.digest
                    );
                }
                (Some(_), Some(_)) => {}
                (None, Some(n)) => {
                    let _ = writeln!(
                        out,
                        "  image of container {c:?}: {} ({}) is not in the lock",
                        n.reference, n.digest
                    );
                }
                (Some(o), None) => {
                    let _ = writeln!(
                        out,
                        "  image of container {c:?}: {} is in the lock but no longer used",
                        o.reference
                    );
                }
                (None, None) => {}
            }
        }
        let old_packages: BTreeMap<&str, &LockedPackage> =
            self.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let new_packages: BTreeMap<&str, &LockedPackage> =
            new.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let names: BTreeSet<&str> = old_packages
            .keys()
            .chain(new_packages.keys())
            .copied()
            .collect();
        for name in names {
            match (old_packages.get(name), new_packages.get(name)) {
                (Some(o), Some(n)) if o.version != n.version || o.sha256 != n.sha256 => {
                    let _ = writeln!(
                        out,
                        "  package {name}: {} (sha256 {}) in the lock, {} (sha256 {}) now",
                        o.version, o.sha256, n.version, n.sha256
                    );
                }
                (Some(_), Some(_)) | (None, None) => {}
                (None, Some(n)) => {
                    let _ = writeln!(out, "  package {name} {} is not in the lock", n.version);
                }
                (Some(o), None) => {
                    let _ = writeln!(
                        out,
                        "  package {name} {} is in the lock but no longer used",
                        o.version
                    );
                }
            }
        }
        out.trim_end().to_string()
    }
}

/// What a build pins, given the old lock and the mode.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    lock: Lock,
    mode: LockMode,
}

impl Pins {
    pub fn new(lock: Lock, mode: LockMode) -> Pins {
        Pins { lock, mode }
    }

    /// The lock read from disk.
    pub fn old(&self) -> &Lock {
        &self.lock
    }

    pub fn mode(&self) -> &LockMode {
        &self.mode
    }

    fn refresh(&self, name: &str) -> bool {
        match &self.mode {
            LockMode::Use => false,
            LockMode::Locked => true,
            LockMode::Update(names) => names.is_empty() || names.iter().any(|n| n == name),
        }
    }

    /// The digest to use for `container`'s image, when pinned.
    pub fn image(&self, container: &str, reference: &str) -> Option<&str> {
        if self.refresh(container) {
            return None;
        }
        self.lock
            .image(container, reference)
            .map(|i| i.digest.as_str())
    }

    /// The version and sha256 to use for a package, when pinned.
    pub fn package(&self, name: &str) -> Option<&LockedPackage> {
        if self.refresh(name) {
            return None;
        }
        self.lock.package(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        Lock {
            version: LOCK_VERSION,
            images: vec![LockedImage {
                container: "app".into(),
                reference: "127.0.0.1:5000/berth/app:1.0".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                manifest: format!("sha256:{}", "b".repeat(64)),
            }],
            packages: vec![
                LockedPackage {
                    name: "zlib1g".into(),
                    version: "1:1.2.13.dfsg-1".into(),
                    sha256: "c".repeat(64),
                },
                LockedPackage {
                    name: "busybox-static".into(),
                    version: "1:1.35.0-4+b3".into(),
                    sha256: "d".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn round_trips_sorted_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml.lock");
        assert_eq!(Lock::read(&path).unwrap(), Lock::default());
        assert!(sample().write(&path, "r.toml").unwrap());
        assert!(
            !sample().write(&path, "r.toml").unwrap(),
            "unchanged: not rewritten"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# berth lock file of r.toml"), "{text}");
        assert!(text.contains("[[image]]\ncontainer = \"app\"\n"), "{text}");
        // Packages sorted by name.
        let busybox = text.find("name = \"busybox-static\"").unwrap();
        let zlib = text.find("name = \"zlib1g\"").unwrap();
        assert!(busybox < zlib, "{text}");
        let back = Lock::read(&path).unwrap();
        assert_eq!(back.images, sample().images);
        assert_eq!(back.packages.len(), 2);
    }

    #[test]
    fn changes_name_what_moved() {
        let old = sample();
        let mut new = sample();
        new.images[0].digest = format!("sha256:{}", "e".repeat(64));
        new.packages[0].version = "1:1.3".into();
        new.packages.pop();
        let changes = old.changes(&new);
        assert!(
            changes.contains(
                "image of container \"app\": 127.0.0.1:5000/berth/app:1.0 moved from sha256:aaaa"
            ),
            "{changes}"
        );
        assert!(
            changes.contains("package zlib1g: 1:1.2.13.dfsg-1"),
            "{changes}"
        );
        assert!(
            changes
                .contains("package busybox-static 1:1.35.0-4+b3 is in the lock but no longer used"),
            "{changes}"
        );
        assert_eq!(old.changes(&sample()), "");
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, "version = 1\n[[image]]\ncontainer = 3\n").unwrap();
        assert!(matches!(Lock::read(&path), Err(LockError::Parse { .. })));
        std::fs::write(&path, "version = 9\n").unwrap();
        assert!(matches!(
            Lock::read(&path),
            Err(LockError::Version { found: 9, .. })
        ));
    }

    #[test]
    fn pins_follow_the_mode() {
        let reference = "127.0.0.1:5000/berth/app:1.0";
        let use_lock = Pins::new(sample(), LockMode::Use);
        assert!(use_lock.image("app", reference).is_some());
        assert!(use_lock.image("app", "other:1").is_none());
        assert!(use_lock.package("zlib1g").is_some());
        let locked = Pins::new(sample(), LockMode::Locked);
        assert!(locked.image("app", reference).is_none());
        let one = Pins::new(sample(), LockMode::Update(vec!["zlib1g".into()]));
        assert!(one.image("app", reference).is_some());
        assert!(one.package("zlib1g").is_none());
        assert!(one.package("busybox-static").is_some());
    }
}
