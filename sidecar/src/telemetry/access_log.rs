//! JSON access logs: one line per HTTP request and per opaque TCP connection.
//!
//! Off by default; `Mesh.spec.accessLog.path` turns them on (`/dev/stdout`, `/dev/stderr` or
//! a file, appended to). When on, the request path copies a few cheap fields (method,
//! authority and path share their bytes with the request) into a [`Pending`] line and, when
//! the response body ends or is dropped, hands it to a writer thread through a bounded queue
//! with `try_send`. A full queue (a slow disk, a stdout pipe nobody reads) drops the line and
//! counts it in `ficus_access_log_dropped_total{reason="queue_full"}`: a request never waits
//! for the log. JSON is built on the writer thread. When off, the cost is one branch on
//! `Snapshot::access_log`. A file is opened again at its path when log rotation has renamed
//! or removed it (checked at most once a second by the writer: [`file`]), so logrotate's
//! default `create` works without a signal; SIGUSR1 ([`AccessLog::reopen`]) reopens it before
//! the next batch, as nginx does, for a `postrotate` that sends it.
//!
//! The writer follows the config: a swap with the same target keeps the running writer (see
//! `Shared::access_log_for`); a new target opens a new one, and the old writer's thread
//! ends once the last request holding it has logged. At exit the serving writer gets a
//! bounded moment ([`AccessLog::flush`]) to put out what is queued, the `DC` lines of requests
//! and the `SD` lines of opaque TCP connections cut by the drain timeout included; an older
//! writer's lines still queued then are lost.
//!
//! # Fields
//! HTTP (`"kind": "http"`): `time` (RFC 3339, UTC, when the request arrived), `direction`,
//! `trace_id` (from `traceparent`, else B3; `null` without a valid one), `request_id`,
//! `method`, `authority`, `path` (with the query, as received), `protocol`, `status`,
//! `response_flags`, `response_duration_ms` (to response headers), `duration_ms` (to the end
//! of the response body), `bytes_received` / `bytes_sent` (request / response body bytes),
//! `upstream` (the endpoint of the last try), `downstream` (the peer address),
//! `peer_identity` (inbound: the verified client SPIFFE ID), `service`, `backend`.
//!
//! TCP (`"kind": "tcp"`): `time`, `direction`, `listen`, `downstream`, `service`, `backend`,
//! `upstream`, `response_flags` (`UF` when the connect failed, `UH` without an endpoint, `SD`
//! when the sidecar exited with the connection open), `duration_ms`, `bytes_received` (from
//! the app), `bytes_sent` (to the app), so far when it was cut.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ficus_config::AccessLogTarget;
use http::header::{HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Extensions, Method, Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use serde_json::{json, Value};

use self::file::LogFile;
use super::metrics::{Direction, RequestMetrics};
use crate::body::{self, Body, BoxError};

mod file;

/// Lines waiting for the writer; past this they are dropped and counted.
const QUEUE: usize = 4096;

/// A running access-log writer: a bounded queue and the thread that drains it.
#[derive(Debug)]
pub struct AccessLog {
    target: AccessLogTarget,
    sender: SyncSender<Entry>,
    dropped: IntCounter,
    /// Set by [`AccessLog::reopen`], taken by the writer before its next batch. A flag rather
    /// than a message: a full queue would drop a message, and a reopen must not be lost.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens `target` (a file is created if absent and appended to) and starts its writer
    /// thread. `dropped` counts lines lost to a full queue, `write_failed` lines the target
    /// refused.
    pub fn open(
        target: &AccessLogTarget,
        dropped: IntCounter,
        write_failed: IntCounter,
    ) -> io::Result<Arc<Self>> {
        let out = match target {
            AccessLogTarget::Stdout => Output::Stream(Box::new(io::stdout())),
            AccessLogTarget::Stderr => Output::Stream(Box::new(io::stderr())),
            AccessLogTarget::File(path) => Output::File(LogFile::open(path)?),
        };
        Self::start(target.clone(), out, dropped, write_failed)
    }

    /// Starts the writer thread on `out`.
    fn start(
        target: AccessLogTarget,
        out: Output,
        dropped: IntCounter,
        write_failed: IntCounter,
    ) -> io::Result<Arc<Self>> {
        let (sender, receiver) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let requested = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("ficus-access-log".into())
            .spawn(move || write_lines(receiver, out, write_failed, &requested))?;
        Ok(Arc::new(Self {
            target,
            sender,
            dropped,
            reopen,
        }))
    }

    /// Where the lines go.
    pub fn target(&self) -> &AccessLogTarget {
        &self.target
    }

    /// Waits at most `within` for the writer to have written and flushed every line queued
    /// so far; whether it did. For the exit: the marker queued behind them may wait for room
    /// on a thread of its own, left behind if the writer is stuck.
    pub fn flush(&self, within: Duration) -> bool {
        let (ack, acked) = sync_channel(1);
        let marker = Entry::Flush(ack);
        let sent = match self.sender.try_send(marker) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(marker)) => {
                let sender = self.sender.clone();
                std::thread::Builder::new()
                    .name("ficus-access-log-flush".into())
                    .spawn(move || {
                        let _ = sender.send(marker);
                    })
                    .is_ok()
            }
        };
        sent && acked.recv_timeout(within).is_ok()
    }

    /// SIGUSR1: a file target is opened again at its path before the next batch, whatever
    /// the path names now (see [`file`]); false for stdout and stderr, which have nothing to
    /// reopen. Never waits: the writer is woken when the queue has room, and a full queue
    /// means it is busy and takes the request before its next batch anyway.
    pub fn reopen(&self) -> bool {
        if !matches!(self.target, AccessLogTarget::File(_)) {
            return false;
        }
        self.reopen.store(true, Ordering::Release);
        let _ = self.sender.try_send(Entry::Reopen);
        true
    }

    /// Queues a line without waiting; a full queue drops it (counted).
    fn send(&self, entry: Entry) {
        match self.sender.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Logs one opaque TCP connection.
    pub fn tcp(&self, entry: TcpEntry) {
        self.send(Entry::Tcp(entry));
    }
}

