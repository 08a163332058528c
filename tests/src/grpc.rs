//! gRPC clients of `ficus-control`'s `--grpc` port: one HTTP/2 connection, over TLS that
//! verifies the control plane's SPIFFE ID against a root file, or over plaintext.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ficus_config::wire::certificates_client::CertificatesClient;
use ficus_config::wire::{SignRequest, SignResponse};
use ficus_identity::tls::{client_config, CertStore, TrustBundle};
use ficus_identity::SpiffeId;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Connect, TLS handshake and HTTP/2 handshake, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The control plane's SPIFFE ID in `trust_domain`.
pub fn control_id(trust_domain: &str) -> SpiffeId {
    SpiffeId::workload(trust_domain, "ficus-system", "ficus-control").expect("valid SPIFFE ID")
}

/// A tonic transport over one hyper HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Channel {
    sender: http2::SendRequest<tonic::body::Body>,
    /// `https://addr` or `http://addr`: requests need a scheme and an authority.
    origin: http::Uri,
}

impl Channel {
    /// `https://addr` or `http://addr`, for a client's `with_origin`.
    pub fn origin(&self) -> http::Uri {
        self.origin.clone()
    }
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

/// Connects over TLS, trusting the roots in `ca_pem` and requiring the server to be
/// `expected`.
pub async fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    expected: &SpiffeId,
) -> anyhow::Result<Channel> {
    let tls = tls_stream(addr, ca_pem, expected, None).await?;
    handshake(tls, format!("https://{addr}")).await
}

/// A TLS connection (ALPN h2) on which nothing has been sent yet, presenting `client`'s
/// certificate when given.
pub async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &str,
    expected: &SpiffeId,
    client: Option<Arc<CertStore>>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let bundle = TrustBundle::from_pem(ca_pem, expected.trust_domain())?;
    let config = client_config(client, &bundle, expected)?;
    let tcp = connect_tcp(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| anyhow::anyhow!("TLS handshake with {addr} timed out"))??)
}

/// Connects in plaintext (HTTP/2 prior knowledge).
pub async fn connect_plain(addr: SocketAddr) -> anyhow::Result<Channel> {
    handshake(connect_tcp(addr).await?, format!("http://{addr}")).await
}

async fn connect_tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    Ok(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {addr} timed out"))??,
    )
}

async fn handshake<S>(stream: S, origin: String) -> anyhow::Result<Channel>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("HTTP/2 handshake timed out"))??;
    tokio::spawn(connection);
    Ok(Channel {
        sender,
        origin: origin.parse()?,
    })
}

/// `Certificates/Sign` with `token` as the bearer token (none when `None`).
pub async fn sign(
    channel: &Channel,
    token: Option<&str>,
    csr_pem: &str,
) -> Result<SignResponse, tonic::Status> {
    let mut request = tonic::Request::new(SignRequest {
        csr_pem: csr_pem.to_owned(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut client = CertificatesClient::with_origin(channel.clone(), channel.origin.clone());
    tokio::time::timeout(CALL_TIMEOUT, client.sign(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("Sign took too long"))?
        .map(tonic::Response::into_inner)
}

/// Opens `ConfigDiscovery/Subscribe` with `token` (none when `None`), sending a Hello for
/// `workload`.`namespace`; `Ok` once the control plane has accepted the stream.
pub async fn subscribe(
    channel: &Channel,
    token: Option<&str>,
    workload: &str,
    namespace: &str,
) -> Result<(), tonic::Status> {
    open_subscription(channel, token, workload, namespace)
        .await
        .map(drop)
}

/// [`subscribe`], keeping the stream of the control plane's messages.
pub async fn open_subscription(
    channel: &Channel,
    token: Option<&str>,
    workload: &str,
    namespace: &str,
) -> Result<tonic::Streaming<ficus_config::wire::ControlMessage>, tonic::Status> {
    use ficus_config::wire::config_discovery_client::ConfigDiscoveryClient;
    use ficus_config::wire::{sidecar_message, Hello, SidecarMessage};
    use futures_util::StreamExt;
    let hello = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(Hello {
            node_id: format!("{workload}-test"),
            workload: workload.to_owned(),
            namespace: namespace.to_owned(),
            ..Hello::default()
        })),
    };
    // The stream stays open after the Hello, like a sidecar's.
    let outbound =
        futures_util::stream::once(async move { hello }).chain(futures_util::stream::pending());
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut client = ConfigDiscoveryClient::with_origin(channel.clone(), channel.origin.clone());
    tokio::time::timeout(CALL_TIMEOUT, client.subscribe(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("Subscribe took too long"))?
        .map(tonic::Response::into_inner)
}
