//! The debug shell of development images (`[debug] console_shell = true`):
//! busybox's `sh` on the console, in its own session with the console as its
//! controlling terminal, started again when it exits. It is not a container and
//! not counted as one; shutdown kills it with everything else.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::EventLoop;

/// The shell.
pub const SHELL: &str = "/bin/sh";
/// The console it runs on.
const CONSOLE: &str = "/dev/console";
/// Wait before starting the shell again, so a shell that cannot start does not
/// spin.
pub const RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// The shell's process, or when to start it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Running {
        pid: i32,
    },
    Waiting {
        until: Instant,
    },
    /// Shutdown began: never again.
    Stopped,
}

impl Shell {
    /// The shell's pid while it runs.
    pub fn pid(self) -> Option<i32> {
        match self {
            Shell::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// When it is due to start again.
    pub fn due(self) -> Option<Instant> {
        match self {
            Shell::Waiting { until } => Some(until),
            _ => None,
        }
    }
}

/// Starts the shell on the console as a session leader with the console as its
/// controlling terminal.
pub fn spawn() -> std::io::Result<i32> {
    let console = OpenOptions::new().read(true).write(true).open(CONSOLE)?;
    let mut command = Command::new(SHELL);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/")
        .env("TERM", "linux")
        .current_dir("/")
        .stdin(console.try_clone()?)
        .stdout(console.try_clone()?)
        .stderr(console);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // two async-signal-safe system calls (setsid, ioctl), touching no memory of
    // the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Job control needs a controlling terminal; the shell works without
            // one, so a refusal is not an error.
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Reaped by the event loop by pid.
    i32::try_from(child.id()).map_err(std::io::Error::other)
}

impl EventLoop {
    /// Starts the debug shell when it is due.
    pub(super) fn shell_due(&mut self, now: Instant) {
        let Some(Shell::Waiting { until }) = self.shell else {
            return;
        };
        if until > now || self.shutdown.is_some() {
            return;
        }
        match spawn() {
            Ok(pid) => self.shell = Some(Shell::Running { pid }),
            Err(err) => {
                log!("debug shell {}: {err}", SHELL);
                self.shell = Some(Shell::Waiting {
                    until: now + RESPAWN_DELAY * 10,
                });
            }
        }
    }
}
