//! HTTPRoute and TCPRoute.

use std::time::Duration;

use super::*;
use crate::model::{Filter, PathMatch, PathModifier, StringMatch};

#[track_caller]
fn rule_error(rules: &str, field: &str, message: &str) -> Diagnostic {
    single_error(&with_backends(&http_route(rules)), ROUTE, field, message)
}

fn tcp_route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\n\
         metadata: {{name: cache, namespace: shop}}\nspec: {spec}\n"
    )
}

#[test]
fn missing_backend_is_named_with_its_namespace() {
    let error = rule_error(
        "[{backendRefs: [{name: monolith}, {name: payments-v3}]}]",
        "spec.rules[0].backendRefs[1].name",
        "Backend \"shop/payments-v3\" does not exist",
    );
    assert!(error.hint.unwrap().contains("payments-v2"));
    let error = rule_error(
        "[{backendRefs: [{name: monolith, namespace: web}]}]",
        "spec.rules[0].backendRefs[0].name",
        "\"web/monolith\"",
    );
    assert!(error.hint.unwrap().contains("namespace: shop"));
}

#[test]
fn backend_ref_kind_is_service_or_backend() {
    valid(&with_backends(&http_route(
        "[{backendRefs: [{kind: Backend, group: ficus.dev, name: monolith}]}]",
    )));
    rule_error(
        "[{backendRefs: [{kind: Pod, name: monolith}]}]",
        "spec.rules[0].backendRefs[0].kind",
        "\"Pod\"",
    );
}

#[test]
fn http_routes_need_http_backends() {
    rule_error(
        "[{backendRefs: [{name: cache}]}]",
        "spec.rules[0].backendRefs[0].name",
        "is a tcp Backend",
    );
}

#[test]
fn weights_must_not_sum_to_zero() {
    rule_error(
        "[{backendRefs: [{name: monolith, weight: 0}, {name: payments-v2, weight: 0}]}]",
        "spec.rules[0].backendRefs",
        "add up to 0",
    );
    rule_error(
        "[{backendRefs: [{name: monolith, weight: 1000001}]}]",
        "spec.rules[0].backendRefs[0].weight",
        "above",
    );
    rule_error(
        "[{backendRefs: [{name: monolith, weight: -1}]}]",
        "spec.rules[0].backendRefs[0].weight",
        "invalid value",
    );
}

#[test]
fn rule_needs_backends_or_redirect() {
    rule_error(
        "[{matches: [{path: {value: /old}}]}]",
        "spec.rules[0].backendRefs",
        "needs backendRefs",
    );
    let config = valid(&with_backends(&http_route(
        "[{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302}}]}]",
    )));
    let rule = &config.http_routes[0].rules[0];
    assert!(rule.backend_refs.is_empty());
    assert!(
        matches!(&rule.filters[0], Filter::RequestRedirect(r) if r.status_code == 302 && r.scheme.as_deref() == Some("https"))
    );
}

#[test]
fn route_needs_parents_and_rules() {
    let text =
        with_backends(&http_route("[]").replace("parentRefs: [{name: shop}]", "parentRefs: []"));
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.parentRefs", "spec.rules"]);
    rule_error("[]", "spec.rules", "at least one rule");
}

#[test]
fn durations_are_checked() {
    rule_error(
        "[{backendRefs: [{name: monolith}], timeouts: {backendRequest: 500}}]",
        "spec.rules[0].timeouts.backendRequest",
        "expected a string",
    );
    rule_error(
        "[{backendRefs: [{name: monolith}], retry: {backoff: 10us}}]",
        "spec.rules[0].retry.backoff",
        "unknown unit",
    );
    rule_error(
        "[{backendRefs: [{name: monolith}], timeouts: {request: 1s, backendRequest: 2s}}]",
        "spec.rules[0].timeouts.backendRequest",
        "longer than request",
    );
    let config = valid(&with_backends(&http_route(
        "[{backendRefs: [{name: monolith}], timeouts: {request: 0s, backendRequest: 1m30s}}]",
    )));
    let timeouts = config.http_routes[0].rules[0].timeouts;
    assert_eq!(
        (timeouts.request, timeouts.backend_request),
        (None, Some(Duration::from_secs(90)))
    );
}

