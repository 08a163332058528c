//! The trust bundle: the mesh's roots and its trust domain; and the [`TrustStore`] that swaps
//! bundles atomically during a root rotation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::TlsError;
use crate::{spiffe, x509};

/// Trust anchors of the mesh plus the trust domain whose IDs are accepted.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// Shared so that building a config per peer identity copies nothing.
    roots: Arc<RootCertStore>,
    /// The certificates, as loaded (for re-export and diagnostics).
    certificates: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
}

impl TrustBundle {
    /// Roots from PEM (one or more certificates: during root rotation the old and new roots).
    /// Each must be a CA certificate (basicConstraints cA=true).
    pub fn from_pem(pem: &str, trust_domain: &str) -> Result<Self, TlsError> {
        let certificates = x509::certificates_from_pem(pem)
            .map_err(|error| TlsError::from_pem_list("trust bundle", error))?;
        Self::from_der(certificates, trust_domain)
    }

    /// Roots from DER certificates.
    pub fn from_der(
        certificates: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TlsError> {
        spiffe::validate_trust_domain(trust_domain).map_err(TlsError::TrustDomain)?;
        if certificates.is_empty() {
            return Err(TlsError::NoCertificates {
                what: "trust bundle",
            });
        }
        if certificates.len() > x509::MAX_CERTIFICATES {
            return Err(TlsError::TooManyCertificates {
                what: "trust bundle",
                max: x509::MAX_CERTIFICATES,
            });
        }
        let mut roots = RootCertStore::empty();
        for (position, certificate) in certificates.iter().enumerate() {
            let index = position + 1;
            let Some(parsed) = x509::parse_certificate(certificate) else {
                return Err(TlsError::BadRoot {
                    index,
                    reason: "not a DER X.509 certificate".to_owned(),
                });
            };
            if !parsed.is_ca() {
                return Err(TlsError::BadRoot {
                    index,
                    reason: "not a CA certificate (basicConstraints cA is not true)".to_owned(),
                });
            }
            roots
                .add(certificate.clone())
                .map_err(|error| TlsError::BadRoot {
                    index,
                    reason: error.to_string(),
                })?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            certificates: certificates.into(),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates, in the order loaded.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }
}

impl PartialEq for TrustBundle {
    /// Same roots (in the same order) and trust domain.
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain && self.certificates == other.certificates
    }
}

/// The roots in force, with the webpki client verifier built from them (built once per bundle,
/// not per handshake).
#[derive(Debug)]
pub(crate) struct Anchors {
    pub(crate) bundle: TrustBundle,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
}

/// The trust bundle in force, swapped atomically: the verifiers of every config built over the
/// store read it at each handshake, so a root rotation reaches all new handshakes (inbound,
/// outbound, to the control plane) at once and never touches established connections (their
/// peers were verified when they connected).
///
/// The trust domain is fixed for the life of the store; a bundle for another one is refused.
#[derive(Debug)]
pub struct TrustStore {
    current: ArcSwap<Anchors>,
    trust_domain: String,
}

impl TrustStore {
    /// A store trusting `bundle`.
    pub fn new(bundle: TrustBundle) -> Result<Arc<Self>, TlsError> {
        let trust_domain = bundle.trust_domain().to_owned();
        let anchors = Anchors::new(bundle)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(anchors),
            trust_domain,
        }))
    }

    /// Puts `bundle` in force for all new handshakes. Returns whether it differs from the one
    /// in force (an identical bundle changes nothing). Refuses a bundle for another trust
    /// domain, leaving the current one in force.
    pub fn install(&self, bundle: TrustBundle) -> Result<bool, TlsError> {
        if bundle.trust_domain() != self.trust_domain {
            return Err(TlsError::TrustDomainChanged {
                current: self.trust_domain.clone(),
                offered: bundle.trust_domain().to_owned(),
            });
        }
        if self.current.load().bundle == bundle {
            return Ok(false);
        }
        let roots = bundle.certificates().len();
        self.current.store(Arc::new(Anchors::new(bundle)?));
        tracing::info!(roots, trust_domain = %self.trust_domain, "trust bundle installed");
        Ok(true)
    }

    /// The bundle in force (cheap: shared, not copied).
    pub fn bundle(&self) -> TrustBundle {
        self.current.load().bundle.clone()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn anchors(&self) -> Arc<Anchors> {
        self.current.load_full()
    }
}

impl Anchors {
    fn new(bundle: TrustBundle) -> Result<Self, TlsError> {
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(bundle.roots(), crate::crypto_provider())
                .build()
                .map_err(TlsError::Verifier)?;
        Ok(Self {
            bundle,
            client_verifier,
        })
    }
}

impl TrustBundle {
    /// Checks that `chain` (leaf first) leads to one of this bundle's roots, valid now, with
    /// the leaf usable as a TLS server (serverAuth). A sidecar checks the certificate it was
    /// just issued this way before putting a new bundle and the certificate in force, so a
    /// bundle that would not trust its own certificate is never installed.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        let (leaf, intermediates) = chain.split_first().ok_or(TlsError::NoCertificates {
            what: "certificate chain",
        })?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(TlsError::Chain)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            crate::crypto_provider()
                .signature_verification_algorithms
                .all,
        )
        .map_err(TlsError::Chain)
    }

    /// Checks that `chain` (leaf first) is accepted as a TLS client certificate by a server
    /// trusting this bundle (clientAuth, as the inbound listener's verifier checks it). Used
    /// with [`TrustBundle::check_chain`] to try an issuer before it signs for the mesh.
    pub fn check_client_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        let (leaf, intermediates) = chain.split_first().ok_or(TlsError::NoCertificates {
            what: "certificate chain",
        })?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots(), crate::crypto_provider())
                .build()
                .map_err(TlsError::Verifier)?;
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(drop)
            .map_err(TlsError::Chain)
    }
}
