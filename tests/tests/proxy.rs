//! Protocols through the outbound and inbound listeners, against real upstream servers:
//! HTTP/1.1 (origin-form and absolute-form), h2c, gRPC with streaming and trailers,
//! WebSocket, opaque TCP; error answers; header handling.

use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client::{self, H1Client, H2Client};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::{TcpEcho, Upstream, WebSocketEcho};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn backend(name: &str, protocol: &str, addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  protocol: {protocol}\n  endpoints: [{{address: \"{addr}\"}}]\n---\n"
    )
}

#[tokio::test]
async fn http1_origin_form_and_absolute_form() {
    let upstream = Upstream::start("monolith").await;
    let sidecar = Sidecar::start(&backend("monolith", "http", upstream.addr)).await;

    for host in [
        "monolith",
        "monolith.shop",
        "monolith.shop.svc.cluster.local:80",
    ] {
        let response = client::get(sidecar.outbound, host, "/hello").await.unwrap();
        assert_eq!(response.status, 200, "host {host}");
        assert_eq!(response.text(), "monolith");
    }
    let seen = upstream.last().unwrap();
    assert_eq!(seen.uri, "/hello", "origin-form upstream");
    assert_eq!(seen.headers["host"], "monolith.shop.svc.cluster.local:80");

    // As an HTTP proxy (http_proxy=...): absolute-form request target.
    let request = Request::get("http://monolith.shop/abs?x=1")
        .header("host", "monolith.shop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client::send(sidecar.outbound, request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.last().unwrap().uri, "/abs?x=1");
}

#[tokio::test]
async fn request_headers_are_cleaned_and_annotated() {
    let upstream = Upstream::start("monolith").await;
    let sidecar = Sidecar::start(&backend("monolith", "http", upstream.addr)).await;
    let request = Request::get("/")
        .header("host", "monolith")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-ficus-peer-identity", "spiffe://evil/ns/x/sa/y")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client::send(sidecar.outbound, request).await.unwrap();
    assert_eq!(response.status, 200);
    let seen = upstream.last().unwrap().headers;
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "x-ficus-peer-identity",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} must not be forwarded: {seen:?}"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http");
    let id = seen["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "generated request id {id}");

    // A request id the caller set is kept.
    let request = Request::get("/")
        .header("host", "monolith")
        .header("x-request-id", "abc-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client::send(sidecar.outbound, request).await.unwrap();
    assert_eq!(upstream.last().unwrap().headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn h2c_prior_knowledge_downstream_and_upstream() {
    let upstream = Upstream::start("payments").await;
    let config =
        backend("payments", "http2", upstream.addr) + &backend("legacy", "http", upstream.addr);
    let sidecar = Sidecar::start(&config).await;
    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    for (host, version) in [
        ("payments", http::Version::HTTP_2),
        ("legacy", http::Version::HTTP_11),
    ] {
        let request = Request::get(format!("http://{host}/h2"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = h2.send(request).await.unwrap();
        assert_eq!(response.status, 200, "{host}");
        assert_eq!(response.text(), "payments");
        let seen = upstream.last().unwrap();
        assert_eq!(
            seen.version, version,
            "{host}: upstream protocol follows the Backend"
        );
    }
}

#[tokio::test]
async fn grpc_streaming_with_trailers() {
    let upstream = Upstream::start("grpc").await;
    let sidecar = Sidecar::start(&backend("echo", "grpc", upstream.addr)).await;
    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    // Three length-prefixed gRPC messages in one request stream.
    let mut payload = Vec::new();
    for message in [b"one".as_slice(), b"two", b"three"] {
        payload.push(0u8);
        payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
        payload.extend_from_slice(message);
    }
    let request = Request::post("http://echo.shop/echo.Echo/Stream")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let response = h2.send(request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body.as_ref(),
        payload.as_slice(),
        "messages streamed back intact"
    );
    let trailers = response
        .trailers
        .expect("gRPC trailers arrive through the proxy");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    let seen = upstream.last().unwrap();
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.uri, "http://echo.shop/echo.Echo/Stream");

    // A failing call still answers HTTP 200: its status, from the trailers, is what
    // `ficus_grpc_responses_total` counts (an error rate per backend needs it).
    for status in ["14", "14", "5"] {
        let request = Request::post("http://echo.shop/echo.Echo/Stream")
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-test-grpc-status", status)
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let response = h2.send(request).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.trailers.unwrap()["grpc-status"], status);
    }
    let metrics = sidecar.metrics().await;
    let calls = |status| {
        metrics.sum(
            "ficus_grpc_responses_total",
            &[
                ("direction", "outbound"),
                ("destination_backend", "shop/echo"),
                ("grpc_status", status),
            ],
        )
    };
    assert_eq!((calls("0"), calls("14"), calls("5")), (1.0, 2.0, 1.0));
}

#[tokio::test]
async fn streaming_bodies_are_not_buffered() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&backend("echo", "http", upstream.addr)).await;
    // Send a chunked body slowly; the echo arrives chunk by chunk before the request ends.
    let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: echo\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buffer[..n]);
    }
    stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
    while !String::from_utf8_lossy(&seen).contains("second") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let server = WebSocketEcho::start().await;
    let sidecar = Sidecar::start(&backend("chat", "http", server.addr)).await;
    let stream = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://chat.shop/socket", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "ficus"] {
        client::ws_echo(&mut ws, text).await;
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn opaque_tcp_with_weighted_split() {
    let (a, b) = (TcpEcho::start("a:").await, TcpEcho::start("b:").await);
    // cache-v2's address is picked anew with cache's when the sidecar is restarted.
    let config = |listen: std::net::SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cache, namespace: shop}}\n\
             spec: {{protocol: tcp, listen: \"{listen}\", endpoints: [{{address: \"{}\"}}]}}\n---\n\
             apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cache-v2, namespace: shop}}\n\
             spec: {{protocol: tcp, listen: \"{}\", endpoints: [{{address: \"{}\"}}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: cache, namespace: shop}}\n\
             spec:\n  parentRefs: [{{name: cache}}]\n  rules: [{{backendRefs: [{{name: cache, weight: 1}}, {{name: cache-v2, weight: 1}}]}}]\n",
            a.addr,
            ficus_tests::free_addr(),
            b.addr
        )
    };
    let (sidecar, listen) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let mut greetings = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[2..], b"ping");
        *greetings
            .entry(String::from_utf8_lossy(&got[..2]).into_owned())
            .or_insert(0) += 1;
    }
    // Per-connection split: both backends get connections (P(all 40 on one side) = 2^-39).
    assert_eq!(greetings.len(), 2, "{greetings:?}");
    // Bytes are counted when each tunnel closes, which may be just after the clients hang up.
    let started = std::time::Instant::now();
    loop {
        let metrics = sidecar.metrics().await;
        let closed = metrics.sum("ficus_tcp_connections_closed_total", &[]);
        if closed >= 40.0 {
            assert!(metrics.sum("ficus_tcp_connections_opened_total", &[]) >= 40.0);
            assert!(metrics.sum("ficus_tcp_bytes_total", &[("direction", "sent")]) >= 160.0);
            assert!(metrics.sum("ficus_tcp_bytes_total", &[("direction", "received")]) >= 240.0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {closed} of 40 closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An opaque TCP connection's bytes show in `ficus_tcp_bytes_total` while it is open, not
/// only once it closes (a database connection may last for hours).
#[tokio::test]
async fn opaque_tcp_bytes_are_counted_while_the_connection_is_open() {
    let echo = TcpEcho::start("db:").await;
    let config = |listen: std::net::SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
             spec: {{protocol: tcp, listen: \"{listen}\", endpoints: [{{address: \"{}\"}}]}}\n",
            echo.addr
        )
    };
    let (sidecar, listen) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut echoed = vec![0u8; 3 + chunk.len()];
    for round in 0..16 {
        stream.write_all(&chunk).await.unwrap();
        let wanted = if round == 0 {
            echoed.len()
        } else {
            chunk.len()
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_exact(&mut echoed[..wanted]),
        )
        .await
        .unwrap()
        .unwrap();
    }
    // Still open: 1 MiB each way is counted already.
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_tcp_connections_closed_total", &[]), 0.0);
    assert!(metrics.sum("ficus_tcp_bytes_total", &[("direction", "sent")]) >= 1048576.0);
    assert!(metrics.sum("ficus_tcp_bytes_total", &[("direction", "received")]) >= 1048576.0);
    drop(stream);
}

/// HTTP/1.1 pipelining: requests written back to back on one connection are answered in
/// order, each after the one before, and reach the upstream in order.
#[tokio::test]
async fn http1_pipelined_requests_are_answered_in_order() {
    let upstream = Upstream::start("monolith").await;
    let sidecar = Sidecar::start(&backend("monolith", "http", upstream.addr)).await;
    let requests = b"GET /status/201 HTTP/1.1\r\nHost: monolith\r\n\r\n\
                     GET /delay/50 HTTP/1.1\r\nHost: monolith\r\n\r\n\
                     GET /status/203 HTTP/1.1\r\nHost: monolith\r\nConnection: close\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.outbound, requests, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&outcome.bytes);
    assert!(
        outcome.closed,
        "`Connection: close` on the last request ends it: {text}"
    );
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12))
        .collect();
    assert_eq!(statuses, ["201", "200", "203"], "{text}");
    let uris: Vec<String> = upstream
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|seen| seen.uri.clone())
        .collect();
    assert_eq!(uris, ["/status/201", "/delay/50", "/status/203"]);
}