#[test]
fn retry_limits() {
    rule_error(
        "[{backendRefs: [{name: monolith}], retry: {attempts: 11}}]",
        "spec.rules[0].retry.attempts",
        "more than 10",
    );
    rule_error(
        "[{backendRefs: [{name: monolith}], retry: {codes: [503, 600]}}]",
        "spec.rules[0].retry.codes[1]",
        "not an HTTP status",
    );
    let config = valid(&with_backends(&http_route(
        "[{backendRefs: [{name: monolith}], retry: {}}]",
    )));
    let retry = config.http_routes[0].rules[0].retry.clone().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes, retry.backoff),
        (2, vec![502, 503], Duration::from_millis(25))
    );
}

#[test]
fn regexes_must_compile_and_are_anchored() {
    rule_error("[{matches: [{path: {type: RegularExpression, value: \"/a(\"}}], backendRefs: [{name: monolith}]}]", "spec.rules[0].matches[0].path.value", "invalid regular expression");
    rule_error("[{matches: [{headers: [{type: RegularExpression, name: x, value: \"a)|(b\"}]}], backendRefs: [{name: monolith}]}]", "spec.rules[0].matches[0].headers[0].value", "invalid regular expression");
    rule_error("[{matches: [{queryParams: [{type: RegularExpression, name: q, value: \"a{1000}{1000}\"}]}], backendRefs: [{name: monolith}]}]", "spec.rules[0].matches[0].queryParams[0].value", "invalid regular expression");
    let config = valid(&with_backends(&http_route("[{matches: [{path: {type: RegularExpression, value: \"/v[0-9]+\"}}], backendRefs: [{name: monolith}]}]")));
    let PathMatch::RegularExpression(regex) = &config.http_routes[0].rules[0].matches[0].path
    else {
        panic!("not a regex")
    };
    assert!(regex.is_match("/v12"));
    assert!(!regex.is_match("/v12/x"));
    assert!(!regex.is_match("x/v1"));
}

#[test]
fn paths_start_with_slash_and_prefixes_are_normalized() {
    rule_error(
        "[{matches: [{path: {type: Exact, value: api}}], backendRefs: [{name: monolith}]}]",
        "spec.rules[0].matches[0].path.value",
        "not a valid path",
    );
    let config = valid(&with_backends(&http_route(
        "[{matches: [{path: {value: /api/}}, {path: {value: /}}, {}], backendRefs: [{name: monolith}]}, {backendRefs: [{name: monolith}]}]",
    )));
    let rules = &config.http_routes[0].rules;
    let prefixes: Vec<_> = rules[0]
        .matches
        .iter()
        .map(|m| match &m.path {
            PathMatch::Prefix(p) => p.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(prefixes, ["/api", "/", "/"]);
    assert!(
        matches!(&rules[1].matches[..], [m] if matches!(&m.path, PathMatch::Prefix(p) if p == "/"))
    );
}

#[test]
fn header_names_are_tokens_and_lowercased() {
    rule_error(
        "[{matches: [{headers: [{name: \"x y\", value: a}]}], backendRefs: [{name: monolith}]}]",
        "spec.rules[0].matches[0].headers[0].name",
        "not a valid header name",
    );
    let config = valid(&with_backends(&http_route("[{matches: [{headers: [{name: X-Canary, value: \"yes\"}]}], backendRefs: [{name: monolith}]}]")));
    let header = &config.http_routes[0].rules[0].matches[0].headers[0];
    assert_eq!(header.name, "x-canary");
    assert!(matches!(&header.value, StringMatch::Exact(v) if v == "yes"));
}

#[test]
fn header_values_cannot_split_headers() {
    let filter = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: \"a\\r\\nb\"}]}}";
    rule_error(
        &format!("[{{filters: [{filter}], backendRefs: [{{name: monolith}}]}}]"),
        "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
        "line break",
    );
    let filter = "{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-a, value: \"a\\0\"}], remove: [\"bad name\"]}}";
    let text = with_backends(&http_route(&format!(
        "[{{filters: [{filter}], backendRefs: [{{name: monolith}}]}}]"
    )));
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].message.contains("NUL"));
    assert_eq!(
        errors[1].field,
        "spec.rules[0].filters[0].responseHeaderModifier.remove[0]"
    );
}

#[test]
fn methods_are_uppercase_tokens() {
    let error = rule_error(
        "[{matches: [{method: get}], backendRefs: [{name: monolith}]}]",
        "spec.rules[0].matches[0].method",
        "not a valid HTTP method",
    );
    assert!(error.hint.unwrap().contains("GET"));
}

