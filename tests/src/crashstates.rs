//! Every state a disk can be left in by a power cut, checked for what boots.
//!
//! Input: the disk as it was before a VM ran, and the dm-log-writes log of
//! everything the guest wrote ([`crate::logwrites`]). A disk with a volatile
//! write cache keeps, at a power cut, every write before the last completed
//! flush and any subset of the writes since (sector by sector, in any order:
//! a subset applied in log order covers reordering too, since a sector's
//! earlier content surviving is the same state as its later write being lost).
//! The checker builds the state at every flush (and at the end of the log),
//! plus a seeded sample of states between flushes: each in-order prefix of the
//! writes since the flush, each with one request lost, and random
//! sector-granular subsets — the approach of CrashMonkey and xfstests'
//! log-writes replay.
//!
//! Each state is checked as the firmware would meet it: the GPT reads (primary
//! or backup); the ESP is a FAT that `fsck.fat -n` finds no damage in but the
//! benign traces of a cut (dirty bit, a free-cluster count, clusters leaked);
//! no boot entry file is empty; the entry systemd-boot 252 picks (berth's own
//! reading, [`EspState`]) is the slot the phase demands, with its kernel and
//! initramfs whole (as at the end of the log) and its root partition holding
//! every write the log made to it. Phases are ranges of the log a test marks
//! as it drives the device: a fixed slot, or a switch from one slot to another
//! (an install or a rollback), inside which the flush states must move from
//! the old slot to the new once and never back, and an install's target must
//! have no entry while the old slot boots.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_format::entries::{parse_slot_file_name, EspState, ENTRIES_DIR};
use berth_format::gpt::read_table;
use berth_format::Slot;
use sha2::{Digest, Sha256};

use crate::logwrites::{Entry, LogError, Replay, WriteLog};

/// A failure to run the checker (not a state that fails its check).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the disk before the log: {0}")]
    Layout(String),
    #[error("running fsck.fat: {0}")]
    Fsck(io::Error),
}

/// What must boot in a range of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// This slot, in every state.
    Boots(Slot),
    /// An operation that moves from `from` to `to`; with `fresh_target`, `to`
    /// has no entry file at all while `from` boots (an install).
    Switch {
        from: Slot,
        to: Slot,
        fresh_target: bool,
    },
}

/// A range of the log, from the end of the previous phase to `end` entries.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub end: usize,
    pub expect: Expect,
}

/// How many states between flushes to check.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub seed: u64,
    /// Random sector-granular subsets per window of unflushed writes.
    pub random_per_window: usize,
    /// At most this many in-order prefixes and one-request-lost states per
    /// window (evenly spread when there are more).
    pub structured_per_window: usize,
}

/// One state that failed its check.
#[derive(Debug, Clone)]
pub struct Failure {
    pub phase: String,
    pub state: String,
    pub problems: Vec<String>,
}

/// What a run covered and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Log entries, of them flushes.
    pub entries: usize,
    pub flushes: usize,
    /// Crash states checked, of them at a flush.
    pub states: usize,
    pub flush_states: usize,
    /// States whose ESP or GPT differed from the last one checked (the others
    /// share its verdict on the ESP and GPT; the root check runs for each).
    pub distinct_esp_states: usize,
    /// States that did not boot the slot they must (or nothing at all).
    pub wrong_boot: usize,
    pub failures: Vec<Failure>,
    /// Benign `fsck.fat` findings seen, once each.
    pub benign_findings: BTreeSet<String>,
    /// Per phase: states checked and which slots they booted (a, b, none).
    pub per_phase: Vec<(String, usize, [usize; 3])>,
    /// Per switch phase: the last flush state (entries applied) that booted
    /// the old slot and the first that booted the new one: the commit point.
    pub commit_points: Vec<(String, Option<usize>, Option<usize>)>,
}

