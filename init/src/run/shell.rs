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
/// The console, when the kernel does not say which device it is.
const CONSOLE: &str = "/dev/console";
/// The kernel's console devices, the last of them the one `/dev/console` is.
const ACTIVE_CONSOLES: &str = "/sys/class/tty/console/active";
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

/// The device behind `/dev/console`, from the kernel's list of active
/// consoles (`tty0 ttyS0`: the last is the one `/dev/console` writes to).
/// `/dev/console` itself can never become a controlling terminal, so a shell
/// on it has no job control and Ctrl-C reaches nothing.
pub fn console_device(active: &str) -> Option<String> {
    active
        .split_whitespace()
        .last()
        .filter(|name| !name.contains('/') && *name != "..")
        .map(|name| format!("/dev/{name}"))
}

/// Starts the shell on the console as a session leader with the console's
/// device as its controlling terminal.
pub fn spawn() -> std::io::Result<i32> {
    let device = std::fs::read_to_string(ACTIVE_CONSOLES)
        .ok()
        .and_then(|active| console_device(&active))
        .filter(|device| std::path::Path::new(device).exists())
        .unwrap_or_else(|| CONSOLE.to_string());
    let console = OpenOptions::new().read(true).write(true).open(&device)?;
    let mut command = Command::new(SHELL);
    super::unblock_signals(&mut command)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_device_is_the_last_active_console() {
        assert_eq!(
            console_device("tty0 ttyS0\n").as_deref(),
            Some("/dev/ttyS0")
        );
        assert_eq!(console_device("ttyAMA0\n").as_deref(), Some("/dev/ttyAMA0"));
        assert_eq!(console_device("hvc0").as_deref(), Some("/dev/hvc0"));
        assert_eq!(console_device("\n"), None);
        assert_eq!(console_device("../sda"), None);
    }
}