/// Most bytes of lines gathered before they are written.
const BATCH: usize = 64 * 1024;

/// The writer thread: writes lines as they come, gathered into batches (what the queue holds
/// at once, at most [`BATCH`] bytes), flushed whenever the queue runs empty. A batch that
/// cannot be written is lost whole, and every line in it is counted in `write_failed`. A
/// reopen (`reopen` set) is done before the next batch, or at once when the queue runs empty.
/// Ends when every sender is gone.
fn write_lines(
    receiver: Receiver<Entry>,
    mut out: Output,
    write_failed: IntCounter,
    reopen: &AtomicBool,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH);
    let mut lines = 0u64;
    let mut failing = false;
    let mut write = |batch: &mut Vec<u8>, lines: &mut u64| {
        if reopen.load(Ordering::Relaxed) && reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        if batch.is_empty() {
            return;
        }
        let written = out
            .follow_path()
            .and_then(|()| out.write_all(batch))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => failing = false,
            Err(error) => {
                write_failed.inc_by(*lines);
                if !failing {
                    tracing::warn!(%error, "writing the access log failed; lines are being lost");
                }
                failing = true;
            }
        }
        batch.clear();
        *lines = 0;
    };
    while let Ok(mut entry) = receiver.recv() {
        loop {
            match entry {
                Entry::Flush(ack) => {
                    // Everything queued before the marker is in the batch: out with it.
                    write(&mut batch, &mut lines);
                    let _ = ack.try_send(());
                }
                // Only a wake-up: `write` reopens before the next batch, or below when the
                // queue runs empty.
                Entry::Reopen => {}
                line => {
                    // Writing into a Vec cannot fail.
                    let _ = writeln!(batch, "{}", line.to_json());
                    lines += 1;
                    if batch.len() >= BATCH {
                        write(&mut batch, &mut lines);
                    }
                }
            }
            match receiver.try_recv() {
                Ok(next) => entry = next,
                Err(_) => break,
            }
        }
        write(&mut batch, &mut lines);
    }
}

/// Where the writer thread puts lines.
enum Output {
    /// stdout or stderr (in tests, any writer).
    Stream(Box<dyn Write + Send>),
    /// A file, opened again when log rotation has moved it away ([`file`]).
    File(LogFile),
}

