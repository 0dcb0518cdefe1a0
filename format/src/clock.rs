//! Unix seconds as UTC calendar dates, for messages a person reads (an expired
//! update index names its expiry date) and for the init's log timestamps. No
//! time zone database: berth devices log and compare in UTC.

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard
/// Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC) of unix seconds.
pub fn utc_datetime(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(utc_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_datetime(1_700_000_000), "2023-11-14T22:13:20Z");
        // A leap day.
        assert_eq!(utc_datetime(951_782_400), "2000-02-29T00:00:00Z");
    }
}
