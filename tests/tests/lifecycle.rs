//! Lifecycle: admin endpoints; SIGTERM's two-phase drain (inbound first, outbound once the
//! app's traffic is quiet) with requests in flight; `/drain`; `/quitquitquit`.

use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client::{self, H1Client, H2Client};
use ficus_tests::h2raw::RawH2;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::until;
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
    until(what, Duration::from_secs(10), || {
        std::future::ready(condition())
    })
    .await;
}

/// Waits until `/ready` answers 503 (draining has started).
async fn wait_unready(sidecar: &Sidecar) {
    until("/ready to turn 503", Duration::from_secs(10), || async {
        client::get(sidecar.admin, "admin", "/ready")
            .await
            .unwrap()
            .status
            == 503
    })
    .await;
}

/// Waits until a listener refuses new connections.
async fn wait_refused(address: std::net::SocketAddr, what: &str) {
    until(
        &format!("{what} to refuse new connections while draining"),
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(address).await.is_err() },
    )
    .await;
}

/// SIGTERM drains the inbound side: `/ready` turns 503, the inbound listener closes, and the
/// requests in flight from peers (HTTP/1.1 and HTTP/2) complete, HTTP/1.1 with
/// `Connection: close`. With no outbound traffic the process then exits 0 by itself.
/// (Until the two-phase drain, this test drove the outbound listener; outbound now keeps
/// serving after SIGTERM, see `sigterm_keeps_outbound_serving_until_it_is_quiet`.)
#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let app = Upstream::start("app").await;
    let remote = Upstream::start("slow").await;
    let options = SidecarOptions {
        app: Some(app.addr),
        // Far beyond the exit wait below: the exit comes from drained + quiet, not the timeout.
        drain_timeout: Some("120s".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(remote.addr), options).await;

    // Answered after 5 s: the drain surely starts first, so the answers must say `close`.
    let mut in_flight = Vec::new();
    for _ in 0..5 {
        let inbound = sidecar.inbound;
        in_flight.push(tokio::spawn(async move {
            let mut client = H1Client::connect(inbound).await.unwrap();
            client.get("client", "/delay/5000").await
        }));
    }
    let inbound = sidecar.inbound;
    let h2_in_flight = tokio::spawn(async move {
        let mut client = H2Client::connect(inbound).await.unwrap();
        let request = Request::get("http://client/delay/5000")
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.send(request).await
    });
    wait_for(|| app.count() == 6, "6 requests at the app").await;

    sidecar.terminate();
    // Readiness turns 503 first; the inbound listener closes right after.
    wait_unready(&sidecar).await;
    wait_refused(sidecar.inbound, "inbound").await;

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

    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
}

