//! `loadgen`: an HTTP/1.1 (or h2c) load generator with coordinated-omission correction.
//!
//! `--connections C` keep-alive connections, each driven by its own task over hyper's
//! `client::conn::http1`. With `--h2` they speak HTTP/2 with prior knowledge instead and
//! each carries `--streams S` concurrent streams, each stream its own task (C·S in all).
//! Two modes:
//!
//! - **Fixed rate** (`--rate R`): connection `j` sends its `k`-th request at the *intended*
//!   time `start + (j + k·C) / R`, so the `R` req/s are spread evenly. Latency is measured
//!   from the intended time whenever the previous response on that connection came back
//!   late, so a stall is charged to every request it delayed (coordinated-omission
//!   correction, as in wrk2). When the connection was idle at the intended time, latency is
//!   measured from the moment the task actually sent: tokio's timer wakes up to ~1 ms late,
//!   and that lag belongs to the generator, not to the system under test.
//! - **Max throughput** (`--max`): each connection sends back to back (closed loop); latency
//!   is measured from the send.
//!
//! Responses to requests scheduled in the first `--warmup` are not counted. The run ends by
//! itself: no request is started after `warmup + duration`, none is waited for longer than
//! `--timeout`, and scheduled requests still unsent at `warmup + duration + timeout` are
//! reported as `unsent`. Prints one JSON line.
//!
//! **Paired A/B** (`--paired-host B`): the requests alternate between `--host` (A) and B on
//! every connection (connection `j`'s `k`-th request goes to A when `j + k` is even), so both
//! see the same connections, the same moments and the same disturbances from the rest of the
//! machine; each gets its own latency histogram and counts (B's under `"paired"`). The rate is
//! the total of both. This is how a small per-request difference (a policy stack vs none) is
//! measured on a shared machine, where two back-to-back runs differ by more than that.
//! `--paired-target ADDR` pairs two servers instead (say, two proxies configured differently):
//! even-numbered connections go to `--target`, odd ones to ADDR, each at half the rate, over
//! the same period (HTTP/1.1 only).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ficus_benches::client::{ClientError, Connection, Protocol, Target};
use ficus_benches::duration::parse_duration;
use ficus_benches::latency::Latencies;
use hyper::header::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// HTTP/1.1 load generator: fixed arrival rate (coordinated-omission corrected) or max
/// throughput; prints a one-line JSON summary.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to send to (loopback only in this harness).
    #[arg(long)]
    target: SocketAddr,
    /// `Host` header: the service the sidecar routes on.
    #[arg(long, default_value = "upstream")]
    host: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Number of keep-alive connections, each its own task.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Total requests per second, spread over all connections.
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    rate: Option<f64>,
    /// Closed loop: every connection sends back to back.
    #[arg(long)]
    max: bool,
    /// Measured time (after the warm-up), e.g. `15s`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before measuring starts, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Bound on one request (ready, write, response head and body).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Bound on one TCP connect.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Runtime threads; 1 runs everything on one current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// With `--h2`: concurrent streams per connection, each its own task.
    #[arg(long, default_value_t = 1, requires = "h2")]
    streams: u32,
    /// Alternate requests between `--host` and this `Host` (paired A/B measurement).
    #[arg(long)]
    paired_host: Option<String>,
    /// Send the odd-numbered connections to this address instead (paired A/B of two servers;
    /// with `--paired-host`, they also use that `Host`).
    #[arg(long, conflicts_with = "h2")]
    paired_target: Option<SocketAddr>,
}

/// How a connection paces its requests.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Request `k` of connection `j` is due at `start + (j + k·connections) / rate`.
    Fixed { rate: f64, connections: u32 },
    /// Back to back.
    Max,
}

/// The shared timeline of a run.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    pace: Pace,
    start: Instant,
    /// Requests due (fixed rate) or sent (max) before this are warm-up.
    measure_from: Instant,
    /// No request is due or sent at or after this.
    end: Instant,
    /// Backlog still unsent at this point is given up.
    give_up: Instant,
}

