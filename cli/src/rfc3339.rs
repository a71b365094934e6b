//! RFC 3339 UTC formatting of store timestamps, without a date-time dependency.

use oncely::Timestamp;

/// Formats `ts` as RFC 3339 in UTC with milliseconds, e.g. `2026-03-01T12:00:00.250Z`.
pub fn format(ts: Timestamp) -> String {
    let ms = ts.as_millis();
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let f = |ms| format(Timestamp::from_millis(ms));
        assert_eq!(f(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(f(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(f(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(f(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(f(-1), "1969-12-31T23:59:59.999Z");
    }
}
