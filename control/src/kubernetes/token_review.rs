//! Authenticating sidecars in Kubernetes: the projected service-account token a sidecar
//! presents is sent to the API server's TokenReview, and the workload (service account) and
//! namespace come from the review's answer — never from the token's claims as the sidecar
//! reads them, and never from the CSR.
//!
//! [`review_request`] and [`caller_from_review`] are pure (tested on real TokenReview JSON);
//! [`TokenReviewer`] is the thin layer that POSTs the request to the API server (in-cluster:
//! `KUBERNETES_SERVICE_HOST`, the pod's own service-account token and CA) and plugs into
//! [`TokenAuthenticator`], the seam the signing and push services use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::auth::join::{Caller, TokenAuthenticator};
use crate::auth::AuthError;

/// The audience injected sidecars' projected tokens are minted for.
pub const AUDIENCE: &str = "ficus";
/// In-cluster service-account files of the control plane's own pod.
const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The whole review (connect, TLS, request, answer) must finish within this.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TokenReview answer read.
const MAX_ANSWER: usize = 256 * 1024;
/// `status.user.username` of a service account: `system:serviceaccount:<ns>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The TokenReview to create for `token`, asking the API server to check `audience` too.
pub fn review_request(token: &str, audience: &str) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    })
}

/// Why a TokenReview answer does not authenticate a workload (all map to
/// [`AuthError::Unknown`] for the caller; the reason is logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewRefusal {
    /// Not a TokenReview answer.
    #[error("not a TokenReview answer: {0}")]
    Malformed(String),
    /// `status.authenticated` is false (expired, revoked, wrong audience, bound pod gone).
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for our audience (an API server that ignored `audiences`).
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    /// Authenticated, but not as a service account (a user or node token).
    #[error("{0:?} is not a service account")]
    NotAServiceAccount(String),
}

/// The workload and namespace a TokenReview answer (the API server's response body)
/// authenticates for `audience`.
pub fn caller_from_review(body: &[u8], audience: &str) -> Result<Caller, ReviewRefusal> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewRefusal::Malformed(e.to_string()))?;
    if review["kind"] != "TokenReview" {
        return Err(ReviewRefusal::Malformed(format!("kind {}", review["kind"])));
    }
    let status = &review["status"];
    if status["authenticated"] != true {
        let why = status["error"].as_str().unwrap_or("no reason given");
        return Err(ReviewRefusal::NotAuthenticated(why.to_owned()));
    }
    // The API server answers with the audiences the token is valid for among those asked; an
    // empty or missing list means it did not check them (only old servers), so refuse.
    let audiences = status["audiences"].as_array();
    if !audiences.is_some_and(|list| list.iter().any(|a| a == audience)) {
        return Err(ReviewRefusal::Audience(audience.to_owned()));
    }
    let username = status["user"]["username"].as_str().unwrap_or("");
    let rest = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .ok_or_else(|| ReviewRefusal::NotAServiceAccount(username.to_owned()))?;
    let (namespace, name) = rest
        .split_once(':')
        .filter(|(ns, sa)| valid_name(ns) && valid_name(sa))
        .ok_or_else(|| ReviewRefusal::NotAServiceAccount(username.to_owned()))?;
    Ok(Caller {
        workload: name.to_owned(),
        namespace: namespace.to_owned(),
    })
}

/// A Kubernetes name usable as a SPIFFE path segment.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Where and how to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// `host:port` to connect to.
    pub address: SocketAddr,
    /// Name the API server's certificate is checked against (`kubernetes.default.svc`).
    pub server_name: String,
    /// PEM roots for the API server's certificate.
    pub ca_pem: String,
    /// File with the control plane's own bearer token (re-read per review: kubelet rotates
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

/// [`TokenAuthenticator`] backed by the API server's TokenReview.
pub struct TokenReviewer {
    server: ApiServer,
    tls: tokio_rustls::TlsConnector,
    audience: String,
}

impl TokenReviewer {
    /// A reviewer for tokens of `audience` (normally [`AUDIENCE`]).
    pub fn new(server: ApiServer, audience: &str) -> Result<Self, String> {
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
            audience: audience.to_owned(),
        })
    }

    /// POSTs the review and returns the answer's body.
    async fn post(&self, token: &str) -> Result<Bytes, String> {
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
        let body = serde_json::to_vec(&review_request(token, &self.audience)).unwrap_or_default();
        let request = Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
            .header(HOST, self.server.server_name.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, format!("Bearer {}", own_token.trim()))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
        Ok(body)
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("server", &self.server.address)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        match tokio::time::timeout(REVIEW_TIMEOUT, self.post(token)).await {
            Ok(Ok(body)) => caller_from_review(&body, &self.audience).map_err(|refusal| {
                tracing::info!(%refusal, "token refused by TokenReview");
                AuthError::Unknown
            }),
            Ok(Err(error)) => {
                tracing::warn!(%error, "TokenReview failed");
                Err(AuthError::Unknown)
            }
            Err(_) => {
                tracing::warn!("TokenReview not answered within 5 s");
                Err(AuthError::Unknown)
            }
        }
    }
}

/// Tries each authenticator in turn (join tokens first, then TokenReview): the first that
/// knows the token answers.
#[derive(Debug)]
pub struct FirstOf(pub Vec<Arc<dyn TokenAuthenticator>>);

#[tonic::async_trait]
impl TokenAuthenticator for FirstOf {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let mut last = AuthError::NotConfigured("no authenticator configured");
        for authenticator in &self.0 {
            match authenticator.authenticate(token).await {
                Ok(caller) => return Ok(caller),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests;
