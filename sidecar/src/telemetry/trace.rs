//! Distributed tracing: trace context propagation (W3C Trace Context and B3) and one span per
//! request (CLIENT on the outbound listener, SERVER on the inbound one), exported over
//! OTLP/gRPC to `Mesh.spec.tracing.otlpEndpoint`.
//!
//! # Per request
//! [`Span::start`] reads the trace headers once. With tracing configured, the sidecar takes
//! part in the trace: its span is a child of the caller's context (a new trace when there is
//! none or it is malformed), and [`Span::inject`] writes the sidecar's own span as the parent
//! into the upstream request, in every format the request arrived with (`traceparent`
//! always; `x-b3-*` and `b3` when received); `tracestate` passes through with a valid
//! `traceparent` and is dropped otherwise. Sampling: a caller's decision is kept (sampled
//! stays sampled, not-sampled stays not-sampled, B3 debug means sampled); without one,
//! `samplingPercent` decides; `x-ficus-force-trace` (any value) samples regardless and is
//! forwarded unchanged, so every later hop traces too even where an app drops the sampled
//! flag. Unsampled requests still carry a context (`sampled=0`) but record nothing.
//!
//! Without `Mesh.spec.tracing` the sidecar does not take part: valid headers pass through
//! untouched and nothing is allocated; a malformed header is still replaced (the caller's
//! valid context if another format had one, else a fresh unsampled one) and never forwarded
//! broken.
//!
//! # Export
//! Finished sampled spans go through a bounded queue ([`export::SpanSink`]) to an exporter
//! thread; a full queue drops the span (`ficus_trace_spans_dropped_total`), so a slow or
//! absent collector never makes a request wait. The endpoint follows config swaps.

pub mod export;
pub mod propagation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, Version};

use propagation::{extract, random_ids, Extracted, Formats, Outgoing, SpanId, TraceId};

pub use export::SpanSink;

pub use propagation::X_FICUS_FORCE_TRACE;

/// `Mesh.spec.tracing`, compiled once per config swap.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC collector URL.
    pub endpoint: Arc<str>,
    /// Sample when a uniform random `u64` is below this (`None`: always).
    threshold: Option<u64>,
    /// `ficus.service` of inbound (SERVER) spans: `namespace/workload`.
    inbound_service: Arc<str>,
}

impl TraceSettings {
    /// Settings from the Mesh's `tracing`; `inbound_service` labels SERVER spans.
    pub fn new(tracing: &ficus_config::Tracing, inbound_service: String) -> Self {
        let percent = tracing.sampling_percent.clamp(0.0, 100.0);
        let threshold = if percent >= 100.0 {
            None
        } else {
            // Truncation is fine: a resolution of 2^-64 is far below any configured share.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some((percent / 100.0 * u64::MAX as f64) as u64)
        };
        // Validated: `http://` or `https://`.
        let endpoint = Arc::from(tracing.otlp_endpoint.as_str());
        Self {
            endpoint,
            threshold,
            inbound_service: Arc::from(inbound_service),
        }
    }

    /// A fresh sampling decision by `samplingPercent`.
    fn draw(&self) -> bool {
        match self.threshold {
            None => true,
            Some(0) => false,
            Some(threshold) => propagation::random_u64() < threshold,
        }
    }
}

/// Span kind: which listener saw the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Outbound: the local app's request to the mesh.
    Client,
    /// Inbound: a peer's request to the local app.
    Server,
}

