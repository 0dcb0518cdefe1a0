//! Delta installs: the new slot assembled from chunks the device already holds
//! plus the ones it fetches (format: [`berth_bundle::delta`]).
//!
//! [`prepare`] does everything that needs the network, and writes nothing
//! but its staging folder on the data partition:
//! 1. fetches the release's chunk index (its compressed copy, or the JSON of a
//!    repository that has none) and its signature and verifies them
//!    (trusted keys, the bundle the signed channel index lists, the embedded
//!    manifest's own signature);
//! 2. cuts what the device holds with the same chunking — the running slot's
//!    root (filesystem and verity tree, as long as its boot entry says), its
//!    kernel and its initramfs — and looks every chunk up by sha256;
//! 3. when what is missing is more than [`MAX_FETCH_PERCENT`] of the full
//!    bundle, gives up (the caller installs the full bundle);
//! 4. fetches the missing chunks over one keep-alive HTTP client,
//!    [`PARALLEL_FETCHES`] at a time, checks each against its sha256 and keeps
//!    it in the staging folder (a cut fetch resumes: staged chunks that still
//!    match their names are not fetched again).
//!
//! The install itself is the ordinary one ([`crate::install::install_from`])
//! over a [`PayloadSource`] that reads each payload chunk by chunk, checks
//! every chunk against its sha256 again as it is used and the whole payload
//! against the manifest's signed sha256 at its end: the same refusals, the
//! same checkpoints, the same commit point.
//!
//! The inactive slot is not used as a source: it is the install's target, and
//! its bytes are overwritten while the new root is written, so chunks read from
//! it late in the write could already be gone.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use berth_bundle::channel::IndexEntry;
use berth_bundle::delta::{
    self as format, chunk_index_path, ChunkRef, Chunking, VerifiedChunkIndex, MAX_CHUNK_INDEX_SIZE,
};
use berth_bundle::{BundleError, Manifest, TrustedKeys, MAX_SIGNATURE_SIZE};
use berth_format::entries::EspState;
use berth_format::layout::BootEntry;

use crate::install::{Checkpoint, InstallError, NextPayload, Observer, PayloadSource};
use crate::source;

/// A delta that would fetch more than this share (percent) of the full bundle
/// is not worth its extra requests and the local reading: the full bundle is
/// installed instead. (Rugix measured deltas of major upgrades larger than the
/// image itself; 80 % leaves a margin for the index and per-request costs.)
pub const MAX_FETCH_PERCENT: u64 = 80;
/// Chunks fetched at once: enough to hide a link's round trip behind the next
/// chunk's transfer, few enough for a small device's memory (each holds one
/// chunk, at most 64 KiB at berth's chunking, 4 MiB whatever an index says).
pub const PARALLEL_FETCHES: usize = 4;
/// The staging folder, beside the state file on the data partition.
const STAGING_DIR: &str = "delta-chunks";

/// Why a delta could not be prepared or used: the caller installs the full
/// bundle and records this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the repository has no chunk index for this release ({0})")]
    NoIndex(String),
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{0}")]
    Index(#[from] format::DeltaError),
    #[error("the trusted keys: {0}")]
    Keys(#[source] BundleError),
    #[error("reading {path} for chunks the device holds: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the staging folder {path}: {source}")]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the chunks to fetch ({fetch} bytes) are {percent} % of the full bundle ({bundle} bytes), more than the {MAX_FETCH_PERCENT} % a delta may cost")]
    NotWorthIt {
        fetch: u64,
        bundle: u64,
        percent: u64,
    },
    #[error("chunk {url}: {message}")]
    Chunk { url: String, message: String },
    /// The release is refused whatever way it comes; the full bundle's
    /// install then refuses it too (after reading its manifest only), and
    /// records why.
    #[error("the release is refused ({0})")]
    Refused(String),
}

/// Where the repository's files are read from: one HTTP client for all of a
/// delta's requests (ureq keeps connections alive and pools them per host), or
/// a folder on the device.
#[derive(Debug, Clone)]
enum Fetcher {
    Http(ureq::Agent),
    Folder,
}

/// A fetch that failed, told apart from a file that is not there.
enum FetchError {
    Missing(String),
    Other(String),
}

impl Fetcher {
    fn for_repository(repo: &str) -> Result<Fetcher, DeltaError> {
        if repo.starts_with("http://") || repo.starts_with("https://") {
            let agent = source::http_agent().map_err(|e| DeltaError::Fetch {
                url: repo.to_string(),
                message: e.to_string(),
            })?;
            Ok(Fetcher::Http(agent))
        } else {
            Ok(Fetcher::Folder)
        }
    }

    /// The whole file at `url`, refusing more than `limit` bytes.
    fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let reader: Box<dyn Read> = match self {
            Fetcher::Http(agent) => match agent.get(url).call() {
                Ok(response) => Box::new(source::StallGuard::new(
                    response.into_reader(),
                    source::STALL_WINDOW,
                    source::MIN_BYTES_PER_WINDOW,
                )),
                Err(ureq::Error::Status(404, _)) => {
                    return Err(FetchError::Missing("the server answered 404".into()))
                }
                Err(e) => return Err(FetchError::Other(source::describe(e))),
            },
            Fetcher::Folder => match File::open(url) {
                Ok(file) => Box::new(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(FetchError::Missing(e.to_string()))
                }
                Err(e) => return Err(FetchError::Other(e.to_string())),
            },
        };
        let mut bytes = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FetchError::Other(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(FetchError::Other(format!(
                "larger than the {limit} bytes expected"
            )));
        }
        Ok(bytes)
    }
}

