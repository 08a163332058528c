//! Apply, delete, rollback and diff against a real store in a temp dir.

use std::sync::Arc;

use super::*;
use crate::store::Store;

fn backend(name: &str, port: u16) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"127.0.0.1:{port}\"}}]}}\n"
    )
}

fn route(target: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: shop, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: shop}}]\n  rules:\n  - backendRefs: [{{name: {target}}}]\n"
    )
}

fn source(name: &str, text: &str) -> Vec<Source> {
    vec![Source {
        name: name.to_owned(),
        text: text.to_owned(),
    }]
}

fn state() -> (tempfile::TempDir, Arc<ControlState>) {
    let dir = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(dir.path()).unwrap();
    (dir, ControlState::new(store, current))
}

fn names(state: &ControlState) -> Vec<String> {
    let current = state.current();
    current
        .documents
        .iter()
        .filter_map(DocumentKey::of)
        .map(|k| k.to_string())
        .collect()
}

#[tokio::test]
async fn apply_creates_replaces_and_keeps_the_rest() {
    let (_dir, state) = state();
    let first = format!(
        "{}---\n{}---\n{}",
        backend("a", 9001),
        backend("b", 9002),
        route("a")
    );
    let outcome = apply(&state, source("all.yaml", &first), Some("ana".into()))
        .await
        .unwrap();
    assert_eq!((outcome.version, outcome.committed), (1, true));
    assert_eq!(
        outcome.summary,
        "apply: 3 created: Backend shop/a, Backend shop/b, HTTPRoute shop/shop"
    );

    // Only the route: it is replaced, the Backends stay.
    let outcome = apply(&state, source("route.yaml", &route("b")), None)
        .await
        .unwrap();
    assert_eq!(outcome.version, 2);
    assert_eq!(outcome.summary, "apply: 1 changed: HTTPRoute shop/shop");
    assert_eq!(
        names(&state),
        ["Backend shop/a", "Backend shop/b", "HTTPRoute shop/shop"]
    );
    assert_eq!(state.store.current().unwrap().version, 2);
    assert_eq!(state.metrics.config_version.get(), 2);

    // The same again changes nothing and makes no version.
    let outcome = apply(&state, source("route.yaml", &route("b")), None)
        .await
        .unwrap();
    assert_eq!((outcome.version, outcome.committed), (2, false));
    assert_eq!(outcome.changes[0].change, Change::Unchanged);
    assert_eq!(state.store.history().unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_apply_leaves_current_unchanged_and_names_the_users_file() {
    let (_dir, state) = state();
    apply(
        &state,
        source(
            "base.yaml",
            &format!("{}---\n{}", backend("a", 9001), route("a")),
        ),
        None,
    )
    .await
    .unwrap();
    let before = state.current();

    let error = apply(&state, source("route.yaml", &route("missing")), None)
        .await
        .unwrap_err();
    let ApplyError::Invalid(errors) = error else {
        panic!("{error}")
    };
    let text = errors.to_string();
    assert!(text.contains("route.yaml"), "{text}");
    assert!(text.contains("HTTPRoute shop/shop"), "{text}");
    assert!(text.contains("spec.rules[0].backendRefs[0].name"), "{text}");

    let typo = backend("a", 9001).replace("endpoints", "endpionts");
    let error = apply(&state, source("typo.yaml", &typo), None)
        .await
        .unwrap_err();
    let text = error.to_string() + &format!("{:?}", error);
    assert!(
        text.contains("typo.yaml") && text.contains("endpionts"),
        "{text}"
    );

    let error = apply(&state, Vec::new(), None).await.unwrap_err();
    assert!(
        format!("{error:?}").contains("no documents to apply"),
        "{error:?}"
    );
    let error = apply(&state, source("bad.yaml", "kind: [unclosed"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApplyError::Invalid(_)));
    assert_eq!(state.current(), before);
    assert_eq!(state.store.history().unwrap().len(), 1);
}

#[tokio::test]
async fn delete_validates_what_remains() {
    let (_dir, state) = state();
    let text = format!(
        "{}---\n{}---\n{}",
        backend("a", 9001),
        backend("b", 9002),
        route("a")
    );
    apply(&state, source("all.yaml", &text), None)
        .await
        .unwrap();
    let key = |kind: &str, name: &str| DocumentKey {
        kind: kind.into(),
        namespace: "shop".into(),
        name: name.into(),
    };

    let error = delete(&state, key("Backend", "a"), None).await.unwrap_err();
    let ApplyError::Invalid(errors) = error else {
        panic!("{error}")
    };
    assert!(
        errors.to_string().contains("current config (version 1)"),
        "{errors}"
    );

    let outcome = delete(&state, key("Backend", "b"), None).await.unwrap();
    assert_eq!(
        (outcome.version, outcome.summary.as_str()),
        (2, "delete: 1 deleted: Backend shop/b")
    );
    let error = delete(&state, key("Backend", "b"), None).await.unwrap_err();
    assert!(matches!(error, ApplyError::NotFound(_)));
}

#[tokio::test]
async fn rollback_round_trip() {
    let (_dir, state) = state();
    apply(&state, source("a.yaml", &backend("a", 9001)), None)
        .await
        .unwrap();
    apply(&state, source("a.yaml", &backend("a", 9002)), None)
        .await
        .unwrap();
    let version_one = state.store.get(1).unwrap().unwrap();

    let outcome = rollback(&state, None, Some("ana".into())).await.unwrap();
    assert_eq!(outcome.version, 3);
    assert_eq!(
        outcome.summary,
        "rollback to version 1: 1 changed: Backend shop/a"
    );
    assert_eq!(state.current().documents, version_one.documents);

    let outcome = rollback(&state, Some(2), None).await.unwrap();
    assert_eq!(outcome.version, 4);
    assert_eq!(
        state.current().documents,
        state.store.get(2).unwrap().unwrap().documents
    );

    let outcome = rollback(&state, Some(4), None).await.unwrap();
    assert_eq!((outcome.version, outcome.committed), (4, false));
    assert!(matches!(
        rollback(&state, Some(9), None).await,
        Err(ApplyError::NoSuchVersion(9))
    ));
}

/// The migration: 10 % (v2), 50 % (v3), 100 % (v4). A plain rollback goes to 50 % (v5); a
/// second plain rollback must go further back, to 10 % (v6 = v2's documents), not forward to
/// v4's 100 %.
#[tokio::test]
async fn repeated_plain_rollbacks_walk_back_through_history() {
    let (_dir, state) = state();
    for port in [9001, 9010, 9050, 9100] {
        apply(&state, source("a.yaml", &backend("a", port)), None)
            .await
            .unwrap();
    }
    assert_eq!(state.current().version, 4);
    let documents = |version: u64| state.store.get(version).unwrap().unwrap().documents;

    let outcome = rollback(&state, None, None).await.unwrap();
    assert_eq!(outcome.version, 5);
    assert_eq!(state.current().documents, documents(3));
    assert_eq!(state.current().rolled_back_to, Some(3));

    let outcome = rollback(&state, None, None).await.unwrap();
    assert_eq!(outcome.version, 6);
    assert_eq!(
        outcome.summary,
        "rollback to version 2: 1 changed: Backend shop/a"
    );
    assert_eq!(state.current().documents, documents(2));
    assert_eq!(state.current().rolled_back_to, Some(2));
    assert_eq!(state.store.get(6).unwrap().unwrap().rolled_back_to, Some(2));

    let outcome = rollback(&state, None, None).await.unwrap();
    assert_eq!(outcome.version, 7);
    assert_eq!(state.current().documents, documents(1));
    assert!(matches!(
        rollback(&state, None, None).await,
        Err(ApplyError::NothingBefore {
            current: 7,
            rolled_back_to: 1
        })
    ));

    // An apply starts over: a plain rollback from it goes to the version before it.
    apply(&state, source("a.yaml", &backend("a", 9200)), None)
        .await
        .unwrap();
    assert_eq!(state.current().rolled_back_to, None);
    rollback(&state, None, None).await.unwrap();
    assert_eq!(state.current().rolled_back_to, Some(7));
    assert_eq!(state.current().documents, documents(1));
    // An explicit target is recorded the same way, and the next plain rollback goes before it.
    rollback(&state, Some(4), None).await.unwrap();
    assert_eq!(state.current().rolled_back_to, Some(4));
    rollback(&state, None, None).await.unwrap();
    assert_eq!(state.current().documents, documents(3));
}

#[tokio::test]
async fn rollback_needs_an_earlier_version() {
    let (_dir, state) = state();
    assert!(matches!(
        rollback(&state, None, None).await,
        Err(ApplyError::NothingToRollBack(0))
    ));
    apply(&state, source("a.yaml", &backend("a", 9001)), None)
        .await
        .unwrap();
    assert!(matches!(
        rollback(&state, None, None).await,
        Err(ApplyError::NothingToRollBack(1))
    ));
}

/// The single diagnostic of a refused write.
fn refusal(error: ApplyError) -> Diagnostic {
    let ApplyError::Invalid(errors) = error else {
        panic!("{error}")
    };
    assert_eq!(errors.errors.len(), 1, "{errors}");
    errors.errors[0].clone()
}

#[tokio::test]
async fn a_rollback_target_that_no_longer_validates_is_named() {
    let (_dir, state) = state();
    // Version 1 as an older build may have stored it: a route to a Backend that is missing.
    let invalid: Vec<serde_json::Value> = [route("gone")]
        .iter()
        .map(|text| yaml_serde::from_str(text).unwrap())
        .collect();
    state
        .store
        .commit(invalid, None, "older build".to_owned())
        .unwrap();
    apply(&state, source("a.yaml", &backend("a", 9001)), None)
        .await
        .unwrap();
    assert_eq!(state.current().version, 2);

    let diagnostic = refusal(rollback(&state, Some(1), None).await.unwrap_err());
    assert_eq!(
        diagnostic.file, "version 1 (rollback target)",
        "{diagnostic}"
    );
    assert_eq!(state.current().version, 2);
}

#[tokio::test]
async fn a_rollback_target_in_another_trust_domain_is_named() {
    let (_dir, state) = state();
    let _ = state.trust_domain.set("cluster.local".to_owned());
    let mesh = serde_json::json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"trustDomain": "elsewhere.example"}});
    state
        .store
        .commit(vec![mesh], None, "before --trust-domain changed".to_owned())
        .unwrap();
    apply(&state, source("a.yaml", &backend("a", 9001)), None)
        .await
        .unwrap();

    let diagnostic = refusal(rollback(&state, Some(1), None).await.unwrap_err());
    assert_eq!(
        diagnostic.file, "version 1 (rollback target)",
        "{diagnostic}"
    );
    assert_eq!(diagnostic.field, "spec.trustDomain");
    assert_eq!(state.current().version, 2);
}

