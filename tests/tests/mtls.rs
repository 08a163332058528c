//! Mutual TLS between sidecars, end to end: real `ficus-control` as the CA (join tokens,
//! short certificate lifetimes), push-mode sidecars on both sides, a real app.
//! Identity reaches the app; STRICT refuses plaintext, foreign certificates, no certificate
//! and TLS 1.2; authorization by identity; rotation under load with zero failures; a root
//! rotation reaching running sidecars (bundle sent with each certificate); the
//! control plane going away does not stop traffic.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ficus_tests::client::{self, Load};
use ficus_tests::control::ControlPlane;
use ficus_tests::process::Sidecar;
use ficus_tests::upstream::{TcpEcho, Upstream, WebSocketEcho};
use tokio::io::AsyncWriteExt;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

/// A control plane with join tokens for `web`, `payments` and `other`.
async fn control(lifetime: &str) -> (ControlPlane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "tok-web web shop\ntok-payments payments shop\ntok-other other shop\n",
    )
    .unwrap();
    let control = ControlPlane::start_tls(
        None,
        &[
            "--join-token-file",
            tokens.to_str().unwrap(),
            "--cert-lifetime",
            lifetime,
        ],
    )
    .await;
    for workload in ["web", "payments", "other"] {
        std::fs::write(dir.path().join(workload), format!("tok-{workload}\n")).unwrap();
    }
    (control, dir)
}

async fn sidecar(
    control: &ControlPlane,
    tokens: &Path,
    workload: &str,
    app: Option<std::net::SocketAddr>,
) -> Sidecar {
    sidecar_with(control, tokens, workload, app, &[]).await
}

async fn sidecar_with(
    control: &ControlPlane,
    tokens: &Path,
    workload: &str,
    app: Option<std::net::SocketAddr>,
    more: &[&str],
) -> Sidecar {
    let mut options = control.join_options(workload, &tokens.join(workload), app);
    options.extra.extend(more.iter().map(|s| (*s).to_owned()));
    Sidecar::start_push(&control.grpc_tls_url(), options).await
}

fn mesh(mode: &str, payments_inbound: std::net::SocketAddr, policies: &str) -> String {
    mesh_with(mode, "", payments_inbound, policies)
}

/// [`mesh`] with more fields in the Mesh's `spec` (`extra`: `, field: value`).
fn mesh_with(
    mode: &str,
    extra: &str,
    payments_inbound: std::net::SocketAddr,
    policies: &str,
) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: {{mode: {mode}}}{extra}}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{payments_inbound}\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}}]\n---\n{policies}"
    )
}

async fn apply(control: &ControlPlane, yaml: &str) {
    let output = control.ctl_stdin(&["apply", "-f", "-"], yaml).await;
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
}

/// Starts control, an app behind a `payments` sidecar, and a `web` client sidecar, with mTLS
/// STRICT; returns when both are ready (config and certificate).
async fn pair(
    lifetime: &str,
    policies: &str,
) -> (ControlPlane, tempfile::TempDir, Upstream, Sidecar, Sidecar) {
    let (control, tokens) = control(lifetime).await;
    let app = Upstream::start("payments-app").await;
    let server = sidecar(&control, tokens.path(), "payments", Some(app.addr)).await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    apply(&control, &mesh("STRICT", server.inbound, policies)).await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;
    (control, tokens, app, server, web)
}

