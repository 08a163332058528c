//! Retry policy of a route rule: which outcomes are retried, how long to back off, and which
//! requests may be replayed at all (promise 5 of RELIABILITY.md: no unsafe retries).
//!
//! A request is replayable when its method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE,
//! TRACE) or listed in the route's `retry.nonIdempotentMethods`, and its whole body fits the
//! retry buffer: empty, or of a known length of at most [`RETRY_BUFFER`] bytes. Bigger or
//! unknown-length bodies are streamed and never retried; a POST is never replayed unless the
//! route says so. Retried outcomes: the configured status codes, connect failures
//! (nothing was sent), HTTP/2 REFUSED_STREAM and streams above the last stream id of the
//! peer's GOAWAY (the peer did not process them, RFC 9113 §6.8), and
//! errors whose status (502 reset, 504 per-try timeout) is among the configured codes.
//!
//! gRPC calls are POSTs, so they are never replayed on an HTTP status. They are retried when
//! their response headers carry a gRPC status among `grpcCodes` (default `unavailable`): a
//! trailers-only response, where the server answered with a status and no message, which is
//! also when gRPC's own client retries (gRFC A6). An HTTP status without `grpc-status` counts
//! as gRPC maps it, except a 502 or 504: the call may have been carried out behind them, so
//! they are never retried (`grpc::retry_status`). The server may push back with
//! `grpc-retry-pushback-ms` (a wait, honoured up to the cap; a malformed or negative value
//! means "do not retry"). Connect failures, REFUSED_STREAM and GOAWAY count as for any request,
//! but a call is only replayed when the try that failed had read its whole message (the
//! message streams to the first try and is kept as it passes): a try that failed before
//! reading it took the stream with it, so a connect failure of the first try is not retried.

use std::time::Duration;

use http::{HeaderMap, Method};

use crate::upstream::UpstreamError;

/// Largest request body buffered for replay.
pub const RETRY_BUFFER: u64 = 64 * 1024;
/// Longest wait between two tries, `Retry-After` included.
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// A rule's `retry`, compiled.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    attempts: u32,
    codes: Box<[u16]>,
    grpc_codes: Box<[u8]>,
    /// Non-idempotent methods the route allows to replay.
    methods: Box<[Method]>,
    base: Duration,
}

impl RetryPolicy {
    /// From the validated rule policy.
    pub fn new(policy: &ficus_config::RetryPolicy) -> Self {
        Self {
            attempts: policy.attempts,
            codes: policy.codes.clone().into_boxed_slice(),
            grpc_codes: policy.grpc_codes.clone().into_boxed_slice(),
            methods: policy
                .non_idempotent_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            base: policy.backoff,
        }
    }

    /// Whether a request of `method` may be sent again: it is idempotent, or the route lists
    /// it in `nonIdempotentMethods`.
    pub fn replays(&self, method: &Method) -> bool {
        is_idempotent(method) || self.methods.contains(method)
    }

    /// Retries allowed after the first try.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether a response with `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }

    /// Whether a gRPC call whose response headers tell status `code` is retried.
    pub fn retries_grpc(&self, code: u8) -> bool {
        self.grpc_codes.contains(&code)
    }

    /// Whether any gRPC status is retried (else gRPC calls are not worth recording).
    pub fn retries_any_grpc(&self) -> bool {
        !self.grpc_codes.is_empty()
    }

    /// Whether an upstream failure before response headers is retried; `status` is what the
    /// caller would get for it. Never the Backend's own connection cap (`maxConnections`
    /// reached): a circuit-breaker overflow is not retried, as in Envoy, whatever the codes
    /// (its 503 is ours, not the upstream's, and a retry would only meet the same cap).
    pub fn retries_error(&self, error: &UpstreamError, status: u16) -> bool {
        if matches!(error, UpstreamError::ConnectionLimit { .. }) {
            return false;
        }
        self.retries_unsent(error) || self.retries_status(status)
    }

    /// Whether an upstream failure is one where the upstream did not process the request
    /// (connect failure, REFUSED_STREAM, a stream left out by the peer's GOAWAY), so any
    /// request may be retried.
    pub fn retries_unsent(&self, error: &UpstreamError) -> bool {
        error.is_connect_failure() || is_refused_stream(error) || error.is_refused_by_goaway()
    }

