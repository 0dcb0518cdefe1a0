//! Per-container log files under `/var/log/berth/`, next to the console copy: one
//! line per line of output, rotated once at a size cap so a chatty container cannot
//! fill the data partition (or the memory, when /var fell back to a tmpfs).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Folder of the container log files.
pub const LOG_DIR: &str = "/var/log/berth";
/// Size at which `<name>.log` is renamed to `<name>.log.1` and started afresh.
pub const ROTATE_AT: u64 = 1024 * 1024;

/// A log file that writes when it can and goes quiet (after one console line)
/// when it cannot.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    limit: u64,
}

impl LogFile {
    /// Opens (appending) `<dir>/<name>.log`; a failure is logged and the file stays
    /// closed.
    pub fn open(dir: &Path, name: &str, limit: u64) -> LogFile {
        let path = dir.join(format!("{name}.log"));
        let mut log = LogFile {
            path,
            file: None,
            size: 0,
            limit,
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
                log!("not logging to {}: {err}", self.path.display());
                self.file = None;
            }
        }
    }

    /// Appends one line (a newline is added).
    pub fn write_line(&mut self, line: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line);
        record.push(b'\n');
        if let Err(err) = file.write_all(&record) {
            log!("not logging to {} any more: {err}", self.path.display());
            self.file = None;
            return;
        }
        self.size += u64::try_from(record.len()).unwrap_or(u64::MAX);
        if self.size >= self.limit {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        if let Err(err) = std::fs::rename(&self.path, &old) {
            log!("rotating {}: {err}", self.path.display());
        }
        self.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_rotates_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(dir.path(), "web", 10);
        log.write_line(b"hello");
        assert_eq!(
            std::fs::read(dir.path().join("web.log")).unwrap(),
            b"hello\n"
        );
        log.write_line(b"world");
        // 12 bytes >= 10: rotated.
        assert_eq!(
            std::fs::read(dir.path().join("web.log.1")).unwrap(),
            b"hello\nworld\n"
        );
        log.write_line(b"again");
        assert_eq!(
            std::fs::read(dir.path().join("web.log")).unwrap(),
            b"again\n"
        );

        // Reopening appends.
        let mut log = LogFile::open(dir.path(), "web", 100);
        log.write_line(b"more");
        assert_eq!(
            std::fs::read(dir.path().join("web.log")).unwrap(),
            b"again\nmore\n"
        );
    }

    #[test]
    fn unwritable_folder_goes_quiet() {
        let mut log = LogFile::open(Path::new("/nonexistent/dir"), "web", 10);
        log.write_line(b"dropped");
        assert!(log.file.is_none());
    }
}
