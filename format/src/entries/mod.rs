//! The boot-entry state machine over a mounted ESP: which berth entries exist in
//! `loader/entries/`, which one systemd-boot 252 boots next, and the operations the
//! device agent and the init perform on them (install, bless, roll back).
//!
//! # What systemd-boot 252 does (see `../shared/BOOT-FACTS.md`)
//!
//! With no `default` line in `loader.conf` it boots the first entry of this order:
//!
//! 1. entries with a boot counter and no tries left (`NAME+0-N.conf`) last;
//! 2. entries with a `sort-key` before those without;
//! 3. by `sort-key` (byte order), then `machine-id`, then `version` highest first
//!    (systemd's `strverscmp_improved`, [`version_cmp`]);
//! 4. then by entry id (the file name), highest version-wise first;
//! 5. then more tries left first, then fewer tries done first.
//!
//! Entries whose `linux` file is missing are skipped. Before booting an entry with
//! a counter it renames the file: `+3` → `+2-1` → `+1-2` → `+0-3`; `+0-N` is not
//! renamed further ([`simulate_boot`] models this).
//!
//! # Entry names and states
//!
//! Slot X's entry is `berth-x.conf` (blessed: boots with no counting) or
//! `berth-x+LEFT[-DONE].conf` (on trial). An update's commit point creates
//! `berth-x+3.conf`; the init blesses it by renaming it to `berth-x.conf`.
//!
//! # How the next boot is chosen: the entry `version` is a boot-order rank
//!
//! No `default` line may be used (in 252 the entry id includes the counter, so a
//! default either stops matching after the first rename or pins an exhausted
//! entry), and the `LoaderEntryDefault`/`LoaderEntryOneShot` EFI variables hold
//! entry ids too, so they share the trap and need efivarfs on top. The file names
//! are fixed (`berth-a`, `berth-b`; between those `b` always wins the id
//! comparison). What is left to decide the order of two berth entries with the
//! same sort key is the `version` line. So berth writes the `version` line as a
//! **boot-order rank**: a plain integer greater, under [`version_cmp`], than the
//! `version` of every berth entry on the ESP ([`next_rank`]):
//!
//! - [`install_entry`] gives the new entry the next rank, so it sorts first while
//!   it has tries left — also for a forced downgrade, which would not sort first
//!   if the `version` line were the image version;
//! - [`make_next`] / [`rollback`] rewrite the target entry (same file name, same
//!   counter, one write-temp + rename) with the next rank, promoting it above the
//!   current one. Promoting was chosen over demoting the current entry because
//!   ranks then only grow: there is always a higher one, whereas "lower than the
//!   other slot" runs out (and `~`-style tricks would make the order hard to read).
//!
//! The image version therefore lives elsewhere: in the title
//! (`berth hello 1.1.0`) and in a `# berth-image-version 1.1.0` comment line,
//! which [`EntryFile::parse`] reads into [`EntryFile::image_version`]. Entries the
//! builder wrote (version line = image version, no comment) are read as before;
//! the rank computation handles any existing `version` string, because an integer
//! larger than every digit run of a version compares greater than it.
//!
//! # Durability
//!
//! Every operation reads the folder, plans one change, checks the plan (for
//! [`make_next`]: that the target would then really boot first) and commits it
//! with one rename — a plain rename, or a rename of a fully written and fsynced
//! temporary file (`.NAME.tmp`, hidden and not `*.conf`, so systemd-boot ignores
//! it) — followed by `fsync` of the renamed file and of the folder
//! ([`File::sync_all`] on the directory). On the FAT of a real ESP, `rename` is
//! atomic per directory entry as far as the kernel is concerned (no reader ever
//! sees neither name), but vfat has no journal: a power cut in the middle can
//! leave both the old and the new name on disk. Both then hold the same content,
//! so the slot still boots; [`EspState`] reports the extra names as
//! [`SlotEntry::duplicates`], and the next [`bless`], [`install_entry`] or
//! [`remove_slot_entries`] of that slot removes them, as well as stale temporary
//! files.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::layout::{BootEntry, Slot, IMAGE_VERSION_COMMENT, SORT_KEY};

/// Where systemd-boot's Type #1 entries live, relative to the ESP root.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Tries an update gets before systemd-boot falls back to the other slot.
pub const DEFAULT_TRIES: u32 = 3;
/// Suffix of the temporary files written before a rename (`.berth-b+3.conf.tmp`).
const TEMP_SUFFIX: &str = ".tmp";

/// A failure reading or changing the boot entries; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum EntriesError {
    #[error("{}: not a folder (expected the mounted ESP root)", path.display())]
    NotAnEsp { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: slot {slot} has no boot entry", dir.display())]
    NoEntry { dir: PathBuf, slot: Slot },
    #[error("{}: no berth entry boots next", dir.display())]
    NothingBootsNext { dir: PathBuf },
    #[error("{}: slot {slot}'s entry has no tries left", path.display())]
    NoTriesLeft { path: PathBuf, slot: Slot },
    #[error("{}: slot {slot}'s kernel {kernel} is not on the ESP", path.display())]
    KernelMissing {
        path: PathBuf,
        slot: Slot,
        kernel: String,
    },
    #[error("{}: even with the highest rank, slot {slot}'s entry would not boot first ({first} would)", path.display())]
    WouldNotBootFirst {
        path: PathBuf,
        slot: Slot,
        first: String,
    },
    #[error("{}: an entry needs at least one try (with 0 it sorts last at once)", path.display())]
    ZeroTries { path: PathBuf },
    #[error("{}: the entry's {field} must be a single line, got {value:?}", path.display())]
    MultiLine {
        path: PathBuf,
        field: &'static str,
        value: String,
    },
    #[error("{}: no boot-order rank above version {version:?} (number too large)", dir.display())]
    RankOverflow { dir: PathBuf, version: String },
}

type Result<T, E = EntriesError> = std::result::Result<T, E>;

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EntriesError {
    let path = path.to_path_buf();
    move |source| EntriesError::Io { op, path, source }
}

/// A boot counter in an entry's file name: `+LEFT` or `+LEFT-DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries done.
    pub done: u32,
}

impl Counter {
    /// A fresh counter: `tries` left, none done (`+3`).
    pub fn new(tries: u32) -> Counter {
        Counter {
            left: tries,
            done: 0,
        }
    }

    /// No tries left: systemd-boot sorts the entry last.
    pub fn is_exhausted(self) -> bool {
        self.left == 0
    }

    /// The counter systemd-boot 252 renames the entry to before booting it, or
    /// `None` when it has no tries left (it is then not renamed).
    pub fn after_boot(self) -> Option<Counter> {
        (self.left > 0).then(|| Counter {
            left: self.left - 1,
            done: self.done.saturating_add(1),
        })
    }

    /// The counter as it appears in a file name: `+3`, `+2-1`.
    pub fn suffix(self) -> String {
        if self.done == 0 {
            format!("+{}", self.left)
        } else {
            format!("+{}-{}", self.left, self.done)
        }
    }
}

