//! The real `ficus-control` and `ficusctl`: apply/get, invalid applies, history/diff/rollback,
//! `kill -9` right after an apply (RELIABILITY.md row 7), a corrupt data dir, exit codes, the
//! API's limits, and `apply --wait` against real push-mode sidecars (ACK and NACK).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::control::{ficusctl, run_control, ControlPlane, CtlOutput};
use ficus_tests::process::{Sidecar, SidecarOptions};
use http::Request;
use http_body_util::Full;

fn backend(port: u16) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: monolith, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"127.0.0.1:{port}\"}}]\n"
    )
}

fn route() -> String {
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: shop, namespace: shop}\n\
     spec:\n  parentRefs: [{name: shop}]\n  rules:\n  - backendRefs: [{name: monolith}]\n"
        .to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[track_caller]
/// Writes the shop config (Backend on port 9001 and its route) to `dir/name`; its path.
fn shop_file(dir: &Path, name: &str) -> String {
    write(dir, name, &format!("{}---\n{}", backend(9001), route()))
}

fn ok(output: &CtlOutput) -> &str {
    assert_eq!(
        output.code, 0,
        "ficusctl failed:\n{}{}",
        output.stdout, output.stderr
    );
    &output.stdout
}

/// Data rows of `ficusctl history` (the header left out).
async fn history(control: &ControlPlane) -> Vec<String> {
    let output = control.ctl(&["history"]).await;
    ok(&output).lines().skip(1).map(str::to_owned).collect()
}

