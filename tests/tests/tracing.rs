//! Tracing end to end: real sidecars export spans over OTLP/gRPC to a real receiver in the
//! test process (`ficus_tests::otlp`, opentelemetry-proto's tonic `TraceService`).
//!
//! - client sidecar → (mTLS) → server sidecar → app: one trace, parent/child links, HTTP
//!   semantic-convention attributes; the app sees the server sidecar's span as its parent;
//! - B3 in → B3 (and W3C) out; a malformed `traceparent` is replaced;
//! - 0 % sampling exports nothing but still propagates `sampled=0`;
//! - the collector down for ~30 s under steady load: every request succeeds, drops are
//!   counted, export resumes when it is back on the same port;
//! - a config swap moves export to another receiver; removing tracing stops it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ficus_tests::client::{self, H1Client, H2Client};
use ficus_tests::control::ControlPlane;
use ficus_tests::otlp::{OtlpReceiver, ReceivedSpan};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::Full;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const WAIT: Duration = Duration::from_secs(20);

fn mesh(tracing: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{{tracing}}}\n---\n"
    )
}

fn tracing_to(receiver: SocketAddr, percent: u32) -> String {
    format!("tracing: {{otlpEndpoint: \"http://{receiver}\", samplingPercent: {percent}}}")
}

/// A Backend `payments` at `addr` and an HTTPRoute `shop/payments-route` in front of it.
fn payments(addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{addr}\"}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: payments-route, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: payments}}]\n  rules:\n  - backendRefs: [{{name: payments}}]\n---\n"
    )
}

fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// `(version, trace id, parent id, flags)` of a `traceparent`.
fn traceparent(value: &str) -> (String, String, String, String) {
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "traceparent {value:?}");
    assert_eq!(value.len(), 55, "traceparent {value:?}");
    assert!(
        value
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "traceparent {value:?}"
    );
    (
        fields[0].to_owned(),
        fields[1].to_owned(),
        fields[2].to_owned(),
        fields[3].to_owned(),
    )
}

fn header(seen: &ficus_tests::upstream::Recorded, name: &str) -> String {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("upstream got no {name}: {:?}", seen.headers))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Waits until `name` (summed) reaches `value` on `sidecar`'s `/metrics`: the exporter counts
/// an export when the collector's answer is back, a little after the receiver has the spans.
async fn wait_metric(sidecar: &Sidecar, name: &str, value: f64) -> ficus_tests::client::Metrics {
    sidecar.wait_metric(name, &[], value, WAIT).await
}

// === client sidecar → server sidecar → app, over mTLS ===

async fn control_with_tokens() -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n").unwrap();
    let control =
        ControlPlane::start_tls(None, &["--join-token-file", tokens.to_str().unwrap()]).await;
    for workload in ["web", "payments"] {
        std::fs::write(dir.path().join(workload), format!("tok-{workload}\n")).unwrap();
    }
    (control, dir)
}

