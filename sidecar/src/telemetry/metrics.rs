//! Prometheus metrics with handles resolved when a config is swapped in, not per request.
//!
//! Label values come from config (service and backend names) or from a fixed set (status
//! codes, response flags, reasons); never from request data, so cardinality stays bounded.
//!
//! # Series of removed Backends and services
//!
//! Users move routes off a monolith over weeks, adding and removing Backends and services as
//! they go; series that outlive their config would only grow `/metrics` and keep dead
//! backends on dashboards. So the series of a (direction, service, backend) triple that no
//! config uses any more are removed from `ficus_requests_total`,
//! `ficus_request_duration_seconds` and `ficus_grpc_responses_total` (the families labelled
//! by service and backend; `ficus_route_backend_weight` follows each swap at once, and no
//! family is labelled by endpoint).
//!
//! When: by the first scrape after no snapshot can count into them any more. Each triple has
//! one [`RequestMetrics`], shared by every snapshot that uses it and kept in
//! `Metrics::handles`; a request keeps its snapshot (and so the handle) to its end, and a
//! gRPC body still waiting for its status keeps its [`GrpcCounters`]. At a scrape, a handle
//! only the book holds has its final values: that scrape exports them, then removes the
//! series. Removing at the swap instead would lose what requests still in flight on the old
//! snapshot count, and everything counted since the previous scrape, which no timer can
//! bound (scrape intervals are the operator's, and a stream may outlive any grace period):
//! waiting for the last reference and one scrape loses nothing for that scraper. A second
//! scraper (a Prometheus HA pair) may miss the last increments. A handle nobody holds can
//! never count again, so nothing re-creates a removed series; the request path is unchanged
//! (no locks, lookups or allocations per request). A Backend removed and later added again
//! gets new handles and starts again from 0, a counter reset Prometheus's `rate` and
//! `increase` handle; added back before the scrape, it keeps its handle and its counts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request duration buckets in seconds: coarse below a millisecond (the proxy's own share) and,
/// between 1 ms and 10 s, no more than a factor of 1.5 apart (1, 1.5, 2, 3, 4, 5, 7.5 per
/// decade), so `histogram_quantile`'s linear interpolation reads P50/P95/P99 of applications
/// within about a quarter of their value. 32 buckets per series.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0,
    7.5, 10.0,
];

/// Traffic direction label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// App → mesh.
    Outbound,
    /// Mesh → app.
    Inbound,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// Why h2 reset a downstream client's HTTP/2 stream on its own, by the error code of the
/// RST_STREAM it sent (RFC 9113 §7): a `ficus_http_rejected_total` reason. The codes h2 uses
/// for what the client sent; the resets sent for the proxy's own reasons (`CANCEL`,
/// `INTERNAL_ERROR`, `NO_ERROR`) are no refusal and have none (`listener::resets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Refusal {
    /// `PROTOCOL_ERROR` (0x1): a malformed request (pseudo-headers missing, repeated or late,
    /// connection-specific fields, `te` other than `trailers`, a bad `content-length`), DATA
    /// past or short of its `content-length`, trailers without END_STREAM; also h2's reset
    /// after its own 431 to a request that has a body still to come.
    ProtocolError,
    /// `FLOW_CONTROL_ERROR` (0x3): more DATA on the stream than its window allowed.
    FlowControlError,
    /// `REFUSED_STREAM` (0x7): a stream opened past `maxConcurrentStreams`; nothing of it
    /// was processed, so a client may retry it.
    RefusedStream,
}

impl H2Refusal {
    /// Every refusal, in declaration order: a variant's discriminant indexes its handle.
    const ALL: [Self; 3] = [
        Self::ProtocolError,
        Self::FlowControlError,
        Self::RefusedStream,
    ];

