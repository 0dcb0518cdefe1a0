//! The main stage's event loop: one thread, one `poll` over a signalfd, the power
//! button and every container's output pipes, with a timeout for the next pending
//! restart or the end of the shutdown grace period. Decisions come from
//! [`Supervisor`]; this module does the I/O around them.
//!
//! The loop starts each container in turn ([`containers`] prepares its host side,
//! the [`supervisor`] decides when), prints and logs its [`output`], runs its
//! [`health`] checks, [`assess`]es a boot on trial, pets the [`watchdog`], copies
//! the kernel log ([`kmsg`]), keeps the debug [`shell`] alive and watches the
//! power button ([`input`]) and signals until a shutdown, whose last steps are
//! [`crate::shared::power`]'s.

mod assess;
pub mod containers;
mod health;
mod input;
mod kmsg;
mod output;
mod shell;
mod supervisor;
pub mod watchdog;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_format::{layout, ImageConfig, RestartPolicy, Slot};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::net::dhcp_link::DhcpLink;
use crate::run::assess::{Assessment, Decision};
use crate::run::containers::WritableRoot;
use crate::run::health::{Health, Probes, Transition};
use crate::run::kmsg::Kmsg;
use crate::run::output::LineSplitter;
use crate::run::shell::Shell;
use crate::run::supervisor::{AfterExit, ExitStatus, State, Supervisor};
use crate::shared::logfile::{self, LogFile, Rotation};
use crate::shared::power::{self, PowerAction};

/// How long containers get between `crun kill … TERM` and `crun kill … KILL`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// How long a shutdown waits for the console to send its queued lines before it
/// kills the debug shell (see [`crate::log::drain_console`]). Enough for a few
/// KiB at 115200 baud.
const CONSOLE_DRAIN: Duration = Duration::from_millis(500);
/// How long killed containers get to be reaped (and logged) before the final steps.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long one `crun kill`/`crun delete` may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);
/// Where crun keeps its container state (its default as root).
const CRUN_STATE_DIR: &str = "/run/crun";
/// `PATH` for the runtime and its hooks.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes read from one pipe per wakeup, so one chatty container cannot starve the
/// others (or the signals).
const READ_BUDGET: usize = 64 * 1024;

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
    Probes,
    Kmsg,
}

/// One pipe of a running container and the line it is in the middle of.
#[derive(Debug)]
struct Stream {
    pipe: File,
    lines: LineSplitter,
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

/// A shutdown in progress.
#[derive(Debug, Clone, Copy)]
struct Shutdown {
    action: PowerAction,
    /// Containers were sent TERM (false) or, after the grace period, KILL (true).
    killed: bool,
    /// End of the grace period, or of the wait for the killed containers.
    deadline: Instant,
}

/// Blocks every signal for PID 1 (they are read from the signalfd instead). Child
/// processes start with an empty mask: Rust's `Command` resets it before exec.
pub fn block_signals() -> Result<(), LoopError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None).map_err(LoopError::Signals)
}

/// What the boot assessment needs: the mounted ESP and the booted slot.
#[derive(Debug, Clone)]
pub struct AssessmentInput {
    pub esp: PathBuf,
    pub slot: Slot,
}

