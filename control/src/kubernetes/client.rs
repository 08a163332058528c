//! The client of the Kubernetes API server: kube-rs's [`Client`] (HTTP/1.1 over rustls with
//! the ring provider), configured in-cluster from the pod's service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, token and CA, both re-read by kube when kubelet
//! rotates them) or, outside a pod, from the kubeconfig named by `KUBECONFIG`. The watches
//! and the TokenReview authenticator share one client.

use std::time::Duration;

pub use kube::{Client, Config};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};

/// Longest silence while reading an answer of the API server (a LIST, a TokenReview, a
/// watch). Above the 290 s after which the API server ends a watch, so a quiet watch is not
/// cut; kube's watcher also gives up on a watch silent for longer than that.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the API server is and how to authenticate to it: in a pod, its service account
/// (kube's [`Config::incluster`]); outside one, the kubeconfig in `KUBECONFIG` (its current
/// context).
pub async fn config() -> Result<Config, String> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"));
    }
    if std::env::var_os("KUBECONFIG").is_some() {
        return Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("KUBECONFIG: {e}"));
    }
    Err(
        "KUBERNETES_SERVICE_HOST is not set: not running in a pod (outside one, set KUBECONFIG)"
            .to_owned(),
    )
}

/// A client for `config`, with [`READ_TIMEOUT`] on every answer. Must be called on a Tokio
/// runtime (kube spawns the client's request buffer there).
pub fn connect(mut config: Config) -> Result<Client, String> {
    // kube builds its rustls configs with the process-wide provider; Ficus uses ring only.
    if CryptoProvider::get_default().is_none() {
        let _ = ring::default_provider().install_default();
    }
    config.read_timeout = Some(READ_TIMEOUT);
    // Count the read timeout from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// A stand-in API server for tests (none can run here): HTTPS with a certificate for
/// `kubernetes.default.svc` and 127.0.0.1 from a throwaway CA, answering with `respond`;
/// kube's real client talks to it.
#[cfg(test)]
pub mod stand_in {
    use std::convert::Infallible;
    use std::future::Future;
    use std::time::Duration;

    use bytes::Bytes;
    use http::header::AUTHORIZATION;
    use http::{Method, Request, Response};
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;

    use super::Config;

    /// The response body type of the stand-in.
    pub type Body = BoxBody<Bytes, Infallible>;

    /// The bearer token the stand-in's [`Config`] presents (from a token file, as in a pod).
    pub const OWN_TOKEN: &str = "control-plane-own-token";

    /// Starts it; `respond` gets the method, path with query, authorization header and body.
    /// The [`Config`] reaches it as in a pod: `https://127.0.0.1:<port>`, the CA's root, a
    /// token file (in the returned directory).
    pub async fn start<F, Fut>(respond: F) -> (Config, tempfile::TempDir)
    where
        F: Fn(Method, String, String, Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        use ficus_identity::ca::CertificateAuthority;
        use ficus_identity::tls::{self, CertStore, ClientAuth, Credentials, TrustBundle};
        use ficus_identity::SpiffeId;

        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let id = SpiffeId::workload("cluster.local", "default", "kubernetes").unwrap();
        let (issued, key) = ca
            .issue_server(
                &id,
                &["kubernetes.default.svc".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let store = CertStore::with_credentials(
            Credentials::from_pem_key(&issued.chain_pem, &key).unwrap(),
        );
        let bundle = TrustBundle::from_pem(&ca.root_pem(), "cluster.local").unwrap();
        let server_config = tls::server_config(store, &bundle, ClientAuth::None).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
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
        // As kubelet writes it: no newline (kube does not trim the file).
        std::fs::write(&token_file, OWN_TOKEN).unwrap();
        let mut config = Config::new(format!("https://{address}").parse().unwrap());
        config.root_cert = Some(root_der(&ca.root_pem()));
        config.auth_info.token_file = Some(token_file.to_str().unwrap().to_owned());
        (config, dir)
    }

    /// The DER certificates of a PEM bundle, as [`Config::root_cert`] takes them.
    pub fn root_der(pem: &str) -> Vec<Vec<u8>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect()
    }

    /// A JSON answer with `status`.
    pub fn json(status: u16, body: &serde_json::Value) -> Response<Body> {
        let mut response = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        response
    }

    /// The `Status` the API server answers a failed request with.
    pub fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
        json(
            code,
            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason, "code": code}),
        )
    }
}
