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
pub mod spiffe;
pub mod tls;
mod x509;

#[cfg(test)]
mod test_pki;

pub use spiffe::SpiffeId;

/// The workspace's rustls crypto provider (ring).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
