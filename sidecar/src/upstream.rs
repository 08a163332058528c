//! Connections to upstream endpoints: connect with a timeout, HTTP/1.1 keep-alive pools with a
//! bounded idle time, multiplexed HTTP/2 connections per endpoint (one, and another each time
//! all are at the peer's stream cap: see [`multiplex`]).
//!
//! We pool per endpoint address ourselves (on `hyper::client::conn`) rather than by URI, so the
//! address we dial and the `Host`/`:authority` the app chose stay independent.
//!
//! A pooled HTTP/1.1 connection has no task of its own: the task whose request it carries
//! drives it, while waiting for the response head and then from the response body (see
//! [`Http1Conn`]). That saves two task switches per request over hyper's usual spawned
//! connection task. While idle in the pool nobody polls it; a sweeper task closes the ones past
//! the idle timeout or closed by the server, and a checkout polls one once to see it is alive.
//!
//! A request that fails on a *reused* connection before any byte of it was written (the
//! server closed the idle connection under us) is resent once on a fresh connection: that is
//! always safe, and it removes the "upstream reset before headers" errors of naive pools. When
//! the connection had been idle for a while (`STALE_AFTER`) and the server closed it just
//! after our write, a bodyless idempotent request is resent once too.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::clock::Coarse;
use crate::policy::breaker::{ConnectionCap, IdleHolder};
use multiplex::{Http2Body, Http2Conn, Http2Conns, SettingsReader, StreamSlot, Streams};

mod multiplex;

/// A place among a Backend's `maxConnections`, held for a connection's lifetime.
type ConnectionPermit = tokio::sync::OwnedSemaphorePermit;

/// A switched connection's place among its Backend's `maxConnections`, in the extensions of
/// the `101` response: whoever carries the switched protocol on holds it until the end.
#[derive(Debug, Clone)]
pub struct SwitchedPermit(
    #[expect(dead_code, reason = "held, never read: dropping it releases the place")]
    Arc<ConnectionPermit>,
);

/// Most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// Largest upstream response header block (a bigger one is a 502).
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Longest pause between two sweeps of idle HTTP/1.1 connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Idle time after which a reused HTTP/1.1 connection may have been closed by the server
/// as we write (keep-alive timeouts are usually 1 s or more).
const STALE_AFTER: Duration = Duration::from_millis(250);

/// HTTP/2 receive window of each upstream stream: how much of a response the upstream may
/// send ahead of the downstream reading it.
const UPSTREAM_STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 receive window of each upstream connection. hyper gives window back only as a body
/// is read, so downstream clients that stop reading hold their streams' windows; with
/// hyper's defaults (2 MiB per stream, 5 MiB per connection) three of them stalled every
/// other stream on the connection until the body idle timeout. Sixteen stream windows: it
/// takes sixteen stalled readers on one connection (and the pool spreads streams over
/// connections). It is also the most response data a connection buffers: 16 MiB, reached
/// only when that many readers stall.
const UPSTREAM_CONNECTION_WINDOW: u32 = 16 * UPSTREAM_STREAM_WINDOW;
/// Idle time of an upstream TCP connection before the first keepalive probe.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered TCP keepalive probes.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered TCP keepalive probes after which the kernel closes the connection.
const TCP_KEEPALIVE_PROBES: u32 = 3;
/// HTTP/2 keepalive PING interval toward a peer sidecar (never toward an app: see
/// `EndpointPool::handshake_http2`).
const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a peer sidecar may take to answer a keepalive PING before the connection is
/// closed.
const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream exchange failed before response headers arrived.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The TCP connect was refused or failed. Nothing was sent, so a retry is safe.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No connection within the connect timeout. Nothing was sent, so a retry is safe.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// Endpoint.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The HTTP handshake on a fresh connection failed. Nothing was sent.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// The TLS handshake failed (untrusted chain, wrong SPIFFE ID, ...). Nothing was sent.
    #[error("TLS to {addr} failed: {source}")]
    Tls {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A new connection was needed and the Backend's `connectionPool.maxConnections` were
    /// open. Nothing was dialled or sent.
    #[error("no connection to {addr}: maxConnections of the Backend are open")]
    ConnectionLimit {
        /// Endpoint.
        addr: SocketAddr,
    },
    /// The connection failed after the request (or part of it) was sent: the upstream may
    /// have acted on it, so only idempotent requests may be retried.
    #[error("upstream {addr} failed before response headers: {source}")]
    Reset {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The same failure for another request that waited on the same attempt (the causes are
    /// not `Clone`: their kind and text are kept).
    fn again(&self) -> Self {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            Self::Connect { addr, source } => Self::Connect {
                addr: *addr,
                source: io(source),
            },
            Self::ConnectTimeout { addr, after } => Self::ConnectTimeout {
                addr: *addr,
                after: *after,
            },
            Self::Tls { addr, source } => Self::Tls {
                addr: *addr,
                source: io(source),
            },
            Self::ConnectionLimit { addr } => Self::ConnectionLimit { addr: *addr },
            // Nothing was sent on the connection being made: a connect-phase failure.
            Self::Handshake { addr, source } | Self::Reset { addr, source } => Self::Connect {
                addr: *addr,
                source: std::io::Error::other(format!("HTTP/2 handshake failed: {source}")),
            },
        }
    }

    /// Whether the request was certainly not sent (connect-phase failure). A failed TLS
    /// handshake (an untrusted chain, a peer with another SPIFFE ID) is one: nothing of the
    /// request went out.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout { .. }
                | Self::Handshake { .. }
                | Self::Tls { .. }
        )
    }

    /// Whether the HTTP/2 peer's GOAWAY left the request's stream out: its last stream id was
    /// below the stream's, or the stream was opened after it. RFC 9113 §6.8: such streams were
    /// not processed, so a resend is safe, and a server going away (a restart, a connection
    /// age limit) says nothing about its health. h2 fails exactly those streams with the
    /// GOAWAY as a remote error (`Streams::recv_go_away`); the streams at or below the last
    /// stream id end otherwise (a reset, or a broken pipe when the connection closes).
    pub fn is_refused_by_goaway(&self) -> bool {
        let Self::Reset { source, .. } = self else {
            return false;
        };
        h2_cause(source).is_some_and(|h2| h2.is_go_away() && h2.is_remote())
    }

    /// Bounded reason label for `ficus_upstream_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_refused",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::Handshake { .. } => "handshake",
            Self::Tls { .. } => "tls",
            Self::ConnectionLimit { .. } => "connection_limit",
            Self::Reset { .. } => "reset_before_headers",
        }
    }
}

