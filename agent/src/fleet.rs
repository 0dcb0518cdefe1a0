//! `berth-update check` and `berth-update update`: the device's side of the
//! update repository (see [`crate::channel`]).
//!
//! The repository is `--repo` when given, else `[update] repository` from the
//! provisioning settings the init kept on the data partition
//! ([`PROVISION_SAVED_FILE`]). `check` fetches the channel's signature and index,
//! verifies them against the image's trust anchors (signature, channel, expiry)
//! and picks the newest bundle for this device; `update` then installs it through
//! the ordinary install path, which verifies the bundle's own signature and
//! refuses downgrades again. While the bundle streams in, its size and sha256
//! are compared with the index's, and a mismatch stops the install before its
//! commit point.
//!
//! Rollout waves: the device's random seed ([`device_seed`], kept next to the
//! state file) gives it a stable position in every release's rollout, and
//! `check` only offers a release whose wave is open for that position (and that
//! is neither paused nor withdrawn). Replays: the `generated` time of the newest
//! index verified per channel is kept in the state file, and an older index is
//! refused even while it has not expired.
//!
//! An idle check costs only the signature: the last verified index is kept
//! ([`crate::index_cache`]) and fetched again only when the signature changed.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::delta;
use super::index_cache::IndexCache;
use super::install::{self, install_from, InstallError, InstallOptions, Installed, Observer};
use super::source::{self, SourceError};
use super::system::System;
use berth_bundle::channel::{
    self, verify_index, ChannelError, ChannelName, DeviceSeed, Expiry, IndexEntry, Position,
    Running, VerifiedIndex, MAX_INDEX_SIGNATURE_SIZE, MAX_INDEX_SIZE,
};
use berth_bundle::rollout::SEED_LEN;
use berth_bundle::{BundleError, ImageVersion, TrustedKeys, VersionError};
use berth_format::clock::utc_datetime;
use berth_format::layout::PROVISION_SAVED_FILE;
use berth_format::state::{
    now, CheckOutcome, CheckRecord, Delivery, DeliveryMethod, StateError, UpdateState,
};

