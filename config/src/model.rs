//! Validated config types: what the rest of Ficus consumes.
//!
//! Every value here has passed validation (`crate::validate`), so consumers never re-check:
//! durations are positive where they must be, regexes compiled, references resolved, weights
//! sum to more than zero. Fields are public for reading; values are only built by this crate.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// `namespace/name` of a document. Namespaces default to `default`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Kubernetes-style namespace.
    pub namespace: String,
    /// Name, unique per kind within the namespace.
    pub name: String,
}

impl ResourceKey {
    /// Builds a key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A complete, validated set of documents: what a sidecar runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mesh-wide settings (defaults when no Mesh document is given).
    pub mesh: Mesh,
    /// Backends by key.
    pub backends: BTreeMap<ResourceKey, Backend>,
    /// HTTP routes in document order.
    pub http_routes: Vec<HttpRoute>,
    /// TCP routes (per-connection weighted splits for opaque TCP) in document order.
    pub tcp_routes: Vec<TcpRoute>,
    /// Traffic policies by the Backend they target.
    pub traffic_policies: BTreeMap<ResourceKey, TrafficPolicy>,
    /// Authorization policies in document order.
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// The documents as given (after defaulting `metadata.namespace`), for `/config` and the
    /// control plane's `get`: JSON objects (keys sorted) in input order. Kept as text: a tree
    /// of JSON values takes some 50 times its text in memory (a `BTreeMap` node of ~600 bytes
    /// per object), and a sidecar only shows them. [`Config::document_values`] parses them.
    pub documents: Vec<Box<serde_json::value::RawValue>>,
    /// What is valid but almost certainly not meant (route matches that can never be
    /// selected), in document order; never a reason to refuse the config.
    pub warnings: Vec<crate::error::Warning>,
    /// How many warnings the config has: `warnings` holds at most the first 100 and a last
    /// one counting the rest.
    pub warning_count: usize,
}

impl Config {
    /// [`Config::documents`] as JSON values. Each reads back: the loader refuses documents
    /// nested deeper than serde_json reads.
    pub fn document_values(&self) -> Vec<serde_json::Value> {
        self.documents
            .iter()
            .filter_map(|document| serde_json::from_str(document.get()).ok())
            .collect()
    }
}

/// The `Mesh` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// mTLS mode between sidecars.
    pub mtls_mode: MtlsMode,
    /// Tracing export; `None` when not configured.
    pub tracing: Option<Tracing>,
    /// Data-plane limits and timeouts (RELIABILITY.md "Starting defaults").
    pub proxy: ProxyLimits,
    /// JSON access logs; `None` (the default) when off.
    pub access_log: Option<AccessLog>,
}

/// `Mesh.spec.accessLog`: where the sidecar writes one JSON line per request or connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessLog {
    /// The destination.
    pub target: AccessLogTarget,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogTarget {
    /// The sidecar's standard output (`/dev/stdout`).
    Stdout,
    /// The sidecar's standard error (`/dev/stderr`).
    Stderr,
    /// A file, appended to (created if absent); an absolute path.
    File(std::path::PathBuf),
}

/// `Mesh.spec.mtls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Plaintext only.
    Disable,
    /// Accept both mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

/// `Mesh.spec.tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// OTLP/gRPC collector endpoint URL.
    pub otlp_endpoint: String,
    /// 0.0..=100.0.
    pub sampling_percent: f64,
}

