//! Connected sidecars and what each has acknowledged: written by the push streams, read by
//! `ficusctl status` and `apply --wait`.
//!
//! A version counts as acknowledged only when this process pushed it on the sidecar's current
//! stream and the sidecar ACKed it. The version a sidecar names in its Hello is only reported
//! (`reported_version`): it may come from another control-plane replica, whose version numbers
//! mean other documents, or from a cache, so a sidecar arriving from a replica at version 900
//! does not make `apply --wait` for version 401 here succeed before it has taken 401.

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
    /// Newest version this control plane pushed on the current stream and the sidecar ACKed,
    /// if any. What `apply --wait` counts.
    pub acked_version: Option<u64>,
    /// The version the sidecar said it serves when the current stream opened (its Hello), if
    /// any: unconfirmed, since it may be another control plane's number or come from a cache.
    #[serde(default)]
    pub reported_version: Option<u64>,
    /// Version of its last NACK, if any.
    pub nacked_version: Option<u64>,
    /// Reason of its last NACK, cleared by a later ACK of a newer version.
    pub last_nack: Option<String>,
    /// When the current stream opened (seconds since the Unix epoch).
    pub connected_since: u64,
    /// Whether its stream is open now.
    pub connected: bool,
    /// Which stream of the sidecar this is (a reconnect opens a newer one before the control
    /// plane may have noticed the old one end).
    #[serde(skip)]
    stream: u64,
}

/// Every sidecar that connected since the control plane started.
#[derive(Debug)]
pub struct Registry {
    sidecars: Mutex<BTreeMap<String, SidecarStatus>>,
    changes: watch::Sender<u64>,
    /// The id of the last stream opened.
    streams: std::sync::atomic::AtomicU64,
}

/// Most sidecars kept after they disconnected (pods come and go under new names); past it the
/// one that connected longest ago is forgotten.
const MAX_DISCONNECTED: usize = 4096;