#[tokio::test]
async fn diff_reports_without_committing() {
    let (_dir, state) = state();
    apply(
        &state,
        source(
            "base.yaml",
            &format!("{}---\n{}", backend("a", 9001), route("a")),
        ),
        None,
    )
    .await
    .unwrap();
    let text = format!("{}---\n{}", backend("a", 9009), backend("b", 9002));
    let diff = diff(&state, source("new.yaml", &text)).await.unwrap();
    assert_eq!(diff.version, 1);
    let changes: Vec<(String, Change)> = diff
        .changes
        .iter()
        .map(|c| (c.key.to_string(), c.change))
        .collect();
    assert_eq!(
        changes,
        [
            ("Backend shop/a".to_owned(), Change::Changed),
            ("Backend shop/b".to_owned(), Change::Created)
        ]
    );
    assert!(
        diff.text.contains("\n-  - address: 127.0.0.1:9001\n"),
        "{}",
        diff.text
    );
    assert!(
        diff.text.contains("\n+  - address: 127.0.0.1:9009\n"),
        "{}",
        diff.text
    );
    assert!(
        diff.text
            .contains("--- /dev/null\n+++ Backend shop/b (applied)"),
        "{}",
        diff.text
    );
    assert_eq!(state.current().version, 1);
    assert_eq!(state.store.history().unwrap().len(), 1);
}

