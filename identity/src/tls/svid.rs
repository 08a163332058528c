//! The X.509-SVID rules a peer's leaf certificate must follow, beyond what webpki checks.
//!
//! webpki proves that a chain leads to a trusted root, but knows nothing of SPIFFE: it ignores
//! URI SANs, so "some SAN matches" would let a certificate with two identities speak for either.
//! These checks run after the chain check, on the leaf only: exactly one URI SAN, a valid SPIFFE
//! ID, not a CA, no certificate or CRL signing, and `digitalSignature` (the X.509-SVID
//! specification, sections 4.1–4.3).

use rustls::{CertificateError, OtherError};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{SpiffeError, SpiffeId};
use crate::x509;

/// The DER tag of a URI `GeneralName` (`[6] IA5String`).
const URI_TAG: u32 = 6;

/// Why a certificate is not an acceptable X.509-SVID for this connection.
///
/// Carried inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))` when a
/// handshake fails; [`SvidError::from_rustls`] gets it back out.
///
/// `Debug` prints the same message as `Display`: rustls formats the error it carries with
/// `Debug`, and handshake errors should read "server presented X, expected Y".
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The certificate is not parseable X.509, or an extension SPIFFE relies on (SAN,
    /// basicConstraints, keyUsage) is malformed or repeated.
    #[error("certificate is malformed ({what})")]
    Malformed {
        /// Which part.
        what: &'static str,
    },
    /// No URI SAN, so no SPIFFE ID.
    #[error("certificate has no URI SAN (no SPIFFE ID)")]
    NoUriSan,
    /// Several URI SANs: an X.509-SVID carries exactly one identity.
    #[error("certificate has {count} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans {
        /// How many.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID (wrong scheme, bare trust domain, `..`,
    /// percent-encoding, ...).
    #[error("certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidId(#[source] SpiffeError),
    /// The leaf says `cA=true`.
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    CaLeaf,
    /// The leaf may sign certificates or CRLs (keyUsage keyCertSign or cRLSign).
    #[error("leaf certificate has keyUsage keyCertSign or cRLSign")]
    SigningLeaf,
    /// No keyUsage extension, or one without `digitalSignature`: the key cannot sign the TLS
    /// handshake.
    #[error("leaf certificate lacks keyUsage digitalSignature")]
    NoDigitalSignature,
    /// A valid SPIFFE ID, in another trust domain than ours.
    #[error("peer presented {presented}, which is outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// What the peer presented.
        presented: SpiffeId,
        /// Our trust domain.
        trust_domain: String,
    },
    /// The server presented another identity than the one configured for the endpoint.
    #[error("server presented {presented}, expected {expected}")]
    Mismatch {
        /// What the server presented.
        presented: SpiffeId,
        /// What the endpoint's configuration says it must be.
        expected: SpiffeId,
    },
    /// The chain does not lead to any root of the trust bundle (a foreign CA, or a root removed
    /// from the bundle before its workloads were re-issued).
    #[error("unknown issuer for trust domain {trust_domain}: the certificate chain does not lead to any root in the trust bundle")]
    UnknownIssuer {
        /// Our trust domain.
        trust_domain: String,
    },
}

impl std::fmt::Debug for SvidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl SvidError {
    /// A bounded label for metrics and logs: `unknown_ca`, `bad_certificate` or
    /// `spiffe_mismatch` (see [`handshake_failure_reason`](crate::tls::handshake_failure_reason)).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownIssuer { .. } => "unknown_ca",
            Self::ForeignTrustDomain { .. } | Self::Mismatch { .. } => "spiffe_mismatch",
            Self::Malformed { .. }
            | Self::NoUriSan
            | Self::MultipleUriSans { .. }
            | Self::InvalidId(_)
            | Self::CaLeaf
            | Self::SigningLeaf
            | Self::NoDigitalSignature => "bad_certificate",
        }
    }

    /// The `SvidError` inside a handshake error, if our verifier produced it.
    pub fn from_rustls(error: &rustls::Error) -> Option<&SvidError> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<SvidError>()
            }
            _ => None,
        }
    }

    /// As a rustls error (alert `certificate_unknown`; the message keeps the detail).
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(std::sync::Arc::new(
            self,
        ))))
    }
}

/// Checks the X.509-SVID rules on a leaf certificate (DER) and returns its identity: exactly one
/// URI SAN holding a valid SPIFFE ID, basicConstraints not cA, no keyCertSign or cRLSign, and
/// keyUsage digitalSignature. It does not verify the chain, signatures or validity dates (the
/// verifiers do that first) nor the trust domain.
pub fn check_svid(der: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let Some(cert) = x509::parse_certificate(der) else {
        return Err(SvidError::Malformed {
            what: "not DER X.509",
        });
    };
    let id = single_uri_san(&cert)?;
    match cert.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => return Err(SvidError::CaLeaf),
        Ok(_) => {}
        Err(_) => {
            return Err(SvidError::Malformed {
                what: "basicConstraints",
            })
        }
    }
    match cert.key_usage() {
        Ok(Some(usage)) => {
            if usage.value.key_cert_sign() || usage.value.crl_sign() {
                return Err(SvidError::SigningLeaf);
            }
            if !usage.value.digital_signature() {
                return Err(SvidError::NoDigitalSignature);
            }
        }
        Ok(None) => return Err(SvidError::NoDigitalSignature),
        Err(_) => return Err(SvidError::Malformed { what: "keyUsage" }),
    }
    Ok(id)
}

/// The one URI SAN of `cert`, as a SPIFFE ID.
pub(crate) fn single_uri_san(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = match cert.subject_alternative_name() {
        Ok(Some(san)) => san,
        Ok(None) => return Err(SvidError::NoUriSan),
        Err(_) => {
            return Err(SvidError::Malformed {
                what: "subjectAltName",
            })
        }
    };
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(Ok(*uri)),
            // A URI entry that is not even an IA5String still counts as a URI SAN.
            GeneralName::Invalid(tag, _) if tag.0 == URI_TAG => Some(Err(())),
            _ => None,
        });
    let (first, count) = match (uris.next(), uris.count()) {
        (None, _) => return Err(SvidError::NoUriSan),
        (Some(first), rest) => (first, rest + 1),
    };
    if count > 1 {
        return Err(SvidError::MultipleUriSans { count });
    }
    match first {
        Ok(uri) => SpiffeId::parse(uri).map_err(SvidError::InvalidId),
        Err(()) => Err(SvidError::Malformed { what: "URI SAN" }),
    }
}

/// The SPIFFE ID of a verified peer, from `peer_certificates()` of a finished handshake: the
/// single URI SAN of the leaf. `None` without certificates or when the leaf has no single valid
/// SPIFFE ID (which our verifiers never let through).
pub fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certificates?.first()?;
    let cert = x509::parse_certificate(leaf)?;
    single_uri_san(&cert).ok()
}