#[tokio::test]
async fn apply_then_get_shows_it() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let file = shop_file(files.path(), "shop.yaml");

    let output = control.ctl(&["apply", "-f", &file]).await;
    assert_eq!(
        ok(&output).trim(),
        "applied version 1: apply: 2 created: Backend shop/monolith, HTTPRoute shop/shop"
    );
    let output = control.ctl(&["get"]).await;
    let text = ok(&output);
    assert!(
        text.starts_with("# ficus config version 1\n---\n"),
        "{text}"
    );
    assert!(
        text.contains("kind: HTTPRoute") && text.contains("127.0.0.1:9001"),
        "{text}"
    );

    let output = control
        .ctl(&["get", "backend", "monolith", "-o", "json"])
        .await;
    let json: serde_json::Value = serde_json::from_str(ok(&output)).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["documents"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        json["documents"][0]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:9001"
    );

    // The same file again: no new version. A directory and stdin work too.
    let output = control
        .ctl(&["apply", "-f", &files.path().display().to_string()])
        .await;
    assert_eq!(ok(&output).trim(), "unchanged (version 1)");
    let output = control
        .ctl_stdin(&["apply", "-f", "-"], &backend(9002))
        .await;
    assert!(
        ok(&output).starts_with("applied version 2: apply: 1 changed"),
        "{}",
        output.stdout
    );

    let output = control.ctl(&["get", "HTTPRoute", "nope"]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(output.stderr.contains("not found"), "{}", output.stderr);
    let status = control.ctl(&["status"]).await;
    assert!(
        ok(&status).starts_with("current version: 2\nNODE ID"),
        "{}",
        status.stdout
    );
    let status = control.ctl(&["status", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(ok(&status)).unwrap();
    assert_eq!(
        (
            json["version"].as_u64(),
            json["sidecars"].as_array().map(Vec::len)
        ),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn invalid_apply_names_document_and_field_and_keeps_the_version() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let good = shop_file(files.path(), "good.yaml");
    ok(&control.ctl(&["apply", "-f", &good]).await);

    let broken = write(
        files.path(),
        "broken.yaml",
        "kind: Backend\nmetadata: [unclosed\n",
    );
    let output = control.ctl(&["apply", "-f", &broken]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stderr.contains("broken.yaml") && output.stderr.contains("invalid YAML"),
        "{}",
        output.stderr
    );

    let typo = write(
        files.path(),
        "typo.yaml",
        &backend(9003).replace("endpoints", "endpionts"),
    );
    let output = control.ctl(&["apply", "-f", &typo]).await;
    assert_eq!(output.code, 1, "{output:?}");
    let first = output.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ")
            && first.contains("typo.yaml")
            && first.contains("Backend shop/monolith")
            && first.contains("spec.endpionts"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("did you mean `endpoints`?"),
        "{}",
        output.stderr
    );

    // A reference the rest of the config cannot satisfy names the user's file, not the store.
    let dangling = route().replace("name: monolith", "name: payments");
    let dangling = write(files.path(), "route.yaml", &dangling);
    let output = control.ctl(&["apply", "-f", &dangling]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stderr.contains("route.yaml") && output.stderr.contains("backendRefs[0].name"),
        "{}",
        output.stderr
    );

    assert_eq!(history(&control).await.len(), 1);
    // The control plane counts what it refused (RELIABILITY CFG-1).
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap();
    let metrics = ficus_tests::client::Metrics::parse(&metrics.text());
    let invalid = [("reason", "invalid")];
    assert_eq!(
        metrics.sum("ficus_control_writes_refused_total", &invalid),
        3.0
    );
    // A body refused before it is parsed (not UTF-8) counts too.
    let request = Request::post("/v1/apply")
        .header("host", "control")
        .body(Full::new(Bytes::from_static(b"\xff\xfe")))
        .unwrap();
    let refused = client::send(control.http, request).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.text());
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap();
    let metrics = ficus_tests::client::Metrics::parse(&metrics.text());
    let refused = metrics.sum("ficus_control_writes_refused_total", &invalid);
    assert_eq!(refused, 4.0);
    let output = control.ctl(&["get", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(ok(&output)).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(
        json["documents"][0]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:9001"
    );
}

/// An apply with 160 mistakes is answered with the first 100 and a count of the rest, not a
/// list as long as the file's mistakes.
#[tokio::test]
async fn an_apply_with_many_problems_lists_the_first_hundred() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let routes: Vec<String> = (0..10)
        .map(|r| {
            let refs: Vec<String> = (0..16).map(|i| format!("{{name: gone-{r}-{i}}}")).collect();
            route()
                .replace("name: shop, namespace", &format!("name: r{r}, namespace"))
                .replace("{name: monolith}", &refs.join(", "))
        })
        .collect();
    let text = format!("{}---\n{}", backend(9001), routes.join("---\n"));
    let path = write(files.path(), "many.yaml", &text);
    let output = control.ctl(&["apply", "-f", &path]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert_eq!(
        output.stderr.matches("does not exist").count(),
        100,
        "{}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .contains("60 more problems not listed (only the first 100 are)"),
        "{}",
        output.stderr
    );
    assert!(history(&control).await.is_empty());
}

#[tokio::test]
async fn history_diff_and_rollback_round_trip() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let v1 = shop_file(files.path(), "v1.yaml");
    let v2 = write(files.path(), "v2.yaml", &backend(9002));
    ok(&control.ctl(&["--author", "ana", "apply", "-f", &v1]).await);

    let output = control.ctl(&["diff", "-f", &v2]).await;
    let text = ok(&output);
    assert!(
        text.contains("--- Backend shop/monolith (version 1)"),
        "{text}"
    );
    assert!(text.contains("-  - address: 127.0.0.1:9001"), "{text}");
    assert!(text.contains("+  - address: 127.0.0.1:9002"), "{text}");
    assert_eq!(
        ok(&control.ctl(&["diff", "-f", &v1]).await).trim(),
        "no changes (version 1)"
    );
    assert_eq!(history(&control).await.len(), 1, "diff stores nothing");
    // `--exit-code`: 1 for changes (the diff printed, no error line), 0 for none, and a
    // failure above 1.
    let changes = control.ctl(&["diff", "--exit-code", "-f", &v2]).await;
    assert_eq!(changes.code, 1, "{changes:?}");
    assert!(changes.stdout.contains("+  - address: 127.0.0.1:9002"));
    assert!(!changes.stderr.contains("error"), "{}", changes.stderr);
    let none = control.ctl(&["diff", "--exit-code", "-f", &v1]).await;
    assert_eq!(none.code, 0, "{none:?}");
    let broken = write(files.path(), "broken.yaml", "kind: Nonsense\n");
    let failed = control.ctl(&["diff", "--exit-code", "-f", &broken]).await;
    assert_eq!(failed.code, 4, "{failed:?}");
    assert!(failed.stderr.contains("error:"), "{}", failed.stderr);
    let plain = control.ctl(&["diff", "-f", &broken]).await;
    assert_eq!(plain.code, 1, "{plain:?}");

    ok(&control.ctl(&["apply", "-f", &v2]).await);
    let rows = history(&control).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].starts_with("2* ") && rows[0].contains("apply: 1 changed"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("1 ") && rows[1].contains(" ana "),
        "{rows:?}"
    );

    let output = control.ctl(&["rollback"]).await;
    assert_eq!(
        ok(&output).trim(),
        "rolled back: version 3: rollback to version 1: 1 changed: Backend shop/monolith"
    );
    assert!(ok(&control.ctl(&["get", "Backend"]).await).contains("127.0.0.1:9001"));
    ok(&control.ctl(&["rollback", "2"]).await);
    assert!(ok(&control.ctl(&["get", "Backend"]).await).contains("127.0.0.1:9002"));
    let output = control.ctl(&["rollback", "99"]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stderr.contains("version 99 does not exist"),
        "{}",
        output.stderr
    );

    // Deleting the Backend would leave the route dangling: refused, naming the stored config.
    let output = control.ctl(&["delete", "Backend", "monolith"]).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stderr.contains("current config (version 4)"),
        "{}",
        output.stderr
    );
    let output = control
        .ctl(&["delete", "httproute", "shop", "-n", "shop"])
        .await;
    assert_eq!(
        ok(&output).trim(),
        "deleted: version 5: delete: 1 deleted: HTTPRoute shop/shop"
    );
    let output = control.ctl(&["delete", "HTTPRoute", "shop"]).await;
    assert_eq!(output.code, 1, "{output:?}");
    let rows = history(&control).await;
    let versions: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert_eq!(versions, ["5*", "4", "3", "2", "1"]);
}

/// The migration 10 % (v2) → 50 % (v3) → 100 % (v4), then `rollback` pressed twice during the
/// incident: the second goes further back (v6 = v2's documents), never forward to 100 % again.
#[tokio::test]
async fn repeated_plain_rollbacks_walk_back_through_history() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    for port in [9000, 9010, 9050, 9100] {
        let file = write(files.path(), "monolith.yaml", &backend(port));
        ok(&control.ctl(&["apply", "-f", &file]).await);
    }
    let output = control.ctl(&["rollback"]).await;
    assert!(
        ok(&output).starts_with("rolled back: version 5: rollback to version 3:"),
        "{}",
        output.stdout
    );
    let output = control.ctl(&["rollback"]).await;
    assert!(
        ok(&output).starts_with("rolled back: version 6: rollback to version 2:"),
        "{}",
        output.stdout
    );
    let output = control.ctl(&["get", "Backend", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(ok(&output)).unwrap();
    assert_eq!(
        json["documents"][0]["spec"]["endpoints"][0]["address"], "127.0.0.1:9010",
        "v6 holds v2's documents"
    );
    assert_eq!(
        control.get_json("/v1/versions/6").await["rolled_back_to"],
        2
    );
    let four = control.get_json("/v1/versions/4").await;
    assert!(four["rolled_back_to"].is_null(), "{four}");
    let output = control.ctl(&["history"]).await;
    let text = ok(&output);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("6* ") && row.contains("rollback to version 2")),
        "{text}"
    );
    assert!(
        output
            .stderr
            .contains("a plain `ficusctl rollback` now goes to version 1"),
        "{}",
        output.stderr
    );
}

