//! Ficus workload identity: SPIFFE IDs, the mesh certificate authority, workload keys and
//! CSRs, and the rustls configurations and verifiers sidecars and the control plane use.
//!
//! # Layout
//! - [`spiffe`] — `SpiffeId`: parsing and validating `spiffe://<trust-domain>/<path>`.
//! - [`ca`] — `CertificateAuthority`: root generation or loading, signing workload CSRs with the
//!   identity the caller authenticated as (never the one the CSR asks for).
//! - [`csr`] — `WorkloadKey`: a key generated in memory and its CSR.
//! - [`tls`] — credentials, a hot-swappable certificate store (rotation without breaking
//!   connections), the SPIFFE-aware verifiers and the server/client configs (TLS 1.3 only).
//! - [`fuzz`] — entry points for fuzz targets over untrusted input (SPIFFE IDs, CSRs,
//!   certificates).
//! - `x509` — private helpers: strict DER parsing, PEM lists, certificate times.
//!
//! One crypto provider for the whole workspace: `ring` ([`crypto_provider`]).
#![forbid(unsafe_code)]

pub mod ca;
pub mod csr;
pub mod fuzz;
/// SPIFFE IDs; the parser lives in the config crate, which validates the IDs config names by
/// the same rules.
pub use ficus_config::spiffe;
pub mod tls;
mod x509;

#[cfg(test)]
mod test_pki;

pub use spiffe::SpiffeId;

/// Whether `name` is a DNS name of dot-separated labels: each 1-63 bytes of ASCII letters,
/// digits, `-` (not first or last) and, when `underscore` (resolver names, not certificate
/// names), `_`; at most 253 bytes in all. Wildcards and a trailing dot are the caller's to
/// strip.
pub fn is_dns_name(name: &str, underscore: bool) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| {
                    byte.is_ascii_alphanumeric() || byte == b'-' || (underscore && byte == b'_')
                })
        })
}

/// The workspace's rustls crypto provider (ring).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod dns_name_tests {
    use super::is_dns_name;

    #[test]
    fn labels_and_underscores() {
        assert!(is_dns_name("ficus-control.ficus-system.svc", false));
        assert!(!is_dns_name("_srv.example", false));
        assert!(is_dns_name("_srv.example", true));
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            &"a".repeat(64),
            &"a.".repeat(127),
        ] {
            assert!(!is_dns_name(bad, true), "{bad:?}");
        }
    }
}
