//! The subcommands that talk to the API: each sends one request (or polls, for `--wait`) and
//! prints the answer for a human.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use crate::client::{path_segment, Client};
use crate::{format, input, wait, CtlError, Output, Table};

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

/// `apply`.
pub async fn apply(
    client: &Client,
    file: &Path,
    wait: bool,
    timeout: Duration,
) -> Result<(), CtlError> {
    let sources = input::read_sources(file.to_owned()).await?;
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

/// `diff`.
pub async fn diff(client: &Client, file: &Path) -> Result<(), CtlError> {
    let sources = input::read_sources(file.to_owned()).await?;
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

/// `get`.
pub async fn get(
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

/// `delete`.
pub async fn delete(
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

/// `history`.
pub async fn history(client: &Client) -> Result<(), CtlError> {
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

/// `rollback [VERSION]`.
pub async fn rollback(client: &Client, version: Option<u64>) -> Result<(), CtlError> {
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
    Ok(())
}
