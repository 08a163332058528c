//! Load balancing over a Backend's endpoints (`loadBalancer.type`): LeastRequest (the default:
//! power of two choices over a peak-EWMA latency estimate weighted by requests in flight, as
//! linkerd2-proxy and Finagle do), RoundRobin and Random. A Backend with one endpoint skips all
//! of it. Opaque TCP connections take no latency samples, so LeastRequest spreads them at
//! random (never to an ejected endpoint).
//!
//! Peak EWMA: a slower try than the estimate replaces it at once (peaks are believed), a
//! faster one pulls it down with weight `1 - e^(-Δt/τ)`; with no samples the estimate decays
//! toward zero (τ = 10 s), so an endpoint that was slow is eventually tried again. The cost of
//! an endpoint is `(estimate + penalty + 0.1 ms) × (in flight + 1)`; P2C draws two endpoints at
//! random and takes the cheaper, which steers traffic away from slow or busy endpoints without
//! the herd behaviour of always taking the global minimum. Ejected endpoints are never drawn. A
//! try counts as in flight, and its latency is measured, until its response headers arrive.
//!
//! # Failures
//! A failed try (what outlier detection counts: a 5xx, a gRPC status that maps to one, a reset,
//! a connect failure, a timeout) must not make an endpoint look fast, or an endpoint that
//! refuses at once would attract all the traffic. So a failure never lowers the latency
//! estimate, and it raises the endpoint's *penalty* to [`FAILURE_PENALTY`] (1 s, as if the try
//! had taken that long). The penalty decays faster than the estimate (τ = 2 s) and each success
//! halves it: a dead endpoint stays out of the way (with two endpoints and one caller at a time
//! it is tried again about 15 s after its last failure, sooner under concurrency, since the
//! healthy endpoint's in-flight requests raise its cost), while an endpoint with a rare failure
//! is back to its normal share after a few successes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ficus_config::LoadBalancer;
use tokio::time::Instant;

/// Decay time constant of the latency estimate.
const TAU: Duration = Duration::from_secs(10);
/// Decay time constant of the failure penalty.
const PENALTY_TAU: Duration = Duration::from_secs(2);
/// Added to every estimate so unmeasured endpoints still weigh their requests in flight.
const FLOOR_NS: f64 = 100_000.0;
/// The penalty of a failed try, as a latency.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// How a Backend picks an endpoint.
#[derive(Debug)]
pub enum Balancer {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// P2C over peak-EWMA × in-flight.
    LeastRequest(PeakEwma),
}

impl Balancer {
    /// For `endpoints` endpoints.
    pub fn new(kind: LoadBalancer, endpoints: usize) -> Self {
        // One endpoint: nothing to choose, so no per-request bookkeeping.
        if endpoints <= 1 {
            return Self::RoundRobin;
        }
        match kind {
            LoadBalancer::RoundRobin => Self::RoundRobin,
            LoadBalancer::Random => Self::Random,
            LoadBalancer::LeastRequest => Self::LeastRequest(PeakEwma::new(endpoints)),
        }
    }
}

/// Load estimates of a Backend's endpoints.
#[derive(Debug)]
pub struct PeakEwma {
    endpoints: Arc<[Load]>,
}

#[derive(Debug)]
struct Load {
    in_flight: AtomicUsize,
    estimate: Mutex<Estimate>,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    rtt_ns: f64,
    penalty_ns: f64,
    at: Instant,
}

impl Estimate {
    /// The latency estimate and the penalty at `now`.
    fn decayed(self, now: Instant) -> (f64, f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (
            self.rtt_ns * (-elapsed / TAU.as_secs_f64()).exp(),
            self.penalty_ns * (-elapsed / PENALTY_TAU.as_secs_f64()).exp(),
        )
    }

    /// The estimate after a try that took `rtt_ns` and `failed` (or not), observed at `now`.
    fn observe(self, now: Instant, rtt_ns: f64, failed: bool) -> Self {
        let (current, penalty) = self.decayed(now);
        let rtt = if rtt_ns > current {
            rtt_ns
        } else if failed {
            // A fast failure says nothing good about the endpoint.
            current
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
            let weight = (-elapsed / TAU.as_secs_f64()).exp();
            current * weight + rtt_ns * (1.0 - weight)
        };
        let penalty = if failed {
            penalty.max(FAILURE_PENALTY.as_nanos() as f64)
        } else {
            penalty / 2.0
        };
        Self {
            rtt_ns: rtt,
            penalty_ns: penalty,
            at: now,
        }
    }
}

impl PeakEwma {
    fn new(endpoints: usize) -> Self {
        let now = Instant::now();
        Self {
            endpoints: (0..endpoints)
                .map(|_| Load {
                    in_flight: AtomicUsize::new(0),
                    estimate: Mutex::new(Estimate {
                        rtt_ns: 0.0,
                        penalty_ns: 0.0,
                        at: now,
                    }),
                })
                .collect(),
        }
    }

    /// The cheaper of two distinct endpoints drawn at random among those `available`.
    pub fn pick(&self, available: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let first_from = |start: usize, skip: Option<usize>| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&j| Some(j) != skip && available(j))
        };
        let a = first_from(rand::random_range(0..n.max(1)), None)?;
        let Some(b) = first_from(rand::random_range(0..n.max(1)), Some(a)) else {
            return Some(a);
        };
        Some(if self.cost(b) < self.cost(a) { b } else { a })
    }

    fn cost(&self, index: usize) -> f64 {
        let load = &self.endpoints[index];
        let (rtt, penalty) = load
            .estimate
            .lock()
            .map(|e| e.decayed(Instant::now()))
            .unwrap_or((0.0, 0.0));
        let in_flight = load.in_flight.load(Ordering::Relaxed) as f64;
        (rtt + penalty + FLOOR_NS) * (in_flight + 1.0)
    }

    /// Counts a request in flight to `index` until the returned guard is finished or dropped,
    /// which also records its latency.
    pub fn start(&self, index: usize) -> Option<InFlight> {
        let load = self.endpoints.get(index)?;
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            endpoints: Arc::clone(&self.endpoints),
            index,
            started: Instant::now(),
            failed: false,
        })
    }
}

