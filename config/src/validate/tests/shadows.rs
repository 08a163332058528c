//! Warnings: HTTPRoute matches that an identical, higher-ranked match shadows.

use super::*;
use crate::error::Warning;

/// An HTTPRoute `namespace/name` attached to `parent` (a service name, optionally
/// `namespace/name`), with `rules` (YAML flow list) and, when given, a creationTimestamp.
fn route(name: &str, parent: &str, created: Option<&str>, rules: &str) -> String {
    let (namespace, name) = name.split_once('/').unwrap_or(("shop", name));
    let parent = match parent.split_once('/') {
        Some((ns, service)) => format!("{{name: {service}, namespace: {ns}}}"),
        None => format!("{{name: {parent}}}"),
    };
    let created = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {namespace}{created}}}\n\
         spec:\n  parentRefs: [{parent}]\n  rules: {rules}\n"
    )
}

/// The warnings of a valid config made of the Backends and `routes`.
fn warnings(routes: &[String]) -> Vec<Warning> {
    let mut text = BACKENDS.to_owned();
    for route in routes {
        text.push_str("---\n");
        text.push_str(route);
    }
    valid(&text).warnings
}

/// An undated route `name` on `parent` with one rule of `matches` (YAML flow list).
fn one_rule(name: &str, parent: &str, matches: &str) -> String {
    route(name, parent, None, &format!("[{}]", rule(matches)))
}

/// A rule sending `matches` (YAML flow list) to monolith.
fn rule(matches: &str) -> String {
    format!("{{matches: {matches}, backendRefs: [{{name: monolith, namespace: shop}}]}}")
}

