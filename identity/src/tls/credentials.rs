//! Credentials (a chain and its key, checked) and the store that serves them to rustls.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::svid::{check_svid, SvidError};
use super::TlsError;
use crate::csr::WorkloadKey;
use crate::{x509, SpiffeId};

/// A certificate chain and its key, checked to belong together and to carry one SPIFFE ID.
#[derive(Debug)]
pub struct Credentials {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// Leaf expiry.
    pub not_after: SystemTime,
    /// Leaf start.
    pub not_before: SystemTime,
    /// What rustls presents: the chain and the signing key.
    certified: Arc<CertifiedKey>,
}

impl Credentials {
    /// From a PEM chain (leaf first) issued for `key`.
    pub fn from_pem(chain_pem: &str, key: &WorkloadKey) -> Result<Self, TlsError> {
        let chain = x509::certificates_from_pem(chain_pem)
            .map_err(|error| TlsError::from_pem_list("certificate chain", error))?;
        Self::from_der(chain, key.private_key())
    }

    /// From a PEM chain and a PEM key (the control plane's own server certificate). The key may
    /// be PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem_key(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = x509::certificates_from_pem(chain_pem)
            .map_err(|error| TlsError::from_pem_list("certificate chain", error))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| {
            TlsError::NoPrivateKey {
                reason: error.to_string(),
            }
        })?;
        Self::from_der(chain, key)
    }

    /// From a DER chain (leaf first) and key. Checks that the leaf is an X.509-SVID (one URI
    /// SAN holding a valid SPIFFE ID, not a CA, digitalSignature), that the key is the leaf's,
    /// and that the leaf has not expired.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificates {
                what: "certificate chain",
            });
        };
        if chain.len() > x509::MAX_CERTIFICATES {
            return Err(TlsError::TooManyCertificates {
                what: "certificate chain",
                max: x509::MAX_CERTIFICATES,
            });
        }
        let id = check_svid(leaf)?;
        let (not_before, not_after) = match x509::parse_certificate(leaf) {
            Some(cert) => (
                x509::system_time(cert.validity().not_before),
                x509::system_time(cert.validity().not_after),
            ),
            None => {
                return Err(SvidError::Malformed {
                    what: "not DER X.509",
                }
                .into())
            }
        };
        if not_after <= SystemTime::now() {
            return Err(TlsError::Expired { not_after });
        }
        let signing_key = crate::crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(TlsError::Key)?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::KeyMismatch),
            Err(other) => return Err(TlsError::Key(other)),
        }
        Ok(Self {
            id,
            not_after,
            not_before,
            certified: Arc::new(certified),
        })
    }

    /// Test PKI only: credentials without any check, to present broken certificates.
    #[cfg(test)]
    pub(crate) fn unchecked(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        let signing_key = crate::crypto_provider()
            .key_provider
            .load_private_key(key)
            .expect("test key loads");
        Self {
            id: SpiffeId::parse("spiffe://unchecked.test/unchecked").expect("valid literal"),
            not_after: SystemTime::UNIX_EPOCH,
            not_before: SystemTime::UNIX_EPOCH,
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
        }
    }

    /// The chain and key as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

/// The certificate a process presents, swapped atomically on rotation: handshakes in progress
/// keep the old one, new handshakes get the new one, established connections are untouched.
/// Implements rustls's server and client certificate resolvers.
#[derive(Debug)]
pub struct CertStore {
    /// One atomic pointer for the certificate and its metadata, so `id()` and `not_after()`
    /// always describe what handshakes present.
    current: ArcSwapOption<Credentials>,
}

impl CertStore {
    /// An empty store (no certificate yet: handshakes that need one fail).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
        })
    }

    /// A store holding `credentials`.
    pub fn with_credentials(credentials: Credentials) -> Arc<Self> {
        let store = Self::new();
        store.install(credentials);
        store
    }

    /// Installs `credentials` for all new handshakes.
    pub fn install(&self, credentials: Credentials) {
        tracing::info!(
            id = %credentials.id,
            not_after = %x509::display_time(credentials.not_after),
            "installed certificate"
        );
        self.current.store(Some(Arc::new(credentials)));
    }

    /// Expiry of the installed certificate.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current
            .load()
            .as_ref()
            .map(|credentials| credentials.not_after)
    }

    /// The installed identity.
    pub fn id(&self) -> Option<SpiffeId> {
        self.current
            .load()
            .as_ref()
            .map(|credentials| credentials.id.clone())
    }

    /// The installed credentials.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .as_ref()
            .map(|credentials| Arc::clone(&credentials.certified))
    }
}

// === impl CertStore ===

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.certified_key();
        if found.is_none() {
            tracing::debug!("TLS handshake refused: no certificate installed yet");
        }
        found
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
