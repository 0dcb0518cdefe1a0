//! One agent at a time: every `berth-update` command that writes (install,
//! update, rollback, mark-good, and each round of the daemon) holds an
//! exclusive `flock` on [`LOCK_PATH`]. A second one is refused at once with the
//! holder's pid, instead of two installs writing the same slot. The lock is the
//! kernel's: it goes with the process, so a killed agent never leaves it stale.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use berth_format::layout::UPDATE_LOCK_PATH as LOCK_PATH;

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another berth-update is running ({holder}): wait for it to finish")]
    Busy { holder: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct UpdateLock {
    _file: File,
}

impl UpdateLock {
    /// Takes the lock at `path` without waiting.
    pub fn acquire(path: &Path) -> Result<UpdateLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "pid unknown".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockError::Busy { holder });
            }
        }
        // The holder's pid, for the message a second agent prints.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(UpdateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berth/update.lock");
        let first = UpdateLock::acquire(&path).unwrap();
        // flock locks belong to the open file: a second open in the same
        // process conflicts like another process would.
        let err = UpdateLock::acquire(&path).unwrap_err().to_string();
        assert!(err.contains("another berth-update is running"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        UpdateLock::acquire(&path).unwrap();
    }
}
