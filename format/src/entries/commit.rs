//! The operations that change the entries: install, bless, make next, roll back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::file::{is_berth_temp_name, promoted_name, promotion_temp_name, split_key, temp_name};
use super::state::kernel_on_esp;
use super::{choose, entry_file_name, io_error, parse_slot_file_name, split_counter};
use super::{Counter, EntriesError, EntryFile, EspState, Result, ENTRIES_DIR};
use crate::layout::{BootEntry, Slot, IMAGE_VERSION_COMMENT};

/// The single change an operation commits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Commit {
    /// Rename `from` to `to` in the entries folder.
    Rename { from: String, to: String },
    /// Write `content` to the temporary file `temp`, fsync it, rename it to
    /// `name`.
    Write {
        name: String,
        temp: String,
        content: String,
    },
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
            Commit::Write {
                name,
                temp,
                content,
            } => {
                let temp = dir.join(temp);
                let target = dir.join(name);
                let result = write_temp(&temp, content).and_then(|()| {
                    sync_dir(dir)?;
                    // Never rename over a file on FAT: vfat frees the replaced
                    // file's clusters at once but points its directory entry at
                    // the new ones only at inode writeback, so a cut between
                    // the two leaves the entry on freed clusters, which the
                    // next write on the ESP takes. Remove it durably first
                    // (the slot boots on its other entry, or not at all, for a
                    // moment), then rename into a free name.
                    // Held open until the end: its clusters are freed only
                    // once its removal is durable (see crate::fatsync).
                    let held = File::open(&target).ok();
                    match fs::remove_file(&target) {
                        Ok(()) => sync_dir(dir)?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("remove", &target)(e)),
                    }
                    before_rename();
                    fs::rename(&temp, &target).map_err(|source| EntriesError::Rename {
                        from: temp.clone(),
                        to: target.clone(),
                        source,
                    })?;
                    Ok(held)
                });
                let held = match result {
                    Ok(held) => held,
                    Err(e) => {
                        // Best effort: the error that matters is the one above.
                        let _ = fs::remove_file(&temp);
                        return Err(e);
                    }
                };
                sync_file(&target)?;
                sync_dir(dir)?;
                drop(held);
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
    // On the ESP's FAT: the new cluster chain durable before the entry names it.
    crate::fatsync::flush_device_of(temp).map_err(io_error("flush the device of", temp))?;
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

/// Removes `names` from `dir`, then fsyncs the folder once. The files are held
/// open until then, so their clusters are freed only after their removal is
/// durable (see [`crate::fatsync`]).
fn remove_files(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut held = Vec::new();
    for name in names {
        let path = dir.join(name);
        held.extend(File::open(&path).ok());
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    drop(held);
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
        temp: temp_name(&name),
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
        Some(_) => {
            // Never rename over a file on FAT: a blessed name left beside the
            // counted one (empty, after fsck.fat) goes first.
            if current.duplicates.contains(&blessed) {
                remove_files(dir, std::slice::from_ref(&blessed))?;
            }
            Commit::Rename {
                from: current.file_name().to_string(),
                to: blessed.clone(),
            }
            .apply(dir)?
        }
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
    // A promotion of this slot that a cut left in its temporary is finished
    // first, so the slot is a target again.
    recover_promotions(esp)?;
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
            .is_some_and(|linux| kernel_on_esp(esp, linux))
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
        temp: promotion_temp_name(target.file_name()),
        content,
    }
    .apply(dir)?;
    Ok(())
}

