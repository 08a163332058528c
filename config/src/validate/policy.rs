//! `TrafficPolicy` → [`TrafficPolicy`] and `AuthorizationPolicy` → [`AuthorizationPolicy`].

use std::time::Duration;

use super::backend::spiffe_id;
use super::common::{duration, method, percent, positive_duration};
use super::{all, optional, Claims, Index, Report, Want};
use crate::model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, AuthzTo, ConnectionPool, FaultInjection,
    LoadBalancer, OutlierDetection, RateLimit, ResourceKey, RetryBudget, TrafficPolicy,
};
use crate::raw;
use crate::raw::Kind;

/// `connectionPool` caps left out (Envoy's defaults).
const DEFAULT_POOL_LIMIT: u32 = 1024;

/// What a valid TrafficPolicy applies to.
pub(crate) enum Traffic {
    /// A Backend (`targetRef.kind: Backend`): how its callers talk to it.
    Backend(TrafficPolicy),
    /// An HTTPRoute (`targetRef.kind: HTTPRoute`): its rate limit, applied by each calling
    /// sidecar to the route's requests.
    Route(ResourceKey, RateLimit),
}

/// Validates a TrafficPolicy; `claims` records which policy took each Backend or route.
pub(crate) fn validate_traffic(
    report: &mut Report<'_>,
    document: &raw::TrafficPolicyDocument,
    index: &Index<'_>,
    claims: &mut Claims,
) -> Option<Traffic> {
    let key = ResourceKey::new(&document.metadata.namespace, &document.metadata.name);
    let spec = &document.spec;
    if spec.target_ref.kind == "HTTPRoute" {
        return route_traffic(report, &key, spec, index, claims);
    }
    let target = target(report, &spec.target_ref, &key.namespace, index).and_then(|target| {
        if let Some(owner) = claims.traffic_targets.get(&target) {
            report.error(
                "spec.targetRef.name",
                format!("Backend \"{target}\" already has TrafficPolicy \"{owner}\""),
                "a Backend has one TrafficPolicy: merge the two",
            );
            return None;
        }
        claims.traffic_targets.insert(target.clone(), key.clone());
        Some(target)
    });
    let connection_pool = spec
        .connection_pool
        .as_ref()
        .map(|pool| connection_pool(report, pool));
    let outlier_detection = spec
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(report, o));
    let load_balancer = match spec.load_balancer.as_ref().map(|lb| lb.balancer_type) {
        Some(raw::LoadBalancerType::RoundRobin) => LoadBalancer::RoundRobin,
        None | Some(raw::LoadBalancerType::LeastRequest) => LoadBalancer::LeastRequest,
        Some(raw::LoadBalancerType::Random) => LoadBalancer::Random,
    };
    let retry_budget = spec.retry_budget.as_ref().map(|budget| {
        let percent = percent(
            report,
            "spec.retryBudget.percent",
            budget.percent.unwrap_or(20.0),
        );
        Some(RetryBudget {
            percent: percent?,
            min_retries_per_second: budget.min_retries_per_second.unwrap_or(3),
        })
    });
    let rate_limit = spec
        .rate_limit
        .as_ref()
        .map(|limit| rate_limit(report, limit));
    let fault_injection = spec
        .fault_injection
        .as_ref()
        .map(|fault| fault_injection(report, fault));
    Some(Traffic::Backend(TrafficPolicy {
        key,
        target: target?,
        connection_pool: optional(connection_pool)?,
        outlier_detection: optional(outlier_detection)?,
        load_balancer,
        retry_budget: optional(retry_budget)?,
        rate_limit: optional(rate_limit)?,
        fault_injection: optional(fault_injection)?,
    }))
}

