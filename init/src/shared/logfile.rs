//! Log files under `/var/log/berth/`, next to the console copy: one line per line
//! of output, each starting with its UTC time (`2026-11-24T07:59:01.123Z `),
//! rotated at a size cap (`<name>.log` → `<name>.log.1` → … → `<name>.log.<keep>`,
//! the oldest dropped) so a chatty container cannot fill the data partition (or
//! the memory, when /var fell back to a tmpfs). The init's own lines go to
//! `init.log` (those printed before /var was mounted are kept in memory until
//! then), the kernel's to `kernel.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_format::clock::utc_datetime;

/// Folder of the log files.
pub const LOG_DIR: &str = "/var/log/berth";
/// Default size at which a log is rotated: 1 MiB.
pub const ROTATE_AT: u64 = 1024 * 1024;
/// Default number of rotated files kept.
pub const KEEP: u32 = 1;
/// Bytes of init lines kept in memory before the log folder exists.
const EARLY_LIMIT: usize = 64 * 1024;

/// Size cap and number of rotated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: ROTATE_AT,
            keep: KEEP,
        }
    }
}

/// A log file that writes when it can and goes quiet (after one console line)
/// when it cannot.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    /// Opens (appending) `<dir>/<name>.log`; a failure is logged and the file stays
    /// closed.
    pub fn open(dir: &Path, name: &str, rotation: Rotation) -> LogFile {
        let path = dir.join(format!("{name}.log"));
        let mut log = LogFile {
            path,
            file: None,
            size: 0,
            rotation,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(err) => {
                // Not through log!: the init's own log file would recurse.
                crate::log::write_console(
                    format!(
                        "{}not logging to {}: {err}\n",
                        crate::log::PREFIX,
                        self.path.display()
                    )
                    .as_bytes(),
                );
                self.file = None;
            }
        }
    }

    /// Appends one line, its time first (a newline is added).
    pub fn write_line(&mut self, line: &[u8]) {
        self.write_stamped(&timestamp(std::time::SystemTime::now()), line);
    }

    /// Appends one line after `stamp` and a space.
    pub fn write_stamped(&mut self, stamp: &str, line: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut record = Vec::with_capacity(stamp.len() + line.len() + 2);
        record.extend_from_slice(stamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(line);
        record.push(b'\n');
        if let Err(err) = file.write_all(&record) {
            crate::log::write_console(
                format!(
                    "{}not logging to {} any more: {err}\n",
                    crate::log::PREFIX,
                    self.path.display()
                )
                .as_bytes(),
            );
            self.file = None;
            return;
        }
        self.size += u64::try_from(record.len()).unwrap_or(u64::MAX);
        if self.size >= self.rotation.max_size {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.rotation.keep.max(1);
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(1));
        self.reopen();
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) of a system time.
pub fn timestamp(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Whole seconds as RFC 3339 (`…SSZ`), then the milliseconds before the `Z`.
    let seconds = utc_datetime(since.as_secs());
    format!(
        "{}.{:03}Z",
        seconds.trim_end_matches('Z'),
        since.subsec_millis()
    )
}

/// The init's own log: lines wait in memory until [`open_init_log`].
#[derive(Debug)]
struct InitLog {
    early: Vec<(String, Vec<u8>)>,
    early_bytes: usize,
    file: Option<LogFile>,
}

static INIT_LOG: Mutex<InitLog> = Mutex::new(InitLog {
    early: Vec::new(),
    early_bytes: 0,
    file: None,
});

/// Appends one of the init's lines (without its newline) to `init.log`.
pub fn init_line(line: &[u8]) {
    let stamp = timestamp(std::time::SystemTime::now());
    let mut log = INIT_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(file) = log.file.as_mut() {
        file.write_stamped(&stamp, line);
    } else if log.early_bytes < EARLY_LIMIT {
        log.early_bytes += line.len();
        log.early.push((stamp, line.to_vec()));
    }
}

/// Opens `<dir>/init.log` and writes the lines printed so far.
pub fn open_init_log(dir: &Path, rotation: Rotation) {
    let mut file = LogFile::open(dir, "init", rotation);
    let mut log = INIT_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (stamp, line) in std::mem::take(&mut log.early) {
        file.write_stamped(&stamp, &line);
    }
    log.early_bytes = 0;
    log.file = Some(file);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| line.split_once(' ').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn appends_stamped_lines_and_rotates_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_size: 60,
            keep: 2,
        };
        let mut log = LogFile::open(dir.path(), "web", rotation);
        log.write_line(b"hello");
        let text = std::fs::read_to_string(dir.path().join("web.log")).unwrap();
        // 2026-11-24T07:59:01.123Z hello
        assert_eq!(text.len(), 24 + 1 + 5 + 1, "{text}");
        assert!(text.ends_with("Z hello\n"), "{text}");
        log.write_line(b"world");
        // 62 bytes >= 60: rotated.
        assert_eq!(lines(&dir.path().join("web.log.1")), ["hello", "world"]);
        assert!(
            !dir.path().join("web.log").exists() || lines(&dir.path().join("web.log")).is_empty()
        );
        log.write_line(b"again");
        log.write_line(b"twice");
        assert_eq!(lines(&dir.path().join("web.log.2")), ["hello", "world"]);
        assert_eq!(lines(&dir.path().join("web.log.1")), ["again", "twice"]);
        log.write_line(b"third");
        log.write_line(b"round");
        // keep = 2: the oldest is gone.
        assert_eq!(lines(&dir.path().join("web.log.2")), ["again", "twice"]);
        assert_eq!(lines(&dir.path().join("web.log.1")), ["third", "round"]);
        assert!(!dir.path().join("web.log.3").exists());

        // Reopening appends.
        let mut log = LogFile::open(dir.path(), "web", Rotation::default());
        log.write_line(b"more");
        log.write_line(b"lines");
        assert_eq!(lines(&dir.path().join("web.log")), ["more", "lines"]);
    }

    #[test]
    fn unwritable_folder_goes_quiet() {
        let mut log = LogFile::open(Path::new("/nonexistent/dir"), "web", Rotation::default());
        log.write_line(b"dropped");
        assert!(log.file.is_none());
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2026-11-24 07:59:01.123 UTC.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_507_141_123);
        assert_eq!(timestamp(t), "2026-11-24T07:59:01.123Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000Z");
    }
}
