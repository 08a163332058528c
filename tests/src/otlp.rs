//! A real OTLP/gRPC trace receiver in the test process: the `TraceService` of
//! opentelemetry-proto's generated tonic server, served over hyper HTTP/2 on loopback. It
//! records every `ExportTraceServiceRequest` it gets. Stopping it closes the listener and every
//! open connection (a collector that went away); it can start again on the same port.
//! [`OtlpReceiver::start_tls`] serves it over TLS (an `https://` collector).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// One received span with the resource it came under.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span.
    pub span: Span,
    /// Its resource's attributes.
    pub resource: Vec<KeyValue>,
}

impl ReceivedSpan {
    /// Trace id in lowercase hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Span id in lowercase hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Parent span id in lowercase hex (empty for a root span).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string, int or bool attribute as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// A resource attribute as text.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attribute(&self.resource, key)
    }

    /// The direction the span kind stands for: `outbound` (CLIENT), `inbound` (SERVER).
    pub fn direction(&self) -> &'static str {
        match SpanKind::try_from(self.span.kind) {
            Ok(SpanKind::Client) => "outbound",
            Ok(SpanKind::Server) => "inbound",
            _ => "",
        }
    }
}

fn attribute(list: &[KeyValue], key: &str) -> Option<String> {
    let value = list.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    handshakes_failed: Arc<AtomicU64>,
    /// The `user-agent` of each export request.
    user_agents: Arc<Mutex<Vec<String>>>,
    /// Spans each answer reports as rejected (a partial success), at most the request's.
    rejecting: Arc<AtomicU64>,
    /// Milliseconds each export waits before it counts as received and is answered (a slow
    /// collector: a client that goes away sooner delivered nothing).
    answer_after_ms: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut agents) = self.user_agents.lock() {
            agents.push(agent);
        }
        let delay = self.answer_after_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let rejecting = self.rejecting.load(Ordering::Relaxed);
        if let Ok(mut received) = self.received.lock() {
            received.push(request);
        }
        let rejected = rejecting.min(spans as u64);
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: "rejected by the test".into(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

/// A running receiver; stops (listener and connections) on drop or [`OtlpReceiver::stop`].
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    collector: Collector,
    task: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (a port used before by a stopped receiver: binding is retried for up
    /// to 10 s).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::serve(addr, None).await
    }

    /// Starts on a free loopback port, serving TLS with `config` (which should offer ALPN
    /// `h2`). Failed handshakes are counted ([`OtlpReceiver::handshakes_failed`]).
    pub async fn start_tls(config: Arc<ServerConfig>) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::serve(addr, Some(TlsAcceptor::from(config))).await
    }

    /// TLS handshakes that failed (TLS receivers only).
    pub fn handshakes_failed(&self) -> u64 {
        self.collector.handshakes_failed.load(Ordering::Relaxed)
    }

    async fn serve(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Self {
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if started.elapsed() < Duration::from_secs(10) => {
                    eprintln!("OTLP receiver: bind {addr}: {error}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("OTLP receiver cannot bind {addr}: {error}"),
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let failed = Arc::clone(&collector.handshakes_failed);
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let service = service.clone();
                let tls = tls.clone();
                let failed = Arc::clone(&failed);
                connections.spawn(async move {
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .clone();
                    let service = TowerToHyperService::new(service);
                    match tls {
                        None => {
                            let _ = http2.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            let handshake =
                                tokio::time::timeout(Duration::from_secs(10), tls.accept(stream));
                            match handshake.await {
                                Ok(Ok(stream)) => {
                                    let _ =
                                        http2.serve_connection(TokioIo::new(stream), service).await;
                                }
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            collector,
            task: Some(task),
        }
    }

    /// Stops listening and closes every connection; what was received stays readable.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The `user-agent` of each export request received so far.
    pub fn user_agents(&self) -> Vec<String> {
        self.collector
            .user_agents
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// From now on, answer each export with a partial success that rejects up to `spans`
    /// of its spans (0: accept everything).
    pub fn reject(&self, spans: u64) {
        self.collector.rejecting.store(spans, Ordering::Relaxed);
    }

    /// From now on, take each export as received, and answer it, only `delay` after it came.
    pub fn answer_after(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.collector
            .answer_after_ms
            .store(millis, Ordering::Relaxed);
    }

    /// Export requests received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.collector
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = Vec::new();
        for request in self.requests() {
            for resource_spans in request.resource_spans {
                let resource = resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        out.push(ReceivedSpan {
                            span,
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until at least `count` spans satisfy `filter`; returns them all (panics after
    /// `deadline`).
    pub async fn wait_for(
        &self,
        count: usize,
        deadline: Duration,
        filter: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let started = Instant::now();
        loop {
            let found: Vec<_> = self.spans().into_iter().filter(&filter).collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                started.elapsed() < deadline,
                "only {} of {count} spans arrived within {deadline:?}: {found:#?}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
