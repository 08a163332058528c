//! `ficus.v1.Certificates/Sign`: certificates for sidecars.
//!
//! The caller authenticates with `authorization: Bearer <token>`; a [`TokenAuthenticator`]
//! maps the token to a workload and namespace, and the certificate is issued for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<workload>`. The CSR contributes its public key
//! only (its signature is checked, proving the caller holds the key); it may name that identity
//! as its one URI SAN, or nothing. CA or key-usage extensions it asks for are not honoured.
//!
//! | failure | gRPC status |
//! |---|---|
//! | no token, malformed header, unknown token, no authenticator configured | `UNAUTHENTICATED` |
//! | CSR empty, over 16 KiB, not PEM/PKCS#10, bad self-signature, unaccepted key, names besides the SPIFFE ID (DNS, IP, a second URI) | `INVALID_ARGUMENT` |
//! | the CSR names another identity than the token's; the token maps to the control plane's own identity or an admin identity | `PERMISSION_DENIED` |
//! | the issuer has expired | `FAILED_PRECONDITION` |
//! | request message over 64 KiB | `OUT_OF_RANGE` (tonic's message limit) |
//! | more than 32 signings in flight | `RESOURCE_EXHAUSTED` (retry with backoff) |
//! | `--insecure`: no CA | `UNAVAILABLE` |
//! | the CA itself failed | `INTERNAL` (details logged, not sent) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ficus_config::wire::certificates_server::{Certificates, CertificatesServer};
use ficus_config::wire::{SignRequest, SignResponse};
use ficus_identity::ca::{CaError, CertificateAuthority};
use ficus_identity::SpiffeId;
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use crate::auth::join::{Caller, TokenAuthenticator};
use crate::auth::{bearer_token, AuthError};
use crate::metrics::Metrics;

/// Largest gRPC request message accepted by the service.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest CSR accepted (an RSA-4096 CSR is under 2 KiB of PEM); the CA's own limit, checked
/// here before any work is done.
pub const MAX_CSR: usize = ficus_identity::ca::MAX_CSR_LEN;
/// Requests in flight at once (authenticating or signing); more are refused with
/// `RESOURCE_EXHAUSTED`.
const MAX_IN_FLIGHT: usize = 32;

/// The remote address of the connection a request came on (set by [`crate::grpc`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The `Certificates` service: signs CSRs with the mesh CA, or refuses everything in
/// `--insecure` mode.
#[derive(Debug, Clone)]
pub struct Signer {
    issuing: Option<Arc<Issuing>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Issuing {
    ca: Arc<CertificateAuthority>,
    authenticator: Option<Arc<dyn TokenAuthenticator>>,
    lifetime: Duration,
    in_flight: Semaphore,
    /// Identities never issued to a caller: the control plane's own (every sidecar trusts it
    /// to push config and trust bundles) and the admin identities (`--admin-identities`).
    reserved: Vec<SpiffeId>,
}

impl Signer {
    /// Signs with `ca` for callers `authenticator` recognizes (none without one), issuing
    /// certificates that live `lifetime` (capped by the issuer's own expiry).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Option<Arc<dyn TokenAuthenticator>>,
        lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let control = SpiffeId::workload(
            ca.trust_domain(),
            crate::ca::CONTROL_NAMESPACE,
            crate::ca::CONTROL_SERVICE_ACCOUNT,
        );
        Self {
            issuing: Some(Arc::new(Issuing {
                ca,
                authenticator,
                lifetime,
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                reserved: control.into_iter().collect(),
            })),
            metrics,
        }
    }

    /// Never issues `ids` either (the admin identities: a certificate with one may write
    /// through `--https`; they are issued offline by `issue-admin-cert`).
    #[must_use]
    pub fn reserving(mut self, ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        if let Some(issuing) = self.issuing.as_mut().and_then(Arc::get_mut) {
            issuing.reserved.extend(ids);
        }
        self
    }

    /// `--insecure`: answers every call with `UNAVAILABLE`.
    pub fn insecure(metrics: Arc<Metrics>) -> Self {
        Self {
            issuing: None,
            metrics,
        }
    }

    /// The gRPC service, with its message size limits.
    pub fn into_service(self) -> CertificatesServer<Self> {
        CertificatesServer::new(self)
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(1024 * 1024)
    }
}

#[tonic::async_trait]
impl Certificates for Signer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = request
            .extensions()
            .get::<PeerAddr>()
            .map_or_else(|| "unknown".to_owned(), |p| p.0.to_string());
        let answer = match &self.issuing {
            None => Err(Status::unavailable("no CA in --insecure mode")),
            Some(issuing) => issuing.sign(&peer, request).await,
        };
        let result = match &answer {
            Ok(_) => "signed",
            Err(status) => match status.code() {
                Code::Unauthenticated => "unauthenticated",
                Code::InvalidArgument => "invalid",
                Code::Unavailable => "unavailable",
                Code::ResourceExhausted => "busy",
                _ => "error",
            },
        };
        self.metrics.certificates.with_label_values(&[result]).inc();
        if let Err(status) = &answer {
            if status.code() != Code::Internal {
                tracing::info!(%peer, code = ?status.code(), reason = status.message(),
                    "certificate refused");
            }
        }
        answer
    }
}

