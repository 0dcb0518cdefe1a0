//! The main stage's event loop: one thread, one `poll` over a signalfd, the power
//! button and every container's output pipes, with a timeout for the next pending
//! restart or the end of the shutdown grace period. Decisions come from
//! [`Supervisor`]; this module does the I/O around them.
//!
//! This file holds the loop itself: its state, the wait, the dispatch of what
//! is ready, and the reaping of children. Its jobs are in the files beside it:
//!
//! - [`lifecycle`]: a container started (its host side from [`containers`], when
//!   from the [`supervisor`]), its end reaped and logged, signals sent to it;
//! - [`pipes`]: its output read and printed, through [`output`]'s line splitter;
//! - [`checks`]: its [`health`] checks, and the boot assessment ([`assess`]);
//! - [`shutdown`]: TERM, grace period, KILL, then [`crate::shared::power`];
//! - the power button ([`input`]), the debug [`shell`], the [`watchdog`] and the
//!   kernel log ([`kmsg`]), each polled or timed by the loop;
//! - the update [`agent`], a supervised system service beside the containers.

mod agent;
mod assess;
mod caps;
mod checks;
pub mod containers;
mod health;
mod input;
mod kmsg;
mod lifecycle;
mod output;
mod pipes;
mod shell;
mod shutdown;
mod supervisor;
pub mod watchdog;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_format::{ImageConfig, Slot};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::net::dhcp_link::DhcpLink;
use crate::run::assess::Assessment;
use crate::run::health::{Health, Probes};
use crate::run::kmsg::Kmsg;
use crate::run::pipes::Stream;
use crate::run::shell::Shell;
use crate::run::shutdown::Shutdown;
use crate::run::supervisor::{ExitStatus, State, Supervisor};
use crate::shared::logfile::{self, LogFile, Rotation};
use crate::shared::power::{self, PowerAction};

/// The event loop could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// Signals could not be blocked or routed to a signalfd.
    #[error("setting up signal handling: {0}")]
    Signals(Errno),
}

/// Which pipe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stdout = 0,
    Stderr = 1,
}

/// What a polled descriptor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    Dhcp(usize),
    Button(usize),
    Output(usize, Pipe),
    AgentOutput(Pipe),
    Probes,
    Kmsg,
}

/// What the loop keeps for one container, beside the [`Supervisor`]'s state
/// machine: one value per container, so its parts cannot get out of step.
/// `EventLoop::containers` and the supervisor are both built from the recipe's
/// containers, in its order, and never change length: an index means the same
/// container in both.
#[derive(Debug)]
struct Managed {
    /// Its name in the recipe, also its id for crun.
    name: String,
    /// Its stdout and stderr while it runs.
    streams: [Option<Stream>; 2],
    /// Its log file, opened at its first start.
    log: Option<LogFile>,
    /// Its health check state, if it has a check.
    health: Option<Health>,
    /// Whether the boot assessment waits for it.
    critical: bool,
    /// Its named volumes.
    volumes: Vec<String>,
    /// Whether its root is writable.
    writable: bool,
    /// Its cgroup's OOM kill count when it last started.
    oom_kills: u64,
}

/// Blocks every signal for PID 1 (they are read from the signalfd instead).
/// Every child it starts must go through [`unblock_signals`].
pub fn block_signals() -> Result<(), LoopError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None).map_err(LoopError::Signals)
}

