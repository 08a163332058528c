//! One HTTP/1.1 keep-alive client connection (hyper 1.x `client::conn::http1` over a tokio
//! `TcpStream`), with every network wait bounded by a timeout.
//!
//! The load generator gives each connection its own task and owns it exclusively, so there
//! is no pool and no locking: a request is written only once the previous response has been
//! read in full, exactly like a keep-alive HTTP/1.1 client without pipelining.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A request could not be completed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connect did not finish within the connect timeout.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// Where we tried to connect.
        addr: SocketAddr,
        /// The timeout that expired.
        after: Duration,
    },
    /// The TCP connect was refused or failed otherwise.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where we tried to connect.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake (setting up hyper's connection state) failed.
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// No complete response (head and body) arrived within the request timeout.
    #[error("no complete response within {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection failed while sending the request or reading the response; it is no
    /// longer usable.
    #[error("request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The `Host` header or path given on the command line is not valid HTTP.
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] hyper::http::Error),
}

impl ClientError {
    /// Whether the error was a timeout (reported apart from other I/O errors).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::ConnectTimeout { .. })
    }
}

/// What a request to the target looks like.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Value of the `Host` header: the service name the sidecar routes on.
    pub host: HeaderValue,
    /// Request path (origin form, e.g. `/`).
    pub path: String,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on one request: waiting for the connection to be ready, writing the request,
    /// reading the response head and the whole body.
    pub request_timeout: Duration,
}

/// The head of a response whose body was read in full.
#[derive(Debug)]
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
}

/// One open keep-alive connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// The server said `Connection: close`; the next request needs a new connection.
    closing: bool,
}

impl Connection {
    /// Connects (bounded by `target.connect_timeout`) and sets `TCP_NODELAY`, as every real
    /// HTTP client does; without it Nagle's algorithm would add delays unrelated to the proxy.
    pub async fn open(target: &Target) -> Result<Self, ClientError> {
        let addr = target.addr;
        let stream = match timeout(target.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    addr,
                    after: target.connect_timeout,
                })
            }
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        stream
            .set_nodelay(true)
            .map_err(|source| ClientError::Connect { addr, source })?;
        // The h1 handshake does no I/O; it only builds the connection state.
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        // The driver ends when `sender` is dropped or the peer closes; its error, if any,
        // surfaces on the next `send_request`.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            closing: false,
        })
    }

    /// Sends `GET target.path` with `Host: target.host` and reads the whole response,
    /// within `target.request_timeout`.
    ///
    /// After an error the connection is unusable; open a new one.
    pub async fn get(&mut self, target: &Target) -> Result<Reply, ClientError> {
        let request = Request::get(target.path.as_str())
            .header(HOST, target.host.clone())
            .body(Empty::new())?;
        let after = target.request_timeout;
        timeout(after, self.exchange(request))
            .await
            .map_err(|_| ClientError::Timeout { after })?
    }

    /// Whether the connection can still carry a request (the peer has not closed it).
    pub fn is_open(&self) -> bool {
        !self.closing && !self.sender.is_closed()
    }

    async fn exchange(&mut self, request: Request<Empty<Bytes>>) -> Result<Reply, ClientError> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        // A server that ends keep-alive says so; a well-behaved client then reconnects
        // instead of racing the close with its next request.
        self.closing = parts
            .headers
            .get(CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        // Read the body to the end: only then may the next request be written on this
        // connection, and a proxy's cost includes forwarding the body.
        body.collect().await?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
        })
    }
}
