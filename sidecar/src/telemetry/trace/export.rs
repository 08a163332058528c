//! The span exporter: a bounded queue in front of an exporter thread that batches spans and
//! sends them to the collector over OTLP/gRPC (opentelemetry-proto's messages, tonic's client).
//!
//! Why not the SDK's `BatchSpanProcessor`: it drops spans when its queue is full but does not
//! let us count them, and its spans are built through the SDK's tracer (allocations and
//! locks per span whether or not they are kept). Here the request path does one `try_send`
//! of the record (moved out of its box, which is freed where it was allocated): a full queue
//! (collector slow or down) drops the span and counts it in `ficus_trace_spans_dropped_total`;
//! nothing on the request path ever waits for export.
//!
//! The exporter thread (`ficus-trace`, a current-thread runtime of its own, started with the
//! first config that enables tracing) writes each record straight into the OTLP request it
//! sends ([`Batch`]): the spans of the last batch, their attribute lists and their strings are
//! overwritten in place, and the request is encoded into a buffer that is reused too, so a
//! batch allocates nothing once earlier ones have grown it. (opentelemetry-otlp's exporter
//! takes the SDK's `SpanData`, copies the batch, and builds every attribute key and value as a
//! new `String`: about 23 allocations and 24,000 instructions per span, most of the tracing
//! overhead; see benches/README.md.) It batches up to [`MAX_BATCH`] every [`BATCH_DELAY`] and
//! exports with a timeout. It drains the queue on a
//! timer instead of waiting on it, so that queueing a span never wakes a thread (no syscall on
//! the request path). A failed export counts its
//! spans as dropped and backs off (200 ms doubling to 5 s) while the queue keeps its bound;
//! spans the collector reports as rejected (a partial success) are counted as dropped too.
//! A config swap takes effect before the next drain: queued spans go to the new endpoint, or
//! are dropped and counted when tracing was switched off.
//!
//! An `https://` endpoint is reached over TLS 1.3 (rustls with the workspace's ring
//! provider, ALPN `h2`) on a tonic channel whose connector this module provides: the
//! collector's certificate must chain to a root in the sidecar's `--ca-file` and name the
//! URL's host (DNS name or IP address). The roots are read when the exporter is built (first
//! config with tracing, and each endpoint change). Without `--ca-file` an `https://` endpoint
//! is refused with a log line and its spans are dropped and counted.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{BufMut as _, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, SpanFlags, Status,
};
use prost::Message as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
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
        let resource = Resource {
            attributes: vec![
                string_attribute("service.name", name),
                string_attribute("service.namespace", identity.namespace.clone()),
                string_attribute("service.instance.id", identity.node_id.clone()),
                string_attribute("ficus.workload", identity.workload.clone()),
            ],
            ..Resource::default()
        };
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

/// See [`keep_batch_memory`]: larger than what an export allocates and frees (a few hundred
/// KiB for a batch of [`MAX_BATCH`] spans).
const BATCH_MEMORY: usize = 1 << 20;

/// Lets the allocator keep an export's memory from one batch to the next.
///
/// The batch and its encoding are reused ([`Batch`]), but an export still allocates and frees
/// tonic's copy of the encoded request (a few hundred KiB for a full batch) and HTTP/2
/// frames. (Before [`Batch`], about 0.6 MiB: the SDK's spans, opentelemetry-otlp's copy of
/// them, the protobuf message and its encoding.) glibc's malloc gives the free top of a heap back
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

