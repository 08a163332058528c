//! SPIFFE-aware certificate verifiers: webpki proves the chain, then the X.509-SVID rules and the
//! identity are checked on the leaf.
//!
//! Which alert a failure sends follows from the rustls error: an untrusted client chain becomes
//! webpki's `UnknownIssuer` so the client gets `unknown_ca`; webpki's other failures (expired,
//! bad signature, wrong EKU, a CA used as a leaf) pass through unchanged; SPIFFE failures carry an
//! [`SvidError`] (alert `certificate_unknown`) so the message names what was presented. On the
//! client side an untrusted server chain also becomes an [`SvidError::UnknownIssuer`], so the
//! error says "unknown issuer for trust domain X" where the sidecar reports it. Every rejection
//! logs one line with a bounded `reason`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::handshake_failure_reason;
use super::svid::{check_svid, SvidError};
use super::TrustStore;
use crate::SpiffeId;

/// Verifies client certificates for a server: webpki's client verifier for the bundle in force
/// (chain to the bundle, clientAuth EKU), then the SPIFFE rules and the trust domain. With
/// `mandatory` false a client may present none (rustls then skips the verifier).
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    trust: Arc<TrustStore>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(
        trust: Arc<TrustStore>,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Self {
        Self {
            trust,
            provider,
            mandatory,
        }
    }
}

// === impl SpiffeClientVerifier ===

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// None: the bundle can change under a built config, and a borrowed list cannot follow it.
    /// The hints are optional (RFC 8446 §4.2.4); sidecars present their one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust_domain = self.trust.trust_domain();
        if let Err(error) =
            self.trust
                .anchors()
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)
        {
            if is_untrusted_chain(&error) {
                // webpki's own error makes rustls send `unknown_ca` (TLS-1).
                tracing::warn!(
                    reason = "unknown_ca",
                    "rejected client certificate: unknown issuer for trust domain {trust_domain}"
                );
                return Err(CertificateError::UnknownIssuer.into());
            }
            tracing::warn!(
                reason = handshake_failure_reason(&error),
                "rejected client certificate: {error}"
            );
            return Err(error);
        }
        let id = check_svid(end_entity).and_then(|id| in_trust_domain(id, trust_domain));
        match id {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(error) => {
                tracing::warn!(
                    reason = error.reason(),
                    "rejected client certificate: {error}"
                );
                Err(error.into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies server certificates for a client: the chain to the bundle (serverAuth EKU) with
/// `verify_server_cert_signed_by_trust_anchor`, then the SPIFFE rules and that the URI SAN is
/// exactly the expected identity. No DNS name or IP check: the identity is the URI SAN, and the
/// caller may pass any syntactically valid `ServerName` (such as the endpoint IP).
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    trust: Arc<TrustStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        trust: Arc<TrustStore>,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            trust,
            expected,
            provider,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let trust_domain = self.trust.trust_domain();
        let anchors = self.trust.anchors();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &anchors.bundle.roots(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|error| {
            if is_untrusted_chain(&error) {
                SvidError::UnknownIssuer {
                    trust_domain: trust_domain.to_owned(),
                }
                .into_rustls()
            } else {
                error
            }
        })?;
        let presented = check_svid(end_entity)
            .and_then(|id| in_trust_domain(id, trust_domain))
            .map_err(SvidError::into_rustls)?;
        if presented != self.expected {
            return Err(SvidError::Mismatch {
                presented,
                expected: self.expected.clone(),
            }
            .into_rustls());
        }
        Ok(())
    }
}

// === impl SpiffeServerVerifier ===

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(error) => {
                tracing::warn!(
                    reason = handshake_failure_reason(&error),
                    expected = %self.expected,
                    "rejected server certificate: {error}"
                );
                Err(error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a chain error from webpki means "not issued under any root of the bundle". Besides
/// `UnknownIssuer`, webpki reports a bad signature when a root or intermediate has the right
/// name but another key: a foreign CA that happens to share our CA's name, or an old root
/// replaced by a new one of the same name. Both are an unknown issuer to us. (The handshake
/// signature is checked elsewhere, so a bad signature here is always one in the chain.)
fn is_untrusted_chain(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
        )
    )
}

fn in_trust_domain(id: SpiffeId, trust_domain: &str) -> Result<SpiffeId, SvidError> {
    if id.trust_domain() == trust_domain {
        Ok(id)
    } else {
        Err(SvidError::ForeignTrustDomain {
            presented: id,
            trust_domain: trust_domain.to_owned(),
        })
    }
}
