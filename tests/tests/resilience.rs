//! Resilience: retries within budgets and deadlines, never replaying unsafe requests.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client::H1Client;
use ficus_tests::process::Sidecar;
use ficus_tests::upstream::Upstream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A scripted upstream: request number `n` (from 0) is answered by `script(n, path)`; the
/// request bodies it received are recorded.
struct Scripted {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

type Script = fn(usize, &str) -> (StatusCode, Option<Duration>);

impl Scripted {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (counter, recorded) = (Arc::clone(&count), Arc::clone(&bodies));
        let accepted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (counter, recorded) = (Arc::clone(&counter), Arc::clone(&recorded));
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await;
                            if let (Ok(body), Ok(mut list)) = (body, recorded.lock()) {
                                list.push(body.to_bytes());
                            }
                            let (status, delay) = script(n, &path);
                            if let Some(delay) = delay {
                                tokio::time::sleep(delay).await;
                            }
                            let mut response = Response::new(Full::new(Bytes::from("scripted")));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            count,
            connections,
            bodies,
            task,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every tenth request fails with 503.
fn one_in_ten(n: usize, _: &str) -> (StatusCode, Option<Duration>) {
    if n.is_multiple_of(10) {
        (StatusCode::SERVICE_UNAVAILABLE, None)
    } else {
        (StatusCode::OK, None)
    }
}

fn always_503(_: usize, _: &str) -> (StatusCode, Option<Duration>) {
    (StatusCode::SERVICE_UNAVAILABLE, None)
}

fn hang(_: usize, _: &str) -> (StatusCode, Option<Duration>) {
    (StatusCode::OK, Some(Duration::from_secs(5)))
}

fn config(addr: SocketAddr, rule_extra: &str, policy: &str) -> String {
    let mut config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    {rule_extra}\n"
    );
    if !policy.is_empty() {
        config += &format!(
            "---\napiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
             spec: {{targetRef: {{kind: Backend, name: api}}, {policy}}}\n"
        );
    }
    config
}

fn request(method: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/work")
        .header("host", "api.shop")
        .body(Full::new(body.into()))
        .unwrap()
}

#[tokio::test]
async fn ten_percent_503s_are_hidden_by_two_retries() {
    let upstream = Scripted::start(one_in_ten).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut ok = 0;
    for _ in 0..1000 {
        if client.send(request("GET", "")).await.unwrap().status == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 995, "only {ok} of 1000 GETs succeeded");
    let metrics = sidecar.metrics().await;
    let retries = metrics.sum("ficus_retries_total", &[]);
    assert!(
        (90.0..=200.0).contains(&retries),
        "{retries} retries for ~100 failures"
    );
    assert_eq!(upstream.count(), 1000 + retries as usize);
}

#[tokio::test]
async fn a_post_is_never_replayed() {
    let upstream = Scripted::start(one_in_ten).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut failed = 0;
    for i in 0..1000 {
        let response = client
            .send(request("POST", format!("order-{i}")))
            .await
            .unwrap();
        if response.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, 100, "every scripted failure reaches the caller");
    assert_eq!(upstream.count(), 1000, "each POST was sent once");
    let distinct = upstream
        .bodies
        .lock()
        .unwrap()
        .iter()
        .collect::<HashSet<_>>()
        .len();
    assert_eq!(distinct, 1000, "no POST body arrived twice");
    assert_eq!(sidecar.metrics().await.sum("ficus_retries_total", &[]), 0.0);
}

#[tokio::test]
async fn a_route_may_allow_posts_to_be_replayed() {
    let upstream = Scripted::start(one_in_ten).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms, nonIdempotentMethods: [POST]}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for i in 0..100 {
        let response = client
            .send(request("POST", format!("order-{i}")))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "POST {i}");
    }
    // Every tenth request to the upstream failed and was sent again, with the same body.
    let retries = sidecar.metrics().await.sum("ficus_retries_total", &[]) as usize;
    assert!(retries >= 10, "{retries} retries");
    let sent = upstream.count();
    assert_eq!(sent, 100 + retries);
    {
        let bodies = upstream.bodies.lock().unwrap();
        assert_eq!(bodies[0], bodies[1], "the replay carries the whole body");
    }
    // PATCH is not listed: never replayed.
    let patch = client.send(request("PATCH", "x")).await.unwrap();
    let patches = upstream.count() - sent;
    assert_eq!(patches, 1, "PATCH sent once ({})", patch.status);
}

#[tokio::test]
async fn a_small_put_body_is_replayed_whole() {
    let upstream = Scripted::start(one_in_ten).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    // Request 0 fails: the PUT is retried with the same body.
    let response = client.send(request("PUT", "payload")).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.count(), 2);
    let bodies = upstream.bodies.lock().unwrap();
    assert!(
        bodies.iter().all(|b| b.as_ref() == b"payload"),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let upstream = Scripted::start(always_503).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let policy = "retryBudget: {percent: 20, minRetriesPerSecond: 1}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, policy)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let requests = 300;
    let started = std::time::Instant::now();
    for _ in 0..requests {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 503);
    }
    // 20 % of the requests (they come at a steady rate) plus, per window of ten one-second
    // slots, the reserve of 10 (1/s × 10 s), which refills as each window slides by: the run
    // touches at most `seconds / 10 + 1` such windows (one more for slack), and each may end
    // one retry above its allowance (taken while the count is below a fractional allowance).
    let seconds = started.elapsed().as_secs() as usize + 1;
    let allowed = requests / 5 + 11 * (seconds / 10 + 2);
    let retries = upstream.count() - requests;
    assert!(retries > 0, "the budget allows some retries");
    assert!(
        retries <= allowed,
        "{retries} retries for {requests} requests, budget {allowed}"
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_retries_total", &[]), retries as f64);
    assert!(metrics.sum("ficus_retry_budget_exhausted_total", &[]) > 0.0);
}