    /// The refusal an RST_STREAM error code stands for, if it is one.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0x1 => Some(Self::ProtocolError),
            0x3 => Some(Self::FlowControlError),
            0x7 => Some(Self::RefusedStream),
            _ => None,
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProtocolError => "h2_protocol_error",
            Self::FlowControlError => "h2_flow_control_error",
            Self::RefusedStream => "h2_refused_stream",
        }
    }
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    grpc_responses: IntCounterVec,
    /// `ficus_tcp_connections_opened_total`.
    pub tcp_opened: IntCounter,
    /// `ficus_tcp_connections_closed_total`.
    pub tcp_closed: IntCounter,
    /// `ficus_tcp_bytes_total{direction="sent"}`: bytes sent to upstreams.
    pub tcp_bytes_sent: IntCounter,
    /// `ficus_tcp_bytes_total{direction="received"}`: bytes received from upstreams.
    pub tcp_bytes_received: IntCounter,
    /// `ficus_config_version`.
    pub config_version: IntGauge,
    /// `ficus_tls_certificate_expiry_timestamp_seconds` (0 while there is none).
    pub certificate_expiry: IntGauge,
    /// `ficus_retries_total`: retries sent (one per extra attempt).
    pub retries: IntCounter,
    /// `ficus_retry_budget_exhausted_total`: retries not sent because the budget was spent.
    pub retry_budget_exhausted: IntCounter,
    breaker_overflow: IntCounterVec,
    /// `ficus_mirror_requests_total{result="sent"}`: copies sent to a mirror Backend.
    pub mirror_sent: IntCounter,
    /// `ficus_mirror_requests_total{result="dropped"}`: copies not sent (too many in flight).
    pub mirror_dropped: IntCounter,
    /// `ficus_outlier_ejections_active`: endpoints currently ejected.
    pub outlier_ejections_active: IntGauge,
    /// `ficus_rate_limited_total`: requests refused by a rate limit (the workload's, inbound;
    /// a route's, outbound).
    pub rate_limited: IntCounter,
    /// `ficus_access_log_dropped_total{reason="queue_full"}`: lines dropped because the
    /// writer was behind.
    pub access_log_dropped: IntCounter,
    /// `ficus_access_log_dropped_total{reason="write_error"}`: lines the target refused.
    pub access_log_write_failed: IntCounter,
    route_weights: IntGaugeVec,
    /// The one request handle of each (direction, service, backend) label triple a snapshot
    /// has used, until a scrape finds nothing else holds it (module doc). Locked only when a
    /// snapshot is built and at scrapes.
    handles: Mutex<HashMap<SeriesKey, Arc<RequestMetrics>>>,
    /// The label sets `route_weights` holds now, so a swap removes only those that went away.
    route_weight_labels: std::sync::Mutex<Vec<[String; 4]>>,
    /// `ficus_trace_spans_exported_total`: spans the OTLP collector accepted.
    pub trace_spans_exported: IntCounter,
    /// `ficus_trace_spans_dropped_total`: sampled spans not exported (queue full, export
    /// failed, tracing switched off).
    pub trace_spans_dropped: IntCounter,
    certificate_renewals_failed: IntCounter,
    authz_denied: IntCounter,
    tls_handshake_failed: IntCounterVec,
    config_updates: IntCounterVec,
    config_rejected: IntCounterVec,
    http_rejected: IntCounterVec,
    /// `ficus_http_rejected_total` handles of each [`H2Refusal`], in [`H2Refusal::ALL`]'s
    /// order: counted per reset sent, so resolved once.
    h2_refusals: [IntCounter; 3],
    h2_goaway_sent: IntCounterVec,
    upstream_failures: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("ficus_requests_total", "HTTP requests by outcome"),
            &[
                "direction",
                "destination_service",
                "destination_backend",
                "response_code",
                "response_flags",
            ],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ficus_request_duration_seconds",
                "Time from request received to response headers sent",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &[
                "direction",
                "destination_service",
                "destination_backend",
                "response_flags",
            ],
        )
        .expect("static metric definition");
        let grpc_responses = IntCounterVec::new(
            Opts::new(
                "ficus_grpc_responses_total",
                "gRPC calls by the status their response ended with (trailers, or headers of a \
                 trailers-only response)",
            ),
            &[
                "direction",
                "destination_service",
                "destination_backend",
                "grpc_status",
            ],
        )
        .expect("static metric definition");
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("static metric definition");
        let tcp_opened = counter(
            "ficus_tcp_connections_opened_total",
            "Opaque TCP connections accepted",
        );
        let tcp_closed = counter(
            "ficus_tcp_connections_closed_total",
            "Opaque TCP connections closed",
        );
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "ficus_tcp_bytes_total",
                "Opaque TCP bytes by direction (to/from upstream)",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let config_version =
            IntGauge::new("ficus_config_version", "Version of the config being served")
                .expect("static metric definition");
        let certificate_expiry = IntGauge::new(
            "ficus_tls_certificate_expiry_timestamp_seconds",
            "Expiry of the workload certificate (Unix seconds)",
        )
        .expect("static metric definition");
        let certificate_renewals_failed = counter(
            "ficus_tls_certificate_renewals_failed_total",
            "Failed attempts to obtain or renew the workload certificate",
        );
        let retries = counter("ficus_retries_total", "Retries sent upstream");
        let retry_budget_exhausted = counter(
            "ficus_retry_budget_exhausted_total",
            "Retries not sent because the Backend's retry budget was spent",
        );
        let outlier_ejections_active = IntGauge::new(
            "ficus_outlier_ejections_active",
            "Endpoints currently ejected by outlier detection",
        )
        .expect("static metric definition");
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "ficus_mirror_requests_total",
                "Request copies for RequestMirror, sent or dropped",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let rate_limited = counter(
            "ficus_rate_limited_total",
            "Requests refused by a rate limit (the workload's inbound, or a route's outbound)",
        );
        let access_log_dropped = IntCounterVec::new(
            Opts::new(
                "ficus_access_log_dropped_total",
                "Access-log lines lost: queue_full (writer behind) or write_error",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let route_weights = IntGaugeVec::new(
            Opts::new(
                "ficus_route_backend_weight",
                "Configured weight of each backendRef of each route rule in the serving config",
            ),
            &[
                "destination_service",
                "route",
                "rule",
                "destination_backend",
            ],
        )
        .expect("static metric definition");
        let trace_spans_exported = counter(
            "ficus_trace_spans_exported_total",
            "Spans exported to the OTLP collector",
        );
        let trace_spans_dropped = counter(
            "ficus_trace_spans_dropped_total",
            "Sampled spans dropped (export queue full, export failed or rejected by the collector, or tracing off)",
        );
        let authz_denied = counter(
            "ficus_authz_denied_total",
            "Inbound requests denied by authorization policy",
        );
        let vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric definition")
        };
        let config_updates = vec(
            "ficus_config_updates_total",
            "Config updates by result",
            "result",
        );
        let config_rejected = vec(
            "ficus_config_rejected_total",
            "Rejected config updates by source",
            "source",
        );
        let http_rejected = vec(
            "ficus_http_rejected_total",
            "Downstream requests rejected before routing, by reason",
            "reason",
        );
        let h2_goaway_sent = vec(
            "ficus_h2_goaway_sent_total",
            "HTTP/2 connections a downstream client lost to a GOAWAY with an error code, by code",
            "reason",
        );
        let upstream_failures = vec(
            "ficus_upstream_failures_total",
            "Upstream failures by reason",
            "reason",
        );
        let breaker_overflow = vec(
            "ficus_circuit_breaker_overflow_total",
            "Requests refused by a Backend's circuit breaker, by cap",
            "kind",
        );
        let tls_handshake_failed = vec(
            "ficus_tls_handshake_failed_total",
            "Failed TLS handshakes by reason",
            "reason",
        );
        let h2_refusals =
            H2Refusal::ALL.map(|refusal| http_rejected.with_label_values(&[refusal.as_str()]));
        let metrics = Self {
            grpc_responses,
            access_log_dropped: access_log_dropped.with_label_values(&["queue_full"]),
            access_log_write_failed: access_log_dropped.with_label_values(&["write_error"]),
            route_weights,
            route_weight_labels: std::sync::Mutex::default(),
            handles: Mutex::default(),
            mirror_sent: mirror_requests.with_label_values(&["sent"]),
            mirror_dropped: mirror_requests.with_label_values(&["dropped"]),
            tcp_bytes_sent: tcp_bytes.with_label_values(&["sent"]),
            tcp_bytes_received: tcp_bytes.with_label_values(&["received"]),
            registry,
            requests,
            duration,
            tcp_opened,
            tcp_closed,
            config_version,
            certificate_expiry,
            certificate_renewals_failed,
            retries,
            retry_budget_exhausted,
            breaker_overflow,
            rate_limited,
            trace_spans_exported,
            trace_spans_dropped,
            outlier_ejections_active,
            authz_denied,
            tls_handshake_failed,
            config_updates,
            config_rejected,
            http_rejected,
            h2_refusals,
            h2_goaway_sent,
            upstream_failures,
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.duration.clone()),
            Box::new(metrics.tcp_opened.clone()),
            Box::new(metrics.tcp_closed.clone()),
            Box::new(tcp_bytes),
            Box::new(metrics.config_version.clone()),
            Box::new(metrics.certificate_expiry.clone()),
            Box::new(metrics.certificate_renewals_failed.clone()),
            Box::new(metrics.authz_denied.clone()),
            Box::new(metrics.retries.clone()),
            Box::new(metrics.retry_budget_exhausted.clone()),
            Box::new(metrics.breaker_overflow.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.trace_spans_exported.clone()),
            Box::new(metrics.trace_spans_dropped.clone()),
            Box::new(metrics.outlier_ejections_active.clone()),
            Box::new(mirror_requests),
            Box::new(access_log_dropped),
            Box::new(metrics.route_weights.clone()),
            Box::new(metrics.grpc_responses.clone()),
            Box::new(metrics.tls_handshake_failed.clone()),
            Box::new(metrics.config_updates.clone()),
            Box::new(metrics.config_rejected.clone()),
            Box::new(metrics.http_rejected.clone()),
            Box::new(metrics.h2_goaway_sent.clone()),
            Box::new(metrics.upstream_failures.clone()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Expose the zero values so dashboards and tests see the series before the first event.
        for result in ["accepted", "rejected"] {
            metrics.config_updates.with_label_values(&[result]);
        }
        for kind in ["pending", "requests"] {
            metrics.breaker_overflow.with_label_values(&[kind]);
        }
        Arc::new(metrics)
    }

    /// Handles for one (direction, service, backend) triple: the same for every snapshot that
    /// uses the triple (until a scrape removes its series), so that a scrape can tell when no
    /// snapshot or request holds them any more (module doc). Called when a snapshot is built,
    /// never per request.
    pub fn request_metrics(
        self: &Arc<Self>,
        direction: Direction,
        service: &str,
        backend: &str,
    ) -> Arc<RequestMetrics> {
        let labels: SeriesKey = [
            Arc::from(direction.as_str()),
            Arc::from(service),
            Arc::from(backend),
        ];
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = handles.entry(labels).or_insert_with_key(|labels| {
            Arc::new(RequestMetrics {
                labels: labels.clone(),
                ok_duration: OnceLock::new(),
                codes: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
                grpc: OnceLock::new(),
                requests: self.requests.clone(),
                duration: self.duration.clone(),
                grpc_responses: self.grpc_responses.clone(),
            })
        });
        Arc::clone(handle)
    }

    /// Removes the series of the label triples `unused` and their handles, which only
    /// `handles` held when the scrape that exported their final values began. Called with the
    /// lock held since then.
    fn remove(&self, handles: &mut HashMap<SeriesKey, Arc<RequestMetrics>>, unused: &[SeriesKey]) {
        if unused.is_empty() {
            return;
        }
        let gone: HashSet<[&str; 3]> = unused
            .iter()
            .map(|[direction, service, backend]| [&**direction, &**service, &**backend])
            .collect();
        remove_series(&self.requests, &gone);
        remove_series(&self.duration, &gone);
        remove_series(&self.grpc_responses, &gone);
        for labels in unused {
            handles.remove(labels);
        }
    }

    /// Sets `ficus_route_backend_weight` to the weighted splits of `config` (HTTPRoute rules
    /// and TCPRoutes) that route this sidecar's calls (in `own_namespace`: GAMMA consumer
    /// routes of other namespaces do not), removing the series of routes and backends it no
    /// longer has. Called when a config is swapped in.
    pub fn set_route_weights(&self, config: &ficus_config::Config, own_namespace: &str) {
        use crate::snapshot::{applies, consumer_parents};
        let mut labels: Vec<([String; 4], u32)> = Vec::new();
        let consumed = consumer_parents(
            config.http_routes.iter().map(|r| (&r.key, &r.parents[..])),
            own_namespace,
        );
        for route in &config.http_routes {
            let name = route.key.to_string();
            let parents = route.parents.iter();
            for parent in parents.filter(|p| applies(&route.key, p, own_namespace, &consumed)) {
                for (index, rule) in route.rules.iter().enumerate() {
                    for backend_ref in &rule.backend_refs {
                        let set = [
                            parent.to_string(),
                            name.clone(),
                            index.to_string(),
                            backend_ref.backend.to_string(),
                        ];
                        labels.push((set, backend_ref.weight));
                    }
                }
            }
        }
        let consumed = consumer_parents(
            config.tcp_routes.iter().map(|r| (&r.key, &r.parents[..])),
            own_namespace,
        );
        for route in &config.tcp_routes {
            let name = route.key.to_string();
            let parents = route.parents.iter();
            for parent in parents.filter(|p| applies(&route.key, p, own_namespace, &consumed)) {
                for backend_ref in &route.backend_refs {
                    let set = [
                        parent.to_string(),
                        name.clone(),
                        "0".to_owned(),
                        backend_ref.backend.to_string(),
                    ];
                    labels.push((set, backend_ref.weight));
                }
            }
        }
        // Set the new values first, then remove what went away: a scrape in between never
        // sees a split missing (the gauge was cleared and refilled before).
        for (set, weight) in &labels {
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            self.route_weights
                .with_label_values(&values)
                .set(i64::from(*weight));
        }
        let Ok(mut current) = self.route_weight_labels.lock() else {
            return;
        };
        let new: Vec<[String; 4]> = labels.into_iter().map(|(set, _)| set).collect();
        let kept: std::collections::HashSet<&[String; 4]> = new.iter().collect();
        for gone in current.iter().filter(|set| !kept.contains(set)) {
            let values: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.route_weights.remove_label_values(&values);
        }
        *current = new;
    }

    /// Counts a config update.
    pub fn config_update(&self, accepted: bool, source: &str) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.config_updates.with_label_values(&[result]).inc();
        if !accepted {
            self.config_rejected.with_label_values(&[source]).inc();
        }
    }

    /// Counts a request rejected before routing; `reason` is a fixed string.
    pub fn http_rejected(&self, reason: &'static str) {
        self.http_rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a downstream HTTP/2 stream h2 reset on its own (`ficus_http_rejected_total`):
    /// an increment of a handle resolved at start, no lookup.
    pub fn h2_refused(&self, refusal: H2Refusal) {
        // ALL lists the variants in declaration order (a test checks).
        self.h2_refusals[refusal as usize].inc();
    }

    /// Counts a GOAWAY with an error code sent to a downstream client; `reason` is the code's
    /// fixed name.
    pub fn h2_goaway_sent(&self, reason: &'static str) {
        self.h2_goaway_sent.with_label_values(&[reason]).inc();
    }

    /// Counts a failed attempt to obtain or renew the workload certificate.
    pub fn certificate_renewal_failed(&self) {
        self.certificate_renewals_failed.inc();
    }

    /// Counts a request refused by a circuit breaker; `kind` is a fixed string.
    pub fn breaker_overflow(&self, kind: &'static str) {
        self.breaker_overflow.with_label_values(&[kind]).inc();
    }

    /// The opaque TCP byte counters, for a tunnel to count into as bytes move (downstream
    /// first).
    pub fn tcp_live(&self) -> crate::tunnel::Live<'_> {
        crate::tunnel::Live {
            forward: &self.tcp_bytes_sent,
            backward: &self.tcp_bytes_received,
        }
    }

    /// Counts a request denied by authorization policy.
    pub fn authz_denied(&self) {
        self.authz_denied.inc();
    }

    /// Counts a failed TLS handshake; `reason` is a fixed string.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failed.with_label_values(&[reason]).inc();
    }

    /// Counts an upstream failure; `reason` is a fixed string.
    pub fn upstream_failure(&self, reason: &'static str) {
        self.upstream_failures.with_label_values(&[reason]).inc();
    }

    /// Registers a collector owned by another module (transparent mode's counters), so
    /// `/metrics` shows it; its names must be unique.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// Prometheus text exposition of every metric. Then removes the series of label triples no
    /// config uses and no request can count into any more (module doc): this exposition had
    /// their final values.
    pub fn encode(&self) -> Vec<u8> {
        // Held until the series are removed: a snapshot built meanwhile waits, so a handle found
        // unused here cannot be taken again and counted into before then.
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        // Found before the gather, so the gather has their final values (one that became
        // unused during it waits for the next scrape).
        let unused: Vec<SeriesKey> = handles
            .iter()
            .filter(|(_, handle)| handle.unused())
            .map(|(labels, _)| labels.clone())
            .collect();
        // Pairs with the release of each last reference: the gather reads every count made
        // before it was dropped.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        self.remove(&mut handles, &unused);
        out
    }
}

