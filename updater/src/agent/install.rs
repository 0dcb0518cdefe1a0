//! `berth-update install`: a signed bundle onto the slot that is not running.
//!
//! The order is the whole point (see docs/updates.md):
//! 1. read the manifest and its signature, verify it against the image's trust
//!    anchors, check compatible, architecture, version and sizes — nothing is
//!    written before all of that passed (a refusal is only recorded in the state
//!    file on the data partition);
//! 2. make the target slot unbootable (remove its boot entries);
//! 3. stream each payload to its place — the root filesystem onto the target
//!    partition, kernel and initramfs onto the ESP — hashing while writing;
//!    fsync; read the slot back and check it against the signed hash;
//! 4. the commit point: one atomic rename creates the target's boot entry with a
//!    boot counter and a boot-order rank above every other entry.
//!
//! A failure or a power cut before step 4 leaves the running slot the one that
//! boots; after it, the new slot boots (and the boot counter brings the old one
//! back if the new one never comes up healthy).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::system::System;
use crate::bundle::{BundleError, BundleReader, Manifest, PayloadKind, TrustedKeys};
use crate::entries::{self, version_cmp, EntriesError, EspState};
use crate::layout::{BootEntry, Slot, VerityParams, ARCHITECTURE};
use crate::state::{now, InstallOutcome, InstallRecord, StateError, UpdateState};

/// Tries a freshly installed slot gets before systemd-boot gives up on it.
pub const DEFAULT_TRIES: u32 = 3;

/// Bytes moved per write; also the progress granularity.
const CHUNK: usize = 1 << 20;

/// Why an install did not happen, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no trusted keys in {0}: this image was built without [update] keys and accepts no update")]
    NoKeys(PathBuf),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Entries(#[from] EntriesError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{what} on {path} reads back wrong after writing (sha256 {got}, expected {expected}): the storage did not keep what was written")]
    ReadBack {
        what: String,
        path: PathBuf,
        expected: String,
        got: String,
    },
}

impl InstallError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
        move |source| {
            let io = |source| InstallError::Io {
                what,
                path: path.to_path_buf(),
                source,
            };
            // A payload reader reports bundle errors (hash mismatch, truncation)
            // through io::Error: give them back their own message.
            if BundleError::from_io(&source).is_none() {
                return io(source);
            }
            let kind = source.kind();
            match source.into_inner().map(|e| e.downcast::<BundleError>()) {
                Some(Ok(bundle)) => InstallError::Bundle(*bundle),
                Some(Err(other)) => io(io::Error::new(kind, other)),
                None => io(io::Error::from(kind)),
            }
        }
    }
}

/// Named points of an install, in order: where the progress output says what
/// happened, and where the power-cut tests stop the machine
/// (`BERTH_UPDATE_TEST_PAUSE`, see the binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Signature and checks passed; nothing written yet.
    Verified,
    /// The target slot's boot entries are gone.
    Unbootable,
    /// Part of the root filesystem written (10, 50 or 90 percent; not synced).
    Rootfs(u8),
    /// Root filesystem written, synced and read back.
    RootfsWritten,
    /// Half of the kernel written to its temporary file on the ESP.
    KernelPartial,
    /// Kernel in place on the ESP.
    KernelWritten,
    /// Initramfs in place on the ESP: everything but the boot entry is there.
    InitramfsWritten,
    /// The new entry is durable in its temporary file; next is the commit rename.
    EntryWritten,
    /// The commit rename happened.
    Committed,
    /// The outcome is recorded in the state file.
    Recorded,
}

impl Checkpoint {
    /// Every checkpoint, in install order.
    pub const ALL: [Checkpoint; 12] = [
        Checkpoint::Verified,
        Checkpoint::Unbootable,
        Checkpoint::Rootfs(10),
        Checkpoint::Rootfs(50),
        Checkpoint::Rootfs(90),
        Checkpoint::RootfsWritten,
        Checkpoint::KernelPartial,
        Checkpoint::KernelWritten,
        Checkpoint::InitramfsWritten,
        Checkpoint::EntryWritten,
        Checkpoint::Committed,
        Checkpoint::Recorded,
    ];

