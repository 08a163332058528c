//! `benchcerts` and `tlsload` against a real mTLS server on loopback: ficus-identity's server
//! config (TLS 1.3, client certificates required and checked against the mesh root) in front
//! of a hyper HTTP/1.1 service, which is what a server sidecar's inbound listener does.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use ficus_identity::tls::{self, CertStore, ClientAuth, Credentials, TrustBundle};
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const SERVER: &str = "spiffe://cluster.local/ns/bench/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/bench/sa/client";

fn benchcerts(ca_dir: &Path, out: &Path, issue: &[&str]) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_benchcerts"));
    command.arg("--ca-dir").arg(ca_dir).arg("--out").arg(out);
    for spec in issue {
        command.args(["--issue", spec]);
    }
    let output = command.output().expect("benchcerts runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("benchcerts prints JSON")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn benchcerts_writes_a_private_root_and_svids_and_reuses_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, out) = (dir.path().join("data/ca"), dir.path().join("certs"));
    let report = benchcerts(&ca, &out, &[&format!("server={SERVER}")]);
    assert_eq!(report["issued"]["server"]["id"], SERVER, "{report}");
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("key.pem")), 0o600);
    assert_eq!(mode(&out.join("server-key.pem")), 0o600);
    // The certificate is an X.509-SVID for exactly that identity, and the key is its key.
    let credentials = Credentials::from_pem_key(
        &read(&out.join("server.pem")),
        &read(&out.join("server-key.pem")),
    )
    .expect("an SVID and its key");
    let id = tls::check_svid(&credentials.chain()[0]).unwrap();
    assert_eq!(id.as_str(), SERVER);
    // A second run issues under the same root instead of replacing it.
    let root = read(&out.join("ca.pem"));
    benchcerts(&ca, &out, &[&format!("client={CLIENT}")]);
    assert_eq!(read(&out.join("ca.pem")), root);
    // Bad input is refused with a message, not a panic.
    let output = Command::new(env!("CARGO_BIN_EXE_benchcerts"))
        .arg("--ca-dir")
        .arg(&ca)
        .arg("--out")
        .arg(&out)
        .args(["--issue", "x=spiffe://other.domain/ns/a/sa/b"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).is_empty());
}

/// An mTLS server on 127.0.0.1 requiring client certificates from the root in `certs`,
/// answering every request 200.
async fn mtls_server(certs: &Path) -> std::net::SocketAddr {
    let credentials = Credentials::from_pem_key(
        &read(&certs.join("server.pem")),
        &read(&certs.join("server-key.pem")),
    )
    .unwrap();
    let bundle = TrustBundle::from_pem(&read(&certs.join("ca.pem")), "cluster.local").unwrap();
    let config = tls::server_config(
        CertStore::with_credentials(credentials),
        &bundle,
        ClientAuth::Required,
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn tlsload(target: std::net::SocketAddr, certs: &Path, client: &str) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlsload"));
    command
        .args(["--target", &target.to_string(), "--server-id", SERVER])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{client}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{client}-key.pem")))
        .args([
            "--concurrency",
            "2",
            "--warmup",
            "100ms",
            "--duration",
            "700ms",
        ]);
    // The server runs on this test's runtime: wait for the tool off it.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("tlsload runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("tlsload prints JSON")
}

#[tokio::test]
async fn tlsload_completes_mtls_connections_and_a_foreign_certificate_fails() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    benchcerts(
        &dir.path().join("ca"),
        &certs,
        &[&format!("server={SERVER}"), &format!("client={CLIENT}")],
    );
    // A client certificate with the right shape from another root.
    let foreign = dir.path().join("foreign");
    benchcerts(
        &dir.path().join("foreign-ca"),
        &foreign,
        &[&format!("client={CLIENT}")],
    );
    for file in ["client.pem", "client-key.pem"] {
        std::fs::copy(foreign.join(file), certs.join(format!("foreign-{file}"))).unwrap();
    }
    let server = mtls_server(&certs).await;

    let report = tlsload(server, &certs, "client").await;
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["handshakes_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors_io"], 0, "{report}");
    assert_eq!(report["errors_timeout"], 0, "{report}");

    let report = tlsload(server, &certs, "foreign-client").await;
    assert_eq!(report["ok"], 0, "{report}");
    assert!(report["errors_io"].as_u64().unwrap() > 0, "{report}");
    assert!(report["first_error"].is_string(), "{report}");
}
