//! The span exporter: a bounded queue in front of an exporter thread that batches spans and
//! sends them with opentelemetry-otlp over gRPC.
//!
//! Why not the SDK's `BatchSpanProcessor`: it drops spans when its queue is full but does not
//! let us count them, and its spans are built through the SDK's tracer (allocations and
//! locks per span whether or not they are kept). Here the request path does one `try_send`
//! of the record (moved out of its box, which is freed where it was allocated): a full queue
//! (collector slow or down) drops the span and counts it in `ficus_trace_spans_dropped_total`;
//! nothing on the request path ever waits for export.
//!
//! The exporter thread (`ficus-trace`, a current-thread runtime of its own, started with the
//! first config that enables tracing) converts records to OTLP spans (strings that repeat
//! from span to span, such as hosts, peer addresses and identities, are shared rather than
//! copied: opentelemetry-otlp clones every batch before encoding it), batches up to
//! [`MAX_BATCH`] every [`BATCH_DELAY`], and exports with a timeout. It drains the queue on a
//! timer instead of waiting on it, so that queueing a span never wakes a thread (no syscall on
//! the request path). A failed export counts its
//! spans as dropped and backs off (200 ms doubling to 5 s) while the queue keeps its bound.
//! A config swap takes effect before the next drain: queued spans go to the new endpoint, or
//! are dropped and counted when tracing was switched off.
//!
//! An `https://` endpoint is reached over TLS 1.3 (rustls with the workspace's ring
//! provider, ALPN `h2`) on a tonic channel whose connector this module provides: the
//! collector's certificate must chain to a root in the sidecar's `--ca-file` and name the
//! URL's host (DNS name or IP address). The roots are read when the exporter is built (first
//! config with tracing, and each endpoint change). Without `--ca-file` an `https://` endpoint
//! is refused with a log line and its spans are dropped and counted.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Kind, PeerIdentity, SpanRecord};
use crate::state::Identity;
use crate::telemetry::metrics::Metrics;

/// Spans waiting for the exporter; more are dropped. Holds [`BATCH_DELAY`] of 8,000 req/s.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export call.
pub const MAX_BATCH: usize = 512;
/// How often the exporter drains the queue.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export call, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Endpoint = Option<Arc<str>>;

/// Where finished spans go: the bounded queue of the exporter thread, once started.
#[derive(Debug)]
pub struct SpanSink {
    worker: OnceLock<Worker>,
    metrics: Arc<Metrics>,
    resource: Resource,
    /// `--ca-file`: the roots an `https://` collector's certificate must chain to.
    ca_file: OnceLock<PathBuf>,
}