#[tokio::test]
async fn the_route_deadline_bounds_every_try_and_the_backoff() {
    let upstream = Scripted::start(hang).await;
    let rule = "retry: {attempts: 10, codes: [504], backoff: 1ms}\n    \
                timeouts: {request: 1s, backendRequest: 200ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let response = client.send(request("GET", "")).await.unwrap();
    assert_eq!(response.status, 504);
    // At most one try per 200 ms within 1 s, however many attempts the rule allows (11 tries
    // would take 2.2 s); the second try has 800 ms to start.
    let tries = upstream.count();
    assert!((2..=5).contains(&tries), "{tries} tries");
    let metrics = sidecar.metrics().await;
    let flagged = metrics.sum(
        "ficus_requests_total",
        &[
            ("destination_backend", "shop/api"),
            ("response_flags", "UT"),
        ],
    );
    assert_eq!(flagged, 1.0);
}

#[tokio::test]
async fn exhausted_retries_return_the_last_response_flagged_urx() {
    let upstream = Scripted::start(always_503).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let response = client.send(request("GET", "")).await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.text(), "scripted");
    assert_eq!(upstream.count(), 3);
    let metrics = sidecar.metrics().await;
    let flagged = metrics.sum(
        "ficus_requests_total",
        &[
            ("destination_backend", "shop/api"),
            ("response_flags", "URX"),
        ],
    );
    assert_eq!(flagged, 1.0);
}

async fn get_once(addr: SocketAddr, path: &'static str) -> ficus_tests::client::Response {
    let mut client = H1Client::connect(addr).await.unwrap();
    let request = Request::builder()
        .uri(path)
        .header("host", "api.shop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.send(request).await.unwrap()
}

/// Starts two requests for `path` through `outbound` and waits (5 s at most) until
/// `arrived()` says both reached the upstream.
async fn two_slow_requests(
    outbound: SocketAddr,
    path: &'static str,
    arrived: impl Fn() -> usize,
) -> Vec<tokio::task::JoinHandle<ficus_tests::client::Response>> {
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get_once(outbound, path)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while arrived() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_past_its_caps() {
    let upstream = Upstream::start("api").await;
    let policy = "connectionPool: {maxRequests: 2, maxPendingRequests: 1}";
    let sidecar = Sidecar::start(&config(upstream.addr, "", policy)).await;
    let outbound = sidecar.outbound;
    let slow = two_slow_requests(outbound, "/delay/1500", || upstream.count()).await;
    // Both slots are busy: one of these two takes the only queue place and waits, the other
    // is refused at once.
    let (a, b) = tokio::join!(get_once(outbound, "/fast"), get_once(outbound, "/fast"));
    let (refused, queued) = if a.status == 503 { (a, b) } else { (b, a) };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-ficus-error"), "overflow");
    assert_eq!(
        queued.status, 200,
        "the queued request runs once a slot frees"
    );
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(
        upstream.count(),
        3,
        "the refused request never reached the upstream"
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum(
            "ficus_circuit_breaker_overflow_total",
            &[("kind", "pending")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "UO")]),
        1.0
    );
    // Slots are given back: the Backend serves normally again.
    assert_eq!(get_once(outbound, "/fast").await.status, 200);
}

/// The route's total deadline counts from the request's arrival: time spent queued for a
/// breaker slot is part of it, with or without retries, so the caller never waits for a
/// whole try on top of the queueing.
#[tokio::test]
async fn a_wait_at_the_breaker_counts_against_the_request_timeout() {
    for rule in [
        "timeouts: {request: 3s}",
        "timeouts: {request: 3s}\n    retry: {attempts: 1, codes: [503]}",
    ] {
        let upstream = Upstream::start("api").await;
        let policy = "connectionPool: {maxRequests: 1, maxPendingRequests: 1}";
        let sidecar = Sidecar::start(&config(upstream.addr, rule, policy)).await;
        let outbound = sidecar.outbound;
        let first = tokio::spawn(get_once(outbound, "/delay/2000"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while upstream.count() < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Queued behind the first for ~2 s, this one has ~1 s of its 3 s left for a 2 s
        // answer; counted from the end of the queueing it would have had 3 s. (A second of
        // slack either way: for this request's late start and for the first one's answer.)
        let queued = get_once(outbound, "/delay/2000").await;
        assert_eq!(queued.status, 504, "{rule}");
        assert_eq!(first.await.unwrap().status, 200, "{rule}");
    }
}

fn slow_path(_: usize, path: &str) -> (StatusCode, Option<Duration>) {
    let delay = (path == "/slow").then_some(Duration::from_millis(1500));
    (StatusCode::OK, delay)
}

#[tokio::test]
async fn max_connections_caps_upstream_connections() {
    let upstream = Scripted::start(slow_path).await;
    let policy = "connectionPool: {maxConnections: 2, maxRequests: 10}";
    let sidecar = Sidecar::start(&config(upstream.addr, "", policy)).await;
    let outbound = sidecar.outbound;
    let slow = two_slow_requests(outbound, "/slow", || upstream.count()).await;
    // Two connections are busy: a third request would need a third connection.
    let refused = get_once(outbound, "/fast").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-ficus-error"), "overflow");
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
    // Idle connections are reused within the cap.
    let mut client = H1Client::connect(outbound).await.unwrap();
    for _ in 0..10 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert_eq!(
        upstream.count(),
        12,
        "the refused request never left the sidecar"
    );
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    let metrics = sidecar.metrics().await;
    let kind = [("kind", "connections")];
    assert_eq!(
        metrics.sum("ficus_circuit_breaker_overflow_total", &kind),
        1.0
    );
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "UO")]),
        1.0
    );
}

