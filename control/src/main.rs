//! `ficus-control`: the Ficus control plane.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ficus_control::auth::admin::AdminTokens;
use ficus_control::auth::join::{JoinTokens, TokenAuthenticator};
use ficus_control::ca::{self, ServerIdentity};
use ficus_control::grpc::{self, Router};
use ficus_control::inject::InjectConfig;
use ficus_control::kubernetes::client;
use ficus_control::kubernetes::token_review::{FirstOf, TokenReviewer, AUDIENCE};
use ficus_control::listen;
use ficus_control::sign::Signer;
use ficus_control::state::ControlState;
use ficus_control::store::Store;
use ficus_control::webhook;
use ficus_identity::ca::CertificateAuthority;
use ficus_identity::tls::{self, CertStore, ClientAuth, Credentials, TrustBundle};
use ficus_net::listen::Listeners;
use ficus_net::signal::StartUpStop;
use tokio_rustls::TlsAcceptor;

/// The listen backlog of `--grpc`: after a control-plane restart every sidecar reconnects at
/// once, and the default of 128 drops (and delays by a SYN retry) the rest.
const GRPC_BACKLOG: u32 = 4096;

/// Shortest and longest `--cert-lifetime`.
const LIFETIMES: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(366 * 86400));

/// The Ficus control plane: config store, push streams, certificate authority, HTTP API.
#[derive(Debug, Parser)]
#[command(name = "ficus-control", version, about)]
struct Args {
    /// Embedded durable store (history included); the CA lives in `<data>/ca/`, its public
    /// root in `<data>/ca.pem`.
    #[arg(long, env = "FICUS_DATA", default_value = "./ficus-data")]
    data: PathBuf,
    /// How many of the newest config versions the store keeps (older ones are deleted at each
    /// commit, except the one a plain rollback goes to).
    #[arg(long, env = "FICUS_HISTORY_LIMIT", default_value_t = ficus_control::store::DEFAULT_HISTORY_LIMIT,
        value_parser = clap::value_parser!(u64).range(1..))]
    history_limit: u64,
    /// Sidecar push streams and certificate signing (gRPC over TLS; plaintext with --insecure).
    #[arg(long, env = "FICUS_GRPC", default_value = "127.0.0.1:15012")]
    grpc: SocketAddr,
    /// HTTP API used by ficusctl, `/metrics`, `/live`, `/ready`.
    #[arg(long, env = "FICUS_HTTP", default_value = "127.0.0.1:15014")]
    http: SocketAddr,
    /// Plaintext push on a loopback address, no CA (local development and tests).
    #[arg(long, env = "FICUS_INSECURE")]
    insecure: bool,
    /// Tokens that authenticate sidecars asking for a certificate: one `token workload
    /// namespace` per line, `#` comments; re-read when it changes.
    #[arg(long, env = "FICUS_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Bearer tokens allowed to use the write API, one per line; required when --http is not
    /// a loopback address; re-read when it changes.
    #[arg(long, env = "FICUS_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// The mesh's trust domain: certificates name `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, env = "FICUS_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of the workload certificates the CA signs (e.g. 24h, 1h, 90s).
    #[arg(long, env = "FICUS_CERT_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    cert_lifetime: Duration,
    /// Log format: `text` or `json`.
    #[arg(long, env = "FICUS_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Serve the sidecar injection webhook (AdmissionReview v1, `POST /inject`) over HTTPS on
    /// this address, e.g. 0.0.0.0:15017 (default: off). Needs the CA (not with --insecure).
    #[arg(long, env = "FICUS_WEBHOOK")]
    webhook: Option<SocketAddr>,
    /// DNS names in the webhook's certificate: the Service the API server calls.
    #[arg(
        long,
        env = "FICUS_WEBHOOK_DNS_NAME",
        value_delimiter = ',',
        default_value = "ficus-control.ficus-system.svc"
    )]
    webhook_dns_name: Vec<String>,
    /// Image of the injected sidecar (default `ficus/ficus-sidecar:<version>`, as `ficusctl
    /// inject`).
    #[arg(long, env = "FICUS_INJECT_IMAGE")]
    inject_image: Option<String>,
    /// `--control` of injected sidecars (default
    /// `https://ficus-control.ficus-system.svc:15012`, as `ficusctl inject`).
    #[arg(long, env = "FICUS_INJECT_CONTROL_URL")]
    inject_control_url: Option<String>,
    /// Also authenticate certificate requests with the Kubernetes TokenReview of the pod's
    /// projected service-account token (audience `ficus`); in-cluster (the API server from
    /// `KUBERNETES_SERVICE_HOST`, this pod's own token and CA), or outside a pod the
    /// kubeconfig in `KUBECONFIG`. Join tokens still work.
    #[arg(long, env = "FICUS_KUBERNETES_TOKEN_REVIEW")]
    kubernetes_token_review: bool,
    /// The cluster is the source of truth: list and watch Services, EndpointSlices,
    /// HTTPRoutes, TCPRoutes and the ficus.dev kinds, and commit what they translate to as new
    /// versions (in-cluster, or outside a pod from `KUBECONFIG`; API writes are replaced by
    /// the next change in the cluster).
    #[arg(long, env = "FICUS_KUBERNETES")]
    kubernetes: bool,
    /// Also serve the HTTP API over TLS 1.3 on this address (certificate from the mesh CA;
    /// client certificates requested), e.g. 0.0.0.0:15443. Needs the CA (not with --insecure).
    #[arg(long, env = "FICUS_HTTPS")]
    https: Option<SocketAddr>,
    /// SPIFFE IDs whose client certificates may use the write API on --https, comma-separated,
    /// e.g. spiffe://cluster.local/ns/ficus-system/sa/alice (see `issue-admin-cert`).
    #[arg(long, env = "FICUS_ADMIN_IDENTITIES", value_delimiter = ',')]
    admin_identities: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Offline commands (run on the control host; the server is not started).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Issue an admin client certificate `spiffe://<td>/ns/ficus-system/sa/<name>` from the CA
    /// in --data: writes cert.pem, key.pem (0600) and ca.pem into --out.
    IssueAdminCert {
        /// The service-account part of the identity, e.g. alice.
        #[arg(long, env = "FICUS_NAME")]
        name: String,
        /// Directory for the files (created 0700 if missing).
        #[arg(long, env = "FICUS_OUT")]
        out: PathBuf,
        /// How long the certificate is valid (e.g. 24h, 8h).
        #[arg(long, env = "FICUS_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
        lifetime: Duration,
    },
}

