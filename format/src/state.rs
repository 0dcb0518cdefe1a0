//! The update state file on the data partition (`/var/lib/berth/update/state.toml`):
//! how the last install, the last boot assessment and the last manual rollback
//! ended, and why. The device agent writes the install and rollback records, the
//! init the assessment; `berth-update status` shows them. It lives on the data
//! partition because both slots must see it: a slot that failed its health gate
//! cannot tell anyone once the boot loader has gone back to the other one.
//!
//! Written by temp file + fsync + rename + fsync of the folder, so a power cut
//! leaves either the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::Slot;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a berth update state file: {message}")]
    Parse { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, StateError>;

/// The whole state file. Every record is optional: a fresh device has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The last install started by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallRecord>,
    /// The last boot assessment of a counting (not yet blessed) slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<AssessmentRecord>,
    /// The last manual rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
    /// The last look at the update repository (`berth-update check` or `update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRecord>,
    /// Per channel, the `generated` time (unix seconds) of the newest index
    /// this device verified: an older one is refused as a replay.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub newest_index: BTreeMap<String, u64>,
    /// An update the agent installed and has not rebooted into yet, by its
    /// reboot policy (a window not open yet, or `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending: Option<PendingReboot>,
}

/// An installed update waiting for its reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReboot {
    pub version: String,
    /// When the agent reboots into it (unix seconds); `None`: never by itself
    /// (`reboot = "manual"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<u64>,
    /// The reboot policy that decided, as the recipe writes it.
    pub policy: String,
}

/// What the last look at the update repository found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckOutcome {
    /// The channel offers a newer bundle for this device.
    UpdateAvailable,
    /// Nothing newer for this device.
    UpToDate,
    /// The index could not be fetched or was refused; `reason` says why.
    Failed,
}

/// The last repository check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub repository: String,
    pub channel: String,
    pub outcome: CheckOutcome,
    /// The version offered, when an update is available.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub reason: String,
    pub at: u64,
    /// A newer version this device takes once its rollout wave opens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_for: String,
    /// When that wave opens for this device (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_opens_at: Option<u64>,
}

/// How an install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallOutcome {
    /// Started and not finished: a crash or power cut stopped it before the
    /// commit point (the running slot still boots).
    InProgress,
    /// Refused or failed before the commit point; `reason` says why.
    Failed,
    /// The boot entry was written: the slot boots next, with a boot counter.
    Committed,
}

/// The last install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub slot: Slot,
    pub version: String,
    pub outcome: InstallOutcome,
    /// Why it failed, or what it installed from.
    #[serde(default)]
    pub reason: String,
    /// Unix time (seconds) of the record, by the device's clock.
    pub at: u64,
    /// How the payloads came (an install from an update repository); `None`
    /// for a bundle given as a file or URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// Whether an install fetched chunks or the whole bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMethod {
    /// Chunks the device did not hold, assembled with the ones it did.
    Delta,
    /// The whole bundle.
    Full,
}

/// How an install's payloads came, and what that cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub method: DeliveryMethod,
    /// Why this method: what made a delta impossible or not worth it, or
    /// what the delta reused.
    pub reason: String,
    /// Bytes fetched from the repository for the payloads (compressed chunks
    /// and the chunk index, or the bundle).
    pub fetched: u64,
    /// Bytes of the full bundle, for comparison.
    pub bundle_size: u64,
}

/// How the boot assessment of a counting slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssessmentOutcome {
    /// The slot booted with a counter and its health gate is running.
    Pending,
    /// Healthy in time: the slot was blessed.
    Good,
    /// Not healthy in time (or refused by the init): this try failed; the boot
    /// loader tries again while tries are left, then boots the other slot.
    Failed,
}

/// The last boot assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssessmentRecord {
    pub slot: Slot,
    pub version: String,
    pub outcome: AssessmentOutcome,
    #[serde(default)]
    pub reason: String,
    pub at: u64,
}