/// Runs the containers of `config` until a shutdown completes, and the DHCP client
/// if there is one; assesses the boot when `assessment` is given.
pub fn run(
    config: &ImageConfig,
    dhcp: Vec<DhcpLink>,
    assessment: Option<AssessmentInput>,
) -> Result<std::convert::Infallible, LoopError> {
    let mut event_loop = EventLoop::new(config, dhcp, assessment)?;
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
            buttons: open_power_buttons(),
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
                    // While assessing, look again every second (critical
                    // containers without checks count once they ran a while).
                    self.assessment
                        .as_ref()
                        .map(|a| a.deadline().min(now + Duration::from_secs(1))),
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
                    fds.push(stream.pipe.as_fd());
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

    fn handle_button(&mut self, index: usize) {
        let Some(Some(file)) = self.buttons.get_mut(index) else {
            return;
        };
        let mut buf = [0u8; input::EVENT_SIZE * 16];
        let mut pressed = false;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    pressed |= input::parse_events(&buf[..n])
                        .iter()
                        .any(input::InputEvent::is_power_press);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    log!("power button: {err}; no longer watching it");
                    self.buttons[index] = None;
                    break;
                }
            }
        }
        if pressed {
            self.begin_shutdown(PowerAction::PowerOff, "power button pressed");
        }
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
            if self.shell.and_then(Shell::pid) == Some(pid.as_raw()) {
                self.shell = Some(Shell::Waiting {
                    until: Instant::now() + shell::RESPAWN_DELAY,
                });
            }
        }
    }

    fn container_exited(&mut self, index: usize, status: ExitStatus) {
        // Its last words first: drain the pipes before the exit line.
        self.pump(index, Pipe::Stdout, true);
        self.pump(index, Pipe::Stderr, true);
        let name = self.name(index);
        log!("container {name} {status}");
        let mut managed = self.containers.get_mut(index);
        let before = managed.as_ref().map_or(0, |managed| managed.oom_kills);
        if let Some(now) = containers::oom_kills(&name) {
            if now > before {
                log!(
                    "container {name} was killed by the kernel's OOM killer (memory limit reached)"
                );
            }
            if let Some(managed) = managed.as_mut() {
                managed.oom_kills = now;
            }
        }
        if let Some(health) = managed.and_then(|managed| managed.health.as_mut()) {
            health.stopped();
        }
        let after = self.supervisor.exited(index, status, Instant::now());
        self.log_after_exit(index, &name, after);
    }

    fn log_after_exit(&self, index: usize, name: &str, after: AfterExit) {
        match after {
            AfterExit::Restart(delay) => {
                log!("restarting container {name} in {} ms", delay.as_millis());
            }
            AfterExit::Stay if self.shutdown.is_none() => {
                let policy = self
                    .supervisor
                    .container(index)
                    .map_or("?", |container| policy_name(container.policy));
                log!("container {name} stays stopped (restart = \"{policy}\")");
            }
            AfterExit::Stay => {}
        }
    }

    fn name(&self, index: usize) -> String {
        self.containers
            .get(index)
            .map_or_else(String::new, |managed| managed.name.clone())
    }

    /// Reads what a container's pipe holds and prints it line by line. At end of
    /// stream, or when `closing` (the container ended), the pipe is closed after
    /// the last partial line.
    fn pump(&mut self, index: usize, pipe: Pipe, closing: bool) {
        let Some(managed) = self.containers.get_mut(index) else {
            return;
        };
        let Managed {
            name, streams, log, ..
        } = managed;
        let Some(stream) = streams[pipe as usize].as_mut() else {
            return;
        };
        let mut emit = |line: &[u8]| {
            crate::log::write_console(&output::prefixed(name, line));
            if let Some(log) = log.as_mut() {
                log.write_line(line);
            }
        };
        let mut buf = [0u8; 4096];
        // At the end, take everything that is there (within reason: a leftover
        // process of the container could keep writing).
        let mut budget = if closing {
            16 * READ_BUDGET
        } else {
            READ_BUDGET
        };
        let mut eof = false;
        while budget > 0 {
            match stream.pipe.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    stream.lines.push(&buf[..n], &mut emit);
                    budget = budget.saturating_sub(n);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof || closing {
            stream.lines.finish(&mut emit);
            streams[pipe as usize] = None;
        }
    }

    fn start(&mut self, index: usize) {
        let Some(managed) = self.containers.get(index) else {
            return;
        };
        let name = managed.name.clone();
        // A runtime killed before it cleaned up leaves its state behind, and
        // `crun run` refuses an existing id.
        if Path::new(CRUN_STATE_DIR).join(&name).exists() {
            run_helper(&["delete", "--force", &name]);
        }
        self.prepare(index, &name);
        log!("starting container {name}");
        let now = Instant::now();
        match spawn_container(&name) {
            Ok((pid, stdout, stderr)) => {
                let streams = [stream(stdout), stream(stderr)];
                if let Some(managed) = self.containers.get_mut(index) {
                    managed.streams = streams;
                    if managed.log.is_none() {
                        managed.log = Some(LogFile::open(
                            Path::new(logfile::LOG_DIR),
                            &name,
                            self.rotation,
                        ));
                    }
                }
                // The benchmark's "first container running" milestone.
                log!(
                    "container {name} started (pid {pid}) at {} ms since boot",
                    crate::log::since_boot_ms()
                );
                self.supervisor.started(index, pid, now);
                if let Some(health) = self
                    .containers
                    .get_mut(index)
                    .and_then(|managed| managed.health.as_mut())
                {
                    health.started(now);
                }
            }
            Err(err) => {
                log!("container {name} could not be started: {err}");
                let after = self.supervisor.start_failed(index, now);
                self.log_after_exit(index, &name, after);
            }
        }
    }

    /// Its cgroup parent, volume folders and writable root; each failure is
    /// logged and the start goes on (the runtime reports what is missing).
    fn prepare(&mut self, index: usize, name: &str) {
        if let Err(err) = containers::cgroup(name) {
            log!("container {name}: {err}");
        }
        let Some(managed) = self.containers.get_mut(index) else {
            return;
        };
        if let Some(count) = containers::oom_kills(name) {
            managed.oom_kills = count;
        }
        if let Err(err) = containers::volumes(&managed.volumes) {
            log!("container {name}: {err}");
        }
        if managed.writable {
            match containers::writable_root(name, &self.version) {
                Ok(WritableRoot::Fresh {
                    previous: Some(previous),
                }) => log!(
                    "container {name}: writable layer of {previous} wiped (image is now {})",
                    self.version
                ),
                Ok(_) => {}
                Err(err) => log!("container {name}: writable root: {err}"),
            }
        }
    }

    fn begin_shutdown(&mut self, action: PowerAction, why: &str) {
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
        log!("stopping containers");
        self.shutdown = Some(Shutdown {
            action,
            killed: false,
            deadline: Instant::now() + GRACE_PERIOD,
        });
        for index in self.supervisor.stop_all() {
            self.signal_container(index, "TERM", Signal::SIGTERM);
        }
    }

    /// Starts the health checks that are due.
    fn start_checks(&mut self, now: Instant) {
        let Some(probes) = self.probes.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        for (index, managed) in self.containers.iter_mut().enumerate() {
            let Some(health) = managed.health.as_mut() else {
                continue;
            };
            if !health.is_due(now) {
                continue;
            }
            let Some(container) = self.supervisor.container(index) else {
                continue;
            };
            let run = container.run();
            health.check_started();
            if let Err(reason) = probes.start(index, &container.name, run, health, now) {
                failed.push((index, run, reason));
            }
        }
        for (index, run, reason) in failed {
            self.check_ended(index, run, Err(reason));
        }
    }

    /// Kills exec checks that ran past their timeout (their exit is reaped and
    /// counted as a failure).
    fn kill_late_probes(&mut self, now: Instant) {
        let Some(probes) = self.probes.as_mut() else {
            return;
        };
        for probe in probes.exec.iter_mut() {
            if !probe.timed_out && now >= probe.deadline {
                probe.timed_out = true;
                let _ = kill(Pid::from_raw(probe.pid), Signal::SIGKILL);
            }
        }
    }

    fn network_probes_done(&mut self) {
        let results = self
            .probes
            .as_ref()
            .map(Probes::finished)
            .unwrap_or_default();
        for result in results {
            self.check_ended(result.index, result.run, result.result);
        }
    }

    /// A health check of container `index`'s run `run` ended.
    fn check_ended(&mut self, index: usize, run: u64, result: Result<(), String>) {
        let Some(container) = self.supervisor.container(index) else {
            return;
        };
        if container.run() != run || run == 0 {
            // The container stopped or restarted since: a stale result.
            return;
        }
        let name = container.name.clone();
        let Some(health) = self
            .containers
            .get_mut(index)
            .and_then(|managed| managed.health.as_mut())
        else {
            return;
        };
        match health.check_ended(Instant::now(), result) {
            None => {}
            Some(Transition::BecameHealthy) => log!("container {name} is healthy"),
            Some(Transition::BecameUnhealthy(reason)) => {
                log!("container {name} is unhealthy: {reason}");
                if self.shutdown.is_none() {
                    self.supervisor.restart_on_exit(index);
                    self.signal_container(index, "KILL", Signal::SIGKILL);
                }
            }
        }
    }

    /// Why the boot is not healthy yet (`None`: it is). With critical containers:
    /// each is running and its health check passed (without a check: it has run
    /// for a moment). Without: every container was started.
    fn unhealthy_reason(&self, now: Instant) -> Option<String> {
        let critical: Vec<usize> = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, managed)| managed.critical)
            .map(|(index, _)| index)
            .collect();
        if critical.is_empty() {
            return self
                .supervisor
                .containers()
                .iter()
                .find(|container| !container.ever_started)
                .map(|container| format!("container {} has not started", container.name));
        }
        for index in critical {
            let container = self.supervisor.container(index)?;
            let name = &container.name;
            let since = container.running_since();
            let health = self
                .containers
                .get(index)
                .and_then(|managed| managed.health.as_ref());
            match (health, since) {
                (health, None) => {
                    return Some(match health.and_then(|h| h.last_error.as_ref()) {
                        Some(error) => {
                            format!("container {name} is not running (last check: {error})")
                        }
                        None => format!("container {name} is not running"),
                    })
                }
                (Some(health), Some(_)) if health.status != health::Status::Healthy => {
                    return Some(match &health.last_error {
                        Some(error) => format!("container {name} is not healthy: {error}"),
                        None => format!("container {name} has not passed a health check yet"),
                    })
                }
                (None, Some(since))
                    if now.saturating_duration_since(since) < health::RUNNING_IS_HEALTHY_AFTER =>
                {
                    return Some(format!(
                        "container {name} has not run for {} s yet",
                        health::RUNNING_IS_HEALTHY_AFTER.as_secs()
                    ))
                }
                _ => {}
            }
        }
        None
    }

    /// Blesses the booted slot once healthy, or reboots when its time is up.
    fn assess(&mut self, now: Instant) {
        let Some(assessment) = &self.assessment else {
            return;
        };
        let reason = self.unhealthy_reason(now);
        let elapsed = now.saturating_duration_since(assessment.start);
        match assess::decide(
            Some(assessment.counter),
            reason.is_none(),
            elapsed,
            assessment.timeout,
        ) {
            Decision::Nothing | Decision::Wait => {}
            Decision::Bless => {
                assessment.bless();
                self.assessment = None;
            }
            Decision::Reboot => {
                let line = assessment.fail(reason.as_deref().unwrap_or("unknown"));
                log!("{line}");
                self.assessment = None;
                self.begin_shutdown(PowerAction::Reboot, "boot assessment failed");
            }
        }
    }

    /// Starts the debug shell when it is due.
    fn shell_due(&mut self, now: Instant) {
        let Some(Shell::Waiting { until }) = self.shell else {
            return;
        };
        if until > now || self.shutdown.is_some() {
            return;
        }
        match shell::spawn() {
            Ok(pid) => self.shell = Some(Shell::Running { pid }),
            Err(err) => {
                log!("debug shell {}: {err}", shell::SHELL);
                self.shell = Some(Shell::Waiting {
                    until: now + shell::RESPAWN_DELAY * 10,
                });
            }
        }
    }

    /// After the grace period: KILL what still runs (the final `kill(-1)` in
    /// [`power::finish`] catches the rest).
    fn kill_remaining(&mut self) {
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

    /// `crun kill <name> <signal>`; when crun cannot (the container is not created
    /// yet, or crun is gone), the signal goes to the runtime process itself.
    fn signal_container(&self, index: usize, crun_name: &str, signal: Signal) {
        let Some(container) = self.supervisor.container(index) else {
            return;
        };
        let Some(pid) = container.pid() else {
            return;
        };
        if !run_helper(&["kill", &container.name, crun_name]) {
            let _ = kill(Pid::from_raw(pid), signal);
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

/// A restart policy as the recipe spells it.
fn policy_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
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

fn open_power_buttons() -> Vec<Option<File>> {
    let paths = input::find_power_buttons(Path::new("/sys"), Path::new("/dev"));
    if paths.is_empty() {
        log!(
            "no power button input device (kernel modules button and evdev): \
             ACPI power-off requests will not be seen"
        );
    }
    paths
        .iter()
        .filter_map(|path| match input::open(path) {
            Ok(file) => Some(Some(file)),
            Err(err) => {
                log!("opening power button {}: {err}", path.display());
                None
            }
        })
        .collect()
}

/// Starts `crun run --bundle <bundle> <name>` (the bundle with the
/// provisioned environment when there is one) with stdin from /dev/null and
/// its output into two pipes. Returns the runtime's pid and the pipes' read
/// ends.
fn spawn_container(name: &str) -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
    let mut child = Command::new(layout::CRUN_PATH)
        .arg("run")
        .arg("--bundle")
        .arg(crate::system::envmerge::bundle(name))
        .arg(name)
        .env_clear()
        .env("PATH", PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("no pipes from the runtime"));
    };
    // Dropping `child` neither kills nor waits: the event loop reaps it by pid.
    drop(child);
    Ok((pid, OwnedFd::from(stdout), OwnedFd::from(stderr)))
}

fn stream(fd: OwnedFd) -> Option<Stream> {
    if let Err(errno) = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
        log!("making a container pipe non-blocking: {errno}");
        return None;
    }
    Some(Stream {
        pipe: File::from(fd),
        lines: LineSplitter::default(),
    })
}

/// Runs `crun <args>` to completion (at most [`HELPER_TIMEOUT`]), its output on the
/// console. Returns whether it succeeded.
fn run_helper(args: &[&str]) -> bool {
    let spawned = Command::new(layout::CRUN_PATH)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            log!("running crun {}: {err}", args.join(" "));
            return false;
        }
    };
    wait_helper(&mut child, args)
}

fn wait_helper(child: &mut Child, args: &[&str]) -> bool {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                log!("crun {} timed out", args.join(" "));
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Err(err) => {
                log!("waiting for crun {}: {err}", args.join(" "));
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn policy_names_match_the_recipe() {
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            let toml = format!("[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n[[container]]\nname='c'\nrestart='{}'\n", policy_name(policy));
            assert_eq!(
                ImageConfig::parse(&toml).unwrap().containers[0].restart,
                policy
            );
        }
    }

    #[test]
    fn bundles_live_under_the_containers_folder() {
        assert_eq!(
            crate::system::envmerge::bundle("web"),
            PathBuf::from("/usr/lib/berth/containers/web")
        );
    }
}
