//! The live table: every refresh scrapes each sidecar's `/metrics` and the control plane's
//! `/v1/status`, and turns the differences since the previous scrape into rates, error shares
//! and latency quantiles.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::load::{Load, Totals};
use super::procs::SidecarAddrs;
use super::scrape::{self, Buckets, Sample, Scrape};
use crate::client::Client;
use crate::wait::Status;

/// Bound of one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Request metric names.
const REQUESTS: &str = "ficus_requests_total";
const DURATION: &str = "ficus_request_duration_seconds";

/// Counters of the gateway (the caller) and the servers that prove what happened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Proof {
    /// `ficus_retries_total` on the gateway.
    pub retries: f64,
    /// `ficus_retry_budget_exhausted_total` on the gateway.
    pub budget_exhausted: f64,
    /// `ficus_outlier_ejections_active` on the gateway.
    pub ejections_active: f64,
    /// `ficus_rate_limited_total` on the reports sidecar.
    pub rate_limited: f64,
    /// Answers ≥ 500 the payments-v2 instances' sidecars sent back (inbound).
    pub v2_server_errors: f64,
}

/// One refresh's numbers.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Table lines.
    pub lines: Vec<String>,
    /// Counters, cumulative.
    pub proof: Proof,
}

/// Scrapes and renders.
#[derive(Debug)]
pub struct Monitor {
    sidecars: Vec<SidecarAddrs>,
    control: Client,
    previous: BTreeMap<String, Scrape>,
    previous_load: (Totals, Totals),
    previous_at: Instant,
}

impl Monitor {
    /// A monitor of these sidecars; the first [`Monitor::refresh`] shows rates since now.
    pub async fn new(sidecars: Vec<SidecarAddrs>, control: Client, load: &Load) -> Self {
        let mut monitor = Self {
            sidecars,
            control,
            previous: BTreeMap::new(),
            previous_load: (load.payments.totals(), load.other.totals()),
            previous_at: Instant::now(),
        };
        monitor.previous = monitor.scrape_all().await;
        monitor
    }

    async fn scrape_all(&self) -> BTreeMap<String, Scrape> {
        let mut scrapes = BTreeMap::new();
        for sidecar in &self.sidecars {
            let text = match scrape::get(sidecar.admin, "/metrics", SCRAPE_TIMEOUT).await {
                Ok((200, body)) => String::from_utf8_lossy(&body).into_owned(),
                _ => String::new(),
            };
            scrapes.insert(sidecar.node_id.clone(), Scrape::parse(&text));
        }
        scrapes
    }

    /// Scrapes everything and renders the table of the interval since the last refresh.
    pub async fn refresh(&mut self, phase: &str, load: &Load) -> View {
        let now = self.scrape_all().await;
        let status: Option<Status> = self.control.get("/v1/status").await.ok();
        let elapsed = self.previous_at.elapsed().as_secs_f64().max(0.001);
        let load_now = (load.payments.totals(), load.other.totals());
        let mut acked = BTreeMap::new();
        for sidecar in &self.sidecars {
            let version = status.as_ref().and_then(|s| {
                s.sidecars
                    .iter()
                    .find(|c| c.node_id == sidecar.node_id && c.connected)
                    .and_then(|c| c.acked_version)
            });
            acked.insert(sidecar.node_id.clone(), version);
        }
        let version_of = |node: &str| {
            acked
                .get(node)
                .copied()
                .flatten()
                .map_or_else(|| "-".to_owned(), |v| format!("v{v}"))
        };
        let empty = Scrape::default();
        let mut rows = Vec::new();
        let client = load_now.0.since(self.previous_load.0);
        let client_other = load_now.1.since(self.previous_load.1);
        let both = Totals {
            sent: client.sent + client_other.sent,
            ok: client.ok + client_other.ok,
            failed: client.failed + client_other.failed,
        };
        rows.push(format!(
            "{:<30} {:>7.1} {:>6.1}% {:>8} {:>8}  {}",
            "client (what the app sees)",
            (both.ok + both.failed) as f64 / elapsed,
            both.error_percent(),
            "",
            "",
            ""
        ));
        let gateway = self.sidecars.iter().find(|s| s.workload == "gateway");
        if let Some(gateway) = gateway {
            let (new, old) = (
                now.get(&gateway.node_id).unwrap_or(&empty),
                self.previous.get(&gateway.node_id).unwrap_or(&empty),
            );
            for backend in ["monolith", "payments-v2", "reports"] {
                let label = format!("shop/{backend}");
                let keep = |s: &Sample| {
                    s.label("direction") == Some("outbound")
                        && s.label("destination_backend") == Some(label.as_str())
                };
                rows.push(row(
                    &format!("gateway -> {backend}"),
                    new,
                    old,
                    &keep,
                    elapsed,
                    &version_of(&gateway.node_id),
                ));
            }
        }
        for sidecar in self.sidecars.iter().filter(|s| s.workload != "gateway") {
            let (new, old) = (
                now.get(&sidecar.node_id).unwrap_or(&empty),
                self.previous.get(&sidecar.node_id).unwrap_or(&empty),
            );
            let keep = |s: &Sample| s.label("direction") == Some("inbound");
            rows.push(row(
                &format!("{} (inbound)", sidecar.node_id),
                new,
                old,
                &keep,
                elapsed,
                &version_of(&sidecar.node_id),
            ));
        }
        let proof = proof(&self.sidecars, &now);
        let old_proof = proof_of(&self.sidecars, &self.previous);
        let mut lines = vec![
            format!("{phase}"),
            format!(
                "{:<30} {:>7} {:>7} {:>8} {:>8}  {}",
                "", "REQ/S", "ERR", "P50", "P95", "ACKED"
            ),
        ];
        lines.extend(rows);
        // Short lines: a terminal narrower than a line would wrap it and spoil the redraw.
        lines.push(format!(
            "gateway: retries {} (+{}), endpoints ejected {}, retry budget exhausted {}",
            proof.retries,
            (proof.retries - old_proof.retries).max(0.0),
            proof.ejections_active,
            proof.budget_exhausted,
        ));
        lines.push(format!(
            "reports: rate limited {} (ficus_rate_limited_total)",
            proof.rate_limited
        ));
        self.previous = now;
        self.previous_load = load_now;
        self.previous_at = Instant::now();
        View { lines, proof }
    }
}