#[tokio::test]
async fn app_to_app_crosses_mtls_and_the_server_app_sees_the_client_identity() {
    let (_control, _tokens, app, server, web) = pair("1h", "").await;
    let response = client::get(web.outbound, "payments", "/api/payments/1")
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "payments-app")
    );
    let seen = app.last().unwrap();
    assert_eq!(seen.headers["x-ficus-peer-identity"], WEB);
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "HTTP/1.1 from the app, HTTP/2 across the mesh, HTTP/1.1 again"
    );
    let metrics = server.metrics().await;
    assert!(metrics.sum("ficus_tls_certificate_expiry_timestamp_seconds", &[]) > 0.0);
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        1.0
    );

    // An h2c caller of the same `protocol: http` Backend: the far sidecar speaks HTTP/1.1 to
    // the app, as the Backend says, not the caller's HTTP/2. A made-up client certificate
    // header (Envoy's XFCC, which apps moved from Istio trust) never reaches the app.
    let mut h2 = client::H2Client::connect(web.outbound).await.unwrap();
    let request = http::Request::get("http://payments/api/payments/2")
        .header(
            "x-forwarded-client-cert",
            "By=x;URI=spiffe://cluster.local/ns/shop/sa/admin",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = h2.send(request).await.unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "payments-app")
    );
    let seen = app.last().unwrap();
    assert_eq!(seen.uri, "/api/payments/2");
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the Backend's protocol"
    );
    assert!(
        !seen.headers.contains_key("x-forwarded-client-cert"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers["x-ficus-peer-identity"], WEB);
}

/// The calling sidecar tells the receiving one how long it waits (`x-ficus-timeout-ms`), so the
/// receiving sidecar's own `upstreamResponseTimeout` (1 s here) no longer cuts a call that the
/// caller's route allows 6 s, or no limit; the app never sees the header.
#[tokio::test]
async fn the_receiving_sidecar_waits_as_long_as_the_calling_route() {
    let (control, tokens) = control("1h").await;
    let app = Upstream::start("payments-app").await;
    let server = sidecar(&control, tokens.path(), "payments", Some(app.addr)).await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    let routes: String = [
        ("both", "{request: 6s, backendRequest: 6s}"),
        ("long", "{request: 6s}"),
        ("unbounded", "{request: 0s}"),
        ("short", "{request: 1s}"),
    ]
    .iter()
    .map(|(service, timeouts)| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {service}, namespace: shop}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: {service}}}]\n  \
             rules: [{{backendRefs: [{{name: payments}}], timeouts: {timeouts}}}]\n---\n"
        )
    })
    .collect();
    let config = mesh("STRICT", server.inbound, &routes).replace(
        "spec: {mtls: {mode: STRICT}}",
        "spec: {mtls: {mode: STRICT}, proxy: {upstreamResponseTimeout: 1s}}",
    );
    assert!(config.contains("upstreamResponseTimeout"));
    apply(&control, &config).await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    let outbound = web.outbound;
    // Answered after 3 s: 2 s past the 1 s timeouts, 3 s within the 6 s ones.
    let get = |host: &'static str| async move {
        let response = client::get(outbound, host, "/delay/3000").await;
        (host, response.unwrap().status)
    };
    // `payments` itself has no HTTPRoute: the Mesh default (1 s) is its wait on both sides.
    let statuses = tokio::join!(
        get("both"),
        get("long"),
        get("unbounded"),
        get("short"),
        get("payments")
    );
    assert_eq!(
        statuses,
        (
            ("both", 200),
            ("long", 200),
            ("unbounded", 200),
            ("short", 504),
            ("payments", 504)
        )
    );
    let seen = app.last().unwrap();
    assert!(
        !seen.headers.contains_key("x-ficus-timeout-ms"),
        "the app got the mesh's header: {:?}",
        seen.headers
    );
    let metrics = server.metrics().await;
    let inbound_ok = [("direction", "inbound"), ("response_code", "200")];
    assert_eq!(metrics.sum("ficus_requests_total", &inbound_ok), 3.0);
}

