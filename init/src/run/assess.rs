//! Boot assessment: a slot booted from an entry with a boot counter (an update on
//! trial) is blessed once every critical container is healthy, and rebooted when
//! the deadline passes first, so systemd-boot's counter runs down and the other
//! slot comes back. The decision is a pure function; the records go to the update
//! state file on the data partition, where `berth-update status` reads them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_format::entries::{self, Counter, EspState};
use berth_format::layout::UPDATE_STATE_PATH;
use berth_format::state::{self, AssessmentOutcome, AssessmentRecord, UpdateState};
use berth_format::Slot;

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

    /// Blesses the slot and records it; logs what happened.
    pub fn bless(&self) {
        match entries::bless(&self.esp, self.slot) {
            Ok(_) => {
                self.record(
                    AssessmentOutcome::Good,
                    "every critical container is healthy",
                );
                log!(
                    "slot {} ({}) is healthy: marked good",
                    self.slot,
                    self.version
                );
            }
            Err(err) => {
                self.record(
                    AssessmentOutcome::Pending,
                    &format!("healthy, but blessing failed: {err}"),
                );
                log!(
                    "slot {} ({}) is healthy but could not be marked good: {err}",
                    self.slot,
                    self.version
                );
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