#[tokio::test]
async fn one_trace_across_two_sidecars_with_parent_links_and_http_attributes() {
    let receiver = OtlpReceiver::start().await;
    let (control, tokens) = control_with_tokens().await;
    let app = Upstream::start("payments-app").await;
    let server = control
        .start_joined(tokens.path(), "payments", Some(app.addr))
        .await;
    let web = control.start_joined(tokens.path(), "web", None).await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{mtls: {{mode: STRICT}}, {}}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{}\", identity: \"{PAYMENTS}\"}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: payments-route, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: payments}}]\n  rules:\n  - backendRefs: [{{name: payments}}]\n",
        tracing_to(receiver.addr, 100),
        server.inbound
    );
    let applied = control.ctl_stdin(&["apply", "-f", "-"], &config).await;
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    let incoming = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let response = client::send(
        web.outbound,
        get(
            "payments",
            "/api/pay/7?x=1",
            &[("traceparent", &incoming), ("tracestate", "vendor=abc")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let spans = receiver.wait_for(2, WAIT, |s| s.trace_id() == TRACE).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client_span = spans
        .iter()
        .find(|s| s.span.kind == CLIENT)
        .expect("CLIENT span");
    let server_span = spans
        .iter()
        .find(|s| s.span.kind == SERVER)
        .expect("SERVER span");

    // Parent links: app's context → client sidecar → server sidecar → the app's request.
    assert_eq!(client_span.parent_span_id(), CALLER_SPAN);
    assert_eq!(server_span.parent_span_id(), client_span.span_id());
    let seen = app.last().unwrap();
    let (version, trace, parent, flags) = traceparent(&header(&seen, "traceparent"));
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_eq!(
        parent,
        server_span.span_id(),
        "the app's parent is the server sidecar's span"
    );
    assert_eq!(header(&seen, "tracestate"), "vendor=abc");

    // HTTP semantic conventions and Ficus attributes.
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("http.route", "shop/payments-route"),
        ("server.address", "payments"),
        ("url.path", "/api/pay/7"),
        ("ficus.service", "shop/payments"),
        ("ficus.backend", "shop/payments"),
        ("ficus.peer.identity", PAYMENTS),
        ("network.peer.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
    ] {
        assert_eq!(
            client_span.attr(key).as_deref(),
            Some(value),
            "client span {key}: {client_span:#?}"
        );
    }
    assert_eq!(
        client_span.attr("network.peer.port"),
        Some(server.inbound.port().to_string())
    );
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("url.scheme", "http"),
        ("ficus.service", "shop/payments"),
        ("ficus.backend", "app"),
        ("ficus.peer.identity", WEB),
        ("url.path", "/api/pay/7"),
    ] {
        assert_eq!(
            server_span.attr(key).as_deref(),
            Some(value),
            "server span {key}: {server_span:#?}"
        );
    }
    assert_eq!(client_span.attr("ficus.response_flags"), None);
    // The span kind is the direction, and a request sent once has no resend count; client
    // spans carry no `url.scheme` (the conventions define it for server spans).
    assert_eq!(
        (client_span.direction(), server_span.direction()),
        ("outbound", "inbound")
    );
    for gone in [
        "ficus.direction",
        "ficus.retries",
        "http.request.resend_count",
        "url.scheme",
    ] {
        assert_eq!(client_span.attr(gone), None, "client span {gone}");
    }
    assert_eq!(server_span.attr("ficus.direction"), None);
    assert_eq!(client_span.span.name, "GET shop/payments-route");
    assert_eq!(
        client_span.resource_attr("service.name").as_deref(),
        Some("web.shop")
    );
    assert_eq!(
        server_span.resource_attr("service.name").as_deref(),
        Some("payments.shop")
    );
    assert!(client_span.span.end_time_unix_nano >= client_span.span.start_time_unix_nano);
    // The client span encloses the server span.
    assert!(client_span.span.start_time_unix_nano <= server_span.span.start_time_unix_nano);

    // A request without any context starts a new trace at the client sidecar.
    let response = client::get(web.outbound, "payments", "/fresh")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let seen = app.last().unwrap();
    let (_, trace, parent, flags) = traceparent(&header(&seen, "traceparent"));
    assert_eq!(flags, "01");
    assert_ne!(trace, TRACE);
    let spans = receiver.wait_for(2, WAIT, |s| s.trace_id() == trace).await;
    let root = spans.iter().find(|s| s.span.kind == CLIENT).unwrap();
    assert_eq!(
        root.parent_span_id(),
        "",
        "a new trace's first span has no parent"
    );
    let server_span = spans.iter().find(|s| s.span.kind == SERVER).unwrap();
    assert_eq!(server_span.span_id(), parent);

    let metrics = wait_metric(&web, "ficus_trace_spans_exported_total", 2.0).await;
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 0.0);
}

// === one sidecar, plaintext, file mode ===

async fn sidecar_to(app: &Upstream, tracing: &str) -> Sidecar {
    Sidecar::start(&format!("{}{}", mesh(tracing), payments(app.addr))).await
}