/// A sampled span's data, filled in as the request goes and sent to the exporter at the end.
///
/// Built for a cheap request path: one allocation for the record and one for the request's
/// text (path and host together); labels, route and identities are shared (`Arc`), not
/// copied. The exporter thread turns it into an OTLP span.
#[derive(Debug)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The caller's span, if it named one.
    pub parent: Option<SpanId>,
    /// CLIENT or SERVER.
    pub kind: Kind,
    /// Wall-clock start.
    pub start: SystemTime,
    /// Until the response headers were sent back.
    pub duration: Duration,
    /// `http.request.method`.
    pub method: Method,
    /// `url.path`, followed by the `server.address` host when the request named one.
    text: Text,
    /// Where the host starts in `text` (`None`: no authority).
    host_at: Option<usize>,
    /// `server.port`.
    pub server_port: Option<u16>,
    /// `network.protocol.version`.
    pub version: Version,
    /// `client.address`: the downstream peer.
    pub client: SocketAddr,
    /// `http.route`: the HTTPRoute (`namespace/name`) that matched.
    pub route: Option<Arc<str>>,
    /// `ficus.service`.
    pub service: Option<Arc<str>>,
    /// `ficus.backend` (SERVER spans: always `app`).
    pub backend: Option<Arc<str>>,
    /// `network.peer.address`/`port`: the upstream endpoint (CLIENT spans).
    pub endpoint: Option<SocketAddr>,
    /// `ficus.peer.identity`: the verified client (SERVER) or the required server (CLIENT).
    pub peer_identity: Option<PeerIdentity>,
    /// Retries sent (`http.request.resend_count`, when any).
    pub retries: u32,
    /// `http.response.status_code`.
    pub status: u16,
    /// `ficus.response_flags`.
    pub flags: &'static str,
    /// `rpc.grpc.status_code`: the status a gRPC call ended with.
    pub grpc_status: Option<u8>,
}

impl SpanRecord {
    /// `url.path`, and `server.address` (the host the request named, if any).
    pub fn path_and_host(&self) -> (&str, Option<&str>) {
        let text = self.text.as_str();
        match self.host_at {
            Some(at) => match (text.get(..at), text.get(at..)) {
                (Some(path), Some(host)) => (path, Some(host)),
                _ => (text, None),
            },
            None => (text, None),
        }
    }
}

/// Bytes of path and host a record holds itself; longer ones take an allocation.
const INLINE_TEXT: usize = 96;

/// Longest `url.path` and `server.address` a span records (each).
const MAX_SPAN_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes, at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A request's path and host, one after the other: inline when short (the usual case), so
/// that recording a span allocates only the record.
#[derive(Debug)]
enum Text {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(Box<str>),
}

impl Text {
    fn new(path: &str, host: &str) -> Self {
        let len = path.len() + host.len();
        match u8::try_from(len) {
            Ok(short) if len <= INLINE_TEXT => {
                let mut bytes = [0u8; INLINE_TEXT];
                bytes[..path.len()].copy_from_slice(path.as_bytes());
                bytes[path.len()..len].copy_from_slice(host.as_bytes());
                Self::Inline { len: short, bytes }
            }
            _ => {
                let mut text = String::with_capacity(len);
                text.push_str(path);
                text.push_str(host);
                Self::Heap(text.into_boxed_str())
            }
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Two `&str`s back to back: always UTF-8.
            Self::Inline { len, bytes } => bytes
                .get(..usize::from(*len))
                .and_then(|text| std::str::from_utf8(text).ok())
                .unwrap_or_default(),
            Self::Heap(text) => text,
        }
    }
}

/// A peer's SPIFFE ID as the request path has it, shared rather than copied.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// The identity an outbound endpoint must present (from the config).
    Named(Arc<str>),
    /// The verified client's identity (inbound), as the listener put it in a header value.
    Verified(HeaderValue),
}

/// The trace side of one request.
#[derive(Debug)]
pub struct Span {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Tracing off and the headers are fine: they pass through.
    Off,
    /// Tracing off but a trace header is malformed: write a sound context instead.
    Repair(Outgoing, Formats, bool),
    /// Tracing on: our span's context, and its record when sampled.
    On {
        out: Outgoing,
        formats: Formats,
        tracestate_ok: bool,
        record: Option<Box<SpanRecord>>,
    },
}

