//! `ficusctl demo`: the strangler-fig migration on this machine, with real processes and real
//! traffic.
//!
//! It starts `ficus-control` (the mesh CA, join tokens, a temporary data dir) and one
//! `ficus-sidecar` per workload, found next to this executable: `gateway` (the client the
//! load goes through), `monolith`, two `payments-v2` instances and `reports`. The apps behind
//! them are small HTTP servers inside this process. It applies the config of
//! `config/examples/demo/` (mTLS STRICT, timeouts, retries, outlier detection, a rate limit),
//! moves `/api/payments` 0 → 10 → 50 → 100 % to payments-v2 through the API `ficusctl apply`
//! uses, makes one payments-v2 instance slow and failing, shows `history` and a `rollback`,
//! and prints a summary. Everything it started is killed and reaped when it ends, on an error,
//! on Ctrl-C, SIGTERM or SIGHUP, and when a panic unwinds (not when it is killed with
//! SIGKILL: the children would need a parent-death signal, set between fork and exec).

#[path = "demo/apps.rs"]
mod apps;
#[path = "demo/config.rs"]
mod config;
#[path = "demo/load.rs"]
mod load;
#[path = "demo/monitor.rs"]
mod monitor;
#[path = "demo/procs.rs"]
mod procs;
#[path = "demo/scrape.rs"]
mod scrape;

use std::time::{Duration, Instant};

use http::Method;
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

use self::apps::App;
use self::config::Endpoints;
use self::load::{Load, Totals};
use self::monitor::{Monitor, Proof, Screen};
use self::procs::{ControlAddrs, Processes, SidecarAddrs};
use crate::client::Client;
use crate::wait::Status;
use crate::{commands, CtlError};

/// Shortest `--duration`: below it the steps are too short to show a rate.
pub const MIN_DURATION: Duration = Duration::from_secs(10);
/// Requests a second the client sends in all.
const RATE: u32 = 40;
/// Concurrent client connections.
const WORKERS: u32 = 8;
/// How often the table is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// How long every sidecar may take to ACK a version.
const ACK_DEADLINE: Duration = Duration::from_secs(30);
/// Requests of the rate-limit burst (the limit is 100 a minute).
const BURST: u32 = 150;
/// The workloads that get join tokens.
const WORKLOADS: [&str; 4] = ["gateway", "monolith", "payments-v2", "reports"];
/// The split's steps: payments-v2's percentage and the share of `--duration` it is held.
const STEPS: [(u32, f64); 4] = [(0, 0.10), (10, 0.15), (50, 0.15), (100, 0.15)];
/// How long after a step's ACK its split starts being counted: requests the gateway routed by
/// the previous split just before the swap are still being answered.
const SETTLE: Duration = Duration::from_millis(500);
/// Shares of `--duration` of the fault phase and of the hold after the rollback.
const FAULT_SHARE: f64 = 0.25;
const ROLLBACK_SHARE: f64 = 0.15;

/// `POST /v1/apply` and `/v1/rollback` answers.
#[derive(Debug, Deserialize)]
struct Outcome {
    version: u64,
    committed: bool,
}

/// `GET /v1/history` (only what the summary needs).
#[derive(Debug, Deserialize)]
struct History {
    versions: Vec<serde_json::Value>,
}

/// `GET /v1/config`.
#[derive(Debug, Deserialize)]
struct Current {
    version: u64,
    documents: Vec<serde_json::Value>,
}

/// What the run leaves running for `--keep`.
struct Finished {
    _apps: Vec<App>,
    control: ControlAddrs,
    sidecars: Vec<SidecarAddrs>,
}