#[tokio::test]
async fn strict_refuses_plaintext_foreign_and_missing_certificates_and_tls12() {
    let (control, _tokens, app, server, _web) = pair("1h", "").await;
    // Plaintext HTTP: closed without an answer.
    let outcome = client::raw_exchange(
        server.inbound,
        b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        outcome.closed && outcome.bytes.is_empty(),
        "plaintext got {:?}",
        String::from_utf8_lossy(&outcome.bytes)
    );

    // A certificate from another CA (same trust domain and identity shape).
    let foreign = ficus_identity::ca::CertificateAuthority::generate("cluster.local").unwrap();
    let key = ficus_identity::csr::WorkloadKey::generate().unwrap();
    let id = ficus_identity::SpiffeId::parse(WEB).unwrap();
    let issued = foreign
        .sign_workload_csr(&key.csr_pem(&id).unwrap(), &id, Duration::from_secs(3600))
        .unwrap();
    let store = ficus_identity::tls::CertStore::new();
    store.install(ficus_identity::tls::Credentials::from_pem(&issued.chain_pem, &key).unwrap());
    let mesh_ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let bundle = ficus_identity::tls::TrustBundle::from_pem(&mesh_ca, "cluster.local").unwrap();
    let expected =
        ficus_identity::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
    let config = ficus_identity::tls::client_config(Some(store), &bundle, &expected).unwrap();
    let tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(server.inbound.ip().into());
    let connected = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await;
    // TLS 1.3: the client may finish before the server's alert arrives; the first read fails.
    if let Ok(mut stream) = connected {
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n")
            .await;
        let outcome = client::read_until_close(stream.get_mut().0, Duration::from_secs(5)).await;
        assert!(outcome.closed, "a foreign certificate must not get through");
    }

    // RELIABILITY TLS-1: counted as an unknown CA.
    let unknown_ca = [("reason", "unknown_ca")];
    let deadline = Duration::from_secs(10);
    server
        .wait_metric(
            "ficus_tls_handshake_failed_total",
            &unknown_ca,
            1.0,
            deadline,
        )
        .await;

    // openssl: no client certificate (TLS 1.3), and TLS 1.2; each refused with its own alert
    // and counted under its own reason (TLS-4).
    for (flags, alert, reason) in [
        (
            vec!["-tls1_3"],
            "alert certificate required",
            "certificate_required",
        ),
        (
            vec!["-tls1_2"],
            "alert protocol version",
            "protocol_version",
        ),
    ] {
        let (target, ca) = (server.inbound.to_string(), control.ca_file());
        // Send a request and wait for the server to close: in TLS 1.3 the server's verdict on
        // the client certificate arrives after the client considers the handshake done.
        let run = tokio::task::spawn_blocking(move || {
            let command = format!(
                "printf 'GET / HTTP/1.1\\r\\nHost: payments\\r\\n\\r\\n' | timeout 10 openssl s_client -connect {target} -CAfile {} {} -ign_eof",
                ca.display(),
                flags.join(" ")
            );
            std::process::Command::new("bash")
                .args(["-c", &command])
                .stdin(Stdio::null())
                .output()
        });
        let output = tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains(alert),
            "openssl was not refused with {alert:?}:\n{text}"
        );
        let labels = [("reason", reason)];
        server
            .wait_metric("ficus_tls_handshake_failed_total", &labels, 1.0, deadline)
            .await;
    }
    assert_eq!(app.count(), 0, "nothing reached the app");
    let metrics = server.metrics().await;
    assert!(
        metrics.sum("ficus_tls_handshake_failed_total", &[]) >= 3.0,
        "{:?}",
        metrics
            .samples
            .iter()
            .filter(|s| s.0.contains("tls"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn authorization_by_peer_identity() {
    let policy = "apiVersion: ficus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: payments, namespace: shop}\n\
                  spec:\n  targetRef: {kind: Backend, name: payments}\n  action: ALLOW\n  rules:\n  - from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/web\"]}]\n";
    let (control, tokens, app, _server, web) = pair("1h", policy).await;
    let other = sidecar(&control, tokens.path(), "other", None).await;
    other.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        client::get(web.outbound, "payments", "/")
            .await
            .unwrap()
            .status,
        200
    );
    let denied = client::get(other.outbound, "payments", "/").await.unwrap();
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.header("x-ficus-error"), "denied");
    assert_eq!(app.count(), 1);
}

/// RELIABILITY TLS-2, outbound: the endpoint presents a valid chain of the mesh but another
/// SPIFFE ID than its Backend names. The handshake is aborted, the caller gets 503 (a connect
/// failure: nothing was sent), and the app never sees the request.
#[tokio::test]
async fn an_endpoint_presenting_another_identity_gets_nothing_and_the_caller_503() {
    let (control, tokens) = control("1h").await;
    let app = Upstream::start("payments-app").await;
    let server = sidecar(&control, tokens.path(), "payments", Some(app.addr)).await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    // The Backend expects `other`; the endpoint is the `payments` sidecar.
    let config = mesh("STRICT", server.inbound, "").replace("sa/payments\"", "sa/other\"");
    assert!(config.contains("sa/other"), "{config}");
    apply(&control, &config).await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;
    let request = http::Request::post("/charge")
        .header("host", "payments")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = client::send(web.outbound, request).await.unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("x-ficus-error"), "upstream-connect-failure");
    assert_eq!(app.count(), 0, "nothing reached the app");
    let metrics = web.metrics().await;
    let tls_failures = metrics.sum("ficus_upstream_failures_total", &[("reason", "tls")]);
    assert!(tls_failures >= 1.0, "{tls_failures}");
}

