//! The fleet's update repository: a signed, expiring channel index.
//!
//! A repository is a folder any web server or CDN can serve:
//!
//! ```text
//! stable.json            the channel index (JSON, below)
//! stable.json.minisig    its minisign signature (pre-hashed ED), by a release key
//! bundles/<sha256>.bundle  the signed bundles, named by the sha256 of the file
//! ```
//!
//! `berth publish` writes it; the device agent reads it with [`verify_index`]
//! (signature against the image's trust anchors, then format, channel and
//! expiry) and [`ChannelIndex::pick`] (the newest bundle for this device). The
//! index only points at bundles: each bundle is still checked against its own
//! signature when it is installed, so a repository can at worst withhold an
//! update, never substitute one — and the expiry bounds how long it can replay
//! an old index.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::rollout::{DeviceSeed, Position, Rollout, Wave};
use crate::{BundleError, ImageVersion, TrustedKeys, Verified};
use berth_format::clock::utc_datetime;

/// Version of the index format this crate reads and writes.
pub const INDEX_FORMAT: u32 = 1;
/// Largest index accepted: a device reads it into memory.
pub const MAX_INDEX_SIZE: u64 = 1024 * 1024;
/// Largest index signature accepted.
pub const MAX_INDEX_SIGNATURE_SIZE: u64 = crate::MAX_SIGNATURE_SIZE;
/// The channel a device follows unless told otherwise.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Folder of the bundles inside a repository.
pub const BUNDLES_DIR: &str = "bundles";

/// Failure reading or checking a channel index.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A channel name that cannot name a file in the repository.
    #[error("channel name {0:?} is not valid: use 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")]
    BadChannelName(String),
    /// The index or its signature is larger than allowed.
    #[error("{what} is larger than the {limit} bytes allowed")]
    TooLarge { what: &'static str, limit: u64 },
    /// The signature file is not a minisign signature.
    #[error("the index signature is malformed: {0}")]
    BadSignatureFormat(String),
    /// The index is signed by a key this device does not trust.
    #[error(
        "the index is signed by key {key_id}, which is not one of the trusted keys ({trusted})"
    )]
    UntrustedKey { key_id: String, trusted: String },
    /// The signature does not match the index bytes.
    #[error("the index signature does not verify: the index or its signature was altered (or they were read while the repository was being republished: retry)")]
    SignatureMismatch,
    /// The index does not parse or breaks a rule.
    #[error("the index is invalid: {0}")]
    Invalid(String),
    /// The index is for another channel than the one asked for.
    #[error("the index is for channel {found:?}, not {wanted:?}")]
    WrongChannel { wanted: String, found: String },
    /// The index's expiry time has passed.
    #[error("the index of channel {channel:?} expired at {expired} (it is {now} by this device's clock): the repository must be republished")]
    Expired {
        channel: String,
        expired: String,
        now: String,
    },
}

impl ChannelError {
    /// The index's view of a signature failure.
    fn from_signature(error: BundleError) -> ChannelError {
        match error {
            BundleError::UntrustedKey { key_id, trusted } => {
                ChannelError::UntrustedKey { key_id, trusted }
            }
            BundleError::SignatureMismatch => ChannelError::SignatureMismatch,
            BundleError::BadSignatureFormat(reason) => ChannelError::BadSignatureFormat(reason),
            other => ChannelError::BadSignatureFormat(other.to_string()),
        }
    }
}