#[tokio::test]
async fn versions_survive_reopen_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, current) = Store::open(dir.path()).unwrap();
        let state = ControlState::new(store, current);
        apply(&state, source("a.yaml", &backend("a", 9001)), None)
            .await
            .unwrap();
    }
    let (_store, current) = Store::open(dir.path()).unwrap();
    assert_eq!(current.version, 1);
    assert_eq!(current.documents[0]["metadata"]["namespace"], "shop");
}

/// A version whose push would be over the push message limit could never reach a sidecar
/// (every stream would fail on it, with no NACK): it is refused, and the current one stays.
#[tokio::test]
async fn a_config_too_large_to_push_is_refused() {
    let (_dir, state) = state();
    let note = "x".repeat(3 * 1024 * 1024 + 512 * 1024);
    let mut refused = None;
    for i in 0..6 {
        let text = format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
             metadata: {{name: b{i}, namespace: shop, annotations: {{note: \"{note}\"}}}}\n\
             spec: {{endpoints: [{{address: \"127.0.0.1:{}\"}}]}}\n",
            9000 + i
        );
        match apply(&state, source("big.yaml", &text), None).await {
            Ok(outcome) => assert!(outcome.committed),
            Err(error) => {
                refused = Some((i, error));
                break;
            }
        }
    }
    let (at, error) = refused.expect("refused before the sixth");
    assert!(
        matches!(error, ApplyError::TooLarge { size, limit } if size > limit),
        "{error}"
    );
    assert_eq!(
        at, 4,
        "four of 3.5 MiB fit in the limit, the fifth does not"
    );
    assert_eq!(state.current().version, 4);
}

#[tokio::test]
async fn warnings_come_with_the_answer_and_never_refuse() {
    let (_dir, state) = state();
    let shadowing = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  parentRefs: [{{name: shop}}]\n  rules:\n  - backendRefs: [{{name: a}}]\n"
        )
    };
    let first = format!("{}---\n{}", backend("a", 9001), shadowing("first"));
    let outcome = apply(&state, source("all.yaml", &first), None)
        .await
        .unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);

    // A second catch-all route on the same service: committed, with a warning naming it.
    let outcome = apply(&state, source("second.yaml", &shadowing("second")), None)
        .await
        .unwrap();
    assert_eq!((outcome.version, outcome.committed), (2, true));
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert!(
        outcome.warnings[0].starts_with(
            "warning: second.yaml:1: HTTPRoute shop/second: spec.rules[0]: this rule can never \
             be selected for service shop/shop"
        ),
        "{}",
        outcome.warnings[0]
    );
    assert!(outcome.warnings[0].contains("HTTPRoute shop/first spec.rules[0]"));

    // A diff and an unchanged apply say so too; deleting the shadowing route clears it.
    let diff = super::diff(&state, source("second.yaml", &shadowing("second")))
        .await
        .unwrap();
    assert_eq!(diff.warnings, outcome.warnings);
    let again = apply(&state, source("second.yaml", &shadowing("second")), None)
        .await
        .unwrap();
    assert!(!again.committed);
    assert_eq!(again.warnings.len(), 1);
    let key = DocumentKey::of(&serde_json::json!({
        "kind": "HTTPRoute", "metadata": {"name": "first", "namespace": "shop"}
    }))
    .unwrap();
    let deleted = delete(&state, key, None).await.unwrap();
    assert!(deleted.warnings.is_empty(), "{:?}", deleted.warnings);
}
