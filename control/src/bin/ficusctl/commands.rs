//! The subcommands that talk to the API: each sends one request (or polls, for `--wait`) and
//! prints the answer for a human.

use std::collections::BTreeMap;
use std::path::Path;

use http::Method;
use serde::Deserialize;

use crate::client::{path_segment, Client};
use crate::wait::WaitArgs;
use crate::{format, input, wait, CtlError, Output, Table};

/// `POST /v1/apply`, `/v1/delete`, `/v1/rollback` answers.
#[derive(Debug, Deserialize)]
struct Outcome {
    version: u64,
    committed: bool,
    summary: String,
    /// The resulting config's warnings (`warning: …`); absent from older control planes.
    #[serde(default)]
    warnings: Vec<String>,
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
    /// The warnings the apply would answer; absent from older control planes.
    #[serde(default)]
    warnings: Vec<String>,
}

/// `GET /v1/config`.
#[derive(Debug, Deserialize)]
struct ConfigAnswer {
    version: u64,
    documents: Vec<serde_json::Value>,
}

/// `GET /v1/history`: one page.
#[derive(Debug, Deserialize)]
struct HistoryAnswer {
    current: u64,
    /// Where a plain `rollback` goes now; absent from a control plane that does not say.
    #[serde(default)]
    next_rollback: Option<u64>,
    versions: Vec<HistoryEntry>,
    /// The `before` of the next (older) page; absent on the last page, and from a control
    /// plane that does not page (it sent everything).
    #[serde(default)]
    next_before: Option<u64>,
}

/// Most versions asked for per request (the control plane's own page limit).
const HISTORY_PAGE: u64 = 1000;

#[derive(Debug, Deserialize)]
struct HistoryEntry {
    version: u64,
    created_at_ms: u64,
    author: Option<String>,
    summary: String,
    documents: usize,
}

/// `apply`.
pub async fn apply(client: &Client, file: &Path, wait: WaitArgs) -> Result<(), CtlError> {
    let sources = input::read_sources(file.to_owned()).await?;
    let body = serde_json::json!({"sources": sources, "author": client.author});
    let outcome: Outcome = client.call(Method::POST, "/v1/apply", Some(body)).await?;
    if outcome.committed {
        println!("applied version {}: {}", outcome.version, outcome.summary);
    } else {
        println!("unchanged (version {})", outcome.version);
    }
    print_warnings(&outcome.warnings);
    wait.for_version(client, outcome.version).await
}

/// Prints a config's warnings to stderr, as given (`warning: file:line: document: field:
/// message`, maybe a `help:` line). They never change the exit code: the config was taken.
fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("{warning}");
    }
}

/// `validate`: loads the files as a sidecar's `--config` would (stdin for `-`); prints a count
/// of the documents by kind, or every problem.
pub fn validate(file: &Path) -> Result<(), CtlError> {
    let loaded = if file == Path::new("-") {
        input::read_stdin().and_then(|text| {
            ficus_config::parse_str("<stdin>", &text).map_err(|errors| CtlError::Failed {
                message: "invalid config".to_owned(),
                diagnostics: errors.lines(),
            })
        })
    } else {
        ficus_config::load_path(file).map_err(|errors| CtlError::Failed {
            message: "invalid config".to_owned(),
            diagnostics: errors.lines(),
        })
    };
    let config = loaded?;
    /// Only the kind of a document, read from its text.
    #[derive(Deserialize)]
    struct Kind<'a> {
        kind: &'a str,
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for document in &config.documents {
        let kind = serde_json::from_str::<Kind<'_>>(document.get()).map_or("?", |k| k.kind);
        *kinds.entry(kind).or_default() += 1;
    }
    let counts: Vec<String> = kinds
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    println!(
        "valid: {} documents ({})",
        config.documents.len(),
        counts.join(", ")
    );
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    print_warnings(&warnings);
    Ok(())
}

/// `diff`: whether `apply` would change something.
pub async fn diff(client: &Client, file: &Path) -> Result<bool, CtlError> {
    let sources = input::read_sources(file.to_owned()).await?;
    let answer: DiffAnswer = client
        .call(
            Method::POST,
            "/v1/diff",
            Some(serde_json::json!({"sources": sources})),
        )
        .await?;
    let changes = answer.changes.iter().any(|c| c.change != "unchanged");
    if changes {
        print!("{}", answer.text);
    } else {
        println!("no changes (version {})", answer.version);
    }
    print_warnings(&answer.warnings);
    Ok(changes)
}

/// `get`.
pub async fn get(
    client: &Client,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    output: Output,
) -> Result<(), CtlError> {
    let kind = kind
        .as_deref()
        .map(known_kind)
        .transpose()?
        .map(str::to_owned);
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

/// The canonical kind a user typed (`httproutes` → `HTTPRoute`); an unknown one is a usage
/// error naming the known ones, as the control plane would refuse it anyway.
fn known_kind(text: &str) -> Result<&'static str, CtlError> {
    ficus_control::api::canonical_kind(text)
        .ok_or_else(|| CtlError::Usage(ficus_control::api::unknown_kind(text)))
}

/// `delete`.
pub async fn delete(
    client: &Client,
    kind: &str,
    name: &str,
    namespace: Option<String>,
    wait: WaitArgs,
) -> Result<(), CtlError> {
    let kind = known_kind(kind)?;
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
    print_warnings(&outcome.warnings);
    wait.for_version(client, outcome.version).await
}

