//! Upstreams that break off (RELIABILITY UP-1) and `Expect: 100-continue` through the proxy
//! (RES-4), against the real sidecar.
//!
//! The faulty upstream is a raw TCP listener of the test's own: it reads a request head, then
//! resets the connection (`SO_LINGER` 0) either before answering or part-way through a body
//! whose framing promised more. The client is raw too, so it sees exactly what framing the
//! sidecar gave it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ficus_tests::client::{self, RawOutcome};
use ficus_tests::process::Sidecar;
use ficus_tests::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every wait of a client here.
const DEADLINE: Duration = Duration::from_secs(10);

fn backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
    )
}

/// What the faulty upstream sends after a request head, before it resets the connection.
#[derive(Clone, Copy)]
enum Fault {
    /// Nothing.
    BeforeHeaders,
    /// A head with `Content-Length: 100` and 10 bytes of body.
    MidLengthBody,
    /// A chunked head and one chunk, never the last chunk.
    MidChunkedBody,
}

/// A listener that answers every connection with `fault`; counts the connections (each one
/// a try of the proxy: nothing is pooled across a reset).
struct FaultyUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultyUpstream {
    async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_fault(stream, fault));
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_fault(mut stream: TcpStream, fault: Fault) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buffer[..n]),
            _ => return,
        }
    }
    let partial: &[u8] = match fault {
        Fault::BeforeHeaders => b"",
        Fault::MidLengthBody => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        Fault::MidChunkedBody => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n"
        }
    };
    let _ = stream.write_all(partial).await;
    let _ = stream.flush().await;
    if !partial.is_empty() {
        // Let the proxy pass on what came, so the break is mid-body and not before it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // RST, not FIN.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The bytes of `outcome` after the response head.
fn body(outcome: &RawOutcome) -> &[u8] {
    let bytes = &outcome.bytes;
    match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &bytes[end + 4..],
        None => &[],
    }
}

fn text(outcome: &RawOutcome) -> String {
    String::from_utf8_lossy(&outcome.bytes).into_owned()
}

#[tokio::test]
async fn an_upstream_reset_before_headers_is_a_502_and_a_post_is_tried_once() {
    let upstream = FaultyUpstream::start(Fault::BeforeHeaders).await;
    let sidecar = Sidecar::start(&backend("flaky", upstream.addr)).await;
    let request =
        b"POST /charge HTTP/1.1\r\nHost: flaky\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}";
    let outcome = client::raw_exchange(sidecar.outbound, request, DEADLINE).await;
    assert_eq!(outcome.status(), Some(502), "{}", text(&outcome));
    let response = text(&outcome).to_ascii_lowercase();
    assert!(
        response.contains("x-ficus-error: upstream-reset"),
        "{response}"
    );
    assert_eq!(
        upstream.connections(),
        1,
        "a POST the upstream may have acted on is not resent"
    );
    let labels = [("reason", "reset_before_headers")];
    let failures = sidecar.wait_metric("ficus_upstream_failures_total", &labels, 1.0, DEADLINE);
    assert_eq!(
        failures.await.sum("ficus_upstream_failures_total", &labels),
        1.0
    );
}

