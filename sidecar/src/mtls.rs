//! This sidecar's mesh TLS: its SPIFFE identity, the certificate it presents (rotated in
//! place), the roots it trusts, and the rustls configs built from them.
//!
//! The server config (inbound) and the per-peer-identity client configs (outbound) all read
//! the certificate through the same [`CertStore`], so a rotation reaches every new handshake
//! at once and never touches established connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ficus_identity::tls::{self, CertStore, ClientAuth, TrustBundle};
use ficus_identity::SpiffeId;
use rustls::{ClientConfig, ServerConfig};

/// Identity and TLS settings, shared by the listeners, the pools and the certificate manager.
#[derive(Debug)]
pub struct MeshTls {
    /// Who we are.
    pub id: SpiffeId,
    /// The certificate we present.
    pub store: Arc<CertStore>,
    bundle: TrustBundle,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl MeshTls {
    /// TLS for workload `id`, trusting `bundle`. No certificate yet.
    pub fn new(id: SpiffeId, bundle: TrustBundle) -> Result<Self, String> {
        let store = CertStore::new();
        let server = tls::server_config(Arc::clone(&store), &bundle, ClientAuth::Required)
            .map_err(|e| format!("inbound TLS config: {e}"))?;
        Ok(Self {
            id,
            store,
            bundle,
            server,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a certificate is installed.
    pub fn has_certificate(&self) -> bool {
        self.store.not_after().is_some()
    }

    /// Inbound (mTLS required) config.
    pub fn server(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// Outbound config to a peer that must present `expected`.
    pub fn client_for(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>, String> {
        if let Some(found) = self
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(expected).cloned())
        {
            return Ok(found);
        }
        let config = tls::client_config(Some(Arc::clone(&self.store)), &self.bundle, expected)
            .map_err(|e| format!("outbound TLS config for {expected}: {e}"))?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(expected.clone(), Arc::clone(&config));
        }
        Ok(config)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        self.bundle.trust_domain()
    }
}
