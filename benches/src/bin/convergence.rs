//! `convergence`: how long `ficus-control` takes from an apply until N sidecars have ACKed
//! it, and what N push streams cost it in memory and CPU.
//!
//! One run, for one N, prints one JSON line:
//! 1. Starts `ficus-control --insecure` on a fresh data directory (optionally pinned with
//!    `taskset -c`), waits for `/ready`, applies the first config.
//! 2. Opens N simulated sidecar streams from this process (see `sidecar`), waits until every
//!    one has the first config and `ficus_control_connected_sidecars` says N.
//! 3. Idle: after a settling pause, reads the control plane's `VmRSS` and its CPU time over a
//!    quiet window (HTTP/2 keepalives only).
//! 4. Applies K configs, one every `--interval`, each changing one document. Per apply, the
//!    latency runs from just before the API request to the moment the last sidecar received
//!    (and ACKed) the new version; the next apply waits for that or `--converge-timeout`.
//!    Reports p50/p99/max over the K applies, the same for the first sidecar, every
//!    (sidecar, apply) pair's latency, and the control plane's CPU time and RSS over the
//!    phase.
//!
//! The floor is the control plane's debounce (~100 ms from commit to push); the rest is
//! fan-out to N streams, and this process receiving N snapshots (its CPU time is reported,
//! so a saturated client shows).
//!
//! # Layout
//! - `sidecar`: the simulated sidecars and how far they got.
//! - `control`: the control-plane process and its `/proc` readings.
//! - `api`: the HTTP API calls (`/ready`, apply, `/metrics`).
//! - `mesh`: the applied config.
//! - `report`: latencies from what the sidecars recorded.
#![forbid(unsafe_code)]

// A binary's root resolves modules next to itself (`src/bin/`); these live in
// `src/bin/convergence/` so the other tools' directory stays flat.
#[path = "convergence/api.rs"]
mod api;
#[path = "convergence/control.rs"]
mod control;
#[path = "convergence/mesh.rs"]
mod mesh;
#[path = "convergence/report.rs"]
mod report;
#[path = "convergence/sidecar.rs"]
mod sidecar;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ficus_benches::duration::parse_duration;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::control::{ControlPlane, Launch, Sample};
use crate::report::{ms, ApplyRun};
use crate::sidecar::{FleetSettings, Identity, Progress, StreamRecord};

/// File descriptors kept free beyond one per connection (store, listeners, API calls).
const SPARE_FDS: u64 = 128;
/// Wait for the control plane to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Wait for the simulated sidecars to hand back their records at the end.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The control plane's own commit → ACK histogram.
const CONVERGENCE_METRIC: &str = "ficus_control_push_convergence_seconds";
/// How often the waits check their conditions.
const POLL: Duration = Duration::from_millis(100);

/// Apply → all-ACKed latency of `ficus-control` with N simulated sidecars.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The `ficus-control` binary (default: the one next to this binary, in target/release).
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Pin ficus-control with `taskset -c LIST` (e.g. `0`); unpinned when absent.
    #[arg(long)]
    control_cpus: Option<String>,
    /// Push-stream address for ficus-control (default: a free port on 127.0.0.1).
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// HTTP API address for ficus-control (default: a free port on 127.0.0.1).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Simulated sidecars (push streams).
    #[arg(long, default_value_t = 100)]
    sidecars: usize,
    /// Streams per HTTP/2 connection (ficus-control allows 16 concurrent streams).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    streams_per_connection: u16,
    /// Distinct workloads among the sidecars (each scope is computed once per version).
    #[arg(long, default_value_t = 10)]
    workloads: usize,
    /// Services (Backend + HTTPRoute) in the config; sets the snapshot size.
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Measured applies.
    #[arg(long, default_value_t = 20)]
    applies: u32,
    /// Time from one apply to the next (longer when convergence takes longer).
    #[arg(long, default_value = "1.5s", value_parser = parse_duration)]
    interval: Duration,
    /// Give up waiting for every sidecar to have an apply after this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    converge_timeout: Duration,
    /// Pause between the last sidecar connecting and the idle window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// Idle window: CPU and RSS with N open streams and no applies (at least the 10 s
    /// keepalive period, so every connection pings once).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle: Duration,
    /// Bound on opening every stream and receiving the first config.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    connect_deadline: Duration,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Bound on each TCP connect and each HTTP/2 handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// HTTP/2 keepalive of the simulated sidecars (the real sidecar's is 10 s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    keepalive: Duration,
    /// Worker threads of this process (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep ficus-control's log here (default: discarded with the run's temporary directory).
    #[arg(long)]
    control_log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&args) => outcome,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    });
    // Client tasks may still hold connections; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(error) => {
            println!(
                "{}",
                json!({"sidecars": args.sidecars, "error": format!("{error:#}")})
            );
            Err(error)
        }
    }
}