/// A WebSocket's upstream connection keeps its place among `maxConnections` for as long as
/// the session lasts, not just until the `101`.
#[tokio::test]
async fn max_connections_counts_switched_connections_until_they_close() {
    let server = ficus_tests::upstream::WebSocketEcho::start().await;
    let policy = "connectionPool: {maxConnections: 1}";
    let sidecar = Sidecar::start(&config(server.addr, "", policy)).await;
    let outbound = sidecar.outbound;
    let open = || async move {
        let stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
        tokio_tungstenite::client_async("ws://api.shop/socket", stream).await
    };
    let (mut first, response) = open().await.unwrap();
    assert_eq!(response.status(), 101);
    ficus_tests::client::ws_echo(&mut first, "one").await;
    // The only place is taken by the open session.
    match open().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status(), 503);
        }
        other => panic!("a second session while the first is open: {other:?}"),
    }
    ficus_tests::client::ws_echo(&mut first, "still open").await;
    first.close(None).await.unwrap();
    drop(first);
    // Once the first session is gone its place is free again (the tunnel notices the close).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut second, _) = loop {
        match open().await {
            Ok(session) => break session,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never freed: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ficus_tests::client::ws_echo(&mut second, "two").await;
    let metrics = sidecar.metrics().await;
    let kind = [("kind", "connections")];
    assert!(metrics.sum("ficus_circuit_breaker_overflow_total", &kind) >= 1.0);
}

#[tokio::test]
async fn fault_aborts_hit_their_share_of_requests() {
    let upstream = Upstream::start("api").await;
    let policy = "faultInjection: {abort: {percent: 20, status: 418}}";
    let sidecar = Sidecar::start(&config(upstream.addr, "", policy)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut aborted = 0;
    for _ in 0..1000 {
        match client.send(request("GET", "")).await.unwrap().status {
            418 => aborted += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // Binomial(1000, 0.2): mean 200, sd 12.6; [140, 260] is over 4.7 sd either side.
    assert!((140..=260).contains(&aborted), "{aborted} of 1000 aborted");
    assert_eq!(
        upstream.count(),
        1000 - aborted,
        "aborted requests never leave"
    );
    let metrics = sidecar.metrics().await;
    let flagged = metrics.sum("ficus_requests_total", &[("response_flags", "FI")]);
    assert_eq!(flagged, aborted as f64);
}

#[tokio::test]
async fn fault_delays_hit_their_share_of_requests() {
    let upstream = Upstream::start("api").await;
    let policy = "faultInjection: {delay: {percent: 25, fixed: 10ms}}";
    let sidecar = Sidecar::start(&config(upstream.addr, "", policy)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..400 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert_eq!(upstream.count(), 400, "delayed requests still go through");
    let metrics = sidecar.metrics().await;
    let delayed = metrics.sum("ficus_requests_total", &[("response_flags", "FI")]);
    // Binomial(400, 0.25): mean 100, sd 8.7; [55, 145] is over 5 sd either side.
    assert!(
        (55.0..=145.0).contains(&delayed),
        "{delayed} of 400 delayed"
    );
}

/// An injected delay stands in for the network before the exchange: the route's request
/// deadline starts after it, so a delay longer than `timeouts.request` still reaches the
/// upstream (with and without retries) instead of answering 504 `UT` untried.
#[tokio::test]
async fn a_fault_delay_is_not_counted_against_the_route_deadline() {
    // The deadline is shorter than the delay, yet long enough for the exchange itself on a
    // loaded machine.
    let policy = "faultInjection: {delay: {percent: 100, fixed: 2s}}";
    for rule in [
        "timeouts: {request: 1500ms}",
        "timeouts: {request: 1500ms}\n    retry: {attempts: 1, codes: [503], backoff: 1ms}",
    ] {
        let upstream = Upstream::start("api").await;
        let sidecar = Sidecar::start(&config(upstream.addr, rule, policy)).await;
        let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
        let response = client.send(request("GET", "")).await.unwrap();
        assert_eq!(response.status, 200, "{rule}: {}", response.text());
        assert_eq!(upstream.count(), 1, "{rule}: the upstream was contacted");
        let metrics = sidecar.metrics().await;
        let delayed = metrics.sum("ficus_requests_total", &[("response_flags", "FI")]);
        assert_eq!(delayed, 1.0, "{rule}");
    }
}

#[tokio::test]
async fn the_receiving_sidecar_rate_limits_its_own_backend() {
    let app = Upstream::start("app").await;
    // The sidecar is workload `client` in `shop`: Backend shop/client is this workload.
    let config = "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: client, namespace: shop}\n\
                  spec: {endpoints: [{address: \"127.0.0.1:9\"}]}\n---\n\
                  apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: client, namespace: shop}\n\
                  spec: {targetRef: {kind: Backend, name: client}, rateLimit: {requests: 5, per: 1m}}\n";
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(config, options).await;
    let mut client = H1Client::connect(sidecar.inbound).await.unwrap();
    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for _ in 0..8 {
        let response = client.send(request("GET", "")).await.unwrap();
        if response.status == 429 {
            retry_after.push(response.header("retry-after").to_owned());
        }
        statuses.push(response.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // One token every 12 s.
    for value in &retry_after {
        let seconds: u64 = value.parse().expect("Retry-After in seconds");
        assert!((1..=12).contains(&seconds), "Retry-After {value}");
    }
    assert_eq!(app.count(), 5, "refused requests never reach the app");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_rate_limited_total", &[]), 3.0);
    let flagged = metrics.sum(
        "ficus_requests_total",
        &[("direction", "inbound"), ("response_flags", "RL")],
    );
    assert_eq!(flagged, 3.0);
}

/// A config push that leaves the limit alone grants no fresh burst; a new limit starts full.
#[tokio::test]
async fn a_push_does_not_refill_an_unchanged_rate_limit() {
    let app = Upstream::start("app").await;
    let config = |requests: u32, extra: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: client, namespace: shop}}\n\
             spec: {{endpoints: [{{address: \"127.0.0.1:9\"}}]}}\n---\n\
             apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: client, namespace: shop}}\n\
             spec: {{targetRef: {{kind: Backend, name: client}}, rateLimit: {{requests: {requests}, per: 1m}}}}\n{extra}"
        )
    };
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&config(3, ""), options).await;
    let mut client = H1Client::connect(sidecar.inbound).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    let other = "---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: other, namespace: shop}\n\
                 spec: {endpoints: [{address: \"127.0.0.1:9\"}]}\n";
    sidecar.write_config(&config(3, other));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    assert_eq!(client.send(request("GET", "")).await.unwrap().status, 429);
    sidecar.write_config(&config(4, other));
    sidecar.wait_version(3, Duration::from_secs(10)).await;
    assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    assert_eq!(app.count(), 4);
}

/// A TrafficPolicy targeting an HTTPRoute limits that route in the calling sidecar; the
/// service's other routes are not limited.
#[tokio::test]
async fn a_route_rate_limit_applies_in_the_calling_sidecar() {
    let upstream = Upstream::start("api").await;
    let addr = upstream.addr;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: search, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: /search}}}}]\n    backendRefs: [{{name: api}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: rest, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: search, namespace: shop}}\n\
         spec: {{targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: search}}, \
         rateLimit: {{requests: 4, per: 1m}}}}\n"
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .header("host", "api.shop")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let response = client.send(get("/search?q=x")).await.unwrap();
        if response.status == 429 {
            let seconds: u64 = response.header("retry-after").parse().expect("Retry-After");
            // One token every 15 s.
            assert!((1..=15).contains(&seconds), "Retry-After {seconds}");
        }
        statuses.push(response.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429]);
    for _ in 0..10 {
        let response = client.send(get("/other")).await.unwrap();
        assert_eq!(
            response.status, 200,
            "another route of the service is not limited"
        );
    }
    assert_eq!(
        upstream.count(),
        14,
        "refused requests never leave the sidecar"
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_rate_limited_total", &[]), 3.0);
    let flagged = metrics.sum(
        "ficus_requests_total",
        &[("direction", "outbound"), ("response_flags", "RL")],
    );
    assert_eq!(flagged, 3.0);
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint_but_never_for_a_post() {
    let live = Upstream::start("live").await;
    // The discard port: nothing listens there, and no other test can take it meanwhile.
    let dead = "127.0.0.1:9";
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{dead}\"}}, {{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
         retry: {{attempts: 1, codes: [], backoff: 1ms}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: api}}, loadBalancer: {{type: RoundRobin}}, \
         retryBudget: {{percent: 100, minRetriesPerSecond: 10}}}}\n",
        live.addr
    );
    // Every GET may meet the dead endpoint first: a budget that covers them all (the default,
    // 20 % plus 3/s, would run out within the burst, as it should).
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..50 {
        let response = client.send(request("GET", "")).await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let mut refused = 0;
    for _ in 0..50 {
        let response = client.send(request("POST", "x")).await.unwrap();
        if response.status == 503 {
            assert_eq!(response.header("x-ficus-error"), "upstream-connect-failure");
            refused += 1;
        }
    }
    // Round robin over two endpoints: half of the POSTs meet the dead one and are not retried.
    assert!(refused > 0, "POSTs to the dead endpoint fail");
    assert!(sidecar.metrics().await.sum("ficus_retries_total", &[]) >= 1.0);
}

