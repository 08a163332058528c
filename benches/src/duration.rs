//! Command-line durations: `15s`, `500ms`, `250us`, `2m`, or a bare number of seconds.

use std::time::Duration;

/// A duration on the command line could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The text is not a non-negative number followed by `us`, `ms`, `s`, `m` or nothing.
    #[error("{input:?} is not a duration; write e.g. 15s, 500ms, 2m or 15")]
    Invalid {
        /// What was given.
        input: String,
    },
}

/// Reads `15s`, `500ms`, `250us`, `2m`, `1.5s` or `15` (seconds).
///
/// Used as a clap `value_parser`, so a bad flag is reported with its name.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid {
        input: input.to_owned(),
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units() {
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "-1s", "1h", "1.2.3s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
