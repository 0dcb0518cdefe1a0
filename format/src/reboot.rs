//! When the update agent reboots into an update it installed: at once
//! (`auto`), never by itself (`manual`), or inside a maintenance window such as
//! `Mon-Fri 02:00-04:00 +01:00` (days, a local time range, and the explicit UTC
//! offset of that local time: a device has no time zone database, and a window
//! that moved with daylight saving time would surprise its operator). A window
//! may wrap midnight (`Sat,Sun 23:00-01:00 +00:00`): it belongs to the day it
//! opens on.
//!
//! Written in the recipe (`[update] reboot` or `reboot_window`) or the
//! provisioning file, checked by the builder and the init, applied by the agent.

use std::fmt;

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const DAY_S: i64 = 86_400;

/// When to reboot into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootPolicy {
    /// Right after the install (the default).
    #[default]
    Auto,
    /// Never by itself: the update waits for the next reboot.
    Manual,
    /// Only while the window is open.
    Window(RebootWindow),
}

/// A weekly maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebootWindow {
    /// Bit `d` set: the window opens on weekday `d` (0 = Sunday).
    days: u8,
    /// Local minutes since midnight.
    start: u16,
    end: u16,
    /// Local time minus UTC, in minutes.
    offset: i16,
}

impl RebootPolicy {
    /// Parses `auto`, `manual` or a window ([`RebootWindow::parse`]).
    pub fn parse(text: &str) -> Result<RebootPolicy, String> {
        match text.trim() {
            "auto" => Ok(RebootPolicy::Auto),
            "manual" => Ok(RebootPolicy::Manual),
            other if other.starts_with(|c: char| c.is_ascii_alphabetic()) && other.contains(':') => {
                RebootWindow::parse(other).map(RebootPolicy::Window)
            }
            other => Err(format!(
                "reboot {other:?} is not \"auto\", \"manual\" or a window like \"Mon-Fri 02:00-04:00 +00:00\""
            )),
        }
    }
}

impl fmt::Display for RebootPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebootPolicy::Auto => f.write_str("auto"),
            RebootPolicy::Manual => f.write_str("manual"),
            RebootPolicy::Window(window) => window.fmt(f),
        }
    }
}

impl RebootWindow {
    /// Parses `DAYS HH:MM-HH:MM ±HH:MM`. DAYS is `daily`, a day (`Mon`), a
    /// range (`Mon-Fri`, `Fri-Mon`) or a comma list of those (`Sat,Sun`).
    pub fn parse(text: &str) -> Result<RebootWindow, String> {
        let bad = |why: &str| {
            Err(format!(
                "reboot window {text:?}: {why} (write it like \"Mon-Fri 02:00-04:00 +01:00\")"
            ))
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days, times, offset] = parts[..] else {
            return bad("expected days, a time range and a UTC offset");
        };
        let Some(days) = parse_days(days) else {
            return bad("the days are not like Mon-Fri, Sat,Sun or daily");
        };
        let Some((start, end)) = times.split_once('-') else {
            return bad("the time range is not HH:MM-HH:MM");
        };
        let (Some(start), Some(end)) = (parse_hhmm(start), parse_hhmm(end)) else {
            return bad("the time range is not HH:MM-HH:MM");
        };
        if start == end {
            return bad("the window is empty");
        }
        let Some(offset) = parse_offset(offset) else {
            return bad("the UTC offset is not +HH:MM or -HH:MM");
        };
        Ok(RebootWindow {
            days,
            start,
            end,
            offset,
        })
    }

    /// Whether the window is open at `now` (unix seconds).
    pub fn is_open(&self, now: u64) -> bool {
        let local = self.local(now);
        let day = weekday(local.div_euclid(DAY_S));
        let minute = u16::try_from(local.rem_euclid(DAY_S) / 60).expect("below 1440");
        let opens_on = |d: i64| self.days & (1 << d) != 0;
        if self.start < self.end {
            opens_on(day) && (self.start..self.end).contains(&minute)
        } else {
            (opens_on(day) && minute >= self.start)
                || (opens_on((day + 6) % 7) && minute < self.end)
        }
    }

    /// When the window is next open: `now` if it is, else its next start
    /// (unix seconds).
    pub fn next_open(&self, now: u64) -> u64 {
        if self.is_open(now) {
            return now;
        }
        let local = self.local(now);
        let today = local.div_euclid(DAY_S);
        (0..=7)
            .map(|d| (today + d) * DAY_S + i64::from(self.start) * 60)
            .find(|&start| start > local && self.days & (1 << weekday(start / DAY_S)) != 0)
            .map_or(now, |start| {
                u64::try_from(start - i64::from(self.offset) * 60).unwrap_or(now)
            })
    }

    fn local(&self, now: u64) -> i64 {
        i64::try_from(now).unwrap_or(i64::MAX) + i64::from(self.offset) * 60
    }
}

