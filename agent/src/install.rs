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
//!    fsync; read the slot back and check it is what was written;
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

use xxhash_rust::xxh3::Xxh3;

use super::system::System;
use berth_bundle::{
    BundleError, BundleReader, ImageVersion, Manifest, PayloadInfo, PayloadKind, TrustedKeys,
};
use berth_format::entries::{self, EntriesError, EspState};
use berth_format::layout::{BootEntry, Slot, VerityParams, ARCHITECTURE};
use berth_format::state::{now, Delivery, InstallOutcome, InstallRecord, StateError, UpdateState};

/// Tries a freshly installed slot gets before systemd-boot gives up on it.
pub const DEFAULT_TRIES: u32 = 3;

/// Bytes moved per write; also the progress granularity.
const CHUNK: usize = 1 << 20;

/// Why an install did not happen, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no trusted keys in {0}: this image was built without [update] keys and accepts no update"
    )]
    NoKeys(PathBuf),
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("refused: {0}")]
    Refused(String),
    /// The bundle could not be fetched (an install from a repository, where
    /// the fetch is part of the install and its failure is recorded).
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
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
    #[error("{what} on {path} reads back wrong after writing (xxh3 {got:016x}, written {expected:016x}): the storage did not keep what was written")]
    ReadBack {
        what: String,
        path: PathBuf,
        expected: u64,
        got: u64,
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
    /// A delta install's fetch, before all of the above: the chunk index is
    /// verified and nothing is fetched yet (0), or half of the chunks to
    /// fetch are staged (50). See [`Checkpoint::DELTA`].
    Chunks(u8),
}

impl Checkpoint {
    /// The checkpoints a delta install passes before [`Checkpoint::ALL`].
    pub const DELTA: [Checkpoint; 2] = [Checkpoint::Chunks(0), Checkpoint::Chunks(50)];

    /// Every checkpoint of an install, in order.
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
            Checkpoint::Chunks(percent) => format!("chunks-{percent}"),
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
    install_from(system, origin, options, None, observer, |keys| {
        open_bundle(source, keys)
    })
}

/// A bundle read front to back as a [`PayloadSource`]: its signature is
/// checked here, before anything else is read.
pub fn open_bundle<'s, R: Read + 's>(
    source: R,
    keys: &TrustedKeys,
) -> Result<Box<dyn PayloadSource + 's>, InstallError> {
    // The payloads' signed sha256 is checked as they stream; their stored
    // (compressed) digest adds nothing to what is written, only a hash pass.
    let bundle = BundleReader::open(source, keys)?.without_stored_digests();
    Ok(Box::new(BundleSource { bundle }))
}

/// A payload's manifest entry and a reader of its bytes.
pub type NextPayload<'a> = (PayloadInfo, Box<dyn Read + 'a>);

/// Where an install's signed manifest and payloads come from: a bundle read
/// front to back ([`install`]), or a delta assembled from chunks
/// ([`crate::delta`]). Either way each payload's reader fails, at its end at
/// the latest, when the bytes are not the manifest's signed sha256: the
/// write loop reads every payload to its end before the commit point.
pub trait PayloadSource {
    /// The manifest, its signature already verified against the trusted keys.
    fn manifest(&self) -> &Manifest;
    /// The key that signed the manifest.
    fn signer(&self) -> &str;
    /// The next payload, in manifest order; `None` after the last.
    fn next_payload(&mut self) -> Result<Option<NextPayload<'_>>, InstallError>;
    /// Checks that nothing is left over (a bundle's end of archive).
    fn finish(self: Box<Self>) -> Result<(), InstallError>;
}

/// A bundle read front to back.
struct BundleSource<R: Read> {
    bundle: BundleReader<R>,
}

impl<R: Read> PayloadSource for BundleSource<R> {
    fn manifest(&self) -> &Manifest {
        self.bundle.manifest()
    }

    fn signer(&self) -> &str {
        self.bundle.signature_key_id()
    }

    fn next_payload(&mut self) -> Result<Option<NextPayload<'_>>, InstallError> {
        Ok(self.bundle.next_payload()?.map(|payload| {
            let info = payload.info().clone();
            let reader: Box<dyn Read + '_> = Box::new(Finishing(Some(payload)));
            (info, reader)
        }))
    }

    fn finish(self: Box<Self>) -> Result<(), InstallError> {
        Ok(self.bundle.finish()?)
    }
}

