//! `ficusctl`: the platform team's CLI for `ficus-control`.
//!
//! Exit codes: 0 success, 1 the operation failed (invalid config, not found, a connected
//! sidecar NACKed, `--wait` timed out), 2 usage, 3 the control plane cannot be reached.
#![forbid(unsafe_code)]

#[path = "ficusctl/client.rs"]
mod client;
#[path = "ficusctl/commands.rs"]
mod commands;
#[path = "ficusctl/demo.rs"]
mod demo;
#[path = "ficusctl/format.rs"]
mod format;
#[path = "ficusctl/inject.rs"]
mod inject;
#[path = "ficusctl/input.rs"]
mod input;
#[path = "ficusctl/wait.rs"]
mod wait;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Client;

/// Manage the Ficus mesh's config through its control plane.
#[derive(Debug, Parser)]
#[command(name = "ficusctl", version, about)]
struct Args {
    /// The control plane's HTTP API.
    #[arg(
        long,
        global = true,
        env = "FICUS_SERVER",
        default_value = "http://127.0.0.1:15014"
    )]
    server: String,
    /// File holding the admin bearer token, sent as `authorization: Bearer`; writes need it
    /// when the control plane runs with `--admin-token-file`.
    #[arg(long, global = true, env = "FICUS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The mesh root(s) to verify an https:// --server by (the control plane's `<data>/ca.pem`).
    #[arg(long, global = true, env = "FICUS_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Admin client certificate (PEM chain) for an https:// --server; see `ficus-control
    /// issue-admin-cert`.
    #[arg(long, global = true, env = "FICUS_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, global = true, env = "FICUS_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Trust domain of the control plane's SPIFFE ID checked over https (default: that of
    /// --cert-file, else cluster.local). For `inject`: the injected sidecars' --trust-domain
    /// (default cluster.local); keep it equal to ficus-control's --trust-domain, or the
    /// sidecars reject the control plane.
    #[arg(long, global = true, env = "FICUS_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Recorded as the author of the versions you make (default: $USER).
    #[arg(long, global = true, env = "FICUS_AUTHOR")]
    author: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and store documents as a new version (all or nothing). The config's warnings
    /// (route matches that can never be selected) go to stderr; they do not fail the apply.
    Apply {
        /// A YAML file, a directory of *.yaml / *.yml files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Print the current config (all of it, one kind, or one document).
    Get {
        /// Kind, e.g. HTTPRoute or httproutes (any case, singular or plural).
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Only this namespace (default: all).
        #[arg(short, long, env = "FICUS_NAMESPACE")]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, env = "FICUS_OUTPUT", value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
    /// Delete one document (refused when the rest would be invalid).
    Delete {
        /// Kind, e.g. Backend or backends (any case, singular or plural).
        kind: String,
        /// Name.
        name: String,
        /// Namespace (default: the only namespace that has such a document).
        #[arg(short, long, env = "FICUS_NAMESPACE")]
        namespace: Option<String>,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Show what `apply` would change, and the warnings it would print (on stderr).
    Diff {
        /// A YAML file, a directory of *.yaml / *.yml files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
        /// Exit 1 when `apply` would change something and 0 when not, as `kubectl diff` and
        /// `git diff --exit-code` do; a failure then exits 2 or more (4 where it would be 1).
        #[arg(long, env = "FICUS_EXIT_CODE")]
        exit_code: bool,
    },
    /// List versions, newest first: number, time, author, documents, summary.
    History {
        /// Show at most this many versions (the newest).
        #[arg(
            long,
            env = "FICUS_LIMIT",
            default_value_t = 100,
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        limit: u64,
        /// Show every version (page after page), however many there are; overrides --limit.
        #[arg(long, env = "FICUS_ALL")]
        all: bool,
    },
    /// Make an old version current again, as a new version.
    Rollback {
        /// The version to go back to (default: the one before the version the current config
        /// came from, so that rollback after rollback goes further back).
        version: Option<u64>,
        #[command(flatten)]
        wait: wait::WaitArgs,
    },
    /// Check config files on this machine, as a sidecar's `--config` loads them (the files
    /// together are the whole config): every error with file, document and field, and the
    /// warnings; exit 1 when invalid. The control plane is not contacted (for CI checks
    /// before an apply; `diff` checks against the stored config).
    Validate {
        /// A YAML file, a directory of *.yaml / *.yml files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
    },
    /// Print Kubernetes manifests with the Ficus sidecar injected (what the admission webhook
    /// does); local, the control plane is not contacted. `--trust-domain` sets the sidecars'
    /// trust domain (default cluster.local): give the one ficus-control runs with.
    Inject {
        /// A YAML file (one or more documents) or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
        /// Output format (JSON: the object, or a `List` of several).
        #[arg(short, long, env = "FICUS_OUTPUT", value_enum, default_value_t = Output::Yaml)]
        output: Output,
        /// Sidecar image (default `ficus/ficus-sidecar:<version>`).
        #[arg(long, env = "FICUS_IMAGE")]
        image: Option<String>,
        /// The sidecars' `--control` (default `https://ficus-control.ficus-system.svc:15012`).
        #[arg(long, env = "FICUS_CONTROL_URL")]
        control_url: Option<String>,
    },
    /// Run the strangler-fig migration on this machine: a control plane, sidecars, apps and
    /// load, the split moved 0 → 10 → 50 → 100 %, a fault, history and a rollback.
    Demo {
        /// How long the phases take in all (start-up not counted), e.g. 60s or 2m.
        #[arg(long, env = "FICUS_DURATION", default_value = "60s", value_parser = parse_timeout)]
        duration: Duration,
        /// Stay up after the summary and print what to explore, until Ctrl-C.
        #[arg(long, env = "FICUS_KEEP")]
        keep: bool,
    },
    /// Every sidecar: what it has ACKed, its last NACK, since when it is connected.
    Status {
        /// Output format.
        #[arg(short, long, env = "FICUS_OUTPUT", value_enum, default_value_t = Table::Table)]
        output: Table,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Table {
    Table,
    Json,
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub enum CtlError {
    /// Bad flags or arguments (exit 2).
    Usage(String),
    /// The control plane did not answer (exit 3).
    Unreachable(String),
    /// The operation failed (exit 1); `diagnostics` are the server's, printed as given.
    Failed {
        /// One line: what failed.
        message: String,
        /// Problems with the config, one per entry, as the server wrote them.
        diagnostics: Vec<String>,
    },
    /// `diff --exit-code` found changes (exit 1; the diff is the output, nothing else is
    /// printed).
    Differs,
    /// A failure of `diff --exit-code`, where exit 1 means changes: `Failed` exits 4.
    DiffFailed(Box<CtlError>),
}

impl CtlError {
    fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            diagnostics: Vec::new(),
        }
    }

    fn exit_code(&self) -> u8 {
        match self {
            Self::Failed { .. } | Self::Differs => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::DiffFailed(inner) => match inner.exit_code() {
                1 => 4,
                code => code,
            },
        }
    }

    fn diagnostics(&self) -> &[String] {
        match self {
            Self::Failed { diagnostics, .. } => diagnostics,
            Self::DiffFailed(inner) => inner.diagnostics(),
            _ => &[],
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Unreachable(message) => f.write_str(message),
            Self::Failed { message, .. } => f.write_str(message),
            Self::Differs => f.write_str("apply would change the config"),
            Self::DiffFailed(inner) => inner.fmt(f),
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            // `diff --exit-code` keeps 1 for "changes".
            let differs_means_one = matches!(
                args.command,
                Command::Diff {
                    exit_code: true,
                    ..
                }
            );
            return ExitCode::from(if differs_means_one { 4 } else { 1 });
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CtlError::Differs) => ExitCode::from(CtlError::Differs.exit_code()),
        Err(error) => {
            for diagnostic in error.diagnostics() {
                eprintln!("{diagnostic}");
            }
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(args: Args) -> Result<(), CtlError> {
    if let Command::Inject {
        file,
        output,
        image,
        control_url,
    } = args.command
    {
        return inject::run(inject::InjectArgs {
            file,
            output,
            image,
            control_url,
            trust_domain: args.trust_domain.clone(),
        });
    }
    if let Command::Validate { file } = &args.command {
        return commands::validate(file);
    }
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    CtlError::Usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let author = args
        .author
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.is_empty());
    let client = Client::new(&args.server, token, author)?.with_tls(&client::TlsFiles {
        ca_file: args.ca_file.clone(),
        cert_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        trust_domain: args.trust_domain.clone(),
    })?;
    match args.command {
        Command::Apply { file, wait } => commands::apply(&client, &file, wait).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => commands::get(&client, kind, name, namespace, output).await,
        Command::Delete {
            kind,
            name,
            namespace,
            wait,
        } => commands::delete(&client, &kind, &name, namespace, wait).await,
        Command::Diff { file, exit_code } => match commands::diff(&client, &file).await {
            Ok(true) if exit_code => Err(CtlError::Differs),
            Ok(_) => Ok(()),
            Err(error) if exit_code => Err(CtlError::DiffFailed(Box::new(error))),
            Err(error) => Err(error),
        },
        Command::History { limit, all } => {
            let limit = if all { None } else { Some(limit) };
            commands::history(&client, limit).await
        }
        Command::Rollback { version, wait } => commands::rollback(&client, version, wait).await,
        Command::Status { output } => commands::status(&client, output).await,
        Command::Demo { duration, keep } => demo::run(duration, keep).await,
        Command::Inject { .. } | Command::Validate { .. } => {
            Err(CtlError::failed("handled above, without a client"))
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    ficus_config::parse_duration(text)
}