/// (direction, destination_service, destination_backend).
type SeriesKey = [Arc<str>; 3];

/// Removes every series of `vec` whose (direction, service, backend) is in `gone`, whatever
/// its other labels (response code, flags, gRPC status).
fn remove_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    gone: &HashSet<[&str; 3]>,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            let triple = ["direction", "destination_service", "destination_backend"]
                .map(|name| labels.get(name).copied().unwrap_or_default());
            if gone.contains(&triple) {
                // The series was just listed and only this lock's holder removes series.
                let _ = vec.remove(&labels);
            }
        }
    }
}

const STATUS_SLOTS: usize = 500;

/// Request counters and histogram of one (direction, service, backend), cached per status code.
#[derive(Debug)]
pub struct RequestMetrics {
    labels: [Arc<str>; 3],
    /// The flag-less duration series, made on first use: a Backend that never gets a request
    /// exports no histogram (35 lines of zeros each).
    ok_duration: OnceLock<Histogram>,
    /// Counter handles for flag-less outcomes, indexed by `status - 100`, resolved on first use.
    codes: Box<[OnceLock<IntCounter>]>,
    /// `ficus_grpc_responses_total` handles, made at the first gRPC response.
    grpc: OnceLock<Arc<GrpcCounters>>,
    /// The families, not the `Metrics` (whose book of handles holds this one).
    requests: IntCounterVec,
    duration: HistogramVec,
    grpc_responses: IntCounterVec,
}

