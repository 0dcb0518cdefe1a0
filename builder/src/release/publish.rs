//! `berth publish`: signed bundles into a static update repository, and the
//! repository's signed, expiring channel index (format: `berth_bundle::channel`).
//!
//! ```text
//! REPO/bundles/<sha256>.bundle   each bundle, named by the sha256 of the file
//! REPO/<channel>.json            the channel index
//! REPO/<channel>.json.minisig    its minisign signature, by the release key
//! REPO/chunks/<aa>/<sha256>.zst  content-defined chunks of every payload
//! REPO/chunk-index/<bundle-sha256>.json[.minisig]  each bundle's chunk index
//! ```
//!
//! Every bundle the index lists gets its chunks and its signed chunk index
//! (format: `berth_bundle::delta`) when it has none yet, so a repository
//! written before delta updates gains them at its next publish. Chunks are
//! named by their content and never rewritten: releases share them.
//!
//! Every bundle is copied into the repository first and the copy is verified
//! (signature with the key's public half, every payload streamed and hashed), so
//! what is listed is exactly what was checked. An existing index is kept and
//! added to — but only after its own signature verified with the same key: berth
//! never re-signs an index someone else changed.
//!
//! Write order: bundles (new names, never overwritten), then the index, then its
//! signature, each through a temporary file, fsync and rename. A client reading
//! in between can see a new index with the old signature (or the reverse): the
//! signature then fails to verify, the client refuses the pair and retries, and
//! nothing is installed from it. A publisher that stops between the two renames
//! leaves such a pair until it is run again.
//!
//! The index's `generated` time is `SOURCE_DATE_EPOCH` when set, else the clock:
//! the same bundles, key and time give the same bytes.
//!
//! A new bundle may get rollout waves (`--rollout`, started at the publish
//! time); a listed release may be paused, resumed or withdrawn (final). Both
//! are fields of its index entry, re-signed like any other change; publishing
//! bundles keeps the entries already listed as they are, flags included.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use berth_bundle::channel::{
    self, verify_index, ChannelError, ChannelIndex, ChannelName, Expiry, IndexEntry, Rollout, Wave,
    BUNDLES_DIR, INDEX_FORMAT,
};
use berth_bundle::rollout::format_schedule;
use berth_bundle::{ImageVersion, SecretKey, SecretKeyError, TrustedKeys};

use berth_bundle::delta;
use berth_bundle::writer::Hashing;

use crate::release::bundle::{inspect, PayloadCheck};

/// How long an index stays valid unless told otherwise.
pub const DEFAULT_LIFETIME: &str = "30d";

/// Failure publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] SecretKeyError),
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("the secret key's public half: {0}")]
    PublicKey(#[source] berth_bundle::BundleError),
    #[error("{path}: refused, the bundle does not verify with the key's public half: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("{index}: the repository's index does not verify with this key ({source}); refusing to add to it and re-sign it")]
    ExistingIndex {
        index: PathBuf,
        #[source]
        source: ChannelError,
    },
    #[error("{0} exists without its signature {0}.minisig: restore it, or remove the index to start the channel afresh")]
    UnsignedIndex(PathBuf),
    #[error("the index lists {path} ({size} bytes), but the repository has {found}")]
    MissingBundle {
        path: String,
        size: u64,
        found: String,
    },
    #[error("{compatible} {version} is already published as {existing} with other content than {path}: versions are immutable, bump the version")]
    VersionTaken {
        compatible: String,
        version: String,
        existing: String,
        path: PathBuf,
    },
    #[error("{path}: cutting it into chunks: {reason}")]
    Chunks { path: PathBuf, reason: String },
    #[error("--expires {0:?} is not a duration like 30d, 12h, 90m or 3600s")]
    Lifetime(String),
    #[error("{compatible} {version} is already published {existing}: a rollout is set when a release is first published, not changed later")]
    RolloutFixed {
        compatible: String,
        version: String,
        existing: String,
    },
    #[error("{what}: version {version} is not in the index of channel {channel}")]
    NotListed {
        what: &'static str,
        version: String,
        channel: String,
    },
    #[error("{what}: version {version} is listed for several compatible strings ({found}): pass --compatible")]
    Ambiguous {
        what: &'static str,
        version: String,
        found: String,
    },
    #[error("{what}: {compatible} {version} is withdrawn, and withdrawing is final: publish a new version")]
    Withdrawn {
        what: &'static str,
        compatible: String,
        version: String,
    },
}