/// Timeouts of the pools, set from the config in force.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// A response body that keeps its reader waiting longer than this for a frame fails.
    pub body_idle_timeout: Duration,
    /// [`PoolSettings::body_idle_timeout`] for a gRPC response (a stream may be quiet long).
    pub stream_idle_timeout: Duration,
}

/// The connections to one endpoint, shared by every snapshot that names it.
#[derive(Debug)]
pub struct EndpointPool {
    address: SocketAddr,
    http2: bool,
    /// mTLS to a peer sidecar (always HTTP/2 then, negotiated by ALPN).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The same mTLS offering other ALPN ids: see [`PeerAlpn`].
    peer_alpn: Option<PeerAlpn>,
    connect_timeout_ms: AtomicU64,
    idle_timeout_ms: AtomicU64,
    body_idle_timeout_ms: AtomicU64,
    stream_idle_timeout_ms: AtomicU64,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Mutex<IdlePool>,
    /// HTTP/2 connections, the first opened first. Requests go to the first with room under
    /// its peer's stream cap.
    shared: Mutex<Http2Conns>,
    /// HTTP/2: one connection attempt at a time. Requests that find no connection with room wait
    /// for the attempt under way rather than each dialling its own (a burst at start-up or
    /// after the peer restarts would otherwise open one connection, and for a peer sidecar
    /// one TLS handshake, per request); holds the failure of the last attempt and when it
    /// ended, which the requests that waited for it share.
    dialing: tokio::sync::Mutex<Option<(tokio::time::Instant, UpstreamError)>>,
}

/// mTLS configs to a peer sidecar besides `h2`, built once per pool.
///
/// A protocol switch (WebSocket, any HTTP/1.1 `Upgrade`) cannot ride the pooled HTTP/2
/// connection: HTTP/2 has no `Upgrade`, and RFC 8441's extended CONNECT would need the
/// receiving side to turn it back into an HTTP/1.1 upgrade for the app. Instead each switch
/// opens its own mTLS connection with ALPN `http/1.1` and carries the app's request as is; the
/// receiving sidecar reads HTTP/1.1 there as from any client, upgrades included. Switches are
/// long-lived and rare, so the extra handshake does not matter. Opaque TCP uses ALPN
/// `ficus-tcp`: the receiving sidecar forwards the decrypted bytes to its app.
#[derive(Debug)]
struct PeerAlpn {
    http1: Arc<rustls::ClientConfig>,
    opaque: Arc<rustls::ClientConfig>,
}

