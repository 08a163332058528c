//! Bounded labels for failed handshakes (`ficus_tls_handshake_failed_total{reason}`).

use rustls::{AlertDescription, CertificateError, OtherError, PeerIncompatible};

use super::svid::SvidError;

/// Every value [`handshake_failure_reason`] returns, for registering metric labels up front.
pub const HANDSHAKE_FAILURE_REASONS: [&str; 7] = [
    "unknown_ca",
    "bad_certificate",
    "certificate_required",
    "expired",
    "spiffe_mismatch",
    "protocol_version",
    "other",
];

/// A bounded label for a failed handshake, from the rustls error of either side: what we
/// rejected (our verifier's errors) or what the peer told us in its alert.
///
/// - `unknown_ca`: the chain does not lead to the trust bundle.
/// - `bad_certificate`: not an acceptable X.509-SVID (SAN count, invalid ID, CA leaf, key usage,
///   malformed), or another certificate problem (bad signature, wrong EKU).
/// - `certificate_required`: the client sent no certificate.
/// - `expired`: a certificate is expired or not yet valid.
/// - `spiffe_mismatch`: a valid SVID with the wrong identity or trust domain.
/// - `protocol_version`: the peer does not speak TLS 1.3.
/// - `other`: everything else (malformed records, ALPN, I/O-level problems).
pub fn handshake_failure_reason(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(certificate) => certificate_reason(certificate),
        rustls::Error::NoCertificatesPresented => "certificate_required",
        rustls::Error::AlertReceived(alert) => alert_reason(*alert),
        rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => "protocol_version",
        _ => "other",
    }
}

/// The rustls error inside an I/O error from `tokio-rustls` (which wraps handshake failures in
/// `io::Error`), if there is one.
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

fn certificate_reason(error: &CertificateError) -> &'static str {
    match error {
        CertificateError::UnknownIssuer => "unknown_ca",
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => "expired",
        CertificateError::Other(OtherError(inner)) => inner
            .downcast_ref::<SvidError>()
            .map_or("bad_certificate", SvidError::reason),
        _ => "bad_certificate",
    }
}

fn alert_reason(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::UnknownCA => "unknown_ca",
        AlertDescription::CertificateRequired => "certificate_required",
        AlertDescription::CertificateExpired => "expired",
        AlertDescription::ProtocolVersion => "protocol_version",
        AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateRevoked => "bad_certificate",
        _ => "other",
    }
}
