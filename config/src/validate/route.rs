//! `HTTPRoute` → [`HttpRoute`] and `TCPRoute` → [`TcpRoute`].

use std::time::Duration;

use super::common::{at_most, duration, is_dns_label, reference_kind};
use super::filter::{self, RuleContext};
use super::{all, matches, optional, Claims, Index, Report, Want};
use crate::model::{
    BackendRef, HttpRoute, ResourceKey, RetryPolicy, RouteRule, RouteTimeout, TcpRoute, Timeouts,
};
use crate::raw::{self, FilterType};

/// Largest `weight`, as in the Gateway API; keeps the sum of a rule's weights far from overflow.
const MAX_WEIGHT: u32 = 1_000_000;
/// Gateway API's caps on a route's lists (its CRDs' `maxItems`, and its rule that a route's
/// matches add up to at most 128).
const MAX_PARENT_REFS: usize = 32;
const MAX_RULES: usize = 16;
const MAX_ROUTE_MATCHES: usize = 128;
const MAX_BACKEND_REFS: usize = 16;
/// Most route table entries a config may make: a match for each service its HTTPRoute names.
/// Every sidecar holds all of them (a few hundred bytes each), and the caps above bound only
/// one route (32 × 128); without this a 100 KiB file can make gigabytes of tables.
pub(crate) const MAX_TABLE_ENTRIES: usize = 200_000;
/// Most retries a rule may ask for: more only multiplies load on a failing Backend.
const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Retry defaults when `retry` is given without them.
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
const DEFAULT_RETRY_CODES: [u16; 2] = [502, 503];
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// gRPC codes retried by default: `unavailable`.
const DEFAULT_RETRY_GRPC_CODES: [u8; 1] = [14];
/// gRPC status codes by their canonical names (index = code), in the kebab-case Envoy and
/// Istio use in `retryOn`.
const GRPC_CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// Validates an HTTPRoute.
pub(crate) fn validate_http(
    report: &mut Report<'_>,
    document: &raw::HttpRouteDocument,
    index: &Index<'_>,
) -> Option<HttpRoute> {
    let namespace = &document.metadata.namespace;
    let spec = &document.spec;
    let parents = parents(
        report,
        &spec.parent_refs,
        namespace,
        |report, field, parent| {
            reference_kind(
                report,
                field,
                parent.group.as_deref(),
                parent.kind.as_deref(),
                &["Service"],
            );
            if !is_dns_label(&parent.name) {
                report.error(
                format!("{field}.name"),
                format!("service name {:?} is not a DNS label", parent.name),
                "callers address services as <name>.<namespace>: use lowercase letters, digits \
                 and '-'",
            );
                return None;
            }
            let key = ResourceKey::new(
                parent.namespace.as_deref().unwrap_or(namespace),
                &parent.name,
            );
            if index.backends.get(&key) == Some(&raw::Protocol::Tcp) {
                report.error(
                    format!("{field}.name"),
                    format!("\"{key}\" is a tcp Backend; HTTPRoutes cannot attach to it"),
                    "route opaque TCP with a TCPRoute, or pick the service name HTTP callers use",
                );
                return None;
            }
            Some(key)
        },
    );
    if spec.rules.is_empty() {
        report.error(
            "spec.rules",
            "an HTTPRoute needs at least one rule",
            "add `rules: [{backendRefs: [{name: <backend>}]}]`",
        );
    }
    if !at_most(
        report,
        "spec.rules",
        spec.rules.len(),
        MAX_RULES,
        "split the route into several HTTPRoutes (Gateway API allows 16 rules in one)",
    ) {
        return None;
    }
    let match_count: usize = spec.rules.iter().map(|rule| rule.matches.len()).sum();
    if match_count > MAX_ROUTE_MATCHES {
        report.error(
            "spec.rules",
            format!(
                "{match_count} matches in the route's rules together; at most \
                 {MAX_ROUTE_MATCHES} are allowed"
            ),
            "split the route into several HTTPRoutes (Gateway API allows 128 matches in one)",
        );
        return None;
    }
    let rules: Vec<_> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| http_rule(report, &format!("spec.rules[{i}]"), rule, namespace, index))
        .collect();
    let key = ResourceKey::new(namespace, &document.metadata.name);
    if spec.rules.is_empty() {
        return None;
    }
    Some(HttpRoute {
        key,
        created: document
            .metadata
            .creation_timestamp
            .as_deref()
            .filter(|t| is_kubernetes_timestamp(t))
            .map(str::to_owned),
        parents: parents?,
        rules: all(rules)?,
        // Filled in from a TrafficPolicy targeting the route, once policies are validated.
        rate_limit: None,
    })
}

