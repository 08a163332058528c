//! Connected sidecars and what each has acknowledged: written by the push streams, read by
//! `ficusctl status` and `apply --wait`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One sidecar as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SidecarStatus {
    /// Unique node id (from its Hello).
    pub node_id: String,
    /// Workload (service account).
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// Newest version it ACKed (or reported serving when it connected), if any.
    pub acked_version: Option<u64>,
    /// Version of its last NACK, if any.
    pub nacked_version: Option<u64>,
    /// Reason of its last NACK, cleared by a later ACK of a newer version.
    pub last_nack: Option<String>,
    /// When the current stream opened (seconds since the Unix epoch).
    pub connected_since: u64,
    /// Whether its stream is open now.
    pub connected: bool,
}

/// Every sidecar that connected since the control plane started.
#[derive(Debug)]
pub struct Registry {
    sidecars: Mutex<BTreeMap<String, SidecarStatus>>,
    changes: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            sidecars: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
        }
    }
}

impl Registry {
    /// A snapshot of every sidecar, connected ones first, by node id.
    pub fn list(&self) -> Vec<SidecarStatus> {
        let mut list: Vec<SidecarStatus> = self
            .sidecars
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| {
            b.connected
                .cmp(&a.connected)
                .then_with(|| a.node_id.cmp(&b.node_id))
        });
        list
    }

    /// Number of open streams.
    pub fn connected(&self) -> usize {
        self.sidecars
            .lock()
            .map(|s| s.values().filter(|s| s.connected).count())
            .unwrap_or(0)
    }

    /// A receiver that changes whenever any status changes (for `--wait`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A stream opened.
    pub fn connect(&self, node_id: &str, workload: &str, namespace: &str, serving: Option<u64>) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.update(node_id, |entry| {
            let previous = entry.take();
            *entry = Some(SidecarStatus {
                node_id: node_id.to_owned(),
                workload: workload.to_owned(),
                namespace: namespace.to_owned(),
                acked_version: serving.or(previous.as_ref().and_then(|p| p.acked_version)),
                nacked_version: previous.as_ref().and_then(|p| p.nacked_version),
                last_nack: previous.and_then(|p| p.last_nack),
                connected_since: now,
                connected: true,
            });
        });
    }

    /// The sidecar took `version`.
    pub fn ack(&self, node_id: &str, version: u64) {
        self.update(node_id, |entry| {
            if let Some(status) = entry {
                status.acked_version =
                    Some(status.acked_version.map_or(version, |v| v.max(version)));
                if status.nacked_version.is_some_and(|n| n <= version) {
                    status.last_nack = None;
                }
            }
        });
    }

    /// The sidecar refused `version` with `reason`.
    pub fn nack(&self, node_id: &str, version: u64, reason: &str) {
        self.update(node_id, |entry| {
            if let Some(status) = entry {
                status.nacked_version = Some(version);
                status.last_nack = Some(reason.to_owned());
            }
        });
    }

    /// The stream closed.
    pub fn disconnect(&self, node_id: &str) {
        self.update(node_id, |entry| {
            if let Some(status) = entry {
                status.connected = false;
            }
        });
    }

    fn update(&self, node_id: &str, change: impl FnOnce(&mut Option<SidecarStatus>)) {
        if let Ok(mut sidecars) = self.sidecars.lock() {
            let mut entry = sidecars.remove(node_id);
            change(&mut entry);
            if let Some(status) = entry {
                sidecars.insert(node_id.to_owned(), status);
            }
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_clears_an_older_nack() {
        let registry = Registry::default();
        registry.connect("a", "web", "shop", None);
        registry.nack("a", 3, "listen address in use");
        assert_eq!(
            registry.list()[0].last_nack.as_deref(),
            Some("listen address in use")
        );
        registry.ack("a", 2);
        assert!(
            registry.list()[0].last_nack.is_some(),
            "an older ACK keeps the NACK"
        );
        registry.ack("a", 4);
        let status = &registry.list()[0];
        assert_eq!(
            (status.acked_version, status.last_nack.as_deref()),
            (Some(4), None)
        );
        registry.disconnect("a");
        assert_eq!(registry.connected(), 0);
    }
}
