//! HTTPRoute and TCPRoute.

use std::time::Duration;

use super::*;
use crate::model::{Filter, PathMatch, PathModifier, RouteRule, StringMatch};

#[track_caller]
fn rule_error(rules: &str, field: &str, message: &str) -> Diagnostic {
    single_error(&with_backends(&http_route(rules)), ROUTE, field, message)
}

/// One rule sending to `monolith`, with `fields` (YAML flow mapping entries) added.
fn to_monolith(fields: &str) -> String {
    format!("[{{{fields}, backendRefs: [{{name: monolith}}]}}]")
}

/// The first rule of a valid route with `rules`.
fn first_rule(rules: &str) -> RouteRule {
    let mut config = valid(&with_backends(&http_route(rules)));
    config.http_routes.remove(0).rules.remove(0)
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
    first_rule("[{backendRefs: [{kind: Backend, group: ficus.dev, name: monolith}]}]");
    rule_error(
        "[{backendRefs: [{kind: Pod, name: monolith}]}]",
        "spec.rules[0].backendRefs[0].kind",
        "\"Pod\"",
    );
}

#[test]
fn http_routes_need_http_backends() {
    let field = "spec.rules[0].backendRefs[0].name";
    rule_error(
        "[{backendRefs: [{name: cache}]}]",
        field,
        "is a tcp Backend",
    );
    let route = http_route("[{backendRefs: [{name: monolith}]}]");
    let text = with_backends(&route.replace("name: shop}", "name: cache}"));
    single_error(&text, ROUTE, "spec.parentRefs[0].name", "is a tcp Backend");
}

#[test]
fn weights_must_not_sum_to_zero() {
    let zero = "[{backendRefs: [{name: monolith, weight: 0}, {name: payments-v2, weight: 0}]}]";
    rule_error(zero, "spec.rules[0].backendRefs", "add up to 0");
    let field = "spec.rules[0].backendRefs[0].weight";
    rule_error(
        "[{backendRefs: [{name: monolith, weight: 1000001}]}]",
        field,
        "above",
    );
    rule_error(
        "[{backendRefs: [{name: monolith, weight: -1}]}]",
        field,
        "invalid value",
    );
}

#[test]
fn rule_needs_backends_or_redirect() {
    let field = "spec.rules[0].backendRefs";
    rule_error(
        "[{matches: [{path: {value: /old}}]}]",
        field,
        "needs backendRefs",
    );
    let rule = first_rule(
        "[{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302}}]}]",
    );
    assert!(rule.backend_refs.is_empty());
    let Filter::RequestRedirect(redirect) = &rule.filters[0] else {
        panic!("not a redirect")
    };
    assert_eq!(
        (redirect.status_code, redirect.scheme.as_deref()),
        (302, Some("https"))
    );
}

#[test]
fn route_needs_parents_and_rules() {
    let text = with_backends(&http_route("[]").replace("[{name: shop}]", "[]"));
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.parentRefs", "spec.rules"]);
    rule_error("[]", "spec.rules", "at least one rule");
}

#[test]
fn durations_are_checked() {
    let field = "spec.rules[0].timeouts.backendRequest";
    rule_error(
        &to_monolith("timeouts: {backendRequest: 500}"),
        field,
        "expected a string",
    );
    let slow = to_monolith("timeouts: {request: 1s, backendRequest: 2s}");
    rule_error(&slow, field, "longer than request");
    let field = "spec.rules[0].retry.backoff";
    rule_error(
        &to_monolith("retry: {backoff: 10us}"),
        field,
        "unknown unit",
    );
    // Past the Gateway API's five digits per number: once accepted, such a timeout
    // overflowed the deadline computed from it.
    rule_error(
        &to_monolith("timeouts: {request: 9300000000000000000s}"),
        "spec.rules[0].timeouts.request",
        "more than 5 digits",
    );
}

