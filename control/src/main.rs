//! `ficus-control`: the Ficus control plane.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ficus_control::state::ControlState;
use ficus_control::store::Store;

/// The Ficus control plane: config store, push streams, HTTP API.
#[derive(Debug, Parser)]
#[command(name = "ficus-control", version, about)]
struct Args {
    /// Embedded durable store (history included).
    #[arg(long, env = "FICUS_DATA", default_value = "./ficus-data")]
    data: PathBuf,
    /// Sidecar push streams.
    #[arg(long, env = "FICUS_GRPC", default_value = "127.0.0.1:15012")]
    grpc: SocketAddr,
    /// HTTP API used by ficusctl, `/metrics`, `/live`, `/ready`.
    #[arg(long, env = "FICUS_HTTP", default_value = "127.0.0.1:15014")]
    http: SocketAddr,
    /// Plaintext push on a loopback address, no CA (local development and tests).
    #[arg(long, env = "FICUS_INSECURE")]
    insecure: bool,
    /// Tokens that authenticate sidecars outside Kubernetes (not used yet).
    #[arg(long, env = "FICUS_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// Bearer tokens allowed to use the write API (not used yet).
    #[arg(long, env = "FICUS_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "FICUS_LOG_FORMAT", default_value = "text")]
    log_format: String,
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
    if !args.http.ip().is_loopback() && args.admin_token_file.is_none() {
        eprintln!(
            "error: --http {} is not a loopback address; the API has no authentication yet",
            args.http
        );
        return ExitCode::from(2);
    }
    if !args.grpc.ip().is_loopback() {
        eprintln!(
            "error: --grpc {} is not a loopback address; push is plaintext until mTLS exists",
            args.grpc
        );
        return ExitCode::from(2);
    }
    let (store, current) = match Store::open(&args.data) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!(
                "error: cannot open the store in {}: {error}",
                args.data.display()
            );
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let state = ControlState::new(store, current);
    let code = runtime.block_on(async move {
        let (grpc, http) = match (
            tokio::net::TcpListener::bind(args.grpc).await,
            tokio::net::TcpListener::bind(args.http).await,
        ) {
            (Ok(grpc), Ok(http)) => (grpc, http),
            (Err(error), _) => {
                eprintln!("error: cannot listen on {} (--grpc): {error}", args.grpc);
                return 1;
            }
            (_, Err(error)) => {
                eprintln!("error: cannot listen on {} (--http): {error}", args.http);
                return 1;
            }
        };
        tracing::info!(grpc = %args.grpc, http = %args.http, data = %args.data.display(),
            version = state.current().version, "ficus-control started");
        tokio::spawn(ficus_control::push::serve(
            grpc,
            std::sync::Arc::clone(&state),
        ));
        tokio::spawn(ficus_control::api::serve(
            http,
            std::sync::Arc::clone(&state),
        ));
        wait_for_shutdown().await;
        tracing::info!("shutting down");
        0
    });
    ExitCode::from(code)
}

/// SIGTERM or SIGINT. Every accepted write is already durable, so there is nothing to flush.
async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
