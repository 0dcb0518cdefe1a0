//! Rollout waves: a release reaches a growing share of the fleet over time.
//!
//! Each device has a random seed of its own, kept on its data partition; a hash
//! of it gives the device a stable [`Position`] in `[0, 100)` percent, the same
//! for every release (like Bottlerocket's update waves). A release's
//! [`Rollout`] lists cumulative waves: "`percent` of the fleet, `after` seconds
//! after `start`". A device may install the release from the time of the first
//! wave whose percent is above its position on, so a device that was offline
//! during its wave still updates later, and the last wave (always 100 %)
//! includes everyone.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of a device seed.
pub const SEED_LEN: usize = 32;
/// Positions are counted in hundredths of a percent: `0..POSITION_SCALE`.
pub const POSITION_SCALE: u32 = 10_000;

/// One wave of a rollout: cumulative `percent` of the fleet, from `after`
/// seconds after the rollout's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Share of the fleet (cumulative, 1 to 100) that may install from then on.
    pub percent: u8,
    /// Seconds after [`Rollout::start`].
    pub after: u64,
}

/// The schedule of a release in the channel index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Unix seconds: when the release was first published.
    pub start: u64,
    /// Percents strictly increasing, the last 100, `after` non-decreasing.
    pub waves: Vec<Wave>,
}

/// A schedule that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout schedule {schedule:?}: {reason}")]
pub struct ScheduleError {
    pub schedule: String,
    pub reason: String,
}

/// Checks waves: at least one; percents 1 to 100, strictly increasing, the last
/// 100; offsets non-decreasing.
pub fn validate_waves(waves: &[Wave]) -> Result<(), String> {
    let Some(last) = waves.last() else {
        return Err("it has no waves".into());
    };
    for (i, w) in waves.iter().enumerate() {
        if w.percent == 0 || w.percent > 100 {
            return Err(format!(
                "wave {} ({}%): a percent is 1 to 100",
                i + 1,
                w.percent
            ));
        }
        if let Some(prev) = i.checked_sub(1).map(|p| waves[p]) {
            if w.percent <= prev.percent {
                return Err(format!(
                    "wave {} ({}%) is not above wave {} ({}%): percents are cumulative and strictly increasing",
                    i + 1,
                    w.percent,
                    i,
                    prev.percent
                ));
            }
            if w.after < prev.after {
                return Err(format!(
                    "wave {} ({}%@{}s) starts before wave {} ({}%@{}s): offsets do not decrease",
                    i + 1,
                    w.percent,
                    w.after,
                    i,
                    prev.percent,
                    prev.after
                ));
            }
        }
    }
    if last.percent != 100 {
        return Err(format!(
            "the last wave is {}%, it must be 100% (everyone, eventually)",
            last.percent
        ));
    }
    Ok(())
}

/// Parses a schedule such as `1%@0h,10%@6h,100%@48h`: comma-separated
/// `PERCENT%@OFFSET`, the offset a whole number with `d`, `h`, `m` or `s` (or
/// a bare `0`), then [`validate_waves`].
pub fn parse_schedule(text: &str) -> Result<Vec<Wave>, ScheduleError> {
    let bad = |reason: String| ScheduleError {
        schedule: text.to_string(),
        reason,
    };
    let mut waves = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (percent, offset) = part
            .split_once('@')
            .ok_or_else(|| bad(format!("{part:?} is not PERCENT%@OFFSET (like 10%@6h)")))?;
        let percent = percent
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.parse::<u8>().ok())
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| {
                bad(format!(
                    "{part:?}: {percent:?} is not a percent from 1% to 100%"
                ))
            })?;
        let after = parse_offset(offset.trim()).ok_or_else(|| {
            bad(format!(
                "{part:?}: {offset:?} is not an offset like 0h, 6h, 2d, 90m or 3600s"
            ))
        })?;
        waves.push(Wave { percent, after });
    }
    validate_waves(&waves).map_err(bad)?;
    Ok(waves)
}

fn parse_offset(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "d" => number.checked_mul(86_400),
        "h" => number.checked_mul(3600),
        "m" => number.checked_mul(60),
        "s" => Some(number),
        _ => None,
    }
}

