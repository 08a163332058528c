//! Command-line flags; every flag also reads `FICUS_<FLAG>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The Ficus sidecar proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "ficus-sidecar", version, about, subcommand_negates_reqs = true)]
pub struct Args {
    /// A one-shot job instead of the proxy.
    #[command(subcommand)]
    pub command: Option<SidecarCommand>,

    /// Static mode: config documents from FILE or a directory of `*.yaml`, watched and hot-swapped.
    #[arg(
        long,
        env = "FICUS_CONFIG",
        value_name = "FILE|DIR",
        required_unless_present = "control"
    )]
    pub config: Option<PathBuf>,

    /// Push mode: subscribe to a control plane, e.g. `http://127.0.0.1:15012` or
    /// `https://ficus-control.ficus-system.svc:15012` (a name is resolved at every connect).
    #[arg(
        long,
        env = "FICUS_CONTROL",
        value_name = "URL",
        conflicts_with = "config"
    )]
    pub control: Option<String>,

    /// Push mode: namespaces besides our own whose services this workload calls; the
    /// control plane then sends only those (default: every namespace).
    #[arg(long, env = "FICUS_REACH", value_delimiter = ',', value_name = "NS,..", value_parser = hello_field)]
    pub reach: Vec<String>,

    /// This sidecar's workload (service account) name.
    #[arg(long, env = "FICUS_WORKLOAD", default_value = "app", value_parser = hello_field)]
    pub workload: String,

    /// This sidecar's namespace; bare service names resolve in it.
    #[arg(long, env = "FICUS_NAMESPACE", default_value = "default", value_parser = hello_field)]
    pub namespace: String,

    /// Unique id shown in control status (default `<workload>-<random>`).
    #[arg(long, env = "FICUS_NODE_ID", value_parser = hello_field)]
    pub node_id: Option<String>,

    /// Where the local app sends outbound traffic.
    #[arg(long, env = "FICUS_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,

    /// Where peers reach this workload.
    #[arg(long, env = "FICUS_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,

    /// The local app that inbound traffic goes to.
    #[arg(long, env = "FICUS_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,

    /// Admin server address. Reads (`GET`) are answered on it from anywhere; writes
    /// (`POST /drain`, `/quitquitquit`, `PUT /log-level`) only from loopback peers (403 otherwise).
    #[arg(long, env = "FICUS_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// The app's kubelet probes to answer on the admin port, as JSON by path (what injection
    /// sets): `{"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080}}}`.
    /// Each is relayed to `127.0.0.1:<port>` only (HTTP GET or a TCP connect).
    #[arg(long, env = "FICUS_APP_PROBES", value_name = "JSON", value_parser = parse_app_probes)]
    pub app_probes: Option<crate::admin::app_probes::AppProbes>,

    /// Push mode: where the last accepted config is cached.
    #[arg(long, env = "FICUS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Token presented to the control plane to obtain a certificate.
    #[arg(long, env = "FICUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// SPIFFE trust domain of the mesh (the control plane's and peers' identities live in it).
    #[arg(long, env = "FICUS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Root certificate(s) to trust for the control plane and the mesh.
    #[arg(long, env = "FICUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// On SIGTERM, how long draining may take in all: inbound in-flight work finishing, and
    /// the app's outbound traffic, which keeps being served until it is quiet.
    #[arg(long, env = "FICUS_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After SIGTERM, how long the outbound side must have had no connection open (and none
    /// opened) before the sidecar stops it and exits: the app is taken to be done.
    #[arg(long, env = "FICUS_DRAIN_QUIET_PERIOD", default_value = "1s", value_parser = parse_duration)]
    pub drain_quiet_period: Duration,

    /// Data-plane worker threads (default: CPUs this process may use, cgroup-aware).
    #[arg(long, env = "FICUS_WORKERS")]
    pub workers: Option<usize>,

    /// Take iptables-redirected traffic (`ficus-sidecar redirect`) and read the original
    /// destination of each connection.
    #[arg(long, env = "FICUS_TRANSPARENT")]
    pub transparent: bool,

    /// Transparent mode: destination ports that are never sniffed for HTTP (server-first
    /// protocols), added to 25, 587, 3306, 4444, 5432, 6379, 9300, 11211.
    #[arg(
        long,
        env = "FICUS_OPAQUE_PORTS",
        value_delimiter = ',',
        value_name = "P,.."
    )]
    pub opaque_ports: Vec<u16>,

    /// Transparent mode: how long a redirected connection may stay silent before it is
    /// forwarded as opaque TCP (a server-first protocol never waits longer than this).
    #[arg(long, env = "FICUS_DETECT_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Log format.
    #[arg(long, env = "FICUS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Initial log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    #[arg(long, env = "FICUS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum SidecarCommand {
    /// Install (or with --cleanup remove) the iptables/ip6tables nat rules of transparent mode
    /// in the current network namespace.
    Redirect(crate::redirect::RedirectArgs),
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// Data-plane worker threads to run.
    pub fn worker_threads(&self) -> usize {
        self.workers
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The node id, generated when not given.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{:08x}", self.workload, rand::random::<u32>()))
    }
}

/// Longest workload, namespace, node id or reach entry: what the control plane accepts in a
/// Hello. A longer or empty one would be refused on every reconnect, so it is a bad flag.
const MAX_HELLO_FIELD: usize = 256;

/// A name sent to the control plane in the Hello: non-empty, at most [`MAX_HELLO_FIELD`]
/// bytes.
fn hello_field(s: &str) -> Result<String, String> {
    match s.len() {
        0 => Err("must not be empty".to_owned()),
        n if n > MAX_HELLO_FIELD => Err(format!(
            "{n} bytes; at most {MAX_HELLO_FIELD} are accepted by the control plane"
        )),
        _ => Ok(s.to_owned()),
    }
}

fn parse_app_probes(s: &str) -> Result<crate::admin::app_probes::AppProbes, String> {
    crate::admin::app_probes::AppProbes::parse(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    ficus_config::parse_duration(s)
}
