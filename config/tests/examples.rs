//! The shipped examples form one valid config, and loading works across files.

use std::path::Path;
use std::time::Duration;

use ficus_config::{load_path, parse_sources, PathMatch, Protocol, ResourceKey, Source};

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

#[test]
fn examples_directory_validates() {
    let config = load_path(examples()).unwrap_or_else(|errors| panic!("{errors}"));
    let key = |name: &str| ResourceKey::new("shop", name);
    assert_eq!(config.backends.len(), 3);
    assert_eq!(config.backends[&key("cache")].protocol, Protocol::Tcp);
    assert_eq!(
        config.backends[&key("cache")].listen,
        Some("127.0.0.1:16379".parse().unwrap())
    );
    assert_eq!(config.mesh.trust_domain, "cluster.local");

    let route = &config.http_routes[0];
    assert_eq!(route.parents, vec![key("shop")]);
    let payments = &route.rules[0];
    assert!(matches!(&payments.matches[0].path, PathMatch::Prefix(p) if p == "/api/payments"));
    let weights: Vec<_> = payments
        .backend_refs
        .iter()
        .map(|r| (r.backend.name.as_str(), r.weight))
        .collect();
    assert_eq!(weights, vec![("monolith", 90), ("payments-v2", 10)]);
    assert_eq!(payments.timeouts.total(), Some(Duration::from_secs(2)));
    let retry = payments.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes.as_slice(), retry.backoff),
        (2, &[502, 503][..], Duration::from_millis(25))
    );

    let policy = &config.traffic_policies[&key("payments-v2")];
    let rate_limit = policy.rate_limit.unwrap();
    assert_eq!(
        (rate_limit.requests, rate_limit.per),
        (100, Duration::from_secs(60))
    );
    assert_eq!(config.authorization_policies.len(), 1);

    // One JSON document per YAML document, in file-name then document order.
    let documents = config.document_values();
    let kinds: Vec<_> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Backend",
            "Backend",
            "Backend",
            "Mesh",
            "TrafficPolicy",
            "AuthorizationPolicy",
            "HTTPRoute"
        ]
    );
    assert_eq!(documents[3]["metadata"]["namespace"], "default");
}

#[test]
fn every_example_file_is_loadable_alone_or_fails_only_on_references() {
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(errors) = load_path(&path) {
                for error in &errors.errors {
                    assert!(
                        error.message.contains("does not exist"),
                        "{}: {error}",
                        path.display()
                    );
                }
            }
        }
    }
}

#[test]
fn references_resolve_across_sources() {
    let backends = Source {
        name: "backends.yaml".to_owned(),
        text:
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: api, namespace: web}\n\
               spec: {endpoints: [{address: 127.0.0.1:8080}]}\n"
                .to_owned(),
    };
    let routes = Source {
        name: "routes.yaml".to_owned(),
        text: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n\
               spec:\n  parentRefs: [{name: api}]\n\
               \x20 rules: [{backendRefs: [{name: api, namespace: web}]}]\n"
            .to_owned(),
    };
    let config = parse_sources(&[routes.clone(), backends]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.http_routes[0].rules[0].backend_refs[0].backend,
        ResourceKey::new("web", "api")
    );
    assert_eq!(
        config.http_routes[0].parents,
        vec![ResourceKey::new("default", "api")]
    );

    let errors = parse_sources(&[routes]).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert_eq!(errors.errors[0].file, "routes.yaml");
    assert_eq!(errors.errors[0].field, "spec.rules[0].backendRefs[0].name");
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    fn example_text() -> String {
        ["mesh.yaml", "backends.yaml", "routes.yaml", "policies.yaml"]
            .iter()
            .map(|file| std::fs::read_to_string(examples().join(file)).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Cutting, replacing or inserting text anywhere in a valid config gives a config or
        /// diagnostics, never a panic.
        #[test]
        fn edited_examples(at in 0usize..10_000, cut in 0usize..40, insert in "[ -~\n]{0,8}") {
            let text: Vec<char> = example_text().chars().collect();
            let at = at % text.len();
            let end = (at + cut).min(text.len());
            let mut edited: String = text[..at].iter().collect();
            edited.push_str(&insert);
            edited.extend(&text[end..]);
            if let Err(errors) = ficus_config::parse_str("edited.yaml", &edited) {
                prop_assert!(!errors.errors.is_empty());
                for error in &errors.errors {
                    prop_assert!(error.hint.is_some(), "{}", error);
                }
            }
        }

        #[test]
        fn arbitrary_text(text in "\\PC{0,200}") {
            let _ = ficus_config::parse_str("random.yaml", &text);
        }
    }
}