/// Every response carries a current `Date` (RFC 9110 6.6.1): the upstream's is passed on, and
/// the sidecar's own answers get one that follows the clock.
#[tokio::test]
async fn responses_carry_a_current_date() {
    let upstream = Upstream::start("monolith").await;
    let sidecar = Sidecar::start(&backend("monolith", "http", upstream.addr)).await;
    let date = |response: &client::Response| {
        let value = response.header("date");
        httpdate::parse_http_date(value).unwrap_or_else(|error| panic!("Date {value:?}: {error}"))
    };
    let proxied = client::get(sidecar.outbound, "monolith", "/")
        .await
        .unwrap();
    assert_eq!(proxied.status, 200);
    let before = std::time::SystemTime::now();
    let first = client::get(sidecar.outbound, "nowhere", "/").await.unwrap();
    assert_eq!(first.status, 502);
    // A Date has a resolution of one second: the next answer, 1.1 s later, is dated later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = client::get(sidecar.outbound, "nowhere", "/").await.unwrap();
    let after = std::time::SystemTime::now();
    let (proxied, first, second) = (date(&proxied), date(&first), date(&second));
    assert!(proxied <= after && first <= after && second <= after);
    // Dates are whole seconds: at most one second behind the last whole second before.
    assert!(
        first + Duration::from_secs(2) > before,
        "{first:?} before {before:?}"
    );
    assert!(
        second > first,
        "the sidecar's Date follows the clock: {first:?}, then {second:?}"
    );
}