/// Finishes promotions ([`make_next`]) that a cut left half done: the slot's
/// entry removed, its promoted copy only in `.NAME.next.tmp`. For each such
/// temporary whose slot has no entry systemd-boot can read (none, or only an
/// empty one: what `fsck.fat` leaves of a name that shared its clusters with
/// the temporary), the temporary is renamed into place and the slot boots
/// again, first, as the promotion meant. An install's temporary (`.NAME.tmp`)
/// is never finished this way: it holds an entry that was not committed.
/// Returns the recovered entries' paths.
pub fn recover_promotions(esp: &Path) -> Result<Vec<PathBuf>> {
    let state = EspState::read(esp)?;
    let dir = state.dir();
    let mut recovered = Vec::new();
    for temp in state.temp_files() {
        let Some(name) = promoted_name(temp) else {
            continue;
        };
        let Some((slot, _)) = parse_slot_file_name(name) else {
            continue;
        };
        if state.slot(slot).is_some_and(|e| e.entry.linux.is_some()) {
            // The promotion got past its rename (or never removed the
            // entry): the temporary is stale, for the usual cleanup.
            continue;
        }
        let path = dir.join(temp);
        let text = fs::read(&path).map_err(io_error("read", &path))?;
        let entry = EntryFile::parse(name, &String::from_utf8_lossy(&text));
        if entry.linux.is_none() {
            continue;
        }
        // Empty leftovers of the slot go first: never rename over a file on FAT.
        let leftovers = slot_file_names(dir, slot, false)?;
        remove_files(dir, &leftovers)?;
        recovered.push(
            Commit::Rename {
                from: temp.clone(),
                to: name.to_string(),
            }
            .apply(dir)?,
        );
    }
    Ok(recovered)
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
    use crate::entries::testutil::{boot_entry, Esp};
    use crate::entries::DEFAULT_TRIES;

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

    /// What `make_next(A)` leaves when cut after the durable removal of
    /// `berth-a.conf` and before the rename: the promoted copy, only in its
    /// temporary. Returns the promoted text.
    fn cut_promotion(esp: &Esp) -> String {
        let entries = esp.path().join(ENTRIES_DIR);
        let text = fs::read_to_string(entries.join("berth-a.conf")).expect("read");
        let promoted = with_rank(&text, &esp.state().rank().expect("rank"), Some("1.0.0"));
        fs::write(entries.join(".berth-a.conf.next.tmp"), &promoted).expect("temp");
        fs::remove_file(entries.join("berth-a.conf")).expect("remove");
        promoted
    }

    fn blessed_b(esp: &Esp) {
        install_entry(esp.path(), &boot_entry(Slot::B, "1.1.0"), 3).expect("install");
        esp.boot();
        bless(esp.path(), Slot::B).expect("bless");
        assert_eq!(esp.next(), Some(Slot::B));
    }

    #[test]
    fn a_rollback_cut_between_removal_and_rename_is_finished_by_the_next_one() {
        let esp = Esp::built("1.0.0");
        blessed_b(&esp);
        let promoted = cut_promotion(&esp);
        assert!(esp.state().slot(Slot::A).is_none(), "slot a has no entry");
        // The init's fallback (or the agent's rollback) asks again.
        make_next(esp.path(), Slot::A).expect("finished");
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
        assert_eq!(esp.next(), Some(Slot::A));
        assert_eq!(
            fs::read_to_string(esp.path().join("loader/entries/berth-a.conf")).expect("read"),
            promoted
        );
    }

    #[test]
    fn only_a_promotion_is_recovered_and_only_when_its_slot_has_no_readable_entry() {
        let esp = Esp::built("1.0.0");
        blessed_b(&esp);
        cut_promotion(&esp);
        // What fsck.fat -a leaves of a name that shared its clusters with the
        // temporary: the name, empty.
        esp.write("berth-a.conf", "");
        let recovered = recover_promotions(esp.path()).expect("recover");
        assert_eq!(recovered, [esp.path().join("loader/entries/berth-a.conf")]);
        assert_eq!(esp.names(), ["berth-a.conf", "berth-b.conf"]);
        assert_eq!(esp.next(), Some(Slot::A), "the promotion is finished");
        assert!(recover_promotions(esp.path()).expect("again").is_empty());

        // A stale promotion temporary beside a readable entry stays for the
        // usual cleanup (it may share the entry's clusters until fsck.fat).
        let entries = esp.path().join(ENTRIES_DIR);
        fs::copy(
            entries.join("berth-b.conf"),
            entries.join(".berth-b.conf.next.tmp"),
        )
        .expect("cp");
        assert!(recover_promotions(esp.path()).expect("stale").is_empty());
        assert_eq!(esp.state().temp_files(), [".berth-b.conf.next.tmp"]);
        remove_slot_entries(esp.path(), Slot::B).expect("cleanup");

        // An install's temporary is an entry that was never committed: the
        // slot stays without one.
        let install = boot_entry(Slot::B, "1.2.0").render_ranked("99");
        fs::write(entries.join(".berth-b+3.conf.tmp"), install).expect("temp");
        assert!(recover_promotions(esp.path())
            .expect("install temp")
            .is_empty());
        assert!(esp.state().slot(Slot::B).is_none());
        assert_eq!(esp.next(), Some(Slot::A));
    }
}
