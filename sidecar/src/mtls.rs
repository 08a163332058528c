//! This sidecar's mesh TLS: its SPIFFE identity, the certificate it presents (rotated in
//! place), the roots it trusts, and the rustls configs built from them.
//!
//! The server config (inbound), the per-peer-identity client configs (outbound) and the
//! control connection read the certificate through the same [`CertStore`] and the roots
//! through the same [`TrustStore`], so a certificate rotation or a new trust bundle (root
//! rotation, sent with each certificate) reaches every new handshake at once and never
//! touches established connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ficus_identity::tls::{self, CertStore, ClientAuth, TrustStore};
use ficus_identity::SpiffeId;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::authz::Decision;
use crate::state::Shared;
use crate::tunnel::copy_with_idle_timeout;

/// Identity and TLS settings, shared by the listeners, the pools and the certificate manager.
#[derive(Debug)]
pub struct MeshTls {
    /// Who we are.
    pub id: SpiffeId,
    /// The certificate we present.
    pub store: Arc<CertStore>,
    /// The roots we trust (shared with the control connection).
    pub trust: Arc<TrustStore>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl MeshTls {
    /// TLS for workload `id`, trusting the roots in `trust`. No certificate yet.
    pub fn new(id: SpiffeId, trust: Arc<TrustStore>) -> Result<Self, String> {
        let store = CertStore::new();
        let server = tls::server_config_trusting(
            Arc::clone(&store),
            Arc::clone(&trust),
            ClientAuth::Required,
        )
        .map_err(|e| format!("inbound TLS config: {e}"))?;
        Ok(Self {
            id,
            store,
            trust,
            server,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a certificate is installed and has not expired (an expired one fails every
    /// handshake, so the sidecar is not ready with it).
    pub fn has_certificate(&self) -> bool {
        self.store
            .not_after()
            .is_some_and(|not_after| not_after > std::time::SystemTime::now())
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
        let config = tls::client_config_trusting(
            Some(Arc::clone(&self.store)),
            Arc::clone(&self.trust),
            expected,
        )
        .map_err(|e| format!("outbound TLS config for {expected}: {e}"))?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(expected.clone(), Arc::clone(&config));
        }
        Ok(config)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        self.trust.trust_domain()
    }
}

/// Serves an inbound mTLS connection on which the peer sidecar chose ALPN `ficus-tcp` and
/// that is not HTTP: opaque TCP (a `tcp` Backend whose endpoint names our identity).
/// Authorization looks at the peer's identity alone (see
/// [`crate::authz::Authorizer::check_tcp`]); a denied connection is closed. The decrypted
/// bytes go to the app (`connected` already, or connected here): the inbound app address, or
/// in transparent mode the `original` destination the peer connected to.
pub async fn serve_opaque<S>(
    shared: &Shared,
    mut stream: S,
    peer_id: Option<&str>,
    peer: SocketAddr,
    original: Option<SocketAddr>,
    connected: Option<TcpStream>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (app, connect_timeout, idle, decision) = {
        let snapshot = shared.snapshot.load();
        let inbound = &snapshot.inbound;
        let decision = if inbound.authz.is_active() {
            inbound.authz.check_tcp(peer_id)
        } else {
            Decision::Allow
        };
        (
            original.unwrap_or_else(|| inbound.http1.address()),
            snapshot.limits.connect_timeout,
            snapshot.limits.connection_idle_timeout,
            decision,
        )
    };
    let metrics = &shared.metrics;
    if decision == Decision::Deny {
        metrics.authz_denied();
        tracing::info!(%peer, peer_id, "opaque TCP connection denied by authorization policy");
        return;
    }
    metrics.tcp_opened.inc();
    let upstream = match connected {
        Some(connected) => Ok(Ok(connected)),
        None => tokio::time::timeout(connect_timeout, TcpStream::connect(app)).await,
    };
    match upstream {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let (_, result) =
                copy_with_idle_timeout(&mut stream, &mut upstream, idle, Some(metrics.tcp_live()))
                    .await;
            if let Err(error) = result {
                tracing::debug!(%peer, %app, %error, "inbound opaque TCP connection ended");
            }
        }
        Ok(Err(error)) => {
            metrics.upstream_failure("connect_refused");
            tracing::debug!(%peer, %app, %error, "inbound opaque TCP: the app refused");
        }
        Err(_) => {
            metrics.upstream_failure("connect_timeout");
            tracing::debug!(%peer, %app, "inbound opaque TCP: connecting to the app timed out");
        }
    }
    metrics.tcp_closed.inc();
}
