//! Wiring: flags → config → listeners, runtimes and tasks; SIGTERM → drain → exit (SIGHUP and
//! SIGUSR1: [`crate::signals`]).
//!
//! Threads: the data plane runs on one tokio runtime sized by `--workers` (a current-thread
//! runtime for `--workers 1`, the cheapest for a pinned single core). The admin server and
//! the config watcher run on a current-thread runtime of their own, so neither config parsing
//! nor a saturated data plane delays the other.
//!
//! Signals: every signal the sidecar answers (SIGTERM, SIGINT, SIGHUP, SIGUSR1) is caught
//! first thing, on the admin runtime, before the config is read or a listener bound, and the
//! admin thread runs from then on. During start-up it only waits: for the rest of start-up,
//! or for SIGTERM/SIGINT, which end the process at once with exit 0
//! ([`ficus_net::signal::StartUpStop`]) until the first config is applied (it starts the
//! opaque TCP accept loops: from then on a stop signal drains). A SIGHUP or SIGUSR1 during
//! start-up is kept and answered once the admin thread serves (the config is read again; the
//! access log reopened). The listeners the drain waits on ([`Stop`]) are made at the same
//! moment as the others and kept to the end, so no stop signal falls between start-up and
//! serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::cli::Args;
use crate::control::certs::CertManager;
use crate::control::{ControlClient, ControlSettings};
use crate::drain;
use crate::listener::{accept_loop, serve_http, ConnectionLimit, Side};
use crate::mtls::MeshTls;
use crate::reload::Reloader;
use crate::snapshot::{BuildContext, Snapshot};
use crate::state::{Identity, Shared};
use crate::tcp::TcpListeners;
use crate::telemetry::{logging, metrics::Metrics};
use crate::upstream::PoolRegistry;
use ficus_identity::SpiffeId;
use ficus_net::listen;
use ficus_net::signal::StartUpStop;

/// Process exit codes (INTERFACES.md).
pub mod exit {
    /// Clean shutdown.
    pub const OK: u8 = 0;
    /// Fatal error at run time.
    pub const FATAL: u8 = 1;
    /// Bad flags or an invalid config at start.
    pub const BAD_CONFIG: u8 = 2;
}

