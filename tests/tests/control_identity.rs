//! The control plane as the mesh CA and its access rules, with the real `ficus-control`:
//! certificates carry the identity of the join token, never the CSR's (RELIABILITY.md CP-3);
//! bad tokens and bad CSRs get specific gRPC statuses; `--grpc` speaks TLS with a certificate
//! under the root in `ca.pem`, which survives restarts; the CA files have private modes; and
//! with `--admin-token-file` the write API needs an admin token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ficus_identity::csr::WorkloadKey;
use ficus_identity::tls::Credentials;
use ficus_identity::SpiffeId;
use ficus_tests::client;
use ficus_tests::control::{run_control, ControlPlane};
use ficus_tests::grpc::{self, control_id};
use http::Request;
use http_body_util::Full;
use tonic::Code;

const WEB_TOKEN: &str = "join-web-0123456789abcdef";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("valid SPIFFE ID")
}

/// A control plane with TLS and one join token: `WEB_TOKEN` → workload `web` in `shop`.
async fn secure_control(files: &Path, extra: &[&str]) -> ControlPlane {
    let tokens = write(
        files,
        "join.tokens",
        &format!("# token workload namespace\n{WEB_TOKEN} web shop\n"),
    );
    let mut args = vec!["--join-token-file", &tokens];
    args.extend_from_slice(extra);
    ControlPlane::start_tls(None, &args).await
}

async fn tls_channel(control: &ControlPlane) -> grpc::Channel {
    let ca = std::fs::read_to_string(control.ca_file()).expect("ca.pem");
    grpc::connect_tls(control.grpc, &ca, &control_id("cluster.local"))
        .await
        .expect("TLS connection verifying the control plane's SPIFFE ID")
}

#[tokio::test]
async fn a_certificate_carries_the_tokens_identity_and_a_csr_for_another_is_refused() {
    let files = tempfile::tempdir().unwrap();
    let control = secure_control(files.path(), &["--cert-lifetime", "1h"]).await;
    let channel = tls_channel(&control).await;

    // The CSR asks for another workload in another namespace: no certificate.
    let key = WorkloadKey::generate().unwrap();
    let csr = key
        .csr_pem(&id("spiffe://cluster.local/ns/bank/sa/payments"))
        .unwrap();
    let refused = grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("bank/sa/payments"),
        "{refused:?}"
    );

    // Its own identity: signed.
    let csr = key
        .csr_pem(&id("spiffe://cluster.local/ns/shop/sa/web"))
        .unwrap();
    let signed = grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .expect("signed");
    assert_eq!(signed.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    let credentials = Credentials::from_pem(&signed.certificate_chain_pem, &key)
        .expect("the chain is for the CSR's key");
    assert_eq!(
        credentials.id.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web",
        "the certificate names the token's identity"
    );
    assert_eq!(
        signed.trust_bundle_pem,
        std::fs::read_to_string(control.ca_file()).unwrap()
    );
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(signed.not_after_unix as u64);
    let left = not_after
        .duration_since(SystemTime::now())
        .expect("not expired");
    assert!(
        left > Duration::from_secs(50 * 60) && left <= Duration::from_secs(3600),
        "--cert-lifetime 1h: {left:?} left"
    );
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("ficus_control_certificates_total{result=\"signed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_tokens_and_bad_csrs_get_specific_statuses() {
    let files = tempfile::tempdir().unwrap();
    let control = secure_control(files.path(), &[]).await;
    let channel = tls_channel(&control).await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key
        .csr_pem(&id("spiffe://cluster.local/ns/shop/sa/web"))
        .unwrap();

    let code = |result: Result<_, tonic::Status>| match result {
        Ok(_) => panic!("a certificate was issued"),
        Err(status) => status.code(),
    };
    assert_eq!(
        code(grpc::sign(&channel, None, &csr).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(grpc::sign(&channel, Some("join-web-0123456789abcdeX"), &csr).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(grpc::sign(&channel, Some(""), &csr).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(grpc::sign(&channel, Some(WEB_TOKEN), "not a CSR").await),
        Code::InvalidArgument
    );
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert_eq!(
        code(grpc::sign(&channel, Some(WEB_TOKEN), garbage).await),
        Code::InvalidArgument
    );
    // Over the CSR limit but within the message limit, then over the message limit.
    let padded = format!("{csr}{}", "\n".repeat(40 * 1024));
    assert_eq!(
        code(grpc::sign(&channel, Some(WEB_TOKEN), &padded).await),
        Code::InvalidArgument
    );
    let huge = "A".repeat(1024 * 1024);
    let status = grpc::sign(&channel, Some(WEB_TOKEN), &huge)
        .await
        .expect_err("a 1 MiB request is refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::InvalidArgument),
        "{status:?}"
    );
    // The connection and the service are still fine.
    grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .expect("a good request after the bad ones");
    let log = control.log();
    assert!(
        log.contains("certificate refused"),
        "refusals are logged:\n{log}"
    );
    assert!(!log.contains(WEB_TOKEN), "tokens never reach the log");
}

#[tokio::test]
async fn without_join_tokens_or_without_a_ca_nothing_is_signed() {
    let key = WorkloadKey::generate().unwrap();
    let csr = key
        .csr_pem(&id("spiffe://cluster.local/ns/shop/sa/web"))
        .unwrap();

    let control = ControlPlane::start_tls(None, &[]).await;
    let channel = tls_channel(&control).await;
    let status = grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .expect_err("no --join-token-file");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("--join-token-file"), "{status:?}");

    let insecure = ControlPlane::start().await;
    let channel = grpc::connect_plain(insecure.grpc).await.unwrap();
    let status = grpc::sign(&channel, Some(WEB_TOKEN), &csr)
        .await
        .expect_err("--insecure has no CA");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        !insecure.ca_file().exists(),
        "no CA files in --insecure mode"
    );
}

#[tokio::test]
async fn the_grpc_port_speaks_only_tls() {
    let files = tempfile::tempdir().unwrap();
    let control = secure_control(files.path(), &[]).await;
    let key = WorkloadKey::generate().unwrap();
    let csr = key
        .csr_pem(&id("spiffe://cluster.local/ns/shop/sa/web"))
        .unwrap();
    let plaintext = match grpc::connect_plain(control.grpc).await {
        Err(_) => None,
        Ok(channel) => Some(grpc::sign(&channel, Some(WEB_TOKEN), &csr).await),
    };
    assert!(
        !matches!(plaintext, Some(Ok(_))),
        "plaintext HTTP/2 must not reach the service"
    );

    // A client expecting another identity for the server refuses it.
    let ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let wrong = id("spiffe://cluster.local/ns/shop/sa/impostor");
    assert!(grpc::connect_tls(control.grpc, &ca, &wrong).await.is_err());
    // A client trusting another root refuses it too.
    let other = tempfile::tempdir().unwrap();
    let other_control = ControlPlane::start_tls(Some(&other.path().join("data")), &[]).await;
    let other_ca = std::fs::read_to_string(other_control.ca_file()).unwrap();
    assert_ne!(ca, other_ca, "each data dir has its own root");
    assert!(
        grpc::connect_tls(control.grpc, &other_ca, &control_id("cluster.local"))
            .await
            .is_err()
    );
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics.body).contains("ficus_tls_handshake_failed_total"),
        "failed handshakes are counted"
    );
}

