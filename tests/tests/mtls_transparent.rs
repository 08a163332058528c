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
use std::time::Duration;

use ficus_tests::netns::{self, link, transparent_metrics, wait_ready, NetNs, NsGreeter, PushMesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

/// The web pod (10.77.0.1) and the payments pod (10.77.0.2) on one link, with their
/// transparent sidecars; `None` (after saying why) where network namespaces cannot be made.
async fn two_pods() -> Option<(NetNs, NetNs, PushMesh)> {
    if let Some(reason) = netns::skip_reason() {
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    let pod = NetNs::create("pod").expect("pod namespace");
    let remote = NetNs::create("remote").expect("remote namespace");
    link(&pod, &["10.77.0.1/24"], &remote, &["10.77.0.2/24"]).expect("veth pair");
    let mesh = PushMesh::start(&pod, &remote).await;
    Some((pod, remote, mesh))
}

#[tokio::test]
async fn opaque_tcp_on_an_opaque_port_crosses_mtls_between_transparent_sidecars() {
    opaque_tcp_on_an_opaque_port_crosses_mtls("STRICT").await;
}

/// Under PERMISSIVE the receiving sidecar does not wait on an opaque port for a protocol
/// to show (a server-first one would stall), yet a peer sidecar's ClientHello, there at once,
/// is still taken for mTLS rather than passed to the app.
#[tokio::test]
async fn opaque_tcp_on_an_opaque_port_crosses_mtls_under_permissive_too() {
    opaque_tcp_on_an_opaque_port_crosses_mtls("PERMISSIVE").await;
}

async fn opaque_tcp_on_an_opaque_port_crosses_mtls(mode: &str) {
    let Some((pod, remote, mesh)) = two_pods().await else {
        return;
    };
    // A server-first app on the payments pod's PostgreSQL port.
    let _app = NsGreeter::start(&remote, addr("10.77.0.2:5432"), "payments-db\n").unwrap();
    let _web = mesh.sidecar(&pod, "web");
    let _payments = mesh.sidecar(&remote, "payments");
    let config = format!(
        "\
apiVersion: ficus.dev/v1alpha1
kind: Mesh
metadata: {{name: default}}
spec: {{mtls: {{mode: {mode}}}}}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {{name: payments-db, namespace: shop}}
spec:
  protocol: tcp
  listen: \"127.0.0.1:16000\"
  endpoints: [{{address: \"10.77.0.2:5432\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}}]
"
    );
    mesh.apply(&config).await;
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

    // It crossed as mTLS: the payments sidecar counted it as a TLS (not refused plaintext)
    // connection and opened one to its app.
    let metrics = transparent_metrics(&remote).await;
    assert_eq!(metrics.sum("ficus_tls_handshake_failed_total", &[]), 0.0);
    assert!(metrics.sum("ficus_tcp_connections_opened_total", &[]) >= 1.0);
}

/// TLS-4 in transparent mode: under STRICT an inbound client that says nothing by the
/// detection timeout cannot be a peer sidecar (whose ClientHello comes at once), so it is
/// closed then, counted, and no connection to the app is opened for it (waiting for a
/// server-first app would hold one for the connection idle timeout, an hour by default).
#[tokio::test]
async fn a_silent_client_is_closed_under_strict_without_an_app_connection() {
    let Some((pod, remote, mesh)) = two_pods().await else {
        return;
    };
    // The payments app counts the connections it accepts.
    let listener = remote.listen(addr("10.77.0.2:8080")).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let app = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    // Only the payments pod has a sidecar: the caller in `pod` is not meshed.
    let _payments = mesh.sidecar(&remote, "payments");
    mesh.apply(
        "\
apiVersion: ficus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
",
    )
    .await;
    wait_ready(&remote).await;

    let mut silent = pod.connect(addr("10.77.0.2:8080")).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(netns::TIMEOUT, silent.read(&mut byte))
        .await
        .expect("the silent connection is closed, not held");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let metrics = transparent_metrics(&remote).await;
    assert_eq!(
        metrics.sum("ficus_tls_handshake_failed_total", &[("reason", "timeout")]),
        1.0
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no app connection was opened for the silent client"
    );
    app.abort();
}
