//! The update agent as a system service: on an image (or device) with an update
//! repository, `berth-update daemon` runs beside the containers. It is not a
//! container: it needs the block devices, the ESP and the state on the data
//! partition. The init starts it, reads its output like a container's (each line
//! on the console as `[berth-update] …` and in `/var/log/berth/berth-update.log`),
//! restarts it with a growing delay when it ends, and stops it at shutdown.
//!
//! It can never hold up the containers' supervision: its pipes are non-blocking
//! and read within the same budget as a container's, and it runs at a lower CPU
//! and I/O priority (nice 10, best-effort I/O class at its lowest level), so an
//! install competes with the containers only for what they leave.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_format::image_config::{DEFAULT_CHANNEL, DEFAULT_INTERVAL_S};
use berth_format::layout::{KEYS_DIR, UPDATE_AGENT_PATH};
use berth_format::ImageConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pipes::{stream, Stream};
use super::supervisor::ExitStatus;
use super::EventLoop;
use crate::shared::logfile::{self, LogFile};

/// The service's name: its console prefix and log file.
pub const NAME: &str = "berth-update";

/// First restart delay; doubles with each quick exit up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(5);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);
/// A run this long counts as healthy: the next restart starts from the first
/// delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(600);

/// Its nice value: below the containers (0).
const NICE: libc::c_int = 10;

/// The agent's process, or when to start it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running {
        pid: i32,
        since: Instant,
    },
    Waiting {
        until: Instant,
    },
    /// Shutdown began: never again.
    Stopped,
}

/// The update agent service.
#[derive(Debug)]
pub struct Agent {
    /// `daemon` and its settings.
    args: Vec<String>,
    pub(super) state: State,
    /// The next restart delay.
    delay: Duration,
    pub(super) streams: [Option<Stream>; 2],
    pub(super) log: Option<LogFile>,
}

/// The agent's command line from the image configuration (with the provisioning
/// file applied), or why the device runs no agent.
pub fn command_line(config: &ImageConfig, keys_dir: &Path) -> Result<Vec<String>, String> {
    let update = &config.update;
    let Some(repository) = &update.repository else {
        return Err("no update repository".into());
    };
    let has_keys = std::fs::read_dir(keys_dir)
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".pub"))
        })
        .unwrap_or(false);
    if !has_keys {
        return Err(format!(
            "update repository {repository} but no trusted key in {}: no update agent",
            keys_dir.display()
        ));
    }
    let mut args = vec![
        "daemon".to_string(),
        "--repo".into(),
        repository.clone(),
        "--channel".into(),
        update
            .channel
            .clone()
            .unwrap_or_else(|| DEFAULT_CHANNEL.to_string()),
        "--interval".into(),
        update.interval_s.unwrap_or(DEFAULT_INTERVAL_S).to_string(),
        "--reboot".into(),
        update.reboot.clone().unwrap_or_else(|| "auto".into()),
    ];
    if let Some(report) = &update.report {
        args.extend(["--report".into(), report.clone()]);
    }
    if let Some(tries) = update.tries {
        args.extend(["--tries".into(), tries.to_string()]);
    }
    Ok(args)
}