/// What one connection saw.
#[derive(Debug, Default)]
struct Tally {
    latencies: Latencies,
    ok: u64,
    status_errors: u64,
    io_errors: u64,
    timeouts: u64,
    unsent: u64,
    first_error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of requests per second");
        }
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.streams == 0 || args.streams > 1000 {
        bail!("--streams must be between 1 and 1000");
    }
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
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let protocol = if args.h2 {
        Protocol::H2c
    } else {
        Protocol::Http1
    };
    let target = Arc::new(Target {
        addr: args.target,
        host: HeaderValue::from_str(&args.host).context("--host is not a valid header value")?,
        path: args.path.clone(),
        connect_timeout: args.connect_timeout,
        request_timeout: args.timeout,
    });
    let paired = if args.paired_host.is_some() || args.paired_target.is_some() {
        let host = match &args.paired_host {
            Some(host) => {
                HeaderValue::from_str(host).context("--paired-host is not a valid header value")?
            }
            None => target.host.clone(),
        };
        Some(Arc::new(Target {
            host,
            addr: args.paired_target.unwrap_or(args.target),
            ..Target::clone(&target)
        }))
    } else {
        None
    };
    let pairing = match (&paired, args.paired_target) {
        (None, _) => Pairing::None,
        (Some(_), None) => Pairing::PerRequest,
        (Some(_), Some(_)) => Pairing::PerConnection,
    };
    let targets = [
        target.clone(),
        paired.clone().unwrap_or_else(|| target.clone()),
    ];

    // Open every connection before the clock starts, so the handshakes are not charged to
    // the first requests. A failed connect is retried by its task. Connection `i` is opened
    // to the target its driver will use (the same one unless paired per connection).
    let mut opening = JoinSet::new();
    for i in 0..args.connections {
        let target = targets[pairing.slot(i, 0)].clone();
        opening.spawn(async move { (i, Connection::open_with(&target, protocol).await) });
    }
    let mut opened_in_order = Vec::with_capacity(args.connections as usize);
    while let Some(opened) = opening.join_next().await {
        opened_in_order.push(opened.context("connect task panicked")?);
    }
    opened_in_order.sort_by_key(|(i, _)| *i);
    // One entry per driver task: an HTTP/1.1 connection, or one stream of an h2c one.
    let mut connections = Vec::new();
    let mut connect_failures = Vec::new();
    for (_, opened) in opened_in_order {
        match opened {
            Ok(connection) => {
                for _ in 1..args.streams {
                    connections.push(connection.share());
                }
                connections.push(Some(connection));
            }
            Err(error) => {
                connect_failures.push(error.to_string());
                for _ in 0..args.streams {
                    connections.push(None);
                }
            }
        }
    }
    let drivers_total = args.connections * args.streams;

    let pace = match args.rate {
        Some(rate) => Pace::Fixed {
            rate,
            connections: drivers_total,
        },
        None => Pace::Max,
    };
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let schedule = Schedule {
        pace,
        start,
        measure_from,
        end,
        give_up: end + args.timeout,
    };

    let mut drivers = JoinSet::new();
    for (index, connection) in connections.into_iter().enumerate() {
        drivers.spawn(drive(
            targets.clone(),
            pairing,
            protocol,
            schedule,
            index as u32,
            connection,
        ));
    }
    let mut total = Tally::default();
    let mut total_paired = Tally::default();
    while let Some(tallies) = drivers.join_next().await {
        let [tally, tally_paired] = tallies.context("connection task panicked")?;
        total.add(tally);
        total_paired.add(tally_paired);
    }
    if paired.is_none() {
        // Without a pair, both slots measured the one target.
        total.add(std::mem::take(&mut total_paired));
    }
    if total.first_error.is_none() {
        total.first_error = connect_failures.into_iter().next();
    }

    let seconds = args.duration.as_secs_f64();
    let mut report = serde_json::Map::new();
    report.insert(
        "mode".into(),
        (if args.max { "max" } else { "rate" }).into(),
    );
    report.insert("target".into(), args.target.to_string().into());
    report.insert("host".into(), args.host.clone().into());
    report.insert("connections".into(), args.connections.into());
    report.insert(
        "protocol".into(),
        (if args.h2 { "h2c" } else { "http/1.1" }).into(),
    );
    report.insert("streams_per_connection".into(), args.streams.into());
    report.insert("rate".into(), args.rate.into());
    report.insert("warmup_s".into(), args.warmup.as_secs_f64().into());
    report.insert("duration_s".into(), seconds.into());
    total.report_into(&mut report, seconds);
    if let Some(Target { host, addr, .. }) = paired.as_deref() {
        let mut pair = serde_json::Map::new();
        pair.insert("host".into(), host.to_str().unwrap_or_default().into());
        pair.insert("target".into(), addr.to_string().into());
        total_paired.report_into(&mut pair, seconds);
        report.insert("paired".into(), serde_json::Value::Object(pair));
    }
    Ok(serde_json::Value::Object(report))
}

