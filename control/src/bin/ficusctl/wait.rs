//! `--wait` of `apply`, `rollback` and `delete`: poll `/v1/status` until every connected
//! sidecar has ACKed the version, one has NACKed it, or the timeout passes.
//!
//! Only connected sidecars are waited for: a disconnected one cannot take a push until it
//! comes back (it then gets the current version at once). The wait fails (exit 1) when a
//! connected sidecar NACKs or the timeout passes with one that has not ACKed. Sidecars the
//! control plane knows but that are disconnected are listed after the report as a warning,
//! with the last version each ACKed, and do not fail the wait; with no sidecar connected at
//! all the report says `no sidecar connected: nothing confirmed` and the wait succeeds, so that
//! a rollback during an outage of every sidecar is still a success — the warning says what it
//! could not confirm.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::Client;
use crate::CtlError;

/// How often `/v1/status` is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most disconnected sidecars named one by one (the control plane remembers thousands); the
/// rest are counted.
const DISCONNECTED_SHOWN: usize = 20;

/// `--wait` and `--timeout`, shared by `apply`, `rollback` and `delete`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WaitArgs {
    /// Wait until every connected sidecar has ACKed the new version (or one NACKs it);
    /// disconnected sidecars are listed as a warning and not waited for.
    #[arg(long, env = "FICUS_WAIT")]
    pub wait: bool,
    /// How long `--wait` waits, e.g. 30s or 2m.
    #[arg(long, env = "FICUS_TIMEOUT", default_value = "30s", value_parser = crate::parse_timeout)]
    pub timeout: Duration,
}

impl WaitArgs {
    /// No waiting (the demo, which watches the sidecars itself).
    pub const NO: WaitArgs = WaitArgs {
        wait: false,
        timeout: Duration::from_secs(30),
    };

    /// With `--wait`, waits for `version` (see [`wait`]); otherwise returns at once.
    pub async fn for_version(self, client: &Client, version: u64) -> Result<(), CtlError> {
        if self.wait {
            wait(client, version, self.timeout).await
        } else {
            Ok(())
        }
    }
}

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
        let (connected, disconnected): (Vec<Sidecar>, Vec<Sidecar>) =
            status.sidecars.into_iter().partition(|s| s.connected);
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
            warn_disconnected(&disconnected);
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
        println!("no sidecar connected: nothing confirmed");
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

/// Names the sidecars that are known but disconnected, with what each last ACKed: they were
/// not waited for and may still serve an older version.
fn warn_disconnected(disconnected: &[Sidecar]) {
    if disconnected.is_empty() {
        return;
    }
    let count = disconnected.len();
    let noun = if count == 1 {
        "sidecar is"
    } else {
        "sidecars are"
    };
    println!("warning: {count} known {noun} disconnected (not waited for):");
    for line in disconnected_lines(disconnected) {
        println!("{line}");
    }
}

fn disconnected_lines(disconnected: &[Sidecar]) -> Vec<String> {
    let mut lines: Vec<String> = disconnected
        .iter()
        .take(DISCONNECTED_SHOWN)
        .map(|sidecar| {
            let last = match (sidecar.acked_version, sidecar.reported_version) {
                (Some(acked), _) => format!("last ACKed version {acked}"),
                (None, Some(reported)) => {
                    format!("no version ACKed (said it served {reported})")
                }
                (None, None) => "no version ACKed".to_owned(),
            };
            format!(
                "  {} ({}.{}): disconnected, {last}",
                sidecar.node_id, sidecar.workload, sidecar.namespace
            )
        })
        .collect();
    if disconnected.len() > DISCONNECTED_SHOWN {
        lines.push(format!(
            "  … and {} more (ficusctl status)",
            disconnected.len() - DISCONNECTED_SHOWN
        ));
    }
    lines
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

    /// A disconnected sidecar is named with the last version it ACKed; past a bound the rest
    /// are counted.
    #[test]
    fn disconnected_sidecars_are_named_with_their_last_ack() {
        let registry = Registry::default();
        let stream = registry.connect("a", "web", "shop", None);
        registry.ack("a", stream, 4);
        registry.disconnect("a", stream);
        let stream = registry.connect("b", "api", "shop", Some(3));
        registry.disconnect("b", stream);
        assert_eq!(
            disconnected_lines(&registry.list()),
            [
                "  a (web.shop): disconnected, last ACKed version 4",
                "  b (api.shop): disconnected, no version ACKed (said it served 3)",
            ]
        );
        for n in 0..DISCONNECTED_SHOWN {
            let node = format!("c{n:02}");
            let stream = registry.connect(&node, "web", "shop", None);
            registry.disconnect(&node, stream);
        }
        let lines = disconnected_lines(&registry.list());
        assert_eq!(lines.len(), DISCONNECTED_SHOWN + 1);
        assert_eq!(
            lines[DISCONNECTED_SHOWN],
            "  … and 2 more (ficusctl status)"
        );
    }
}