    /// Stable name, as `BERTH_UPDATE_TEST_PAUSE` takes it.
    pub fn name(self) -> String {
        match self {
            Checkpoint::Verified => "verified".into(),
            Checkpoint::Unbootable => "unbootable".into(),
            Checkpoint::Rootfs(percent) => format!("rootfs-{percent}"),
            Checkpoint::RootfsWritten => "rootfs-written".into(),
            Checkpoint::KernelPartial => "kernel-partial".into(),
            Checkpoint::KernelWritten => "kernel-written".into(),
            Checkpoint::InitramfsWritten => "initramfs-written".into(),
            Checkpoint::EntryWritten => "entry-written".into(),
            Checkpoint::Committed => "committed".into(),
            Checkpoint::Recorded => "recorded".into(),
        }
    }

    /// Whether a power cut at this point must boot the new version (past the
    /// commit point) rather than the old one.
    pub fn is_after_commit(self) -> bool {
        matches!(self, Checkpoint::Committed | Checkpoint::Recorded)
    }
}

/// Who hears about an install's progress.
pub trait Observer {
    /// A checkpoint was reached.
    fn checkpoint(&mut self, point: Checkpoint);
    /// `done` of `total` bytes of `what` are written.
    fn progress(&mut self, what: &str, done: u64, total: u64);
    /// A step worth a line of output.
    fn step(&mut self, message: &str);
}

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Accept a version lower than or equal to the running one.
    pub allow_downgrade: bool,
    /// Boot tries of the new slot.
    pub tries: u32,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            allow_downgrade: false,
            tries: DEFAULT_TRIES,
        }
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    /// The committed boot entry.
    pub entry: PathBuf,
}

/// Installs the bundle read from `source` (`origin` names it in the state file)
/// onto the slot that is not running. Records the outcome in the state file.
pub fn install<R: Read>(
    system: &System,
    source: R,
    origin: &str,
    options: &InstallOptions,
    observer: &mut dyn Observer,
) -> Result<Installed, InstallError> {
    let target = system.target();
    let mut started = false;
    let mut version = String::new();
    let result = run(
        system,
        source,
        options,
        observer,
        &mut started,
        &mut version,
    );
    let (outcome, reason) = match &result {
        Ok(_) => (InstallOutcome::Committed, format!("from {origin}")),
        Err(err) if !started => (InstallOutcome::Failed, format!("refused {origin}: {err}")),
        Err(err) => (
            InstallOutcome::Failed,
            format!(
                "install from {origin} failed: {err}; slot {target} is left unbootable, slot {} still boots",
                system.booted
            ),
        ),
    };
    let record = UpdateState::update(&system.state_path, |state| {
        state.install = Some(InstallRecord {
            slot: target,
            version: version.clone(),
            outcome,
            reason,
            at: now(),
        })
    });
    let installed = result?;
    record?;
    observer.checkpoint(Checkpoint::Recorded);
    Ok(installed)
}