impl Span {
    /// Reads the trace headers of `request` and starts this sidecar's span (with
    /// `settings`, i.e. tracing configured) or only checks the headers (without).
    pub fn start<B>(
        settings: Option<&TraceSettings>,
        kind: Kind,
        request: &Request<B>,
        client: SocketAddr,
    ) -> Self {
        let headers = request.headers();
        let extracted = extract(headers);
        let Some(settings) = settings else {
            if !extracted.malformed {
                return Self { state: State::Off };
            }
            let out = repaired(&extracted);
            return Self {
                state: State::Repair(out, extracted.formats, extracted.tracestate_ok),
            };
        };
        let sampled = extracted.forced
            || extracted.debug
            || extracted.sampled.unwrap_or_else(|| settings.draw());
        let (trace_id, span_id) = match extracted.parent {
            Some(parent) => (parent.trace_id, SpanId::random()),
            None => random_ids(),
        };
        let out = Outgoing {
            trace_id,
            span_id,
            parent_span_id: extracted.parent.map(|p| p.span_id),
            sampled,
            debug: extracted.debug,
        };
        let record = sampled.then(|| {
            // Cut to a bound: a caller may force sampling (`x-ficus-force-trace`) with a path
            // or Host as large as the header limits allow, and the export queue holds
            // thousands of records.
            let path = clip(request.uri().path(), MAX_SPAN_TEXT);
            let authority = server_address(request);
            let host = clip(authority.map_or("", |(host, _)| host), MAX_SPAN_TEXT);
            Box::new(SpanRecord {
                trace_id: out.trace_id,
                span_id: out.span_id,
                parent: out.parent_span_id,
                kind,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                method: request.method().clone(),
                text: Text::new(path, host),
                host_at: authority.map(|_| path.len()),
                server_port: authority.and_then(|(_, port)| port),
                version: request.version(),
                client,
                route: None,
                service: (kind == Kind::Server).then(|| Arc::clone(&settings.inbound_service)),
                backend: None,
                endpoint: None,
                peer_identity: None,
                retries: 0,
                status: 0,
                flags: "",
                grpc_status: None,
            })
        });
        Self {
            state: State::On {
                out,
                formats: extracted.formats,
                tracestate_ok: extracted.tracestate_ok,
                record,
            },
        }
    }

