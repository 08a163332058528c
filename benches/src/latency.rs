//! Latency recording: an hdrhistogram of whole microseconds, summarised in milliseconds.
//!
//! Microseconds because the sidecar's budget (0.06 ms added at the median) is tens of them;
//! three significant digits keep 1 µs resolution up to about 2 ms and 0.1 % relative error
//! beyond.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency that is recorded exactly; longer ones are clamped to it.
const HIGHEST_MICROS: u64 = 120_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

/// Percentiles of a [`Latencies`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of recorded values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Smallest recorded value.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest recorded value.
    pub max_ms: f64,
}

impl Latencies {
    /// An empty histogram covering 1 µs to 120 s with three significant digits.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // sigfig <= 5), so construction cannot fail.
        let histogram = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one latency, clamped into the histogram's range.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    /// Adds every value of `other` (both have the same bounds, so nothing is lost).
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: `add` only fails when `other` holds values this one
        // cannot, which the shared constructor rules out.
        self.histogram
            .add(&other.histogram)
            .expect("histograms with equal bounds merge");
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// Percentiles in milliseconds; all zero when nothing was recorded.
    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        let ms = |micros: u64| micros as f64 / 1e3;
        if h.is_empty() {
            return Summary {
                count: 0,
                mean_ms: 0.0,
                min_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1e3,
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Summary ===

impl Summary {
    /// The summary as JSON fields (`p50_ms`, ..., rounded to the microsecond).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let round = |v: f64| serde_json::json!((v * 1e3).round() / 1e3);
        let mut map = serde_json::Map::new();
        map.insert("mean_ms".into(), round(self.mean_ms));
        map.insert("min_ms".into(), round(self.min_ms));
        map.insert("p50_ms".into(), round(self.p50_ms));
        map.insert("p90_ms".into(), round(self.p90_ms));
        map.insert("p99_ms".into(), round(self.p99_ms));
        map.insert("p999_ms".into(), round(self.p999_ms));
        map.insert("max_ms".into(), round(self.max_ms));
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut latencies = Latencies::new();
        for micros in 1..=1000 {
            latencies.record(Duration::from_micros(micros));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.min_ms, 0.001);
        assert_eq!(summary.p50_ms, 0.5);
        assert_eq!(summary.p99_ms, 0.99);
        assert_eq!(summary.max_ms, 1.0);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        // Beyond ~2 ms a bucket is 2 µs wide: three significant digits, not exact.
        assert!((a.summary().max_ms - 3.0).abs() <= 0.003);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latencies::new().summary().p99_ms, 0.0);
    }
}
