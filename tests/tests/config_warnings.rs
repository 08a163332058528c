//! Config warnings end to end: a route match that an identical, higher-ranked one shadows is
//! accepted, and said so by `ficusctl apply` (stderr, exit 0), the sidecar's log and its
//! `/config`, in push and in file mode; the traffic goes where the warning says.

use std::net::SocketAddr;
use std::time::Duration;

use ficus_tests::client;
use ficus_tests::control::ControlPlane;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::until;
use ficus_tests::upstream::Upstream;

/// Backends `a` and `b`; route `shop/a` sends `GET /pay` to `a`; route `shop/b` repeats that
/// match (as `/pay/`, the same prefix) next to `/other` in its first rule, and alone in its
/// second rule, both towards `b`.
fn shadowed_config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{a}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: b, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{b}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: a, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n\
         \x20 - matches: [{{path: {{value: /pay}}, method: GET}}]\n\
         \x20   backendRefs: [{{name: a}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: b, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n\
         \x20 - matches: [{{path: {{value: /pay/}}, method: GET}}, {{path: {{value: /other}}}}]\n\
         \x20   backendRefs: [{{name: b}}]\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /pay}}, method: GET}}]\n\
         \x20   backendRefs: [{{name: b}}]\n"
    )
}

/// The two warnings of [`shadowed_config`] as they must start after `warning: <file>:<line>: `.
const MATCH_WARNING: &str = "HTTPRoute shop/b: spec.rules[0].matches[0]: never selected for \
                             service shop/svc: HTTPRoute shop/a spec.rules[0].matches[0] has \
                             the same conditions and wins";
const RULE_WARNING: &str = "HTTPRoute shop/b: spec.rules[1]: this rule can never be selected \
                            for service shop/svc: matches[0] is the same as HTTPRoute shop/a \
                            spec.rules[0].matches[0]";

/// The `warnings` of the sidecar's `/config`, as text.
async fn config_warnings(sidecar: &Sidecar) -> Vec<String> {
    sidecar.config().await["warnings"]
        .as_array()
        .expect("/config has a warnings array")
        .iter()
        .map(|w| w.as_str().expect("a warning is a string").to_owned())
        .collect()
}

/// Asserts that `warnings` are exactly the two of [`shadowed_config`], blaming `file`.
#[track_caller]
fn assert_the_two_warnings(warnings: &[String], file: &str) {
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    for (warning, expected) in warnings.iter().zip([MATCH_WARNING, RULE_WARNING]) {
        let rest = warning
            .strip_prefix(&format!("warning: {file}:"))
            .and_then(|rest| rest.split_once(": "))
            .map(|(_line, rest)| rest);
        assert!(
            rest.is_some_and(|rest| rest.starts_with(expected)),
            "expected `warning: {file}:<line>: {expected}…`, got:\n{warning}"
        );
        assert!(warning.contains("\n  help: "), "{warning}");
    }
}

/// `GET /pay` goes to `a`, the winner the warnings name; `/other` still goes to `b`.
async fn assert_the_winner_serves(sidecar: &Sidecar) {
    let pay = client::get(sidecar.outbound, "svc", "/pay").await.unwrap();
    assert_eq!(pay.text(), "a");
    let other = client::get(sidecar.outbound, "svc", "/other")
        .await
        .unwrap();
    assert_eq!(other.text(), "b");
}

#[tokio::test]
async fn ficusctl_apply_prints_warnings_and_the_pushed_sidecar_shows_them() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    let sidecar = Sidecar::start_push(
        &control.grpc_url(),
        SidecarOptions {
            node_id: Some("web-1".to_owned()),
            ..SidecarOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, shadowed_config(a.addr, b.addr)).unwrap();
    let file = file.display().to_string();

    let applied = control.ctl(&["apply", "-f", &file]).await;
    assert_eq!(
        applied.code, 0,
        "warnings do not fail an apply:\n{}{}",
        applied.stdout, applied.stderr
    );
    assert!(
        applied.stdout.starts_with("applied version 1"),
        "{}",
        applied.stdout
    );
    let printed: Vec<String> = applied
        .stderr
        .split("warning: ")
        .skip(1)
        .map(|w| format!("warning: {}", w.trim_end()))
        .collect();
    assert_the_two_warnings(&printed, &file);

    // The sidecar validates what it is pushed itself: its warnings name the snapshot.
    sidecar.wait_ready(Duration::from_secs(20)).await;
    until("warnings in /config", Duration::from_secs(20), || async {
        !config_warnings(&sidecar).await.is_empty()
    })
    .await;
    let warnings = config_warnings(&sidecar).await;
    let source = sidecar.config().await["source"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(source, "control:v1");
    assert_the_two_warnings(&warnings, &source);
    sidecar
        .wait_log("config warning", Duration::from_secs(10))
        .await;
    assert_the_winner_serves(&sidecar).await;

    // A diff (the dry run) prints them too, and applying a fix clears them.
    let diff = control.ctl(&["diff", "-f", &file]).await;
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert_eq!(
        diff.stderr.matches("warning: ").count(),
        2,
        "{}",
        diff.stderr
    );
    let fixed = shadowed_config(a.addr, b.addr).replace("/pay/", "/pay/v2");
    let fixed = fixed.replace("PathPrefix, value: /pay}", "PathPrefix, value: /pay/v3}");
    std::fs::write(&file, fixed).unwrap();
    let applied = control.ctl(&["apply", "-f", &file]).await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(!applied.stderr.contains("warning"), "{}", applied.stderr);
    until(
        "no warnings in /config",
        Duration::from_secs(20),
        || async { config_warnings(&sidecar).await.is_empty() },
    )
    .await;
}

#[tokio::test]
async fn a_file_mode_sidecar_shows_its_warnings() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&shadowed_config(a.addr, b.addr)).await;
    let warnings = config_warnings(&sidecar).await;
    assert_the_two_warnings(&warnings, &sidecar.config_path.display().to_string());
    sidecar
        .wait_log("config warning", Duration::from_secs(10))
        .await;
    assert_the_winner_serves(&sidecar).await;
    // The other fields are as before.
    let config = sidecar.config().await;
    assert_eq!(config["version"], 1);
    assert!(config["last_error"].is_null());
    assert_eq!(config["documents"].as_array().map(Vec::len), Some(4));
}