/// Byte ranges of the partitions the check reads, from the disk before the log.
#[derive(Debug, Clone)]
struct Layout {
    disk_len: u64,
    esp: Range<u64>,
    roots: [Range<u64>; 2],
    gpt: [Range<u64>; 2],
}

const SECTOR: u64 = 512;

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Layout {
    fn read(base: &Path) -> Result<Layout, CheckError> {
        let mut file = File::open(base).map_err(io_err("open", base))?;
        let disk_len = file.metadata().map_err(io_err("stat", base))?.len();
        let table = read_table(&mut file, SECTOR).map_err(|e| CheckError::Layout(e.to_string()))?;
        let range = |label: &str| {
            table
                .partitions
                .iter()
                .find(|p| p.label == label)
                .map(|p| p.first_lba * SECTOR..(p.last_lba + 1) * SECTOR)
                .ok_or_else(|| CheckError::Layout(format!("no partition labelled {label}")))
        };
        Ok(Layout {
            disk_len,
            esp: range("esp")?,
            roots: [range("root-a")?, range("root-b")?],
            gpt: [0..34 * SECTOR, disk_len - 33 * SECTOR..disk_len],
        })
    }

    fn touches(range: &Range<u64>, entry: &Entry) -> bool {
        let s = entry.sectors();
        !s.is_empty() && s.start * SECTOR < range.end && s.end * SECTOR > range.start
    }

    /// Whether the entry changes what the ESP or GPT check reads.
    fn touches_boot(&self, entry: &Entry) -> bool {
        Layout::touches(&self.esp, entry) || self.gpt.iter().any(|r| Layout::touches(r, entry))
    }

    fn touches_anything_checked(&self, entry: &Entry) -> bool {
        self.touches_boot(entry) || self.roots.iter().any(|r| Layout::touches(r, entry))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> CheckError + 'a {
    move |source| CheckError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The ESP of the state being checked, as a file `fsck.fat` and `fatfs` read;
/// changed sector by sector as the replay moves, and put back after a sampled
/// state.
struct EspFile {
    path: PathBuf,
    file: File,
    start: u64,
    len: u64,
}

impl EspFile {
    fn create(dir: &Path, base: &Path, esp: &Range<u64>) -> Result<EspFile, CheckError> {
        let path = dir.join("esp.img");
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let mut input = File::open(base).map_err(io_err("open", base))?;
        input
            .seek(SeekFrom::Start(esp.start))
            .map_err(io_err("seek", base))?;
        io::copy(&mut input.take(esp.end - esp.start), &mut out).map_err(io_err("copy", &path))?;
        Ok(EspFile {
            path,
            file: out,
            start: esp.start,
            len: esp.end - esp.start,
        })
    }

    /// Writes a disk sector when it is in the ESP; returns what it held before.
    fn write_sector(&self, disk_sector: u64, data: &[u8]) -> Result<Option<Vec<u8>>, CheckError> {
        let at = disk_sector * SECTOR;
        if at < self.start || at >= self.start + self.len {
            return Ok(None);
        }
        let mut old = vec![0u8; data.len()];
        self.file
            .read_exact_at(&mut old, at - self.start)
            .and_then(|()| self.file.write_all_at(data, at - self.start))
            .map_err(io_err("write", &self.path))?;
        Ok(Some(old))
    }
}

/// Read-only access for `fatfs` (which wants `Write` too): a write is refused,
/// so reading a state can never change it.
struct ReadOnly(File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Seek for ReadOnly {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}
impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one ESP holds that the boot depends on.
#[derive(Debug, Default)]
struct EspView {
    /// Problems found reading it.
    problems: Vec<String>,
    /// fsck.fat findings judged benign.
    benign: Vec<String>,
    /// The slot systemd-boot picks.
    boots: Option<Slot>,
    /// Entry file names of each slot.
    slot_files: [Vec<String>; 2],
    /// sha256 of each slot's kernel and initramfs (`None`: missing).
    files: [(Option<String>, Option<String>); 2],
}

/// `fsck.fat` lines that a cut leaves on any FAT and that harm no reader: the
/// dirty bit Linux sets while mounted, the free-cluster hint, clusters
/// allocated but not reached from any entry (space leaked until `fsck`).
fn benign_finding(line: &str) -> bool {
    const BENIGN: [&str; 10] = [
        "Dirty bit is set",
        // The second FAT copy lags the first; Linux and the firmware read the first.
        "FATs differ but appear to be intact",
        "Using first FAT",
        // FSInfo's free count is a hint; "unknown" is a valid value.
        "Free cluster summary uninitialized",
        "Free cluster summary wrong",
        "unused clusters",
        "Reclaimed",
        "There are differences between boot sector and its backup",
        "This is mostly harmless",
        // A chain longer than the file's size (`is > N bytes`): clusters a
        // growing file had allocated, leaked, not shared.
        "cluster chain length is >",
    ];
    BENIGN.iter().any(|b| line.contains(b))
}

fn fsck(path: &Path) -> Result<(Vec<String>, Vec<String>), CheckError> {
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(path)
        .output()
        .map_err(CheckError::Fsck)?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // One finding: a line, or a path line (`/loader/entries/x.conf`) with the
    // indented lines that say what is wrong with it.
    let mut findings: Vec<String> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        let continues = raw.starts_with(' ') && !findings.is_empty();
        if line.is_empty()
            || line.starts_with("fsck.fat ")
            || line.contains(" files, ")
            || line.starts_with("Leaving filesystem unchanged")
            // The bytes a "differences" finding lists (`65:01/00`).
            || line.starts_with(|c: char| c.is_ascii_digit()) && line.contains(':') && line.contains('/')
            || line.starts_with("Not automatically fixing")
            || line.starts_with("Auto-correcting")
            || line.starts_with("Automatically removing dirty bit")
            || line.starts_with("Truncating file to")
            || line.starts_with("Using first FAT")
        {
            continue;
        }
        let last_is_path = findings
            .last()
            .is_some_and(|f| f.starts_with('/') && !f.contains(": "));
        if continues && last_is_path {
            let last = findings.last_mut().expect("a finding");
            last.push_str(": ");
            last.push_str(line);
        } else if continues {
            let last = findings.last_mut().expect("a finding");
            last.push(' ');
            last.push_str(line);
        } else {
            findings.push(line.to_string());
        }
    }
    let (benign, mut harmful): (Vec<String>, Vec<String>) =
        findings.into_iter().partition(|f| benign_finding(f));
    if !out.status.success() && harmful.is_empty() && benign.is_empty() {
        harmful.push(format!("fsck.fat -n exited with {}", out.status));
    }
    Ok((harmful, benign))
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads the ESP file: fsck, the entries, which slot boots, the slots' files.
fn view_esp(esp: &EspFile, scratch: &Path) -> Result<EspView, CheckError> {
    let mut view = EspView::default();
    let (harmful, benign) = fsck(&esp.path)?;
    view.problems
        .extend(harmful.into_iter().map(|l| format!("fsck.fat: {l}")));
    view.benign = benign;
    let file = File::open(&esp.path).map_err(io_err("open", &esp.path))?;
    let fs = match fatfs::FileSystem::new(ReadOnly(file), fatfs::FsOptions::new()) {
        Ok(fs) => fs,
        Err(e) => {
            view.problems.push(format!("the ESP is not a FAT: {e}"));
            return Ok(view);
        }
    };
    let read = |path: &str| -> Option<Vec<u8>> {
        let mut data = Vec::new();
        fs.root_dir()
            .open_file(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .ok()
            .map(|_| data)
    };
    let _ = fs::remove_dir_all(scratch);
    let entries_dir = scratch.join(ENTRIES_DIR);
    fs::create_dir_all(&entries_dir).map_err(io_err("create", &entries_dir))?;
    match fs.root_dir().open_dir(ENTRIES_DIR) {
        Ok(dir) => {
            for item in dir.iter() {
                let item = match item {
                    Ok(item) => item,
                    Err(e) => {
                        view.problems.push(format!("reading {ENTRIES_DIR}: {e}"));
                        continue;
                    }
                };
                let name = item.file_name();
                if name == "." || name == ".." || item.is_dir() {
                    continue;
                }
                let Some(data) = read(&format!("{ENTRIES_DIR}/{name}")) else {
                    view.problems.push(format!("{name}: unreadable"));
                    continue;
                };
                if name.ends_with(".conf") && data.is_empty() {
                    view.problems.push(format!("{name}: an empty entry"));
                }
                if let Some((slot, _)) = parse_slot_file_name(&name) {
                    view.slot_files[slot_index(slot)].push(name.clone());
                }
                fs::write(entries_dir.join(&name), &data).map_err(io_err("write", &entries_dir))?;
            }
        }
        Err(e) => view.problems.push(format!("no {ENTRIES_DIR}: {e}")),
    }
    for slot in Slot::ALL {
        let kernel = read(&slot.kernel_path());
        let initramfs = read(&slot.initramfs_path());
        // A stand-in for EspState, which reads only whether it is there and
        // not empty.
        if let Some(kernel) = &kernel {
            let copy = scratch.join(slot.kernel_path());
            fs::create_dir_all(copy.parent().expect("a folder"))
                .and_then(|()| fs::write(&copy, &kernel[..kernel.len().min(1)]))
                .map_err(io_err("write", &copy))?;
        }
        view.files[slot_index(slot)] = (kernel.as_deref().map(sha), initramfs.as_deref().map(sha));
    }
    match EspState::read(scratch) {
        Ok(state) => view.boots = state.next_boot(),
        Err(e) => view.problems.push(format!("reading the entries: {e}")),
    }
    Ok(view)
}

/// The result of one state.
struct Verdict {
    boots: Option<Slot>,
    problems: Vec<String>,
}

/// Checks the crash states of `log` over `base` against `phases` (the last
/// phase's `end` may be the log's length or more).
pub fn check(
    base: &Path,
    log_path: &Path,
    phases: &[Phase],
    sampling: Sampling,
) -> Result<Report, CheckError> {
    let log = WriteLog::open(log_path)?;
    let layout = Layout::read(base)?;
    let scratch = tempfile::Builder::new()
        .prefix("berth-crash-")
        .tempdir()
        .map_err(io_err(
            "create a temporary folder in",
            &std::env::temp_dir(),
        ))?;
    let mut report = Report {
        entries: log.len(),
        flushes: log.flushes().len(),
        per_phase: phases.iter().map(|p| (p.name.clone(), 0, [0; 3])).collect(),
        ..Report::default()
    };

    // The reference: every slot's kernel and initramfs as at the end of the log.
    let esp = EspFile::create(scratch.path(), base, &layout.esp)?;
    let mut sector = vec![0u8; log.sector_size as usize];
    for entry in &log.entries {
        if Layout::touches(&layout.esp, entry) {
            for i in 0..entry.nr_sectors {
                log.sector_data(entry, i, &mut sector)?;
                esp.write_sector(entry.sector + i, &sector)?;
            }
        }
    }
    let reference = view_esp(&esp, &scratch.path().join("view"))?.files;
    drop(esp);

    // The entries writing each root partition.
    let root_writes: [Vec<usize>; 2] = [0, 1].map(|r| {
        (0..log.len())
            .filter(|&i| Layout::touches(&layout.roots[r], &log.entries[i]))
            .collect()
    });

    let esp = EspFile::create(scratch.path(), base, &layout.esp)?;
    let gpt_keep = layout.gpt.to_vec();
    let mut gpt = Replay::new(base, log.sector_size, gpt_keep)?;
    let view_dir = scratch.path().join("view");
    let mut rng = fastrand::Rng::with_seed(sampling.seed);
    let mut cached: Option<EspView> = None;
    // Switch phases: the slot their last flush state booted, for monotony.
    let mut switch_seen: Vec<Option<Slot>> = vec![None; phases.len()];

    let phase_of = |index: usize| -> usize {
        phases
            .iter()
            .position(|p| index < p.end)
            .unwrap_or(phases.len().saturating_sub(1))
    };

    // Flush boundaries: states at 0 (nothing written), after each flush, and
    // after the last entry.
    let mut cuts: Vec<usize> = vec![0];
    cuts.extend(log.flushes().into_iter().map(|i| i + 1));
    if *cuts.last().expect("one cut") != log.len() {
        cuts.push(log.len());
    }
    let mut applied = 0usize;
    for (k, &cut) in cuts.iter().enumerate() {
        // Move the durable state to `cut`.
        let mut changed = false;
        for entry in &log.entries[applied..cut] {
            if layout.touches_boot(entry) {
                changed = true;
                gpt.apply(&log, entry)?;
                for i in 0..entry.nr_sectors {
                    log.sector_data(entry, i, &mut sector)?;
                    esp.write_sector(entry.sector + i, &sector)?;
                }
            }
        }
        applied = cut;
        if changed || cached.is_none() {
            cached = Some(view_esp(&esp, &view_dir)?);
            report.distinct_esp_states += 1;
        }
        let view = cached.as_ref().expect("viewed");
        let phase = phase_of(cut.saturating_sub(1));
        let verdict = judge(view, &gpt, &layout, &reference, &root_writes, cut, &[]);
        report.flush_states += 1;
        record(
            &mut report,
            phases,
            &[phase],
            &verdict,
            view,
            format!("at entry {cut} (after a flush)"),
        );
        if let Some(Expect::Switch { from, to, .. }) = phases.get(phase).map(|p| p.expect) {
            let name = &phases[phase].name;
            if !report.commit_points.iter().any(|c| &c.0 == name) {
                report.commit_points.push((name.clone(), None, None));
            }
            let point = report
                .commit_points
                .iter_mut()
                .find(|c| &c.0 == name)
                .expect("just added");
            if verdict.boots == Some(from) && point.2.is_none() {
                point.1 = Some(cut);
            }
            if verdict.boots == Some(to) && point.2.is_none() {
                point.2 = Some(cut);
            }
            if switch_seen[phase] == Some(to) && verdict.boots == Some(from) {
                report.failures.push(Failure {
                    phase: phases[phase].name.clone(),
                    state: format!("at entry {cut} (after a flush)"),
                    problems: vec![format!(
                        "back to slot {} after slot {} booted at an earlier flush",
                        from.letter(),
                        to.letter()
                    )],
                });
            }
            if verdict.boots.is_some() {
                switch_seen[phase] = verdict.boots;
            }
        }

        // States between this flush and the next.
        let Some(&next) = cuts.get(k + 1) else { break };
        let window: Vec<usize> = (cut..next)
            .filter(|&i| {
                log.entries[i].writes() && layout.touches_anything_checked(&log.entries[i])
            })
            .collect();
        if window.is_empty() {
            continue;
        }
        let phases_here: Vec<usize> = {
            let mut v: Vec<usize> = (cut..next).map(phase_of).collect();
            v.dedup();
            v
        };
        for (label, kept) in samples(&log, &window, sampling, &mut rng) {
            let mut restore = Vec::new();
            let mut state_gpt = gpt.clone();
            let mut boot_changed = false;
            for &(i, s) in &kept {
                let entry = &log.entries[i];
                if layout.touches_boot(entry) {
                    boot_changed = true;
                    state_gpt.apply_sector(&log, entry, s)?;
                    log.sector_data(entry, s, &mut sector)?;
                    if let Some(old) = esp.write_sector(entry.sector + s, &sector)? {
                        restore.push((entry.sector + s, old));
                    }
                }
            }
            let fresh;
            let view = if boot_changed {
                fresh = view_esp(&esp, &view_dir)?;
                report.distinct_esp_states += 1;
                &fresh
            } else {
                cached.as_ref().expect("viewed")
            };
            let verdict = judge(
                view,
                &state_gpt,
                &layout,
                &reference,
                &root_writes,
                cut,
                &kept_entries(&log, &kept, &window),
            );
            record(
                &mut report,
                phases,
                &phases_here,
                &verdict,
                view,
                format!("after entry {cut}: {label}"),
            );
            for (s, old) in restore.into_iter().rev() {
                esp.write_sector(s, &old)?;
            }
        }
    }
    report.states = report.per_phase.iter().map(|p| p.1).sum();
    Ok(report)
}

/// Writes the disk as it is after the first `upto` entries of the log at
/// `log_path` over `base` to `out` (a sparse copy of `base` first): a crash
/// state to boot for real.
pub fn materialize(
    base: &Path,
    log_path: &Path,
    upto: usize,
    out: &Path,
) -> Result<(), CheckError> {
    let log = WriteLog::open(log_path)?;
    let status = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(base)
        .arg(out)
        .status()
        .map_err(io_err("copy to", out))?;
    if !status.success() {
        return Err(CheckError::Io {
            op: "copy to",
            path: out.to_path_buf(),
            source: io::Error::other(format!("cp exited with {status}")),
        });
    }
    let file = OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io_err("open", out))?;
    let mut sector = vec![0u8; log.sector_size as usize];
    for entry in log.entries.iter().take(upto) {
        for i in 0..entry.sectors().count() as u64 {
            log.sector_data(entry, i, &mut sector)?;
            file.write_all_at(&sector, (entry.sector + i) * u64::from(log.sector_size))
                .map_err(io_err("write", out))?;
        }
    }
    file.sync_all().map_err(io_err("fsync", out))
}

/// The entries of `window` whose every sector is kept.
fn kept_entries(log: &WriteLog, kept: &[(usize, u64)], window: &[usize]) -> Vec<usize> {
    window
        .iter()
        .copied()
        .filter(|&i| {
            let n = log.entries[i].nr_sectors;
            kept.iter().filter(|(j, _)| *j == i).count() as u64 == n
        })
        .collect()
}

/// The sampled subsets of `window` (entry, sector) pairs, each with a label.
fn samples(
    log: &WriteLog,
    window: &[usize],
    sampling: Sampling,
    rng: &mut fastrand::Rng,
) -> Vec<(String, Vec<(usize, u64)>)> {
    let all = |i: usize| (0..log.entries[i].nr_sectors).map(move |s| (i, s));
    let spread = |n: usize| -> Vec<usize> {
        let max = sampling.structured_per_window.max(1);
        if n <= max {
            (0..n).collect()
        } else {
            (0..max).map(|k| k * n / max).collect()
        }
    };
    let mut out = Vec::new();
    if sampling.structured_per_window > 0 {
        // In-order prefixes: the cut came after the first p requests.
        for p in spread(window.len()).into_iter().skip(1) {
            out.push((
                format!("the first {p} of {} writes", window.len()),
                window[..p].iter().copied().flat_map(all).collect(),
            ));
        }
        // One request lost, everything else written.
        for lost in spread(window.len()) {
            out.push((
                format!("write {} of {} lost", lost + 1, window.len()),
                window
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != lost)
                    .flat_map(|(_, &i)| all(i))
                    .collect(),
            ));
        }
    }
    for n in 0..sampling.random_per_window {
        let kept: Vec<(usize, u64)> = window
            .iter()
            .copied()
            .flat_map(all)
            .filter(|_| rng.bool())
            .collect();
        out.push((
            format!("random subset {n} of {} writes' sectors", window.len()),
            kept,
        ));
    }
    out
}

fn judge(
    view: &EspView,
    gpt: &Replay,
    layout: &Layout,
    reference: &[(Option<String>, Option<String>); 2],
    root_writes: &[Vec<usize>; 2],
    durable: usize,
    kept: &[usize],
) -> Verdict {
    let mut problems = view.problems.clone();
    let mut gpt = gpt.clone();
    match read_table(&mut gpt, SECTOR) {
        Ok(table) => {
            let esp = table.partitions.iter().find(|p| p.label == "esp");
            if esp.map(|p| p.first_lba * SECTOR) != Some(layout.esp.start) {
                problems.push("the GPT no longer names the ESP where it is".into());
            }
        }
        Err(e) => problems.push(format!("GPT: {e}")),
    }
    let _ = layout.disk_len;
    if let Some(slot) = view.boots {
        let i = slot_index(slot);
        if view.files[i] != reference[i] {
            problems.push(format!(
                "slot {} boots with a kernel or initramfs that is not the one written in the end",
                slot.letter()
            ));
        }
        // Whole: every write to it is before the flush or kept since.
        let whole = root_writes[i]
            .iter()
            .all(|w| *w < durable || kept.contains(w));
        {
            if !whole {
                problems.push(format!(
                    "slot {} boots before its root partition is fully written",
                    slot.letter()
                ));
            }
        }
    }
    Verdict {
        boots: view.boots,
        problems,
    }
}

fn record(
    report: &mut Report,
    phases: &[Phase],
    allowed_phases: &[usize],
    verdict: &Verdict,
    view: &EspView,
    state: String,
) {
    let mut problems = verdict.problems.clone();
    let mut ok_boot = false;
    for &p in allowed_phases {
        let Some(phase) = phases.get(p) else { continue };
        ok_boot |= match phase.expect {
            Expect::Boots(slot) => verdict.boots == Some(slot),
            Expect::Switch {
                from,
                to,
                fresh_target,
            } => {
                verdict.boots == Some(to)
                    || verdict.boots == Some(from)
                        && (!fresh_target || view.slot_files[slot_index(to)].is_empty())
            }
        };
    }
    let first = allowed_phases.first().copied().unwrap_or(0);
    if !ok_boot {
        report.wrong_boot += 1;
        problems.push(match verdict.boots {
            Some(slot) => format!(
                "boots slot {} (entries: a {:?}, b {:?})",
                slot.letter(),
                view.slot_files[0],
                view.slot_files[1]
            ),
            None => format!(
                "boots nothing (entries: a {:?}, b {:?})",
                view.slot_files[0], view.slot_files[1]
            ),
        });
    }
    for line in &view.benign {
        report.benign_findings.insert(line.clone());
    }
    if let Some(entry) = report.per_phase.get_mut(first) {
        entry.1 += 1;
        let column = match verdict.boots {
            Some(Slot::A) => 0,
            Some(Slot::B) => 1,
            None => 2,
        };
        entry.2[column] += 1;
    }
    if !problems.is_empty() {
        report.failures.push(Failure {
            phase: phases
                .get(first)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            state,
            problems,
        });
    }
}

impl Report {
    /// A table of the figures, in Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from("| phase | crash states | booted a | booted b | booted nothing |\n|---|---|---|---|---|\n");
        for (name, states, boots) in &self.per_phase {
            out.push_str(&format!(
                "| {name} | {states} | {} | {} | {} |\n",
                boots[0], boots[1], boots[2]
            ));
        }
        out.push_str(&format!(
            "\n{} log entries ({} flushes); {} crash states ({} at a flush, {} distinct ESP/GPT states); {} did not boot the right slot; {} failed a check\n",
            self.entries,
            self.flushes,
            self.states,
            self.flush_states,
            self.distinct_esp_states,
            self.wrong_boot,
            self.failures.len()
        ));
        out
    }
}
