//! One HTTP/2 connection to the control plane (TLS when `--control` is `https://`), carrying
//! tonic's generated clients.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

/// Name resolution timeout.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many resolved addresses are tried per connect.
const MAX_ADDRESSES: usize = 8;

/// What a connection runs over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a connection to the control plane: resolves `--control`'s host (each time, so a
/// moved Service is followed), then tries its addresses in turn. Errors are one-line
/// descriptions. TLS verifies the control plane's SPIFFE ID, never the host name.
pub async fn connect(settings: &ControlSettings) -> Result<Channel, String> {
    let addresses = resolve(&settings.host, settings.port).await?;
    let mut failures = Vec::new();
    let mut connected = None;
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                connected = Some((stream, address));
                break;
            }
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => failures.push(format!("{address}: connect timed out")),
        }
    }
    let Some((stream, address)) = connected else {
        return Err(format!("connect failed ({})", failures.join("; ")));
    };
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match &settings.tls {
        None => Box::new(stream),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
            let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
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

/// The addresses of `host` (an IP address or a DNS name), at most [`MAX_ADDRESSES`], in the
/// resolver's order.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
        if addresses.len() == MAX_ADDRESSES {
            break;
        }
    }
    if addresses.is_empty() {
        return Err(format!("{host} resolved to no address"));
    }
    Ok(addresses)
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