/// SIGTERM in a pod: inbound drains while the app's outbound traffic keeps working — on a
/// connection it already had and on new HTTP/1.1 and HTTP/2 connections — for as long as an
/// outbound connection stays open, well past the quiet period; once the app's last
/// connection closes and the quiet period passes, the sidecar exits 0 (long before the drain
/// timeout).
#[tokio::test]
async fn sigterm_keeps_outbound_serving_until_it_is_quiet() {
    let app = Upstream::start("app").await;
    let remote = Upstream::start("slow").await;
    let options = SidecarOptions {
        app: Some(app.addr),
        drain_timeout: Some("120s".into()),
        extra: vec!["--drain-quiet-period".into(), "300ms".into()],
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(remote.addr), options).await;
    let mut held = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(held.get("slow", "/").await.unwrap().status, 200);
    let inbound = sidecar.inbound;
    // Answered after 5 s: the drain surely starts first, so the answer must say `close`.
    let inbound_in_flight = tokio::spawn(async move {
        let mut client = H1Client::connect(inbound).await.unwrap();
        client.get("client", "/delay/5000").await
    });
    wait_for(|| app.count() == 1, "the inbound request at the app").await;

    sidecar.terminate();
    wait_unready(&sidecar).await;
    wait_refused(sidecar.inbound, "inbound").await;
    let response = inbound_in_flight
        .await
        .unwrap()
        .expect("in-flight inbound request completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), "close");

    // Ten rounds 100 ms apart span several quiet periods; the held connection keeps the
    // outbound side active throughout, so the sidecar must still be serving at the end.
    let before = remote.count();
    for round in 0..10 {
        let response = held.get("slow", "/").await.expect("held connection serves");
        assert_eq!(response.status, 200, "round {round}, held connection");
        assert_ne!(response.header("connection"), "close");
        let response = client::get(sidecar.outbound, "slow", "/")
            .await
            .expect("a new outbound connection is accepted while draining");
        assert_eq!(response.status, 200, "round {round}, new connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    let request = Request::get("http://slow/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2.send(request).await.unwrap().status, 200);
    assert_eq!(
        remote.count(),
        before + 21,
        "every outbound request went upstream"
    );
    drop(h2);
    // Only the held connection is open now, idle, and nothing new arrives for several quiet
    // periods: an open connection alone keeps the outbound side up.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        sidecar.wait_exit_now().is_none(),
        "exited while the app still had an outbound connection open"
    );
    assert_eq!(held.get("slow", "/").await.unwrap().status, 200);
    assert!(
        tokio::net::TcpStream::connect(sidecar.inbound)
            .await
            .is_err(),
        "inbound stays closed"
    );

    // The app is done: its connections close, outbound goes quiet, the sidecar exits 0.
    drop(held);
    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
}

/// An outbound WebSocket (an upgraded connection, served by a tunnel once upgraded) is
/// activity too: after SIGTERM, with nothing else open for several quiet periods, the
/// sidecar keeps it going; once the app closes it the sidecar exits 0.
#[tokio::test]
async fn an_open_websocket_keeps_outbound_active_after_sigterm() {
    let server = ficus_tests::upstream::WebSocketEcho::start().await;
    let options = SidecarOptions {
        drain_timeout: Some("120s".into()),
        extra: vec!["--drain-quiet-period".into(), "300ms".into()],
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(server.addr), options).await;
    let stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://slow.shop/socket", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    client::ws_echo(&mut ws, "before").await;
    sidecar.terminate();
    wait_unready(&sidecar).await;
    // Several quiet periods with only the WebSocket open.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        sidecar.wait_exit_now().is_none(),
        "exited while the app's WebSocket was open"
    );
    client::ws_echo(&mut ws, "while draining").await;
    futures_util::SinkExt::close(&mut ws).await.unwrap();
    drop(ws);
    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
}

/// A second SIGTERM (or Ctrl-C) while outbound is still busy stops waiting for it: the
/// sidecar drains what is left and exits 0 without waiting for the drain timeout.
#[tokio::test]
async fn second_sigterm_stops_waiting_for_outbound() {
    let remote = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("120s".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(remote.addr), options).await;
    let mut held = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(held.get("slow", "/").await.unwrap().status, 200);
    sidecar.terminate();
    // The first signal has been taken once readiness is 503; the next one is a new event.
    wait_unready(&sidecar).await;
    assert_eq!(
        held.get("slow", "/").await.unwrap().status,
        200,
        "outbound serves after the first SIGTERM"
    );
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        held.get("slow", "/").await.is_err(),
        "the idle outbound connection was closed"
    );
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
    // What the filter syntax takes but nobody means: a typo'd level (it reads as a module
    // name and turns every other line off) and an empty body (everything off).
    for typo in ["degub", "", "  ", "info,warning"] {
        let refused = client::send(admin, put(typo)).await.unwrap();
        assert_eq!(refused.status, 400, "{typo:?}: {}", refused.text());
    }
    let level = client::get(admin, "admin", "/log-level").await.unwrap();
    assert_eq!(level.text().trim(), "debug,hyper=info", "unchanged");
    // HEAD is GET without a body; a 405 names the methods that are allowed.
    let head = Request::head("/ready")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let head = client::send(admin, head).await.unwrap();
    assert_eq!((head.status, head.body.len()), (200, 0));
    let wrong = client::send(admin, post("/metrics")).await.unwrap();
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), "GET, HEAD");

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

