//! The outbound exchange of a rule with a `retry` policy: buffer a replayable body, then try,
//! back off and try again within the retry budget and the route's total deadline.
//!
//! Each try is bounded by `timeouts.backendRequest` (or the default per-try timeout), the
//! whole exchange, backoff included, by `timeouts.request` (then 504, flag `UT`). Retries go
//! to another endpoint than the one that failed when the Backend has one. When the tries run
//! out, the caller gets the last upstream response (or error) with flag `URX`; when the budget
//! is spent, the caller gets the failed outcome as it was and the exhaustion is counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_config::ProxyLimits;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::{flags, ProxyError};
use super::forward::forward;
use crate::body::{self, with_idle_timeout, Body, BodyIdle};
use crate::policy::outlier;
use crate::policy::retry::{self, RetryPolicy, RETRY_BUFFER};
use crate::snapshot::BackendTarget;
use crate::telemetry::metrics::Metrics;
use crate::upstream::EndpointPool;

/// A request body after deciding whether the request can be replayed.
pub enum Replay {
    /// Held in memory: the request may be sent again.
    Buffered(Bytes),
    /// Too large, of unknown length, or not idempotent: streamed once.
    Stream(Incoming),
}

/// Buffers the body of an idempotent request when it is empty or of a known length that fits
/// the retry buffer; anything else is streamed. Reading waits at most `idle` between frames.
pub async fn replayable(
    parts: &Parts,
    incoming: Incoming,
    idle: Duration,
) -> Result<Replay, ProxyError> {
    if !retry::is_idempotent(&parts.method) {
        return Ok(Replay::Stream(incoming));
    }
    if incoming.is_end_stream() {
        return Ok(Replay::Buffered(Bytes::new()));
    }
    match incoming.size_hint().exact() {
        Some(length) if length <= RETRY_BUFFER => {}
        _ => return Ok(Replay::Stream(incoming)),
    }
    match with_idle_timeout(incoming, idle).collect().await {
        Ok(collected) => Ok(Replay::Buffered(collected.to_bytes())),
        Err(error) if error.is::<BodyIdle>() => Err(ProxyError::DownstreamTimeout),
        Err(_) => Err(ProxyError::BadRequest("request body ended early")),
    }
}

/// What one exchange needs besides the request.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The rule's policy.
    pub policy: &'a RetryPolicy,
    /// The Backend (endpoints and budget).
    pub target: &'a BackendTarget,
    /// Bound of each try.
    pub per_try: Duration,
    /// Bound of the whole exchange, retries and backoff included.
    pub total: Option<Duration>,
    /// Proxy limits.
    pub limits: &'a ProxyLimits,
    /// Retry counters.
    pub metrics: &'a Metrics,
}

impl Exchange<'_> {
    /// Sends the request (head `parts`, buffered `body`) to `endpoint`, retrying per policy.
    /// Returns the outcome and, when it differs from the outcome's own, the response flag.
    pub async fn send(
        &self,
        mut endpoint: &Arc<EndpointPool>,
        parts: &Parts,
        body: &Bytes,
    ) -> (Result<Response<Body>, ProxyError>, Option<&'static str>) {
        let started = Instant::now();
        let deadline = self.total.map(|total| started + total);
        self.target.policy.budget.deposit();
        let mut retries = 0;
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let try_timeout = remaining.map_or(self.per_try, |r| r.min(self.per_try));
            let total_expired = ProxyError::Timeout(self.total.unwrap_or(try_timeout));
            if try_timeout.is_zero() {
                return (Err(total_expired), None);
            }
            let request = rebuild(parts, body);
            let in_flight = self.target.start(endpoint);
            let outcome = forward(endpoint, request, try_timeout, None, self.limits).await;
            drop(in_flight);
            if self.target.policy.outliers.is_some() {
                self.target.record(endpoint, outlier::is_failure(&outcome));
            }
            if matches!(outcome, Err(ProxyError::Timeout(_))) && Some(try_timeout) == remaining {
                // The route's deadline, not the try's, ran out.
                return (Err(total_expired), None);
            }
            let Some(retry_after) = self.retryable(&outcome) else {
                return (outcome, None);
            };
            let exhausted = (retries > 0).then_some(flags::RETRIES_EXHAUSTED);
            if retries >= self.policy.attempts() {
                return (outcome, exhausted);
            }
            let wait = self.policy.backoff(retries, retry_after);
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left <= wait) {
                return (outcome, exhausted);
            }
            if !self.target.policy.budget.try_withdraw() {
                self.metrics.retry_budget_exhausted.inc();
                return (outcome, None);
            }
            // Dropping the failed response closes (does not pool) its connection.
            drop(outcome);
            tokio::time::sleep(wait).await;
            retries += 1;
            self.metrics.retries.inc();
            endpoint = self.target.endpoint_except(endpoint);
        }
    }

    /// `Some(Retry-After)` when the outcome is one the policy retries.
    fn retryable(&self, outcome: &Result<Response<Body>, ProxyError>) -> Option<Option<Duration>> {
        match outcome {
            Ok(response) => self
                .policy
                .retries_status(response.status().as_u16())
                .then(|| retry::retry_after(response.headers())),
            Err(error @ ProxyError::Upstream(upstream)) => {
                let status = error.classify().0.as_u16();
                self.policy.retries_error(upstream, status).then_some(None)
            }
            Err(error @ ProxyError::Timeout(_)) => self
                .policy
                .retries_status(error.classify().0.as_u16())
                .then_some(None),
            Err(_) => None,
        }
    }
}

/// A fresh request from a kept head and body (extensions are not carried over).
fn rebuild(parts: &Parts, body: &Bytes) -> Request<Body> {
    let body = if body.is_empty() {
        body::empty()
    } else {
        body::full(body.clone())
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}
