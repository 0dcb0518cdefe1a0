//! Boot assessment: a slot booted from an entry with a boot counter (an update on
//! trial) is blessed once it is healthy ([`unhealthy_reason`]: every container
//! up, every critical one's health check passed), and rebooted when the deadline
//! passes first, so systemd-boot's counter runs down and the other slot comes
//! back. A bless that fails (the ESP busy or full) is tried again on the next
//! tick while the slot stays healthy. The decisions are pure functions; the
//! records go to the update state file on the data partition, where
//! `berth-update status` reads them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_format::entries::{self, Counter, EspState};
use berth_format::layout::UPDATE_STATE_PATH;
use berth_format::state::{self, AssessmentOutcome, AssessmentRecord, UpdateState};
use berth_format::Slot;

use super::health::{Health, Status};
use super::supervisor::Container;

/// One container as the boot assessment sees it.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub container: &'a Container,
    /// The recipe's `critical`: its health check must pass too.
    pub critical: bool,
    pub health: Option<&'a Health>,
}

/// Why the boot is not healthy yet at `now` (`None`: it is). Healthy means:
/// every critical container with a health check runs and its check passed, and
/// every container, critical or not, is up ([`Container::up`]: it ran past its
/// restart backoff without exiting, or finished with success for good). So a
/// release whose containers exit or crash right after starting is never healthy,
/// however often they are restarted.
pub fn unhealthy_reason(gates: &[Gate<'_>], now: Instant) -> Option<String> {
    for gate in gates.iter().filter(|gate| gate.critical) {
        let Some(health) = gate.health else {
            continue;
        };
        let name = &gate.container.name;
        if gate.container.running_since().is_none() {
            return Some(match &health.last_error {
                Some(error) => format!("container {name} is not running (last check: {error})"),
                None => format!("container {name} is not running"),
            });
        }
        if health.status != Status::Healthy {
            return Some(match &health.last_error {
                Some(error) => format!("container {name} is not healthy: {error}"),
                None => format!("container {name} has not passed a health check yet"),
            });
        }
    }
    gates.iter().find_map(|gate| gate.container.up(now).err())
}

/// What the assessment does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The entry is blessed already (or has no counter): nothing to assess.
    Nothing,
    /// Not healthy yet, deadline not reached.
    Wait,
    /// Healthy in time: bless the entry.
    Bless,
    /// Deadline passed: reboot, so the counter runs down.
    Reboot,
}

/// Decides from the booted entry's counter, whether every critical container is
/// healthy, and the time since the assessment began. Healthy wins a tie with the
/// deadline.
pub fn decide(
    counter: Option<Counter>,
    healthy: bool,
    elapsed: Duration,
    timeout: Duration,
) -> Decision {
    match counter {
        None => Decision::Nothing,
        Some(_) if healthy => Decision::Bless,
        Some(_) if elapsed >= timeout => Decision::Reboot,
        Some(_) => Decision::Wait,
    }
}

/// The reason to record when the other slot's entry ran out of tries and the last
/// assessment does not already say it failed (`other`: slot, counter, image
/// version of the other slot's entry). `None`: nothing new to record.
pub fn ran_out_reason(
    other: Option<(Slot, Option<Counter>, &str)>,
    last: Option<&AssessmentRecord>,
) -> Option<String> {
    let (slot, counter, version) = other?;
    if !counter?.is_exhausted() {
        return None;
    }
    let recorded = last.is_some_and(|record| {
        record.slot == slot
            && record.version == version
            && record.outcome == AssessmentOutcome::Failed
    });
    (!recorded)
        .then(|| format!("boot counter ran out: slot {slot} ({version}) never came up healthy"))
}

/// How often an assessment looks again.
const TICK: Duration = Duration::from_secs(1);

/// What the event loop does after an assessment tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Keep assessing: not healthy yet, or healthy but the bless failed (it is
    /// tried again on the next tick).
    Continue,
    /// Blessed (or nothing to assess): the assessment is over.
    Done,
    /// The deadline passed while unhealthy: the failure is recorded and logged;
    /// reboot.
    Reboot,
}