    /// Writes the context to send on into the upstream request's `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        match &self.state {
            State::Off => {}
            State::Repair(out, formats, tracestate_ok) => {
                out.inject(headers, *formats, *tracestate_ok);
            }
            State::On {
                out,
                formats,
                tracestate_ok,
                ..
            } => out.inject(headers, *formats, *tracestate_ok),
        }
    }

    /// The trace id sent on, when this sidecar decides it: its own span's (tracing on), or
    /// the sound context written in place of malformed headers (tracing off). `None` when the
    /// caller's headers pass on as they are.
    pub fn trace_id(&self) -> Option<[u8; 16]> {
        match &self.state {
            State::Off => None,
            State::Repair(out, ..) | State::On { out, .. } => Some(out.trace_id.0),
        }
    }

    /// This sidecar's span context when it takes part in the trace.
    pub fn context(&self) -> Option<&Outgoing> {
        match &self.state {
            State::On { out, .. } => Some(out),
            _ => None,
        }
    }

    fn record(&mut self) -> Option<&mut SpanRecord> {
        match &mut self.state {
            State::On {
                record: Some(record),
                ..
            } => Some(record),
            _ => None,
        }
    }

    /// Whether this span is recorded (sampled, tracing on): callers skip work otherwise.
    pub fn is_recording(&self) -> bool {
        matches!(
            self.state,
            State::On {
                record: Some(_),
                ..
            }
        )
    }

    /// The matched HTTPRoute.
    pub fn set_route(&mut self, route: Option<&Arc<str>>) {
        if let Some(record) = self.record() {
            record.route = route.cloned();
        }
    }

    /// The destination service label (`namespace/name`).
    pub fn set_service(&mut self, label: &Arc<str>) {
        if let Some(record) = self.record() {
            record.service = Some(Arc::clone(label));
        }
    }

    /// The chosen Backend label (`namespace/name`).
    pub fn set_backend(&mut self, label: &Arc<str>) {
        if let Some(record) = self.record() {
            record.backend = Some(Arc::clone(label));
        }
    }

    /// The upstream endpoint (the first one tried).
    pub fn set_endpoint(&mut self, address: SocketAddr) {
        if let Some(record) = self.record() {
            record.endpoint = Some(address);
        }
    }

    /// The peer's identity: the verified client (inbound) or the server the endpoint must be
    /// (outbound, mTLS).
    pub fn set_peer_identity(&mut self, identity: Option<PeerIdentity>) {
        if let Some(record) = self.record() {
            record.peer_identity = identity;
        }
    }

    /// Retries sent.
    pub fn set_retries(&mut self, retries: u32) {
        if let Some(record) = self.record() {
            record.retries = retries;
        }
    }

    /// Ends a span whose request was given up before its response (the client went away, or
    /// the drain was cut): status 0 and flag `DC` (or `SD`), handed to the exporter like any
    /// other.
    fn abandon(self, sink: &SpanSink, elapsed: Duration) {
        if let State::On {
            record: Some(mut record),
            ..
        } = self.state
        {
            record.status = 0;
            record.flags = crate::drain::unfinished_flag();
            record.duration = elapsed;
            sink.submit(*record);
        }
    }

    /// Ends the span with the response sent back and hands it to the exporter (sampled spans
    /// only; never waits). A gRPC response that tells its status in its headers records it.
    pub fn finish<B>(
        self,
        sink: &SpanSink,
        response: &Response<B>,
        flags: &'static str,
        elapsed: Duration,
    ) {
        if let Some(mut record) = self.ended(response, flags) {
            if crate::policy::grpc::is_grpc(response.headers()) {
                record.grpc_status =
                    crate::policy::grpc::status(response.status(), response.headers());
            }
            record.duration = elapsed;
            sink.submit(*record);
        }
    }

    /// The record with the response head's status and flags (sampled spans only).
    fn ended<B>(self, response: &Response<B>, flags: &'static str) -> Option<Box<SpanRecord>> {
        match self.state {
            State::On {
                record: Some(mut record),
                ..
            } => {
                record.status = response.status().as_u16();
                record.flags = flags;
                Some(record)
            }
            _ => None,
        }
    }
}

/// The span of a gRPC call whose status comes at the end of its response body (trailers): it
/// ends when [`AwaitingStatus::finish`] is given that status, so that its duration covers the
/// whole call and a failing call is marked as one (HTTP says 200).
#[derive(Debug)]
pub struct AwaitingStatus {
    record: Box<SpanRecord>,
    sink: Arc<SpanSink>,
    started: Instant,
}

impl AwaitingStatus {
    /// Ends the span with the call's gRPC status.
    pub fn finish(mut self, code: u8) {
        self.record.grpc_status = Some(code);
        self.record.duration = self.started.elapsed();
        self.sink.submit(*self.record);
    }
}

/// A request's [`Span`] that is still exported if the request is dropped before it finishes
/// (hyper drops the request's future when the client goes away): as abandoned, flag `DC`,
/// like the request's metrics and access-log line. Without it, the spans of requests the
/// client gave up on (the slow ones people trace) would vanish, and the next hop's span
/// would point to a parent never seen.
#[derive(Debug)]
pub struct Finishing<'a> {
    span: Span,
    sink: &'a Arc<SpanSink>,
    started: Instant,
}

impl<'a> Finishing<'a> {
    /// Watches `span`, of a request that arrived at `started`, exported to `sink`.
    pub fn new(span: Span, sink: &'a Arc<SpanSink>, started: Instant) -> Self {
        Self {
            span,
            sink,
            started,
        }
    }

    /// Ends the span with the response sent back ([`Span::finish`]).
    pub fn finish<B>(mut self, response: &Response<B>, flags: &'static str, elapsed: Duration) {
        let span = std::mem::replace(&mut self.span, Span { state: State::Off });
        span.finish(self.sink, response, flags, elapsed);
    }