/// Runs the sidecar until SIGTERM/SIGINT or `/quitquitquit`; returns the exit code.
pub fn run(args: Args) -> u8 {
    let log = logging::init(args.log_format, &args.log_level);
    // Before anything is read or bound: see "Signals" above.
    let admin_runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the admin runtime: {error}");
            return exit::FATAL;
        }
    };
    let (operator_signals, stop, starting) = {
        let _entered = admin_runtime.enter();
        (
            crate::signals::OperatorSignals::install(),
            Stop::install(),
            StartUpStop::catch(),
        )
    };
    let (serving, serves) = tokio::sync::oneshot::channel();
    let (hand_over, handed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("ficus-admin".into())
        .spawn(move || {
            let admin = admin(starting, serves, operator_signals, handed);
            admin_runtime.block_on(admin);
        });
    if let Err(error) = spawned {
        eprintln!("error: cannot start the admin thread: {error}");
        return exit::FATAL;
    }
    if args.transparent && crate::transparent::running_as_root() {
        eprintln!(
            "error: --transparent must not run as root: the redirect rules exempt only the \
             proxy's uid (ficus-sidecar redirect --proxy-uid, default 1337); run as that uid"
        );
        return exit::BAD_CONFIG;
    }
    // File mode validates the config before anything starts; push mode starts unready.
    let mode = match (&args.config, &args.control) {
        (Some(path), None) => match ficus_config::load_path(path) {
            Ok(config) => Mode::File(path.clone(), Box::new(config)),
            Err(errors) => {
                eprintln!("{errors}");
                return exit::BAD_CONFIG;
            }
        },
        (None, Some(_)) => match ControlSettings::from_args(&args) {
            Ok(settings) => Mode::Push(settings),
            Err(error) => {
                eprintln!("error: {error}");
                return exit::BAD_CONFIG;
            }
        },
        _ => {
            eprintln!("error: exactly one of --config or --control is required");
            return exit::BAD_CONFIG;
        }
    };

    let bind = |address: SocketAddr, flag: &str| {
        crate::admin::bind(address)
            .map_err(|e| eprintln!("error: cannot listen on {address} ({flag}): {e}"))
    };
    let (Ok(outbound), Ok(inbound), Ok(admin)) = (
        bind(args.outbound, "--outbound"),
        bind(args.inbound, "--inbound"),
        bind(args.admin, "--admin"),
    ) else {
        return exit::FATAL;
    };
    // Kubelet probes an IPv6-only pod's admin port over IPv6: `[::]` beside `0.0.0.0`, `[::1]`
    // beside `127.0.0.1`.
    let admin_v6 = ipv6_companion(&admin, "--admin");
    // Transparent mode takes IPv6 too: ip6tables redirects to [::1] (outbound) and [::].
    let mut extra = Vec::new();
    if args.transparent {
        for (listener, side, flag) in [
            (&outbound, Side::Outbound, "--outbound"),
            (&inbound, Side::Inbound, "--inbound"),
        ] {
            if let Some(v6) = ipv6_companion(listener, flag) {
                extra.push((v6, side));
            }
        }
    }

    let workers = args.worker_threads();
    let runtime = match data_plane_runtime(workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the data-plane runtime: {error}");
            return exit::FATAL;
        }
    };
    let identity = Identity {
        workload: args.workload.clone(),
        namespace: args.namespace.clone(),
        node_id: args.node_id(),
        app: args.app,
    };
    let metrics = Metrics::new();
    let transparent = if args.transparent {
        let own = [&outbound, &inbound, &admin]
            .into_iter()
            .chain(&admin_v6)
            .chain(extra.iter().map(|(listener, _)| listener))
            .filter_map(|listener| listener.local_addr().ok())
            .collect();
        match crate::transparent::TransparentMetrics::register(&metrics) {
            Ok(counters) => Some(Arc::new(crate::transparent::Transparent::new(
                &args.opaque_ports,
                args.detect_timeout,
                own,
                counters,
            ))),
            Err(error) => {
                eprintln!("error: transparent-mode metrics: {error}");
                return exit::FATAL;
            }
        }
    } else {
        None
    };
    let pools = PoolRegistry::default();
    let empty = Snapshot::empty(&BuildContext {
        pools: &pools,
        metrics: &metrics,
        identity: &identity,
        tls: None,
    });
    let drain_signal = drain::DrainSignal::new();
    let outbound_drain = drain_signal.outbound();
    let tls = match mesh_tls(&args, &mode) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::BAD_CONFIG;
        }
    };
    let shared = Shared::new(empty, metrics, pools, identity, log, drain_signal, tls);
    shared.traces.trust_ca_file(args.ca_file.as_deref());
    let limit = ConnectionLimit::from_rlimit();
    let connections = Connections {
        inbound: TaskTracker::new(),
        outbound: TaskTracker::new(),
        limit: limit.clone(),
    };
    // Opaque TCP `listen:` listeners carry the app's outbound traffic: they drain with it.
    let tcp = TcpListeners::new(
        runtime.handle().clone(),
        connections.outbound.clone(),
        outbound_drain,
        limit,
    );
    let mut reloader = Reloader::new(Arc::clone(&shared), tcp);
    // The first config (the file, or push mode's cache) starts the opaque TCP listeners'
    // accept loops: from here a stop signal drains instead of exiting at once.
    let _ = serving.send(());
    let config_task = match mode {
        Mode::File(path, config) => {
            let source = format!("file:{}", path.display());
            if let Err(error) = reloader.apply(*config, &source) {
                eprintln!("error: {}: {error}", path.display());
                return exit::BAD_CONFIG;
            }
            ConfigTask::Watch(path, reloader)
        }
        Mode::Push(settings) => {
            let certs = shared.tls.as_ref().map(|tls| {
                CertManager::new(
                    settings.clone(),
                    Arc::clone(tls),
                    Arc::clone(&shared.metrics),
                )
            });
            let mut client = ControlClient::new(settings, reloader);
            client.load_cache();
            ConfigTask::Push(Box::new(client), certs)
        }
    };

    let handed_over = hand_over.send(AdminWork {
        shared: Arc::clone(&shared),
        config: config_task,
        listener: admin,
        listener_v6: admin_v6,
        app_probes: Arc::new(args.app_probes.clone().unwrap_or_default()),
    });
    if handed_over.is_err() {
        eprintln!("error: the admin thread ended during start-up");
        return exit::FATAL;
    }

    tracing::info!(
        outbound = %args.outbound, inbound = %args.inbound, admin = %args.admin, workers,
        node_id = %shared.identity.node_id, connection_cap = connections.limit.max(),
        "ficus-sidecar started"
    );
    let exiting = Arc::clone(&shared);
    let code = runtime.block_on(serve(
        shared,
        stop,
        Listeners {
            outbound,
            inbound,
            extra,
            transparent,
        },
        connections,
        DrainTiming {
            timeout: args.drain_timeout,
            quiet: args.drain_quiet_period,
        },
    ));
    // What is still open now is cut: requests dropped unanswered log (and count) `SD`.
    drain::cut();
    runtime.shutdown_timeout(Duration::from_millis(200));
    // Requests cut at the drain timeout log their `SD` lines as the runtime drops them: the
    // writer gets a moment to put them (and everything queued before) out before the process
    // ends.
    if let Some(log) = &exiting.snapshot.load().access_log {
        if !log.flush(ACCESS_LOG_FLUSH) {
            tracing::warn!(within = ?ACCESS_LOG_FLUSH, "the access log was not flushed at exit");
        }
    }
    code
}

