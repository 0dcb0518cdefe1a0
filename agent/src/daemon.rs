//! `berth-update daemon`: the agent as the init runs it on a device with an
//! update repository. Every interval (with random jitter, so a fleet that was
//! powered on at once does not poll in step) it takes the update lock, checks
//! the repository, installs what it offers onto the inactive slot and reboots
//! into it as its reboot policy says. Errors make the next check come later
//! (doubling, up to [`MAX_BACKOFF_FACTOR`] intervals): a repository that is down
//! is not hammered by every device of a fleet. After each step it POSTs its
//! status to the report URL, if there is one (see [`crate::report`]).
//!
//! A boot still on trial is left alone: the init decides whether it is good;
//! the agent only checks and reports until then (an install would be refused
//! anyway: it could leave no good slot to fall back to).

use std::time::Duration;

use berth_bundle::channel::ChannelName;
use berth_format::image_config::RebootPolicy;
use berth_format::state::{PendingReboot, UpdateState};

use crate::fleet::{self, CheckReport, FleetError, Repository};
use crate::idle;
use crate::install::{InstallOptions, Observer};
use crate::lock::{LockError, UpdateLock, LOCK_PATH};
use crate::report::{self, Event};
use crate::status::{self, StatusError};
use crate::system::{System, SystemError};

/// Error backoff: the delay after `n` failures in a row is the interval times
/// 2^n, at most this factor.
pub const MAX_BACKOFF_FACTOR: u32 = 8;
/// Jitter: each delay is scaled by a random factor in `[1 - JITTER, 1 + JITTER)`.
pub const JITTER: f64 = 0.25;
const JITTER_PERCENT: u32 = 25;
/// While this boot is on trial, how often the agent looks whether the init has
/// assessed it (to report the outcome), and for how long at most.
const ASSESSMENT_POLL: Duration = Duration::from_secs(5);
const ASSESSMENT_WAIT: Duration = Duration::from_secs(3600);
/// Sleeps at least this long page out the agent's code first (see [`idle`]);
/// every check interval is longer (10 s at least), while the short waits for a
/// window that is about to open would only read the code back at once.
const PAGE_OUT_AFTER: Duration = Duration::from_secs(5);

/// What the daemon is told by the init.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub repository: Repository,
    pub channel: ChannelName,
    pub interval: Duration,
    pub reboot: RebootPolicy,
    /// Where status reports go.
    pub report: Option<String>,
    /// The device's identity in reports.
    pub device: Option<String>,
    pub install: InstallOptions,
}

/// One round's failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("describing the running system: {0}")]
    System(#[from] SystemError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// How one round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Nothing newer for this device.
    UpToDate,
    /// This boot is on trial: checked only.
    OnTrial,
    /// An update is installed on the other slot and waits for a reboot the
    /// policy does not make now: at `due` (unix seconds, the window's next
    /// opening), or never by itself (`None`, `reboot = "manual"`).
    Installed { version: String, due: Option<u64> },
    /// An update is installed: reboot now.
    Reboot { version: String },
}

/// The delay before the first check, from `random` (in `[0, 1)`): drawn from
/// the equilibrium ("residual life") distribution of the jittered interval,
/// density `P(interval > t) / mean`: uniform up to `(1 - JITTER)` of the
/// interval, then falling linearly to zero at `(1 + JITTER)`. With it a fleet
/// that boots in the same second (power back at a site) polls from its first
/// check on as if it had been running for ever: no burst, and no hump when the
/// second checks overlap the first (a plain uniform first delay gives 1.5× the
/// mean for most of an interval). `berth-bench fleet` measures it.
pub fn first_delay(interval: Duration, random: f64) -> Duration {
    let r = random.clamp(0.0, 1.0);
    let flat = 1.0 - JITTER;
    let fraction = if r < flat {
        r
    } else {
        // The linear tail: inverse of its distribution function.
        let u = (r - flat) / (1.0 - flat);
        flat + 2.0 * JITTER * (1.0 - (1.0 - u).sqrt())
    };
    interval.mul_f64(fraction)
}

/// The delay before the next check after `failures` failed rounds in a row,
/// with jitter from `random` (in `[0, 1)`).
pub fn next_delay(interval: Duration, failures: u32, random: f64) -> Duration {
    let factor = 2u32.saturating_pow(failures).min(MAX_BACKOFF_FACTOR);
    let jitter = 1.0 - JITTER + 2.0 * JITTER * random.clamp(0.0, 1.0);
    (interval * factor).mul_f64(jitter)
}

