//! rustls configurations for mesh traffic: TLS 1.3 only, SPIFFE-aware verification on both
//! sides, certificates swapped atomically on rotation.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::csr::WorkloadKey;
use crate::SpiffeId;

/// Why TLS material or a configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Placeholder until implemented.
    #[error("{0}")]
    Other(String),
}

/// A certificate chain and its key, checked to belong together and to carry one SPIFFE ID.
#[derive(Debug)]
pub struct Credentials {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// Leaf expiry.
    pub not_after: SystemTime,
    /// Leaf start.
    pub not_before: SystemTime,
}

impl Credentials {
    /// From a PEM chain (leaf first) issued for `key`.
    pub fn from_pem(chain_pem: &str, key: &WorkloadKey) -> Result<Self, TlsError> {
        let _ = (chain_pem, key);
        unimplemented!()
    }

    /// From a PEM chain and a PEM key (the control plane's own server certificate).
    pub fn from_pem_key(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let _ = (chain_pem, key_pem);
        unimplemented!()
    }
}

/// The certificate a process presents, swapped atomically on rotation: handshakes in progress
/// keep the old one, new handshakes get the new one, established connections are untouched.
/// Implements rustls's server and client certificate resolvers.
#[derive(Debug)]
pub struct CertStore {
    _private: (),
}

impl CertStore {
    /// An empty store (no certificate yet: handshakes that need one fail).
    pub fn new() -> Arc<Self> {
        unimplemented!()
    }

    /// Installs `credentials` for all new handshakes.
    pub fn install(&self, credentials: Credentials) {
        let _ = credentials;
        unimplemented!()
    }

    /// Expiry of the installed certificate.
    pub fn not_after(&self) -> Option<SystemTime> {
        unimplemented!()
    }

    /// The installed identity.
    pub fn id(&self) -> Option<SpiffeId> {
        unimplemented!()
    }
}

/// Trust anchors of the mesh plus the trust domain whose IDs are accepted.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    _private: (),
}

impl TrustBundle {
    /// Roots from PEM (one or more certificates: during root rotation the old and new roots).
    pub fn from_pem(pem: &str, trust_domain: &str) -> Result<Self, TlsError> {
        let _ = (pem, trust_domain);
        unimplemented!()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        unimplemented!()
    }
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Required and verified (mTLS): chain to the bundle, exactly one URI SAN, a SPIFFE ID in
    /// the bundle's trust domain, a leaf that is not a CA.
    Required,
    /// None asked (the control plane's signing endpoint: callers have no certificate yet and
    /// authenticate with a token).
    None,
}

/// Server config: TLS 1.3 only, certificate from `store`, ALPN `h2` then `http/1.1`.
pub fn server_config(store: Arc<CertStore>, bundle: &TrustBundle, client_auth: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
    let _ = (store, bundle, client_auth);
    unimplemented!()
}

/// Client config: TLS 1.3 only, presenting `store`'s certificate when given, verifying that the
/// server chains to the bundle and that its single URI SAN equals `expected` (rustls/webpki do
/// not check URI SANs; this does). ALPN `h2`.
pub fn client_config(store: Option<Arc<CertStore>>, bundle: &TrustBundle, expected: &SpiffeId) -> Result<Arc<ClientConfig>, TlsError> {
    let _ = (store, bundle, expected);
    unimplemented!()
}

/// The SPIFFE ID of a verified peer, from `peer_certificates()` of a finished handshake.
pub fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let _ = certificates;
    unimplemented!()
}