#[tokio::test]
async fn b3_in_is_answered_in_b3_and_w3c() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(receiver.addr, 100)).await;
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let b3_span = "a2fb4a1d1a96d312";

    // B3 multi-header.
    let response = client::send(
        sidecar.outbound,
        get(
            "payments",
            "/b3",
            &[
                ("x-b3-traceid", b3_trace),
                ("x-b3-spanid", b3_span),
                ("x-b3-sampled", "1"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let span = receiver
        .wait_for(1, WAIT, |s| s.trace_id() == b3_trace)
        .await
        .remove(0);
    assert_eq!(span.parent_span_id(), b3_span);
    let seen = app.last().unwrap();
    assert_eq!(header(&seen, "x-b3-traceid"), b3_trace);
    assert_eq!(header(&seen, "x-b3-spanid"), span.span_id());
    assert_eq!(header(&seen, "x-b3-parentspanid"), b3_span);
    assert_eq!(header(&seen, "x-b3-sampled"), "1");
    let (_, trace, parent, flags) = traceparent(&header(&seen, "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "01"));
    assert_eq!(parent, span.span_id());
    assert!(
        !seen.headers.contains_key("b3"),
        "single b3 only when received"
    );

    // B3 single header with a 64-bit trace id and a not-sampled decision: answered in the
    // same width, still not sampled, nothing exported.
    let short_trace = "48485a3953bb6124";
    let response = client::send(
        sidecar.outbound,
        get(
            "payments",
            "/b3s",
            &[("b3", &format!("{short_trace}-{b3_span}-0"))],
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let seen = app.last().unwrap();
    let single = header(&seen, "b3");
    let fields: Vec<&str> = single.split('-').collect();
    assert_eq!(fields.len(), 4, "{single}");
    assert_eq!(fields[0], short_trace);
    assert_ne!(fields[1], b3_span, "the sidecar's own span id");
    assert_eq!((fields[2], fields[3]), ("0", b3_span));
    let (_, trace, parent, flags) = traceparent(&header(&seen, "traceparent"));
    assert_eq!(trace, format!("0000000000000000{short_trace}"));
    assert_eq!((parent.as_str(), flags.as_str()), (fields[1], "00"));
    assert!(!seen.headers.contains_key("x-b3-traceid"));
}

#[tokio::test]
async fn a_retried_request_records_its_retries_flags_and_error() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let config = format!(
        "{}apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{}\"}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: flaky, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: payments}}]\n  rules:\n  - backendRefs: [{{name: payments}}]\n\
         \x20   retry: {{attempts: 2, codes: [503], backoff: 1ms}}\n",
        mesh(&tracing_to(receiver.addr, 100)),
        app.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let response = client::get(sidecar.outbound, "payments", "/status/503")
        .await
        .unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(app.count(), 3, "one try and two retries");
    let (_, trace, _, _) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    let span = receiver
        .wait_for(1, WAIT, |s| s.trace_id() == trace)
        .await
        .remove(0);
    for (key, value) in [
        ("http.request.resend_count", "2"),
        ("ficus.response_flags", "URX"),
        ("http.response.status_code", "503"),
        ("error.type", "503"),
        ("http.route", "shop/flaky"),
    ] {
        assert_eq!(span.attr(key).as_deref(), Some(value), "{key}: {span:#?}");
    }
    // OTLP status code 2 = ERROR.
    assert_eq!(span.span.status.as_ref().map(|s| s.code), Some(2));
}

/// A gRPC call's span ends with the call (its trailers), records `rpc.grpc.status_code`, and
/// is an error when the call failed although HTTP said 200.
#[tokio::test]
async fn a_grpc_span_ends_with_the_call_and_records_its_status() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("grpc").await;
    let config = format!(
        "{}apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec: {{protocol: grpc, endpoints: [{{address: \"{}\"}}]}}\n",
        mesh(&tracing_to(receiver.addr, 100)),
        app.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    let message = Bytes::from_static(b"\0\0\0\0\x02hi");
    let call = |trace: &str, status: &str, delay_ms: &str| {
        Request::post("http://payments.shop/pay.Pay/Charge")
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
            .header("x-test-grpc-status", status)
            .header("x-test-grpc-trailers-delay-ms", delay_ms)
            .body(Full::new(message.clone()))
            .unwrap()
    };
    let failed_trace = "11111111111111111111111111111111";
    let ok_trace = "22222222222222222222222222222222";
    let response = h2.send(call(failed_trace, "14", "300")).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.trailers.unwrap()["grpc-status"], "14");
    let response = h2.send(call(ok_trace, "0", "0")).await.unwrap();
    assert_eq!(response.trailers.unwrap()["grpc-status"], "0");

    let spans = receiver
        .wait_for(2, WAIT, |s| {
            s.trace_id() == failed_trace || s.trace_id() == ok_trace
        })
        .await;
    let span = |trace: &str| spans.iter().find(|s| s.trace_id() == trace).unwrap();
    let failed = span(failed_trace);
    assert_eq!(
        failed.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(failed.attr("rpc.grpc.status_code").as_deref(), Some("14"));
    assert_eq!(failed.attr("error.type").as_deref(), Some("14"));
    // OTLP status code 2 = ERROR.
    assert_eq!(failed.span.status.as_ref().map(|s| s.code), Some(2));
    // The span lasts until the trailers, which the upstream held back for 300 ms after the
    // response head.
    let lasted = failed.span.end_time_unix_nano - failed.span.start_time_unix_nano;
    assert!(
        lasted >= 300_000_000,
        "the span ended at the response head: {lasted} ns"
    );
    let ok = span(ok_trace);
    assert_eq!(ok.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(ok.attr("error.type"), None);
    assert_ne!(ok.span.status.as_ref().map(|s| s.code), Some(2));
}

/// A request the client gives up on before its answer still has its span exported, as
/// abandoned (`DC`, no status), like its metrics and access-log line.
#[tokio::test]
async fn a_request_the_client_abandons_still_exports_its_span() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(receiver.addr, 100)).await;
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        client::get(sidecar.outbound, "payments", "/delay/3000"),
    )
    .await;
    assert!(abandoned.is_err(), "given up before the answer");
    let span = receiver
        .wait_for(1, WAIT, |s| {
            s.attr("ficus.response_flags").as_deref() == Some("DC")
        })
        .await
        .remove(0);
    assert_eq!(
        span.attr("url.path").as_deref(),
        Some("/delay/3000"),
        "{span:#?}"
    );
    assert_eq!(span.attr("http.response.status_code"), None, "{span:#?}");
    // Marked as an error: no response was ever given.
    assert_eq!(span.attr("error.type").as_deref(), Some("DC"), "{span:#?}");
    assert_eq!(span.span.status.as_ref().map(|s| s.code), Some(2));
}

#[tokio::test]
async fn a_malformed_traceparent_is_replaced_and_its_tracestate_dropped() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(receiver.addr, 100)).await;
    let malformed = [
        format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()),
        format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("ff-{TRACE}-{CALLER_SPAN}-01"),
        format!("00-{TRACE}-{CALLER_SPAN}-1"),
        format!("00-{TRACE}-{CALLER_SPAN}-01-extra"),
        "garbage".to_owned(),
    ];
    for bad in &malformed {
        let response = client::send(
            sidecar.outbound,
            get(
                "payments",
                "/bad",
                &[("traceparent", bad), ("tracestate", "vendor=abc")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        let seen = app.last().unwrap();
        let sent = header(&seen, "traceparent");
        assert_ne!(&sent, bad);
        let (version, trace, parent, _) = traceparent(&sent);
        assert_eq!(version, "00");
        assert_ne!(trace, TRACE, "{bad}: a new trace");
        assert_ne!(trace, "0".repeat(32));
        assert_ne!(parent, "0".repeat(16));
        assert!(
            !seen.headers.contains_key("tracestate"),
            "{bad}: tracestate of a malformed traceparent is dropped"
        );
        let span = receiver
            .wait_for(1, WAIT, |s| s.trace_id() == trace)
            .await
            .remove(0);
        assert_eq!(span.parent_span_id(), "", "{bad}: a root span");
        assert_eq!(span.span_id(), parent);
    }

    // A future version with extra fields is understood and answered in version 00.
    let future = format!("cc-{TRACE}-{CALLER_SPAN}-01-more-fields");
    client::send(
        sidecar.outbound,
        get("payments", "/v", &[("traceparent", &future)]),
    )
    .await
    .unwrap();
    let (version, trace, _, flags) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
}

#[tokio::test]
async fn without_tracing_malformed_context_is_still_replaced_on_both_listeners() {
    let app = Upstream::start("payments").await;
    let options = SidecarOptions {
        app: Some(app.addr),
        ..SidecarOptions::default()
    };
    let sidecar =
        Sidecar::start_with(&format!("{}{}", mesh(""), payments(app.addr)), options).await;
    let bad = format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase());
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    // Outbound (to the payments Backend) and inbound (to the app), both plain HTTP/1.1.
    for listener in [sidecar.outbound, sidecar.inbound] {
        let response = client::send(
            listener,
            get(
                "payments",
                "/off",
                &[
                    ("traceparent", &bad),
                    ("tracestate", "vendor=abc"),
                    ("x-b3-traceid", b3_trace),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "1"),
                ],
            ),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        let seen = app.last().unwrap();
        let (_, trace, parent, flags) = traceparent(&header(&seen, "traceparent"));
        // The valid B3 context carries on; the broken W3C header is rewritten from it.
        assert_eq!(
            (trace.as_str(), parent.as_str(), flags.as_str()),
            (b3_trace, "a2fb4a1d1a96d312", "01")
        );
        assert!(!seen.headers.contains_key("tracestate"));
        assert_eq!(header(&seen, "x-b3-traceid"), b3_trace);
    }
    assert_eq!(app.count(), 2, "one request through each listener");
    // Nothing valid at all: a fresh, unsampled context.
    client::send(
        sidecar.outbound,
        get("payments", "/off", &[("traceparent", &bad)]),
    )
    .await
    .unwrap();
    let (_, trace, _, flags) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "00");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_trace_spans_exported_total", &[]), 0.0);
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 0.0);
}

#[tokio::test]
async fn zero_percent_exports_nothing_but_still_propagates() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(receiver.addr, 0)).await;
    let mut traces = Vec::new();
    for _ in 0..20 {
        let response = client::get(sidecar.outbound, "payments", "/quiet")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let (_, trace, _, flags) = traceparent(&header(&app.last().unwrap(), "traceparent"));
        assert_eq!(flags, "00", "not sampled, still propagated");
        traces.push(trace);
    }
    // A caller's not-sampled context stays in its trace and stays not sampled.
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    client::send(
        sidecar.outbound,
        get("payments", "/quiet", &[("traceparent", &unsampled)]),
    )
    .await
    .unwrap();
    let (_, trace, parent, flags) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, CALLER_SPAN, "the sidecar's own span is the parent");
    traces.push(trace);

    // A forced request is exported; spans leave in order, so once it is in, any span of the
    // earlier requests would have been too.
    let response = client::send(
        sidecar.outbound,
        get("payments", "/forced", &[("x-ficus-force-trace", "1")]),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let seen = app.last().unwrap();
    let (_, forced, _, flags) = traceparent(&header(&seen, "traceparent"));
    assert_eq!(flags, "01");
    assert_eq!(
        header(&seen, "x-ficus-force-trace"),
        "1",
        "kept for the next hops"
    );
    receiver.wait_for(1, WAIT, |s| s.trace_id() == forced).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "only the forced request: {spans:#?}");
    assert!(spans.iter().all(|s| !traces.contains(&s.trace_id())));
    let metrics = wait_metric(&sidecar, "ficus_trace_spans_exported_total", 1.0).await;
    assert_eq!(metrics.sum("ficus_trace_spans_exported_total", &[]), 1.0);
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 0.0);
}