#[tokio::test]
async fn unknown_service_and_dead_upstream_get_clear_answers() {
    // The discard port: nothing listens there, and no other test can take it meanwhile.
    let dead = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(&backend("gone", "http", dead)).await;
    let response = client::get(sidecar.outbound, "nowhere", "/").await.unwrap();
    assert_eq!(response.status, 502);
    assert_eq!(response.header("x-ficus-error"), "no-route");
    let response = client::get(sidecar.outbound, "10.1.2.3:8080", "/")
        .await
        .unwrap();
    assert_eq!(response.status, 502, "an address is not a mesh service");

    let response = client::get(sidecar.outbound, "gone", "/").await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("x-ficus-error"), "upstream-connect-failure");
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_requests_total", &[("response_flags", "NR")]),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[
                ("response_flags", "UF"),
                ("destination_backend", "shop/gone")
            ]
        ),
        1.0
    );
}

/// `x-ficus-timeout-ms` is believed only from a verified peer sidecar: a plaintext client
/// cannot stretch the inbound wait past `upstreamResponseTimeout`, and the app never sees it.
#[tokio::test]
async fn inbound_ignores_a_plaintext_clients_timeout_header() {
    let app = Upstream::start("app").await;
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let mesh = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                spec: {proxy: {upstreamResponseTimeout: 1s}}\n---\n";
    let config = mesh.to_owned() + &backend("unused", "http", app.addr);
    let sidecar = Sidecar::start_with(&config, options).await;
    let mut h1 = H1Client::connect(sidecar.inbound).await.unwrap();
    let request = Request::get("/delay/2000")
        .header("host", "client.shop")
        .header("x-ficus-timeout-ms", "60000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h1.send(request).await.unwrap();
    assert_eq!(response.status, 504);
    assert_eq!(response.header("x-ficus-error"), "upstream-timeout");
    let seen = app.last().unwrap();
    assert!(!seen.headers.contains_key("x-ficus-timeout-ms"));
}

#[tokio::test]
async fn inbound_forwards_to_the_app() {
    let app = Upstream::start("app").await;
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend("unused", "http", app.addr), options).await;
    let mut h1 = H1Client::connect(sidecar.inbound).await.unwrap();
    let response = h1.get("client.shop", "/in").await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "app");
    assert_eq!(app.last().unwrap().headers["host"], "client.shop");
    let mut h2 = H2Client::connect(sidecar.inbound).await.unwrap();
    let request = Request::get("http://client.shop/in2")
        .version(http::Version::HTTP_2)
        .header("x-ficus-peer-identity", "spiffe://forged")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2.send(request).await.unwrap().status, 200);
    let seen = app.last().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert!(!seen.headers.contains_key("x-ficus-peer-identity"));
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        2.0
    );
}

