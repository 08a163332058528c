//! Admin login by client certificate on the control plane's `--https` API: real
//! `ficus-control` and `ficusctl` binaries on loopback.
//!
//! - an admin certificate from `ficus-control issue-admin-cert` for an identity listed in
//!   `--admin-identities` may apply;
//! - a certificate of the mesh CA for another identity (another admin name, or a workload
//!   identity as sidecars get) is refused with 403, no certificate and no token with 401, and
//!   nothing changes;
//! - a certificate for the admin identity from a foreign CA fails the TLS handshake;
//! - reads work without a certificate; the bearer token still works over https.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ficus_identity::ca::CertificateAuthority;
use ficus_identity::SpiffeId;
use ficus_tests::control::{ficusctl, run_control, ControlPlane, CtlOutput};

const ADMIN_TOKEN: &str = "admin-0123456789abcdef0123";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn backend(name: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"127.0.0.1:9001\"}}]\n"
    )
}

/// Runs `ficus-control issue-admin-cert` for `name` into `out`.
async fn issue(data: &Path, name: &str, out: &Path) {
    let (status, stderr) = run_control(&[
        "--data",
        &data.display().to_string(),
        "issue-admin-cert",
        "--name",
        name,
        "--out",
        &out.display().to_string(),
        "--lifetime",
        "1h",
    ])
    .await;
    assert!(status.success(), "issue-admin-cert {name}: {stderr}");
}

/// Writes a certificate and key for `id` from `ca` into `out` (as cert.pem, key.pem).
fn issue_with(ca: &CertificateAuthority, id: &str, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let id = SpiffeId::parse(id).unwrap();
    let (issued, key) = ca
        .issue_server(&id, &[], &[], Duration::from_secs(3600))
        .unwrap();
    std::fs::write(out.join("cert.pem"), issued.chain_pem).unwrap();
    std::fs::write(out.join("key.pem"), key).unwrap();
}

