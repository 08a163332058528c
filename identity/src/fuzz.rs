//! Entry points for fuzz targets (`fuzz/`, outside the workspace) and for the seed corpus that
//! `cargo test` replays. Each takes arbitrary bytes and must never panic; a panic is a bug.

use std::sync::OnceLock;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::ca::CertificateAuthority;
use crate::SpiffeId;

/// Parses `data` as a SPIFFE ID and, when valid, checks that it reparses to itself and that
/// its parts are consistent.
pub fn spiffe_id(data: &[u8]) {
    if let Ok(id) = SpiffeId::parse_bytes(data) {
        let again = SpiffeId::parse(id.as_str());
        assert_eq!(
            again.as_ref(),
            Ok(&id),
            "a valid SPIFFE ID must reparse to itself"
        );
        assert!(id.as_str().starts_with("spiffe://"));
        let _ = (
            id.trust_domain(),
            id.path(),
            id.namespace(),
            id.service_account(),
        );
    }
}

/// Hands `data` (as lossy UTF-8) to the CA as a CSR, with a fixed CA and identity. Whatever
/// the CSR holds, a certificate that comes out names only that identity.
pub fn csr(data: &[u8]) {
    static CA: OnceLock<Option<(CertificateAuthority, SpiffeId)>> = OnceLock::new();
    let Some((ca, id)) = CA.get_or_init(|| {
        let ca = CertificateAuthority::generate("fuzz.example").ok()?;
        let id = SpiffeId::workload("fuzz.example", "fuzz", "target").ok()?;
        Some((ca, id))
    }) else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    if let Ok(issued) = ca.sign_workload_csr(&text, id, Duration::from_secs(60)) {
        let leaf = crate::x509::certificates_from_pem(&issued.chain_pem)
            .ok()
            .and_then(|chain| chain.into_iter().next());
        let presented = crate::tls::peer_identity(leaf.as_ref().map(std::slice::from_ref));
        assert_eq!(
            presented.as_ref(),
            Some(id),
            "the certificate must carry the caller's identity"
        );
    }
}

/// Runs the SPIFFE leaf checks and [`peer_identity`](crate::tls::peer_identity) on `data` as a
/// DER certificate.
pub fn certificate(data: &[u8]) {
    let der = CertificateDer::from(data);
    let _ = crate::tls::check_svid(&der);
    let _ = crate::tls::peer_identity(Some(std::slice::from_ref(&der)));
}
