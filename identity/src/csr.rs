//! Workload keys: generated in memory, never written to disk.

use rustls_pki_types::PrivateKeyDer;

use crate::tls::TlsError;
use crate::SpiffeId;

/// A workload's private key (ECDSA P-256), in memory only.
pub struct WorkloadKey {
    _private: (),
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(..)")
    }
}

impl WorkloadKey {
    /// Generates a key.
    pub fn generate() -> Result<Self, TlsError> {
        unimplemented!()
    }

    /// A CSR (PEM) for `id` signed with this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, TlsError> {
        let _ = id;
        unimplemented!()
    }

    /// The key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        unimplemented!()
    }
}
