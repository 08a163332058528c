//! Opaque TCP: one local listener per Backend with `listen:`, bytes forwarded to an endpoint
//! of a Backend chosen per connection (weighted when a TCPRoute splits the service).
//!
//! Listeners follow the config: a reload binds the new addresses *before* the swap (so an
//! address in use rejects the whole config), then stops listeners the new config dropped.
//! Connections already open keep running on their endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::drain::Drain;
use crate::listener::accept_loop;
use crate::state::Shared;
use crate::telemetry::access_log::TcpEntry;
use crate::tunnel::copy_with_idle_timeout;

/// The running opaque TCP listeners.
#[derive(Debug)]
pub struct TcpListeners {
    running: HashMap<SocketAddr, AbortHandle>,
    runtime: Handle,
    tracker: TaskTracker,
    drain: Drain,
}

/// Listeners bound for a config that is not swapped in yet.
#[derive(Debug)]
pub struct Prepared {
    bound: Vec<(SocketAddr, std::net::TcpListener)>,
    wanted: Vec<SocketAddr>,
}

impl TcpListeners {
    /// No listeners yet; accept loops will run on `runtime`.
    pub fn new(runtime: Handle, tracker: TaskTracker, drain: Drain) -> Self {
        Self {
            running: HashMap::new(),
            runtime,
            tracker,
            drain,
        }
    }

    /// Binds every address of `wanted` (the `listen` addresses of the next config) not bound
    /// yet. Fails, binding nothing, if any address cannot be bound.
    pub fn prepare(&self, wanted: Vec<SocketAddr>) -> Result<Prepared, String> {
        let mut bound = Vec::new();
        for address in &wanted {
            if self.running.contains_key(address) {
                continue;
            }
            let listener = std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("cannot listen on {address} for opaque TCP: {e}"))?;
            bound.push((*address, listener));
        }
        Ok(Prepared { bound, wanted })
    }

    /// Starts the prepared listeners and stops those the new config no longer has.
    pub fn commit(&mut self, prepared: Prepared, shared: &Arc<Shared>) {
        self.running.retain(|address, handle| {
            let keep = prepared.wanted.contains(address);
            if !keep {
                tracing::info!(%address, "opaque TCP listener stopped");
                handle.abort();
            }
            keep
        });
        for (address, listener) in prepared.bound {
            let shared = Arc::clone(shared);
            let drain = self.drain.clone();
            let tracker = self.tracker.clone();
            let task = self.runtime.spawn(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%address, %error, "opaque TCP listener failed");
                        return;
                    }
                };
                tracing::info!(%address, "opaque TCP listener started");
                let connections = tracker.clone();
                accept_loop(listener, "tcp", drain, connections, move |stream, peer| {
                    proxy_connection(Arc::clone(&shared), address, stream, peer)
                })
                .await;
            });
            self.running.insert(address, task.abort_handle());
        }
    }
}

/// Forwards one accepted connection.
async fn proxy_connection(
    shared: Arc<Shared>,
    listen: SocketAddr,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let metrics = &shared.metrics;
    metrics.tcp_opened.inc();
    // What the connection needs of the config in force: it does not keep the whole snapshot
    // (and an old access log's writer) alive for as long as it lasts.
    let (service, idle, logging) = {
        let snapshot = shared.snapshot.load();
        (
            snapshot.tcp.get(&listen).cloned(),
            snapshot.limits.connection_idle_timeout,
            snapshot.access_log.is_some(),
        )
    };
    // With access logs on: (when, what the line needs), filled in as the connection goes.
    let mut log = logging.then(|| {
        let entry = TcpEntry {
            time: SystemTime::now(),
            listen,
            downstream: peer,
            service: String::new(),
            backend: "none".to_owned(),
            upstream: None,
            flags: "",
            duration: Duration::ZERO,
            bytes_received: 0,
            bytes_sent: 0,
        };
        (Instant::now(), entry)
    });
    if let Some(service) = service {
        let target = service.backends.pick();
        let endpoint = target.endpoint();
        if let Some((_, entry)) = &mut log {
            entry.service.clone_from(&service.label);
            entry.backend.clear();
            entry.backend.push_str(&target.label);
            entry.upstream = Some(endpoint.address());
        }
        // Plain TCP, or mTLS (ALPN `ficus-tcp`) when the endpoint names a peer identity.
        match endpoint.connect_opaque().await {
            Ok(mut upstream) => {
                let (bytes, result) = copy_with_idle_timeout(
                    &mut downstream,
                    &mut upstream,
                    idle,
                    Some(metrics.tcp_live()),
                )
                .await;
                if let Some((_, entry)) = &mut log {
                    entry.bytes_received = bytes.forward;
                    entry.bytes_sent = bytes.backward;
                }
                if let Err(error) = result {
                    tracing::debug!(service = %service.label, %error, "opaque TCP connection ended");
                }
            }
            Err(error) => {
                metrics.upstream_failure(error.reason());
                if let Some((_, entry)) = &mut log {
                    entry.flags = "UF";
                }
                tracing::debug!(service = %service.label, %error, "opaque TCP connect failed");
            }
        }
    }
    // The line goes to the access log of the config in force when the connection ends.
    if let Some((started, mut entry)) = log {
        if let Some(access_log) = &shared.snapshot.load().access_log {
            entry.duration = started.elapsed();
            access_log.tcp(entry);
        }
    }
    metrics.tcp_closed.inc();
}
