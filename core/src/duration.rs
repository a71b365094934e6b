//! Durations as oncely writes them, on the command line (`--ttl 7d`) and in URL options
//! (`?ack_wait=30s`) alike: `500ms`, `90s`, `15m`, `24h`, `7d`, or sums like `1h30m`.
//!
//! ```
//! use std::time::Duration;
//! use oncely_core::duration;
//!
//! assert_eq!(duration::parse("1h30m"), Ok(Duration::from_secs(5400)));
//! assert_eq!(duration::parse("0s"), Ok(Duration::ZERO));
//! assert!(duration::parse_positive("0s").is_err());
//! // A bare number is refused rather than guessed: `30` could mean seconds or minutes.
//! assert!(duration::parse("30").is_err());
//! ```

use std::time::Duration;

/// Why a duration could not be parsed. Its message says what is wrong and shows the accepted
/// forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The text is not in the grammar.
    #[error(
        "`{input}` is not a duration: {problem} (use a whole number and a unit: ms, s, m, h or d, e.g. 500ms, 90s, 15m, 24h, 7d)"
    )]
    Invalid {
        /// The text given.
        input: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// Zero, where only a duration longer than zero will do ([`parse_positive`]).
    #[error("it must be longer than 0s")]
    Zero,
}

/// What is wrong with a text that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Nothing but spaces.
    #[error("it is empty")]
    Empty,
    /// A part starts with something else than a digit (`s`, `-1s`, `1h 30m`).
    #[error("expected a number, found `{0}`")]
    ExpectedNumber(char),
    /// A number does not fit 64 bits.
    #[error("the number is too large")]
    NumberTooLarge,
    /// A number ends the text (`30`).
    #[error("the number has no unit")]
    NoUnit,
    /// A number has a decimal point or comma (`1.5h`).
    #[error("fractions are not accepted")]
    Fraction,
    /// A number is followed by neither a unit nor a digit (`1 h`).
    #[error("unexpected `{0}` after a number")]
    UnexpectedAfterNumber(char),
    /// The letters after a number are none of `ms`, `s`, `m`, `h`, `d` (`7w`).
    #[error("unknown unit")]
    UnknownUnit,
    /// The total does not fit in 64 bits of milliseconds.
    #[error("it is too long")]
    TooLong,
}

/// Parses a duration: one or more `<whole number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`,
/// spaces around the whole ignored. Zero (`0s`) is a duration.
///
/// A bare number is refused rather than guessed: `30` could mean seconds or minutes.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |problem: Problem| DurationError::Invalid {
        input: input.to_owned(),
        problem,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err(Problem::Empty));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if let (0, Some(c)) = (digits, rest.chars().next()) {
            return Err(err(Problem::ExpectedNumber(c)));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| err(Problem::NumberTooLarge))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(err(match rest.chars().next() {
                    None => Problem::NoUnit,
                    Some('.' | ',') => Problem::Fraction,
                    Some(c) => Problem::UnexpectedAfterNumber(c),
                }));
            }
            _ => return Err(err(Problem::UnknownUnit)),
        };
        rest = &rest[unit_len..];
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err(Problem::TooLong))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| err(Problem::TooLong))?;
    }
    Ok(total)
}

/// [`parse`], refusing zero: for timeouts and waits, where zero would end everything at once.
pub fn parse_positive(input: &str) -> Result<Duration, DurationError> {
    match parse(input)? {
        duration if duration.is_zero() => Err(DurationError::Zero),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(24 * 3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parts_add_up_and_spaces_around_are_ignored() {
        assert_eq!(parse(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_input_says_what_is_wrong_and_what_is_accepted() {
        for (input, problem) in [
            ("", "empty"),
            ("30", "no unit"),
            ("7w", "unknown unit"),
            ("s", "expected a number"),
            ("1.5h", "fractions"),
            ("-1s", "expected a number"),
            ("1 h", "unexpected ` `"),
            ("1h 30m", "found ` `"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999d", "too long"),
        ] {
            let message = parse(input).unwrap_err().to_string();
            assert!(message.contains(problem), "{input:?}: {message}");
            assert!(message.contains("e.g. 500ms, 90s"), "{message}");
        }
    }

    #[test]
    fn a_positive_duration_is_longer_than_zero() {
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_positive("0s"), Err(DurationError::Zero));
        assert_eq!(parse_positive("0h0m"), Err(DurationError::Zero));
        assert!(
            parse_positive("0s")
                .unwrap_err()
                .to_string()
                .contains("longer than 0s")
        );
        assert!(
            parse_positive("30")
                .unwrap_err()
                .to_string()
                .contains("e.g. 500ms")
        );
    }
}