#[tokio::test]
async fn rotation_under_load_fails_nothing_and_outlives_the_control_plane() {
    let (mut control, _tokens, _app, server, web) = pair("20s", "").await;
    let load = Load::start([web.outbound; 4], "payments", Duration::from_millis(5));
    // 20 s certificates renew every ~14 s: watch both sidecars rotate at least twice. (At the
    // kill a certificate may be ~15 s old; the 5 s left outlast the 2 s below and the stop.)
    let mut expiries = std::collections::BTreeSet::new();
    let started = Instant::now();
    while expiries.len() < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(80),
            "rotations seen: {expiries:?}"
        );
        for sidecar in [&server, &web] {
            let expiry = sidecar
                .metrics()
                .await
                .sum("ficus_tls_certificate_expiry_timestamp_seconds", &[]);
            expiries.insert((sidecar.admin.port(), expiry as u64));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The control plane goes away: certificates still valid for a few seconds keep serving.
    control.kill_9();
    let before = load.ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    assert!(ok > before, "requests flowed with the control plane down");
    assert_eq!(failed, 0, "requests failed across rotations");
}

/// A TLS client presenting a `web` certificate issued by `issuer`, trusting `trust_pem`, speaking
/// HTTP/1.1 straight to a sidecar's inbound. `Ok(status)` when the handshake and the request
/// went through; `Err(text)` when either side refused.
async fn probe(
    inbound: std::net::SocketAddr,
    issuer: &ficus_identity::ca::CertificateAuthority,
    trust_pem: &str,
) -> Result<u16, String> {
    client::mtls_probe(inbound, issuer, trust_pem, WEB, PAYMENTS).await
}

/// The expiry each sidecar presents (its admin port → expiry seconds).
async fn expiry(sidecar: &Sidecar) -> u64 {
    sidecar
        .metrics()
        .await
        .sum("ficus_tls_certificate_expiry_timestamp_seconds", &[]) as u64
}

/// Waits until each sidecar has installed two certificates it did not have when called: at
/// least one of them was issued (with its trust bundle) by the control plane running now.
async fn renewed_twice(sidecars: &[&Sidecar]) {
    let mut seen: Vec<std::collections::BTreeSet<u64>> = Vec::new();
    for sidecar in sidecars {
        seen.push([expiry(sidecar).await].into());
    }
    let started = Instant::now();
    while seen.iter().any(|s| s.len() < 3) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "renewals seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (sidecar, seen) in sidecars.iter().zip(&mut seen) {
            seen.insert(expiry(sidecar).await);
        }
    }
}

/// A new sidecar for `other` (new handshakes with the running payments sidecar, under the roots
/// of the moment) reaches payments.
async fn fresh_client_reaches_payments(control: &ControlPlane, tokens: &Path, step: &str) {
    let other = sidecar(control, tokens, "other", None).await;
    other.wait_ready(Duration::from_secs(30)).await;
    let response = client::get(other.outbound, "payments", "/").await.unwrap();
    assert_eq!(response.status, 200, "{step}: {}", response.text());
}