/// `0s` turns a timeout off (Gateway API), which is not the same as leaving it out: left out,
/// the Mesh default may apply; off, nothing does.
#[test]
fn zero_timeouts_are_off_not_unset() {
    use crate::model::RouteTimeout::{After, Off, Unset};
    let mesh_default = Duration::from_secs(15);
    let timeouts = |fields: &str| first_rule(&to_monolith(fields)).timeouts;

    let t = timeouts("timeouts: {request: 0s, backendRequest: 1m30s}");
    assert_eq!(
        (t.request, t.backend_request),
        (Off, After(Duration::from_secs(90)))
    );
    assert_eq!(t.total(), None);
    assert_eq!(t.per_try(mesh_default), Some(Duration::from_secs(90)));

    let t = timeouts("timeouts: {request: 0s}");
    assert_eq!((t.request, t.backend_request), (Off, Unset));
    assert_eq!((t.total(), t.per_try(mesh_default)), (None, None));

    let t = timeouts("timeouts: {request: 0ms, backendRequest: 0s}");
    assert_eq!((t.request, t.backend_request), (Off, Off));
    assert_eq!((t.total(), t.per_try(mesh_default)), (None, None));

    // A try without a limit fits in any request: the request's own bound stops it.
    let t = timeouts("timeouts: {request: 10s, backendRequest: 0s}");
    assert_eq!(
        (t.request, t.backend_request),
        (After(Duration::from_secs(10)), Off)
    );
    assert_eq!(t.total(), Some(Duration::from_secs(10)));
    assert_eq!(t.per_try(mesh_default), None);

    let t = timeouts("timeouts: {backendRequest: 0s}");
    assert_eq!((t.request, t.backend_request), (Unset, Off));
    assert_eq!((t.total(), t.per_try(mesh_default)), (None, None));
}

/// Each try waits `backendRequest`, else `request` (even when that is longer than the Mesh's
/// `upstreamResponseTimeout`), and the Mesh default only when the rule sets neither.
#[test]
fn the_mesh_default_applies_only_when_a_rule_sets_no_timeout() {
    let mesh_default = Duration::from_secs(15);
    let timeouts = |fields: &str| first_rule(&to_monolith(fields)).timeouts;
    let t = timeouts("timeouts: {request: 30s}");
    assert_eq!(t.per_try(mesh_default), Some(Duration::from_secs(30)));
    assert_eq!(t.total(), Some(Duration::from_secs(30)));
    let t = timeouts("timeouts: {request: 60s, backendRequest: 20s}");
    assert_eq!(t.per_try(mesh_default), Some(Duration::from_secs(20)));
    let t = timeouts("timeouts: {backendRequest: 40s}");
    assert_eq!(t.per_try(mesh_default), Some(Duration::from_secs(40)));
    assert_eq!(t.total(), None);
    let t = first_rule("[{backendRefs: [{name: monolith}]}]").timeouts;
    assert_eq!(t.per_try(mesh_default), Some(mesh_default));
    assert_eq!(t.total(), None);
}

#[test]
fn retry_limits() {
    let field = "spec.rules[0].retry.attempts";
    rule_error(&to_monolith("retry: {attempts: 11}"), field, "more than 10");
    let field = "spec.rules[0].retry.codes[1]";
    rule_error(
        &to_monolith("retry: {codes: [503, 600]}"),
        field,
        "not an HTTP status",
    );
    let retry = first_rule(&to_monolith("retry: {}")).retry.unwrap();
    let defaults = (2, vec![502, 503], Duration::from_millis(25));
    assert_eq!((retry.attempts, retry.codes, retry.backoff), defaults);
    assert_eq!(retry.grpc_codes, vec![14], "unavailable by default");
    assert!(
        retry.non_idempotent_methods.is_empty(),
        "no POST replays by default"
    );
}

#[test]
fn retry_may_allow_non_idempotent_methods() {
    let rule = first_rule(&to_monolith("retry: {nonIdempotentMethods: [POST, PATCH]}"));
    assert_eq!(
        rule.retry.unwrap().non_idempotent_methods,
        ["POST", "PATCH"]
    );
    rule_error(
        &to_monolith("retry: {nonIdempotentMethods: [POST, GET]}"),
        "spec.rules[0].retry.nonIdempotentMethods[1]",
        "idempotent and already retried",
    );
    rule_error(
        &to_monolith("retry: {nonIdempotentMethods: [post]}"),
        "spec.rules[0].retry.nonIdempotentMethods[0]",
        "not a valid HTTP method",
    );
    rule_error(
        &to_monolith("retry: {nonIdempotentMethods: [CONNECT]}"),
        "spec.rules[0].retry.nonIdempotentMethods[0]",
        "cannot be replayed",
    );
}