/// Why the process cannot start: exit code 2 for bad flags or input files, 1 otherwise.
#[derive(Debug)]
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    fn other(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// What the TLS of `--grpc` and the signing service need, prepared before the runtime starts.
struct Authority {
    ca: Arc<CertificateAuthority>,
    identity: ServerIdentity,
    credentials: Credentials,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    init_logs(&args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("error: {}", fatal.message);
            ExitCode::from(fatal.code)
        }
    }
}

fn run(args: Args) -> Result<(), Fatal> {
    if let Some(Command::IssueAdminCert {
        name,
        out,
        lifetime,
    }) = &args.command
    {
        let id = ficus_control::admin_tls::issue_admin_cert_command(
            &args.data,
            &args.trust_domain,
            name,
            *lifetime,
            out,
        )
        .map_err(Fatal::usage)?;
        println!("{id}: {}/cert.pem, key.pem, ca.pem", out.display());
        return Ok(());
    }
    // Before any file is read, the store opened or a port bound: the runtime, and on it every
    // signal the control plane answers ([`Signals`]). A SIGTERM or SIGINT during start-up
    // ends the process at once (exit 0, [`StartUpStop`]: the multi-thread runtime's workers
    // answer it while this thread is busy); a SIGHUP or SIGUSR1 is logged and ignored once
    // it serves, as later.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Fatal::other(format!("cannot start the runtime: {error}")))?;
    let (signals, starting) = {
        let _entered = runtime.enter();
        (Signals::install(), StartUpStop::catch())
    };
    let (started, start_up) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(starting.until_started(start_up));
    if args.https.is_some() && args.insecure {
        return Err(Fatal::usage(
            "--https needs the CA for its certificate; drop --insecure",
        ));
    }
    let admin_identities = ficus_control::admin_tls::AdminIdentities::parse(
        &args.admin_identities,
        &args.trust_domain,
    )
    .map_err(|e| Fatal::usage(format!("--admin-identities: {e}")))?;
    if args.https.is_some() && admin_identities.is_empty() && args.admin_token_file.is_none() {
        return Err(Fatal::usage(
            "--https: give --admin-identities or --admin-token-file, else nobody can change the mesh there",
        ));
    }
    if !args.http.ip().is_loopback() && args.admin_token_file.is_none() {
        return Err(Fatal::usage(format!(
            "--http {} is not a loopback address; give --admin-token-file so that only admins \
             can change the mesh",
            args.http
        )));
    }
    if args.insecure && args.webhook.is_some() {
        return Err(Fatal::usage(
            "--webhook needs the CA for its certificate; drop --insecure",
        ));
    }
    if args.insecure && !args.grpc.ip().is_loopback() {
        return Err(Fatal::usage(format!(
            "--grpc {} is not a loopback address; --insecure push is plaintext and stays on \
             loopback (drop --insecure for TLS)",
            args.grpc
        )));
    }
    let admin = match &args.admin_token_file {
        Some(path) => {
            Some(Arc::new(AdminTokens::load(path).map_err(|e| {
                Fatal::usage(format!("--admin-token-file: {e}"))
            })?))
        }
        None => None,
    };
    let join = match &args.join_token_file {
        Some(path) => {
            Some(Arc::new(JoinTokens::load(path).map_err(|e| {
                Fatal::usage(format!("--join-token-file: {e}"))
            })?))
        }
        None => None,
    };
    let review = args.kubernetes_token_review && !args.insecure;
    let kube_client = if review || args.kubernetes {
        let flag = if args.kubernetes {
            "--kubernetes"
        } else {
            "--kubernetes-token-review"
        };
        let config = runtime
            .block_on(client::config())
            .map_err(|e| Fatal::usage(format!("{flag}: {e}")))?;
        let cluster_url = config.cluster_url.to_string();
        let connected = {
            // kube spawns the client's request buffer on the runtime.
            let _runtime = runtime.enter();
            client::connect(config).map_err(|e| Fatal::usage(format!("{flag}: {e}")))?
        };
        Some((connected, cluster_url))
    } else {
        None
    };
    let reviewer = match &kube_client {
        Some((connected, _)) if review => {
            Some(Arc::new(TokenReviewer::new(connected.clone(), AUDIENCE)))
        }
        _ => None,
    };
    let cluster = kube_client.filter(|_| args.kubernetes);
    let (store, current) = Store::open(&args.data).map_err(|error| {
        Fatal::other(format!(
            "cannot open the store in {}: {error}",
            args.data.display()
        ))
    })?;
    let store = store.with_history_limit(args.history_limit);
    let authority = if args.insecure {
        if join.is_some() {
            tracing::warn!("--join-token-file is ignored with --insecure: there is no CA");
        }
        None
    } else {
        Some(prepare_authority(&args)?)
    };
    let state = ControlState::new(store, current);
    if authority.is_some() {
        let _ = state.trust_domain.set(args.trust_domain.clone());
        if let Err(error) =
            ficus_control::apply::check_trust_domain(&args.trust_domain, &state.current(), &[])
        {
            tracing::warn!(%error, "the stored config names another trust domain than --trust-domain; the next apply must fix it");
        }
    }
    runtime.block_on(async move {
        // Each listener gets an IPv6 companion (`[::]` beside `0.0.0.0`, `[::1]` beside
        // `127.0.0.1`), served by the same loop: IPv6-only clusters reach us over IPv6.
        let (grpc, http) = match (
            listen::bind(args.grpc, GRPC_BACKLOG, "--grpc"),
            listen::bind(args.http, listen::DEFAULT_BACKLOG, "--http"),
        ) {
            (Ok(grpc), Ok(http)) => (grpc, http),
            (Err(error), _) => {
                return Err(Fatal::other(format!(
                    "cannot listen on {} (--grpc): {error}",
                    args.grpc
                )))
            }
            (_, Err(error)) => {
                return Err(Fatal::other(format!(
                    "cannot listen on {} (--http): {error}",
                    args.http
                )))
            }
        };
        let webhook = match args.webhook {
            Some(address) => Some(
                listen::bind(address, listen::DEFAULT_BACKLOG, "--webhook").map_err(|error| {
                    Fatal::other(format!("cannot listen on {address} (--webhook): {error}"))
                })?,
            ),
            None => None,
        };
        let https = match args.https {
            Some(address) => Some(
                listen::bind(address, listen::DEFAULT_BACKLOG, "--https").map_err(|error| {
                    Fatal::other(format!("cannot listen on {address} (--https): {error}"))
                })?,
            ),
            None => None,
        };
        let metrics = Arc::clone(&state.metrics);
        let (tls, signer, push_authenticator) = match authority {
            None => (None, Signer::insecure(Arc::clone(&metrics)), None),
            Some(authority) => {
                let (acceptor, ca) = start_tls(authority)?;
                if let Some(listener) = https {
                    ficus_control::admin_tls::start(
                        listener,
                        &ca,
                        Arc::clone(&state),
                        admin.clone(),
                        admin_identities.clone(),
                    )
                    .map_err(|e| Fatal::other(format!("--https: {e}")))?;
                }
                ca::publish_and_follow(&args.data, &ca, &state);
                if let Some(listener) = webhook {
                    start_webhook(&args, listener, &ca, Arc::clone(&metrics))?;
                }
                let mut authenticators: Vec<Arc<dyn TokenAuthenticator>> = Vec::new();
                if let Some(join) = join {
                    join.watch();
                    authenticators.push(join);
                }
                if let Some(reviewer) = reviewer {
                    authenticators.push(reviewer);
                }
                let authenticator = match authenticators.len() {
                    0 => {
                        tracing::warn!(
                            "no --join-token-file or --kubernetes-token-review: every \
                             certificate request will be refused"
                        );
                        None
                    }
                    1 => authenticators.pop(),
                    _ => Some(Arc::new(FirstOf(authenticators)) as Arc<dyn TokenAuthenticator>),
                };
                let signer = Signer::new(
                    ca,
                    authenticator.clone(),
                    args.cert_lifetime,
                    Arc::clone(&metrics),
                )
                .reserving(admin_identities.ids().iter().cloned());
                (Some(acceptor), signer, authenticator)
            }
        };
        if let Some(admin) = &admin {
            admin.watch();
        }
        let router = Router::new(
            ficus_control::push::service(Arc::clone(&state), push_authenticator),
            signer.into_service(),
        );
        tracing::info!(grpc = %args.grpc, http = %args.http,
            grpc_ipv6 = ?grpc.companion_addr(), http_ipv6 = ?http.companion_addr(),
            data = %args.data.display(),
            tls = tls.is_some(), trust_domain = %args.trust_domain,
            admin_tokens = admin.is_some(), version = state.current().version,
            "ficus-control started");
        tokio::spawn(grpc::serve(grpc, tls, router, metrics));
        tokio::spawn(ficus_control::api::serve(http, Arc::clone(&state), admin));
        if let Some((client, api_server)) = cluster {
            tracing::info!(%api_server, "following the cluster (--kubernetes)");
            tokio::spawn(ficus_control::kubernetes::watch::run(
                Arc::clone(&state),
                client,
                args.trust_domain.clone(),
            ));
        }
        // Serving: from here SIGTERM and SIGINT are `signals`' alone.
        let _ = started.send(());
        signals.shutdown().await;
        tracing::info!("shutting down");
        Ok(())
    })
}

