//! The partitioned layout's settings, from the URL, and the partitions' names.

use oncely_core::url::{redact_password, take_param};
use oncely_core::{Error, Result};

/// How wide one partition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One partition per UTC hour.
    Hourly,
    /// One partition per UTC day.
    Daily,
}

impl Granularity {
    /// `hourly` or `daily`, as in the URL and in `oncely_partitioning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hourly => "hourly",
            Granularity::Daily => "daily",
        }
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "hourly" => Some(Granularity::Hourly),
            "daily" => Some(Granularity::Daily),
            _ => None,
        }
    }

    /// The width of one partition, in ms.
    pub(super) fn millis(self) -> i64 {
        match self {
            Granularity::Hourly => 3_600_000,
            Granularity::Daily => 86_400_000,
        }
    }
}

/// The partitioned layout's settings: `?oncely_partitions=...&oncely_partitions_ahead=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partitioning {
    /// How wide one partition is.
    pub granularity: Granularity,
    /// How many partitions are kept ready after the current one.
    pub ahead: u32,
}

impl Partitioning {
    /// `granularity` with its default number of partitions ahead (8 daily, 48 hourly).
    pub fn new(granularity: Granularity) -> Self {
        let ahead = match granularity {
            Granularity::Hourly => 48,
            Granularity::Daily => 8,
        };
        Partitioning { granularity, ahead }
    }

    /// Takes `oncely_partitions` and `oncely_partitions_ahead` out of `url`: answers the rest of
    /// the URL and the layout asked for (`None`: the default, unpartitioned).
    pub fn from_url(url: &str) -> Result<(String, Option<Partitioning>)> {
        let (url, mode) = take_param(url, "oncely_partitions");
        let (url, ahead) = take_param(&url, "oncely_partitions_ahead");
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_password(&url),
            reason,
        };
        let granularity = match mode.as_deref() {
            None | Some("off") => None,
            Some(text) => Some(Granularity::parse(text).ok_or_else(|| {
                invalid(format!(
                    "oncely_partitions must be daily, hourly or off, not `{text}`"
                ))
            })?),
        };
        let partitioning = match (granularity, ahead) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "oncely_partitions_ahead needs oncely_partitions=daily or hourly".into(),
                ));
            }
            (Some(g), None) => Some(Partitioning::new(g)),
            (Some(g), Some(n)) => {
                let ahead = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "oncely_partitions_ahead must be a number of partitions from 1 to 1000, not `{n}`"
                        ))
                    })?;
                Some(Partitioning {
                    granularity: g,
                    ahead,
                })
            }
        };
        Ok((url, partitioning))
    }

    /// Where the partition holding `at` starts, in ms.
    pub(super) fn start_of(&self, at: i64) -> i64 {
        let width = self.granularity.millis();
        at.div_euclid(width) * width
    }

    /// The name of the partition starting at `start`: `oncely_records_YYYYMMDD[_HH]`, UTC.
    pub(super) fn name(&self, start: i64) -> String {
        let days = start.div_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        match self.granularity {
            Granularity::Daily => format!("oncely_records_{y:04}{m:02}{d:02}"),
            Granularity::Hourly => {
                let hour = start.rem_euclid(86_400_000) / 3_600_000;
                format!("oncely_records_{y:04}{m:02}{d:02}_{hour:02}")
            }
        }
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_utc_start() {
        let daily = Partitioning::new(Granularity::Daily);
        // 2026-01-01T13:45:00Z
        let at = 1_767_275_100_000;
        assert_eq!(daily.start_of(at), 1_767_225_600_000);
        assert_eq!(daily.name(daily.start_of(at)), "oncely_records_20260101");
        let hourly = Partitioning::new(Granularity::Hourly);
        assert_eq!(
            hourly.name(hourly.start_of(at)),
            "oncely_records_20260101_13"
        );
        assert_eq!(daily.name(0), "oncely_records_19700101");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn the_url_chooses_the_layout() {
        let (url, p) =
            Partitioning::from_url("postgres://h/db?sslmode=disable&oncely_partitions=hourly")
                .unwrap();
        assert_eq!(url, "postgres://h/db?sslmode=disable");
        assert_eq!(p, Some(Partitioning::new(Granularity::Hourly)));
        let (_, p) = Partitioning::from_url(
            "postgres://h/db?oncely_partitions=daily&oncely_partitions_ahead=3",
        )
        .unwrap();
        assert_eq!(
            p,
            Some(Partitioning {
                granularity: Granularity::Daily,
                ahead: 3
            })
        );
        assert_eq!(Partitioning::from_url("postgres://h/db").unwrap().1, None);
        assert_eq!(
            Partitioning::from_url("postgres://h/db?oncely_partitions=off")
                .unwrap()
                .1,
            None
        );
        let err = Partitioning::from_url("postgres://h/db?oncely_partitions=weekly").unwrap_err();
        assert!(err.to_string().contains("daily, hourly or off"), "{err}");
        assert!(Partitioning::from_url("postgres://h/db?oncely_partitions_ahead=3").is_err());
        assert!(
            Partitioning::from_url(
                "postgres://h/db?oncely_partitions=daily&oncely_partitions_ahead=0"
            )
            .is_err()
        );
    }
}
