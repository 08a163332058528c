//! Malformed HTTP/1 and request smuggling (RELIABILITY.md group A, HTTP1-1 to HTTP1-4), header
//! limits (RES-3) and slow peers (RES-1, and the slow body of RES-2), sent as exact bytes to the
//! real sidecar.
//!
//! Every case checks both sides: what the client got back (status, whether the connection was
//! closed before the read deadline) and what the upstream received. Where the upstream's own
//! parser would hide a problem (hyper drops `Content-Length` when `Transfer-Encoding` is
//! present), a recording [`Tap`] in front of it keeps the exact bytes the sidecar sent.
//!
//! Limits are configured small through a Mesh document so that the whole file runs in a few
//! seconds; every wait has a deadline. Each test ends by checking that the sidecar still serves
//! a normal request and that `/metrics` still parses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ficus_tests::client::{self, RawOutcome};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// `Mesh.spec.proxy` of most tests: small timeouts and header limits.
const LIMITS: &str =
    "{headerReadTimeout: 1s, bodyIdleTimeout: 1s, maxHeaderBytes: 16384, maxHeaders: 20}";
/// `maxHeaderBytes` of [`LIMITS`].
const MAX_HEADER_BYTES: usize = 16384;
/// `maxHeaders` of [`LIMITS`].
const MAX_HEADERS: usize = 20;
/// How long a client waits for the sidecar to answer and close after a rejection.
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);
/// Upper bound for the timeout cases (header read and body idle are 1 s in [`LIMITS`]).
const TIMEOUT_DEADLINE: Duration = Duration::from_secs(5);

// --- config -----------------------------------------------------------------------------------

fn mesh(proxy: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec:\n  proxy: {proxy}\n---\n"
    )
}

fn backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
    )
}

// --- raw client -------------------------------------------------------------------------------

/// Writes `bytes` while reading, until the peer closes or `deadline` passes. Unlike
/// [`client::raw_exchange`], a failed write (the sidecar closed early on a huge request) is
/// not an error, and the write side stays open so the sidecar never sees a half-close.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>, deadline: Duration) -> RawOutcome {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut writer = tokio::spawn(async move {
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut out = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let until = tokio::time::Instant::now() + deadline;
    let closed = loop {
        match tokio::time::timeout_at(until, read.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buffer[..n]),
            Err(_) => break false,
        }
    };
    // The write half lives until here. A writer still blocked on a peer that stopped
    // reading is stopped.
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    RawOutcome { bytes: out, closed }
}

/// Sends `bytes` one at a time, `every` apart, reading in between; stops when the peer closes
/// or `deadline` passes.
async fn drip(addr: SocketAddr, bytes: &[u8], every: Duration, deadline: Duration) -> RawOutcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let until = tokio::time::Instant::now() + deadline;
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    for byte in bytes.iter().copied().cycle() {
        if stream.write_all(&[byte]).await.is_err() {
            return RawOutcome {
                bytes: out,
                closed: true,
            };
        }
        let next = (tokio::time::Instant::now() + every).min(until);
        loop {
            match tokio::time::timeout_at(next, stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return RawOutcome {
                        bytes: out,
                        closed: true,
                    }
                }
                Ok(Ok(n)) => out.extend_from_slice(&buffer[..n]),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
    }
    RawOutcome {
        bytes: out,
        closed: false,
    }
}

fn text(outcome: &RawOutcome) -> String {
    String::from_utf8_lossy(&outcome.bytes[..outcome.bytes.len().min(400)]).into_owned()
}

/// A request head of exactly `size` bytes (request line, `Host: echo`, one padding header,
/// `Connection: close`, the empty line).
fn head_of_size(size: usize) -> Vec<u8> {
    let start = "GET /sized HTTP/1.1\r\nHost: echo\r\nConnection: close\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    let head = format!("{start}{}{end}", "a".repeat(pad));
    assert_eq!(head.len(), size);
    head.into_bytes()
}

