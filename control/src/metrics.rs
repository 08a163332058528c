//! Control-plane metrics.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric `ficus-control` exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `ficus_control_connected_sidecars`.
    pub connected_sidecars: IntGauge,
    /// `ficus_control_push_convergence_seconds`: commit of a version → a sidecar's ACK of it.
    pub push_convergence: Histogram,
    /// `ficus_control_nacks_total`.
    pub nacks: IntCounter,
    /// `ficus_control_pushes_total`: snapshots sent (bursts of applies coalesce into few).
    pub pushes: IntCounter,
    /// `ficus_control_config_version`: the current version.
    pub config_version: IntGauge,
    /// `ficus_control_certificates_total{result}`: CSR signing requests by outcome
    /// (`signed`, `unauthenticated`, `invalid`, `busy`, `unavailable`, `error`).
    pub certificates: IntCounterVec,
    /// `ficus_tls_handshake_failed_total{reason}` on `--grpc` (`timeout`, `error`).
    pub tls_handshake_failed: IntCounterVec,
    /// `ficus_control_api_denied_total`: write API calls refused for want of an admin token.
    pub api_denied: IntCounter,
    /// Writes (apply, delete, rollback) refused for their content, by reason (`invalid`,
    /// `too_large`).
    pub writes_refused: IntCounterVec,
    /// `ficus_control_sidecars_behind`: connected sidecars whose acknowledged version is older
    /// than the current one (set at each scrape).
    pub sidecars_behind: IntGauge,
    /// `ficus_control_sidecars_nacking`: connected sidecars whose last answer was a NACK not
    /// yet followed by an ACK of a newer version (set at each scrape).
    pub sidecars_nacking: IntGauge,
    /// `ficus_control_webhook_requests_total{result}`: AdmissionReviews answered by the
    /// injection webhook (`injected`, `skipped`, `error` — admitted without a patch —, and
    /// `invalid` — not an AdmissionReview).
    pub webhook_requests: IntCounterVec,
    /// `ficus_control_kubernetes_syncs_total{result}`: translations of the watched cluster
    /// (`--kubernetes`): `committed`, `unchanged`, `invalid` (the last good version stays).
    pub kubernetes_syncs: IntCounterVec,
    /// `ficus_control_kubernetes_objects_left_out_total{kind}`: cluster objects left out of a
    /// translation because they did not validate (the rest was committed, or was the current
    /// version already), once per translation (`kind` is `Service` for the Backend made
    /// from a Service).
    pub kubernetes_objects_left_out: IntCounterVec,
    /// `ficus_control_trust_bundle_roots`: roots in the trust bundle in force (the issuer's
    /// root plus `ca/extra-roots.pem`); 0 with `--insecure`.
    pub trust_bundle_roots: IntGauge,
    /// `ficus_control_trust_bundle_reload_failures_total`: changed `ca/extra-roots.pem` files
    /// refused (unreadable or invalid; the bundle in force stays).
    pub trust_bundle_reload_failures: IntCounter,
    /// `ficus_control_trust_bundle_pushes_total`: trust-bundle refreshes sent to sidecars
    /// without a config change (a snapshot carries the bundle too).
    pub trust_bundle_pushes: IntCounter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let metrics = Self {
            connected_sidecars: IntGauge::new(
                "ficus_control_connected_sidecars",
                "Sidecars with an open push stream",
            )
            .expect("static metric definition"),
            push_convergence: Histogram::with_opts(
                HistogramOpts::new(
                    "ficus_control_push_convergence_seconds",
                    "Time from committing a config version to a sidecar acknowledging it",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
                    10.0, 30.0,
                ]),
            )
            .expect("static metric definition"),
            nacks: IntCounter::new("ficus_control_nacks_total", "Snapshots refused by sidecars")
                .expect("static metric definition"),
            pushes: IntCounter::new("ficus_control_pushes_total", "Snapshots sent to sidecars")
                .expect("static metric definition"),
            config_version: IntGauge::new("ficus_control_config_version", "Current config version")
                .expect("static metric definition"),
            certificates: IntCounterVec::new(
                Opts::new(
                    "ficus_control_certificates_total",
                    "Certificate signing requests by outcome",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            tls_handshake_failed: IntCounterVec::new(
                Opts::new(
                    "ficus_tls_handshake_failed_total",
                    "TLS handshakes on the gRPC port that failed",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            api_denied: IntCounter::new(
                "ficus_control_api_denied_total",
                "Write API calls refused for want of a valid admin token",
            )
            .expect("static metric definition"),
            writes_refused: IntCounterVec::new(
                Opts::new(
                    "ficus_control_writes_refused_total",
                    "Config writes refused for their content (validation, size), by reason",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            sidecars_behind: IntGauge::new(
                "ficus_control_sidecars_behind",
                "Connected sidecars that have not acknowledged the current config version",
            )
            .expect("static metric definition"),
            sidecars_nacking: IntGauge::new(
                "ficus_control_sidecars_nacking",
                "Connected sidecars whose last answer was a NACK",
            )
            .expect("static metric definition"),
            webhook_requests: IntCounterVec::new(
                Opts::new(
                    "ficus_control_webhook_requests_total",
                    "AdmissionReviews answered by the sidecar injection webhook",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            kubernetes_syncs: IntCounterVec::new(
                Opts::new(
                    "ficus_control_kubernetes_syncs_total",
                    "Translations of the watched Kubernetes objects into a config, by result",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            kubernetes_objects_left_out: IntCounterVec::new(
                Opts::new(
                    "ficus_control_kubernetes_objects_left_out_total",
                    "Kubernetes objects left out of a translation because they did not validate",
                ),
                &["kind"],
            )
            .expect("static metric definition"),
            trust_bundle_roots: IntGauge::new(
                "ficus_control_trust_bundle_roots",
                "Roots in the trust bundle in force",
            )
            .expect("static metric definition"),
            trust_bundle_reload_failures: IntCounter::new(
                "ficus_control_trust_bundle_reload_failures_total",
                "Changed extra-roots files refused (the trust bundle in force stays)",
            )
            .expect("static metric definition"),
            trust_bundle_pushes: IntCounter::new(
                "ficus_control_trust_bundle_pushes_total",
                "Trust-bundle refreshes pushed to sidecars without a config change",
            )
            .expect("static metric definition"),
            registry,
        };
        for collector in [
            Box::new(metrics.connected_sidecars.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.push_convergence.clone()),
            Box::new(metrics.nacks.clone()),
            Box::new(metrics.pushes.clone()),
            Box::new(metrics.config_version.clone()),
            Box::new(metrics.certificates.clone()),
            Box::new(metrics.tls_handshake_failed.clone()),
            Box::new(metrics.api_denied.clone()),
            Box::new(metrics.writes_refused.clone()),
            Box::new(metrics.sidecars_behind.clone()),
            Box::new(metrics.sidecars_nacking.clone()),
            Box::new(metrics.webhook_requests.clone()),
            Box::new(metrics.kubernetes_syncs.clone()),
            Box::new(metrics.kubernetes_objects_left_out.clone()),
            Box::new(metrics.trust_bundle_roots.clone()),
            Box::new(metrics.trust_bundle_reload_failures.clone()),
            Box::new(metrics.trust_bundle_pushes.clone()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        for reason in ["invalid", "too_large"] {
            metrics.writes_refused.with_label_values(&[reason]);
        }
        Arc::new(metrics)
    }

    /// Sets the gauges derived from the registry: connected, behind `current`, NACKing.
    pub fn observe_sidecars(&self, sidecars: &[crate::registry::SidecarStatus], current: u64) {
        let connected = sidecars.iter().filter(|s| s.connected);
        let (mut total, mut behind, mut nacking) = (0i64, 0i64, 0i64);
        for sidecar in connected {
            total += 1;
            behind += i64::from(sidecar.acked_version.is_none_or(|v| v < current));
            nacking += i64::from(sidecar.last_nack.is_some());
        }
        self.connected_sidecars.set(total);
        self.sidecars_behind.set(behind);
        self.sidecars_nacking.set(nacking);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }
}