/// Kinds as users type them (`httproutes`, `backend`) name the canonical kind; anything else is
/// a usage error naming the known kinds, not an empty answer.
#[tokio::test]
async fn get_takes_plural_kinds_and_refuses_unknown_ones() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let file = shop_file(files.path(), "shop.yaml");
    ok(&control.ctl(&["apply", "-f", &file]).await);
    for kind in ["httproutes", "httproute", "HTTPRoutes", "HTTPRoute"] {
        let output = control.ctl(&["get", kind]).await;
        let text = ok(&output);
        assert!(
            text.contains("kind: HTTPRoute") && !text.contains("kind: Backend"),
            "{kind}: {text}"
        );
    }
    let output = control.ctl(&["get", "backends", "monolith"]).await;
    assert!(ok(&output).contains("127.0.0.1:9001"), "{}", output.stdout);
    for args in [
        &["get", "routes"][..],
        &["get", "frobs", "x"],
        &["delete", "httproutez", "shop"],
    ] {
        let output = control.ctl(args).await;
        assert_eq!(output.code, 2, "{args:?}: {output:?}");
        assert!(
            output.stderr.contains("unknown kind")
                && output.stderr.contains("HTTPRoute")
                && output.stderr.contains("AuthorizationPolicy"),
            "{args:?}: {}",
            output.stderr
        );
    }
    let response = client::get(control.http, "control", "/v1/config?kind=routes")
        .await
        .unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("unknown kind"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn kill_9_right_after_apply_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut control = ControlPlane::start_on(&data.path().join("data")).await;
    let files = tempfile::tempdir().unwrap();
    for round in 1..=3u16 {
        let file = write(
            files.path(),
            "shop.yaml",
            &format!("{}---\n{}", backend(9000 + round), route()),
        );
        let output = control.ctl(&["apply", "-f", &file]).await;
        assert!(
            ok(&output).starts_with(&format!("applied version {round}:")),
            "{}",
            output.stdout
        );
        control.kill_9();
        control.restart().await;

        let output = control.ctl(&["get", "-o", "json"]).await;
        let json: serde_json::Value = serde_json::from_str(ok(&output)).unwrap();
        assert_eq!(
            json["version"].as_u64(),
            Some(u64::from(round)),
            "{}",
            control.log()
        );
        let address = format!("127.0.0.1:{}", 9000 + round);
        assert_eq!(
            json["documents"][0]["spec"]["endpoints"][0]["address"],
            address.as_str()
        );
        let rows = history(&control).await;
        assert_eq!(rows.len(), usize::from(round), "{rows:?}");
        assert!(rows[0].starts_with(&format!("{round}* ")), "{rows:?}");
    }
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("ficus_control_config_version 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ficus_control_connected_sidecars 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn corrupt_or_unusable_data_dir_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("ficus.redb"), vec![0x42u8; 16 * 1024]).unwrap();
    let (http, grpc) = (
        ficus_tests::free_addr().to_string(),
        ficus_tests::free_addr().to_string(),
    );
    let data_arg = data.display().to_string();
    let args = [
        "--insecure",
        "--data",
        &data_arg,
        "--grpc",
        &grpc,
        "--http",
        &http,
    ];
    let (status, stderr) = run_control(&args).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("ficus.redb") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("ficus.redb")).unwrap(),
        vec![0x42u8; 16 * 1024],
        "left as found"
    );

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let file_arg = file.display().to_string();
    let args = [
        "--insecure",
        "--data",
        &file_arg,
        "--grpc",
        &grpc,
        "--http",
        &http,
    ];
    let (status, stderr) = run_control(&args).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("cannot use data directory"), "{stderr}");
}