/// Splits an entry file name into its name without counter and its counter:
/// `berth-b+2-1.conf` → `("berth-b", Some(2 left, 1 done))`, `berth-a.conf` →
/// `("berth-a", None)`. `None` when the name is not `*.conf`. Like systemd-boot, a
/// malformed counter (`+x`, `+1-`) is not a counter but part of the name.
pub fn split_counter(file_name: &str) -> Option<(&str, Option<Counter>)> {
    let stem = strip_conf(file_name)?;
    let Some((name, counter)) = stem.rsplit_once('+') else {
        return Some((stem, None));
    };
    let (left, done) = match counter.split_once('-') {
        Some((left, done)) => (left, Some(done)),
        None => (counter, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || done.is_some_and(|d| !digits(d)) {
        return Some((stem, None));
    }
    let parsed = left
        .parse()
        .ok()
        .zip(done.map_or(Some(0), |d| d.parse().ok()));
    match parsed {
        Some((left, done)) => Some((name, Some(Counter { left, done }))),
        None => Some((stem, None)),
    }
}

/// The file name of slot `slot`'s entry with `counter`: `berth-b+3.conf`,
/// `berth-a.conf`.
pub fn entry_file_name(slot: Slot, counter: Option<Counter>) -> String {
    let counter = counter.map(Counter::suffix).unwrap_or_default();
    format!("{}{counter}.conf", slot.entry_id())
}

/// The slot and counter of a berth entry file name; `None` for other files.
pub fn parse_slot_file_name(file_name: &str) -> Option<(Slot, Option<Counter>)> {
    if !is_entry_file_name(file_name) {
        return None;
    }
    let (name, counter) = split_counter(file_name)?;
    let slot = Slot::ALL.into_iter().find(|s| s.entry_id() == name)?;
    Some((slot, counter))
}

/// A parsed boot entry file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFile {
    /// The file name, `berth-a+2-1.conf`.
    pub file_name: String,
    pub title: Option<String>,
    /// The `version` line: what systemd-boot orders by (for berth's own entries, a
    /// boot-order rank; see the module docs).
    pub version: Option<String>,
    /// The `# berth-image-version` comment line, when present.
    pub image_version: Option<String>,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    /// The kernel's path on the ESP, as written (`/berth/a/vmlinuz`).
    pub linux: Option<String>,
    /// Initramfs paths, in order.
    pub initrd: Vec<String>,
    /// All `options` lines joined by spaces.
    pub options: String,
    /// The boot counter in the file name, if any.
    pub counter: Option<Counter>,
}

impl EntryFile {
    /// Parses one entry file's text; unknown keys are ignored, as systemd-boot does.
    pub fn parse(file_name: &str, text: &str) -> EntryFile {
        let mut entry = EntryFile {
            file_name: file_name.to_string(),
            counter: split_counter(file_name).and_then(|(_, counter)| counter),
            ..EntryFile::default()
        };
        let mut options = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some((key, value)) = split_key(comment.trim()) {
                    if key == IMAGE_VERSION_COMMENT && !value.is_empty() {
                        entry.image_version = Some(value.to_string());
                    }
                }
                continue;
            }
            let Some((key, value)) = split_key(line) else {
                continue;
            };
            match key {
                "title" => entry.title = Some(value.to_string()),
                "version" => entry.version = Some(value.to_string()),
                "sort-key" => entry.sort_key = Some(value.to_string()),
                "machine-id" => entry.machine_id = Some(value.to_string()),
                "linux" => entry.linux = Some(value.to_string()),
                "initrd" => entry.initrd.push(value.to_string()),
                "options" => options.push(value.to_string()),
                _ => {}
            }
        }
        entry.options = options.join(" ");
        entry
    }

    /// The entry id systemd-boot 252 compares: the file name without `.conf`,
    /// counter included.
    pub fn id(&self) -> &str {
        strip_conf(&self.file_name).unwrap_or(&self.file_name)
    }

    /// The image version: the `# berth-image-version` comment, or else the
    /// `version` line (entries written by the builder).
    pub fn image_version(&self) -> Option<&str> {
        self.image_version.as_deref().or(self.version.as_deref())
    }

    fn tries_left(&self) -> Option<u32> {
        self.counter.map(|c| c.left)
    }
}

fn split_key(line: &str) -> Option<(&str, &str)> {
    if line.is_empty() {
        return None;
    }
    Some(match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((key, value)) => (key, value.trim()),
        None => (line, ""),
    })
}

/// Whether systemd-boot reads this file name as an entry (`*.conf`, not hidden).
pub fn is_entry_file_name(name: &str) -> bool {
    !name.starts_with('.') && strip_conf(name).is_some_and(|stem| !stem.is_empty())
}

fn strip_conf(name: &str) -> Option<&str> {
    let split = name.len().checked_sub(5)?;
    let (stem, suffix) = (name.get(..split)?, name.get(split..)?);
    suffix.eq_ignore_ascii_case(".conf").then_some(stem)
}

/// systemd-boot's order of two entries (`Less` = boots first).
pub fn compare(a: &EntryFile, b: &EntryFile) -> Ordering {
    let exhausted = |e: &EntryFile| e.tries_left() == Some(0);
    exhausted(a)
        .cmp(&exhausted(b))
        .then_with(|| a.sort_key.is_none().cmp(&b.sort_key.is_none()))
        .then_with(|| match (&a.sort_key, &b.sort_key) {
            (Some(ka), Some(kb)) => ka
                .as_bytes()
                .cmp(kb.as_bytes())
                .then_with(|| a.machine_id.cmp(&b.machine_id))
                .then_with(|| {
                    version_cmp_opt(a.version.as_deref(), b.version.as_deref()).reverse()
                }),
            _ => Ordering::Equal,
        })
        .then_with(|| version_cmp(a.id(), b.id()).reverse())
        .then_with(|| match (a.counter, b.counter) {
            (Some(ca), Some(cb)) => cb.left.cmp(&ca.left).then(ca.done.cmp(&cb.done)),
            _ => Ordering::Equal,
        })
}

/// The entry systemd-boot boots first, skipping those `usable` refuses (for instance
/// because their kernel is missing, which systemd-boot checks too).
pub fn choose(
    entries: &[EntryFile],
    mut usable: impl FnMut(&EntryFile) -> bool,
) -> Option<&EntryFile> {
    let mut sorted: Vec<&EntryFile> = entries.iter().collect();
    sorted.sort_by(|a, b| compare(a, b));
    sorted.into_iter().find(|e| e.linux.is_some() && usable(e))
}

fn version_cmp_opt(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => version_cmp(a, b),
        _ => a.cmp(&b),
    }
}

/// A boot-order rank (a plain integer, as a `version` string) that sorts above
/// every one of `versions` under [`version_cmp`]: one more than the largest digit
/// run found in any of them. `None` if that number does not fit in a `u64`.
pub fn next_rank<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut max = 0u64;
    for version in versions {
        for run in version.split(|c: char| !c.is_ascii_digit()) {
            if run.is_empty() {
                continue;
            }
            max = max.max(run.parse().ok()?);
        }
    }
    Some(max.checked_add(1)?.to_string())
}