/// The last manual rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// The slot that was running.
    pub from: Slot,
    #[serde(default)]
    pub from_version: String,
    /// The slot that boots next.
    pub to: Slot,
    #[serde(default)]
    pub to_version: String,
    pub at: u64,
}

impl UpdateState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<UpdateState> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(UpdateState::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|err| StateError::Parse {
            path: path.to_path_buf(),
            message: err.message().to_string(),
        })
    }

    /// Writes the state file atomically (creating its folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = toml::to_string(self).map_err(|err| StateError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        crate::atomic::write_atomically(path, text.as_bytes()).map_err(io)
    }

    /// The latest time this state proves has passed: the newest time in any of
    /// its records, and the newest index it verified (signed by the release
    /// key, so a time that really passed). The init keeps the clock at or above it (with the build
    /// epoch), so a device whose RTC lost power, or an SNTP answer from the
    /// past, cannot move it back to where expired indexes look fresh.
    pub fn clock_floor(&self) -> u64 {
        [
            self.install.as_ref().map(|r| r.at),
            self.assessment.as_ref().map(|r| r.at),
            self.rollback.as_ref().map(|r| r.at),
            self.check.as_ref().map(|r| r.at),
            self.newest_index.values().copied().max(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
    }

    /// Loads, applies `change`, saves.
    pub fn update(path: &Path, change: impl FnOnce(&mut UpdateState)) -> Result<UpdateState> {
        let mut state = UpdateState::load(path)?;
        change(&mut state);
        state.save(path)?;
        Ok(state)
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = UpdateState::load(&dir.path().join("state.toml")).unwrap();
        assert_eq!(state, UpdateState::default());
    }

    #[test]
    fn records_round_trip_and_update_keeps_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update/state.toml");
        UpdateState::update(&path, |state| {
            state.install = Some(InstallRecord {
                slot: Slot::B,
                version: "1.2.0".into(),
                outcome: InstallOutcome::Committed,
                reason: "from http://10.0.2.2/x.bundle".into(),
                at: 5,
                delivery: None,
            })
        })
        .unwrap();
        let state = UpdateState::update(&path, |state| {
            state.assessment = Some(AssessmentRecord {
                slot: Slot::B,
                version: "1.2.0".into(),
                outcome: AssessmentOutcome::Failed,
                reason: "container web not healthy within 20 s".into(),
                at: 9,
            })
        })
        .unwrap();
        assert_eq!(UpdateState::load(&path).unwrap(), state);
        assert_eq!(
            state.install.as_ref().map(|i| i.outcome),
            Some(InstallOutcome::Committed)
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("outcome = \"failed\""), "{text}");
        assert!(!dir.path().join("update/state.toml.tmp").exists());
        // The newest record's time is the clock floor.
        assert_eq!(state.clock_floor(), 9);
        assert_eq!(UpdateState::default().clock_floor(), 0);
    }

    #[test]
    fn newest_indexes_are_kept_per_channel_and_old_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        // A state file from before the field.
        fs::write(
            &path,
            "[check]\nrepository = \"r\"\nchannel = \"stable\"\noutcome = \"up-to-date\"\nat = 3\n",
        )
        .unwrap();
        let state = UpdateState::load(&path).unwrap();
        assert!(state.newest_index.is_empty());
        UpdateState::update(&path, |state| {
            state.newest_index.insert("stable".into(), 1_700_000_000);
            state.newest_index.insert("beta-2.x".into(), 5);
        })
        .unwrap();
        let state = UpdateState::load(&path).unwrap();
        assert_eq!(state.newest_index.get("stable"), Some(&1_700_000_000));
        assert_eq!(state.newest_index.get("beta-2.x"), Some(&5));
        assert!(state.check.is_some());
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        fs::write(&path, "install = 3\n").unwrap();
        let err = UpdateState::load(&path).unwrap_err().to_string();
        assert!(err.contains("state.toml"), "{err}");
    }
}