/// The mesh's own fields are removed from a request's trailers as from its head: the app must
/// not find a forged `x-ficus-peer-identity` there either. The app (`/echo`) streams the
/// request body back with its trailers, so the response's trailers are what it was given.
#[tokio::test]
async fn inbound_request_trailers_lose_the_mesh_fields() {
    use http_body_util::BodyExt;
    let app = Upstream::start("app").await;
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend("unused", "http", app.addr), options).await;
    let mut sender = client::h2c_sender(sidecar.inbound).await.unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-ficus-peer-identity", "spiffe://forged".parse().unwrap());
    trailers.insert(
        "x-forwarded-client-cert",
        "By=spiffe://forged".parse().unwrap(),
    );
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body = Full::new(Bytes::from_static(b"payload"))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    let request = Request::post("http://client.shop/echo")
        .version(http::Version::HTTP_2)
        .body(body)
        .unwrap();
    let exchange = async {
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap()
    };
    let echoed = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the echo within 10 s");
    let seen = echoed
        .trailers()
        .cloned()
        .expect("the app got the trailers");
    assert_eq!(echoed.to_bytes(), "payload");
    assert_eq!(seen["x-checksum"], "abc", "other trailers pass: {seen:?}");
    assert!(!seen.contains_key("x-ficus-peer-identity"), "{seen:?}");
    assert!(!seen.contains_key("x-forwarded-client-cert"), "{seen:?}");
}

/// A raw HTTP/1.1 upstream that answers every request `200 ok` and hands over the bytes of
/// each request it read (head, and a chunked body through its last chunk or a
/// `content-length` one), so a test sees the request exactly as it went on the wire.
async fn raw_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sent, received) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf));
                    let Ok(Ok(n @ 1..)) = read.await else { return };
                    bytes.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let head = text[..end].to_ascii_lowercase();
                    let body = &text[end + 4..];
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let complete = if head.contains("transfer-encoding: chunked") {
                        body.ends_with("0\r\n\r\n")
                    } else {
                        body.len() >= length.unwrap_or(0)
                    };
                    if complete {
                        let _ = sent.send(text).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        bytes.clear();
                    }
                }
            });
        }
    });
    (addr, received, task)
}

async fn next_request(received: &mut tokio::sync::mpsc::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the upstream got a request within 10 s")
        .unwrap()
}

/// What crosses to an HTTP/1.1 upstream: a GET's chunked body is sent (hyper's client would
/// drop a GET body of unknown length in silence), HTTP/2 cookie fields become one line
/// (RFC 9113 §8.2.3), an `Upgrade: h2c` is not carried (h2c smuggling past routing and
/// authorization), and a made-up `x-forwarded-client-cert` is removed.
#[tokio::test]
async fn requests_reach_an_http1_upstream_in_one_reading() {
    let (addr, mut received, _task) = raw_upstream().await;
    let sidecar = Sidecar::start(&backend("search", "http", addr)).await;

    let raw = b"GET /_search HTTP/1.1\r\nhost: search\r\ntransfer-encoding: chunked\r\n\
                x-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/shop/sa/admin\r\n\r\n\
                d\r\n{\"query\":\"x\"}\r\n0\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.outbound, raw, Duration::from_secs(2)).await;
    assert_eq!(outcome.status(), Some(200));
    let request = next_request(&mut received).await;
    assert!(
        request.contains("{\"query\":\"x\"}"),
        "the GET body crossed: {request:?}"
    );
    assert!(
        !request
            .to_ascii_lowercase()
            .contains("x-forwarded-client-cert"),
        "{request:?}"
    );

    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    let cookies = Request::get("http://search/page")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2.send(cookies).await.unwrap().status, 200);
    let request = next_request(&mut received).await.to_ascii_lowercase();
    let lines: Vec<&str> = request
        .lines()
        .filter(|l| l.starts_with("cookie:"))
        .collect();
    assert_eq!(lines, ["cookie: a=1; b=2"], "{request:?}");

    let raw = b"GET /up HTTP/1.1\r\nhost: search\r\nconnection: upgrade, http2-settings\r\n\
                upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.outbound, raw, Duration::from_secs(2)).await;
    assert_eq!(outcome.status(), Some(200), "answered as a plain request");
    let request = next_request(&mut received).await.to_ascii_lowercase();
    assert!(!request.contains("upgrade"), "{request:?}");
}

