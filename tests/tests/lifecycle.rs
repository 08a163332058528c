//! Lifecycle: admin endpoints, SIGTERM drain with requests in flight, `/drain`,
//! `/quitquitquit`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ficus_tests::client::{self, H1Client, H2Client};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::Full;

fn backend(addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: slow, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{addr}\"}}]}}\n"
    )
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let upstream = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("20s".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;

    let mut in_flight = Vec::new();
    for _ in 0..5 {
        let outbound = sidecar.outbound;
        in_flight.push(tokio::spawn(async move {
            let mut client = H1Client::connect(outbound).await.unwrap();
            client.get("slow", "/delay/1500").await
        }));
    }
    let outbound = sidecar.outbound;
    let h2_in_flight = tokio::spawn(async move {
        let mut client = H2Client::connect(outbound).await.unwrap();
        let request = Request::get("http://slow/delay/1500")
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.send(request).await
    });
    wait_for(|| upstream.count() == 6, "6 requests upstream").await;

    sidecar.terminate();
    let started = Instant::now();
    loop {
        let ready = client::get(sidecar.admin, "admin", "/ready").await.unwrap();
        if ready.status == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/ready never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Readiness turns 503 first; the listener closes right after.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "new connections still accepted while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for request in in_flight {
        let response = request
            .await
            .unwrap()
            .expect("in-flight HTTP/1.1 request completes");
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), "close");
    }
    let response = h2_in_flight
        .await
        .unwrap()
        .expect("in-flight HTTP/2 request completes");
    assert_eq!(response.status, 200);

    let status = sidecar.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let upstream = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("300ms".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let outbound = sidecar.outbound;
    let stuck = tokio::spawn(async move { client::get(outbound, "slow", "/delay/60000").await });
    wait_for(|| upstream.count() == 1, "request upstream").await;
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        stuck.await.unwrap().is_err(),
        "the cut request fails visibly, not as a success"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let upstream = Upstream::start("slow").await;
    let sidecar = Sidecar::start(&backend(upstream.addr)).await;
    let admin = sidecar.admin;
    assert_eq!(
        client::get(admin, "admin", "/live").await.unwrap().status,
        200
    );
    assert_eq!(
        client::get(admin, "admin", "/ready").await.unwrap().status,
        200
    );
    assert_eq!(
        client::get(admin, "admin", "/nope").await.unwrap().status,
        404
    );
    assert_eq!(
        client::get(admin, "admin", "/drain").await.unwrap().status,
        405,
        "drain is POST"
    );

    let config = sidecar.config().await;
    assert_eq!(config["version"], 1);
    assert!(config["source"].as_str().unwrap().starts_with("file:"));
    assert!(config["applied_at"].as_f64().unwrap() > 0.0);
    assert!(config["last_error"].is_null());
    assert_eq!(config["documents"][0]["kind"], "Backend");

    let put = |filter: &'static str| {
        Request::put("/log-level")
            .header("host", "admin")
            .body(Full::new(Bytes::from(filter)))
            .unwrap()
    };
    assert_eq!(
        client::send(admin, put("debug,hyper=info"))
            .await
            .unwrap()
            .status,
        200
    );
    let level = client::get(admin, "admin", "/log-level").await.unwrap();
    assert_eq!(level.text().trim(), "debug,hyper=info");
    assert_eq!(client::send(admin, put("=[bad")).await.unwrap().status, 400);

    client::get(sidecar.outbound, "slow", "/").await.unwrap();
    let metrics = sidecar.metrics().await;
    for name in [
        "ficus_requests_total",
        "ficus_request_duration_seconds_bucket",
        "ficus_config_version",
        "ficus_config_updates_total",
        "ficus_tcp_connections_opened_total",
    ] {
        assert!(
            metrics.samples.iter().any(|(n, _, _)| n == name),
            "{name} exported"
        );
    }
    let labels = [
        ("direction", "outbound"),
        ("destination_service", "shop/slow"),
        ("response_code", "200"),
    ];
    assert_eq!(metrics.sum("ficus_requests_total", &labels), 1.0);
}

#[tokio::test]
async fn drain_endpoint_then_quitquitquit() {
    let upstream = Upstream::start("slow").await;
    let mut sidecar = Sidecar::start(&backend(upstream.addr)).await;
    let post = |path: &'static str| {
        Request::post(path)
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        client::send(sidecar.admin, post("/drain"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client::get(sidecar.admin, "admin", "/ready")
            .await
            .unwrap()
            .status,
        503
    );
    let started = Instant::now();
    while tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "listener still accepting after /drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        client::get(sidecar.admin, "admin", "/live")
            .await
            .unwrap()
            .status,
        200,
        "still alive"
    );
    assert_eq!(
        client::send(sidecar.admin, post("/quitquitquit"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn admin_answers_while_the_data_plane_is_saturated() {
    let upstream = Upstream::start("fast").await;
    let options = SidecarOptions {
        workers: Some(1),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..32 {
        let (outbound, stop) = (sidecar.outbound, std::sync::Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let Ok(mut client) = H1Client::connect(outbound).await else {
                return;
            };
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || client.get("slow", "/").await.is_err()
                {
                    break;
                }
            }
        }));
    }
    // Each admin call has the client's deadline (10 s); all must answer while the load runs.
    for _ in 0..20 {
        let response = client::get(sidecar.admin, "admin", "/ready")
            .await
            .expect("admin answers under load");
        assert_eq!(response.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
}

/// RELIABILITY RES-5: with a small fd limit, a connection flood makes `accept` fail with
/// EMFILE; the sidecar logs, backs off without spinning, keeps serving the connections it has
/// and recovers once the flood is gone.
#[tokio::test]
async fn fd_exhaustion_backs_off_and_recovers() {
    let upstream = Upstream::start("fast").await;
    let options = SidecarOptions {
        workers: Some(1),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let pid = sidecar.pid().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());

    let mut kept = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(kept.get("slow", "/").await.unwrap().status, 200);

    // Hold far more connections than the limit; the kernel queues what the sidecar can't accept.
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(sidecar.outbound),
        )
        .await
        {
            flood.push(stream);
        }
    }
    let cpu_before = cpu_ticks(&pid);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cpu_spent = cpu_ticks(&pid) - cpu_before;
    // 100 ticks = one second of one CPU; a spinning accept loop would burn nearly all of it.
    assert!(
        cpu_spent < 50,
        "accept loop spins on EMFILE: {cpu_spent} ticks in 1 s"
    );
    assert_eq!(
        kept.get("slow", "/").await.unwrap().status,
        200,
        "live connections still served"
    );

    drop(flood);
    let started = Instant::now();
    loop {
        if let Ok(response) = client::get(sidecar.outbound, "slow", "/").await {
            assert_eq!(response.status, 200);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered from EMFILE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sidecar.wait_exit_now().is_none(), "still running");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
