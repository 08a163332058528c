//! The sidecar's HTTP/2 connections to upstreams, against real hyper (and raw frame) servers:
//! more connections when one is at the peer's stream cap, flow-control windows, GOAWAY.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::process::Sidecar;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Hang guard of every wait (not a performance bound).
const WAIT: Duration = Duration::from_secs(10);

fn h2c_backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  protocol: http2\n  endpoints: [{{address: \"{addr}\"}}]\n---\n"
    )
}

/// An h2c upstream that takes `max_streams` streams per connection and holds every request
/// until `gate` has a permit for it; counts connections and requests being held.
struct HeldUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections not closed yet.
    open: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl HeldUpstream {
    async fn start(max_streams: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (counted, still_open, holding, gated) = (
            Arc::clone(&connections),
            Arc::clone(&open),
            Arc::clone(&held),
            Arc::clone(&gate),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                still_open.fetch_add(1, Ordering::SeqCst);
                let (holding, gated) = (Arc::clone(&holding), Arc::clone(&gated));
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let (holding, gated) = (Arc::clone(&holding), Arc::clone(&gated));
                    async move {
                        holding.fetch_add(1, Ordering::SeqCst);
                        // Each request takes a permit for good: `add_permits(n)` frees n.
                        if let Ok(permit) = gated.acquire().await {
                            permit.forget();
                        }
                        holding.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(stream), service);
                let closed = Arc::clone(&still_open);
                tokio::spawn(async move {
                    let _ = connection.await;
                    closed.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            connections,
            open,
            held,
            gate,
        }
    }
}

/// 20 requests at once to an h2c upstream that takes 10 streams per connection: the sidecar
/// opens a second connection instead of queueing 10 of them behind the first (they would
/// wait for a stream until their try timed out).
#[tokio::test]
async fn requests_beyond_the_peers_stream_cap_go_to_another_connection() {
    let upstream = HeldUpstream::start(10).await;
    let sidecar = Sidecar::start(&h2c_backend("payments", upstream.addr)).await;
    let outbound = sidecar.outbound;
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { client::get(outbound, "payments", "/hold").await }))
        .collect();
    let held = Arc::clone(&upstream.held);
    ficus_tests::until("20 requests held by the upstream at once", WAIT, || {
        let held = held.load(Ordering::SeqCst);
        async move { held == 20 }
    })
    .await;
    assert!(upstream.connections.load(Ordering::SeqCst) >= 2);
    upstream.gate.add_permits(20);
    for call in calls {
        let response = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
        assert_eq!(response.unwrap().status, 200);
    }
}

/// The connections a burst opened beyond the first are closed once they have carried no
/// request for `upstreamIdleTimeout`; the first stays and serves what comes next.
#[tokio::test]
async fn connections_a_burst_opened_are_closed_when_idle() {
    let upstream = HeldUpstream::start(5).await;
    let mesh = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: mesh}\n\
                spec: {proxy: {upstreamIdleTimeout: 1s}}\n---\n";
    let config = format!("{mesh}{}", h2c_backend("payments", upstream.addr));
    let sidecar = Sidecar::start(&config).await;
    let outbound = sidecar.outbound;
    let calls: Vec<_> = (0..15)
        .map(|_| tokio::spawn(async move { client::get(outbound, "payments", "/hold").await }))
        .collect();
    let held = Arc::clone(&upstream.held);
    ficus_tests::until("15 requests held by the upstream at once", WAIT, || {
        let held = held.load(Ordering::SeqCst);
        async move { held == 15 }
    })
    .await;
    assert!(upstream.open.load(Ordering::SeqCst) >= 3);
    upstream.gate.add_permits(15);
    for call in calls {
        let response = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
        assert_eq!(response.unwrap().status, 200);
    }
    let open = Arc::clone(&upstream.open);
    ficus_tests::until("the idle extra connections closed", WAIT, || {
        let open = open.load(Ordering::SeqCst);
        async move { open == 1 }
    })
    .await;
    // The first connection serves the next request; no new one is opened for it.
    let opened = upstream.connections.load(Ordering::SeqCst);
    upstream.gate.add_permits(1);
    let response = client::get(outbound, "payments", "/next").await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), opened);
    assert_eq!(upstream.open.load(Ordering::SeqCst), 1);
}