#[derive(Debug)]
struct Worker {
    queue: mpsc::Sender<SpanRecord>,
    endpoint: watch::Sender<Endpoint>,
    /// Asks for an export of everything queued now, answered when it is done.
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl SpanSink {
    /// A sink for this sidecar; no thread runs until tracing is configured.
    pub fn new(metrics: Arc<Metrics>, identity: &Identity) -> Self {
        let name = if identity.workload.is_empty() {
            "ficus-sidecar".to_owned()
        } else {
            format!("{}.{}", identity.workload, identity.namespace)
        };
        let resource = Resource::builder_empty()
            .with_service_name(name)
            .with_attributes([
                KeyValue::new("service.namespace", identity.namespace.clone()),
                KeyValue::new("service.instance.id", identity.node_id.clone()),
                KeyValue::new("ficus.workload", identity.workload.clone()),
            ])
            .build();
        Self {
            worker: OnceLock::new(),
            metrics,
            resource,
            ca_file: OnceLock::new(),
        }
    }

    /// Trust the roots in `path` (`--ca-file`) for an `https://` collector. Takes effect for
    /// exporters built afterwards; call it before the first config is installed.
    pub fn trust_ca_file(&self, path: Option<&Path>) {
        if let Some(path) = path {
            let _ = self.ca_file.set(path.to_owned());
        }
    }

    /// Follows the config: export to `endpoint`, or stop exporting (`None`). Called on every
    /// swap, off the request path.
    pub fn configure(&self, endpoint: Option<&Arc<str>>) {
        let worker = match (self.worker.get(), endpoint) {
            (Some(worker), _) => worker,
            (None, None) => return,
            (None, Some(_)) => self.worker.get_or_init(|| self.start()),
        };
        let wanted = endpoint.cloned();
        worker.endpoint.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                current.clone_from(&wanted);
            }
            changed
        });
    }

    /// Exports what is queued now (at exit), waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let Some(worker) = self.worker.get() else {
            return;
        };
        let (ack, done) = oneshot::channel();
        if worker.flush.try_send(ack).is_ok() {
            let _ = tokio::time::timeout(within, done).await;
        }
    }

    fn start(&self) -> Worker {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (endpoint, endpoint_rx) = watch::channel(None);
        let (flush, flushes) = mpsc::channel(1);
        let metrics = Arc::clone(&self.metrics);
        let resource = self.resource.clone();
        let ca_file = self.ca_file.get().cloned();
        let spawned = std::thread::Builder::new()
            .name("ficus-trace".into())
            .spawn(move || {
                keep_batch_memory();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let exporter =
                            run(receiver, endpoint_rx, flushes, metrics, resource, ca_file);
                        runtime.block_on(exporter);
                    }
                    Err(error) => tracing::error!(%error, "cannot start the span exporter runtime"),
                }
            });
        if let Err(error) = spawned {
            // The receiver is gone with the closure: every span counts as dropped.
            tracing::error!(%error, "cannot start the span exporter thread; spans are dropped");
        }
        Worker {
            queue,
            endpoint,
            flush,
        }
    }

    /// Queues a finished span for export, or drops and counts it when the queue is full.
    ///
    /// The record is moved into the queue, not its box: the box is then freed on the thread
    /// that allocated it (glibc's per-thread cache takes it back at once), where freeing it
    /// on the exporter thread would send every record's memory through the allocator's
    /// slow paths on both threads.
    pub fn submit(&self, record: SpanRecord) {
        let queued = self
            .worker
            .get()
            .is_some_and(|worker| worker.queue.try_send(record).is_ok());
        if !queued {
            self.metrics.trace_spans_dropped.inc();
        }
    }
}

/// See [`keep_batch_memory`]: larger than an export's working set (about 0.6 MiB for a batch
/// of [`MAX_BATCH`] spans).
const BATCH_MEMORY: usize = 1 << 20;

/// Lets the allocator keep an export's memory from one batch to the next.
///
/// An export allocates and frees about 0.6 MiB (the batch, opentelemetry-otlp's copy of it,
/// the protobuf message and its encoding). glibc's malloc gives the free top of a heap back
/// to the kernel once it exceeds its trim threshold (128 KiB at start), so every batch
/// faulted its pages in again: about 250 page faults per 1,000 traced requests, and a
/// `madvise` per batch. glibc raises its mmap threshold to the size of a freed mmapped
/// block, and the trim threshold to twice that (mallopt(3), M_MMAP_THRESHOLD); freeing one
/// untouched block of [`BATCH_MEMORY`] here (mmapped, never written, so it costs no memory)
/// sets them to 1 and 2 MiB for the process. Then the heap keeps an export's pages, and
/// allocations of up to 1 MiB come from the heap rather than from a fresh mapping each.
/// Other allocators ignore it; it costs one mmap and munmap at the exporter's start.
fn keep_batch_memory() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(BATCH_MEMORY)));
}

struct Exporter {
    endpoint: Arc<str>,
    inner: opentelemetry_otlp::SpanExporter,
}

fn build(endpoint: &Arc<str>, resource: &Resource, ca_file: Option<&Path>) -> Option<Exporter> {
    let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let https = endpoint
        .parse::<http::Uri>()
        .is_ok_and(|uri| uri.scheme() == Some(&http::uri::Scheme::HTTPS));
    let builder = if https {
        match tls_channel(endpoint, ca_file) {
            Ok(channel) => builder.with_channel(channel),
            Err(error) => {
                tracing::warn!(endpoint = %endpoint, %error, "cannot export spans to this endpoint; they are dropped");
                return None;
            }
        }
    } else {
        builder.with_endpoint(endpoint.to_string())
    };
    let built = builder
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(RetryPolicy::disabled())
        .build();
    match built {
        Ok(mut inner) => {
            inner.set_resource(resource);
            let transport = if https {
                "OTLP/gRPC over TLS"
            } else {
                "OTLP/gRPC"
            };
            tracing::info!(endpoint = %endpoint, "exporting spans over {transport}");
            Some(Exporter {
                endpoint: Arc::clone(endpoint),
                inner,
            })
        }
        Err(error) => {
            tracing::warn!(endpoint = %endpoint, %error, "cannot export spans to this endpoint; they are dropped");
            None
        }
    }
}

