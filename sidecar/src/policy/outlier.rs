//! Outlier ejection per Backend (`outlierDetection`): an endpoint that fails
//! `consecutive5xx` times in a row (5xx responses, resets, timeouts, connect failures) is left
//! out of the rotation for `baseEjectionTime × times ejected` (capped at 5 minutes, or the base
//! when that is longer). Never more than `maxEjectionPercent` of the endpoints are out at once,
//! though at least one may be. When its time is up the endpoint returns on probation: its
//! first failure ejects it again (for longer), a success clears its record.
//!
//! `interval` is the period of forgiveness, as in Envoy: for each `interval` an endpoint stays
//! in the rotation after an ejection, its count of times ejected drops by one, so an endpoint
//! that failed once long ago is not punished like one that keeps failing. Unlike Envoy there
//! is no sweep: failures eject as they happen (as Envoy's consecutive-5xx detection does too)
//! and an ejection ends exactly at its time rather than at the next sweep.
//!
//! When every endpoint is ejected, selection ignores ejection rather than failing the
//! request. State is lock-free atomics per endpoint; it lives on the snapshot and is carried
//! to the next one while the Backend and its policy are unchanged ([`super::Carryover`]);
//! `ficus_outlier_ejections_active` is kept right when state with ejections is dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ficus_config::OutlierDetection;
use http::Response;
use prometheus::IntGauge;
use tokio::time::Instant;

use super::grpc;
use crate::body::Body;
use crate::proxy::error::ProxyError;
use crate::upstream::UpstreamError;

/// Longest ejection, unless the base alone is longer.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The ejection state of a Backend's endpoints.
#[derive(Debug)]
pub struct Outliers {
    threshold: u32,
    base: Duration,
    /// `interval` in milliseconds (at least 1).
    interval_ms: u64,
    max_ejected: usize,
    origin: Instant,
    endpoints: Box<[Health]>,
    ejected: AtomicUsize,
    gauge: IntGauge,
}

/// One endpoint's record.
#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures.
    failures: AtomicU32,
    /// Milliseconds since `origin` (plus one) until which it is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Times ejected so far (multiplies the ejection time), before forgiveness.
    times: AtomicU32,
    /// Milliseconds since `origin` (plus one) when its last ejection ended; 0 if never.
    returned: AtomicU64,
}

impl Outliers {
    /// State for `endpoints` endpoints; `gauge` is `ficus_outlier_ejections_active`.
    pub fn new(config: &OutlierDetection, endpoints: usize, gauge: IntGauge) -> Self {
        let share = endpoints.saturating_mul(config.max_ejection_percent as usize) / 100;
        Self {
            threshold: config.consecutive_5xx.max(1),
            base: config.base_ejection_time,
            interval_ms: u64::try_from(config.interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            max_ejected: share.max(1),
            origin: Instant::now(),
            endpoints: (0..endpoints).map(|_| Health::default()).collect(),
            ejected: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Whether endpoint `index` is out of the rotation now. An ejection whose time is up ends
    /// here, on probation.
    pub fn is_ejected(&self, index: usize) -> bool {
        let Some(health) = self.endpoints.get(index) else {
            return false;
        };
        let until = health.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if self.now() < until {
            return true;
        }
        if health
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            self.gauge.dec();
            health.failures.store(self.threshold - 1, Ordering::Relaxed);
            health.returned.store(until, Ordering::Relaxed);
        }
        false
    }

    /// Records the outcome of a try on endpoint `index`.
    pub fn record(&self, index: usize, failed: bool) {
        let Some(health) = self.endpoints.get(index) else {
            return;
        };
        if !failed {
            health.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.threshold || health.ejected_until.load(Ordering::Acquire) != 0 {
            return;
        }
        let admitted = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_ejected).then_some(n + 1)
            });
        if admitted.is_err() {
            return;
        }
        // One ejection forgiven per interval spent in the rotation since the last one.
        let returned = health.returned.load(Ordering::Relaxed);
        let forgiven = match returned {
            0 => 0,
            at => self.now().saturating_sub(at) / self.interval_ms,
        };
        let previous = health.times.load(Ordering::Relaxed);
        let times = previous
            .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX))
            .saturating_add(1);
        health.times.store(times, Ordering::Relaxed);
        let length = self
            .base
            .saturating_mul(times)
            .min(MAX_EJECTION.max(self.base));
        let until = self.now() + u64::try_from(length.as_millis()).unwrap_or(u64::MAX / 2);
        match health
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                health.failures.store(0, Ordering::Relaxed);
                self.gauge.inc();
            }
            // Another failure ejected it first.
            Err(_) => {
                self.ejected.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Milliseconds since `origin`, plus one so that 0 means "not ejected".
    fn now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1)
    }
}

