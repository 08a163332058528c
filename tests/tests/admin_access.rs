//! The sidecar's admin server bound on every address (as injected into pods, so kubelet can
//! probe `/ready`): reads are answered to anyone, writes (`POST /drain`, `/quitquitquit`,
//! `PUT /log-level`) only to loopback peers, 403 to everyone else and without effect.
//!
//! A non-loopback peer is this machine calling its own non-loopback interface address (from
//! `ip -o addr show scope global`; the traffic stays on the machine). Where there is none, the
//! test says so and checks the loopback side only (the decision is unit-tested in
//! `sidecar/src/admin.rs` too).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::Full;

fn backend(addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{addr}\"}}]}}\n"
    )
}

/// This machine's global (non-loopback) addresses of one family (`-4` or `-6`).
fn global_addresses(family: &str) -> Vec<IpAddr> {
    let Ok(output) = Command::new("ip")
        .args([family, "-o", "addr", "show", "scope", "global"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .filter(|ip: &IpAddr| !ip.is_loopback())
        .collect()
}

fn request(method: &str, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn status(addr: SocketAddr, method: &str, path: &str, body: &'static str) -> u16 {
    client::send(addr, request(method, path, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
        .status
}

/// Starts a ready sidecar whose admin server listens on `wildcard` (port chosen here).
async fn sidecar_with_admin_on(wildcard: IpAddr, upstream: &Upstream) -> Option<Sidecar> {
    let port = ficus_tests::free_port();
    let admin = SocketAddr::new(wildcard, port);
    if std::net::TcpListener::bind(admin).is_err() {
        return None;
    }
    let options = SidecarOptions {
        addresses: Some((ficus_tests::free_addr(), ficus_tests::free_addr(), admin)),
        ..SidecarOptions::default()
    };
    Some(Sidecar::start_with(&backend(upstream.addr), options).await)
}

/// Every write from a non-loopback peer is refused (and does nothing); reads are answered.
async fn remote_peer_gets_reads_only(sidecar: &Sidecar, remote: SocketAddr) {
    for path in ["/live", "/ready", "/metrics", "/config", "/log-level"] {
        assert_eq!(
            status(remote, "GET", path, "").await,
            200,
            "GET {path} from {remote}"
        );
    }
    for (method, path, body) in [
        ("POST", "/drain", ""),
        ("POST", "/quitquitquit", ""),
        ("PUT", "/log-level", "trace"),
        ("POST", "/log-level", "trace"),
        ("DELETE", "/config", ""),
        ("POST", "/nowhere", ""),
    ] {
        assert_eq!(
            status(remote, method, path, body).await,
            403,
            "{method} {path} from {remote}"
        );
    }
    let local = SocketAddr::from(([127, 0, 0, 1], sidecar.admin.port()));
    assert_eq!(
        status(local, "GET", "/ready", "").await,
        200,
        "the refused /drain and /quitquitquit did not drain"
    );
    let level = client::get(local, "admin", "/log-level").await.unwrap();
    assert_ne!(
        level.text().trim(),
        "trace",
        "the refused PUT changed nothing"
    );
}

/// `0.0.0.0`: loopback writes work, writes from the interface address get 403.
#[tokio::test]
async fn admin_writes_on_0_0_0_0_are_for_loopback_peers_only() {
    let upstream = Upstream::start("a").await;
    let mut sidecar = sidecar_with_admin_on(IpAddr::from([0, 0, 0, 0]), &upstream)
        .await
        .expect("0.0.0.0 binds");
    let port = sidecar.admin.port();
    match global_addresses("-4").first() {
        None => eprintln!(
            "SKIPPED (remote half): no non-loopback IPv4 address on this machine; only \
             loopback writes are checked here"
        ),
        Some(ip) => remote_peer_gets_reads_only(&sidecar, SocketAddr::new(*ip, port)).await,
    }

    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(status(local, "PUT", "/log-level", "info").await, 200);
    assert_eq!(status(local, "POST", "/drain", "").await, 200);
    assert_eq!(status(local, "GET", "/ready", "").await, 503, "draining");
    assert_eq!(status(local, "POST", "/quitquitquit", "").await, 200);
    let exit = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "/quitquitquit from loopback ends the process"
    );
}

/// `[::]` (dual-stack): IPv4 loopback peers arrive as `::ffff:127.0.0.1` and may still write;
/// `::1` too; IPv6 and IPv4-mapped interface addresses get 403.
#[tokio::test]
async fn admin_writes_on_a_dual_stack_listener_follow_the_peer_not_the_family() {
    let upstream = Upstream::start("a").await;
    let Some(sidecar) = sidecar_with_admin_on("::".parse().unwrap(), &upstream).await else {
        eprintln!("SKIPPED: IPv6 is not available here ([::] does not bind)");
        return;
    };
    let port = sidecar.admin.port();
    for local in ["127.0.0.1", "::1"] {
        let local = SocketAddr::new(local.parse().unwrap(), port);
        assert_eq!(
            status(local, "PUT", "/log-level", "info").await,
            200,
            "PUT /log-level from {local}"
        );
    }
    let remotes: Vec<IpAddr> = global_addresses("-6")
        .into_iter()
        .filter(|ip| matches!(ip, IpAddr::V6(v6) if !v6.is_unicast_link_local()))
        .take(1)
        .chain(global_addresses("-4").into_iter().take(1))
        .collect();
    if remotes.is_empty() {
        eprintln!("SKIPPED (remote half): no non-loopback address on this machine");
    }
    for ip in remotes {
        remote_peer_gets_reads_only(&sidecar, SocketAddr::new(ip, port)).await;
    }
}