/// SIGINT or SIGTERM; returns the signal's name. Dropping the run then kills ficus-control.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// The simulated sidecars while they run.
struct Fleet {
    tasks: JoinSet<Vec<StreamRecord>>,
    progress: Arc<Progress>,
    shutdown: watch::Sender<bool>,
    /// Records of connections whose every stream already ended (failures).
    ended: Vec<StreamRecord>,
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let per_connection = usize::from(args.streams_per_connection);
    let connections = args.sidecars.div_ceil(per_connection);
    check_open_files(connections as u64)?;
    let clock_ticks = control::clock_ticks_per_second();
    let work = tempfile::Builder::new()
        .prefix("ficus-convergence.")
        .tempdir()
        .context("creating a temporary directory")?;
    let launch = Launch {
        binary: match &args.control_bin {
            Some(binary) => binary.clone(),
            None => control::default_binary()?,
        },
        data: work.path().join("data"),
        log: args
            .control_log
            .clone()
            .unwrap_or_else(|| work.path().join("control.log")),
        cpus: args.control_cpus.clone(),
        grpc: args.grpc.map_or_else(control::free_port, Ok)?,
        http: args.http.map_or_else(control::free_port, Ok)?,
    };
    let mut control = ControlPlane::start(&launch, READY_TIMEOUT).await?;
    let (control_cpus, control_threads) = control.placement().await?;
    log(format_args!(
        "ficus-control pid {} on CPUs {control_cpus}, grpc {}, http {}",
        control.pid, control.grpc, control.http
    ));

    let mut revision = 1;
    let first = api::apply(control.http, mesh::config(args.services, revision)).await?;

    // --- connect ---
    let connect_start = Instant::now();
    let mut fleet = open_fleet(args, &control, connections);
    wait_for_fleet(
        &mut fleet,
        &mut control,
        first.version,
        args.connect_deadline,
    )
    .await?;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let connected = wait_for_metric(&control, args.sidecars, Duration::from_secs(10)).await?;
    log(format_args!(
        "{} streams on {connections} connections have version {} after {connect_seconds:.2} s",
        args.sidecars, first.version
    ));

    // --- idle ---
    tokio::time::sleep(args.settle).await;
    let idle_start = control.sample(clock_ticks).await?;
    let idle_ours = Ours::read(&control).await?;
    tokio::time::sleep(args.idle).await;
    let idle_end = control.sample(clock_ticks).await?;
    let idle_other = idle_ours.other_since(&control, clock_ticks).await?;
    log(format_args!(
        "idle: RSS {:.1} MiB, CPU {:.3} s over {:.1} s",
        mib(idle_end.rss_kib),
        idle_end.cpu_seconds - idle_start.cpu_seconds,
        (idle_end.at - idle_start.at).as_secs_f64()
    ));

    // --- applies ---
    let metrics_before = api::metrics(control.http).await?;
    let client_before = control::cpu_ticks(std::process::id()).await?;
    let apply_start = control.sample(clock_ticks).await?;
    let apply_ours = Ours::read(&control).await?;
    let mut rss_max = apply_start.rss_kib;
    let mut applies = Vec::new();
    let mut everyone = fleet.progress.subscribe();
    let mut next = Instant::now();
    for k in 1..=args.applies {
        tokio::time::sleep_until(next.into()).await;
        revision += 1;
        let started = Instant::now();
        next = started + args.interval;
        let applied = api::apply(control.http, mesh::config(args.services, revision)).await?;
        let response = started.elapsed();
        if !applied.committed {
            bail!("apply {k} did not commit a new version");
        }
        let version = applied.version;
        let waited = tokio::time::timeout(
            args.converge_timeout,
            everyone.wait_for(|&have| have >= version),
        )
        .await;
        let elapsed = started.elapsed();
        match waited {
            Ok(Ok(_)) => log(format_args!(
                "apply {k}/{}: version {version}, all {} have it after {:.1} ms",
                args.applies,
                args.sidecars,
                ms(elapsed)
            )),
            _ => log(format_args!(
                "apply {k}/{}: version {version}, only {}/{} have it after {:.1} ms",
                args.applies,
                fleet.progress.count(version),
                args.sidecars,
                ms(elapsed)
            )),
        }
        if !control.running() {
            bail!(
                "ficus-control exited; its log:\n{}",
                control.log_tail().await
            );
        }
        rss_max = rss_max.max(control.sample(clock_ticks).await?.rss_kib);
        applies.push(ApplyRun {
            version,
            started,
            response,
        });
    }
    let apply_end = control.sample(clock_ticks).await?;
    let apply_other = apply_ours.other_since(&control, clock_ticks).await?;
    let client_after = control::cpu_ticks(std::process::id()).await?;
    // Let the last ACKs reach the control plane's books before reading its counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics_after = api::metrics(control.http).await?;

