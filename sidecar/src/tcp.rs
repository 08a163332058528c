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
use crate::tunnel::{copy_counted, Moved};

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

/// How a connection relayed to a TCP service goes, filled in as it goes: read it when the
/// relay has ended, or after its future was dropped (the drain timeout cut the connection).
#[derive(Debug, Default)]
pub struct Relayed {
    /// The Backend chosen for it (`namespace/name`), once chosen.
    pub backend: Option<Arc<str>>,
    /// The endpoint, when the Backend has one.
    pub upstream: Option<SocketAddr>,
    /// Bytes each way so far.
    pub bytes: Moved,
    /// `UH` without an endpoint, `UF` when connecting failed, else empty.
    pub flags: &'static str,
}

/// Relays `downstream` to `service`: a Backend chosen by the service's split, an endpoint by
/// that Backend's balancer, connected over plain TCP or mTLS (ALPN `ficus-tcp`) when the
/// endpoint names a peer identity; bytes copied until either side ends or nothing moves for
/// `idle`. A Backend without endpoints (scaled to zero) gets the connection closed. Failures
/// are counted in `ficus_upstream_failures_total`. What happens is recorded in `relayed` as it
/// happens.
pub async fn relay_to_service<S>(
    metrics: &Metrics,
    service: &TcpService,
    downstream: &mut S,
    idle: Duration,
    relayed: &mut Relayed,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = service.backends.pick();
    relayed.backend = Some(Arc::clone(&target.label));
    let Some(endpoint) = target.endpoint() else {
        metrics.upstream_failure("no_healthy_upstream");
        relayed.flags = flags::NO_HEALTHY_UPSTREAM;
        tracing::debug!(service = %service.label, backend = %target.label, "opaque TCP: the Backend has no endpoints");
        return;
    };
    relayed.upstream = Some(endpoint.address());
    match endpoint.connect_opaque().await {
        Ok(mut upstream) => {
            let live = Some(metrics.tcp_live());
            let copied = copy_counted(downstream, &mut upstream, idle, live, &relayed.bytes);
            if let Err(error) = copied.await {
                tracing::debug!(service = %service.label, %error, "opaque TCP connection ended");
            }
        }
        Err(error) => {
            metrics.upstream_failure(error.reason());
            relayed.flags = flags::UPSTREAM_CONNECT_FAILURE;
            tracing::debug!(service = %service.label, %error, "opaque TCP connect failed");
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
    shared.metrics.tcp_opened.inc();
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
    let mut connection = Connection {
        shared,
        listen,
        peer,
        logged: logging.then(|| Logged {
            time: SystemTime::now(),
            started: Instant::now(),
            service: service
                .as_ref()
                .map(|s| s.label.clone())
                .unwrap_or_default(),
        }),
        relayed: Relayed::default(),
        ended: false,
    };
    if let Some(service) = service {
        let metrics = &connection.shared.metrics;
        relay_to_service(
            metrics,
            &service,
            &mut downstream,
            idle,
            &mut connection.relayed,
        )
        .await;
    }
    connection.ended = true;
}

/// An accepted opaque TCP connection, counted closed and logged when it is dropped: when its
/// relay ends, or when its task is dropped first. That happens only when the process exits
/// with the connection open (the drain timeout passed, or a signal ended the drain, and the
/// data-plane runtime's shutdown drops what is left), so such a line gets flag `SD` and the
/// bytes moved so far. The runtime has shut down before the access log's last flush at exit
/// (`app::run`), so the line is queued before that flush.
#[derive(Debug)]
struct Connection {
    shared: Arc<Shared>,
    listen: SocketAddr,
    peer: SocketAddr,
    /// What only its access-log line needs, when access logs were on at accept.
    logged: Option<Logged>,
    relayed: Relayed,
    /// The relay ran to its end (false: the task was dropped first).
    ended: bool,
}

/// The parts of an opaque TCP connection's access-log line known at accept.
#[derive(Debug)]
struct Logged {
    /// When it was accepted (the line's `time`).
    time: SystemTime,
    /// The same, monotonic (for `duration_ms`).
    started: Instant,
    /// The TCP service of its `listen` address (`namespace/name`); empty without one.
    service: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let metrics = &self.shared.metrics;
        metrics.tcp_closed.inc();
        let Some(logged) = self.logged.take() else {
            return;
        };
        // The line goes to the access log of the config in force when the connection ends.
        let snapshot = self.shared.snapshot.load();
        let Some(access_log) = &snapshot.access_log else {
            return;
        };
        let bytes = self.relayed.bytes.so_far();
        // A panic unwinding the task is no shutdown: it keeps the flags it had.
        let cut = !self.ended && !std::thread::panicking();
        access_log.tcp(TcpEntry {
            time: logged.time,
            listen: self.listen,
            downstream: self.peer,
            service: logged.service,
            backend: self.relayed.backend.as_deref().unwrap_or("none").to_owned(),
            upstream: self.relayed.upstream,
            flags: if cut {
                flags::SHUT_DOWN
            } else {
                self.relayed.flags
            },
            duration: logged.started.elapsed(),
            bytes_received: bytes.forward,
            bytes_sent: bytes.backward,
        });
    }
}
