//! systemd-boot 252's order of entries, and the boot-order ranks berth writes.

use std::cmp::Ordering;

use super::EntryFile;

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
}
