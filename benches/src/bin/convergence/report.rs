//! From what the simulated sidecars recorded to the numbers the bench reports.
//!
//! Sidecar `s` *has* version `v` from the arrival of the first snapshot with a version ≥ `v`:
//! the control plane sends only the newest version, so a sidecar that was behind may skip
//! `v` and still be current. It ACKs every snapshot as soon as it arrives, so arrival is also
//! when the ACK leaves (the control plane processes it a little later).

use std::time::{Duration, Instant};

use ficus_benches::latency::Latencies;
use serde_json::{json, Value};

use crate::sidecar::StreamRecord;

/// One measured apply.
#[derive(Debug, Clone)]
pub struct ApplyRun {
    /// The version it committed.
    pub version: u64,
    /// Just before the API request was sent.
    pub started: Instant,
    /// API round trip: validated, durable and published.
    pub response: Duration,
}

/// Latencies of every apply.
#[derive(Debug)]
pub struct Convergence {
    /// Per apply, apply start → the last sidecar has the version; applies some sidecar never
    /// got are left out (and counted in `incomplete`).
    pub all: Vec<Duration>,
    /// Per apply, apply start → the first sidecar has the version.
    pub first: Vec<Duration>,
    /// Every (sidecar, apply) pair: apply start → that sidecar has the version.
    pub each: Latencies,
    /// Applies that not every sidecar got.
    pub incomplete: usize,
    /// (sidecar, apply) pairs with no snapshot of that version or later.
    pub missing: u64,
    /// (sidecar, apply) pairs where the sidecar got a later version instead.
    pub skipped: u64,
}

/// Works out every apply's latencies from the streams' records.
pub fn convergence(applies: &[ApplyRun], records: &[StreamRecord]) -> Convergence {
    let mut result = Convergence {
        all: Vec::new(),
        first: Vec::new(),
        each: Latencies::new(),
        incomplete: 0,
        missing: 0,
        skipped: 0,
    };
    for apply in applies {
        let mut first: Option<Duration> = None;
        let mut last = Duration::ZERO;
        let mut complete = true;
        for record in records {
            let Some(&(version, arrived)) =
                record.received.iter().find(|(v, _)| *v >= apply.version)
            else {
                result.missing += 1;
                complete = false;
                continue;
            };
            if version > apply.version {
                result.skipped += 1;
            }
            let latency = arrived.saturating_duration_since(apply.started);
            result.each.record(latency);
            first = Some(first.map_or(latency, |f| f.min(latency)));
            last = last.max(latency);
        }
        if let Some(first) = first {
            result.first.push(first);
        }
        if complete && !records.is_empty() {
            result.all.push(last);
        } else {
            result.incomplete += 1;
        }
    }
    result
}

/// Nearest-rank percentiles of a handful of values, in milliseconds. With 20 values p99 is
/// the maximum; that is the honest reading of 20 samples.
pub fn ranks(values: &[Duration]) -> Value {
    if values.is_empty() {
        return json!({"count": 0});
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        ms(sorted[index])
    };
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    json!({
        "count": sorted.len(),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "max_ms": ms(sorted[sorted.len() - 1]),
        "mean_ms": ms(mean),
    })
}

/// Milliseconds, rounded to the microsecond.
pub fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: Instant, versions: &[(u64, u64)]) -> StreamRecord {
        StreamRecord {
            received: versions
                .iter()
                .map(|&(v, ms)| (v, at + Duration::from_millis(ms)))
                .collect(),
            ..StreamRecord::default()
        }
    }

    #[test]
    fn the_last_sidecar_decides_and_a_skipped_version_counts_as_had() {
        let t = Instant::now();
        let applies = [
            ApplyRun {
                version: 2,
                started: t + Duration::from_millis(1000),
                response: Duration::from_millis(5),
            },
            ApplyRun {
                version: 3,
                started: t + Duration::from_millis(2000),
                response: Duration::from_millis(5),
            },
        ];
        let records = [
            record(t, &[(1, 10), (2, 1110), (3, 2120)]),
            record(t, &[(1, 20), (3, 2150)]),
        ];
        let c = convergence(&applies, &records);
        assert_eq!(
            c.all,
            [Duration::from_millis(1150), Duration::from_millis(150)]
        );
        assert_eq!(
            c.first,
            [Duration::from_millis(110), Duration::from_millis(120)]
        );
        assert_eq!((c.skipped, c.missing, c.incomplete), (1, 0, 0));
        assert_eq!(c.each.len(), 4);
    }

    #[test]
    fn a_sidecar_without_the_version_makes_the_apply_incomplete() {
        let t = Instant::now();
        let applies = [ApplyRun {
            version: 2,
            started: t,
            response: Duration::ZERO,
        }];
        let records = [record(t, &[(1, 0), (2, 100)]), record(t, &[(1, 0)])];
        let c = convergence(&applies, &records);
        assert!(c.all.is_empty());
        assert_eq!((c.missing, c.incomplete), (1, 1));
    }

    #[test]
    fn nearest_rank() {
        let values: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let r = ranks(&values);
        assert_eq!(r["p50_ms"], 10.0);
        assert_eq!(r["p99_ms"], 20.0);
        assert_eq!(r["mean_ms"], 10.5);
    }
}