impl Agent {
    /// The service for `config`, due to start now; `None` when the device runs no
    /// agent (logged when it has a repository but cannot run one).
    pub fn new(config: &ImageConfig, device: &str) -> Option<Agent> {
        match command_line(config, Path::new(KEYS_DIR)) {
            Ok(mut args) => {
                args.extend(["--device".into(), device.to_string()]);
                Some(Agent {
                    args,
                    state: State::Waiting {
                        until: Instant::now(),
                    },
                    delay: FIRST_RESTART_DELAY,
                    streams: [None, None],
                    log: None,
                })
            }
            Err(why) => {
                if config.update.repository.is_some() {
                    log!("{why}");
                }
                None
            }
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// When it is due to start again.
    pub fn due(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// Records its end (or a failed start); returns the delay before it starts
    /// again.
    fn ended(&mut self, now: Instant) -> Duration {
        let ran = match self.state {
            State::Running { since, .. } => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        if ran >= HEALTHY_RUN {
            self.delay = FIRST_RESTART_DELAY;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_RESTART_DELAY);
        self.state = State::Waiting { until: now + delay };
        delay
    }
}

/// Starts the agent with its output into two pipes, at a lower priority.
fn spawn(args: &[String]) -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
    let mut command = Command::new(UPDATE_AGENT_PATH);
    super::unblock_signals(&mut command)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // two async-signal-safe system calls (setpriority, ioprio_set) on itself,
    // touching no memory of the parent. Failing to lower the priority is not an
    // error: the agent then runs at the containers' priority.
    unsafe {
        command.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
            // IOPRIO_WHO_PROCESS = 1; class best-effort (2) << 13, level 7 (lowest).
            libc::syscall(libc::SYS_ioprio_set, 1, 0, (2 << 13) | 7);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("no pipes from the update agent"));
    };
    // Dropping `child` neither kills nor waits: the event loop reaps it by pid.
    drop(child);
    Ok((pid, OwnedFd::from(stdout), OwnedFd::from(stderr)))
}

impl EventLoop {
    /// Starts the agent when it is due.
    pub(super) fn agent_due(&mut self, now: Instant) {
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        if agent.due().is_none_or(|until| until > now) || self.shutdown.is_some() {
            return;
        }
        match spawn(&agent.args) {
            Ok((pid, stdout, stderr)) => {
                log!("update agent started (pid {pid}): {}", agent.args.join(" "));
                agent.streams = [stream(stdout), stream(stderr)];
                if agent.log.is_none() {
                    agent.log = Some(LogFile::open(
                        Path::new(logfile::LOG_DIR),
                        NAME,
                        self.rotation,
                    ));
                }
                agent.state = State::Running { pid, since: now };
            }
            Err(err) => {
                let delay = agent.ended(now);
                log!(
                    "update agent {UPDATE_AGENT_PATH}: {err}; trying again in {} s",
                    delay.as_secs()
                );
            }
        }
    }

    /// The agent ended: its last output, then a restart after a delay (none
    /// during a shutdown).
    pub(super) fn agent_exited(&mut self, status: ExitStatus) {
        for pipe in [super::Pipe::Stdout, super::Pipe::Stderr] {
            self.pump_agent(pipe, true);
        }
        let stopping = self.shutdown.is_some();
        let Some(agent) = self.agent.as_mut() else {
            return;
        };
        if stopping {
            agent.state = State::Stopped;
            return;
        }
        let delay = agent.ended(Instant::now());
        log!(
            "update agent ended ({status}); starting it again in {} s",
            delay.as_secs()
        );
    }

    /// At shutdown: TERM to the agent (an install it interrupts is safe by
    /// design: the slot it writes is not bootable before the commit point).
    pub(super) fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            if let Some(pid) = agent.pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            if agent.pid().is_none() {
                agent.state = State::Stopped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(update: &str) -> ImageConfig {
        ImageConfig::parse(&format!(
            "[image]\nname='a'\nversion='1.0.0'\ncompatible='a'\nhostname='a'\n[update]\n{update}"
        ))
        .unwrap()
    }

    #[test]
    fn runs_only_with_a_repository_and_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let err = command_line(&config(""), &keys).unwrap_err();
        assert!(err.contains("no update repository"), "{err}");
        let with_repo = config("repository = 'http://10.0.2.2:8080/repo'\n");
        let err = command_line(&with_repo, &keys).unwrap_err();
        assert!(err.contains("no trusted key"), "{err}");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("release.pub"), "key").unwrap();
        assert_eq!(
            command_line(&with_repo, &keys).unwrap(),
            [
                "daemon",
                "--repo",
                "http://10.0.2.2:8080/repo",
                "--channel",
                "stable",
                "--interval",
                "1800",
                "--reboot",
                "auto"
            ]
        );
        let custom = config(
            "repository = 'http://r/'\nchannel = 'beta'\ninterval_s = 60\nreboot = 'manual'\nreport = 'http://f/'\ntries = 1\n",
        );
        let args = command_line(&custom, &keys).unwrap().join(" ");
        assert_eq!(
            args,
            "daemon --repo http://r/ --channel beta --interval 60 --reboot manual --report http://f/ --tries 1"
        );
    }

    #[test]
    fn restarts_back_off_and_recover_after_a_healthy_run() {
        let mut agent = Agent {
            args: Vec::new(),
            state: State::Stopped,
            delay: FIRST_RESTART_DELAY,
            streams: [None, None],
            log: None,
        };
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..8 {
            agent.state = State::Running { pid: 2, since: t0 };
            delays.push(agent.ended(t0 + Duration::from_secs(1)).as_secs());
        }
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        agent.state = State::Running { pid: 2, since: t0 };
        assert_eq!(agent.ended(t0 + HEALTHY_RUN), FIRST_RESTART_DELAY);
    }
}