/// An assessment in progress.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub slot: Slot,
    pub version: String,
    pub esp: PathBuf,
    /// The booted entry's counter (after systemd-boot's rename for this boot).
    pub counter: Counter,
    pub start: Instant,
    pub timeout: Duration,
    state_path: PathBuf,
    /// Blesses tried and failed so far (logged and recorded on the first, then
    /// only when the error changes).
    bless_failures: u32,
    last_bless_error: Option<String>,
}

impl Assessment {
    /// Looks at the booted slot's entry on the ESP mounted at `esp`. Also records a
    /// failure of the other slot whose counter ran out. Returns an assessment when
    /// the booted entry is counting (and records it as pending).
    pub fn begin(
        esp: &Path,
        slot: Slot,
        version: &str,
        timeout: Duration,
        now: Instant,
    ) -> Option<Assessment> {
        let state_path = PathBuf::from(UPDATE_STATE_PATH);
        let esp_state = match EspState::read(esp) {
            Ok(state) => state,
            Err(err) => {
                log!("boot assessment: {err}");
                return None;
            }
        };
        record_ran_out(&esp_state, slot, &state_path);
        let counter = esp_state.slot(slot).and_then(|entry| entry.counter())?;
        let assessment = Assessment {
            slot,
            version: version.to_string(),
            esp: esp.to_path_buf(),
            counter,
            start: now,
            timeout,
            state_path,
            bless_failures: 0,
            last_bless_error: None,
        };
        log!(
            "slot {slot} ({version}) is on trial ({} tries left): waiting up to {} s for it to be healthy",
            counter.left,
            timeout.as_secs()
        );
        assessment.record(AssessmentOutcome::Pending, "waiting for the health checks");
        Some(assessment)
    }

    /// When the deadline passes.
    pub fn deadline(&self) -> Instant {
        self.start + self.timeout
    }

    /// When the event loop looks again: every second, and at the deadline. Past
    /// the deadline (a healthy slot whose bless keeps failing) still a second
    /// later, not at once: the loop must not spin on a deadline in the past.
    pub fn next_tick(&self, now: Instant) -> Instant {
        let second = now + TICK;
        let deadline = self.deadline();
        if deadline > now {
            deadline.min(second)
        } else {
            second
        }
    }

    fn record(&self, outcome: AssessmentOutcome, reason: &str) {
        let record = AssessmentRecord {
            slot: self.slot,
            version: self.version.clone(),
            outcome,
            reason: reason.to_string(),
            at: state::now(),
        };
        if let Err(err) = UpdateState::update(&self.state_path, |state| {
            state.assessment = Some(record);
        }) {
            log!("recording the boot assessment: {err}");
        }
    }

    /// One tick of the event loop while assessing: `reason` is why the boot is
    /// not healthy (`None`: it is). Blesses when [`decide`] says so; a failed
    /// bless keeps the assessment going, so the next tick tries again while the
    /// slot stays healthy (an unhealthy slot past the deadline still reboots).
    pub fn tick(&mut self, reason: Option<&str>, now: Instant) -> Tick {
        let elapsed = now.saturating_duration_since(self.start);
        match decide(Some(self.counter), reason.is_none(), elapsed, self.timeout) {
            Decision::Nothing => Tick::Done,
            Decision::Wait => Tick::Continue,
            Decision::Bless => {
                if self.bless() {
                    Tick::Done
                } else {
                    Tick::Continue
                }
            }
            Decision::Reboot => {
                let line = self.fail(reason.unwrap_or("unknown"));
                log!("{line}");
                Tick::Reboot
            }
        }
    }