/// `Mesh.spec.proxy`: limits every listener applies to new connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyLimits {
    /// Longest wait for a complete request header block (408 after). Default 10 s.
    pub header_read_timeout: Duration,
    /// Longest gap between body chunks in either direction. Default 30 s.
    pub body_idle_timeout: Duration,
    /// Longest gap between body chunks of a gRPC call, in either direction, instead of
    /// `body_idle_timeout`: a streaming call may stay quiet for minutes. Default 5 min
    /// (RELIABILITY's stream idle).
    pub stream_idle_timeout: Duration,
    /// Upstream TCP connect timeout. Default 1 s.
    pub connect_timeout: Duration,
    /// Wait for upstream response headers when nothing else sets one: per try on a route
    /// whose rule sets neither `timeouts.request` nor `timeouts.backendRequest`; inbound, for
    /// requests that bring no deadline from a peer sidecar. Default 15 s.
    pub upstream_response_timeout: Duration,
    /// Idle time after which a pooled upstream connection is closed (HTTP/1.1, and HTTP/2
    /// connections beyond an endpoint's first). Default 30 s.
    pub upstream_idle_timeout: Duration,
    /// Idle time after which a downstream connection is closed. Default 1 h.
    pub connection_idle_timeout: Duration,
    /// Largest request header block in bytes (431 past it). Default 60 KiB.
    pub max_header_bytes: usize,
    /// Most header fields per request (431 past it). Default 100.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per downstream connection. Default 100.
    pub max_concurrent_streams: u32,
    /// Transparent mode: destination ports forwarded as opaque TCP without sniffing, besides
    /// the sidecar's built-in ones and `--opaque-ports`. Sorted, no duplicates; default none.
    pub opaque_ports: Vec<u16>,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(1),
            upstream_response_timeout: Duration::from_secs(15),
            upstream_idle_timeout: Duration::from_secs(30),
            connection_idle_timeout: Duration::from_secs(3600),
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            max_concurrent_streams: 100,
            opaque_ports: Vec::new(),
        }
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            mtls_mode: MtlsMode::Permissive,
            tracing: None,
            proxy: ProxyLimits::default(),
            access_log: None,
        }
    }
}

/// Wire protocol a Backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 to the endpoints.
    Http,
    /// HTTP/2 with prior knowledge (h2c) to the endpoints.
    Http2,
    /// gRPC: HTTP/2 with prior knowledge.
    Grpc,
    /// Opaque TCP; needs `listen`.
    Tcp,
}

impl Protocol {
    /// Whether upstream connections use HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// The `Backend` document: endpoints of one workload version.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Document key; `key.name` is also a service name callers may use directly.
    pub key: ResourceKey,
    /// Protocol to the endpoints.
    pub protocol: Protocol,
    /// Its endpoints; none for a workload scaled to zero (its requests get 503 `UH`, its
    /// connections are closed).
    pub endpoints: Vec<Endpoint>,
    /// Local listener for opaque TCP (required for `tcp`, rejected otherwise).
    pub listen: Option<SocketAddr>,
    /// The service account of the workload's pods, when it is not the Backend's name (see
    /// `BackendSpec::service_account`).
    pub service_account: Option<String>,
}

/// One address of a Backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// SPIFFE ID the endpoint must present (then mTLS is used), e.g.
    /// `spiffe://cluster.local/ns/shop/sa/monolith`.
    pub identity: Option<String>,
    /// Relative share of the Backend's requests (connections for `tcp`), at most
    /// [`MAX_ENDPOINT_WEIGHT`] (default 1). 0 drains the endpoint: it gets no new requests
    /// while another endpoint is available (not ejected).
    pub weight: u32,
}

/// Largest endpoint `weight` (as for route `backendRefs`): relative shares need no more, and
/// the sum of a Backend's weights stays far from overflow.
pub const MAX_ENDPOINT_WEIGHT: u32 = 1_000_000;

/// The `HTTPRoute` document (Gateway API GAMMA subset).
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Document key.
    pub key: ResourceKey,
    /// `metadata.creationTimestamp` as Kubernetes writes it (`2026-11-27T05:13:08Z`), which
    /// breaks precedence ties between routes (the oldest first); `None` outside a cluster.
    pub created: Option<String>,
    /// Services (by key) whose callers this route applies to.
    pub parents: Vec<ResourceKey>,
    /// Rules in document order.
    pub rules: Vec<RouteRule>,
    /// `rateLimit` of the TrafficPolicy that targets this route (`targetRef.kind: HTTPRoute`):
    /// one bucket per calling sidecar for all the route's requests.
    pub rate_limit: Option<RateLimit>,
}

