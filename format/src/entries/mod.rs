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
//! ([`File::sync_all`](std::fs::File::sync_all) on the directory). On the FAT of a
//! real ESP, `rename` is
//! atomic per directory entry as far as the kernel is concerned (no reader ever
//! sees neither name), but vfat has no journal: a power cut in the middle can
//! leave both the old and the new name on disk. Both then hold the same content,
//! so the slot still boots; [`EspState`] reports the extra names as
//! [`SlotEntry::duplicates`], and the next [`bless`], [`install_entry`] or
//! [`remove_slot_entries`] of that slot removes them, as well as stale temporary
//! files. (Two such names point at one cluster chain: removing one frees the
//! other's clusters. The crash-state test, `tests/tests/crash_states.rs`, has
//! not seen the state — the two names shared a folder sector in every recorded
//! rename. The init's main stage runs `fsck.fat -a` on an ESP a cut left
//! marked dirty before mounting it, which truncates the second name to
//! nothing; [`EspState`] skips empty entries and empty kernels, as
//! systemd-boot does.)
//!
//! On that FAT, three more rules keep every cut state free of entries on freed
//! or shared clusters ([`crate::fatsync`]): a temporary's cluster chain is
//! flushed before its entry names it; a file is never renamed over another
//! (the old one is removed first, durably); and a removed file is held open
//! until its removal is durable, so its clusters are freed after. A cut inside
//! [`make_next`] between the removal of the old entry and the rename leaves the
//! slot's promoted entry in its temporary file (`.NAME.next.tmp`, apart from an
//! install's `.NAME.tmp`): the other slot keeps booting, and
//! [`recover_promotions`] (run by the main stage after mounting the ESP, and by
//! [`make_next`] itself) renames it into place when its slot has no readable
//! entry. An install's temporary is never recovered: it was cut before the
//! commit point.

mod commit;
mod file;
mod order;
mod state;
#[cfg(test)]
mod testutil;

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::Slot;

pub use commit::{
    bless, install_entry, install_entry_observed, make_next, recover_promotions,
    remove_slot_entries, rollback, simulate_boot,
};
pub use file::{
    entry_file_name, is_entry_file_name, parse_slot_file_name, split_counter, Counter, EntryFile,
};
pub use order::{choose, compare, next_rank, version_cmp};
pub use state::{EspState, SlotEntry};

/// Where systemd-boot's Type #1 entries live, relative to the ESP root.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Tries an update gets before systemd-boot falls back to the other slot.
pub const DEFAULT_TRIES: u32 = 3;
/// Suffix of the temporary files written before a rename (`.berth-b+3.conf.tmp`).
const TEMP_SUFFIX: &str = ".tmp";
/// What sets a promotion's temporary apart (`.berth-a.conf.next.tmp`).
const PROMOTION_SUFFIX: &str = ".next";

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
