//! What the CLI's commands print with `--json`: one document on standard output
//! per run, naming every file written with its size and sha256, the versions
//! involved and how long the run took. Progress and messages stay on standard
//! error, so `berth build --json … | jq` sees nothing else. The fields are
//! documented in `docs/cli.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_bundle::channel::IndexEntry;
use berth_bundle::manifest::PayloadInfo;
use serde::Serialize;

use crate::build::Built;
use crate::flash::{Flashed, MapSource};
pub use crate::progress::StepTime;
use crate::release::bundle::{Created, Inspection};
use crate::release::publish::{Action, Published};
use crate::report::Outputs;
use crate::reproducible::Reproducibility;
use crate::sources::cache::{sha256_file, CacheEntry};

/// A file a command wrote (or read), as it is on disk after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    pub path: PathBuf,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Reading a file back for its record failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {path} back for its size and sha256: {source}")]
pub struct RecordError {
    path: PathBuf,
    source: std::io::Error,
}

impl FileRecord {
    /// Size and sha256 of `path`, read from the file.
    pub fn of(path: &Path) -> Result<FileRecord, RecordError> {
        let error = |source| RecordError {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(error)?.len();
        let sha256 = sha256_file(path).map_err(error)?;
        Ok(FileRecord {
            path: path.to_path_buf(),
            size,
            sha256,
        })
    }
}

/// `berth build --json`.
#[derive(Debug, Serialize)]
pub struct BuildOutput {
    pub name: String,
    pub version: String,
    pub compatible: String,
    /// The disk image (raw).
    pub image: FileRecord,
    /// Its block map (`NAME-VERSION.bmap`, the format bmaptool reads).
    pub bmap: FileRecord,
    /// The build report next to it (`NAME-VERSION.json`).
    pub report: FileRecord,
    /// The qcow2 copy, with `--qcow2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2: Option<FileRecord>,
    /// Kernel, initramfs and root (with its verity parameters) inside the
    /// image, as the build report has them.
    pub contents: Outputs,
    /// Requests to registries and bytes fetched from them in this run.
    pub registry_requests: u64,
    pub registry_bytes: u64,
    /// Wall-clock seconds of the whole command.
    pub seconds: f64,
    pub steps: Vec<StepTime>,
}

impl BuildOutput {
    /// The output of a build that wrote `built` (and `qcow2`), taking `took`.
    pub fn new(
        built: Built,
        qcow2: Option<&Path>,
        took: Duration,
        steps: Vec<StepTime>,
    ) -> Result<BuildOutput, RecordError> {
        let report = built.report_data;
        Ok(BuildOutput {
            name: report.image.name,
            version: report.image.version,
            compatible: report.image.compatible,
            image: FileRecord::of(&built.image)?,
            bmap: FileRecord::of(&built.bmap)?,
            report: FileRecord::of(&built.report)?,
            qcow2: qcow2.map(FileRecord::of).transpose()?,
            contents: report.outputs,
            registry_requests: built.fetched.requests,
            registry_bytes: built.fetched.bytes,
            seconds: took.as_secs_f64(),
            steps,
        })
    }
}

/// `berth bundle --json`.
#[derive(Debug, Serialize)]
pub struct BundleOutput {
    pub bundle: FileRecord,
    /// The image it was made from.
    pub image: PathBuf,
    pub name: String,
    pub version: String,
    pub compatible: String,
    pub architecture: String,
    pub min_version: Option<String>,
    /// The signing key's minisign id.
    pub key_id: String,
    /// Root filesystem, kernel and initramfs: size, stored size, sha256.
    pub payloads: Vec<PayloadInfo>,
    pub seconds: f64,
}

impl BundleOutput {
    pub fn new(
        image: &Path,
        created: Created,
        took: Duration,
    ) -> Result<BundleOutput, RecordError> {
        let manifest = created.manifest;
        Ok(BundleOutput {
            bundle: FileRecord::of(&created.path)?,
            image: image.to_path_buf(),
            name: manifest.name,
            version: manifest.version.to_string(),
            compatible: manifest.compatible,
            architecture: manifest.architecture,
            min_version: manifest.min_version.map(|v| v.to_string()),
            key_id: created.key_id,
            payloads: manifest.payloads,
            seconds: took.as_secs_f64(),
        })
    }
}

/// `berth bundle inspect --json`: the bundle file and what was found in it.
#[derive(Debug, Serialize)]
pub struct InspectOutput<'a> {
    pub bundle: FileRecord,
    #[serde(flatten)]
    pub inspection: &'a Inspection,
    pub seconds: f64,
}