/// One rule of an HTTPRoute.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// Any of these matches selects the rule; never empty (defaults to prefix `/`).
    pub matches: Vec<RouteMatch>,
    /// Filters applied in order.
    pub filters: Vec<Filter>,
    /// Weighted backends; empty only when a `RequestRedirect` filter answers instead.
    pub backend_refs: Vec<BackendRef>,
    /// `timeouts`.
    pub timeouts: Timeouts,
    /// `retry`, when given.
    pub retry: Option<RetryPolicy>,
}

/// A weighted reference to a Backend that exists in the same Config.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRef {
    /// The Backend.
    pub backend: ResourceKey,
    /// Relative weight (default 1). A rule's weights sum to more than 0.
    pub weight: u32,
}

/// `timeouts` of a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole exchange including retries (504 after).
    pub request: RouteTimeout,
    /// Each try.
    pub backend_request: RouteTimeout,
}

/// One of a rule's `timeouts`. Left out and `0s` differ: the Gateway API leaves an unset
/// timeout to the implementation (here the Mesh's `upstreamResponseTimeout` may apply), while
/// `0s` turns the timeout off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteTimeout {
    /// Not given.
    #[default]
    Unset,
    /// `0s`: no limit.
    Off,
    /// 504 after this long (never zero).
    After(Duration),
}

impl RouteTimeout {
    /// The limit, if this sets one.
    pub fn limit(self) -> Option<Duration> {
        match self {
            Self::After(limit) => Some(limit),
            Self::Unset | Self::Off => None,
        }
    }
}

impl Timeouts {
    /// The bound of the whole exchange, retries and backoff included; `None`: no bound.
    pub fn total(&self) -> Option<Duration> {
        self.request.limit()
    }

    /// The bound of each try's wait for response headers; `None`: no bound. `backendRequest`
    /// when given; else `request` (as Envoy uses the route timeout as the per-try timeout when
    /// none is set); `default` (the Mesh's `upstreamResponseTimeout`) only when the rule sets
    /// neither. A timeout set to `0s` is off and gives no bound.
    pub fn per_try(&self, default: Duration) -> Option<Duration> {
        match (self.backend_request, self.request) {
            (RouteTimeout::Unset, RouteTimeout::Unset) => Some(default),
            (RouteTimeout::Unset, request) => request.limit(),
            (backend_request, _) => backend_request.limit(),
        }
    }
}

/// `retry` of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Response codes that are retried.
    pub codes: Vec<u16>,
    /// Base backoff.
    pub backoff: Duration,
    /// gRPC status codes (1..=16) that are retried when a gRPC call's response headers carry
    /// them (trailers-only responses).
    pub grpc_codes: Vec<u8>,
    /// Non-idempotent methods (uppercase) this rule replays too; idempotent ones always are.
    pub non_idempotent_methods: Vec<String>,
}

/// One `matches[]` entry; all given conditions must hold.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Path condition (default prefix `/`).
    pub path: PathMatch,
    /// Header conditions (names lowercased).
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query_params: Vec<QueryParamMatch>,
    /// Method, uppercase.
    pub method: Option<String>,
}

/// `path` of a match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// Path-segment prefix: `/api` matches `/api` and `/api/x`, not `/apix`. Never ends in `/`
    /// unless it is exactly `/`.
    Prefix(String),
    /// The whole path matches this (anchored) regex.
    RegularExpression(regex::Regex),
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lowercased header name.
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// A query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryParamMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// Exact or (anchored) regex string comparison.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Whole value matches.
    RegularExpression(regex::Regex),
}

impl StringMatch {
    /// Whether `value` satisfies this condition.
    pub fn is_match(&self, value: &str) -> bool {
        match self {
            Self::Exact(want) => want == value,
            Self::RegularExpression(re) => re.is_match(value),
        }
    }
}