/// Writes waves the way [`parse_schedule`] reads them.
pub fn format_schedule(waves: &[Wave]) -> String {
    let offset = |s: u64| match s {
        0 => "0h".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    waves
        .iter()
        .map(|w| format!("{}%@{}", w.percent, offset(w.after)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A device's random seed (kept on its data partition; see the agent).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSeed(pub [u8; SEED_LEN]);

impl fmt::Debug for DeviceSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceSeed({})", hex::encode(self.0))
    }
}

impl DeviceSeed {
    /// The seed as its file holds it: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<DeviceSeed> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(DeviceSeed(bytes.try_into().ok()?))
    }

    /// The device's place in every rollout.
    pub fn position(&self) -> Position {
        let digest = Sha256::new()
            .chain_update(b"berth rollout position\0")
            .chain_update(self.0)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // The bias of the modulo is below 1e-15.
        let position = u64::from_be_bytes(first) % u64::from(POSITION_SCALE);
        Position(u32::try_from(position).expect("below POSITION_SCALE"))
    }
}

/// A device's place in the fleet, in hundredths of a percent: `0..10_000`. A
/// device at position `p` is in every wave whose percent is above `p / 100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u32);

impl Position {
    /// `hundredths` of a percent, capped at 99.99 %.
    pub fn from_hundredths(hundredths: u32) -> Position {
        Position(hundredths.min(POSITION_SCALE - 1))
    }

    pub fn hundredths(self) -> u32 {
        self.0
    }

    /// The position in percent, `[0, 100)`.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Whether a device here is within the first `percent` of the fleet.
    pub fn within(self, percent: u8) -> bool {
        self.0 < u32::from(percent) * 100
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

impl Rollout {
    /// Unix seconds from which a device at `position` may install: the time of
    /// the first wave that includes it. `None` only for waves that do not reach
    /// it (an index that breaks [`validate_waves`]).
    pub fn opens_at(&self, position: Position) -> Option<u64> {
        self.waves
            .iter()
            .find(|w| position.within(w.percent))
            .map(|w| self.start.saturating_add(w.after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_print() {
        let waves = parse_schedule("1%@0h,10%@6h,100%@48h").unwrap();
        assert_eq!(
            waves,
            [
                Wave {
                    percent: 1,
                    after: 0
                },
                Wave {
                    percent: 10,
                    after: 6 * 3600
                },
                Wave {
                    percent: 100,
                    after: 2 * 86_400
                },
            ]
        );
        assert_eq!(format_schedule(&waves), "1%@0h,10%@6h,100%@2d");
        assert_eq!(parse_schedule("100%@0").unwrap().len(), 1);
        assert_eq!(
            parse_schedule(" 5%@30m , 100%@1d").unwrap()[0].after,
            30 * 60
        );
    }

    #[test]
    fn bad_schedules_name_the_bad_part() {
        for (text, says) in [
            ("", "not PERCENT%@OFFSET"),
            (
                "10%@6h,5%@12h,100%@1d",
                "wave 2 (5%) is not above wave 1 (10%)",
            ),
            ("10%@6h,10%@12h,100%@1d", "strictly increasing"),
            ("1%@0h,50%@6h", "the last wave is 50%"),
            (
                "1%@12h,100%@6h",
                "wave 2 (100%@21600s) starts before wave 1",
            ),
            ("0%@0h,100%@1h", "\"0%\" is not a percent"),
            ("101%@0h", "\"101%\" is not a percent"),
            ("10@0h,100%@1h", "\"10\" is not a percent"),
            ("10%@6x,100%@1d", "\"6x\" is not an offset"),
            ("10%,100%@1d", "\"10%\" is not PERCENT%@OFFSET"),
        ] {
            let err = parse_schedule(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn positions_are_stable_and_in_range() {
        let seed = DeviceSeed([7; SEED_LEN]);
        assert_eq!(seed.position(), seed.clone().position());
        assert_eq!(DeviceSeed::from_hex(&seed.to_hex()), Some(seed));
        assert!(DeviceSeed::from_hex("abcd").is_none());
        assert_eq!(Position::from_hundredths(4217).to_string(), "42.17%");
        assert!(Position::from_hundredths(999).within(10));
        assert!(!Position::from_hundredths(1000).within(10));
        assert!(Position::from_hundredths(u32::MAX).within(100));
    }
}