#[test]
fn the_loser_of_an_identical_match_is_warned_and_names_the_winner() {
    let get_pay = "{path: {type: Exact, value: /pay}, method: GET}";
    let found = warnings(&[
        one_rule("a", "shop", &format!("[{get_pay}]")),
        route(
            "b",
            "shop",
            None,
            &format!(
                "[{}]",
                rule(&format!("[{get_pay}, {{path: {{value: /other}}}}]"))
            ),
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    let warning = &found[0].diagnostic;
    assert_eq!(warning.document.as_deref(), Some("HTTPRoute shop/b"));
    assert_eq!(warning.field, "spec.rules[0].matches[0]");
    assert!(warning.line.is_some());
    assert!(
        warning.message.contains("service shop/shop")
            && warning
                .message
                .contains("HTTPRoute shop/a spec.rules[0].matches[0]")
            && warning.message.contains("namespace/name"),
        "{}",
        found[0]
    );
    assert!(
        found[0]
            .to_string()
            .starts_with("warning: test.yaml:23: HTTPRoute shop/b: spec.rules[0].matches[0]: "),
        "{}",
        found[0]
    );

    // The older route wins whatever the names: now `a` loses.
    let found = warnings(&[
        one_rule("a", "shop", &format!("[{get_pay}, {{}}]")),
        route(
            "b",
            "shop",
            Some("2026-01-01T00:00:00Z"),
            &format!("[{}]", rule(&format!("[{get_pay}]"))),
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].diagnostic.document.as_deref(),
        Some("HTTPRoute shop/a")
    );
    assert!(found[0]
        .diagnostic
        .message
        .contains("HTTPRoute shop/b spec.rules[0].matches[0]"));
}

#[test]
fn a_rule_whose_every_match_is_shadowed_can_never_be_selected() {
    let found = warnings(&[route(
        "a",
        "shop",
        None,
        &format!(
            "[{}, {}]",
            rule("[{path: {value: /api/}}, {headers: [{name: x-v, value: \"2\"}]}]"),
            // `/api/` and `/api` are one prefix; header names are case-insensitive.
            rule("[{headers: [{name: X-V, value: \"2\"}]}, {path: {value: /api}}]"),
        ),
    )]);
    assert_eq!(found.len(), 1, "{found:?}");
    let warning = &found[0].diagnostic;
    assert_eq!(warning.field, "spec.rules[1]");
    assert!(
        warning
            .message
            .starts_with("this rule can never be selected for service shop/shop")
            && warning
                .message
                .contains("matches[0] is the same as HTTPRoute shop/a spec.rules[0].matches[1]")
            && warning
                .message
                .contains("matches[1] is the same as HTTPRoute shop/a spec.rules[0].matches[0]")
            && warning.message.contains("earlier rule"),
        "{}",
        found[0]
    );

    // Two catch-all rules (no matches) on one service: the second is never selected.
    let catch_all = "[{backendRefs: [{name: monolith}]}]";
    let found = warnings(&[
        route("a", "shop", None, catch_all),
        route("b", "shop", None, catch_all),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].diagnostic.field, "spec.rules[0]");
    assert!(
        found[0].diagnostic.message.contains("no matches")
            && found[0]
                .diagnostic
                .message
                .contains("HTTPRoute shop/a spec.rules[0]"),
        "{}",
        found[0]
    );
}

#[test]
fn different_header_sets_do_not_shadow_but_reordered_ones_do() {
    let h1 = "{name: x-a, value: \"1\"}";
    let h2 = "{name: x-b, value: \"2\"}";
    let found = warnings(&[
        one_rule("a", "shop", &format!("[{{headers: [{h1}, {h2}]}}]")),
        one_rule("b", "shop", &format!("[{{headers: [{h1}]}}]")),
        one_rule(
            "c",
            "shop",
            "[{headers: [{name: x-a, value: \"1\", type: RegularExpression}]}]",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
    let found = warnings(&[
        one_rule("a", "shop", &format!("[{{headers: [{h1}, {h2}]}}]")),
        one_rule("b", "shop", &format!("[{{headers: [{h2}, {h1}]}}]")),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    // Query parameters and methods count too.
    let found = warnings(&[
        one_rule("a", "shop", "[{queryParams: [{name: v, value: \"1\"}]}]"),
        one_rule("b", "shop", "[{queryParams: [{name: v, value: \"2\"}]}]"),
        one_rule("c", "shop", "[{method: GET}]"),
        one_rule("d", "shop", "[{method: POST}]"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn the_same_match_on_different_services_does_not_shadow() {
    let rules = format!("[{}]", rule("[{path: {value: /api}}]"));
    let found = warnings(&[
        route("a", "shop", None, &rules),
        route("b", "payments", None, &rules),
    ]);
    assert!(found.is_empty(), "{found:?}");
    // A consumer route (another namespace) replaces the producer's routes for its own
    // callers: the two never meet in one table.
    let found = warnings(&[
        route("a", "shop", None, &rules),
        route("web/b", "shop/shop", None, &rules),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

/// Only identical conditions are compared: a `RegularExpression` `/api` (anchored: the same
/// requests as `Exact /api`, ranked after it) is never selected, yet gets no warning (a limit
/// the README states); Exact and PathPrefix of one value, and `/api` vs `/api/` as Exact paths,
/// really do select different requests.
#[test]
fn only_identical_paths_are_compared() {
    let found = warnings(&[
        one_rule("a", "shop", "[{path: {type: Exact, value: /api}}]"),
        one_rule("b", "shop", "[{path: {type: PathPrefix, value: /api}}]"),
        one_rule(
            "c",
            "shop",
            "[{path: {type: RegularExpression, value: /api}}]",
        ),
        one_rule("d", "shop", "[{path: {type: Exact, value: /api/}}]"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_route_attached_to_two_services_is_warned_per_service() {
    let rules = format!("[{}]", rule("[{path: {value: /api}}]"));
    let two_parents = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: z, namespace: shop}\n\
         spec:\n  parentRefs: [{name: shop}, {name: payments}, {name: shop}]\n  rules: RULES\n"
        .replace("RULES", &rules);
    let found = warnings(&[
        route("a", "shop", None, &rules),
        two_parents,
        route("b", "payments", None, &rules),
    ]);
    let messages: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("HTTPRoute shop/z: spec.rules[0]: this rule can never be selected for service shop/payments"));
    assert!(messages[1].contains(
        "HTTPRoute shop/z: spec.rules[0]: this rule can never be selected for service shop/shop"
    ));
}

#[test]
fn warnings_are_capped_and_the_rest_counted() {
    // Three routes, each with 50 copies of one match and a match of its own (a rule takes at
    // most 64): the first copy in `a` wins, and 49 + 50 + 50 copies are shadowed.
    let routes: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let mut matches = vec!["{path: {value: /x}}".to_owned(); 50];
            matches.push(format!("{{path: {{value: /{name}}}}}"));
            one_rule(name, "shop", &format!("[{}]", matches.join(", ")))
        })
        .collect();
    let found = warnings(&routes);
    assert_eq!(found.len(), 101, "100 warnings and one counting the rest");
    let text = format!("{BACKENDS}---\n{}", routes.join("---\n"));
    assert_eq!(valid(&text).warning_count, 149);
    let last = &found[100].diagnostic;
    assert!(
        last.message.starts_with("49 more warnings"),
        "{}",
        last.message
    );
    assert_eq!(
        (last.document.as_deref(), last.field.as_str()),
        (Some("HTTPRoute shop/c"), "spec.rules[0].matches[1]"),
        "located at the first left out"
    );
}

#[test]
fn a_rule_level_warning_lists_at_most_ten_matches() {
    // Rule 1 repeats rule 0's match 30 times: every one of its matches is shadowed.
    let matches = vec!["{path: {value: /x}}"; 30].join(", ");
    let rules = format!(
        "[{}, {}]",
        rule("[{path: {value: /x}}]"),
        rule(&format!("[{matches}]"))
    );
    let found = warnings(&[route("a", "shop", None, &rules)]);
    let rule_level: Vec<_> = found
        .iter()
        .filter(|w| w.diagnostic.field == "spec.rules[1]")
        .collect();
    assert_eq!(rule_level.len(), 1, "{found:?}");
    let message = &rule_level[0].diagnostic.message;
    assert_eq!(message.matches("is the same as").count(), 10, "{message}");
    assert!(message.ends_with("and 20 more"), "{message}");
}