impl Output {
    /// SIGUSR1: a file is opened again at its path ([`LogFile::reopen`]); a stream has
    /// nothing to reopen.
    fn reopen(&mut self) {
        match self {
            Self::Stream(_) => {}
            Self::File(file) => file.reopen(),
        }
    }

    /// Before a batch: a file follows its path (see [`LogFile::follow_path`]).
    fn follow_path(&mut self) -> io::Result<()> {
        match self {
            Self::Stream(_) => Ok(()),
            Self::File(file) => file.follow_path(),
        }
    }
}

// === impl Output ===

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stream(out) => out.write(bytes),
            Self::File(file) => file.write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Stream(out) => out.write_all(bytes),
            Self::File(file) => file.write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stream(out) => out.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

/// A line waiting for the writer.
#[derive(Debug)]
enum Entry {
    Http(Box<HttpEntry>),
    Tcp(TcpEntry),
    /// Not a line: the writer flushes what it has and acknowledges ([`AccessLog::flush`]).
    Flush(SyncSender<()>),
    /// Not a line: wakes the writer for a reopen ([`AccessLog::reopen`]).
    Reopen,
}

impl Entry {
    fn to_json(&self) -> Value {
        match self {
            Self::Http(entry) => entry.to_json(),
            Self::Tcp(entry) => entry.to_json(),
            Self::Flush(_) | Self::Reopen => Value::Null,
        }
    }
}

/// What one HTTP exchange logs.
#[derive(Debug)]
struct HttpEntry {
    time: SystemTime,
    direction: Direction,
    trace_id: Option<String>,
    request_id: Option<HeaderValue>,
    method: Method,
    authority: Option<HeaderValue>,
    path: Option<PathAndQuery>,
    protocol: Version,
    downstream: SocketAddr,
    peer_identity: Option<HeaderValue>,
    status: u16,
    flags: &'static str,
    response_duration: Duration,
    duration: Duration,
    bytes_received: u64,
    bytes_sent: u64,
    upstream: Option<SocketAddr>,
    service: Arc<str>,
    backend: Arc<str>,
}

impl HttpEntry {
    fn to_json(&self) -> Value {
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        json!({
            "time": rfc3339(self.time),
            "kind": "http",
            "direction": self.direction.as_str(),
            "trace_id": self.trace_id,
            "request_id": text(&self.request_id),
            "method": self.method.as_str(),
            "authority": text(&self.authority),
            "path": self.path.as_ref().map(PathAndQuery::as_str),
            "protocol": format!("{:?}", self.protocol),
            "status": self.status,
            "response_flags": self.flags,
            "response_duration_ms": millis(self.response_duration),
            "duration_ms": millis(self.duration),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "upstream": self.upstream.map(|a| a.to_string()),
            "downstream": self.downstream.to_string(),
            "peer_identity": text(&self.peer_identity),
            "service": &*self.service,
            "backend": &*self.backend,
        })
    }
}

/// What one opaque TCP connection logs.
#[derive(Debug)]
pub struct TcpEntry {
    /// When it was accepted.
    pub time: SystemTime,
    /// The local listener.
    pub listen: SocketAddr,
    /// The app's address.
    pub downstream: SocketAddr,
    /// `destination_service`.
    pub service: String,
    /// `destination_backend` (`none` without one).
    pub backend: String,
    /// The endpoint connected to, if any.
    pub upstream: Option<SocketAddr>,
    /// `""`, `UF` when the connect failed, `UH` without an endpoint, `SD` when the sidecar
    /// exited with the connection open.
    pub flags: &'static str,
    /// Accept to close.
    pub duration: Duration,
    /// Bytes from the app.
    pub bytes_received: u64,
    /// Bytes to the app.
    pub bytes_sent: u64,
}

impl TcpEntry {
    fn to_json(&self) -> Value {
        json!({
            "time": rfc3339(self.time),
            "kind": "tcp",
            "direction": Direction::Outbound.as_str(),
            "listen": self.listen.to_string(),
            "downstream": self.downstream.to_string(),
            "service": self.service,
            "backend": self.backend,
            "upstream": self.upstream.map(|a| a.to_string()),
            "response_flags": self.flags,
            "duration_ms": millis(self.duration),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
        })
    }
}

