//! `ficus-sidecar --control` by host name (in Kubernetes: the control-plane Service's DNS name),
//! with the real `ficus-control`: `http://localhost:PORT` (an `--insecure` control plane) pushes
//! config; `https://localhost:PORT` issues certificates and mesh mTLS works (the control plane
//! still verified by its SPIFFE ID, not by the name); a named control plane that is down is
//! waited for; a name that does not resolve is retried, not fatal; malformed URLs exit 2.
//!
//! `localhost` comes from `/etc/hosts`, so no test sends a DNS query off the machine: the
//! unresolvable name is looked up inside a network namespace of its own with only a down `lo`
//! (`unshare -n`, root only).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ficus_tests::client;
use ficus_tests::control::ControlPlane;
use ficus_tests::process::{binary, run_sidecar, Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;

/// The control plane's gRPC endpoint with `localhost` for its address.
fn by_name(scheme: &str, control: &ControlPlane) -> String {
    assert!(control.grpc.ip().is_loopback());
    format!("{scheme}://localhost:{}", control.grpc.port())
}

fn routes(a: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{a}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: svc, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n  - backendRefs: [{{name: a}}]\n"
    )
}

async fn apply(control: &ControlPlane, yaml: &str) {
    let output = control.ctl_stdin(&["apply", "-f", "-"], yaml).await;
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
}

#[tokio::test]
async fn a_sidecar_gets_its_config_from_an_insecure_control_plane_named_localhost() {
    let upstream = Upstream::start("a").await;
    let control = ControlPlane::start().await;
    let options = SidecarOptions {
        node_id: Some("named-1".into()),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_push(&by_name("http", &control), options).await;
    apply(&control, &routes(upstream.addr)).await;
    sidecar.wait_ready(Duration::from_secs(20)).await;
    let config = sidecar.config().await;
    assert_eq!(config["source"], "control:v1", "{config}");
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "a"));
    let status = control.get_json("/v1/status").await;
    assert!(
        status.to_string().contains("named-1"),
        "the control plane lists the sidecar: {status}"
    );
}

/// Two sidecars that name an `https://` control plane `localhost` get certificates from it
/// (their readiness waits for one under STRICT) and talk mTLS to each other.
#[tokio::test]
async fn sidecars_get_certificates_from_a_tls_control_plane_named_localhost() {
    let files = tempfile::tempdir().unwrap();
    let tokens = files.path().join("tokens");
    std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n").unwrap();
    let control =
        ControlPlane::start_tls(None, &["--join-token-file", tokens.to_str().unwrap()]).await;
    let url = by_name("https", &control);
    let sidecar = |workload: &'static str, app: Option<std::net::SocketAddr>| {
        let token = files.path().join(workload);
        std::fs::write(&token, format!("tok-{workload}\n")).unwrap();
        Sidecar::start_push(&url, control.join_options(workload, &token, app))
    };
    let app = Upstream::start("payments-app").await;
    let server = sidecar("payments", Some(app.addr)).await;
    let web = sidecar("web", None).await;
    let mesh = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{}\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}}]\n",
        server.inbound
    );
    apply(&control, &mesh).await;
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    let response = client::get(web.outbound, "payments", "/pay").await.unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "payments-app")
    );
    let seen = app.last().unwrap();
    assert_eq!(
        seen.headers["x-ficus-peer-identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    for sidecar in [&server, &web] {
        let metrics = sidecar.metrics().await;
        assert!(
            metrics.sum("ficus_tls_certificate_expiry_timestamp_seconds", &[]) > 0.0,
            "a certificate is installed"
        );
    }
}

/// The name is resolved at every reconnect: a sidecar started while its named control plane
/// is down keeps retrying, unready, and takes config once the control plane is back.
#[tokio::test]
async fn a_sidecar_waits_for_a_named_control_plane_that_is_down() {
    let upstream = Upstream::start("a").await;
    let mut control = ControlPlane::start().await;
    control.kill_9();
    let mut sidecar =
        Sidecar::start_push(&by_name("http", &control), SidecarOptions::default()).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready = client::get(sidecar.admin, "admin", "/ready").await.unwrap();
        assert_eq!(
            ready.status, 503,
            "no config while the control plane is down"
        );
    }
    assert!(
        sidecar.wait_exit_now().is_none(),
        "the sidecar keeps running"
    );
    control.restart().await;
    apply(&control, &routes(upstream.addr)).await;
    sidecar.wait_ready(Duration::from_secs(30)).await;
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(response.status, 200);
}

/// A name that does not resolve is logged and retried with backoff; the sidecar keeps
/// running. The lookup happens in a network namespace whose only interface (`lo`) is down,
/// so it fails at once and nothing leaves the machine.
#[tokio::test]
async fn an_unresolvable_name_is_retried_and_logged_not_fatal() {
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        eprintln!("SKIPPED: needs root to create a network namespace (unshare -n)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("sidecar.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let spawned = Command::new("unshare")
        .arg("-n")
        .arg(binary("ficus-sidecar"))
        .args([
            "--control",
            "http://ficus-control.ficus-system.svc:15012",
            "--workload",
            "web",
            "--namespace",
            "shop",
            "--log-format",
            "text",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            eprintln!("SKIPPED: cannot run unshare: {error}");
            return;
        }
    };
    let attempts = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches("cannot resolve ficus-control.ficus-system.svc")
            .count()
    };
    let started = Instant::now();
    while attempts(&log_path) < 3 {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("unshare:") {
                eprintln!("SKIPPED: unshare -n failed: {log}");
                return;
            }
            panic!("the sidecar exited ({status}) on an unresolvable name:\n{log}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fewer than 3 logged resolution failures in 30 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "the sidecar keeps retrying");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("control plane unreachable; retrying"), "{log}");
}

#[tokio::test]
async fn malformed_control_urls_exit_2_with_the_reason() {
    for (url, reason) in [
        (
            "http://ficus-control.ficus-system.svc",
            "a port is required",
        ),
        ("https://user@ficus-control:15012", "user information"),
        ("http://ficus-control:15012/ficus", "expected no path"),
        ("ftp://ficus-control:15012", "expected http://host:port"),
        (
            "http://-ficus-control:15012",
            "neither an IP address nor a DNS name",
        ),
        (
            "http://ficus..control:15012",
            "neither an IP address nor a DNS name",
        ),
        ("http://ficus-control:0", "port 0"),
        ("http://ficus control:15012", "--control"),
    ] {
        let (status, stderr) = run_sidecar(&["--control", url, "--workload", "web"]).await;
        assert_eq!(status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("--control") && stderr.contains(reason),
            "{url}: expected {reason:?} in {stderr}"
        );
    }
}