/// A route filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Modify request headers before forwarding.
    RequestHeaderModifier(HeaderModifier),
    /// Modify response headers before returning them.
    ResponseHeaderModifier(HeaderModifier),
    /// Rewrite host and/or path before forwarding.
    UrlRewrite(UrlRewrite),
    /// Answer with a redirect instead of forwarding.
    RequestRedirect(RequestRedirect),
    /// Send a copy of the request to another Backend, ignoring its answer.
    RequestMirror(RequestMirror),
}

/// `set`/`add`/`remove` of header modifiers. Names lowercased, values valid header values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Replace or create.
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Delete.
    pub remove: Vec<String>,
}

/// `URLRewrite` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewrite {
    /// New Host / `:authority`.
    pub hostname: Option<String>,
    /// Path change.
    pub path: Option<PathModifier>,
}

/// Path change of `URLRewrite` and `RequestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part matched by the rule's `PathPrefix` match.
    ReplacePrefixMatch(String),
}

/// `RequestRedirect` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifier>,
    /// New port.
    pub port: Option<u16>,
    /// 301 (default) or 302 (also 303, 307, 308).
    pub status_code: u16,
}

/// `RequestMirror` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMirror {
    /// Backend that receives the copy.
    pub backend: ResourceKey,
    /// Share of requests mirrored, 0.0..=100.0 (default 100).
    pub percent: f64,
}

/// `TCPRoute`: per-connection weighted split for an opaque TCP service.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// Document key.
    pub key: ResourceKey,
    /// TCP Backends whose `listen` listener this route takes over.
    pub parents: Vec<ResourceKey>,
    /// Weighted TCP backends (weights sum > 0).
    pub backend_refs: Vec<BackendRef>,
}

/// `TrafficPolicy`: how to talk to one Backend.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPolicy {
    /// Document key.
    pub key: ResourceKey,
    /// The Backend it targets (exists).
    pub target: ResourceKey,
    /// Circuit-breaker caps.
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier ejection.
    pub outlier_detection: Option<OutlierDetection>,
    /// Load balancing.
    pub load_balancer: LoadBalancer,
    /// Retry budget.
    pub retry_budget: Option<RetryBudget>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Fault injection.
    pub fault_injection: Option<FaultInjection>,
}

/// `connectionPool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPool {
    /// Max upstream connections.
    pub max_connections: u32,
    /// Max requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Max concurrent requests.
    pub max_requests: u32,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    pub consecutive_5xx: u32,
    /// Analysis interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
}

/// `loadBalancer.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    /// Round robin.
    RoundRobin,
    /// Power of two choices over peak-EWMA with in-flight weighting (the default).
    #[default]
    LeastRequest,
    /// Uniform random.
    Random,
}

/// `retryBudget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent of requests that may be retries.
    pub percent: f64,
    /// Floor of retries per second.
    pub min_retries_per_second: u32,
}

/// `rateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per `per`.
    pub requests: u32,
    /// Window.
    pub per: Duration,
}

/// `faultInjection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultInjection {
    /// Percent of requests aborted, and the status.
    pub abort: Option<(f64, u16)>,
    /// Percent of requests delayed, and the delay.
    pub delay: Option<(f64, Duration)>,
}

/// `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    /// Document key.
    pub key: ResourceKey,
    /// Backend (workload) it protects.
    pub target: ResourceKey,
    /// Allow or deny on match.
    pub action: AuthzAction,
    /// Rules; a request matches the policy when any rule matches.
    pub rules: Vec<AuthzRule>,
}

/// `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction {
    /// Allow matching requests (and deny the rest of the target's traffic).
    Allow,
    /// Deny matching requests.
    Deny,
}

/// One rule: any `from` and any `to` entry (an empty list matches everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRule {
    /// Sources: SPIFFE identities (`*` suffix wildcard allowed).
    pub from_identities: Vec<String>,
    /// Destinations.
    pub to: Vec<AuthzTo>,
}

/// One `to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzTo {
    /// Uppercase methods; empty matches any.
    pub methods: Vec<String>,
    /// Path patterns (`*` suffix wildcard); empty matches any.
    pub paths: Vec<String>,
}