/// A valid channel name: it names the index file, so it is kept to a safe set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    /// Checks `name`: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    pub fn new(name: &str) -> Result<ChannelName, ChannelError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(ChannelName(name.to_string()))
        } else {
            Err(ChannelError::BadChannelName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The index file: `<channel>.json`.
    pub fn index_file(&self) -> String {
        format!("{}.json", self.0)
    }

    /// The index's signature file: `<channel>.json.minisig`.
    pub fn signature_file(&self) -> String {
        format!("{}.json.minisig", self.0)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One bundle in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Image name (the bundle manifest's).
    pub name: String,
    /// Devices take only bundles with their own compatible string.
    pub compatible: String,
    /// Image version (semantic versioning).
    pub version: ImageVersion,
    /// Lowest running version the bundle may update from (the manifest's), so a
    /// device skips a bundle it would refuse and takes an older stepping stone.
    pub min_version: Option<ImageVersion>,
    /// The bundle file, relative to the repository: `bundles/<sha256>.bundle`.
    pub path: String,
    /// Bytes of the bundle file.
    pub size: u64,
    /// sha256 of the bundle file, lowercase hex.
    pub sha256: String,
    /// Rollout waves; without them the release is for every device at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// No device starts installing it until it is resumed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Unix seconds: when it was paused. Resuming moves the rollout's start
    /// on by the time it was paused, so its waves go on from where they stood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since: Option<u64>,
    /// Withdrawn for good: no device installs it any more.
    #[serde(default, skip_serializing_if = "is_false")]
    pub withdrawn: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl IndexEntry {
    /// Unix seconds from which a device at `position` may install this entry
    /// (0 without a rollout: at once); `None` while it is paused or withdrawn.
    pub fn opens_at(&self, position: Position) -> Option<u64> {
        wave_opens_at(self, position)
    }
}

/// Unix seconds from which a device at `position` may install `entry`: 0
/// without a rollout (at once), else the time of the first wave that includes
/// the position (waves are cumulative, so a device that missed its wave still
/// gets it later). `None` when the entry is paused or withdrawn, or its waves
/// never reach the position.
pub fn wave_opens_at(entry: &IndexEntry, position: Position) -> Option<u64> {
    if entry.paused || entry.withdrawn {
        return None;
    }
    match &entry.rollout {
        None => Some(0),
        Some(rollout) => rollout.opens_at(position),
    }
}

/// The channel index (`<channel>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelIndex {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The channel this index is for: a device refuses an index for another.
    pub channel: String,
    /// Unix seconds: when the index was written.
    pub generated: u64,
    /// Unix seconds: devices refuse the index from then on.
    pub expires: u64,
    /// Every published bundle, sorted by compatible, then version.
    pub bundles: Vec<IndexEntry>,
}

/// What a device runs, where it stands in rollouts and its clock, for
/// [`ChannelIndex::pick`].
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    pub compatible: &'a str,
    pub version: &'a ImageVersion,
    /// The device's place in rollout waves ([`DeviceSeed::position`]).
    pub position: Position,
    /// Unix seconds by the device's clock.
    pub now: u64,
}

/// What [`ChannelIndex::plan`] found for a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pick<'a> {
    /// The entry to install now (see [`ChannelIndex::pick`]).
    pub install: Option<&'a IndexEntry>,
    /// The newest entry newer than `install` (or the running version) that
    /// the device will take once its wave opens, with that time (unix seconds).
    pub waiting: Option<(&'a IndexEntry, u64)>,
}

impl ChannelIndex {
    /// The index's bytes as published: pretty JSON, fields in declaration order,
    /// one trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("an index always serializes");
        out.push(b'\n');
        out
    }

    /// Parses and validates an index (no signature or expiry check: see
    /// [`verify_index`]).
    pub fn from_json(bytes: &[u8]) -> Result<ChannelIndex, ChannelError> {
        if bytes.len() as u64 > MAX_INDEX_SIZE {
            return Err(ChannelError::TooLarge {
                what: "the index",
                limit: MAX_INDEX_SIZE,
            });
        }
        let index: ChannelIndex =
            serde_json::from_slice(bytes).map_err(|e| ChannelError::Invalid(e.to_string()))?;
        index.validate()?;
        Ok(index)
    }

    /// Checks every rule an index follows.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |reason: String| Err(ChannelError::Invalid(reason));
        if self.format != INDEX_FORMAT {
            return bad(format!(
                "format {} is not supported (this berth reads format {INDEX_FORMAT})",
                self.format
            ));
        }
        ChannelName::new(&self.channel)?;
        if self.expires <= self.generated {
            return bad(format!(
                "it expires ({}) before it was generated ({})",
                self.expires, self.generated
            ));
        }
        for (i, e) in self.bundles.iter().enumerate() {
            let what = format!("bundle {} {}", e.compatible, e.version);
            for (field, value) in [("name", &e.name), ("compatible", &e.compatible)] {
                if value.trim().is_empty() || value.chars().any(char::is_control) {
                    return bad(format!(
                        "{what}: {field} is empty or holds a control character"
                    ));
                }
            }
            if !is_bundle_path(&e.path) {
                return bad(format!(
                    "{what}: path {:?} is not {BUNDLES_DIR}/NAME.bundle",
                    e.path
                ));
            }
            if e.size == 0 {
                return bad(format!("{what}: size is 0"));
            }
            if e.paused_since.is_some() && !e.paused {
                return bad(format!(
                    "{what}: paused_since on a release that is not paused"
                ));
            }
            if e.sha256.len() != 64
                || !e
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return bad(format!("{what}: sha256 is not 64 lowercase hex digits"));
            }
            if self.bundles[..i]
                .iter()
                .any(|o| o.compatible == e.compatible && o.version == e.version)
            {
                return bad(format!("{what} is listed twice"));
            }
            if let Some(rollout) = &e.rollout {
                if let Err(reason) = crate::rollout::validate_waves(&rollout.waves) {
                    return bad(format!("{what}: rollout: {reason}"));
                }
            }
        }
        Ok(())
    }

    /// The bundle this device should install: among the entries for its
    /// `compatible` whose version is newer than the running one, whose
    /// `min_version` (if any) the running version meets, that are neither paused
    /// nor withdrawn and whose rollout wave is open for the device's position at
    /// `now`, the newest.
    pub fn pick(&self, running: Running<'_>) -> Option<&IndexEntry> {
        self.plan(running).install
    }

    /// [`pick`](Self::pick), and the newest candidate the device waits for: an
    /// entry newer than the one to install (or than the running version) that
    /// is neither paused nor withdrawn but whose wave opens for this device only
    /// after `now`.
    pub fn plan(&self, running: Running<'_>) -> Pick<'_> {
        let candidates = || {
            self.bundles
                .iter()
                .filter(|e| e.compatible == running.compatible)
                .filter(|e| &e.version > running.version)
                .filter(|e| {
                    e.min_version
                        .as_ref()
                        .is_none_or(|min| running.version >= min)
                })
                .filter_map(|e| wave_opens_at(e, running.position).map(|at| (e, at)))
        };
        let install = candidates()
            .filter(|(_, at)| *at <= running.now)
            .map(|(e, _)| e)
            .max_by(|a, b| a.version.cmp(&b.version));
        let waiting = candidates()
            .filter(|(_, at)| *at > running.now)
            .filter(|(e, _)| install.is_none_or(|i| e.version > i.version))
            .max_by(|(a, _), (b, _)| a.version.cmp(&b.version));
        Pick { install, waiting }
    }

    /// The entry for `compatible` and `version`, if listed.
    pub fn find_mut(
        &mut self,
        compatible: &str,
        version: &ImageVersion,
    ) -> Option<&mut IndexEntry> {
        self.bundles
            .iter_mut()
            .find(|e| e.compatible == compatible && &e.version == version)
    }

    /// Sorts the entries the way `berth publish` writes them: by compatible,
    /// then version.
    pub fn sort(&mut self) {
        self.bundles.sort_by(|a, b| {
            a.compatible
                .cmp(&b.compatible)
                .then_with(|| a.version.cmp(&b.version))
                .then_with(|| a.path.cmp(&b.path))
        });
    }
}