/// `berth publish --json`.
#[derive(Debug, Serialize)]
pub struct PublishOutput {
    pub repo: PathBuf,
    pub channel: String,
    /// The channel index and its signature as written.
    pub index: FileRecord,
    pub signature: FileRecord,
    pub key_id: String,
    /// Unix seconds.
    pub generated: u64,
    pub expires: u64,
    /// Entries this run added (paths relative to the repository).
    pub added: Vec<IndexEntry>,
    /// Bundles given that were already listed with the same content.
    pub unchanged: Vec<IndexEntry>,
    /// `pause`, `resume` or `withdraw`, with the version, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeOutput>,
    /// Every entry the index lists now.
    pub entries: Vec<IndexEntry>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ChangeOutput {
    pub action: &'static str,
    pub version: String,
}

impl PublishOutput {
    pub fn new(
        repo: &Path,
        channel: &str,
        published: Published,
        change: Option<(Action, String)>,
        took: Duration,
    ) -> Result<PublishOutput, RecordError> {
        Ok(PublishOutput {
            repo: repo.to_path_buf(),
            channel: channel.to_string(),
            index: FileRecord::of(&published.index_path)?,
            signature: FileRecord::of(&published.signature_path)?,
            key_id: published.key_id,
            generated: published.index.generated,
            expires: published.index.expires,
            added: published.added,
            unchanged: published.unchanged,
            change: change.map(|(action, version)| ChangeOutput {
                action: match action {
                    Action::Pause => "pause",
                    Action::Resume => "resume",
                    Action::Withdraw => "withdraw",
                },
                version,
            }),
            entries: published.index.bundles,
            seconds: took.as_secs_f64(),
        })
    }
}

/// `berth flash --json`.
#[derive(Debug, Serialize)]
pub struct FlashOutput {
    /// The image flashed (path and size).
    pub image: PathBuf,
    pub image_size: u64,
    /// The block map used; `null` when there was none and one was made.
    pub bmap: Option<FileRecord>,
    pub target: TargetOutput,
    /// Blocks in the map's ranges, as bytes; every one was written.
    pub mapped_bytes: u64,
    pub written_bytes: u64,
    /// Bytes read back from the target and checked against the map's sha256.
    pub verified_bytes: u64,
    pub ranges: usize,
    /// Writing, with the final fsync.
    pub write_seconds: f64,
    pub verify_seconds: f64,
    /// Written megabytes (10^6) per second of writing.
    pub write_mb_per_s: f64,
    /// The provisioning file put on the ESP as `berth/provision.toml`.
    pub provision: Option<FileRecord>,
    pub seconds: f64,
}

/// Where `berth flash` wrote.
#[derive(Debug, Serialize)]
pub struct TargetOutput {
    pub path: PathBuf,
    /// `block device` or `file`.
    pub kind: &'static str,
    /// Its size after the flash.
    pub size: u64,
}

impl FlashOutput {
    pub fn new(flashed: &Flashed, took: Duration) -> Result<FlashOutput, RecordError> {
        Ok(FlashOutput {
            image: flashed.image.clone(),
            image_size: flashed.image_size,
            bmap: match &flashed.map {
                MapSource::File(path) => Some(FileRecord::of(path)?),
                MapSource::Computed => None,
            },
            target: TargetOutput {
                path: flashed.target.path.clone(),
                kind: flashed.target.kind.name(),
                size: flashed.target_size,
            },
            mapped_bytes: flashed.mapped_bytes,
            written_bytes: flashed.written_bytes,
            verified_bytes: flashed.verified_bytes,
            ranges: flashed.ranges,
            write_seconds: flashed.write_time.as_secs_f64(),
            verify_seconds: flashed.verify_time.as_secs_f64(),
            write_mb_per_s: flashed.write_rate(),
            provision: flashed
                .provisioned
                .as_ref()
                .map(|(path, _)| FileRecord::of(path))
                .transpose()?,
            seconds: took.as_secs_f64(),
        })
    }
}

/// `berth cache ls --json`.
#[derive(Debug, Serialize)]
pub struct CacheOutput {
    pub root: PathBuf,
    pub blobs: Vec<BlobOutput>,
    pub count: usize,
    pub total_bytes: u64,
}

/// One blob of the cache, stored under `blobs/sha256/<sha256>`.
#[derive(Debug, Serialize)]
pub struct BlobOutput {
    pub sha256: String,
    pub size: u64,
    /// Unix seconds of the last build that used it.
    pub last_used: u64,
    /// Whole days since then.
    pub days_unused: u64,
    pub what: String,
}

impl CacheOutput {
    pub fn new(root: &Path, entries: Vec<CacheEntry>, now: SystemTime) -> CacheOutput {
        let total_bytes = entries.iter().map(|e| e.size).sum();
        let blobs: Vec<BlobOutput> = entries
            .into_iter()
            .map(|e| BlobOutput {
                last_used: e
                    .last_used
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                days_unused: now
                    .duration_since(e.last_used)
                    .map_or(0, |d| d.as_secs() / 86400),
                sha256: e.sha256,
                size: e.size,
                what: e.what,
            })
            .collect();
        CacheOutput {
            root: root.to_path_buf(),
            count: blobs.len(),
            blobs,
            total_bytes,
        }
    }
}

/// `berth build --check-reproducible --json`: the verdict and both builds'
/// hashes of each artifact.
#[derive(Debug, Serialize)]
pub struct ReproducibleOutput {
    pub recipe: PathBuf,
    /// The image's file name (`hello-1.0.0.img`); neither build is kept.
    pub image: String,
    pub reproducible: bool,
    pub artifacts: Vec<ComparedOutput>,
    /// Where the disk images differ (`gpt`, a partition label, `backup gpt`).
    pub differing_regions: Vec<String>,
    pub seconds: f64,
    pub steps: Vec<StepTime>,
}

/// One artifact of both builds.
#[derive(Debug, Serialize)]
pub struct ComparedOutput {
    /// `disk`, `kernel`, `initramfs`, `root`, `verity root hash`.
    pub name: String,
    pub first: String,
    pub second: String,
    pub identical: bool,
}

impl ReproducibleOutput {
    pub fn new(
        recipe: &Path,
        result: &Reproducibility,
        took: Duration,
        steps: Vec<StepTime>,
    ) -> ReproducibleOutput {
        ReproducibleOutput {
            recipe: recipe.to_path_buf(),
            image: result.image.clone(),
            reproducible: result.is_reproducible(),
            artifacts: result
                .artifacts
                .iter()
                .map(|a| ComparedOutput {
                    name: a.name.clone(),
                    first: a.first.clone(),
                    second: a.second.clone(),
                    identical: a.identical(),
                })
                .collect(),
            differing_regions: result.differing_regions.clone(),
            seconds: took.as_secs_f64(),
            steps,
        }
    }
}

/// Prints `value` as pretty JSON and a newline on standard output.
pub fn print<T: Serialize>(value: &T) -> Result<(), serde_json::Error> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_record_is_the_file_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"berth").expect("write");
        let record = FileRecord::of(&path).expect("record");
        assert_eq!(record.size, 5);
        assert_eq!(record.sha256, hex::encode(Sha256::digest(b"berth")));
        assert!(FileRecord::of(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn cache_listing_sums_and_ages() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86400);
        let entry = |sha: &str, size: u64, days: u64| CacheEntry {
            sha256: sha.into(),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86400),
            what: "x".into(),
        };
        let out = CacheOutput::new(
            Path::new("/c"),
            vec![entry("aa", 3, 9), entry("bb", 4, 1)],
            now,
        );
        assert_eq!((out.count, out.total_bytes), (2, 7));
        assert_eq!(out.blobs[0].days_unused, 1);
        assert_eq!(out.blobs[1].days_unused, 9);
        assert_eq!(out.blobs[1].last_used, 86400);
    }
}