async fn run(
    mut queue: mpsc::Receiver<SpanRecord>,
    mut config: watch::Receiver<Endpoint>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    resource: Resource,
    ca_file: Option<PathBuf>,
) {
    let scope = InstrumentationScope::builder("ficus-sidecar")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut shared = Shared::default();
    let mut exporter: Option<Exporter> = None;
    // The configured endpoint, even when no exporter could be built for it.
    let mut configured: Endpoint = None;
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let wanted = config.borrow_and_update().clone();
        if wanted != configured {
            exporter = wanted
                .as_ref()
                .and_then(|e| build(e, &resource, ca_file.as_deref()));
            configured = wanted;
        }
        // Sleep between drains rather than wait on the queue: a waiting receiver would be
        // woken (a syscall on the request path, a context switch here) for every span.
        let mut flushed = None;
        tokio::select! {
            biased;
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                // Apply it first: what is queued goes where the new config says.
                continue;
            }
            ack = flushes.recv() => flushed = ack,
            () = tokio::time::sleep(BATCH_DELAY) => {}
        }
        // Drain in batches: what is queued now goes out before the next nap.
        loop {
            let mut batch: Vec<SpanData> = Vec::with_capacity(queue.len().min(MAX_BATCH));
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(record) if configured.is_some() => {
                        batch.push(convert(record, &scope, &mut shared));
                    }
                    Ok(_) => metrics.trace_spans_dropped.inc(),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == MAX_BATCH;
            let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            let Some(current) = &exporter else {
                metrics.trace_spans_dropped.inc_by(count);
                continue;
            };
            let result = tokio::time::timeout(
                EXPORT_TIMEOUT + Duration::from_secs(1),
                current.inner.export(batch),
            )
            .await;
            match result {
                Ok(Ok(())) => {
                    metrics.trace_spans_exported.inc_by(count);
                    if failing {
                        tracing::info!(endpoint = %current.endpoint, "span export recovered");
                    }
                    failing = false;
                    backoff = BACKOFF_MIN;
                }
                failed => {
                    metrics.trace_spans_dropped.inc_by(count);
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    if failing {
                        tracing::debug!(endpoint = %current.endpoint, %error, "span export failed");
                    } else {
                        tracing::warn!(endpoint = %current.endpoint, %error, "span export failed; dropping spans until the collector answers");
                    }
                    failing = true;
                    // Back off (the queue keeps its bound meanwhile), but follow a config
                    // change at once: the loop's next turn reads it.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        changed = config.changed() => if changed.is_err() { return },
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
            if !full {
                break;
            }
        }
        if let Some(ack) = flushed {
            let _ = ack.send(());
        }
    }
}

/// A lazily connecting tonic channel to the `https://` collector at `endpoint`, verifying its
/// certificate against the roots in `ca_file` and the URL's host. Errors are one line.
fn tls_channel(
    endpoint: &str,
    ca_file: Option<&Path>,
) -> Result<tonic::transport::Channel, String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let path = ca_file.ok_or(
        "https needs --ca-file: the collector's certificate is verified against its roots",
    )?;
    let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca-file {}: no certificate", path.display()));
    }
    let name = ServerName::try_from(host.clone())
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(ficus_identity::crypto_provider())
        // TLS 1.3 only: the workspace's rustls is built without `tls12`.
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = CollectorConnector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
        host: Arc::from(host),
        port,
    };
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_with_connector_lazy(connector);
    Ok(channel)
}

/// At most this many resolved addresses of the collector are tried per connect.
const MAX_ADDRESSES: usize = 8;

/// Opens TLS connections to the collector for tonic: resolves the host at each connect, tries
/// its addresses in turn, then the TLS handshake, each within [`EXPORT_TIMEOUT`].
#[derive(Clone)]
struct CollectorConnector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    host: Arc<str>,
    port: u16,
}

