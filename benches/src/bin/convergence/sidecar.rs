//! Simulated sidecars: push streams that ACK every snapshot at once and record when each
//! version arrived.
//!
//! A simulated sidecar does what `sidecar/src/control.rs` does on the wire (tonic's generated
//! `ConfigDiscoveryClient` over a hyper HTTP/2 connection, Hello first, one ACK per snapshot)
//! but neither parses nor validates the documents, so the bench measures the control plane's
//! fan-out rather than YAML parsing in 10,000 clients. Each connection carries one stream by
//! default; several streams can share a connection (`--streams-per-connection`), as many
//! sidecars behind one gRPC proxy would.
//!
//! A connection's streams subscribe together while holding one permit of a shared semaphore,
//! which bounds how many handshakes are in flight (and so the SYN backlog of the control
//! plane's listener) while thousands of sidecars connect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ficus_config::wire::config_discovery_client::ConfigDiscoveryClient;
use ficus_config::wire::{control_message, sidecar_message, Ack, ControlMessage, Hello};
use ficus_config::wire::{SidecarMessage, Snapshot};
use futures_util::future::join_all;
use http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::codec::Streaming;

/// Largest snapshot accepted, as the real sidecar.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Answers queued per stream; one is ever outstanding, since the control plane waits for it.
const ANSWER_QUEUE: usize = 4;
/// Versions accounted per snapshot at most (a snapshot skipping more is not expected).
const MAX_VERSION_STEP: u64 = 10_000;

/// What every simulated sidecar shares.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The control plane's gRPC address.
    pub address: SocketAddr,
    /// Origin of request URIs (`http://host:port`).
    pub origin: Uri,
    /// Bound on TCP connect and on the HTTP/2 handshake, each.
    pub connect_timeout: Duration,
    /// Bound on the control plane answering a subscription.
    pub subscribe_timeout: Duration,
    /// HTTP/2 keepalive ping interval and timeout (the real sidecar uses 10 s).
    pub keepalive: Duration,
    /// A stream with no snapshot for this long is given up (longer than any quiet phase).
    pub idle_timeout: Duration,
}

/// Who a simulated sidecar says it is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique node id.
    pub node_id: String,
    /// Workload (service account); sidecars of one workload share a scope.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
}

/// What one stream saw.
#[derive(Debug, Default)]
pub struct StreamRecord {
    /// `(version, arrival)` of every snapshot, in arrival order; each was ACKed right away.
    pub received: Vec<(u64, Instant)>,
    /// Size of the last snapshot's documents that was not `unchanged`, in bytes.
    pub snapshot_bytes: usize,
    /// Why the stream ended before the bench stopped it, if it did.
    pub error: Option<StreamError>,
}

/// Why a simulated sidecar's connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No TCP connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connect failed (refused, or out of file descriptors or ports).
    #[error("connect failed: {0}")]
    Io(#[source] std::io::Error),
    /// No HTTP/2 handshake within the connect timeout.
    #[error("HTTP/2 handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Why a simulated sidecar's stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Its connection could not be set up (shared by every stream of the connection).
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// The control plane did not answer the subscription in time.
    #[error("subscribe timed out after {0:?}")]
    SubscribeTimeout(Duration),
    /// The control plane refused the subscription or the connection failed before it.
    #[error("subscribe refused: {0}")]
    Subscribe(#[source] tonic::Status),
    /// The stream failed after subscribing (connection reset, keepalive timeout, ...).
    #[error("stream failed: {0}")]
    Stream(#[source] tonic::Status),
    /// The control plane ended the stream.
    #[error("the control plane closed the stream")]
    Closed,
    /// No snapshot for the idle timeout.
    #[error("no snapshot for {0:?}")]
    Idle(Duration),
}

impl StreamError {
    /// A short name for counting errors by kind in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(error) => match **error {
                ConnectError::Timeout(_) => "connect_timeout",
                ConnectError::Io(_) => "connect",
                ConnectError::HandshakeTimeout(_) => "handshake_timeout",
                ConnectError::Handshake(_) => "handshake",
            },
            Self::SubscribeTimeout(_) => "subscribe_timeout",
            Self::Subscribe(_) => "subscribe",
            Self::Stream(_) => "stream",
            Self::Closed => "closed",
            Self::Idle(_) => "idle",
        }
    }
}

