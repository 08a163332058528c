//! Load balancing over a Backend's endpoints (`loadBalancer.type`): RoundRobin (the default
//! without a TrafficPolicy saying otherwise), Random, and LeastRequest: power of two choices
//! over a peak-EWMA latency estimate weighted by requests in flight, as linkerd2-proxy does.
//! A Backend with one endpoint skips all of it.
//!
//! Known gap: a failed try is recorded with its (short) latency, so under LeastRequest an
//! endpoint that refuses connections at once looks fast; failures need a latency penalty
//! before LeastRequest can be the default.
//!
//! Peak EWMA: a slower try than the estimate replaces it at once (peaks are believed), a
//! faster one pulls it down with weight `1 - e^(-Δt/τ)`; with no samples the estimate decays
//! toward zero (τ = 10 s), so an endpoint that was slow is eventually tried again. The cost of
//! an endpoint is `(estimate + 0.1 ms) × (in flight + 1)`; P2C draws two endpoints at random and
//! takes the cheaper, which steers traffic away from slow or busy endpoints without the herd
//! behaviour of always taking the global minimum. Ejected endpoints are never drawn. A try
//! counts as in flight, and its latency is measured, until its response headers arrive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ficus_config::LoadBalancer;
use tokio::time::Instant;

/// Decay time constant of the latency estimate.
const TAU: Duration = Duration::from_secs(10);
/// Added to every estimate so unmeasured endpoints still weigh their requests in flight.
const FLOOR_NS: f64 = 100_000.0;

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
    at: Instant,
}

impl Estimate {
    fn decayed(self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.rtt_ns * (-elapsed / TAU.as_secs_f64()).exp()
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
        let rtt = load
            .estimate
            .lock()
            .map(|e| e.decayed(Instant::now()))
            .unwrap_or(0.0);
        let in_flight = load.in_flight.load(Ordering::Relaxed) as f64;
        (rtt + FLOOR_NS) * (in_flight + 1.0)
    }

    /// Counts a request in flight to `index` until the returned guard is dropped, which also
    /// records its latency.
    pub fn start(&self, index: usize) -> Option<InFlight> {
        let load = self.endpoints.get(index)?;
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            endpoints: Arc::clone(&self.endpoints),
            index,
            started: Instant::now(),
        })
    }
}

/// A request in flight to one endpoint; dropping it records the latency.
#[derive(Debug)]
pub struct InFlight {
    endpoints: Arc<[Load]>,
    index: usize,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let load = &self.endpoints[self.index];
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
        if let Ok(mut estimate) = load.estimate.lock() {
            let current = estimate.decayed(now);
            let next = if rtt > current {
                rtt
            } else {
                let elapsed = now.saturating_duration_since(estimate.at).as_secs_f64();
                let weight = (-elapsed / TAU.as_secs_f64()).exp();
                current * weight + rtt * (1.0 - weight)
            };
            *estimate = Estimate {
                rtt_ns: next,
                at: now,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn observe(ewma: &PeakEwma, index: usize, latency: Duration) {
        let guard = ewma.start(index).unwrap();
        tokio::time::advance(latency).await;
        drop(guard);
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