#[tokio::test]
async fn collector_down_under_load_drops_spans_not_requests_and_export_resumes() {
    let mut receiver = OtlpReceiver::start().await;
    let collector = receiver.addr;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(collector, 100)).await;

    let response = client::get(sidecar.outbound, "payments", "/up")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    receiver.wait_for(1, WAIT, |_| true).await;

    receiver.stop().await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, outbound) = (Arc::clone(&stop), Arc::clone(&sent), sidecar.outbound);
        clients.push(tokio::spawn(async move {
            let mut client = H1Client::connect(outbound).await.unwrap();
            let mut failures = Vec::new();
            // Bounded: stops when told, and after 200,000 requests at most.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get("payments", "/load").await {
                    Ok(response) if response.status == 200 => {}
                    other => failures.push(format!("{other:?}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // Steady, not flat out: the machine is shared.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        }));
    }
    // ~30 s of steady load with the collector gone.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "requests failed: {failures:?}");
    }
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 0);
    let metrics = sidecar.metrics().await;
    let dropped = metrics.sum("ficus_trace_spans_dropped_total", &[]);
    let exported = metrics.sum("ficus_trace_spans_exported_total", &[]);
    eprintln!("collector down: {sent} requests, {dropped} spans dropped, {exported} exported");
    assert!(dropped > 0.0, "drops are counted ({sent} requests)");
    assert!(
        exported + dropped <= sent as f64 + 1.0,
        "at most one span per request: {exported} + {dropped} > {sent} + 1"
    );
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_code", "200")]),
        sent as f64 + 1.0
    );

    // The collector comes back on the same port: export resumes.
    let receiver = OtlpReceiver::start_on(collector).await;
    let after = Instant::now();
    let mut resumed = Vec::new();
    // Bounded: up to 60 s of one request every 200 ms until a span of one of them arrives.
    while resumed.is_empty() {
        assert!(
            after.elapsed() < Duration::from_secs(60),
            "export did not resume"
        );
        let response = client::send(sidecar.outbound, get("payments", "/again", &[]))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        resumed = receiver.spans();
    }
    wait_metric(&sidecar, "ficus_trace_spans_exported_total", exported + 1.0).await;
}

