//! Clients: hyper HTTP/1.1 and h2c, a raw TCP client for exact bytes, and a Prometheus text
//! parser for `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for every client exchange in the suite.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Response {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<Response> {
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(TIMEOUT, body.collect()).await??;
    let trailers = collected.trailers().cloned();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// `GET path` with `Host: host` on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Response> {
    let request = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    send(addr, request).await
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> anyhow::Result<Response> {
    let mut client = H1Client::connect(addr).await?;
    client.send(request).await
}

/// A keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct H1Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1Client {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Response> {
        tokio::time::timeout(TIMEOUT, self.sender.ready()).await??;
        let response = tokio::time::timeout(TIMEOUT, self.sender.send_request(request)).await??;
        collect(response).await
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Response> {
        let request = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }
}

/// An h2c (prior knowledge) connection.
#[derive(Debug, Clone)]
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

/// An h2c connection (prior knowledge) to `addr` whose requests carry bodies of type `B`
/// (for bodies [`H2Client`]'s `Full` cannot express: trailers, frames paced by the test);
/// the connection runs on a task of its own.
pub async fn h2c_sender<B>(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
    let (sender, connection) = tokio::time::timeout(
        TIMEOUT,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await??;
    tokio::spawn(connection);
    Ok(sender)
}

impl H2Client {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let sender = h2c_sender(addr).await?;
        Ok(Self { sender })
    }

    /// Sends a request (URI must be absolute: `http://authority/path`).
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Response> {
        tokio::time::timeout(TIMEOUT, self.sender.ready()).await??;
        let response = tokio::time::timeout(TIMEOUT, self.sender.send_request(request)).await??;
        collect(response).await
    }
}

/// What a raw exchange got back.
#[derive(Debug)]
pub struct RawOutcome {
    /// Everything read.
    pub bytes: Vec<u8>,
    /// Whether the peer closed (FIN or RST) before the read deadline.
    pub closed: bool,
}

impl RawOutcome {
    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// Number of HTTP responses in the bytes.
    pub fn responses(&self) -> usize {
        String::from_utf8_lossy(&self.bytes)
            .matches("HTTP/1.1 ")
            .count()
    }
}

/// Writes `bytes` and reads until the peer closes or `deadline` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], deadline: Duration) -> RawOutcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_until_close(&mut stream, deadline).await
}

/// Reads until what came holds a whole head (`\r\n\r\n`) and returns all of it; panics if
/// the peer closes first or `deadline` passes.
pub async fn read_head(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    let until = tokio::time::Instant::now() + deadline;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(until, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no whole head within {deadline:?}: {head:?}"))
            .expect("read");
        assert!(n > 0, "closed before a whole head: {head:?}");
        head.extend_from_slice(&buffer[..n]);
    }
    head
}

/// Reads until the peer closes or `deadline` passes.
pub async fn read_until_close(stream: &mut TcpStream, deadline: Duration) -> RawOutcome {
    let mut out = Vec::new();
    let mut buffer = [0u8; 8192];
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawOutcome {
                    bytes: out,
                    closed: true,
                }
            }
            Ok(Ok(n)) => out.extend_from_slice(&buffer[..n]),
            Err(_) => {
                return RawOutcome {
                    bytes: out,
                    closed: false,
                }
            }
        }
    }
}

/// Prometheus text exposition, parsed.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `(name, labels, value)` per sample line.
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text format (comments skipped).
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = match line.rsplit_once(' ') {
                Some(parts) => parts,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self { samples }
    }

    /// Sum of the samples named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// A TLS client presenting a certificate for `client_id` issued by `issuer`, trusting
/// `trust_pem` and expecting the server to be `server_id` (trust domain `cluster.local`),
/// speaking HTTP/1.1 (`GET /`, `Host: payments`) straight to a sidecar's inbound at `inbound`.
/// `Ok(status)` when the handshake and the request went through within 10 s; `Err(text)` when
/// either side refused or it timed out.
pub async fn mtls_probe(
    inbound: SocketAddr,
    issuer: &ficus_identity::ca::CertificateAuthority,
    trust_pem: &str,
    client_id: &str,
    server_id: &str,
) -> Result<u16, String> {
    // Setup failures panic: only the exchange itself may answer `Err`.
    let key = ficus_identity::csr::WorkloadKey::generate().expect("workload key");
    let id = ficus_identity::SpiffeId::parse(client_id).expect("client SPIFFE ID");
    let issued = issuer
        .sign_workload_csr(
            &key.csr_pem(&id).expect("CSR"),
            &id,
            Duration::from_secs(3600),
        )
        .expect("issue the client certificate");
    let store = ficus_identity::tls::CertStore::new();
    store.install(
        ficus_identity::tls::Credentials::from_pem(&issued.chain_pem, &key)
            .expect("client credentials"),
    );
    let bundle = ficus_identity::tls::TrustBundle::from_pem(trust_pem, "cluster.local")
        .expect("trust bundle");
    let expected = ficus_identity::SpiffeId::parse(server_id).expect("server SPIFFE ID");
    let config = ficus_identity::tls::client_config(Some(store), &bundle, &expected)
        .expect("client TLS config");
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let exchange = async {
        let tcp = TcpStream::connect(inbound)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::IpAddress(inbound.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        text.strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// Sends `text` on `ws` and expects it echoed within 10 s (panics otherwise).
pub async fn ws_echo(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s");
    assert_eq!(echoed.unwrap().unwrap(), Message::text(text));
}

/// Keep-alive load: one HTTP/1.1 client per address in `targets`, each sending `GET /` with
/// `Host: host` every `pause` until [`Load::stop`] (at most 1,000,000 requests each), counting
/// 200s and anything else (printed).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients (each connects in its own task).
    pub fn start(
        targets: impl IntoIterator<Item = SocketAddr>,
        host: &'static str,
        pause: Duration,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for target in targets {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            tasks.push(tokio::spawn(async move {
                let mut client = H1Client::connect(target).await.unwrap();
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.get(host, "/").await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Self {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// The 200s so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the clients and waits for them: (200s, failures).
    pub async fn stop(self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