/// `ficusctl validate` checks files on this machine, as a sidecar's `--config` loads them:
/// no control plane is contacted (the server flag names a port nothing listens on).
#[tokio::test]
async fn validate_checks_files_without_a_control_plane() {
    let server = "http://127.0.0.1:9";
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "backends.yaml", &backend(9001));
    write(&dir, "routes.yaml", &route());
    let output = ficusctl(server, &["validate", "-f", dir.to_str().unwrap()], None).await;
    assert_eq!(
        ok(&output),
        "valid: 2 documents (1 Backend, 1 HTTPRoute)\n",
        "{}",
        output.stderr
    );
    assert_eq!(output.stderr, "");

    // Stdin; a warning (a rule repeating another's match) goes to stderr, and it is valid.
    let shadowed = route().replace(
        "  - backendRefs: [{name: monolith}]\n",
        "  - backendRefs: [{name: monolith}]\n  - backendRefs: [{name: monolith}]\n",
    );
    let text = format!("{}---\n{shadowed}", backend(9001));
    let output = ficusctl(server, &["validate", "-f", "-"], Some(&text)).await;
    assert_eq!(output.code, 0, "{output:?}");
    assert!(
        output.stderr.starts_with("warning: <stdin>:")
            && output
                .stderr
                .contains("spec.rules[1]: this rule can never be selected"),
        "{}",
        output.stderr
    );

    // Errors name file, document and field; all of them, and exit 1.
    write(
        &dir,
        "routes.yaml",
        &route().replace("name: monolith", "name: payments"),
    );
    write(&dir, "mesh.yaml", "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: mesh}\nspec: {colour: blue}\n");
    let output = ficusctl(server, &["validate", "-f", dir.to_str().unwrap()], None).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(output.stdout.is_empty(), "{}", output.stdout);
    assert!(
        output
            .stderr
            .contains("routes.yaml:1: HTTPRoute shop/shop: spec.rules[0].backendRefs[0].name"),
        "{}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .contains("mesh.yaml:1: Mesh mesh: spec.colour"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.ends_with("error: invalid config\n"),
        "{}",
        output.stderr
    );

    // Stdin over the limit is refused, not validated in part.
    let big = format!("{}---\n# {}\n", backend(9001), "x".repeat(4 << 20));
    let output = ficusctl(server, &["validate", "-f", "-"], Some(&big)).await;
    assert_eq!(output.code, 1, "{}", output.stdout);
    assert!(
        output.stderr.contains("stdin is larger than"),
        "{}",
        output.stderr
    );
}