/// systemd's `strverscmp_improved`: `~` sorts before anything (pre-releases), `-`
/// separates version and release, `^` marks patches, digits compare as numbers and
/// beat letters, a string with more segments is newer.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let valid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.');
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        for sep in [b'~', b'-', b'^', b'.'] {
            if sep == b'~' {
                if at(a, i) == b'~' || at(b, j) == b'~' {
                    let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
                    if r != Ordering::Equal {
                        return r;
                    }
                    i += 1;
                    j += 1;
                }
                // At the end of either string the longer one is newer; this comes
                // right after the '~' check, before the other separators.
                if i >= a.len() || j >= b.len() {
                    return a[i.min(a.len())..].cmp(&b[j.min(b.len())..]);
                }
                continue;
            }
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let (ai, bj) = (i, j);
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let mut ae = i;
            while ae < a.len() && a[ae].is_ascii_digit() {
                ae += 1;
            }
            let mut be = j;
            while be < b.len() && b[be].is_ascii_digit() {
                be += 1;
            }
            let r = (ae != ai).cmp(&(be != bj));
            if r != Ordering::Equal {
                return r;
            }
            while i < ae && a[i] == b'0' {
                i += 1;
            }
            while j < be && b[j] == b'0' {
                j += 1;
            }
            let r = (ae - i)
                .cmp(&(be - j))
                .then_with(|| a[i..ae].cmp(&b[j..be]));
            if r != Ordering::Equal {
                return r;
            }
            i = ae;
            j = be;
        } else {
            let mut ae = i;
            while ae < a.len() && a[ae].is_ascii_alphabetic() {
                ae += 1;
            }
            let mut be = j;
            while be < b.len() && b[be].is_ascii_alphabetic() {
                be += 1;
            }
            let common = (ae - i).min(be - j);
            let r = a[i..i + common]
                .cmp(&b[j..j + common])
                .then_with(|| (ae - i).cmp(&(be - j)));
            if r != Ordering::Equal {
                return r;
            }
            i = ae;
            j = be;
        }
    }
}

/// Slot X's entry as found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    pub slot: Slot,
    /// The entry (the first of the slot's files in systemd-boot's order).
    pub entry: EntryFile,
    /// Whether the entry's `linux` file exists on the ESP (systemd-boot skips
    /// entries whose kernel is missing).
    pub kernel_present: bool,
    /// Further entry files of the same slot, later in systemd-boot's order: left by
    /// a power cut in the middle of a rename on FAT. The next bless, install or
    /// removal of the slot deletes them.
    pub duplicates: Vec<String>,
}

impl SlotEntry {
    /// The entry's file name, `berth-b+2-1.conf`.
    pub fn file_name(&self) -> &str {
        &self.entry.file_name
    }

    /// The boot counter; `None` means blessed (good: boots with no counting).
    pub fn counter(&self) -> Option<Counter> {
        self.entry.counter
    }

    /// Blessed: no counter in the name.
    pub fn is_good(&self) -> bool {
        self.entry.counter.is_none()
    }

    /// The image version of the slot.
    pub fn image_version(&self) -> Option<&str> {
        self.entry.image_version()
    }

    /// Whether this entry can be made to boot next: its kernel is on the ESP and it
    /// is not a counting entry with no tries left.
    pub fn can_boot(&self) -> bool {
        self.kernel_present
            && self.entry.linux.is_some()
            && !self.entry.counter.is_some_and(Counter::is_exhausted)
    }
}

/// The boot entries on an ESP, as systemd-boot 252 would see them.
#[derive(Debug, Clone)]
pub struct EspState {
    /// The `loader/entries` folder.
    dir: PathBuf,
    /// Every entry file (berth's or not), in systemd-boot's order.
    entries: Vec<EntryFile>,
    /// Index in `entries` of the one systemd-boot boots next.
    next: Option<usize>,
    slots: [Option<SlotEntry>; 2],
    /// Leftover temporary files of an interrupted write.
    temp_files: Vec<String>,
}

impl EspState {
    /// Reads `loader/entries/` of the ESP mounted at `esp`. A missing folder reads
    /// as no entries; a missing `esp` is an error.
    pub fn read(esp: &Path) -> Result<EspState> {
        if !esp.is_dir() {
            return Err(EntriesError::NotAnEsp {
                path: esp.to_path_buf(),
            });
        }
        let dir = esp.join(ENTRIES_DIR);
        let mut entries = Vec::new();
        let mut temp_files = Vec::new();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => Some(listing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read folder", &dir)(e)),
        };
        for item in listing.into_iter().flatten() {
            let item = item.map_err(io_error("read folder", &dir))?;
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            if is_berth_temp_name(&name) {
                temp_files.push(name);
                continue;
            }
            let path = item.path();
            if !is_entry_file_name(&name) || !path.is_file() {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            entries.push(EntryFile::parse(&name, &String::from_utf8_lossy(&bytes)));
        }
        entries.sort_by(compare);
        temp_files.sort();
        let kernel_present = |e: &EntryFile| {
            e.linux
                .as_deref()
                .is_some_and(|linux| esp.join(esp_relative(linux)).is_file())
        };
        let next = entries
            .iter()
            .position(|e| e.linux.is_some() && kernel_present(e));
        let slots = Slot::ALL.map(|slot| {
            let mut files = entries
                .iter()
                .filter(|e| parse_slot_file_name(&e.file_name).is_some_and(|(s, _)| s == slot));
            let entry = files.next()?;
            Some(SlotEntry {
                slot,
                entry: entry.clone(),
                kernel_present: kernel_present(entry),
                duplicates: files.map(|e| e.file_name.clone()).collect(),
            })
        });
        Ok(EspState {
            dir,
            entries,
            next,
            slots,
            temp_files,
        })
    }

    /// The `loader/entries` folder this state was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Slot `slot`'s entry, if it has one.
    pub fn slot(&self, slot: Slot) -> Option<&SlotEntry> {
        self.slots[slot_index(slot)].as_ref()
    }

    /// The slot systemd-boot boots next; `None` when nothing bootable is there or
    /// the first entry is not berth's.
    pub fn next_boot(&self) -> Option<Slot> {
        self.next_entry()
            .and_then(|e| parse_slot_file_name(&e.file_name))
            .map(|(slot, _)| slot)
    }

    /// The entry systemd-boot boots next, berth's or not.
    pub fn next_entry(&self) -> Option<&EntryFile> {
        self.next.map(|i| &self.entries[i])
    }

    /// Every entry file, in systemd-boot's order.
    pub fn entries(&self) -> &[EntryFile] {
        &self.entries
    }

    /// Leftover temporary files (`.berth-….tmp`) of an interrupted write.
    pub fn temp_files(&self) -> &[String] {
        &self.temp_files
    }

    /// The `version` lines of the entries that share berth's ordering group (berth
    /// entries, and any other entry with berth's sort key).
    fn berth_versions(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| {
                e.sort_key.as_deref() == Some(SORT_KEY)
                    || parse_slot_file_name(&e.file_name).is_some()
            })
            .filter_map(|e| e.version.as_deref())
    }