/// What the request path fills in after the head was read: the upstream endpoint and the
/// request body bytes. Travels in the request's extensions (only when logging is on).
#[derive(Debug, Default)]
pub struct Exchange {
    /// The endpoint of the last try.
    upstream: Mutex<Option<SocketAddr>>,
    /// `(service, backend)` once routed, for a line whose response never came.
    target: OnceLock<(Arc<str>, Arc<str>)>,
    received: AtomicU64,
}

/// The request-path handle of [`Exchange`], as stored in request extensions.
#[derive(Debug, Clone, Default)]
pub struct ExchangeSlot(Arc<Exchange>);

/// Records the endpoint of the first try and the (service, backend) it belongs to, when the
/// request is being logged.
pub fn note_upstream(extensions: &Extensions, upstream: SocketAddr, metrics: &RequestMetrics) {
    if let Some(slot) = extensions.get::<ExchangeSlot>() {
        slot.set_upstream(upstream);
        let _ = slot
            .0
            .target
            .set((Arc::clone(metrics.service()), Arc::clone(metrics.backend())));
    }
}

/// Records the endpoint a retry goes to, when the request is being logged: the line names
/// the last try's endpoint (as Envoy's `UPSTREAM_HOST`).
pub fn note_retry(extensions: &Extensions, upstream: SocketAddr) {
    if let Some(slot) = extensions.get::<ExchangeSlot>() {
        slot.set_upstream(upstream);
    }
}

impl ExchangeSlot {
    fn set_upstream(&self, upstream: SocketAddr) {
        if let Ok(mut last) = self.0.upstream.lock() {
            *last = Some(upstream);
        }
    }
}