/// A connection to an endpoint for opaque TCP: plain, or mTLS to a peer sidecar.
#[derive(Debug)]
pub enum OpaqueStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// mTLS with ALPN `ficus-tcp`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for OpaqueStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for OpaqueStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl EndpointPool {
    fn new(
        address: SocketAddr,
        http2: bool,
        tls: Option<Arc<rustls::ClientConfig>>,
        settings: PoolSettings,
    ) -> Self {
        let pool = Self {
            address,
            http2: http2 || tls.is_some(),
            peer_alpn: tls.as_ref().map(|config| PeerAlpn {
                http1: ficus_identity::tls::with_alpn(config, ficus_identity::tls::ALPN_HTTP1),
                opaque: ficus_identity::tls::with_alpn(
                    config,
                    ficus_identity::tls::ALPN_OPAQUE_TCP,
                ),
            }),
            tls,
            connect_timeout_ms: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            body_idle_timeout_ms: AtomicU64::new(0),
            stream_idle_timeout_ms: AtomicU64::new(0),
            idle: Mutex::new(IdlePool::default()),
            shared: Mutex::new(Http2Conns::default()),
            dialing: tokio::sync::Mutex::new(None),
        };
        pool.update(settings);
        pool
    }

    fn update(&self, settings: PoolSettings) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.connect_timeout_ms
            .store(ms(settings.connect_timeout), Ordering::Relaxed);
        self.idle_timeout_ms
            .store(ms(settings.idle_timeout), Ordering::Relaxed);
        self.body_idle_timeout_ms
            .store(ms(settings.body_idle_timeout), Ordering::Relaxed);
        self.stream_idle_timeout_ms
            .store(ms(settings.stream_idle_timeout), Ordering::Relaxed);
    }

    /// An HTTP/2 response body: a gRPC one is bounded by the stream idle timeout (a streaming
    /// call may be quiet for minutes), any other by the body idle timeout.
    /// The body holds `slot`, the request's place on its connection, until it ends.
    fn http2_response_body(
        &self,
        response: Response<Incoming>,
        slot: StreamSlot,
    ) -> Response<Body> {
        let grpc = crate::policy::grpc::is_grpc(response.headers());
        let response = response.map(|body| Http2Body::new(body, slot));
        if grpc {
            let idle = Duration::from_millis(self.stream_idle_timeout_ms.load(Ordering::Relaxed));
            response.map(|body| crate::body::with_idle_timeout(body, idle))
        } else {
            response.map(|body| self.response_body(body))
        }
    }

    /// `body` as a response body of this pool, bounded by the body idle timeout (one box).
    fn response_body<B>(&self, body: B) -> Body
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let idle = Duration::from_millis(self.body_idle_timeout_ms.load(Ordering::Relaxed));
        crate::body::with_idle_timeout(body, idle)
    }

    /// The endpoint address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether connections to this endpoint are mTLS to a peer sidecar.
    pub fn is_mtls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether requests to this endpoint travel over HTTP/2 (h2c, gRPC, or mTLS between
    /// sidecars).
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// Opens a TCP connection to the endpoint within the connect timeout.
    pub async fn connect_tcp(&self) -> Result<TcpStream, UpstreamError> {
        let after = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        let addr = self.address;
        match tokio::time::timeout(after, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                set_keepalive(&stream);
                Ok(stream)
            }
            Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, after }),
        }
    }

    /// A connection for opaque TCP: plain TCP, or to a peer sidecar mTLS with ALPN
    /// `ficus-tcp` (the peer forwards the bytes to its app), within the connect timeout.
    pub async fn connect_opaque(&self) -> Result<OpaqueStream, UpstreamError> {
        let stream = self.connect_tcp().await?;
        match &self.peer_alpn {
            None => Ok(OpaqueStream::Tcp(stream)),
            Some(alpn) => {
                let stream = self.tls_handshake(&alpn.opaque, stream).await?;
                Ok(OpaqueStream::Tls(Box::new(stream)))
            }
        }
    }

    /// Sends `request` (URI in origin form; headers final) and returns the response head with a
    /// body that returns the connection to the pool when it ends.
    ///
    /// A request tagged with a Backend's [`ConnectionCap`] opens a new connection only with
    /// a permit of that cap, kept by the connection's task until the connection ends.
    ///
    /// An HTTP/1.1 request that switches protocols (it carries `Upgrade`) to a peer sidecar
    /// goes over its own mTLS connection with ALPN `http/1.1` (see [`PeerAlpn`]).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of the arguments"
    )]
    pub fn send(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + use<'_> {
        async move {
            if let Some(alpn) = &self.peer_alpn {
                if request.version() == http::Version::HTTP_11
                    && request.headers().contains_key(http::header::UPGRADE)
                {
                    return Box::pin(self.send_switch(&alpn.http1, request)).await;
                }
            }
            if self.http2 {
                self.send_http2(request).await
            } else {
                self.send_http1(request).await
            }
        }
    }

    /// A permit for a new connection for `request`, when it carries a cap.
    fn permit(&self, request: &Request<Body>) -> Result<Option<ConnectionPermit>, UpstreamError> {
        self.permit_of(request.extensions().get::<ConnectionCap>())
    }

    /// [`EndpointPool::permit`] for a connection this pool may keep idle: the cap learns
    /// that it can ask this pool to close an idle one when it is full.
    fn permit_pooled(
        self: &Arc<Self>,
        request: &Request<Body>,
    ) -> Result<Option<ConnectionPermit>, UpstreamError> {
        let cap = request.extensions().get::<ConnectionCap>();
        let permit = self.permit_of(cap)?;
        if let (Some(cap), Some(_)) = (cap, &permit) {
            let holder: Arc<dyn IdleHolder> = Arc::clone(self) as _;
            cap.opened_by(Arc::downgrade(&holder));
        }
        Ok(permit)
    }

    /// A permit of `cap`, when there is one.
    fn permit_of(
        &self,
        cap: Option<&ConnectionCap>,
    ) -> Result<Option<ConnectionPermit>, UpstreamError> {
        match cap {
            None => Ok(None),
            Some(cap) => cap
                .open()
                .map(Some)
                .ok_or(UpstreamError::ConnectionLimit { addr: self.address }),
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of the arguments"
    )]
    fn send_http1(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + use<'_> {
        async move {
            *request.version_mut() = http::Version::HTTP_11;
            if request.headers().contains_key(http::header::UPGRADE) {
                // A protocol switch takes its connection for good: one of its own, never pooled.
                return Box::pin(self.send_upgrade(request)).await;
            }
            let mut resent = false;
            loop {
                let (mut conn, reused, idle) = match self.checkout_http1() {
                    Some((conn, idle)) => (conn, true, idle),
                    None => {
                        let permit = self.permit_pooled(&request)?;
                        // Boxed, like the other rare paths: inline, they would grow the future
                        // every request moves around (see listener::serve_io).
                        let conn = Box::pin(self.connect_http1(permit)).await?;
                        (conn, false, Duration::ZERO)
                    }
                };
                // A connection idle for a while may be closed by the server just as we write to
                // it. Keep a copy of a bodyless idempotent request to resend once on a fresh
                // connection; busy connections (the fast path) never pay for the copy.
                let copy = (reused && !resent && idle >= STALE_AFTER)
                    .then(|| replayable_copy(&request))
                    .flatten();
                let exchange = conn.sender.try_send_request(request);
                let mut conn = Some(conn);
                match Http1Conn::drive(&mut conn, exchange).await {
                    Ok(response) => {
                        if let Some(conn) = conn.as_mut() {
                            conn.server_idle = server_idle(response.headers());
                        }
                        let pool = conn.map(|conn| (Arc::clone(self), conn));
                        return Ok(response.map(|body| self.pooled_body(body, pool)));
                    }
                    Err(mut error) => match (error.take_message(), copy) {
                        // Never written: safe to resend on a fresh connection.
                        (Some(unsent), _) if reused => request = unsent,
                        // Written, but the server closed the stale connection without answering.
                        (None, Some(copy)) if closed_under_us(error.error()) => {
                            request = copy;
                            resent = true;
                        }
                        _ => {
                            let addr = self.address;
                            return Err(UpstreamError::Reset {
                                addr,
                                source: error.into_error(),
                            });
                        }
                    },
                }
            }
        }
    }

    /// An HTTP/1.1 request with `Upgrade`, on a connection of its own that can switch.
    async fn send_upgrade(&self, request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let permit = self.permit(&request)?;
        let stream = self.connect_tcp().await?;
        self.send_alone(
            stream,
            permit,
            request,
            "upstream HTTP/1.1 upgrade connection",
        )
        .await
    }

    async fn send_http2(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        *request.version_mut() = http::Version::HTTP_2;
        // A protocol switch asked of an h2c upstream: HTTP/2 has none; sent as a plain request.
        if request.headers().contains_key(http::header::UPGRADE) {
            request.headers_mut().remove(http::header::UPGRADE);
            request.headers_mut().remove(http::header::CONNECTION);
        }
        let mut fresh = false;
        loop {
            let (mut sender, slot) = match self.reserve_http2() {
                Some(reserved) => reserved,
                None => {
                    let cap = request.extensions().get::<ConnectionCap>().cloned();
                    let (sender, slot, dialled) = Box::pin(self.dial_http2(cap)).await?;
                    if dialled {
                        self.sweep_http2_later();
                    }
                    fresh |= dialled;
                    (sender, slot)
                }
            };
            if let Err(source) = sender.ready().await {
                self.forget_http2();
                if fresh {
                    return Err(UpstreamError::Reset {
                        addr: self.address,
                        source,
                    });
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.http2_response_body(response, slot)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => {
                        self.forget_http2();
                        request = unsent;
                        fresh = true;
                    }
                    _ => {
                        let error = UpstreamError::Reset {
                            addr: self.address,
                            source: error.into_error(),
                        };
                        if error.is_refused_by_goaway() {
                            // Going away: no new request may take it (its task may not have
                            // noticed yet), so a resend opens a fresh one.
                            self.retire_http2(slot.streams());
                        }
                        return Err(error);
                    }
                },
            }
        }
    }

    /// Takes the HTTP/2 connection counted by `streams` out of the pool.
    fn retire_http2(&self, streams: &Arc<Streams>) {
        if let Ok(mut shared) = self.shared.lock() {
            shared
                .conns
                .retain(|conn| !Arc::ptr_eq(&conn.streams, streams) && conn.is_open());
        }
    }

    /// A place on the first live HTTP/2 connection with room under its peer's stream cap.
    fn reserve_http2(&self) -> Option<(http2::SendRequest<Body>, StreamSlot)> {
        let mut shared = self.shared.lock().ok()?;
        shared.conns.retain(Http2Conn::is_open);
        let conn = shared.conns.iter().find(|conn| conn.streams.has_room())?;
        Some((conn.sender.clone(), conn.streams.take()))
    }

    /// A place on the least busy live HTTP/2 connection, over its peer's cap: the request
    /// waits in the connection for a stream (when no other connection may be opened).
    fn reserve_least_busy_http2(&self) -> Option<(http2::SendRequest<Body>, StreamSlot)> {
        let mut shared = self.shared.lock().ok()?;
        shared.conns.retain(Http2Conn::is_open);
        let conn = shared
            .conns
            .iter()
            .min_by_key(|conn| conn.streams.in_flight())?;
        Some((conn.sender.clone(), conn.streams.take()))
    }

    /// Live HTTP/2 connections.
    fn http2_connections(&self) -> usize {
        self.shared.lock().map_or(0, |shared| {
            shared.conns.iter().filter(|c| c.is_open()).count()
        })
    }

    /// An HTTP/2 connection with room when there was none: one another request opened while
    /// this one waited its turn to dial (`false`), or a new one (`true`), within the Backend's
    /// `cap` and [`multiplex::MAX_CONNECTIONS`]. When the attempt this request waited for
    /// failed, it fails the same way without dialling again. When no connection may be
    /// opened but some are live (all at their cap), the request waits for a stream on the
    /// least busy one.
    async fn dial_http2(
        &self,
        cap: Option<ConnectionCap>,
    ) -> Result<(http2::SendRequest<Body>, StreamSlot, bool), UpstreamError> {
        let waiting_since = tokio::time::Instant::now();
        let mut dialing = self.dialing.lock().await;
        if let Some((sender, slot)) = self.reserve_http2() {
            return Ok((sender, slot, false));
        }
        // Queue on a busy connection rather than fail, when one is live.
        let or_busy = |error: UpstreamError| match self.reserve_least_busy_http2() {
            Some((sender, slot)) => Ok((sender, slot, false)),
            None => Err(error),
        };
        if let Some((_, failure)) = dialing.as_ref().filter(|(at, _)| *at >= waiting_since) {
            return or_busy(failure.again());
        }
        if self.http2_connections() >= multiplex::MAX_CONNECTIONS {
            if let Some((sender, slot)) = self.reserve_least_busy_http2() {
                return Ok((sender, slot, false));
            }
        }
        let permit = match self.permit_of(cap.as_ref()) {
            Ok(permit) => permit,
            Err(error) => return or_busy(error),
        };
        match self.connect_http2(permit).await {
            Ok((sender, streams)) => {
                *dialing = None;
                Ok((sender, streams.take(), true))
            }
            Err(error) => {
                *dialing = Some((tokio::time::Instant::now(), error.again()));
                or_busy(error)
            }
        }
    }

    fn forget_http2(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.conns.retain(Http2Conn::is_open);
        }
    }

    /// Starts a sweeper for the HTTP/2 connections when one was opened beyond the first.
    fn sweep_http2_later(self: &Arc<Self>) {
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        if shared.conns.len() > 1 && !shared.sweeping {
            shared.sweeping = true;
            tokio::spawn(sweep_idle(Arc::downgrade(self), Self::sweep_http2));
        }
    }

    /// Closes the HTTP/2 connections beyond the first that carried no request for the idle
    /// timeout ([`Http2Conns::sweep`]). Returns whether to sweep again.
    fn sweep_http2(&self) -> bool {
        let idle_timeout = self.idle_timeout();
        self.shared
            .lock()
            .is_ok_and(|mut shared| shared.sweep(Coarse::now(), idle_timeout))
    }

    /// A live idle connection and how long it was idle.
    fn checkout_http1(&self) -> Option<(Box<Http1Conn>, Duration)> {
        let idle_timeout = self.idle_timeout();
        loop {
            // Polled outside the lock: other workers may be checking out too.
            let (mut conn, since) = self.idle.lock().ok()?.conns.pop_back()?;
            let idle = since.elapsed();
            let fresh = conn.server_idle.is_none_or(|server| idle < server);
            // The poll also leaves the connection holding no task's waker: it keeps the waker
            // of its last poll, and our request would wake that task for nothing (an extra
            // task poll per request).
            if idle < idle_timeout && fresh && conn.is_alive() {
                return Some((conn, idle));
            }
        }
    }

    fn checkin_http1(self: &Arc<Self>, mut conn: Box<Http1Conn>) {
        // The exchange just ended: let the connection settle into idle.
        if !conn.sender.is_ready() && conn.poll_idle().is_ready() {
            return;
        }
        if !conn.sender.is_ready() {
            // Still busy, like a request body the server did not wait for: let it finish on a
            // task of its own, then close (no sender is left to send it anything). A server
            // that stops reading gets the idle timeout to change its mind.
            let Http1Conn {
                connection, permit, ..
            } = *conn;
            let bound = self.idle_timeout();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(bound, connection).await {
                    Ok(result) => log_end(result),
                    Err(_) => {
                        tracing::debug!("upstream connection still busy after {bound:?}: closed")
                    }
                }
            });
            return;
        }
        let Ok(mut pool) = self.idle.lock() else {
            return;
        };
        let now = Coarse::now();
        let idle_timeout = self.idle_timeout();
        while pool
            .conns
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= idle_timeout)
        {
            pool.conns.pop_front();
        }
        if pool.conns.len() >= MAX_IDLE_PER_ENDPOINT {
            return;
        }
        pool.conns.push_back((conn, now));
        if !pool.sweeping {
            pool.sweeping = true;
            tokio::spawn(sweep_idle(Arc::downgrade(self), Self::sweep_http1));
        }
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// Closes the idle connections past the idle timeout or closed by the server. Returns
    /// whether any are left; when none are, the sweeper stops (a checkin starts another).
    fn sweep_http1(&self) -> bool {
        let idle_timeout = self.idle_timeout();
        let Ok(mut pool) = self.idle.lock() else {
            return false;
        };
        pool.conns.retain_mut(|(conn, since)| {
            let idle = since.elapsed();
            idle < idle_timeout && conn.server_idle.is_none_or(|s| idle < s) && conn.is_alive()
        });
        pool.sweeping = !pool.conns.is_empty();
        pool.sweeping
    }

    async fn connect_http1(
        &self,
        permit: Option<ConnectionPermit>,
    ) -> Result<Box<Http1Conn>, UpstreamError> {
        let stream = self.connect_tcp().await?;
        let (sender, connection) = self.http1_handshake(stream).await?;
        Ok(Box::new(Http1Conn {
            sender,
            connection,
            permit,
            server_idle: None,
        }))
    }

    /// The HTTP/1.1 handshake on `stream`: the sender and the connection to drive.
    async fn http1_handshake<I>(
        &self,
        stream: I,
    ) -> Result<
        (
            http1::SendRequest<Body>,
            http1::Connection<TokioIo<I>, Body>,
        ),
        UpstreamError,
    >
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let mut builder = http1::Builder::new();
        // Flattened writes, as on our server side (`ServerSettings::new`).
        builder
            .max_header_size(MAX_RESPONSE_HEADER_BYTES)
            .writev(false);
        builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.handshake_failed(source))
    }

    /// A failed HTTP handshake on a fresh connection (nothing was sent).
    fn handshake_failed(&self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Handshake {
            addr: self.address,
            source,
        }
    }

    /// The HTTP/1.1 handshake on `stream`; the connection task (upgrades allowed) holds
    /// `permit` until the connection ends, and logs an error ending as `what`'s.
    async fn handshake_http1<I>(
        &self,
        stream: I,
        permit: Option<Arc<ConnectionPermit>>,
        what: &'static str,
    ) -> Result<http1::SendRequest<Body>, UpstreamError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = self.http1_handshake(stream).await?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "{what} ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_http2(
        &self,
        permit: Option<ConnectionPermit>,
    ) -> Result<(http2::SendRequest<Body>, Arc<Streams>), UpstreamError> {
        let stream = self.connect_tcp().await?;
        match &self.tls {
            None => self.handshake_http2(stream, permit).await,
            Some(config) => {
                let stream = self.tls_handshake(config, stream).await?;
                self.handshake_http2(stream, permit).await
            }
        }
    }

    /// The TLS handshake with a peer sidecar, within the connect timeout.
    async fn tls_handshake(
        &self,
        config: &Arc<rustls::ClientConfig>,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        // The name is not checked (the verifier checks the SPIFFE ID); any valid one does.
        let name = rustls_pki_types::ServerName::IpAddress(self.address.ip().into());
        let after = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        let addr = self.address;
        match tokio::time::timeout(after, connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(UpstreamError::Tls { addr, source }),
            Err(_) => Err(UpstreamError::ConnectTimeout { addr, after }),
        }
    }

    /// A protocol switch to a peer sidecar: HTTP/1.1 on a connection of its own (never
    /// pooled: after a `101` it carries the switched protocol until either side closes).
    async fn send_switch(
        &self,
        config: &Arc<rustls::ClientConfig>,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let permit = self.permit(&request)?;
        let stream = self.connect_tcp().await?;
        let stream = self.tls_handshake(config, stream).await?;
        // The outbound side prepared it for HTTP/2 (absolute URI, no Host): HTTP/1.1 wants
        // origin-form and Host.
        if let Some(authority) = request.uri().authority() {
            if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        if let Some(target) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = http::Uri::from(target);
        }
        self.send_alone(
            stream,
            permit,
            request,
            "protocol-switch connection to a peer sidecar",
        )
        .await
    }

    /// Sends `request` over HTTP/1.1 on `stream`, a connection of its own that may switch
    /// protocols and is never pooled.
    async fn send_alone<I>(
        &self,
        stream: I,
        permit: Option<ConnectionPermit>,
        request: Request<Body>,
        what: &'static str,
    ) -> Result<Response<Body>, UpstreamError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // Shared with the response: after a `101` the connection task ends, and the tunnel that
        // takes the connection over holds the permit (see [`SwitchedPermit`]).
        let permit = permit.map(Arc::new);
        let mut sender = self.handshake_http1(stream, permit.clone(), what).await?;
        match sender.send_request(request).await {
            Ok(mut response) => {
                if let Some(permit) = permit {
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        response.extensions_mut().insert(SwitchedPermit(permit));
                    }
                }
                Ok(response.map(|body| self.response_body(body)))
            }
            Err(source) => Err(UpstreamError::Reset {
                addr: self.address,
                source,
            }),
        }
    }

    /// The HTTP/2 handshake on `stream`, then (within the connect timeout) the peer's first
    /// SETTINGS, for its stream cap; the connection joins the pool.
    async fn handshake_http2<I>(
        &self,
        stream: I,
        permit: Option<ConnectionPermit>,
    ) -> Result<(http2::SendRequest<Body>, Arc<Streams>), UpstreamError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let streams = Streams::new();
        let (settings_read, settings) = tokio::sync::oneshot::channel();
        let stream = SettingsReader::new(stream, Arc::clone(&streams), settings_read);
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
            .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
            .max_header_list_size(MAX_RESPONSE_HEADER_BYTES as u32);
        if self.tls.is_some() {
            // A peer sidecar (our own hyper server, no ping policy): pinged while idle too, so
            // a connection the network dropped without a FIN is found dead before requests
            // are sent into it. An app or plain endpoint is never pinged: gRPC servers
            // (grpc-go, grpc-java, C-core) by default allow one ping per 5 minutes and none
            // without calls, and answer more with GOAWAY ENHANCE_YOUR_CALM "too_many_pings",
            // which kills every stream on the connection. TCP keepalive finds those dead.
            builder
                .keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
        }
        let (sender, connection) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.handshake_failed(source))?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
            }
        });
        // Peers send SETTINGS first thing; one that does not within the connect timeout is
        // used at the default cap (a dead one fails the request instead).
        let after = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        let _ = tokio::time::timeout(after, settings).await;
        if let Ok(mut shared) = self.shared.lock() {
            shared.conns.push(Http2Conn {
                sender: sender.clone(),
                streams: Arc::clone(&streams),
                quiet_since: None,
            });
        }
        Ok((sender, streams))
    }
}