fn post(path: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// `POST /drain` drains inbound only (like SIGTERM, without exiting): readiness 503, inbound
/// refused, outbound still served. `/quitquitquit` then ends the process with 0.
#[tokio::test]
async fn drain_endpoint_then_quitquitquit() {
    let upstream = Upstream::start("slow").await;
    let mut sidecar = Sidecar::start(&backend(upstream.addr)).await;
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
    wait_refused(sidecar.inbound, "inbound after /drain").await;
    assert_eq!(
        client::get(sidecar.outbound, "slow", "/")
            .await
            .expect("outbound serves after /drain")
            .status,
        200
    );
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

/// `/quitquitquit` (a Job's app is done) drains both sides at once: it does not wait for the
/// outbound side to go quiet — an idle outbound connection is closed — but an outbound
/// request in flight completes (`Connection: close`) before the process exits 0.
#[tokio::test]
async fn quitquitquit_drains_outbound_too_and_exits_0() {
    let upstream = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("120s".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let mut idle = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(idle.get("slow", "/").await.unwrap().status, 200);
    let outbound = sidecar.outbound;
    // Answered after 5 s: the drain surely starts first, so the answer must say `close`.
    let in_flight = tokio::spawn(async move {
        let mut client = H1Client::connect(outbound).await.unwrap();
        client.get("slow", "/delay/5000").await
    });
    wait_for(|| upstream.count() == 2, "the slow request upstream").await;

    assert_eq!(
        client::send(sidecar.admin, post("/quitquitquit"))
            .await
            .unwrap()
            .status,
        200
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight outbound request completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), "close");
    wait_refused(sidecar.outbound, "outbound after /quitquitquit").await;
    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        idle.get("slow", "/").await.is_err(),
        "the idle connection was closed"
    );
}

/// A signal during the last phase of the drain (here after `/quitquitquit`, whose drain
/// waits for an outbound request that will take a minute) ends the wait: the sidecar closes
/// what is left and exits 0 at once instead of waiting out the drain timeout.
#[tokio::test]
async fn a_signal_during_the_final_drain_closes_what_is_left() {
    let upstream = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("120s".into()),
        ..Default::default()
    };
    // No response timeout ends the request before the drain timeout would.
    let config = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                  spec: {proxy: {upstreamResponseTimeout: 5m}}\n---\n"
        .to_owned()
        + &backend(upstream.addr);
    let mut sidecar = Sidecar::start_with(&config, options).await;
    // A request in flight for a minute, on a connection the client keeps open.
    let mut in_flight = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut in_flight,
        b"GET /delay/60000 HTTP/1.1\r\nhost: slow\r\n\r\n",
    )
    .await
    .unwrap();
    wait_for(|| upstream.count() == 1, "the slow request upstream").await;
    assert_eq!(
        client::send(sidecar.admin, post("/quitquitquit"))
            .await
            .unwrap()
            .status,
        200
    );
    // The outbound listener closes in the last phase, which now waits for the request.
    wait_refused(sidecar.outbound, "outbound after /quitquitquit").await;
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    drop(in_flight);
}

/// When the first phase of the drain (outbound serves until the app goes quiet) runs out,
/// it ends a reserve before the drain timeout, so outbound clients are still told before
/// their connections close: an HTTP/2 client with a stream open gets GOAWAY.
#[tokio::test]
async fn outbound_gets_goaway_when_the_first_drain_phase_runs_out() {
    let upstream = Upstream::start("slow").await;
    let options = SidecarOptions {
        drain_timeout: Some("2s".into()),
        // One thread: nothing runs beside the exit once the drain ends.
        workers: Some(1),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let mut h2 = RawH2::connect(sidecar.outbound).await;
    h2.get(1, "slow", "/delay/60000").await;
    wait_for(|| upstream.count() == 1, "the stream upstream").await;
    sidecar.terminate();
    let goaway = h2.goaway_before_close(Duration::from_secs(20)).await;
    assert!(goaway, "the connection closed without GOAWAY");
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
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
    let flood = connect_many(sidecar.outbound, 150).await;
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
    until("recovery from EMFILE", Duration::from_secs(10), || async {
        client::get(sidecar.outbound, "slow", "/").await.is_ok()
    })
    .await;
    let response = client::get(sidecar.outbound, "slow", "/").await.unwrap();
    assert_eq!(response.status, 200);
    assert!(sidecar.wait_exit_now().is_none(), "still running");
}

/// The soft descriptor limit is raised to the hard one at start (a soft 1024 with keep-alive
/// connections idling for an hour would otherwise fill the connection cap).
#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let upstream = Upstream::start("fast").await;
    let options = SidecarOptions {
        prefix: vec!["prlimit".into(), "--nofile=256:4096".into()],
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sidecar.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "{open_files}");
}

