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
//! Policies live on the `Snapshot` (per rule or per Backend). A config swap keeps a Backend's
//! policy state (breaker slots, ejections, retry budget, load estimates) when neither the
//! Backend nor its TrafficPolicy changed ([`Carryover`]): users expect a push of an unrelated
//! change to leave ejected endpoints ejected. A changed Backend or policy starts afresh, since
//! its state was sized by the old values.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ficus_config::{Backend, RateLimit, ResourceKey, TrafficPolicy};
use tokio::sync::Semaphore;

use self::balance::Balancer;
use self::breaker::Breaker;
use self::budget::RetryBudget;
use self::fault::Fault;
use self::outlier::Outliers;
use self::rate_limit::RateLimiter;
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
    /// Compiles `policy` (the TrafficPolicy targeting the Backend, if any) for a Backend whose
    /// endpoints have these `weights` (one per endpoint).
    pub fn new(policy: Option<&TrafficPolicy>, weights: &[u32], metrics: &Arc<Metrics>) -> Self {
        let endpoints = weights.len();
        let budget = match policy.and_then(|p| p.retry_budget) {
            Some(b) => RetryBudget::new(b.percent / 100.0, b.min_retries_per_second),
            None => RetryBudget::default(),
        };
        Self {
            budget,
            breaker: policy
                .and_then(|p| p.connection_pool.as_ref())
                .map(|pool| Breaker::new(pool, metrics)),
            fault: policy
                .and_then(|p| p.fault_injection.as_ref())
                .and_then(Fault::new),
            outliers: policy
                .and_then(|p| p.outlier_detection.as_ref())
                .map(|o| Outliers::new(o, endpoints, metrics.outlier_ejections_active.clone())),
            balancer: Balancer::new(policy.map(|p| p.load_balancer).unwrap_or_default(), weights),
        }
    }
}

impl BackendPolicy {
    /// Marks an upstream request as this Backend's, for its `maxConnections` cap.
    pub fn tag<B>(&self, request: &mut http::Request<B>) {
        if let Some(breaker) = &self.breaker {
            breaker.tag(request);
        }
    }
}

/// The policy state of each Backend, kept from one snapshot to the next while the Backend and
/// its TrafficPolicy are unchanged. Holds weak references only: the state lives as long as a
/// snapshot uses it.
#[derive(Debug, Default)]
pub struct Carryover {
    kept: Mutex<HashMap<ResourceKey, Kept>>,
    /// Rate limiters by what they limit (`inbound`, `route:<namespace>/<name>`).
    limiters: Mutex<HashMap<String, (RateLimit, Weak<RateLimiter>)>>,
    /// Places of mirrored copies in flight, by mirror Backend: the copies a swap leaves
    /// running still count.
    mirrors: Mutex<HashMap<ResourceKey, Weak<Semaphore>>>,
}

#[derive(Debug)]
struct Kept {
    backend: Backend,
    policy: Option<TrafficPolicy>,
    state: Weak<BackendPolicy>,
}

impl Carryover {
    /// The state for `backend` under `policy`: the one in use when both are as before, else
    /// new state compiled from them.
    pub fn policy(
        &self,
        backend: &Backend,
        policy: Option<&TrafficPolicy>,
        metrics: &Arc<Metrics>,
    ) -> Arc<BackendPolicy> {
        let build = || {
            let weights: Vec<u32> = backend.endpoints.iter().map(|e| e.weight).collect();
            Arc::new(BackendPolicy::new(policy, &weights, metrics))
        };
        let Ok(mut kept) = self.kept.lock() else {
            return build();
        };
        if let Some(previous) = kept.get(&backend.key) {
            if previous.backend == *backend && previous.policy.as_ref() == policy {
                if let Some(state) = previous.state.upgrade() {
                    return state;
                }
            }
        }
        let state = build();
        kept.insert(
            backend.key.clone(),
            Kept {
                backend: backend.clone(),
                policy: policy.cloned(),
                state: Arc::downgrade(&state),
            },
        );
        state
    }

