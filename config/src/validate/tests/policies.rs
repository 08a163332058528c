//! TrafficPolicy and AuthorizationPolicy.

use std::time::Duration;

use super::*;
use crate::model::{AuthzAction, LoadBalancer, ResourceKey};

fn traffic(spec: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\n\
         metadata: {{name: p, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: payments-v2}}, {spec}}}\n"
    )
}

fn authz(spec: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: a, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: payments-v2}}, action: ALLOW, {spec}}}\n"
    )
}

const TRAFFIC: &str = "TrafficPolicy shop/p";
const AUTHZ: &str = "AuthorizationPolicy shop/a";

#[test]
fn traffic_policy_defaults() {
    let config = valid(&with_backends(&traffic(
        "connectionPool: {maxConnections: 10}, outlierDetection: {}, \
         loadBalancer: {type: LeastRequest}, retryBudget: {}, rateLimit: {requests: 100, per: 1m}, \
         faultInjection: {delay: {percent: 1, fixed: 2s}}",
    )));
    let policy = &config.traffic_policies[&ResourceKey::new("shop", "payments-v2")];
    let pool = policy.connection_pool.unwrap();
    assert_eq!(
        (
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_requests
        ),
        (10, 1024, 1024)
    );
    let outlier = policy.outlier_detection.unwrap();
    assert_eq!(
        (
            outlier.consecutive_5xx,
            outlier.interval,
            outlier.max_ejection_percent
        ),
        (5, Duration::from_secs(10), 10)
    );
    assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(policy.retry_budget.unwrap().min_retries_per_second, 3);
    assert_eq!(
        policy.fault_injection.unwrap().delay,
        Some((1.0, Duration::from_secs(2)))
    );
}

#[test]
fn policy_target_must_exist() {
    let text = with_backends(
        &traffic("rateLimit: {requests: 1, per: 1s}").replace("payments-v2", "payments"),
    );
    single_error(
        &text,
        TRAFFIC,
        "spec.targetRef.name",
        "Backend \"shop/payments\" does not exist",
    );
    let text = with_backends(&authz("rules: []").replace("kind: Backend", "kind: Service"));
    single_error(
        &text,
        AUTHZ,
        "spec.targetRef.kind",
        "policies target Backends",
    );
}

#[test]
fn one_traffic_policy_per_backend() {
    let text = format!(
        "{}---\n{}",
        with_backends(&traffic("loadBalancer: {type: Random}")),
        traffic("loadBalancer: {type: Random}").replace("name: p,", "name: q,")
    );
    single_error(
        &text,
        "TrafficPolicy shop/q",
        "spec.targetRef.name",
        "already has TrafficPolicy \"shop/p\"",
    );
}

#[test]
fn percents_are_checked() {
    single_error(
        &with_backends(&traffic("retryBudget: {percent: -1}")),
        TRAFFIC,
        "spec.retryBudget.percent",
        "not a percentage",
    );
    single_error(
        &with_backends(&traffic(
            "faultInjection: {abort: {percent: 100.5, status: 503}}",
        )),
        TRAFFIC,
        "spec.faultInjection.abort.percent",
        "not a percentage",
    );
    single_error(
        &with_backends(&traffic(
            "faultInjection: {abort: {percent: 1, status: 42}}",
        )),
        TRAFFIC,
        "spec.faultInjection.abort.status",
        "not a final HTTP status",
    );
    single_error(
        &with_backends(&traffic("outlierDetection: {maxEjectionPercent: 101}")),
        TRAFFIC,
        "spec.outlierDetection.maxEjectionPercent",
        "not a percentage",
    );
}

#[test]
fn rate_limit_and_pool_must_allow_something() {
    single_error(
        &with_backends(&traffic("rateLimit: {requests: 0, per: 1s}")),
        TRAFFIC,
        "spec.rateLimit.requests",
        "refuse everything",
    );
    single_error(
        &with_backends(&traffic("rateLimit: {requests: 1, per: 0s}")),
        TRAFFIC,
        "spec.rateLimit.per",
        "longer than 0s",
    );
    single_error(
        &with_backends(&traffic("connectionPool: {maxRequests: 0}")),
        TRAFFIC,
        "spec.connectionPool.maxRequests",
        "refuse every request",
    );
}