/// The inbound side: a plaintext client's `x-forwarded-proto: https` is not believed, an
/// absolute-form target's authority wins over a different `Host`, a made-up
/// `x-forwarded-client-cert` is removed, and CONNECT is refused.
#[tokio::test]
async fn inbound_requests_reach_the_app_in_one_reading() {
    let app = Upstream::start("app").await;
    let options = ficus_tests::process::SidecarOptions {
        app: Some(app.addr),
        ..Default::default()
    };
    let sidecar = Sidecar::start_with(&backend("unused", "http", app.addr), options).await;
    let raw = b"GET http://client.shop/in HTTP/1.1\r\nhost: other.example\r\n\
                x-forwarded-proto: https\r\nx-forwarded-client-cert: By=x\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.inbound, raw, Duration::from_secs(2)).await;
    assert_eq!(outcome.status(), Some(200));
    let seen = app.last().unwrap();
    assert_eq!(seen.headers["host"], "client.shop");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(!seen.headers.contains_key("x-forwarded-client-cert"));

    let raw = b"CONNECT app:443 HTTP/1.1\r\nhost: app:443\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.inbound, raw, Duration::from_secs(2)).await;
    assert_eq!(outcome.status(), Some(400));
    assert_eq!(app.count(), 1, "CONNECT never reached the app");
}

/// An h2c gRPC server whose response sends one message, is quiet for `gap`, then sends a
/// second and `grpc-status: 0`, as a server-streaming watch does.
async fn quiet_stream_server(gap: Duration) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                let frames = futures_util::stream::unfold(0u8, move |step| async move {
                    let frame = match step {
                        0 => Frame::data(Bytes::from_static(b"\0\0\0\0\x01a")),
                        1 => {
                            tokio::time::sleep(gap).await;
                            Frame::data(Bytes::from_static(b"\0\0\0\0\x01b"))
                        }
                        2 => {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            Frame::trailers(trailers)
                        }
                        _ => return None,
                    };
                    Some((Ok::<_, std::convert::Infallible>(frame), step + 1))
                });
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(frames))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, task)
}

/// A gRPC stream may be quiet for longer than `bodyIdleTimeout` (a watch sending one message
/// a minute): its bodies are bounded by `streamIdleTimeout` instead (5 min by default).
#[tokio::test]
async fn a_quiet_grpc_stream_outlives_the_body_idle_timeout() {
    let (addr, _task) = quiet_stream_server(Duration::from_millis(1500)).await;
    let config = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                  spec: {proxy: {bodyIdleTimeout: 1s, streamIdleTimeout: 10s}}\n---\n"
        .to_owned()
        + &backend("watch", "grpc", addr);
    let sidecar = Sidecar::start(&config).await;
    let mut h2 = H2Client::connect(sidecar.outbound).await.unwrap();
    let request = Request::post("http://watch.shop/watch.Watch/Changes")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = h2.send(request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.as_ref(), b"\0\0\0\0\x01a\0\0\0\0\x01b");
    assert_eq!(response.trailers.expect("trailers")["grpc-status"], "0");
}

/// A gRPC client stream may be quiet for longer than `bodyIdleTimeout` too: its request body
/// is bounded by `streamIdleTimeout`, as the response's is.
#[tokio::test]
async fn a_quiet_grpc_client_stream_outlives_the_body_idle_timeout() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let upstream = Upstream::start("grpc").await;
    let config = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                  spec: {proxy: {bodyIdleTimeout: 1s, streamIdleTimeout: 10s}}\n---\n"
        .to_owned()
        + &backend("echo", "grpc", upstream.addr);
    let sidecar = Sidecar::start(&config).await;
    let mut sender = client::h2c_sender(sidecar.outbound).await.unwrap();
    // One message, 1.5 s of quiet, a second message, the end.
    let frames = futures_util::stream::unfold(0u8, |step| async move {
        let data: &'static [u8] = match step {
            0 => b"\0\0\0\0\x01a",
            1 => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                b"\0\0\0\0\x01b"
            }
            _ => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(data))),
            step + 1,
        ))
    });
    let frames = Box::pin(frames);
    let request = Request::post("http://echo.shop/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(frames))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("response head within 10 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("body within 10 s")
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(collected.to_bytes().as_ref(), b"\0\0\0\0\x01a\0\0\0\0\x01b");
    assert_eq!(trailers["grpc-status"], "0");
}
