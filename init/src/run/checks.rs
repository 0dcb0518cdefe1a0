//! Health checks and the boot assessment as the loop drives them: due checks
//! started, late exec probes killed, each result fed to its container's
//! [`Health`] (an unhealthy container is killed and restarted), and a boot on
//! trial blessed or failed once [`assess::decide`] says so.
//!
//! [`Health`]: super::health::Health

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::assess::{self, Tick};
use super::health::{Probes, Transition};
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

    /// Why the boot is not healthy yet (`None`: it is); see
    /// [`assess::unhealthy_reason`].
    fn unhealthy_reason(&self, now: Instant) -> Option<String> {
        let gates: Vec<assess::Gate<'_>> = self
            .supervisor
            .containers()
            .iter()
            .zip(&self.containers)
            .map(|(container, managed)| assess::Gate {
                container,
                critical: managed.critical,
                health: managed.health.as_ref(),
            })
            .collect();
        assess::unhealthy_reason(&gates, now)
    }

    /// Blesses the booted slot once healthy, or reboots when its time is up. A
    /// bless that fails keeps the assessment: the next tick (a second later)
    /// tries again while the system stays healthy.
    pub(super) fn assess(&mut self, now: Instant) {
        let reason = self.unhealthy_reason(now);
        let Some(assessment) = self.assessment.as_mut() else {
            return;
        };
        match assessment.tick(reason.as_deref(), now) {
            Tick::Continue => {}
            Tick::Done => self.assessment = None,
            Tick::Reboot => {
                self.assessment = None;
                self.begin_shutdown(PowerAction::Reboot, "boot assessment failed");
            }
        }
    }
}