/// Gives a child of PID 1 an empty signal mask. A mask survives fork and exec,
/// and Rust's `Command` does not reset it, so without this a child inherits
/// PID 1's "everything blocked": the debug shell's commands ignore Ctrl-C and
/// the update agent never sees its SIGTERM (it is killed at the end of the
/// grace period instead).
pub fn unblock_signals(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and makes two
    // async-signal-safe calls (sigemptyset, sigprocmask) on a set on its own
    // stack, changing only the child's mask.
    unsafe {
        command.pre_exec(|| {
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// What the boot assessment needs: the mounted ESP and the booted slot.
#[derive(Debug, Clone)]
pub struct AssessmentInput {
    pub esp: PathBuf,
    pub slot: Slot,
}

/// Runs the containers of `config` until a shutdown completes, and the DHCP client
/// if there is one; assesses the boot when `assessment` is given; runs the
/// update agent (naming the device `device` in its reports) when `config` has
/// an update repository.
pub fn run(
    config: &ImageConfig,
    dhcp: Vec<DhcpLink>,
    assessment: Option<AssessmentInput>,
    device: &str,
) -> Result<std::convert::Infallible, LoopError> {
    let mut event_loop = EventLoop::new(config, dhcp, assessment, device)?;
    event_loop.run()
}

#[derive(Debug)]
struct EventLoop {
    supervisor: Supervisor,
    /// Per container, in the supervisor's order.
    containers: Vec<Managed>,
    signals: SignalFd,
    buttons: Vec<Option<File>>,
    dhcp: Vec<DhcpLink>,
    shutdown: Option<Shutdown>,
    probes: Option<Probes>,
    /// To begin once the containers were started.
    assessment_input: Option<AssessmentInput>,
    assessment: Option<Assessment>,
    version: String,
    health_timeout: Duration,
    shell: Option<Shell>,
    /// The update agent, on a device with an update repository.
    agent: Option<agent::Agent>,
    /// When the watchdog is next petted (none: no watchdog).
    watchdog: Option<Instant>,
    /// Log file rotation.
    rotation: Rotation,
    /// The kernel's ring buffer, copied to kernel.log.
    kmsg: Option<Kmsg>,
}

impl EventLoop {
    fn new(
        config: &ImageConfig,
        dhcp: Vec<DhcpLink>,
        assessment_input: Option<AssessmentInput>,
        device: &str,
    ) -> Result<EventLoop, LoopError> {
        block_signals()?;
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGPWR,
            Signal::SIGUSR1,
        ] {
            mask.add(signal);
        }
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(LoopError::Signals)?;
        // Ctrl-Alt-Del becomes SIGINT (reboot) instead of an immediate reboot.
        if let Err(errno) = nix::sys::reboot::set_cad_enabled(false) {
            log!("disabling Ctrl-Alt-Del: {errno}");
        }
        Ok(EventLoop {
            supervisor: Supervisor::new(&config.containers),
            containers: config
                .containers
                .iter()
                .map(|container| Managed {
                    name: container.name.clone(),
                    streams: [None, None],
                    log: None,
                    health: container.health.clone().map(Health::new),
                    critical: container.critical,
                    volumes: container.volumes.clone(),
                    writable: container.writable,
                    oom_kills: 0,
                })
                .collect(),
            signals,
            buttons: input::open_power_buttons(),
            dhcp,
            shutdown: None,
            probes: if config.containers.iter().any(|c| c.health.is_some()) {
                match Probes::new() {
                    Ok(probes) => Some(probes),
                    Err(errno) => {
                        log!("health checks: {errno}; no health checks will run");
                        None
                    }
                }
            } else {
                None
            },
            assessment_input,
            assessment: None,
            version: config.image.version.clone(),
            health_timeout: Duration::from_millis(config.update.health_timeout_ms),
            shell: config.debug.console_shell.then_some(Shell::Waiting {
                until: Instant::now(),
            }),
            agent: agent::Agent::new(config, device),
            watchdog: crate::run::watchdog::start(Instant::now()),
            rotation: rotation(config),
            kmsg: match Kmsg::open(Path::new(logfile::LOG_DIR), rotation(config)) {
                Ok(kmsg) => Some(kmsg),
                Err(err) => {
                    log!("/dev/kmsg: {err}; the kernel log is only on the console");
                    None
                }
            },
        })
    }

    fn run(&mut self) -> Result<std::convert::Infallible, LoopError> {
        loop {
            let now = Instant::now();
            for index in self.supervisor.due(now) {
                self.start(index);
            }
            if let Some(input) = self.assessment_input.take() {
                self.assessment = Assessment::begin(
                    &input.esp,
                    input.slot,
                    &self.version,
                    self.health_timeout,
                    Instant::now(),
                );
            }
            for dhcp in &mut self.dhcp {
                dhcp.on_timer(now);
            }
            if self.watchdog.is_some_and(|due| due <= now) {
                self.watchdog = crate::run::watchdog::pet(now);
            }
            self.shell_due(now);
            self.agent_due(now);
            if self.shutdown.is_none() {
                self.start_checks(now);
                self.assess(Instant::now());
            }
            self.kill_late_probes(now);
            if let Some(shutdown) = self.shutdown {
                if self.supervisor.running().is_empty()
                    || (shutdown.killed && now >= shutdown.deadline)
                {
                    power::finish(shutdown.action);
                }
                if now >= shutdown.deadline {
                    self.kill_remaining();
                }
            }
            let wakeup = match self.shutdown {
                Some(shutdown) => Some(
                    self.watchdog
                        .map_or(shutdown.deadline, |due| due.min(shutdown.deadline)),
                ),
                None => [
                    self.supervisor.next_wakeup(),
                    self.dhcp.iter().filter_map(DhcpLink::next_wakeup).min(),
                    self.watchdog,
                    self.containers
                        .iter()
                        .filter_map(|managed| managed.health.as_ref())
                        .filter_map(Health::next_due)
                        .min(),
                    self.probes.as_ref().and_then(Probes::next_deadline),
                    self.shell.and_then(Shell::due),
                    self.agent.as_ref().and_then(agent::Agent::due),
                    // While assessing, look again every second (containers
                    // count as up once they ran a while; a failed bless is
                    // tried again).
                    self.assessment.as_ref().map(|a| a.next_tick(now)),
                ]
                .into_iter()
                .flatten()
                .min(),
            };
            for (source, flags) in self.wait(wakeup) {
                match source {
                    Source::Signals => self.handle_signals(),
                    Source::Dhcp(index) => {
                        if let Some(dhcp) = self.dhcp.get_mut(index) {
                            dhcp.on_readable(Instant::now());
                        }
                    }
                    Source::Button(index) => self.handle_button(index),
                    Source::Probes => self.network_probes_done(),
                    Source::Kmsg => {
                        if let Some(kmsg) = self.kmsg.as_mut() {
                            kmsg.drain();
                        }
                    }
                    Source::Output(index, pipe) => {
                        if flags
                            .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        {
                            self.pump(index, pipe, false);
                        }
                    }
                    Source::AgentOutput(pipe) => {
                        if flags
                            .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        {
                            self.pump_agent(pipe, false);
                        }
                    }
                }
            }
        }
    }

    /// Polls every source until one is ready or `wakeup` comes; returns the ready
    /// ones.
    fn wait(&self, wakeup: Option<Instant>) -> Vec<(Source, PollFlags)> {
        let mut sources = vec![Source::Signals];
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.signals.as_fd()];
        for (index, dhcp) in self.dhcp.iter().enumerate() {
            sources.push(Source::Dhcp(index));
            fds.push(dhcp.fd());
        }
        for (index, button) in self.buttons.iter().enumerate() {
            if let Some(file) = button {
                sources.push(Source::Button(index));
                fds.push(file.as_fd());
            }
        }
        if let Some(probes) = &self.probes {
            sources.push(Source::Probes);
            fds.push(probes.fd());
        }
        if let Some(kmsg) = &self.kmsg {
            sources.push(Source::Kmsg);
            fds.push(kmsg.fd());
        }
        for (index, managed) in self.containers.iter().enumerate() {
            for (pipe, stream) in [Pipe::Stdout, Pipe::Stderr]
                .into_iter()
                .zip(&managed.streams)
            {
                if let Some(stream) = stream {
                    sources.push(Source::Output(index, pipe));
                    fds.push(stream.fd());
                }
            }
        }
        if let Some(agent) = &self.agent {
            for (pipe, stream) in [Pipe::Stdout, Pipe::Stderr].into_iter().zip(&agent.streams) {
                if let Some(stream) = stream {
                    sources.push(Source::AgentOutput(pipe));
                    fds.push(stream.fd());
                }
            }
        }
        let mut poll_fds: Vec<PollFd<'_>> = fds
            .into_iter()
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut poll_fds, poll_timeout(wakeup, Instant::now())) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Vec::new(),
            Err(errno) => {
                // Should not happen; do not spin if it does.
                log!("poll: {errno}");
                std::thread::sleep(Duration::from_millis(100));
                return Vec::new();
            }
        }
        sources
            .into_iter()
            .zip(&poll_fds)
            .filter_map(|(source, fd)| {
                let flags = fd.revents()?;
                (!flags.is_empty()).then_some((source, flags))
            })
            .collect()
    }

    fn handle_signals(&mut self) {
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(errno) => {
                    log!("reading signals: {errno}");
                    break;
                }
            };
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|number| Signal::try_from(number).ok());
            match signal {
                Some(Signal::SIGCHLD) => {}
                Some(Signal::SIGTERM) => {
                    self.begin_shutdown(PowerAction::PowerOff, "SIGTERM received")
                }
                Some(Signal::SIGPWR) => {
                    self.begin_shutdown(PowerAction::PowerOff, "SIGPWR received")
                }
                Some(Signal::SIGINT) => self.begin_shutdown(PowerAction::Reboot, "SIGINT received"),
                Some(Signal::SIGUSR1) => self.log_status(),
                _ => {}
            }
        }
        // SIGCHLDs coalesce, and a child may end between two reads: always reap.
        self.reap();
    }

    /// Reaps every child that ended: containers' runtime processes, and orphans
    /// the kernel reparented to PID 1.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ExitStatus::Signal(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    log!("waitpid: {errno}");
                    return;
                }
            };
            if let Some(index) = self.supervisor.find_pid(pid.as_raw()) {
                self.container_exited(index, status);
                continue;
            }
            if let Some(probe) = self
                .probes
                .as_mut()
                .and_then(|probes| probes.take_exec(pid.as_raw()))
            {
                let result = match status {
                    _ if probe.timed_out => Err(format!(
                        "check timed out after {} ms",
                        self.containers
                            .get(probe.index)
                            .and_then(|managed| managed.health.as_ref())
                            .map_or(0, |h| h.timeout().as_millis())
                    )),
                    ExitStatus::Code(0) => Ok(()),
                    other => Err(format!("check {other}")),
                };
                self.check_ended(probe.index, probe.run, result);
                continue;
            }
            if self.agent.as_ref().and_then(agent::Agent::pid) == Some(pid.as_raw()) {
                self.agent_exited(status);
                continue;
            }
            if self.shell.and_then(Shell::pid) == Some(pid.as_raw()) {
                log!("debug shell {status}; starting it again");
                self.shell = Some(Shell::Waiting {
                    until: Instant::now() + shell::RESPAWN_DELAY,
                });
            }
        }
    }

    fn log_status(&self) {
        let now = Instant::now();
        for container in self.supervisor.containers() {
            let state = match container.state {
                State::Pending => "pending".to_string(),
                State::Running { pid, since, .. } => format!(
                    "running (pid {pid}, for {} s)",
                    now.saturating_duration_since(since).as_secs()
                ),
                State::Waiting { until } => format!(
                    "restarting in {} ms",
                    until.saturating_duration_since(now).as_millis()
                ),
                State::Stopped => "stopped".to_string(),
            };
            log!("container {} {state}", container.name);
        }
    }
}

