//! The mesh certificate authority.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::SpiffeId;

/// Why the CA could not load or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Placeholder until implemented.
    #[error("{0}")]
    Other(String),
}

/// A certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf first, then intermediates up to (not including) the root, PEM.
    pub chain_pem: String,
    /// Expiry.
    pub not_after: SystemTime,
}

/// The mesh CA: a self-signed root it generated, or a root/intermediate loaded from files.
#[derive(Debug)]
pub struct CertificateAuthority {
    _private: (),
}

impl CertificateAuthority {
    /// A new self-signed root (ECDSA P-256) for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let _ = trust_domain;
        unimplemented!()
    }

    /// Loads an issuer: `cert_pem` is the issuer certificate followed by its chain up to the
    /// root (a root alone is fine); `key_pem` the issuer's private key. Refuses an issuer that
    /// is not a CA, has expired, or whose key does not match.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let _ = (trust_domain, cert_pem, key_pem);
        unimplemented!()
    }

    /// The issuer certificate and its chain, PEM (what `from_pem` takes).
    pub fn cert_pem(&self) -> String {
        unimplemented!()
    }

    /// The issuer private key, PEM. Secret: store with mode 0600.
    pub fn key_pem(&self) -> String {
        unimplemented!()
    }

    /// The trust anchor(s) for `ca.pem` and sidecars' `--ca-file`.
    pub fn root_pem(&self) -> String {
        unimplemented!()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        unimplemented!()
    }

    /// Signs a workload CSR (PEM). The certificate carries exactly one URI SAN, `id` — the
    /// identity the caller authenticated as — whatever the CSR asks for; the CSR contributes
    /// only its public key (its self-signature is checked). X.509-SVID: not a CA,
    /// digitalSignature (+ keyEncipherment for RSA keys), serverAuth + clientAuth, `lifetime`
    /// long (not after the issuer). Oversized or malformed CSRs are refused.
    pub fn sign_workload_csr(&self, csr_pem: &str, id: &SpiffeId, lifetime: Duration) -> Result<IssuedCert, CaError> {
        let _ = (csr_pem, id, lifetime);
        unimplemented!()
    }

    /// A certificate and fresh key for a server of the mesh itself (the control plane's push
    /// endpoint): URI SAN `id`, plus DNS names and IP addresses. Returns the cert and the key
    /// PEM.
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(IssuedCert, String), CaError> {
        let _ = (id, dns_names, ips, lifetime);
        unimplemented!()
    }
}