/// What the admin thread serves once start-up is done.
struct AdminWork {
    shared: Arc<Shared>,
    config: ConfigTask,
    listener: std::net::TcpListener,
    /// The admin listener's IPv6 companion.
    listener_v6: Option<std::net::TcpListener>,
    app_probes: Arc<crate::admin::app_probes::AppProbes>,
}

/// The admin thread, from process start: until `serves` (the moment start-up may begin to
/// serve), a SIGTERM or SIGINT ends the process ([`StartUpStop`]); then it waits for start-up
/// to hand over its work and runs the config task, the SIGHUP/SIGUSR1 handler (which answers
/// any that came during start-up) and the admin server. Returns at once when start-up failed
/// (the main thread is exiting with its code).
async fn admin(
    starting: StartUpStop,
    serves: tokio::sync::oneshot::Receiver<()>,
    signals: crate::signals::OperatorSignals,
    handed: tokio::sync::oneshot::Receiver<AdminWork>,
) {
    if starting.until_started(serves).await.is_err() {
        return;
    }
    let Ok(work) = handed.await else {
        return;
    };
    let reload = match work.config {
        ConfigTask::Watch(path, reloader) => {
            let reload = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(crate::watch::watch(path, reloader, Arc::clone(&reload)));
            Some(reload)
        }
        ConfigTask::Push(client, certs) => {
            if let Some(certs) = certs {
                tokio::spawn(certs.run());
            }
            tokio::spawn(client.run());
            None
        }
    };
    tokio::spawn(signals.run(Arc::clone(&work.shared), reload));
    match listen::Listeners::from_std(work.listener, work.listener_v6) {
        Ok(listeners) => crate::admin::serve(listeners, work.shared, work.app_probes).await,
        Err(error) => admin_failed(&format!("the admin listener failed: {error}")),
    }
}

/// How long the exit waits for the access-log writer to put out the last lines.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(1);

/// The end of phase 1 of the drain: `reserve` before the drain deadline, so that phase 2 has
/// time to tell outbound clients (`Connection: close`, GOAWAY) even when phase 1 runs out.
fn phase_one_end(timeout: Duration) -> Duration {
    let reserve = (timeout / 4).min(Duration::from_secs(5));
    timeout - reserve
}

/// Where config comes from.
enum Mode {
    /// `--config`: the validated start-up config and the path to watch.
    File(std::path::PathBuf, Box<ficus_config::Config>),
    /// `--control`.
    Push(ControlSettings),
}

/// The task that feeds the reloader, run on the admin runtime.
enum ConfigTask {
    Watch(std::path::PathBuf, Reloader),
    Push(Box<ControlClient>, Option<CertManager>),
}

/// The IPv6 companion of `listener` (`flag`'s), bound on the port `listener` got; none when
/// its address needs none or IPv6 is unavailable here (a debug line), or when the companion
/// cannot be bound otherwise (a warning: its port is taken, IPv6 clients reach another
/// process). IPv4 is served either way.
fn ipv6_companion(listener: &std::net::TcpListener, flag: &str) -> Option<std::net::TcpListener> {
    listen::companion_or_log(listener.local_addr().ok()?, 1024, flag)
}

