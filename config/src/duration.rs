//! Gateway API durations: `500ms`, `2s`, `1m30s`, `1h`.
//!
//! The Gateway API's `Duration` (GEP-2257) is one to four `<integer><unit>` pairs with the units
//! `h`, `m`, `s` and `ms`, each integer of at most five digits. Signs, fractions, spaces and
//! other units (`us`, `d`) are rejected rather than guessed at, so `1.5s` is an error that says
//! to write `1500ms`. The bounds keep every duration under 12 years, so deadlines computed from
//! them (`now + timeout`) cannot overflow.

use std::time::Duration;

/// Most `<integer><unit>` pairs in one duration.
const MAX_PARTS: usize = 4;
/// Most digits in one integer.
const MAX_DIGITS: usize = 5;

/// Parses a Gateway API duration such as `2s`, `500ms`, `1m30s` or `0s`.
///
/// The error is a sentence for a user, e.g. `unknown unit "d" (use h, m, s or ms)`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration (write e.g. 2s or 500ms)".to_owned());
    }
    if s.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(format!(
                "{s:?} has more than {MAX_PARTS} parts (write e.g. 1h30m, not 1h20m10m)"
            ));
        }
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(match after.chars().next() {
                Some('+') | Some('-') => "signs are not allowed inside a duration".to_owned(),
                Some('.') => "fractions are not allowed (write 1500ms, not 1.5s)".to_owned(),
                Some(c) if c.is_ascii_alphabetic() => {
                    format!("unit without a number before it in {s:?}")
                }
                _ => format!("unexpected {:?} (write e.g. 2s, 500ms or 1m30s)", after),
            });
        }
        let units = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(units);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                Some('.') | Some(',') => {
                    "fractions are not allowed (write 1500ms, not 1.5s)".to_owned()
                }
                Some(_) => format!("unexpected {after:?} after {number:?}"),
                None => format!("{number:?} has no unit (use h, m, s or ms)"),
            });
        }
        if number.len() > MAX_DIGITS {
            return Err(format!(
                "{number:?} has more than {MAX_DIGITS} digits (use a larger unit, e.g. 2h, not 7200000ms)"
            ));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{number:?} is too large"))?;
        let part = match unit {
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(value)),
            "ms" => Some(Duration::from_millis(value)),
            other => return Err(format!("unknown unit {other:?} (use h, m, s or ms)")),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        rest = after;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_gateway_api_examples() {
        let cases = [
            ("0s", Duration::ZERO),
            ("2s", Duration::from_secs(2)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1h1m1s1ms", Duration::from_millis(3_661_001)),
            ("007s", Duration::from_secs(7)),
            ("10m", Duration::from_secs(600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "", "-1s", "1.5s", "1", "s", "1d", "1us", "1 s", " 1s", "1s ", "+1s", "1S", "1m-1s",
            "ms", "1s,", "1.s", "1e3ms", "０s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn bounds_follow_the_gateway_api() {
        let longest = "99999h99999m99999s99999ms";
        let want = Duration::from_millis(((99_999 * 60 + 99_999) * 60 + 99_999) * 1000 + 99_999);
        assert_eq!(parse_duration(longest), Ok(want));
        assert!(parse_duration("100000s").unwrap_err().contains("5 digits"));
        assert!(parse_duration("1h1m1s1ms1ms")
            .unwrap_err()
            .contains("4 parts"));
        // Far enough from overflow for any deadline computed from it.
        assert!(std::time::Instant::now().checked_add(want).is_some());
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("18446744073709551615s1s").is_err());
    }

    #[test]
    fn errors_explain() {
        assert!(parse_duration("1.5s").unwrap_err().contains("1500ms"));
        assert!(parse_duration("3d")
            .unwrap_err()
            .contains("unknown unit \"d\""));
        assert!(parse_duration("-2s").unwrap_err().contains("negative"));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
    }

    fn components() -> impl Strategy<Value = Vec<(u64, &'static str)>> {
        prop::collection::vec(
            (
                0u64..100_000,
                prop::sample::select(vec!["h", "m", "s", "ms"]),
            ),
            1..5,
        )
    }

    proptest! {
        #[test]
        fn roundtrips_components(parts in components()) {
            let text: String = parts.iter().map(|(n, unit)| format!("{n}{unit}")).collect();
            let want: u64 = parts
                .iter()
                .map(|(n, unit)| match *unit {
                    "h" => n * 3_600_000,
                    "m" => n * 60_000,
                    "s" => n * 1_000,
                    _ => *n,
                })
                .sum();
            prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(want)));
        }

        #[test]
        fn roundtrips_canonical_form(millis in 0u64..10_000_000_000) {
            let d = Duration::from_millis(millis);
            let (h, m) = (millis / 3_600_000, millis / 60_000 % 60);
            let (s, ms) = (millis / 1000 % 60, millis % 1000);
            let text = format!("{h}h{m}m{s}s{ms}ms");
            prop_assert_eq!(parse_duration(&text), Ok(d));
        }

        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn rejects_fractions(whole in 0u64..1000, frac in 1u64..1000) {
            let text = format!("{whole}.{frac}s");
            prop_assert!(parse_duration(&text).is_err());
        }
    }
}