#[tokio::test]
async fn spans_a_collector_rejects_count_as_dropped_and_the_exporter_names_itself() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(receiver.addr, 100)).await;
    // One request per export (each waits for its span): the first accepted, the next two
    // rejected by a partial success, the last accepted again.
    for (path, rejecting) in [("/a", 0), ("/b", 1), ("/c", 1), ("/d", 0)] {
        receiver.reject(rejecting);
        let before = receiver.requests().len();
        let response = client::get(sidecar.outbound, "payments", path)
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let trace = traceparent(&header(&app.last().unwrap(), "traceparent")).1;
        receiver.wait_for(1, WAIT, |s| s.trace_id() == trace).await;
        assert_eq!(
            receiver.requests().len(),
            before + 1,
            "one export for {path}"
        );
    }
    wait_metric(&sidecar, "ficus_trace_spans_dropped_total", 2.0).await;
    let metrics = wait_metric(&sidecar, "ficus_trace_spans_exported_total", 2.0).await;
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 2.0);
    assert_eq!(metrics.sum("ficus_trace_spans_exported_total", &[]), 2.0);
    let agents = receiver.user_agents();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a.starts_with("ficus-sidecar/")),
        "{agents:?}"
    );
}

/// A connection that has had one request answered and stays open, idle.
async fn keep_alive_connection(outbound: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nhost: payments\r\n\r\n")
        .await
        .unwrap();
    let head = client::read_head(&mut stream, WAIT).await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test]
