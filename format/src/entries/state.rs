//! Reading the ESP's boot entries, as systemd-boot 252 would see them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::file::is_berth_temp_name;
use super::{compare, io_error, is_entry_file_name, next_rank, parse_slot_file_name};
use super::{Counter, EntriesError, EntryFile, Result, ENTRIES_DIR};
use crate::layout::{Slot, SORT_KEY};

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
                .is_some_and(|linux| kernel_on_esp(esp, linux))
        };
        let next = entries
            .iter()
            .position(|e| e.linux.is_some() && kernel_present(e));
        let slots = Slot::ALL.map(|slot| {
            let files: Vec<&EntryFile> = entries
                .iter()
                .filter(|e| parse_slot_file_name(&e.file_name).is_some_and(|(s, _)| s == slot))
                .collect();
            // The first that names a kernel, as systemd-boot skips those that
            // do not (an empty file `fsck.fat -a` left of a name that shared
            // its clusters with another); the rest are duplicates.
            let entry = *files.iter().find(|e| e.linux.is_some()).or(files.first())?;
            Some(SlotEntry {
                slot,
                entry: entry.clone(),
                kernel_present: kernel_present(entry),
                duplicates: files
                    .iter()
                    .filter(|e| e.file_name != entry.file_name)
                    .map(|e| e.file_name.clone())
                    .collect(),
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

    pub(super) fn rank(&self) -> Result<String> {
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
/// Whether the kernel an entry's `linux` line names is on the ESP. An empty
/// file is no kernel: `fsck.fat -a` truncates a file that shared its clusters
/// with another to nothing.
pub(super) fn kernel_on_esp(esp: &Path, linux: &str) -> bool {
    fs::metadata(esp.join(esp_relative(linux))).is_ok_and(|m| m.is_file() && m.len() > 0)
}

fn esp_relative(path: &str) -> PathBuf {
    PathBuf::from(path.replace('\\', "/").trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::testutil::{boot_entry, Esp};
    use crate::entries::{bless, install_entry, simulate_boot};

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

    #[test]
    fn an_empty_entry_or_kernel_is_skipped_as_systemd_boot_skips_it() {
        let esp = Esp::built("1.0.0");
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        esp.boot();
        // fsck.fat -a truncated the blessed name that shared its clusters with
        // the counted one to nothing.
        esp.write("berth-b.conf", "");
        let state = esp.state();
        let b = state.slot(Slot::B).expect("b");
        assert_eq!(b.file_name(), "berth-b+2-1.conf");
        assert_eq!(b.duplicates, ["berth-b.conf"]);
        assert_eq!(state.next_boot(), Some(Slot::B));
        bless(esp.path(), Slot::B).expect("bless");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
        assert!(esp.state().slot(Slot::B).expect("b").is_good());

        fs::write(esp.path().join(Slot::B.kernel_path()), b"").expect("truncate");
        let state = esp.state();
        assert!(!state.slot(Slot::B).expect("b").kernel_present);
        assert_eq!(state.next_boot(), Some(Slot::A));
    }
}