/// The admin thread could not serve: without it there is no readiness, no metrics and (in
/// push mode) no config, so the process stops rather than run on unseen (exit 1).
fn admin_failed(reason: &str) -> ! {
    tracing::error!(reason, "the admin server cannot run; exiting");
    eprintln!("error: {reason}");
    std::process::exit(i32::from(exit::FATAL));
}

/// This sidecar's mesh identity: in push mode with `--token-file`, over an `https://` control
/// connection (the CA signs our CSR there).
fn mesh_tls(args: &Args, mode: &Mode) -> Result<Option<Arc<MeshTls>>, String> {
    let Mode::Push(settings) = mode else {
        return Ok(None);
    };
    if args.token_file.is_none() {
        return Ok(None);
    }
    let control_tls = settings.tls.as_ref().ok_or(
        "--token-file needs an https:// --control: certificates come from the control plane's CA",
    )?;
    let id = SpiffeId::workload(&args.trust_domain, &args.namespace, &args.workload)
        .map_err(|e| format!("--workload/--namespace/--trust-domain: {e}"))?;
    Ok(Some(Arc::new(MeshTls::new(
        id,
        control_tls.bundle.clone(),
    )?)))
}

/// How far ahead [`timer_anchor`] keeps a timer pending.
const TIMER_ANCHOR: Duration = Duration::from_millis(100);

/// Keeps one timer pending on the data-plane runtime at all times, at most [`TIMER_ANCHOR`]
/// ahead, so arming a per-request timer does not cost two system calls.
///
/// When tokio's time driver parks it notes its earliest pending deadline; a timer armed later
/// with an earlier deadline (or with none pending) makes it write its eventfd to wake the
/// driver and recompute, and the next `epoll_wait` returns at once for nothing. Between
/// requests nothing else may be pending, so every request paid that (hyper's header-read
/// timer of the next request on a keep-alive connection, the response and body timeouts).
/// With the anchor pending, timers further away than it are filed without a wake-up. It
/// fires ten times a second, idle or not.
async fn timer_anchor() {
    loop {
        tokio::time::sleep(TIMER_ANCHOR).await;
    }
}

fn data_plane_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("ficus-worker")
            .enable_all()
            .build()
    }
}

/// The data-plane listeners.
struct Listeners {
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
    /// Transparent mode's IPv6 listeners.
    extra: Vec<(std::net::TcpListener, Side)>,
    /// Transparent mode: how redirected connections are served.
    transparent: Option<Arc<crate::transparent::Transparent>>,
}

/// The data-plane connections of each side, and the cap on all of them together.
struct Connections {
    inbound: TaskTracker,
    outbound: TaskTracker,
    limit: ConnectionLimit,
}

/// `--drain-timeout` and `--drain-quiet-period`.
struct DrainTiming {
    timeout: Duration,
    quiet: Duration,
}