/// The first three requests fail with 503, then everything succeeds.
fn three_failures(n: usize, _: &str) -> (StatusCode, Option<Duration>) {
    if n < 3 {
        (StatusCode::SERVICE_UNAVAILABLE, None)
    } else {
        (StatusCode::OK, None)
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_returns() {
    let flaky = Scripted::start(three_failures).await;
    let healthy = Upstream::start("healthy").await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: api}}, loadBalancer: {{type: RoundRobin}}, \
         outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 5s, maxEjectionPercent: 50}}}}\n",
        flaky.addr, healthy.addr
    );
    // The ejection must outlast the 35 requests after it and the scrape on a loaded machine.
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut failed = 0;
    for _ in 0..40 {
        if client.send(request("GET", "")).await.unwrap().status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 3, "three failures eject the endpoint");
    assert_eq!(flaky.count(), 3, "an ejected endpoint gets no traffic");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_outlier_ejections_active", &[]), 1.0);

    tokio::time::sleep(Duration::from_millis(5200)).await;
    for _ in 0..20 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert!(
        flaky.count() >= 10,
        "the endpoint is back: {}",
        flaky.count()
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_outlier_ejections_active", &[]), 0.0);
}

/// RELIABILITY UP-3: once every endpoint is ejected the Backend fails fast (503 `UH`) and the
/// upstream gets nothing; when the ejection time is up, one probe goes through, and a Backend
/// that recovered serves again.
#[tokio::test]
async fn a_backend_with_every_endpoint_ejected_fails_fast_until_a_probe() {
    let flaky = Scripted::start(three_failures).await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: api}}, \
         outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 3s}}}}\n",
        flaky.addr
    );
    // The ejection must outlast the ten requests after it on a loaded machine.
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 503);
    }
    for _ in 0..10 {
        let response = client.send(request("GET", "")).await.unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.header("x-ficus-error"), "no-healthy-upstream");
    }
    assert_eq!(
        flaky.count(),
        3,
        "an ejected Backend's upstream gets nothing"
    );
    let metrics = sidecar.metrics().await;
    let flagged = [("response_flags", "UH")];
    assert_eq!(metrics.sum("ficus_requests_total", &flagged), 10.0);
    assert_eq!(
        metrics.sum(
            "ficus_upstream_failures_total",
            &[("reason", "no_healthy_upstream")]
        ),
        10.0
    );
    // Past the ejection time the endpoint is back on probation; it has recovered.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for _ in 0..5 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert_eq!(flaky.count(), 8);
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_outlier_ejections_active", &[]), 0.0);
}

/// Backend `api` over `failing` and `healthy` (round robin), ejecting after two failures for
/// `base`, and `extra` documents after it.
fn ejecting(failing: SocketAddr, healthy: SocketAddr, base: &str, extra: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{failing}\"}}, {{address: \"{healthy}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: api}}, loadBalancer: {{type: RoundRobin}}, \
         outlierDetection: {{consecutive5xx: 2, baseEjectionTime: {base}, maxEjectionPercent: 50}}}}\n{extra}"
    )
}