#[test]
fn retry_grpc_codes_by_name() {
    let retry = first_rule(&to_monolith(
        "retry: {grpcCodes: [unavailable, RESOURCE_EXHAUSTED, DeadlineExceeded]}",
    ))
    .retry
    .unwrap();
    assert_eq!(retry.grpc_codes, vec![14, 8, 4]);
    let none = first_rule(&to_monolith("retry: {grpcCodes: []}"))
        .retry
        .unwrap();
    assert!(none.grpc_codes.is_empty());
    let error = rule_error(
        &to_monolith("retry: {grpcCodes: [unavailable, unavailible]}"),
        "spec.rules[0].retry.grpcCodes[1]",
        "not a gRPC status code",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean unavailable?"));
    rule_error(
        &to_monolith("retry: {grpcCodes: [ok]}"),
        "spec.rules[0].retry.grpcCodes[0]",
        "not a failure",
    );
}

#[test]
fn regexes_must_compile_and_are_anchored() {
    let cases = [
        (
            "path: {type: RegularExpression, value: \"/a(\"}",
            "path.value",
        ),
        (
            "headers: [{type: RegularExpression, name: x, value: \"a)|(b\"}]",
            "headers[0].value",
        ),
        (
            "queryParams: [{type: RegularExpression, name: q, value: \"a{1000}{1000}\"}]",
            "queryParams[0].value",
        ),
    ];
    for (condition, field) in cases {
        let rules = to_monolith(&format!("matches: [{{{condition}}}]"));
        let field = format!("spec.rules[0].matches[0].{field}");
        rule_error(&rules, &field, "invalid regular expression");
    }
    let rule = first_rule(&to_monolith(
        "matches: [{path: {type: RegularExpression, value: \"/v[0-9]+\"}}]",
    ));
    let PathMatch::RegularExpression(regex) = &rule.matches[0].path else {
        panic!("not a regex")
    };
    assert!(regex.is_match("/v12"));
    assert!(!regex.is_match("/v12/x"));
    assert!(!regex.is_match("x/v1"));
}

#[test]
fn paths_start_with_slash_and_prefixes_are_normalized() {
    let field = "spec.rules[0].matches[0].path.value";
    let relative = to_monolith("matches: [{path: {type: Exact, value: api}}]");
    rule_error(&relative, field, "not a valid path");
    let rule = first_rule(&to_monolith(
        "matches: [{path: {value: /api/}}, {path: {value: /}}, {}]",
    ));
    let prefixes: Vec<_> = rule
        .matches
        .iter()
        .map(|m| match &m.path {
            PathMatch::Prefix(prefix) => prefix.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(prefixes, ["/api", "/", "/"]);
    let rule = first_rule("[{backendRefs: [{name: monolith}]}]");
    assert!(
        matches!(&rule.matches[..], [m] if matches!(&m.path, PathMatch::Prefix(p) if p == "/"))
    );
}

/// Requests are matched with unreserved escapes decoded and ambiguous paths refused
/// (`crate::path`): a path value spelled otherwise could never match, so it is an error.
#[test]
fn path_values_are_spelled_as_requests_are() {
    let field = "spec.rules[0].matches[0].path.value";
    for (value, message) in [
        ("/%61dmin", "write \"/admin\""),
        ("/a//b", "can never match"),
        ("/a/../b", "can never match"),
        ("/public/..;/admin", "can never match"),
        ("/a%2Fb", "can never match"),
        // Requests are matched without `;` parameters.
        ("/a%20b;x", "write \"/a%20b\""),
        ("/admin%3Bx/y", "write \"/admin/y\""),
        ("/%%36%31", "not spelled as requests are matched"),
        ("/caf%c3%a9", "write \"/caf%C3%A9\""),
    ] {
        let rule = to_monolith(&format!(
            "matches: [{{path: {{type: Exact, value: \"{value}\"}}}}]"
        ));
        let error = rule_error(&rule, field, "");
        let text = format!("{} {}", error.message, error.hint.unwrap_or_default());
        assert!(text.contains(message), "{value}: {text}");
    }
    let rule = first_rule(&to_monolith(
        "matches: [{path: {type: Exact, value: \"/a%20b\"}}]",
    ));
    assert!(matches!(&rule.matches[0].path, PathMatch::Exact(p) if p == "/a%20b"));
}

#[test]
fn header_names_are_tokens_and_lowercased() {
    let field = "spec.rules[0].matches[0].headers[0].name";
    let spaced = to_monolith("matches: [{headers: [{name: \"x y\", value: a}]}]");
    rule_error(&spaced, field, "not a valid header name");
    let rule = first_rule(&to_monolith(
        "matches: [{headers: [{name: X-Canary, value: \"yes\"}]}]",
    ));
    let header = &rule.matches[0].headers[0];
    assert_eq!(header.name, "x-canary");
    assert!(matches!(&header.value, StringMatch::Exact(v) if v == "yes"));
}

#[test]
fn header_values_cannot_split_headers() {
    let set = "set: [{name: x-a, value: \"a\\r\\nb\"}]";
    let filter =
        format!("filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{{set}}}}}]");
    let field = "spec.rules[0].filters[0].requestHeaderModifier.set[0].value";
    rule_error(&to_monolith(&filter), field, "line break");

    let modifier = "{add: [{name: x-a, value: \"a\\0\"}], remove: [\"bad name\"]}";
    let filter =
        format!("filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {modifier}}}]");
    let errors = parse(&with_backends(&http_route(&to_monolith(&filter)))).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].message.contains("NUL"));
    assert_eq!(
        errors[1].field,
        "spec.rules[0].filters[0].responseHeaderModifier.remove[0]"
    );
}

#[test]
fn filters_cannot_set_framing_hop_by_hop_or_mesh_headers() {
    for (kind, name) in [
        ("ResponseHeaderModifier", "content-length"),
        ("ResponseHeaderModifier", "Transfer-Encoding"),
        ("RequestHeaderModifier", "connection"),
        ("RequestHeaderModifier", "host"),
        ("RequestHeaderModifier", "x-ficus-peer-identity"),
        ("RequestHeaderModifier", "x-forwarded-client-cert"),
    ] {
        let key = if kind.starts_with("Request") {
            "requestHeaderModifier"
        } else {
            "responseHeaderModifier"
        };
        let filter = format!(
            "filters: [{{type: {kind}, {key}: {{add: [{{name: {name}, value: \"1\"}}]}}}}]"
        );
        let field = format!("spec.rules[0].filters[0].{key}.add[0].name");
        rule_error(&to_monolith(&filter), &field, "cannot be set by a filter");
    }
    // Removing them is harmless, and other headers are the filter's to set.
    let filter = "filters: [{type: ResponseHeaderModifier, responseHeaderModifier: \
                  {set: [{name: x-served-by, value: ficus}], remove: [content-length]}}]";
    first_rule(&to_monolith(filter));
}

#[test]
fn methods_are_uppercase_tokens() {
    let field = "spec.rules[0].matches[0].method";
    let error = rule_error(
        &to_monolith("matches: [{method: get}]"),
        field,
        "not a valid HTTP method",
    );
    assert!(error.hint.unwrap().contains("GET"));
}

#[test]
fn redirect_status_codes() {
    let redirect = "[{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}]";
    let field = "spec.rules[0].filters[0].requestRedirect.statusCode";
    rule_error(redirect, field, "not a redirect status");
    let rule = first_rule(
        "[{filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com}}]}]",
    );
    assert!(matches!(&rule.filters[0], Filter::RequestRedirect(r) if r.status_code == 302));
}

#[test]
fn replace_prefix_match_needs_prefix_matches() {
    let rewrite = "filters: [{type: URLRewrite, \
                   urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]";
    let exact = to_monolith(&format!(
        "matches: [{{path: {{type: Exact, value: /v1}}}}], {rewrite}"
    ));
    rule_error(
        &exact,
        "spec.rules[0].filters[0].urlRewrite.path.type",
        "PathPrefix",
    );
    let rule = first_rule(&to_monolith(&format!(
        "matches: [{{path: {{value: /v1}}}}], {rewrite}"
    )));
    let Filter::UrlRewrite(rewrite) = &rule.filters[0] else {
        panic!("not a rewrite")
    };
    assert_eq!(
        rewrite.path,
        Some(PathModifier::ReplacePrefixMatch("/v2".to_owned()))
    );
}

/// The Gateway API's table: an empty `replacePrefixMatch` takes the prefix away.
#[test]
fn replace_prefix_match_may_be_empty() {
    let rule = first_rule(&to_monolith(
        "matches: [{path: {type: PathPrefix, value: /foo}}], filters: [{type: URLRewrite, \
         urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: \"\"}}}]",
    ));
    assert!(matches!(&rule.filters[0], Filter::UrlRewrite(r)
        if matches!(&r.path, Some(PathModifier::ReplacePrefixMatch(p)) if p.is_empty())));
    let full = "filters: [{type: URLRewrite, \
                urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: \"\"}}}]";
    rule_error(
        &to_monolith(full),
        "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
        "not a valid path",
    );
    // A written path may carry `;` parameters: it is sent, not matched.
    let rule = first_rule(&to_monolith(
        "filters: [{type: URLRewrite, \
         urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: \"/v2;jsessionid=1\"}}}]",
    ));
    assert!(matches!(&rule.filters[0], Filter::UrlRewrite(r)
        if matches!(&r.path, Some(PathModifier::ReplaceFullPath(p)) if p == "/v2;jsessionid=1")));
}

#[test]
fn filter_settings_must_match_type() {
    let field = "spec.rules[0].filters[0].urlRewrite";
    rule_error(
        &to_monolith("filters: [{type: URLRewrite}]"),
        field,
        "needs `urlRewrite`",
    );
    let mixed = "filters: [{type: URLRewrite, urlRewrite: {hostname: a}, \
                 requestMirror: {backendRef: {name: monolith}}}]";
    let field = "spec.rules[0].filters[0].requestMirror";
    rule_error(&to_monolith(mixed), field, "does not belong");
}

#[test]
fn filters_do_not_repeat_or_conflict() {
    let twice = "filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, \
                 {type: URLRewrite, urlRewrite: {hostname: b}}]";
    rule_error(
        &to_monolith(twice),
        "spec.rules[0].filters[1].type",
        "appears twice",
    );
    let both = "filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, \
                {type: RequestRedirect, requestRedirect: {hostname: b}}]";
    rule_error(
        &to_monolith(both),
        "spec.rules[0].filters",
        "both redirect and rewrite",
    );
}

#[test]
fn mirror_backend_and_percent() {
    let mirror = |spec: &str| {
        to_monolith(&format!(
            "filters: [{{type: RequestMirror, requestMirror: {spec}}}]"
        ))
    };
    let field = "spec.rules[0].filters[0].requestMirror.backendRef.name";
    rule_error(
        &mirror("{backendRef: {name: shadow}}"),
        field,
        "does not exist",
    );
    let field = "spec.rules[0].filters[0].requestMirror.percent";
    let too_much = mirror("{backendRef: {name: payments-v2}, percent: 150}");
    rule_error(&too_much, field, "not a percentage");
    let rule = first_rule(&mirror("{backendRef: {name: payments-v2}, percent: 5}"));
    let Filter::RequestMirror(copy) = &rule.filters[0] else {
        panic!("not a mirror")
    };
    assert_eq!(
        (copy.percent, copy.backend.name.as_str()),
        (5.0, "payments-v2")
    );
}

#[test]
fn tcp_route_splits_between_tcp_backends() {
    let cache_v2 = "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                    metadata: {name: cache-v2, namespace: shop}\n\
                    spec: {protocol: tcp, listen: 127.0.0.1:16380, \
                    endpoints: [{address: 127.0.0.1:6380}]}\n";
    let route = tcp_route(
        "{parentRefs: [{name: cache}], \
          rules: [{backendRefs: [{name: cache, weight: 9}, {name: cache-v2, weight: 1}]}]}",
    );
    let config = valid(&format!("{}---\n{route}", with_backends(cache_v2)));
    assert_eq!(config.tcp_routes[0].parents[0].name, "cache");
    assert_eq!(config.tcp_routes[0].backend_refs.len(), 2);
}

#[test]
fn tcp_route_needs_tcp_backends() {
    let cases = [
        (
            "monolith",
            "cache",
            "spec.parentRefs[0].name",
            "not a tcp Backend",
        ),
        (
            "cache",
            "monolith",
            "spec.rules[0].backendRefs[0].name",
            "not a tcp Backend",
        ),
        (
            "redis",
            "cache",
            "spec.parentRefs[0].name",
            "does not exist",
        ),
    ];
    for (parent, backend, field, message) in cases {
        let spec = format!(
            "{{parentRefs: [{{name: {parent}}}], rules: [{{backendRefs: [{{name: {backend}}}]}}]}}"
        );
        single_error(
            &with_backends(&tcp_route(&spec)),
            "TCPRoute shop/cache",
            field,
            message,
        );
    }
}

#[test]
fn tcp_route_has_exactly_one_rule() {
    let two = "{parentRefs: [{name: cache}], \
               rules: [{backendRefs: [{name: cache}]}, {backendRefs: [{name: cache}]}]}";
    let text = with_backends(&tcp_route(two));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.rules",
        "exactly one rule, found 2",
    );
    let zero = "{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: cache, weight: 0}]}]}";
    let text = with_backends(&tcp_route(zero));
    single_error(
        &text,
        "TCPRoute shop/cache",
        "spec.rules[0].backendRefs",
        "add up to 0",
    );
}