/// The collector's gRPC method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC client of one collector.
struct Exporter {
    endpoint: Arc<str>,
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Exporter {
    /// Sends one encoded `ExportTraceServiceRequest`; the spans the collector rejected.
    async fn export(&mut self, request: Bytes) -> Result<u64, String> {
        self.grpc.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .grpc
            .unary(
                tonic::Request::new(request),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                Encoded,
            )
            .await
            .map_err(|status| match status.message() {
                "" => format!("{:?}", status.code()),
                message => format!("{:?}: {message}", status.code()),
            })?;
        let rejected = response
            .into_inner()
            .partial_success
            .map_or(0, |partial| partial.rejected_spans);
        Ok(u64::try_from(rejected).unwrap_or(0))
    }
}

fn build(endpoint: &Arc<str>, ca_file: Option<&Path>) -> Option<Exporter> {
    let https = endpoint
        .parse::<http::Uri>()
        .is_ok_and(|uri| uri.scheme() == Some(&http::uri::Scheme::HTTPS));
    let channel = if https {
        tls_channel(endpoint, ca_file)
    } else {
        collector_endpoint(endpoint).map(|endpoint| {
            endpoint
                .connect_timeout(EXPORT_TIMEOUT)
                .timeout(EXPORT_TIMEOUT)
                .connect_lazy()
        })
    };
    match channel {
        Ok(channel) => {
            let transport = if https {
                "OTLP/gRPC over TLS"
            } else {
                "OTLP/gRPC"
            };
            tracing::info!(endpoint = %endpoint, "exporting spans over {transport}");
            Some(Exporter {
                endpoint: Arc::clone(endpoint),
                grpc: tonic::client::Grpc::new(channel),
            })
        }
        Err(error) => {
            tracing::warn!(endpoint = %endpoint, %error, "cannot export spans to this endpoint; they are dropped");
            None
        }
    }
}

/// The collector's URL for tonic, naming us in `user-agent`.
fn collector_endpoint(endpoint: &str) -> Result<tonic::transport::Endpoint, String> {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .and_then(|e| e.user_agent(concat!("ficus-sidecar/", env!("CARGO_PKG_VERSION"))))
        .map_err(|e| format!("not a URL: {e}"))
}

/// A gRPC codec whose requests are already encoded ([`Batch::encode`]); responses are
/// decoded by prost.
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Encoded;
    type Decoder = <tonic_prost::ProstCodec<ExportTraceServiceRequest, ExportTraceServiceResponse> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        >::default())
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
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
    let mut batch = Batch::new(resource);
    let mut exporter: Option<Exporter> = None;
    // The configured endpoint, even when no exporter could be built for it.
    let mut configured: Endpoint = None;
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let wanted = config.borrow_and_update().clone();
        if wanted != configured {
            exporter = wanted.as_ref().and_then(|e| build(e, ca_file.as_deref()));
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
            // Without an exporter (tracing off, or no usable endpoint) a span is dropped as it
            // is taken off the queue, and nothing is built for it.
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(record) if exporter.is_some() => batch.push(&record),
                    Ok(_) => metrics.trace_spans_dropped.inc(),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let Some(current) = exporter.as_mut().filter(|_| batch.len() > 0) else {
                break;
            };
            let full = batch.len() == MAX_BATCH;
            let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            let request = batch.encode();
            let result = tokio::time::timeout(
                EXPORT_TIMEOUT + Duration::from_secs(1),
                current.export(request),
            )
            .await;
            match result {
                Ok(Ok(rejected)) => {
                    let rejected = rejected.min(count);
                    metrics.trace_spans_exported.inc_by(count - rejected);
                    if rejected > 0 {
                        metrics.trace_spans_dropped.inc_by(rejected);
                        tracing::debug!(endpoint = %current.endpoint, rejected, "the collector rejected spans");
                    }
                    if failing {
                        tracing::info!(endpoint = %current.endpoint, "span export recovered");
                    }
                    failing = false;
                    backoff = BACKOFF_MIN;
                }
                failed => {
                    metrics.trace_spans_dropped.inc_by(count);
                    let error = match failed {
                        Ok(Err(error)) => error,
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
    let channel = collector_endpoint(endpoint)?
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

/// The OTLP request the exporter fills, encodes and sends, batch after batch.
///
/// One resource, one scope, and the spans of the batch being filled. The spans of earlier
/// batches stay behind as slots: [`Batch::push`] overwrites one in place (its id buffers, its
/// name, its attribute list and every attribute's key and string value keep their capacity),
/// and [`Batch::encode`] writes the request into a buffer that comes back to the batch once
/// tonic has sent it. So once the first batches have grown them, a batch allocates nothing.
struct Batch {
    request: ExportTraceServiceRequest,
    /// Spans filled in this batch; slots past it are spare.
    len: usize,
    encoded: BytesMut,
    /// The last batch's encoded size.
    last_size: usize,
}

impl Batch {
    fn new(resource: Resource) -> Self {
        let scope = InstrumentationScope {
            name: "ficus-sidecar".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..InstrumentationScope::default()
        };
        Self {
            request: ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope),
                        spans: Vec::with_capacity(MAX_BATCH),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            },
            len: 0,
            encoded: BytesMut::new(),
            last_size: 0,
        }
    }

    fn spans(&mut self) -> &mut Vec<Span> {
        &mut self.request.resource_spans[0].scope_spans[0].spans
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Adds the record as the batch's next span.
    fn push(&mut self, record: &SpanRecord) {
        let len = self.len;
        let spans = self.spans();
        if spans.len() == len {
            spans.push(Span::default());
        }
        fill(&mut spans[len], record);
        self.len += 1;
    }

    /// The batch's spans as an encoded `ExportTraceServiceRequest`; the batch starts over.
    fn encode(&mut self) -> Bytes {
        let len = std::mem::take(&mut self.len);
        // Only the spans of this batch are encoded: the spare slots wait outside the request
        // (an allocation only when this batch is smaller than the last).
        let spare = self.spans().split_off(len);
        self.encoded.clear();
        // Takes the buffer of the last batch back once tonic has dropped its bytes (sized by
        // that batch: computing this one's length first would walk every span twice).
        self.encoded.reserve(self.last_size);
        self.request.encode_raw(&mut self.encoded);
        self.last_size = self.encoded.len();
        self.spans().extend(spare);
        self.encoded.split().freeze()
    }
}

/// Overwrites `span` with the record, as an OTLP span with the OpenTelemetry HTTP semantic
/// conventions.
fn fill(span: &mut Span, record: &SpanRecord) {
    set_bytes(&mut span.trace_id, &record.trace_id.0);
    set_bytes(&mut span.span_id, &record.span_id.0);
    span.trace_state.clear();
    match record.parent {
        Some(parent) => set_bytes(&mut span.parent_span_id, &parent.0),
        None => span.parent_span_id.clear(),
    }
    // W3C trace flags (sampled), and whether the parent is remote: a parent is always the
    // caller's span, in another process.
    span.flags = 1 | SpanFlags::ContextHasIsRemoteMask as u32;
    if record.parent.is_some() {
        span.flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    let method = record.method.as_str();
    span.name.clear();
    span.name.push_str(method);
    if let Some(route) = &record.route {
        span.name.push(' ');
        span.name.push_str(route);
    }
    span.kind = match record.kind {
        Kind::Client => SpanKind::Client,
        Kind::Server => SpanKind::Server,
    } as i32;
    span.start_time_unix_nano = unix_nanos(record.start);
    span.end_time_unix_nano = unix_nanos(record.start + record.duration);

    let mut attributes = Attributes::over(&mut span.attributes);
    attributes.text("http.request.method", method);
    // No status for a request given up before its response (abandoned, flag `DC`).
    if record.status != 0 {
        attributes.int("http.response.status_code", record.status.into());
    }
    let (path, host) = record.path_and_host();
    attributes.text("url.path", path);
    if record.kind == Kind::Server {
        // Required on HTTP server spans; client spans have no such attribute.
        attributes.text("url.scheme", "http");
    }
    let version = match record.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    attributes.text("network.protocol.version", version);
    if let Some(host) = host {
        attributes.text("server.address", host);
        if let Some(port) = record.server_port {
            attributes.int("server.port", port.into());
        }
    }
    if let Some(route) = &record.route {
        attributes.text("http.route", route);
    }
    // The direction is the span kind (CLIENT: outbound, SERVER: inbound): no attribute of its
    // own.
    let error_from = match record.kind {
        Kind::Client => 400,
        Kind::Server => 500,
    };
    match record.kind {
        Kind::Client => {
            if let Some(endpoint) = record.endpoint {
                attributes.display("network.peer.address", endpoint.ip());
                attributes.int("network.peer.port", endpoint.port().into());
            }
            // The semantic conventions' retry count, present only when the request was sent
            // again (absent: no retry).
            if record.retries > 0 {
                attributes.int("http.request.resend_count", record.retries.into());
            }
        }
        Kind::Server => attributes.display("client.address", record.client.ip()),
    }
    if let Some(service) = &record.service {
        attributes.text("ficus.service", service);
    }
    match (record.kind, &record.backend) {
        (_, Some(backend)) => attributes.text("ficus.backend", backend),
        (Kind::Server, None) => attributes.text("ficus.backend", "app"),
        (Kind::Client, None) => {}
    }
    match &record.peer_identity {
        Some(PeerIdentity::Named(name)) => attributes.text("ficus.peer.identity", name),
        Some(PeerIdentity::Verified(value)) => attributes.text(
            "ficus.peer.identity",
            &String::from_utf8_lossy(value.as_bytes()),
        ),
        None => {}
    }
    if !record.flags.is_empty() {
        attributes.text("ficus.response_flags", record.flags);
    }
    if let Some(code) = record.grpc_status {
        attributes.int("rpc.grpc.status_code", code.into());
    }
    let failure = failure(record, error_from);
    match failure {
        Some(Failure::Abandoned) => attributes.text("error.type", record.flags),
        Some(Failure::Grpc(code)) => attributes.display("error.type", code),
        Some(Failure::Http) => attributes.display("error.type", record.status),
        None => {}
    }
    attributes.finish();

    let status = span.status.get_or_insert_with(Status::default);
    status.message.clear();
    status.code = if failure.is_some() {
        StatusCode::Error
    } else {
        StatusCode::Unset
    } as i32;
    let _ = match failure {
        Some(Failure::Abandoned) => write!(status.message, "no response ({})", record.flags),
        Some(Failure::Grpc(code)) => write!(status.message, "gRPC status {code}"),
        Some(Failure::Http) => write!(status.message, "HTTP {}", record.status),
        None => Ok(()),
    };
}

/// Why a span is marked as an error.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Given up before its response (the client went away): `error.type` is the flag.
    Abandoned,
    /// A gRPC call that ended with this status.
    Grpc(u8),
    /// An HTTP status that is an error for the span's kind (or one this sidecar answered with
    /// a flag).
    Http,
}

/// Whether the span failed: OpenTelemetry's conventions for HTTP (4xx on CLIENT spans, 5xx on
/// SERVER spans, from `error_from`) and gRPC (any status but OK on CLIENT spans; on SERVER
/// spans only the statuses that mean the server failed: UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
fn failure(record: &SpanRecord, error_from: u16) -> Option<Failure> {
    if record.status == 0 {
        return Some(Failure::Abandoned);
    }
    if record.status >= error_from || (!record.flags.is_empty() && record.status >= 400) {
        return Some(Failure::Http);
    }
    let code = record.grpc_status?;
    let failed = match record.kind {
        Kind::Client => code != 0,
        Kind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    failed.then_some(Failure::Grpc(code))
}

fn set_bytes(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.clear();
    buffer.extend_from_slice(bytes);
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// A span's attribute list, overwritten from the start: each attribute reuses the key and
/// string value of the one that was in its place.
struct Attributes<'a> {
    list: &'a mut Vec<KeyValue>,
    len: usize,
}

impl<'a> Attributes<'a> {
    fn over(list: &'a mut Vec<KeyValue>) -> Self {
        Self { list, len: 0 }
    }

    /// The next attribute's value, with its key set.
    fn next(&mut self, key: &str) -> &mut Option<any_value::Value> {
        if self.list.len() == self.len {
            self.list.push(KeyValue::default());
        }
        let attribute = &mut self.list[self.len];
        self.len += 1;
        if attribute.key != key {
            attribute.key.clear();
            attribute.key.push_str(key);
        }
        &mut attribute.value.get_or_insert_with(AnyValue::default).value
    }

    /// Sets the next attribute to a string written by `write`, into the buffer of the string
    /// that was in its place when there was one.
    fn string(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        match self.next(key) {
            Some(any_value::Value::StringValue(text)) => {
                text.clear();
                write(text);
            }
            other => {
                let mut text = String::new();
                write(&mut text);
                *other = Some(any_value::Value::StringValue(text));
            }
        }
    }

    fn text(&mut self, key: &str, value: &str) {
        self.string(key, |text| text.push_str(value));
    }

    fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        self.string(key, |text| {
            let _ = write!(text, "{value}");
        });
    }

    fn int(&mut self, key: &str, value: i64) {
        *self.next(key) = Some(any_value::Value::IntValue(value));
    }

    /// Drops what is left of the last span's attributes.
    fn finish(self) {
        self.list.truncate(self.len);
    }
}

/// A resource attribute.
fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_for_test(record: SpanRecord) -> Span {
        let mut span = Span::default();
        fill(&mut span, &record);
        span
    }

    /// The value of the span's attribute `key`, as text.
    fn attribute(span: &Span, key: &str) -> Option<String> {
        let found = span.attributes.iter().find(|kv| kv.key == key)?;
        match found.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(text) => Some(text.clone()),
            any_value::Value::IntValue(value) => Some(value.to_string()),
            other => Some(format!("{other:?}")),
        }
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
        assert!(build(&Arc::from("https://collector.example:4317"), None).is_none());
    }

    /// A failed outbound request that was retried, with a route and an endpoint.
    fn client_record() -> SpanRecord {
        SpanRecord {
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
            grpc_status: None,
        }
    }

    #[test]
    fn converted_span_carries_the_conventions() {
        let record = client_record();
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
        assert_eq!(span.trace_id, [1; 16]);
        assert_eq!(span.span_id, [2; 8]);
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.flags, 0x101, "sampled, parent not remote");
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            3_000_000
        );
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 503");
        // The span kind is the direction; retries are the conventions' resend count only;
        // `url.scheme` belongs to server spans.
        for gone in ["ficus.direction", "ficus.retries", "url.scheme"] {
            assert_eq!(attr(gone), None, "{gone}");
        }
        assert_eq!(span.kind, SpanKind::Client as i32);
    }

    /// A successful inbound request, with a parent and no route.
    fn server_record() -> SpanRecord {
        SpanRecord {
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
            grpc_status: None,
        }
    }

    #[test]
    fn a_grpc_call_that_failed_is_an_error_as_the_conventions_say() {
        let status = |span: &Span| span.status.as_ref().unwrap().code;
        // Client: any status but OK. Server: only those that mean the server failed.
        for (kind, code, failed) in [
            (Kind::Client, 0, false),
            (Kind::Client, 5, true),
            (Kind::Client, 14, true),
            (Kind::Server, 0, false),
            (Kind::Server, 5, false),
            (Kind::Server, 14, true),
            (Kind::Server, 13, true),
        ] {
            let mut record = server_record();
            record.kind = kind;
            record.grpc_status = Some(code);
            let span = convert_for_test(record);
            assert_eq!(
                attribute(&span, "rpc.grpc.status_code"),
                Some(code.to_string())
            );
            let expected = if failed {
                StatusCode::Error
            } else {
                StatusCode::Unset
            };
            assert_eq!(status(&span), expected as i32, "{kind:?} {code}");
            assert_eq!(
                attribute(&span, "error.type"),
                failed.then(|| code.to_string()),
                "{kind:?} {code}"
            );
        }
    }

    #[test]
    fn a_request_given_up_before_its_response_is_an_error() {
        let mut record = server_record();
        record.status = 0;
        record.flags = crate::telemetry::metrics::DOWNSTREAM_CLOSED;
        let span = convert_for_test(record);
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(attribute(&span, "error.type").as_deref(), Some("DC"));
        assert_eq!(attribute(&span, "http.response.status_code"), None);
    }

    #[test]
    fn server_span_has_the_scheme_and_no_resend_count_without_retries() {
        let record = server_record();
        let span = convert_for_test(record);
        let attr = |key: &str| attribute(&span, key);
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(attr("url.scheme").as_deref(), Some("http"));
        assert_eq!(attr("client.address").as_deref(), Some("10.0.0.9"));
        assert_eq!(attr("network.protocol.version").as_deref(), Some("2"));
        assert_eq!(attr("ficus.backend").as_deref(), Some("app"));
        assert_eq!(attr("http.request.resend_count"), None);
        assert_eq!(attr("server.address"), None);
        assert_eq!(span.name, "POST");
        assert_eq!(span.parent_span_id, [3; 8]);
        assert_eq!(span.flags, 0x301, "sampled, parent remote");
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Unset as i32);
    }

    /// The encoded request, as a collector decodes it.
    fn decode(bytes: &Bytes) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(bytes.clone()).unwrap()
    }

    #[test]
    fn a_reused_batch_carries_only_the_spans_it_was_given() {
        let resource = Resource {
            attributes: vec![string_attribute("service.name", "web.shop".into())],
            ..Resource::default()
        };
        let mut batch = Batch::new(resource);
        batch.push(&client_record());
        batch.push(&client_record());
        batch.push(&server_record());
        let first = decode(&batch.encode());
        assert_eq!(batch.len(), 0);
        let resource_spans = &first.resource_spans[0];
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "ficus-sidecar");
        assert_eq!(scope.spans.len(), 3);
        assert_eq!(scope.spans[0], convert_for_test(client_record()));
        assert_eq!(scope.spans[2], convert_for_test(server_record()));

        // The next batch is smaller and of another shape: the client spans' slots now hold
        // server spans, with none of the client attributes left over, and the spare slot is
        // not sent.
        batch.push(&server_record());
        let mut other = client_record();
        other.status = 200;
        other.flags = "";
        other.route = None;
        other.endpoint = None;
        other.retries = 0;
        batch.push(&other);
        let encoded = batch.encode();
        let second = decode(&encoded);
        let spans = &second.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0], convert_for_test(server_record()));
        assert_eq!(spans[1], convert_for_test(other));
        assert_eq!(attribute(&spans[1], "error.type"), None);
        assert_eq!(spans[1].name, "GET");
        assert_eq!(spans[1].status.as_ref().unwrap().message, "");

        // The third batch's spans go out whole after the spare slot was put back.
        drop(encoded);
        for _ in 0..4 {
            batch.push(&client_record());
        }
        let third = decode(&batch.encode());
        let spans = &third.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 4);
        assert!(spans
            .iter()
            .all(|span| *span == convert_for_test(client_record())));
    }
}