impl Issuing {
    async fn sign(
        &self,
        peer: &str,
        request: Request<SignRequest>,
    ) -> Result<Response<SignResponse>, Status> {
        // The limit covers authenticating too: a token review is a call to the Kubernetes
        // API server, and a flood of requests with made-up tokens must not become one of
        // those each.
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            Status::resource_exhausted("too many certificate requests at once; retry shortly")
        })?;
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().map_err(|_| AuthError::Malformed));
        let caller = match authorization.transpose() {
            Ok(header) => self.authenticate(header).await,
            Err(error) => Err(error),
        }
        .map_err(|error| Status::unauthenticated(error.to_string()))?;
        let csr_pem = request.into_inner().csr_pem;
        if csr_pem.trim().is_empty() {
            return Err(Status::invalid_argument("csr_pem is empty"));
        }
        if csr_pem.len() > MAX_CSR {
            return Err(Status::invalid_argument(format!(
                "the CSR is {} bytes; at most {MAX_CSR} are accepted",
                csr_pem.len()
            )));
        }
        let id = SpiffeId::workload(self.ca.trust_domain(), &caller.namespace, &caller.workload)
            .map_err(|error| {
                tracing::error!(%peer, %error, "a token maps to an invalid identity");
                Status::internal("the token maps to an invalid identity")
            })?;
        if self.reserved.contains(&id) {
            tracing::warn!(%peer, id = %id, "refused to issue a reserved identity (the control plane's or an admin's)");
            return Err(Status::permission_denied(format!(
                "{id} is reserved (the control plane's own identity or an admin identity) and is \
                 never issued to a workload"
            )));
        }
        let ca = Arc::clone(&self.ca);
        let lifetime = self.lifetime;
        let signed_id = id.clone();
        let signed = tokio::task::spawn_blocking(move || {
            ca.sign_workload_csr(&csr_pem, &signed_id, lifetime)
        })
        .await
        .map_err(|error| {
            tracing::error!(%peer, %error, "signing task failed");
            Status::internal("signing failed")
        })?
        .map_err(|error| ca_status(peer, &id, &error))?;
        let not_after = signed
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        tracing::info!(%peer, id = %id, not_after, "certificate issued");
        Ok(Response::new(SignResponse {
            certificate_chain_pem: signed.chain_pem,
            trust_bundle_pem: self.ca.bundle_pem(),
            spiffe_id: id.to_string(),
            not_after_unix: not_after,
        }))
    }

    async fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let token = bearer_token(header)?;
        match &self.authenticator {
            Some(authenticator) => authenticator.authenticate(token).await,
            None => Err(AuthError::NotConfigured(
                "no token is accepted: ficus-control runs without --join-token-file",
            )),
        }
    }
}

/// The status for a CA error: the caller's fault (`INVALID_ARGUMENT`, with the reason) or ours
/// (`INTERNAL`, logged, reason withheld).
fn ca_status(peer: &str, id: &SpiffeId, error: &CaError) -> Status {
    if error.is_invalid_csr() {
        return Status::invalid_argument(format!("unusable CSR: {error}"));
    }
    match error {
        CaError::CsrIdentityMismatch { .. } => {
            tracing::warn!(%peer, id = %id, %error, "refused a CSR for another identity");
            return Status::permission_denied(error.to_string());
        }
        CaError::IssuerExpired { .. } => {
            tracing::error!(%peer, id = %id, %error, "the issuer has expired");
            return Status::failed_precondition(
                "the mesh CA's issuer has expired; an operator must load a new one",
            );
        }
        _ => {}
    }
    tracing::error!(%peer, id = %id, %error, "the CA failed to sign");
    Status::internal("the CA failed to sign; see the control plane's log")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Stands in for a token review whose API server never answers (the real client is tested
    /// against a stand-in API server in `kubernetes::token_review`); counts its calls.
    #[derive(Debug, Default)]
    struct Hanging(AtomicUsize);

    #[tonic::async_trait]
    impl TokenAuthenticator for Hanging {
        async fn authenticate(&self, _token: &str) -> Result<Caller, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
    }

    /// Takes every token for one fixed caller.
    #[derive(Debug)]
    struct Fixed(Caller);

    #[tonic::async_trait]
    impl TokenAuthenticator for Fixed {
        async fn authenticate(&self, _token: &str) -> Result<Caller, AuthError> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn the_control_plane_and_admin_identities_are_never_issued() {
        let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let alice = SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/alice").unwrap();
        let code = |workload: &str, namespace: &str| {
            let caller = Caller {
                workload: workload.to_owned(),
                namespace: namespace.to_owned(),
                revocable: true,
            };
            let authenticator: Arc<dyn TokenAuthenticator> = Arc::new(Fixed(caller));
            let signer = Signer::new(
                Arc::clone(&ca),
                Some(authenticator),
                Duration::from_secs(3600),
                Metrics::new(),
            )
            .reserving([alice.clone()]);
            async move { signer.sign(request()).await.unwrap_err().code() }
        };
        assert_eq!(
            code("ficus-control", "ficus-system").await,
            Code::PermissionDenied
        );
        assert_eq!(code("alice", "ficus-system").await, Code::PermissionDenied);
        // Anyone else gets as far as the CSR (this one is unusable).
        assert_eq!(code("web", "shop").await, Code::InvalidArgument);
    }

    fn request() -> Request<SignRequest> {
        let mut request = Request::new(SignRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", "Bearer made-up".parse().unwrap());
        request
    }

    #[tokio::test]
    async fn token_reviews_count_against_the_limit_of_requests_in_flight() {
        let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let reviews = Arc::new(Hanging::default());
        let authenticator: Arc<dyn TokenAuthenticator> = reviews.clone();
        let signer = Signer::new(
            ca,
            Some(authenticator),
            Duration::from_secs(3600),
            Metrics::new(),
        );
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..MAX_IN_FLIGHT {
            let signer = signer.clone();
            waiting.spawn(async move { signer.sign(request()).await });
        }
        while reviews.0.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(10), signer.sign(request()))
            .await
            .expect("refused at once, not reviewed")
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            reviews.0.load(Ordering::SeqCst),
            MAX_IN_FLIGHT,
            "no review for it"
        );
        waiting.abort_all();
    }
}
