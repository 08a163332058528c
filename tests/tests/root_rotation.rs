//! Root rotation over the push stream, end to end: a real `ficus-control` (CA, join tokens)
//! and two push-mode sidecars with mTLS STRICT. Editing `<data>/ca/extra-roots.pem` while
//! everything runs reaches the sidecars over their push streams (no restart, no certificate
//! renewal: the certificate lifetime is an hour), after which a certificate issued under the
//! new root is accepted by the running sidecar; an invalid file changes nothing; taking the
//! root out again takes it out of the sidecars too.

use std::path::Path;
use std::time::{Duration, Instant};

use ficus_identity::ca::CertificateAuthority;
use ficus_tests::client;
use ficus_tests::control::ControlPlane;
use ficus_tests::process::Sidecar;
use ficus_tests::upstream::Upstream;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
/// Bound on every wait for a state change (the control plane polls the file every 2 s).
const WAIT: Duration = Duration::from_secs(30);

/// A client certificate for `web` issued by `issuer`, trusting `trust_pem`, against the
/// payments sidecar's inbound port: the HTTP status, or why the exchange failed.
async fn probe(
    inbound: std::net::SocketAddr,
    issuer: &CertificateAuthority,
    trust_pem: &str,
) -> Result<u16, String> {
    client::mtls_probe(inbound, issuer, trust_pem, WEB, PAYMENTS).await
}

async fn metric(sidecar: &Sidecar, name: &str) -> f64 {
    sidecar.metrics().await.sum(name, &[])
}

async fn control_metric(control: &ControlPlane, name: &str) -> f64 {
    let response = client::get(control.http, "control", "/metrics")
        .await
        .expect("GET /metrics");
    client::Metrics::parse(&response.text()).sum(name, &[])
}