/// The HTTP status of `POST /v1/rollback` over TLS to `addr` (trusting `ca_pem`, verifying the
/// control plane's SPIFFE ID), presenting the certificate in `cert` if given.
async fn rollback_status(addr: std::net::SocketAddr, ca_pem: &str, cert: Option<&Path>) -> u16 {
    use ficus_identity::tls::{self, CertStore, Credentials, TrustBundle};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let store = cert.map(|dir| {
        CertStore::with_credentials(
            Credentials::from_pem_key(
                &std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
                &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
            )
            .unwrap(),
        )
    });
    let bundle = TrustBundle::from_pem(ca_pem, "cluster.local").unwrap();
    let server =
        SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/ficus-control").unwrap();
    let config = tls::client_config(store, &bundle, &server).unwrap();
    let config = tls::with_alpn(&config, tls::ALPN_HTTP1);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::post("/v1/rollback")
            .header("host", "control")
            .body(Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("an answer within 20 s")
}

/// `ficusctl --server https://… --ca-file <mesh root> [cert flags] args…`.
async fn ctl(control: &ControlPlane, https: &str, cert: Option<&Path>, args: &[&str]) -> CtlOutput {
    let ca = control.ca_file().display().to_string();
    let mut all: Vec<String> = vec!["--ca-file".into(), ca];
    if let Some(dir) = cert {
        all.extend([
            "--cert-file".into(),
            dir.join("cert.pem").display().to_string(),
            "--key-file".into(),
            dir.join("key.pem").display().to_string(),
        ]);
    }
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    ficusctl(https, &all, None).await
}

async fn version(control: &ControlPlane) -> u64 {
    control.get_json("/v1/config").await["version"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn client_certificates_of_admin_identities_may_write_over_https() {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let tokens = write(dir, "admin.tokens", &format!("{ADMIN_TOKEN}\n"));
    let token_file = write(dir, "token", &format!("{ADMIN_TOKEN}\n"));
    let https_addr = ficus_tests::free_addr();
    let data = dir.join("data");
    let control = ControlPlane::start_tls(
        Some(&data),
        &[
            "--https",
            &https_addr.to_string(),
            "--admin-identities",
            "spiffe://cluster.local/ns/ficus-system/sa/alice",
            "--admin-token-file",
            &tokens,
        ],
    )
    .await;
    let https = format!("https://{https_addr}");

    // Admin certificates come from the control host's CA files.
    let alice = dir.join("alice");
    let bob = dir.join("bob");
    issue(&data, "alice", &alice).await;
    issue(&data, "bob", &bob).await;
    let key_mode = std::fs::metadata(alice.join("key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    // A listed identity may apply.
    let config = write(dir, "a.yaml", &backend("a"));
    let before = version(&control).await;
    let applied = ctl(&control, &https, Some(&alice), &["apply", "-f", &config]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(version(&control).await, before + 1);

    // Reads need no credential.
    let read = ctl(
        &control,
        &https,
        None,
        &["get", "backend", "a", "-n", "shop"],
    )
    .await;
    assert_eq!(read.code, 0, "{read:?}");
    assert!(read.stdout.contains("127.0.0.1:9001"), "{read:?}");

    // Another identity under the same root: 403, nothing changes.
    let config_b = write(dir, "b.yaml", &backend("b"));
    let refused = ctl(&control, &https, Some(&bob), &["apply", "-f", &config_b]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("403")
            && refused
                .stderr
                .contains("spiffe://cluster.local/ns/ficus-system/sa/bob")
            && refused.stderr.contains("--admin-identities"),
        "a clear reason: {}",
        refused.stderr
    );
    // A workload certificate as sidecars get it from the mesh CA: 403 as well.
    let ca = CertificateAuthority::from_pem(
        "cluster.local",
        &std::fs::read_to_string(data.join("ca/cert.pem")).unwrap(),
        &std::fs::read_to_string(data.join("ca/key.pem")).unwrap(),
    )
    .unwrap();
    let workload = dir.join("workload");
    issue_with(&ca, "spiffe://cluster.local/ns/shop/sa/web", &workload);
    let refused = ctl(
        &control,
        &https,
        Some(&workload),
        &["apply", "-f", &config_b],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("403"), "{}", refused.stderr);

    // No certificate and no token: 401 naming both ways in.
    let refused = ctl(&control, &https, None, &["apply", "-f", &config_b]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("401")
            && refused.stderr.contains("--cert-file")
            && refused.stderr.contains("--token-file"),
        "a clear reason: {}",
        refused.stderr
    );
    assert_eq!(
        version(&control).await,
        before + 1,
        "refused writes change nothing"
    );
    // The same answers as HTTP statuses.
    let ca_pem = std::fs::read_to_string(control.ca_file()).unwrap();
    assert_eq!(rollback_status(https_addr, &ca_pem, None).await, 401);
    assert_eq!(rollback_status(https_addr, &ca_pem, Some(&bob)).await, 403);
    assert_eq!(
        rollback_status(https_addr, &ca_pem, Some(&workload)).await,
        403
    );
    assert_eq!(version(&control).await, before + 1);

    // The admin identity's certificate from a foreign CA: the handshake fails.
    let foreign = CertificateAuthority::generate("cluster.local").unwrap();
    let impostor = dir.join("impostor");
    issue_with(
        &foreign,
        "spiffe://cluster.local/ns/ficus-system/sa/alice",
        &impostor,
    );
    let refused = ctl(
        &control,
        &https,
        Some(&impostor),
        &["apply", "-f", &config_b],
    )
    .await;
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused.stderr.contains("alert"),
        "a handshake failure: {}",
        refused.stderr
    );
    assert!(
        control.log().contains("api TLS handshake failed"),
        "{}",
        control.log()
    );
    assert_eq!(version(&control).await, before + 1);

    // The bearer token still works over https, with or without a certificate.
    let applied = ctl(
        &control,
        &https,
        None,
        &["apply", "-f", &config_b, "--token-file", &token_file],
    )
    .await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(version(&control).await, before + 2);

    // ficusctl verifies the server: a client trusting another root refuses to talk.
    let other_root = write(dir, "other.pem", &foreign.root_pem());
    let distrusting = ficusctl(&https, &["--ca-file", &other_root, "history"], None).await;
    assert_eq!(distrusting.code, 3, "{distrusting:?}");

    assert!(
        control.log().contains("write refused"),
        "refusals are logged: {}",
        control.log()
    );
}

#[tokio::test]
async fn https_needs_the_ca_and_someone_who_may_write() {
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("data").display().to_string();
    let https = ficus_tests::free_addr().to_string();
    let (status, stderr) = run_control(&["--data", &data, "--insecure", "--https", &https]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    let (status, stderr) = run_control(&["--data", &data, "--https", &https]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--admin-identities"), "{stderr}");
    let (status, stderr) = run_control(&[
        "--data",
        &data,
        "--https",
        &https,
        "--admin-identities",
        "spiffe://example.org/ns/ficus-system/sa/alice",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("trust domain"), "{stderr}");
    // issue-admin-cert never creates a CA.
    let out: PathBuf = files.path().join("out");
    let (status, stderr) = run_control(&[
        "--data",
        &data,
        "issue-admin-cert",
        "--name",
        "alice",
        "--out",
        &out.display().to_string(),
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!out.exists());
}