    /// Blesses the slot and records it; logs what happened. Returns whether the
    /// entry is blessed now.
    fn bless(&mut self) -> bool {
        match entries::bless(&self.esp, self.slot) {
            Ok(_) => {
                self.record(AssessmentOutcome::Good, "every container is up and healthy");
                let retried = match self.bless_failures {
                    0 => String::new(),
                    n => format!(" (after {n} failed tries)"),
                };
                log!(
                    "slot {} ({}) is healthy: marked good{retried}",
                    self.slot,
                    self.version
                );
                true
            }
            Err(err) => {
                self.bless_failures = self.bless_failures.saturating_add(1);
                let error = err.to_string();
                if self.last_bless_error.as_deref() != Some(error.as_str()) {
                    self.record(
                        AssessmentOutcome::Pending,
                        &format!("healthy, but blessing failed (trying again): {error}"),
                    );
                    log!(
                        "slot {} ({}) is healthy but could not be marked good: {error}; trying again every second while it stays healthy",
                        self.slot,
                        self.version
                    );
                    self.last_bless_error = Some(error);
                }
                false
            }
        }
    }

    /// Records the failure and returns the console line that announces the reboot.
    pub fn fail(&self, reason: &str) -> String {
        let line = format!(
            "slot {} ({}) did not become healthy within {} s: {reason}; rebooting ({} tries left)",
            self.slot,
            self.version,
            self.timeout.as_secs(),
            self.counter.left
        );
        self.record(
            AssessmentOutcome::Failed,
            &format!(
                "not healthy within {} s: {reason} ({} tries left)",
                self.timeout.as_secs(),
                self.counter.left
            ),
        );
        line
    }
}

