//! One keep-alive client connection (hyper 1.x `client::conn::http1`, or `http2` with prior
//! knowledge, over a tokio `TcpStream`), with every network wait bounded by a timeout.
//!
//! The load generator gives each HTTP/1.1 connection its own task and owns it exclusively, so
//! there is no pool and no locking: a request is written only once the previous response has
//! been read in full, exactly like a keep-alive HTTP/1.1 client without pipelining. An h2c
//! [`Connection`] is cloned into one task per concurrent stream; the clones share the TCP
//! connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    /// The HTTP handshake (hyper's connection state; for h2c the preface and SETTINGS) failed.
    #[error("HTTP handshake with {addr}: {source}")]
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

/// The HTTP version a [`Connection`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time.
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (h2c); clones share the connection.
    H2c,
}

#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// One open keep-alive connection (for h2c: a handle to one, see [`Connection::share`]).
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    /// The server said `Connection: close`; the next request needs a new connection.
    closing: bool,
}

impl Connection {
    /// Connects (bounded by `target.connect_timeout`) and sets `TCP_NODELAY`, as every real
    /// HTTP client does; without it Nagle's algorithm would add delays unrelated to the proxy.
    pub async fn open(target: &Target) -> Result<Self, ClientError> {
        Self::open_with(target, Protocol::Http1).await
    }

    /// [`Connection::open`] speaking `protocol`.
    pub async fn open_with(target: &Target, protocol: Protocol) -> Result<Self, ClientError> {
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
        // The driver ends when every sender is dropped or the peer closes; its error, if any,
        // surfaces on the next `send_request`.
        let sender = match protocol {
            Protocol::Http1 => {
                // The h1 handshake does no I/O; it only builds the connection state.
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|source| ClientError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Sender::Http1(sender)
            }
            Protocol::H2c => {
                let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
                let (sender, connection) = timeout(target.connect_timeout, handshake)
                    .await
                    .map_err(|_| ClientError::ConnectTimeout {
                        addr,
                        after: target.connect_timeout,
                    })?
                    .map_err(|source| ClientError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Sender::Http2(sender)
            }
        };
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
        let request = match self.sender {
            Sender::Http1(_) => Request::get(target.path.as_str())
                .header(HOST, target.host.clone())
                .body(Empty::new())?,
            // HTTP/2 carries the service name in `:authority` (h2 requires scheme and
            // authority in the URI).
            Sender::Http2(_) => {
                let host = target.host.to_str().unwrap_or("upstream");
                Request::get(format!("http://{host}{}", target.path)).body(Empty::new())?
            }
        };
        let after = target.request_timeout;
        timeout(after, self.exchange(request))
            .await
            .map_err(|_| ClientError::Timeout { after })?
    }

    /// For h2c, another handle to the same connection (another stream's sender); `None` for
    /// HTTP/1.1, which carries one request at a time.
    pub fn share(&self) -> Option<Self> {
        match &self.sender {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Self {
                sender: Sender::Http2(sender.clone()),
                closing: false,
            }),
        }
    }

    /// Whether the connection can still carry a request (the peer has not closed it).
    pub fn is_open(&self) -> bool {
        !self.closing
            && match &self.sender {
                Sender::Http1(sender) => !sender.is_closed(),
                Sender::Http2(sender) => !sender.is_closed(),
            }
    }

    async fn exchange(&mut self, request: Request<Empty<Bytes>>) -> Result<Reply, ClientError> {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
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
