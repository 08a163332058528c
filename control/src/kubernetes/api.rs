//! The thin HTTPS client of the Kubernetes API server: one connection per request (HTTP/1.1
//! over TLS 1.2/1.3, the server checked against the cluster CA), the control plane's own
//! service-account token as the bearer. Used by the TokenReview authenticator and the watches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// In-cluster service-account files of the control plane's own pod.
const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where and how to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// `host:port` to connect to.
    pub address: SocketAddr,
    /// Name the API server's certificate is checked against (`kubernetes.default.svc`).
    pub server_name: String,
    /// PEM roots for the API server's certificate.
    pub ca_pem: String,
    /// File with the control plane's own bearer token (re-read per request: kubelet rotates
    /// it).
    pub token_file: PathBuf,
}

impl ApiServer {
    /// The in-cluster API server: `KUBERNETES_SERVICE_HOST`/`_PORT` and the pod's
    /// service-account token and CA.
    pub fn in_cluster() -> Result<Self, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| "KUBERNETES_SERVICE_HOST is not set: not running in a pod".to_owned())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let address = format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .map_err(|_| format!("KUBERNETES_SERVICE_HOST {host:?} is not an IP address"))?;
        let dir = Path::new(IN_CLUSTER_DIR);
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))
            .map_err(|e| format!("{}/ca.crt: {e}", dir.display()))?;
        Ok(Self {
            address,
            server_name: "kubernetes.default.svc".to_owned(),
            ca_pem,
            token_file: dir.join("token"),
        })
    }
}

/// Sends requests to one API server.
#[derive(Clone)]
pub struct ApiClient {
    server: ApiServer,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("server", &self.server.address)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client trusting `server.ca_pem`.
    pub fn new(server: ApiServer) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
            let certificate = certificate.map_err(|e| format!("API server CA: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("API server CA: {e}"))?;
        }
        if roots.is_empty() {
            return Err("API server CA: no certificate".to_owned());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The API server's address.
    pub fn address(&self) -> SocketAddr {
        self.server.address
    }

    /// Sends `method path` with an optional JSON body on a new connection; the response with
    /// its body still streaming. The caller bounds the time.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, String> {
        let own_token = tokio::fs::read_to_string(&self.server.token_file)
            .await
            .map_err(|e| format!("{}: {e}", self.server.token_file.display()))?;
        let name = ServerName::try_from(self.server.server_name.clone())
            .map_err(|e| format!("server name: {e}"))?;
        let tcp = tokio::net::TcpStream::connect(self.server.address)
            .await
            .map_err(|e| format!("connect {}: {e}", self.server.address))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the API server: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.server.server_name.as_str())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, format!("Bearer {}", own_token.trim()));
        if json.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| format!("request: {e}"))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))
    }
}

/// A stand-in API server for tests (none can run here): HTTPS with a certificate for
/// `kubernetes.default.svc` from a throwaway CA, answering with `respond`.
#[cfg(test)]
pub mod stand_in {
    use std::convert::Infallible;
    use std::future::Future;
    use std::time::Duration;

    use http_body_util::combinators::BoxBody;

    use super::*;

    /// The response body type of the stand-in.
    pub type Body = BoxBody<Bytes, Infallible>;

    /// Starts it; `respond` gets the method, path with query, authorization header and body.
    pub async fn start<F, Fut>(respond: F) -> (ApiServer, tempfile::TempDir)
    where
        F: Fn(Method, String, String, Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        use ficus_identity::ca::CertificateAuthority;
        use ficus_identity::tls::{self, CertStore, ClientAuth, Credentials, TrustBundle};
        use ficus_identity::SpiffeId;
        use http_body_util::BodyExt;

        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let id = SpiffeId::workload("cluster.local", "default", "kubernetes").unwrap();
        let (issued, key) = ca
            .issue_server(
                &id,
                &["kubernetes.default.svc".to_owned()],
                &[],
                Duration::from_secs(3600),
            )
            .unwrap();
        let store = CertStore::with_credentials(
            Credentials::from_pem_key(&issued.chain_pem, &key).unwrap(),
        );
        let bundle = TrustBundle::from_pem(&ca.root_pem(), "cluster.local").unwrap();
        let config = tls::server_config(store, &bundle, ClientAuth::None).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let respond = respond.clone();
                        async move {
                            let method = request.method().clone();
                            let path = request
                                .uri()
                                .path_and_query()
                                .map_or_else(String::new, |p| p.as_str().to_owned());
                            let authorization = request
                                .headers()
                                .get(AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(respond(method, path, authorization, body).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "control-plane-own-token\n").unwrap();
        let server = ApiServer {
            address,
            server_name: "kubernetes.default.svc".to_owned(),
            ca_pem: ca.root_pem(),
            token_file,
        };
        (server, dir)
    }

    /// A JSON answer with `status`.
    pub fn json(status: u16, body: &serde_json::Value) -> Response<Body> {
        use http_body_util::BodyExt;
        let mut response = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    }
}
