//! One HTTP/2 connection to the control plane (TLS when `--control` is `https://`), carrying
//! tonic's generated clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ControlSettings;

/// Connect, TLS and HTTP/2 handshake timeout (each).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive interval and timeout: a dead control plane is noticed within ~20 s.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// What a connection runs over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a connection to the control plane. Errors are one-line descriptions.
pub async fn connect(settings: &ControlSettings) -> Result<Channel, String> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(settings.address),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match &settings.tls {
        None => Box::new(stream),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
            let name = rustls_pki_types::ServerName::IpAddress(settings.address.ip().into());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake with the control plane failed: {e}"))?;
            Box::new(stream)
        }
    };
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io));
    let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_owned())?
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "control plane connection ended");
        }
    });
    Ok(Channel { sender })
}

/// A tonic transport over one hyper HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Channel {
    sender: http2::SendRequest<tonic::body::Body>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