/// A sidecar over [`ejecting`] (60 s) whose failing endpoint has been ejected, and a client.
async fn one_ejected() -> (Scripted, Upstream, Sidecar, H1Client) {
    let failing = Scripted::start(always_503).await;
    let healthy = Upstream::start("healthy").await;
    let sidecar = Sidecar::start(&ejecting(failing.addr, healthy.addr, "60s", "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..10 {
        client.send(request("GET", "")).await.unwrap();
    }
    assert_eq!(failing.count(), 2, "ejected after two failures");
    (failing, healthy, sidecar, client)
}

/// A Backend unrelated to `api`, to change a config without touching it.
const OTHER_BACKEND: &str = "---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                             metadata: {name: other, namespace: shop}\n\
                             spec: {endpoints: [{address: \"127.0.0.1:9\"}]}\n";

/// Swaps in the config of [`one_ejected`] plus an unrelated Backend (version 2), then checks
/// that `failing` is still ejected: ten requests, all answered by the healthy endpoint.
async fn another_backend_keeps_the_ejection(
    sidecar: &Sidecar,
    client: &mut H1Client,
    failing: &Scripted,
    healthy: SocketAddr,
) {
    sidecar.write_config(&ejecting(failing.addr, healthy, "60s", OTHER_BACKEND));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    for _ in 0..10 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert_eq!(failing.count(), 2, "still ejected after the swap");
}

/// A config rejected after validation (its access log cannot be opened) changes nothing: the
/// policy state carried between configs stays with the serving one, so an ejection survives
/// the rejection and the next accepted config.
#[tokio::test]
async fn a_config_rejected_at_install_leaves_ejections_alone() {
    let (failing, healthy, sidecar, mut client) = one_ejected().await;
    let config = |extra: &str, base: &str| ejecting(failing.addr, healthy.addr, base, extra);
    // Valid, with a changed policy, but its access log cannot be opened: rejected when it is
    // installed.
    let unopenable = "---\napiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                      spec: {accessLog: {path: /nonexistent-dir/ficus/access.log}}\n";
    sidecar.write_config(&config(unopenable, "30s"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sidecar.config().await["last_error"].is_null() {
        assert!(tokio::time::Instant::now() < deadline, "never rejected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An accepted change elsewhere: the ejection is still there.
    another_backend_keeps_the_ejection(&sidecar, &mut client, &failing, healthy.addr).await;
}

/// A config push that leaves a Backend and its TrafficPolicy alone keeps its ejections (and
/// the rest of its policy state); changing the policy starts afresh.
#[tokio::test]
async fn ejections_survive_a_swap_that_leaves_the_backend_alone() {
    let (failing, healthy, sidecar, mut client) = one_ejected().await;
    let config = |extra: &str, base: &str| ejecting(failing.addr, healthy.addr, base, extra);
    // An unrelated change: one more Backend.
    another_backend_keeps_the_ejection(&sidecar, &mut client, &failing, healthy.addr).await;
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_outlier_ejections_active", &[]), 1.0);
    // A changed policy is new state: the endpoint is back in the rotation.
    sidecar.write_config(&config(OTHER_BACKEND, "30s"));
    sidecar.wait_version(3, Duration::from_secs(10)).await;
    for _ in 0..10 {
        client.send(request("GET", "")).await.unwrap();
    }
    assert_eq!(
        failing.count(),
        4,
        "forgiven by the new policy, then ejected again"
    );
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_outlier_ejections_active", &[]), 1.0);
}

/// Far slower than any stall of the fast endpoint on a loaded machine: one fast response held
/// up longer than this would make the slow endpoint look cheaper until the estimates decay.
fn slow(_: usize, _: &str) -> (StatusCode, Option<Duration>) {
    (StatusCode::OK, Some(Duration::from_millis(300)))
}

fn two_endpoints(a: SocketAddr, b: SocketAddr, balancer: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{targetRef: {{kind: Backend, name: api}}, loadBalancer: {{type: {balancer}}}}}\n"
    )
}

#[tokio::test]
async fn least_request_steers_away_from_a_slow_endpoint() {
    let slow = Scripted::start(slow).await;
    let fast = Upstream::start("fast").await;
    let sidecar = Sidecar::start(&two_endpoints(slow.addr, fast.addr, "LeastRequest")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..200 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    assert!(
        slow.count() < 20,
        "the slow endpoint got {} of 200",
        slow.count()
    );
    assert_eq!(slow.count() + fast.count(), 200);
}

fn a_little_slow(_: usize, _: &str) -> (StatusCode, Option<Duration>) {
    (StatusCode::OK, Some(Duration::from_millis(3)))
}

/// The default balancer (LeastRequest, no TrafficPolicy) must not send most traffic to an
/// endpoint that answers 503 at once just because it answers fast.
#[tokio::test]
async fn a_fast_failing_endpoint_does_not_attract_traffic_by_default() {
    let failing = Scripted::start(always_503).await;
    let healthy = Scripted::start(a_little_slow).await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]}}\n",
        failing.addr, healthy.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut failed = 0;
    for _ in 0..200 {
        if client.send(request("GET", "")).await.unwrap().status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, failing.count());
    assert_eq!(failing.count() + healthy.count(), 200);
    // Each failure keeps the endpoint away for seconds; round robin would send it 100.
    assert!(failed <= 10, "the failing endpoint got {failed} of 200");
}

#[tokio::test]
async fn random_balancing_spreads_evenly() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&two_endpoints(a.addr, b.addr, "Random")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..400 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    // Binomial(400, 0.5): sd 10; [140, 260] is 6 sd either side.
    assert!(
        (140..=260).contains(&a.count()),
        "{} vs {}",
        a.count(),
        b.count()
    );
}

fn instant_ok(_: usize, _: &str) -> (StatusCode, Option<Duration>) {
    (StatusCode::OK, None)
}

#[tokio::test]
async fn a_hanging_mirror_gets_copies_without_slowing_the_main_path() {
    let main = Scripted::start(instant_ok).await;
    // The mirror holds every copy for 3 s (the path the copies carry is /delay/3000).
    let mirror = Upstream::start("mirror").await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: shadow, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
         filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow}}}}}}]\n",
        main.addr, mirror.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..30 {
        let request = Request::get("/delay/3000")
            .header("host", "api.shop")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // Generous bound, far below the mirror's 3 s: the main path never waits for it.
        let response = tokio::time::timeout(Duration::from_secs(2), client.send(request))
            .await
            .expect("the main request does not wait for the mirror")
            .unwrap();
        assert_eq!(response.status, 200);
    }
    assert_eq!(main.count(), 30);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mirror.count() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} copies",
            mirror.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = mirror.last().unwrap();
    assert_eq!(copy.headers.get("host").unwrap(), "api.shop-shadow");
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_mirror_requests_total", &[("result", "sent")]),
        30.0
    );
}

