//! A container's life as the loop runs it: its host side prepared, `crun run`
//! started with its output into two pipes, its end reaped and logged (with the
//! OOM killer's part), and the signals of a health failure or a shutdown sent
//! through `crun kill`. When it starts again is the [`Supervisor`]'s decision.
//!
//! [`Supervisor`]: super::supervisor::Supervisor

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_format::{layout, RestartPolicy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::containers::{self, WritableRoot};
use super::pipes::stream;
use super::supervisor::{AfterExit, ExitStatus};
use super::{EventLoop, Pipe};
use crate::shared::logfile::{self, LogFile};

/// How long one `crun kill`/`crun delete` may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where crun keeps its container state (its default as root).
const CRUN_STATE_DIR: &str = "/run/crun";

/// `PATH` for the runtime and its hooks.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A restart policy as the recipe spells it.
fn policy_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

/// Starts `crun run --bundle <bundle> <name>` (the bundle with the
/// provisioned environment when there is one) with stdin from /dev/null and
/// its output into two pipes. Returns the runtime's pid and the pipes' read
/// ends.
fn spawn_container(name: &str) -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
    let mut child = super::unblock_signals(&mut Command::new(layout::CRUN_PATH))
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

/// Runs `crun <args>` to completion (at most [`HELPER_TIMEOUT`]), its output on the
/// console. Returns whether it succeeded.
fn run_helper(args: &[&str]) -> bool {
    let spawned = super::unblock_signals(&mut Command::new(layout::CRUN_PATH))
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

impl EventLoop {
    pub(super) fn start(&mut self, index: usize) {
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

    pub(super) fn container_exited(&mut self, index: usize, status: ExitStatus) {
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

    /// `crun kill <name> <signal>`; when crun cannot (the container is not created
    /// yet, or crun is gone), the signal goes to the runtime process itself.
    pub(super) fn signal_container(&self, index: usize, crun_name: &str, signal: Signal) {
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use berth_format::ImageConfig;

    use super::*;

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