/// How long a server keeps an idle connection by its `Keep-Alive: timeout=N` (Node.js sends
/// 5 s, and closes at that moment), less a margin (a second, or half of it when that is
/// shorter) so that a request is never written as the server closes: a request with a body
/// could not be resent. `None` when the response says nothing.
fn server_idle(headers: &http::HeaderMap) -> Option<Duration> {
    // A `HeaderName` constant: a `&str` key would be parsed on every response.
    let value = headers
        .get(crate::proxy::headers::KEEP_ALIVE)?
        .to_str()
        .ok()?;
    let seconds = value.split(',').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        let timeout = name.trim().eq_ignore_ascii_case("timeout");
        timeout.then(|| value.trim().parse::<u64>().ok()).flatten()
    })?;
    let timeout = Duration::from_secs(seconds.min(1 << 32));
    Some(timeout - (timeout / 2).min(Duration::from_secs(1)))
}

/// A copy of `request` to resend, if it is idempotent and has no body (and no `Upgrade`).
fn replayable_copy(request: &Request<Body>) -> Option<Request<Body>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    if !idempotent
        || !request.body().is_end_stream()
        || request.headers().contains_key(http::header::UPGRADE)
    {
        return None;
    }
    let mut copy = Request::new(crate::body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    // The extensions carry the Backend's connection cap: a resend that opens a connection
    // must count against it like the first send.
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// TCP keepalive on an upstream connection: an idle pooled connection (or a quiet HTTP/2
/// stream to an app, which gets no PINGs) whose peer vanished without a FIN is found dead in
/// about a minute instead of the kernel's two hours. Once per connection, never per request.
fn set_keepalive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "TCP keepalive not set on an upstream connection");
    }
}

