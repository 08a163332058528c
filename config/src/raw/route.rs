//! `HTTPRoute` and `TCPRoute` specs: the Gateway API (GAMMA) subset Ficus implements.

use serde::Deserialize;

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Services whose callers the route applies to; at least one.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Accepted for Gateway API compatibility and ignored: GAMMA routes select by service.
    #[serde(default)]
    pub hostnames: Option<Vec<String>>,
    /// Rules; at least one.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// `parentRefs[]`: the service (HTTPRoute) or TCP Backend (TCPRoute) a route attaches to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// API group: empty or `core` for a Service, `ficus.dev` for a Backend.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default); a TCPRoute may also say `Backend`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Service or Backend name.
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Accepted for Gateway API compatibility; Ficus matches services by name only.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One `HTTPRoute.spec.rules[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Optional name, for humans and metrics.
    #[serde(default)]
    pub name: Option<String>,
    /// Any match selects the rule; none means prefix `/`.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied in order.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted Backends; may be empty only with a `RequestRedirect` filter.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Whole-request and per-try timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries (Gateway API GEP-1731 shape).
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
}

/// One `matches[]` entry; every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path condition; default prefix `/`.
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HttpStringMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<HttpStringMatch>,
    /// Request method, uppercase (`GET`).
    #[serde(default)]
    pub method: Option<String>,
}

/// `matches[].path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// How `value` is compared; default `PathPrefix`.
    #[serde(default, rename = "type")]
    pub match_type: PathMatchType,
    /// Path (starting with `/`) or regex; default `/`.
    #[serde(default)]
    pub value: Option<String>,
}

/// `matches[].path.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// Path-segment prefix.
    #[default]
    PathPrefix,
    /// The whole path matches the regex.
    RegularExpression,
}

/// `matches[].headers[]` and `matches[].queryParams[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpStringMatch {
    /// How `value` is compared; default `Exact`.
    #[serde(default, rename = "type")]
    pub match_type: StringMatchType,
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// Value or regex.
    pub value: String,
}

/// `type` of header and query parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum StringMatchType {
    /// Equal.
    #[default]
    Exact,
    /// The whole value matches the regex.
    RegularExpression,
}

/// One `filters[]` entry: `type` names which of the other fields is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which filter this is.
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    /// Settings of a `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Settings of a `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Settings of a `URLRewrite`.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// Settings of a `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// Settings of a `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
}

/// `filters[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FilterType {
    /// Change request headers.
    RequestHeaderModifier,
    /// Change response headers.
    ResponseHeaderModifier,
    /// Rewrite host and path.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Answer with a redirect.
    RequestRedirect,
    /// Copy requests to another Backend.
    RequestMirror,
}

/// `requestHeaderModifier` / `responseHeaderModifier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers replaced or created.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Headers appended.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name (case-insensitive).
    pub name: String,
    /// Header value.
    pub value: String,
}

/// `urlRewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New Host / `:authority`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path change.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// `path` of `urlRewrite` and `requestRedirect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// Which of the two other fields applies.
    #[serde(rename = "type")]
    pub modifier_type: PathModifierType,
    /// The new path, for `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// What replaces the matched prefix, for `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `path.type` of path modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PathModifierType {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the prefix matched by the rule's `PathPrefix` match.
    ReplacePrefixMatch,
}

/// `requestRedirect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`; default: the request's.
    #[serde(default)]
    pub scheme: Option<String>,
    /// New host; default: the request's.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path change; default: the request's path.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// New port; default: the scheme's.
    #[serde(default)]
    pub port: Option<u16>,
    /// 302 (default, as in the Gateway API), 301, 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// `requestMirror`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// The Backend that receives copies.
    pub backend_ref: BackendObjectRef,
    /// Share of requests copied, 0..=100; default 100.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// A reference to a Backend without a weight (`requestMirror.backendRef`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendObjectRef {
    /// API group: empty or `core` for `Service`, `ficus.dev` for `Backend`.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default) or `Backend`; either names a Backend.
    #[serde(default)]
    pub kind: Option<String>,
    /// Backend name.
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Accepted for Gateway API compatibility; endpoints carry their own ports.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A weighted reference to a Backend (`backendRefs[]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// API group: empty or `core` for `Service`, `ficus.dev` for `Backend`.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (default) or `Backend`; either names a Backend.
    #[serde(default)]
    pub kind: Option<String>,
    /// Backend name.
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Accepted for Gateway API compatibility; endpoints carry their own ports.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative share of requests (connections for TCPRoute); default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `rules[].timeouts`; `0s` disables a timeout, as in the Gateway API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Whole exchange including retries.
    #[serde(default)]
    pub request: Option<String>,
    /// Each try; at most `request`.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `rules[].retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRetry {
    /// Retries after the first try, 0..=10; default 2.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Response codes retried, 100..=599; default 502 and 503.
    #[serde(default)]
    pub codes: Option<Vec<u16>>,
    /// Base backoff between tries; default 25ms.
    #[serde(default)]
    pub backoff: Option<String>,
    /// gRPC status codes retried, by name (`unavailable`, `resource-exhausted`, ...; case and
    /// `-`/`_` do not matter); default `[unavailable]`.
    #[serde(default)]
    pub grpc_codes: Option<Vec<String>>,
    /// Methods that are not idempotent but may be replayed on this route anyway (e.g. `POST`
    /// to an endpoint the team made idempotent); none by default.
    #[serde(default)]
    pub non_idempotent_methods: Vec<String>,
}

/// `TCPRoute.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// `tcp` Backends whose `listen` listener the route takes over.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Exactly one rule.
    #[serde(default)]
    pub rules: Vec<TcpRouteRule>,
}

/// One `TCPRoute.spec.rules[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteRule {
    /// Optional name, for humans.
    #[serde(default)]
    pub name: Option<String>,
    /// Weighted `tcp` Backends; each new connection picks one.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}