/// A rule may mirror to several Backends: each gets its copy.
#[tokio::test]
async fn every_mirror_of_a_rule_gets_its_copies() {
    let main = Scripted::start(instant_ok).await;
    let (first, second) = (
        Upstream::start("first").await,
        Upstream::start("second").await,
    );
    let backend = |name: &str, addr: SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
        )
    };
    let config = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
         filters:\n    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: first}}}}}}\n    \
         - {{type: RequestMirror, requestMirror: {{backendRef: {{name: second}}}}}}\n",
        backend("api", main.addr),
        backend("first", first.addr),
        backend("second", second.addr),
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..10 {
        assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while first.count() < 10 || second.count() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies: {} and {}",
            first.count(),
            second.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = sidecar.metrics().await;
    let sent = metrics.sum("ficus_mirror_requests_total", &[("result", "sent")]);
    assert_eq!(sent, 20.0);
}

/// A streamed request body is copied to the mirror as it passes to the main upstream: a POST
/// on a rule without retries, a chunked one, one that a retry policy does not replay (POST),
/// an HTTP/2 one and a gRPC call recorded for retries all reach the shadow whole; one past
/// the copy limit (64 KiB) reaches only the main upstream, and its copy is counted as
/// dropped.
#[tokio::test]
async fn streamed_bodies_are_mirrored_up_to_the_copy_limit() {
    let main = Scripted::start(instant_ok).await;
    let shadow = Scripted::start(instant_ok).await;
    let mirror = "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]";
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: shadow, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api-grpc, namespace: shop}}\n\
         spec: {{protocol: grpc, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: /retried}}}}]\n    backendRefs: [{{name: api}}]\n    \
         retry: {{attempts: 2, codes: [503], backoff: 1ms}}\n    {mirror}\n  \
         - matches: [{{path: {{type: PathPrefix, value: /shop.Orders}}}}]\n    backendRefs: [{{name: api-grpc}}]\n    \
         retry: {{attempts: 2, backoff: 1ms, grpcCodes: [unavailable]}}\n    {mirror}\n  \
         - backendRefs: [{{name: api}}]\n    {mirror}\n",
        main.addr, shadow.addr, main.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(
        client
            .send(request("POST", "order 1"))
            .await
            .unwrap()
            .status,
        200
    );
    let retried = Request::post("/retried")
        .header("host", "api.shop")
        .body(Full::new(Bytes::from("order 2")))
        .unwrap();
    assert_eq!(client.send(retried).await.unwrap().status, 200);
    let chunked = b"POST /work HTTP/1.1\r\nhost: api.shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
        5\r\norder\r\n2\r\n 3\r\n0\r\n\r\n";
    let answer =
        ficus_tests::client::raw_exchange(sidecar.outbound, chunked, Duration::from_secs(5)).await;
    assert_eq!(answer.status(), Some(200), "{:?}", answer);
    // HTTP/2 from the client: a plain POST, and a gRPC call, which a route retrying gRPC
    // statuses records as it streams.
    let mut h2 = ficus_tests::client::H2Client::connect(sidecar.outbound)
        .await
        .unwrap();
    let plain = Request::post("http://api.shop/work")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::from("order 4")))
        .unwrap();
    assert_eq!(h2.send(plain).await.unwrap().status, 200);
    let call = Request::post("http://api.shop/shop.Orders/Place")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from("order 5")))
        .unwrap();
    assert_eq!(h2.send(call).await.unwrap().status, 200);
    let large = vec![b'x'; 100 * 1024];
    assert_eq!(
        client
            .send(request("POST", large.clone()))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(main.count(), 6);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let result = |metrics: &ficus_tests::client::Metrics, r| {
        metrics.sum("ficus_mirror_requests_total", &[("result", r)])
    };
    loop {
        let metrics = sidecar.metrics().await;
        if result(&metrics, "sent") + result(&metrics, "dropped") >= 6.0 {
            assert_eq!(result(&metrics, "sent"), 5.0);
            assert_eq!(result(&metrics, "dropped"), 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "copies not settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while shadow.count() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} copies",
            shadow.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut copies = shadow.bodies.lock().unwrap().clone();
    copies.sort();
    assert_eq!(
        copies,
        ["order 1", "order 2", "order 3", "order 4", "order 5"]
    );
    assert_eq!(shadow.count(), 5);
    let bodies = main.bodies.lock().unwrap().clone();
    assert!(
        bodies.iter().any(|b| b.len() == large.len()),
        "the main upstream got all of it"
    );
}

#[tokio::test]
async fn a_hanging_upstream_times_out_without_leaks_or_harm_to_other_routes() {
    let hanging = Scripted::start(hang).await;
    let healthy = Upstream::start("healthy").await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: stuck, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: fine, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: stuck, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: stuck}}]\n  rules:\n  - backendRefs: [{{name: stuck}}]\n    \
         timeouts: {{request: 200ms}}\n",
        hanging.addr, healthy.addr
    );
    let sidecar = Sidecar::start(&config).await;
    let outbound = sidecar.outbound;
    // Warm up both paths so that the baseline includes pools, buffers and metric series.
    assert_eq!(get_host(outbound, "fine.shop").await, 200);
    assert_eq!(get_host(outbound, "stuck.shop").await, 504);
    let (rss_before, fds_before) = (sidecar.rss_kib(), sidecar.open_fds().len());

    // 1,000 requests to the hanging service, 50 at a time, while the other service is used.
    let stuck: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = H1Client::connect(outbound).await.unwrap();
                let mut statuses = Vec::new();
                for _ in 0..20 {
                    let request = Request::get("/")
                        .header("host", "stuck.shop")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    statuses.push(client.send(request).await.unwrap().status);
                }
                statuses
            })
        })
        .collect();
    let mut client = H1Client::connect(outbound).await.unwrap();
    for _ in 0..100 {
        let request = Request::get("/")
            .header("host", "fine.shop")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // Generous for 50 clients churning on two cores; a healthy route stuck behind the
        // hanging one would wait for good.
        let response = tokio::time::timeout(Duration::from_secs(5), client.send(request))
            .await
            .expect("the healthy service answers while the other one hangs")
            .unwrap();
        assert_eq!(response.status, 200);
    }
    for task in stuck {
        assert!(task.await.unwrap().iter().all(|s| *s == 504));
    }
    drop(client);
    // Connections to the hanging upstream are closed as their requests time out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sidecar.open_fds().len() > fds_before + 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fds {} → {}",
            fds_before,
            sidecar.open_fds().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_after = sidecar.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let metrics = sidecar.metrics().await;
    let timed_out = metrics.sum(
        "ficus_requests_total",
        &[
            ("destination_backend", "shop/stuck"),
            ("response_flags", "UT"),
        ],
    );
    assert_eq!(timed_out, 1001.0);
}

