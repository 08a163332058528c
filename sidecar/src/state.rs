//! State shared by the data plane, the admin server and the config reloader.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::drain::DrainSignal;
use crate::mtls::MeshTls;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::logging::LogHandle;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::SpanSink;
use crate::upstream::PoolRegistry;

/// Who this sidecar is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Workload (service account) name.
    pub workload: String,
    /// Namespace; bare service names resolve here.
    pub namespace: String,
    /// Unique node id.
    pub node_id: String,
    /// The local app inbound traffic goes to.
    pub app: SocketAddr,
}

/// What `/config` reports besides the documents.
#[derive(Debug, Clone, Default)]
pub struct ConfigStatus {
    /// When the serving config was swapped in.
    pub applied_at: Option<SystemTime>,
    /// The last rejection message, cleared by the next accepted config.
    pub last_error: Option<String>,
}

/// Everything long-lived, behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The config being served. Requests load it once and keep their snapshot to the end.
    pub snapshot: ArcSwap<Snapshot>,
    /// Admin-only bookkeeping (never touched on the request path).
    pub status: Mutex<ConfigStatus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Upstream connection pools.
    pub pools: PoolRegistry,
    /// Who we are.
    pub identity: Identity,
    /// Log filter control.
    pub log: LogHandle,
    /// Drain.
    pub drain: DrainSignal,
    /// Set by `/quitquitquit`: drain, then exit 0.
    pub quit: tokio::sync::Notify,
    /// Mesh TLS, when this sidecar has an identity (`--token-file` in push mode).
    pub tls: Option<Arc<MeshTls>>,
    /// Finished spans go here; its exporter follows the snapshot's tracing settings.
    pub traces: Arc<SpanSink>,
    has_config: AtomicBool,
}

impl Shared {
    /// Shared state serving `snapshot`, a placeholder until the first config is installed.
    pub fn new(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        pools: PoolRegistry,
        identity: Identity,
        log: LogHandle,
        drain: DrainSignal,
        tls: Option<Arc<MeshTls>>,
    ) -> Arc<Self> {
        let traces = Arc::new(SpanSink::new(Arc::clone(&metrics), &identity));
        Arc::new(Self {
            traces,
            snapshot: ArcSwap::from_pointee(snapshot),
            status: Mutex::new(ConfigStatus::default()),
            metrics,
            pools,
            identity,
            log,
            drain,
            quit: tokio::sync::Notify::new(),
            tls,
            has_config: AtomicBool::new(false),
        })
    }

    /// Ready: a valid config is loaded, a certificate too when we have an identity, and we
    /// are not draining. Not ready under mTLS STRICT without a mesh identity either: every
    /// inbound connection would be refused, so no traffic should be sent here.
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why this sidecar is not ready (what `/ready` says), `None` when it is.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if self.drain.is_draining() {
            return Some("draining");
        }
        if !self.has_config.load(Ordering::Acquire) {
            return Some("no config yet");
        }
        if self.tls.as_ref().is_some_and(|tls| !tls.has_certificate()) {
            return Some("no valid certificate (not issued yet, or expired)");
        }
        let strict = self.snapshot.load().config.mesh.mtls_mode == ficus_config::MtlsMode::Strict;
        if self.tls.is_none() && strict {
            return Some("mTLS is STRICT and this sidecar has no mesh identity");
        }
        None
    }

    /// Swaps in `snapshot` and records success.
    pub fn install(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        self.traces
            .configure(snapshot.tracing.as_ref().map(|t| &t.endpoint));
        if self.tls.is_none() && snapshot.config.mesh.mtls_mode == ficus_config::MtlsMode::Strict {
            tracing::warn!(
                "mTLS is STRICT but this sidecar has no mesh identity (no --token-file): every \
                 inbound connection is refused, and it is not ready"
            );
        }
        self.snapshot.store(Arc::new(snapshot));
        self.has_config.store(true, Ordering::Release);
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.metrics
            .set_route_weights(&self.snapshot.load().config, &self.identity.namespace);
        if let Ok(mut status) = self.status.lock() {
            status.applied_at = Some(SystemTime::now());
            status.last_error = None;
        }
    }

    /// The access log `wanted` asks for: the serving one when it writes to the same place,
    /// else one opened now (an error names the field). Called before the new snapshot is
    /// built, so that a config whose log cannot be opened changes nothing.
    pub fn access_log_for(
        &self,
        wanted: Option<&ficus_config::AccessLog>,
    ) -> Result<Option<Arc<AccessLog>>, String> {
        let Some(wanted) = wanted else {
            return Ok(None);
        };
        let serving = self.snapshot.load();
        if let Some(log) = serving
            .access_log
            .as_ref()
            .filter(|log| *log.target() == wanted.target)
        {
            return Ok(Some(Arc::clone(log)));
        }
        let log = AccessLog::open(
            &wanted.target,
            self.metrics.access_log_dropped.clone(),
            self.metrics.access_log_write_failed.clone(),
        )
        .map_err(|error| format!("spec.accessLog.path: {error}"))?;
        Ok(Some(log))
    }

    /// The config source is back to what is served: an earlier rejection is no longer news.
    pub fn clear_rejection(&self) {
        if let Ok(mut status) = self.status.lock() {
            status.last_error = None;
        }
    }

    /// Records a rejected config; the serving snapshot stays.
    pub fn record_rejection(&self, message: String) {
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(message);
        }
    }
}
