//! The entry file format: names with boot counters, and the keys systemd-boot reads.

use super::{PROMOTION_SUFFIX, TEMP_SUFFIX};
use crate::layout::{Slot, IMAGE_VERSION_COMMENT};

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

    pub(super) fn tries_left(&self) -> Option<u32> {
        self.counter.map(|c| c.left)
    }
}

pub(super) fn split_key(line: &str) -> Option<(&str, &str)> {
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

pub(super) fn temp_name(final_name: &str) -> String {
    format!(".{final_name}{TEMP_SUFFIX}")
}

pub(super) fn is_berth_temp_name(name: &str) -> bool {
    name.starts_with(".berth-") && name.ends_with(TEMP_SUFFIX)
}

/// The temporary file of a promotion ([`super::make_next`]): `.NAME.next.tmp`.
/// Unlike an install's temporary, it holds an entry that was already on the
/// ESP (only its rank is new), so a cut that left nothing else of its slot
/// may be finished from it ([`super::recover_promotions`]). Still a berth
/// temporary for every cleanup ([`is_berth_temp_name`]).
pub(super) fn promotion_temp_name(final_name: &str) -> String {
    format!(".{final_name}{PROMOTION_SUFFIX}{TEMP_SUFFIX}")
}

/// The entry file name a promotion's temporary was written for.
pub(super) fn promoted_name(temp: &str) -> Option<&str> {
    let name = temp
        .strip_prefix('.')?
        .strip_suffix(TEMP_SUFFIX)?
        .strip_suffix(PROMOTION_SUFFIX)?;
    is_entry_file_name(name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn entry_file_names() {
        assert!(is_entry_file_name("berth-a.conf"));
        assert!(is_entry_file_name("BERTH-A.CONF"));
        assert!(!is_entry_file_name(".berth-a.conf"));
        assert!(!is_entry_file_name(".conf"));
        assert!(!is_entry_file_name("berth-a.conf.tmp"));
        assert!(!is_entry_file_name("loader.cfg"));
    }

    #[test]
    fn promotion_temporaries_name_their_entry_and_are_berth_temporaries() {
        let temp = promotion_temp_name("berth-a+2-1.conf");
        assert_eq!(temp, ".berth-a+2-1.conf.next.tmp");
        assert!(is_berth_temp_name(&temp));
        assert!(!is_entry_file_name(&temp));
        assert_eq!(promoted_name(&temp), Some("berth-a+2-1.conf"));
        // An install's temporary is not a promotion's.
        assert_eq!(promoted_name(&temp_name("berth-b+3.conf")), None);
        assert_eq!(promoted_name(".next.tmp"), None);
    }
}