async fn get_host(addr: SocketAddr, host: &str) -> u16 {
    let request = Request::get("/")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    ficus_tests::client::send(addr, request)
        .await
        .unwrap()
        .status
}

#[tokio::test]
async fn bodies_that_do_not_fit_the_retry_buffer_are_sent_once() {
    let upstream = Scripted::start(always_503).await;
    let rule = "retry: {attempts: 2, codes: [503], backoff: 1ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    // Over 64 KiB with a known length: streamed, one attempt, delivered whole.
    let large = vec![b'x'; 100 * 1024];
    let response = client.send(request("PUT", large)).await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(upstream.count(), 1);
    let received = upstream.bodies.lock().unwrap()[0].len();
    assert_eq!(received, 100 * 1024);
    // Unknown length (chunked), however small: streamed, one attempt.
    let chunked = b"PUT /work HTTP/1.1\r\nHost: api.shop\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let outcome =
        ficus_tests::client::raw_exchange(sidecar.outbound, chunked, Duration::from_secs(5)).await;
    assert_eq!(outcome.status(), Some(503));
    assert_eq!(upstream.count(), 2);
    // A small known-length PUT is retried, as a control.
    let response = client.send(request("PUT", "small")).await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(upstream.count(), 5);
}

/// An upstream that closes every connection idle for 1 s, like many servers' keep-alive
/// timeouts; returns its address and the number of requests served.
async fn idle_closing_upstream() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let last = Arc::new(Mutex::new(tokio::time::Instant::now()));
                let seen = Arc::clone(&last);
                let service = service_fn(move |_request: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut last) = seen.lock() {
                        *last = tokio::time::Instant::now();
                    }
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let mut closing = false;
                loop {
                    tokio::select! {
                        _ = connection.as_mut() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)), if !closing => {
                            let idle = last.lock().map(|l| l.elapsed()).unwrap_or_default();
                            if idle >= Duration::from_secs(1) {
                                closing = true;
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, served, task)
}

#[tokio::test]
async fn upstream_idle_closes_never_surface_as_errors() {
    let (addr, served, task) = idle_closing_upstream().await;
    // No retry policy: the pool alone must cope with connections closed under it.
    let sidecar = Sidecar::start(&config(addr, "", "")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut sent = 0;
    for gap in 0..10u64 {
        for _ in 0..5 {
            let response = client.send(request("GET", "")).await.unwrap();
            assert_eq!(response.status, 200, "after gap {gap}: {}", response.text());
            sent += 1;
        }
        // Gaps around the upstream's idle timeout: 0.95 s to 1.04 s.
        tokio::time::sleep(Duration::from_millis(950 + gap * 10)).await;
    }
    assert_eq!(served.load(Ordering::SeqCst), sent);
    task.abort();
}

/// A client that breaks off its request body (half of a `Content-Length` body, then closes)
/// is the client's failure, not the endpoint's: outlier detection does not count it, so the
/// Backend's only endpoint stays in the rotation. Over HTTP/1.1 and h2c to the endpoint.
#[tokio::test]
async fn a_client_that_breaks_off_its_body_does_not_eject_the_endpoint() {
    for protocol in ["http", "http2"] {
        let upstream = Scripted::start(instant_ok).await;
        let policy = "outlierDetection: {consecutive5xx: 2, baseEjectionTime: 60s}";
        let config = config(upstream.addr, "", policy)
            .replace("protocol: http,", &format!("protocol: {protocol},"));
        let sidecar = Sidecar::start(&config).await;
        for _ in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
                .await
                .unwrap();
            let head = "POST /work HTTP/1.1\r\nHost: api.shop\r\nContent-Length: 100000\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&[b'x'; 10 * 1024]).await.unwrap();
            drop(stream);
        }
        // Both broken requests have been answered (whatever the answer) before the GET.
        let backend = [("destination_backend", "shop/api")];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sidecar
            .metrics()
            .await
            .sum("ficus_requests_total", &backend)
            < 2.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{protocol}: never counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
        let response = client.send(request("GET", "")).await.unwrap();
        assert_eq!(response.status, 200, "{protocol}: {}", response.text());
        let metrics = sidecar.metrics().await;
        assert_eq!(
            metrics.sum("ficus_outlier_ejections_active", &[]),
            0.0,
            "{protocol}"
        );
        let downstream = [
            ("destination_backend", "shop/api"),
            ("response_flags", "DC"),
        ];
        assert_eq!(
            metrics.sum("ficus_requests_total", &downstream),
            2.0,
            "{protocol}: flagged as the client's doing"
        );
    }
}