/// A change to a listed release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No device starts installing it until it is resumed.
    Pause,
    /// Lifts a pause: the rollout goes on by its schedule (waves whose time has
    /// passed open at once).
    Resume,
    /// For good: no device installs it any more.
    Withdraw,
}

impl Action {
    fn flag(self) -> &'static str {
        match self {
            Action::Pause => "--pause",
            Action::Resume => "--resume",
            Action::Withdraw => "--withdraw",
        }
    }
}

/// `--pause`, `--resume` or `--withdraw VERSION [--compatible C]`.
#[derive(Debug, Clone)]
pub struct EntryChange {
    pub action: Action,
    pub version: ImageVersion,
    /// Needed when the version is listed for several compatible strings.
    pub compatible: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `berth publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The bundles to add.
    pub bundles: Vec<PathBuf>,
    /// The repository folder (created when missing).
    pub repo: PathBuf,
    /// The unencrypted minisign secret key (the release key).
    pub key: PathBuf,
    pub channel: ChannelName,
    /// Seconds from `generated` to `expires`.
    pub lifetime: u64,
    /// The index's `generated` time, unix seconds (see [`publish_time`]).
    pub now: u64,
    /// Rollout waves for the bundles this run adds (starting at `now`); `None`:
    /// for every device at once.
    pub rollout: Option<Vec<Wave>>,
    /// A change to a listed release.
    pub change: Option<EntryChange>,
    /// Keep only the newest N releases per compatible string in this
    /// channel, and remove the files no channel references any more.
    pub prune: Option<usize>,
}

/// What `--prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Entries dropped from this channel's index.
    pub entries: Vec<IndexEntry>,
    pub bundles: usize,
    pub chunk_indexes: usize,
    pub chunks: usize,
    /// Bytes of the files removed.
    pub bytes: u64,
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    pub index_path: PathBuf,
    pub signature_path: PathBuf,
    pub index: ChannelIndex,
    /// Entries this run added.
    pub added: Vec<IndexEntry>,
    /// Bundles given that were already listed with the same content.
    pub unchanged: Vec<IndexEntry>,
    pub key_id: String,
    /// What `--prune` removed.
    pub pruned: Option<Pruned>,
}

/// The index's `generated` time: `SOURCE_DATE_EPOCH` when set, else now.
pub fn publish_time() -> u64 {
    crate::build::source_date_epoch().unwrap_or_else(berth_format::state::now)
}

/// Parses an index lifetime: a whole number followed by `d`, `h`, `m` or `s`.
pub fn parse_lifetime(text: &str) -> Result<u64, PublishError> {
    let bad = || PublishError::Lifetime(text.to_string());
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "d" => number.checked_mul(86_400),
        "h" => number.checked_mul(3600),
        "m" => number.checked_mul(60),
        "s" => Some(number),
        _ => None,
    };
    seconds.filter(|s| *s > 0).ok_or_else(bad)
}

