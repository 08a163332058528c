//! The gRPC port (`--grpc`): TLS with the control plane's own certificate (plaintext only with
//! `--insecure`), HTTP/2, and two services on it.
//!
//! tonic is built without its transport and router, so hyper serves each connection and
//! [`Router`] picks the service by path prefix: `/ficus.v1.Certificates/` goes to the CA
//! ([`crate::sign`]), everything else to the push streams ([`crate::push`]), which answers
//! `UNIMPLEMENTED` for paths it does not know.
//!
//! The TLS server asks for no client certificate: sidecars come here to get their first one
//! and authenticate with a token instead. The handshake must finish within 10 s; failures
//! are logged with the peer and counted in `ficus_tls_handshake_failed_total{reason}`.
//!
//! Deadlines: TLS handshake 10 s; then the HTTP/2 preface must start within 10 s
//! ([`FirstByteDeadline`]); an established connection is watched by HTTP/2 keepalive pings;
//! a `Sign` call, reading its request included, must finish within 30 s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ficus_config::wire::certificates_server::CertificatesServer;
use ficus_config::wire::config_discovery_server::ConfigDiscoveryServer;
use ficus_net::listen::Listeners;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tonic::Status;
use tower_service::Service;

use crate::metrics::Metrics;
use crate::push::Push;
use crate::sign::{PeerAddr, Signer};

/// Time for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to start talking HTTP/2 once connected (and past TLS).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole `Sign` call, reading the request included (the CA itself takes
/// milliseconds; this bounds slow senders).
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keepalive: ping after this much silence, give up after as much again.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Streams per connection (a sidecar needs one push stream and the odd signing call).
const MAX_STREAMS: u32 = 16;
/// Connections served at once (sidecars keep one each); more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16 * 1024;
/// Path prefix of the certificate service.
const CERTIFICATES: &str = "/ficus.v1.Certificates/";

/// Dispatches a request to the push or the certificate service by its path.
#[derive(Debug, Clone)]
pub struct Router {
    push: ConfigDiscoveryServer<Push>,
    certificates: CertificatesServer<Signer>,
}

impl Router {
    /// Both services of the port.
    pub fn new(
        push: ConfigDiscoveryServer<Push>,
        certificates: CertificatesServer<Signer>,
    ) -> Self {
        Self { push, certificates }
    }
}

// === impl Router ===

impl Service<Request<Incoming>> for Router {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both services are always ready (their generated `poll_ready` says so).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if request.uri().path().starts_with(CERTIFICATES) {
            let call = self.certificates.call(request);
            Box::pin(async move {
                match tokio::time::timeout(SIGN_TIMEOUT, call).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(Status::deadline_exceeded(
                        "the certificate request was not complete within 30 s",
                    )
                    .into_http()),
                }
            })
        } else {
            self.push.call(request)
        }
    }
}

/// [`Router`] for one connection: tells the services who is calling.
#[derive(Debug, Clone)]
struct Connection {
    router: Router,
    peer: SocketAddr,
}

impl Service<Request<Incoming>> for Connection {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(PeerAddr(self.peer));
        self.router.call(request)
    }
}

/// Serves `router` on `listeners` (`--grpc` and its IPv6 companion) until the process ends:
/// over TLS with `tls`, in plaintext without (`--insecure`).
pub async fn serve(
    listeners: Listeners,
    tls: Option<TlsAcceptor>,
    router: Router,
    metrics: Arc<Metrics>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = crate::listen::accept(&listeners, "gRPC").await;
        let _ = stream.set_nodelay(true);
        let service = Connection {
            router: router.clone(),
            peer,
        };
        let tls = tls.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            match tls {
                None => serve_connection(FirstByteDeadline::new(stream), service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(FirstByteDeadline::new(stream), service).await;
                        }
                        Ok(Err(error)) => {
                            metrics
                                .tls_handshake_failed
                                .with_label_values(&["error"])
                                .inc();
                            tracing::info!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics
                                .tls_handshake_failed
                                .with_label_values(&["timeout"])
                                .inc();
                            tracing::info!(%peer, "TLS handshake not finished within 10 s");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<S>(stream: S, service: Connection)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = service.peer;
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE))
        .keep_alive_timeout(KEEPALIVE)
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "gRPC connection ended");
    }
}

/// A stream whose reads fail with `TimedOut` when nothing at all has been read within
/// [`PREFACE_TIMEOUT`] of its creation: hyper's HTTP/2 server waits for the client preface
/// without a deadline of its own, and keepalive pings start only after it.
#[derive(Debug)]
struct FirstByteDeadline<S> {
    inner: S,
    /// Cleared by the first byte read.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(PREFACE_TIMEOUT))),
        }
    }
}

// === impl FirstByteDeadline ===

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.deadline = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within 10 s",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstByteDeadline::new(server);
        let mut byte = [0u8; 1];
        let error = silent.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstByteDeadline::new(server);
        client.write_all(b"P").await.unwrap();
        assert_eq!(talking.read(&mut byte).await.unwrap(), 1);
        tokio::time::sleep(PREFACE_TIMEOUT * 2).await;
        client.write_all(b"R").await.unwrap();
        assert_eq!(
            talking.read(&mut byte).await.unwrap(),
            1,
            "no deadline after the start"
        );
    }
}
