//! A shutdown: the debug shell killed, TERM to every container, KILL after
//! [`GRACE_PERIOD`]; the loop calls [`power::finish`] once all are reaped, or
//! [`KILL_WAIT`] after the KILL.
//!
//! [`power::finish`]: crate::shared::power::finish

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::shell::Shell;
use super::EventLoop;
use crate::shared::power::PowerAction;

/// How long containers get between `crun kill … TERM` and `crun kill … KILL`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// How long a shutdown waits for the console to send its queued lines before it
/// kills the debug shell (see [`crate::log::drain_console`]). Enough for a few
/// KiB at 115200 baud.
const CONSOLE_DRAIN: Duration = Duration::from_millis(500);

/// How long killed containers get to be reaped (and logged) before the final steps.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A shutdown in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shutdown {
    pub(super) action: PowerAction,
    /// Containers were sent TERM (false) or, after the grace period, KILL (true).
    pub(super) killed: bool,
    /// End of the grace period, or of the wait for the killed containers.
    pub(super) deadline: Instant,
}

impl EventLoop {
    /// Begins a shutdown; a second request while one runs is only logged.
    pub(super) fn begin_shutdown(&mut self, action: PowerAction, why: &str) {
        if self.shutdown.is_some() {
            log!("{why}: already stopping");
            return;
        }
        log!("{why}");
        if let Some(pid) = self.shell.and_then(Shell::pid) {
            // The shell's death hangs up the console: let the lines above out first.
            crate::log::drain_console(CONSOLE_DRAIN);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.shell.is_some() {
            self.shell = Some(Shell::Stopped);
        }
        self.stop_agent();
        let order = self.supervisor.stop_all();
        let names: Vec<&str> = order
            .iter()
            .filter_map(|&index| self.supervisor.container(index))
            .map(|container| container.name.as_str())
            .collect();
        // The order, so a log shows which container was asked to stop first.
        if names.is_empty() {
            log!("stopping containers: none running");
        } else {
            log!("stopping containers: TERM to {}", names.join(", "));
        }
        self.shutdown = Some(Shutdown {
            action,
            killed: false,
            deadline: Instant::now() + GRACE_PERIOD,
        });
        for index in order {
            self.signal_container(index, "TERM", Signal::SIGTERM);
        }
    }

    /// After the grace period: KILL what still runs (the final `kill(-1)` in
    /// [`crate::shared::power::finish`] catches the rest).
    pub(super) fn kill_remaining(&mut self) {
        let running = self.supervisor.running();
        let names: Vec<&str> = running
            .iter()
            .filter_map(|&index| self.supervisor.container(index))
            .map(|container| container.name.as_str())
            .collect();
        log!(
            "still running after {} s: {}; killing",
            GRACE_PERIOD.as_secs(),
            names.join(", ")
        );
        for &index in &running {
            self.signal_container(index, "KILL", Signal::SIGKILL);
        }
        self.shutdown = self.shutdown.map(|shutdown| Shutdown {
            killed: true,
            deadline: Instant::now() + KILL_WAIT,
            ..shutdown
        });
    }
}