#[tokio::test]
async fn root_rotation_reaches_running_sidecars_and_traffic_never_stops() {
    use ficus_identity::ca::CertificateAuthority;
    let (mut control, tokens, _app, server, web) = pair("10s", "").await;
    let ca_dir = control.data_dir().join("ca");
    let old_root = std::fs::read_to_string(ca_dir.join("cert.pem")).unwrap();
    let old = CertificateAuthority::from_pem(
        "cluster.local",
        &old_root,
        &std::fs::read_to_string(ca_dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    let new = CertificateAuthority::generate("cluster.local").unwrap();
    let both = format!("{}{}", old.root_pem(), new.root_pem());

    // Load through web → payments for the whole rotation, on connections made before it.
    let load = Load::start([web.outbound; 2], "payments", Duration::from_millis(10));

    // Before: the payments sidecar refuses a client under the new root.
    let refused = probe(server.inbound, &new, &both).await;
    assert!(refused.is_err(), "new root trusted too early: {refused:?}");
    assert_eq!(probe(server.inbound, &old, &both).await, Ok(200));

    // Step 1: the new root joins the bundle; the issuer stays.
    std::fs::write(ca_dir.join("extra-roots.pem"), new.root_pem()).unwrap();
    control.restart().await;
    assert_eq!(std::fs::read_to_string(control.ca_file()).unwrap(), both);
    renewed_twice(&[&server, &web]).await;
    assert_eq!(
        probe(server.inbound, &new, &both).await,
        Ok(200),
        "the running sidecar trusts the new root"
    );
    let presented = probe(server.inbound, &old, &old.root_pem()).await;
    assert_eq!(presented, Ok(200), "still issued under the old root");
    fresh_client_reaches_payments(&control, tokens.path(), "step 1").await;

    // Step 2: issue under the new root; the old one stays trusted.
    std::fs::write(ca_dir.join("key.pem"), new.key_pem()).unwrap();
    std::fs::write(ca_dir.join("cert.pem"), new.cert_pem()).unwrap();
    std::fs::write(ca_dir.join("extra-roots.pem"), old.root_pem()).unwrap();
    control.restart().await;
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        format!("{}{}", new.root_pem(), old.root_pem())
    );
    // A sidecar under the new root meets payments still under the old one (and the control
    // plane's own certificate is now under the new root).
    fresh_client_reaches_payments(&control, tokens.path(), "step 2, mixed roots").await;
    renewed_twice(&[&server, &web]).await;
    let presented = probe(server.inbound, &new, &new.root_pem()).await;
    assert_eq!(presented, Ok(200), "payments now presents a new-root chain");
    assert_eq!(probe(server.inbound, &old, &both).await, Ok(200));

    // Step 3: the old root leaves the bundle.
    std::fs::remove_file(ca_dir.join("extra-roots.pem")).unwrap();
    control.restart().await;
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        new.root_pem()
    );
    renewed_twice(&[&server, &web]).await;
    let refused = probe(server.inbound, &old, &both).await;
    assert!(
        refused.is_err(),
        "the old root is still trusted: {refused:?}"
    );
    assert_eq!(probe(server.inbound, &new, &new.root_pem()).await, Ok(200));
    fresh_client_reaches_payments(&control, tokens.path(), "step 3").await;

    let (ok, failed) = load.stop().await;
    assert!(ok > 100);
    assert_eq!(failed, 0, "requests failed across the root rotation");
}

#[tokio::test]
async fn websocket_crosses_mtls_and_authorization_applies_to_the_upgrade() {
    let policy = "apiVersion: ficus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: payments, namespace: shop}\n\
                  spec:\n  targetRef: {kind: Backend, name: payments}\n  action: ALLOW\n  rules:\n  - from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/web\"]}]\n";
    let (control, tokens) = control("1h").await;
    let app = WebSocketEcho::start().await;
    let server = sidecar(&control, tokens.path(), "payments", Some(app.addr)).await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    let other = sidecar(&control, tokens.path(), "other", None).await;
    apply(&control, &mesh("STRICT", server.inbound, policy)).await;
    for sidecar in [&server, &web, &other] {
        sidecar.wait_ready(Duration::from_secs(30)).await;
    }

    let stream = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async("ws://payments.shop/socket", stream),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 101);
    // Plain requests keep using the pooled HTTP/2 connection at the same time.
    let plain = client::get(web.outbound, "payments", "/").await.unwrap();
    assert_ne!(plain.status, 101);
    for text in ["hello", "across", "mtls"] {
        client::ws_echo(&mut ws, text).await;
    }
    ws.close(None).await.unwrap();

    // The switch was authorized by the verified identity: `other` is refused before any 101.
    let stream = tokio::net::TcpStream::connect(other.outbound)
        .await
        .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async("ws://payments.shop/socket", stream),
    )
    .await
    .unwrap();
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.sum("ficus_tls_handshake_failed_total", &[]),
        0.0,
        "every connection to payments was mTLS"
    );
}