async fn spans_of_the_last_requests_are_exported_before_exit() {
    let receiver = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    // No drain period: the exporter's next drain (every 500 ms) would come too late.
    let options = SidecarOptions {
        drain_timeout: Some("0s".into()),
        ..SidecarOptions::default()
    };
    let config = format!(
        "{}{}",
        mesh(&tracing_to(receiver.addr, 100)),
        payments(app.addr)
    );
    let mut sidecar = Sidecar::start_with(&config, options).await;
    // The exporter connects when it first exports: a first span, waited for, so that the
    // exit flush is not also the connection's handshake.
    let first = client::get(sidecar.outbound, "payments", "/first")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    let (_, first_trace, _, _) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    receiver
        .wait_for(1, WAIT, |s| s.trace_id() == first_trace)
        .await;
    let response = client::get(sidecar.outbound, "payments", "/last")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let (_, trace, _, _) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    // A keep-alive connection the client leaves open: the drain runs to its timeout, and the
    // last export still gets its floor.
    let idle = keep_alive_connection(sidecar.outbound).await;
    // A collector that takes a moment: the sidecar must wait for its answer.
    receiver.answer_after(Duration::from_millis(100));
    sidecar.terminate();
    let status = sidecar.wait_exit(WAIT).await;
    drop(idle);
    assert!(status.success(), "{status:?}");
    // No waiting here: the sidecar exits only after the collector has answered.
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.trace_id() == trace),
        "the last span was exported before exit: {spans:#?}"
    );
}