/// A request in flight to one endpoint. [`InFlight::finish`] records its latency and whether
/// it failed; dropping it unfinished (the caller went away) records the latency only.
#[derive(Debug)]
pub struct InFlight {
    endpoints: Arc<[Load]>,
    index: usize,
    started: Instant,
    failed: bool,
}

impl InFlight {
    /// Ends the try: `failed` as outlier detection counts failures.
    pub fn finish(mut self, failed: bool) {
        self.failed = failed;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let load = &self.endpoints[self.index];
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
        if let Ok(mut estimate) = load.estimate.lock() {
            *estimate = estimate.observe(now, rtt, self.failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn observe(ewma: &PeakEwma, index: usize, latency: Duration) {
        let guard = ewma.start(index).unwrap();
        tokio::time::advance(latency).await;
        guard.finish(false);
    }

    async fn fail(ewma: &PeakEwma, index: usize, latency: Duration) {
        let guard = ewma.start(index).unwrap();
        tokio::time::advance(latency).await;
        guard.finish(true);
    }

    /// How many of 1,000 picks go to each endpoint.
    fn shares(ewma: &PeakEwma) -> Vec<usize> {
        let mut counts = vec![0; ewma.endpoints.len()];
        for _ in 0..1000 {
            counts[ewma.pick(|_| true).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_fails_fast_does_not_attract_traffic() {
        let ewma = PeakEwma::new(3);
        for _ in 0..20 {
            observe(&ewma, 0, Duration::from_millis(5)).await;
            observe(&ewma, 1, Duration::from_millis(5)).await;
            fail(&ewma, 2, Duration::from_micros(50)).await;
        }
        // P2C only takes endpoint 2 when both draws are 2, which they never are (distinct).
        assert_eq!(shares(&ewma)[2], 0, "{:?}", shares(&ewma));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_penalty_fades_so_the_endpoint_is_probed_again() {
        let ewma = PeakEwma::new(2);
        observe(&ewma, 0, Duration::from_millis(2)).await;
        fail(&ewma, 1, Duration::from_micros(50)).await;
        assert!(ewma.cost(1) > 100.0 * ewma.cost(0));
        // Keep endpoint 0 measured (2 ms) while time passes: the penalty of 1 fades (τ 2 s).
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            observe(&ewma, 0, Duration::from_millis(2)).await;
        }
        assert!(
            ewma.cost(1) < ewma.cost(0),
            "probed again after the penalty fades"
        );
        // Successes halve what is left of a penalty.
        fail(&ewma, 1, Duration::from_micros(50)).await;
        for _ in 0..12 {
            observe(&ewma, 1, Duration::from_micros(50)).await;
        }
        assert!(
            ewma.cost(1) < ewma.cost(0),
            "recovered after a few successes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_never_lowers_the_latency_estimate() {
        let ewma = PeakEwma::new(2);
        observe(&ewma, 0, Duration::from_millis(50)).await;
        let before = ewma.endpoints[0].estimate.lock().unwrap().rtt_ns;
        fail(&ewma, 0, Duration::from_micros(10)).await;
        let after = ewma.endpoints[0].estimate.lock().unwrap().rtt_ns;
        assert!(after >= before * 0.99, "{before} -> {after}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_try_counts_its_latency_but_no_failure() {
        let ewma = PeakEwma::new(2);
        let guard = ewma.start(0).unwrap();
        tokio::time::advance(Duration::from_millis(20)).await;
        drop(guard);
        let estimate = *ewma.endpoints[0].estimate.lock().unwrap();
        assert_eq!(estimate.penalty_ns, 0.0);
        assert!(estimate.rtt_ns >= 20e6);
        assert_eq!(ewma.endpoints[0].in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_faster_endpoint() {
        let ewma = PeakEwma::new(2);
        observe(&ewma, 0, Duration::from_millis(50)).await;
        observe(&ewma, 1, Duration::from_millis(1)).await;
        let picks: Vec<_> = (0..100).filter_map(|_| ewma.pick(|_| true)).collect();
        assert!(picks.iter().all(|&i| i == 1), "{picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_weigh_on_the_cost() {
        let ewma = PeakEwma::new(2);
        let _busy: Vec<_> = (0..5).map(|_| ewma.start(0).unwrap()).collect();
        assert_eq!(ewma.pick(|_| true), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_estimate_decays_so_the_endpoint_is_tried_again() {
        let ewma = PeakEwma::new(2);
        observe(&ewma, 0, Duration::from_millis(50)).await;
        observe(&ewma, 1, Duration::from_millis(1)).await;
        assert!(ewma.cost(0) > ewma.cost(1));
        tokio::time::advance(Duration::from_secs(60)).await;
        // Both decayed: 50 ms × e^-6 ≈ 0.12 ms, 1 ms × e^-6 ≈ 2.5 µs; the gap is now small.
        assert!(ewma.cost(0) < 3.0 * ewma.cost(1));
    }

    #[test]
    fn unavailable_endpoints_are_never_picked() {
        let ewma = PeakEwma::new(3);
        for _ in 0..100 {
            assert_eq!(ewma.pick(|i| i == 2), Some(2));
        }
        assert_eq!(ewma.pick(|_| false), None);
    }
}
