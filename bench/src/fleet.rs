//! The repository's load from a fleet, simulated: how the agent's schedule
//! (`berth_agent::daemon::first_delay` and `next_delay`, the code the devices
//! run) spreads 100,000 devices' checks over time, and what a device's idle
//! checks cost in bytes per day.
//!
//! The scenario is the worst one for a repository: the whole fleet boots in
//! the same second (power restored to a site, a fleet-wide reboot). Each check
//! of a device that is up to date is two requests: the index's signature, then
//! the index.

use std::time::Duration;

use berth_agent::daemon::{first_delay, next_delay};

/// Requests per check when the device is up to date: the signature only (the
/// index it verified last is kept and fetched again only when that changed).
pub const REQUESTS_PER_CHECK: u64 = 1;

/// What the simulation found.
#[derive(Debug, Clone)]
pub struct FleetLoad {
    pub devices: usize,
    pub interval: Duration,
    pub simulated: Duration,
    /// Requests over the whole simulation divided by its seconds.
    pub mean_per_s: f64,
    /// The busiest second.
    pub peak_per_s: u64,
    /// The busiest minute, per second.
    pub peak_minute_per_s: f64,
}

impl FleetLoad {
    pub fn peak_to_mean(&self) -> f64 {
        self.peak_per_s as f64 / self.mean_per_s
    }
}

/// splitmix64: a small deterministic generator, so runs compare.
struct Random(u64);

impl Random {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When devices check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// The agent's: [`first_delay`] and [`next_delay`].
    Agent,
    /// Baseline: a uniform first delay over the interval, then the agent's
    /// jittered interval (the obvious design).
    UniformStart,
    /// Baseline: at boot, then exactly every interval (no jitter at all).
    Fixed,
}

