//! The clock at boot: the RTC (`/dev/rtc0`, `RTC_RD_TIME`, UTC) is read, and the
//! system clock is set from it when they differ by more than a few seconds —
//! the kernel usually did that already — and in any case to at least the
//! image's build epoch, or a later time the update state on the data partition
//! proves has passed (a device with a flat RTC battery would otherwise start
//! in 1970 or 2000, and signature expiry, TLS certificates and logs would
//! suffer). SNTP ([`crate::net::sntp`]) may then step it, never below that floor.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `RTC_RD_TIME`, `_IOR('p', 0x09, struct rtc_time)` (9 ints, 36 bytes). The
/// request type is `c_int` on musl and `c_ulong` on glibc: the bits are what
/// count, so the cast may wrap.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
const RTC_RD_TIME: libc::Ioctl = 0x8024_7009_u32 as libc::Ioctl;
/// Allowed difference between the RTC and the system clock.
const SLACK: Duration = Duration::from_secs(5);

/// Seconds since 1970 of a UTC calendar time, or `None` when out of range.
pub fn unix_seconds(tm: &libc::tm) -> Option<u64> {
    let year = i64::from(tm.tm_year) + 1900;
    let month = i64::from(tm.tm_mon) + 1;
    let day = i64::from(tm.tm_mday);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(tm.tm_hour) * 3600
        + i64::from(tm.tm_min) * 60
        + i64::from(tm.tm_sec);
    u64::try_from(secs).ok()
}

/// The RTC's time, as seconds since 1970.
fn read_rtc() -> std::io::Result<u64> {
    let file = std::fs::File::open("/dev/rtc0")?;
    // SAFETY: an all-zero `tm` is a valid value (integers and, on musl and glibc,
    // a null zone pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open; RTC_RD_TIME writes a `struct rtc_time`, whose nine
    // ints are the first fields of `libc::tm`, which is larger.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            RTC_RD_TIME,
            std::ptr::addr_of_mut!(tm),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    unix_seconds(&tm).ok_or_else(|| std::io::Error::other("the RTC holds an invalid date"))
}

/// What to set the clock to: the RTC when the system clock is off by more than
/// [`SLACK`], raised to the build epoch; `None` to leave it.
pub fn decide(system: u64, rtc: Option<u64>, epoch: u64) -> Option<u64> {
    let mut target = match rtc {
        Some(rtc) if system.abs_diff(rtc) > SLACK.as_secs() => rtc,
        _ => system,
    };
    target = target.max(epoch);
    (target != system).then_some(target)
}

/// Sets the system clock (`CLOCK_REALTIME`) to `since_epoch` after 1970.
pub fn set_clock(since_epoch: Duration) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: since_epoch
            .as_secs()
            .try_into()
            .map_err(std::io::Error::other)?,
        tv_nsec: since_epoch.subsec_nanos().into(),
    };
    // SAFETY: `ts` is a valid timespec for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the RTC and sets the system clock when it has to (see the module),
/// never below `floor` (the build epoch or a later time the device has seen).
pub fn set_clock_from_rtc(floor: u64) {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rtc = match read_rtc() {
        Ok(rtc) => Some(rtc),
        Err(err) => {
            log!("clock: no RTC (/dev/rtc0: {err})");
            None
        }
    };
    if let Some(target) = decide(system, rtc, floor) {
        let when = crate::shared::logfile::timestamp(UNIX_EPOCH + Duration::from_secs(target));
        match set_clock(Duration::from_secs(target)) {
            Ok(()) => log!("clock set to {when}"),
            Err(err) => log!("setting the clock to {when}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(year: i32, mon: i32, day: i32, h: i32, m: i32, s: i32) -> libc::tm {
        // SAFETY: an all-zero tm is valid.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = year - 1900;
        tm.tm_mon = mon - 1;
        tm.tm_mday = day;
        tm.tm_hour = h;
        tm.tm_min = m;
        tm.tm_sec = s;
        tm
    }

    #[test]
    fn calendar_to_unix_seconds() {
        assert_eq!(unix_seconds(&tm(1970, 1, 1, 0, 0, 0)), Some(0));
        assert_eq!(unix_seconds(&tm(2000, 2, 29, 0, 0, 0)), Some(951_782_400));
        assert_eq!(
            unix_seconds(&tm(2026, 11, 24, 7, 59, 1)),
            Some(1_795_507_141)
        );
        assert_eq!(unix_seconds(&tm(2026, 13, 1, 0, 0, 0)), None);
    }

    #[test]
    fn clock_decisions() {
        // In agreement, after the epoch: nothing.
        assert_eq!(decide(1000, Some(1002), 500), None);
        // The RTC is right, the clock is not.
        assert_eq!(decide(0, Some(1000), 500), Some(1000));
        // No RTC, clock before the build: the build epoch.
        assert_eq!(decide(10, None, 500), Some(500));
        // RTC before the build too: the epoch wins.
        assert_eq!(decide(10, Some(100), 500), Some(500));
    }
}