    fn rank(&self) -> Result<String> {
        next_rank(self.berth_versions()).ok_or_else(|| EntriesError::RankOverflow {
            dir: self.dir.clone(),
            version: self
                .berth_versions()
                .max_by_key(|v| v.len())
                .unwrap_or_default()
                .to_string(),
        })
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// An ESP path from an entry (`/berth/a/vmlinuz`, maybe with `\`) relative to the
/// ESP root.
fn esp_relative(path: &str) -> PathBuf {
    PathBuf::from(path.replace('\\', "/").trim_start_matches('/'))
}

fn temp_name(final_name: &str) -> String {
    format!(".{final_name}{TEMP_SUFFIX}")
}

fn is_berth_temp_name(name: &str) -> bool {
    name.starts_with(".berth-") && name.ends_with(TEMP_SUFFIX)
}

/// The single change an operation commits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Commit {
    /// Rename `from` to `to` in the entries folder.
    Rename { from: String, to: String },
    /// Write `content` to a temporary file, fsync it, rename it to `name`.
    Write { name: String, content: String },
}

impl Commit {
    /// Applies the change durably; returns the path of the resulting file.
    fn apply(&self, dir: &Path) -> Result<PathBuf> {
        self.apply_observed(dir, &mut || {})
    }

    /// [`Commit::apply`], calling `before_rename` once the new content is durable in
    /// its temporary file and just before the rename that commits it.
    fn apply_observed(&self, dir: &Path, before_rename: &mut dyn FnMut()) -> Result<PathBuf> {
        match self {
            Commit::Rename { from, to } => {
                let (from, to) = (dir.join(from), dir.join(to));
                fs::rename(&from, &to).map_err(|source| EntriesError::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    source,
                })?;
                sync_file(&to)?;
                sync_dir(dir)?;
                Ok(to)
            }
            Commit::Write { name, content } => {
                let temp = dir.join(temp_name(name));
                let target = dir.join(name);
                let result = write_temp(&temp, content).and_then(|()| {
                    sync_dir(dir)?;
                    before_rename();
                    fs::rename(&temp, &target).map_err(|source| EntriesError::Rename {
                        from: temp.clone(),
                        to: target.clone(),
                        source,
                    })
                });
                if let Err(e) = result {
                    // Best effort: the error that matters is the one above.
                    let _ = fs::remove_file(&temp);
                    return Err(e);
                }
                sync_file(&target)?;
                sync_dir(dir)?;
                Ok(target)
            }
        }
    }
}

fn write_temp(temp: &Path, content: &str) -> Result<()> {
    match fs::remove_file(temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove stale", temp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(io_error("create", temp))?;
    file.write_all(content.as_bytes())
        .map_err(io_error("write", temp))?;
    file.sync_all().map_err(io_error("fsync", temp))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error("fsync", path))
}

/// fsync of a folder: makes its entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_error("fsync folder", dir))
}