/// Up to `n` connections to `addr` (each connect bounded by 1 s), held open.
async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            held.push(stream);
        }
    }
    held
}

/// RELIABILITY RES-5 with the limit set at start (`ulimit -n 256`): a flood of more
/// connections than descriptors is met by the connection cap (sized from the limit), so the
/// sidecar never runs out: the admin server still answers `/live` during the flood, live
/// connections are served, and new ones are once the flood is gone.
#[tokio::test]
async fn a_connection_flood_leaves_descriptors_for_admin() {
    let upstream = Upstream::start("fast").await;
    let options = SidecarOptions {
        workers: Some(1),
        prefix: vec!["prlimit".into(), "--nofile=256:256".into()],
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend(upstream.addr), options).await;
    let mut kept = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(kept.get("slow", "/").await.unwrap().status, 200);

    // More connections than the sidecar has descriptors; the kernel queues what it does not
    // accept (the backlog is larger).
    let flood = connect_many(sidecar.outbound, 400).await;
    assert!(
        flood.len() > 256,
        "the flood got {} connections",
        flood.len()
    );
    let live = client::get(sidecar.admin, "admin", "/live")
        .await
        .expect("admin answers during the flood");
    assert_eq!(live.status, 200);
    assert_eq!(
        kept.get("slow", "/").await.unwrap().status,
        200,
        "live connections still served"
    );

    drop(flood);
    until(
        "new connections after the flood",
        Duration::from_secs(10),
        || async { client::get(sidecar.outbound, "slow", "/").await.is_ok() },
    )
    .await;
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A "pod" network namespace (10.77.0.1, fd77::1) with the transparent-mode redirect rules,
/// joined by a veth pair to a "remote" one (10.77.0.2, fd77::2), both removed on drop; root
/// only. The test process plays the pod's app (root, so its traffic is intercepted) and the
/// remote peers.
struct Pod {
    pod: ficus_tests::netns::NetNs,
    remote: ficus_tests::netns::NetNs,
}

const POD_ADMIN: &str = "127.0.0.1:15000";

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().expect("test address")
}

impl Pod {
    /// The namespaces, or `None` (with a message) when they cannot be made here.
    fn new(test: &str) -> Option<Self> {
        use ficus_tests::netns::{self, link, NetNs};
        if let Some(reason) = netns::skip_reason() {
            eprintln!("SKIPPED {test}: {reason}");
            return None;
        }
        let pod = NetNs::create("pod").unwrap();
        let remote = NetNs::create("remote").unwrap();
        link(
            &pod,
            &["10.77.0.1/24", "fd77::1/64"],
            &remote,
            &["10.77.0.2/24", "fd77::2/64"],
        )
        .unwrap();
        Some(Self { pod, remote })
    }

    /// Installs the redirect rules and starts the sidecar with `--transparent` as uid 1337
    /// on `config`, waiting until it is ready.
    async fn sidecar(&self, config: &str, extra: &[&str]) -> Sidecar {
        use ficus_tests::netns;
        let options = SidecarOptions {
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            ..SidecarOptions::default()
        };
        let sidecar = netns::start_transparent(&self.pod, config, options);
        netns::wait_ready(&self.pod).await;
        sidecar
    }

    /// `GET path` on the sidecar's admin server inside the pod.
    async fn admin(&self, path: &str) -> Option<ficus_tests::netns::Fetched> {
        ficus_tests::netns::http_get(&self.pod, addr(POD_ADMIN), "admin", path, &[])
            .await
            .ok()
    }

    /// Waits until `/config` reports `version` or later.
    async fn wait_version(&self, version: u64) {
        until(
            &format!("config version {version}"),
            Duration::from_secs(30),
            || async {
                let Some(fetched) = self.admin("/config").await else {
                    return false;
                };
                let config: serde_json::Value =
                    serde_json::from_str(&fetched.body).unwrap_or_default();
                config["version"].as_u64().unwrap_or(0) >= version
            },
        )
        .await;
    }
}