#[tokio::test]
async fn opaque_tcp_to_an_endpoint_with_identity_crosses_mtls() {
    let (control, tokens) = control("1h").await;
    let app = TcpEcho::start("payments-tcp:").await;
    // The tcp Backend lives in namespace `data`, which the payments sidecar does not reach:
    // only the web sidecar binds its `listen` address.
    let server = sidecar_with(
        &control,
        tokens.path(),
        "payments",
        Some(app.addr),
        &["--reach", "shop"],
    )
    .await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    let listen = ficus_tests::free_addr();
    let tcp_backend = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: ledger, namespace: data}}\n\
         spec:\n  protocol: tcp\n  listen: \"{listen}\"\n  endpoints: [{{address: \"{}\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}}]\n",
        server.inbound
    );
    // The app's first line would read as an HTTP request line ("ping " is a token and a
    // space): the receiving sidecar carries it as opaque TCP because its port is opaque by
    // config. Without that it would be served as HTTP (ALPN `ficus-tcp` does not decide).
    let opaque = format!(", proxy: {{opaquePorts: [{}]}}", app.addr.port());
    apply(
        &control,
        &mesh_with("STRICT", &opaque, server.inbound, &tcp_backend),
    )
    .await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    let mut connection = None;
    let started = Instant::now();
    while connection.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{listen} never listened"
        );
        connection = tokio::net::TcpStream::connect(listen).await.ok();
        if connection.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut connection = connection.unwrap();
    connection.write_all(b"ping over mtls").await.unwrap();
    let expected = b"payments-tcp:ping over mtls";
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut connection, &mut got),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&got[..], &expected[..]);
    drop(connection);

    let metrics = server.metrics().await;
    assert_eq!(
        metrics.sum("ficus_tls_handshake_failed_total", &[]),
        0.0,
        "the STRICT inbound took the connection as mTLS"
    );
    // STRICT: the same bytes in plaintext are refused.
    let outcome =
        client::raw_exchange(server.inbound, b"ping in plaintext", Duration::from_secs(5)).await;
    assert!(outcome.closed && outcome.bytes.is_empty(), "{outcome:?}");
}