/// Whether the connection was closed or reset under a written request before any response.
fn closed_under_us(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        cause = error.source();
    }
    false
}

// === impl EndpointPool ===

impl IdleHolder for EndpointPool {
    /// Closes the oldest idle HTTP/1.1 connection that holds a place of `permits`.
    fn close_idle(&self, permits: &Arc<tokio::sync::Semaphore>) -> bool {
        let Ok(mut pool) = self.idle.lock() else {
            return false;
        };
        let holds = |conn: &Http1Conn| {
            conn.permit
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p.semaphore(), permits))
        };
        let Some(index) = pool.conns.iter().position(|(conn, _)| holds(conn)) else {
            return false;
        };
        let closed = pool.conns.remove(index);
        drop(pool);
        // Dropped outside the lock: closing the socket and freeing the place.
        drop(closed);
        true
    }
}

/// Endpoint address, HTTP/2, and the SPIFFE ID required of it (mTLS).
type PoolKey = (SocketAddr, bool, Option<String>);

/// Hands out the pool of an endpoint, the same one for as long as any snapshot names it; and,
/// likewise outliving snapshots, the policy state of Backends ([`crate::policy::Carryover`]).
#[derive(Debug, Default)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Weak<EndpointPool>>>,
    policies: crate::policy::Carryover,
}

