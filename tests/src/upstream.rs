//! Real upstream servers on loopback: a scriptable hyper server (HTTP/1.1 and h2c), a
//! WebSocket echo server and a TCP echo server.
//!
//! The HTTP server answers by path:
//! - `/delay/<ms>`: waits, then 200;
//! - `/status/<code>`: that status;
//! - `/echo`: streams the request body back, chunk by chunk;
//! - `application/grpc` requests: echoes each body chunk as its own DATA frame, then sends
//!   trailers `grpc-status: 0` (or the status a request header `x-test-grpc-status` asks for),
//!   `x-test-grpc-trailers-delay-ms` after the last frame when the request says so;
//! - anything else: 200 with the server's name as body.
//!
//! Every response carries `x-upstream: <name>`; every request head is recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, std::io::Error>;

/// A request head as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Request target as received.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// HTTP version.
    pub version: Version,
}

/// A running HTTP upstream; stops on drop.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received so far.
    pub received: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts a server named `name` on a free loopback port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let name: Arc<str> = Arc::from(name);
        let recorded = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = Arc::clone(&name);
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        handle(Arc::clone(&name), Arc::clone(&recorded), request)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Number of requests received.
    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// The last request received.
    pub fn last(&self) -> Option<Recorded> {
        self.received.lock().ok()?.last().cloned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    name: Arc<str>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Ok(mut list) = recorded.lock() {
        list.push(Recorded {
            method: request.method().clone(),
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
            version: request.version(),
        });
    }
    let path = request.uri().path().to_owned();
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut response = if grpc {
        grpc_echo(request)
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        let ms = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        text(StatusCode::OK, &name)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let code = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        text(code.unwrap_or(StatusCode::BAD_REQUEST), &name)
    } else if path == "/echo" {
        let body = request.into_body().map_err(std::io::Error::other).boxed();
        Response::new(body)
    } else {
        text(StatusCode::OK, &name)
    };
    if let Ok(value) = HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-upstream", value);
    }
    Ok(response)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// Streams every request DATA frame back as a response frame, then `grpc-status` trailers:
/// `0`, or what the request's `x-test-grpc-status` says.
fn grpc_echo(request: Request<Incoming>) -> Response<Body> {
    let status = request
        .headers()
        .get("x-test-grpc-status")
        .cloned()
        .unwrap_or(HeaderValue::from_static("0"));
    let trailers_delay = request
        .headers()
        .get("x-test-grpc-trailers-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Duration::from_millis);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let mut body = request.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(Ok(Frame::data(data))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = tx.send(Err(std::io::Error::other(error))).await;
                    return;
                }
            }
        }
        if let Some(delay) = trailers_delay {
            tokio::time::sleep(delay).await;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status);
        trailers.insert("grpc-message", HeaderValue::from_static("echoed"));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A WebSocket server that echoes every message; stops on drop.
#[derive(Debug)]
pub struct WebSocketEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebSocketEcho {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() || ws.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for WebSocketEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that echoes bytes, prefixed once by `greeting`; stops on drop.
#[derive(Debug)]
pub struct TcpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEcho {
    /// Starts on a free loopback port.
    pub async fn start(greeting: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp echo");
        let addr = listener.local_addr().expect("local addr");
        let task = serve_greeting_echo(listener, greeting);
        Self { addr, task }
    }
}

/// Serves `listener` until aborted: each connection gets `greeting`, then its bytes echoed
/// until it closes (shared by [`TcpEcho`] and `netns::NsGreeter`).
pub(crate) fn serve_greeting_echo(listener: TcpListener, greeting: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if stream.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let mut buffer = [0u8; 4096];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that accepts, reads a request and never answers; each request's arrival is
/// sent on the channel. The connections stay open until the task is aborted.
pub async fn hanging_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, got_there) = tokio::sync::mpsc::channel::<()>(8);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            if stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                let _ = arrived.try_send(());
            }
            held.push(stream);
        }
    });
    (addr, got_there, task)
}

/// Sends a request head (`GET /hanging`, `Host: host`) to `to`, waits (10 s at most) until the
/// [`hanging_upstream`] has it, then disconnects: a request abandoned by its client.
pub async fn send_and_abandon(
    to: SocketAddr,
    host: &str,
    got_there: &mut tokio::sync::mpsc::Receiver<()>,
) {
    let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
    let head = format!("GET /hanging HTTP/1.1\r\nhost: {host}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), got_there.recv())
        .await
        .expect("the request reached the upstream")
        .expect("the upstream is running");
    drop(stream);
}