/// A TrafficPolicy whose `targetRef` is an HTTPRoute of its namespace: only `rateLimit`
/// applies to a route (the rest is about a Backend's endpoints).
fn route_traffic(
    report: &mut Report<'_>,
    key: &ResourceKey,
    spec: &raw::TrafficPolicySpec,
    index: &Index<'_>,
    claims: &mut Claims,
) -> Option<Traffic> {
    const ROUTE_GROUP: &str = "gateway.networking.k8s.io";
    let mut ok = true;
    if let Some(group) = spec
        .target_ref
        .group
        .as_deref()
        .filter(|g| *g != ROUTE_GROUP)
    {
        report.error(
            "spec.targetRef.group",
            format!("HTTPRoute is not in group {group:?}"),
            format!("write group: {ROUTE_GROUP}, or leave group out"),
        );
        ok = false;
    }
    let route = ResourceKey::new(&key.namespace, &spec.target_ref.name);
    if !index.routes.contains(&route) {
        if !index.broken.contains(&(Kind::HttpRoute, route.clone())) {
            let same_namespace = index
                .routes
                .iter()
                .filter(|r| r.namespace == key.namespace)
                .map(|r| r.name.as_str());
            let hint = match super::closest(&route.name, same_namespace) {
                Some(best) => format!("did you mean {best}?"),
                None => "a policy targets an HTTPRoute of its own namespace".to_owned(),
            };
            report.error(
                "spec.targetRef.name",
                format!("HTTPRoute \"{route}\" does not exist"),
                hint,
            );
        }
        ok = false;
    } else if let Some(owner) = claims.route_targets.get(&route) {
        report.error(
            "spec.targetRef.name",
            format!("HTTPRoute \"{route}\" already has TrafficPolicy \"{owner}\""),
            "a route has one TrafficPolicy: merge the two",
        );
        ok = false;
    } else {
        claims.route_targets.insert(route.clone(), key.clone());
    }
    let backend_only = [
        ("connectionPool", spec.connection_pool.is_some()),
        ("outlierDetection", spec.outlier_detection.is_some()),
        ("loadBalancer", spec.load_balancer.is_some()),
        ("retryBudget", spec.retry_budget.is_some()),
        ("faultInjection", spec.fault_injection.is_some()),
    ];
    for (field, _) in backend_only.iter().filter(|(_, set)| *set) {
        report.error(
            format!("spec.{field}"),
            format!("{field} applies to a Backend, not to an HTTPRoute"),
            "move it to a TrafficPolicy whose targetRef is the Backend (kind: Backend)",
        );
        ok = false;
    }
    let Some(limit) = spec.rate_limit.as_ref() else {
        report.error(
            "spec.rateLimit",
            "a TrafficPolicy for an HTTPRoute has nothing to apply without rateLimit",
            "add e.g. rateLimit: {requests: 100, per: 1m}",
        );
        return None;
    };
    let limit = rate_limit(report, limit);
    ok.then_some(())?;
    Some(Traffic::Route(route, limit?))
}

/// Resolves a policy's `targetRef` (a Backend in the policy's namespace).
fn target(
    report: &mut Report<'_>,
    target: &raw::PolicyTargetRef,
    namespace: &str,
    index: &Index<'_>,
) -> Option<ResourceKey> {
    if target.kind != "Backend" {
        report.error(
            "spec.targetRef.kind",
            format!("policies target Backends, not {:?}", target.kind),
            "set `kind: Backend` and name the Backend (a TrafficPolicy may also target an \
             HTTPRoute, for its rateLimit)",
        );
        return None;
    }
    if let Some(group) = target.group.as_deref().filter(|g| *g != "ficus.dev") {
        report.error(
            "spec.targetRef.group",
            format!("unknown group {group:?}"),
            "leave group out, or write ficus.dev",
        );
        return None;
    }
    index.backend(
        report,
        "spec.targetRef.name",
        namespace,
        &target.name,
        Want::Any,
    )
}

fn connection_pool(report: &mut Report<'_>, pool: &raw::ConnectionPool) -> Option<ConnectionPool> {
    let mut at_least_one =
        |name: &str, value: Option<u32>| match value.unwrap_or(DEFAULT_POOL_LIMIT) {
            0 => {
                report.error(
                    format!("spec.connectionPool.{name}"),
                    "0 would refuse every request",
                    format!("use a number above 0; the default is {DEFAULT_POOL_LIMIT}"),
                );
                None
            }
            value => Some(value),
        };
    let max_connections = at_least_one("maxConnections", pool.max_connections);
    let max_requests = at_least_one("maxRequests", pool.max_requests);
    Some(ConnectionPool {
        max_connections: max_connections?,
        max_pending_requests: pool.max_pending_requests.unwrap_or(DEFAULT_POOL_LIMIT),
        max_requests: max_requests?,
    })
}

fn outlier_detection(
    report: &mut Report<'_>,
    raw: &raw::OutlierDetection,
) -> Option<OutlierDetection> {
    let field = "spec.outlierDetection";
    let consecutive_5xx = match raw.consecutive_5xx.unwrap_or(5) {
        0 => {
            report.error(
                format!("{field}.consecutive5xx"),
                "0 would eject endpoints that never failed",
                "use 1 or more; 5 is typical",
            );
            None
        }
        count => Some(count),
    };
    let mut positive = |name: &str, text: &Option<String>, default: u64| match text {
        Some(text) => positive_duration(report, &format!("{field}.{name}"), text),
        None => Some(Duration::from_secs(default)),
    };
    let interval = positive("interval", &raw.interval, 10);
    let base_ejection_time = positive("baseEjectionTime", &raw.base_ejection_time, 30);
    let max_ejection_percent = match raw.max_ejection_percent.unwrap_or(10) {
        value @ 0..=100 => Some(value),
        value => {
            report.error(
                format!("{field}.maxEjectionPercent"),
                format!("{value} is not a percentage"),
                "use a number from 0 to 100",
            );
            None
        }
    };
    Some(OutlierDetection {
        consecutive_5xx: consecutive_5xx?,
        interval: interval?,
        base_ejection_time: base_ejection_time?,
        max_ejection_percent: max_ejection_percent?,
    })
}