/// Why the run stopped early.
enum Stop {
    Failed(CtlError),
    Signal(&'static str),
}

impl From<CtlError> for Stop {
    fn from(error: CtlError) -> Self {
        Self::Failed(error)
    }
}

/// Runs the demo; with `keep` it stays up after the summary until Ctrl-C or SIGTERM.
pub async fn run(duration: Duration, keep: bool) -> Result<(), CtlError> {
    if duration < MIN_DURATION {
        return Err(CtlError::Usage(format!(
            "--duration must be at least {}s",
            MIN_DURATION.as_secs()
        )));
    }
    // Registered before any child exists, so Ctrl-C never leaves one behind.
    let cannot = |e: std::io::Error| CtlError::failed(format!("cannot handle signals: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(cannot)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(cannot)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(cannot)?;
    let mut procs = Processes::new()?;
    let outcome = tokio::select! {
        outcome = migrate(&mut procs, duration) => outcome,
        _ = interrupt.recv() => Err(Stop::Signal("interrupted (Ctrl-C)")),
        _ = terminate.recv() => Err(Stop::Signal("terminated (SIGTERM)")),
        _ = hangup.recv() => Err(Stop::Signal("hung up (SIGHUP)")),
    };
    let result = match outcome {
        Ok(finished) => {
            if keep {
                explore(&finished, &procs);
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                    _ = hangup.recv() => {}
                }
                println!();
            }
            drop(finished);
            Ok(())
        }
        Err(Stop::Signal(why)) => {
            println!();
            println!("{why}: stopping");
            Err(CtlError::failed(why))
        }
        Err(Stop::Failed(error)) => Err(error),
    };
    let running = procs.stop_all();
    let pids: Vec<String> = procs.pids().iter().map(u32::to_string).collect();
    let ports: Vec<String> = procs.ports().iter().map(u16::to_string).collect();
    println!("processes started: {}", pids.join(" "));
    println!("ports used: {}", ports.join(" "));
    println!(
        "stopped: {} processes ({running} still running were killed), all reaped",
        pids.len()
    );
    result
}

/// Starts everything, runs the phases and prints the summary.
async fn migrate(procs: &mut Processes, duration: Duration) -> Result<Finished, Stop> {
    let mut screen = Screen::new();
    println!(
        "ficus demo: moving /api/payments from the monolith to payments-v2 ({}s; Ctrl-C stops)",
        duration.as_secs()
    );
    println!("temporary directory: {}", procs.dir().display());
    let start_app = |name| async move {
        App::start(name)
            .await
            .map_err(|e| CtlError::failed(format!("cannot start the {name} app: {e}")))
    };
    let apps = vec![
        start_app("monolith").await?,
        start_app("payments-v2-1").await?,
        start_app("payments-v2-2").await?,
        start_app("reports").await?,
    ];
    for app in &apps {
        procs.note_port(app.addr.port());
    }
    let control = procs.start_control(&WORKLOADS).await?;
    println!(
        "started ficus-control: API http://{}, push and CA https://{}",
        control.http, control.grpc
    );
    let nowhere = procs::free_addr()?;
    let mut sidecars = Vec::new();
    for (workload, node_id, app) in [
        ("gateway", "gateway", nowhere),
        ("monolith", "monolith", apps[0].addr),
        ("payments-v2", "payments-v2-1", apps[1].addr),
        ("payments-v2", "payments-v2-2", apps[2].addr),
        ("reports", "reports", apps[3].addr),
    ] {
        let sidecar = procs.start_sidecar(control, workload, node_id, app).await?;
        println!(
            "started ficus-sidecar {node_id}: inbound {} -> app {app}, outbound {}, admin {}",
            sidecar.inbound, sidecar.outbound, sidecar.admin
        );
        sidecars.push(sidecar);
    }
    let endpoints = Endpoints {
        monolith: sidecars[1].inbound,
        payments_v2: [sidecars[2].inbound, sidecars[3].inbound],
        reports: sidecars[4].inbound,
    };
    let server = format!("http://{}", control.http);
    let client = Client::new(&server, None, Some("ficusctl demo".to_owned()))?;
    let gateway = sidecars[0].outbound;

    let mut slowest_ack = Duration::ZERO;
    let (version, took) = apply(&client, &endpoints, 0, &sidecars).await?;
    slowest_ack = slowest_ack.max(took);
    screen.event(&format!(
        "applied version {version} (payments-v2 0%, mTLS STRICT): ACKed by all {} sidecars in {:.2}s",
        sidecars.len(),
        took.as_secs_f64()
    ));
    for sidecar in &sidecars {
        wait_ready(sidecar).await?;
    }
    screen.event(&format!(
        "load: {RATE} GET/s from {WORKERS} connections to the gateway's outbound {gateway} \
         (Host: shop; 4 in 5 to /api/payments/…, 1 in 5 to /api/catalog/…)"
    ));
    let load = Load::start(gateway, RATE, WORKERS);
    let monitor = Monitor::new(sidecars.clone(), client.clone(), &load).await;
    let mut run = Run {
        procs,
        screen,
        monitor,
        load,
        last: Proof::default(),
    };

    let mut steps = Vec::new();
    let mut reached = None;
    for (percent, share) in STEPS {
        let version = if percent == 0 {
            version
        } else {
            let (version, took) = apply(&client, &endpoints, percent, &sidecars).await?;
            slowest_ack = slowest_ack.max(took);
            run.screen.event(&format!(
                "applied version {version} (payments-v2 {percent}%): ACKed by all {} sidecars in {:.2}s",
                sidecars.len(),
                took.as_secs_f64()
            ));
            tokio::time::sleep(SETTLE).await;
            version
        };
        let answered = |apps: &[App]| {
            let monolith = apps[0].payments_answered();
            (
                monolith,
                apps[1].payments_answered() + apps[2].payments_answered(),
            )
        };
        let before = answered(&apps);
        let label = format!("step: {percent}% of /api/payments to payments-v2 (version {version})");
        run.hold(&label, duration.mul_f64(share)).await?;
        let after = answered(&apps);
        let (monolith, v2) = (after.0 - before.0, after.1 - before.1);
        let observed = if monolith + v2 > 0 {
            100.0 * v2 as f64 / (monolith + v2) as f64
        } else {
            0.0
        };
        steps.push(format!("{percent}% v{version} (observed {observed:.1}%)"));
        reached = Some((percent, observed));
    }

    // The rate limit: a burst past 100 a minute at the reports service.
    run.screen.clear();
    let burst = load::burst(gateway, "/api/reports/monthly", BURST, 10).await;
    let allowed = burst.get(&200).copied().unwrap_or(0);
    let limited = burst.get(&429).copied().unwrap_or(0);
    let other = BURST - allowed - limited;
    run.refresh(&format!(
        "rate limit: a burst of {BURST} requests to /api/reports"
    ))
    .await;
    run.screen.event(&format!(
        "rate limit (reports, 100/min): {BURST} requests at once: {allowed} answered 200, \
         {limited} refused 429 by the reports sidecar, {other} other; ficus_rate_limited_total {}",
        run.last.rate_limited
    ));

    // The fault: one payments-v2 instance fails every other request and hangs on the rest.
    let fault_time = duration.mul_f64(FAULT_SHARE);
    run.screen.event(&format!(
        "fault: payments-v2-2 now answers 503 to every other request and takes {:.1}s for the rest ({:.0}s)",
        apps::SLOW.as_secs_f64(),
        fault_time.as_secs_f64()
    ));
    let (before_load, before) = (run.load.payments.totals(), run.last);
    apps[2].set_bad(true);
    let max_ejected = run
        .hold("fault: payments-v2-2 slow and failing", fault_time)
        .await?;
    apps[2].set_bad(false);
    let fault: Totals = run.load.payments.totals().since(before_load);
    let after = run.last;
    run.screen
        .event("fault over: payments-v2-2 answers normally again (it returns after its ejection)");

    // History and a rollback, through the same code as `ficusctl history` / `rollback`.
    run.screen
        .event(&format!("$ ficusctl --server {server} history"));
    commands::history(&client, Some(100)).await?;
    run.screen
        .event(&format!("$ ficusctl --server {server} rollback"));
    commands::rollback(&client, None, crate::wait::WaitArgs::NO).await?;
    let current: Current = client.get("/v1/config").await?;
    let took = wait_acked(&client, current.version, &sidecars).await?;
    let rolled_back_to = config::v2_percent(&current.documents);
    run.screen.event(&format!(
        "version {} ACKed by all {} sidecars in {:.2}s: payments-v2 {}% again",
        current.version,
        sidecars.len(),
        took.as_secs_f64(),
        rolled_back_to.map_or_else(|| "?".to_owned(), |p| p.to_string())
    ));
    run.hold(
        &format!("after rollback (version {})", current.version),
        duration.mul_f64(ROLLBACK_SHARE),
    )
    .await?;
    run.load.stop();
    run.screen.keep();
    let history: History = client.get("/v1/history").await?;
    let everything = {
        let (p, o) = (run.load.payments.totals(), run.load.other.totals());
        Totals {
            sent: p.sent + o.sent,
            ok: p.ok + o.ok,
            failed: p.failed + o.failed,
        }
    };

    println!();
    println!("summary");
    if let Some((percent, observed)) = reached {
        println!(
            "split reached: {percent}% (observed: payments-v2 answered {observed:.1}% of /api/payments)"
        );
    }
    println!("steps: {}", steps.join(", "));
    println!(
        "config: every version ACKed by all {} sidecars (slowest {:.2}s); mTLS STRICT between them",
        sidecars.len(),
        slowest_ack.max(took).as_secs_f64()
    );
    println!(
        "client requests: {} answered, {} failed ({:.2}%)",
        everything.ok,
        everything.failed,
        everything.error_percent()
    );
    println!(
        "fault phase requests: {} to /api/payments, {} failed",
        fault.ok + fault.failed,
        fault.failed
    );
    println!("fault phase errors: {:.2}%", fault.error_percent());
    println!(
        "fault phase retries: {} (gateway ficus_retries_total)",
        after.retries - before.retries
    );
    println!(
        "fault phase ejections: at most {max_ejected} endpoint(s) ejected (gateway ficus_outlier_ejections_active)"
    );
    println!(
        "fault phase server errors absorbed: {} (5xx sent by the payments-v2 sidecars; the client saw {})",
        after.v2_server_errors - before.v2_server_errors,
        fault.failed
    );
    println!(
        "fault phase retry budget exhausted: {}",
        after.budget_exhausted - before.budget_exhausted
    );
    println!("rate limit: {allowed} allowed, {limited} refused with 429 of {BURST}");
    println!("history: {} versions", history.versions.len());
    println!(
        "rollback: version {} (payments-v2 {}%)",
        current.version,
        rolled_back_to.map_or_else(|| "?".to_owned(), |p| p.to_string())
    );
    Ok(Finished {
        _apps: apps,
        control,
        sidecars,
    })
}

/// The running phases' shared state.
struct Run<'a> {
    procs: &'a mut Processes,
    screen: Screen,
    monitor: Monitor,
    load: Load,
    last: Proof,
}

impl Run<'_> {
    /// Keeps the current state for `time`, refreshing the table; the most endpoints seen
    /// ejected at once.
    async fn hold(&mut self, phase: &str, time: Duration) -> Result<f64, Stop> {
        let deadline = Instant::now() + time;
        let started = Instant::now();
        let mut max_ejected: f64 = 0.0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(max_ejected);
            }
            tokio::time::sleep(left.min(REFRESH)).await;
            if let Some(name) = self.procs.exited() {
                return Err(Stop::Failed(CtlError::failed(format!(
                    "{name} exited unexpectedly; its log:\n{}",
                    self.procs.log_tail(&name)
                ))));
            }
            let label = format!(
                "{phase}  [{:.0}/{:.0}s]",
                started.elapsed().as_secs_f64(),
                time.as_secs_f64()
            );
            self.refresh(&label).await;
            max_ejected = max_ejected.max(self.last.ejections_active);
        }
    }

    async fn refresh(&mut self, phase: &str) {
        let view = self.monitor.refresh(phase, &self.load).await;
        self.last = view.proof;
        self.screen.table(&view.lines);
    }
}