/// How far the fleet got: per version, how many streams have it or a later one.
#[derive(Debug)]
pub struct Progress {
    streams: usize,
    counts: Mutex<HashMap<u64, usize>>,
    everyone: watch::Sender<u64>,
}

impl Progress {
    /// Progress of `streams` streams, none of which has anything yet.
    pub fn new(streams: usize) -> Arc<Self> {
        Arc::new(Self {
            streams,
            counts: Mutex::new(HashMap::new()),
            everyone: watch::channel(0).0,
        })
    }

    /// Watches the newest version that every stream has (or has passed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.everyone.subscribe()
    }

    /// How many streams have `version` or a later one.
    pub fn count(&self, version: u64) -> usize {
        self.counts
            .lock()
            .map_or(0, |counts| counts.get(&version).copied().unwrap_or(0))
    }

    /// A stream that had `previous` received `version`: it now has every version up to it
    /// (the control plane sends the latest, skipping any in between).
    fn received(&self, previous: u64, version: u64) {
        if version <= previous {
            return;
        }
        let first = (previous + 1).max(version.saturating_sub(MAX_VERSION_STEP));
        let mut complete = None;
        if let Ok(mut counts) = self.counts.lock() {
            for v in first..=version {
                let count = counts.entry(v).or_insert(0);
                *count += 1;
                if *count == self.streams {
                    complete = Some(v);
                }
            }
        }
        if let Some(v) = complete {
            self.everyone.send_if_modified(|everyone| {
                let newer = v > *everyone;
                *everyone = (*everyone).max(v);
                newer
            });
        }
    }
}

/// Runs one HTTP/2 connection carrying a stream for each of `identities`, until `shutdown`
/// turns true or the streams fail. Returns one record per identity, in order.
pub async fn run_connection(
    settings: Arc<FleetSettings>,
    identities: Vec<Identity>,
    progress: Arc<Progress>,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) -> Vec<StreamRecord> {
    let Ok(permit) = permits.acquire_owned().await else {
        return Vec::new(); // the semaphore is never closed
    };
    let sender = match connect(&settings).await {
        Ok(sender) => sender,
        Err(error) => {
            let error = Arc::new(error);
            return identities
                .iter()
                .map(|_| StreamRecord {
                    error: Some(StreamError::Connect(Arc::clone(&error))),
                    ..StreamRecord::default()
                })
                .collect();
        }
    };
    let subscribed = join_all(
        identities
            .iter()
            .map(|identity| subscribe(&settings, sender.clone(), identity)),
    )
    .await;
    drop(sender);
    drop(permit);
    join_all(subscribed.into_iter().map(|subscribed| {
        let progress = Arc::clone(&progress);
        let shutdown = shutdown.clone();
        let idle = settings.idle_timeout;
        async move {
            match subscribed {
                Ok((inbound, answers)) => listen(inbound, answers, &progress, shutdown, idle).await,
                Err(error) => StreamRecord {
                    error: Some(error),
                    ..StreamRecord::default()
                },
            }
        }
    }))
    .await
}

/// TCP connect and HTTP/2 handshake, each bounded; the connection runs on its own task until
/// every sender is dropped or the peer goes away.
async fn connect(
    settings: &FleetSettings,
) -> Result<http2::SendRequest<tonic::body::Body>, ConnectError> {
    let after = settings.connect_timeout;
    let stream = tokio::time::timeout(after, tokio::net::TcpStream::connect(settings.address))
        .await
        .map_err(|_| ConnectError::Timeout(after))?
        .map_err(ConnectError::Io)?;
    let _ = stream.set_nodelay(true);
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream));
    let (sender, connection) = tokio::time::timeout(after, handshake)
        .await
        .map_err(|_| ConnectError::HandshakeTimeout(after))?
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        // Ends with an error when the control plane is stopped first; nothing to report.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The inbound snapshots of one subscribed stream, and where its answers go.
type Subscribed = (Streaming<ControlMessage>, mpsc::Sender<SidecarMessage>);