/// A response body of `remaining` bytes made on demand, 16 KiB at a time, counting in
/// `progress` what the server has taken from it (it takes more only as its send window
/// allows).
struct Generated {
    remaining: usize,
    progress: Arc<AtomicUsize>,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let n = self.remaining.min(16 * 1024);
        if n == 0 {
            return std::task::Poll::Ready(None);
        }
        self.remaining -= n;
        self.progress.fetch_add(n, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![b'x'; n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// An h2c upstream answering `GET /big/N` with `size` bytes, counting in `progress[N]` how
/// much of each it got to send.
async fn big_upstream(size: usize, progress: Vec<Arc<AtomicUsize>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let progress = Arc::new(progress);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let progress = Arc::clone(&progress);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let index = request
                    .uri()
                    .path()
                    .strip_prefix("/big/")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let progress = Arc::clone(&progress[index.min(progress.len() - 1)]);
                async move {
                    let body = Generated {
                        remaining: size,
                        progress,
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Three downstream clients that stop reading 4 MiB responses do not stall a fourth response
/// on the same upstream HTTP/2 connection: the connection's receive window is far larger than
/// the windows the stalled streams hold.
#[tokio::test]
async fn readers_that_stall_do_not_starve_other_streams_of_the_connection() {
    const SIZE: usize = 4 * 1024 * 1024;
    let progress: Vec<_> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let upstream = big_upstream(SIZE, progress.clone()).await;
    let sidecar = Sidecar::start(&h2c_backend("payments", upstream)).await;

    // Three h2c clients with 64 KiB windows that read response heads and no body.
    let mut stalled = Vec::new();
    for n in 0..3 {
        let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(sidecar.outbound))
            .await
            .unwrap()
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
                .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("http://payments/big/{n}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        stalled.push((sender, response));
    }
    // Each stalled stream has taken at least a stream window of the upstream connection.
    let taken = progress.clone();
    ficus_tests::until("the stalled streams to fill their windows", WAIT, || {
        let filled = taken[..3]
            .iter()
            .all(|p| p.load(Ordering::SeqCst) >= 1024 * 1024);
        async move { filled }
    })
    .await;

    let response = client::get(sidecar.outbound, "payments", "/big/3")
        .await
        .expect("a fourth response is not stalled by the other three");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), SIZE);
    drop(stalled);
}

/// An h2c upstream whose first connection takes one request and answers it with GOAWAY (last
/// stream id 0, NO_ERROR) without processing it, in raw frames; later connections are a
/// hyper server that echoes the request body. Counts connections and processed requests.
async fn going_away_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
    // Length 8, type GOAWAY, stream 0; last stream id 0, error NO_ERROR.
    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let (counted, served) = (Arc::clone(&connections), Arc::clone(&processed));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::spawn(async move {
                    if stream.write_all(&SETTINGS).await.is_err() {
                        return;
                    }
                    let mut pending = Vec::new();
                    let mut preface = 24;
                    let mut chunk = [0u8; 4096];
                    // Until the client closes the connection it was told to leave.
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        pending.extend_from_slice(&chunk[..n]);
                        let skip = preface.min(pending.len());
                        pending.drain(..skip);
                        preface -= skip;
                        while pending.len() >= 9 {
                            let length = (usize::from(pending[0]) << 16)
                                | (usize::from(pending[1]) << 8)
                                | usize::from(pending[2]);
                            if pending.len() < 9 + length {
                                break;
                            }
                            let reply: &[u8] = match (pending[3], pending[4] & 1) {
                                (4, 0) => &SETTINGS_ACK,
                                (1, _) => &GOAWAY,
                                _ => &[],
                            };
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                            pending.drain(..9 + length);
                        }
                    }
                });
                continue;
            }
            let served = Arc::clone(&served);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let served = Arc::clone(&served);
                async move {
                    use http_body_util::BodyExt;
                    let body = request.into_body().collect().await?.to_bytes();
                    served.fetch_add(1, Ordering::SeqCst);
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(Full::new(body))
                        .unwrap();
                    Ok::<_, hyper::Error>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, connections, processed)
}

/// A stream above the last stream id of the upstream's GOAWAY was not processed (RFC 9113
/// §6.8): a gRPC call (a POST) that met it is sent again on a fresh connection instead of
/// failing with 502.
#[tokio::test]
async fn a_stream_left_out_by_goaway_is_resent_on_a_fresh_connection() {
    let (addr, connections, processed) = going_away_upstream().await;
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: grpc, endpoints: [{{address: \"{addr}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
         retry: {{attempts: 1, backoff: 1ms}}\n"
    );
    let sidecar = Sidecar::start(&config).await;
    let mut h2 = client::H2Client::connect(sidecar.outbound).await.unwrap();
    let message = Bytes::from_static(b"\0\0\0\0\x05order");
    let request = Request::post("http://api.shop/shop.Orders/Place")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .unwrap();
    let response = h2.send(request).await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.headers);
    assert_eq!(response.body, message);
    assert_eq!(processed.load(Ordering::SeqCst), 1);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