/// Removes `names` from `dir`, then fsyncs the folder once.
fn remove_files(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in names {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// The names of every entry file of `slot` in `dir` (any counter, any state),
/// plus berth's leftover temporary files when `with_temp_files`.
fn slot_file_names(dir: &Path, slot: Slot, with_temp_files: bool) -> Result<Vec<String>> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read folder", dir)(e)),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(io_error("read folder", dir))?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let ours = parse_slot_file_name(&name).is_some_and(|(s, _)| s == slot)
            || (with_temp_files && is_berth_temp_name(&name));
        if ours {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Makes `slot` unbootable: removes every entry file of the slot (and berth's
/// leftover temporary files), then fsyncs the folder. The first step of an
/// install, before anything is written to the slot. Returns the removed paths.
pub fn remove_slot_entries(esp: &Path, slot: Slot) -> Result<Vec<PathBuf>> {
    let state = EspState::read(esp)?;
    let names = slot_file_names(state.dir(), slot, true)?;
    remove_files(state.dir(), &names)
}

fn check_one_line(path: &Path, field: &'static str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r']) {
        return Err(EntriesError::MultiLine {
            path: path.to_path_buf(),
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// The commit point of an update: writes `loader/entries/berth-<slot>+<tries>.conf`
/// (temp file in the same folder, fsync, rename, fsync file and folder) with the
/// next boot-order rank, so it boots first while it has tries left. Any previous
/// entry files of the slot are removed first (normally [`remove_slot_entries`]
/// already did that, before the slot was overwritten). Returns the entry's path.
pub fn install_entry(esp: &Path, entry: &BootEntry, tries: u32) -> Result<PathBuf> {
    install_entry_observed(esp, entry, tries, &mut || {})
}

/// [`install_entry`], calling `before_rename` when the entry is durable in its
/// temporary file, just before the commit rename (the device agent's last
/// checkpoint before the commit point).
pub fn install_entry_observed(
    esp: &Path,
    entry: &BootEntry,
    tries: u32,
    before_rename: &mut dyn FnMut(),
) -> Result<PathBuf> {
    let dir = esp.join(ENTRIES_DIR);
    let name = entry_file_name(entry.slot, Some(Counter::new(tries)));
    let path = dir.join(&name);
    if tries == 0 {
        return Err(EntriesError::ZeroTries { path });
    }
    check_one_line(&path, "title", &entry.title)?;
    check_one_line(&path, "version", &entry.version)?;
    check_one_line(&path, "root PARTUUID", &entry.root_partuuid)?;
    check_one_line(&path, "data PARTUUID", &entry.data_partuuid)?;
    check_one_line(&path, "kernel command line", &entry.extra_cmdline)?;
    if !esp.is_dir() {
        return Err(EntriesError::NotAnEsp {
            path: esp.to_path_buf(),
        });
    }
    fs::create_dir_all(&dir).map_err(io_error("create folder", &dir))?;
    // Plan: the rank is computed with the slot's old entry still counted, so ranks
    // never repeat.
    let state = EspState::read(esp)?;
    let commit = Commit::Write {
        name,
        content: entry.render_ranked(&state.rank()?),
    };
    remove_slot_entries(esp, entry.slot)?;
    commit.apply_observed(&dir, before_rename)
}

/// Blesses `slot`: renames `berth-<slot>+L[-D].conf` to `berth-<slot>.conf` (then
/// fsyncs file and folder), so it boots with no counting from now on. Already
/// blessed: nothing to do. Duplicate files of the slot are removed afterwards.
/// Returns the blessed entry's path.
pub fn bless(esp: &Path, slot: Slot) -> Result<PathBuf> {
    let state = EspState::read(esp)?;
    let dir = state.dir();
    let current = state.slot(slot).ok_or_else(|| EntriesError::NoEntry {
        dir: dir.to_path_buf(),
        slot,
    })?;
    let blessed = entry_file_name(slot, None);
    let path = match current.counter() {
        None => dir.join(current.file_name()),
        Some(_) => Commit::Rename {
            from: current.file_name().to_string(),
            to: blessed.clone(),
        }
        .apply(dir)?,
    };
    let strays: Vec<String> = current
        .duplicates
        .iter()
        .filter(|name| **name != blessed)
        .cloned()
        .collect();
    remove_files(dir, &strays)?;
    Ok(path)
}

/// Makes `slot` the one systemd-boot boots next, by rewriting its entry (same
/// name, same counter) with the next boot-order rank. Nothing to do when it
/// already boots next. Refused when the slot has no entry, its kernel is missing,
/// or its counter has no tries left.
pub fn make_next(esp: &Path, slot: Slot) -> Result<()> {
    let state = EspState::read(esp)?;
    let dir = state.dir();
    let target = state.slot(slot).ok_or_else(|| EntriesError::NoEntry {
        dir: dir.to_path_buf(),
        slot,
    })?;
    let path = dir.join(target.file_name());
    if target.counter().is_some_and(Counter::is_exhausted) {
        return Err(EntriesError::NoTriesLeft { path, slot });
    }
    if !target.can_boot() {
        return Err(EntriesError::KernelMissing {
            path,
            slot,
            kernel: target.entry.linux.clone().unwrap_or_default(),
        });
    }
    if state.next_boot() == Some(slot) {
        return Ok(());
    }
    // Plan: the entry's text with a new `version` line, the image version kept.
    let text = fs::read(&path).map_err(io_error("read", &path))?;
    let content = with_rank(
        &String::from_utf8_lossy(&text),
        &state.rank()?,
        target.image_version(),
    );
    let promoted = EntryFile::parse(target.file_name(), &content);
    let mut planned: Vec<EntryFile> = state
        .entries()
        .iter()
        .filter(|e| e.file_name != promoted.file_name)
        .cloned()
        .collect();
    planned.push(promoted);
    let first = choose(&planned, |e| {
        e.linux
            .as_deref()
            .is_some_and(|linux| esp.join(esp_relative(linux)).is_file())
    });
    if let Some(first) = first.filter(|e| e.file_name != target.file_name()) {
        return Err(EntriesError::WouldNotBootFirst {
            path,
            slot,
            first: first.file_name.clone(),
        });
    }
    Commit::Write {
        name: target.file_name().to_string(),
        content,
    }
    .apply(dir)?;
    Ok(())
}

/// Entry text with its `version` line(s) replaced by `rank`, and a
/// `# berth-image-version` line carrying `image_version` when it had none.
fn with_rank(text: &str, rank: &str, image_version: Option<&str>) -> String {
    let has_comment = EntryFile::parse("x.conf", text).image_version.is_some();
    let mut out = String::new();
    let mut replaced = false;
    for line in text.lines() {
        let is_version = split_key(line.trim()).is_some_and(|(key, _)| key == "version");
        if !is_version {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if !has_comment {
            if let Some(version) = image_version {
                out.push_str(&format!("# {IMAGE_VERSION_COMMENT} {version}\n"));
            }
        }
        if !replaced {
            out.push_str(&format!("version {rank}\n"));
            replaced = true;
        }
    }
    if !replaced {
        out.push_str(&format!("version {rank}\n"));
    }
    out
}

/// Makes the other slot boot next: the other one than the slot systemd-boot would
/// boot now. Returns that slot. Refused as [`make_next`] refuses, and when no berth
/// entry boots next at all.
pub fn rollback(esp: &Path) -> Result<Slot> {
    let state = EspState::read(esp)?;
    let current = state
        .next_boot()
        .ok_or_else(|| EntriesError::NothingBootsNext {
            dir: state.dir().to_path_buf(),
        })?;
    let target = current.other();
    make_next(esp, target)?;
    Ok(target)
}

/// A model of the firmware side — systemd-boot 252 starting a boot, which cannot
/// run here: picks the entry it would boot and, when that entry has a counter with
/// tries left, renames it the way it does (`+3` → `+2-1` → `+1-2` → `+0-3`; `+0-N`
/// stays). Returns the slot booted, `None` when nothing bootable is there or the
/// entry is not berth's. For tests of the state machine; the device never calls it.
pub fn simulate_boot(esp: &Path) -> Result<Option<Slot>> {
    let state = EspState::read(esp)?;
    let Some(entry) = state.next_entry() else {
        return Ok(None);
    };
    if let Some(after) = entry.counter.and_then(Counter::after_boot) {
        let (name, _) = split_counter(&entry.file_name).unwrap_or((entry.id(), None));
        let suffix = &entry.file_name[entry.file_name.len() - ".conf".len()..];
        Commit::Rename {
            from: entry.file_name.clone(),
            to: format!("{name}{}{suffix}", after.suffix()),
        }
        .apply(state.dir())?;
    }
    Ok(state.next_boot())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file_name: &str, version: &str) -> EntryFile {
        EntryFile::parse(
            file_name,
            &format!(
                "title berth\nversion {version}\nsort-key berth\nlinux /berth/x/vmlinuz\noptions a=1\n"
            ),
        )
    }

    fn first(entries: &[EntryFile]) -> &str {
        &choose(entries, |_| true).expect("an entry").file_name
    }

    #[test]
    fn parses_keys_and_counters() {
        let e = EntryFile::parse(
            "berth-b+2-1.conf",
            "# comment\ntitle berth hello 1.1.0\nversion 1.1.0\nsort-key berth\nlinux /berth/b/vmlinuz\ninitrd /berth/b/initramfs.img\noptions root=PARTUUID=x ro\noptions  console=ttyS0\nunknown-key 1\n",
        );
        assert_eq!(e.title.as_deref(), Some("berth hello 1.1.0"));
        assert_eq!(e.version.as_deref(), Some("1.1.0"));
        assert_eq!(e.linux.as_deref(), Some("/berth/b/vmlinuz"));
        assert_eq!(e.initrd, vec!["/berth/b/initramfs.img"]);
        assert_eq!(e.options, "root=PARTUUID=x ro console=ttyS0");
        assert_eq!(e.counter, Some(Counter { left: 2, done: 1 }));
        assert_eq!(e.id(), "berth-b+2-1");
        assert_eq!(e.image_version, None);
        assert_eq!(e.image_version(), Some("1.1.0"));
        let ranked = EntryFile::parse(
            "berth-b.conf",
            "title berth hello 1.1.0\n#  berth-image-version  1.1.0\nversion 7\n",
        );
        assert_eq!(ranked.version.as_deref(), Some("7"));
        assert_eq!(ranked.image_version(), Some("1.1.0"));
    }

    #[test]
    fn counter_names_parse_and_render() {
        let c = |left, done| Some(Counter { left, done });
        assert_eq!(split_counter("berth-b+3.conf"), Some(("berth-b", c(3, 0))));
        assert_eq!(
            split_counter("berth-b+2-1.conf"),
            Some(("berth-b", c(2, 1)))
        );
        assert_eq!(
            split_counter("berth-a+0-3.CONF"),
            Some(("berth-a", c(0, 3)))
        );
        assert_eq!(split_counter("berth-a.conf"), Some(("berth-a", None)));
        assert_eq!(split_counter("berth-a+x.conf"), Some(("berth-a+x", None)));
        assert_eq!(split_counter("berth-a+1-.conf"), Some(("berth-a+1-", None)));
        assert_eq!(
            split_counter("berth-a+99999999999.conf"),
            Some(("berth-a+99999999999", None))
        );
        assert_eq!(split_counter("berth-a.conf.tmp"), None);
        assert_eq!(
            entry_file_name(Slot::B, Some(Counter::new(3))),
            "berth-b+3.conf"
        );
        assert_eq!(entry_file_name(Slot::A, c(1, 2)), "berth-a+1-2.conf");
        assert_eq!(entry_file_name(Slot::A, None), "berth-a.conf");
        assert_eq!(
            parse_slot_file_name("berth-b+2-1.conf"),
            Some((Slot::B, c(2, 1)))
        );
        assert_eq!(parse_slot_file_name("berth-a.conf"), Some((Slot::A, None)));
        assert_eq!(parse_slot_file_name("berth-c.conf"), None);
        assert_eq!(parse_slot_file_name(".berth-a+3.conf.tmp"), None);
        assert_eq!(parse_slot_file_name("debian.conf"), None);
        // What systemd-boot 252 renames to before each boot.
        let mut counter = Counter::new(3);
        let mut names = vec![entry_file_name(Slot::B, Some(counter))];
        while let Some(next) = counter.after_boot() {
            counter = next;
            names.push(entry_file_name(Slot::B, Some(counter)));
        }
        assert_eq!(
            names,
            [
                "berth-b+3.conf",
                "berth-b+2-1.conf",
                "berth-b+1-2.conf",
                "berth-b+0-3.conf"
            ]
        );
        assert!(counter.is_exhausted());
    }

    #[test]
    fn ranks_sort_above_any_version() {
        assert_eq!(next_rank([]).as_deref(), Some("1"));
        assert_eq!(next_rank(["1.0.0"]).as_deref(), Some("2"));
        assert_eq!(next_rank(["1.10.0", "3"]).as_deref(), Some("11"));
        assert_eq!(next_rank(["99999999999999999999"]), None);
        for versions in [
            vec!["1.0.0", "2"],
            vec!["v9.0", "x_12"],
            vec!["~1", "_5", "^3", "-2", ".7", "2026.11.24-rc1"],
            vec!["abc", ""],
        ] {
            let rank = next_rank(versions.iter().copied()).expect("rank");
            for version in versions {
                assert_eq!(
                    version_cmp(&rank, version),
                    Ordering::Greater,
                    "{rank} vs {version}"
                );
            }
        }
    }

    #[test]
    fn entry_file_names() {
        assert!(is_entry_file_name("berth-a.conf"));
        assert!(is_entry_file_name("BERTH-A.CONF"));
        assert!(!is_entry_file_name(".berth-a.conf"));
        assert!(!is_entry_file_name(".conf"));
        assert!(!is_entry_file_name("berth-a.conf.tmp"));
        assert!(!is_entry_file_name("loader.cfg"));
    }

    #[test]
    fn single_slot_boots() {
        assert_eq!(first(&[entry("berth-a.conf", "1.0.0")]), "berth-a.conf");
    }

    #[test]
    fn highest_version_boots_first() {
        let entries = [
            entry("berth-a.conf", "1.0.0"),
            entry("berth-b+3.conf", "1.1.0"),
        ];
        assert_eq!(first(&entries), "berth-b+3.conf");
        let entries = [
            entry("berth-b.conf", "1.9.0"),
            entry("berth-a.conf", "1.10.0"),
        ];
        assert_eq!(first(&entries), "berth-a.conf");
    }

    #[test]
    fn counting_entry_with_tries_left_still_boots_first() {
        let entries = [
            entry("berth-a.conf", "1.0.0"),
            entry("berth-b+1-2.conf", "1.1.0"),
        ];
        assert_eq!(first(&entries), "berth-b+1-2.conf");
    }

    #[test]
    fn exhausted_entry_sorts_last() {
        let entries = [
            entry("berth-b+0-3.conf", "1.1.0"),
            entry("berth-a.conf", "1.0.0"),
        ];
        assert_eq!(first(&entries), "berth-a.conf");
        // Even when it is the only one, it still boots (nothing else to boot).
        assert_eq!(
            first(&[entry("berth-b+0-3.conf", "1.1.0")]),
            "berth-b+0-3.conf"
        );
    }

    #[test]
    fn sort_key_groups_come_first_in_key_order() {
        let no_key = EntryFile::parse("zzz.conf", "version 9.0\nlinux /k\n");
        let entries = [no_key, entry("berth-a.conf", "1.0.0")];
        assert_eq!(first(&entries), "berth-a.conf");
        let mut other = entry("other.conf", "5.0");
        other.sort_key = Some("aaa".into());
        let entries = [entry("berth-a.conf", "1.0.0"), other];
        assert_eq!(first(&entries), "other.conf");
    }

    #[test]
    fn blessed_and_counting_entries_sort_by_version_then_exhaustion() {
        // A counting entry with tries left and a higher version boots before a
        // blessed one; once exhausted it sorts after everything.
        let good = entry("berth-a.conf", "2");
        for name in ["berth-b+3.conf", "berth-b+2-1.conf", "berth-b+1-2.conf"] {
            assert_eq!(first(&[good.clone(), entry(name, "3")]), name);
        }
        assert_eq!(
            first(&[entry("berth-b+0-3.conf", "3"), good.clone()]),
            "berth-a.conf"
        );
        // A blessed entry with the higher version boots before a counting one.
        assert_eq!(
            first(&[entry("berth-b+3.conf", "2"), entry("berth-a.conf", "3")]),
            "berth-a.conf"
        );
    }

    #[test]
    fn without_version_difference_the_id_decides() {
        let entries = [
            entry("berth-a.conf", "1.0.0"),
            entry("berth-b.conf", "1.0.0"),
        ];
        assert_eq!(first(&entries), "berth-b.conf");
        let entries = [
            entry("berth-b+1-2.conf", "1.0.0"),
            entry("berth-b+2-1.conf", "1.0.0"),
        ];
        assert_eq!(first(&entries), "berth-b+2-1.conf");
    }

    #[test]
    fn unusable_entries_are_skipped() {
        let entries = [
            entry("berth-a.conf", "1.0.0"),
            entry("berth-b+3.conf", "1.1.0"),
        ];
        let chosen = choose(&entries, |e| e.file_name != "berth-b+3.conf").expect("entry");
        assert_eq!(chosen.file_name, "berth-a.conf");
        let no_linux = EntryFile::parse("x.conf", "version 1\nsort-key berth\n");
        assert!(choose(&[no_linux], |_| true).is_none());
    }

    #[test]
    fn version_comparison_matches_systemd() {
        use Ordering::*;
        let cases = [
            ("1.0.0", "1.0.0", Equal),
            ("1.1.0", "1.0.9", Greater),
            ("1.10", "1.9", Greater),
            ("1.0", "1.0.1", Less),
            ("123", "0123", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("123-9", "123.1-1", Less),
            ("1.0^patch", "1.0", Greater),
            ("123a", "123", Greater),
            ("123a", "123.a", Greater),
            ("abc", "abcde", Less),
            ("1a", "1", Greater),
            ("a", "1", Less),
            ("", "1", Less),
            ("berth-b", "berth-a", Greater),
            ("berth-b+2-1", "berth-b+1-2", Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(version_cmp(a, b), expected, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    // ---- the state machine against a scratch ESP folder ----

    struct Esp(tempfile::TempDir);

    impl Esp {
        /// An ESP with both slots' kernels and initramfs on it and no entries.
        fn new() -> Esp {
            let dir = tempfile::tempdir().expect("tempdir");
            for slot in Slot::ALL {
                for path in [slot.kernel_path(), slot.initramfs_path()] {
                    let path = dir.path().join(path);
                    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    fs::write(&path, b"boot file").expect("write");
                }
            }
            fs::create_dir_all(dir.path().join(ENTRIES_DIR)).expect("mkdir entries");
            fs::write(
                dir.path().join("loader/loader.conf"),
                crate::layout::LOADER_CONF,
            )
            .expect("loader.conf");
            Esp(dir)
        }

        /// Slot A as the builder leaves it: blessed, `version` = image version.
        fn built(version: &str) -> Esp {
            let esp = Esp::new();
            esp.write("berth-a.conf", &boot_entry(Slot::A, version).render());
            esp
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.path().join(ENTRIES_DIR).join(name), text).expect("write entry");
        }

        /// The file names in `loader/entries`, sorted; asserts no temporary file
        /// was left behind.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.path().join(ENTRIES_DIR))
                .expect("read entries")
                .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                .collect();
            names.sort();
            assert!(
                names
                    .iter()
                    .all(|n| !n.starts_with('.') && !n.ends_with(".tmp")),
                "temporary file left behind: {names:?}"
            );
            names
        }

        fn state(&self) -> EspState {
            EspState::read(self.path()).expect("read state")
        }

        fn next(&self) -> Option<Slot> {
            self.state().next_boot()
        }

        fn boot(&self) -> Option<Slot> {
            simulate_boot(self.path()).expect("boot")
        }
    }

    fn boot_entry(slot: Slot, version: &str) -> BootEntry {
        BootEntry {
            title: format!("berth hello {version}"),
            version: version.into(),
            slot,
            root_partuuid: format!("0000000{}-0000-0000-0000-000000000000", slot.letter()),
            data_partuuid: "dddddddd-0000-0000-0000-000000000000".into(),
            verity: None,
            extra_cmdline: String::new(),
        }
    }

    #[test]
    fn update_bless_and_automatic_rollback() {
        let esp = Esp::built("1.0.0");
        let state = esp.state();
        assert_eq!(state.next_boot(), Some(Slot::A));
        let a = state.slot(Slot::A).expect("slot a");
        assert!(a.is_good() && a.kernel_present && a.duplicates.is_empty());
        assert_eq!(a.image_version(), Some("1.0.0"));
        assert!(state.slot(Slot::B).is_none());
        assert_eq!(esp.boot(), Some(Slot::A));
        assert_eq!(esp.names(), ["berth-a.conf"]);

        // Update to 1.1.0 in B: the slot is made unbootable, then the commit.
        remove_slot_entries(esp.path(), Slot::B).expect("remove b");
        let path = install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), DEFAULT_TRIES)
            .expect("install b");
        assert_eq!(path, esp.path().join("loader/entries/berth-b+3.conf"));
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+3.conf"]);
        let state = esp.state();
        assert_eq!(state.next_boot(), Some(Slot::B));
        let b = state.slot(Slot::B).expect("slot b");
        assert_eq!(b.counter(), Some(Counter::new(3)));
        assert_eq!(b.image_version(), Some("1.1.0"));
        assert_eq!(b.entry.version.as_deref(), Some("2"));
        assert_eq!(b.entry.title.as_deref(), Some("berth hello 1.1.0"));
        assert_eq!(b.entry.linux.as_deref(), Some("/berth/b/vmlinuz"));

        // It boots (one try spent), and the init blesses it.
        assert_eq!(esp.boot(), Some(Slot::B));
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+2-1.conf"]);
        let blessed = bless(esp.path(), Slot::B).expect("bless b");
        assert_eq!(blessed, esp.path().join("loader/entries/berth-b.conf"));
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
        assert_eq!(esp.next(), Some(Slot::B));
        assert!(esp.state().slot(Slot::B).expect("b").is_good());
        assert_eq!(esp.boot(), Some(Slot::B));
        assert_eq!(
            esp.names(),
            ["berth-a.conf", "berth-b.conf"],
            "blessed: no renames"
        );
        // Blessing again is a no-op.
        assert_eq!(bless(esp.path(), Slot::B).expect("bless again"), blessed);

        // A bad 1.2.0 into A: three boots without blessing, then back to B.
        remove_slot_entries(esp.path(), Slot::A).expect("remove a");
        assert_eq!(esp.names(), ["berth-b.conf"]);
        assert_eq!(esp.next(), Some(Slot::B), "the running slot still boots");
        install_entry(esp.path(), &boot_entry(Slot::A, "1.2.0"), 3).expect("install a");
        assert_eq!(esp.next(), Some(Slot::A));
        for name in ["berth-a+2-1.conf", "berth-a+1-2.conf", "berth-a+0-3.conf"] {
            assert_eq!(esp.boot(), Some(Slot::A));
            assert_eq!(esp.names(), [name, "berth-b.conf"]);
        }
        assert_eq!(esp.boot(), Some(Slot::B), "the fourth boot falls back");
        assert_eq!(esp.boot(), Some(Slot::B));
        assert_eq!(esp.names(), ["berth-a+0-3.conf", "berth-b.conf"]);
        let state = esp.state();
        assert_eq!(
            state.entries()[1].file_name,
            "berth-a+0-3.conf",
            "sorts last"
        );
        let a = state.slot(Slot::A).expect("a");
        assert!(!a.can_boot() && !a.is_good());
        assert_eq!(a.image_version(), Some("1.2.0"));

        // Rolling back onto the exhausted slot is refused, nothing changes.
        let err = rollback(esp.path()).expect_err("a has no tries left");
        assert!(
            matches!(err, EntriesError::NoTriesLeft { slot: Slot::A, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("berth-a+0-3.conf"), "{err}");
        assert_eq!(esp.names(), ["berth-a+0-3.conf", "berth-b.conf"]);
        assert_eq!(esp.next(), Some(Slot::B));
    }

    #[test]
    fn manual_rollback_to_a_good_slot_and_back() {
        let esp = Esp::built("1.0.0");
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        esp.boot();
        bless(esp.path(), Slot::B).expect("bless");
        let a_before =
            fs::read_to_string(esp.path().join("loader/entries/berth-a.conf")).expect("read a");

        assert_eq!(rollback(esp.path()).expect("rollback"), Slot::A);
        assert_eq!(
            esp.names(),
            ["berth-a.conf", "berth-b.conf"],
            "names unchanged"
        );
        let state = esp.state();
        assert_eq!(state.next_boot(), Some(Slot::A));
        let a = state.slot(Slot::A).expect("a");
        assert!(a.is_good());
        assert_eq!(a.image_version(), Some("1.0.0"), "image version kept");
        assert_eq!(
            a.entry.version.as_deref(),
            Some("3"),
            "promoted above B's 2"
        );
        let a_after =
            fs::read_to_string(esp.path().join("loader/entries/berth-a.conf")).expect("read a");
        assert_eq!(
            a_after,
            a_before.replace(
                "version 1.0.0\n",
                "# berth-image-version 1.0.0\nversion 3\n"
            )
        );
        assert_eq!(esp.boot(), Some(Slot::A));
        assert_eq!(esp.boot(), Some(Slot::A));

        // make_next on the slot that already boots next changes nothing.
        make_next(esp.path(), Slot::A).expect("already next");
        assert_eq!(
            fs::read_to_string(esp.path().join("loader/entries/berth-a.conf")).expect("a"),
            a_after
        );
        // And back to B.
        assert_eq!(rollback(esp.path()).expect("rollback again"), Slot::B);
        let state = esp.state();
        assert_eq!(state.next_boot(), Some(Slot::B));
        let b = state.slot(Slot::B).expect("b");
        assert_eq!(b.entry.version.as_deref(), Some("4"));
        assert_eq!(b.image_version(), Some("1.1.0"));
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
    }

    #[test]
    fn cancelling_a_pending_update_keeps_its_counter() {
        let esp = Esp::built("1.0.0");
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        make_next(esp.path(), Slot::A).expect("back to a");
        assert_eq!(esp.next(), Some(Slot::A));
        // Making a counting entry with tries left boot next is allowed.
        make_next(esp.path(), Slot::B).expect("b again");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+3.conf"]);
        assert_eq!(esp.boot(), Some(Slot::B));
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+2-1.conf"]);
    }

    #[test]
    fn refusals_name_the_path_and_change_nothing() {
        let esp = Esp::built("1.0.0");
        let err = rollback(esp.path()).expect_err("b has no entry");
        assert!(
            matches!(err, EntriesError::NoEntry { slot: Slot::B, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("loader/entries"), "{err}");
        let err = bless(esp.path(), Slot::B).expect_err("no entry to bless");
        assert!(
            matches!(err, EntriesError::NoEntry { slot: Slot::B, .. }),
            "{err}"
        );
        assert_eq!(esp.names(), ["berth-a.conf"]);

        // The other slot's kernel is gone: nothing bootable there.
        esp.write("berth-b.conf", &boot_entry(Slot::B, "0.9.0").render());
        fs::remove_file(esp.path().join(Slot::B.kernel_path())).expect("rm kernel");
        let err = rollback(esp.path()).expect_err("kernel missing");
        assert!(
            matches!(err, EntriesError::KernelMissing { slot: Slot::B, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("berth-b.conf"), "{err}");

        let err =
            install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 0).expect_err("zero tries");
        assert!(err.to_string().contains("berth-b+0.conf"), "{err}");
        let mut bad = boot_entry(Slot::B, "1.1.0");
        bad.title = "two\nlines".into();
        let err = install_entry(esp.path(), &bad, 3).expect_err("multi-line title");
        assert!(
            matches!(err, EntriesError::MultiLine { field: "title", .. }),
            "{err}"
        );
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);

        let missing = esp.path().join("not-mounted");
        let err = EspState::read(&missing).expect_err("no esp");
        assert!(err.to_string().contains("not-mounted"), "{err}");
    }

    #[test]
    fn make_next_refuses_when_another_entry_would_still_boot_first() {
        let esp = Esp::built("1.0.0");
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        // Another OS's entry with a sort key that sorts before berth's.
        esp.write(
            "other.conf",
            "title other\nsort-key aaa\nlinux /berth/a/vmlinuz\n",
        );
        assert_eq!(esp.next(), None, "not a berth entry");
        let err = make_next(esp.path(), Slot::A).expect_err("other sorts first");
        assert!(
            matches!(err, EntriesError::WouldNotBootFirst { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("other.conf"), "{err}");
        assert_eq!(
            esp.names(),
            ["berth-a.conf", "berth-b+3.conf", "other.conf"]
        );
        let err = rollback(esp.path()).expect_err("nothing of berth's next");
        assert!(
            matches!(err, EntriesError::NothingBootsNext { .. }),
            "{err}"
        );
    }

    #[test]
    fn install_over_a_slot_removes_its_old_files() {
        let esp = Esp::built("1.0.0");
        // Leftovers of power cuts: a duplicate name from an interrupted rename and
        // a temporary file from an interrupted write.
        esp.write("berth-b+0-3.conf", &boot_entry(Slot::B, "0.9.0").render());
        esp.write("berth-b.conf", &boot_entry(Slot::B, "0.9.0").render());
        fs::write(
            esp.path().join("loader/entries/.berth-b+3.conf.tmp"),
            "half written",
        )
        .expect("temp");
        let state = esp.state();
        assert_eq!(state.temp_files(), [".berth-b+3.conf.tmp"]);
        let b = state.slot(Slot::B).expect("b");
        assert_eq!(b.file_name(), "berth-b.conf");
        assert_eq!(b.duplicates, ["berth-b+0-3.conf"]);

        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+3.conf"]);
        assert_eq!(esp.next(), Some(Slot::B));
        // A forced downgrade still sorts first: the version line is a rank.
        install_entry(esp.path(), &boot_entry(Slot::B, "0.1.0"), 2).expect("downgrade");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b+2.conf"]);
        let state = esp.state();
        assert_eq!(state.next_boot(), Some(Slot::B));
        assert_eq!(
            state.slot(Slot::B).expect("b").image_version(),
            Some("0.1.0")
        );

        let removed = remove_slot_entries(esp.path(), Slot::B).expect("remove");
        assert_eq!(removed, [esp.path().join("loader/entries/berth-b+2.conf")]);
        assert_eq!(esp.names(), ["berth-a.conf"]);
        assert!(remove_slot_entries(esp.path(), Slot::B)
            .expect("again")
            .is_empty());
    }

    #[test]
    fn bless_cleans_up_a_half_done_rename() {
        let esp = Esp::built("1.0.0");
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        esp.boot();
        // A power cut during the blessing rename on FAT left both names.
        let text =
            fs::read_to_string(esp.path().join("loader/entries/berth-b+2-1.conf")).expect("read");
        esp.write("berth-b.conf", &text);
        assert_eq!(esp.next(), Some(Slot::B));
        bless(esp.path(), Slot::B).expect("bless");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
        assert!(esp.state().slot(Slot::B).expect("b").duplicates.is_empty());
    }

    #[test]
    fn empty_esp_reads_as_no_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = EspState::read(dir.path()).expect("read");
        assert!(state.entries().is_empty() && state.next_boot().is_none());
        assert_eq!(simulate_boot(dir.path()).expect("boot"), None);
        // The first install creates the folder.
        install_entry(dir.path(), &boot_entry(Slot::A, "1.0.0"), 3).expect("install");
        assert_eq!(
            EspState::read(dir.path())
                .expect("read")
                .slot(Slot::A)
                .expect("a")
                .file_name(),
            "berth-a+3.conf"
        );
    }
}
