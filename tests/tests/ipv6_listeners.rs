//! Listeners on IPv4 addresses get an IPv6 companion on the same port (`[::1]` beside
//! `127.0.0.1`, `[::]` beside `0.0.0.0`), so IPv6-only clusters are served: kubelet probes the
//! pod's IPv6 address, and sidecars reach the control plane by an IPv6 Service address. The
//! real binaries are started on `127.0.0.1:<port>` and reached over `[::1]:<port>`: the
//! sidecar's admin port, and the control plane's `--http`, `--grpc` (a push stream in
//! plaintext, a certificate over TLS) and `--webhook` (TLS). Where `::1` cannot be bound,
//! each test says so and stops.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ficus_identity::csr::WorkloadKey;
use ficus_identity::SpiffeId;
use ficus_tests::client;
use ficus_tests::control::{ficusctl, ControlPlane};
use ficus_tests::grpc::{self, control_id};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::{BodyExt, Full};

const WEB_TOKEN: &str = "join-web-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(20);

/// Whether this machine has an IPv6 loopback to test on; prints why not when it has none.
fn ipv6_loopback() -> bool {
    match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(error) => {
            eprintln!("SKIPPED: [::1] cannot be bound here ({error}); no IPv6 to test");
            false
        }
    }
}

/// `[::1]` on the port of `address` (an IPv4 listener's).
fn v6(address: SocketAddr) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, address.port()))
}

fn backend(addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{addr}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: svc, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n  - backendRefs: [{{name: a}}]\n"
    )
}

async fn status(address: SocketAddr, method: &str, path: &str, body: &'static str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    client::send(address, request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {address}: {e}"))
        .status
}

/// The admin server answers on `[::1]`: probes, and writes (a loopback peer) that change
/// what the IPv4 side sees, so it is the same server.
#[tokio::test]
async fn the_sidecar_admin_port_answers_on_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let upstream = Upstream::start("a").await;
    let mut sidecar = Sidecar::start(&backend(upstream.addr)).await;
    assert!(sidecar.admin.is_ipv4(), "started on {}", sidecar.admin);
    let admin = v6(sidecar.admin);
    assert_eq!(
        status(admin, "GET", "/live", "").await,
        200,
        "/live on {admin}"
    );
    assert_eq!(
        status(admin, "GET", "/ready", "").await,
        200,
        "/ready on {admin}"
    );
    assert_eq!(status(admin, "PUT", "/log-level", "debug").await, 200);
    let level = client::get(sidecar.admin, "admin", "/log-level")
        .await
        .unwrap();
    assert_eq!(
        level.text().trim(),
        "debug",
        "set over IPv6, read over IPv4"
    );

    assert_eq!(status(admin, "POST", "/quitquitquit", "").await, 200);
    let exit = sidecar.wait_exit(DEADLINE).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "/quitquitquit over [::1] ends the process"
    );
}

/// `--http` on `127.0.0.1`: `/live` and ficusctl over `[::1]`.
#[tokio::test]
async fn the_control_plane_api_answers_on_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let upstream = Upstream::start("a").await;
    let control = ControlPlane::start().await;
    let http = v6(control.http);
    let live = client::get(http, "control", "/live").await.expect("/live");
    assert_eq!(live.status, 200, "/live on {http}");
    let applied = ficusctl(
        &format!("http://{http}"),
        &["apply", "-f", "-"],
        Some(&backend(upstream.addr)),
    )
    .await;
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    assert_eq!(control.get_json("/v1/config").await["version"], 1);
}

/// Plaintext `--grpc` (`--insecure`) on `127.0.0.1`: a sidecar whose `--control` is
/// `http://[::1]:<port>` gets its config pushed.
#[tokio::test]
async fn a_config_is_pushed_over_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let upstream = Upstream::start("a").await;
    let control = ControlPlane::start().await;
    let applied = control
        .ctl_stdin(&["apply", "-f", "-"], &backend(upstream.addr))
        .await;
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    let options = SidecarOptions {
        node_id: Some("web-v6".into()),
        ..SidecarOptions::default()
    };
    let grpc = v6(control.grpc);
    let sidecar = Sidecar::start_push(&format!("http://{grpc}"), options).await;
    sidecar.wait_ready(DEADLINE).await;
    let answer = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(answer.text(), "a", "the pushed route serves");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

/// TLS `--grpc` on `127.0.0.1`: over `[::1]` the control plane presents its SPIFFE ID and
/// signs a certificate for a join token.
#[tokio::test]
async fn a_certificate_is_signed_over_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let tokens = write(
        files.path(),
        "join.tokens",
        &format!("{WEB_TOKEN} web shop\n"),
    );
    let control = ControlPlane::start_tls(None, &["--join-token-file", &tokens]).await;
    let ca = std::fs::read_to_string(control.ca_file()).expect("ca.pem");
    let channel = grpc::connect_tls(v6(control.grpc), &ca, &control_id("cluster.local"))
        .await
        .expect("TLS over [::1] verifying the control plane's SPIFFE ID");
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_pem(&id).unwrap();
    let signed = grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .expect("signed over [::1]");
    assert_eq!(signed.spiffe_id, id.as_str());
}

/// `--webhook` on `127.0.0.1`: over `[::1]` it answers an AdmissionReview over TLS.
#[tokio::test]
async fn the_webhook_answers_on_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    let webhook = ficus_tests::free_addr();
    let control = ControlPlane::start_tls(None, &["--webhook", &webhook.to_string()]).await;
    let ca = std::fs::read_to_string(control.ca_file()).expect("ca.pem");
    // The webhook's certificate carries the control plane's SPIFFE ID (and the Service's
    // DNS name).
    let tls = grpc::tls_stream(v6(webhook), &ca, &control_id("cluster.local"), None)
        .await
        .expect("webhook TLS over [::1]");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "uid-v6", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "operation": "CREATE", "namespace": "shop", "object": {"kind": "ConfigMap"}},
    });
    let request = Request::post("https://ficus-control.ficus-system.svc/inject")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["uid"], "uid-v6", "{answer}");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}