/// Records request body bytes read at once (a body buffered for retries).
pub fn note_received(extensions: &Extensions, bytes: usize) {
    if let Some(slot) = extensions.get::<ExchangeSlot>() {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        slot.0.received.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Counts the request body's bytes as they stream, when the request is being logged.
pub fn count_received(extensions: &Extensions, body: Body) -> Body {
    match extensions.get::<ExchangeSlot>() {
        None => body,
        Some(slot) => body::boxed(CountedRequest {
            inner: body,
            slot: slot.clone(),
        }),
    }
}

/// A request body that adds its data bytes to the exchange.
struct CountedRequest {
    inner: Body,
    slot: ExchangeSlot,
}

impl HttpBody for CountedRequest {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let bytes = u64::try_from(data.len()).unwrap_or(u64::MAX);
                self.slot.0.received.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP request being logged, from its head to the end of its response body. Dropped
/// before [`Pending::finish`] (the downstream went away while waiting), it logs status 0 with
/// flag `DC`, or `SD` when the sidecar cut it at the end of its drain.
#[derive(Debug)]
pub struct Pending {
    log: Arc<AccessLog>,
    entry: Option<Box<HttpEntry>>,
    started: Instant,
    exchange: ExchangeSlot,
}

impl Pending {
    /// Starts a line for `request` when logging is on (`log` is `Some`): copies the head's
    /// fields and puts an [`ExchangeSlot`] into its extensions.
    pub fn begin<B>(
        log: Option<&Arc<AccessLog>>,
        request: &mut Request<B>,
        direction: Direction,
        downstream: SocketAddr,
        peer_identity: Option<&HeaderValue>,
    ) -> Option<Self> {
        let log = log?;
        let exchange = ExchangeSlot::default();
        request.extensions_mut().insert(exchange.clone());
        let headers = request.headers();
        // Copies, not clones: a clone shares the buffer the whole request head was read into,
        // and a queue of lines waiting for a slow writer would hold thousands of those.
        let owned = |value: &HeaderValue| {
            HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())).ok()
        };
        let authority = match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => headers.get(http::header::HOST).and_then(owned),
        };
        let entry = HttpEntry {
            time: SystemTime::now(),
            direction,
            trace_id: trace_id(headers),
            request_id: headers.get("x-request-id").and_then(owned),
            method: request.method().clone(),
            authority,
            path: request.uri().path_and_query().and_then(|path| {
                PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(path.as_str().as_bytes()))
                    .ok()
            }),
            protocol: request.version(),
            downstream,
            peer_identity: peer_identity.cloned(),
            status: 0,
            flags: "",
            response_duration: Duration::ZERO,
            duration: Duration::ZERO,
            bytes_received: 0,
            bytes_sent: 0,
            upstream: None,
            service: Arc::from(""),
            backend: Arc::from(""),
        };
        Some(Self {
            log: Arc::clone(log),
            entry: Some(Box::new(entry)),
            started: Instant::now(),
            exchange,
        })
    }

    /// Completes the line with the response head; it is sent when the body ends, fails or is
    /// dropped.
    pub fn finish(
        mut self,
        response: Response<Body>,
        metrics: &RequestMetrics,
        flags: &'static str,
    ) -> Response<Body> {
        if let Some(entry) = &mut self.entry {
            entry.status = response.status().as_u16();
            entry.flags = flags;
            entry.response_duration = self.started.elapsed();
            entry.service = Arc::clone(metrics.service());
            entry.backend = Arc::clone(metrics.backend());
        }
        response.map(|inner| {
            body::boxed(LoggedBody {
                inner,
                pending: Some(self),
            })
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.duration = self.started.elapsed();
        if entry.status == 0 {
            entry.flags = crate::drain::unfinished_flag();
            if let Some((service, backend)) = self.exchange.0.target.get() {
                entry.service = Arc::clone(service);
                entry.backend = Arc::clone(backend);
            }
        }
        entry.bytes_received = self.exchange.0.received.load(Ordering::Relaxed);
        entry.upstream = self.exchange.0.upstream.lock().ok().and_then(|last| *last);
        self.log.send(Entry::Http(entry));
    }
}

/// Names the trace of this sidecar's span in the line (when tracing is on and the request is
/// logged): the caller's trace, or the new one started here when the caller sent none.
pub fn set_trace_id(pending: &mut Option<Pending>, trace_id: Option<[u8; 16]>) {
    let (Some(pending), Some(trace_id)) = (pending, trace_id) else {
        return;
    };
    if let Some(entry) = &mut pending.entry {
        let mut hex = String::with_capacity(32);
        for byte in trace_id {
            let _ = write!(hex, "{byte:02x}");
        }
        entry.trace_id = Some(hex);
    }
}

/// Completes `pending` (when the request is being logged) with the response head; without
/// one the response passes through untouched.
pub fn finish(
    pending: Option<Pending>,
    response: Response<Body>,
    metrics: &RequestMetrics,
    flags: &'static str,
) -> Response<Body> {
    match pending {
        None => response,
        Some(pending) => pending.finish(response, metrics, flags),
    }
}

/// A response body that sends its request's line when it ends, fails or is dropped.
struct LoggedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                let end = self.inner.is_end_stream();
                if let Some(entry) = self.pending.as_mut().and_then(|p| p.entry.as_mut()) {
                    entry.bytes_sent += u64::try_from(len).unwrap_or(u64::MAX);
                }
                if end {
                    self.pending = None;
                }
            }
            // The end, or an error: the line is complete.
            Poll::Ready(_) => self.pending = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The trace id of the incoming request: W3C `traceparent`, else B3 (`x-b3-traceid` or the
/// single `b3` header); `None` when absent or malformed (a 64-bit B3 id is padded to 128).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let valid = |id: &str, lengths: &[usize]| {
        lengths.contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && id.bytes().any(|b| b != b'0')
    };
    let padded = |id: &str| format!("{id:0>32}");
    if let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut fields = value.split('-');
        let (version, id, parent, flags) =
            (fields.next(), fields.next(), fields.next(), fields.next());
        if let (Some(version), Some(id), Some(parent), Some(flags)) = (version, id, parent, flags) {
            let version_ok = version.len() == 2
                && version != "ff"
                && version.bytes().all(|b| b.is_ascii_hexdigit())
                && (version != "00" || fields.next().is_none());
            if version_ok && valid(id, &[32]) && valid(parent, &[16]) && flags.len() == 2 {
                return Some(id.to_owned());
            }
        }
        return None;
    }
    if let Some(id) = headers.get("x-b3-traceid").and_then(|v| v.to_str().ok()) {
        return valid(id, &[16, 32]).then(|| padded(id));
    }
    let single = headers.get("b3").and_then(|v| v.to_str().ok())?;
    let id = single.split('-').next()?;
    valid(id, &[16, 32]).then(|| padded(id))
}