/// Where a chunk the device holds is.
#[derive(Debug, Clone)]
struct Location {
    path: PathBuf,
    offset: u64,
}

/// A delta ready to install: verified index, what the device holds, what was
/// fetched into the staging folder.
#[derive(Debug)]
pub struct Prepared {
    index: VerifiedChunkIndex,
    local: HashMap<String, Location>,
    staging: PathBuf,
    /// Bytes fetched from the repository (chunk index, its signature, chunks).
    pub fetched: u64,
    /// Chunks fetched (this run or a cut one before it).
    pub fetched_chunks: usize,
    /// Bytes of the payloads found on the device.
    pub reused: u64,
    /// Bytes of the payloads.
    pub total: u64,
    /// Bytes of the full bundle.
    pub bundle_size: u64,
}

impl Prepared {
    /// The payload source the install reads from.
    pub fn source(&self) -> DeltaSource<'_> {
        DeltaSource {
            prepared: self,
            next: 0,
        }
    }

    /// Removes the staging folder (after the install committed: its chunks are
    /// on the slot now).
    pub fn clear(&self) {
        let _ = fs::remove_dir_all(&self.staging);
    }

    /// A line for the log and the state file.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} payload bytes found on the device, {} chunks fetched: {} bytes, {:.1} % of the {}-byte bundle",
            self.reused,
            self.total,
            self.fetched_chunks,
            self.fetched,
            percent(self.fetched, self.bundle_size),
            self.bundle_size
        )
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    // Precision is not at stake: these are byte counts for a message.
    #[allow(clippy::cast_precision_loss)]
    let share = part as f64 * 100.0 / whole as f64;
    share
}