/// A request with `fields` header fields in all (`Host` included).
fn head_with_fields(fields: usize) -> Vec<u8> {
    let mut head = String::from("GET /fields HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n");
    for i in 0..fields - 2 {
        head.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

// --- upstream side ----------------------------------------------------------------------------

/// Bytes the sidecar sent, one buffer per connection.
type Recordings = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A TCP relay in front of an upstream that keeps every byte the sidecar sent, per connection.
#[derive(Debug)]
struct Tap {
    addr: SocketAddr,
    connections: Recordings,
    task: JoinHandle<()>,
}

impl Tap {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("local addr");
        let connections: Recordings = Arc::default();
        let list = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((downstream, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let record = Arc::new(Mutex::new(Vec::new()));
                list.lock().expect("tap list").push(Arc::clone(&record));
                let (mut down_read, mut down_write) = downstream.into_split();
                let (mut up_read, mut up_write) = upstream.into_split();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        match down_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record
                                    .lock()
                                    .expect("tap record")
                                    .extend_from_slice(&buffer[..n]);
                                if up_write.write_all(&buffer[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = up_write.shutdown().await;
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut up_read, &mut down_write).await;
                    let _ = down_write.shutdown().await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// Every request head the sidecar sent, lowercased, in order per connection.
    fn heads(&self) -> Vec<String> {
        let connections = self.connections.lock().expect("tap list").clone();
        connections
            .iter()
            .flat_map(|record| request_heads(&record.lock().expect("tap record")))
            .collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a stream of HTTP/1.1 requests into heads, skipping bodies by their framing.
fn request_heads(raw: &[u8]) -> Vec<String> {
    let mut heads = Vec::new();
    let mut rest = raw;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        rest = &rest[end + 4..];
        let fields: Vec<(&str, &str)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        let chunked = fields
            .iter()
            .any(|(n, v)| *n == "transfer-encoding" && v.contains("chunked"));
        let length = fields
            .iter()
            .find(|(n, _)| *n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        if chunked {
            rest = skip_chunked(rest);
        } else if let Some(length) = length {
            rest = &rest[length.min(rest.len())..];
        }
        heads.push(head);
    }
    heads
}

fn skip_chunked(mut rest: &[u8]) -> &[u8] {
    loop {
        let Some(line) = find(rest, b"\r\n") else {
            return &[];
        };
        let size_text = String::from_utf8_lossy(&rest[..line]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16);
        rest = &rest[line + 2..];
        match size {
            Ok(0) => loop {
                let Some(end) = find(rest, b"\r\n") else {
                    return &[];
                };
                rest = &rest[end + 2..];
                if end == 0 {
                    return rest;
                }
            },
            Ok(size) => rest = &rest[(size + 2).min(rest.len())..],
            Err(_) => return &[],
        }
    }
}

fn has_field(head: &str, name: &str) -> bool {
    head.split("\r\n")
        .skip(1)
        .any(|line| line.split_once(':').is_some_and(|(n, _)| n.trim() == name))
}

/// A raw upstream that reads one request head and answers it with a `size`-byte header field.
async fn big_header_upstream(size: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while find(&seen, b"\r\n\r\n").is_none() {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
                    "b".repeat(size)
                );
                let _ = stream.write_all(response.as_bytes()).await;
                // Wait for the sidecar to hang up (bounded), so it never sees a reset first.
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
            });
        }
    });
    (addr, task)
}

/// What a [`sink_upstream`] saw on one connection: the bytes, and whether the sidecar closed
/// the connection (`false`: still open when the sink gave up).
#[derive(Debug)]
struct SinkConnection {
    bytes: Vec<u8>,
    closed_by_sidecar: bool,
}

/// A raw upstream that reads whatever arrives and never answers, like an app waiting for the
/// rest of a request body; with `answer`, it writes that once a request head is in, and then
/// nothing more (a response that stalls). Reports each connection when the sidecar closes it.
async fn sink_upstream(
    answer: Option<&'static [u8]>,
) -> (SocketAddr, mpsc::Receiver<SinkConnection>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buffer = [0u8; 4096];
                let until = tokio::time::Instant::now() + Duration::from_secs(20);
                let closed_by_sidecar = loop {
                    match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(n)) => {
                            let head_before = find(&bytes, b"\r\n\r\n").is_some();
                            bytes.extend_from_slice(&buffer[..n]);
                            let head_now = find(&bytes, b"\r\n\r\n").is_some();
                            if let (Some(answer), false, true) = (answer, head_before, head_now) {
                                let _ = stream.write_all(answer).await;
                            }
                        }
                        Err(_) => break false,
                    }
                };
                let _ = tx
                    .send(SinkConnection {
                        bytes,
                        closed_by_sidecar,
                    })
                    .await;
            });
        }
    });
    (addr, rx, task)
}

/// The next connection of a [`sink_upstream`], which the sidecar must have closed.
async fn closed_by_sidecar(connections: &mut mpsc::Receiver<SinkConnection>) -> SinkConnection {
    let seen = tokio::time::timeout(TIMEOUT_DEADLINE, connections.recv())
        .await
        .expect("the upstream connection is closed, not left hanging")
        .expect("sink running");
    assert!(
        seen.closed_by_sidecar,
        "the sidecar closed the upstream connection"
    );
    seen
}

/// The sidecar still routes a plain request to `upstream` (named `echo`) and `/metrics` parses.
async fn assert_still_serving(sidecar: &Sidecar, addr: SocketAddr, upstream: &Upstream) {
    let before = upstream.count();
    let response = client::get(addr, "echo", "/healthy")
        .await
        .expect("a normal request after the abuse");
    assert_eq!(
        response.status,
        200,
        "normal request after the abuse: {}",
        response.text()
    );
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(upstream.last().expect("recorded").uri, "/healthy");
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.sum("ficus_requests_total", &[]) >= 1.0,
        "/metrics parses and counts requests: {:?}",
        metrics.samples.len()
    );
}