    // --- stop ---
    let records = close_fleet(fleet).await;
    control.stop(Duration::from_secs(5)).await;

    let convergence = report::convergence(&applies, &records);
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for error in records.iter().filter_map(|r| r.error.as_ref()) {
        *errors.entry(error.kind()).or_default() += 1;
    }
    let first_error = records
        .iter()
        .find_map(|r| r.error.as_ref())
        .map(ToString::to_string);
    let responses: Vec<Duration> = applies.iter().map(|a| a.response).collect();
    let delta = |name: &str| {
        metrics_after.get(name).copied().unwrap_or(0.0)
            - metrics_before.get(name).copied().unwrap_or(0.0)
    };
    let observed = delta(&format!("{CONVERGENCE_METRIC}_count"));
    let observed_sum = delta(&format!("{CONVERGENCE_METRIC}_sum"));
    // Infinity (beyond the last bucket) becomes JSON null.
    let server_quantile = |q| {
        api::bucket_quantile(&metrics_before, &metrics_after, CONVERGENCE_METRIC, q)
            .filter(|bound| bound.is_finite())
    };
    let window = |a: &Sample, b: &Sample| (b.at - a.at).as_secs_f64();
    let cpu = |a: &Sample, b: &Sample| round3(b.cpu_seconds - a.cpu_seconds);
    let client_cpu = (client_after - client_before) as f64 / clock_ticks;
    Ok(json!({
        "sidecars": args.sidecars,
        "connections": connections,
        "streams_per_connection": per_connection,
        "workloads": args.workloads,
        "services": args.services,
        "snapshot_bytes": records.iter().map(|r| r.snapshot_bytes).max().unwrap_or(0),
        "applies": args.applies,
        "interval_s": args.interval.as_secs_f64(),
        "connect_s": round3(connect_seconds),
        "apply_to_all_acked": report::ranks(&convergence.all),
        "apply_to_first_ack": report::ranks(&convergence.first),
        "apply_response": report::ranks(&responses),
        "per_sidecar": convergence.each.summary().to_json(),
        "incomplete_applies": convergence.incomplete,
        "missing": convergence.missing,
        "skipped_versions": convergence.skipped,
        "stream_errors": errors,
        "first_error": first_error,
        "control": {
            "cpus": control_cpus,
            "threads": control_threads,
            "connect_cpu_s": round3(idle_start.cpu_seconds),
            "idle_rss_mib": mib(idle_end.rss_kib),
            "idle_cpu_s": cpu(&idle_start, &idle_end),
            "idle_window_s": round3(window(&idle_start, &idle_end)),
            "apply_rss_max_mib": mib(rss_max),
            "peak_rss_mib": mib(apply_end.hwm_kib),
            "apply_cpu_s": cpu(&apply_start, &apply_end),
            "apply_system_s": round3(apply_end.system_seconds - apply_start.system_seconds),
            "apply_window_s": round3(window(&apply_start, &apply_end)),
            "apply_vcpu": round3((apply_end.cpu_seconds - apply_start.cpu_seconds)
                / window(&apply_start, &apply_end)),
        },
        "other_load": {
            "idle_vcpu": round3(idle_other),
            "apply_vcpu": round3(apply_other),
        },
        "client": {
            "threads": args.threads.max(1),
            "peak_rss_mib": control::own_peak_rss_kib().await.map(mib),
            "apply_cpu_s": round3(client_cpu),
            "apply_vcpu": round3(client_cpu / window(&apply_start, &apply_end)),
        },
        "server": {
            "connected": connected,
            "pushes": delta("ficus_control_pushes_total"),
            "acks_observed": observed,
            "commit_to_ack_mean_ms": if observed > 0.0 { round3(observed_sum / observed * 1e3) } else { 0.0 },
            "commit_to_ack_p50_bucket_s": server_quantile(0.5),
            "commit_to_ack_p99_bucket_s": server_quantile(0.99),
            "nacks": delta("ficus_control_nacks_total"),
        },
    }))
}

/// CPU of the whole machine and of the bench's two processes, to tell how much other work on
/// the machine took during a window.
struct Ours {
    at: Instant,
    machine: u64,
    bench: u64,
}

impl Ours {
    async fn read(control: &ControlPlane) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            machine: control::machine_busy_ticks().await?,
            bench: control::cpu_ticks(std::process::id()).await?
                + control::cpu_ticks(control.pid).await?,
        })
    }

    /// vCPU used by everything but this process and ficus-control since `self`.
    async fn other_since(&self, control: &ControlPlane, clock_ticks: f64) -> anyhow::Result<f64> {
        let now = Self::read(control).await?;
        let other = (now.machine.saturating_sub(self.machine))
            .saturating_sub(now.bench.saturating_sub(self.bench));
        Ok(other as f64 / clock_ticks / (now.at - self.at).as_secs_f64())
    }
}