/// `bundles/NAME.bundle` with NAME of `[A-Za-z0-9._-]` not starting with a dot:
/// one level, nothing that could leave the repository.
fn is_bundle_path(path: &str) -> bool {
    let Some(name) = path
        .strip_prefix(BUNDLES_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.strip_suffix(".bundle"))
    else {
        return false;
    };
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The signature's trusted comment for an index: like minisign's own, plus the
/// channel, so `minisign -Vm` shows what was signed.
pub fn trusted_comment(index: &ChannelIndex) -> String {
    format!(
        "timestamp:{}\tfile:{}.json\tberth channel {} expires {}",
        index.generated,
        index.channel,
        index.channel,
        utc_datetime(index.expires)
    )
}

/// A verified, current index for the channel asked for.
#[derive(Debug, Clone)]
pub struct VerifiedIndex {
    pub index: ChannelIndex,
    /// Who signed it.
    pub signature: Verified,
}

/// Whether [`verify_index`] refuses an expired index. `berth publish` reads the
/// repository's own index to add to it, and republishing is how an expired
/// index is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Refuse an index whose `expires` is not after `now` (unix seconds).
    Enforce { now: u64 },
    /// Accept an expired index: only for the publisher extending it.
    IgnoreForRepublishing,
}

/// Checks an index fetched from a repository, in this order: sizes, the
/// signature over the exact bytes (before anything is parsed), format and
/// rules, channel, expiry.
pub fn verify_index(
    index: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    channel: &ChannelName,
    expiry: Expiry,
) -> Result<VerifiedIndex, ChannelError> {
    if index.len() as u64 > MAX_INDEX_SIZE {
        return Err(ChannelError::TooLarge {
            what: "the index",
            limit: MAX_INDEX_SIZE,
        });
    }
    if signature.len() as u64 > MAX_INDEX_SIGNATURE_SIZE {
        return Err(ChannelError::TooLarge {
            what: "the index signature",
            limit: MAX_INDEX_SIGNATURE_SIZE,
        });
    }
    let verified = keys
        .verify(index, signature)
        .map_err(ChannelError::from_signature)?;
    let parsed = ChannelIndex::from_json(index)?;
    if parsed.channel != channel.as_str() {
        return Err(ChannelError::WrongChannel {
            wanted: channel.to_string(),
            found: parsed.channel,
        });
    }
    if let Expiry::Enforce { now } = expiry {
        if now >= parsed.expires {
            return Err(ChannelError::Expired {
                channel: parsed.channel,
                expired: utc_datetime(parsed.expires),
                now: utc_datetime(now),
            });
        }
    }
    Ok(VerifiedIndex {
        index: parsed,
        signature: verified,
    })
}