/// One table row from the request counters and duration histogram of the series `keep`
/// selects.
fn row(
    name: &str,
    new: &Scrape,
    old: &Scrape,
    keep: &dyn Fn(&Sample) -> bool,
    elapsed: f64,
    version: &str,
) -> String {
    let total = (new.sum(REQUESTS, keep) - old.sum(REQUESTS, keep)).max(0.0);
    let is_error = |s: &Sample| {
        keep(s)
            && s.label("response_code")
                .and_then(|c| c.parse::<u16>().ok())
                .is_some_and(|c| c >= 500)
    };
    let errors = (new.sum(REQUESTS, is_error) - old.sum(REQUESTS, is_error)).max(0.0);
    let buckets: Buckets = new
        .buckets(DURATION, keep)
        .since(&old.buckets(DURATION, keep));
    let ms = |q: f64| {
        buckets
            .quantile(q)
            .map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s * 1000.0))
    };
    let error_percent = if total > 0.0 {
        100.0 * errors / total
    } else {
        0.0
    };
    format!(
        "{name:<30} {:>7.1} {:>6.1}% {:>8} {:>8}  {version}",
        total / elapsed,
        error_percent,
        ms(0.5),
        ms(0.95)
    )
}

fn proof(sidecars: &[SidecarAddrs], scrapes: &BTreeMap<String, Scrape>) -> Proof {
    proof_of(sidecars, scrapes)
}

fn proof_of(sidecars: &[SidecarAddrs], scrapes: &BTreeMap<String, Scrape>) -> Proof {
    let mut proof = Proof::default();
    let all = |_: &Sample| true;
    for sidecar in sidecars {
        let Some(scrape) = scrapes.get(&sidecar.node_id) else {
            continue;
        };
        match sidecar.workload.as_str() {
            "gateway" => {
                proof.retries = scrape.sum("ficus_retries_total", all);
                proof.budget_exhausted = scrape.sum("ficus_retry_budget_exhausted_total", all);
                proof.ejections_active = scrape.sum("ficus_outlier_ejections_active", all);
            }
            "reports" => proof.rate_limited = scrape.sum("ficus_rate_limited_total", all),
            "payments-v2" => {
                proof.v2_server_errors += scrape.sum(REQUESTS, |s| {
                    s.label("direction") == Some("inbound")
                        && s.label("response_code")
                            .and_then(|c| c.parse::<u16>().ok())
                            .is_some_and(|c| c >= 500)
                });
            }
            _ => {}
        }
    }
    proof
}

/// Where the output goes: a terminal gets the table redrawn in place, anything else gets
/// plain lines.
#[derive(Debug)]
pub struct Screen {
    tty: bool,
    drawn: usize,
}

impl Screen {
    /// Looks at stdout.
    pub fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
        }
    }

    /// Removes the table from a terminal so that other output can follow.
    pub fn clear(&mut self) {
        if self.tty && self.drawn > 0 {
            print!("\x1b[{}A\x1b[J", self.drawn);
            let _ = std::io::stdout().flush();
        }
        self.drawn = 0;
    }

    /// Prints a line above the table.
    pub fn event(&mut self, line: &str) {
        self.clear();
        println!("{line}");
    }

    /// Draws the table (in place on a terminal).
    pub fn table(&mut self, lines: &[String]) {
        self.clear();
        let mut out = String::new();
        for line in lines {
            if self.tty {
                out.push_str(line);
                out.push_str("\x1b[K\n");
            } else {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        if !self.tty {
            out.push('\n');
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
        if self.tty {
            self.drawn = lines.len();
        }
    }

    /// Leaves the last table on screen (the next output goes below it).
    pub fn keep(&mut self) {
        self.drawn = 0;
    }
}
