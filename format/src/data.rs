//! What became of the data partition at this boot (`/run/berth/data.toml`):
//! mounted as it was, mounted after `e2fsck` repaired it, or not mounted at all
//! (`/var` is a tmpfs and nothing written there survives a reboot). The init
//! writes it once per boot, after mounting `/var`; `berth-update status` shows
//! it, and so the fleet reports carry it. It lives on the tmpfs `/run`, not on
//! the data partition: it must be there when that partition is not.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the data report.
#[derive(Debug, thiserror::Error)]
pub enum DataReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a berth data partition report: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The data partition's state at this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataState {
    /// Mounted on `/var` without a repair.
    Mounted,
    /// `e2fsck` repaired it, then it mounted on `/var`.
    Repaired,
    /// Not mounted: `/var` is a tmpfs, so containers run without persistent
    /// data and the update state starts empty at every boot.
    Unavailable,
}

/// The report the init writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReport {
    pub state: DataState,
    /// What happened: the check's and the mount's outcome, in words.
    #[serde(default)]
    pub detail: String,
    /// Unix time (seconds) of the report, by the device's clock.
    pub at: u64,
}

impl DataReport {
    /// Whether this is a fault an operator should hear of (a repair counts:
    /// the partition was damaged).
    pub fn is_fault(&self) -> bool {
        self.state != DataState::Mounted
    }

    /// Reads the report; `None` when there is none (an init too old to write
    /// one, or not a berth device).
    pub fn load(path: &Path) -> Result<Option<DataReport>, DataReportError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DataReportError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|err| DataReportError::Parse {
                path: path.to_path_buf(),
                message: err.message().to_string(),
            })
    }

    /// Writes the report atomically.
    pub fn save(&self, path: &Path) -> Result<(), DataReportError> {
        let text = toml::to_string(self).map_err(|err| DataReportError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        crate::atomic::write_atomically(path, text.as_bytes()).map_err(|source| {
            DataReportError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth/data.toml");
        assert_eq!(DataReport::load(&path).unwrap(), None);
        let report = DataReport {
            state: DataState::Unavailable,
            detail: "e2fsck could not repair /dev/vda4".into(),
            at: 1_700_000_000,
        };
        report.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("state = \"unavailable\""), "{text}");
        assert_eq!(DataReport::load(&path).unwrap(), Some(report.clone()));
        assert!(report.is_fault());
        let ok = DataReport {
            state: DataState::Mounted,
            ..report
        };
        assert!(!ok.is_fault());
    }

    #[test]
    fn a_report_that_is_not_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.toml");
        fs::write(&path, "state = \"melted\"\nat = 1\n").unwrap();
        let err = DataReport::load(&path).unwrap_err();
        assert!(err.to_string().contains("data.toml"), "{err}");
    }
}