/// A peer that picks ALPN `ficus-tcp` (opaque TCP) and then speaks HTTP does not get past the
/// receiving sidecar's HTTP layer: the app sees the verified identity, never the one the
/// peer wrote into its request, and the path checks still apply.
#[tokio::test]
async fn http_sent_as_opaque_tcp_still_goes_through_the_http_layer() {
    use ficus_identity::tls::{self, CertStore, Credentials, TrustBundle};
    let (control, tokens, app, server, _web) = pair("1h", "").await;
    // A certificate for `web`, as its sidecar would get one.
    let ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let channel = ficus_tests::grpc::connect_tls(
        control.grpc,
        &ca,
        &ficus_tests::grpc::control_id("cluster.local"),
    )
    .await
    .unwrap();
    let key = ficus_identity::csr::WorkloadKey::generate().unwrap();
    let id = ficus_identity::SpiffeId::parse(WEB).unwrap();
    let token = std::fs::read_to_string(tokens.path().join("web")).unwrap();
    let signed = ficus_tests::grpc::sign(&channel, Some(token.trim()), &key.csr_pem(&id).unwrap())
        .await
        .unwrap();
    let store = CertStore::new();
    store.install(Credentials::from_pem(&signed.certificate_chain_pem, &key).unwrap());
    let bundle = TrustBundle::from_pem(&ca, "cluster.local").unwrap();
    let expected = ficus_identity::SpiffeId::parse(PAYMENTS).unwrap();
    let config = tls::client_config(Some(store), &bundle, &expected).unwrap();
    let config = tls::with_alpn(&config, tls::ALPN_OPAQUE_TCP);

    let forged = "spiffe://cluster.local/ns/shop/sa/admin";
    for (request, status) in [
        (
            format!("GET /ledger HTTP/1.1\r\nHost: payments\r\nx-ficus-peer-identity: {forged}\r\nConnection: close\r\n\r\n"),
            "200",
        ),
        // Dot segments are refused, not handed to the app to resolve; a lower-case method is
        // still a request line to a server.
        (
            "get /a/../admin HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n".to_owned(),
            "400",
        ),
        // However many empty lines come first (servers skip them all).
        (
            format!("{}GET /ledger HTTP/1.1\r\nHost: payments\r\nx-ficus-peer-identity: {forged}\r\nConnection: close\r\n\r\n", "\r\n".repeat(200)),
            "200",
        ),
    ] {
        let tcp = tokio::net::TcpStream::connect(server.inbound).await.unwrap();
        let name = rustls_pki_types::ServerName::IpAddress(server.inbound.ip().into());
        let mut stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(tls::ALPN_OPAQUE_TCP));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
        )
        .await
        .expect("the sidecar answers and closes");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?} got {answer:?}"
        );
        if status == "200" {
            let seen = app.last().unwrap();
            assert_eq!(seen.headers["x-ficus-peer-identity"], WEB, "{:?}", seen.headers);
        }
    }
    assert_eq!(app.count(), 2, "the two /ledger requests reached the app");
    let seen = app.last().unwrap();
    assert_eq!(seen.uri, "/ledger");
    assert_eq!(
        seen.headers["x-ficus-peer-identity"], WEB,
        "{:?}",
        seen.headers
    );
}

/// A certificate that expires while the control plane is down fails every handshake, so the
/// sidecar is not ready with it; once the control plane is back it is renewed within seconds
/// (retries are capped at 5 s once the certificate is expiring) and the sidecar is ready again.
#[tokio::test]
async fn an_expired_certificate_makes_the_sidecar_unready_until_it_is_renewed() {
    let (mut control, _tokens, _app, server, _web) = pair("10s", "").await;
    let ready = |sidecar: &Sidecar| {
        let admin = sidecar.admin;
        async move {
            client::get(admin, "admin", "/ready")
                .await
                .is_ok_and(|response| response.status == 200)
        }
    };
    assert!(ready(&server).await);
    control.kill_9();
    ficus_tests::until("unready after expiry", Duration::from_secs(30), || async {
        !ready(&server).await
    })
    .await;
    control.restart().await;
    ficus_tests::until("ready again", Duration::from_secs(30), || ready(&server)).await;
}

/// `--token-file` is read again each time the token is presented: a Kubernetes projected
/// token expires within the hour and kubelet writes its successor into the same file. Here
/// the control plane stops accepting the first token and the file gets a new one; the next
/// renewal presents the new one and succeeds.
#[tokio::test]
async fn a_rewritten_token_file_is_presented_at_the_next_renewal() {
    let (control, tokens) = control("10s").await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    apply(&control, &mesh("PERMISSIVE", web.inbound, "")).await;
    web.wait_ready(Duration::from_secs(30)).await;
    let expiry = || async {
        web.metrics()
            .await
            .sum("ficus_tls_certificate_expiry_timestamp_seconds", &[])
    };
    let first = expiry().await;
    assert!(first > 0.0);
    std::fs::write(
        tokens.path().join("tokens"),
        "tok-web-2 web shop\ntok-payments payments shop\ntok-other other shop\n",
    )
    .unwrap();
    std::fs::write(tokens.path().join("web"), "tok-web-2\n").unwrap();
    // Twice: the control plane re-reads its token file every 5 s and renewal comes every
    // ~7 s, so the second renewal is certainly one the first token no longer passes.
    let mut seen = first;
    for renewal in ["first", "second"] {
        ficus_tests::until(renewal, Duration::from_secs(40), || async {
            expiry().await > seen
        })
        .await;
        seen = expiry().await;
    }
}