#[tokio::test]
async fn the_ca_is_written_privately_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut control = ControlPlane::start_tls(Some(&data), &[]).await;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/key.pem")), 0o600);
    assert_eq!(mode(&data.join("ca.pem")), 0o644);
    let root = std::fs::read_to_string(control.ca_file()).unwrap();
    assert!(root.contains("BEGIN CERTIFICATE"));
    let key = std::fs::read_to_string(data.join("ca/key.pem")).unwrap();

    control.restart().await;
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        root,
        "same root after a restart"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("ca/key.pem")).unwrap(),
        key
    );
    // The new process's server certificate chains to the same root.
    tls_channel(&control).await;
}

#[tokio::test]
async fn unusable_ca_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("ca")).unwrap();
    std::fs::write(
        data.join("ca/cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(data.join("ca/key.pem"), "garbage").unwrap();
    let (data_arg, grpc, http) = (
        data.display().to_string(),
        ficus_tests::free_addr().to_string(),
        ficus_tests::free_addr().to_string(),
    );
    let args = ["--data", &data_arg, "--grpc", &grpc, "--http", &http];
    let (status, stderr) = run_control(&args).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ca/cert.pem"), "names the file: {stderr}");
    assert_eq!(
        std::fs::read_to_string(data.join("ca/key.pem")).unwrap(),
        "garbage",
        "left as found"
    );

    std::fs::remove_file(data.join("ca/cert.pem")).unwrap();
    let (status, stderr) = run_control(&args).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("key.pem exists but"), "{stderr}");

    let (status, stderr) = run_control(&[
        "--data",
        &data_arg,
        "--grpc",
        "10.0.0.1:15012",
        "--http",
        &http,
        "--insecure",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");

    let (status, stderr) = run_control(&[
        "--data",
        &data_arg,
        "--grpc",
        &grpc,
        "--http",
        &http,
        "--join-token-file",
        "/nonexistent/join.tokens",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/join.tokens"), "{stderr}");
}

#[tokio::test]
async fn the_write_api_needs_an_admin_token() {
    let files = tempfile::tempdir().unwrap();
    let admin = "admin-0123456789abcdef0123";
    let tokens = write(
        files.path(),
        "admin.tokens",
        &format!("# admins\n{admin}\n"),
    );
    let good = write(files.path(), "good.token", &format!("{admin}\n"));
    let bad = write(files.path(), "bad.token", "admin-0123456789abcdef0124\n");
    let config = write(
        files.path(),
        "shop.yaml",
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  endpoints: [{address: \"127.0.0.1:9001\"}]\n",
    );
    let control = ControlPlane::start_with(None, &["--admin-token-file", &tokens]).await;

    let refused = control.ctl(&["apply", "-f", &config]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("401") && refused.stderr.contains("--token-file"),
        "a clear reason: {}",
        refused.stderr
    );
    let refused = control
        .ctl(&["apply", "-f", &config, "--token-file", &bad])
        .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("not valid"), "{}", refused.stderr);
    for command in [
        &["diff", "-f", &config][..],
        &["rollback"],
        &["delete", "Backend", "web", "-n", "shop"],
    ] {
        let output = control.ctl(command).await;
        assert!(output.stderr.contains("401"), "{command:?}: {output:?}");
    }
    // Reads stay open.
    let output = control.ctl(&["get"]).await;
    assert_eq!(output.code, 0, "{output:?}");

    let applied = control
        .ctl(&["apply", "-f", &config, "--token-file", &good])
        .await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stdout.starts_with("applied version 1"),
        "{applied:?}"
    );

    // Escaping the path does not get around the check.
    let request = Request::post("/v1/%61pply")
        .header("host", "control")
        .body(Full::new(Bytes::from_static(b"kind: x\n")))
        .unwrap();
    let response = client::send(control.http, request).await.unwrap();
    assert_eq!(response.status, 401);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("Unauthorized"));

    let log = control.log();
    assert!(log.contains("write refused"), "{log}");
    assert!(
        log.contains("peer=127.0.0.1"),
        "logged with the peer: {log}"
    );
    assert!(!log.contains(admin), "tokens never reach the log");
}

/// RELIABILITY.md promise 3: a peer that connects and then says nothing, before or after the
/// TLS handshake, is closed by the handshake / preface deadline (10 s each).
#[tokio::test]
async fn silent_peers_are_closed() {
    let files = tempfile::tempdir().unwrap();
    let control = secure_control(files.path(), &[]).await;
    let ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let deadline = Duration::from_secs(20);

    let before_tls = async {
        let mut tcp = tokio::net::TcpStream::connect(control.grpc).await.unwrap();
        let outcome = client::read_until_close(&mut tcp, deadline).await;
        assert!(
            outcome.closed,
            "closed before the TLS handshake: {outcome:?}"
        );
    };
    let after_tls = async {
        let mut tls = grpc::tls_stream(control.grpc, &ca, &control_id("cluster.local"), None)
            .await
            .expect("TLS handshake");
        // The server's SETTINGS may arrive; then the connection must close.
        let closed = async {
            let mut buffer = [0u8; 256];
            loop {
                match tokio::io::AsyncReadExt::read(&mut tls, &mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(deadline, closed)
            .await
            .expect("closed within the preface deadline");
    };
    tokio::join!(before_tls, after_tls);
    let metrics = client::get(control.http, "control", "/metrics")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("ficus_tls_handshake_failed_total{reason=\"timeout\"} 1"),
        "the handshake timeout is counted"
    );
}

/// A sidecar's credentials grant nothing on the HTTP API: its join token is not an admin
/// token, and the API does not speak TLS, so its certificate cannot even be presented.
#[tokio::test]
async fn sidecar_credentials_cannot_change_the_mesh() {
    let files = tempfile::tempdir().unwrap();
    let admin_tokens = write(files.path(), "admin.tokens", "admin-0123456789abcdef0123\n");
    let control = secure_control(files.path(), &["--admin-token-file", &admin_tokens]).await;
    let ca = std::fs::read_to_string(control.ca_file()).unwrap();
    let channel = tls_channel(&control).await;
    let key = WorkloadKey::generate().unwrap();
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let signed = grpc::sign(&channel, Some(WEB_TOKEN), &key.csr_pem(&web).unwrap())
        .await
        .expect("signed");

    let apply = |authorization: Option<String>| {
        let mut request = Request::post("/v1/apply")
            .header("host", "control")
            .header("x-ficus-source-name", "x.yaml");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request
            .body(Full::new(Bytes::from_static(b"apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {}\n")))
            .unwrap()
    };
    let response = client::send(control.http, apply(Some(format!("Bearer {WEB_TOKEN}"))))
        .await
        .unwrap();
    assert_eq!(response.status, 401, "a join token is not an admin token");

    let store = ficus_identity::tls::CertStore::new();
    store.install(Credentials::from_pem(&signed.certificate_chain_pem, &key).unwrap());
    let tls = grpc::tls_stream(control.http, &ca, &control_id("cluster.local"), Some(store)).await;
    assert!(
        tls.is_err(),
        "the API does not accept TLS, so no certificate is ever looked at"
    );

    assert_eq!(
        control.get_json("/v1/config").await["version"],
        0,
        "nothing applied"
    );
}

#[tokio::test]
async fn push_streams_need_the_token_of_the_workload_they_name() {
    let files = tempfile::tempdir().unwrap();
    let control = secure_control(files.path(), &[]).await;
    let channel = tls_channel(&control).await;
    let code = |result: Result<(), tonic::Status>| result.err().map(|s| s.code());
    assert_eq!(
        code(grpc::subscribe(&channel, None, "web", "shop").await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(grpc::subscribe(&channel, Some("join-web-0123456789abcdeX"), "web", "shop").await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(grpc::subscribe(&channel, Some(WEB_TOKEN), "payments", "shop").await),
        Some(Code::PermissionDenied),
        "a token for web cannot read another workload's config"
    );
    assert_eq!(
        code(grpc::subscribe(&channel, Some(WEB_TOKEN), "web", "shop").await),
        None
    );
}

/// Removing a join token from the file ends the push streams it opened (the file is re-read
/// every 5 s, and streams check their token as often), with `UNAUTHENTICATED`; a stream of
/// a token still listed stays.
#[tokio::test]
async fn a_revoked_join_token_loses_its_push_streams() {
    const API_TOKEN: &str = "join-api-0123456789abcdef";
    let files = tempfile::tempdir().unwrap();
    let tokens = write(
        files.path(),
        "join.tokens",
        &format!("{WEB_TOKEN} web shop\n{API_TOKEN} api shop\n"),
    );
    let control = ControlPlane::start_tls(None, &["--join-token-file", &tokens]).await;
    let channel = tls_channel(&control).await;
    let mut web = grpc::open_subscription(&channel, Some(WEB_TOKEN), "web", "shop")
        .await
        .expect("subscribed");
    let mut api = grpc::open_subscription(&channel, Some(API_TOKEN), "api", "shop")
        .await
        .expect("subscribed");
    write(
        files.path(),
        "join.tokens",
        &format!("{API_TOKEN} api shop\n"),
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match web.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the revoked token's stream ended");
    assert_eq!(ended, Some(Code::Unauthenticated));
    // The other stream stays open past its next check (it may carry the trust bundle).
    let still = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match api.message().await {
                Ok(Some(_)) => continue,
                ended => return ended,
            }
        }
    })
    .await;
    assert!(still.is_err(), "the listed token's stream stays: {still:?}");
    assert_eq!(
        grpc::subscribe(&channel, Some(WEB_TOKEN), "web", "shop")
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::Unauthenticated),
        "and it cannot open another"
    );
}

#[tokio::test]
async fn a_mesh_in_another_trust_domain_than_the_ca_is_refused_at_apply() {
    let files = tempfile::tempdir().unwrap();
    let mesh = |domain: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{trustDomain: {domain}, mtls: {{mode: STRICT}}}}\n"
        )
    };
    let foreign = write(files.path(), "mesh.yaml", &mesh("example.org"));
    let control = secure_control(files.path(), &["--trust-domain", "corp.test"]).await;

    for command in ["apply", "diff"] {
        let refused = control.ctl(&[command, "-f", &foreign]).await;
        assert_ne!(refused.code, 0, "{command}: {refused:?}");
        let text = format!("{}{}", refused.stdout, refused.stderr);
        for part in [
            "mesh.yaml",
            "Mesh default",
            "spec.trustDomain",
            "\"example.org\"",
            "\"corp.test\"",
        ] {
            assert!(
                text.contains(part),
                "{command}: {part} missing from: {text}"
            );
        }
    }
    let version = control.get_json("/v1/config").await["version"].clone();

    // The CA's own trust domain, or none (then it is the CA's), is accepted.
    let own = write(files.path(), "own.yaml", &mesh("corp.test"));
    let output = control.ctl(&["apply", "-f", &own]).await;
    assert_eq!(output.code, 0, "{output:?}");
    let silent = write(
        files.path(),
        "silent.yaml",
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    let output = control.ctl(&["apply", "-f", &silent]).await;
    assert_eq!(output.code, 0, "{output:?}");
    assert_ne!(
        control.get_json("/v1/config").await["version"],
        version,
        "the refused applies stored nothing; these did"
    );

    // Without a CA (--insecure) there is nothing to compare with.
    let insecure = ControlPlane::start().await;
    let output = insecure.ctl(&["apply", "-f", &foreign]).await;
    assert_eq!(output.code, 0, "{output:?}");
}