#[test]
fn one_tcp_route_per_tcp_backend() {
    let spec = "{parentRefs: [{name: cache}], rules: [{backendRefs: [{name: cache}]}]}";
    let second = tcp_route(spec).replace("name: cache, namespace", "name: cache2, namespace");
    let text = format!("{}---\n{second}", with_backends(&tcp_route(spec)));
    single_error(
        &text,
        "TCPRoute shop/cache2",
        "spec.parentRefs[0].name",
        "already the parent",
    );
    // Another namespace's route serves only its own callers (GAMMA): it may stand beside the
    // owner's, once per namespace.
    let consumer = |name: &str| {
        tcp_route(
            "{parentRefs: [{name: cache, namespace: shop}], \
                   rules: [{backendRefs: [{name: cache, namespace: shop}]}]}",
        )
        .replace(
            "name: cache, namespace: shop}\nspec",
            &format!("name: {name}, namespace: web}}\nspec"),
        )
    };
    let text = format!("{}---\n{}", with_backends(&tcp_route(spec)), consumer("a"));
    assert_eq!(valid(&text).tcp_routes.len(), 2);
    let text = format!("{}---\n{}", text, consumer("b"));
    single_error(
        &text,
        "TCPRoute web/b",
        "spec.parentRefs[0].name",
        "already the parent",
    );
}