/// A mirror marks its copy by its own endpoint, not the primary's: a copy of a plaintext
/// request to a meshed (mTLS) shadow says it began as HTTP/1.1, so the shadow's sidecar
/// gives its HTTP/1.1 app HTTP/1.1; a copy of a meshed request to a plain shadow carries no
/// mesh marker.
#[tokio::test]
async fn mirrors_mark_the_original_protocol_for_their_own_endpoint() {
    let (control, tokens) = control("1h").await;
    let (api, shadow) = (
        Upstream::start("api").await,
        Upstream::start("shadow").await,
    );
    let shadow_app = Upstream::start("payments-app").await;
    let server = sidecar(&control, tokens.path(), "payments", Some(shadow_app.addr)).await;
    let web = sidecar(&control, tokens.path(), "web", None).await;
    let mirror = |to: &str| {
        format!("filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: {to}}}}}}}]")
    };
    let routes = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: shadow, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  \
         - backendRefs: [{{name: api}}]\n    {}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: payments}}]\n  rules:\n  \
         - backendRefs: [{{name: payments}}]\n    {}\n",
        api.addr,
        shadow.addr,
        mirror("payments"),
        mirror("shadow"),
    );
    apply(&control, &mesh("STRICT", server.inbound, &routes)).await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    // Plaintext primary, meshed shadow.
    let response = client::get(web.outbound, "api.shop", "/").await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "api"));
    // Meshed primary, plaintext shadow.
    let response = client::get(web.outbound, "payments.shop", "/")
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "payments-app")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow_app.count() < 2 || shadow.count() < 1 {
        assert!(
            Instant::now() < deadline,
            "copies: {} at the meshed shadow, {} at the plain one",
            shadow_app.count(),
            shadow.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = shadow_app.received.lock().unwrap().clone();
    let copy = seen
        .iter()
        .find(|r| {
            r.uri.contains("api.shop-shadow")
                || r.headers
                    .get("host")
                    .is_some_and(|h| h == "api.shop-shadow")
        })
        .unwrap_or_else(|| panic!("no copy among {seen:?}"));
    assert_eq!(
        copy.version,
        http::Version::HTTP_11,
        "HTTP/1.1 from the app, HTTP/2 across the mesh, HTTP/1.1 again at the shadow"
    );
    assert_eq!(copy.headers["x-ficus-peer-identity"], WEB);
    let plain = shadow.last().unwrap();
    assert!(
        !plain.headers.contains_key("x-ficus-orig-proto"),
        "{:?}",
        plain.headers
    );
}

/// RELIABILITY CP-1, at start: with its control plane down, a sidecar is not ready and its
/// inbound listener refuses TLS (it has no certificate to offer), counted as such.
#[tokio::test]
async fn a_sidecar_started_without_its_control_plane_is_unready_and_refuses_tls() {
    let (mut control, tokens) = control("1h").await;
    let url = control.grpc_tls_url();
    let options = control.join_options("payments", &tokens.path().join("payments"), None);
    control.kill_9();
    let sidecar = Sidecar::start_push(&url, options).await;
    let ready = client::get(sidecar.admin, "admin", "/ready").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());

    let mesh_ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let bundle = ficus_identity::tls::TrustBundle::from_pem(&mesh_ca, "cluster.local").unwrap();
    let expected = ficus_identity::SpiffeId::parse(PAYMENTS).unwrap();
    let config = ficus_identity::tls::client_config(None, &bundle, &expected).unwrap();
    let tcp = tokio::net::TcpStream::connect(sidecar.inbound)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(sidecar.inbound.ip().into());
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let handshake = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("answered within the deadline");
    assert!(handshake.is_err(), "no TLS before a certificate");
    let labels = [("reason", "no_certificate")];
    let deadline = Duration::from_secs(10);
    sidecar
        .wait_metric("ficus_tls_handshake_failed_total", &labels, 1.0, deadline)
        .await;
}