impl PoolRegistry {
    /// Policy state carried from one snapshot to the next.
    pub fn policies(&self) -> &crate::policy::Carryover {
        &self.policies
    }

    /// The pool for `address` (HTTP/2 or HTTP/1.1), created or updated with `settings`.
    pub fn pool(
        &self,
        address: SocketAddr,
        http2: bool,
        settings: PoolSettings,
    ) -> Arc<EndpointPool> {
        self.pool_with(address, http2, None, settings)
    }

    /// The pool for `address`, over mTLS when `tls` gives the client config and the identity the
    /// peer must present (one pool per identity: a config change of identity means new
    /// connections).
    pub fn pool_with(
        &self,
        address: SocketAddr,
        http2: bool,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
        settings: PoolSettings,
    ) -> Arc<EndpointPool> {
        let (config, identity) = tls.map_or((None, None), |(c, i)| (Some(c), Some(i)));
        let key = (address, http2, identity);
        let Ok(mut pools) = self.pools.lock() else {
            return Arc::new(EndpointPool::new(address, http2, config, settings));
        };
        pools.retain(|_, pool| pool.strong_count() > 0);
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            pool.update(settings);
            return pool;
        }
        let pool = Arc::new(EndpointPool::new(address, http2, config, settings));
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }
}

/// The idle HTTP/1.1 connections of an endpoint.
#[derive(Debug, Default)]
struct IdlePool {
    /// Oldest first; checkouts take the newest.
    conns: VecDeque<(Box<Http1Conn>, Coarse)>,
    /// Whether a sweeper task is running for this pool.
    sweeping: bool,
}

/// Runs `sweep` on `pool` every half idle timeout (at most [`SWEEP_EVERY`]) until it says
/// nothing is left to sweep or the pool is gone.
async fn sweep_idle(pool: Weak<EndpointPool>, sweep: fn(&EndpointPool) -> bool) {
    loop {
        let period = match pool.upgrade() {
            Some(pool) => (pool.idle_timeout() / 2).min(SWEEP_EVERY),
            None => return,
        };
        tokio::time::sleep(period.max(Duration::from_millis(10))).await;
        match pool.upgrade() {
            Some(pool) if sweep(&pool) => {}
            _ => return,
        }
    }
}

fn log_end(result: hyper::Result<()>) {
    if let Err(error) = result {
        tracing::debug!(%error, "upstream HTTP/1.1 connection ended with an error");
    }
}

/// A context whose waker does nothing.
fn no_waker() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

/// A plain HTTP/1.1 connection with no task of its own: whoever holds it drives it.
struct Http1Conn {
    sender: http1::SendRequest<Body>,
    connection: http1::Connection<TokioIo<TcpStream>, Body>,
    /// A place among the Backend's `maxConnections`, held as long as the connection.
    permit: Option<ConnectionPermit>,
    /// How long the server said it keeps the connection idle (`Keep-Alive: timeout=N` on
    /// its last response), less a margin: the pool does not reuse it after that.
    server_idle: Option<Duration>,
}

impl std::fmt::Debug for Http1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Conn").finish_non_exhaustive()
    }
}

impl Http1Conn {
    /// Drives the connection until it ends, which is when it returns `Ready`; polling it
    /// again after that is not allowed.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.connection).poll(cx).map(log_end)
    }

    /// Polls the connection with no waker: for one nobody waits on (idle, or just done).
    /// Unconstrained: a poll starved of the task's budget would wake nobody.
    fn poll_idle(&mut self) -> Poll<()> {
        let mut connection = tokio::task::unconstrained(&mut self.connection);
        Pin::new(&mut connection).poll(&mut no_waker()).map(log_end)
    }

    /// Polls an idle connection once: whether it is still open and ready for a request (the
    /// server may have closed it meanwhile).
    fn is_alive(&mut self) -> bool {
        self.poll_idle().is_pending() && !self.sender.is_closed() && self.sender.is_ready()
    }

    /// Awaits `exchange` (a request handed to `conn`) while driving the connection. The
    /// connection is dropped (`None`) if it ended meanwhile.
    ///
    /// Only the connection gets this task's waker. The response it hands over (and, in
    /// [`PooledBody`], the body) is polled without one: nothing but the connection, polled
    /// right before, can complete them, and a waker there would only make this task wake
    /// itself once more for every hand-over.
    async fn drive<F, T>(conn: &mut Option<Box<Self>>, exchange: F) -> T
    where
        F: Future<Output = T>,
    {
        // Unconstrained, as a poll starved of the task's budget would wake nobody.
        let mut exchange = std::pin::pin!(tokio::task::unconstrained(exchange));
        std::future::poll_fn(|cx| match conn.as_mut() {
            Some(c) => {
                if c.poll_connection(cx).is_pending() {
                    return exchange.as_mut().poll(&mut no_waker());
                }
                // Dropping it answers a request still queued on it with an error.
                *conn = None;
                exchange.as_mut().poll(cx)
            }
            None => exchange.as_mut().poll(cx),
        })
        .await
    }
}