/// Applies the config with `percent` % on payments-v2 (as `ficusctl apply` does: `POST
/// /v1/apply`) and waits until every sidecar ACKs it.
async fn apply(
    client: &Client,
    endpoints: &Endpoints,
    percent: u32,
    sidecars: &[SidecarAddrs],
) -> Result<(u64, Duration), CtlError> {
    let body = serde_json::json!({
        "sources": [{
            "name": format!("{} (payments-v2 {percent}%)", config::TEMPLATE_NAME),
            "text": config::render(endpoints, percent),
        }],
        "author": client.author,
    });
    let outcome: Outcome = client.call(Method::POST, "/v1/apply", Some(body)).await?;
    if !outcome.committed && percent > 0 {
        return Err(CtlError::failed(format!(
            "the control plane already had the {percent}% config"
        )));
    }
    let took = wait_acked(client, outcome.version, sidecars).await?;
    Ok((outcome.version, took))
}

/// Polls `/v1/status` until every sidecar of `sidecars` has ACKed `version`.
async fn wait_acked(
    client: &Client,
    version: u64,
    sidecars: &[SidecarAddrs],
) -> Result<Duration, CtlError> {
    let started = Instant::now();
    loop {
        let status: Status = client.get("/v1/status").await?;
        let mut missing = Vec::new();
        for sidecar in sidecars {
            let seen = status
                .sidecars
                .iter()
                .find(|s| s.node_id == sidecar.node_id && s.connected);
            let acked = seen.is_some_and(|s| s.acked_version.is_some_and(|v| v >= version));
            if let Some(reason) = seen
                .filter(|s| !acked && s.nacked_version.is_some_and(|v| v >= version))
                .and_then(|s| s.last_nack.as_deref())
            {
                return Err(CtlError::failed(format!(
                    "sidecar {} refused version {version}: {reason}",
                    sidecar.node_id
                )));
            }
            if !acked {
                missing.push(sidecar.node_id.as_str());
            }
        }
        if missing.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > ACK_DEADLINE {
            return Err(CtlError::failed(format!(
                "version {version} not ACKed within {ACK_DEADLINE:?} by {}",
                missing.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a sidecar's `/ready` answers 200 (config and certificate in place).
async fn wait_ready(sidecar: &SidecarAddrs) -> Result<(), CtlError> {
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = scrape::get(sidecar.admin, "/ready", Duration::from_secs(2)).await {
            return Ok(());
        }
        if started.elapsed() > ACK_DEADLINE {
            return Err(CtlError::failed(format!(
                "sidecar {} not ready within {ACK_DEADLINE:?} (no certificate?)",
                sidecar.node_id
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--keep`: what to look at while everything stays up.
fn explore(finished: &Finished, procs: &Processes) {
    let api = format!("http://{}", finished.control.http);
    let gateway = &finished.sidecars[0];
    println!();
    println!("everything stays up until Ctrl-C (the load has stopped). Try:");
    let ctl =
        std::env::current_exe().map_or_else(|_| "ficusctl".to_owned(), |p| p.display().to_string());
    println!("  {ctl} --server {api} status");
    println!("  {ctl} --server {api} history");
    println!("  {ctl} --server {api} get httproute shop");
    println!(
        "  curl -s -H 'Host: shop' http://{}/api/payments/1",
        gateway.outbound
    );
    println!(
        "  for i in $(seq 20); do curl -s -H 'Host: shop' http://{}/api/payments/$i; done | cut -d' ' -f1 | sort | uniq -c",
        gateway.outbound
    );
    println!(
        "  curl -s http://{}/metrics | grep ficus_requests_total",
        gateway.admin
    );
    println!("admin endpoints (/ready /metrics /config):");
    for sidecar in &finished.sidecars {
        println!("  {:<14} http://{}/config", sidecar.node_id, sidecar.admin);
    }
    println!("control plane metrics: {api}/metrics");
    println!("logs, data and the CA: {}", procs.dir().display());
}
