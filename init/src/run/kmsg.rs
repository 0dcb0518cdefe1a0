//! The kernel's ring buffer, read by the init from `/dev/kmsg` (non-blocking, one
//! record per read, from the start of the buffer) and appended to
//! `/var/log/berth/kernel.log` as `[seconds.micros] message` after the usual
//! wall-clock stamp. The console already shows what the kernel prints there.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::shared::logfile::{LogFile, Rotation};

/// Records read per wakeup, so a kernel flood cannot starve the loop.
const BUDGET: usize = 256;

/// `/dev/kmsg` and the file it goes to.
#[derive(Debug)]
pub struct Kmsg {
    device: File,
    log: LogFile,
}

impl Kmsg {
    /// Opens `/dev/kmsg` and `<dir>/kernel.log`.
    pub fn open(dir: &std::path::Path, rotation: Rotation) -> std::io::Result<Kmsg> {
        let device = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        Ok(Kmsg {
            device,
            log: LogFile::open(dir, "kernel", rotation),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// Copies the records waiting in the buffer to the log file.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 8192];
        for _ in 0..BUDGET {
            match self.device.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(line) = format_record(&buf[..n]) {
                        self.log.write_line(line.as_bytes());
                    }
                }
                // Records overwritten before they were read: go on with the next.
                Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// `pri,seq,usec,flags[,…];message\n[ KEY=value\n…]` → `[secs.micros] message`
/// (non-printable bytes escaped by the kernel as `\xNN` stay so).
pub fn format_record(record: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(record);
    let (head, rest) = text.split_once(';')?;
    let message = rest.lines().next().unwrap_or_default();
    let usec: u64 = head.split(',').nth(2)?.parse().ok()?;
    Some(format!(
        "[{:5}.{:06}] {message}",
        usec / 1_000_000,
        usec % 1_000_000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_kmsg_records() {
        assert_eq!(
            format_record(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n")
                .as_deref(),
            Some("[    5.140900] NET: Registered protocol family 10")
        );
        assert_eq!(
            format_record(b"4,12,12,-,caller=T1;x\n").as_deref(),
            Some("[    0.000012] x")
        );
        assert_eq!(format_record(b"garbage"), None);
    }
}
