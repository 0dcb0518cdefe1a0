//! Which Type #1 boot entry systemd-boot boots, computed the way systemd-boot 252
//! orders `loader/entries/*.conf` when `loader.conf` has no `default` line: it
//! boots the first entry of this order.
//!
//! 1. entries with a boot counter and no tries left (`NAME+0-N.conf`) last;
//! 2. entries with a `sort-key` before those without;
//! 3. by `sort-key` (byte order), then `machine-id`, then `version` highest first
//!    (systemd's `strverscmp_improved`);
//! 4. then by entry id (the file name), highest version-wise first;
//! 5. then more tries left first, then fewer tries done first.

use std::cmp::Ordering;

/// A parsed boot entry file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFile {
    /// The file name, `berth-a+2-1.conf`.
    pub file_name: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    /// The kernel's path on the ESP, as written (`/berth/a/vmlinuz`).
    pub linux: Option<String>,
    /// Initramfs paths, in order.
    pub initrd: Vec<String>,
    /// All `options` lines joined by spaces.
    pub options: String,
    /// `Some((left, done))` when the name has a boot counter (`+LEFT[-DONE]`).
    pub counter: Option<(u32, u32)>,
}

impl EntryFile {
    /// Parses one entry file's text; unknown keys are ignored, as systemd-boot does.
    pub fn parse(file_name: &str, text: &str) -> EntryFile {
        let mut entry = EntryFile {
            file_name: file_name.to_string(),
            counter: parse_counter(file_name),
            ..EntryFile::default()
        };
        let mut options = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((key, value)) => (key, value.trim()),
                None => (line, ""),
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

    fn tries_left(&self) -> Option<u32> {
        self.counter.map(|(left, _)| left)
    }
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

/// `NAME+LEFT-DONE.conf` or `NAME+LEFT.conf` → `(LEFT, DONE)`.
fn parse_counter(file_name: &str) -> Option<(u32, u32)> {
    let stem = strip_conf(file_name)?;
    let (_, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((left, done)) => (left, Some(done)),
        None => (counter, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || done.is_some_and(|d| !digits(d)) {
        return None;
    }
    Some((
        left.parse().ok()?,
        done.map_or(Some(0), |d| d.parse().ok())?,
    ))
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
            (Some((left_a, done_a)), Some((left_b, done_b))) => {
                left_b.cmp(&left_a).then(done_a.cmp(&done_b))
            }
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
        assert_eq!(e.counter, Some((2, 1)));
        assert_eq!(e.id(), "berth-b+2-1");
        assert_eq!(parse_counter("berth-b+3.conf"), Some((3, 0)));
        assert_eq!(parse_counter("berth-a.conf"), None);
        assert_eq!(parse_counter("berth-a+x.conf"), None);
        assert_eq!(parse_counter("berth-a+1-.conf"), None);
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
}