/// Simulates `devices` devices that all boot at second 0 and check every
/// `interval` on `schedule`, for `simulated` time.
pub fn simulate(
    devices: usize,
    interval: Duration,
    simulated: Duration,
    seed: u64,
    schedule: Schedule,
) -> FleetLoad {
    let seconds = usize::try_from(simulated.as_secs()).expect("fits").max(1);
    let mut per_second = vec![0u64; seconds];
    let mut random = Random(seed);
    for _ in 0..devices {
        let mut at = match schedule {
            Schedule::Agent => first_delay(interval, random.unit()),
            Schedule::UniformStart => interval.mul_f64(random.unit()),
            Schedule::Fixed => Duration::ZERO,
        };
        while at < simulated {
            per_second[usize::try_from(at.as_secs()).expect("fits")] += REQUESTS_PER_CHECK;
            at += match schedule {
                Schedule::Fixed => interval,
                _ => next_delay(interval, 0, random.unit()),
            };
        }
    }
    let total: u64 = per_second.iter().sum();
    let peak_minute = per_second
        .chunks(60)
        .map(|minute| minute.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    FleetLoad {
        devices,
        interval,
        simulated,
        mean_per_s: total as f64 / seconds as f64,
        peak_per_s: per_second.iter().copied().max().unwrap_or(0),
        peak_minute_per_s: peak_minute as f64 / 60.0,
    }
}

/// Runs the simulation for the default interval and prints the figures.
pub fn run(devices: usize) -> anyhow::Result<()> {
    let interval = Duration::from_secs(berth_format::image_config::DEFAULT_INTERVAL_S);
    let day = Duration::from_secs(86_400);
    println!(
        "fleet of {devices} devices booting in the same second, checking every {} s, 24 h simulated; repository requests per second:",
        interval.as_secs()
    );
    for (name, schedule) in [
        (
            "berth agent (equilibrium start, ±25 % jitter)",
            Schedule::Agent,
        ),
        (
            "baseline: uniform start, ±25 % jitter",
            Schedule::UniformStart,
        ),
        ("baseline: fixed interval from boot", Schedule::Fixed),
    ] {
        let load = simulate(devices, interval, day, 1, schedule);
        println!(
            "  {name:<48} mean {:>7.1}  busiest second {:>7} ({:>7.2}× mean)  busiest minute {:>9.1} ({:.2}× mean)",
            load.mean_per_s,
            load.peak_per_s,
            load.peak_to_mean(),
            load.peak_minute_per_s,
            load.peak_minute_per_s / load.mean_per_s
        );
    }
    println!("  goal: the agent's busiest second ≤ 2× the mean");
    let checks_per_day = 86_400 / interval.as_secs();
    println!(
        "a device's idle checks: {checks_per_day} a day; bytes a day (files as berth publish writes them, plus {HTTP_OVERHEAD} bytes of HTTP headers per request, an estimate):"
    );
    for releases in [1, 10, 50] {
        let (signature, index) = published_sizes(releases)?;
        // An unchanged index is not fetched again (the agent keeps the last one
        // it verified and compares signatures): an idle check is one request.
        let idle = signature + HTTP_OVERHEAD;
        // Without that, every check fetches both (the baseline).
        let both = signature + index + 2 * HTTP_OVERHEAD;
        println!(
            "  {releases:>2} releases in the index: signature {signature} B, index {index} B → {idle} B a check, {:.1} KiB a day (+ {} B once per publish); fetching both each check: {:.1} KiB a day",
            (idle * checks_per_day) as f64 / 1024.0,
            index + HTTP_OVERHEAD,
            (both * checks_per_day) as f64 / 1024.0
        );
    }
    Ok(())
}

/// Request line and headers out, status line and headers back, per request
/// (an estimate: ureq's request and a typical static server's answer).
pub const HTTP_OVERHEAD: u64 = 350;

/// The sizes of a channel's signature and index listing `releases` bundles
/// (each with a three-wave rollout), made and signed the way `berth publish`
/// does.
pub fn published_sizes(releases: usize) -> anyhow::Result<(u64, u64)> {
    use berth_bundle::channel::{trusted_comment, ChannelIndex, IndexEntry, Rollout, INDEX_FORMAT};
    use berth_bundle::rollout::parse_schedule;
    let mut index = ChannelIndex {
        format: INDEX_FORMAT,
        channel: "stable".into(),
        generated: 1_700_000_000,
        expires: 1_700_000_000 + 30 * 86_400,
        bundles: Vec::new(),
    };
    for minor in 0..releases {
        let sha = format!("{:064x}", minor + 1);
        index.bundles.push(IndexEntry {
            name: "web".into(),
            compatible: "web".into(),
            version: format!("1.{minor}.0").parse()?,
            min_version: None,
            path: format!("bundles/{sha}.bundle"),
            size: 28_573_184,
            sha256: sha,
            // Each release rolled out in three waves, as a fleet would.
            rollout: Some(Rollout {
                start: 1_700_000_000,
                waves: parse_schedule("1%@0h,10%@6h,100%@48h")?,
            }),
            paused: false,
            paused_since: None,
            withdrawn: false,
        });
    }
    index.validate()?;
    let json = index.to_json();
    let key = berth_bundle::SecretKey::generate()?;
    let signature = key.sign(&json, &trusted_comment(&index));
    Ok((signature.len() as u64, json.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_files_grow_with_the_releases_listed() {
        let (sig1, index1) = published_sizes(1).unwrap();
        let (sig10, index10) = published_sizes(10).unwrap();
        assert_eq!(sig1, sig10, "a signature has a fixed size");
        assert!(index10 > 9 * (index1 / 2), "{index1} {index10}");
    }

    #[test]
    fn a_fleet_booting_at_once_is_spread_over_the_interval() {
        // Small enough for a unit test; the benchmark runs 100,000.
        let load = simulate(
            20_000,
            Duration::from_secs(1800),
            Duration::from_secs(6 * 3600),
            7,
            Schedule::Agent,
        );
        // Each device checks about 12 times in 6 h, REQUESTS_PER_CHECK each.
        let expected = 20_000.0 * 12.0 * REQUESTS_PER_CHECK as f64 / (6.0 * 3600.0);
        assert!(
            (load.mean_per_s - expected).abs() / expected < 0.1,
            "{load:?}"
        );
        assert!(load.peak_to_mean() < 3.0, "{load:?}");
        // Per minute the noise averages out: no burst, no hump.
        assert!(load.peak_minute_per_s / load.mean_per_s < 1.2, "{load:?}");
        // The fixed baseline puts a whole fleet's checks in one second.
        let fixed = simulate(
            20_000,
            Duration::from_secs(1800),
            Duration::from_secs(6 * 3600),
            7,
            Schedule::Fixed,
        );
        assert_eq!(fixed.peak_per_s, 20_000 * REQUESTS_PER_CHECK);
    }
}