/// Loads or creates the CA, writes `ca.pem`, and issues the control plane's certificate.
fn prepare_authority(args: &Args) -> Result<Authority, Fatal> {
    let identity = ServerIdentity::new(&args.trust_domain, args.grpc)
        .map_err(|e| Fatal::usage(format!("--trust-domain {:?}: {e}", args.trust_domain)))?;
    let ca = ca::load_or_generate(&args.data, &args.trust_domain)
        .map_err(|e| Fatal::other(format!("certificate authority: {e}")))?;
    let credentials = identity
        .issue(&ca)
        .map_err(|e| Fatal::other(e.to_string()))?;
    Ok(Authority {
        ca: Arc::new(ca),
        identity,
        credentials,
    })
}

/// Serves `--webhook` with a certificate for `--webhook-dns-name` from `ca` (renewed by a
/// task of its own).
fn start_webhook(
    args: &Args,
    listeners: Listeners,
    ca: &Arc<CertificateAuthority>,
    metrics: Arc<ficus_control::metrics::Metrics>,
) -> Result<(), Fatal> {
    let address = listeners
        .local_addr()
        .map_err(|e| Fatal::other(format!("--webhook: {e}")))?;
    let mut identity = ServerIdentity::new(&args.trust_domain, address)
        .map_err(|e| Fatal::usage(format!("--trust-domain {:?}: {e}", args.trust_domain)))?;
    identity
        .dns_names
        .extend(args.webhook_dns_name.iter().cloned());
    let credentials = identity.issue(ca).map_err(|e| {
        Fatal::usage(format!(
            "--webhook-dns-name {:?}: {e}",
            args.webhook_dns_name.join(",")
        ))
    })?;
    let store = CertStore::new();
    store.install(credentials);
    let bundle = TrustBundle::from_pem(&ca.root_pem(), ca.trust_domain())
        .map_err(|e| Fatal::other(format!("the CA's root is unusable: {e}")))?;
    let config = tls::server_config(Arc::clone(&store), &bundle, ClientAuth::None)
        .map_err(|e| Fatal::other(format!("TLS configuration: {e}")))?;
    tokio::spawn(identity.keep_renewed(Arc::clone(ca), store));
    let mut inject = InjectConfig::default();
    if let Some(image) = &args.inject_image {
        inject.image.clone_from(image);
    }
    if let Some(url) = &args.inject_control_url {
        inject.control_url.clone_from(url);
    }
    inject.trust_domain.clone_from(&args.trust_domain);
    tracing::info!(%address, dns_names = ?args.webhook_dns_name, "injection webhook started");
    tokio::spawn(webhook::serve(
        listeners,
        TlsAcceptor::from(config),
        Arc::new(inject),
        metrics,
    ));
    Ok(())
}

