//! Documents that do not parse: YAML syntax, unknown kinds and fields, empty and missing files.

use super::*;
use crate::load::{load_path, parse_sources, Source};

#[test]
fn unknown_field_names_its_path_and_suggests_a_spelling() {
    let text = with_backends(&http_route(
        "[{backendRefs: [{name: monolith, weigth: 5}]}]",
    ));
    let error = single_error(
        &text,
        ROUTE,
        "spec.rules[0].backendRefs[0].weigth",
        "unknown field `weigth`",
    );
    assert_eq!(error.hint.as_deref(), Some("did you mean `weight`?"));
}

#[test]
fn unknown_top_level_field() {
    let text = with_backends(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: x}\n\
         spec: {endpoints: [{address: 127.0.0.1:1}]}\nspecs: {}\n",
    );
    single_error(&text, "Backend default/x", "specs", "unknown field `specs`");
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let text = with_backends(
        "apiVersion: ficus.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\n",
    );
    let error = single_error(
        &text,
        "document 4",
        "kind",
        "unknown kind \"VirtualService\"",
    );
    assert!(error
        .hint
        .unwrap()
        .contains("Mesh, Backend, HTTPRoute, TCPRoute, TrafficPolicy, AuthorizationPolicy"));
    let text = with_backends(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HttpRoute\nmetadata: {name: x}\n",
    );
    let error = single_error(&text, "document 4", "kind", "unknown kind");
    assert!(error.hint.unwrap().contains("did you mean HTTPRoute"));
}

#[test]
fn wrong_api_version_for_kind() {
    let text = with_backends(&http_route("[]").replace(
        "gateway.networking.k8s.io/v1",
        "gateway.networking.k8s.io/v1beta1",
    ));
    single_error(
        &text,
        ROUTE,
        "apiVersion",
        "found \"gateway.networking.k8s.io/v1beta1\"",
    );
}

#[test]
fn references_to_a_broken_document_are_not_reported_twice() {
    let broken = "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                  metadata: {name: db, namespace: shop}\nspec: {endpoint: []}\n";
    let text = format!(
        "{}---\n{}",
        with_backends(broken),
        http_route("[{backendRefs: [{name: db}]}]")
    );
    single_error(&text, "Backend shop/db", "spec.endpoint", "unknown field");
}

#[test]
fn yaml_syntax_error_has_its_line() {
    let text = format!("{BACKENDS}---\nkind: Backend\nmetadata: {{name: [x}}\n");
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, Some(17));
    assert_eq!(errors[0].document.as_deref(), Some("document 4"));
    assert!(errors[0].message.starts_with("invalid YAML"));
}

#[test]
fn kubernetes_fields_are_tolerated() {
    let text = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata:
  name: x
  labels: {app: x}
  annotations: {note: hi}
  uid: 0b5c
  resourceVersion: \"42\"
  generation: 3
  creationTimestamp: null
spec: {endpoints: [{address: 127.0.0.1:1}]}
status: {conditions: []}
";
    valid(text);
}

#[test]
fn documents_are_json_with_namespace_filled_in() {
    let config = valid(
        "# leading comment\n---\n---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
         metadata: {name: x}\nspec: {endpoints: [{address: 127.0.0.1:1}]}\n",
    );
    assert_eq!(config.documents.len(), 1);
    // Text with sorted keys, no spaces: what `/config` and the control plane show.
    assert!(
        config.documents[0]
            .get()
            .starts_with(r#"{"apiVersion":"ficus.dev/v1alpha1","kind":"Backend","metadata""#),
        "{}",
        config.documents[0]
    );
    let documents = config.document_values();
    assert_eq!(documents[0]["metadata"]["namespace"], "default");
    assert_eq!(
        documents[0]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:1"
    );
}

#[test]
fn empty_file_is_an_error() {
    for text in ["", "\n# only a comment\n", "---\n---\n"] {
        let errors = parse(text).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "test.yaml");
        assert!(errors[0].message.contains("no documents"), "{}", errors[0]);
    }
}

#[test]
fn non_mapping_document_is_an_error() {
    let errors = parse("- a\n- b\n").unwrap_err();
    assert!(
        errors[0].message.contains("must be a mapping"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].document.as_deref(), Some("document 1"));
}

#[test]
fn missing_path_is_an_error() {
    let path = std::path::Path::new("/nonexistent/ficus/config.yaml");
    let errors = load_path(path).unwrap_err().errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "/nonexistent/ficus/config.yaml");
    assert!(errors[0].message.starts_with("cannot read"));
}

#[test]
fn directory_without_yaml_is_an_error() {
    let dir = std::env::temp_dir().join(format!("ficus-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "not config").unwrap();
    let errors = load_path(&dir).unwrap_err().errors;
    assert!(errors[0].message.contains("no *.yaml"), "{}", errors[0]);
    std::fs::write(dir.join("b.yml"), "").unwrap();
    std::fs::write(dir.join("a.yaml"), BACKENDS).unwrap();
    let errors = load_path(&dir).unwrap_err().errors;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].file.ends_with("b.yml") && errors[0].message.contains("no documents"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_of_all_sources_are_collected() {
    let sources = [
        Source {
            name: "one.yaml".to_owned(),
            text: "kind: Nope\n".to_owned(),
        },
        Source {
            name: "two.yaml".to_owned(),
            text: String::new(),
        },
        Source {
            name: "three.yaml".to_owned(),
            text: with_backends(&http_route("[{backendRefs: [{name: gone}]}]")),
        },
    ];
    let errors = parse_sources(&sources).unwrap_err().errors;
    let files: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["one.yaml", "two.yaml", "three.yaml"]);
}

#[test]
fn anchors_and_merge_keys_are_expanded() {
    let text = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: a}
spec: &spec
  protocol: http
  endpoints: [{address: 127.0.0.1:1}]
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: b}
spec:
  <<: {protocol: http2}
  endpoints: [{address: 127.0.0.1:2}]
";
    let config = valid(text);
    let b = &config.backends[&crate::model::ResourceKey::new("default", "b")];
    assert_eq!(b.protocol, crate::model::Protocol::Http2);
    assert_eq!(config.document_values()[1]["spec"]["protocol"], "http2");
}

#[test]
fn hostile_yaml_is_refused_not_expanded() {
    let deep = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse(&deep).unwrap_err()[0]
        .message
        .contains("recursion limit"));
    let mut laughs = vec!["a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_owned()];
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs.push(format!("a{i}: &a{i} [{refs}]"));
    }
    assert!(parse(&laughs.join("\n")).unwrap_err()[0]
        .message
        .contains("repetition limit"));
}

/// A document nested deeper than JSON readers take (a runaway `status`) is refused with its
/// place, not kept as text that could not be read back; ordinary depth is fine.
#[test]
fn documents_nested_too_deep_are_refused() {
    let nested = |levels: usize| "[".repeat(levels) + &"]".repeat(levels);
    let backend = |status: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: x}}\n\
             spec: {{endpoints: [{{address: 127.0.0.1:1}}]}}\nstatus: {status}\n"
        )
    };
    // The document mapping is a level: 1 + 63 lists is the most.
    let config = valid(&backend(&nested(63)));
    assert_eq!(config.document_values().len(), 1);
    single_error(
        &backend(&nested(64)),
        "Backend default/x",
        "",
        "more than 64 deep",
    );
}