/// Starts every simulated sidecar; they connect `--connect-concurrency` at a time.
fn open_fleet(args: &Args, control: &ControlPlane, connections: usize) -> Fleet {
    let settings = Arc::new(FleetSettings {
        address: control.grpc,
        origin: format!("http://{}", control.grpc)
            .parse()
            // `http://` and a socket address always make a valid URI.
            .expect("http://IP:port is a valid URI"),
        connect_timeout: args.connect_timeout,
        subscribe_timeout: args.connect_timeout,
        keepalive: args.keepalive,
        // Longer than the longest quiet stretch a healthy stream sees.
        idle_timeout: args.connect_deadline
            + args.settle
            + args.idle
            + args.interval
            + args.converge_timeout
            + Duration::from_secs(60),
    });
    let progress = Progress::new(args.sidecars);
    let (shutdown, stop) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let per_connection = usize::from(args.streams_per_connection);
    let workloads = args.workloads.max(1);
    let mut tasks = JoinSet::new();
    for connection in 0..connections {
        let first = connection * per_connection;
        let identities = (first..(first + per_connection).min(args.sidecars))
            .map(|i| Identity {
                node_id: format!("bench-{i:05}"),
                workload: mesh::service(i % workloads),
                namespace: mesh::NAMESPACE.to_owned(),
            })
            .collect();
        tasks.spawn(sidecar::run_connection(
            Arc::clone(&settings),
            identities,
            Arc::clone(&progress),
            Arc::clone(&permits),
            stop.clone(),
        ));
    }
    Fleet {
        tasks,
        progress,
        shutdown,
        ended: Vec::new(),
    }
}

/// Until every stream has `version`; fails early when streams fail or the control plane
/// exits, and at `deadline`.
async fn wait_for_fleet(
    fleet: &mut Fleet,
    control: &mut ControlPlane,
    version: u64,
    deadline: Duration,
) -> anyhow::Result<()> {
    let everyone = fleet.progress.subscribe();
    let start = Instant::now();
    let mut last_note = start;
    while *everyone.borrow() < version {
        while let Some(ended) = fleet.tasks.try_join_next() {
            fleet.ended.extend(ended.unwrap_or_default());
        }
        if let Some(error) = fleet.ended.iter().find_map(|r| r.error.as_ref()) {
            let failed = fleet.ended.iter().filter(|r| r.error.is_some()).count();
            bail!(
                "{failed} streams failed while connecting (first: {error}); {} have version \
                 {version}",
                fleet.progress.count(version)
            );
        }
        if !control.running() {
            bail!(
                "ficus-control exited; its log:\n{}",
                control.log_tail().await
            );
        }
        if start.elapsed() >= deadline {
            bail!(
                "only {} streams have version {version} after {deadline:?}",
                fleet.progress.count(version)
            );
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            log(format_args!(
                "connecting: {} streams have version {version}",
                fleet.progress.count(version)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Until `ficus_control_connected_sidecars` reaches `sidecars`; returns the last reading.
async fn wait_for_metric(
    control: &ControlPlane,
    sidecars: usize,
    within: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    loop {
        let metrics = api::metrics(control.http).await?;
        let connected = metrics
            .get("ficus_control_connected_sidecars")
            .copied()
            .unwrap_or(0.0);
        if connected >= sidecars as f64 {
            return Ok(connected);
        }
        if start.elapsed() >= within {
            bail!("ficus_control_connected_sidecars is {connected}, expected {sidecars}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops every simulated sidecar and collects what each recorded.
async fn close_fleet(mut fleet: Fleet) -> Vec<StreamRecord> {
    let _ = fleet.shutdown.send(true);
    let mut records = std::mem::take(&mut fleet.ended);
    let collect = async {
        while let Some(joined) = fleet.tasks.join_next().await {
            records.extend(joined.unwrap_or_default());
        }
    };
    if tokio::time::timeout(COLLECT_TIMEOUT, collect)
        .await
        .is_err()
    {
        log(format_args!(
            "{} connections did not stop within {COLLECT_TIMEOUT:?}; their records are lost",
            fleet.tasks.len()
        ));
    }
    records
}

/// Every connection is a file descriptor here and one in ficus-control, which inherits this
/// process's limit.
fn check_open_files(connections: u64) -> anyhow::Result<()> {
    let needed = connections + SPARE_FDS;
    match control::open_files_limit() {
        Some(limit) if limit < needed => bail!(
            "{connections} connections need about {needed} open files, the limit is {limit}; \
             raise it first (ulimit -n {needed})"
        ),
        _ => Ok(()),
    }
}

fn log(message: std::fmt::Arguments<'_>) {
    eprintln!("convergence: {message}");
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}
