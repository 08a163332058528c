//! `ficusctl`: the platform team's CLI for `ficus-control`.
//!
//! Exit codes: 0 success, 1 the operation failed (invalid config, not found, a sidecar NACKed,
//! `--wait` timed out), 2 usage, 3 the control plane cannot be reached.
#![forbid(unsafe_code)]

#[path = "ficusctl/client.rs"]
mod client;
#[path = "ficusctl/format.rs"]
mod format;
#[path = "ficusctl/wait.rs"]
mod wait;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use http::Method;
use serde::Deserialize;

use crate::client::{path_segment, Client};

/// Largest total size of the files of one apply (the server's body limit is 4 MiB).
const MAX_INPUT: usize = 4 * 1024 * 1024 - 64 * 1024;

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
    /// File holding the admin bearer token (sent; not enforced by the server yet).
    #[arg(long, global = true, env = "FICUS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Recorded as the author of the versions you make (default: $USER).
    #[arg(long, global = true, env = "FICUS_AUTHOR")]
    author: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and store documents as a new version (all or nothing).
    Apply {
        /// A YAML file, a directory of *.yaml / *.yml files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
        /// Wait until every connected sidecar has ACKed the new version (or one NACKs it).
        #[arg(long, env = "FICUS_WAIT")]
        wait: bool,
        /// How long `--wait` waits, e.g. 30s or 2m.
        #[arg(long, env = "FICUS_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Print the current config (all of it, one kind, or one document).
    Get {
        /// Kind, e.g. HTTPRoute (case-insensitive).
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
        /// Kind, e.g. Backend.
        kind: String,
        /// Name.
        name: String,
        /// Namespace (default: the only namespace that has such a document).
        #[arg(short, long, env = "FICUS_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Show what `apply` would change.
    Diff {
        /// A YAML file, a directory of *.yaml / *.yml files, or `-` for stdin.
        #[arg(short = 'f', long = "filename", env = "FICUS_FILENAME")]
        file: PathBuf,
    },
    /// List versions, newest first.
    History,
    /// Make an old version current again, as a new version.
    Rollback {
        /// The version to go back to (default: the one before the current).
        version: Option<u64>,
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
            Self::Failed { .. } => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Unreachable(message) => f.write_str(message),
            Self::Failed { message, .. } => f.write_str(message),
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
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let CtlError::Failed { diagnostics, .. } = &error {
                for diagnostic in diagnostics {
                    eprintln!("{diagnostic}");
                }
            }
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(args: Args) -> Result<(), CtlError> {
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
    let client = Client::new(&args.server, token, author)?;
    match args.command {
        Command::Apply {
            file,
            wait,
            timeout,
        } => apply(&client, &file, wait, timeout).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => get(&client, kind, name, namespace, output).await,
        Command::Delete {
            kind,
            name,
            namespace,
        } => delete(&client, &kind, &name, namespace).await,
        Command::Diff { file } => diff(&client, &file).await,
        Command::History => history(&client).await,
        Command::Rollback { version } => {
            let body = serde_json::json!({"version": version, "author": client.author});
            let outcome: Outcome = client
                .call(Method::POST, "/v1/rollback", Some(body))
                .await?;
            match outcome.committed {
                true => println!(
                    "rolled back: version {}: {}",
                    outcome.version, outcome.summary
                ),
                false => println!(
                    "unchanged (version {}): it already has those documents",
                    outcome.version
                ),
            }
            Ok(())
        }
        Command::Status { output } => status(&client, output).await,
    }
}

/// `POST /v1/apply`, `/v1/delete`, `/v1/rollback` answers.
#[derive(Debug, Deserialize)]
struct Outcome {
    version: u64,
    committed: bool,
    summary: String,
}

/// One document of a diff.
#[derive(Debug, Deserialize)]
struct Change {
    change: String,
}

/// `POST /v1/diff`.
#[derive(Debug, Deserialize)]
struct DiffAnswer {
    version: u64,
    changes: Vec<Change>,
    text: String,
}

/// `GET /v1/config`.
#[derive(Debug, Deserialize)]
struct ConfigAnswer {
    version: u64,
    documents: Vec<serde_json::Value>,
}

/// `GET /v1/history`.
#[derive(Debug, Deserialize)]
struct HistoryAnswer {
    current: u64,
    versions: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize)]
struct HistoryEntry {
    version: u64,
    created_at_ms: u64,
    author: Option<String>,
    summary: String,
    documents: usize,
}

async fn apply(
    client: &Client,
    file: &Path,
    wait: bool,
    timeout: Duration,
) -> Result<(), CtlError> {
    let sources = read_sources(file.to_owned()).await?;
    let body = serde_json::json!({"sources": sources, "author": client.author});
    let outcome: Outcome = client.call(Method::POST, "/v1/apply", Some(body)).await?;
    if outcome.committed {
        println!("applied version {}: {}", outcome.version, outcome.summary);
    } else {
        println!("unchanged (version {})", outcome.version);
    }
    if wait {
        wait::wait(client, outcome.version, timeout).await?;
    }
    Ok(())
}

async fn diff(client: &Client, file: &Path) -> Result<(), CtlError> {
    let sources = read_sources(file.to_owned()).await?;
    let answer: DiffAnswer = client
        .call(
            Method::POST,
            "/v1/diff",
            Some(serde_json::json!({"sources": sources})),
        )
        .await?;
    if answer.changes.iter().all(|c| c.change == "unchanged") {
        println!("no changes (version {})", answer.version);
    } else {
        print!("{}", answer.text);
    }
    Ok(())
}

async fn get(
    client: &Client,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    output: Output,
) -> Result<(), CtlError> {
    let mut query = Vec::new();
    for (key, value) in [("kind", &kind), ("name", &name), ("namespace", &namespace)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", path_segment(value)));
        }
    }
    let answer: ConfigAnswer = client
        .get(&format!("/v1/config?{}", query.join("&")))
        .await?;
    if answer.documents.is_empty() && name.is_some() {
        let what = [kind, name, namespace.map(|n| format!("in namespace {n}"))];
        let what: Vec<String> = what.into_iter().flatten().collect();
        return Err(CtlError::failed(format!(
            "{} not found (version {})",
            what.join(" "),
            answer.version
        )));
    }
    if answer.documents.is_empty() {
        eprintln!("no documents (version {})", answer.version);
    }
    match output {
        Output::Json => {
            let value =
                serde_json::json!({"version": answer.version, "documents": answer.documents});
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        Output::Yaml => {
            println!("# ficus config version {}", answer.version);
            print!("{}", format::yaml_documents(&answer.documents));
        }
    }
    Ok(())
}

async fn delete(
    client: &Client,
    kind: &str,
    name: &str,
    namespace: Option<String>,
) -> Result<(), CtlError> {
    let namespace = match namespace {
        Some(namespace) => namespace,
        None => {
            let path = format!(
                "/v1/config?kind={}&name={}",
                path_segment(kind),
                path_segment(name)
            );
            let answer: ConfigAnswer = client.get(&path).await?;
            let namespaces: Vec<String> = answer
                .documents
                .iter()
                .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_owned))
                .collect();
            match namespaces.as_slice() {
                [] => {
                    return Err(CtlError::failed(format!(
                        "{kind} {name} not found in any namespace"
                    )))
                }
                [only] => only.clone(),
                many => {
                    return Err(CtlError::failed(format!(
                        "{kind} {name} exists in namespaces {}; pick one with -n",
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let path = format!(
        "/v1/config/{}/{}/{}",
        path_segment(kind),
        path_segment(&namespace),
        path_segment(name)
    );
    let outcome: Outcome = client.call(Method::DELETE, &path, None).await?;
    println!("deleted: version {}: {}", outcome.version, outcome.summary);
    Ok(())
}

async fn history(client: &Client) -> Result<(), CtlError> {
    let answer: HistoryAnswer = client.get("/v1/history").await?;
    let rows: Vec<Vec<String>> = answer
        .versions
        .iter()
        .map(|entry| {
            let marker = if entry.version == answer.current {
                "*"
            } else {
                ""
            };
            vec![
                format!("{}{marker}", entry.version),
                format::utc(entry.created_at_ms),
                entry.author.clone().unwrap_or_else(|| "-".to_owned()),
                entry.documents.to_string(),
                entry.summary.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no versions yet");
    } else {
        print!(
            "{}",
            format::table(
                &["VERSION", "CREATED (UTC)", "AUTHOR", "DOCS", "SUMMARY"],
                &rows
            )
        );
    }
    Ok(())
}

async fn status(client: &Client, output: Table) -> Result<(), CtlError> {
    if output == Table::Json {
        let value: serde_json::Value = client.get("/v1/status").await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    let status: wait::Status = client.get("/v1/status").await?;
    println!("current version: {}", status.version);
    let rows: Vec<Vec<String>> = status
        .sidecars
        .iter()
        .map(|s| {
            let since = if s.connected {
                format::ago(s.connected_since)
            } else {
                "disconnected".to_owned()
            };
            let nack = match (&s.last_nack, s.nacked_version) {
                (Some(reason), Some(version)) => format!("v{version}: {reason}"),
                (Some(reason), None) => reason.clone(),
                (None, _) => "-".to_owned(),
            };
            let acked = s
                .acked_version
                .map_or_else(|| "-".to_owned(), |v| v.to_string());
            vec![
                s.node_id.clone(),
                s.workload.clone(),
                s.namespace.clone(),
                acked,
                nack,
                since,
            ]
        })
        .collect();
    let header = [
        "NODE ID",
        "WORKLOAD",
        "NAMESPACE",
        "ACKED",
        "LAST NACK",
        "CONNECTED SINCE",
    ];
    print!("{}", format::table(&header, &rows));
    Ok(())
}

/// A source as the API takes it.
#[derive(Debug, serde::Serialize)]
struct Source {
    name: String,
    text: String,
}

/// Reads `-f`: a file, every *.yaml / *.yml file of a directory (sorted, dotfiles skipped), or
/// stdin for `-`.
async fn read_sources(path: PathBuf) -> Result<Vec<Source>, CtlError> {
    tokio::task::spawn_blocking(move || read_sources_blocking(&path))
        .await
        .map_err(|e| CtlError::failed(format!("reading the files failed: {e}")))?
}

fn read_sources_blocking(path: &Path) -> Result<Vec<Source>, CtlError> {
    let cannot = |path: &Path, e: std::io::Error| {
        CtlError::failed(format!("cannot read {}: {e}", path.display()))
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_INPUT as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| cannot(Path::new("stdin"), e))?;
        return check_size(vec![Source {
            name: "<stdin>".to_owned(),
            text,
        }]);
    }
    let metadata = std::fs::metadata(path).map_err(|e| cannot(path, e))?;
    if !metadata.is_dir() {
        let text = read_file(path)?;
        return check_size(vec![Source {
            name: path.display().to_string(),
            text,
        }]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| cannot(path, e))? {
        let entry = entry.map_err(|e| cannot(path, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if (file_name.ends_with(".yaml") || file_name.ends_with(".yml"))
            && !file_name.starts_with('.')
        {
            files.push(entry.path());
        }
    }
    if files.is_empty() {
        return Err(CtlError::failed(format!(
            "{} has no *.yaml or *.yml files",
            path.display()
        )));
    }
    files.sort();
    let sources = files
        .iter()
        .map(|file| {
            Ok(Source {
                name: file.display().to_string(),
                text: read_file(file)?,
            })
        })
        .collect::<Result<Vec<_>, CtlError>>()?;
    check_size(sources)
}

fn read_file(path: &Path) -> Result<String, CtlError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_INPUT as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            CtlError::failed(format!(
                "cannot read {}: {e} (is it UTF-8 text?)",
                path.display()
            ))
        })?;
    Ok(text)
}

fn check_size(sources: Vec<Source>) -> Result<Vec<Source>, CtlError> {
    let total: usize = sources.iter().map(|s| s.text.len() + s.name.len()).sum();
    if total > MAX_INPUT {
        return Err(CtlError::failed(format!(
            "the config is larger than {} KiB; split it into several applies",
            MAX_INPUT / 1024
        )));
    }
    Ok(sources)
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    ficus_config::parse_duration(text)
}
