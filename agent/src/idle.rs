//! Between checks the agent sleeps for most of an interval (30 minutes by
//! default). The code pages a check touched (TLS, signature checks, JSON) stay
//! resident until the kernel needs the memory, and on a small device that is
//! memory the containers could use now. Before a long sleep the agent hands the
//! clean pages of its own executable back with `madvise(MADV_PAGEOUT)` (Linux
//! 5.4 and later); the next check reads the ones it needs again from the root
//! file system. Nothing is lost: the pages are read-only copies of the file.

use std::path::Path;

/// One mapping of `/proc/self/maps` the agent may page out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
}

/// The read-only (never written, so clean) mappings of `exe` in a
/// `/proc/<pid>/maps` text. Writable ones are left alone: their written pages
/// are anonymous copies that paging out would only push to swap.
pub fn read_only_mappings_of(maps: &str, exe: &Path) -> Vec<Mapping> {
    let exe = exe.to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path (the path may hold spaces).
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?.trim_start();
            if path != exe || perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some(Mapping { start, end })
        })
        .collect()
}

/// Pages out this process's read-only mappings of its own executable; returns
/// how many bytes were advised. An error (an older kernel answers `EINVAL`)
/// changes nothing but the memory the agent holds while it sleeps.
pub fn page_out_own_code() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for mapping in read_only_mappings_of(&maps, &exe) {
        let len = mapping.end - mapping.start;
        // SAFETY: the range is a whole mapping of this process (page-aligned, as
        // /proc/self/maps lists it), and MADV_PAGEOUT only drops clean pages from
        // memory: their contents stay as they are and fault back in from the file.
        let rc =
            unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        advised += len;
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00400000-00401000 r--p 00000000 fe:01 1234 /usr/bin/berth-update
00401000-00700000 r-xp 00001000 fe:01 1234 /usr/bin/berth-update
00700000-00780000 r--p 00300000 fe:01 1234 /usr/bin/berth-update
00780000-00790000 rw-p 00380000 fe:01 1234 /usr/bin/berth-update
00790000-007a0000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 r-xp 00000000 fe:01 99 /usr/lib/other
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_the_executables_read_only_mappings_are_paged_out() {
        let found = read_only_mappings_of(MAPS, Path::new("/usr/bin/berth-update"));
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x400000,
                    end: 0x401000
                },
                Mapping {
                    start: 0x401000,
                    end: 0x700000
                },
                Mapping {
                    start: 0x700000,
                    end: 0x780000
                },
            ]
        );
        assert!(read_only_mappings_of(MAPS, Path::new("/usr/bin/other")).is_empty());
    }

    fn chain_of_calls_after_paging_out() -> u64 {
        (1..=10).map(std::hint::black_box).sum()
    }

    #[test]
    fn paths_with_spaces_match_whole() {
        let maps = "00400000-00401000 r-xp 00000000 fe:01 1 /opt/my tools/agent\n";
        assert_eq!(
            read_only_mappings_of(maps, Path::new("/opt/my tools/agent")).len(),
            1
        );
        assert!(read_only_mappings_of(maps, Path::new("/opt/my")).is_empty());
    }

    #[test]
    fn the_running_test_binary_pages_out_its_own_code() {
        // The test binary maps its own code read-only, so something is advised,
        // and the kernel here (5.4 or later) accepts MADV_PAGEOUT.
        let advised = page_out_own_code().expect("madvise(MADV_PAGEOUT)");
        assert!(advised > 0);
        // The code that runs next faults back in from the file.
        assert_eq!(chain_of_calls_after_paging_out(), 55);
    }
}