#[tokio::test]
async fn exit_codes_for_usage_and_unreachable_server() {
    // The discard port: nothing listens there, and no other test can take it meanwhile.
    let server = "http://127.0.0.1:9".to_owned();
    let output = ficusctl(&server, &["history"], None).await;
    assert_eq!(output.code, 3, "{output:?}");
    assert!(
        output
            .stderr
            .starts_with("error: cannot reach the control plane"),
        "{}",
        output.stderr
    );
    assert_eq!(
        ficusctl(&server, &["apply"], None).await.code,
        2,
        "-f is required"
    );
    assert_eq!(ficusctl("https://x:1", &["history"], None).await.code, 2);
    assert_eq!(ficusctl(&server, &["frobnicate"], None).await.code, 2);
    let output = ficusctl(&server, &["apply", "-f", "/nonexistent/x.yaml"], None).await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stderr.contains("/nonexistent/x.yaml"),
        "{}",
        output.stderr
    );
}

#[tokio::test]
async fn api_bounds_bodies_and_answers_errors_as_json() {
    let control = ControlPlane::start().await;
    for path in ["/live", "/ready"] {
        assert_eq!(
            client::get(control.http, "control", path)
                .await
                .unwrap()
                .status,
            200
        );
    }
    let big = Request::post("/v1/apply")
        .header("host", "control")
        .body(Full::new(Bytes::from(vec![b'#'; 5 * 1024 * 1024])))
        .unwrap();
    let response = client::send(control.http, big).await.unwrap();
    assert_eq!(response.status, 413);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{json}"
    );

    let yaml = Request::post("/v1/apply")
        .header("host", "control")
        .header("x-ficus-source-name", "raw.yaml")
        .body(Full::new(Bytes::from(
            backend(9001).replace("address", "adress"),
        )))
        .unwrap();
    let response = client::send(control.http, yaml).await.unwrap();
    assert_eq!(response.status, 400);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let diagnostic = json["diagnostics"][0].as_str().unwrap_or_default();
    assert!(
        diagnostic.contains("raw.yaml") && diagnostic.contains("adress"),
        "{json}"
    );

    assert_eq!(
        client::get(control.http, "control", "/v1/versions/1")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        client::get(control.http, "control", "/v1/nope")
            .await
            .unwrap()
            .status,
        404
    );
    let wrong_method = Request::put("/v1/history")
        .header("host", "control")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client::send(control.http, wrong_method)
            .await
            .unwrap()
            .status,
        405
    );
    assert_eq!(control.get_json("/v1/config").await["version"], 0);
}