#[test]
fn redirect_status_codes() {
    rule_error(
        "[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}]",
        "spec.rules[0].filters[0].requestRedirect.statusCode",
        "not a redirect status",
    );
    let config = valid(&with_backends(&http_route(
        "[{filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com}}]}]",
    )));
    assert!(
        matches!(&config.http_routes[0].rules[0].filters[0], Filter::RequestRedirect(r) if r.status_code == 301)
    );
}

#[test]
fn replace_prefix_match_needs_prefix_matches() {
    let rewrite = "{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}";
    rule_error(&format!("[{{matches: [{{path: {{type: Exact, value: /v1}}}}], filters: [{rewrite}], backendRefs: [{{name: monolith}}]}}]"), "spec.rules[0].filters[0].urlRewrite.path.type", "PathPrefix");
    let config = valid(&with_backends(&http_route(&format!("[{{matches: [{{path: {{value: /v1}}}}], filters: [{rewrite}], backendRefs: [{{name: monolith}}]}}]"))));
    let Filter::UrlRewrite(rewrite) = &config.http_routes[0].rules[0].filters[0] else {
        panic!("not a rewrite")
    };
    assert_eq!(
        rewrite.path,
        Some(PathModifier::ReplacePrefixMatch("/v2".to_owned()))
    );
}

#[test]
fn filter_settings_must_match_type() {
    rule_error(
        "[{filters: [{type: URLRewrite}], backendRefs: [{name: monolith}]}]",
        "spec.rules[0].filters[0].urlRewrite",
        "needs `urlRewrite`",
    );
    rule_error("[{filters: [{type: URLRewrite, urlRewrite: {hostname: a}, requestMirror: {backendRef: {name: monolith}}}], backendRefs: [{name: monolith}]}]", "spec.rules[0].filters[0].requestMirror", "does not belong");
}

#[test]
fn mirror_backend_and_percent() {
    rule_error("[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}], backendRefs: [{name: monolith}]}]", "spec.rules[0].filters[0].requestMirror.backendRef.name", "does not exist");
    rule_error("[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: payments-v2}, percent: 150}}], backendRefs: [{name: monolith}]}]", "spec.rules[0].filters[0].requestMirror.percent", "not a percentage");
    let config = valid(&with_backends(&http_route("[{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: payments-v2}, percent: 5}}], backendRefs: [{name: monolith}]}]")));
    assert!(
        matches!(&config.http_routes[0].rules[0].filters[0], Filter::RequestMirror(m) if m.percent == 5.0 && m.backend.name == "payments-v2")
    );
}

#[test]
fn tcp_route_splits_between_tcp_backends() {
    let text = format!(
        "{}---\n{}",
        with_backends("apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: cache-v2, namespace: shop}\nspec: {protocol: tcp, listen: 127.0.0.1:16380, endpoints: [{address: 127.0.0.1:6380}]}\n"),
        tcp_route("{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: cache, weight: 9}, {name: cache-v2, weight: 1}]}]}")
    );
    let config = valid(&text);
    assert_eq!(config.tcp_routes[0].parents[0].name, "cache");
    assert_eq!(config.tcp_routes[0].backend_refs.len(), 2);
}

#[test]
fn tcp_route_needs_tcp_backends() {
    let text = with_backends(&tcp_route(
        "{parentRefs: [{name: monolith}], rules: [{backendRefs: [{name: cache}]}]}",
    ));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.parentRefs[0].name",
        "not a tcp Backend",
    );
    let text = with_backends(&tcp_route(
        "{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: monolith}]}]}",
    ));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.rules[0].backendRefs[0].name",
        "not a tcp Backend",
    );
    let text = with_backends(&tcp_route(
        "{parentRefs: [{name: redis}], rules: [{backendRefs: [{name: cache}]}]}",
    ));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.parentRefs[0].name",
        "does not exist",
    );
}

#[test]
fn tcp_route_has_exactly_one_rule() {
    let text = with_backends(&tcp_route("{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: cache}]}, {backendRefs: [{name: cache}]}]}"));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.rules",
        "exactly one rule, found 2",
    );
    let text = with_backends(&tcp_route(
        "{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: cache, weight: 0}]}]}",
    ));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.rules[0].backendRefs",
        "add up to 0",
    );
}
