//! `TrafficPolicy` and `AuthorizationPolicy` specs.

use serde::Deserialize;

/// `targetRef` of policies: the Backend the policy applies to, in the policy's namespace.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `ficus.dev` (`gateway.networking.k8s.io` for an HTTPRoute) or left out.
    #[serde(default)]
    pub group: Option<String>,
    /// `Backend`; a TrafficPolicy may also target an `HTTPRoute` (group
    /// `gateway.networking.k8s.io`), for its `rateLimit` only.
    pub kind: String,
    /// Name of the Backend (or HTTPRoute).
    pub name: String,
}

/// `TrafficPolicy.spec`: how clients talk to one Backend.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Backend it applies to (or the HTTPRoute, for a per-route `rateLimit`).
    pub target_ref: PolicyTargetRef,
    /// Circuit-breaker caps.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Endpoint picking; default LeastRequest (P2C over peak-EWMA).
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Cap on retries as a share of requests.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
    /// Local rate limit (429 past it).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Injected aborts and delays, for testing resilience.
    #[serde(default)]
    pub fault_injection: Option<FaultInjection>,
}

/// `connectionPool`; each left-out field defaults to 1024.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Upstream connections, at least 1.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection (0: none wait).
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Concurrent requests, at least 1.
    #[serde(default)]
    pub max_requests: Option<u32>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx before an endpoint is ejected; default 5.
    #[serde(default, rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    /// Each interval an endpoint stays in the rotation forgives one of its ejections (they
    /// multiply the ejection time); default 10s.
    #[serde(default)]
    pub interval: Option<String>,
    /// Base ejection time, multiplied by the number of ejections; default 30s.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, percent; default 10.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// Algorithm.
    #[serde(rename = "type")]
    pub balancer_type: LoadBalancerType,
}

/// `loadBalancer.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LoadBalancerType {
    /// Round robin.
    RoundRobin,
    /// Power of two choices over peak-EWMA.
    LeastRequest,
    /// Uniform random.
    Random,
}

/// `retryBudget`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Share of requests that may be retries, 0..=100; default 20.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Retries always allowed per second; default 3.
    #[serde(default)]
    pub min_retries_per_second: Option<u32>,
}

/// `rateLimit`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per window, at least 1.
    pub requests: u32,
    /// Window, e.g. `1s` or `1m`.
    pub per: String,
}

/// `faultInjection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjection {
    /// Requests answered with an error status.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    /// Requests held before forwarding.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
}

/// `faultInjection.abort`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// Share of requests aborted, 0..=100.
    pub percent: f64,
    /// Status they get, 200..=599.
    pub status: u16,
}

/// `faultInjection.delay`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// Share of requests delayed, 0..=100.
    pub percent: f64,
    /// How long.
    pub fixed: String,
}

/// `AuthorizationPolicy.spec`: who may call one Backend, checked by its sidecar.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The protected Backend.
    pub target_ref: PolicyTargetRef,
    /// What a matching request gets.
    pub action: AuthzAction,
    /// A request matches when any rule matches.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AuthzAction {
    /// Matching requests are allowed, the rest denied.
    #[serde(rename = "ALLOW")]
    Allow,
    /// Matching requests are denied.
    #[serde(rename = "DENY")]
    Deny,
}

/// One `rules[]` entry: a request matches when some `from` and some `to` entry match (an
/// empty list matches everything).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRule {
    /// Sources.
    #[serde(default)]
    pub from: Vec<AuthzFrom>,
    /// Operations.
    #[serde(default)]
    pub to: Vec<AuthzTo>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzFrom {
    /// SPIFFE IDs of callers; a trailing `*` matches any suffix.
    #[serde(default)]
    pub identities: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzTo {
    /// Uppercase methods; empty matches any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Paths; a trailing `*` matches any suffix; empty matches any.
    #[serde(default)]
    pub paths: Vec<String>,
}