type CollectorStream = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for CollectorConnector {
    type Response = CollectorStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<CollectorStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            use std::io::{Error, ErrorKind};
            let timed_out =
                |what: &str| Error::new(ErrorKind::TimedOut, format!("{what} timed out"));
            let found = tokio::time::timeout(
                EXPORT_TIMEOUT,
                tokio::net::lookup_host((&*this.host, this.port)),
            )
            .await
            .map_err(|_| timed_out("resolving the collector"))??;
            let mut last = Error::new(
                ErrorKind::NotFound,
                format!("{} resolved to no address", this.host),
            );
            let mut connected = None;
            for address in found.take(MAX_ADDRESSES) {
                match tokio::time::timeout(EXPORT_TIMEOUT, tokio::net::TcpStream::connect(address))
                    .await
                {
                    Ok(Ok(stream)) => {
                        connected = Some(stream);
                        break;
                    }
                    Ok(Err(error)) => last = error,
                    Err(_) => last = timed_out("connect"),
                }
            }
            let stream = connected.ok_or(last)?;
            let _ = stream.set_nodelay(true);
            let stream = tokio::time::timeout(EXPORT_TIMEOUT, this.tls.connect(this.name, stream))
                .await
                .map_err(|_| timed_out("TLS handshake with the collector"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Attributes of a usual span (a failed one may have two more): [`convert`] reserves this
/// many, a size glibc's per-thread cache serves (18 would not be).
const USUAL_ATTRIBUTES: usize = 16;

/// Strings that repeat from span to span (hosts, peer addresses, identities), kept once and
/// shared, so that a span holds a reference rather than its own copy: the exporter clones
/// every batch before converting it, and a shared string clones without allocating.
#[derive(Default)]
struct Shared {
    strings: Interner<Arc<str>>,
    addresses: Interner<IpAddr>,
}

/// Entries an [`Interner`] keeps before it starts over.
const SHARED_MAX: usize = 1024;

/// The shared text of each key, bounded (emptied when full). The last key looked up is
/// checked first: consecutive spans usually name the same host and endpoint, and a
/// comparison costs less than hashing.
struct Interner<K> {
    texts: HashMap<K, Arc<str>>,
    last: Option<(K, Arc<str>)>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self {
            texts: HashMap::new(),
            last: None,
        }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    /// The text of `key`, made by `make` (the key to keep, and its text) when not kept.
    fn get<Q>(&mut self, key: &Q, make: impl FnOnce(&Q) -> (K, Arc<str>)) -> Arc<str>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some((last, text)) = &self.last {
            if last.borrow() == key {
                return Arc::clone(text);
            }
        }
        let (kept, text) = match self.texts.get_key_value(key) {
            Some((kept, text)) => (kept.clone(), Arc::clone(text)),
            None => {
                if self.texts.len() >= SHARED_MAX {
                    self.texts.clear();
                }
                let (kept, text) = make(key);
                self.texts.insert(kept.clone(), Arc::clone(&text));
                (kept, text)
            }
        };
        self.last = Some((kept, Arc::clone(&text)));
        text
    }
}

impl Shared {
    fn string(&mut self, value: &str) -> Arc<str> {
        self.strings.get(value, |value| {
            let text: Arc<str> = Arc::from(value);
            (Arc::clone(&text), text)
        })
    }

    fn address(&mut self, ip: IpAddr) -> Arc<str> {
        self.addresses
            .get(&ip, |ip| (*ip, Arc::from(ip.to_string())))
    }

    fn identity(&mut self, identity: PeerIdentity) -> Arc<str> {
        match identity {
            PeerIdentity::Named(name) => name,
            PeerIdentity::Verified(value) => match std::str::from_utf8(value.as_bytes()) {
                Ok(name) => self.string(name),
                Err(_) => Arc::from(String::from_utf8_lossy(value.as_bytes())),
            },
        }
    }
}

/// One record as an OTLP span with the OpenTelemetry HTTP semantic conventions.
fn convert(record: SpanRecord, scope: &InstrumentationScope, shared: &mut Shared) -> SpanData {
    let mut attributes = Vec::with_capacity(USUAL_ATTRIBUTES);
    let method = method_name(&record.method);
    attributes.push(KeyValue::new("http.request.method", method.clone()));
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(record.status),
    ));
    // Shared, not owned: the exporter's copy of the batch then takes a reference, not a copy.
    let (path, host) = record.path_and_host();
    attributes.push(KeyValue::new("url.path", Arc::<str>::from(path)));
    if record.kind == Kind::Server {
        // Required on HTTP server spans; client spans have no such attribute.
        attributes.push(KeyValue::new("url.scheme", "http"));
    }
    let version = match record.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    attributes.push(KeyValue::new("network.protocol.version", version));
    if let Some(host) = host {
        attributes.push(KeyValue::new("server.address", shared.string(host)));
        if let Some(port) = record.server_port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if let Some(route) = &record.route {
        attributes.push(KeyValue::new("http.route", Arc::clone(route)));
    }
    // The direction is the span kind (CLIENT: outbound, SERVER: inbound): no attribute of its
    // own, every attribute costs the exporter an allocation or two per span.
    let error_from = match record.kind {
        Kind::Client => 400,
        Kind::Server => 500,
    };
    match record.kind {
        Kind::Client => {
            if let Some(endpoint) = record.endpoint {
                attributes.push(KeyValue::new(
                    "network.peer.address",
                    shared.address(endpoint.ip()),
                ));
                attributes.push(KeyValue::new(
                    "network.peer.port",
                    i64::from(endpoint.port()),
                ));
            }
            // The semantic conventions' retry count, present only when the request was sent
            // again (absent: no retry).
            if record.retries > 0 {
                attributes.push(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(record.retries),
                ));
            }
        }
        Kind::Server => {
            attributes.push(KeyValue::new(
                "client.address",
                shared.address(record.client.ip()),
            ));
        }
    }
    if let Some(service) = record.service {
        attributes.push(KeyValue::new("ficus.service", service));
    }
    match (record.kind, record.backend) {
        (_, Some(backend)) => attributes.push(KeyValue::new("ficus.backend", backend)),
        (Kind::Server, None) => attributes.push(KeyValue::new("ficus.backend", "app")),
        (Kind::Client, None) => {}
    }
    if let Some(identity) = record.peer_identity {
        attributes.push(KeyValue::new(
            "ficus.peer.identity",
            shared.identity(identity),
        ));
    }
    if !record.flags.is_empty() {
        attributes.push(KeyValue::new("ficus.response_flags", record.flags));
    }
    let failed = record.status >= error_from || (!record.flags.is_empty() && record.status >= 400);
    if failed {
        attributes.push(KeyValue::new("error.type", record.status.to_string()));
    }
    let name = match &record.route {
        Some(route) => {
            let mut name = String::with_capacity(method.len() + 1 + route.len());
            name.push_str(&method);
            name.push(' ');
            name.push_str(route);
            Cow::Owned(name)
        }
        None => method,
    };
    SpanData {
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(record.trace_id.0),
            OtelSpanId::from_bytes(record.span_id.0),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: record
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: record.parent.is_some(),
        span_kind: match record.kind {
            Kind::Client => SpanKind::Client,
            Kind::Server => SpanKind::Server,
        },
        name,
        start_time: record.start,
        end_time: record.start + record.duration,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if failed {
            Status::error(format!("HTTP {}", record.status))
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The method as a string, without allocating for the standard ones.
fn method_name(method: &http::Method) -> Cow<'static, str> {
    use http::Method;
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    ];
    match known.iter().position(|m| m == method) {
        Some(i) => Cow::Borrowed(NAMES[i]),
        None => Cow::Owned(method.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_for_test(record: SpanRecord) -> SpanData {
        let scope = InstrumentationScope::builder("test").build();
        convert(record, &scope, &mut Shared::default())
    }

    /// The value of the span's attribute `key`, as text.
    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn https_without_a_usable_ca_file_is_refused_with_a_reason() {
        let endpoint = "https://collector.example:4317";
        let error = tls_channel(endpoint, None).unwrap_err();
        assert!(error.contains("--ca-file"), "{error}");

        let missing = std::env::temp_dir().join("ficus-no-such-ca-file.pem");
        let error = tls_channel(endpoint, Some(&missing)).unwrap_err();
        assert!(error.contains("ficus-no-such-ca-file.pem"), "{error}");

        let dir = std::env::temp_dir().join(format!("ficus-otlp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = tls_channel(endpoint, Some(&empty)).unwrap_err();
        assert!(error.contains("no certificate"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_https_endpoint_without_ca_file_builds_no_exporter() {
        let resource = Resource::builder_empty().build();
        assert!(build(
            &Arc::from("https://collector.example:4317"),
            &resource,
            None
        )
        .is_none());
    }

    #[test]
    fn shared_strings_are_reused_and_bounded() {
        let mut shared = Shared::default();
        let a = shared.string("payments");
        let b = shared.string("payments");
        assert!(Arc::ptr_eq(&a, &b));
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(&*shared.address(ip), "10.0.0.1");
        assert!(Arc::ptr_eq(&shared.address(ip), &shared.address(ip)));
        // Alternating values: the last one looked up is not the only one kept.
        let other = IpAddr::from([10, 0, 0, 2]);
        assert_eq!(&*shared.address(other), "10.0.0.2");
        assert_eq!(&*shared.address(ip), "10.0.0.1");
        assert_eq!(&*shared.string("orders"), "orders");
        assert!(Arc::ptr_eq(&shared.string("payments"), &a));
        for i in 0..SHARED_MAX + 10 {
            shared.string(&i.to_string());
        }
        assert!(shared.strings.texts.len() <= SHARED_MAX);
        let bad = http::HeaderValue::from_bytes(b"spiffe://x/\xff").unwrap();
        assert_eq!(
            &*shared.identity(PeerIdentity::Verified(bad)),
            "spiffe://x/\u{fffd}"
        );
        let named: Arc<str> = Arc::from("spiffe://td/ns/a/sa/b");
        assert!(Arc::ptr_eq(
            &shared.identity(PeerIdentity::Named(Arc::clone(&named))),
            &named
        ));
    }

    #[test]
    fn converted_span_carries_the_conventions() {
        let record = SpanRecord {
            trace_id: super::super::TraceId([1; 16]),
            span_id: super::super::SpanId([2; 8]),
            parent: None,
            kind: Kind::Client,
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(3),
            method: http::Method::GET,
            text: super::super::Text::new("/pay", "payments"),
            host_at: Some(4),
            server_port: Some(8080),
            version: http::Version::HTTP_11,
            client: "127.0.0.1:1".parse().unwrap(),
            route: Some(Arc::from("shop/pay")),
            service: Some(Arc::from("shop/payments")),
            backend: Some(Arc::from("shop/payments-v2")),
            endpoint: Some("10.0.0.7:8443".parse().unwrap()),
            peer_identity: None,
            retries: 2,
            status: 503,
            flags: "UF",
        };
        let span = convert_for_test(record);
        let attr = |key: &str| attribute(&span, key);
        for (key, value) in [
            ("http.request.method", "GET"),
            ("http.response.status_code", "503"),
            ("url.path", "/pay"),
            ("server.address", "payments"),
            ("server.port", "8080"),
            ("http.route", "shop/pay"),
            ("network.peer.address", "10.0.0.7"),
            ("network.peer.port", "8443"),
            ("http.request.resend_count", "2"),
            ("ficus.service", "shop/payments"),
            ("ficus.backend", "shop/payments-v2"),
            ("ficus.response_flags", "UF"),
            ("error.type", "503"),
        ] {
            assert_eq!(attr(key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(span.name, "GET shop/pay");
        // The span kind is the direction; retries are the conventions' resend count only;
        // `url.scheme` belongs to server spans.
        for gone in ["ficus.direction", "ficus.retries", "url.scheme"] {
            assert_eq!(attr(gone), None, "{gone}");
        }
        assert_eq!(span.span_kind, SpanKind::Client);
    }

    #[test]
    fn server_span_has_the_scheme_and_no_resend_count_without_retries() {
        let record = SpanRecord {
            trace_id: super::super::TraceId([1; 16]),
            span_id: super::super::SpanId([2; 8]),
            parent: Some(super::super::SpanId([3; 8])),
            kind: Kind::Server,
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(1),
            method: http::Method::POST,
            text: super::super::Text::new("/x", ""),
            host_at: None,
            server_port: None,
            version: http::Version::HTTP_2,
            client: "10.0.0.9:5000".parse().unwrap(),
            route: None,
            service: Some(Arc::from("shop/web")),
            backend: None,
            endpoint: None,
            peer_identity: None,
            retries: 0,
            status: 200,
            flags: "",
        };
        let span = convert_for_test(record);
        let attr = |key: &str| attribute(&span, key);
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(attr("client.address").as_deref(), Some("10.0.0.9"));
        assert_eq!(attr("network.protocol.version").as_deref(), Some("2"));
        assert_eq!(attr("ficus.backend").as_deref(), Some("app"));
        assert_eq!(attr("http.request.resend_count"), None);
        assert_eq!(attr("server.address"), None);
        assert_eq!(span.name, "POST");
    }
}