/// Opens one stream: Hello with version 0 and no digest, as a fresh sidecar.
async fn subscribe(
    settings: &FleetSettings,
    sender: http2::SendRequest<tonic::body::Body>,
    identity: &Identity,
) -> Result<Subscribed, StreamError> {
    let mut client =
        ConfigDiscoveryClient::with_origin(Channel { sender }, settings.origin.clone())
            .max_decoding_message_size(MAX_MESSAGE);
    let (answers, outbound) = mpsc::channel::<SidecarMessage>(ANSWER_QUEUE);
    let hello = Hello {
        node_id: identity.node_id.clone(),
        workload: identity.workload.clone(),
        namespace: identity.namespace.clone(),
        version: 0,
        digest: String::new(),
        reach: Vec::new(),
    };
    let hello = SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(hello)),
    };
    // The queue is empty and its receiver alive (owned just below), so this cannot fail.
    let _ = answers.try_send(hello);
    let outbound = futures_util::stream::unfold(outbound, |mut outbound| async move {
        outbound.recv().await.map(|message| (message, outbound))
    });
    let after = settings.subscribe_timeout;
    let response = tokio::time::timeout(after, client.subscribe(outbound))
        .await
        .map_err(|_| StreamError::SubscribeTimeout(after))?
        .map_err(StreamError::Subscribe)?;
    Ok((response.into_inner(), answers))
}

/// Receives snapshots and ACKs each at once, until shutdown, failure or `idle` of silence.
async fn listen(
    mut inbound: Streaming<ControlMessage>,
    answers: mpsc::Sender<SidecarMessage>,
    progress: &Progress,
    mut shutdown: watch::Receiver<bool>,
    idle: Duration,
) -> StreamRecord {
    let mut record = StreamRecord::default();
    let mut have = 0;
    loop {
        // Both branches are cancel-safe: `changed` keeps no state, and `Streaming::message`
        // keeps partly decoded frames in the `Streaming` itself.
        let message = tokio::select! {
            _ = shutdown.changed() => return record,
            message = tokio::time::timeout(idle, inbound.message()) => message,
        };
        let snapshot = match message {
            Err(_) => return failed(record, StreamError::Idle(idle)),
            Ok(Err(status)) => return failed(record, StreamError::Stream(status)),
            Ok(Ok(None)) => return failed(record, StreamError::Closed),
            Ok(Ok(Some(ControlMessage {
                kind: Some(control_message::Kind::Snapshot(snapshot)),
            }))) => snapshot,
            Ok(Ok(Some(_))) => continue,
        };
        let arrived = Instant::now();
        let Snapshot {
            version,
            nonce,
            documents,
            unchanged,
            ..
        } = snapshot;
        let ack = SidecarMessage {
            kind: Some(sidecar_message::Kind::Ack(Ack { version, nonce })),
        };
        if answers.send(ack).await.is_err() {
            return failed(record, StreamError::Closed);
        }
        record.received.push((version, arrived));
        if !unchanged {
            record.snapshot_bytes = documents.len();
        }
        progress.received(have, version);
        have = have.max(version);
    }
}

fn failed(mut record: StreamRecord, error: StreamError) -> StreamRecord {
    record.error = Some(error);
    record
}

/// A tonic transport over one hyper HTTP/2 connection (tonic is built without its own).
#[derive(Debug, Clone)]
struct Channel {
    sender: http2::SendRequest<tonic::body::Body>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_skipped_versions_as_passed() {
        let progress = Progress::new(2);
        let everyone = progress.subscribe();
        progress.received(0, 1);
        progress.received(0, 1);
        assert_eq!(*everyone.borrow(), 1);
        progress.received(1, 2);
        assert_eq!(*everyone.borrow(), 1, "one of two has version 2");
        // The other skips version 2: getting 3 means it has passed 2 as well.
        progress.received(1, 3);
        assert_eq!(*everyone.borrow(), 2);
        assert_eq!(progress.count(3), 1);
    }
}
