//! `swapdelay`: how long a config hot swap takes to become visible on the data path.
//!
//! For `i` in `1..=N`: atomically rewrites the sidecar's config file (write a temporary file
//! in the same directory, then `rename` over the original, which is how editors and
//! Kubernetes' ConfigMap volumes replace files) with an HTTPRoute whose
//! `ResponseHeaderModifier` sets `x-version: i`, then polls the sidecar's outbound listener
//! with `Host: svc` until a response carries `x-version: i`. The delay is from the `rename`
//! returning to the first such response. A swap not visible within `--give-up` is counted
//! as timed out and the next one starts. Prints one JSON line.
//!
//! Resolution: the poll interval (default 250 µs; pauses under a millisecond are taken with a
//! blocking `std::thread::sleep`, since tokio's timer rounds up to the next millisecond, which
//! is fine here: between two polls this single-threaded client has nothing else to do) plus
//! one request through the proxy.
//!
//! The pause between a swap becoming visible and the next rewrite is `--settle` plus a random
//! part of up to `--jitter`. Without it the rewrites phase-lock to a sidecar that checks its
//! file periodically: every swap would land at the same point of the sidecar's cycle and all
//! delays would come out equal, instead of spread over the period as they are for a real
//! operator's edit.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ficus_benches::client::{Connection, Target};
use ficus_benches::duration::parse_duration;
use ficus_benches::latency::Latencies;
use hyper::header::HeaderValue;
use tokio::time::{sleep, Instant};

/// Measures config hot-swap visibility delay through a running sidecar.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The sidecar's `--outbound` address.
    #[arg(long)]
    sidecar_outbound: SocketAddr,
    /// The file the sidecar was started with (`--config`); it is overwritten.
    #[arg(long)]
    config_file: PathBuf,
    /// The address of the HTTP server behind the `upstream` Backend.
    #[arg(long)]
    upstream: SocketAddr,
    /// Number of swaps.
    #[arg(long, default_value_t = 50)]
    swaps: u32,
    /// Give up on one swap after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    give_up: Duration,
    /// Pause between polls.
    #[arg(long, default_value = "250us", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Pause after a swap became visible, before the next rewrite (lets file-watcher
    /// debouncing settle so each swap is measured on its own).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    settle: Duration,
    /// Random extra pause, up to this long, before each rewrite; longer than the period of a
    /// polling file watcher, so rewrites fall at random points of its cycle.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Bound on one poll request.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// More config documents (a YAML file) kept in every rewrite, e.g. the Backends other load
    /// is using meanwhile.
    #[arg(long)]
    extra: Option<PathBuf>,
}

/// The config written for version `version`: the Backend plus the versioned route.
fn config(upstream: SocketAddr, version: u32) -> String {
    format!(
        r#"apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {{name: upstream}}
spec:
  protocol: http
  endpoints: [{{address: "{upstream}"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: svc}}
spec:
  parentRefs: [{{name: svc}}]
  rules:
  - backendRefs: [{{name: upstream}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-version, value: "{version}"}}]
"#
    )
}

/// Replaces `path` atomically: readers see the old file or the new one, never a torn one.
async fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("--config-file has no file name")?
        .to_string_lossy();
    // Same directory, so `rename` stays on one filesystem and is atomic. The name does not
    // end in `.yaml`, so a sidecar watching the directory does not load it half-written.
    let temporary = path.with_file_name(format!(".{name}.swapdelay-{}.tmp", std::process::id()));
    tokio::fs::write(&temporary, contents)
        .await
        .with_context(|| format!("writing {}", temporary.display()))?;
    tokio::fs::rename(&temporary, path)
        .await
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    Ok(())
}

/// The outcome of waiting for one version.
enum Visible {
    After(Duration),
    GaveUp,
}

/// Polls until a response carries `x-version: version`, reconnecting after errors.
async fn wait_for(
    target: &Target,
    connection: &mut Option<Connection>,
    version: u32,
    since: Instant,
    args: &Args,
    errors: &mut u64,
) -> Visible {
    let wanted = HeaderValue::from(version);
    let deadline = since + args.give_up;
    loop {
        if Instant::now() >= deadline {
            return Visible::GaveUp;
        }
        if connection.as_ref().is_none_or(|c| !c.is_open()) {
            *connection = Connection::open(target).await.ok();
        }
        if let Some(open) = connection.as_mut() {
            match open.get(target).await {
                Ok(reply) if reply.headers.get("x-version") == Some(&wanted) => {
                    return Visible::After(since.elapsed());
                }
                Ok(_) => {}
                Err(_) => {
                    *errors += 1;
                    *connection = None;
                }
            }
        } else {
            *errors += 1;
        }
        pause(args.poll_interval).await;
    }
}

/// Sleeps for `pause`: below a millisecond with the thread's own sleep (tokio's timer would
/// round it up to a full millisecond), otherwise on the runtime's timer.
#[allow(clippy::disallowed_methods)] // deliberate: see the module docs (Resolution)
async fn pause(pause: Duration) {
    if pause < Duration::from_millis(1) {
        std::thread::sleep(pause);
        tokio::task::yield_now().await;
    } else {
        sleep(pause).await;
    }
}

/// Uniform random pauses; xorshift64* seeded from the std hasher's per-process random keys
/// (statistical quality is ample for spreading 50 rewrites, and it needs no dependency).
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self(seed | 1)
    }

    fn up_to(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let unit = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        max.mul_f64(unit)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let target = Target {
        addr: args.sidecar_outbound,
        host: HeaderValue::from_static("svc"),
        path: "/".to_owned(),
        connect_timeout: args.timeout,
        request_timeout: args.timeout,
    };
    let mut connection = None;
    let mut errors = 0;

    // Version 0 first: proves the route works at all and warms the path up.
    let extra = match &args.extra {
        Some(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            format!("---\n{}\n", text.trim_start_matches("---").trim())
        }
        None => String::new(),
    };
    write_atomically(&args.config_file, &(config(args.upstream, 0) + &extra)).await?;
    let started = Instant::now();
    if let Visible::GaveUp = wait_for(&target, &mut connection, 0, started, args, &mut errors).await
    {
        bail!(
            "the sidecar at {} never answered Host: svc with x-version: 0 within {:?}; \
             is it running with --config {}?",
            args.sidecar_outbound,
            args.give_up,
            args.config_file.display()
        );
    }

    let mut delays = Latencies::new();
    let mut timed_out = 0u32;
    let mut random = Jitter::new();
    for version in 1..=args.swaps {
        sleep(args.settle + random.up_to(args.jitter)).await;
        write_atomically(
            &args.config_file,
            &(config(args.upstream, version) + &extra),
        )
        .await?;
        let since = Instant::now();
        match wait_for(&target, &mut connection, version, since, args, &mut errors).await {
            Visible::After(delay) => delays.record(delay),
            Visible::GaveUp => timed_out += 1,
        }
    }

    let mut report = serde_json::Map::new();
    report.insert("swaps".into(), args.swaps.into());
    report.insert("visible".into(), delays.len().into());
    report.insert("timed_out".into(), timed_out.into());
    report.insert("poll_errors".into(), errors.into());
    report.insert(
        "poll_interval_ms".into(),
        (args.poll_interval.as_secs_f64() * 1e3).into(),
    );
    report.extend(delays.summary().to_json());
    Ok(serde_json::Value::Object(report))
}
