//! `apply --wait`: poll `/v1/status` until every connected sidecar has ACKed the version, one
//! has NACKed it, or the timeout passes.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::Client;
use crate::CtlError;

/// How often `/v1/status` is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// `GET /v1/status`.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// The current version.
    pub version: u64,
    /// Every sidecar the control plane has seen since it started.
    pub sidecars: Vec<Sidecar>,
}

/// One sidecar of `/v1/status`: the registry's own type.
pub use ficus_control::registry::SidecarStatus as Sidecar;

/// What `--wait` asks of a sidecar.
trait Progress {
    fn has(&self, version: u64) -> bool;
    fn refused(&self, version: u64) -> Option<&str>;
}

impl Progress for Sidecar {
    /// Whether the sidecar ACKed `version` or a newer one pushed by this control plane (the
    /// version it reports in its Hello does not count: it may be another replica's).
    fn has(&self, version: u64) -> bool {
        self.acked_version.is_some_and(|acked| acked >= version)
    }

    fn refused(&self, version: u64) -> Option<&str> {
        if self.has(version) {
            return None;
        }
        let nacked = self.nacked_version.is_some_and(|nacked| nacked >= version);
        self.last_nack.as_deref().filter(|_| nacked)
    }
}

/// Waits for `version` on every connected sidecar; prints progress, then one line per sidecar.
pub async fn wait(client: &Client, version: u64, timeout: Duration) -> Result<(), CtlError> {
    let deadline = Instant::now() + timeout;
    let terminal = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    loop {
        let status: Status = client.get("/v1/status").await?;
        let connected: Vec<Sidecar> = status
            .sidecars
            .into_iter()
            .filter(|s| s.connected)
            .collect();
        let at = connected.iter().filter(|s| s.has(version)).count();
        let line = format!(
            "waiting: {at}/{} sidecars at version {version}",
            connected.len()
        );
        if terminal {
            print!("\r{line}\x1b[K");
            let _ = std::io::stdout().flush();
        } else if line != last_line {
            println!("{line}");
        }
        last_line = line;
        let refused: Vec<&Sidecar> = connected
            .iter()
            .filter(|s| s.refused(version).is_some())
            .collect();
        let done = at == connected.len();
        let timed_out = Instant::now() >= deadline;
        if done || !refused.is_empty() || timed_out {
            if terminal {
                println!();
            }
            report(&connected, version);
            if let Some(first) = refused.first() {
                let reason = first.refused(version).unwrap_or_default();
                return Err(CtlError::failed(format!(
                    "sidecar {} refused version {version}: {reason}",
                    first.node_id
                )));
            }
            if done {
                return Ok(());
            }
            return Err(CtlError::failed(format!(
                "timed out after {timeout:?}: {at}/{} sidecars at version {version}",
                connected.len()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn report(connected: &[Sidecar], version: u64) {
    if connected.is_empty() {
        println!("no sidecars connected");
    }
    for sidecar in connected {
        let what = if sidecar.has(version) {
            format!("acked version {}", sidecar.acked_version.unwrap_or(version))
        } else if let Some(reason) = sidecar.refused(version) {
            format!(
                "NACK version {}: {reason}",
                sidecar.nacked_version.unwrap_or(version)
            )
        } else {
            match (sidecar.acked_version, sidecar.reported_version) {
                (Some(acked), _) => format!("still at version {acked}"),
                (None, Some(reported)) => {
                    format!("no version confirmed yet (says it serves {reported})")
                }
                (None, None) => "no version yet".to_owned(),
            }
        };
        println!(
            "  {} ({}.{}): {what}",
            sidecar.node_id, sidecar.workload, sidecar.namespace
        );
    }
}

#[cfg(test)]
mod tests {
    use ficus_control::registry::Registry;

    use super::*;

    /// `--wait` for version 401 on a sidecar that arrived saying it serves 900 (another
    /// replica's number) waits for its ACK of 401.
    #[test]
    fn a_reported_version_does_not_satisfy_the_wait() {
        let registry = Registry::default();
        let stream = registry.connect("a", "web", "shop", Some(900));
        let sidecar = || registry.list().remove(0);
        assert!(!sidecar().has(401), "{:?}", sidecar());
        registry.ack("a", stream, 400);
        assert!(!sidecar().has(401));
        registry.ack("a", stream, 401);
        assert!(sidecar().has(401));
    }
}