impl Drop for Outliers {
    fn drop(&mut self) {
        let active = self.ejected.load(Ordering::Acquire);
        self.gauge.sub(i64::try_from(active).unwrap_or(0));
    }
}

/// Whether a try ended by the downstream's doing (its request body failed or stalled): such a
/// try says nothing of the endpoint, good or bad, so it is not recorded at all.
pub fn is_downstream_fault(outcome: &Result<Response<Body>, ProxyError>) -> bool {
    matches!(
        outcome,
        Err(ProxyError::DownstreamBody | ProxyError::DownstreamTimeout)
    )
}

/// Whether a try counts against the endpoint: a 5xx, a gRPC status in the response headers
/// that stands for a server failure (e.g. a trailers-only `UNAVAILABLE`), or a failure of the
/// upstream (reset, connect failure, timeout). The downstream's own failures do not count.
pub fn is_failure(outcome: &Result<Response<Body>, ProxyError>) -> bool {
    match outcome {
        Ok(response) => {
            response.status().is_server_error()
                || response
                    .headers()
                    .get("grpc-status")
                    .and_then(|_| grpc::status(response.status(), response.headers()))
                    .is_some_and(grpc::is_server_failure)
        }
        // Our own connection cap says nothing about the endpoint.
        Err(ProxyError::Upstream(UpstreamError::ConnectionLimit { .. })) => false,
        // Nor does a server going away (restart, connection age) that left the stream out.
        Err(ProxyError::Upstream(error)) if error.is_refused_by_goaway() => false,
        // Nor does a client that broke off or stalled its request body.
        Err(ProxyError::DownstreamBody | ProxyError::DownstreamTimeout) => false,
        Err(ProxyError::Upstream(_) | ProxyError::UpstreamProtocol(_) | ProxyError::Timeout(_)) => {
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outliers(endpoints: usize, percent: u32) -> Outliers {
        let config = OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: percent,
        };
        Outliers::new(&config, endpoints, IntGauge::new("g", "g").unwrap())
    }

    fn fail(outliers: &Outliers, index: usize, times: usize) {
        for _ in 0..times {
            outliers.record(index, true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_successes_reset() {
        let outliers = outliers(4, 50);
        fail(&outliers, 0, 2);
        outliers.record(0, false);
        fail(&outliers, 0, 2);
        assert!(!outliers.is_ejected(0), "the success broke the run");
        fail(&outliers, 0, 1);
        assert!(outliers.is_ejected(0));
        assert_eq!(outliers.gauge.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_max_percent_but_at_least_one() {
        let outliers = outliers(4, 50);
        for index in 0..4 {
            fail(&outliers, index, 3);
        }
        let ejected = (0..4).filter(|i| outliers.is_ejected(*i)).count();
        assert_eq!(ejected, 2);
        let single = self::outliers(1, 10);
        fail(&single, 0, 3);
        assert!(single.is_ejected(0), "one endpoint may always be ejected");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_returns_on_probation_for_longer_each_time() {
        let outliers = outliers(2, 50);
        fail(&outliers, 0, 3);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(outliers.is_ejected(0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!outliers.is_ejected(0), "back after the base ejection time");
        assert_eq!(outliers.gauge.get(), 0);
        // On probation: one failure ejects it again, now for twice as long.
        fail(&outliers, 0, 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(outliers.is_ejected(0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!outliers.is_ejected(0));
        // A success clears the probation.
        outliers.record(0, false);
        fail(&outliers, 0, 2);
        assert!(!outliers.is_ejected(0));
    }

    #[tokio::test(start_paused = true)]
    async fn each_interval_in_the_rotation_forgives_one_ejection() {
        // interval 10 s, base 30 s.
        let outliers = outliers(2, 50);
        fail(&outliers, 0, 3);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!outliers.is_ejected(0));
        fail(&outliers, 0, 1);
        // Second ejection: 60 s.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!outliers.is_ejected(0));
        outliers.record(0, false);
        // 25 s in the rotation forgive two ejections of two: the next one is 30 s again.
        tokio::time::advance(Duration::from_secs(25)).await;
        fail(&outliers, 0, 3);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(outliers.is_ejected(0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!outliers.is_ejected(0));
        // Straight back on failure: 60 s, since nothing was forgiven.
        fail(&outliers, 0, 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(outliers.is_ejected(0));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_state_clears_its_ejections_from_the_gauge() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let config = OutlierDetection {
            consecutive_5xx: 1,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        let outliers = Outliers::new(&config, 3, gauge.clone());
        fail(&outliers, 0, 1);
        fail(&outliers, 2, 1);
        assert_eq!(gauge.get(), 2);
        drop(outliers);
        assert_eq!(gauge.get(), 0);
    }
}