/// The URL (or path) of a repository file: `base` joined with `relative` by
/// exactly one `/`.
pub fn join(base: &str, relative: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), relative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Key;

    const NOW: u64 = 1_700_000_000;

    fn entry(compatible: &str, version: &str) -> IndexEntry {
        IndexEntry {
            name: "hello".into(),
            compatible: compatible.into(),
            version: version.parse().unwrap(),
            min_version: None,
            path: format!("{BUNDLES_DIR}/{}.bundle", "ab".repeat(32)),
            size: 1000,
            sha256: "ab".repeat(32),
            rollout: None,
            paused: false,
            paused_since: None,
            withdrawn: false,
        }
    }

    fn with_rollout(mut e: IndexEntry, start: u64, schedule: &str) -> IndexEntry {
        e.rollout = Some(Rollout {
            start,
            waves: crate::rollout::parse_schedule(schedule).unwrap(),
        });
        e
    }

    /// A device at `position` (hundredths of a percent) on `running` at `now`.
    fn device<'a>(running: &'a ImageVersion, position: u32, now: u64) -> Running<'a> {
        Running {
            compatible: "hello",
            version: running,
            position: Position::from_hundredths(position),
            now,
        }
    }

    /// The seed of simulated device `i`: sha256 of its number.
    fn simulated_seed(i: u32) -> DeviceSeed {
        use sha2::{Digest, Sha256};
        DeviceSeed(Sha256::digest(i.to_be_bytes()).into())
    }

    fn index(bundles: Vec<IndexEntry>) -> ChannelIndex {
        let mut index = ChannelIndex {
            format: INDEX_FORMAT,
            channel: "stable".into(),
            generated: NOW - 10,
            expires: NOW + 3600,
            bundles,
        };
        for (i, e) in index.bundles.iter_mut().enumerate() {
            e.path = format!("{BUNDLES_DIR}/{i}.bundle");
        }
        index
    }

    fn stable() -> ChannelName {
        ChannelName::new("stable").unwrap()
    }

    fn signed(key: &Key, index: &ChannelIndex) -> (Vec<u8>, String) {
        let bytes = index.to_json();
        let sig = key.sign(&bytes);
        (bytes, sig)
    }

    fn enforce() -> Expiry {
        Expiry::Enforce { now: NOW }
    }

    /// The version of the entry `idx` picks for a `hello` device on `running`.
    fn picked(idx: &ChannelIndex, running: &str) -> Option<String> {
        let running = ImageVersion::parse(running).unwrap();
        idx.pick(device(&running, 5000, NOW))
            .map(|e| e.version.to_string())
    }

    #[test]
    fn a_signed_current_index_verifies_and_round_trips() {
        let key = Key::new();
        let made = index(vec![entry("hello", "1.1.0")]);
        let (bytes, sig) = signed(&key, &made);
        let verified =
            verify_index(&bytes, sig.as_bytes(), &key.trusted(), &stable(), enforce()).unwrap();
        assert_eq!(verified.index, made);
        assert_eq!(verified.signature.key_id, key.trusted().key_ids()[0]);
    }

    #[test]
    fn a_tampered_index_is_refused() {
        let key = Key::new();
        let (bytes, sig) = signed(&key, &index(vec![entry("hello", "1.1.0")]));
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replace("1.1.0", "9.1.0");
        assert_ne!(tampered, text);
        let err = verify_index(
            tampered.as_bytes(),
            sig.as_bytes(),
            &key.trusted(),
            &stable(),
            enforce(),
        )
        .unwrap_err();
        assert!(matches!(err, ChannelError::SignatureMismatch), "{err}");
        // A flipped bit in the signature line too.
        let mut sig_bytes = sig.into_bytes();
        let line = sig_bytes.iter().position(|b| *b == b'\n').unwrap() + 20;
        sig_bytes[line] ^= 0x01;
        let err = verify_index(
            text.as_bytes(),
            &sig_bytes,
            &key.trusted(),
            &stable(),
            enforce(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ChannelError::SignatureMismatch | ChannelError::BadSignatureFormat(_)
            ),
            "{err}"
        );
    }

    #[test]
    fn an_index_signed_by_another_key_is_refused() {
        let (key, other) = (Key::new(), Key::new());
        let (bytes, sig) = signed(&other, &index(vec![entry("hello", "1.1.0")]));
        let err =
            verify_index(&bytes, sig.as_bytes(), &key.trusted(), &stable(), enforce()).unwrap_err();
        assert!(matches!(err, ChannelError::UntrustedKey { .. }), "{err}");
        assert!(
            err.to_string().contains("not one of the trusted keys"),
            "{err}"
        );
    }

    #[test]
    fn an_expired_index_is_refused_with_its_date() {
        let key = Key::new();
        let mut old = index(vec![entry("hello", "1.1.0")]);
        old.generated = 1_690_000_000;
        old.expires = 1_699_999_999;
        let (bytes, sig) = signed(&key, &old);
        let err =
            verify_index(&bytes, sig.as_bytes(), &key.trusted(), &stable(), enforce()).unwrap_err();
        assert!(matches!(err, ChannelError::Expired { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("expired at 2023-11-14T22:13:19Z"), "{text}");
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        // The publisher may still read it to renew it.
        verify_index(
            &bytes,
            sig.as_bytes(),
            &key.trusted(),
            &stable(),
            Expiry::IgnoreForRepublishing,
        )
        .unwrap();
    }

    #[test]
    fn an_index_for_another_channel_is_refused() {
        let key = Key::new();
        let mut beta = index(vec![entry("hello", "1.1.0")]);
        beta.channel = "beta".into();
        let (bytes, sig) = signed(&key, &beta);
        let err =
            verify_index(&bytes, sig.as_bytes(), &key.trusted(), &stable(), enforce()).unwrap_err();
        assert!(
            matches!(&err, ChannelError::WrongChannel { found, .. } if found == "beta"),
            "{err}"
        );
    }

    #[test]
    fn oversized_or_invalid_indexes_are_refused() {
        let key = Key::new();
        let huge = vec![b' '; usize::try_from(MAX_INDEX_SIZE).unwrap() + 1];
        let err = verify_index(&huge, b"", &key.trusted(), &stable(), enforce()).unwrap_err();
        assert!(matches!(err, ChannelError::TooLarge { .. }), "{err}");
        let mut escaping = index(vec![entry("hello", "1.1.0")]);
        escaping.bundles[0].path = "bundles/../../etc/passwd.bundle".into();
        let (bytes, sig) = signed(&key, &escaping);
        let err =
            verify_index(&bytes, sig.as_bytes(), &key.trusted(), &stable(), enforce()).unwrap_err();
        assert!(
            err.to_string().contains("is not bundles/NAME.bundle"),
            "{err}"
        );
        let mut twice = index(vec![entry("hello", "1.1.0"), entry("hello", "1.1.0")]);
        twice.sort();
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        assert!(ChannelName::new("../stable").is_err());
        assert!(ChannelName::new("").is_err());
        assert!(ChannelName::new("beta-2").is_ok());
    }

    #[test]
    fn nothing_newer_picks_nothing() {
        let idx = index(vec![entry("hello", "0.9.0"), entry("hello", "1.0.0")]);
        assert_eq!(picked(&idx, "1.0.0"), None);
        assert_eq!(picked(&index(vec![]), "1.0.0"), None);
    }

    #[test]
    fn the_newest_compatible_entry_is_picked() {
        let idx = index(vec![
            entry("hello", "1.1.0"),
            entry("hello", "1.10.0"),
            entry("hello", "1.2.0"),
            entry("hello", "0.9.0"),
        ]);
        assert_eq!(picked(&idx, "1.0.0").as_deref(), Some("1.10.0"));
    }

    #[test]
    fn a_release_is_picked_over_its_release_candidates() {
        let idx = index(vec![
            entry("hello", "1.2.0-rc.1"),
            entry("hello", "1.2.0"),
            entry("hello", "1.2.0-rc.2"),
        ]);
        assert_eq!(picked(&idx, "1.0.0").as_deref(), Some("1.2.0"));
        // A device on the candidate takes the release, not another candidate.
        assert_eq!(picked(&idx, "1.2.0-rc.1").as_deref(), Some("1.2.0"));
        assert_eq!(picked(&idx, "1.2.0"), None);
        let mut sorted = idx.clone();
        sorted.sort();
        let order: Vec<String> = sorted
            .bundles
            .iter()
            .map(|e| e.version.to_string())
            .collect();
        assert_eq!(order, ["1.2.0-rc.1", "1.2.0-rc.2", "1.2.0"]);
    }

    #[test]
    fn foreign_compatible_entries_are_skipped() {
        let idx = index(vec![entry("other-board", "9.0.0"), entry("hello", "1.1.0")]);
        assert_eq!(picked(&idx, "1.0.0").as_deref(), Some("1.1.0"));
        let foreign_only = index(vec![entry("other-board", "9.0.0")]);
        assert_eq!(picked(&foreign_only, "1.0.0"), None);
    }

    #[test]
    fn a_bundle_the_device_would_refuse_for_min_version_is_skipped() {
        let mut needs_1_5 = entry("hello", "2.0.0");
        needs_1_5.min_version = Some("1.5.0".parse().unwrap());
        let idx = index(vec![needs_1_5, entry("hello", "1.5.0")]);
        assert_eq!(picked(&idx, "1.0.0").as_deref(), Some("1.5.0"));
        assert_eq!(picked(&idx, "1.5.0").as_deref(), Some("2.0.0"));
        // A pre-release of the minimum is below it.
        assert_eq!(picked(&idx, "1.5.0-rc.1").as_deref(), Some("1.5.0"));
    }

    #[test]
    fn repository_urls_join_with_one_slash() {
        assert_eq!(
            join("http://h/repo/", "stable.json"),
            "http://h/repo/stable.json"
        );
        assert_eq!(
            join("http://h/repo", "bundles/x.bundle"),
            "http://h/repo/bundles/x.bundle"
        );
    }

    #[test]
    fn an_index_without_rollouts_keeps_its_bytes() {
        let made = index(vec![entry("hello", "1.1.0")]);
        let text = String::from_utf8(made.to_json()).unwrap();
        for absent in ["rollout", "paused", "withdrawn"] {
            assert!(!text.contains(absent), "{text}");
        }
        assert!(text.contains("\"sha256\": \"abab"), "{text}");
        assert_eq!(ChannelIndex::from_json(text.as_bytes()).unwrap(), made);
        // Unknown fields are still refused, in entries too.
        let unknown = text.replace("\"size\"", "\"sizes\": 1, \"size\"");
        assert!(ChannelIndex::from_json(unknown.as_bytes()).is_err());
    }

    #[test]
    fn rollouts_pause_and_withdraw_round_trip_and_are_validated() {
        let mut e = with_rollout(entry("hello", "1.1.0"), NOW, "1%@0h,10%@6h,100%@48h");
        e.paused = true;
        let made = index(vec![e]);
        let text = String::from_utf8(made.to_json()).unwrap();
        assert!(text.contains("\"rollout\": {"), "{text}");
        assert!(text.contains("\"percent\": 10"), "{text}");
        assert!(text.contains("\"after\": 21600"), "{text}");
        assert!(text.contains("\"paused\": true"), "{text}");
        assert!(!text.contains("withdrawn"), "{text}");
        assert_eq!(ChannelIndex::from_json(text.as_bytes()).unwrap(), made);
        let bad = text.replace("\"percent\": 100", "\"percent\": 90");
        let err = ChannelIndex::from_json(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("the last wave is 90%"), "{err}");
    }

    #[test]
    fn waves_follow_the_schedule_over_ten_thousand_devices() {
        let start = NOW;
        let e = with_rollout(
            entry("hello", "1.1.0"),
            start,
            "1%@0h,10%@6h,50%@24h,100%@48h",
        );
        let opens: Vec<u64> = (0..10_000)
            .map(|i| wave_opens_at(&e, simulated_seed(i).position()).unwrap())
            .collect();
        for (percent, at) in [
            (1.0, 0),
            (10.0, 6 * 3600),
            (50.0, 24 * 3600),
            (100.0, 48 * 3600),
        ] {
            let open = opens.iter().filter(|o| **o <= start + at).count() as f64 / 100.0;
            assert!(
                (open - percent).abs() <= 2.0,
                "{open}% open at +{at}s, the schedule says {percent}%"
            );
            // Nobody gets it before the first wave.
            assert!(opens.iter().all(|o| *o >= start));
        }
        // Just before the second wave, still only the first.
        let open = opens.iter().filter(|o| **o < start + 6 * 3600).count() as f64 / 100.0;
        assert!(open <= 3.0, "{open}%");
    }

    #[test]
    fn a_device_outside_the_open_waves_picks_the_previous_release_and_waits() {
        let idx = index(vec![
            entry("hello", "1.1.0"),
            with_rollout(entry("hello", "1.2.0"), NOW, "1%@0h,10%@6h,100%@48h"),
        ]);
        let running = ImageVersion::parse("1.0.0").unwrap();
        // Position 0.5 %: in the first wave.
        let first = idx.plan(device(&running, 50, NOW));
        assert_eq!(first.install.map(|e| e.version.as_str()), Some("1.2.0"));
        assert_eq!(first.waiting, None);
        // Position 42 %: the third wave, in 48 hours.
        let later = idx.plan(device(&running, 4200, NOW + 60));
        assert_eq!(later.install.map(|e| e.version.as_str()), Some("1.1.0"));
        let (waiting, at) = later.waiting.unwrap();
        assert_eq!((waiting.version.as_str(), at), ("1.2.0", NOW + 48 * 3600));
        // Cumulative: a device that was offline for its wave still gets it.
        let offline = idx.plan(device(&running, 4200, NOW + 400 * 86_400));
        assert_eq!(offline.install.map(|e| e.version.as_str()), Some("1.2.0"));
        // Up to date with 1.1.0, waiting for 1.2.0.
        let on_1_1 = ImageVersion::parse("1.1.0").unwrap();
        let waiting = idx.plan(device(&on_1_1, 4200, NOW));
        assert_eq!(waiting.install, None);
        assert_eq!(waiting.waiting.map(|(_, at)| at), Some(NOW + 48 * 3600));
        // A rollout that has not started yet (a clock behind the publisher's).
        assert_eq!(idx.plan(device(&on_1_1, 0, NOW - 1)).install, None);
    }

    #[test]
    fn paused_and_withdrawn_releases_are_not_installed() {
        let running = ImageVersion::parse("1.0.0").unwrap();
        for flag in ["paused", "withdrawn"] {
            let mut new = entry("hello", "1.2.0");
            match flag {
                "paused" => new.paused = true,
                _ => new.withdrawn = true,
            }
            let idx = index(vec![entry("hello", "1.1.0"), new.clone()]);
            for position in [0, 5000, 9999] {
                let plan = idx.plan(device(&running, position, NOW));
                assert_eq!(
                    plan.install.map(|e| e.version.as_str()),
                    Some("1.1.0"),
                    "{flag}"
                );
                assert_eq!(plan.waiting, None, "{flag}");
            }
            assert_eq!(wave_opens_at(&new, Position::from_hundredths(0)), None);
            // A device already on it stays (nothing newer), and a device on
            // 1.1.0 gets nothing.
            let on_1_1 = ImageVersion::parse("1.1.0").unwrap();
            assert_eq!(idx.pick(device(&on_1_1, 0, NOW)), None, "{flag}");
        }
    }
}