    /// For a gRPC response whose status will come in its trailers: the span, to be ended
    /// with that status (`None`: not sampled, nothing to record).
    pub fn await_status<B>(
        mut self,
        response: &Response<B>,
        flags: &'static str,
    ) -> Option<AwaitingStatus> {
        let span = std::mem::replace(&mut self.span, Span { state: State::Off });
        let record = span.ended(response, flags)?;
        Some(AwaitingStatus {
            record,
            sink: Arc::clone(self.sink),
            started: self.started,
        })
    }
}

impl std::ops::Deref for Finishing<'_> {
    type Target = Span;

    fn deref(&self) -> &Span {
        &self.span
    }
}

impl std::ops::DerefMut for Finishing<'_> {
    fn deref_mut(&mut self) -> &mut Span {
        &mut self.span
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        let span = std::mem::replace(&mut self.span, Span { state: State::Off });
        span.abandon(self.sink, self.started.elapsed());
    }
}

/// Tracing off, malformed headers: the caller's valid context (from another format) passes
/// on as it was; without one, a fresh unsampled context.
fn repaired(extracted: &Extracted) -> Outgoing {
    match extracted.parent {
        Some(parent) => Outgoing {
            trace_id: parent.trace_id,
            span_id: parent.span_id,
            parent_span_id: None,
            sampled: extracted.sampled.unwrap_or(false),
            debug: extracted.debug,
        },
        None => Outgoing {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            sampled: extracted.sampled.unwrap_or(false),
            debug: extracted.debug,
        },
    }
}