/// Waits (bounded) until every sidecar trusts `roots` roots.
async fn wait_roots(sidecars: &[&Sidecar], roots: f64, step: &str) {
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for sidecar in sidecars {
            seen.push(metric(sidecar, "ficus_tls_trust_bundle_roots").await);
        }
        if seen.iter().all(|&n| n == roots) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{step}: sidecars trust {seen:?} roots, want {roots}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces `path` the way an operator's tooling should: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[tokio::test]
async fn an_edited_extra_roots_file_reaches_running_sidecars_over_the_push_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n").unwrap();
    for workload in ["web", "payments"] {
        std::fs::write(dir.path().join(workload), format!("tok-{workload}\n")).unwrap();
    }
    // An hour's certificates: nothing renews during the test, so a new bundle can only have
    // come over the push stream.
    let mut control = ControlPlane::start_tls(
        None,
        &[
            "--join-token-file",
            tokens.to_str().unwrap(),
            "--cert-lifetime",
            "1h",
        ],
    )
    .await;
    let app = Upstream::start("payments-app").await;
    let server = control
        .start_joined(dir.path(), "payments", Some(app.addr))
        .await;
    let web = control.start_joined(dir.path(), "web", None).await;
    let mesh = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{}\", identity: \"{PAYMENTS}\"}}]\n",
        server.inbound
    );
    let output = control.ctl_stdin(&["apply", "-f", "-"], &mesh).await;
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    server.wait_ready(WAIT).await;
    web.wait_ready(WAIT).await;
    let response = client::get(web.outbound, "payments", "/").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let ca_dir = control.data_dir().join("ca");
    let old = CertificateAuthority::from_pem(
        "cluster.local",
        &std::fs::read_to_string(ca_dir.join("cert.pem")).unwrap(),
        &std::fs::read_to_string(ca_dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    let new = CertificateAuthority::generate("cluster.local").unwrap();
    let both = format!("{}{}", old.root_pem(), new.root_pem());
    let expiries = (
        metric(&server, "ficus_tls_certificate_expiry_timestamp_seconds").await,
        metric(&web, "ficus_tls_certificate_expiry_timestamp_seconds").await,
    );
    wait_roots(&[&server, &web], 1.0, "before").await;
    assert_eq!(
        control_metric(&control, "ficus_control_trust_bundle_roots").await,
        1.0
    );
    let refused = probe(server.inbound, &new, &both).await;
    assert!(refused.is_err(), "new root trusted too early: {refused:?}");

    // The new root joins the bundle while everything runs.
    let extra = ca_dir.join("extra-roots.pem");
    replace(&extra, &new.root_pem());
    wait_roots(&[&server, &web], 2.0, "new root added").await;
    assert_eq!(std::fs::read_to_string(control.ca_file()).unwrap(), both);
    assert_eq!(
        control_metric(&control, "ficus_control_trust_bundle_roots").await,
        2.0
    );
    assert!(control_metric(&control, "ficus_control_trust_bundle_pushes_total").await >= 2.0);
    assert_eq!(
        probe(server.inbound, &new, &both).await,
        Ok(200),
        "the running sidecar accepts a certificate issued under the new root"
    );
    assert_eq!(probe(server.inbound, &old, &both).await, Ok(200));
    assert_eq!(
        (
            metric(&server, "ficus_tls_certificate_expiry_timestamp_seconds").await,
            metric(&web, "ficus_tls_certificate_expiry_timestamp_seconds").await,
        ),
        expiries,
        "no certificate was renewed: the bundle came over the push stream"
    );
    let response = client::get(web.outbound, "payments", "/").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    // An invalid file changes nothing.
    replace(
        &extra,
        "-----BEGIN CERTIFICATE-----\nnot a root\n-----END CERTIFICATE-----\n",
    );
    let started = Instant::now();
    while control_metric(&control, "ficus_control_trust_bundle_reload_failures_total").await < 1.0 {
        assert!(started.elapsed() < WAIT, "the bad file was never looked at");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(control.ca_file()).unwrap(), both);
    assert_eq!(
        control_metric(&control, "ficus_control_trust_bundle_roots").await,
        2.0
    );
    wait_roots(&[&server, &web], 2.0, "bad file").await;
    assert_eq!(probe(server.inbound, &new, &both).await, Ok(200));
    let log = control.log();
    assert!(log.contains("invalid extra trusted roots refused"), "{log}");

    // Emptying the file takes the new root out again: the sidecars' certificates (old root)
    // chain to the smaller bundle, so they put it in force.
    replace(&extra, "");
    wait_roots(&[&server, &web], 1.0, "new root removed").await;
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        old.root_pem()
    );
    let refused = probe(server.inbound, &new, &both).await;
    assert!(
        refused.is_err(),
        "the removed root is still trusted: {refused:?}"
    );
    assert_eq!(probe(server.inbound, &old, &both).await, Ok(200));
    let response = client::get(web.outbound, "payments", "/").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    for sidecar in [&server, &web] {
        assert_eq!(
            metric(sidecar, "ficus_tls_trust_bundle_refused_total").await,
            0.0
        );
    }

    // A bundle the sidecars' own certificates do not chain to is not put in force. Trust the
    // new root again, switch the issuer to it (a restart: the issuer is read at start), then
    // drop the old root while the sidecars still hold old-root certificates (an hour left).
    replace(&extra, &new.root_pem());
    wait_roots(&[&server, &web], 2.0, "new root added again").await;
    std::fs::write(ca_dir.join("key.pem"), new.key_pem()).unwrap();
    std::fs::write(ca_dir.join("cert.pem"), new.cert_pem()).unwrap();
    replace(&extra, &old.root_pem());
    // Under the old issuer that file would leave only the old root; it waits for the restart.
    let started = Instant::now();
    while !control.log().contains("the issuer changed on disk") {
        assert!(
            started.elapsed() < WAIT,
            "the new issuer on disk went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(control.ca_file()).unwrap(), both);
    wait_roots(&[&server, &web], 2.0, "issuer switch pending").await;
    control.restart().await;
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        format!("{}{}", new.root_pem(), old.root_pem())
    );
    replace(&extra, "");
    for sidecar in [&server, &web] {
        let started = Instant::now();
        while metric(sidecar, "ficus_tls_trust_bundle_refused_total").await < 1.0 {
            assert!(
                started.elapsed() < WAIT,
                "the old-root sidecars never refused the new-root-only bundle"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        std::fs::read_to_string(control.ca_file()).unwrap(),
        new.root_pem()
    );
    wait_roots(&[&server, &web], 2.0, "bundle refused").await;
    assert_eq!(probe(server.inbound, &old, &both).await, Ok(200));
    assert_eq!(probe(server.inbound, &new, &both).await, Ok(200));
    let response = client::get(web.outbound, "payments", "/").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}