/// A bundle payload that runs its size and digest checks
/// ([`PayloadReader::finish`](berth_bundle::PayloadReader::finish)) when it
/// reaches its end, so that end is an error when they fail.
struct Finishing<'a, R: Read>(Option<berth_bundle::PayloadReader<'a, R>>);

impl<R: Read> Read for Finishing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(payload) = self.0.as_mut() else {
            return Ok(0);
        };
        let n = payload.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(payload) = self.0.take() {
                payload
                    .finish()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
        Ok(n)
    }
}

/// Installs from the source `open` gives (after the trusted keys are loaded),
/// with `delivery` recorded beside the outcome.
pub fn install_from<'s>(
    system: &System,
    origin: &str,
    options: &InstallOptions,
    delivery: Option<Delivery>,
    observer: &mut dyn Observer,
    open: impl FnOnce(&TrustedKeys) -> Result<Box<dyn PayloadSource + 's>, InstallError>,
) -> Result<Installed, InstallError> {
    let target = system.target();
    let mut started = false;
    let mut version = String::new();
    let result = run(system, open, options, observer, &mut started, &mut version);
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
            delivery: delivery.clone(),
        })
    });
    let installed = result?;
    record?;
    observer.checkpoint(Checkpoint::Recorded);
    Ok(installed)
}