#[tokio::test]
async fn apply_wait_reports_every_sidecar_and_fails_on_a_nack() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let first = write(files.path(), "first.yaml", &backend(9001));
    let output = control.ctl(&["apply", "-f", &first, "--wait"]).await;
    assert!(
        ok(&output).ends_with(
            "waiting: 0/0 sidecars at version 1\nno sidecar connected: nothing confirmed\n"
        ),
        "{}",
        output.stdout
    );

    let mut sidecars = Vec::new();
    for (node, workload) in [("web-1", "web"), ("api-1", "api")] {
        let options = SidecarOptions {
            workload: Some(workload.to_owned()),
            node_id: Some(node.to_owned()),
            ..SidecarOptions::default()
        };
        sidecars.push(Sidecar::start_push(&control.grpc_url(), options).await);
    }
    let started = Instant::now();
    while control.get_json("/v1/status").await["sidecars"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sidecars never connected"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let second = write(files.path(), "second.yaml", &backend(9002));
    let output = control
        .ctl(&["apply", "-f", &second, "--wait", "--timeout", "20s"])
        .await;
    let text = ok(&output);
    assert!(text.starts_with("applied version 2: "), "{text}");
    assert!(
        text.contains("waiting: 2/2 sidecars at version 2\n"),
        "{text}"
    );
    assert!(
        text.contains("  web-1 (web.shop): acked version 2\n"),
        "{text}"
    );
    assert!(
        text.contains("  api-1 (api.shop): acked version 2\n"),
        "{text}"
    );

    // Valid in the store, but no sidecar can listen where a sidecar already listens: NACK.
    let taken = sidecars[0].outbound;
    let tcp = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
         spec: {{protocol: tcp, listen: \"{taken}\", endpoints: [{{address: \"127.0.0.1:5432\"}}]}}\n"
    );
    let third = write(files.path(), "third.yaml", &tcp);
    let output = control
        .ctl(&["apply", "-f", &third, "--wait", "--timeout", "20s"])
        .await;
    assert_eq!(output.code, 1, "{output:?}");
    assert!(
        output.stdout.contains("NACK version 3: "),
        "{}",
        output.stdout
    );
    let last = output.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: sidecar ") && last.contains("refused version 3"),
        "{}",
        output.stderr
    );
    let status = control.ctl(&["status"]).await;
    assert!(ok(&status).contains("v3: "), "{}", status.stdout);
}

