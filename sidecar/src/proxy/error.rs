//! The one place where proxy failures become HTTP responses.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::upstream::UpstreamError;

/// Envoy-like short response flags (INTERFACES.md).
pub mod flags {
    /// No route.
    pub const NO_ROUTE: &str = "NR";
    /// Upstream connect failure.
    pub const UPSTREAM_CONNECT_FAILURE: &str = "UF";
    /// Upstream connection terminated before response headers.
    pub const UPSTREAM_RESET: &str = "UC";
    /// Upstream timeout.
    pub const UPSTREAM_TIMEOUT: &str = "UT";
    /// Downstream request invalid.
    pub const BAD_REQUEST: &str = "DPE";
    /// Downstream stopped sending its request body.
    pub const DOWNSTREAM_TIMEOUT: &str = "DT";
    /// Downstream closed or reset its connection (or stream) before its request ended.
    pub const DOWNSTREAM_CLOSED: &str = crate::telemetry::metrics::DOWNSTREAM_CLOSED;
    /// Refused by the local rate limit.
    pub const RATE_LIMITED: &str = "RL";
    /// Fault injected by a TrafficPolicy.
    pub const FAULT_INJECTED: &str = "FI";
    /// Circuit breaker overflow.
    pub const OVERFLOW: &str = "UO";
    /// Retries exhausted: the caller gets the last retried outcome.
    pub const RETRIES_EXHAUSTED: &str = "URX";
    /// Denied by an AuthorizationPolicy.
    pub const DENIED: &str = "UAEX";
    /// No healthy upstream: outlier detection has every endpoint of the Backend ejected.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// Shut down: the sidecar exited with the request or opaque TCP connection still open
    /// (the drain timeout passed, or a signal ended the drain) and closed it.
    pub const SHUT_DOWN: &str = "SD";
}

/// Why the proxy answered itself instead of relaying an upstream response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The authority names no service we know (downstream's doing; not retryable).
    #[error("no route for authority {0:?}")]
    NoService(String),
    /// The service has no rule matching this request.
    #[error("no rule of service {0} matches")]
    NoRule(String),
    /// An AuthorizationPolicy denies the request.
    #[error("denied by authorization policy")]
    Denied,
    /// The request target is longer than we forward.
    #[error("request target of {0} bytes is too long")]
    UriTooLong(usize),
    /// An HTTP/2 request carries more header fields (cookie crumbs and pseudo-headers
    /// counted) than `spec.proxy.maxHeaders`; HTTP/1.1's limit is hyper's.
    #[error("{0} header fields")]
    TooManyHeaders(usize),
    /// The downstream stopped sending its request body (idle timeout); nothing useful can
    /// be answered upstream, and a retry is not safe.
    #[error("request body idle for too long")]
    DownstreamTimeout,
    /// The downstream broke off its request body (closed or reset its connection mid-body,
    /// or sent a body its own framing contradicts): the client's failure, not the upstream's,
    /// so never retried nor counted against the endpoint.
    #[error("request body broken off by the client")]
    DownstreamBody,
    /// The request is malformed in a way the HTTP parser let through.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The upstream failed before response headers.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream broke the protocol (e.g. switched protocols unasked).
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(&'static str),
    /// Outlier detection has every endpoint of the Backend ejected; failed fast.
    #[error("every endpoint of backend {0} is ejected")]
    NoHealthyUpstream(String),
    /// The Backend's circuit breaker is full (`connectionPool` caps); failed fast.
    #[error("circuit breaker of the backend is full ({})", .0.kind())]
    Overflow(crate::policy::breaker::Overflow),
    /// The workload's rate limit has no token left; the caller may try again after
    /// `retry_after` seconds.
    #[error("rate limited; retry after {retry_after} s")]
    RateLimited {
        /// Whole seconds until a token is available.
        retry_after: u64,
    },
    /// No response headers within the route's (or default per-try) timeout.
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl ProxyError {
    /// Status, response flag and `x-ficus-error` value.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::NoService(_) => (StatusCode::BAD_GATEWAY, flags::NO_ROUTE, "no-route"),
            Self::NoRule(_) => (StatusCode::NOT_FOUND, flags::NO_ROUTE, "no-route"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, flags::BAD_REQUEST, "bad-request"),
            Self::Denied => (StatusCode::FORBIDDEN, flags::DENIED, "denied"),
            Self::UriTooLong(_) => (StatusCode::URI_TOO_LONG, flags::BAD_REQUEST, "uri-too-long"),
            Self::TooManyHeaders(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                flags::BAD_REQUEST,
                "too-many-headers",
            ),
            Self::DownstreamTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                flags::DOWNSTREAM_TIMEOUT,
                "request-body-timeout",
            ),
            Self::DownstreamBody => (
                StatusCode::BAD_REQUEST,
                flags::DOWNSTREAM_CLOSED,
                "request-body-incomplete",
            ),
            Self::Upstream(UpstreamError::ConnectionLimit { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, flags::OVERFLOW, "overflow")
            }
            Self::Upstream(e) if e.is_connect_failure() => (
                StatusCode::SERVICE_UNAVAILABLE,
                flags::UPSTREAM_CONNECT_FAILURE,
                "upstream-connect-failure",
            ),
            Self::Upstream(_) | Self::UpstreamProtocol(_) => (
                StatusCode::BAD_GATEWAY,
                flags::UPSTREAM_RESET,
                "upstream-reset",
            ),
            Self::Overflow(_) => (StatusCode::SERVICE_UNAVAILABLE, flags::OVERFLOW, "overflow"),
            Self::NoHealthyUpstream(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                flags::NO_HEALTHY_UPSTREAM,
                "no-healthy-upstream",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                flags::RATE_LIMITED,
                "rate-limited",
            ),
            Self::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                flags::UPSTREAM_TIMEOUT,
                "upstream-timeout",
            ),
        }
    }

    /// The response the downstream gets, and the flag to record. Upstream failures are
    /// described without endpoint addresses (those go to the log, not to callers).
    pub fn into_response(self) -> (Response<Body>, &'static str) {
        let (status, flag, header) = self.classify();
        let text = match &self {
            Self::Upstream(_) | Self::UpstreamProtocol(_) => format!("{header}\n"),
            _ => format!("{self}\n"),
        };
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert("x-ficus-error", HeaderValue::from_static(header));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if let Self::RateLimited { retry_after } = self {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        (response, flag)
    }
}