fn run<R: Read>(
    system: &System,
    source: R,
    options: &InstallOptions,
    observer: &mut dyn Observer,
    started: &mut bool,
    version: &mut String,
) -> Result<Installed, InstallError> {
    let keys = TrustedKeys::load_dir(&system.keys_dir)?;
    if keys.is_empty() {
        return Err(InstallError::NoKeys(system.keys_dir.clone()));
    }
    let mut bundle = BundleReader::open(source, &keys)?;
    let manifest = bundle.manifest().clone();
    version.clone_from(&manifest.version);
    observer.step(&format!(
        "bundle {} {} signed by key {}: signature verified",
        manifest.name,
        manifest.version,
        bundle.signature_key_id()
    ));
    let target = system.target();
    check(system, &manifest, options)?;
    observer.checkpoint(Checkpoint::Verified);

    // From here on the target slot is touched.
    *started = true;
    UpdateState::update(&system.state_path, |state| {
        state.install = Some(InstallRecord {
            slot: target,
            version: manifest.version.clone(),
            outcome: InstallOutcome::InProgress,
            reason: String::new(),
            at: now(),
        })
    })?;
    entries::remove_slot_entries(&system.esp, target)?;
    observer.checkpoint(Checkpoint::Unbootable);
    observer.step(&format!("slot {target} marked unbootable"));

    let slot_dir = system.esp.join(target.kernel_path());
    let slot_dir = slot_dir.parent().unwrap_or(&system.esp).to_path_buf();
    fs::create_dir_all(&slot_dir).map_err(InstallError::io("create folder", &slot_dir))?;

    let mut written = Vec::new();
    while let Some(mut payload) = bundle.next_payload()? {
        let info = payload.info().clone();
        match info.kind {
            PayloadKind::Rootfs => {
                let node = &system.slot(target).node;
                write_slot(node, &mut payload, info.size, observer)?;
                payload.finish()?;
                read_back("root filesystem", node, info.size, &info.sha256)?;
                observer.checkpoint(Checkpoint::RootfsWritten);
                written.push(PayloadKind::Rootfs);
            }
            PayloadKind::Kernel | PayloadKind::Initramfs => {
                let relative = match info.kind {
                    PayloadKind::Kernel => target.kernel_path(),
                    _ => target.initramfs_path(),
                };
                let path = system.esp.join(relative);
                write_esp_file(&path, &mut payload, info.kind, info.size, observer)?;
                payload.finish()?;
                commit_esp_file(&path)?;
                read_back(&info.file, &path, info.size, &info.sha256)?;
                observer.checkpoint(if info.kind == PayloadKind::Kernel {
                    Checkpoint::KernelWritten
                } else {
                    Checkpoint::InitramfsWritten
                });
                written.push(info.kind);
            }
        }
    }
    bundle.finish()?;
    for kind in [PayloadKind::Rootfs, PayloadKind::Kernel, PayloadKind::Initramfs] {
        if !written.contains(&kind) {
            return Err(InstallError::Refused(format!(
                "the bundle carries no {kind:?} payload"
            )));
        }
    }
    syncfs(&system.esp)?;

    let entry = BootEntry {
        title: manifest.title.clone(),
        version: manifest.version.clone(),
        slot: target,
        root_partuuid: system.slot(target).partuuid.clone(),
        data_partuuid: system.data_partuuid.clone(),
        verity: manifest.verity.as_ref().map(|v| VerityParams {
            root_hash: v.root_hash.clone(),
            salt: v.salt.clone(),
            data_blocks: v.data_blocks,
            hash_offset: v.hash_offset,
        }),
        extra_cmdline: manifest.cmdline.clone(),
    };
    let path = entries::install_entry_observed(&system.esp, &entry, options.tries, &mut || {
        observer.checkpoint(Checkpoint::EntryWritten)
    })?;
    observer.checkpoint(Checkpoint::Committed);
    observer.step(&format!(
        "committed: slot {target} ({}) boots next, with {} tries",
        manifest.version, options.tries
    ));
    Ok(Installed {
        slot: target,
        version: manifest.version,
        entry: path,
    })
}

/// Everything checked before the first write.
fn check(
    system: &System,
    manifest: &Manifest,
    options: &InstallOptions,
) -> Result<(), InstallError> {
    let refuse = |message: String| Err(InstallError::Refused(message));
    let running = &system.image;
    if manifest.compatible != running.compatible {
        return refuse(format!(
            "the bundle is for {:?}, this device runs {:?}",
            manifest.compatible, running.compatible
        ));
    }
    if manifest.architecture != ARCHITECTURE {
        return refuse(format!(
            "the bundle is for architecture {}, this device is {ARCHITECTURE}",
            manifest.architecture
        ));
    }
    if !options.allow_downgrade && version_cmp(&manifest.version, &running.version).is_le() {
        return refuse(format!(
            "the bundle's version {} is not newer than the running {} (use --allow-downgrade to install it anyway)",
            manifest.version, running.version
        ));
    }
    if let Some(min) = &manifest.min_version {
        if version_cmp(&running.version, min).is_lt() {
            return refuse(format!(
                "the bundle updates only from {min} or later; this device runs {}",
                running.version
            ));
        }
    }
    if options.tries == 0 {
        return refuse("a new slot needs at least one boot try".to_string());
    }
    let esp = EspState::read(&system.esp)?;
    match esp.slot(system.booted) {
        Some(entry) if !entry.is_good() => {
            return refuse(format!(
                "the running slot {} ({}) is not marked good yet: wait for its health check or run `berth-update mark-good`",
                system.booted, running.version
            ))
        }
        _ => {}
    }
    let target = system.target();
    let device = system.slot(target);
    let mut esp_bytes = 0;
    for payload in &manifest.payloads {
        match payload.kind {
            PayloadKind::Rootfs if payload.size > device.size => {
                return refuse(format!(
                    "the root filesystem ({} bytes) does not fit slot {target}'s partition ({} bytes)",
                    payload.size, device.size
                ))
            }
            PayloadKind::Rootfs => {}
            PayloadKind::Kernel | PayloadKind::Initramfs => esp_bytes += payload.size,
        }
    }
    // The target's old kernel and initramfs are replaced: their space counts.
    let old: u64 = [target.kernel_path(), target.initramfs_path()]
        .iter()
        .filter_map(|path| fs::metadata(system.esp.join(path)).ok())
        .map(|meta| meta.len())
        .sum();
    let free = free_bytes(&system.esp)? + old;
    // A little room for the entry and FAT's cluster rounding.
    if esp_bytes + (1 << 20) > free {
        return refuse(format!(
            "kernel and initramfs ({esp_bytes} bytes) do not fit on the ESP ({free} bytes free)"
        ));
    }
    Ok(())
}