/// Prepares a delta install of `entry` from `repo` (a base URL or folder):
/// see the module's documentation. Writes nothing but the staging folder.
pub fn prepare(
    system: &crate::System,
    repo: &str,
    entry: &IndexEntry,
    options: &crate::install::InstallOptions,
    observer: &mut dyn Observer,
) -> Result<Prepared, DeltaError> {
    let keys = TrustedKeys::load_dir(&system.keys_dir).map_err(DeltaError::Keys)?;
    let fetcher = Fetcher::for_repository(repo)?;
    let index_url = berth_bundle::channel::join(repo, &chunk_index_path(&entry.sha256));
    let signature_url = format!("{index_url}.minisig");
    let get_small = |url: &str, limit: u64| {
        fetcher.get(url, limit).map_err(|e| match e {
            FetchError::Missing(why) => DeltaError::NoIndex(format!("{url}: {why}")),
            FetchError::Other(message) => DeltaError::Fetch {
                url: url.to_string(),
                message,
            },
        })
    };
    let signature = get_small(&signature_url, MAX_SIGNATURE_SIZE)?;
    // The compressed copy, about a third of the JSON; a repository without
    // one (published by an older berth) serves the JSON itself.
    let (index, index_bytes) = match get_small(&format!("{index_url}.zst"), MAX_CHUNK_INDEX_SIZE) {
        Ok(compressed) => (format::decompress_index(&compressed)?, compressed.len()),
        Err(DeltaError::NoIndex(_)) => {
            let index = get_small(&index_url, MAX_CHUNK_INDEX_SIZE)?;
            let len = index.len();
            (index, len)
        }
        Err(e) => return Err(e),
    };
    let verified = format::verify_chunk_index(&index, &signature, &keys, &entry.sha256)?;
    let mut fetched = (index_bytes + signature.len()) as u64;
    // Nothing is fetched or read for a release the install would refuse.
    crate::install::check(system, &verified.manifest, options)
        .map_err(|e| DeltaError::Refused(e.to_string()))?;

    let local = local_chunks(system, verified.index.chunking)?;
    let staging = system
        .state_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(STAGING_DIR);
    let staging_err = |source| DeltaError::Staging {
        path: staging.clone(),
        source,
    };
    fs::create_dir_all(&staging).map_err(staging_err)?;

    // The chunks to fetch, each once, and what the device already has.
    let mut needed: Vec<&ChunkRef> = Vec::new();
    let mut seen = HashSet::new();
    let (mut reused, mut total) = (0u64, 0u64);
    for chunk in verified.index.payloads.iter().flat_map(|p| &p.chunks) {
        total += u64::from(chunk.size);
        if local.contains_key(&chunk.sha256) {
            reused += u64::from(chunk.size);
        } else if seen.insert(chunk.sha256.as_str()) {
            needed.push(chunk);
        }
    }
    // Staged by a cut run before: kept when they still match their names;
    // anything else in the folder (another release's) goes.
    let mut staged = HashSet::new();
    for file in fs::read_dir(&staging).map_err(staging_err)? {
        let path = file.map_err(staging_err)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let keep = seen.contains(name.as_str())
            && fs::read(&path).is_ok_and(|bytes| format::sha256_hex(&bytes) == name);
        if keep {
            staged.insert(name);
        } else {
            fs::remove_file(&path).map_err(staging_err)?;
        }
    }
    let to_fetch: Vec<&ChunkRef> = needed
        .iter()
        .copied()
        .filter(|c| !staged.contains(&c.sha256))
        .collect();
    let fetch: u64 = to_fetch.iter().map(|c| u64::from(c.stored_size)).sum();
    let bundle = verified.index.bundle_size.max(entry.size);
    if fetch.saturating_mul(100) > bundle.saturating_mul(MAX_FETCH_PERCENT) {
        return Err(DeltaError::NotWorthIt {
            fetch,
            bundle,
            percent: fetch.saturating_mul(100) / bundle.max(1),
        });
    }
    observer.step(&format!(
        "delta: {reused} of {total} bytes are on the device; fetching {} chunks ({fetch} bytes){}",
        to_fetch.len(),
        if staged.is_empty() {
            String::new()
        } else {
            format!(", {} more were fetched before", staged.len())
        }
    ));
    // In two halves, so a power cut can be tested in the middle of a fetch.
    observer.checkpoint(Checkpoint::Chunks(0));
    let (first, second) = to_fetch.split_at(to_fetch.len() / 2);
    fetched += fetch_chunks(&fetcher, repo, first, &staging)?;
    observer.checkpoint(Checkpoint::Chunks(50));
    fetched += fetch_chunks(&fetcher, repo, second, &staging)?;
    Ok(Prepared {
        local,
        staging,
        fetched,
        fetched_chunks: needed.len(),
        reused,
        total,
        bundle_size: bundle,
        index: verified,
    })
}

/// Cuts the running slot's root, kernel and initramfs and names every chunk.
fn local_chunks(
    system: &crate::System,
    chunking: Chunking,
) -> Result<HashMap<String, Location>, DeltaError> {
    let booted = system.booted;
    let root = system.slot(booted);
    // The running root's length: its boot entry's verity parameters say where
    // the tree ends; without them the whole partition is read.
    let root_len = EspState::read(&system.esp)
        .ok()
        .and_then(|esp| {
            let entry = esp.slot(booted)?;
            let text = fs::read_to_string(esp.dir().join(entry.file_name())).ok()?;
            BootEntry::parse(&text).ok()?.verity
        })
        .map_or(root.size, |verity| verity.slot_bytes().min(root.size));
    let sources = [
        (root.node.clone(), Some(root_len)),
        (system.esp.join(booted.kernel_path()), None),
        (system.esp.join(booted.initramfs_path()), None),
    ];
    let mut map = HashMap::new();
    for (path, len) in sources {
        let file = match File::open(&path) {
            Ok(file) => file,
            // A slot without an initramfs, say: nothing to reuse from it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DeltaError::Local { path, source }),
        };
        let reader = io::BufReader::with_capacity(1 << 20, file).take(len.unwrap_or(u64::MAX));
        format::cut(reader, chunking, |offset, bytes| {
            map.entry(format::sha256_hex(bytes))
                .or_insert_with(|| Location {
                    path: path.clone(),
                    offset,
                });
            Ok(())
        })
        .map_err(|source| DeltaError::Local {
            path: path.clone(),
            source,
        })?;
    }
    Ok(map)
}