#[test]
fn authorization_policy_rules() {
    let config = valid(&with_backends(&authz(
        "rules: [{from: [{identities: [\"spiffe://cluster.local/ns/shop/*\"]}], \
                  to: [{methods: [GET], paths: [/api/*]}]}]",
    )));
    let policy = &config.authorization_policies[0];
    assert_eq!(policy.action, AuthzAction::Allow);
    assert_eq!(
        policy.rules[0].from_identities,
        ["spiffe://cluster.local/ns/shop/*"]
    );
    assert_eq!(policy.rules[0].to[0].paths, ["/api/*"]);
}

#[test]
fn authorization_policy_errors() {
    single_error(
        &with_backends(&authz("rules: [{from: [{identities: [shop/gateway]}]}]")),
        AUTHZ,
        "spec.rules[0].from[0].identities[0]",
        "invalid SPIFFE ID",
    );
    // A DENY entry spelled in a way no peer's certificate can carry would never match.
    single_error(
        &with_backends(&authz(
            "rules: [{from: [{identities: [\"spiffe://Cluster.Local/ns/shop/*\"]}]}]",
        )),
        AUTHZ,
        "spec.rules[0].from[0].identities[0]",
        "invalid SPIFFE ID",
    );
    single_error(
        &with_backends(&authz("rules: [{to: [{methods: [post]}]}]")),
        AUTHZ,
        "spec.rules[0].to[0].methods[0]",
        "not a valid HTTP method",
    );
    single_error(
        &with_backends(&authz("rules: [{to: [{paths: [\"/a*b\"]}]}]")),
        AUTHZ,
        "spec.rules[0].to[0].paths[0]",
        "not a supported pattern",
    );
    single_error(
        &with_backends(&authz("rules: [{to: [{paths: [\"/%61dmin*\"]}]}]")),
        AUTHZ,
        "spec.rules[0].to[0].paths[0]",
        "not spelled as requests are matched",
    );
    single_error(
        &with_backends(&authz("rules: [{from: [{identities: []}]}]")),
        AUTHZ,
        "spec.rules[0].from[0].identities",
        "at least one identity",
    );
    single_error(
        &with_backends(&authz("rules: []").replace("ALLOW", "PERMIT")),
        AUTHZ,
        "spec.action",
        "unknown variant `PERMIT`",
    );
}

/// BACKENDS, HTTPRoute shop/web, and a TrafficPolicy `p` targeting HTTPRoute `route`.
fn route_policy(route: &str, spec: &str) -> String {
    with_backends(&format!(
        "{}---\napiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\n\
         metadata: {{name: p, namespace: shop}}\n\
         spec: {{targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}, {spec}}}\n",
        http_route("[{backendRefs: [{name: monolith}]}]")
    ))
}

#[test]
fn a_traffic_policy_may_rate_limit_an_http_route() {
    let config = valid(&route_policy("web", "rateLimit: {requests: 10, per: 1s}"));
    let route = &config.http_routes[0];
    let limit = route.rate_limit.expect("the route carries the limit");
    assert_eq!((limit.requests, limit.per), (10, Duration::from_secs(1)));
    assert!(config.traffic_policies.is_empty(), "not a Backend's policy");
}

#[test]
fn a_route_policy_takes_only_a_rate_limit_of_an_existing_route() {
    let error = single_error(
        &route_policy("wen", "rateLimit: {requests: 10, per: 1s}"),
        TRAFFIC,
        "spec.targetRef.name",
        "HTTPRoute \"shop/wen\" does not exist",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean web?"));
    single_error(
        &route_policy(
            "web",
            "rateLimit: {requests: 10, per: 1s}, loadBalancer: {type: Random}",
        ),
        TRAFFIC,
        "spec.loadBalancer",
        "applies to a Backend, not to an HTTPRoute",
    );
    single_error(
        &route_policy(
            "web",
            "rateLimit: {requests: 1, per: 1s}, faultInjection: {}",
        ),
        TRAFFIC,
        "spec.faultInjection",
        "applies to a Backend",
    );
    let errors = parse(&route_policy("web", "connectionPool: {}")).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.connectionPool", "spec.rateLimit"]);
    single_error(
        &route_policy("web", "rateLimit: {requests: 0, per: 1s}"),
        TRAFFIC,
        "spec.rateLimit.requests",
        "refuse everything",
    );
    let wrong_group = route_policy("web", "rateLimit: {requests: 1, per: 1s}")
        .replace("group: gateway.networking.k8s.io", "group: ficus.dev");
    single_error(
        &wrong_group,
        TRAFFIC,
        "spec.targetRef.group",
        "not in group",
    );
}