async fn serve(
    shared: Arc<Shared>,
    mut stop: Stop,
    listeners: Listeners,
    connections: Connections,
    timing: DrainTiming,
) -> u8 {
    let Listeners {
        outbound,
        inbound,
        extra,
        transparent,
    } = listeners;
    let mut all = vec![
        (outbound, Side::Outbound, "outbound"),
        (inbound, Side::Inbound, "inbound"),
    ];
    all.extend(extra.into_iter().map(|(listener, side)| match side {
        Side::Outbound => (listener, side, "outbound-v6"),
        Side::Inbound => (listener, side, "inbound-v6"),
    }));
    for (listener, side, name) in all {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, listener = name, "cannot register listener");
                return exit::FATAL;
            }
        };
        let shared = Arc::clone(&shared);
        let (drain, tracker) = match side {
            Side::Inbound => (shared.drain.inbound(), connections.inbound.clone()),
            Side::Outbound => (shared.drain.outbound(), connections.outbound.clone()),
        };
        let drain_for_connections = drain.clone();
        let transparent = transparent.clone();
        tokio::spawn(accept_loop(
            listener,
            name,
            drain,
            tracker,
            connections.limit.clone(),
            move |stream, peer| {
                let shared = Arc::clone(&shared);
                let drain = drain_for_connections.clone();
                let transparent = transparent.clone();
                async move {
                    match transparent {
                        Some(transparent) => {
                            let serve = crate::transparent::serve;
                            serve(shared, transparent, side, stream, peer, drain).await
                        }
                        None => serve_http(shared, side, stream, peer, drain).await,
                    }
                }
            },
        ));
    }

    tokio::spawn(timer_anchor());

    let quit = stop.next(&shared).await;
    let started = tokio::time::Instant::now();
    let deadline = started + timing.timeout;
    let phase_one_deadline = started + phase_one_end(timing.timeout);
    // Phase 1: inbound drains; outbound serves the app until it is done (crate::drain).
    shared.drain.drain();
    connections.inbound.close();
    if !quit {
        tracing::info!(
            drain_timeout = ?timing.timeout, quiet_period = ?timing.quiet,
            "draining inbound; outbound serves until it is quiet"
        );
        let inbound_drained_then_quiet = async {
            connections.inbound.wait().await;
            shared.drain.outbound_quiet(timing.quiet).await;
        };
        tokio::select! {
            () = inbound_drained_then_quiet => tracing::info!("inbound drained, outbound quiet"),
            () = tokio::time::sleep_until(phase_one_deadline) => tracing::warn!(
                inbound_open = connections.inbound.len(),
                outbound_open = shared.drain.outbound_open(),
                "drain timeout nearly passed before inbound drained and outbound went quiet; \
                 draining outbound too"
            ),
            _ = stop.next(&shared) => tracing::info!("stopping without waiting for outbound"),
        }
    }
    // Phase 2: everything drains.
    shared.drain.stop();
    connections.outbound.close();
    let all = async {
        connections.inbound.wait().await;
        connections.outbound.wait().await;
    };
    tokio::select! {
        () = all => tracing::info!("drained"),
        () = tokio::time::sleep_until(deadline) => tracing::warn!(
            remaining = connections.inbound.len() + connections.outbound.len(),
            "drain timeout passed; closing what is left"
        ),
        () = stop.next_signal() => {
            tracing::warn!(
                remaining = connections.inbound.len() + connections.outbound.len(),
                "signal while draining; closing what is left now"
            );
            return exit::OK;
        }
    }
    // Spans of the last requests would otherwise wait for the exporter's next drain: what is
    // left of the drain timeout (which the pod's grace period is sized for), at most 2 s, and
    // at least a short floor, so that a drain cut at its timeout still sends them.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    shared
        .traces
        .flush(left.clamp(SPAN_FLUSH_AT_EXIT.0, SPAN_FLUSH_AT_EXIT.1))
        .await;
    exit::OK
}

/// The least and the most the last span export at exit may take.
const SPAN_FLUSH_AT_EXIT: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(2));

/// What stops the sidecar: SIGTERM, SIGINT or `/quitquitquit`.
struct Stop {
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Stop {
    /// Catches both from now on: at process start, on the admin runtime (see "Signals" in
    /// the module doc), and kept to the end. The drain waits on them on the data-plane
    /// runtime: a signal listener is not tied to the runtime it was made on (either runtime's
    /// driver passes a delivery on to every listener).
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self {
                signals: Some((term, int)),
            },
            _ => {
                tracing::error!(
                    "cannot install signal handlers; only /quitquitquit stops the sidecar"
                );
                Self { signals: None }
            }
        }
    }

    /// Waits for the next stop request; true for `/quitquitquit`. While draining, a second
    /// signal or `/quitquitquit` ends the wait for the outbound side.
    async fn next(&mut self, shared: &Shared) -> bool {
        let Some((term, int)) = &mut self.signals else {
            shared.quit.notified().await;
            tracing::info!("/quitquitquit");
            return true;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
            () = shared.quit.notified() => {
                tracing::info!("/quitquitquit");
                return true;
            }
        }
        false
    }

    /// Waits for the next SIGTERM or SIGINT (forever without signal handlers). Cancel-safe.
    async fn next_signal(&mut self) {
        let Some((term, int)) = &mut self.signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_one_leaves_phase_two_a_reserve() {
        let s = Duration::from_secs;
        assert_eq!(phase_one_end(s(30)), s(25));
        assert_eq!(phase_one_end(s(2)), Duration::from_millis(1500));
        assert_eq!(phase_one_end(Duration::ZERO), Duration::ZERO);
    }
}