/// Fetches `chunks` into `staging`, [`PARALLEL_FETCHES`] at a time, each
/// checked against its name before it is kept. Returns the bytes fetched.
fn fetch_chunks(
    fetcher: &Fetcher,
    repo: &str,
    chunks: &[&ChunkRef],
    staging: &Path,
) -> Result<u64, DeltaError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let fetched = AtomicU64::new(0);
    let failure: Mutex<Option<DeltaError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_FETCHES.min(chunks.len()) {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    match fetch_one(fetcher, repo, chunk, staging) {
                        Ok(n) => {
                            fetched.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(fetched.into_inner()),
    }
}

fn fetch_one(
    fetcher: &Fetcher,
    repo: &str,
    chunk: &ChunkRef,
    staging: &Path,
) -> Result<u64, DeltaError> {
    let url = berth_bundle::channel::join(repo, &chunk.path());
    let fail = |message: String| DeltaError::Chunk {
        url: url.clone(),
        message,
    };
    let stored = fetcher
        .get(&url, u64::from(chunk.stored_size))
        .map_err(|e| match e {
            FetchError::Missing(why) => fail(format!("missing from the repository: {why}")),
            FetchError::Other(why) => fail(why),
        })?;
    let size = usize::try_from(chunk.size).unwrap_or(usize::MAX);
    let raw = zstd::bulk::decompress(&stored, size)
        .map_err(|e| fail(format!("not a zstd frame of {size} bytes: {e}")))?;
    let actual = format::sha256_hex(&raw);
    if actual != chunk.sha256 || raw.len() != size {
        return Err(fail(format!(
            "its content does not match its name (sha256 {actual}, {} bytes)",
            raw.len()
        )));
    }
    let path = staging.join(&chunk.sha256);
    let temp = staging.join(format!(".{}.tmp", chunk.sha256));
    // No fsync: a chunk a power cut damaged fails its hash when it is used
    // or at the next prepare, and is fetched again.
    fs::write(&temp, &raw)
        .and_then(|()| fs::rename(&temp, &path))
        .map_err(|source| DeltaError::Staging {
            path: path.clone(),
            source,
        })?;
    Ok(stored.len() as u64)
}

/// The payloads of a prepared delta, read chunk by chunk.
#[derive(Debug)]
pub struct DeltaSource<'p> {
    prepared: &'p Prepared,
    next: usize,
}

impl PayloadSource for DeltaSource<'_> {
    fn manifest(&self) -> &Manifest {
        &self.prepared.index.manifest
    }

    fn signer(&self) -> &str {
        &self.prepared.index.manifest_key_id
    }

    fn next_payload(&mut self) -> Result<Option<NextPayload<'_>>, InstallError> {
        let i = self.next;
        let (Some(info), Some(chunked)) = (
            self.prepared.index.manifest.payloads.get(i),
            self.prepared.index.index.payloads.get(i),
        ) else {
            return Ok(None);
        };
        self.next += 1;
        let reader = Assembled {
            prepared: self.prepared,
            file: info.file.clone(),
            sha256: info.sha256.clone(),
            chunks: &chunked.chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            hasher: Sha256::new(),
            ended: false,
        };
        Ok(Some((info.clone(), Box::new(reader))))
    }

    fn finish(self: Box<Self>) -> Result<(), InstallError> {
        Ok(())
    }
}

/// One payload, chunk after chunk: from the staging folder or from where the
/// device holds it, each checked against its sha256, the whole against the
/// manifest's at the end.
struct Assembled<'p> {
    prepared: &'p Prepared,
    file: String,
    sha256: String,
    chunks: &'p [ChunkRef],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    ended: bool,
}

impl Assembled<'_> {
    fn load(&self, chunk: &ChunkRef) -> io::Result<Vec<u8>> {
        let size = usize::try_from(chunk.size).unwrap_or(usize::MAX);
        let staged = self.prepared.staging.join(&chunk.sha256);
        let (bytes, from) = match self.prepared.local.get(&chunk.sha256) {
            Some(at) => {
                let mut file = File::open(&at.path)?;
                file.seek(SeekFrom::Start(at.offset))?;
                let mut bytes = vec![0u8; size];
                file.read_exact(&mut bytes)?;
                (bytes, at.path.clone())
            }
            None => (fs::read(&staged)?, staged),
        };
        if bytes.len() != size || format::sha256_hex(&bytes) != chunk.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chunk {} read from {} does not match its sha256",
                    chunk.sha256,
                    from.display()
                ),
            ));
        }
        Ok(bytes)
    }
}

impl Read for Assembled<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            let Some(chunk) = self.chunks.get(self.next) else {
                if !self.ended {
                    self.ended = true;
                    let actual = hex::encode(self.hasher.clone().finalize());
                    if actual != self.sha256 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            BundleError::HashMismatch {
                                file: self.file.clone(),
                                expected: self.sha256.clone(),
                                actual,
                            },
                        ));
                    }
                }
                return Ok(0);
            };
            self.buf = self.load(chunk)?;
            self.pos = 0;
            self.next += 1;
            self.hasher.update(&self.buf);
        }
        let n = buf.len().min(self.buf.len() - self.pos);
        buf[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