/// The authority the request named (absolute URI or `:authority`, else `Host`) as host and
/// port.
fn server_address<B>(request: &Request<B>) -> Option<(&str, Option<u16>)> {
    let authority = match request.uri().authority() {
        // Host and port only: never the userinfo of `http://user:secret@host/`.
        Some(authority) => return Some((authority.host(), authority.port_u16())),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    // `host:port`, `[v6]:port`, or no port at all (`[::1]` has colons but no port).
    Some(match authority.rsplit_once(':') {
        Some((host, port)) if !port.ends_with(']') => (host, port.parse().ok()),
        _ => (authority, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(percent: f64) -> TraceSettings {
        TraceSettings::new(
            &ficus_config::Tracing {
                otlp_endpoint: "http://127.0.0.1:4317".into(),
                sampling_percent: percent,
            },
            "shop/web".into(),
        )
    }

    fn request(pairs: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder()
            .uri("/a/b?c")
            .header("host", "payments:8080");
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_server_address_never_carries_userinfo() {
        let s = settings(100.0);
        let request = Request::builder()
            .uri("http://user:secret@payments:8080/x")
            .body(())
            .unwrap();
        let span = Span::start(Some(&s), Kind::Client, &request, PEER);
        let record = match span.state {
            State::On { record, .. } => record.unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(record.path_and_host(), ("/x", Some("payments")));
        assert_eq!(record.server_port, Some(8080));
    }

    #[test]
    fn child_of_the_incoming_context() {
        let s = settings(0.0);
        let span = Span::start(
            Some(&s),
            Kind::Client,
            &request(&[("traceparent", TP)]),
            PEER,
        );
        assert!(
            span.is_recording(),
            "the caller's sampled flag wins over 0 %"
        );
        let out = span.context().unwrap();
        assert_eq!(
            out.parent_span_id.unwrap().0,
            [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        let mut headers = HeaderMap::new();
        span.inject(&mut headers);
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(&sent[..36], &TP[..36]);
        assert_ne!(&sent[36..52], &TP[36..52]);
        assert!(sent.ends_with("-01"));
        let record = match span.state {
            State::On { record, .. } => record.unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(record.path_and_host().1, Some("payments"));
        assert_eq!(record.server_port, Some(8080));
        assert_eq!(record.path_and_host().0, "/a/b");
    }

    #[test]
    fn a_huge_path_or_host_is_cut_in_the_record() {
        let s = settings(100.0);
        let path = format!("/{}", "p".repeat(50_000));
        let host = format!("{}.example", "h".repeat(5_000));
        let request = Request::builder()
            .uri(path.as_str())
            .header("host", host.as_str())
            .body(())
            .unwrap();
        let span = Span::start(Some(&s), Kind::Server, &request, PEER);
        let record = match span.state {
            State::On { record, .. } => record.unwrap(),
            _ => unreachable!(),
        };
        let (recorded_path, recorded_host) = record.path_and_host();
        assert_eq!(recorded_path.len(), MAX_SPAN_TEXT);
        assert!(path.starts_with(recorded_path));
        let recorded_host = recorded_host.expect("a host");
        assert_eq!(recorded_host.len(), MAX_SPAN_TEXT);
        assert!(host.starts_with(recorded_host));
        assert_eq!(clip("aé", 2), "a", "cut at a character boundary");
    }

    #[test]
    fn unsampled_stays_unsampled_and_forcing_samples() {
        let s = settings(100.0);
        let tp = TP.replace("-01", "-00");
        let span = Span::start(
            Some(&s),
            Kind::Server,
            &request(&[("traceparent", &tp)]),
            PEER,
        );
        assert!(!span.is_recording());
        assert!(!span.context().unwrap().sampled);
        let forced = request(&[("traceparent", &tp), ("x-ficus-force-trace", "1")]);
        assert!(Span::start(Some(&s), Kind::Server, &forced, PEER).is_recording());
        let none = Span::start(Some(&settings(0.0)), Kind::Client, &request(&[]), PEER);
        assert!(!none.is_recording());
        let mut headers = HeaderMap::new();
        none.inject(&mut headers);
        assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn off_passes_valid_headers_and_repairs_malformed_ones() {
        let span = Span::start(None, Kind::Client, &request(&[("traceparent", TP)]), PEER);
        assert!(matches!(span.state, State::Off));
        let bad = request(&[("traceparent", "00-zz"), ("tracestate", "a=1")]);
        let span = Span::start(None, Kind::Client, &bad, PEER);
        let mut headers = bad.headers().clone();
        span.inject(&mut headers);
        let fixed = headers["traceparent"].as_bytes();
        assert!(propagation::parse_traceparent(fixed).is_some());
        assert!(!headers.contains_key("tracestate"));
    }

    fn recorded(request: &Request<()>) -> Box<SpanRecord> {
        let s = settings(100.0);
        match Span::start(Some(&s), Kind::Server, request, PEER).state {
            State::On {
                record: Some(record),
                ..
            } => record,
            _ => unreachable!("100 % samples"),
        }
    }

    #[test]
    fn path_and_host_share_one_text_inline_or_not() {
        let record = recorded(&request(&[]));
        assert!(matches!(record.text, Text::Inline { .. }));
        assert_eq!(record.path_and_host(), ("/a/b", Some("payments")));
        assert_eq!(record.service.as_deref(), Some("shop/web"));

        let long = format!("/{}", "é".repeat(80));
        let request = Request::builder()
            .uri(long.as_str())
            .header("host", "[::1]")
            .body(())
            .unwrap();
        let record = recorded(&request);
        assert!(matches!(record.text, Text::Heap(_)));
        let encoded = request.uri().path();
        assert_eq!(record.path_and_host().0, encoded);
        assert_eq!(record.path_and_host().1, Some("[::1]"));
        assert_eq!(record.server_port, None);

        let no_host = Request::builder().uri("/x").body(()).unwrap();
        let record = recorded(&no_host);
        assert_eq!(record.path_and_host(), ("/x", None));
    }

    #[test]
    fn forcing_is_seen_without_other_trace_headers() {
        let s = settings(0.0);
        let forced = request(&[("x-ficus-force-trace", "yes")]);
        assert!(Span::start(Some(&s), Kind::Client, &forced, PEER).is_recording());
        assert!(!Span::start(Some(&s), Kind::Client, &request(&[]), PEER).is_recording());
    }
}