/// `ficus_grpc_responses_total` for one (direction, service, backend), by status code.
#[derive(Debug)]
pub struct GrpcCounters {
    labels: [Arc<str>; 3],
    /// Indexed by code (0–16); resolved on first use.
    codes: [OnceLock<IntCounter>; 17],
    vec: IntCounterVec,
}

impl GrpcCounters {
    /// Counts a call that ended with status `code` (an undefined code counts as `UNKNOWN`).
    pub fn count(&self, code: u8) {
        let code = if usize::from(code) < self.codes.len() {
            code
        } else {
            2
        };
        self.codes[usize::from(code)]
            .get_or_init(|| {
                let [direction, service, backend] = &self.labels;
                let code = code.to_string();
                self.vec
                    .with_label_values(&[&**direction, &**service, &**backend, &code])
            })
            .inc();
    }
}

impl RequestMetrics {
    /// The `destination_service` label value.
    pub fn service(&self) -> &Arc<str> {
        &self.labels[1]
    }

    /// The `destination_backend` label value.
    pub fn backend(&self) -> &Arc<str> {
        &self.labels[2]
    }

    /// Whether nothing but `Metrics::handles` holds this handle or its gRPC counters: no
    /// snapshot uses it and no request or response body can count into it any more.
    fn unused(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) != 1 {
            return false;
        }
        // Pairs with the release of the last other reference: a gRPC body takes its clone of
        // the counters before the request drops the handle, so once the handle's count is
        // seen at 1, the counters' count read next is at least as new as that clone.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        self.grpc.get().is_none_or(|g| Arc::strong_count(g) == 1)
    }

    /// The gRPC status counters of this (direction, service, backend).
    pub fn grpc(&self) -> &Arc<GrpcCounters> {
        self.grpc.get_or_init(|| {
            Arc::new(GrpcCounters {
                labels: self.labels.clone(),
                codes: Default::default(),
                vec: self.grpc_responses.clone(),
            })
        })
    }

    /// Records one finished request. `flags` is one of the fixed response flags, `""` if none.
    pub fn record(&self, status: u16, flags: &'static str, elapsed: Duration) {
        let [direction, service, backend] = &self.labels;
        let (direction, service, backend) = (&**direction, &**service, &**backend);
        let seconds = elapsed.as_secs_f64();
        let slot = usize::from(status)
            .checked_sub(100)
            .filter(|i| *i < STATUS_SLOTS);
        match (flags.is_empty(), slot) {
            // The duration first, then the count: a scrape that sees the request counted also
            // sees its duration (readers wait for the counter).
            (true, Some(slot)) => {
                self.ok_duration
                    .get_or_init(|| {
                        self.duration
                            .with_label_values(&[direction, service, backend, ""])
                    })
                    .observe(seconds);
                self.codes[slot]
                    .get_or_init(|| {
                        let code = status.to_string();
                        self.requests
                            .with_label_values(&[direction, service, backend, &code, ""])
                    })
                    .inc();
            }
            _ => {
                // Status 0: the downstream went away before the response head (flag `DC`), or
                // the end of the drain cut it (`SD`).
                let code = match status {
                    0 => std::borrow::Cow::Borrowed("0"),
                    _ => std::borrow::Cow::Owned(status.to_string()),
                };
                self.duration
                    .with_label_values(&[direction, service, backend, flags])
                    .observe(seconds);
                self.requests
                    .with_label_values(&[direction, service, backend, &*code, flags])
                    .inc();
            }
        }
    }
}