#[tokio::test]
async fn an_upstream_reset_mid_body_never_looks_complete_downstream() {
    for (fault, name) in [
        (Fault::MidLengthBody, "content-length"),
        (Fault::MidChunkedBody, "chunked"),
    ] {
        let upstream = FaultyUpstream::start(fault).await;
        let sidecar = Sidecar::start(&backend("flaky", upstream.addr)).await;
        // Keep-alive asked for: only the sidecar's close can end the exchange early.
        let request = b"GET /big HTTP/1.1\r\nHost: flaky\r\n\r\n";
        let outcome = client::raw_exchange(sidecar.outbound, request, DEADLINE).await;
        assert!(
            outcome.closed,
            "{name}: the connection is closed, not left waiting for the rest: {}",
            text(&outcome)
        );
        assert_eq!(outcome.status(), Some(200), "{name}: the head had gone out");
        let body = body(&outcome);
        match fault {
            Fault::MidLengthBody => assert!(
                body.len() < 100,
                "{name}: {} of the 100 bytes promised",
                body.len()
            ),
            _ => assert!(
                !body.windows(5).any(|w| w == b"0\r\n\r\n"),
                "{name}: no last chunk: {}",
                text(&outcome)
            ),
        }
        assert_eq!(
            upstream.connections(),
            1,
            "{name}: a started response is not retried"
        );
    }
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let app = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&backend("echo", app.addr)).await;
    let mut stream = TcpStream::connect(sidecar.outbound).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: echo\r\ncontent-length: 5\r\nexpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The head alone: the client waits for `100 Continue` before it sends the body.
    let interim = client::read_head(&mut stream, DEADLINE).await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"hello").await.unwrap();
    let rest = client::read_until_close(&mut stream, DEADLINE).await;
    let mut whole = interim;
    whole.extend_from_slice(&rest.bytes);
    let final_head = String::from_utf8_lossy(&whole).into_owned();
    assert!(
        final_head.contains("HTTP/1.1 200"),
        "the final answer follows: {final_head}"
    );
    assert_eq!(app.count(), 1);
}

/// A listener whose accept queue is full (it never accepts): the kernel drops further SYNs,
/// so a connect to it neither succeeds nor fails, as with a host that went silent. Returns
/// the address and what must stay open to keep the queue full.
async fn silent_endpoint() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<std::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let filled = tokio::task::spawn_blocking(move || {
        let mut filling = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => filling.push(stream),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return filling,
                Err(error) => panic!("filling the accept queue: {error}"),
            }
        }
        panic!("the accept queue of {addr} never filled");
    });
    (addr, listener, filled.await.unwrap())
}

/// RELIABILITY promise 3: the upstream connect has a timeout (a silent endpoint is a 503, not
/// a hang), and it is counted as such.
#[tokio::test]
async fn a_silent_endpoint_is_a_503_at_the_connect_timeout() {
    let (addr, _listener, _filling) = silent_endpoint().await;
    let mesh = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                spec:\n  proxy: {connectTimeout: 300ms}\n---\n";
    let sidecar = Sidecar::start(&format!("{mesh}{}", backend("silent", addr))).await;
    let request =
        b"POST /x HTTP/1.1\r\nHost: silent\r\ncontent-length: 0\r\nConnection: close\r\n\r\n";
    let outcome = client::raw_exchange(sidecar.outbound, request, DEADLINE).await;
    assert!(outcome.closed, "answered within {DEADLINE:?}");
    assert_eq!(outcome.status(), Some(503), "{}", text(&outcome));
    let response = text(&outcome).to_ascii_lowercase();
    assert!(
        response.contains("x-ficus-error: upstream-connect-failure"),
        "{response}"
    );
    let labels = [("reason", "connect_timeout")];
    let failures = sidecar.wait_metric("ficus_upstream_failures_total", &labels, 1.0, DEADLINE);
    assert!(failures.await.sum("ficus_upstream_failures_total", &labels) >= 1.0);
}

/// An upstream that answers every request on a connection with `Keep-Alive: timeout=4`, as
/// Node.js does (with 5 s), and keeps the connection open; counts its connections.
async fn keep_alive_upstream() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=4\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buffer).await {
                        Ok(n) if n > 0 => pending.extend_from_slice(&buffer[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, connections, task)
}

/// An upstream's `Keep-Alive: timeout=N` bounds how long the pool reuses its connection (less
/// a margin): Node.js closes an idle connection at exactly its timeout, and a request with a
/// body written at that moment would be lost to an `ECONNRESET`.
#[tokio::test]
async fn an_upstream_keep_alive_timeout_bounds_reuse_of_its_connection() {
    let (addr, connections, _task) = keep_alive_upstream().await;
    let sidecar = Sidecar::start(&backend("node", addr)).await;
    let post = || {
        http::Request::post("/orders")
            .header("host", "node")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    for _ in 0..2 {
        let response = client::send(sidecar.outbound, post()).await.unwrap();
        assert_eq!(response.status, 200);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "reused within the timeout"
    );
    // Idle for 3.5 s: past 4 s less the margin (1 s), so not reused.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let response = client::send(sidecar.outbound, post()).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a connection the upstream is about to close is not reused"
    );
}
