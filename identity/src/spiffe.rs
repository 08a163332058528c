//! SPIFFE IDs.

use std::fmt;

/// Why a string is not an acceptable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// Placeholder until implemented.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    Invalid {
        /// The input (truncated).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>/<path>`; for workloads the path is
/// `/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    trust_domain_len: usize,
}

impl SpiffeId {
    /// Parses and validates (SPIFFE rules: scheme `spiffe`, lowercase trust domain of
    /// `[a-z0-9.-_]`, no port, userinfo, query or fragment; a non-empty path of segments of
    /// `[a-zA-Z0-9.-_]`, none empty, `.` or `..`; no percent-encoding; at most 2048 bytes).
    pub fn parse(id: &str) -> Result<Self, SpiffeError> {
        let _ = id;
        unimplemented!("identity crate being written")
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeError> {
        Self::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.trust_domain_len]
    }

    /// The namespace of a workload ID.
    pub fn namespace(&self) -> Option<&str> {
        unimplemented!()
    }

    /// The service account of a workload ID.
    pub fn service_account(&self) -> Option<&str> {
        unimplemented!()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}