/// Waits (at most 2 s) until `upstream` has recorded nothing new for 100 ms, and returns its
/// count: a request the sidecar gave up on can reach the upstream after the client already
/// has its answer.
async fn settle(upstream: &Upstream) -> usize {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut last = upstream.count();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = upstream.count();
        if now == last || tokio::time::Instant::now() >= until {
            return now;
        }
        last = now;
    }
}

fn uris(upstream: &Upstream) -> Vec<String> {
    upstream
        .received
        .lock()
        .expect("recorded")
        .iter()
        .map(|r| r.uri.clone())
        .collect()
}

// --- HTTP1-1 ----------------------------------------------------------------------------------

/// Requests with both `Content-Length` and a valid `Transfer-Encoding: chunked`: the sidecar
/// may answer 400 and close, or drop `Content-Length`, re-frame and close after responding
/// (RFC 9112 §6.3). Anything after the chunked body must never become a request.
fn cl_te_reframable() -> Vec<(&'static str, Vec<u8>)> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n";
    vec![
        (
            // A CL-first front end would take 6 bytes ("0\r\n\r\nG") and leave the rest.
            "CL then TE, request after the last chunk",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: echo\r\nContent-Length: 6\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .into_bytes(),
        ),
        (
            // A CL-first reader takes "27\r\n" as the body and the chunk data as a request.
            "TE then CL, request inside the chunk",
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            )
            .into_bytes(),
        ),
        (
            "CL, then TE listing identity before chunked",
            format!(
                "POST /cl-te-list HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n\
                 Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .into_bytes(),
        ),
    ]
}

/// `Transfer-Encoding` that is not (only, finally) `chunked`, or is hidden from some parsers,
/// together with `Content-Length`: the length is unknowable, so 400 (or close) and nothing
/// forwarded.
fn cl_te_rejected() -> Vec<(&'static str, Vec<u8>)> {
    let tail = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n";
    let with = |te_line: &str| {
        format!(
            "POST /bad-te HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n{te_line}\r\n\r\n{tail}"
        )
        .into_bytes()
    };
    vec![
        ("TE xchunked", with("Transfer-Encoding: xchunked")),
        (
            "TE chunked, identity (chunked not last)",
            with("Transfer-Encoding: chunked, identity"),
        ),
        (
            "space before the colon",
            with("Transfer-Encoding : chunked"),
        ),
        (
            "obs-fold continuation line",
            with("Transfer-Encoding:\r\n chunked"),
        ),
        (
            "TE in HTTP/1.0",
            format!(
                "POST /bad-te HTTP/1.0\r\nHost: echo\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{tail}"
            )
            .into_bytes(),
        ),
    ]
}

/// Runs the HTTP1-1 table against `listener`, whose requests reach `upstream` through `tap`.
async fn cl_te_cases(listener: SocketAddr, upstream: &Upstream, tap: &Tap) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, bytes) in cl_te_reframable() {
        let before = upstream.count();
        let outcome = exchange(listener, bytes, CLOSE_DEADLINE).await;
        let forwarded = upstream.count() - before;
        if !outcome.closed {
            failures.push(format!(
                "{name}: connection still open after {CLOSE_DEADLINE:?}: {}",
                text(&outcome)
            ));
        }
        if outcome.responses() > 1 {
            failures.push(format!(
                "{name}: {} responses: {}",
                outcome.responses(),
                text(&outcome)
            ));
        }
        match outcome.status() {
            Some(400) | None if forwarded == 0 => {}
            Some(_) if forwarded == 1 => {} // re-framed; headers checked below
            status => failures.push(format!(
                "{name}: status {status:?} with {forwarded} requests forwarded: {}",
                text(&outcome)
            )),
        }
    }
    for (name, bytes) in cl_te_rejected() {
        let before = upstream.count();
        let outcome = exchange(listener, bytes, CLOSE_DEADLINE).await;
        let rejected = outcome.closed && matches!(outcome.status(), Some(400) | None);
        if !rejected || upstream.count() != before {
            failures.push(format!(
                "{name}: want 400 (or close) and nothing forwarded; got status {:?}, closed {}, \
                 {} forwarded: {}",
                outcome.status(),
                outcome.closed,
                upstream.count() - before,
                text(&outcome)
            ));
        }
    }
    let total = settle(upstream).await;
    let seen = uris(upstream);
    if seen.iter().any(|uri| uri.contains("smuggled")) {
        failures.push(format!("the upstream parsed a smuggled request: {seen:?}"));
    }
    let heads = tap.heads();
    for head in &heads {
        if has_field(head, "content-length") && has_field(head, "transfer-encoding") {
            failures.push(format!(
                "the upstream got both Content-Length and Transfer-Encoding:\n{head}"
            ));
        }
        if head.starts_with("get /smuggled") {
            failures.push(format!("a smuggled request head went upstream:\n{head}"));
        }
    }
    if heads.len() != total {
        failures.push(format!(
            "the tap saw {} request heads but the upstream parsed {total}: {heads:?}",
            heads.len()
        ));
    }
    failures
}