impl Tally {
    /// Counts, achieved rate, latency summary and first error, as JSON fields of `report`.
    fn report_into(self, report: &mut serde_json::Map<String, serde_json::Value>, seconds: f64) {
        let requests = self.ok + self.status_errors;
        report.insert("requests".into(), requests.into());
        report.insert("ok".into(), self.ok.into());
        report.insert("errors_status".into(), self.status_errors.into());
        report.insert("errors_io".into(), self.io_errors.into());
        report.insert("errors_timeout".into(), self.timeouts.into());
        report.insert("unsent".into(), self.unsent.into());
        let achieved = (requests as f64 / seconds * 10.0).round() / 10.0;
        report.insert("achieved_rps".into(), achieved.into());
        report.extend(self.latencies.summary().to_json());
        report.insert("first_error".into(), self.first_error.into());
    }

    fn add(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        self.ok += other.ok;
        self.status_errors += other.status_errors;
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        self.unsent += other.unsent;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// How requests are split between the two targets of a paired run.
#[derive(Debug, Clone, Copy)]
enum Pairing {
    /// One target (both slots are the same; their tallies are merged).
    None,
    /// Driver `j`'s `k`-th request goes to slot `(j + k) % 2`.
    PerRequest,
    /// Driver `j` always uses slot `j % 2`.
    PerConnection,
}

impl Pairing {
    /// The slot of driver `index`'s request number `sent`.
    fn slot(self, index: u32, sent: u64) -> usize {
        match self {
            Pairing::None | Pairing::PerRequest => ((u64::from(index) + sent) % 2) as usize,
            Pairing::PerConnection => (index % 2) as usize,
        }
    }
}

/// Drives one connection through the schedule; reconnects after an error. Each request goes
/// to the target of its [`Pairing`] slot and is counted in that slot's tally.
async fn drive(
    targets: [Arc<Target>; 2],
    pairing: Pairing,
    protocol: Protocol,
    schedule: Schedule,
    index: u32,
    mut connection: Option<Connection>,
) -> [Tally; 2] {
    let mut tallies = [Tally::default(), Tally::default()];
    // When the previous exchange on this connection finished.
    let mut free_at = schedule.start;
    let mut k: u64 = 0;
    // Requests started (or attempted) so far: picks the target slot.
    let mut sent: u64 = 0;
    loop {
        let (due, woke) = match schedule.pace {
            Pace::Fixed { rate, connections } => {
                let slot = index as f64 + k as f64 * connections as f64;
                let due = schedule.start + Duration::from_secs_f64(slot / rate);
                if due >= schedule.end {
                    break;
                }
                if Instant::now() >= schedule.give_up {
                    // Backlog that could not be sent in time: count it, never hide it.
                    let remaining = (schedule.end - due).as_secs_f64() * rate / connections as f64;
                    let remaining = remaining.ceil() as u64;
                    if let Pairing::PerConnection = pairing {
                        tallies[pairing.slot(index, 0)].unsent += remaining;
                    } else {
                        tallies[0].unsent += remaining - remaining / 2;
                        tallies[1].unsent += remaining / 2;
                    }
                    break;
                }
                k += 1;
                sleep_until(due).await;
                (due, Instant::now())
            }
            Pace::Max => {
                let now = Instant::now();
                if now >= schedule.end {
                    break;
                }
                (now, now)
            }
        };
        let slot = pairing.slot(index, sent);
        sent += 1;
        let target = &targets[slot];
        let tally = &mut tallies[slot];
        let measured = due >= schedule.measure_from;
        // Coordinated-omission correction: if this connection was still busy when the
        // request was due, the wait is the system's fault and counts; if it was idle, the
        // gap between `due` and `woke` is timer lag and does not.
        let since = if free_at > due { due } else { woke };

        let open = match connection.as_mut().filter(|c| c.is_open()) {
            Some(open) => open,
            // An h2c stream whose connection failed opens a connection of its own.
            None => match Connection::open_with(target, protocol).await {
                Ok(fresh) => connection.insert(fresh),
                Err(error) => {
                    free_at = Instant::now();
                    record_error(tally, measured, error);
                    if matches!(schedule.pace, Pace::Max) {
                        // Do not spin on a refused port; the next attempt is 10 ms away.
                        sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            },
        };
        let result = open.get(target).await;
        let done = Instant::now();
        free_at = done;
        match result {
            Ok(reply) => {
                if measured {
                    tally.latencies.record(done - since);
                    if reply.status.is_success() {
                        tally.ok += 1;
                    } else {
                        tally.status_errors += 1;
                    }
                }
            }
            Err(error) => {
                connection = None;
                record_error(tally, measured, error);
            }
        }
    }
    tallies
}

fn record_error(tally: &mut Tally, measured: bool, error: ClientError) {
    if tally.first_error.is_none() {
        tally.first_error = Some(error.to_string());
    }
    if !measured {
        return;
    }
    if error.is_timeout() {
        tally.timeouts += 1;
    } else {
        tally.io_errors += 1;
    }
}