/// The TLS acceptor of `--grpc`, and the task that renews its certificate.
fn start_tls(authority: Authority) -> Result<(TlsAcceptor, Arc<CertificateAuthority>), Fatal> {
    let store = CertStore::new();
    store.install(authority.credentials);
    let bundle = TrustBundle::from_pem(&authority.ca.root_pem(), authority.ca.trust_domain())
        .map_err(|e| Fatal::other(format!("the CA's root is unusable: {e}")))?;
    let config = tls::server_config(Arc::clone(&store), &bundle, ClientAuth::None)
        .map_err(|e| Fatal::other(format!("TLS configuration: {e}")))?;
    tokio::spawn(
        authority
            .identity
            .keep_renewed(Arc::clone(&authority.ca), Arc::clone(&store)),
    );
    Ok((TlsAcceptor::from(config), authority.ca))
}

fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let lifetime = ficus_config::parse_duration(text)?;
    if lifetime < LIFETIMES.0 || lifetime > LIFETIMES.1 {
        return Err("a certificate lifetime is between 10s and 8784h (366 days)".to_owned());
    }
    Ok(lifetime)
}

/// The signals `ficus-control` answers, caught first thing at process start (before any file
/// is read, the store opened or a port bound) and kept to the end: SIGTERM or SIGINT stop it
/// (every accepted write is already durable, so there is nothing to flush; during start-up
/// [`StartUpStop`] ends it at once instead).
///
/// SIGHUP and SIGUSR1 are caught, logged and ignored: their default action would end the
/// process, and operators send them by habit (reload, reopen logs), but there is nothing to
/// reload (applies take effect at once; `ca/extra-roots.pem` is polled) and no log file. One
/// sent during start-up is logged once the process serves.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
    user1: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Catches the four signals. One that cannot be caught (logged) keeps its default action.
    fn install() -> Self {
        use ficus_net::signal::catch;
        use tokio::signal::unix::SignalKind;
        Self {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            int: catch(SignalKind::interrupt(), "SIGINT"),
            hangup: catch(SignalKind::hangup(), "SIGHUP"),
            user1: catch(SignalKind::user_defined1(), "SIGUSR1"),
        }
    }

    /// Until SIGTERM or SIGINT.
    async fn shutdown(mut self) {
        use ficus_net::signal::next;
        loop {
            tokio::select! {
                Some(()) = next(&mut self.term) => return,
                Some(()) = next(&mut self.int) => return,
                Some(()) = next(&mut self.hangup) => ignored_signal("SIGHUP"),
                Some(()) = next(&mut self.user1) => ignored_signal("SIGUSR1"),
                // Every stream ended: the runtime is shutting down.
                else => return,
            }
        }
    }
}

/// Logs a SIGHUP or SIGUSR1 that was caught (see [`Signals`]).
fn ignored_signal(name: &str) {
    tracing::info!(
        "{name} ignored: nothing to reload or reopen (applies take effect at once, \
         ca/extra-roots.pem is polled, logs go to stderr)"
    );
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // kube logs every failed request at ERROR; the watches and the TokenReview log the
        // same failure with what it was for, at WARN.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
