//! Durations on the command line: `500ms`, `90s`, `15m`, `24h`, `7d`, or sums like `1h30m`.

use std::fmt;
use std::time::Duration;

/// Why a duration could not be parsed. Its message shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    problem: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a duration: {} (use a whole number and a unit: ms, s, m, h or d, e.g. 500ms, 90s, 15m, 24h, 7d)",
            self.input, self.problem
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration: one or more `<whole number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
///
/// A bare number is refused rather than guessed: `30` could mean seconds or minutes.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |problem: &str| DurationError {
        input: input.to_owned(),
        problem: problem.to_owned(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if let (0, Some(c)) = (digits, rest.chars().next()) {
            return Err(err(&format!("expected a number, found `{c}`")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("the number is too large"))?;
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
                return Err(match rest.chars().next() {
                    None => err("the number has no unit"),
                    Some('.' | ',') => err("fractions are not accepted"),
                    Some(c) => err(&format!("unexpected `{c}` after a number")),
                });
            }
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err("it is too long"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| err("it is too long"))?;
    }
    Ok(total)
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
}