    /// Forgets the Backends for which `keep` is false (those no longer configured).
    pub fn retain(&self, keep: impl Fn(&ResourceKey) -> bool) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.retain(|key, _| keep(key));
        }
    }

    /// The token bucket of `subject` (what it limits) under `limit`: the one in use when the
    /// limit is as before (so a config push grants no fresh burst), else a full new one.
    /// `None` when the limit admits nothing sensibly.
    pub fn limiter(&self, subject: &str, limit: &RateLimit) -> Option<Arc<RateLimiter>> {
        let Ok(mut limiters) = self.limiters.lock() else {
            return RateLimiter::new(limit).map(Arc::new);
        };
        // Limiters of configs long gone are dropped here, the map stays small.
        limiters.retain(|_, (_, kept)| kept.strong_count() > 0);
        if let Some((previous, kept)) = limiters.get(subject) {
            if previous == limit {
                if let Some(limiter) = kept.upgrade() {
                    return Some(limiter);
                }
            }
        }
        let limiter = Arc::new(RateLimiter::new(limit)?);
        limiters.insert(subject.to_owned(), (*limit, Arc::downgrade(&limiter)));
        Some(limiter)
    }

    /// The places of copies in flight to mirror Backend `backend`
    /// ([`crate::proxy::mirror::MAX_IN_FLIGHT`]): the same semaphore for as long as any
    /// snapshot or copy holds it, so a swap grants no fresh room while copies still run.
    pub fn mirror_slots(&self, backend: &ResourceKey) -> Arc<Semaphore> {
        let fresh = || Arc::new(Semaphore::new(crate::proxy::mirror::MAX_IN_FLIGHT));
        let Ok(mut mirrors) = self.mirrors.lock() else {
            return fresh();
        };
        mirrors.retain(|_, kept| kept.strong_count() > 0);
        if let Some(slots) = mirrors.get(backend).and_then(Weak::upgrade) {
            return slots;
        }
        let slots = fresh();
        mirrors.insert(backend.clone(), Arc::downgrade(&slots));
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> Backend {
        Backend {
            key: ResourceKey::new("shop", "api"),
            protocol: ficus_config::Protocol::Http,
            endpoints: vec![ficus_config::Endpoint {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                identity: None,
                weight: 1,
            }],
            listen: None,
            service_account: None,
        }
    }

    #[test]
    fn state_is_kept_while_backend_and_policy_are_unchanged() {
        let metrics = Metrics::new();
        let carry = Carryover::default();
        let first = carry.policy(&backend(1), None, &metrics);
        let same = carry.policy(&backend(1), None, &metrics);
        assert!(Arc::ptr_eq(&first, &same));
        let moved = carry.policy(&backend(2), None, &metrics);
        assert!(
            !Arc::ptr_eq(&first, &moved),
            "a changed Backend starts afresh"
        );
        drop((first, same));
        let again = carry.policy(&backend(2), None, &metrics);
        assert!(Arc::ptr_eq(&moved, &again));
        drop((moved, again));
        // Nothing holds the state any more: it is gone, not kept alive by the carry-over.
        let fresh = carry.policy(&backend(2), None, &metrics);
        assert_eq!(Arc::strong_count(&fresh), 1);
        carry.retain(|_| false);
        assert!(carry.kept.lock().unwrap().is_empty());
    }

    #[test]
    fn mirror_slots_are_shared_by_backend_while_held() {
        let carry = Carryover::default();
        let shadow = ResourceKey::new("shop", "shadow");
        let first = carry.mirror_slots(&shadow);
        assert!(Arc::ptr_eq(&first, &carry.mirror_slots(&shadow)));
        let other = carry.mirror_slots(&ResourceKey::new("shop", "other"));
        assert!(!Arc::ptr_eq(&first, &other));
    }

    #[test]
    fn a_rate_limiter_is_kept_while_its_limit_is_unchanged() {
        let carry = Carryover::default();
        let limit = RateLimit {
            requests: 2,
            per: std::time::Duration::from_secs(60),
        };
        let first = carry.limiter("inbound", &limit).unwrap();
        assert!(first.try_acquire().is_ok() && first.try_acquire().is_ok());
        let same = carry.limiter("inbound", &limit).unwrap();
        assert!(same.try_acquire().is_err(), "no fresh burst after a push");
        let other = carry.limiter("route:shop/web", &limit).unwrap();
        assert!(
            other.try_acquire().is_ok(),
            "each subject has its own bucket"
        );
        let doubled = RateLimit {
            requests: 4,
            ..limit
        };
        let changed = carry.limiter("inbound", &doubled).unwrap();
        assert!(changed.try_acquire().is_ok(), "a new limit starts full");
    }
}