impl fmt::Display for RebootWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Runs of three days or more as a range: `Mon-Fri`, `Sun,Sat`.
        let mut days: Vec<String> = Vec::new();
        let mut d = 0;
        while d < 7 {
            if self.days & (1 << d) == 0 {
                d += 1;
                continue;
            }
            let first = d;
            while d + 1 < 7 && self.days & (1 << (d + 1)) != 0 {
                d += 1;
            }
            match d - first {
                0 => days.push(DAY_NAMES[first].to_string()),
                1 => days.extend([DAY_NAMES[first].to_string(), DAY_NAMES[d].to_string()]),
                _ => days.push(format!("{}-{}", DAY_NAMES[first], DAY_NAMES[d])),
            }
            d += 1;
        }
        let sign = if self.offset < 0 { '-' } else { '+' };
        let offset = self.offset.unsigned_abs();
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02} {sign}{:02}:{:02}",
            if self.days == 0x7f {
                "daily".to_string()
            } else {
                days.join(",")
            },
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
            offset / 60,
            offset % 60
        )
    }
}

/// Weekday (0 = Sunday) of a day number since 1970-01-01, a Thursday.
fn weekday(day: i64) -> i64 {
    (day + 4).rem_euclid(7)
}

fn day_index(name: &str) -> Option<u8> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_days(text: &str) -> Option<u8> {
    if text.eq_ignore_ascii_case("daily") {
        return Some(0x7f);
    }
    let mut days = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day_index(from)?, day_index(to)?);
                let mut d = from;
                loop {
                    days |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << day_index(part)?,
        }
    }
    Some(days)
}

fn parse_hhmm(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    // 24:00 ends a window at midnight.
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
}

fn parse_offset(text: &str) -> Option<i16> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let minutes = i16::try_from(parse_hhmm(rest)?).ok()?;
    (minutes <= 14 * 60).then_some(sign * minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 is a Monday; 00:00 UTC that day.
    const MONDAY: u64 = 1_796_601_600;

    fn at(day: u64, hour: u64, minute: u64) -> u64 {
        MONDAY + day * 86_400 + hour * 3600 + minute * 60
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        assert_eq!(weekday((MONDAY / 86_400) as i64), 1);
    }

    #[test]
    fn policies_parse_and_print_back() {
        assert_eq!(RebootPolicy::parse("auto"), Ok(RebootPolicy::Auto));
        assert_eq!(RebootPolicy::parse("manual"), Ok(RebootPolicy::Manual));
        for text in [
            "Mon-Fri 02:00-04:00 +01:00",
            "Sat,Sun 23:00-01:00 +00:00",
            "daily 03:30-04:00 -05:30",
            "Fri,Sun-Mon 22:00-24:00 +00:00",
        ] {
            let policy = RebootPolicy::parse(text).unwrap();
            assert_eq!(RebootPolicy::parse(&policy.to_string()), Ok(policy));
        }
        assert_eq!(
            RebootPolicy::parse("Fri,Sun-Mon 22:00-24:00 +00:00")
                .unwrap()
                .to_string(),
            "Sun,Mon,Fri 22:00-24:00 +00:00"
        );
        assert_eq!(
            RebootPolicy::parse("Mon,Tue,Wed,Thu,Fri 02:00-04:00 -01:30")
                .unwrap()
                .to_string(),
            "Mon-Fri 02:00-04:00 -01:30"
        );
        for bad in [
            "sometimes",
            "Mon-Fri 02:00-04:00",
            "Mon-Fri 2:00-4:00 +00:00",
            "Mon-Fry 02:00-04:00 +00:00",
            "Mon 04:00-04:00 +00:00",
            "Mon 02:00-04:00 +15:00",
            "Mon 02:00-25:00 +00:00",
        ] {
            assert!(RebootPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_weekday_window_with_an_offset() {
        // 02:00-04:00 at UTC+1 is 01:00-03:00 UTC.
        let w = RebootWindow::parse("Mon-Fri 02:00-04:00 +01:00").unwrap();
        assert!(!w.is_open(at(0, 0, 59)));
        assert!(w.is_open(at(0, 1, 0)));
        assert!(w.is_open(at(0, 2, 59)));
        assert!(!w.is_open(at(0, 3, 0)));
        // Saturday 01:30 UTC: not a window day.
        assert!(!w.is_open(at(5, 1, 30)));
        // From Monday noon the next opening is Tuesday 01:00 UTC.
        assert_eq!(w.next_open(at(0, 12, 0)), at(1, 1, 0));
        // From Friday noon it is the next Monday.
        assert_eq!(w.next_open(at(4, 12, 0)), at(7, 1, 0));
        assert_eq!(w.next_open(at(0, 1, 30)), at(0, 1, 30));
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opens() {
        let w = RebootWindow::parse("Sat 23:00-01:00 +00:00").unwrap();
        // Saturday 23:30 and Sunday 00:30 are open; Sunday 23:30 is not.
        assert!(w.is_open(at(5, 23, 30)));
        assert!(w.is_open(at(6, 0, 30)));
        assert!(!w.is_open(at(6, 1, 0)));
        assert!(!w.is_open(at(6, 23, 30)));
        assert_eq!(w.next_open(at(0, 12, 0)), at(5, 23, 0));
    }
}