impl EndpointPool {
    /// The response body of a pooled HTTP/1.1 exchange: it hands the connection back when it
    /// ends, or at once when there is nothing to read.
    fn pooled_body(
        &self,
        body: Incoming,
        pool: Option<(Arc<EndpointPool>, Box<Http1Conn>)>,
    ) -> Body {
        match pool {
            // Nothing to read (HEAD, 204, 304): the connection is reusable right away.
            Some((pool, conn)) if body.is_end_stream() => {
                pool.checkin_http1(conn);
                crate::body::empty()
            }
            None => self.response_body(body),
            Some(pool) => self.response_body(PooledBody {
                inner: body,
                pool: Some(pool),
            }),
        }
    }
}

/// An HTTP/1.1 response body that drives its connection and returns it to the pool once the
/// body has ended.
struct PooledBody {
    inner: Incoming,
    pool: Option<(Arc<EndpointPool>, Box<Http1Conn>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, conn)) = self.pool.take() {
            pool.checkin_http1(conn);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The connection usually has the whole body in the channel by the time the head
        // is out: drive it only when the body waits. As in `Http1Conn::drive`, only the
        // connection gets the waker.
        let this = self.as_mut().get_mut();
        let inner = &mut this.inner;
        let polled = match this.pool.as_mut() {
            None => Pin::new(inner).poll_frame(cx),
            Some((_, conn)) => {
                let mut polled = Pin::new(&mut *inner).poll_frame(&mut no_waker());
                if polled.is_pending() {
                    if conn.poll_connection(cx).is_pending() {
                        polled = Pin::new(&mut *inner).poll_frame(&mut no_waker());
                    } else {
                        // Ended: what it read is in the body channel; it is not reusable.
                        this.pool = None;
                        polled = Pin::new(inner).poll_frame(cx);
                    }
                }
                polled
            }
        };
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error: the connection is not reusable; dropping it closes it.
            Poll::Ready(Some(Err(_))) => self.pool = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The first HTTP/2 error in `error`'s chain of causes (hyper wraps h2's, and we wrap hyper's).
pub fn h2_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn keep_alive_timeouts_are_read_with_a_margin() {
        let idle = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("keep-alive", http::HeaderValue::from_str(value).unwrap());
            super::server_idle(&headers)
        };
        let secs = std::time::Duration::from_secs;
        assert_eq!(idle("timeout=5"), Some(secs(4)), "Node.js");
        assert_eq!(idle("max=100, Timeout = 2"), Some(secs(1)));
        assert_eq!(
            idle("timeout=1"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(idle("timeout=0"), Some(secs(0)));
        assert_eq!(idle("timeout=99999999999999999999"), None, "not a number");
        assert_eq!(idle("max=5"), None);
        assert_eq!(idle("timeout=-1"), None);
        assert_eq!(super::server_idle(&http::HeaderMap::new()), None);
    }

    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(10);

    /// A burst of requests that find no HTTP/2 connection opens one, not one each; and when
    /// the endpoint refuses, every request of the burst fails as a connect failure.
    #[tokio::test]
    async fn a_burst_shares_one_http2_connection_attempt() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(|_: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(crate::body::empty()))
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(300),
        };
        let request = || {
            Request::get("http://api.shop/")
                .body(crate::body::empty())
                .unwrap()
        };
        // 20 requests at once through a fresh pool to `addr`; their outcomes.
        let burst = |addr| async move {
            let pool = Arc::new(EndpointPool::new(addr, true, None, settings));
            let calls: Vec<_> = (0..20)
                .map(|_| {
                    let pool = Arc::clone(&pool);
                    tokio::spawn(async move { pool.send(request()).await.map(|r| r.status()) })
                })
                .collect();
            let mut outcomes = Vec::new();
            for call in calls {
                outcomes.push(tokio::time::timeout(WAIT, call).await.unwrap().unwrap());
            }
            outcomes
        };
        for outcome in burst(addr).await {
            assert_eq!(outcome.unwrap(), 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // Nothing listens on `closed`: the attempt fails, and so does every request of the burst.
        let closed = {
            let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
            socket.local_addr().unwrap()
        };
        for outcome in burst(closed).await {
            assert!(outcome.unwrap_err().is_connect_failure());
        }
    }

    /// An h2c upstream behind a frame reader that counts the PING frames (not acks) its
    /// clients send. Each response sends `hello`, then stays open and quiet until
    /// [`PingCounter::end_bodies`].
    struct PingCounter {
        addr: SocketAddr,
        pings: Arc<std::sync::atomic::AtomicUsize>,
        bodies: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    }

    impl PingCounter {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let bodies = Arc::new(Mutex::new(Vec::new()));
            let (counted, kept) = (Arc::clone(&pings), Arc::clone(&bodies));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (ours, server) = tokio::io::duplex(64 * 1024);
                    let kept = Arc::clone(&kept);
                    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                        let (tx, rx) = mpsc::channel(1);
                        let _ = tx.try_send(Bytes::from_static(b"hello"));
                        kept.lock().unwrap().push(tx);
                        async move {
                            let body = crate::body::boxed(Streamed(rx));
                            Ok::<_, std::convert::Infallible>(Response::new(body))
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(server), service),
                    );
                    let (mut from_server, mut to_server) = tokio::io::split(ours);
                    let (mut from_client, mut to_client) = stream.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let counted = Arc::clone(&counted);
                    tokio::spawn(async move {
                        // Frames after the 24-byte client preface: 9-byte headers (length 3,
                        // type 1, flags 1, stream 4); PING is type 6, ACK flag 1.
                        let mut pending = Vec::new();
                        let mut preface = 24;
                        let mut chunk = [0u8; 16 * 1024];
                        loop {
                            let n = match from_client.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if to_server.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            pending.extend_from_slice(&chunk[..n]);
                            let skip = preface.min(pending.len());
                            pending.drain(..skip);
                            preface -= skip;
                            while pending.len() >= 9 {
                                let length = usize::from(pending[0]) << 16
                                    | usize::from(pending[1]) << 8
                                    | usize::from(pending[2]);
                                if pending.len() < 9 + length {
                                    break;
                                }
                                if pending[3] == 6 && pending[4] & 1 == 0 {
                                    counted.fetch_add(1, Ordering::SeqCst);
                                }
                                pending.drain(..9 + length);
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                pings,
                bodies,
            }
        }

        fn end_bodies(&self) {
            self.bodies.lock().unwrap().clear();
        }
    }

    /// A plain HTTP/2 endpoint (an app, a gRPC server) is never sent keepalive PINGs: gRPC
    /// servers answer more than one per 5 minutes with GOAWAY "too_many_pings". A quiet stream
    /// stays open through ten minutes (on the paused clock) without a PING.
    #[tokio::test]
    async fn a_plain_http2_endpoint_is_never_pinged() {
        let upstream = PingCounter::start().await;
        // Long body timeouts: only a keepalive could end the quiet stream.
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(86_400),
            stream_idle_timeout: Duration::from_secs(86_400),
        };
        let pool = Arc::new(EndpointPool::new(upstream.addr, true, None, settings));
        let request = Request::get("http://api.shop/watch")
            .body(crate::body::empty())
            .unwrap();
        let response = tokio::time::timeout(WAIT, pool.send(request))
            .await
            .unwrap()
            .unwrap();
        let mut body = response.into_body();
        let first = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
        assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "hello");

        // Ten quiet minutes: a 30 s keepalive would have pinged (and its 10 s timeout could
        // have closed the connection before the answer was read).
        tokio::time::pause();
        tokio::time::sleep(Duration::from_secs(600)).await;
        tokio::time::resume();

        upstream.end_bodies();
        let rest = tokio::time::timeout(WAIT, body.collect()).await.unwrap();
        assert!(rest
            .expect("the quiet stream survived")
            .to_bytes()
            .is_empty());
        assert_eq!(upstream.pings.load(Ordering::SeqCst), 0, "PINGs sent");
    }

    #[tokio::test]
    async fn upstream_connections_have_tcp_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool(listener.local_addr().unwrap(), Duration::from_secs(30));
        let stream = pool.connect_tcp().await.unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            TCP_KEEPALIVE_PROBES
        );
        assert!(socket.tcp_nodelay().unwrap());
    }

    #[test]
    fn a_resend_copy_keeps_the_extensions_that_carry_the_connection_cap() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tag(u32);
        let mut request = Request::get("http://api.shop/x")
            .header("x-a", "1")
            .body(crate::body::empty())
            .unwrap();
        request.extensions_mut().insert(Tag(7));
        let copy = replayable_copy(&request).expect("a bodyless GET is replayable");
        assert_eq!(copy.extensions().get::<Tag>(), Some(&Tag(7)));
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(copy.uri(), request.uri());
        *request.method_mut() = Method::POST;
        assert!(replayable_copy(&request).is_none());
    }

    /// An HTTP/1.1 upstream on loopback that answers every request `ok` with keep-alive. It
    /// reports each accepted connection on `accepted` and its end (EOF from us) on `ended`;
    /// with `close_after_response` it closes each connection right after its first response.
    async fn upstream(close_after_response: bool) -> (SocketAddr, Upstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = mpsc::channel(16);
        let (ended_tx, ended) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = accepted_tx.try_send(());
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(response).await.is_err() {
                                return;
                            }
                            if close_after_response {
                                return;
                            }
                        }
                    }
                    let _ = ended_tx.try_send(());
                });
            }
        });
        (addr, Upstream { accepted, ended })
    }

    struct Upstream {
        accepted: mpsc::Receiver<()>,
        ended: mpsc::Receiver<()>,
    }

    fn pool(addr: SocketAddr, idle_timeout: Duration) -> Arc<EndpointPool> {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout,
            body_idle_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(300),
        };
        Arc::new(EndpointPool::new(addr, false, None, settings))
    }

    async fn get(pool: &Arc<EndpointPool>) -> Bytes {
        let request = Request::builder()
            .uri("/")
            .header("host", "upstream")
            .body(crate::body::empty())
            .unwrap();
        let response = tokio::time::timeout(WAIT, pool.send(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(WAIT, response.into_body().collect());
        body.await.unwrap().unwrap().to_bytes()
    }

    /// A request body fed chunk by chunk from a channel.
    struct Streamed(mpsc::Receiver<Bytes>);

    impl HttpBody for Streamed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    fn idle_count(pool: &EndpointPool) -> usize {
        pool.idle.lock().unwrap().conns.len()
    }

    #[tokio::test]
    async fn a_connection_carries_request_after_request() {
        let (addr, mut upstream) = upstream(false).await;
        let pool = pool(addr, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(idle_count(&pool), 1);
        upstream.accepted.recv().await.unwrap();
        assert!(
            upstream.accepted.try_recv().is_err(),
            "a second connection was opened"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout_without_traffic() {
        let (addr, mut upstream) = upstream(false).await;
        let pool = pool(addr, Duration::from_millis(200));
        assert_eq!(get(&pool).await, "ok");
        // Nothing else is sent: only the sweeper can close it.
        tokio::time::timeout(WAIT, upstream.ended.recv())
            .await
            .expect("the idle connection was never closed")
            .unwrap();
        assert_eq!(idle_count(&pool), 0);
    }

    #[tokio::test]
    async fn connections_the_server_closed_leave_the_pool_and_are_not_reused() {
        let (addr, mut upstream) = upstream(true).await;
        let pool = pool(addr, Duration::from_secs(60));
        assert_eq!(get(&pool).await, "ok");
        let deadline = tokio::time::Instant::now() + WAIT;
        while idle_count(&pool) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "closed connection kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(&pool).await, "ok");
        upstream.accepted.recv().await.unwrap();
        upstream.accepted.recv().await.unwrap();
    }

    #[tokio::test]
    async fn a_request_body_the_server_did_not_wait_for_is_still_delivered() {
        const CHUNK: usize = 16 * 1024;
        const CHUNKS: usize = 64;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received_tx, mut received) = mpsc::channel(1);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Answer as soon as the head is in, then read the body.
            let head_end = loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            stream.write_all(response).await.unwrap();
            let mut body = buffer.len() - head_end;
            while body < CHUNK * CHUNKS {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body += n,
                }
            }
            let _ = received_tx.send(body).await;
        });
        let pool = pool(addr, Duration::from_secs(60));
        let (body_tx, body) = mpsc::channel(1);
        let (answered_tx, answered) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            body_tx.send(chunk.clone()).await.unwrap();
            // The rest only once the response is in: it has to go out after the exchange.
            let _ = answered.await;
            for _ in 1..CHUNKS {
                body_tx.send(chunk.clone()).await.unwrap();
            }
        });
        let request = Request::post("/")
            .header("host", "upstream")
            .header("content-length", CHUNK * CHUNKS)
            .body(crate::body::boxed(Streamed(body)))
            .unwrap();
        let response = tokio::time::timeout(WAIT, pool.send(request))
            .await
            .unwrap()
            .unwrap();
        let body = tokio::time::timeout(WAIT, response.into_body().collect());
        assert_eq!(body.await.unwrap().unwrap().to_bytes(), "ok");
        answered_tx.send(()).unwrap();
        let delivered = tokio::time::timeout(WAIT, received.recv()).await.unwrap();
        assert_eq!(delivered, Some(CHUNK * CHUNKS));
        // It was not pooled half-sent.
        assert_eq!(idle_count(&pool), 0);
    }
}