#[test]
fn the_regexes_of_a_config_are_capped_in_total() {
    let config = |pattern: &dyn Fn(usize) -> String, count: usize| {
        let rules: Vec<String> = (0..count)
            .map(|i| {
                to_monolith(&format!(
                    "matches: [{{headers: [{{type: RegularExpression, name: x, value: \"{}\"}}]}}]",
                    pattern(i)
                ))
            })
            .map(|rule| rule[1..rule.len() - 1].to_owned())
            .collect();
        // 16 rules per route, as many routes as that takes.
        let routes: Vec<String> = rules
            .chunks(16)
            .enumerate()
            .map(|(i, rules)| {
                http_route(&format!("[{}]", rules.join(", ")))
                    .replace("name: web,", &format!("name: web{i},"))
            })
            .collect();
        format!("{BACKENDS}---\n{}", routes.join("---\n"))
    };
    // Each compiles within the cap of one regex, and is charged the largest tier (Unicode
    // word classes compile large): 40 of them do not fit in the config's total.
    let large = |_| r"\\w{5}".to_owned();
    let errors = crate::load::parse_str("big.yaml", &config(&large, 40)).unwrap_err();
    let over: Vec<_> = errors
        .errors
        .iter()
        .filter(|e| {
            e.message
                .contains("regular expressions take more than 8 MiB")
        })
        .collect();
    assert!(!over.is_empty(), "{errors:?}");
    assert!(over.len() < 40, "the first ones fit: {}", over.len());
    assert!(over.len() <= 8, "32 of them fit: {}", over.len());
    // Ordinary patterns are charged little: 4,000 of them fit.
    let ordinary = |i| format!("/api/v[0-9]+/users/{i}/[^/]+");
    crate::load::parse_str("many.yaml", &config(&ordinary, 4000)).expect("4,000 ordinary ones fit");
}

