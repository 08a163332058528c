//! The app's kubelet probes relayed by the sidecar's admin server (`--app-probes`, set by
//! injection as `FICUS_APP_PROBES`): `GET /app-health/<container>/<probe>` on the admin port
//! sends the app's original probe to it on loopback and answers with its outcome.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(10);

/// A loopback app whose every answer has the status in `status` (changed by the test).
async fn switchable_app(status: Arc<AtomicU16>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the app");
    let address = listener.local_addr().expect("app address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let code = status.load(Ordering::Relaxed);
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from_static(b"app")));
                        *response.status_mut() =
                            StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, task)
}

/// `GET path` on the admin port within [`DEADLINE`]: the status.
async fn probe(admin: SocketAddr, path: &str) -> u16 {
    let request = Request::get(path)
        .header("host", "10.0.0.7:15000")
        .header("user-agent", "kube-probe/1.31")
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(DEADLINE, client::send(admin, request))
        .await
        .expect("admin answered in time")
        .expect("admin answered")
        .status
}

#[tokio::test]
async fn app_probes_are_relayed_to_the_app_on_loopback() {
    let status = Arc::new(AtomicU16::new(200));
    let (app, _app_task) = switchable_app(Arc::clone(&status)).await;
    let recorder = Upstream::start("recorder").await;
    // A port nothing listens on: the discard port (a released port could be taken by another
    // test meanwhile).
    let closed = 9;
    let probes = serde_json::json!({
        "/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": app.port(),
            "scheme": "HTTP"}, "timeoutSeconds": 1},
        "/app-health/web/livez": {"tcpSocket": {"port": app.port()}},
        "/app-health/web/startupz": {"httpGet": {"path": "/ready?full=1",
            "port": recorder.addr.port(), "httpHeaders": [{"name": "x-probe", "value": "on"}]}},
        "/app-health/slow/readyz": {"httpGet": {"path": "/delay/5000",
            "port": recorder.addr.port()}, "timeoutSeconds": 1},
        "/app-health/gone/readyz": {"httpGet": {"path": "/", "port": closed}},
        "/app-health/gone/livez": {"tcpSocket": {"port": closed}},
    });
    let sidecar = Sidecar::start_with(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec: {mtls: {mode: PERMISSIVE}}\n",
        SidecarOptions {
            extra: vec!["--app-probes".into(), probes.to_string()],
            ..SidecarOptions::default()
        },
    )
    .await;

    assert_eq!(probe(sidecar.admin, "/app-health/web/readyz").await, 200);
    assert_eq!(probe(sidecar.admin, "/app-health/web/livez").await, 200);
    status.store(500, Ordering::Relaxed);
    assert_eq!(
        probe(sidecar.admin, "/app-health/web/readyz").await,
        500,
        "the app's failure, with its status"
    );
    status.store(302, Ordering::Relaxed);
    assert_eq!(
        probe(sidecar.admin, "/app-health/web/readyz").await,
        302,
        "200-399 is success for kubelet"
    );

    // The original path, query and headers reach the app; kubelet's user agent is passed on.
    assert_eq!(probe(sidecar.admin, "/app-health/web/startupz").await, 200);
    let seen = recorder.last().expect("the app got the probe");
    assert_eq!(seen.uri, "/ready?full=1");
    assert_eq!(seen.headers["x-probe"], "on");
    assert_eq!(seen.headers["user-agent"], "kube-probe/1.31");
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", recorder.addr.port())
    );

    // Unreachable or too slow: 503, within the probe's timeout.
    assert_eq!(probe(sidecar.admin, "/app-health/gone/readyz").await, 503);
    assert_eq!(probe(sidecar.admin, "/app-health/gone/livez").await, 503);
    assert_eq!(probe(sidecar.admin, "/app-health/slow/readyz").await, 503);

    // Nothing but the configured paths: no way to make the sidecar fetch anything else.
    let count = recorder.count();
    for path in [
        "/app-health/web",
        "/app-health/other/readyz",
        "/app-health/web/readyz/../../x",
        "/app-health/http://127.0.0.1/",
    ] {
        assert_eq!(probe(sidecar.admin, path).await, 404, "{path}");
    }
    assert_eq!(recorder.count(), count, "the app saw none of those");
    let post = Request::post("/app-health/web/readyz")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = tokio::time::timeout(DEADLINE, client::send(sidecar.admin, post))
        .await
        .expect("in time")
        .expect("answered");
    assert_eq!(refused.status, 405);
}

#[tokio::test]
async fn a_bad_app_probe_list_is_a_bad_flag() {
    let child = std::process::Command::new(ficus_tests::process::binary("ficus-sidecar"))
        .args(["--config", "/nonexistent", "--app-probes"])
        .arg(r#"{"/app-health/web/readyz": {"httpGet": {"port": 80, "host": "example.com"}}}"#)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ficus-sidecar");
    let pid = child.id();
    let output = match tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    {
        Ok(joined) => joined.expect("wait task").expect("output"),
        Err(_) => {
            // Our own child: stop it before failing.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("ficus-sidecar did not exit on a bad flag within {DEADLINE:?}");
        }
    };
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--app-probes"), "{stderr}");
    assert!(stderr.contains("unknown field `host`"), "{stderr}");
}