/// Why a check or update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no update repository: pass --repo http://HOST/PATH, or provision one ([update] repository in the ESP's berth/provision.toml, kept by the init in {0})")]
    NoRepository(PathBuf),
    #[error("{path}: {message}")]
    Provision { path: PathBuf, message: String },
    #[error("{0}: not an update repository (an http:// or https:// URL, or a folder)")]
    Scheme(String),
    // These carry their cause as a plain field, not as `source`: their message
    // already includes it, and the agent prints the whole error chain.
    #[error("fetching {url}: {error}")]
    Fetch { url: String, error: SourceError },
    #[error("reading {url}: {error}")]
    Read { url: String, error: io::Error },
    #[error("{url} is larger than the {limit} bytes allowed")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {error}")]
    Index { url: String, error: ChannelError },
    #[error(
        "no trusted keys in {0}: this image was built without [update] keys and accepts no update"
    )]
    NoKeys(PathBuf),
    #[error("{0}")]
    Keys(#[from] BundleError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Install(#[from] InstallError),
    /// The running image's version cannot be compared with the index's.
    #[error("the running image's version: {0}")]
    RunningVersion(#[from] VersionError),
    /// The index is older than one this device already verified.
    #[error("the index of channel {channel} was generated at {generated}, older than the newest this device has seen ({newest}): refusing a replayed index")]
    Replayed {
        channel: String,
        generated: String,
        newest: String,
    },
    /// The rollout seed could not be read or written.
    #[error("the rollout seed {path}: {error}")]
    Seed { path: PathBuf, error: io::Error },
}

/// Where the repository is: a base URL (`http://…`, no trailing slash) or a
/// folder (a repository copied onto the device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository(String);

impl Repository {
    /// Checks a repository location: `http://…`, `https://…` or a path.
    pub fn parse(text: &str) -> Result<Repository, FleetError> {
        let text = text.trim();
        let web = text.starts_with("http://") || text.starts_with("https://");
        if text.is_empty() || (text.contains("://") && !web) {
            return Err(FleetError::Scheme(text.to_string()));
        }
        Ok(Repository(text.trim_end_matches('/').to_string()))
    }

    /// The location of a file of the repository.
    pub fn file(&self, relative: &str) -> String {
        channel::join(&self.0, relative)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The part of the kept provisioning file the agent reads.
#[derive(Debug, Default, Deserialize)]
struct Provisioned {
    #[serde(default)]
    update: ProvisionedUpdate,
}

#[derive(Debug, Default, Deserialize)]
struct ProvisionedUpdate {
    repository: Option<String>,
}

/// `[update] repository` of the provisioning file the init kept, if any.
pub fn provisioned_repository(saved: &Path) -> Result<Option<String>, FleetError> {
    let text = match std::fs::read_to_string(saved) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FleetError::Provision {
                path: saved.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let parsed: Provisioned = toml::from_str(&text).map_err(|e| FleetError::Provision {
        path: saved.to_path_buf(),
        message: e.message().to_string(),
    })?;
    Ok(parsed.update.repository)
}

/// The repository to use: `given` (`--repo`), else the provisioned one from
/// `saved` (normally [`PROVISION_SAVED_FILE`]).
pub fn resolve_repository(given: Option<&str>, saved: &Path) -> Result<Repository, FleetError> {
    match given {
        Some(text) => Repository::parse(text),
        None => match provisioned_repository(saved)? {
            Some(text) => Repository::parse(&text),
            None => Err(FleetError::NoRepository(saved.to_path_buf())),
        },
    }
}

/// [`resolve_repository`] with the init's kept provisioning file.
pub fn device_repository(given: Option<&str>) -> Result<Repository, FleetError> {
    resolve_repository(given, Path::new(PROVISION_SAVED_FILE))
}

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// A newer bundle for this device is listed.
    pub update_available: bool,
    pub repository: String,
    pub channel: String,
    /// The running version.
    pub running: String,
    /// The version offered.
    pub version: Option<String>,
    /// Where the offered bundle is.
    pub bundle_url: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// The index's times, RFC 3339 UTC.
    pub index_generated: String,
    pub index_expires: String,
    /// Key id of the index's signature.
    pub signed_by: String,
    /// This device's place in rollout waves, in percent: `[0, 100)`.
    pub position: f64,
    /// A newer version this device takes once its rollout wave opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// When that wave opens for this device, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_opens_at: Option<String>,
    #[serde(skip)]
    entry: Option<IndexEntry>,
    /// The index's `generated`, unix seconds.
    #[serde(skip)]
    generated: u64,
    /// `wave_opens_at`, unix seconds.
    #[serde(skip)]
    wave_opens: Option<u64>,
}

/// Reads the device's rollout seed from `path` (normally
/// [`System::seed_path`]), creating it on first use: 32 bytes from
/// `/dev/urandom`, written as 64 hex digits to a temporary file, synced, then
/// linked into place (never over an existing seed, so two agents starting at
/// once agree on one). A seed that does not read as 64 hex digits is replaced.
pub fn device_seed(path: &Path) -> Result<DeviceSeed, FleetError> {
    let err = |error| FleetError::Seed {
        path: path.to_path_buf(),
        error,
    };
    for _ in 0..3 {
        match fs::read_to_string(path) {
            Ok(text) => {
                if let Some(seed) = DeviceSeed::from_hex(&text) {
                    return Ok(seed);
                }
                // Garbled (it is written whole, so by hand or a broken disk):
                // the device takes a new place.
                fs::remove_file(path).map_err(err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut bytes = [0u8; SEED_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|error| FleetError::Seed {
                path: PathBuf::from("/dev/urandom"),
                error,
            })?;
        let seed = DeviceSeed(bytes);
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(format!(".tmp{}", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let written = fs::File::create(&temp)
            .and_then(|mut f| {
                f.write_all(format!("{}\n", seed.to_hex()).as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| fs::hard_link(&temp, path));
        let _ = fs::remove_file(&temp);
        match written {
            Ok(()) => {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(err)?;
                return Ok(seed);
            }
            // Another agent made one meanwhile: read it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(io::Error::other("it keeps changing while being read")))
}

/// Reads a small repository file, refusing more than `limit` bytes.
fn fetch_small(url: &str, limit: u64) -> Result<Vec<u8>, FleetError> {
    let reader = source::open(url).map_err(|error| FleetError::Fetch {
        url: url.to_string(),
        error,
    })?;
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| FleetError::Read {
            url: url.to_string(),
            error,
        })?;
    if bytes.len() as u64 > limit {
        return Err(FleetError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// A verified index, and the pair it came from when it was downloaded (to be
/// cached once the whole check accepted it).
struct FetchedIndex {
    verified: VerifiedIndex,
    downloaded: Option<(Vec<u8>, Vec<u8>)>,
}

/// Fetches and verifies the channel's index. The signature is fetched first;
/// when it is the one of the cached index, that index is used (verified again
/// like a download). When the pair does not match (the repository may have
/// been republished in between) both are fetched once more before giving up.
fn fetch_index(
    repo: &Repository,
    channel: &ChannelName,
    keys: &TrustedKeys,
    now: u64,
    cache: &IndexCache,
) -> Result<FetchedIndex, FleetError> {
    let index_url = repo.file(&channel.index_file());
    let signature_url = repo.file(&channel.signature_file());
    let mut retried = false;
    loop {
        let signature = fetch_small(&signature_url, MAX_INDEX_SIGNATURE_SIZE)?;
        let cached = cache
            .index_for(repo.as_str(), channel.as_str(), &signature)
            .and_then(|index| {
                verify_index(&index, &signature, keys, channel, Expiry::Enforce { now }).ok()
            });
        if let Some(verified) = cached {
            return Ok(FetchedIndex {
                verified,
                downloaded: None,
            });
        }
        let index = fetch_small(&index_url, MAX_INDEX_SIZE)?;
        match verify_index(&index, &signature, keys, channel, Expiry::Enforce { now }) {
            Err(ChannelError::SignatureMismatch) if !retried => {
                retried = true;
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            Ok(verified) => {
                return Ok(FetchedIndex {
                    verified,
                    downloaded: Some((index, signature)),
                })
            }
            Err(error) => {
                return Err(FleetError::Index {
                    url: index_url,
                    error,
                })
            }
        }
    }
}

/// Looks at the repository: the newest bundle for this device, if any. Records
/// the outcome in the state file.
pub fn check(
    system: &System,
    repo: &Repository,
    channel: &ChannelName,
) -> Result<CheckReport, FleetError> {
    let result = device_seed(&system.seed_path())
        .and_then(|seed| check_unrecorded(system, repo, channel, seed.position(), now()));
    let (outcome, version, reason) = match &result {
        Ok(r) if r.update_available => (
            CheckOutcome::UpdateAvailable,
            r.version.clone().unwrap_or_default(),
            String::new(),
        ),
        Ok(_) => (CheckOutcome::UpToDate, String::new(), String::new()),
        Err(e) => (CheckOutcome::Failed, String::new(), e.to_string()),
    };
    let recorded = UpdateState::update(&system.state_path, |state| {
        state.check = Some(CheckRecord {
            repository: repo.as_str().to_string(),
            channel: channel.to_string(),
            outcome,
            version,
            reason,
            at: now(),
            waiting_for: result
                .as_ref()
                .ok()
                .and_then(|r| r.waiting_for.clone())
                .unwrap_or_default(),
            wave_opens_at: result.as_ref().ok().and_then(|r| r.wave_opens),
        });
        if let Ok(report) = &result {
            let newest = state.newest_index.entry(channel.to_string()).or_default();
            *newest = (*newest).max(report.generated);
        }
    });
    let report = result?;
    recorded?;
    Ok(report)
}

fn check_unrecorded(
    system: &System,
    repo: &Repository,
    channel: &ChannelName,
    position: Position,
    now: u64,
) -> Result<CheckReport, FleetError> {
    let keys = TrustedKeys::load_dir(&system.keys_dir)?;
    if keys.is_empty() {
        return Err(FleetError::NoKeys(system.keys_dir.clone()));
    }
    let running = ImageVersion::parse(&system.image.version)?;
    let cache = IndexCache::beside(&system.state_path);
    let FetchedIndex {
        verified,
        downloaded,
    } = fetch_index(repo, channel, &keys, now, &cache)?;
    let state = UpdateState::load(&system.state_path)?;
    if let Some(newest) = state.newest_index.get(channel.as_str()) {
        if verified.index.generated < *newest {
            return Err(FleetError::Replayed {
                channel: channel.to_string(),
                generated: utc_datetime(verified.index.generated),
                newest: utc_datetime(*newest),
            });
        }
    }
    if let Some((index, signature)) = downloaded {
        // Only an optimisation: a device that cannot keep it fetches again.
        if let Err(err) = cache.store(repo.as_str(), channel.as_str(), &index, &signature) {
            eprintln!("keeping the verified index: {err}");
        }
    }
    let plan = verified.index.plan(Running {
        compatible: &system.image.compatible,
        version: &running,
        position,
        now,
    });
    let entry = plan.install.cloned();
    Ok(CheckReport {
        update_available: entry.is_some(),
        repository: repo.as_str().to_string(),
        channel: channel.to_string(),
        running: system.image.version.clone(),
        version: entry.as_ref().map(|e| e.version.to_string()),
        bundle_url: entry.as_ref().map(|e| repo.file(&e.path)),
        size: entry.as_ref().map(|e| e.size),
        sha256: entry.as_ref().map(|e| e.sha256.clone()),
        index_generated: utc_datetime(verified.index.generated),
        index_expires: utc_datetime(verified.index.expires),
        signed_by: verified.signature.key_id,
        position: position.percent(),
        waiting_for: plan.waiting.map(|(e, _)| e.version.to_string()),
        wave_opens_at: plan.waiting.map(|(_, at)| utc_datetime(at)),
        entry,
        generated: verified.index.generated,
        wave_opens: plan.waiting.map(|(_, at)| at),
    })
}

/// What `update` did.
#[derive(Debug)]
pub enum UpdateOutcome {
    /// Nothing newer in the channel.
    UpToDate(CheckReport),
    /// The picked bundle is installed and boots next.
    Installed(CheckReport, Installed),
}

/// Checks, then installs the picked bundle (streamed; its size and sha256 are
/// checked against the index on the way).
pub fn update(
    system: &System,
    repo: &Repository,
    channel: &ChannelName,
    options: &InstallOptions,
    observer: &mut dyn Observer,
) -> Result<UpdateOutcome, FleetError> {
    let report = check(system, repo, channel)?;
    match install_offer(system, &report, options, observer)? {
        Some(installed) => Ok(UpdateOutcome::Installed(report, installed)),
        None => Ok(UpdateOutcome::UpToDate(report)),
    }
}

/// Installs the bundle a [`check`] picked (nothing when it picked none): by
/// delta when the repository has a chunk index for it and the delta pays
/// ([`crate::delta`]), else — or when the delta fails before its commit
/// point — the full bundle, compared with the index's size and sha256 as it
/// streams in. Which one, why and the bytes fetched go into the log and the
/// install record.
pub fn install_offer(
    system: &System,
    report: &CheckReport,
    options: &InstallOptions,
    observer: &mut dyn Observer,
) -> Result<Option<Installed>, FleetError> {
    let (Some(entry), Some(url)) = (&report.entry, &report.bundle_url) else {
        return Ok(None);
    };
    observer.step(&format!(
        "channel {} offers {} {}: installing {url}",
        report.channel, entry.compatible, entry.version
    ));
    let reason = match delta::prepare(system, &report.repository, entry, options, observer) {
        Ok(prepared) => {
            let summary = prepared.summary();
            observer.step(&format!("installing by delta: {summary}"));
            let delivery = Delivery {
                method: DeliveryMethod::Delta,
                reason: summary,
                fetched: prepared.fetched,
                bundle_size: prepared.bundle_size,
            };
            let origin = format!("{url} (by delta)");
            let result = install_from(system, &origin, options, Some(delivery), observer, |_| {
                Ok(Box::new(prepared.source()))
            });
            match result {
                Ok(installed) => {
                    prepared.clear();
                    return Ok(Some(installed));
                }
                // Refusals do not depend on where the payloads come from.
                Err(e @ (InstallError::Refused(_) | InstallError::NoKeys(_))) => {
                    return Err(e.into())
                }
                Err(e) => {
                    prepared.clear();
                    format!("the delta install failed before its commit point ({e})")
                }
            }
        }
        Err(e) => e.to_string(),
    };
    observer.step(&format!("installing the full bundle: {reason}"));
    let delivery = Delivery {
        method: DeliveryMethod::Full,
        reason,
        fetched: entry.size,
        bundle_size: entry.size,
    };
    // Opened inside the install, so a bundle that cannot be fetched is
    // recorded as a failed install, with why the delta was not used.
    Ok(Some(install_from(
        system,
        url,
        options,
        Some(delivery),
        observer,
        |keys| {
            let reader = source::open(url).map_err(|error| InstallError::Fetch {
                url: url.clone(),
                message: error.to_string(),
            })?;
            install::open_bundle(MatchIndex::new(reader, entry), keys)
        },
    )?))
}

/// Passes a bundle through, and fails the read that reaches its end (or passes
/// its size) when it is not the file the index lists. The bundle reader reads to
/// the end of the archive before the install's commit point, so a mismatch stops
/// the install with the target slot still unbootable.
struct MatchIndex<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    size: u64,
    sha256: String,
}

impl<R: Read> MatchIndex<R> {
    fn new(inner: R, entry: &IndexEntry) -> MatchIndex<R> {
        MatchIndex {
            inner,
            hasher: Sha256::new(),
            read: 0,
            size: entry.size,
            sha256: entry.sha256.clone(),
        }
    }

    fn mismatch(message: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: Read> Read for MatchIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if self.read != self.size {
                return Err(Self::mismatch(format!(
                    "the bundle ends after {} bytes, the channel index lists {}",
                    self.read, self.size
                )));
            }
            let actual = hex::encode(self.hasher.clone().finalize());
            if actual != self.sha256 {
                return Err(Self::mismatch(format!(
                    "the bundle's sha256 is {actual}, the channel index lists {}",
                    self.sha256
                )));
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(Self::mismatch(format!(
                "the bundle is longer than the {} bytes the channel index lists",
                self.size
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_http_or_folders() {
        assert_eq!(
            Repository::parse("http://10.0.2.2:8080/repo/")
                .unwrap()
                .file("stable.json"),
            "http://10.0.2.2:8080/repo/stable.json"
        );
        assert_eq!(
            Repository::parse("/var/tmp/repo")
                .unwrap()
                .file("stable.json"),
            "/var/tmp/repo/stable.json"
        );
        assert_eq!(
            Repository::parse("https://updates.example/edge/")
                .unwrap()
                .file("stable.json"),
            "https://updates.example/edge/stable.json"
        );
        assert!(matches!(
            Repository::parse("ftp://x/y").unwrap_err(),
            FleetError::Scheme(_)
        ));
    }

    #[test]
    fn the_repository_comes_from_the_flag_else_the_kept_provisioning() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("provision.toml");
        let err = resolve_repository(None, &saved).unwrap_err();
        assert!(matches!(err, FleetError::NoRepository(_)), "{err}");
        assert!(err.to_string().contains("--repo"), "{err}");
        // What the init writes.
        std::fs::write(
            &saved,
            "# applied by berth-init\nhostname = \"edge-1\"\n[update]\nrepository = \"http://10.0.2.2:81/repo\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve_repository(None, &saved).unwrap().as_str(),
            "http://10.0.2.2:81/repo"
        );
        assert_eq!(
            resolve_repository(Some("http://other/r"), &saved)
                .unwrap()
                .as_str(),
            "http://other/r"
        );
        std::fs::write(
            &saved,
            "[update]\nrepository = \"https://updates.example/edge\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve_repository(None, &saved).unwrap().as_str(),
            "https://updates.example/edge"
        );
        std::fs::write(&saved, "hostname = \"edge-1\"\n").unwrap();
        assert!(matches!(
            resolve_repository(None, &saved).unwrap_err(),
            FleetError::NoRepository(_)
        ));
    }

    fn entry_for(bytes: &[u8]) -> IndexEntry {
        IndexEntry {
            name: "hello".into(),
            compatible: "hello".into(),
            version: "1.1.0".parse().unwrap(),
            min_version: None,
            path: "bundles/x.bundle".into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            rollout: None,
            paused: false,
            paused_since: None,
            withdrawn: false,
        }
    }

    #[test]
    fn a_bundle_must_be_the_file_the_index_lists() {
        let data = vec![7u8; 5000];
        let entry = entry_for(&data);
        let mut out = Vec::new();
        MatchIndex::new(data.as_slice(), &entry)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        let mut changed = data.clone();
        changed[100] ^= 1;
        let err = MatchIndex::new(changed.as_slice(), &entry)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let err = MatchIndex::new(&data[..4000], &entry)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("ends after 4000 bytes"), "{err}");
        let longer = [data.as_slice(), b"x"].concat();
        let err = MatchIndex::new(longer.as_slice(), &entry)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    use crate::status::tests::scratch_system;
    use berth_bundle::channel::{ChannelIndex, Rollout, Wave, INDEX_FORMAT};
    use berth_bundle::testkit::Key;
    use berth_format::layout::Slot;

    /// A 1.0.0 device trusting `key`, and a folder repository.
    fn device_and_repo(dir: &Path, key: &Key) -> (System, Repository) {
        let system = scratch_system(dir, Slot::A, "1.0.0");
        fs::create_dir_all(&system.keys_dir).unwrap();
        fs::write(system.keys_dir.join("release.pub"), key.public_text()).unwrap();
        let repo_dir = dir.join("repo");
        fs::create_dir_all(&repo_dir).unwrap();
        let repo = Repository::parse(repo_dir.to_str().unwrap()).unwrap();
        (system, repo)
    }

    /// Publishes `entries` into the folder repository, generated at `generated`.
    fn publish(key: &Key, repo: &Repository, generated: u64, entries: Vec<IndexEntry>) {
        let index = ChannelIndex {
            format: INDEX_FORMAT,
            channel: "stable".into(),
            generated,
            expires: generated + 30 * 86_400,
            bundles: entries,
        };
        let json = index.to_json();
        fs::write(repo.file("stable.json"), &json).unwrap();
        fs::write(repo.file("stable.json.minisig"), key.sign(&json)).unwrap();
    }

    fn hello(version: &str) -> IndexEntry {
        let mut e = entry_for(version.as_bytes());
        e.version = version.parse().unwrap();
        e.path = format!("bundles/{version}.bundle");
        e
    }

    fn stable() -> ChannelName {
        ChannelName::new("stable").unwrap()
    }

    #[test]
    fn an_index_older_than_the_newest_seen_is_refused_as_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let (system, repo) = device_and_repo(dir.path(), &key);
        let t = now() - 3600;
        publish(&key, &repo, t, vec![hello("1.1.0")]);
        let report = check(&system, &repo, &stable()).unwrap();
        assert_eq!(report.version.as_deref(), Some("1.1.0"));
        let state = UpdateState::load(&system.state_path).unwrap();
        assert_eq!(state.newest_index.get("stable"), Some(&t));
        // The same index again is fine; a newer one moves the mark.
        check(&system, &repo, &stable()).unwrap();
        publish(&key, &repo, t + 60, vec![hello("1.1.0"), hello("1.2.0")]);
        check(&system, &repo, &stable()).unwrap();
        let state = UpdateState::load(&system.state_path).unwrap();
        assert_eq!(state.newest_index.get("stable"), Some(&(t + 60)));
        // The older (still signed, unexpired) index replayed.
        publish(&key, &repo, t, vec![hello("1.1.0")]);
        let err = check(&system, &repo, &stable()).unwrap_err();
        assert!(matches!(err, FleetError::Replayed { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the index of channel stable was generated at {}, older than the newest this device has seen ({})",
                utc_datetime(t),
                utc_datetime(t + 60)
            )),
            "{text}"
        );
        assert!(text.ends_with("refusing a replayed index"), "{text}");
        let state = UpdateState::load(&system.state_path).unwrap();
        assert_eq!(state.newest_index.get("stable"), Some(&(t + 60)));
        let record = state.check.unwrap();
        assert_eq!(record.outcome, CheckOutcome::Failed);
        assert!(record.reason.contains("replayed"), "{}", record.reason);
        // Another channel has its own mark.
        assert_eq!(state.newest_index.len(), 1);
    }

    #[test]
    fn an_unchanged_signature_reuses_the_verified_index() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let (system, repo) = device_and_repo(dir.path(), &key);
        let t = now() - 3600;
        publish(&key, &repo, t, vec![hello("1.1.0")]);
        let first = check(&system, &repo, &stable()).unwrap();
        assert_eq!(first.version.as_deref(), Some("1.1.0"));
        // The served index is gone: with the same signature, the kept one is
        // used (so the index was not read).
        fs::write(repo.file("stable.json"), "not the index").unwrap();
        let again = check(&system, &repo, &stable()).unwrap();
        assert_eq!(again.version.as_deref(), Some("1.1.0"));
        assert_eq!(again.index_generated, first.index_generated);
        // A new signature: the index is fetched (and here, verified) again.
        publish(&key, &repo, t + 60, vec![hello("1.1.0"), hello("1.2.0")]);
        let newer = check(&system, &repo, &stable()).unwrap();
        assert_eq!(newer.version.as_deref(), Some("1.2.0"));
        // A kept index that does not verify is not used: the download is.
        let kept = system
            .state_path
            .with_file_name(crate::index_cache::CACHE_DIR);
        let file = kept.join("stable.json");
        let text = fs::read_to_string(&file).unwrap();
        fs::write(&file, text.replace("1.2.0", "1.9.0")).unwrap();
        let fetched = check(&system, &repo, &stable()).unwrap();
        assert_eq!(fetched.version.as_deref(), Some("1.2.0"));
        // A signature that does not match the served index still fails.
        publish(&key, &repo, t + 120, vec![hello("1.1.0")]);
        fs::write(repo.file("stable.json"), "tampered").unwrap();
        let err = check(&system, &repo, &stable()).unwrap_err();
        assert!(matches!(err, FleetError::Index { .. }), "{err}");
    }

    #[test]
    fn the_seed_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/berth/update/seed");
        let seed = device_seed(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", seed.to_hex()));
        assert_eq!(device_seed(&path).unwrap(), seed);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        let other = device_seed(&dir.path().join("other/seed")).unwrap();
        assert_ne!(other, seed);
        fs::write(&path, "garbled").unwrap();
        assert_ne!(device_seed(&path).unwrap(), seed);
    }

    #[test]
    fn check_reports_the_position_and_the_wave_it_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let (system, repo) = device_and_repo(dir.path(), &key);
        let t = now() - 60;
        let seed = device_seed(&system.seed_path()).unwrap();
        let position = seed.position();
        let mut slow = hello("1.2.0");
        // Everyone but this device at once; this device in a day.
        let waves = if position.hundredths() == 0 {
            vec![Wave {
                percent: 100,
                after: 86_400,
            }]
        } else {
            vec![
                Wave {
                    percent: u8::try_from(position.hundredths() / 100).unwrap().max(1),
                    after: 0,
                },
                Wave {
                    percent: 100,
                    after: 86_400,
                },
            ]
        };
        // A position in the first percent band would be inside wave 1: the
        // test then starts the rollout a day later instead.
        let start = if position.hundredths() < 100 {
            t + 86_400
        } else {
            t
        };
        slow.rollout = Some(Rollout { start, waves });
        publish(&key, &repo, t, vec![hello("1.1.0"), slow]);
        let report = check(&system, &repo, &stable()).unwrap();
        assert_eq!(report.version.as_deref(), Some("1.1.0"));
        assert_eq!(report.waiting_for.as_deref(), Some("1.2.0"));
        assert!(report.wave_opens_at.is_some());
        assert_eq!(report.position, position.percent());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["waiting_for"], "1.2.0");
        assert!(json["position"].is_number());
        assert!(json["wave_opens_at"].is_string());
    }

    /// An HTTP/1.0 server on loopback: every request's path goes to `answer`
    /// with how many requests for that path came before, and gets its bytes.
    fn http_server(
        answer: impl Fn(&str, usize) -> Vec<u8> + Send + 'static,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/repo", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                let before = {
                    let mut seen = seen.lock().unwrap();
                    let before = seen.iter().filter(|p| **p == path).count();
                    seen.push(path.clone());
                    before
                };
                let body = answer(&path, before);
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        (base, requests)
    }

    /// A device that reads the index while the repository is republished can
    /// get the new index with the old signature: it fetches both once more,
    /// and uses the pair when it matches; a pair that still does not match is
    /// an error, and nothing is used.
    #[test]
    fn an_index_and_signature_that_do_not_match_are_fetched_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let keys = key.trusted();
        let now = 1_800_000_000;
        let index = |generated: u64| {
            ChannelIndex {
                format: INDEX_FORMAT,
                channel: "stable".into(),
                generated,
                expires: generated + 86_400,
                bundles: vec![hello("1.1.0")],
            }
            .to_json()
        };
        let (old, new) = (index(now - 100), index(now - 10));
        let (old_sig, new_sig) = (key.sign(&old), key.sign(&new));
        let cache = IndexCache::beside(&dir.path().join("a/state.json"));

        // The old signature first, then the new one: the second pair is used.
        let (serve_new, serve_old) = (new.clone(), old_sig.clone());
        let next_sig = new_sig.clone();
        let (base, requests) = http_server(move |path, before| match path {
            "/repo/stable.json" => serve_new.clone(),
            "/repo/stable.json.minisig" if before == 0 => serve_old.clone().into_bytes(),
            "/repo/stable.json.minisig" => next_sig.clone().into_bytes(),
            _ => Vec::new(),
        });
        let repo = Repository::parse(&base).unwrap();
        let fetched = fetch_index(&repo, &stable(), &keys, now, &cache).unwrap();
        assert_eq!(fetched.verified.index.generated, now - 10);
        let signature_fetches = |requests: &std::sync::Mutex<Vec<String>>| {
            let requests = requests.lock().unwrap();
            requests.iter().filter(|p| p.ends_with(".minisig")).count()
        };
        assert_eq!(signature_fetches(&requests), 2, "fetched once more");

        // A pair that never matches: an error after the second try, not a loop.
        let cache = IndexCache::beside(&dir.path().join("b/state.json"));
        let (base, requests) = http_server(move |path, _| match path {
            "/repo/stable.json" => new.clone(),
            "/repo/stable.json.minisig" => old_sig.clone().into_bytes(),
            _ => Vec::new(),
        });
        let repo = Repository::parse(&base).unwrap();
        let err = match fetch_index(&repo, &stable(), &keys, now, &cache) {
            Ok(_) => panic!("a mismatched index was used"),
            Err(err) => err,
        };
        assert!(
            matches!(
                err,
                FleetError::Index {
                    error: ChannelError::SignatureMismatch,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(signature_fetches(&requests), 2, "tried twice, then gave up");
    }
}