/// A route's `creationTimestamp` (as Kubernetes writes it) is kept to break precedence ties;
/// anything else there is ignored, as before.
#[test]
fn creation_timestamps_are_kept_when_kubernetes_wrote_them() {
    let created = |value: &str| {
        let text = with_backends(&http_route("[{backendRefs: [{name: monolith}]}]")).replace(
            "metadata: {name: web, namespace: shop}",
            &format!("metadata: {{name: web, namespace: shop, creationTimestamp: {value}}}"),
        );
        valid(&text).http_routes.remove(0).created
    };
    assert_eq!(
        created("\"2026-01-05T10:00:00Z\"").as_deref(),
        Some("2026-01-05T10:00:00Z")
    );
    for ignored in [
        "null",
        "yesterday",
        "\"2026-01-05T10:00:00+01:00\"",
        "\"2026-1-5T10:00:00Z\"",
    ] {
        assert_eq!(created(ignored), None, "{ignored}");
    }
}

/// `n` items made by `item` from their index, as a YAML flow list.
fn list(n: usize, item: impl Fn(usize) -> String) -> String {
    format!("[{}]", (0..n).map(item).collect::<Vec<_>>().join(", "))
}

#[test]
fn route_lists_are_capped_as_gateway_api_caps_them() {
    let path = |i: usize| format!("{{path: {{value: /p{i}}}}}");
    let header = |i: usize| format!("{{name: x-h{i}, value: v}}");
    let query = |i: usize| format!("{{name: q{i}, value: v}}");
    let mirror =
        |_| "{type: RequestMirror, requestMirror: {backendRef: {name: monolith}}}".to_owned();
    let modifier = |list_name: &str, n: usize| {
        let items = if list_name == "remove" {
            list(n, |i| format!("x-r{i}"))
        } else {
            list(n, header)
        };
        format!(
            "filters: [{{type: RequestHeaderModifier, \
             requestHeaderModifier: {{{list_name}: {items}}}}}]"
        )
    };
    let one_match = |field: &str, n: usize, item: &dyn Fn(usize) -> String| {
        to_monolith(&format!("matches: [{{{field}: {}}}]", list(n, item)))
    };
    let rules_of = |n: usize, matches_each: usize| {
        list(n, |r| {
            to_monolith(&format!(
                "matches: {}",
                list(matches_each, |i| path(r * 100 + i))
            ))
            .trim_matches(['[', ']'])
            .to_owned()
        })
    };
    // (rules at the cap, rules one over it, the field named, the cap)
    let cases: Vec<(String, String, &str, usize)> = vec![
        (rules_of(16, 1), rules_of(17, 1), "spec.rules", 16),
        (
            to_monolith(&format!("matches: {}", list(64, path))),
            to_monolith(&format!("matches: {}", list(65, path))),
            "spec.rules[0].matches",
            64,
        ),
        (rules_of(2, 64), rules_of(3, 43), "spec.rules", 128),
        (
            one_match("headers", 16, &header),
            one_match("headers", 17, &header),
            "spec.rules[0].matches[0].headers",
            16,
        ),
        (
            one_match("queryParams", 16, &query),
            one_match("queryParams", 17, &query),
            "spec.rules[0].matches[0].queryParams",
            16,
        ),
        (
            to_monolith(&format!("filters: {}", list(16, mirror))),
            to_monolith(&format!("filters: {}", list(17, mirror))),
            "spec.rules[0].filters",
            16,
        ),
        (
            format!(
                "[{{backendRefs: {}}}]",
                list(16, |_| "{name: monolith}".into())
            ),
            format!(
                "[{{backendRefs: {}}}]",
                list(17, |_| "{name: monolith}".into())
            ),
            "spec.rules[0].backendRefs",
            16,
        ),
    ];
    let lists = ["set", "add", "remove"].map(|name| {
        (
            to_monolith(&modifier(name, 16)),
            to_monolith(&modifier(name, 17)),
            name,
        )
    });
    for (at_cap, over, field, cap) in cases {
        first_rule(&at_cap);
        let error = rule_error(&over, field, &format!("at most {cap} are allowed"));
        assert!(error.hint.unwrap().contains("Gateway API"));
    }
    for (at_cap, over, name) in lists {
        first_rule(&at_cap);
        let field = format!("spec.rules[0].filters[0].requestHeaderModifier.{name}");
        rule_error(&over, &field, "17 entries; at most 16 are allowed");
    }

    // parentRefs, of an HTTPRoute and of a TCPRoute.
    let parents = |n: usize| list(n, |i| format!("{{name: s{i}}}"));
    let route = |n: usize| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: web, namespace: shop}}\n\
             spec:\n  parentRefs: {}\n  rules: {}\n",
            parents(n),
            to_monolith("matches: [{path: {value: /}}]")
        )
    };
    valid(&with_backends(&route(32)));
    single_error(
        &with_backends(&route(33)),
        ROUTE,
        "spec.parentRefs",
        "33 entries; at most 32 are allowed",
    );
    let tcp = tcp_route(&format!(
        "{{parentRefs: {}, rules: [{{backendRefs: [{{name: cache}}]}}]}}",
        list(33, |_| "{name: cache}".into())
    ));
    single_error(
        &with_backends(&tcp),
        "TCPRoute shop/cache",
        "spec.parentRefs",
        "at most 32 are allowed",
    );
}

