//! Opaque TCP across mTLS between transparent sidecars, in network namespaces (RELIABILITY
//! harness: veth + iptables REDIRECT inside namespaces the test creates and removes).
//!
//! Two "pods" (`pod`: the web client, `remote`: payments at 10.77.0.2) each run a transparent
//! sidecar as uid 1337 with a certificate from a real `ficus-control` on the host (reached
//! through a relay on each namespace's loopback). The web app dials the payments pod's
//! PostgreSQL port (5432, opaque by default): the web sidecar carries it over mTLS (ALPN
//! `ficus-tcp`) because the `tcp` Backend's endpoint names payments' identity, and the payments
//! sidecar, under STRICT, terminates it although the port is opaque and hands the bytes to the
//! app. Runs only as root (CI does); elsewhere the test says why it skips.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ficus_tests::control::ControlPlane;
use ficus_tests::netns::{self, http_get, link, NetNs, NsGreeter, Relay};
use ficus_tests::process::{binary, Sidecar, SidecarOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROXY_UID: &str = "1337";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

/// Installs the rules in `ns` and starts a transparent push-mode sidecar there as uid 1337.
fn start_transparent(ns: &NetNs, options: SidecarOptions) -> Sidecar {
    let output = netns::run(
        ns.command(binary("ficus-sidecar").to_str().expect("utf-8 path"))
            .args(["redirect", "--proxy-uid", PROXY_UID]),
    )
    .expect("run ficus-sidecar redirect");
    assert!(
        output.status.success(),
        "redirect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut prefix = ns.exec_prefix();
    prefix.extend(
        [
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            "--",
        ]
        .map(str::to_owned),
    );
    let mut extra = vec!["--transparent".to_owned()];
    extra.extend(options.extra);
    let options = SidecarOptions {
        addresses: Some((
            addr("127.0.0.1:15001"),
            addr("0.0.0.0:15006"),
            addr("127.0.0.1:15000"),
        )),
        // Nothing listens there: inbound goes to the original port.
        app: Some(addr("127.0.0.1:9")),
        extra,
        prefix,
        ..options
    };
    Sidecar::spawn("", options)
}

async fn wait_ready(ns: &NetNs) {
    let started = Instant::now();
    loop {
        if let Ok(ready) = http_get(ns, addr("127.0.0.1:15000"), "admin", "/ready", &[]).await {
            if ready.status == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "transparent sidecar in {} not ready within 30 s",
            ns.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(ns: &NetNs, name: &str, labels: &[(&str, &str)]) -> f64 {
    let fetched = http_get(ns, addr("127.0.0.1:15000"), "admin", "/metrics", &[])
        .await
        .expect("GET /metrics in the namespace");
    ficus_tests::client::Metrics::parse(&fetched.body).sum(name, labels)
}

#[tokio::test]
async fn opaque_tcp_on_an_opaque_port_crosses_mtls_between_transparent_sidecars() {
    if let Some(reason) = netns::skip_reason() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let tokens = files.path().join("tokens");
    std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n").unwrap();
    let control =
        ControlPlane::start_tls(None, &["--join-token-file", tokens.to_str().unwrap()]).await;
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(files.path(), readable).unwrap();
    }
    let ca = files.path().join("ca.pem");
    std::fs::copy(control.ca_file(), &ca).unwrap();
    for workload in ["web", "payments"] {
        std::fs::write(files.path().join(workload), format!("tok-{workload}\n")).unwrap();
    }
    let pod = NetNs::create("pod").expect("pod namespace");
    let remote = NetNs::create("remote").expect("remote namespace");
    link(&pod, &["10.77.0.1/24"], &remote, &["10.77.0.2/24"]).expect("veth pair");
    let grpc = addr("127.0.0.1:15012");
    let _relays = (
        Relay::start(&pod, grpc, control.grpc).unwrap(),
        Relay::start(&remote, grpc, control.grpc).unwrap(),
    );
    // A server-first app on the payments pod's PostgreSQL port.
    let _app = NsGreeter::start(&remote, addr("10.77.0.2:5432"), "payments-db\n").unwrap();
    let sidecar = |ns: &NetNs, workload: &str| {
        start_transparent(
            ns,
            SidecarOptions {
                control: Some(format!("https://{grpc}")),
                workload: Some(workload.to_owned()),
                node_id: Some(format!("{workload}-1")),
                extra: vec![
                    "--token-file".into(),
                    files.path().join(workload).display().to_string(),
                    "--ca-file".into(),
                    ca.display().to_string(),
                ],
                ..SidecarOptions::default()
            },
        )
    };
    let _web = sidecar(&pod, "web");
    let _payments = sidecar(&remote, "payments");
    let config = "\
apiVersion: ficus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: payments-db, namespace: shop}
spec:
  protocol: tcp
  listen: \"127.0.0.1:16000\"
  endpoints: [{address: \"10.77.0.2:5432\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}]
";
    let applied = control.ctl_stdin(&["apply", "-f", "-"], config).await;
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    wait_ready(&pod).await;
    wait_ready(&remote).await;

    // The web app dials the payments pod as if there were no mesh.
    let mut stream = pod.connect(addr("10.77.0.2:5432")).await.unwrap();
    let mut greeting = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut greeting))
        .await
        .expect("greeted within 10 s")
        .unwrap();
    assert_eq!(&greeting, b"payments-db\n");
    stream.write_all(b"SELECT 1").await.unwrap();
    let mut echoed = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"SELECT 1");
    drop(stream);

    // It crossed as mTLS: the STRICT payments sidecar counted it as a TLS (not refused
    // plaintext) connection and opened one to its app.
    assert_eq!(
        metric(&remote, "ficus_tls_handshake_failed_total", &[]).await,
        0.0
    );
    assert!(metric(&remote, "ficus_tcp_connections_opened_total", &[]).await >= 1.0);
}