/// The breaker's own overflow (`maxConnections` reached) is never retried, whatever the
/// rule's retry codes (502 and 503 here): the caller gets it flagged `UO`, not `URX`.
#[tokio::test]
async fn a_connection_overflow_is_never_retried() {
    let upstream = Scripted::start(slow_path).await;
    let rule = "retry: {attempts: 2, codes: [502, 503], backoff: 1ms}";
    let policy = "connectionPool: {maxConnections: 2, maxRequests: 10}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, policy)).await;
    let outbound = sidecar.outbound;
    let slow = two_slow_requests(outbound, "/slow", || upstream.count()).await;
    let refused = get_once(outbound, "/fast").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-ficus-error"), "overflow");
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(upstream.count(), 2, "the refused request never left");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_retries_total", &[]), 0.0);
    let kind = [("kind", "connections")];
    assert_eq!(
        metrics.sum("ficus_circuit_breaker_overflow_total", &kind),
        1.0,
        "one overflow, no retried ones"
    );
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "UO")]),
        1.0
    );
}

/// An idle pooled connection gives up its place among `maxConnections` to a request that
/// needs a new connection (to another endpoint): with one place and two endpoints taken in
/// turn, every request is served.
#[tokio::test]
async fn an_idle_connection_makes_room_under_max_connections() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = two_endpoints(a.addr, b.addr, "RoundRobin").replace(
        "loadBalancer: {type: RoundRobin}",
        "loadBalancer: {type: RoundRobin}, connectionPool: {maxConnections: 1}",
    );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for i in 0..10 {
        let response = client.send(request("GET", "")).await.unwrap();
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "UO")]),
        0.0
    );
}

/// Sends a 10 KiB PUT to `sidecar`'s outbound, dripped over ~400 ms, and reads the answer.
async fn dripped_put(sidecar: &Sidecar) -> ficus_tests::client::RawOutcome {
    let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    let head = "PUT /work HTTP/1.1\r\nHost: api.shop\r\nContent-Length: 10240\r\n\
                Connection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        if stream.write_all(&[b'x'; 1024]).await.is_err() {
            break; // answered early (and closed): the status says why
        }
    }
    ficus_tests::client::read_until_close(&mut stream, Duration::from_secs(10)).await
}

/// A replayable body is read within what is left of the route's `request` timeout, not within
/// one try's `backendRequest`: nothing has gone upstream while the client is still sending.
/// Past the route's deadline, the answer is the route's 504 `UT`.
#[tokio::test]
async fn a_slow_replayable_body_is_read_within_the_route_timeout() {
    let upstream = Scripted::start(instant_ok).await;
    // 10 KiB over ~400 ms: twice the per-try timeout, well within the route's.
    let rule = "retry: {attempts: 1, codes: [503], backoff: 1ms}\n    \
                timeouts: {backendRequest: 200ms, request: 2s}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let outcome = dripped_put(&sidecar).await;
    assert_eq!(
        outcome.status(),
        Some(200),
        "{}",
        String::from_utf8_lossy(&outcome.bytes)
    );
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.bodies.lock().unwrap()[0].len(), 10240);

    let rule = "retry: {attempts: 1, codes: [503], backoff: 1ms}\n    timeouts: {request: 200ms}";
    let sidecar = Sidecar::start(&config(upstream.addr, rule, "")).await;
    let outcome = dripped_put(&sidecar).await;
    let text = String::from_utf8_lossy(&outcome.bytes);
    assert_eq!(outcome.status(), Some(504), "{text}");
    assert_eq!(upstream.count(), 1, "nothing more went upstream");
}

/// A protocol switch (WebSocket) is not mirrored: the shadow would accept a handshake whose
/// connection is then dropped. Plain requests of the same route still are.
#[tokio::test]
async fn upgrades_are_not_mirrored() {
    let ws = ficus_tests::upstream::WebSocketEcho::start().await;
    let (api, shadow) = (
        Upstream::start("api").await,
        Upstream::start("shadow").await,
    );
    let backend = |name: &str, addr: SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
        )
    };
    let mirror = "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]";
    let config = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: /socket}}}}]\n    backendRefs: [{{name: ws}}]\n    {mirror}\n  \
         - backendRefs: [{{name: api}}]\n    {mirror}\n",
        backend("ws", ws.addr),
        backend("api", api.addr),
        backend("shadow", shadow.addr),
    );
    let sidecar = Sidecar::start(&config).await;
    let stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://api.shop/socket", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ficus_tests::client::ws_echo(&mut socket, "hello").await;
    // A plain request after the session: its copy arrives; the session's never did.
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(client.send(request("GET", "")).await.unwrap().status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shadow.count() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no copy arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = shadow.received.lock().unwrap().clone();
    assert!(
        copies.iter().all(|c| !c.headers.contains_key("upgrade")),
        "{copies:?}"
    );
    assert_eq!(copies.len(), 1, "{copies:?}");
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_mirror_requests_total", &[("result", "sent")]),
        1.0
    );
}

/// The cap on copies in flight (64 per mirror Backend) holds across config swaps: a swap
/// does not grant another 64.
#[tokio::test]
async fn the_mirror_cap_survives_a_config_swap() {
    let main = Scripted::start(instant_ok).await;
    // The mirror holds every copy for 60 s (the path the copies carry), far longer than the
    // test takes on a loaded machine; the rule's timeout lets the copies wait that long (the
    // Mesh's default 15 s would end them sooner). Nothing waits for them at the end: the
    // sidecar is killed and the mirror's tasks are dropped with the runtime.
    let mirror = Upstream::start("mirror").await;
    let config = |extra: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
             apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: shadow, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{}\"}}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
             filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow}}}}}}]\n    \
             timeouts: {{request: 60s}}\n{extra}",
            main.addr, mirror.addr
        )
    };
    let sidecar = Sidecar::start(&config("")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let get = || {
        Request::get("/delay/60000")
            .header("host", "api.shop")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..64 {
        assert_eq!(client.send(get()).await.unwrap().status, 200);
    }
    sidecar.write_config(&config(OTHER_BACKEND));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    for _ in 0..10 {
        assert_eq!(client.send(get()).await.unwrap().status, 200);
    }
    let metrics = sidecar.metrics().await;
    let result = |r| metrics.sum("ficus_mirror_requests_total", &[("result", r)]);
    assert_eq!(
        (result("sent"), result("dropped")),
        (64.0, 10.0),
        "64 copies hang at the mirror; the swap made no room for more"
    );
}