#[test]
fn the_route_table_entries_of_a_config_are_capped() {
    // Each route: 32 services × 128 matches = 4,096 table entries. 48 routes make 196,608,
    // within the 200,000 a config may make; the 49th takes it over, and is the one named.
    let route = |r: usize| {
        let parents = list(32, |i| format!("{{name: s{i}}}"));
        let rules = list(2, |k| {
            let matches = list(64, |i| format!("{{path: {{value: /r{r}/{k}/{i}}}}}"));
            format!("{{matches: {matches}, backendRefs: [{{name: monolith}}]}}")
        });
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: r{r}, namespace: shop}}\n\
             spec:\n  parentRefs: {parents}\n  rules: {rules}\n"
        )
    };
    let config = |n: usize| {
        let routes: Vec<String> = (0..n).map(route).collect();
        format!("{BACKENDS}---\n{}", routes.join("---\n"))
    };
    let within = valid(&config(48));
    assert_eq!(within.http_routes.len(), 48);
    assert!(within.warnings.is_empty(), "{:?}", within.warnings);
    let error = single_error(
        &config(49),
        "HTTPRoute shop/r48",
        "spec",
        "this route's 4096 route table entries",
    );
    assert!(
        error.message.contains("make 196608 of the 200000"),
        "{error}"
    );
    // Every route that does not fit is named, not only the first.
    let errors = parse(&config(51)).unwrap_err();
    let named: Vec<_> = errors.iter().map(|e| e.document.as_deref()).collect();
    assert_eq!(
        named,
        [
            Some("HTTPRoute shop/r48"),
            Some("HTTPRoute shop/r49"),
            Some("HTTPRoute shop/r50")
        ]
    );
}