fn rate_limit(report: &mut Report<'_>, limit: &raw::RateLimit) -> Option<RateLimit> {
    if limit.requests == 0 {
        report.error(
            "spec.rateLimit.requests",
            "0 requests would refuse everything",
            "use 1 or more, or remove rateLimit",
        );
    }
    let per = positive_duration(report, "spec.rateLimit.per", &limit.per);
    (limit.requests > 0).then_some(())?;
    Some(RateLimit {
        requests: limit.requests,
        per: per?,
    })
}

fn fault_injection(report: &mut Report<'_>, fault: &raw::FaultInjection) -> Option<FaultInjection> {
    let abort = fault.abort.as_ref().map(|abort| {
        let share = percent(report, "spec.faultInjection.abort.percent", abort.percent);
        if !(200..=599).contains(&abort.status) {
            report.error(
                "spec.faultInjection.abort.status",
                format!("{} is not a final HTTP status", abort.status),
                "use a status from 200 to 599, e.g. 503",
            );
            return None;
        }
        Some((share?, abort.status))
    });
    let delay = fault.delay.as_ref().map(|delay| {
        let share = percent(report, "spec.faultInjection.delay.percent", delay.percent);
        let fixed = duration(report, "spec.faultInjection.delay.fixed", &delay.fixed);
        Some((share?, fixed?))
    });
    Some(FaultInjection {
        abort: optional(abort)?,
        delay: optional(delay)?,
    })
}

/// Validates an AuthorizationPolicy.
pub(crate) fn validate_authorization(
    report: &mut Report<'_>,
    document: &raw::AuthorizationPolicyDocument,
    index: &Index<'_>,
) -> Option<AuthorizationPolicy> {
    let key = ResourceKey::new(&document.metadata.namespace, &document.metadata.name);
    let spec = &document.spec;
    let target = target(report, &spec.target_ref, &key.namespace, index);
    let action = match spec.action {
        raw::AuthzAction::Allow => AuthzAction::Allow,
        raw::AuthzAction::Deny => AuthzAction::Deny,
    };
    let rules: Vec<_> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| authz_rule(report, &format!("spec.rules[{i}]"), rule))
        .collect();
    Some(AuthorizationPolicy {
        key,
        target: target?,
        action,
        rules: all(rules)?,
    })
}

fn authz_rule(report: &mut Report<'_>, field: &str, rule: &raw::AuthzRule) -> Option<AuthzRule> {
    let mut from_identities = Vec::new();
    let mut ok = true;
    for (i, from) in rule.from.iter().enumerate() {
        let from_field = format!("{field}.from[{i}].identities");
        if from.identities.is_empty() {
            report.error(
                &from_field,
                "a `from` entry needs at least one identity",
                "list SPIFFE IDs, or leave `from` out to match every caller",
            );
            ok = false;
        }
        for (j, identity) in from.identities.iter().enumerate() {
            match wildcard(
                report,
                &format!("{from_field}[{j}]"),
                identity,
                "spiffe://<trust domain>/*",
                spiffe_id,
            ) {
                Some(identity) => from_identities.push(identity),
                None => ok = false,
            }
        }
    }
    let to: Vec<_> = rule
        .to
        .iter()
        .enumerate()
        .map(|(i, to)| {
            let to_field = format!("{field}.to[{i}]");
            let methods: Vec<_> = to
                .methods
                .iter()
                .enumerate()
                .map(|(j, m)| method(report, &format!("{to_field}.methods[{j}]"), m))
                .collect();
            let paths: Vec<_> = to
                .paths
                .iter()
                .enumerate()
                .map(|(j, path)| {
                    let path_field = format!("{to_field}.paths[{j}]");
                    wildcard(report, &path_field, path, "/*", super::common::matched_path)
                })
                .collect();
            Some(AuthzTo {
                methods: all(methods)?,
                paths: all(paths)?,
            })
        })
        .collect();
    ok.then_some(())?;
    Some(AuthzRule {
        from_identities,
        to: all(to)?,
    })
}

/// A pattern whose only wildcard is a trailing `*`. Read with the `*` as an ordinary character,
/// it must pass `check`; `everything` is the pattern that matches every value, for the hint.
fn wildcard(
    report: &mut Report<'_>,
    field: &str,
    pattern: &str,
    everything: &str,
    check: impl FnOnce(&mut Report<'_>, &str, &str) -> Option<String>,
) -> Option<String> {
    let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
    if prefix.is_empty() || prefix.contains('*') {
        report.error(
            field,
            format!("{pattern:?} is not a supported pattern"),
            format!("only a trailing `*` is supported; {everything} matches everything"),
        );
        return None;
    }
    if pattern.ends_with('*') {
        // `spiffe://cluster.local/ns/shop/*` ends in an empty segment: check it with the
        // wildcard standing for one character.
        check(report, field, &format!("{prefix}x"))?;
        return Some(pattern.to_owned());
    }
    check(report, field, pattern)
}