/// The recipe's log rotation.
pub fn rotation(config: &ImageConfig) -> Rotation {
    Rotation {
        max_size: config.logs.max_size.max(4096),
        keep: config.logs.keep.max(1),
    }
}

/// Milliseconds until `wakeup`, rounded up so the loop does not wake just before
/// the moment and spin; no wakeup means wait for an event.
fn poll_timeout(wakeup: Option<Instant>, now: Instant) -> PollTimeout {
    let Some(wakeup) = wakeup else {
        return PollTimeout::NONE;
    };
    let micros = wakeup.saturating_duration_since(now).as_micros();
    let millis = micros.div_ceil(1000);
    PollTimeout::try_from(i32::try_from(millis).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `SigBlk` line of a child started from a thread that blocks SIGUSR1.
    fn child_mask(unblocked: bool) -> String {
        std::thread::spawn(move || {
            let mut usr1 = SigSet::empty();
            usr1.add(Signal::SIGUSR1);
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr1), None)
                .expect("blocking SIGUSR1 in this thread");
            let mut command = Command::new("grep");
            command.args(["SigBlk", "/proc/self/status"]);
            if unblocked {
                unblock_signals(&mut command);
            }
            let output = command.output().expect("running grep");
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        })
        .join()
        .expect("the thread")
    }

    #[test]
    fn children_start_with_no_signal_blocked() {
        // Without it the child inherits the mask: the reason the init needs
        // it (should a later std reset the mask, this still checks ours).
        let inherited = child_mask(false);
        assert!(
            ["SigBlk:\t0000000000000200", "SigBlk:\t0000000000000000"]
                .contains(&inherited.as_str()),
            "{inherited}"
        );
        // With it nothing is blocked.
        assert_eq!(child_mask(true), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn poll_timeout_rounds_up() {
        let now = Instant::now();
        assert_eq!(poll_timeout(None, now), PollTimeout::NONE);
        assert_eq!(poll_timeout(Some(now), now), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Some(now + Duration::from_micros(1500)), now),
            PollTimeout::try_from(2).unwrap()
        );
        // A wakeup in the past polls without waiting.
        assert_eq!(
            poll_timeout(Some(now), now + Duration::from_secs(1)),
            PollTimeout::ZERO
        );
    }
}