/// Adds the route table entries of `route` (a match for each service it names) to `total`
/// when they fit under [`MAX_TABLE_ENTRIES`]; reports the route when they do not (every such
/// route, so that one pass names all that must go, and leaving them out leaves a config that
/// fits).
pub(crate) fn count_table_entries(report: &mut Report<'_>, route: &HttpRoute, total: &mut usize) {
    let matches: usize = route.rules.iter().map(|rule| rule.matches.len()).sum();
    let entries = route.parents.len().saturating_mul(matches);
    let after = total.saturating_add(entries);
    if after <= MAX_TABLE_ENTRIES {
        *total = after;
        return;
    }
    report.error(
        "spec",
        format!(
            "this route's {entries} route table entries (a match for each service it names: \
             parentRefs × matches) do not fit: the HTTPRoutes before it make {total} of the \
             {MAX_TABLE_ENTRIES} a config may make, the most every sidecar is asked to hold"
        ),
        "attach routes to fewer services each, or use fewer matches (a PathPrefix or a regex \
         can cover several)",
    );
}

/// Whether `text` is a timestamp as Kubernetes writes `creationTimestamp`
/// (`2026-11-27T05:13:08Z`): those compare as text in the order of time.
fn is_kubernetes_timestamp(text: &str) -> bool {
    const SHAPE: &[u8; 20] = b"0000-00-00T00:00:00Z";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(c, &s)| match s {
            b'0' => c.is_ascii_digit(),
            _ => c == s,
        })
}

fn http_rule(
    report: &mut Report<'_>,
    field: &str,
    rule: &raw::HttpRouteRule,
    namespace: &str,
    index: &Index<'_>,
) -> Option<RouteRule> {
    let matches = matches::validate(report, field, &rule.matches);
    let context = RuleContext {
        field,
        namespace,
        all_prefix: matches::all_path_prefix(&rule.matches),
        index,
    };
    let filters = filter::validate(report, &context, &rule.filters);
    let redirects = rule
        .filters
        .iter()
        .any(|f| f.filter_type == FilterType::RequestRedirect);
    if rule.backend_refs.is_empty() && !redirects {
        report.error(
            format!("{field}.backendRefs"),
            "a rule needs backendRefs (or a RequestRedirect filter)",
            "add `backendRefs: [{name: <backend>}]` naming where matching requests go",
        );
    }
    let backend_refs = backend_refs(
        report,
        field,
        &rule.backend_refs,
        namespace,
        index,
        Want::Http,
    );
    let timeouts = rule
        .timeouts
        .as_ref()
        .map(|t| timeouts(report, &format!("{field}.timeouts"), t));
    let retry = rule
        .retry
        .as_ref()
        .map(|r| retry(report, &format!("{field}.retry"), r));
    Some(RouteRule {
        matches: matches?,
        filters: filters?,
        backend_refs: backend_refs?,
        timeouts: optional(timeouts)?.unwrap_or_default(),
        retry: optional(retry)?,
    })
}

/// Converts `parentRefs` with `parent`, which checks and resolves one entry.
fn parents(
    report: &mut Report<'_>,
    refs: &[raw::ParentRef],
    namespace: &str,
    mut parent: impl FnMut(&mut Report<'_>, &str, &raw::ParentRef) -> Option<ResourceKey>,
) -> Option<Vec<ResourceKey>> {
    if refs.is_empty() {
        report.error(
            "spec.parentRefs",
            "a route needs at least one parentRef",
            format!("add `parentRefs: [{{name: <service>}}]`; namespace defaults to {namespace}"),
        );
        return None;
    }
    if !at_most(
        report,
        "spec.parentRefs",
        refs.len(),
        MAX_PARENT_REFS,
        "split the route into several that each name fewer services (Gateway API allows 32 \
         parentRefs)",
    ) {
        return None;
    }
    let keys = refs
        .iter()
        .enumerate()
        .map(|(i, r)| parent(report, &format!("spec.parentRefs[{i}]"), r))
        .collect();
    all(keys)
}

/// Converts `backendRefs`: resolves each Backend and checks the weights.
fn backend_refs(
    report: &mut Report<'_>,
    rule_field: &str,
    refs: &[raw::BackendRef],
    namespace: &str,
    index: &Index<'_>,
    want: Want,
) -> Option<Vec<BackendRef>> {
    if !at_most(
        report,
        &format!("{rule_field}.backendRefs"),
        refs.len(),
        MAX_BACKEND_REFS,
        "split traffic over at most 16 Backends in one rule (Gateway API's limit)",
    ) {
        return None;
    }
    let converted: Vec<_> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("{rule_field}.backendRefs[{i}]");
            reference_kind(
                report,
                &field,
                r.group.as_deref(),
                r.kind.as_deref(),
                &["Service", "Backend"],
            );
            let namespace = r.namespace.as_deref().unwrap_or(namespace);
            let backend = index.backend(report, &format!("{field}.name"), namespace, &r.name, want);
            let weight = r.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                report.error(
                    format!("{field}.weight"),
                    format!("weight {weight} is above {MAX_WEIGHT}"),
                    "weights are relative: 90 and 10 split like 900000 and 100000",
                );
                return None;
            }
            Some(BackendRef {
                backend: backend?,
                weight,
            })
        })
        .collect();
    let total: u64 = refs.iter().map(|r| u64::from(r.weight.unwrap_or(1))).sum();
    if !refs.is_empty() && total == 0 {
        report.error(
            format!("{rule_field}.backendRefs"),
            "the weights of this rule's backendRefs add up to 0, so no Backend would get traffic",
            "give at least one backendRef a weight above 0",
        );
        return None;
    }
    all(converted)
}

