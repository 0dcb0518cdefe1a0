//! Health checks and the boot assessment as the loop drives them: due checks
//! started, late exec probes killed, each result fed to its container's
//! [`Health`] (an unhealthy container is killed and restarted), and a boot on
//! trial blessed or failed once [`assess::decide`] says so.
//!
//! [`Health`]: health::Health

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::assess::{self, Decision};
use super::health::{self, Probes, Transition};
use super::EventLoop;
use crate::shared::power::PowerAction;

impl EventLoop {
    /// Starts the health checks that are due.
    pub(super) fn start_checks(&mut self, now: Instant) {
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
    pub(super) fn kill_late_probes(&mut self, now: Instant) {
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

    pub(super) fn network_probes_done(&mut self) {
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
    pub(super) fn check_ended(&mut self, index: usize, run: u64, result: Result<(), String>) {
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
    pub(super) fn assess(&mut self, now: Instant) {
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
}