    /// How long to wait before retry number `retry` (0 for the first retry): full jitter,
    /// uniformly in `0..=min(cap, base × 2^retry)`; a `Retry-After` of the failed response
    /// replaces it, up to the cap.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(BACKOFF_CAP);
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(BACKOFF_CAP);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// Whether requests of `method` may be sent twice with the same effect.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// `Retry-After` in delta-seconds (the HTTP-date form is not honoured).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `grpc-retry-pushback-ms`: `Ok(None)` without one, `Ok(Some(wait))` for a valid one, and
/// `Err(())` when the server said not to retry (a negative or malformed value, per gRFC A6).
#[allow(clippy::result_unit_err)]
pub fn grpc_pushback(headers: &HeaderMap) -> Result<Option<Duration>, ()> {
    let Some(value) = headers.get("grpc-retry-pushback-ms") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?;
    let millis = text.trim().parse::<u64>().map_err(|_| ())?;
    Ok(Some(Duration::from_millis(millis)))
}

/// Whether the HTTP/2 peer refused the stream (anywhere in `error`'s chain of causes): it did
/// not process it, so a retry is safe.
fn is_refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::upstream::h2_cause(error)
        .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(base: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            codes: vec![503].into_boxed_slice(),
            grpc_codes: vec![14].into_boxed_slice(),
            methods: vec![Method::PATCH].into_boxed_slice(),
            base,
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_the_exponential_ceiling() {
        let policy = policy(Duration::from_millis(25));
        for retry in 0..6 {
            let ceiling = (Duration::from_millis(25) * (1 << retry)).min(BACKOFF_CAP);
            let waits: Vec<_> = (0..500).map(|_| policy.backoff(retry, None)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            // Jitter spreads over the whole range, not around the ceiling.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "retry {retry}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "retry {retry}");
        }
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_the_cap() {
        let policy = policy(Duration::from_millis(25));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "0".parse().unwrap());
        assert_eq!(
            policy.backoff(0, retry_after(&headers)),
            Duration::from_secs(0)
        );
        headers.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(policy.backoff(0, retry_after(&headers)), BACKOFF_CAP);
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn grpc_pushback_is_a_wait_or_a_refusal() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_pushback(&headers), Ok(None));
        headers.insert("grpc-retry-pushback-ms", "40".parse().unwrap());
        assert_eq!(grpc_pushback(&headers), Ok(Some(Duration::from_millis(40))));
        headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(grpc_pushback(&headers), Err(()));
        let policy = policy(Duration::from_millis(25));
        assert!(policy.retries_grpc(14) && !policy.retries_grpc(8));
    }

    #[test]
    fn only_idempotent_methods_are_replayable() {
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&method.parse().unwrap()), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(&method.parse().unwrap()), "{method}");
        }
        let policy = policy(Duration::from_millis(25));
        assert!(policy.replays(&Method::PATCH), "listed by the route");
        assert!(policy.replays(&Method::GET) && !policy.replays(&Method::POST));
    }

    #[test]
    fn refused_streams_are_recognised_by_their_reason() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(is_refused_stream(&refused));
        let cancelled = h2::Error::from(h2::Reason::CANCEL);
        assert!(!is_refused_stream(&cancelled));
        let other = std::io::Error::other("connection reset");
        assert!(!is_refused_stream(&other));
    }

    #[test]
    fn a_connection_overflow_is_never_retried() {
        let mut policy = policy(Duration::from_millis(25));
        policy.codes = vec![502, 503].into_boxed_slice();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let overflow = UpstreamError::ConnectionLimit { addr };
        assert!(!policy.retries_error(&overflow, 503));
        assert!(!policy.retries_unsent(&overflow));
        // A real connect failure with the same status still is.
        let refused = UpstreamError::Connect {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(policy.retries_error(&refused, 503));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_sleep_never_exceeds_the_cap() {
        let policy = policy(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        tokio::time::sleep(policy.backoff(9, None)).await;
        assert!(started.elapsed() <= BACKOFF_CAP);
    }
}
