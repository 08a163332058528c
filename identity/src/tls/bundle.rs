//! The trust bundle: the mesh's roots and its trust domain.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

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