/// When the other slot's entry has no tries left, records (once) that its release
/// never came up healthy.
fn record_ran_out(esp_state: &EspState, booted: Slot, state_path: &Path) {
    let other = booted.other();
    let Some(entry) = esp_state.slot(other) else {
        return;
    };
    let version = entry
        .image_version()
        .unwrap_or("unknown version")
        .to_string();
    let last = match UpdateState::load(state_path) {
        Ok(state) => state.assessment,
        Err(err) => {
            log!("reading the update state: {err}");
            None
        }
    };
    let Some(reason) = ran_out_reason(Some((other, entry.counter(), &version)), last.as_ref())
    else {
        return;
    };
    log!("{reason}");
    let record = AssessmentRecord {
        slot: other,
        version,
        outcome: AssessmentOutcome::Failed,
        reason,
        at: state::now(),
    };
    if let Err(err) = UpdateState::update(state_path, |state| state.assessment = Some(record)) {
        log!("recording the boot assessment: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::supervisor::{ExitStatus, Supervisor};
    use berth_format::{ContainerConfig, HealthCheck, HealthProbe, RestartPolicy};

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn decisions() {
        let counting = Some(Counter { left: 2, done: 1 });
        assert_eq!(decide(None, false, s(500), s(120)), Decision::Nothing);
        assert_eq!(decide(None, true, s(0), s(120)), Decision::Nothing);
        assert_eq!(decide(counting, false, s(10), s(120)), Decision::Wait);
        assert_eq!(decide(counting, true, s(10), s(120)), Decision::Bless);
        assert_eq!(decide(counting, false, s(120), s(120)), Decision::Reboot);
        assert_eq!(decide(counting, true, s(121), s(120)), Decision::Bless);
        // The last try counts the same way.
        let last = Some(Counter { left: 0, done: 3 });
        assert_eq!(decide(last, false, s(200), s(120)), Decision::Reboot);
    }

    fn supervisor(policies: &[RestartPolicy]) -> Supervisor {
        let configs: Vec<ContainerConfig> = policies
            .iter()
            .enumerate()
            .map(|(i, policy)| ContainerConfig {
                name: format!("c{i}"),
                restart: *policy,
                critical: false,
                health: None,
                volumes: Vec::new(),
                writable: false,
            })
            .collect();
        Supervisor::new(&configs)
    }

    fn tcp_check() -> Health {
        Health::new(HealthCheck {
            probe: HealthProbe::Tcp { port: 80 },
            interval_ms: 1000,
            timeout_ms: 1000,
            retries: 3,
            start_period_ms: 0,
        })
    }

    #[test]
    fn crashing_containers_are_not_healthy_with_or_without_critical_ones() {
        let t0 = Instant::now();
        let mut sup = supervisor(&[RestartPolicy::Always, RestartPolicy::Always]);
        sup.started(0, 10, t0);
        sup.started(1, 11, t0);
        /// The first container with `health` (critical when `critical`), the
        /// others without checks.
        fn gates<'a>(
            sup: &'a Supervisor,
            critical: bool,
            health: Option<&'a Health>,
        ) -> Vec<Gate<'a>> {
            sup.containers()
                .iter()
                .enumerate()
                .map(|(index, container)| Gate {
                    container,
                    critical: critical && index == 0,
                    health: if index == 0 { health } else { None },
                })
                .collect()
        }
        // Both run; only once they ran past the backoff is the boot healthy.
        assert_eq!(
            unhealthy_reason(&gates(&sup, false, None), t0 + s(1)).as_deref(),
            Some("container c0 has not run for 10 s yet")
        );
        assert_eq!(
            unhealthy_reason(&gates(&sup, false, None), t0 + s(10)),
            None
        );
        // The second one (not critical) crashes right after each start.
        sup.exited(1, ExitStatus::Code(1), t0 + s(1));
        sup.started(1, 12, t0 + s(2));
        let crashing = Some("container c1 has not run for 10 s since it exited with status 1");
        assert_eq!(
            unhealthy_reason(&gates(&sup, false, None), t0 + s(11)).as_deref(),
            crashing
        );
        // A critical first container whose check passed does not change that.
        let mut health = tcp_check();
        health.started(t0);
        health.check_started();
        health.check_ended(t0 + s(1), Ok(()));
        assert_eq!(
            unhealthy_reason(&gates(&sup, true, Some(&health)), t0 + s(11)).as_deref(),
            crashing
        );
        // A critical container whose check has not passed is named first.
        let mut starting = tcp_check();
        starting.started(t0);
        assert_eq!(
            unhealthy_reason(&gates(&sup, true, Some(&starting)), t0 + s(11)).as_deref(),
            Some("container c0 has not passed a health check yet")
        );
        // Once the crashing one runs long enough, all is well.
        assert_eq!(
            unhealthy_reason(&gates(&sup, true, Some(&health)), t0 + s(12)),
            None
        );
        // A critical container with a passed check still has to be up.
        let mut sup = supervisor(&[RestartPolicy::Always]);
        sup.started(0, 20, t0);
        assert_eq!(
            unhealthy_reason(&gates(&sup, true, Some(&health)), t0 + s(2)).as_deref(),
            Some("container c0 has not run for 10 s yet")
        );
        assert_eq!(
            unhealthy_reason(&gates(&sup, true, Some(&health)), t0 + s(10)),
            None
        );
    }

    /// An ESP in `dir` with slot A's entry on trial.
    fn esp_on_trial(dir: &Path) -> PathBuf {
        let entries = dir.join("loader/entries");
        std::fs::create_dir_all(&entries).unwrap();
        std::fs::write(
            entries.join("berth-a+2-1.conf"),
            "title berth 1.1.0\nsort-key berth\nversion 1\nlinux /berth/a/vmlinuz\n",
        )
        .unwrap();
        entries
    }

    fn assessment(dir: &Path, esp: &Path, start: Instant) -> Assessment {
        Assessment {
            slot: Slot::A,
            version: "1.1.0".into(),
            esp: esp.to_path_buf(),
            counter: Counter { left: 2, done: 1 },
            start,
            timeout: s(60),
            state_path: dir.join("state.toml"),
            bless_failures: 0,
            last_bless_error: None,
        }
    }

    fn names(entries: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(entries)
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_bless_is_tried_again_on_the_next_tick_while_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        let entries = esp_on_trial(&esp);
        // A folder where the blessed entry goes: the rename fails for real (as
        // an ESP that is busy or full would make it fail).
        std::fs::create_dir(entries.join("berth-a.conf")).unwrap();
        let t0 = Instant::now();
        let mut assessment = assessment(dir.path(), &esp, t0);
        assert_eq!(assessment.tick(Some("not up"), t0 + s(1)), Tick::Continue);
        assert_eq!(assessment.tick(None, t0 + s(2)), Tick::Continue);
        assert_eq!(assessment.tick(None, t0 + s(3)), Tick::Continue);
        assert_eq!(assessment.bless_failures, 2);
        let state = UpdateState::load(&assessment.state_path).unwrap();
        let record = state.assessment.unwrap();
        assert_eq!(record.outcome, AssessmentOutcome::Pending);
        assert!(
            record.reason.contains("blessing failed"),
            "{}",
            record.reason
        );
        assert_eq!(names(&entries), ["berth-a+2-1.conf", "berth-a.conf"]);

        // The obstacle goes; the next healthy tick, past the deadline even,
        // blesses.
        std::fs::remove_dir(entries.join("berth-a.conf")).unwrap();
        assert_eq!(assessment.tick(None, t0 + s(90)), Tick::Done);
        assert_eq!(names(&entries), ["berth-a.conf"]);
        let state = UpdateState::load(&assessment.state_path).unwrap();
        assert_eq!(state.assessment.unwrap().outcome, AssessmentOutcome::Good);
    }

    #[test]
    fn ticks_come_every_second_and_at_the_deadline_never_in_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let assessment = assessment(dir.path(), dir.path(), t0);
        assert_eq!(assessment.next_tick(t0), t0 + s(1));
        let late = t0 + Duration::from_millis(59_500);
        assert_eq!(assessment.next_tick(late), t0 + s(60));
        // Past the deadline (retrying a bless): a second later each time.
        assert_eq!(assessment.next_tick(t0 + s(60)), t0 + s(61));
        assert_eq!(assessment.next_tick(t0 + s(90)), t0 + s(91));
    }

    #[test]
    fn a_failed_bless_then_unhealthy_past_the_deadline_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        let entries = esp_on_trial(&esp);
        std::fs::create_dir(entries.join("berth-a.conf")).unwrap();
        let t0 = Instant::now();
        let mut assessment = assessment(dir.path(), &esp, t0);
        assert_eq!(assessment.tick(None, t0 + s(1)), Tick::Continue);
        assert_eq!(
            assessment.tick(Some("container c0 has not started"), t0 + s(30)),
            Tick::Continue
        );
        assert_eq!(
            assessment.tick(Some("container c0 has not started"), t0 + s(60)),
            Tick::Reboot
        );
        let state = UpdateState::load(&assessment.state_path).unwrap();
        assert_eq!(state.assessment.unwrap().outcome, AssessmentOutcome::Failed);
        assert!(names(&entries).contains(&"berth-a+2-1.conf".to_string()));
    }

    #[test]
    fn an_exhausted_other_slot_is_reported_once() {
        let exhausted = Some(Counter { left: 0, done: 3 });
        assert_eq!(
            ran_out_reason(Some((Slot::B, exhausted, "1.2.0")), None).as_deref(),
            Some("boot counter ran out: slot b (1.2.0) never came up healthy")
        );
        let failed = AssessmentRecord {
            slot: Slot::B,
            version: "1.2.0".into(),
            outcome: AssessmentOutcome::Failed,
            reason: "not healthy within 20 s".into(),
            at: 1,
        };
        assert_eq!(
            ran_out_reason(Some((Slot::B, exhausted, "1.2.0")), Some(&failed)),
            None
        );
        let pending = AssessmentRecord {
            outcome: AssessmentOutcome::Pending,
            ..failed.clone()
        };
        assert!(ran_out_reason(Some((Slot::B, exhausted, "1.2.0")), Some(&pending)).is_some());
        let older = AssessmentRecord {
            version: "1.1.0".into(),
            ..failed
        };
        assert!(ran_out_reason(Some((Slot::B, exhausted, "1.2.0")), Some(&older)).is_some());
        // Tries left, blessed, or no entry: nothing to say.
        assert_eq!(
            ran_out_reason(Some((Slot::B, Some(Counter::new(3)), "1.2.0")), None),
            None
        );
        assert_eq!(ran_out_reason(Some((Slot::B, None, "1.2.0")), None), None);
        assert_eq!(ran_out_reason(None, None), None);
    }
}