/// SIGTERM in a pod with transparent interception: a peer's new inbound connection (to the
/// app's port, redirected to the inbound listener) is refused while the app's intercepted
/// outbound requests — on a connection it already had and on new IPv4 and IPv6 connections —
/// keep being routed; the sidecar exits 0 once the app's last connection has closed and
/// outbound has been quiet.
#[tokio::test]
async fn sigterm_in_a_pod_refuses_inbound_while_intercepted_outbound_keeps_working() {
    use ficus_tests::netns::{http_get, NsHttpServer};
    let Some(world) = Pod::new("sigterm_in_a_pod_refuses_inbound_while_intercepted_outbound")
    else {
        return;
    };
    let remote = NsHttpServer::start(&world.remote, addr("10.77.0.2:80"), "remote").unwrap();
    let remote_v6 = NsHttpServer::start(&world.remote, addr("[fd77::2]:80"), "remote6").unwrap();
    let _app = NsHttpServer::start(&world.pod, addr("10.77.0.1:8080"), "pod-app").unwrap();
    let config = format!(
        "{}---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
         metadata: {{name: slow-v6, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"[fd77::2]:80\"}}]}}\n",
        backend(addr("10.77.0.2:80"))
    );
    let mut sidecar = world
        .sidecar(
            &config,
            &["--drain-timeout", "120s", "--drain-quiet-period", "300ms"],
        )
        .await;
    let inbound = http_get(&world.remote, addr("10.77.0.1:8080"), "pod", "/", &[])
        .await
        .expect("inbound before SIGTERM");
    assert_eq!((inbound.status, inbound.body.as_str()), (200, "pod-app"));
    // The app's keep-alive connection to the remote service, intercepted.
    let stream = world.pod.connect(addr("10.77.0.2:80")).await.unwrap();
    let (mut held, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let get = || {
        Request::get("/")
            .header("host", "10.77.0.2")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let response = tokio::time::timeout(client::TIMEOUT, held.send_request(get()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "remote");

    sidecar.terminate();
    until("/ready to turn 503", Duration::from_secs(10), || async {
        world.admin("/ready").await.map(|f| f.status) == Some(503)
    })
    .await;
    until(
        "inbound to refuse new connections while draining",
        Duration::from_secs(10),
        || async {
            http_get(&world.remote, addr("10.77.0.1:8080"), "pod", "/", &[])
                .await
                .is_err()
        },
    )
    .await;

    for round in 0..5 {
        let response = tokio::time::timeout(client::TIMEOUT, held.send_request(get()))
            .await
            .expect("held connection answers in time")
            .expect("held connection serves");
        assert_eq!(response.status(), 200, "round {round}");
        let fetched = http_get(&world.pod, addr("10.77.0.2:80"), "10.77.0.2", "/", &[])
            .await
            .expect("a new intercepted IPv4 connection is served while draining");
        assert_eq!(fetched.header("x-upstream"), "remote");
        let fetched = http_get(&world.pod, addr("[fd77::2]:80"), "[fd77::2]", "/", &[])
            .await
            .expect("a new intercepted IPv6 connection is served while draining");
        assert_eq!(fetched.header("x-upstream"), "remote6");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remote.count(), 1 + 5 + 5);
    assert_eq!(remote_v6.count(), 5);
    // Only the held connection, idle, for several quiet periods: the sidecar stays.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        sidecar.wait_exit_now().is_none(),
        "exited while the app still had an outbound connection open"
    );

    drop(held);
    let status = sidecar.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0));
}

/// `Mesh.spec.proxy.opaquePorts` in transparent mode (network namespaces, root only): a port
/// becomes opaque — a server-first protocol there is forwarded at once instead of being
/// sniffed — when a config swap adds it, and stops being opaque when one removes it; the
/// `--opaque-ports` flag and the built-in ports stay opaque throughout (merged, not
/// replaced). The detect timeout (300 s) is far longer than any wait here, so a greeting
/// arrives only when the sidecar did not sniff, and a sniffed port answers the client's HTTP.
#[tokio::test]
async fn mesh_opaque_ports_are_merged_with_the_flag_and_hot_swapped() {
    use ficus_tests::netns::{self, NsGreeter};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(world) = Pod::new("mesh_opaque_ports_are_merged_with_the_flag_and_hot_swapped") else {
        return;
    };
    let remote = &world.remote;
    let _mesh_port = NsGreeter::start(remote, addr("10.77.0.2:7000"), "HELLO mesh\n").unwrap();
    let _flag_port = NsGreeter::start(remote, addr("10.77.0.2:7001"), "HELLO flag\n").unwrap();
    let _builtin = NsGreeter::start(remote, addr("10.77.0.2:3306"), "5.7.44-mysql\n").unwrap();
    let base = backend(addr("10.77.0.2:80"));
    let with_mesh = |ports: &str| {
        format!(
            "{base}---\napiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{proxy: {{opaquePorts: [{ports}]}}}}\n"
        )
    };
    let sidecar = world
        .sidecar(
            &with_mesh("9999"),
            &["--detect-timeout", "300s", "--opaque-ports", "7001"],
        )
        .await;

    // Whether a greeting arrives within `wait`: it can only when the port is opaque.
    let greets = |to: std::net::SocketAddr, wait: Duration| {
        let pod = &world.pod;
        async move {
            let mut stream = pod.connect(to).await.unwrap();
            let mut got = [0u8; 5];
            match tokio::time::timeout(wait, stream.read_exact(&mut got)).await {
                Ok(read) => {
                    read.unwrap();
                    true
                }
                Err(_) => false,
            }
        }
    };
    // Whether the sidecar sniffs `to`: a request sent at once is answered as HTTP (the
    // greeter's reply is no HTTP response, so the sidecar answers 502) where an opaque port
    // would hand the client the greeting first. No wait for something not to happen.
    let sniffed = |to: std::net::SocketAddr| {
        let pod = &world.pod;
        async move {
            let mut stream = pod.connect(to).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: greeter\r\n\r\n")
                .await
                .unwrap();
            let mut got = [0u8; 5];
            tokio::time::timeout(netns::TIMEOUT, stream.read_exact(&mut got))
                .await
                .expect("an answer or a greeting")
                .unwrap();
            &got == b"HTTP/"
        }
    };
    world.wait_version(1).await;
    assert!(
        sniffed(addr("10.77.0.2:7000")).await,
        "7000 is sniffed before the swap"
    );
    assert!(
        greets(addr("10.77.0.2:7001"), netns::TIMEOUT).await,
        "--opaque-ports"
    );
    assert!(
        greets(addr("10.77.0.2:3306"), netns::TIMEOUT).await,
        "built-in"
    );

    sidecar.write_config(&with_mesh("7000"));
    world.wait_version(2).await;
    assert!(
        greets(addr("10.77.0.2:7000"), netns::TIMEOUT).await,
        "the Mesh's port is opaque after the swap"
    );
    assert!(
        greets(addr("10.77.0.2:7001"), netns::TIMEOUT).await,
        "the flag's port stays"
    );
    assert!(
        greets(addr("10.77.0.2:3306"), netns::TIMEOUT).await,
        "the built-in port stays"
    );

    sidecar.write_config(&base);
    world.wait_version(3).await;
    assert!(
        sniffed(addr("10.77.0.2:7000")).await,
        "7000 is sniffed again once the Mesh drops it"
    );
    assert!(
        greets(addr("10.77.0.2:7001"), netns::TIMEOUT).await,
        "--opaque-ports"
    );
}

/// A sidecar without a mesh identity (file mode) under mTLS STRICT would refuse every inbound
/// connection, so it does not say it is ready; a config that is not STRICT makes it ready.
#[tokio::test]
async fn strict_mtls_without_an_identity_is_not_ready() {
    let mesh = |mode: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    let sidecar = Sidecar::spawn(&mesh("STRICT"), SidecarOptions::default());
    let status = |path: &'static str| {
        let admin = sidecar.admin;
        async move {
            client::get(admin, "admin", path)
                .await
                .map(|r| r.status)
                .ok()
        }
    };
    until("live", Duration::from_secs(20), || async {
        status("/live").await == Some(200)
    })
    .await;
    until("the config is loaded", Duration::from_secs(20), || async {
        sidecar.config().await["version"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(status("/ready").await, Some(503));
    sidecar.write_config(&mesh("PERMISSIVE"));
    until("ready once not STRICT", Duration::from_secs(20), || async {
        status("/ready").await == Some(200)
    })
    .await;
}
