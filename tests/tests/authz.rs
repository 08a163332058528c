//! Inbound AuthorizationPolicy without identities (file mode): method and path rules, DENY
//! precedence, default-deny under ALLOW, and path normalization (RELIABILITY HTTP1-6). Rules
//! on peer identities are tested over mTLS in `mtls.rs`.

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::Full;

fn config(policies: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: client, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"127.0.0.1:9\"}}]}}\n---\n{policies}"
    )
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  targetRef: {{kind: Backend, name: client}}\n  action: {action}\n  rules:\n{rules}---\n"
    )
}

async fn status(sidecar: &Sidecar, method: &str, path: &str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "client.shop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client::send(sidecar.inbound, request).await.unwrap().status
}

#[tokio::test]
async fn allow_and_deny_on_methods_and_paths() {
    let app = Upstream::start("app").await;
    let policies = policy(
        "reads",
        "ALLOW",
        "  - to: [{methods: [GET], paths: [\"/api/*\"]}]\n",
    ) + &policy(
        "no-secrets",
        "DENY",
        "  - to: [{paths: [\"/api/secrets*\"]}]\n",
    );
    let options = SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&config(&policies), options).await;
    assert_eq!(status(&sidecar, "GET", "/api/items").await, 200);
    assert_eq!(
        status(&sidecar, "POST", "/api/items").await,
        403,
        "method not allowed by ALLOW"
    );
    assert_eq!(
        status(&sidecar, "GET", "/other").await,
        403,
        "unmatched under an ALLOW policy"
    );
    assert_eq!(
        status(&sidecar, "GET", "/api/secrets/1").await,
        403,
        "DENY wins over ALLOW"
    );
    assert_eq!(app.count(), 1, "only the allowed request reached the app");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_authz_denied_total", &[]), 3.0);
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "UAEX")]),
        3.0
    );
}

#[tokio::test]
async fn ambiguous_paths_never_reach_a_protected_path() {
    let app = Upstream::start("app").await;
    let policies = policy("no-admin", "DENY", "  - to: [{paths: [\"/admin*\"]}]\n")
        + &policy(
            "no-secret-reads",
            "DENY",
            "  - to: [{methods: [GET], paths: [\"/secret\"]}]\n",
        );
    let options = SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&config(&policies), options).await;
    // An exact path and a method: what Tomcat, Spring or Django would serve as `GET /secret`
    // is denied (or refused) too.
    for (method, path) in [
        ("GET", "/secret"),
        ("GET", "/secret;jsessionid=1"),
        ("GET", "/secret%3Bx"),
        ("HEAD", "/secret"),
        ("get", "/secret"),
        // `s` encoded twice: `%73` once decoded.
        ("GET", "/%%37%33ecret"),
    ] {
        let got = status(&sidecar, method, path).await;
        assert!(got == 403 || got == 400, "{method} {path}: {got}");
    }
    for path in [
        "/admin",
        "/admin/x",
        "/a/../admin",
        "/%2e%2e/admin",
        "/a%2Fb",
        "//admin",
        "/admin;x",
        "/./admin",
        // Encoded letters are the same path to the app (RFC 3986 §6.2.2.2), so to the policy.
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        // Tomcat drops `;` parameters before it resolves dot segments: this is `/admin`.
        "/public/..;/admin",
    ] {
        let got = status(&sidecar, "GET", path).await;
        assert!(got == 403 || got == 400, "{path}: {got}");
    }
    // A fragment in the target (`http::Uri` would drop it and leave `/admin`), raw since no
    // client sends one: 400, for any path.
    for path in ["/admin#x", "/public#/admin", "/public#"] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: client.shop\r\nConnection: close\r\n\r\n");
        let deadline = std::time::Duration::from_secs(10);
        let outcome = client::raw_exchange(sidecar.inbound, request.as_bytes(), deadline).await;
        assert_eq!(outcome.status(), Some(400), "{path}");
    }
    assert_eq!(app.count(), 0, "nothing reached the app: {:?}", app.last());
    assert_eq!(status(&sidecar, "GET", "/public").await, 200);
    // The app gets the one spelling the policy saw.
    assert_eq!(status(&sidecar, "GET", "/p%75blic?q=%61").await, 200);
    let last = app.last().unwrap();
    assert_eq!(last.uri, "/public?q=%61");
}