fn timeouts(
    report: &mut Report<'_>,
    field: &str,
    raw: &raw::HttpRouteTimeouts,
) -> Option<Timeouts> {
    // As in the Gateway API, `0s` turns a timeout off; left out, it is the implementation's
    // choice (`Timeouts::per_try`).
    let mut parse = |name: &str, text: &Option<String>| match text {
        Some(text) => duration(report, &format!("{field}.{name}"), text).map(|d| {
            if d.is_zero() {
                RouteTimeout::Off
            } else {
                RouteTimeout::After(d)
            }
        }),
        None => Some(RouteTimeout::Unset),
    };
    let request = parse("request", &raw.request);
    let backend_request = parse("backendRequest", &raw.backend_request);
    let (request, backend_request) = (request?, backend_request?);
    // A try without a limit fits a request with one (the request's bound stops it), and any
    // try fits a request without one.
    if let (RouteTimeout::After(request), RouteTimeout::After(backend_request)) =
        (request, backend_request)
    {
        if backend_request > request {
            report.error(
                format!("{field}.backendRequest"),
                format!(
                    "backendRequest ({backend_request:?}) is longer than request ({request:?})"
                ),
                "each try must fit in the whole request: make backendRequest at most request",
            );
            return None;
        }
    }
    Some(Timeouts {
        request,
        backend_request,
    })
}

fn retry(report: &mut Report<'_>, field: &str, raw: &raw::HttpRouteRetry) -> Option<RetryPolicy> {
    let attempts = raw.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
    let attempts_ok = attempts <= MAX_RETRY_ATTEMPTS;
    if !attempts_ok {
        report.error(
            format!("{field}.attempts"),
            format!("{attempts} retries is more than {MAX_RETRY_ATTEMPTS}"),
            "use a few retries (2 is typical); more multiply load on a failing Backend",
        );
    }
    let codes = raw
        .codes
        .clone()
        .unwrap_or_else(|| DEFAULT_RETRY_CODES.to_vec());
    let mut codes_ok = true;
    for (i, code) in codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            report.error(
                format!("{field}.codes[{i}]"),
                format!("{code} is not an HTTP status code"),
                "use status codes from 100 to 599, typically 502, 503 and 504",
            );
            codes_ok = false;
        }
    }
    let backoff = match &raw.backoff {
        Some(text) => duration(report, &format!("{field}.backoff"), text),
        None => Some(DEFAULT_RETRY_BACKOFF),
    };
    let grpc_codes = match &raw.grpc_codes {
        Some(names) => grpc_codes(report, &format!("{field}.grpcCodes"), names),
        None => Some(DEFAULT_RETRY_GRPC_CODES.to_vec()),
    };
    let methods: Vec<_> = raw
        .non_idempotent_methods
        .iter()
        .enumerate()
        .map(|(i, m)| non_idempotent(report, &format!("{field}.nonIdempotentMethods[{i}]"), m))
        .collect();
    (attempts_ok && codes_ok).then_some(())?;
    Some(RetryPolicy {
        attempts,
        codes,
        backoff: backoff?,
        grpc_codes: grpc_codes?,
        non_idempotent_methods: all(methods)?,
    })
}

