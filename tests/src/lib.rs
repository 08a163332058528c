//! Test support for the Ficus integration suite.
//!
//! # Layout
//! - [`process`]: start the real `ficus-sidecar` binary on free loopback ports, wait for it,
//!   stop it; read its admin endpoints.
//! - [`control`]: start the real `ficus-control` (restart and `kill -9` it on the same data dir)
//!   and run `ficusctl` against it.
//! - [`upstream`]: real hyper servers (HTTP/1.1 and h2c) that tests script and inspect.
//! - [`client`]: a small hyper client and a raw TCP client for exact bytes.
//! - [`h2raw`]: a raw HTTP/2 client: exact frames, hand-built HPACK blocks, frames read back.
//! - [`grpc`]: gRPC clients of the control plane's `--grpc` port, over TLS or plaintext.
//! - [`otlp`]: a real OTLP/gRPC trace receiver that records the spans sidecars export.
//! - [`netns`]: network namespaces, veth pairs and sockets inside them (interception tests).
//! - [`prom`]: a strict Prometheus text-format parser for reading `/metrics` back.
//!
//! Every wait has a deadline; every helper cleans up in `Drop`.
#![forbid(unsafe_code)]

pub mod client;
pub mod control;
pub mod grpc;
pub mod h2raw;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod prom;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};

/// Backends `a` and `b` in namespace `shop` (plain HTTP, one endpoint each) and an HTTPRoute
/// sending service `svc` to `target`; `rule_extra` (YAML lines indented for the rule, e.g. a
/// `filters:` line, or empty) is added to its one rule.
pub fn svc_config(a: SocketAddr, b: SocketAddr, target: &str, rule_extra: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{a}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: b, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{b}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: svc, namespace: shop}}\n\
         spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n  - backendRefs: [{{name: {target}}}]\n{rule_extra}"
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 always works on loopback")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `check` every 25 ms until it answers true; panics (naming `what`) once `deadline`
/// has passed without it.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