/// Adds `options.bundles` to the repository and rewrites the channel index and
/// its signature.
pub fn publish(options: &PublishOptions) -> Result<Published, PublishError> {
    let key = SecretKey::load(&options.key)?;
    let keys = TrustedKeys::parse(&key.public_key_text()).map_err(PublishError::PublicKey)?;
    let repo = &options.repo;
    let bundles_dir = repo.join(BUNDLES_DIR);
    fs::create_dir_all(&bundles_dir).map_err(io_err(&bundles_dir))?;
    let index_path = repo.join(options.channel.index_file());
    let signature_path = repo.join(options.channel.signature_file());

    let mut entries = existing_entries(repo, &index_path, &signature_path, &keys, options)?;
    let mut added = Vec::new();
    let mut unchanged = Vec::new();
    for bundle in &options.bundles {
        let (copy, entry) = copy_and_verify(bundle, &bundles_dir, &keys)?;
        match entries
            .iter()
            .find(|e| e.compatible == entry.compatible && e.version == entry.version)
        {
            // The copy is dropped (removed): the listed file is the same bytes.
            Some(listed) if listed.sha256 == entry.sha256 => {
                if let Some(waves) = &options.rollout {
                    if listed.rollout.as_ref().map(|r| &r.waves) != Some(waves) {
                        return Err(PublishError::RolloutFixed {
                            compatible: entry.compatible,
                            version: entry.version.to_string(),
                            existing: match &listed.rollout {
                                Some(r) => format!("with rollout {}", format_schedule(&r.waves)),
                                None => "without a rollout (for everyone at once)".into(),
                            },
                        });
                    }
                }
                unchanged.push(listed.clone())
            }
            Some(listed) => {
                return Err(PublishError::VersionTaken {
                    compatible: entry.compatible,
                    version: entry.version.to_string(),
                    existing: listed.path.clone(),
                    path: bundle.clone(),
                })
            }
            None => {
                let mut entry = entry;
                entry.rollout = options.rollout.clone().map(|waves| Rollout {
                    start: options.now,
                    waves,
                });
                persist(copy, &repo.join(&entry.path))?;
                entries.push(entry.clone());
                added.push(entry);
            }
        }
    }

    if let Some(change) = &options.change {
        apply(change, &mut entries, &options.channel, options.now)?;
    }
    let dropped = match options.prune {
        Some(keep) => keep_newest(&mut entries, keep),
        None => Vec::new(),
    };
    let mut index = ChannelIndex {
        format: INDEX_FORMAT,
        channel: options.channel.to_string(),
        generated: options.now,
        expires: options.now.saturating_add(options.lifetime),
        bundles: entries,
    };
    index.sort();
    index.validate()?;
    // Chunks and chunk indexes before the channel index that makes devices
    // look for them.
    for entry in &index.bundles {
        write_chunks(repo, entry, &key, &keys)?;
    }
    let json = index.to_json();
    let signature = key.sign(&json, &channel::trusted_comment(&index));
    write_atomic(&index_path, &json)?;
    write_atomic(&signature_path, signature.as_bytes())?;
    // Only after the new index is in place: a device that reads it finds
    // everything it lists.
    let pruned = match options.prune {
        Some(_) => {
            let mut pruned = remove_unreferenced(repo, &keys)?;
            pruned.entries = dropped;
            Some(pruned)
        }
        None => None,
    };
    Ok(Published {
        index_path,
        signature_path,
        index,
        added,
        unchanged,
        key_id: key.key_id(),
        pruned,
    })
}

/// Cuts the payloads of the listed bundle `entry` into chunks, stores the new
/// ones and writes its signed chunk index, unless it has one
/// ([`delta::write_chunks`]).
fn write_chunks(
    repo: &Path,
    entry: &IndexEntry,
    key: &SecretKey,
    keys: &TrustedKeys,
) -> Result<bool, PublishError> {
    let bundle = repo.join(&entry.path);
    delta::write_chunks(repo, &bundle, &entry.sha256, entry.size, key, keys).map_err(|e| {
        PublishError::Chunks {
            path: bundle.clone(),
            reason: e.to_string(),
        }
    })
}

/// Keeps the newest `keep` entries of each compatible string; returns the others.
fn keep_newest(entries: &mut Vec<IndexEntry>, keep: usize) -> Vec<IndexEntry> {
    let mut sorted = std::mem::take(entries);
    // By compatible string, newest first.
    sorted.sort_by(|a, b| {
        a.compatible
            .cmp(&b.compatible)
            .then_with(|| b.version.cmp(&a.version))
    });
    let mut dropped = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for entry in sorted {
        let count = seen.entry(entry.compatible.clone()).or_default();
        *count += 1;
        if *count <= keep {
            entries.push(entry);
        } else {
            dropped.push(entry);
        }
    }
    dropped
}