/// The versions `history` shows.
#[derive(Debug)]
struct History {
    /// The current version.
    current: u64,
    /// Where a plain `rollback` goes now, when the control plane says.
    next_rollback: Option<u64>,
    /// Newest first.
    versions: Vec<HistoryEntry>,
    /// Whether older versions exist than those fetched.
    more: bool,
}

/// The newest `limit` versions, or every version with `None` (`--all`), fetched `page` at a
/// time with `before`.
async fn fetch_history(
    client: &Client,
    limit: Option<u64>,
    page: u64,
) -> Result<History, CtlError> {
    let mut versions: Vec<HistoryEntry> = Vec::new();
    let mut current = None;
    let mut next_rollback = None;
    let mut before = None;
    let mut more = loop {
        let wanted = limit.map_or(page, |limit| {
            let fetched = u64::try_from(versions.len()).unwrap_or(u64::MAX);
            limit.saturating_sub(fetched).min(page)
        });
        if wanted == 0 {
            break before.is_some();
        }
        let mut path = format!("/v1/history?limit={wanted}");
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        let answer: HistoryAnswer = client.get(&path).await?;
        if current.is_none() {
            current = Some(answer.current);
            next_rollback = answer.next_rollback;
        }
        // Each page must go further back, so that a confused server cannot loop us forever.
        let progressed = answer
            .next_before
            .is_some_and(|next| before.is_none_or(|before| next < before));
        versions.extend(answer.versions);
        if !progressed {
            break false; // the last page (or a control plane that does not page)
        }
        before = answer.next_before;
    };
    if let Some(limit) = limit.and_then(|limit| usize::try_from(limit).ok()) {
        // A control plane that does not page sends everything.
        more |= versions.len() > limit;
        versions.truncate(limit);
    }
    Ok(History {
        current: current.unwrap_or(0),
        next_rollback,
        versions,
        more,
    })
}

/// `history`: the newest `limit` versions, or every version with `None` (`--all`).
pub async fn history(client: &Client, limit: Option<u64>) -> Result<(), CtlError> {
    let History {
        current,
        next_rollback,
        versions,
        more,
    } = fetch_history(client, limit, HISTORY_PAGE).await?;
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|entry| {
            let marker = if entry.version == current { "*" } else { "" };
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
    if let Some(target) = next_rollback {
        // After a rollback this is not `current − 1`: say it before someone presses it. On
        // stderr, like the note below, so that stdout stays the table.
        eprintln!("a plain `ficusctl rollback` now goes to version {target}");
    }
    if more {
        eprintln!(
            "(the newest {} versions; older ones with --limit N or --all)",
            rows.len()
        );
    }
    Ok(())
}

/// `status`.
pub async fn status(client: &Client, output: Table) -> Result<(), CtlError> {
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
            let acked = match (s.acked_version, s.reported_version) {
                (Some(acked), _) => acked.to_string(),
                (None, Some(reported)) => format!("- (says {reported}, unconfirmed)"),
                (None, None) => "-".to_owned(),
            };
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

/// `rollback [VERSION]`.
pub async fn rollback(
    client: &Client,
    version: Option<u64>,
    wait: WaitArgs,
) -> Result<(), CtlError> {
    let body = serde_json::json!({"version": version, "author": client.author});
    let outcome: Outcome = client
        .call(Method::POST, "/v1/rollback", Some(body))
        .await?;
    if outcome.committed {
        println!(
            "rolled back: version {}: {}",
            outcome.version, outcome.summary
        );
    } else {
        println!(
            "unchanged (version {}): it already has those documents",
            outcome.version
        );
    }
    print_warnings(&outcome.warnings);
    wait.for_version(client, outcome.version).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ficus_control::state::ControlState;
    use ficus_control::store::Store;

    use super::*;

    /// A real API on loopback over a store of `versions` versions.
    async fn control_plane(versions: u64) -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        for n in 1..=versions {
            store.commit(Vec::new(), None, format!("v{n}")).unwrap();
        }
        let current = store.current().unwrap();
        let state: Arc<ControlState> = ControlState::new(store, current);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(ficus_control::api::serve(
            ficus_net::listen::Listeners::new(listener, None),
            state,
            None,
        ));
        (dir, Client::new(&server, None, None).unwrap())
    }

    fn numbers(history: &History) -> Vec<u64> {
        history.versions.iter().map(|entry| entry.version).collect()
    }

    /// `--limit` shows the newest N (across pages); `--all` pages back to version 1.
    #[tokio::test]
    async fn history_pages_back_as_far_as_asked() {
        let (_dir, client) = control_plane(250).await;
        let newest = fetch_history(&client, Some(100), HISTORY_PAGE)
            .await
            .unwrap();
        assert_eq!(numbers(&newest), (151..=250).rev().collect::<Vec<_>>());
        assert_eq!((newest.current, newest.more), (250, true));
        let many = fetch_history(&client, Some(130), 60).await.unwrap();
        assert_eq!(numbers(&many), (121..=250).rev().collect::<Vec<_>>());
        assert!(many.more);
        let all = fetch_history(&client, None, 60).await.unwrap();
        assert_eq!(numbers(&all), (1..=250).rev().collect::<Vec<_>>());
        assert!(!all.more);
        let exact = fetch_history(&client, Some(250), 100).await.unwrap();
        assert_eq!((exact.versions.len(), exact.more), (250, false));
    }
}