/// Flag of a request whose downstream went away before its response head (INTERFACES.md).
pub const DOWNSTREAM_CLOSED: &str = "DC";

/// Records a request exactly once: by [`Recorder::record`] when the handler answers, or, when
/// the handler's future is dropped first (the client disconnected and hyper dropped it), on
/// drop with status `0` and flag `DC`, like the access log's line. Lives on the handler's
/// stack: no allocation.
#[derive(Debug)]
pub struct Recorder<'a> {
    metrics: &'a RequestMetrics,
    started: Instant,
    recorded: bool,
}

impl<'a> Recorder<'a> {
    /// Starts recording a request that began at `started`, against `metrics` until routed.
    pub fn new(metrics: &'a RequestMetrics, started: Instant) -> Self {
        Self {
            metrics,
            started,
            recorded: false,
        }
    }

    /// When the request began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The metrics an abandoned request counts against from now on (its routed Backend).
    pub fn route(&mut self, metrics: &'a RequestMetrics) {
        self.metrics = metrics;
    }

    /// Records the answered request against `metrics`; returns the elapsed time recorded.
    pub fn record(
        mut self,
        metrics: &RequestMetrics,
        status: u16,
        flags: &'static str,
    ) -> Duration {
        self.recorded = true;
        let elapsed = self.started.elapsed();
        metrics.record(status, flags, elapsed);
        elapsed
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            // Its client went away (`DC`), or the drain was cut (`SD`).
            let flag = crate::drain::unfinished_flag();
            self.metrics.record(0, flag, self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn scrape(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).expect("UTF-8 exposition")
    }

    /// The samples of `name` (a whole family name, e.g. `ficus_requests_total`) whose labels
    /// include `backend`.
    fn samples<'t>(text: &'t str, name: &str, backend: &str) -> Vec<&'t str> {
        let backend = format!("destination_backend=\"{backend}\"");
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(&backend))
            .collect()
    }

    /// The labels of a flag-less 200 of (outbound, `shop/svc`, `backend`), as exported.
    fn ok_labels(backend: &str) -> String {
        format!(
            "destination_backend=\"{backend}\",destination_service=\"shop/svc\",\
             direction=\"outbound\",response_code=\"200\",response_flags=\"\""
        )
    }

    #[test]
    fn each_h2_refusal_counts_under_its_own_reason() {
        let metrics = Metrics::new();
        for (index, refusal) in H2Refusal::ALL.into_iter().enumerate() {
            assert_eq!(refusal as usize, index, "{refusal:?}");
        }
        // Exported at 0 before the first.
        let text = scrape(&metrics);
        assert!(
            text.contains("ficus_http_rejected_total{reason=\"h2_refused_stream\"} 0"),
            "{text}"
        );
        metrics.h2_refused(H2Refusal::RefusedStream);
        metrics.h2_refused(H2Refusal::RefusedStream);
        metrics.h2_refused(H2Refusal::ProtocolError);
        let text = scrape(&metrics);
        for line in [
            "ficus_http_rejected_total{reason=\"h2_refused_stream\"} 2",
            "ficus_http_rejected_total{reason=\"h2_protocol_error\"} 1",
            "ficus_http_rejected_total{reason=\"h2_flow_control_error\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
    }

    #[test]
    fn a_held_child_of_a_removed_series_counts_detached() {
        // What a handle held past removal does with the `prometheus` crate: no panic, and the
        // series does not come back.
        let vec = IntCounterVec::new(Opts::new("t_total", "t"), &["backend"]).unwrap();
        let held = vec.with_label_values(&["b"]);
        held.inc();
        vec.remove_label_values(&["b"]).unwrap();
        held.inc();
        assert!(prometheus::core::Collector::collect(&vec)[0]
            .get_metric()
            .is_empty());
        assert_eq!(
            vec.with_label_values(&["b"]).get(),
            0,
            "a new series starts at 0"
        );
    }

    #[test]
    fn series_go_at_the_scrape_after_the_last_handle_is_dropped() {
        let metrics = Metrics::new();
        let a = metrics.request_metrics(Direction::Outbound, "shop/svc", "shop/a");
        let b = metrics.request_metrics(Direction::Outbound, "shop/svc", "shop/b");
        a.record(200, "", MS);
        b.record(200, "", MS);
        b.record(502, "UF", MS);
        b.grpc().count(0);
        // A gRPC body still waiting for its status holds the counters.
        let body = Arc::clone(b.grpc());
        drop(b);
        let text = scrape(&metrics);
        assert_eq!(samples(&text, "ficus_requests_total", "shop/b").len(), 2);
        drop(body);
        // The first scrape with nothing left to count still has the final values.
        let text = scrape(&metrics);
        assert_eq!(samples(&text, "ficus_requests_total", "shop/b").len(), 2);
        assert_eq!(
            samples(&text, "ficus_grpc_responses_total", "shop/b").len(),
            1
        );
        let text = scrape(&metrics);
        for family in [
            "ficus_requests_total",
            "ficus_request_duration_seconds",
            "ficus_grpc_responses_total",
        ] {
            assert!(
                samples(&text, family, "shop/b").is_empty(),
                "{family}:\n{text}"
            );
        }
        // The triple still in use keeps its series and counts.
        assert_eq!(
            samples(&text, "ficus_requests_total", "shop/a"),
            [format!("ficus_requests_total{{{}}} 1", ok_labels("shop/a"))]
        );
        // Added again: new handles, counting from 0.
        let again = metrics.request_metrics(Direction::Outbound, "shop/svc", "shop/b");
        again.record(200, "", MS);
        let text = scrape(&metrics);
        assert_eq!(
            samples(&text, "ficus_requests_total", "shop/b"),
            [format!("ficus_requests_total{{{}}} 1", ok_labels("shop/b"))]
        );
    }

    #[test]
    fn a_triple_taken_again_before_the_scrape_keeps_its_handle_and_counts() {
        let metrics = Metrics::new();
        let first = metrics.request_metrics(Direction::Outbound, "shop/svc", "shop/b");
        first.record(200, "", MS);
        let pointer = Arc::as_ptr(&first);
        drop(first);
        let second = metrics.request_metrics(Direction::Outbound, "shop/svc", "shop/b");
        assert_eq!(Arc::as_ptr(&second), pointer, "one handle per triple");
        second.record(200, "", MS);
        scrape(&metrics);
        let text = scrape(&metrics);
        assert!(
            samples(&text, "ficus_requests_total", "shop/b")
                .iter()
                .any(|line| line.ends_with(" 2")),
            "{text}"
        );
    }
}
