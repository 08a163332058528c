//! Validation tests: one per class of error, each checking file, line, document and field.

mod backends;
mod loading;
mod policies;
mod routes;
mod shadows;

use crate::error::Diagnostic;
use crate::load::parse_str;
use crate::model::Config;

/// Three Backends in namespace `shop`: `monolith` and `payments-v2` (http), `cache` (tcp).
const BACKENDS: &str = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: monolith, namespace: shop}
spec: {endpoints: [{address: 127.0.0.1:9001}]}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: payments-v2, namespace: shop}
spec: {protocol: http2, endpoints: [{address: 127.0.0.1:9002}]}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: cache, namespace: shop}
spec: {protocol: tcp, listen: 127.0.0.1:16379, endpoints: [{address: 127.0.0.1:6379}]}
";

/// Line where a document appended to [`BACKENDS`] (after a `---` line) starts.
const APPENDED_LINE: usize = 16;

/// `BACKENDS` plus `extra` as one more document of `test.yaml`.
fn with_backends(extra: &str) -> String {
    format!("{BACKENDS}---\n{extra}")
}

fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse_str("test.yaml", text).map_err(|errors| errors.errors)
}

fn valid(text: &str) -> Config {
    parse(text).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("expected a valid config, got:\n{}", lines.join("\n"))
    })
}

/// Asserts that `text` has exactly one problem, in `document` at `field`, whose message
/// contains `message`; every diagnostic must carry a hint and a line.
#[track_caller]
fn single_error(text: &str, document: &str, field: &str, message: &str) -> Diagnostic {
    let errors = match parse(text) {
        Ok(_) => panic!("expected an error at {field}, but the config is valid"),
        Err(errors) => errors,
    };
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        lines.join("\n")
    );
    let error = errors.into_iter().next().unwrap();
    assert_eq!(error.file, "test.yaml", "{error}");
    assert_eq!(error.document.as_deref(), Some(document), "{error}");
    assert_eq!(error.field, field, "{error}");
    assert!(
        error.message.contains(message),
        "message should contain {message:?}: {error}"
    );
    assert!(
        error.hint.as_deref().is_some_and(|h| !h.is_empty()),
        "no hint: {error}"
    );
    assert!(error.line.is_some(), "no line: {error}");
    error
}

/// An HTTPRoute in `shop` attached to service `shop`, with the given rules (YAML flow list).
fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: web, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: shop}}]\n  rules: {rules}\n"
    )
}

const ROUTE: &str = "HTTPRoute shop/web";

#[test]
fn backends_alone_are_valid() {
    let config = valid(BACKENDS);
    assert_eq!(config.backends.len(), 3);
    assert_eq!(config.documents.len(), 3);
}

#[test]
fn errors_are_collected_not_stopped_at_first() {
    let text = with_backends(&http_route(
        "[{backendRefs: [{name: nope}], timeouts: {request: 1.5s}}, \
          {matches: [{method: get}], backendRefs: [{name: monolith}]}]",
    ));
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].backendRefs[0].name",
            "spec.rules[0].timeouts.request",
            "spec.rules[1].matches[0].method"
        ],
        "{errors:?}"
    );
    assert!(errors
        .iter()
        .all(|e| e.line == Some(APPENDED_LINE) && e.document.as_deref() == Some(ROUTE)));
}

#[test]
fn errors_in_several_documents_and_files_are_all_reported() {
    let text = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: a}
spec: {endpoints: [{address: nowhere}]}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: b}
spec: {protocol: tcp, endpoints: []}
";
    let errors = parse(text).unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        (errors[0].line, errors[0].document.as_deref()),
        (Some(1), Some("Backend default/a"))
    );
    assert_eq!(
        (errors[1].line, errors[1].document.as_deref()),
        (Some(6), Some("Backend default/b"))
    );
}

#[test]
fn display_names_file_line_document_and_field() {
    let text = with_backends(&http_route("[{backendRefs: [{name: payments-v3}]}]"));
    let error = single_error(
        &text,
        ROUTE,
        "spec.rules[0].backendRefs[0].name",
        "does not exist",
    );
    assert_eq!(
        error.to_string(),
        "error: test.yaml:16: HTTPRoute shop/web: spec.rules[0].backendRefs[0].name: \
         Backend \"shop/payments-v3\" does not exist\n  \
         help: did you mean payments-v2? (or define a Backend named payments-v3)"
    );
}

#[test]
fn the_first_hundred_errors_are_listed_and_the_rest_counted() {
    // 10 routes, each with 16 backendRefs to missing Backends: 160 problems.
    let routes: Vec<String> = (0..10)
        .map(|r| {
            let refs: Vec<String> = (0..16).map(|i| format!("{{name: gone-{r}-{i}}}")).collect();
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r{r}, namespace: shop}}\n\
                 spec:\n  parentRefs: [{{name: shop}}]\n  rules: [{{backendRefs: [{}]}}]\n",
                refs.join(", ")
            )
        })
        .collect();
    let text = format!("{BACKENDS}---\n{}", routes.join("---\n"));
    let errors = parse_str("test.yaml", &text).unwrap_err();
    assert_eq!(errors.errors.len(), crate::MAX_LISTED_ERRORS);
    assert_eq!(errors.not_listed, 60);
    // In reading order: the last listed is the 100th, route 6's fifth backendRef.
    assert_eq!(
        errors.errors[99].field, "spec.rules[0].backendRefs[3].name",
        "{}",
        errors.errors[99]
    );
    assert_eq!(
        errors.errors[99].document.as_deref(),
        Some("HTTPRoute shop/r6")
    );
    let text = errors.to_string();
    assert_eq!(
        text.lines().count(),
        2 * 101,
        "each error and its help line"
    );
    assert!(
        text.contains("error: 60 more problems not listed (only the first 100 are)"),
        "{text}"
    );
}