/// One `retry.nonIdempotentMethods` entry: a method that is neither idempotent (those are
/// always replayed) nor a tunnel.
fn non_idempotent(report: &mut Report<'_>, field: &str, name: &str) -> Option<String> {
    let method = super::common::method(report, field, name)?;
    match method.as_str() {
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE" => {
            report.error(
                field,
                format!("{method} is idempotent and already retried"),
                "list only methods such as POST or PATCH that this route may replay",
            );
            None
        }
        "CONNECT" => {
            report.error(
                field,
                "a CONNECT tunnel cannot be replayed",
                "remove CONNECT; list methods such as POST or PATCH",
            );
            None
        }
        _ => Some(method),
    }
}

/// `retry.grpcCodes`: gRPC status names (`resource-exhausted`, `RESOURCE_EXHAUSTED` and
/// `ResourceExhausted` are the same) to codes; `ok` is not a failure.
fn grpc_codes(report: &mut Report<'_>, field: &str, names: &[String]) -> Option<Vec<u8>> {
    let mut codes = Vec::with_capacity(names.len());
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        let normal: String = name
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let code = GRPC_CODE_NAMES
            .iter()
            .position(|known| known.replace('-', "") == normal);
        match code {
            Some(0) => {
                report.error(
                    format!("{field}[{i}]"),
                    "ok is success, not a failure to retry",
                    "list failure codes, e.g. unavailable",
                );
                ok = false;
            }
            Some(code) => codes.push(u8::try_from(code).unwrap_or(u8::MAX)),
            None => {
                let hint = match super::common::closest(name, GRPC_CODE_NAMES[1..].iter().copied())
                {
                    Some(best) => format!("did you mean {best}?"),
                    None => format!("use gRPC status names: {}", GRPC_CODE_NAMES[1..].join(", ")),
                };
                report.error(
                    format!("{field}[{i}]"),
                    format!("{name:?} is not a gRPC status code"),
                    hint,
                );
                ok = false;
            }
        }
    }
    ok.then_some(codes)
}

/// Validates a TCPRoute; `claims` records which TCPRoute took over each tcp Backend.
pub(crate) fn validate_tcp(
    report: &mut Report<'_>,
    document: &raw::TcpRouteDocument,
    index: &Index<'_>,
    claims: &mut Claims,
) -> Option<TcpRoute> {
    let namespace = &document.metadata.namespace;
    let key = ResourceKey::new(namespace, &document.metadata.name);
    let spec = &document.spec;
    let parents =
        parents(
            report,
            &spec.parent_refs,
            namespace,
            |report, field, parent| {
                reference_kind(
                    report,
                    field,
                    parent.group.as_deref(),
                    parent.kind.as_deref(),
                    &["Service", "Backend"],
                );
                let parent_namespace = parent.namespace.as_deref().unwrap_or(namespace);
                let backend = index.backend(
                    report,
                    &format!("{field}.name"),
                    parent_namespace,
                    &parent.name,
                    Want::Tcp,
                )?;
                // One TCPRoute per listener for each set of callers (GAMMA): the Backend's own
                // namespace's route serves everyone, another namespace's only its callers.
                let callers = (backend.namespace != *namespace).then(|| namespace.clone());
                let claim = (backend.clone(), callers);
                if let Some(owner) = claims.tcp_parents.get(&claim) {
                    report.error(
                format!("{field}.name"),
                format!("tcp Backend \"{backend}\" is already the parent of TCPRoute \"{owner}\""),
                "a tcp listener has one TCPRoute per namespace: merge the two routes",
            );
                    return None;
                }
                claims.tcp_parents.insert(claim, key.clone());
                Some(backend)
            },
        );
    let [rule] = spec.rules.as_slice() else {
        report.error(
            "spec.rules",
            format!(
                "a TCPRoute needs exactly one rule, found {}",
                spec.rules.len()
            ),
            "put every backendRef in one rule: \
             `rules: [{backendRefs: [{name: a, weight: 90}, {name: b, weight: 10}]}]`",
        );
        return None;
    };
    if rule.backend_refs.is_empty() {
        report.error(
            "spec.rules[0].backendRefs",
            "a TCPRoute rule needs backendRefs",
            "add `backendRefs: [{name: <tcp backend>}]`",
        );
        return None;
    }
    let backend_refs = backend_refs(
        report,
        "spec.rules[0]",
        &rule.backend_refs,
        namespace,
        index,
        Want::Tcp,
    );
    Some(TcpRoute {
        key,
        parents: parents?,
        backend_refs: backend_refs?,
    })
}