#[tokio::test]
async fn http1_1_content_length_with_chunked_outbound() {
    let upstream = Upstream::start("echo").await;
    let tap = Tap::start(upstream.addr).await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", tap.addr))).await;
    let failures = cl_te_cases(sidecar.outbound, &upstream, &tap).await;
    assert!(
        failures.is_empty(),
        "HTTP1-1 outbound:\n{}",
        failures.join("\n")
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn http1_1_content_length_with_chunked_inbound() {
    let upstream = Upstream::start("echo").await;
    let tap = Tap::start(upstream.addr).await;
    let options = SidecarOptions {
        app: Some(tap.addr),
        ..Default::default()
    };
    let sidecar =
        Sidecar::start_with(&(mesh(LIMITS) + &backend("echo", upstream.addr)), options).await;
    let failures = cl_te_cases(sidecar.inbound, &upstream, &tap).await;
    assert!(
        failures.is_empty(),
        "HTTP1-1 inbound:\n{}",
        failures.join("\n")
    );
    assert_still_serving(&sidecar, sidecar.inbound, &upstream).await;
}

// --- HTTP1-2 ----------------------------------------------------------------------------------

#[tokio::test]
async fn http1_2_invalid_content_length_is_rejected_and_not_forwarded() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", upstream.addr))).await;
    let cases: &[(&str, &str)] = &[
        (
            "two different values",
            "Content-Length: 3\r\nContent-Length: 4",
        ),
        ("two values in one field", "Content-Length: 3, 4"),
        ("plus sign", "Content-Length: +3"),
        ("negative", "Content-Length: -1"),
        ("exponent", "Content-Length: 1e3"),
        (
            "20 digits, overflows u64",
            "Content-Length: 99999999999999999999",
        ),
        (
            "20 digits, u64::MAX",
            "Content-Length: 18446744073709551615",
        ),
        (
            "20 digits, fits u64",
            "Content-Length: 10000000000000000000",
        ),
    ];
    // hyper answers 400 to all but u64::MAX, which it rejects as 431 (its body length limit is
    // u64::MAX - 2); any 4xx with a close is a rejection.
    let mut failures = Vec::new();
    let mut forwarded_total = 0;
    for (name, field) in cases {
        let before = upstream.count();
        let request = format!("POST /cl HTTP/1.1\r\nHost: echo\r\n{field}\r\n\r\nabcd");
        let outcome = exchange(sidecar.outbound, request.into_bytes(), CLOSE_DEADLINE).await;
        let forwarded = upstream.count() - before;
        forwarded_total += forwarded;
        let rejected = matches!(outcome.status(), Some(400..=499) | None);
        if !(outcome.closed && rejected && forwarded == 0) {
            failures.push(format!(
                "{name} ({field:?}): want 400 and close, nothing forwarded; got status {:?}, \
                 closed {}, {forwarded} forwarded: {}",
                outcome.status(),
                outcome.closed,
                text(&outcome)
            ));
        }
    }
    let late = settle(&upstream).await - forwarded_total;
    if late > 0 {
        failures.push(format!(
            "{late} requests reached the upstream after their client had an answer"
        ));
    }
    assert!(failures.is_empty(), "HTTP1-2:\n{}", failures.join("\n"));
    // Each refusal counted, hyper's (400/431 while parsing) and ours alike.
    let cases = cases.len() as f64;
    let counted = sidecar.wait_metric("ficus_http_rejected_total", &[], cases, CLOSE_DEADLINE);
    assert_eq!(counted.await.sum("ficus_http_rejected_total", &[]), cases);
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

// --- HTTP1-3 ----------------------------------------------------------------------------------

#[tokio::test]
async fn http1_3_bad_chunked_framing_never_yields_a_second_request() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", upstream.addr))).await;
    let second = "GET /second HTTP/1.1\r\nHost: echo\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "chunk size overflows u64",
            format!("ffffffffffffffffff\r\nabc\r\n0\r\n\r\n{second}"),
        ),
        (
            "no CRLF after chunk data",
            format!("3\r\nabc0\r\n\r\n{second}"),
        ),
        (
            "no final CRLF after the last chunk",
            format!("3\r\nabc\r\n0\r\n{second}"),
        ),
        (
            "bare LF in a chunk extension",
            format!("3;ext=1\nabc\r\n0\r\n\r\n{second}"),
        ),
        ("bare LF line endings", format!("3\nabc\n0\n\n{second}")),
        (
            "chunk extension over 16 KiB",
            format!("3;x={}\r\nabc\r\n0\r\n\r\n{second}", "e".repeat(20_000)),
        ),
        (
            "size with a non-hex digit",
            format!("3g\r\nabc\r\n0\r\n\r\n{second}"),
        ),
    ];
    // The head of /first is valid, so the sidecar may forward it before the body goes wrong
    // (it then answers 502 when the upstream request fails on the bad body). What must never
    // happen is a response to, or an upstream copy of, /second.
    let mut failures = Vec::new();
    for (name, body) in &cases {
        let request = format!(
            "POST /first HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let outcome = exchange(sidecar.outbound, request.into_bytes(), CLOSE_DEADLINE).await;
        if !outcome.closed || outcome.responses() > 1 {
            failures.push(format!(
                "{name}: want one answer at most and the connection closed; got closed {}, \
                 {} responses: {}",
                outcome.closed,
                outcome.responses(),
                text(&outcome)
            ));
        }
    }
    // Upstream arrivals can trail the client's answer; wait for them before judging.
    let total = settle(&upstream).await;
    let got = uris(&upstream);
    if total > cases.len() || got.iter().any(|uri| uri != "/first") {
        failures.push(format!(
            "the upstream must see at most one /first per case and never /second: {got:?}"
        ));
    }
    assert!(failures.is_empty(), "HTTP1-3:\n{}", failures.join("\n"));
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

// --- HTTP1-4 ----------------------------------------------------------------------------------

#[tokio::test]
async fn http1_4_host_rules() {
    let echo = Upstream::start("echo").await;
    let other = Upstream::start("other").await;
    let config = mesh(LIMITS) + &backend("echo", echo.addr) + &backend("other", other.addr);
    let sidecar = Sidecar::start(&config).await;
    let rejected_before = sidecar
        .metrics()
        .await
        .sum("ficus_http_rejected_total", &[]);

    for (name, request) in [
        (
            "no Host",
            "GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Hosts",
            "GET /twohosts HTTP/1.1\r\nHost: echo\r\nHost: other\r\nConnection: close\r\n\r\n",
        ),
        (
            "two equal Hosts",
            "GET /twohosts HTTP/1.1\r\nHost: echo\r\nHost: echo\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let outcome = exchange(sidecar.outbound, request.into(), CLOSE_DEADLINE).await;
        assert_eq!(outcome.status(), Some(400), "{name}: {}", text(&outcome));
        assert!(outcome.closed, "{name}: Connection: close honoured");
        assert_eq!(
            (echo.count(), other.count()),
            (0, 0),
            "{name}: nothing forwarded"
        );
    }
    // The inbound listener holds HTTP/1.1 to the same rules (it used to forward a request
    // without Host with the app's address as its Host).
    for request in [
        "GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /twohosts HTTP/1.1\r\nHost: echo\r\nHost: other\r\nConnection: close\r\n\r\n",
    ] {
        let outcome = exchange(sidecar.inbound, request.into(), CLOSE_DEADLINE).await;
        assert_eq!(
            outcome.status(),
            Some(400),
            "inbound {request:?}: {}",
            text(&outcome)
        );
    }
    // HTTP/1.0 needs no Host.
    let outcome = exchange(
        sidecar.inbound,
        b"GET /old HTTP/1.0\r\n\r\n".to_vec(),
        CLOSE_DEADLINE,
    )
    .await;
    assert_ne!(outcome.status(), Some(400), "HTTP/1.0: {}", text(&outcome));
    let rejected = sidecar
        .metrics()
        .await
        .sum("ficus_http_rejected_total", &[])
        - rejected_before;
    assert_eq!(
        rejected, 5.0,
        "every Host rejection is counted in ficus_http_rejected_total"
    );

    // Absolute-form wins over Host, for routing and for the Host the upstream gets; both
    // directions, so a Host-routed implementation cannot pass by luck.
    for (target, host, upstream, bystander, path) in [
        ("http://echo/abs-1", "other", &echo, &other, "/abs-1"),
        ("http://other/abs-2", "echo", &other, &echo, "/abs-2"),
        (
            "http://echo.shop.svc.cluster.local:80/abs-3",
            "other",
            &echo,
            &other,
            "/abs-3",
        ),
    ] {
        let (before, bystander_before) = (upstream.count(), bystander.count());
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let outcome = exchange(sidecar.outbound, request.into_bytes(), CLOSE_DEADLINE).await;
        assert_eq!(
            outcome.status(),
            Some(200),
            "{target} with Host {host}: {}",
            text(&outcome)
        );
        assert_eq!(
            upstream.count(),
            before + 1,
            "{target}: routed by the absolute-form"
        );
        assert_eq!(
            bystander.count(),
            bystander_before,
            "{target}: not routed by Host {host}"
        );
        let seen = upstream.last().expect("recorded");
        assert_eq!(seen.uri, path);
        let authority = target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("authority");
        let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
        assert_eq!(
            hosts,
            [authority],
            "{target}: the upstream's Host is the absolute-form's authority"
        );
    }
    assert_still_serving(&sidecar, sidecar.outbound, &echo).await;
}

// --- RES-3 ------------------------------------------------------------------------------------

/// What a limits case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 from the upstream.
    Forwarded,
    /// One of these statuses (or none), the connection closed, nothing forwarded.
    Rejected(&'static [u16]),
}

/// Runs each case on a new connection; returns what went wrong.
async fn check_limits(
    addr: SocketAddr,
    upstream: &Upstream,
    cases: Vec<(&str, Vec<u8>, Expect)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, request, expect) in cases {
        let before = upstream.count();
        let outcome = exchange(addr, request, CLOSE_DEADLINE).await;
        let forwarded = upstream.count() - before;
        let ok = match expect {
            Expect::Forwarded => outcome.status() == Some(200) && forwarded == 1,
            Expect::Rejected(statuses) => {
                outcome.closed
                    && forwarded == 0
                    && outcome.status().is_none_or(|s| statuses.contains(&s))
            }
        };
        if !ok {
            failures.push(format!(
                "{name}: want {expect:?}; got status {:?}, closed {}, {forwarded} forwarded: {}",
                outcome.status(),
                outcome.closed,
                text(&outcome)
            ));
        }
    }
    failures
}

/// A 64 KiB request target. hyper answers 414 only for a target longer than 65534 bytes that
/// fits in its read buffer; the sidecar sizes that buffer to `maxHeaderBytes` (at least
/// 8 KiB), so with every limit up to 64 KiB hyper runs out of buffer first and answers 431.
fn long_uri_request() -> Vec<u8> {
    format!(
        "GET /{} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        "u".repeat(64 * 1024)
    )
    .into_bytes()
}

/// A request whose target (path and query) is `size` bytes long.
fn target_of_size(size: usize) -> Vec<u8> {
    format!(
        "GET /{} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        "t".repeat(size - 1)
    )
    .into_bytes()
}

#[tokio::test]
async fn res3_default_header_limits() {
    let upstream = Upstream::start("echo").await;
    // No Mesh document: the defaults of RELIABILITY.md (60 KiB, 100 fields).
    let sidecar = Sidecar::start(&backend("echo", upstream.addr)).await;
    let huge_value = format!(
        "GET / HTTP/1.1\r\nHost: echo\r\nX-Huge: {}\r\n\r\n",
        "v".repeat(1 << 20)
    );
    let cases = vec![
        (
            "101 header fields",
            head_with_fields(101),
            Expect::Rejected(&[431]),
        ),
        (
            "a 60 KiB header block",
            head_of_size(60 * 1024),
            Expect::Forwarded,
        ),
        (
            "a 60 KiB + 1 byte header block",
            head_of_size(60 * 1024 + 1),
            Expect::Rejected(&[431]),
        ),
        (
            "a 1 MiB header value",
            huge_value.into_bytes(),
            Expect::Rejected(&[431]),
        ),
        (
            "a 64 KiB URI",
            long_uri_request(),
            Expect::Rejected(&[414, 431]),
        ),
        // Within the header limits, the proxy's own 8 KiB bound on the target.
        (
            "an 8 KiB target",
            target_of_size(8 * 1024),
            Expect::Forwarded,
        ),
        (
            "an 8 KiB + 1 byte target",
            target_of_size(8 * 1024 + 1),
            Expect::Rejected(&[414]),
        ),
    ];
    let failures = check_limits(sidecar.outbound, &upstream, cases).await;
    assert!(
        failures.is_empty(),
        "RES-3 defaults:\n{}",
        failures.join("\n")
    );
    // hyper's own refusals are counted too, as the connection ends (RELIABILITY: every
    // rejection bumps a counter).
    let too_large = [("reason", "too_large")];
    let counted = sidecar.wait_metric("ficus_http_rejected_total", &too_large, 4.0, CLOSE_DEADLINE);
    assert_eq!(
        counted.await.sum("ficus_http_rejected_total", &too_large),
        4.0
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn res3_configured_header_limits() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", upstream.addr))).await;
    let cases = vec![
        (
            "maxHeaders fields",
            head_with_fields(MAX_HEADERS),
            Expect::Forwarded,
        ),
        (
            "maxHeaders + 1 fields",
            head_with_fields(MAX_HEADERS + 1),
            Expect::Rejected(&[431]),
        ),
        (
            "a maxHeaderBytes block",
            head_of_size(MAX_HEADER_BYTES),
            Expect::Forwarded,
        ),
        (
            "maxHeaderBytes + 1",
            head_of_size(MAX_HEADER_BYTES + 1),
            Expect::Rejected(&[431]),
        ),
        (
            "a 64 KiB URI",
            long_uri_request(),
            Expect::Rejected(&[414, 431]),
        ),
    ];
    let failures = check_limits(sidecar.outbound, &upstream, cases).await;
    assert!(
        failures.is_empty(),
        "RES-3 configured:\n{}",
        failures.join("\n")
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

/// `maxHeaderBytes` below hyper's 8 KiB minimum read buffer must still be enforced.
#[tokio::test]
async fn res3_small_max_header_bytes_is_enforced() {
    let upstream = Upstream::start("echo").await;
    let config = mesh("{maxHeaderBytes: 4096}") + &backend("echo", upstream.addr);
    let sidecar = Sidecar::start(&config).await;
    let cases = vec![
        ("a 4096-byte block", head_of_size(4096), Expect::Forwarded),
        (
            "a 4097-byte block",
            head_of_size(4097),
            Expect::Rejected(&[431]),
        ),
        (
            "a 6000-byte block",
            head_of_size(6000),
            Expect::Rejected(&[431]),
        ),
    ];
    let failures = check_limits(sidecar.outbound, &upstream, cases).await;
    assert!(
        failures.is_empty(),
        "RES-3 maxHeaderBytes 4096:\n{}",
        failures.join("\n")
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn res3_oversized_upstream_response_headers_are_a_502() {
    let upstream = Upstream::start("echo").await;
    let (big, _task) = big_header_upstream(100 * 1024).await;
    let config = mesh(LIMITS) + &backend("echo", upstream.addr) + &backend("big", big);
    let sidecar = Sidecar::start(&config).await;
    // Three tries: whether the over-limit header slips through can depend on how the bytes
    // arrive, and every try must be refused.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client::get(sidecar.outbound, "big", "/big")
            .await
            .expect("an answer, not a hang");
        let relayed = response.headers.get("x-big").map(|v| v.len());
        statuses.push((response.status, relayed));
    }
    assert!(
        statuses
            .iter()
            .all(|(status, relayed)| *status == 502 && relayed.is_none()),
        "a 100 KiB upstream response header must give 502 every time; got (status, relayed \
         x-big length): {statuses:?}"
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

// --- RES-1 ------------------------------------------------------------------------------------

#[tokio::test]
async fn res1_slowloris_headers_are_cut_at_the_header_timeout() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", upstream.addr))).await;
    // 1 byte every 300 ms; the head never completes within the deadline (and the dripper
    // repeats the header line if it would), so only the 1 s header timeout can end this.
    let head = b"GET /slow HTTP/1.1\r\nHost: echo\r\nX-Slow: ";
    let outcome = drip(
        sidecar.outbound,
        head,
        Duration::from_millis(300),
        TIMEOUT_DEADLINE,
    )
    .await;
    assert!(
        outcome.closed,
        "slowloris connection still open after {TIMEOUT_DEADLINE:?}: {}",
        text(&outcome)
    );
    assert!(
        matches!(outcome.status(), Some(408) | None),
        "408 or a plain close: {}",
        text(&outcome)
    );
    assert_eq!(upstream.count(), 0, "nothing forwarded");
    let timeouts = [("reason", "header_timeout")];
    let counted = sidecar.wait_metric("ficus_http_rejected_total", &timeouts, 1.0, CLOSE_DEADLINE);
    assert_eq!(
        counted.await.sum("ficus_http_rejected_total", &timeouts),
        1.0
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn res1_header_timeout_spares_a_slow_response_then_ends_the_idle_connection() {
    let upstream = Upstream::start("echo").await;
    let limits = "{headerReadTimeout: 1s, bodyIdleTimeout: 1s, connectionIdleTimeout: 2s}";
    let sidecar = Sidecar::start(&(mesh(limits) + &backend("echo", upstream.addr))).await;
    // The 1 s header timeout bounds only the wait for a request head: a response that takes
    // 1.5 s is still delivered, and the keep-alive connection is closed once it has been
    // idle for the connection idle timeout (2 s) after that response.
    // 1.5 s + 2 s idle takes most of TIMEOUT_DEADLINE: this one waits twice as long.
    let deadline = 2 * TIMEOUT_DEADLINE;
    let mut stream = TcpStream::connect(sidecar.outbound).await.expect("connect");
    stream
        .write_all(b"GET /delay/1500 HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .expect("write");
    let outcome = client::read_until_close(&mut stream, deadline).await;
    assert!(
        outcome.bytes.starts_with(b"HTTP/1.1 200"),
        "the slow response must arrive: {}",
        text(&outcome)
    );
    assert_eq!(outcome.responses(), 1, "one response: {}", text(&outcome));
    assert!(
        outcome.closed,
        "idle keep-alive connection still open after {deadline:?}: {}",
        text(&outcome)
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

/// An idle keep-alive connection waits for its next request for the connection idle
/// timeout, not the header timeout (a client polling at about the header timeout would race
/// the close and lose requests); a head begun on it still has only the header timeout.
#[tokio::test]
async fn res1_keep_alive_idles_for_the_idle_timeout_and_heads_still_have_the_header_timeout() {
    let upstream = Upstream::start("echo").await;
    let limits = "{headerReadTimeout: 1s, connectionIdleTimeout: 1h}";
    let sidecar = Sidecar::start(&(mesh(limits) + &backend("echo", upstream.addr))).await;
    let mut client = client::H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(client.get("echo", "/one").await.unwrap().status, 200);
    // Idle for twice the header timeout, then the same connection again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = client
        .get("echo", "/two")
        .await
        .expect("the idle keep-alive connection is still open");
    assert_eq!(again.status, 200);
    assert_eq!(upstream.count(), 2);

    // Slowloris after a first request: the next head, begun and left incomplete, is cut at
    // the header timeout (not the idle one).
    let mut stream = TcpStream::connect(sidecar.outbound).await.expect("connect");
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .expect("write");
    let mut first = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buffer))
            .await
            .expect("the first response in time")
            .expect("read");
        assert!(n > 0, "closed before the first response");
        first.extend_from_slice(&buffer[..n]);
        if first.starts_with(b"HTTP/1.1 200") && first.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let mut stalled = false;
    for byte in b"GET /slow HTTP/1.1\r\nHost: echo\r\nX-Slow: "
        .iter()
        .cycle()
        .take(40)
    {
        if stream.write_all(&[*byte]).await.is_err() {
            stalled = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await {
            // The rest of the first response's body may still come.
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                stalled = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        stalled,
        "an incomplete head was not cut at the header timeout"
    );
    assert_eq!(upstream.count(), 3, "the slow head was not forwarded");
}

#[tokio::test]
async fn res1_silent_connection_is_closed() {
    let upstream = Upstream::start("echo").await;
    let sidecar = Sidecar::start(&(mesh(LIMITS) + &backend("echo", upstream.addr))).await;
    // A peer that connects and never sends a byte, or stops inside what could be an h2
    // preface: the header timeout (or a protocol-detection timeout) must still end it.
    let open_after = |addr: SocketAddr, first: &'static [u8]| async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(first).await.expect("write");
        !client::read_until_close(&mut stream, TIMEOUT_DEADLINE)
            .await
            .closed
    };
    let (outbound_silent, inbound_silent, outbound_preface) = tokio::join!(
        open_after(sidecar.outbound, b""),
        open_after(sidecar.inbound, b""),
        open_after(sidecar.outbound, b"PRI * HTTP/2.0\r\n"),
    );
    let failures: Vec<&str> = [
        (outbound_silent, "outbound: a connection that sends nothing"),
        (inbound_silent, "inbound: a connection that sends nothing"),
        (
            outbound_preface,
            "outbound: a connection that stops after 16 bytes of h2 preface",
        ),
    ]
    .into_iter()
    .filter_map(|(open, name)| open.then_some(name))
    .collect();
    assert!(
        failures.is_empty(),
        "still open after {TIMEOUT_DEADLINE:?} (header read timeout 1 s):\n{}",
        failures.join("\n")
    );
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn res1_slow_request_body_is_cut_and_the_upstream_request_cancelled() {
    let upstream = Upstream::start("echo").await;
    let (sink, mut connections, _task) = sink_upstream(None).await;
    let config = mesh(LIMITS) + &backend("echo", upstream.addr) + &backend("sink", sink);
    let sidecar = Sidecar::start(&config).await;
    let baseline = sidecar.open_fds().len();
    // 3 of 100 body bytes, then silence (the connection stays open).
    let request = b"POST /upload HTTP/1.1\r\nHost: sink\r\nContent-Length: 100\r\n\r\nabc".to_vec();
    let outcome = exchange(sidecar.outbound, request, TIMEOUT_DEADLINE).await;
    let status = outcome.status();
    assert!(
        outcome.closed && status == Some(408),
        "want 408 and close at the body idle timeout (RES-2); got closed {}: {}",
        outcome.closed,
        text(&outcome)
    );
    // The upstream request is cancelled: the sidecar closes its upstream connection too.
    let seen = closed_by_sidecar(&mut connections).await;
    let head = String::from_utf8_lossy(&seen.bytes).to_ascii_lowercase();
    assert!(
        head.starts_with("post /upload"),
        "upstream got the request head: {head:?}"
    );
    let body = find(&seen.bytes, b"\r\n\r\n").map_or(0, |end| seen.bytes.len() - end - 4);
    assert!(
        body < 100,
        "the upstream never got a complete body ({body} bytes)"
    );
    // Both of the request's sockets are closed: descriptors back to where they were.
    ficus_tests::until("descriptors back to baseline", TIMEOUT_DEADLINE, || async {
        sidecar.open_fds().len() <= baseline
    })
    .await;
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}

#[tokio::test]
async fn res1_a_response_body_that_stalls_is_cut_at_the_body_idle_timeout() {
    let upstream = Upstream::start("echo").await;
    // 3 of 100 body bytes, then silence (the connection stays open).
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
    let (stall, mut connections, _task) = sink_upstream(Some(answer)).await;
    let config = mesh(LIMITS) + &backend("echo", upstream.addr) + &backend("stall", stall);
    let sidecar = Sidecar::start(&config).await;
    let request = b"GET /download HTTP/1.1\r\nHost: stall\r\n\r\n".to_vec();
    let outcome = exchange(sidecar.outbound, request, TIMEOUT_DEADLINE).await;
    assert_eq!(outcome.status(), Some(200), "{}", text(&outcome));
    let body = find(&outcome.bytes, b"\r\n\r\n").map_or(0, |end| outcome.bytes.len() - end - 4);
    assert!(
        outcome.closed && body == 3,
        "want the 3 bytes sent, then the connection closed at the body idle timeout (1 s); \
         got closed {} after {body} body bytes: {}",
        outcome.closed,
        text(&outcome)
    );
    // The upstream exchange is given up too: the sidecar closes that connection.
    closed_by_sidecar(&mut connections).await;
    assert_still_serving(&sidecar, sidecar.outbound, &upstream).await;
}