impl Default for Registry {
    fn default() -> Self {
        Self {
            sidecars: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            streams: std::sync::atomic::AtomicU64::new(0),
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

    /// A stream opened, from a sidecar that says it serves `serving` (recorded as reported,
    /// not as acknowledged); returns its id, for [`Registry::ack`], [`Registry::nack`] and
    /// [`Registry::disconnect`].
    pub fn connect(
        &self,
        node_id: &str,
        workload: &str,
        namespace: &str,
        serving: Option<u64>,
    ) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stream = self
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.update(node_id, |entry| {
            let previous = entry.take();
            *entry = Some(SidecarStatus {
                node_id: node_id.to_owned(),
                workload: workload.to_owned(),
                namespace: namespace.to_owned(),
                // ACKs on an earlier stream say nothing of what the sidecar serves now (it may
                // have been to another replica since).
                acked_version: None,
                reported_version: serving,
                nacked_version: previous.as_ref().and_then(|p| p.nacked_version),
                last_nack: previous.and_then(|p| p.last_nack),
                connected_since: now,
                connected: true,
                stream,
            });
        });
        stream
    }

    /// The sidecar took `version`, pushed on stream `stream`. An answer on a stream the
    /// sidecar has since replaced changes nothing.
    pub fn ack(&self, node_id: &str, stream: u64, version: u64) {
        self.update(node_id, |entry| {
            if let Some(status) = entry.as_mut().filter(|s| s.stream == stream) {
                status.acked_version =
                    Some(status.acked_version.map_or(version, |v| v.max(version)));
                if status.nacked_version.is_some_and(|n| n <= version) {
                    status.last_nack = None;
                }
            }
        });
    }

    /// The sidecar refused `version`, pushed on stream `stream`, with `reason`. An answer on a
    /// stream the sidecar has since replaced changes nothing.
    pub fn nack(&self, node_id: &str, stream: u64, version: u64, reason: &str) {
        self.update(node_id, |entry| {
            if let Some(status) = entry.as_mut().filter(|s| s.stream == stream) {
                status.nacked_version = Some(version);
                status.last_nack = Some(reason.to_owned());
            }
        });
    }

    /// Stream `stream` of the sidecar closed. When the sidecar has connected again since
    /// (a newer stream), the end of the old one changes nothing.
    pub fn disconnect(&self, node_id: &str, stream: u64) {
        self.update(node_id, |entry| {
            if let Some(status) = entry.as_mut().filter(|s| s.stream == stream) {
                status.connected = false;
            }
        });
        if let Ok(mut sidecars) = self.sidecars.lock() {
            let disconnected = sidecars.values().filter(|s| !s.connected).count();
            if disconnected > MAX_DISCONNECTED {
                let oldest = sidecars
                    .values()
                    .filter(|s| !s.connected)
                    .min_by_key(|s| s.connected_since)
                    .map(|s| s.node_id.clone());
                if let Some(oldest) = oldest {
                    sidecars.remove(&oldest);
                }
            }
        }
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
        let stream = registry.connect("a", "web", "shop", None);
        registry.nack("a", stream, 3, "listen address in use");
        assert_eq!(
            registry.list()[0].last_nack.as_deref(),
            Some("listen address in use")
        );
        registry.ack("a", stream, 2);
        assert!(
            registry.list()[0].last_nack.is_some(),
            "an older ACK keeps the NACK"
        );
        registry.ack("a", stream, 4);
        let status = &registry.list()[0];
        assert_eq!(
            (status.acked_version, status.last_nack.as_deref()),
            (Some(4), None)
        );
        registry.disconnect("a", stream);
        assert_eq!(registry.connected(), 0);
    }

    /// A sidecar that comes from a control-plane replica at version 900 to this one (at 400)
    /// says it serves 900; that is not an ACK of anything this process pushed, so `apply
    /// --wait` for 401 must wait for the ACK of 401.
    #[test]
    fn the_version_in_a_hello_is_not_an_ack() {
        let registry = Registry::default();
        let acked = |registry: &Registry| registry.list()[0].acked_version;
        let stream = registry.connect("a", "web", "shop", Some(900));
        assert!(
            acked(&registry).is_none_or(|v| v < 401),
            "{:?}",
            registry.list()
        );
        assert_eq!(registry.list()[0].reported_version, Some(900));
        registry.ack("a", stream, 400);
        assert_eq!(acked(&registry), Some(400));
        registry.ack("a", stream, 401);
        assert_eq!(acked(&registry), Some(401));
    }

    /// What a sidecar ACKed on an earlier stream, or answers late on one it has replaced, is
    /// not what it serves on the current one.
    #[test]
    fn acks_count_only_on_the_current_stream() {
        let registry = Registry::default();
        let acked = |registry: &Registry| registry.list()[0].acked_version;
        let old = registry.connect("a", "web", "shop", None);
        registry.ack("a", old, 7);
        assert_eq!(acked(&registry), Some(7));
        let new = registry.connect("a", "web", "shop", Some(7));
        assert_eq!(
            acked(&registry),
            None,
            "not yet confirmed on the new stream"
        );
        registry.ack("a", old, 8);
        registry.nack("a", old, 9, "late");
        let status = &registry.list()[0];
        assert_eq!(
            (status.acked_version, status.last_nack.as_deref()),
            (None, None)
        );
        registry.ack("a", new, 7);
        assert_eq!(acked(&registry), Some(7));
    }

    #[test]
    fn the_end_of_an_old_stream_leaves_a_reconnected_sidecar_connected() {
        let registry = Registry::default();
        let old = registry.connect("a", "web", "shop", Some(1));
        let new = registry.connect("a", "web", "shop", Some(1));
        registry.disconnect("a", old);
        assert_eq!(registry.connected(), 1, "the new stream is open");
        registry.disconnect("a", new);
        assert_eq!(registry.connected(), 0);
    }

    #[test]
    fn sidecars_long_gone_are_forgotten_past_a_bound() {
        let registry = Registry::default();
        for i in 0..MAX_DISCONNECTED + 10 {
            let node = format!("pod-{i}");
            let stream = registry.connect(&node, "web", "shop", None);
            registry.disconnect(&node, stream);
        }
        let live = registry.connect("live", "web", "shop", None);
        assert_eq!(registry.list().len(), MAX_DISCONNECTED + 1);
        assert!(registry.list()[0].connected);
        registry.disconnect("live", live);
    }
}
