//! Nothing left behind: rounds of mixed traffic through one sidecar (HTTP/1.1, h2c, WebSocket,
//! opaque TCP, requests abandoned mid-flight, unroutable and malformed requests), after which
//! the sidecar's file descriptors come back to where they started once the pools idle out, and
//! its memory stops growing from one round to the next.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client::{self, H1Client, H2Client};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::{TcpEcho, Upstream, WebSocketEcho};
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 12;

/// Waits (15 s at most) until `sidecar` holds at most `bound` descriptors; what it holds then.
async fn fds_settle(sidecar: &Sidecar, bound: usize) -> Vec<std::path::PathBuf> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = sidecar.open_fds();
        if now.len() <= bound || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Targets {
    outbound: SocketAddr,
    tcp: SocketAddr,
}

/// One round: every kind of traffic at once; panics on any unexpected answer.
async fn round(targets: &Targets) {
    let outbound = targets.outbound;
    let mut tasks = tokio::task::JoinSet::new();
    // HTTP/1.1 keep-alive clients, closed after their requests.
    for _ in 0..12 {
        tasks.spawn(async move {
            let mut client = H1Client::connect(outbound).await.unwrap();
            for _ in 0..10 {
                assert_eq!(client.get("web.shop", "/").await.unwrap().status, 200);
            }
        });
    }
    // h2c downstream to an h2c Backend.
    for _ in 0..3 {
        tasks.spawn(async move {
            let mut client = H2Client::connect(outbound).await.unwrap();
            for _ in 0..10 {
                let request = Request::get("http://api.shop/")
                    .version(http::Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(client.send(request).await.unwrap().status, 200);
            }
        });
    }
    // WebSocket sessions: half closed properly, half dropped mid-session.
    for i in 0..6 {
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
            let (mut ws, response) =
                tokio_tungstenite::client_async("ws://chat.shop/socket", stream)
                    .await
                    .unwrap();
            assert_eq!(response.status(), 101);
            client::ws_echo(&mut ws, "hello").await;
            if i % 2 == 0 {
                ws.close(None).await.unwrap();
            }
        });
    }
    // Opaque TCP through the Backend's listener.
    let tcp = targets.tcp;
    for _ in 0..6 {
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
            stream.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 6];
            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"t:ping");
        });
    }
    // Requests whose clients go away while the upstream is still working on them.
    for _ in 0..6 {
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
            stream
                .write_all(b"GET /delay/3000 HTTP/1.1\r\nhost: web.shop\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
    }
    // Unroutable and malformed requests.
    for _ in 0..6 {
        tasks.spawn(async move {
            let response = client::get(outbound, "nowhere.shop", "/").await.unwrap();
            assert_eq!(response.status, 502);
        });
    }
    for _ in 0..3 {
        tasks.spawn(async move {
            let outcome = client::raw_exchange(
                outbound,
                b"POST / HTTP/1.1\r\nhost: web.shop\r\ncontent-length: 3\r\n\
                  content-length: 4\r\n\r\nabcd",
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(outcome.status(), Some(400));
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_leaves_no_descriptors_or_growing_memory_behind() {
    let web = Upstream::start("web").await;
    let api = Upstream::start("api").await;
    let chat = WebSocketEcho::start().await;
    let echo = TcpEcho::start("t:").await;
    let backend = |name: &str, protocol: &str, addr: SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{protocol: {protocol}, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
        )
    };
    // Pooled upstream connections close after 1 s idle, so the descriptors can come back.
    let config = |tcp: SocketAddr| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{proxy: {{upstreamIdleTimeout: 1s}}}}\n---\n{}{}{}\
             apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cache, namespace: shop}}\n\
             spec: {{protocol: tcp, listen: \"{tcp}\", endpoints: [{{address: \"{}\"}}]}}\n",
            backend("web", "http", web.addr),
            backend("api", "http2", api.addr),
            backend("chat", "http", chat.addr),
            echo.addr
        )
    };
    let (sidecar, tcp) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let fds_before = sidecar.open_fds().len();
    let targets = Targets {
        outbound: sidecar.outbound,
        tcp,
    };

    let mut rss = Vec::new();
    for _ in 0..ROUNDS {
        round(&targets).await;
        rss.push(sidecar.rss_kib());
    }
    eprintln!("fds before {fds_before}, RSS per round (KiB) {rss:?}");

    // Downstream connections are closed by their clients, upstream ones idle out; what may stay
    // is at most one HTTP/2 connection per h2c endpoint and a connection the admin kept.
    let fds_after = fds_settle(&sidecar, fds_before + 2).await;
    assert!(
        fds_after.len() <= fds_before + 2,
        "descriptors {fds_before} → {}: {fds_after:?}",
        fds_after.len()
    );
    // The first rounds grow the heap (buffers, pools, metric series; RSS levels off after
    // about five rounds, and any round may raise the high-water mark a little with more
    // connections at once); later rounds reuse it. Against the highest of the first six
    // rounds, the last six (~1,000 requests on ~250 connections) must add under 8 MiB: a leak
    // of 10 KiB per request, or 40 KiB per connection, would add more.
    let settled = rss[..ROUNDS / 2].iter().copied().max().unwrap_or_default();
    let last = rss[ROUNDS - 1];
    assert!(
        last < settled + 8 * 1024,
        "RSS kept growing round after round: {rss:?} KiB"
    );
    let metrics = sidecar.metrics().await;
    let closed = metrics.sum("ficus_tcp_connections_closed_total", &[]);
    assert_eq!(closed, (6 * ROUNDS) as f64, "every TCP tunnel was closed");
    // Each HTTP request counted once: 120 HTTP/1.1, 30 h2c, 6 upgrades, 6 abandoned, 6
    // unroutable per round (the malformed ones never become requests).
    let requests = metrics.sum("ficus_requests_total", &[("direction", "outbound")]);
    assert_eq!(requests, (168 * ROUNDS) as f64);
    let abandoned = metrics.sum("ficus_requests_total", &[("response_flags", "DC")]);
    assert_eq!(abandoned, (6 * ROUNDS) as f64);
}

/// An upstream that answers every request with `size` bytes of body, writing until it is done
/// or its connection is closed; `closed` is set when a write fails.
async fn big_answer(
    size: usize,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&closed);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let flag = std::sync::Arc::clone(&flag);
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                if stream.read(&mut head).await.unwrap_or(0) == 0 {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut result = stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").as_bytes(),
                    )
                    .await;
                let mut sent = 0;
                while result.is_ok() && sent < size {
                    result = stream
                        .write_all(&chunk[..chunk.len().min(size - sent)])
                        .await;
                    sent += chunk.len();
                }
                if result.is_err() {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, closed, task)
}

