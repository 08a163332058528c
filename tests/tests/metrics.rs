//! Metrics: `/metrics` of the real sidecar and control plane, parsed back with a strict
//! Prometheus text parser (and `promtool check metrics` when it is installed); counters match
//! the requests sent, label values stay bounded, and the Grafana dashboard only queries
//! metrics the code emits.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ficus_tests::client::{self, H1Client};
use ficus_tests::control::{ControlPlane, CtlOutput};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::prom::{self, Exposition, Kind};
use ficus_tests::until;
use ficus_tests::upstream::{hanging_upstream, send_and_abandon, Upstream};

/// Backend `down`'s endpoint: the discard port, where nothing listens (a released free port
/// could be taken by another test meanwhile).
const DOWN: &str = "127.0.0.1:9";

fn backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
    )
}

/// Service `ok` → the upstream; `down` → a port nobody listens on; `slow` → the upstream with
/// a 200 ms request timeout; `split` → 90/10 over `ok`/`other`.
fn config(upstream: SocketAddr, other: SocketAddr) -> String {
    backend("ok", upstream)
        + &backend("down", DOWN.parse().unwrap())
        + &backend("other", other)
        + "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: slow, namespace: shop}\n\
           spec:\n  parentRefs: [{kind: Service, name: slow}]\n  rules:\n  \
           - backendRefs: [{name: ok}]\n    timeouts: {request: 200ms}\n---\n\
           apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: split, namespace: shop}\n\
           spec:\n  parentRefs: [{kind: Service, name: split}]\n  rules:\n  \
           - backendRefs: [{name: ok, weight: 90}, {name: other, weight: 10}]\n"
}

async fn scrape(admin: SocketAddr) -> (String, Exposition) {
    let response = client::get(admin, "admin", "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(response.status, 200);
    let text = String::from_utf8(response.body.to_vec()).expect("UTF-8 exposition");
    let exposition = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, exposition)
}

/// Sends `n` GETs with `Host: host` to `path` and checks every status.
async fn send(client: &mut H1Client, host: &str, path: &str, n: usize, status: u16) {
    for _ in 0..n {
        let response = client.get(host, path).await.expect("request");
        assert_eq!(response.status, status, "{host}{path}: {}", response.text());
    }
}