/// Removes the bundles, chunk indexes and chunks that no channel index of the
/// repository references. Every `*.json` beside its `.minisig` at the top of
/// the repository is a channel index; one that does not verify with `keys`
/// stops the pruning (its references cannot be trusted to be complete, and
/// removing what it may list could break its devices).
fn remove_unreferenced(repo: &Path, keys: &TrustedKeys) -> Result<Pruned, PublishError> {
    use std::collections::HashSet;
    let mut bundles = HashSet::new();
    let mut chunks = HashSet::new();
    for file in fs::read_dir(repo).map_err(io_err(repo))? {
        let path = file.map_err(io_err(repo))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(channel) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(channel) = ChannelName::new(channel) else {
            continue;
        };
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let signature_path = repo.join(channel.signature_file());
        let signature = fs::read(&signature_path).map_err(io_err(&signature_path))?;
        let verified = verify_index(
            &bytes,
            &signature,
            keys,
            &channel,
            Expiry::IgnoreForRepublishing,
        )
        .map_err(|source| PublishError::ExistingIndex {
            index: path.clone(),
            source,
        })?;
        for entry in verified.index.bundles {
            let index_path = repo.join(delta::chunk_index_path(&entry.sha256));
            if let Ok(json) = fs::read(&index_path) {
                let index: delta::ChunkIndex =
                    serde_json::from_slice(&json).map_err(|e| PublishError::Chunks {
                        path: index_path.clone(),
                        reason: e.to_string(),
                    })?;
                chunks.extend(
                    index
                        .payloads
                        .into_iter()
                        .flat_map(|p| p.chunks)
                        .map(|c| c.sha256),
                );
            }
            bundles.insert(entry.sha256);
        }
    }
    let mut pruned = Pruned::default();
    let mut remove = |path: &Path| -> Result<(), PublishError> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path).map_err(io_err(path))?;
        pruned.bytes += len;
        Ok(())
    };
    let listing = |dir: &Path| -> Result<Vec<PathBuf>, PublishError> {
        match fs::read_dir(dir) {
            Ok(files) => files
                .map(|f| f.map(|f| f.path()).map_err(io_err(dir)))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(dir)(e)),
        }
    };
    let stem = |path: &Path, suffix: &str| {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .map(str::to_string)
    };
    for path in listing(&repo.join(BUNDLES_DIR))? {
        if let Some(sha) = stem(&path, ".bundle") {
            if !bundles.contains(&sha) {
                remove(&path)?;
                pruned.bundles += 1;
            }
        }
    }
    for path in listing(&repo.join(delta::CHUNK_INDEX_DIR))? {
        let sha = stem(&path, ".json.minisig")
            .or_else(|| stem(&path, ".json.zst"))
            .or_else(|| stem(&path, ".json"));
        if let Some(sha) = sha {
            if !bundles.contains(&sha) {
                if path.extension().is_some_and(|e| e == "json") {
                    pruned.chunk_indexes += 1;
                }
                remove(&path)?;
            }
        }
    }
    for dir in listing(&repo.join(delta::CHUNKS_DIR))? {
        for path in listing(&dir)? {
            if let Some(sha) = stem(&path, ".zst") {
                if !chunks.contains(&sha) {
                    remove(&path)?;
                    pruned.chunks += 1;
                }
            }
        }
    }
    for dir in [
        repo.join(BUNDLES_DIR),
        repo.join(delta::CHUNK_INDEX_DIR),
        repo.join(delta::CHUNKS_DIR),
    ] {
        sync_dir(&dir).or_else(|e| match &e {
            PublishError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })?;
    }
    Ok(pruned)
}