/// Milliseconds with microsecond precision.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

/// `2026-11-25T20:15:03.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// A line waiting in the queue holds copies of the head's fields, not the buffer the
    /// head was read into (which hyper shares out as slices).
    #[test]
    fn a_pending_line_does_not_hold_the_request_head() {
        let counter = || IntCounter::new("c", "c").unwrap();
        let sink = Output::Stream(Box::new(io::sink()));
        let log = AccessLog::start(AccessLogTarget::Stdout, sink, counter(), counter()).unwrap();
        let head = Bytes::from(format!("/path?q=1{}", "x".repeat(64 * 1024)).into_bytes());
        let uri = http::Uri::from_maybe_shared(head.slice(..9)).unwrap();
        let mut request = Request::builder().uri(uri).body(()).unwrap();
        for (name, range) in [("host", 9..20), ("x-request-id", 20..40)] {
            let value = HeaderValue::from_maybe_shared(head.slice(range)).unwrap();
            request.headers_mut().insert(name, value);
        }
        let pending = Pending::begin(
            Some(&log),
            &mut request,
            Direction::Inbound,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            None,
        );
        assert!(pending.is_some());
        drop(request);
        assert!(head.is_unique(), "the line holds no slice of the head");
        drop(pending);
    }

    #[test]
    fn trace_id_from_traceparent_and_b3() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = format!("00-{id}-00f067aa0ba902b7-01");
        let mut map = HeaderMap::new();
        map.insert("traceparent", HeaderValue::from_str(&parent).unwrap());
        assert_eq!(trace_id(&map).as_deref(), Some(id));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut map = HeaderMap::new();
            map.insert("traceparent", HeaderValue::from_static(bad));
            assert_eq!(trace_id(&map), None, "{bad}");
        }
        let b3 = headers(&[("x-b3-traceid", "a3ce929d0e0e4736")]);
        assert_eq!(
            trace_id(&b3).as_deref(),
            Some("0000000000000000a3ce929d0e0e4736")
        );
        let single = headers(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")]);
        assert_eq!(trace_id(&single).as_deref(), Some(id));
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }

    /// Blocks its first write until released, like a stdout pipe nobody reads.
    struct Gated(Option<Receiver<()>>, std::sync::mpsc::SyncSender<Vec<u8>>);

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if let Some(gate) = self.0.take() {
                let _ = gate.recv();
            }
            let _ = self.1.try_send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A target that refuses every write (a full disk).
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("no space left on device"))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("no space left on device"))
        }
    }

    #[test]
    fn every_line_a_failed_write_loses_is_counted() {
        let (sender, receiver) = sync_channel(QUEUE);
        for bytes in 0..200 {
            sender.send(Entry::Tcp(tcp_entry(bytes))).unwrap();
        }
        drop(sender);
        let failed = IntCounter::new("failed", "failed").unwrap();
        let reopen = AtomicBool::new(false);
        write_lines(
            receiver,
            Output::Stream(Box::new(Full)),
            failed.clone(),
            &reopen,
        );
        assert_eq!(failed.get(), 200);
    }

    fn tcp_entry(bytes: u64) -> TcpEntry {
        TcpEntry {
            time: UNIX_EPOCH,
            listen: "127.0.0.1:15432".parse().unwrap(),
            downstream: "127.0.0.1:40000".parse().unwrap(),
            service: "shop/db".into(),
            backend: "shop/db".into(),
            upstream: Some("127.0.0.1:5432".parse().unwrap()),
            flags: "",
            duration: Duration::from_micros(1500),
            bytes_received: bytes,
            bytes_sent: 7,
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_sender_and_drops_are_counted() {
        let (release, gate) = sync_channel(1);
        let (lines, written) = sync_channel(QUEUE);
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let failed = IntCounter::new("failed", "failed").unwrap();
        let log = AccessLog::start(
            AccessLogTarget::Stdout,
            Output::Stream(Box::new(Gated(Some(gate), lines))),
            dropped.clone(),
            failed.clone(),
        )
        .unwrap();
        // More than the queue plus what the writer's 64 KiB buffer takes before it blocks.
        let total = QUEUE + 1000;
        for i in 0..total {
            log.tcp(tcp_entry(i as u64));
        }
        let lost = usize::try_from(dropped.get()).unwrap();
        assert!(lost > 0 && lost <= 1000, "{lost} dropped");
        release.send(()).unwrap();
        // Every line is either written, whole, or counted as dropped.
        let mut text = Vec::new();
        while text.iter().filter(|b| **b == b'\n').count() + lost < total {
            let chunk = written
                .recv_timeout(Duration::from_secs(10))
                .expect("the writer resumes once released");
            text.extend(chunk);
        }
        let lines: Vec<Value> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len() + lost, total);
        assert_eq!(lines[0]["kind"], "tcp");
        assert_eq!(lines[0]["bytes_received"], 0);
        assert_eq!(lines[0]["duration_ms"], 1.5);
        assert_eq!(lines[0]["upstream"], "127.0.0.1:5432");
        assert_eq!(failed.get(), 0);
    }

    /// Log rotation renames the file between two batches: the first stays in the renamed
    /// file, the second goes to a new file at the path, and no line is lost or doubled.
    #[test]
    fn a_file_renamed_by_log_rotation_is_followed_by_a_new_one() {
        let dir = std::env::temp_dir().join(format!("ficus-access-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (path, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
        let failed = IntCounter::new("failed", "failed").unwrap();
        let out = Output::File(file::LogFile::open_checking_every(&path, Duration::ZERO).unwrap());
        let counter = IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::start(
            AccessLogTarget::File(path.clone()),
            out,
            counter,
            failed.clone(),
        )
        .unwrap();
        let bytes = |file: &std::path::Path| -> Vec<u64> {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["bytes_received"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        for i in 0..3 {
            log.tcp(tcp_entry(i));
        }
        assert!(log.flush(Duration::from_secs(10)));
        std::fs::rename(&path, &rotated).unwrap();
        for i in 3..5 {
            log.tcp(tcp_entry(i));
        }
        assert!(log.flush(Duration::from_secs(10)));
        let (old, new) = (bytes(&rotated), bytes(&path));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(old, [0, 1, 2]);
        assert_eq!(new, [3, 4]);
        assert_eq!(failed.get(), 0);
    }

    /// SIGUSR1 while the queue is full: the wake-up message cannot be queued, yet the lines
    /// after the request go to a new file at the path (and so do those queued before it, as
    /// the reopen comes before the next batch).
    #[test]
    fn a_reopen_asked_for_while_the_queue_is_full_is_not_lost() {
        let dir = std::env::temp_dir().join(format!("ficus-access-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (path, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
        // The writer never compares the path with the open file by itself here.
        let every = Duration::from_secs(3600);
        let out = Output::File(file::LogFile::open_checking_every(&path, every).unwrap());
        let (sender, receiver) = sync_channel(QUEUE);
        let log = AccessLog {
            target: AccessLogTarget::File(path.clone()),
            sender,
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
            reopen: Arc::new(AtomicBool::new(false)),
        };
        for i in 0..QUEUE {
            log.tcp(tcp_entry(i as u64));
        }
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        assert_eq!(log.dropped.get(), 0, "every line queued");
        let AccessLog { sender, reopen, .. } = log;
        drop(sender);
        let failed = IntCounter::new("failed", "failed").unwrap();
        write_lines(receiver, out, failed.clone(), &reopen);
        let (old, new) = (
            std::fs::read_to_string(&rotated).unwrap_or_default(),
            std::fs::read_to_string(&path).unwrap_or_default(),
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(old, "", "nothing written to the renamed file");
        assert_eq!(new.lines().count(), QUEUE);
        assert_eq!(failed.get(), 0);
    }

    #[test]
    fn a_fifo_is_refused_instead_of_blocking_the_swap() {
        let path = std::env::temp_dir().join(format!("ficus-access-fifo-{}", std::process::id()));
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: mkfifo unavailable");
            return;
        }
        let counter = || IntCounter::new("c", "c").unwrap();
        let opened = AccessLog::open(&AccessLogTarget::File(path.clone()), counter(), counter());
        let _ = std::fs::remove_file(&path);
        let error = opened.expect_err("a FIFO is not a log file");
        assert!(error.to_string().contains("FIFO"), "{error}");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_647_599, 999), "2026-11-25T22:59:59.999Z");
    }
}
