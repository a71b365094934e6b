//! Sizes on the command line: plain bytes (`65536`), or a whole number of `B`, `KiB`, `MiB` or
//! `GiB` (`64KiB`, `1MiB`).

use std::fmt;

/// Why a size could not be parsed. Its message shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    input: String,
    problem: String,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a size: {} (use a whole number of bytes, or of KiB, MiB or GiB, e.g. \
             65536, 64KiB, 1MiB)",
            self.input, self.problem
        )
    }
}

impl std::error::Error for SizeError {}

/// Parses a size in bytes: a whole number, optionally followed by `B`, `KiB`, `MiB` or `GiB`
/// (any case). Decimal units (`KB`, `MB`) are refused rather than guessed: they are read as
/// 1,000 or 1,024 by different tools.
pub fn parse(input: &str) -> Result<usize, SizeError> {
    let err = |problem: &str| SizeError {
        input: input.to_owned(),
        problem: problem.to_owned(),
    };
    let text = input.trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(err(if text.is_empty() {
            "it is empty"
        } else {
            "it does not start with a number"
        }));
    }
    let number: usize = text[..digits]
        .parse()
        .map_err(|_| err("the number is too large"))?;
    let unit = &text[digits..];
    let multiplier: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ if unit.starts_with(['.', ',']) => return Err(err("fractions are not accepted")),
        _ => return Err(err(&format!("unknown unit `{unit}`"))),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| err("it is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_binary_units() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("512B"), Ok(512));
        assert_eq!(parse("64KiB"), Ok(64 * 1024));
        assert_eq!(parse("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse(" 2mib "), Ok(2 * 1024 * 1024));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn bad_input_says_what_is_wrong_and_what_is_accepted() {
        for (input, problem) in [
            ("", "empty"),
            ("MiB", "does not start with a number"),
            ("-1", "does not start with a number"),
            ("1MB", "unknown unit `MB`"),
            ("1 MiB", "unknown unit ` MiB`"),
            ("1.5MiB", "fractions"),
            ("99999999999999999999999", "too large"),
            ("99999999999999GiB", "too large"),
        ] {
            let message = parse(input).unwrap_err().to_string();
            assert!(message.contains(problem), "{input:?}: {message}");
            assert!(message.contains("e.g. 65536, 64KiB, 1MiB"), "{message}");
        }
    }
}
