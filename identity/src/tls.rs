//! rustls configurations for mesh traffic: TLS 1.3 only, SPIFFE-aware verification on both
//! sides, certificates swapped atomically on rotation.
//!
//! # Layout
//! - `credentials` — [`Credentials`] (a chain and key checked to belong together) and the
//!   hot-swappable [`CertStore`] that both rustls resolvers read.
//! - `bundle` — [`TrustBundle`]: the roots (old and new during a root rotation) and the trust
//!   domain; [`TrustStore`]: the bundle in force, swapped atomically when the control plane
//!   sends a new one (root rotation without restarts).
//! - `svid` — the X.509-SVID leaf rules ([`SvidError`]) and [`peer_identity`].
//! - `verify` — the client and server verifiers: webpki for the chain, then the SPIFFE rules.
//! - `config` — [`server_config`] and [`client_config`].
//! - `reason` — [`handshake_failure_reason`]: bounded labels for handshake-failure metrics.
//!
//! # Why no session resumption
//! Both configs turn resumption off. A resumed TLS 1.3 session skips certificate verification,
//! so a peer would keep its identity after its certificate expired or its root left the bundle.
//! Sidecars keep long-lived HTTP/2 connections, so full handshakes are rare and cheap (ECDSA
//! P-256).

use std::time::SystemTime;

use crate::spiffe::SpiffeError;
use crate::x509::display_time;

mod bundle;
mod config;
mod credentials;
mod reason;
mod svid;
mod verify;

pub use bundle::{TrustBundle, TrustStore};
pub use config::{
    client_config, client_config_trusting, server_config, server_config_trusting, with_alpn,
    ClientAuth, ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE_TCP,
};
pub use credentials::{CertStore, Credentials};
pub use reason::{handshake_failure_reason, rustls_error, HANDSHAKE_FAILURE_REASONS};
pub use svid::{check_svid, peer_identity, SvidError};

/// Why TLS material or a configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM text is not valid PEM (broken framing or base64).
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// What was being read: "certificate chain", "private key", "trust bundle".
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The PEM text holds no `CERTIFICATE` section.
    #[error("{what}: no CERTIFICATE in the PEM text")]
    NoCertificates {
        /// What was being read.
        what: &'static str,
    },
    /// More certificates than any real chain or bundle has.
    #[error("{what}: more than {max} certificates")]
    TooManyCertificates {
        /// What was being read.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The PEM text holds no private key (`PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE
    /// KEY`).
    #[error("private key: no private key in the PEM text ({reason})")]
    NoPrivateKey {
        /// The decoder's message.
        reason: String,
    },
    /// rustls could not use the private key (unsupported algorithm or corrupt).
    #[error("private key: unusable: {0}")]
    Key(#[source] rustls::Error),
    /// The private key is not the one the leaf certificate was issued for.
    #[error("private key does not match the leaf certificate's public key")]
    KeyMismatch,
    /// The leaf certificate is not an acceptable X.509-SVID.
    #[error("leaf certificate: {0}")]
    Svid(#[from] SvidError),
    /// The leaf certificate has already expired.
    #[error("leaf certificate expired at {}", display_time(*not_after))]
    Expired {
        /// Its expiry.
        not_after: SystemTime,
    },
    /// A certificate in the trust bundle cannot be a trust anchor.
    #[error("trust bundle certificate #{index} is unusable: {reason}")]
    BadRoot {
        /// Position in the bundle, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[source] SpiffeError),
    /// Generating a workload key failed (the system random source failed).
    #[error("generating a key failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// Encoding a CSR failed.
    #[error("building the CSR failed: {0}")]
    Csr(#[source] rcgen::Error),
    /// rustls refused the configuration (never expected with the workspace provider).
    #[error("rustls configuration: {0}")]
    Config(#[source] rustls::Error),
    /// A new trust bundle names another trust domain than the one in force.
    #[error("trust bundle for {offered:?} refused: the trust domain is {current:?}")]
    TrustDomainChanged {
        /// The trust domain in force.
        current: String,
        /// The one the refused bundle is for.
        offered: String,
    },
    /// A certificate chain does not lead to the trust bundle.
    #[error("the certificate chain does not lead to the trust bundle: {0}")]
    Chain(#[source] rustls::Error),
    /// rustls could not build the client-certificate verifier from the bundle.
    #[error("client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl TlsError {
    pub(crate) fn from_pem_list(what: &'static str, error: crate::x509::PemListError) -> Self {
        use crate::x509::PemListError;
        match error {
            PemListError::Pem(reason) => Self::Pem { what, reason },
            PemListError::Empty => Self::NoCertificates { what },
            PemListError::TooMany => Self::TooManyCertificates {
                what,
                max: crate::x509::MAX_CERTIFICATES,
            },
        }
    }
}

#[cfg(test)]
mod tests;
