//! Kubernetes resource quantities (`250m`, `1.5Gi`, `2`), compared exactly.
//!
//! Injection compares quantities twice: a limit annotation must not be below the request, and
//! a pod whose containers all have limits equal to their requests (Kubernetes' Guaranteed
//! class) gets a sidecar whose limits equal its requests. Both need values, not text: `1` and
//! `1000m` are equal, `1Gi` is more than `1000Mi`. A value is kept as an integer times a power
//! of ten, so no float rounding decides a comparison.
//!
//! The grammar is a positive decimal number (`1`, `0.5`, `.5`) and an optional suffix, `m`,
//! `k`, `M`, `G`, `T`, `P`, `E` or `Ki` ... `Ei`. Kubernetes also accepts signs, exponents
//! (`1e3`) and `n`/`u`; those are refused in annotations (write the plain form) and, in an app
//! container, make its resources count as not comparable.

use std::cmp::Ordering;

/// A parsed quantity: the text as written, and its exact value.
#[derive(Debug, Clone)]
pub struct Quantity {
    text: String,
    /// The value is `significand * 10^exponent`, with no trailing zero in `significand`,
    /// so that equal values have equal fields.
    significand: u128,
    exponent: i32,
}

impl Quantity {
    /// Parses `text`; `None` when it is not a positive quantity of the grammar above (or is
    /// too large to compare, beyond ~10^38 of its unit).
    pub fn parse(text: &str) -> Option<Self> {
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return None;
        }
        let mut significand: u128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            significand = significand
                .checked_mul(10)?
                .checked_add(u128::from(digit - b'0'))?;
        }
        let mut exponent = -i32::try_from(fraction.len()).ok()?;
        let (decimal, binary): (i32, u32) = match suffix {
            "" => (0, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            _ => return None,
        };
        significand = significand.checked_mul(1u128.checked_shl(binary)?)?;
        exponent += decimal;
        if significand == 0 {
            return None;
        }
        while significand.is_multiple_of(10) {
            significand /= 10;
            exponent += 1;
        }
        Some(Self {
            text: text.to_owned(),
            significand,
            exponent,
        })
    }

    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

// === impl Quantity ===

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Equal values are equal whatever their text (`1` and `1000m`).
impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        // Scale the one with the larger exponent down to the other's; a product past u128 is
        // larger than any significand.
        let scaled = |q: &Self, to: i32| {
            let shift = u32::try_from(q.exponent - to).unwrap_or(u32::MAX);
            10u128
                .checked_pow(shift)
                .and_then(|factor| q.significand.checked_mul(factor))
        };
        let to = self.exponent.min(other.exponent);
        match (scaled(self, to), scaled(other, to)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            // Both are scaled to the smaller exponent, so one of them is not scaled at all.
            (None, None) => Ordering::Equal,
        }
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap_or_else(|| panic!("{text:?} parses"))
    }

    #[test]
    fn the_plain_forms_parse_and_keep_their_text() {
        for text in [
            "1", "250m", "0.5", ".5", "5.", "100m", "1.5Gi", "64Mi", "2k", "1E", "1Ei", "007",
        ] {
            assert_eq!(q(text).as_str(), text);
        }
        for bad in [
            "", ".", "0", "0.0", "0m", "-1", "+1", "1e3", "1.2.3m", "lots", "12Mb", "1 Gi", "1n",
            "1u", "Gi", "1..5",
        ] {
            assert!(Quantity::parse(bad).is_none(), "{bad:?} is refused");
        }
        assert!(Quantity::parse("99999999999999999999999999999999999999999").is_none());
    }

    #[test]
    fn values_compare_across_suffixes() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("2"), q("2.000"));
        assert!(q("1Gi") > q("1000Mi"));
        assert!(q("1Gi") > q("1G"), "binary giga is more than decimal");
        assert!(q("1Mi") < q("1.1M"));
        assert!(q("250m") < q("1"));
        assert!(q("100m") < q("0.101"));
        assert!(q("1Ei") > q("1E"));
        assert!(q("1E") > q("999999999999999999m"));
        assert!(q("1") > q("0.0000000000000000000000000000000000001"));
    }
}