/// A random number in `[0, 1)` from the kernel (the clock's nanoseconds if
/// `/dev/urandom` cannot be read: jitter needs spread, not secrecy).
pub fn random_unit() -> f64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    let value = if from_kernel {
        u64::from_le_bytes(bytes)
    } else {
        u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos(),
        ) << 32
    };
    // 53 random bits: the resolution of an f64 in [0, 1).
    (value >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs rounds forever; returns only to reboot (the caller asks the init).
pub fn run(options: &DaemonOptions, observer: &mut dyn Observer) -> String {
    println!(
        "watching channel {} of {} every {} s (±{JITTER_PERCENT} %), reboot {}",
        options.channel,
        options.repository.as_str(),
        options.interval.as_secs(),
        options.reboot
    );
    report_assessment(options);
    let mut delay = first_delay(options.interval, random_unit());
    println!("first check in {} s", delay.as_secs());
    let mut failures = 0u32;
    let mut paging_out = true;
    loop {
        // A long sleep ahead: hand back the code pages the last round touched.
        if paging_out && delay >= PAGE_OUT_AFTER {
            if let Err(err) = idle::page_out_own_code() {
                println!("keeping code pages resident while idle: madvise: {err}");
                paging_out = false;
            }
        }
        std::thread::sleep(delay);
        let mut due = None;
        match round(options, observer) {
            Ok(Round::Reboot { version }) => return version,
            Ok(Round::Installed { due: at, .. }) => {
                failures = 0;
                due = at;
            }
            Ok(_) => failures = 0,
            Err(err) => {
                failures = failures.saturating_add(1);
                println!("check failed: {}", chain(&err));
                report::send(options, Event::Error, None, Some(&chain(&err)));
            }
        }
        delay = next_delay(options.interval, failures, random_unit());
        // An update waiting for its window: look again when the window opens
        // (the round then finds it installed and reboots).
        if let Some(due) = due {
            let until = Duration::from_secs(due.saturating_sub(berth_format::state::now()));
            delay = delay.min(until + Duration::from_secs(1));
        }
        println!("next check in {} s", delay.as_secs());
    }
}

/// On a boot still on trial: waits until the init has assessed it and reports
/// the outcome (a boot that fails is rebooted by the init, ending this process).
fn report_assessment(options: &DaemonOptions) {
    let on_trial = || -> Option<bool> {
        let system = System::discover().ok()?;
        let status = status::status(&system).ok()?;
        let booted = status.slots.iter().find(|s| s.slot == system.booted)?;
        Some(!booted.good && booted.tries_left.is_some())
    };
    if on_trial() != Some(true) {
        return;
    }
    println!("this boot is on trial: waiting for the init's assessment");
    let started = std::time::Instant::now();
    while on_trial() == Some(true) && started.elapsed() < ASSESSMENT_WAIT {
        std::thread::sleep(ASSESSMENT_POLL);
    }
    report::send(options, Event::Assessed, None, None);
}

/// One round: lock, check, install if there is something to install.
pub fn round(options: &DaemonOptions, observer: &mut dyn Observer) -> Result<Round, DaemonError> {
    let _lock = UpdateLock::acquire(std::path::Path::new(LOCK_PATH))?;
    let system = System::discover()?;
    let before = status::status(&system)?;
    let booted_good = before
        .slots
        .iter()
        .any(|s| s.slot == system.booted && s.good);
    let report = fleet::check(&system, &options.repository, &options.channel)?;
    print_check(&report);
    if !booted_good {
        println!(
            "slot {} is on trial: not installing until the init marks it good",
            system.booted
        );
        report::send(options, Event::OnTrial, Some(&report), None);
        return Ok(Round::OnTrial);
    }
    let Some(version) = report.version.clone().filter(|_| report.update_available) else {
        report::send(options, Event::UpToDate, Some(&report), None);
        return Ok(Round::UpToDate);
    };
    // A release that already failed its boot assessment here is not installed
    // again (it would fail again, and boot-loop the device through its tries
    // each interval); a newer release, or a withdrawal, moves the device on.
    let failed_here = before.assessment.as_ref().is_some_and(|a| {
        a.outcome == berth_format::state::AssessmentOutcome::Failed && a.version == version
    });
    if failed_here {
        println!("{version} failed its boot assessment on this device: not installing it again");
        report::send(options, Event::UpToDate, Some(&report), None);
        return Ok(Round::UpToDate);
    }
    let target = system.target();
    let already = before.next == Some(target)
        && before
            .slots
            .iter()
            .any(|s| s.slot == target && s.version.as_deref() == Some(version.as_str()));
    if !already {
        // The check above picked it: installed from that look at the index,
        // not a second one.
        if let Some(installed) = fleet::install_offer(&system, &report, &options.install, observer)?
        {
            println!(
                "installed {} into slot {}; it boots next",
                installed.version, installed.slot
            );
        }
    }
    let now = berth_format::state::now();
    let pending = match options.reboot {
        RebootPolicy::Auto => None,
        RebootPolicy::Window(window) if window.is_open(now) => None,
        RebootPolicy::Manual => Some(PendingReboot {
            version: version.clone(),
            due: None,
            policy: "reboot = \"manual\"".to_string(),
        }),
        RebootPolicy::Window(window) => Some(PendingReboot {
            version: version.clone(),
            due: Some(window.next_open(now)),
            policy: format!("window {window}"),
        }),
    };
    // For `status` (and so the reports): what waits for which reboot. Written
    // only when it changed: a device waiting days for its window checks (and
    // would write its flash) every interval.
    let known = UpdateState::load(&system.state_path).map(|state| state.reboot_pending);
    if known.as_ref().ok() != Some(&pending) {
        let recorded = UpdateState::update(&system.state_path, |state| {
            state.reboot_pending = pending.clone();
        });
        if let Err(err) = recorded {
            println!("recording the pending reboot: {err}");
        }
    }
    report::send(options, Event::Installed, Some(&report), None);
    match pending {
        None => {
            println!("rebooting into {version}");
            Ok(Round::Reboot { version })
        }
        Some(PendingReboot { due: None, .. }) => {
            println!("installed {version}: it boots at the next reboot (reboot = \"manual\")");
            Ok(Round::Installed { version, due: None })
        }
        Some(PendingReboot {
            due: Some(due),
            policy,
            ..
        }) => {
            println!(
                "installed {version}, reboot due at {} ({policy})",
                berth_format::clock::utc_datetime(due)
            );
            Ok(Round::Installed {
                version,
                due: Some(due),
            })
        }
    }
}

fn print_check(report: &CheckReport) {
    if let (Some(version), true) = (&report.version, report.update_available) {
        println!("update available: {version} (running {})", report.running);
    }
    // Something newer listed, but not yet for this device: not "up to date".
    let waiting = report
        .waiting_for
        .as_ref()
        .zip(report.wave_opens_at.as_ref());
    if let Some((version, opens)) = waiting {
        println!(
            "waiting for {version}: this device's rollout wave (position {:.2} %) opens at {opens}",
            report.position
        );
    }
    if !report.update_available && waiting.is_none() {
        println!(
            "up to date: channel {} offers nothing newer than {}",
            report.channel, report.running
        );
    }
}

/// An error with its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_check_follows_the_equilibrium_distribution() {
        let hour = Duration::from_secs(3600);
        assert_eq!(first_delay(hour, 0.0), Duration::ZERO);
        assert_eq!(first_delay(hour, 0.5), hour / 2);
        assert_eq!(first_delay(hour, 0.75), hour * 3 / 4);
        // The tail's median: 0.75 + 0.5·(1 - √½) of the interval.
        let tail_median = first_delay(hour, 0.875).as_secs_f64() / 3600.0;
        assert!((tail_median - (0.75 + 0.5 * (1.0 - 0.5f64.sqrt()))).abs() < 1e-9);
        assert!(first_delay(hour, 0.999_999) < hour * 5 / 4);
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_interval() {
        let interval = Duration::from_secs(1800);
        assert_eq!(next_delay(interval, 0, 0.0), Duration::from_secs(1350));
        assert_eq!(next_delay(interval, 0, 0.5), interval);
        assert!(next_delay(interval, 0, 0.999_999) < Duration::from_secs(2250));
    }

    #[test]
    fn failures_back_off_up_to_eight_intervals() {
        let interval = Duration::from_secs(60);
        let delays: Vec<u64> = (0..6)
            .map(|n| next_delay(interval, n, 0.5).as_secs())
            .collect();
        assert_eq!(delays, [60, 120, 240, 480, 480, 480]);
        assert_eq!(
            next_delay(interval, u32::MAX, 0.5),
            interval * MAX_BACKOFF_FACTOR
        );
    }

    #[test]
    fn random_numbers_are_in_the_unit_interval_and_vary() {
        let values: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let distinct = values
            .iter()
            .map(|v| v.to_bits())
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 60);
    }
}