fn write_slot(
    node: &Path,
    payload: &mut dyn Read,
    size: u64,
    observer: &mut dyn Observer,
) -> Result<(), InstallError> {
    let mut device = OpenOptions::new()
        .write(true)
        .open(node)
        .map_err(InstallError::io("open", node))?;
    let mut marks = [10u8, 50, 90].into_iter().peekable();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = read_full(payload, &mut buf).map_err(InstallError::io("read payload for", node))?;
        if n == 0 {
            break;
        }
        device
            .write_all(&buf[..n])
            .map_err(InstallError::io("write", node))?;
        done += n as u64;
        observer.progress("root filesystem", done, size);
        while let Some(&mark) = marks.peek() {
            if done * 100 >= u64::from(mark) * size {
                observer.checkpoint(Checkpoint::Rootfs(mark));
                marks.next();
            } else {
                break;
            }
        }
    }
    device.sync_all().map_err(InstallError::io("fsync", node))
}

fn write_esp_file(
    path: &Path,
    payload: &mut dyn Read,
    kind: PayloadKind,
    size: u64,
    observer: &mut dyn Observer,
) -> Result<(), InstallError> {
    let temp = temp_path(path);
    let mut file = File::create(&temp).map_err(InstallError::io("create", &temp))?;
    let what = if kind == PayloadKind::Kernel {
        "kernel"
    } else {
        "initramfs"
    };
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut half_reported = kind != PayloadKind::Kernel;
    loop {
        let n = read_full(payload, &mut buf).map_err(InstallError::io("read payload for", path))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(InstallError::io("write", &temp))?;
        done += n as u64;
        observer.progress(what, done, size);
        if !half_reported && done * 2 >= size {
            file.sync_all().map_err(InstallError::io("fsync", &temp))?;
            observer.checkpoint(Checkpoint::KernelPartial);
            half_reported = true;
        }
    }
    file.sync_all().map_err(InstallError::io("fsync", &temp))
}

/// Renames `path.tmp` over `path` and makes the rename durable.
fn commit_esp_file(path: &Path) -> Result<(), InstallError> {
    let temp = temp_path(path);
    fs::rename(&temp, path).map_err(InstallError::io("rename to", path))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(InstallError::io("fsync folder", dir))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Reads `size` bytes of `path` back from the storage (its cached pages dropped
/// first) and checks their sha256.
fn read_back(what: &str, path: &Path, size: u64, expected: &str) -> Result<(), InstallError> {
    let mut file = File::open(path).map_err(InstallError::io("open", path))?;
    drop_cache(&file);
    file.seek(SeekFrom::Start(0))
        .map_err(InstallError::io("seek", path))?;
    let mut hasher = Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact(&mut buf[..want])
            .map_err(InstallError::io("read back", path))?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(expected) {
        return Err(InstallError::ReadBack {
            what: what.to_string(),
            path: path.to_path_buf(),
            expected: expected.to_string(),
            got,
        });
    }
    Ok(())
}

/// Asks the kernel to forget the file's clean cached pages, so the next read
/// comes from the storage. Best effort: a failure only weakens the check.
fn drop_cache(file: &File) {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is
    // open for the duration of the call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Flushes the whole file system holding `path` (FAT metadata included).
fn syncfs(path: &Path) -> Result<(), InstallError> {
    let dir = File::open(path).map_err(InstallError::io("open", path))?;
    // SAFETY: syncfs takes a valid open descriptor and touches no memory of ours.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(InstallError::io("syncfs", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Result<u64, InstallError> {
    let dir = File::open(path).map_err(InstallError::io("open", path))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open and `stat` is a valid, writable statvfs.
    let rc = unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut stat) };
    if rc != 0 {
        return Err(InstallError::io("statvfs", path)(io::Error::last_os_error()));
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Fills `buf` as far as the reader goes; 0 only at the end.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