/// An emergency rollback (and a delete) can wait for the sidecars like an apply: the real
/// sidecar's ACK is reported. Once it is gone, a wait says that nothing was confirmed and names
/// it with the last version it ACKed, without failing.
#[tokio::test]
async fn rollback_and_delete_wait_for_sidecars() {
    let control = ControlPlane::start().await;
    let files = tempfile::tempdir().unwrap();
    let extra =
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: extra, namespace: shop}\n\
                 spec: {endpoints: [{address: \"127.0.0.1:9009\"}]}\n";
    let first = write(
        files.path(),
        "first.yaml",
        &format!("{}---\n{extra}", backend(9001)),
    );
    ok(&control.ctl(&["apply", "-f", &first]).await);
    let options = SidecarOptions {
        workload: Some("web".to_owned()),
        node_id: Some("web-1".to_owned()),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_push(&control.grpc_url(), options).await;
    sidecar.wait_version(1, Duration::from_secs(20)).await;
    let second = write(files.path(), "second.yaml", &backend(9002));
    ok(&control
        .ctl(&["apply", "-f", &second, "--wait", "--timeout", "20s"])
        .await);

    let output = control
        .ctl(&["rollback", "--wait", "--timeout", "20s"])
        .await;
    let text = ok(&output);
    assert!(
        text.starts_with("rolled back: version 3: rollback to version 1"),
        "{text}"
    );
    assert!(
        text.contains("waiting: 1/1 sidecars at version 3\n"),
        "{text}"
    );
    assert!(
        text.contains("  web-1 (web.shop): acked version 3\n"),
        "{text}"
    );

    let output = control
        .ctl(&["delete", "Backend", "extra", "--wait", "--timeout", "20s"])
        .await;
    let text = ok(&output);
    assert!(text.starts_with("deleted: version 4: "), "{text}");
    assert!(
        text.contains("  web-1 (web.shop): acked version 4\n"),
        "{text}"
    );

    drop(sidecar);
    let started = Instant::now();
    while control.get_json("/v1/status").await["sidecars"][0]["connected"] != false {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sidecar's stream never ended"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let output = control.ctl(&["rollback", "2", "--wait"]).await;
    let text = ok(&output);
    assert!(
        text.contains("no sidecar connected: nothing confirmed\n"),
        "{text}"
    );
    assert!(
        text.contains("  web-1 (web.shop): disconnected, last ACKed version 4\n"),
        "{text}"
    );
}

#[tokio::test]
async fn api_closes_a_client_that_never_finishes_its_headers() {
    let control = ControlPlane::start().await;
    let http = control.http;
    let stalled = tokio::spawn(async move {
        let partial = b"GET /v1/status HTTP/1.1\r\nHost: control\r\n";
        client::raw_exchange(http, partial, Duration::from_secs(30)).await
    });
    // Others are served meanwhile.
    assert_eq!(
        client::get(http, "control", "/v1/status")
            .await
            .unwrap()
            .status,
        200
    );
    let outcome = stalled.await.unwrap();
    assert!(
        outcome.closed,
        "a peer that stops sending headers is closed by the header timeout"
    );
    assert_ne!(outcome.status(), Some(200));
}

/// Whether this machine lets an unprivileged process make user and mount namespaces.
fn can_unshare_mounts() -> bool {
    std::process::Command::new("unshare")
        .args(["-Urm", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A Backend with `count` endpoints: a large document (about 30 bytes an endpoint).
fn large_backend(name: &str, count: u32) -> String {
    let endpoints: Vec<String> = (0..count)
        .map(|n| {
            format!(
                "{{address: \"10.{}.{}.{}:80\"}}",
                n >> 16,
                (n >> 8) & 255,
                n & 255
            )
        })
        .collect();
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  endpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// redb latches an I/O error: every later transaction fails until the database is reopened.
/// A full disk fails an apply; once space is freed, the next apply works without a restart.
#[tokio::test]
async fn an_apply_after_a_full_disk_is_freed_works() {
    if !can_unshare_mounts() {
        eprintln!("skipped: `unshare -Urm` is not permitted here (no user namespaces)");
        return;
    }
    // The data dir is a 4 MiB tmpfs, mounted in a mount namespace of the control plane's own.
    let mountpoint = tempfile::tempdir().unwrap();
    let data = mountpoint.path().display().to_string();
    let mount = "mount -t tmpfs -o size=4m tmpfs \"$0\" && exec \"$@\"";
    let control = ControlPlane::start_under(
        &["unshare", "-Urm", "sh", "-c", mount, &data],
        mountpoint.path(),
        &[],
    )
    .await;
    assert!(ok(&control
        .ctl_stdin(&["apply", "-f", "-"], &backend(9001))
        .await)
    .starts_with("applied version 1"));
    // The tmpfs as the control plane sees it.
    let inside = Path::new(&format!("/proc/{}/root", control.pid())).join(&data[1..]);
    let filler = inside.join("filler");
    let mut file = std::fs::File::create(&filler).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut full = false;
    for _ in 0..1024 {
        if let Err(error) = std::io::Write::write_all(&mut file, &chunk) {
            assert_eq!(error.raw_os_error(), Some(28), "ENOSPC, not {error}");
            full = true;
            break;
        }
    }
    assert!(full, "the 4 MiB tmpfs filled up");

    let refused = control
        .ctl_stdin(&["apply", "-f", "-"], &large_backend("big", 20_000))
        .await;
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("No space left on device"),
        "{}",
        refused.stderr
    );

    drop(file);
    std::fs::remove_file(&filler).expect("free the space");
    let applied = ok(&control
        .ctl_stdin(&["apply", "-f", "-"], &large_backend("big", 20_000))
        .await)
    .to_owned();
    assert!(applied.starts_with("applied version 2"), "{applied}");
    assert!(ok(&control.ctl(&["history"]).await).contains("apply: 1 created"));
    let ready = client::get(control.http, "control", "/ready")
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// `--history-limit 5`: after 12 versions only the newest 5 are kept; an older one is a clear
/// 404, and rollback still works.
#[tokio::test]
async fn history_keeps_only_the_newest_versions() {
    let control = ControlPlane::start_with(None, &["--history-limit", "5"]).await;
    for n in 1..=12 {
        ok(&control
            .ctl_stdin(&["apply", "-f", "-"], &backend(9000 + n))
            .await);
    }
    let history = ok(&control.ctl(&["history", "--all"]).await).to_owned();
    let listed: Vec<&str> = history
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|first| first.trim_end_matches('*'))
        .filter(|first| first.parse::<u64>().is_ok())
        .collect();
    assert_eq!(listed, ["12", "11", "10", "9", "8"], "{history}");

    let old = client::get(control.http, "control", "/v1/versions/1")
        .await
        .unwrap();
    assert_eq!(old.status, 404);
    assert!(
        old.text()
            .contains("version 1 is no longer kept (history keeps the newest 5)"),
        "{}",
        old.text()
    );
    let refused = control.ctl(&["rollback", "3"]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("version 3 is no longer kept"),
        "{}",
        refused.stderr
    );
    let rolled = ok(&control.ctl(&["rollback"]).await).to_owned();
    assert!(rolled.contains("version 13"), "{rolled}");
    assert!(ok(&control.ctl(&["get"]).await).contains("127.0.0.1:9011"));
}