fn outbound(service: &str, backend: &str, code: &str, flags: &str) -> [(&'static str, String); 5] {
    [
        ("direction", "outbound".to_owned()),
        ("destination_service", service.to_owned()),
        ("destination_backend", backend.to_owned()),
        ("response_code", code.to_owned()),
        ("response_flags", flags.to_owned()),
    ]
}

fn count(exposition: &Exposition, name: &str, labels: &[(&'static str, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    exposition.sum(name, &labels)
}

#[tokio::test]
async fn request_counters_and_histograms_match_the_requests_sent() {
    let (upstream, other, app) = (
        Upstream::start("ok").await,
        Upstream::start("other").await,
        Upstream::start("app").await,
    );
    let options = SidecarOptions {
        app: Some(app.addr),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_with(&config(upstream.addr, other.addr), options).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    send(&mut client, "ok", "/", 7, 200).await;
    send(&mut client, "ok", "/status/500", 4, 500).await;
    send(&mut client, "down", "/", 3, 503).await;
    send(&mut client, "slow", "/delay/3000", 2, 504).await;
    send(&mut client, "nowhere", "/", 2, 502).await;
    let mut inbound = H1Client::connect(sidecar.inbound).await.unwrap();
    send(&mut inbound, "client", "/", 5, 200).await;
    // Counters are updated when the response head goes out; the scrape is after every answer.
    let (_, metrics) = scrape(sidecar.admin).await;

    let expected = [
        (outbound("shop/ok", "shop/ok", "200", ""), 7.0),
        (outbound("shop/ok", "shop/ok", "500", ""), 4.0),
        (outbound("shop/down", "shop/down", "503", "UF"), 3.0),
        (outbound("shop/slow", "shop/ok", "504", "UT"), 2.0),
        (outbound("unknown", "none", "502", "NR"), 2.0),
    ];
    for (labels, want) in &expected {
        let got = count(&metrics, "ficus_requests_total", labels);
        assert_eq!(got, *want, "ficus_requests_total{labels:?}");
    }
    let inbound_labels = [
        ("direction", "inbound".to_owned()),
        ("destination_service", "shop/client".to_owned()),
        ("destination_backend", "app".to_owned()),
        ("response_code", "200".to_owned()),
        ("response_flags", String::new()),
    ];
    assert_eq!(
        count(&metrics, "ficus_requests_total", &inbound_labels),
        5.0
    );
    // Nothing else was counted: every series is one of the above.
    assert_eq!(metrics.sum("ficus_requests_total", &[]), 23.0);
    assert_eq!(
        metrics.samples("ficus_requests_total").count(),
        expected.len() + 1
    );

    // The histogram counts each request once, in the series of its (direction, service,
    // backend, flags); `_count` equals the +Inf bucket (the parser checks that).
    let family = &metrics.families["ficus_request_duration_seconds"];
    assert_eq!(family.kind, Kind::Histogram);
    for (labels, want) in [
        (("shop/ok", "shop/ok", ""), 11.0),
        (("shop/down", "shop/down", "UF"), 3.0),
        (("shop/slow", "shop/ok", "UT"), 2.0),
        (("unknown", "none", "NR"), 2.0),
    ] {
        let (service, backend, flags) = labels;
        let filter = [
            ("direction", "outbound"),
            ("destination_service", service),
            ("destination_backend", backend),
            ("response_flags", flags),
        ];
        let observed = metrics.sum("ficus_request_duration_seconds_count", &filter);
        assert_eq!(observed, want, "histogram count for {labels:?}");
    }
    assert_eq!(
        metrics.sum("ficus_request_duration_seconds_count", &[]),
        23.0
    );
    // The timed-out requests waited for the 200 ms route timeout: they sit above 0.15 s.
    let slow = [("destination_service", "shop/slow")];
    let under = |le: &str| {
        metrics
            .samples("ficus_request_duration_seconds_bucket")
            .filter(|s| s.labels.get("le").is_some_and(|v| v == le))
            .filter(|s| {
                slow.iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(under("0.15"), 0.0);
    assert_eq!(under("+Inf"), 2.0);
    // Buckets between 1 ms and 10 s are at most a factor of 1.5 apart.
    let bounds: Vec<f64> = metrics
        .samples("ficus_request_duration_seconds_bucket")
        .filter_map(|s| s.labels.get("le")?.parse::<f64>().ok())
        .collect::<Vec<_>>();
    let mut bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    assert!(
        bounds.contains(&0.001) && bounds.contains(&10.0),
        "{bounds:?}"
    );
    for pair in bounds.windows(2).filter(|p| p[0] >= 0.001 && p[1] <= 10.0) {
        assert!(
            pair[1] / pair[0] <= 1.5 + 1e-9,
            "buckets {pair:?} too far apart"
        );
    }

    // The TCP counters and the config gauges are there from the start.
    assert_eq!(metrics.sum("ficus_config_version", &[]), 1.0);
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "accepted")]),
        1.0
    );
    assert_eq!(metrics.sum("ficus_tcp_connections_opened_total", &[]), 0.0);
}

#[tokio::test]
async fn route_backend_weights_follow_the_config() {
    let (upstream, other) = (Upstream::start("ok").await, Upstream::start("other").await);
    let sidecar = Sidecar::start(&config(upstream.addr, other.addr)).await;
    let (_, metrics) = scrape(sidecar.admin).await;
    let weight = |metrics: &Exposition, backend: &str| {
        metrics.sum(
            "ficus_route_backend_weight",
            &[
                ("destination_service", "shop/split"),
                ("route", "shop/split"),
                ("rule", "0"),
                ("destination_backend", backend),
            ],
        )
    };
    assert_eq!(weight(&metrics, "shop/ok"), 90.0);
    assert_eq!(weight(&metrics, "shop/other"), 10.0);
    assert_eq!(metrics.samples("ficus_route_backend_weight").count(), 3);

    // 50/50, and the `slow` route removed: its series goes away.
    let swapped = backend("ok", upstream.addr)
        + &backend("other", other.addr)
        + "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: split, namespace: shop}\n\
           spec:\n  parentRefs: [{kind: Service, name: split}]\n  rules:\n  \
           - backendRefs: [{name: ok, weight: 50}, {name: other, weight: 50}]\n";
    sidecar.write_config(&swapped);
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let (_, metrics) = scrape(sidecar.admin).await;
    assert_eq!(weight(&metrics, "shop/ok"), 50.0);
    assert_eq!(weight(&metrics, "shop/other"), 50.0);
    assert_eq!(metrics.samples("ficus_route_backend_weight").count(), 2);
}

/// Every sample (any family) whose `destination_backend` or `destination_service` label is
/// `name`.
fn naming<'e>(metrics: &'e Exposition, name: &str) -> Vec<&'e prom::Sample> {
    metrics
        .families
        .values()
        .flat_map(|family| family.samples.iter())
        .filter(|sample| {
            ["destination_backend", "destination_service"]
                .iter()
                .any(|label| sample.labels.get(*label).is_some_and(|v| v == name))
        })
        .collect()
}

#[tokio::test]
async fn series_of_a_backend_and_service_removed_by_a_swap_leave_metrics() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    // Service `legacy` (the monolith's route) → Backend `b`; Backend `a` is called directly.
    let legacy = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                  metadata: {name: legacy, namespace: shop}\n\
                  spec:\n  parentRefs: [{kind: Service, name: legacy}]\n  rules:\n  \
                  - backendRefs: [{name: b}]\n";
    let with_b = backend("a", a.addr) + &backend("b", b.addr) + legacy;
    let sidecar = Sidecar::start(&with_b).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    send(&mut client, "a", "/", 3, 200).await;
    send(&mut client, "b", "/", 2, 200).await;
    send(&mut client, "legacy", "/", 4, 200).await;
    let (_, before) = scrape(sidecar.admin).await;
    let count = |metrics: &Exposition, service: &str, backend: &str| {
        let labels = [
            ("destination_service", service),
            ("destination_backend", backend),
        ];
        (
            metrics.sum("ficus_requests_total", &labels),
            metrics.sum("ficus_request_duration_seconds_count", &labels),
        )
    };
    assert_eq!(count(&before, "shop/a", "shop/a"), (3.0, 3.0));
    assert_eq!(count(&before, "shop/b", "shop/b"), (2.0, 2.0));
    assert_eq!(count(&before, "shop/legacy", "shop/b"), (4.0, 4.0));

    // Backend `b` and service `legacy` go away: their series leave `/metrics` (after a scrape
    // that still shows their final counts), `a`'s stay as they were.
    sidecar.write_config(&backend("a", a.addr));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let started = Instant::now();
    let mut shown = 0;
    let after = loop {
        let (text, metrics) = scrape(sidecar.admin).await;
        let left = naming(&metrics, "shop/b").len() + naming(&metrics, "shop/legacy").len();
        if left == 0 {
            break metrics;
        }
        shown += 1;
        // Whatever is still exported has its final value.
        assert_eq!(count(&metrics, "shop/b", "shop/b"), (2.0, 2.0), "{text}");
        assert_eq!(
            count(&metrics, "shop/legacy", "shop/b"),
            (4.0, 4.0),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the removed backend's series are still exported:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Nothing scraped between the swap and the loop: its first scrape had the final counts.
    assert!(
        shown >= 1,
        "no scrape showed the removed series' final counts"
    );
    assert_eq!(count(&after, "shop/a", "shop/a"), (3.0, 3.0));
    let requests = |m: &Exposition| m.samples("ficus_requests_total").count();
    assert_eq!(
        requests(&after),
        requests(&before) - 2,
        "only b's and legacy's went"
    );

    // Added back: its series come back with the traffic, counting from 0.
    sidecar.write_config(&with_b);
    sidecar.wait_version(3, Duration::from_secs(10)).await;
    send(&mut client, "b", "/", 1, 200).await;
    send(&mut client, "a", "/", 1, 200).await;
    let (_, again) = scrape(sidecar.admin).await;
    assert_eq!(count(&again, "shop/b", "shop/b"), (1.0, 1.0));
    assert_eq!(count(&again, "shop/a", "shop/a"), (4.0, 4.0));
    assert_eq!(
        again.sum(
            "ficus_route_backend_weight",
            &[
                ("destination_service", "shop/legacy"),
                ("destination_backend", "shop/b")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn label_values_stay_bounded_under_random_paths_and_hosts() {
    let (upstream, other) = (Upstream::start("ok").await, Upstream::start("other").await);
    let sidecar = Sidecar::start(&config(upstream.addr, other.addr)).await;
    let (_, before) = scrape(sidecar.admin).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for i in 0..150u32 {
        let path = format!("/rnd{i:x}/item-{}?q=rnd{i}", i * 7919);
        send(&mut client, "ok", &path, 1, 200).await;
        let host = format!("rnd{i:x}.example{}.test", i % 13);
        send(&mut client, &host, &path, 1, 502).await;
        send(&mut client, &format!("ok.rnd{i}"), "/", 1, 502).await;
    }
    let (text, metrics) = scrape(sidecar.admin).await;
    assert!(
        !text.contains("rnd"),
        "request data leaked into a metric:\n{text}"
    );
    // One series per outcome, however many paths and hosts were seen.
    let series: BTreeSet<String> = metrics
        .samples("ficus_requests_total")
        .map(|s| format!("{:?}", s.labels))
        .collect();
    assert_eq!(series.len(), 2, "{series:#?}");
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("destination_service", "unknown"), ("response_flags", "NR")]
        ),
        300.0
    );
    assert_eq!(
        metrics.label_values("ficus_requests_total", "destination_service"),
        BTreeSet::from(["shop/ok".to_owned(), "unknown".to_owned()])
    );
    // Histogram series are made on first use (a Backend without traffic exports none): the
    // traffic added exactly the two outcomes it had (shop/ok, and unknown with NR).
    let histogram_series = |metrics: &Exposition| {
        metrics
            .samples("ficus_request_duration_seconds_count")
            .count()
    };
    assert_eq!(histogram_series(&metrics), histogram_series(&before) + 2);
    let observed = metrics
        .samples("ficus_request_duration_seconds_count")
        .filter(|s| s.value > 0.0)
        .count();
    assert_eq!(observed, histogram_series(&metrics), "no series of zeros");
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed, else its
/// complaints (empty when it is satisfied).
fn promtool(text: &str) -> Option<String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("promtool: {error}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool ran");
    let complaints = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() && complaints.trim().is_empty() {
        Some(String::new())
    } else {
        Some(format!("exit {}: {complaints}", output.status))
    }
}

fn ok(output: &CtlOutput) -> &str {
    assert_eq!(output.code, 0, "ficusctl failed: {}", output.stderr);
    &output.stdout
}

/// A control plane with one push-mode sidecar that ACKed version 1 and NACKed version 2 (a
/// TCP listen address it cannot bind), plus traffic through the sidecar.
async fn control_with_a_nack() -> (ControlPlane, Sidecar, Upstream) {
    let upstream = Upstream::start("ok").await;
    let control = ControlPlane::start().await;
    let options = SidecarOptions {
        node_id: Some("web-1".to_owned()),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_push(&control.grpc_url(), options).await;
    let config = backend("ok", upstream.addr)
        + &backend("down", DOWN.parse().unwrap())
        + "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: split, namespace: shop}\n\
           spec:\n  parentRefs: [{kind: Service, name: split}]\n  rules:\n  \
           - backendRefs: [{name: ok, weight: 3}]\n";
    ok(&control.ctl_stdin(&["apply", "-f", "-"], &config).await);
    sidecar.wait_ready(Duration::from_secs(20)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
         spec: {{protocol: tcp, listen: \"{}\", endpoints: [{{address: \"127.0.0.1:5432\"}}]}}\n",
        taken.local_addr().unwrap()
    );
    ok(&control.ctl_stdin(&["apply", "-f", "-"], &tcp).await);
    until("the NACK", Duration::from_secs(20), || async {
        let status = control.get_json("/v1/status").await;
        status["sidecars"][0]["nacked_version"] == 2
    })
    .await;
    drop(taken);
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    send(&mut client, "split", "/", 3, 200).await;
    send(&mut client, "ok", "/status/503", 1, 503).await;
    send(&mut client, "down", "/", 1, 503).await;
    (control, sidecar, upstream)
}

#[tokio::test]
async fn control_plane_metrics_count_sidecars_convergence_and_nacks() {
    let (control, _sidecar, _upstream) = control_with_a_nack().await;
    let (_, metrics) = scrape(control.http).await;
    assert_eq!(metrics.sum("ficus_control_connected_sidecars", &[]), 1.0);
    assert_eq!(metrics.sum("ficus_control_nacks_total", &[]), 1.0);
    assert_eq!(metrics.sum("ficus_control_sidecars_nacking", &[]), 1.0);
    assert_eq!(
        metrics.sum("ficus_control_sidecars_behind", &[]),
        1.0,
        "the sidecar serves version 1 of 2"
    );
    assert_eq!(metrics.sum("ficus_control_config_version", &[]), 2.0);
    let family = &metrics.families["ficus_control_push_convergence_seconds"];
    assert_eq!(family.kind, Kind::Histogram);
    // The ACK of version 1 (a reconnect under load may add another).
    assert!(metrics.sum("ficus_control_push_convergence_seconds_count", &[]) >= 1.0);
}

#[tokio::test]
async fn promtool_accepts_sidecar_and_control_plane_metrics() {
    let (control, sidecar, _upstream) = control_with_a_nack().await;
    let (sidecar_text, _) = scrape(sidecar.admin).await;
    let (control_text, _) = scrape(control.http).await;
    for (who, text) in [("sidecar", sidecar_text), ("control plane", control_text)] {
        match promtool(&text) {
            None => {
                eprintln!(
                    "SKIPPED promtool check of the {who}'s /metrics: promtool not on PATH \
                     (scripts/install-test-deps installs it)"
                );
                return;
            }
            Some(complaints) => {
                assert!(
                    complaints.is_empty(),
                    "promtool on the {who}'s /metrics: {complaints}"
                )
            }
        }
    }
}

/// Every metric name in a PromQL expression: identifiers starting with `ficus_` (all of ours
/// do; label names inside `{}`/`by ()` never start with it).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && expr[i..].starts_with("ficus_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            names.insert(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` of every panel (rows' nested panels too).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push((title.clone(), expr.to_owned()));
            }
        }
    }
    exprs
}

#[tokio::test]
async fn grafana_dashboard_queries_only_emitted_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ficus-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/ficus-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");

    // What Grafana needs to import it: a schema version, a title, panels with positions and a
    // Prometheus datasource variable that every panel uses.
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let variable = format!("${{{}}}", datasource["name"].as_str().expect("name"));
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let grid = &panel["gridPos"];
        for key in ["x", "y", "w", "h"] {
            assert!(grid[key].as_u64().is_some(), "{title}: gridPos.{key}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(panel["datasource"]["uid"], variable.as_str(), "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], variable.as_str(), "{title}");
        }
    }

    // Every query is valid PromQL once Grafana's variables are filled in: promtool parses
    // each as a recording rule.
    let exprs = dashboard_exprs(&dashboard);
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (index, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$service", ".*");
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).unwrap();
        rules += &format!("  - record: dashboard:query{index}\n    expr: {quoted}\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
    {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED PromQL syntax check of the dashboard: promtool not on PATH")
        }
        Err(error) => panic!("promtool: {error}"),
        Ok(output) => assert!(
            output.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }

    // Every metric a query names is emitted by a real sidecar or control plane.
    let (control, sidecar, _upstream) = control_with_a_nack().await;
    let (_, sidecar_metrics) = scrape(sidecar.admin).await;
    let (_, control_metrics) = scrape(control.http).await;
    let emitted: BTreeSet<&str> = sidecar_metrics
        .sample_names()
        .into_iter()
        .chain(control_metrics.sample_names())
        .collect();
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                emitted.contains(name.as_str()),
                "panel {title:?} queries {name}, which neither /metrics emits"
            );
            used.insert(name);
        }
    }
    // What the issue asks the dashboard to show.
    for name in [
        "ficus_requests_total",
        "ficus_request_duration_seconds_bucket",
        "ficus_route_backend_weight",
        "ficus_retries_total",
        "ficus_circuit_breaker_overflow_total",
        "ficus_outlier_ejections_active",
        "ficus_rate_limited_total",
        "ficus_config_version",
        "ficus_control_nacks_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        "histogram_quantile(0.95, sum by (le, destination_backend) \
         (rate(ficus_request_duration_seconds_bucket{destination_service=~\"$service\"}[5m]))) \
         / ignoring(x) ficus_route_backend_weight",
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "ficus_request_duration_seconds_bucket".to_owned(),
            "ficus_route_backend_weight".to_owned()
        ])
    );
}

fn with_direction(direction: &str, code: &str, flags: &str) -> [(&'static str, String); 3] {
    [
        ("direction", direction.to_owned()),
        ("response_code", code.to_owned()),
        ("response_flags", flags.to_owned()),
    ]
}

/// Polls `/metrics` (bounded) until `ficus_requests_total{labels}` is at least one, and
/// returns that scrape.
async fn scrape_until_counted(admin: SocketAddr, labels: &[(&'static str, String)]) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = scrape(admin).await;
        if count(&metrics, "ficus_requests_total", labels) >= 1.0 {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no ficus_requests_total{labels:?} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_request_abandoned_by_its_client_is_counted_once_as_dc() {
    let (hang, mut got_there, upstream) = hanging_upstream().await;
    let options = SidecarOptions {
        app: Some(hang),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_with(&backend("hang", hang), options).await;

    // Outbound: counted against the Backend it was routed to, status 0, flag DC.
    send_and_abandon(sidecar.outbound, "hang", &mut got_there).await;
    let dc = outbound("shop/hang", "shop/hang", "0", "DC");
    let metrics = scrape_until_counted(sidecar.admin, &dc).await;
    assert_eq!(count(&metrics, "ficus_requests_total", &dc), 1.0);
    assert_eq!(
        metrics.sum("ficus_requests_total", &[]),
        1.0,
        "nothing else"
    );
    let histogram = [
        ("direction", "outbound"),
        ("destination_service", "shop/hang"),
        ("destination_backend", "shop/hang"),
        ("response_flags", "DC"),
    ];
    assert_eq!(
        metrics.sum("ficus_request_duration_seconds_count", &histogram),
        1.0
    );

    // Inbound: the peer goes away while the app keeps it waiting.
    send_and_abandon(sidecar.inbound, "client", &mut got_there).await;
    let dc = with_direction("inbound", "0", "DC");
    let metrics = scrape_until_counted(sidecar.admin, &dc).await;
    assert_eq!(count(&metrics, "ficus_requests_total", &dc), 1.0);
    assert_eq!(
        metrics.sum("ficus_requests_total", &[]),
        2.0,
        "nothing else"
    );

    // A completed request afterwards is counted once, with its status and no flag.
    let response = client::get(sidecar.outbound, "nowhere", "/")
        .await
        .expect("request");
    assert_eq!(response.status, 502);
    let (_, metrics) = scrape(sidecar.admin).await;
    assert_eq!(metrics.sum("ficus_requests_total", &[]), 3.0);
    assert_eq!(
        count(
            &metrics,
            "ficus_requests_total",
            &outbound("unknown", "none", "502", "NR")
        ),
        1.0
    );
    // Still exactly one abandoned request each way.
    for direction in ["outbound", "inbound"] {
        let dc = with_direction(direction, "0", "DC");
        assert_eq!(
            count(&metrics, "ficus_requests_total", &dc),
            1.0,
            "{direction}"
        );
    }
    upstream.abort();
}