fn run<'s>(
    system: &System,
    open: impl FnOnce(&TrustedKeys) -> Result<Box<dyn PayloadSource + 's>, InstallError>,
    options: &InstallOptions,
    observer: &mut dyn Observer,
    started: &mut bool,
    version: &mut String,
) -> Result<Installed, InstallError> {
    let keys = TrustedKeys::load_dir(&system.keys_dir)?;
    if keys.is_empty() {
        return Err(InstallError::NoKeys(system.keys_dir.clone()));
    }
    let mut bundle = open(&keys)?;
    let manifest = bundle.manifest().clone();
    *version = manifest.version.to_string();
    observer.step(&format!(
        "bundle {} {} signed by key {}: signature verified",
        manifest.name,
        manifest.version,
        bundle.signer()
    ));
    let target = system.target();
    check(system, &manifest, options)?;
    observer.checkpoint(Checkpoint::Verified);

    // From here on the target slot is touched.
    *started = true;
    UpdateState::update(&system.state_path, |state| {
        state.install = Some(InstallRecord {
            slot: target,
            version: manifest.version.to_string(),
            outcome: InstallOutcome::InProgress,
            reason: String::new(),
            at: now(),
            delivery: None,
        })
    })?;
    entries::remove_slot_entries(&system.esp, target)?;
    remove_stale_temps(&system.esp, observer)?;
    observer.checkpoint(Checkpoint::Unbootable);
    observer.step(&format!("slot {target} marked unbootable"));

    let slot_dir = system.esp.join(target.kernel_path());
    let slot_dir = slot_dir.parent().unwrap_or(&system.esp).to_path_buf();
    fs::create_dir_all(&slot_dir).map_err(InstallError::io("create folder", &slot_dir))?;

    let mut written = Vec::new();
    while let Some((info, mut payload)) = bundle.next_payload()? {
        match info.kind {
            PayloadKind::Rootfs => {
                let node = &system.slot(target).node;
                let digest = write_slot(node, &mut payload, info.size, observer)?;
                drop(payload);
                observer.step(&format!(
                    "root filesystem written to {}: it matches the signed sha256; synced",
                    node.display()
                ));
                read_back("root filesystem", node, info.size, digest)?;
                observer.step("root filesystem read back: the storage kept it");
                observer.checkpoint(Checkpoint::RootfsWritten);
                written.push(PayloadKind::Rootfs);
            }
            PayloadKind::Kernel | PayloadKind::Initramfs => {
                let relative = match info.kind {
                    PayloadKind::Kernel => target.kernel_path(),
                    _ => target.initramfs_path(),
                };
                let path = system.esp.join(relative);
                let digest = write_esp_file(&path, &mut payload, info.kind, info.size, observer)?;
                drop(payload);
                commit_esp_file(&path)?;
                observer.step(&format!(
                    "{} written: it matches the signed sha256; synced",
                    path.display()
                ));
                read_back(&info.file, &path, info.size, digest)?;
                observer.step(&format!(
                    "{} read back: the storage kept it",
                    path.display()
                ));
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
    for kind in [
        PayloadKind::Rootfs,
        PayloadKind::Kernel,
        PayloadKind::Initramfs,
    ] {
        if !written.contains(&kind) {
            return Err(InstallError::Refused(format!(
                "the bundle carries no {kind:?} payload"
            )));
        }
    }
    syncfs(&system.esp)?;

    let entry = BootEntry {
        title: manifest.title.clone(),
        version: manifest.version.to_string(),
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
        // The manifest's architecture was checked to be this device's.
        arch: berth_format::Arch::native(),
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
        version: manifest.version.to_string(),
        entry: path,
    })
}

/// Everything checked before the first write.
pub(crate) fn check(
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
    // Semver precedence, so a device on 1.2.0-rc.1 takes 1.2.0. A running
    // version that is not semver (no berth build writes one) cannot be
    // compared: only a forced install goes ahead then.
    let running_version = ImageVersion::parse(&running.version);
    if !options.allow_downgrade {
        match &running_version {
            Ok(current) if manifest.version <= *current => {
                return refuse(format!(
                    "the bundle's version {} is not newer than the running {} (use --allow-downgrade to install it anyway)",
                    manifest.version, running.version
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return refuse(format!(
                    "cannot tell whether the bundle's version {} is newer: the running {e} (use --allow-downgrade to install it anyway)",
                    manifest.version
                ));
            }
        }
    }
    if let Some(min) = &manifest.min_version {
        if !running_version.as_ref().is_ok_and(|current| current >= min) {
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
    for payload in &manifest.payloads {
        if payload.kind == PayloadKind::Rootfs && payload.size > device.size {
            return refuse(format!(
                "the root filesystem ({} bytes) does not fit slot {target}'s partition ({} bytes)",
                payload.size, device.size
            ));
        }
    }
    let space = esp_space(&system.esp)?;
    esp_room(&system.esp, target, manifest, space).map_err(InstallError::Refused)
}

/// Room kept on the ESP beyond the payloads: the boot entry and its temporary,
/// FAT's directory clusters.
const ESP_MARGIN: u64 = 1 << 20;

/// Free space and allocation unit (the FAT cluster) of a file system.
#[derive(Debug, Clone, Copy)]
struct Space {
    free: u64,
    cluster: u64,
}

/// Whether the ESP can hold, at the fullest moment of the install, every file
/// that exists then. Each ESP payload is written to a temporary beside the file
/// it replaces (in the bundle's order, which is the manifest's), and the old file
/// is freed only by the rename: while the kernel's temporary is written, the old
/// kernel and the old initramfs are still there; while the initramfs's is, the
/// new kernel and the old initramfs are. Stale temporaries of a cut install
/// count as free: they are removed before the first write
/// ([`remove_stale_temps`]). Sizes are rounded up to whole clusters.
fn esp_room(esp: &Path, target: Slot, manifest: &Manifest, space: Space) -> Result<(), String> {
    let cluster = space.cluster.max(1);
    let on_disk = |len: u64| len.div_ceil(cluster).saturating_mul(cluster);
    let size_of = |path: &Path| fs::metadata(path).map_or(0, |meta| on_disk(meta.len()));
    let stale: u64 = stale_temps(esp).iter().map(|path| size_of(path)).sum();
    let available = space.free.saturating_add(stale);
    // Bytes held beyond today's files (signed: a smaller kernel frees some).
    let (mut held, mut peak) = (0i128, 0i128);
    for payload in &manifest.payloads {
        let relative = match payload.kind {
            PayloadKind::Kernel => target.kernel_path(),
            PayloadKind::Initramfs => target.initramfs_path(),
            PayloadKind::Rootfs => continue,
        };
        let new = i128::from(on_disk(payload.size));
        peak = peak.max(held + new);
        held += new - i128::from(size_of(&esp.join(relative)));
    }
    let needed = u64::try_from(peak)
        .unwrap_or(u64::MAX)
        .saturating_add(ESP_MARGIN);
    if needed > available {
        return Err(format!(
            "kernel and initramfs need {needed} bytes on the ESP at once (the old files stay until each new one is in place), \
             and it has {available} bytes free"
        ));
    }
    Ok(())
}

/// The temporary files an install writes on the ESP, for both slots: after a
/// cut install they hold space no one will free but the next install.
fn stale_temps(esp: &Path) -> Vec<PathBuf> {
    Slot::ALL
        .into_iter()
        .flat_map(|slot| [slot.kernel_path(), slot.initramfs_path()])
        .map(|relative| temp_path(&esp.join(relative)))
        .filter(|path| path.exists())
        .collect()
}

/// Removes the temporaries a cut install left ([`stale_temps`]) and makes the
/// removal durable. No install runs beside this one (the update lock), so no
/// temporary is in use.
fn remove_stale_temps(esp: &Path, observer: &mut dyn Observer) -> Result<(), InstallError> {
    for path in stale_temps(esp) {
        // Held until its removal is durable: its clusters are freed only then
        // (see berth_format::fatsync).
        let held = File::open(&path).ok();
        fs::remove_file(&path).map_err(InstallError::io("remove stale", &path))?;
        let dir = path.parent().unwrap_or(esp);
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(InstallError::io("fsync folder", dir))?;
        drop(held);
        observer.step(&format!(
            "removed {}, left by an install that was cut",
            path.display()
        ));
    }
    Ok(())
}

/// Streams the root filesystem onto the partition and fsyncs it; the xxh3 of
/// the bytes written, for [`read_back`].
fn write_slot(
    node: &Path,
    payload: &mut dyn Read,
    size: u64,
    observer: &mut dyn Observer,
) -> Result<u64, InstallError> {
    let mut device = OpenOptions::new()
        .write(true)
        .open(node)
        .map_err(InstallError::io("open", node))?;
    let mut marks = [10u8, 50, 90].into_iter().peekable();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut digest = Xxh3::new();
    loop {
        let n = read_full(payload, &mut buf).map_err(InstallError::io("read payload for", node))?;
        if n == 0 {
            break;
        }
        device
            .write_all(&buf[..n])
            .map_err(InstallError::io("write", node))?;
        digest.update(&buf[..n]);
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
    device.sync_all().map_err(InstallError::io("fsync", node))?;
    Ok(digest.digest())
}

fn write_esp_file(
    path: &Path,
    payload: &mut dyn Read,
    kind: PayloadKind,
    size: u64,
    observer: &mut dyn Observer,
) -> Result<u64, InstallError> {
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
    let mut digest = Xxh3::new();
    loop {
        let n = read_full(payload, &mut buf).map_err(InstallError::io("read payload for", path))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(InstallError::io("write", &temp))?;
        digest.update(&buf[..n]);
        done += n as u64;
        observer.progress(what, done, size);
        if !half_reported && done * 2 >= size {
            flush_device_of(&temp)?;
            file.sync_all().map_err(InstallError::io("fsync", &temp))?;
            observer.checkpoint(Checkpoint::KernelPartial);
            half_reported = true;
        }
    }
    flush_device_of(&temp)?;
    file.sync_all().map_err(InstallError::io("fsync", &temp))?;
    Ok(digest.digest())
}

/// The FAT chain of what was written durable before the `fsync` that points the
/// file's entry at it (see [`berth_format::fatsync`]).
fn flush_device_of(temp: &Path) -> Result<(), InstallError> {
    berth_format::fatsync::flush_device_of(temp)
        .map(|_| ())
        .map_err(InstallError::io("flush the device of", temp))
}

/// Renames `path.tmp` over `path` and makes the rename durable.
///
/// The old file is removed (durably) first: renamed over, vfat would free its
/// clusters at once but point the entry at the new ones only at inode
/// writeback, leaving the entry on freed clusters a later write takes. The
/// target slot has no boot entry at this point, so its files may go missing.
/// The folder is synced before the renamed file: a cut in between leaves the
/// file empty and its clusters leaked (never shared) until the next install
/// writes it again.
fn commit_esp_file(path: &Path) -> Result<(), InstallError> {
    let temp = temp_path(path);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let sync_dir = || {
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(InstallError::io("fsync folder", dir))
    };
    // Held until its removal is durable: its clusters are freed only then.
    let held = File::open(path).ok();
    match fs::remove_file(path) {
        Ok(()) => sync_dir()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(InstallError::io("remove", path)(e)),
    }
    drop(held);
    fs::rename(&temp, path).map_err(InstallError::io("rename to", path))?;
    sync_dir()
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Reads `size` bytes of `path` back from the storage (its cached pages dropped
/// first) and checks their xxh3 against `written`, the xxh3 of what was written
/// (which was checked against the signed sha256 on its way).
fn read_back(what: &str, path: &Path, size: u64, written: u64) -> Result<(), InstallError> {
    let mut file = File::open(path).map_err(InstallError::io("open", path))?;
    drop_cache(&file);
    file.seek(SeekFrom::Start(0))
        .map_err(InstallError::io("seek", path))?;
    let mut hasher = Xxh3::new();
    let mut left = size;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact(&mut buf[..want])
            .map_err(InstallError::io("read back", path))?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    let got = hasher.digest();
    if got != written {
        return Err(InstallError::ReadBack {
            what: what.to_string(),
            path: path.to_path_buf(),
            expected: written,
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

fn esp_space(path: &Path) -> Result<Space, InstallError> {
    let dir = File::open(path).map_err(InstallError::io("open", path))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open and `stat` is a valid, writable statvfs.
    let rc = unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut stat) };
    if rc != 0 {
        return Err(InstallError::io("statvfs", path)(io::Error::last_os_error()));
    }
    Ok(Space {
        free: stat.f_bavail.saturating_mul(stat.f_frsize),
        cluster: stat.f_frsize,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{put_slot, scratch_system};
    use berth_bundle::testkit::{make, make_with, Key, Made};
    use berth_format::state::InstallOutcome;
    use std::collections::BTreeMap;

    /// Records what an install reported.
    #[derive(Default)]
    struct Seen {
        points: Vec<Checkpoint>,
        steps: Vec<String>,
    }

    impl Observer for Seen {
        fn checkpoint(&mut self, point: Checkpoint) {
            self.points.push(point);
        }
        fn progress(&mut self, _what: &str, done: u64, total: u64) {
            assert!(done <= total, "{done} of {total}");
        }
        fn step(&mut self, message: &str) {
            self.steps.push(message.to_string());
        }
    }

    /// A 1.0.0 device booted from a good slot A, trusting `key`.
    fn device(dir: &Path, key: &Key) -> System {
        device_on(dir, key, "1.0.0")
    }

    /// A device running `version` from slot A.
    fn device_on(dir: &Path, key: &Key, version: &str) -> System {
        let mut system = scratch_system(dir, Slot::A, version);
        // The compatible string of the bundles the test helpers make.
        system.image.compatible = "berth-hello".into();
        put_slot(&system, Slot::A, version, None);
        fs::create_dir_all(&system.keys_dir).unwrap();
        fs::write(system.keys_dir.join("release.pub"), key.public_text()).unwrap();
        system
    }

    /// Every file under the ESP with its content, and the target slot's bytes.
    fn snapshot(system: &System) -> (BTreeMap<PathBuf, Vec<u8>>, Vec<u8>) {
        let mut files = BTreeMap::new();
        let mut dirs = vec![system.esp.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.insert(path.clone(), fs::read(&path).unwrap());
                }
            }
        }
        (files, fs::read(&system.slot(Slot::B).node).unwrap())
    }

    fn install_bytes(system: &System, made: &Made) -> (Result<Installed, InstallError>, Seen) {
        let mut seen = Seen::default();
        let result = install(
            system,
            made.bytes.as_slice(),
            "test.bundle",
            &InstallOptions::default(),
            &mut seen,
        );
        (result, seen)
    }

    #[test]
    fn install_writes_the_slot_and_the_esp_then_commits() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let system = device(dir.path(), &key);
        let made = make(&key);
        let (result, seen) = install_bytes(&system, &made);
        let installed = result.unwrap();
        assert_eq!(installed.slot, Slot::B);
        assert_eq!(installed.version, "1.1.0");
        assert_eq!(
            seen.points,
            Checkpoint::ALL.to_vec(),
            "every checkpoint, in order"
        );

        let slot = fs::read(&system.slot(Slot::B).node).unwrap();
        assert_eq!(&slot[..made.payloads[0].len()], made.payloads[0].as_slice());
        assert_eq!(
            fs::read(system.esp.join("berth/b/vmlinuz")).unwrap(),
            made.payloads[1]
        );
        assert_eq!(
            fs::read(system.esp.join("berth/b/initramfs.img")).unwrap(),
            made.payloads[2]
        );
        assert!(!system.esp.join("berth/b/vmlinuz.tmp").exists());

        let esp = EspState::read(&system.esp).unwrap();
        assert_eq!(esp.next_boot(), Some(Slot::B));
        let b = esp.slot(Slot::B).unwrap();
        assert_eq!(b.file_name(), "berth-b+3.conf");
        assert_eq!(b.image_version(), Some("1.1.0"));
        let text = fs::read_to_string(&installed.entry).unwrap();
        let partuuid = &system.slot(Slot::B).partuuid;
        assert!(
            text.contains(&format!("root=PARTUUID={partuuid}")),
            "{text}"
        );
        assert!(text.contains("berth.slot=b"), "{text}");
        assert!(text.contains(&"ab".repeat(32)), "root hash: {text}");
        assert!(text.ends_with(" quiet\n"), "recipe cmdline last: {text}");
        // The running slot is untouched and still good.
        assert!(esp.slot(Slot::A).unwrap().is_good());

        let state = UpdateState::load(&system.state_path).unwrap();
        let record = state.install.unwrap();
        assert_eq!(record.outcome, InstallOutcome::Committed);
        assert_eq!((record.slot, record.version.as_str()), (Slot::B, "1.1.0"));
    }

    #[test]
    fn refusals_write_nothing_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let system = device(dir.path(), &key);
        let before = snapshot(&system);
        let cases: Vec<(&str, Made, &str)> = vec![
            (
                "another key",
                make(&Key::new()),
                "not one of the trusted keys",
            ),
            (
                "another compatible",
                make_with(&key, |m, _| m.compatible = "other-board".into()),
                "\"other-board\"",
            ),
            (
                "another architecture",
                make_with(&key, |m, _| {
                    let other = berth_format::Arch::ALL
                        .into_iter()
                        .find(|a| *a != berth_format::Arch::native())
                        .unwrap();
                    m.architecture = other.manifest_name().into();
                }),
                "the bundle is for architecture",
            ),
            (
                "same version",
                make_with(&key, |m, _| m.version = "1.0.0".parse().unwrap()),
                "not newer than the running 1.0.0",
            ),
            (
                "older version",
                make_with(&key, |m, _| m.version = "0.9.0".parse().unwrap()),
                "not newer",
            ),
            (
                "minimum version above the running one",
                make_with(&key, |m, _| {
                    m.min_version = Some("1.0.5".parse().unwrap());
                }),
                "updates only from 1.0.5 or later",
            ),
            (
                "too big for the slot",
                make_with(&key, |m, _| m.payloads[0].size = 9 << 20),
                "does not fit slot b",
            ),
        ];
        for (what, made, why) in cases {
            let (result, seen) = install_bytes(&system, &made);
            let err = result.expect_err(what).to_string();
            assert!(err.contains(why), "{what}: {err}");
            assert!(seen.points.is_empty(), "{what}: {:?}", seen.points);
            assert_eq!(snapshot(&system), before, "{what} wrote something");
            let record = UpdateState::load(&system.state_path)
                .unwrap()
                .install
                .unwrap();
            assert_eq!(record.outcome, InstallOutcome::Failed, "{what}");
            assert!(record.reason.starts_with("refused"), "{what}: {record:?}");
        }
        // A flipped bit in the manifest breaks the signature.
        let mut flipped = make(&key);
        let (at, len) = flipped.member(berth_bundle::MANIFEST_MEMBER);
        flipped.bytes[at + len / 2] ^= 0x02;
        let err = install_bytes(&system, &flipped).0.unwrap_err().to_string();
        assert!(err.contains("signature does not verify"), "{err}");
        assert_eq!(snapshot(&system), before);
    }

    /// `--allow-downgrade` installs an older or equal version (and nothing
    /// else a refusal guards: the minimum version still holds); `--tries`
    /// is the new entry's boot counter, and 0 tries is refused.
    #[test]
    fn allow_downgrade_and_tries_do_what_the_options_say() {
        let with = |version: &str, min: Option<&str>, options: InstallOptions| {
            let dir = tempfile::tempdir().unwrap();
            let key = Key::new();
            let system = device(dir.path(), &key);
            let made = make_with(&key, |m, _| {
                m.version = version.parse().unwrap();
                m.min_version = min.map(|v| v.parse().unwrap());
            });
            let mut seen = Seen::default();
            let result = install(
                &system,
                made.bytes.as_slice(),
                "test.bundle",
                &options,
                &mut seen,
            );
            let esp = EspState::read(&system.esp).unwrap();
            let entry = esp.slot(Slot::B).map(|e| e.file_name().to_string());
            (result.map_err(|e| e.to_string()), entry)
        };
        let downgrade = InstallOptions {
            allow_downgrade: true,
            ..InstallOptions::default()
        };
        for older in ["0.9.0", "1.0.0"] {
            let (result, entry) = with(older, None, InstallOptions::default());
            assert!(
                result.unwrap_err().contains("use --allow-downgrade"),
                "{older}"
            );
            assert_eq!(entry, None, "{older} refused, no entry written");
            let (result, entry) = with(older, None, downgrade.clone());
            assert_eq!(result.unwrap().version, older);
            assert_eq!(
                entry.as_deref(),
                Some("berth-b+3.conf"),
                "{older} committed"
            );
        }
        let (result, _) = with("0.9.0", Some("1.0.5"), downgrade);
        assert!(result
            .unwrap_err()
            .contains("updates only from 1.0.5 or later"));

        let tries = |tries| InstallOptions {
            tries,
            ..InstallOptions::default()
        };
        let (result, entry) = with("1.1.0", None, tries(7));
        assert_eq!(result.unwrap().version, "1.1.0");
        assert_eq!(entry.as_deref(), Some("berth-b+7.conf"));
        let (result, entry) = with("1.1.0", None, tries(0));
        assert!(result.unwrap_err().contains("at least one boot try"));
        assert_eq!(entry, None);
    }

    #[test]
    fn a_release_candidate_takes_its_release_and_nothing_below() {
        let on_rc = |version: &str, min: Option<&str>| {
            let dir = tempfile::tempdir().unwrap();
            let key = Key::new();
            let system = device_on(dir.path(), &key, "1.2.0-rc.1");
            let made = make_with(&key, |m, _| {
                m.version = version.parse().unwrap();
                m.min_version = min.map(|v| v.parse().unwrap());
            });
            install_bytes(&system, &made).0.map_err(|e| e.to_string())
        };
        // strverscmp put 1.2.0-rc.1 above 1.2.0; semver has the release newer.
        assert_eq!(on_rc("1.2.0", None).unwrap().version, "1.2.0");
        assert_eq!(on_rc("1.2.0-rc.2", None).unwrap().version, "1.2.0-rc.2");
        for older in [
            "1.2.0-rc.1",
            "1.2.0-rc.1+other-build",
            "1.2.0-beta",
            "1.1.9",
        ] {
            let err = on_rc(older, None).unwrap_err();
            assert!(
                err.contains("not newer than the running 1.2.0-rc.1"),
                "{older}: {err}"
            );
        }
        // A pre-release is below the release it leads to.
        let err = on_rc("1.3.0", Some("1.2.0")).unwrap_err();
        assert!(err.contains("updates only from 1.2.0 or later"), "{err}");
        assert!(on_rc("1.3.0", Some("1.2.0-rc.1")).is_ok());
    }

    #[test]
    fn a_running_slot_not_yet_good_refuses_updates() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let system = device(dir.path(), &key);
        put_slot(&system, Slot::A, "1.0.0", Some(2));
        let err = install_bytes(&system, &make(&key))
            .0
            .unwrap_err()
            .to_string();
        assert!(err.contains("not marked good yet"), "{err}");
    }

    #[test]
    fn a_damaged_payload_leaves_the_target_unbootable_and_the_running_slot_booting() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let system = device(dir.path(), &key);
        // A previous release in slot B, which the install must disable first.
        put_slot(&system, Slot::B, "0.9.0", None);
        entries::make_next(&system.esp, Slot::A).unwrap();
        let mut made = make(&key);
        let (at, len) = made.member("vmlinuz.zst");
        made.bytes[at + len / 2] ^= 0x10;
        let (result, seen) = install_bytes(&system, &made);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("vmlinuz.zst"), "{err}");
        assert!(seen.points.contains(&Checkpoint::RootfsWritten));
        assert!(!seen.points.contains(&Checkpoint::Committed));
        let esp = EspState::read(&system.esp).unwrap();
        assert!(esp.slot(Slot::B).is_none(), "slot b must have no entry");
        assert_eq!(esp.next_boot(), Some(Slot::A));
        let record = UpdateState::load(&system.state_path)
            .unwrap()
            .install
            .unwrap();
        assert_eq!(record.outcome, InstallOutcome::Failed);
        assert!(record.reason.contains("slot a still boots"), "{record:?}");
    }

    #[test]
    fn a_device_without_keys_accepts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new();
        let system = device(dir.path(), &key);
        fs::remove_file(system.keys_dir.join("release.pub")).unwrap();
        let err = install_bytes(&system, &make(&key))
            .0
            .unwrap_err()
            .to_string();
        assert!(err.contains("accepts no update"), "{err}");
    }

    #[test]
    fn checkpoint_names_are_unique_and_only_the_last_two_follow_the_commit() {
        let every: Vec<Checkpoint> = Checkpoint::DELTA
            .iter()
            .chain(&Checkpoint::ALL)
            .copied()
            .collect();
        let names: std::collections::HashSet<String> = every.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), every.len());
        let after: Vec<_> = Checkpoint::ALL
            .iter()
            .filter(|p| p.is_after_commit())
            .collect();
        assert_eq!(after, [&Checkpoint::Committed, &Checkpoint::Recorded]);
    }

    const MIB: u64 = 1 << 20;

    /// A scratch ESP whose slot B holds an old kernel and initramfs of 8 MiB
    /// each, and a manifest whose new ones are 8 MiB each too.
    fn eight_mib_esp(dir: &Path) -> (PathBuf, Manifest) {
        let esp = dir.join("efi");
        fs::create_dir_all(esp.join("berth/b")).unwrap();
        for relative in [Slot::B.kernel_path(), Slot::B.initramfs_path()] {
            File::create(esp.join(relative))
                .unwrap()
                .set_len(8 * MIB)
                .unwrap();
        }
        let mut manifest = make(&Key::new()).manifest;
        for payload in &mut manifest.payloads {
            if payload.kind != PayloadKind::Rootfs {
                payload.size = 8 * MIB;
            }
        }
        (esp, manifest)
    }

    #[test]
    fn the_esp_check_counts_the_old_files_beside_the_new_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, manifest) = eight_mib_esp(dir.path());
        let space = |free| Space {
            free,
            cluster: 4096,
        };
        // The new kernel's temporary (8 MiB) is written while both old files
        // are still there: 4 MiB free is not enough, whatever the old files
        // will free later.
        let short = esp_room(&esp, Slot::B, &manifest, space(4 * MIB)).unwrap_err();
        assert!(short.contains("at once"), "{short}");
        // 8 MiB and the margin are: the old kernel is freed before the new
        // initramfs is written.
        esp_room(&esp, Slot::B, &manifest, space(9 * MIB)).unwrap();
        // Without old files (a first install into B) both new files stay.
        fs::remove_dir_all(esp.join("berth/b")).unwrap();
        assert!(esp_room(&esp, Slot::B, &manifest, space(16 * MIB)).is_err());
        esp_room(&esp, Slot::B, &manifest, space(17 * MIB)).unwrap();
    }

    #[test]
    fn the_esp_check_rounds_up_to_whole_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, mut manifest) = eight_mib_esp(dir.path());
        fs::remove_dir_all(esp.join("berth/b")).unwrap();
        // Two files of one byte take two clusters of 64 KiB, not two bytes.
        for payload in &mut manifest.payloads {
            if payload.kind != PayloadKind::Rootfs {
                payload.size = 1;
            }
        }
        let space = |free| Space {
            free,
            cluster: 64 << 10,
        };
        assert!(esp_room(&esp, Slot::B, &manifest, space(MIB + (64 << 10))).is_err());
        esp_room(&esp, Slot::B, &manifest, space(MIB + (128 << 10))).unwrap();
    }

    #[test]
    fn stale_temporaries_of_a_cut_install_count_as_free_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, manifest) = eight_mib_esp(dir.path());
        // A first install into B was cut after both temporaries were whole:
        // they hold 16 MiB that only this install will free.
        for name in ["vmlinuz", "initramfs.img"] {
            fs::remove_file(esp.join("berth/b").join(name)).unwrap();
            File::create(esp.join("berth/b").join(format!("{name}.tmp")))
                .unwrap()
                .set_len(8 * MIB)
                .unwrap();
        }
        let space = |free| Space {
            free,
            cluster: 4096,
        };
        esp_room(&esp, Slot::B, &manifest, space(MIB)).unwrap();
        assert!(esp_room(&esp, Slot::B, &manifest, space(MIB - 4096)).is_err());

        let key = Key::new();
        let system = device(&dir.path().join("device"), &key);
        let stale = [
            system.esp.join("berth/b/vmlinuz.tmp"),
            system.esp.join("berth/b/initramfs.img.tmp"),
            system.esp.join("berth/a/vmlinuz.tmp"),
        ];
        for path in &stale {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"half a kernel").unwrap();
        }
        let (result, seen) = install_bytes(&system, &make(&key));
        result.unwrap();
        for path in &stale {
            assert!(!path.exists(), "{} is still there", path.display());
        }
        assert!(
            seen.steps.iter().any(|s| s.contains("berth/a/vmlinuz.tmp")),
            "{:?}",
            seen.steps
        );
        assert!(system.esp.join("berth/a/vmlinuz").exists());
    }
}