/// A client that asks for a large response and then reads nothing: the sidecar stops waiting
/// for it once it has taken no bytes for the stall limit (here the connection idle timeout,
/// 1 s) and closes both its connections, rather than holding them for as long as the client
/// keeps its socket open.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_at_the_stall_limit() {
    let (upstream, upstream_closed, task) = big_answer(256 << 20).await;
    let sidecar = Sidecar::start(&idle_after_1s(&[("big", upstream)])).await;
    let fds_before = sidecar.open_fds().len();
    let mut client = tokio::net::TcpStream::connect(sidecar.outbound)
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: big.shop\r\n\r\n")
        .await
        .unwrap();
    // The client holds its socket open and reads nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !upstream_closed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fds_after = fds_settle(&sidecar, fds_before).await;
    assert!(
        fds_after.len() <= fds_before,
        "descriptors {fds_before} → {}: {fds_after:?}",
        fds_after.len()
    );
    // What the client gets is cut short of the 256 MiB promised.
    let mut received = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection was left open"),
        }
    }
    assert!(received < 256 << 20, "{received} bytes");
    task.abort();
}

/// A config with a connection idle timeout of 1 s and an `http` Backend per (name, address).
fn idle_after_1s(backends: &[(&str, SocketAddr)]) -> String {
    let mut config = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                      spec: {proxy: {connectionIdleTimeout: 1s}}\n"
        .to_owned();
    for (name, address) in backends {
        config.push_str(&format!(
            "---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{address}\"}}]}}\n"
        ));
    }
    config
}

/// An HTTP/2 client connection to `address`, and how its connection task ended (once it has).
async fn h2_connection(
    address: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::sync::oneshot::Receiver<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = closed_tx.send(connection.await);
    });
    (sender, closed)
}

/// An HTTP/2 client that stops granting window to one stream (no WINDOW_UPDATE) while its
/// connection stays busy with other streams: the socket keeps taking bytes, so the socket's
/// stall bound never fires, but the stream is bounded all the same (between one and two
/// stall limits, the connection idle timeout of 1 s here): the connection is closed, and so
/// is the upstream connection the stream held.
#[tokio::test]
async fn an_http2_stream_granted_no_window_loses_its_connection_at_the_stall_limit() {
    let (big, upstream_closed, task) = big_answer(256 << 20).await;
    let api = Upstream::start("api").await;
    let config = idle_after_1s(&[("big", big), ("api", api.addr)]);
    let sidecar = Sidecar::start(&config).await;
    let (mut sender, closed) = h2_connection(sidecar.outbound).await;
    let get = |authority: &str| {
        Request::get(format!("http://{authority}/"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // The body is never read, so its window is never given back.
    let stalled = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(get("big.shop")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stalled.status(), 200);
    // Other streams are answered meanwhile, until the connection is closed.
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !upstream_closed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream's upstream connection was never closed ({answered} answered)"
        );
        let request =
            tokio::time::timeout(Duration::from_secs(5), sender.send_request(get("api.shop")));
        match request.await {
            Ok(Ok(response)) if response.status() == 200 => answered += 1,
            Ok(Ok(response)) => panic!("{}", response.status()),
            Ok(Err(_)) => {} // the connection is being closed
            Err(_) => panic!("a request on the busy connection hung"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered > 5,
        "the connection was busy while the stream stalled: {answered}"
    );
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the connection was closed")
        .unwrap()
        .expect_err("ended by the sidecar mid-stream");
    drop(stalled);
    task.abort();
}

/// An HTTP/2 connection without a stream for the connection idle timeout (1 s here) is sent
/// GOAWAY and closed; a stream that lasts longer than that keeps it open until it ends.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let upstream = Upstream::start("api").await;
    let config = idle_after_1s(&[("api", upstream.addr)]);
    let sidecar = Sidecar::start(&config).await;
    let (mut sender, closed) = h2_connection(sidecar.outbound).await;
    // Longer than the idle timeout, but the stream is open all along.
    let request = Request::get("http://api.shop/delay/1500")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // A stream the client gives up on (reset) before its answer counts as ended too.
    let request = Request::get("http://api.shop/delay/5000")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(200), sender.send_request(request));
    assert!(abandoned.await.is_err(), "given up before the answer");
    // Idle from here: the sidecar closes the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the idle connection was closed");
    assert!(ended.unwrap().is_ok(), "closed with GOAWAY, not an error");
}