#[tokio::test]
async fn a_config_swap_moves_export_and_removing_tracing_stops_it() {
    let first = OtlpReceiver::start().await;
    let second = OtlpReceiver::start().await;
    let app = Upstream::start("payments").await;
    let sidecar = sidecar_to(&app, &tracing_to(first.addr, 100)).await;

    let trace_of_last =
        |app: &Upstream| traceparent(&header(&app.last().unwrap(), "traceparent")).1;
    client::get(sidecar.outbound, "payments", "/one")
        .await
        .unwrap();
    let one = trace_of_last(&app);
    first.wait_for(1, WAIT, |s| s.trace_id() == one).await;

    sidecar.write_config(&format!(
        "{}{}",
        mesh(&tracing_to(second.addr, 100)),
        payments(app.addr)
    ));
    sidecar.wait_version(2, WAIT).await;
    client::get(sidecar.outbound, "payments", "/two")
        .await
        .unwrap();
    let two = trace_of_last(&app);
    second.wait_for(1, WAIT, |s| s.trace_id() == two).await;

    // Sampling follows the swap too: 0 % still propagates, unsampled.
    sidecar.write_config(&format!(
        "{}{}",
        mesh(&tracing_to(second.addr, 0)),
        payments(app.addr)
    ));
    sidecar.wait_version(3, WAIT).await;
    client::get(sidecar.outbound, "payments", "/zero")
        .await
        .unwrap();
    let (_, zero, _, flags) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    assert_eq!(flags, "00");

    // Tracing removed: no span is made; a valid context passes through untouched.
    sidecar.write_config(&format!("{}{}", mesh(""), payments(app.addr)));
    sidecar.wait_version(4, WAIT).await;
    let incoming = format!("00-{TRACE}-{CALLER_SPAN}-01");
    for _ in 0..5 {
        client::send(
            sidecar.outbound,
            get(
                "payments",
                "/off",
                &[("traceparent", &incoming), ("x-ficus-force-trace", "1")],
            ),
        )
        .await
        .unwrap();
        assert_eq!(header(&app.last().unwrap(), "traceparent"), incoming);
    }
    // Back on: a marker span reaches the second receiver after anything the off period
    // could have queued; none of the off period's spans is there.
    sidecar.write_config(&format!(
        "{}{}",
        mesh(&tracing_to(second.addr, 100)),
        payments(app.addr)
    ));
    sidecar.wait_version(5, WAIT).await;
    client::get(sidecar.outbound, "payments", "/marker")
        .await
        .unwrap();
    let marker = trace_of_last(&app);
    second.wait_for(1, WAIT, |s| s.trace_id() == marker).await;
    let spans: Vec<ReceivedSpan> = second.spans();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() != TRACE && s.trace_id() != zero),
        "nothing exported at 0 % or while tracing was off: {spans:#?}"
    );
    // Checked last, when anything still exporting to the old receiver has had three swaps'
    // time to show: it got the first request's span and nothing after.
    let spans = first.spans();
    assert!(
        spans.iter().all(|s| s.trace_id() == one),
        "the old receiver gets nothing after the swap: {spans:#?}"
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 0.0);
}

