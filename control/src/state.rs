//! What the HTTP API and the push streams share.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

/// One stored config version: the full set of documents after an apply, delete or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, 3, …; 0 only for the empty config before the first apply (never stored).
    pub version: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Who applied it, when known (from the admin token or `--author`).
    pub author: Option<String>,
    /// One line: what changed (e.g. `apply: 2 created, 1 changed (HTTPRoute shop/shop)`).
    pub summary: String,
    /// Every document of the config at this version (JSON objects, namespaces filled in),
    /// sorted by kind, namespace and name.
    pub documents: Vec<serde_json::Value>,
    /// For a version made by `rollback`: the version whose documents it made current again
    /// (`None` for applies, deletes and cluster syncs). A plain rollback from this version goes
    /// to the version before that one, so that rollback after rollback walks further back
    /// instead of undoing the previous rollback (see [`crate::apply::default_rollback_target`]).
    /// Absent in records stored before it existed: [`crate::store`] then reads it from the
    /// summary.
    #[serde(default)]
    pub rolled_back_to: Option<u64>,
}

impl VersionRecord {
    /// The empty config served before the first apply.
    pub fn empty() -> Self {
        Self {
            version: 0,
            created_at_ms: 0,
            author: None,
            summary: String::new(),
            documents: Vec::new(),
            rolled_back_to: None,
        }
    }
}

/// Shared by every task of the control plane.
#[derive(Debug)]
pub struct ControlState {
    /// Durable versions.
    pub store: Store,
    /// Connected sidecars.
    pub registry: Registry,
    /// The current version; push streams watch it.
    pub current: watch::Sender<Arc<VersionRecord>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Serializes writes (apply, delete, rollback): read current → validate → commit → publish.
    pub writes: tokio::sync::Mutex<()>,
    /// The CA's trust domain (`--trust-domain`), set at start unless `--insecure`: an apply
    /// whose `Mesh.spec.trustDomain` names another one is refused.
    pub trust_domain: std::sync::OnceLock<String>,
    /// The trust bundle in force (PEM: the CA's root plus `ca/extra-roots.pem`), sent on every
    /// push stream; empty with `--insecure`. Push streams watch it: a change is pushed to
    /// every connected sidecar even when the config did not change.
    pub trust_bundle: watch::Sender<Arc<str>>,
}

impl ControlState {
    /// State over an opened store, publishing its current version.
    pub fn new(store: Store, current: VersionRecord) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry: Registry::default(),
            current: watch::channel(Arc::new(current)).0,
            metrics: Metrics::new(),
            writes: tokio::sync::Mutex::new(()),
            trust_domain: std::sync::OnceLock::new(),
            trust_bundle: watch::channel(Arc::from("")).0,
        })
    }

    /// Publishes a newly committed version to the push streams.
    pub fn publish(&self, record: VersionRecord) {
        self.current.send_replace(Arc::new(record));
    }

    /// The current version.
    pub fn current(&self) -> Arc<VersionRecord> {
        Arc::clone(&self.current.borrow())
    }
}
