//! Resilience policies of the request path, each built once per config from validated values.
//!
//! # Layout
//! - [`retry`] — which outcomes are retried, backoff with full jitter, replayable bodies.
//! - [`budget`] — the retry budget of a Backend (a ratio of requests plus a floor per second).
//! - [`breaker`] — circuit breaking: caps on concurrent and queued requests per Backend.
//! - [`fault`] — fault injection: delays and aborts for a share of a Backend's requests.
//! - [`rate_limit`] — a token bucket the receiving sidecar applies to its own Backend.
//! - [`outlier`] — outlier ejection: failing endpoints leave the rotation for a while.
//! - [`balance`] — endpoint choice: P2C over peak-EWMA (default), round robin, random.
//! - [`grpc`] — gRPC status codes read from response headers, for retries and failures.
//! - [`BackendPolicy`] — what a Backend's TrafficPolicy compiles to.
//!
//! Policies live on the `Snapshot` (per rule or per Backend), so a config swap resets their
//! state (budgets, counters). That is deliberate: state never outlives the config that sized it.
//!
//! # Ordering
//! Outbound (`proxy/outbound.rs`), after routing picks a Backend:
//! 1. fault injection — it stands in for the network, so it runs first and holds no slot;
//! 2. circuit breaker — one slot per exchange, held until the response body ends;
//! 3. mirror — a copy leaves before the main request, from its own task;
//! 4. retries (`proxy/retrying.rs`) — within the route's total deadline and the Backend's
//!    budget; each try picks its endpoint through the balancer (skipping ejected endpoints),
//!    counts as in flight for P2C, and reports its outcome to outlier detection.
//!
//! Inbound (`proxy/inbound.rs`): authorization, then the rate limit (denied requests spend no
//! token), then the app.
//!
//! Cost when unconfigured: a route without `retry` and a Backend without TrafficPolicy take one
//! branch per policy and allocate nothing more than before.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod fault;
pub mod grpc;
pub mod outlier;
pub mod rate_limit;
pub mod retry;

use ficus_config::TrafficPolicy;

use self::balance::Balancer;
use self::breaker::Breaker;
use self::budget::RetryBudget;
use self::fault::Fault;
use self::outlier::Outliers;
use crate::telemetry::metrics::Metrics;

/// A Backend's compiled TrafficPolicy (defaults when it has none).
#[derive(Debug)]
pub struct BackendPolicy {
    /// Retry budget shared by every route that sends to this Backend.
    pub budget: RetryBudget,
    /// Caps on concurrent and queued requests (`connectionPool`).
    pub breaker: Option<Breaker>,
    /// Faults to inject (`faultInjection`), when any can happen.
    pub fault: Option<Fault>,
    /// Ejection state of the endpoints (`outlierDetection`).
    pub outliers: Option<Outliers>,
    /// How endpoints are chosen (`loadBalancer`; LeastRequest without a TrafficPolicy).
    pub balancer: Balancer,
}

impl BackendPolicy {
    /// Compiles `policy` (the TrafficPolicy targeting the Backend, if any) for a Backend of
    /// `endpoints` endpoints.
    pub fn new(policy: Option<&TrafficPolicy>, endpoints: usize, metrics: &Metrics) -> Self {
        let budget = match policy.and_then(|p| p.retry_budget) {
            Some(b) => RetryBudget::new(b.percent / 100.0, b.min_retries_per_second),
            None => RetryBudget::default(),
        };
        Self {
            budget,
            breaker: policy
                .and_then(|p| p.connection_pool.as_ref())
                .map(Breaker::new),
            fault: policy
                .and_then(|p| p.fault_injection.as_ref())
                .and_then(Fault::new),
            outliers: policy
                .and_then(|p| p.outlier_detection.as_ref())
                .map(|o| Outliers::new(o, endpoints, metrics.outlier_ejections_active.clone())),
            balancer: Balancer::new(
                policy.map(|p| p.load_balancer).unwrap_or_default(),
                endpoints,
            ),
        }
    }
}