/// A TLS config for an OTLP receiver on 127.0.0.1 with a certificate from `ca` (IP SAN
/// 127.0.0.1, TLS 1.3, ALPN `h2`).
fn collector_tls(
    ca: &ficus_identity::ca::CertificateAuthority,
) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use ficus_identity::tls::{server_config, CertStore, ClientAuth, Credentials, TrustBundle};
    let id =
        ficus_identity::SpiffeId::workload("cluster.local", "observability", "collector").unwrap();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let (issued, key) = ca
        .issue_server(&id, &[], &[loopback], Duration::from_secs(3600))
        .unwrap();
    let credentials = Credentials::from_pem_key(&issued.chain_pem, &key).unwrap();
    let bundle = TrustBundle::from_pem(&ca.bundle_pem(), "cluster.local").unwrap();
    server_config(
        CertStore::with_credentials(credentials),
        &bundle,
        ClientAuth::None,
    )
    .unwrap()
}

#[tokio::test]
async fn spans_reach_an_https_collector_trusted_by_the_ca_file_and_never_an_untrusted_one() {
    use ficus_identity::ca::CertificateAuthority;
    let mesh_ca = CertificateAuthority::generate("cluster.local").unwrap();
    let other_ca = CertificateAuthority::generate("cluster.local").unwrap();
    let trusted = OtlpReceiver::start_tls(collector_tls(&mesh_ca)).await;
    let untrusted = OtlpReceiver::start_tls(collector_tls(&other_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, mesh_ca.bundle_pem()).unwrap();
    let app = Upstream::start("payments").await;
    let https_to = |receiver: SocketAddr| {
        format!("tracing: {{otlpEndpoint: \"https://{receiver}\", samplingPercent: 100}}")
    };
    let options = SidecarOptions {
        extra: vec!["--ca-file".into(), ca_file.display().to_string()],
        ..SidecarOptions::default()
    };
    let config = format!("{}{}", mesh(&https_to(trusted.addr)), payments(app.addr));
    let sidecar = Sidecar::start_with(&config, options).await;

    // Over TLS to the collector whose certificate chains to --ca-file and names 127.0.0.1.
    let response = client::get(sidecar.outbound, "payments", "/over-tls")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let (_, trace, _, _) = traceparent(&header(&app.last().unwrap(), "traceparent"));
    let spans = trusted.wait_for(1, WAIT, |s| s.trace_id() == trace).await;
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/over-tls"));
    let metrics = wait_metric(&sidecar, "ficus_trace_spans_exported_total", 1.0).await;
    assert_eq!(metrics.sum("ficus_trace_spans_dropped_total", &[]), 0.0);
    assert_eq!(trusted.handshakes_failed(), 0);

    // A collector with a certificate from another CA: the handshake fails, nothing arrives,
    // the spans are dropped and counted, and requests are unaffected.
    sidecar.write_config(&format!(
        "{}{}",
        mesh(&https_to(untrusted.addr)),
        payments(app.addr)
    ));
    sidecar.wait_version(2, WAIT).await;
    for i in 0..3 {
        let response = client::get(sidecar.outbound, "payments", &format!("/untrusted/{i}"))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    wait_metric(&sidecar, "ficus_trace_spans_dropped_total", 3.0).await;
    // The collector counts the failed handshake when the sidecar's alert reaches it, which
    // may be after the sidecar counted the drop.
    let deadline = tokio::time::Instant::now() + WAIT;
    while untrusted.handshakes_failed() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar tried the untrusted collector and refused its certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        untrusted.requests().is_empty(),
        "no export reaches an untrusted collector: {:#?}",
        untrusted.spans()
    );
    assert!(
        trusted.spans().iter().all(|s| !s
            .attr("url.path")
            .unwrap_or_default()
            .starts_with("/untrusted")),
        "the old collector gets nothing after the swap"
    );
}
