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

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::drain::Drain;
use crate::listener::{accept_loop, ConnectionLimit};
use crate::proxy::error::flags;
use crate::snapshot::TcpService;
use crate::state::Shared;
use crate::telemetry::access_log::TcpEntry;
use crate::telemetry::metrics::Metrics;
use crate::tunnel::{copy_with_idle_timeout, Transferred};

/// The running opaque TCP listeners.
#[derive(Debug)]
pub struct TcpListeners {
    running: HashMap<SocketAddr, AbortHandle>,
    runtime: Handle,
    tracker: TaskTracker,
    drain: Drain,
    limit: ConnectionLimit,
}

/// Listeners bound for a config that is not swapped in yet.
#[derive(Debug)]
pub struct Prepared {
    bound: Vec<(SocketAddr, std::net::TcpListener)>,
    wanted: Vec<SocketAddr>,
}

impl TcpListeners {
    /// No listeners yet; accept loops will run on `runtime`, their connections counted
    /// against `limit` (shared with the HTTP listeners).
    pub fn new(
        runtime: Handle,
        tracker: TaskTracker,
        drain: Drain,
        limit: ConnectionLimit,
    ) -> Self {
        Self {
            running: HashMap::new(),
            runtime,
            tracker,
            drain,
            limit,
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
            let limit = self.limit.clone();
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
                let serve = move |stream, peer| {
                    proxy_connection(Arc::clone(&shared), address, stream, peer)
                };
                accept_loop(listener, "tcp", drain, connections, limit, serve).await;
            });
            self.running.insert(address, task.abort_handle());
        }
    }
}

/// How a connection relayed to a TCP service went.
#[derive(Debug)]
pub struct Relayed {
    /// The Backend chosen for it (`namespace/name`).
    pub backend: Arc<str>,
    /// The endpoint, when the Backend has one.
    pub upstream: Option<SocketAddr>,
    /// Bytes each way.
    pub bytes: Transferred,
    /// `UH` without an endpoint, `UF` when connecting failed, else empty.
    pub flags: &'static str,
}

/// Relays `downstream` to `service`: a Backend chosen by the service's split, an endpoint by
/// that Backend's balancer, connected over plain TCP or mTLS (ALPN `ficus-tcp`) when the
/// endpoint names a peer identity; bytes copied until either side ends or nothing moves for
/// `idle`. A Backend without endpoints (scaled to zero) gets the connection closed. Failures
/// are counted in `ficus_upstream_failures_total`.
pub async fn relay_to_service<S>(
    metrics: &Metrics,
    service: &TcpService,
    downstream: &mut S,
    idle: Duration,
) -> Relayed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = service.backends.pick();
    let mut relayed = Relayed {
        backend: Arc::clone(&target.label),
        upstream: None,
        bytes: Transferred::default(),
        flags: "",
    };
    let Some(endpoint) = target.endpoint() else {
        metrics.upstream_failure("no_healthy_upstream");
        relayed.flags = flags::NO_HEALTHY_UPSTREAM;
        tracing::debug!(service = %service.label, backend = %target.label, "opaque TCP: the Backend has no endpoints");
        return relayed;
    };
    relayed.upstream = Some(endpoint.address());
    match endpoint.connect_opaque().await {
        Ok(mut upstream) => {
            let (bytes, result) =
                copy_with_idle_timeout(downstream, &mut upstream, idle, Some(metrics.tcp_live()))
                    .await;
            relayed.bytes = bytes;
            if let Err(error) = result {
                tracing::debug!(service = %service.label, %error, "opaque TCP connection ended");
            }
        }
        Err(error) => {
            metrics.upstream_failure(error.reason());
            relayed.flags = flags::UPSTREAM_CONNECT_FAILURE;
            tracing::debug!(service = %service.label, %error, "opaque TCP connect failed");
        }
    }
    relayed
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
        let relayed = relay_to_service(metrics, &service, &mut downstream, idle).await;
        if let Some((_, entry)) = &mut log {
            entry.service.clone_from(&service.label);
            entry.backend.clear();
            entry.backend.push_str(&relayed.backend);
            entry.upstream = relayed.upstream;
            entry.flags = relayed.flags;
            entry.bytes_received = relayed.bytes.forward;
            entry.bytes_sent = relayed.bytes.backward;
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