/// Pauses, resumes or withdraws the listed entry `change` names, at `now`.
fn apply(
    change: &EntryChange,
    entries: &mut [IndexEntry],
    channel: &ChannelName,
    now: u64,
) -> Result<(), PublishError> {
    let what = change.action.flag();
    let mut found: Vec<&mut IndexEntry> = entries
        .iter_mut()
        .filter(|e| e.version == change.version)
        .filter(|e| {
            change
                .compatible
                .as_ref()
                .is_none_or(|c| &e.compatible == c)
        })
        .collect();
    let entry = match found.len() {
        0 => {
            return Err(PublishError::NotListed {
                what,
                version: match &change.compatible {
                    Some(c) => format!("{} (compatible {c})", change.version),
                    None => change.version.to_string(),
                },
                channel: channel.to_string(),
            })
        }
        1 => found.pop().expect("one entry"),
        _ => {
            return Err(PublishError::Ambiguous {
                what,
                version: change.version.to_string(),
                found: found
                    .iter()
                    .map(|e| e.compatible.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    if entry.withdrawn && change.action != Action::Withdraw {
        return Err(PublishError::Withdrawn {
            what,
            compatible: entry.compatible.clone(),
            version: entry.version.to_string(),
        });
    }
    match change.action {
        // Pausing again keeps the first pause's time.
        Action::Pause if entry.paused => {}
        Action::Pause => {
            entry.paused = true;
            entry.paused_since = Some(now);
        }
        Action::Resume => {
            // The rollout's clock stood still while it was paused: a wave
            // whose time passed meanwhile does not open all at once.
            if let (Some(since), Some(rollout)) = (entry.paused_since, entry.rollout.as_mut()) {
                rollout.start = rollout.start.saturating_add(now.saturating_sub(since));
            }
            entry.paused = false;
            entry.paused_since = None;
        }
        Action::Withdraw => entry.withdrawn = true,
    }
    Ok(())
}

/// The entries of the repository's current index, after checking its
/// signature with the publishing key and that each listed bundle is there.
fn existing_entries(
    repo: &Path,
    index_path: &Path,
    signature_path: &Path,
    keys: &TrustedKeys,
    options: &PublishOptions,
) -> Result<Vec<IndexEntry>, PublishError> {
    let index = match fs::read(index_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(index_path)(e)),
    };
    let signature = match fs::read(signature_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PublishError::UnsignedIndex(index_path.to_path_buf()))
        }
        Err(e) => return Err(io_err(signature_path)(e)),
    };
    let verified = verify_index(
        &index,
        &signature,
        keys,
        &options.channel,
        Expiry::IgnoreForRepublishing,
    )
    .map_err(|source| PublishError::ExistingIndex {
        index: index_path.to_path_buf(),
        source,
    })?;
    for entry in &verified.index.bundles {
        let path = repo.join(&entry.path);
        let found = match fs::metadata(&path) {
            Ok(m) if m.len() == entry.size => continue,
            Ok(m) => format!("{} bytes there", m.len()),
            Err(e) => e.to_string(),
        };
        return Err(PublishError::MissingBundle {
            path: entry.path.clone(),
            size: entry.size,
            found,
        });
    }
    Ok(verified.index.bundles)
}

/// Copies one bundle into a temporary file in `bundles_dir` (hashing it) and
/// verifies the copy; [`persist`] then names it `<sha256>.bundle`.
fn copy_and_verify(
    bundle: &Path,
    bundles_dir: &Path,
    keys: &TrustedKeys,
) -> Result<(tempfile::NamedTempFile, IndexEntry), PublishError> {
    let source = File::open(bundle).map_err(io_err(bundle))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".berth-publish-")
        .tempfile_in(bundles_dir)
        .map_err(io_err(bundles_dir))?;
    let mut reader = Hashing::new(io::BufReader::with_capacity(1 << 20, source));
    io::copy(&mut reader, temp.as_file_mut()).map_err(io_err(bundle))?;
    let (_, sha256, size) = reader.digest();
    let inspection = inspect(temp.path(), Some(keys), PayloadCheck::Stream).map_err(|e| {
        PublishError::BadBundle {
            path: bundle.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let manifest = match (inspection.error, inspection.manifest) {
        (None, Some(manifest)) => manifest,
        (error, _) => {
            return Err(PublishError::BadBundle {
                path: bundle.to_path_buf(),
                reason: error.unwrap_or_else(|| "no manifest".into()),
            })
        }
    };
    let entry = IndexEntry {
        name: manifest.name,
        compatible: manifest.compatible,
        version: manifest.version,
        min_version: manifest.min_version,
        path: format!("{BUNDLES_DIR}/{sha256}.bundle"),
        size,
        sha256,
        rollout: None,
        paused: false,
        paused_since: None,
        withdrawn: false,
    };
    Ok((temp, entry))
}

/// A verified copy to its place: fsync, mode 0644 (a bundle is public, like the
/// image it was made from), rename, fsync of the folder.
fn persist(copy: tempfile::NamedTempFile, target: &Path) -> Result<(), PublishError> {
    copy.as_file()
        .sync_all()
        .and_then(|()| {
            copy.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .map_err(io_err(target))?;
    copy.persist(target).map_err(|e| PublishError::Io {
        path: target.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Temporary file in the same folder, then [`persist`] over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".berth-publish-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    temp.write_all(bytes).map_err(io_err(path))?;
    persist(temp, path)
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every file under `dir/chunks` with its inode.
    fn chunk_files(repo: &Path) -> BTreeMap<PathBuf, u64> {
        use std::os::unix::fs::MetadataExt;
        let mut out = BTreeMap::new();
        let Ok(dirs) = fs::read_dir(repo.join(delta::CHUNKS_DIR)) else {
            return out;
        };
        for dir in dirs {
            for file in fs::read_dir(dir.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let ino = fs::metadata(&path).unwrap().ino();
                out.insert(path, ino);
            }
        }
        out
    }

    /// A new release key, its secret half written to `dir/release.key`, and
    /// the trusted keys of its public half.
    fn release_key(dir: &Path) -> (SecretKey, PathBuf, TrustedKeys) {
        let key = SecretKey::generate().unwrap();
        let path = dir.join("release.key");
        fs::write(&path, key.secret_key_text()).unwrap();
        let keys = TrustedKeys::parse(&key.public_key_text()).unwrap();
        (key, path, keys)
    }

    fn release(dir: &Path, key: &SecretKey, version: &str, payloads: &[Vec<u8>]) -> PathBuf {
        let path = dir.join(format!("hello-{version}.bundle"));
        fs::write(
            &path,
            berth_bundle::testkit::bundle_signed_by(key, version, payloads),
        )
        .unwrap();
        path
    }

    #[test]
    fn publishing_writes_shared_chunks_and_a_signed_chunk_index() {
        use berth_bundle::testkit::content;
        let dir = tempfile::tempdir().unwrap();
        let (key, key_path, keys) = release_key(dir.path());
        let repo = dir.path().join("repo");
        let rootfs = content(1, 3 << 20);
        let v1 = [rootfs.clone(), content(2, 1 << 20), content(3, 300_000)];
        let mut rootfs2 = rootfs.clone();
        rootfs2[1 << 20..(1 << 20) + 5000].fill(b'z');
        let v2 = [rootfs2, v1[1].clone(), v1[2].clone()];
        let options = |bundle: PathBuf| PublishOptions {
            bundles: vec![bundle],
            repo: repo.clone(),
            key: key_path.clone(),
            channel: ChannelName::new("stable").unwrap(),
            lifetime: 86_400,
            now: 1_000,
            rollout: None,
            change: None,
            prune: None,
        };
        let first = publish(&options(release(dir.path(), &key, "1.0.0", &v1))).unwrap();
        let after_first = chunk_files(&repo);
        let entry = &first.added[0];
        let read = |entry: &IndexEntry| {
            let path = repo.join(delta::chunk_index_path(&entry.sha256));
            let json = fs::read(&path).unwrap();
            let signature = fs::read(delta::signature_path(&path)).unwrap();
            delta::verify_chunk_index(&json, &signature, &keys, &entry.sha256).unwrap()
        };
        let index = read(entry).index;
        assert_eq!(index.bundle_size, entry.size);
        // Every chunk is there, compressed, and decompresses to its name.
        for chunk in index.payloads.iter().flat_map(|p| &p.chunks) {
            let stored = fs::read(repo.join(chunk.path())).unwrap();
            assert_eq!(stored.len() as u64, u64::from(chunk.stored_size));
            let raw = zstd::decode_all(stored.as_slice()).unwrap();
            assert_eq!(delta::sha256_hex(&raw), chunk.sha256);
        }
        let second = publish(&options(release(dir.path(), &key, "1.1.0", &v2))).unwrap();
        let after_second = chunk_files(&repo);
        // The chunks of 1.0.0 are untouched (same inode: never rewritten), and
        // 1.1.0 added only the few around the change.
        for (path, ino) in &after_first {
            assert_eq!(after_second.get(path), Some(ino), "{}", path.display());
        }
        let new = after_second.len() - after_first.len();
        assert!((1..=3).contains(&new), "{new} new chunks");
        let index2 = read(&second.added[0]).index;
        assert_eq!(
            index2.payloads[1], index.payloads[1],
            "same kernel, same chunks"
        );
        // Publishing again writes nothing new.
        publish(&options(release(dir.path(), &key, "1.1.0", &v2))).unwrap();
        assert_eq!(chunk_files(&repo), after_second);
    }

    /// Versions are immutable: other bytes under a published version are
    /// refused and change nothing; the same bundle again, or no bundle,
    /// re-signs the index with a later expiry (the renewal docs/updates.md
    /// asks publishers to run before an index runs out).
    #[test]
    fn a_published_version_is_immutable_and_publishing_again_renews_the_index() {
        use berth_bundle::testkit::content;
        // Every file of the repository (bundles, chunks, indexes) and its bytes.
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), fs::read(&path).unwrap());
                }
            }
        }
        let files = |repo: &Path| {
            let mut out = BTreeMap::new();
            walk(repo, &mut out);
            out
        };
        let dir = tempfile::tempdir().unwrap();
        let (key, key_path, keys) = release_key(dir.path());
        let repo = dir.path().join("repo");
        let options = |bundles: Vec<PathBuf>, now: u64| PublishOptions {
            bundles,
            repo: repo.clone(),
            key: key_path.clone(),
            channel: ChannelName::new("stable").unwrap(),
            lifetime: 86_400,
            now,
            rollout: None,
            change: None,
            prune: None,
        };
        let payloads = [content(1, 1 << 20), content(2, 5000), content(3, 5000)];
        let first = release(dir.path(), &key, "1.0.0", &payloads);
        let published = publish(&options(vec![first.clone()], 1_000)).unwrap();
        assert_eq!(published.index.expires, 1_000 + 86_400);
        let before = files(&repo);

        // Other content under 1.0.0: refused, nothing in the repository changed.
        let other_dir = dir.path().join("other");
        fs::create_dir_all(&other_dir).unwrap();
        let mut changed = payloads.clone();
        changed[1][0] ^= 1;
        let other = release(&other_dir, &key, "1.0.0", &changed);
        let err = publish(&options(vec![other], 2_000)).unwrap_err();
        assert!(matches!(err, PublishError::VersionTaken { .. }), "{err}");
        assert!(err.to_string().contains("versions are immutable"), "{err}");
        assert_eq!(
            files(&repo),
            before,
            "a refused publish changed the repository"
        );

        // The same bundle again, then no bundle after the index ran out
        // (87,400): re-signed, a later expiry, the same single entry.
        for (bundles, now) in [(vec![first.clone()], 50_000), (Vec::new(), 200_000)] {
            let renewed = publish(&options(bundles, now)).unwrap();
            assert!(renewed.added.is_empty());
            assert_eq!(renewed.index.generated, now);
            assert_eq!(renewed.index.expires, now + 86_400);
            assert_eq!(renewed.index.bundles.len(), 1);
            assert_eq!(
                renewed.index.bundles[0].sha256,
                published.index.bundles[0].sha256
            );
            let json = fs::read(&renewed.index_path).unwrap();
            let signature = fs::read(&renewed.signature_path).unwrap();
            let read = verify_index(
                &json,
                &signature,
                &keys,
                &ChannelName::new("stable").unwrap(),
                Expiry::Enforce { now: now + 86_399 },
            )
            .unwrap();
            assert_eq!(
                read.index.expires,
                now + 86_400,
                "the signed index carries the new expiry"
            );
        }
    }

    #[test]
    fn pruning_keeps_the_newest_releases_and_what_any_channel_references() {
        use berth_bundle::testkit::content;
        let dir = tempfile::tempdir().unwrap();
        let (key, key_path, _) = release_key(dir.path());
        let repo = dir.path().join("repo");
        let release_payloads = |seed: u32| {
            vec![
                content(seed, 1 << 20),
                content(2, 100_000),
                content(3, 5000),
            ]
        };
        let options = |bundles: Vec<PathBuf>, channel: &str, prune: Option<usize>| PublishOptions {
            bundles,
            repo: repo.clone(),
            key: key_path.clone(),
            channel: ChannelName::new(channel).unwrap(),
            lifetime: 86_400,
            now: 1_000,
            rollout: None,
            change: None,
            prune,
        };
        let mut shas = Vec::new();
        for (seed, version) in (10..).zip(["1.0.0", "1.1.0", "1.2.0"]) {
            let bundle = release(dir.path(), &key, version, &release_payloads(seed));
            let published = publish(&options(vec![bundle], "stable", None)).unwrap();
            shas.push(published.added[0].sha256.clone());
        }
        // 1.1.0 is also on channel beta: pruning stable must keep it.
        let beta = release(dir.path(), &key, "1.1.0", &release_payloads(11));
        publish(&options(vec![beta], "beta", None)).unwrap();
        let chunks_before = chunk_files(&repo).len();

        let pruned = publish(&options(Vec::new(), "stable", Some(1))).unwrap();
        let versions: Vec<String> = pruned
            .index
            .bundles
            .iter()
            .map(|e| e.version.to_string())
            .collect();
        assert_eq!(versions, ["1.2.0"]);
        let report = pruned.pruned.unwrap();
        assert_eq!(report.entries.len(), 2);
        assert_eq!((report.bundles, report.chunk_indexes), (1, 1), "{report:?}");
        assert!(report.chunks > 0 && report.bytes > 0, "{report:?}");
        assert!(!repo.join(format!("bundles/{}.bundle", shas[0])).exists());
        assert!(!repo.join(delta::chunk_index_path(&shas[0])).exists());
        // Every release an index still lists is whole: bundle, chunk index, chunks.
        for sha in &shas[1..] {
            assert!(repo.join(format!("bundles/{sha}.bundle")).exists());
            let index: delta::ChunkIndex =
                serde_json::from_slice(&fs::read(repo.join(delta::chunk_index_path(sha))).unwrap())
                    .unwrap();
            for chunk in index.payloads.iter().flat_map(|p| &p.chunks) {
                assert!(repo.join(chunk.path()).exists(), "{}", chunk.sha256);
            }
        }
        assert_eq!(chunk_files(&repo).len(), chunks_before - report.chunks);
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_lifetime("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_lifetime("90m").unwrap(), 5400);
        assert_eq!(parse_lifetime("3600s").unwrap(), 3600);
        for bad in ["", "d", "0d", "30", "1w", "-1d", "1.5d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    fn listed(compatible: &str, version: &str) -> IndexEntry {
        IndexEntry {
            name: "web".into(),
            compatible: compatible.into(),
            version: version.parse().unwrap(),
            min_version: None,
            path: format!("{BUNDLES_DIR}/{compatible}-{version}.bundle"),
            size: 1,
            sha256: "ab".repeat(32),
            rollout: None,
            paused: false,
            paused_since: None,
            withdrawn: false,
        }
    }

    fn change(action: Action, version: &str, compatible: Option<&str>) -> EntryChange {
        EntryChange {
            action,
            version: version.parse().unwrap(),
            compatible: compatible.map(str::to_string),
        }
    }

    #[test]
    fn a_paused_rollout_goes_on_from_where_it_stood() {
        let stable = ChannelName::new("stable").unwrap();
        let mut entry = listed("web", "1.1.0");
        entry.rollout = Some(berth_bundle::channel::Rollout {
            start: 1_000,
            waves: berth_bundle::rollout::parse_schedule("1%@0h,100%@48h").unwrap(),
        });
        let mut entries = vec![entry];
        // Paused 2 h in; pausing again keeps the first time.
        apply(
            &change(Action::Pause, "1.1.0", None),
            &mut entries,
            &stable,
            1_000 + 7_200,
        )
        .unwrap();
        apply(
            &change(Action::Pause, "1.1.0", None),
            &mut entries,
            &stable,
            50_000,
        )
        .unwrap();
        assert_eq!(entries[0].paused_since, Some(8_200));
        // Resumed three days later: the schedule is shifted by those three days,
        // so it stands 2 h in again, not past its last wave.
        let resumed = 8_200 + 3 * 86_400;
        apply(
            &change(Action::Resume, "1.1.0", None),
            &mut entries,
            &stable,
            resumed,
        )
        .unwrap();
        let e = &entries[0];
        assert!(!e.paused);
        assert_eq!(e.paused_since, None);
        assert_eq!(e.rollout.as_ref().unwrap().start, 1_000 + 3 * 86_400);
        assert_eq!(resumed - e.rollout.as_ref().unwrap().start, 7_200);
    }

    #[test]
    fn pause_resume_and_withdraw_change_one_listed_entry() {
        let stable = ChannelName::new("stable").unwrap();
        let mut entries = vec![listed("web", "1.0.0"), listed("web", "1.1.0")];
        apply(
            &change(Action::Pause, "1.1.0", None),
            &mut entries,
            &stable,
            0,
        )
        .unwrap();
        assert!(entries[1].paused && !entries[0].paused);
        apply(
            &change(Action::Resume, "1.1.0", None),
            &mut entries,
            &stable,
            0,
        )
        .unwrap();
        assert!(!entries[1].paused);
        let err = apply(
            &change(Action::Pause, "1.2.0", None),
            &mut entries,
            &stable,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--pause: version 1.2.0 is not in the index of channel stable"),
            "{err}"
        );
        apply(
            &change(Action::Withdraw, "1.1.0", None),
            &mut entries,
            &stable,
            0,
        )
        .unwrap();
        assert!(entries[1].withdrawn);
        for action in [Action::Resume, Action::Pause] {
            let err = apply(&change(action, "1.1.0", None), &mut entries, &stable, 0)
                .unwrap_err()
                .to_string();
            assert!(err.contains("withdrawing is final"), "{err}");
        }
        // The same version for two boards: --compatible picks one.
        entries.push(listed("other", "1.0.0"));
        let err = apply(
            &change(Action::Pause, "1.0.0", None),
            &mut entries,
            &stable,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pass --compatible"), "{err}");
        apply(
            &change(Action::Pause, "1.0.0", Some("other")),
            &mut entries,
            &stable,
            0,
        )
        .unwrap();
        assert!(entries[2].paused && !entries[0].paused);
        let err = apply(
            &change(Action::Pause, "1.0.0", Some("third")),
            &mut entries,
            &stable,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("1.0.0 (compatible third)"), "{err}");
    }
}
