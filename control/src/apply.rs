//! The write operations: apply, delete, rollback (and `diff`, which is an apply that stops
//! before committing).
//!
//! Each write holds `state.writes` from reading the current version to publishing the new one,
//! so writes are serialized and none is lost. Each is all-or-nothing: the whole resulting config
//! is validated with `ficus-config` before anything is stored, and only a committed (durable)
//! version is published to the push streams.
//!
//! Apply has `kubectl apply` semantics: every applied document creates or replaces the document
//! of the same (kind, namespace, name); the others stay. For validation the user's files keep
//! their names and the untouched current documents are one more source, `current config
//! (version N)`, so diagnostics point at the user's file whenever the problem is there.

mod diff;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ficus_config::{ConfigErrors, Diagnostic, Source};
use serde::Serialize;

use crate::state::{ControlState, VersionRecord};
use crate::store::StoreError;

pub use diff::{Change, Diff, DocumentChange, DocumentKey};

/// What a successful write did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApplyOutcome {
    /// The current version afterwards: the new one, or the old one when nothing changed.
    pub version: u64,
    /// Whether a new version was committed.
    pub committed: bool,
    /// One line: what changed (the new version's summary), or `unchanged`.
    pub summary: String,
    /// Every document the operation touched (for apply, also the unchanged ones it named).
    pub changes: Vec<DocumentChange>,
    /// What is valid but almost certainly not meant in the resulting config (route matches
    /// that can never be selected), one `warning: file:line: document: field: message` text
    /// each (a `help:` line may follow). They never refuse a write.
    pub warnings: Vec<String>,
}

/// Why a write was refused. Nothing was stored in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The documents, or the config they would make, do not validate.
    #[error("invalid config: nothing was applied")]
    Invalid(#[source] ConfigErrors),
    /// `delete` named a document the current config does not have.
    #[error("{0} not found in the current config")]
    NotFound(DocumentKey),
    /// `rollback` named a version the store does not have.
    #[error("version {0} does not exist")]
    NoSuchVersion(u64),
    /// `rollback` named a version older than the history keeps (`--history-limit`).
    #[error("version {version} is no longer kept (history keeps the newest {limit})")]
    NotKept {
        /// The version asked for.
        version: u64,
        /// The store's history limit.
        limit: u64,
    },
    /// `rollback` without a version while there is no version before the current one.
    #[error("version {0} is the first version; there is nothing to roll back to")]
    NothingToRollBack(u64),
    /// `rollback` without a version from a version that is itself a rollback to the first
    /// version: there is nothing further back.
    #[error(
        "version {current} is a rollback to version {rolled_back_to}, the first version; there \
         is nothing older to roll back to"
    )]
    NothingBefore {
        /// The current version.
        current: u64,
        /// The version it rolled back to.
        rolled_back_to: u64,
    },
    /// The config would be too large to push to a sidecar.
    #[error(
        "the config would be {size} bytes when pushed, over the limit of {limit}: no sidecar \
         could receive it; nothing was applied"
    )]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Reading or committing the store failed; the current version is unchanged.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The blocking store task panicked or was cancelled; the commit may not have happened.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Applies `sources`: creates or replaces each of their documents, validates the whole result,
/// commits it as a new version and publishes it. An apply that changes nothing commits nothing.
pub async fn apply(
    state: &ControlState,
    sources: Vec<Source>,
    author: Option<String>,
) -> Result<ApplyOutcome, ApplyError> {
    let _write = state.writes.lock().await;
    let current = state.current();
    let base = Arc::clone(&current);
    let trust_domain = state.trust_domain.get().cloned();
    let Merged {
        documents: next,
        changes,
        warnings,
    } = off_runtime(move || {
        let merged = merged(&base, &sources)?;
        if let Some(trust_domain) = &trust_domain {
            check_documents(
                trust_domain,
                &merged.documents,
                &sources,
                &current_name(&base),
            )
            .map_err(ApplyError::Invalid)?;
        }
        Ok(merged)
    })
    .await?;
    let summary = diff::summary("apply", &changes);
    let commit = Commit::new(author, summary, warnings);
    commit_if_changed(state, &current, next, changes, commit).await
}

/// What `apply` of `sources` would change, without storing anything.
pub async fn diff(state: &ControlState, sources: Vec<Source>) -> Result<Diff, ApplyError> {
    let current = state.current();
    let trust_domain = state.trust_domain.get().cloned();
    off_runtime(move || {
        let merged = merged(&current, &sources)?;
        if let Some(trust_domain) = &trust_domain {
            check_documents(
                trust_domain,
                &merged.documents,
                &sources,
                &current_name(&current),
            )
            .map_err(ApplyError::Invalid)?;
        }
        let mut diff = Diff::new(&current, &merged.documents, merged.changes);
        diff.warnings = merged.warnings;
        Ok(diff)
    })
    .await
}

/// Deletes one document, if the config without it is still valid.
pub async fn delete(
    state: &ControlState,
    key: DocumentKey,
    author: Option<String>,
) -> Result<ApplyOutcome, ApplyError> {
    let _write = state.writes.lock().await;
    let current = state.current();
    let mut next = by_key(current.documents.iter().cloned());
    if next.remove(&key).is_none() {
        return Err(ApplyError::NotFound(key));
    }
    let (next, warnings) = validated(current_name(&current), next).await?;
    let changes = diff::changes(
        &by_key(current.documents.iter().cloned()),
        &next,
        &BTreeSet::new(),
    );
    let summary = diff::summary("delete", &changes);
    let commit = Commit::new(author, summary, warnings);
    commit_if_changed(state, &current, next, changes, commit).await
}

/// Makes the documents of `version` (default: [`default_rollback_target`]) current again, as
/// a new version that records `version` as its origin.
pub async fn rollback(
    state: &ControlState,
    version: Option<u64>,
    author: Option<String>,
) -> Result<ApplyOutcome, ApplyError> {
    let _write = state.writes.lock().await;
    let current = state.current();
    let target = match version {
        Some(version) => version,
        None => default_rollback_target(&current)?,
    };
    let store = state.store.clone();
    let record = tokio::task::spawn_blocking(move || store.get(target))
        .await??
        .ok_or_else(|| missing_version(state, target))?;
    // Stored versions were valid when stored; validating again keeps "the store holds only
    // configs this build accepts" true across upgrades that tighten validation. Problems are
    // the target's, so diagnostics name it, not the current config.
    let name = format!("version {target} (rollback target)");
    let (next, warnings) = validated(name.clone(), by_key(record.documents)).await?;
    if let Some(trust_domain) = state.trust_domain.get() {
        check_documents(trust_domain, &next, &[], &name).map_err(ApplyError::Invalid)?;
    }
    let changes = diff::changes(
        &by_key(current.documents.iter().cloned()),
        &next,
        &BTreeSet::new(),
    );
    let summary = diff::summary(&format!("rollback to version {target}"), &changes);
    let commit = Commit {
        author,
        summary,
        rolled_back_to: Some(target),
        warnings,
    };
    commit_if_changed(state, &current, next, changes, commit).await
}

/// Why version `version` cannot be read: numbers are never reused, so one at or below the
/// current version existed and was deleted by the history limit.
pub fn missing_version(state: &ControlState, version: u64) -> ApplyError {
    if version > 0 && version <= state.current().version {
        ApplyError::NotKept {
            version,
            limit: state.store.history_limit(),
        }
    } else {
        ApplyError::NoSuchVersion(version)
    }
}

/// Where a rollback without a version goes from `current`: the version before the one whose
/// documents `current` holds. After an apply or a delete that is `current − 1`; after a
/// rollback to X it is X − 1, not `current − 1` (which would re-apply what the rollback undid),
/// so that pressing rollback again and again walks back through history: 10 % (v2), 50 % (v3),
/// 100 % (v4), rollback → v5 = v3, rollback → v6 = v2, rollback → v7 = v1.
pub fn default_rollback_target(current: &VersionRecord) -> Result<u64, ApplyError> {
    match current.rolled_back_to {
        Some(origin) if origin > 1 => Ok(origin - 1),
        Some(origin) => Err(ApplyError::NothingBefore {
            current: current.version,
            rolled_back_to: origin,
        }),
        None if current.version > 1 => Ok(current.version - 1),
        None => Err(ApplyError::NothingToRollBack(current.version)),
    }
}

/// Checks that the documents of `record` name no other trust domain than `trust_domain` (the
/// CA's) in `Mesh.spec.trustDomain`; `sources` (possibly none) name the files to blame.
pub fn check_trust_domain(
    trust_domain: &str,
    record: &VersionRecord,
    sources: &[Source],
) -> Result<(), ApplyError> {
    check_documents(
        trust_domain,
        &by_key(record.documents.iter().cloned()),
        sources,
        &current_name(record),
    )
    .map_err(ApplyError::Invalid)
}

/// How diagnostics name the stored documents of `current`, validated alongside the user's.
fn current_name(current: &VersionRecord) -> String {
    format!("current config (version {})", current.version)
}

/// `Mesh.spec.trustDomain`, where a document sets it, must be the CA's trust domain: every
/// certificate carries the CA's, and sidecars verify peers against theirs (`--trust-domain`),
/// so a mesh declared in another trust domain could never authenticate anyone. Left out, it
/// is the CA's. The error names the file that set it (or, for documents no source has,
/// `stored`: e.g. the current config or the rollback target), the document and the field.
/// Every path that commits a version runs it: apply, rollback and the Kubernetes watch.
pub(crate) fn check_documents(
    trust_domain: &str,
    documents: &BTreeMap<DocumentKey, serde_json::Value>,
    sources: &[Source],
    stored: &str,
) -> Result<(), ConfigErrors> {
    for (key, document) in documents.iter().filter(|(key, _)| key.kind == "Mesh") {
        let Some(declared) = document
            .pointer("/spec/trustDomain")
            .and_then(serde_json::Value::as_str)
        else {
            continue;
        };
        if declared == trust_domain {
            continue;
        }
        let file = sources
            .iter()
            .find(|source| diff::keys_in_sources(std::slice::from_ref(*source)).contains(key))
            .map_or_else(|| stored.to_owned(), |source| source.name.clone());
        let diagnostic = Diagnostic {
            file,
            line: None,
            document: Some(format!("Mesh {}", key.name)),
            field: "spec.trustDomain".to_owned(),
            message: format!(
                "{declared:?} is not the trust domain of this control plane's CA ({trust_domain:?})"
            ),
            hint: Some(format!(
                "certificates are issued in ficus-control's --trust-domain; set spec.trustDomain to {trust_domain:?} or leave it out"
            )),
        };
        return Err(diagnostic.into());
    }
    Ok(())
}

/// Runs CPU-bound work (YAML parsing and validation of up to a few MiB) on the blocking pool,
/// so that it does not stall the API's other connections or the push streams.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApplyError> + Send + 'static,
) -> Result<T, ApplyError> {
    tokio::task::spawn_blocking(work).await?
}

/// `next` (stored documents, named `name` in diagnostics) once it validates as a whole config,
/// with the config's warnings.
async fn validated(
    name: String,
    next: BTreeMap<DocumentKey, serde_json::Value>,
) -> Result<(BTreeMap<DocumentKey, serde_json::Value>, Vec<String>), ApplyError> {
    off_runtime(move || {
        let (_, warnings) = validate(&name, &next, &[])?;
        Ok((next, warnings))
    })
    .await
}

/// What an apply makes of the current documents.
struct Merged {
    /// The resulting document set.
    documents: BTreeMap<DocumentKey, serde_json::Value>,
    /// What changed, per document.
    changes: Vec<DocumentChange>,
    /// The resulting config's warnings, as text.
    warnings: Vec<String>,
}

/// The current documents with every document of `sources` created or replaced, validated.
fn merged(current: &VersionRecord, sources: &[Source]) -> Result<Merged, ApplyError> {
    if sources.is_empty() {
        let nothing = Diagnostic {
            file: "request".to_owned(),
            line: None,
            document: None,
            field: String::new(),
            message: "no documents to apply".to_owned(),
            hint: Some("give at least one YAML file".to_owned()),
        };
        return Err(ApplyError::Invalid(nothing.into()));
    }
    let named = diff::keys_in_sources(sources);
    let old = by_key(current.documents.iter().cloned());
    let mut next: BTreeMap<_, _> = old
        .iter()
        .filter(|(key, _)| !named.contains(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (applied, warnings) = validate(&current_name(current), &next, sources)?;
    // Documents the user named come from the validator (namespace filled in); the others keep
    // their stored JSON exactly, so they never show up as changed.
    for (key, document) in by_key(applied) {
        if named.contains(&key) || !next.contains_key(&key) {
            next.insert(key, document);
        }
    }
    let changes = diff::changes(&old, &next, &named);
    Ok(Merged {
        documents: next,
        changes,
        warnings,
    })
}

/// Validates `sources` together with `kept` (stored documents, one more source named
/// `kept_name`) and returns the documents of the result and its warnings (as text).
fn validate(
    kept_name: &str,
    kept: &BTreeMap<DocumentKey, serde_json::Value>,
    sources: &[Source],
) -> Result<(Vec<serde_json::Value>, Vec<String>), ApplyError> {
    let mut all = sources.to_vec();
    if !kept.is_empty() {
        let documents: Vec<serde_json::Value> = kept.values().cloned().collect();
        all.push(Source {
            name: kept_name.to_owned(),
            text: ficus_config::wire::encode_documents(&documents),
        });
    }
    if all.is_empty() {
        // Deleting the last document: the empty config is valid (defaults only).
        return Ok((Vec::new(), Vec::new()));
    }
    ficus_config::parse_sources(&all)
        .map(|config| {
            let warnings = config.warnings.iter().map(ToString::to_string).collect();
            (config.document_values(), warnings)
        })
        .map_err(ApplyError::Invalid)
}

/// What a write records besides the documents.
struct Commit {
    author: Option<String>,
    summary: String,
    /// The rollback's target ([`VersionRecord::rolled_back_to`]).
    rolled_back_to: Option<u64>,
    /// The resulting config's warnings, for the answer (not stored).
    warnings: Vec<String>,
}

impl Commit {
    fn new(author: Option<String>, summary: String, warnings: Vec<String>) -> Self {
        Self {
            author,
            summary,
            rolled_back_to: None,
            warnings,
        }
    }
}

/// Commits `next` unless it equals the current documents; publishes what it committed.
async fn commit_if_changed(
    state: &ControlState,
    current: &VersionRecord,
    next: BTreeMap<DocumentKey, serde_json::Value>,
    changes: Vec<DocumentChange>,
    commit: Commit,
) -> Result<ApplyOutcome, ApplyError> {
    let documents: Vec<serde_json::Value> = next.into_values().collect();
    if documents == current.documents {
        return Ok(ApplyOutcome {
            version: current.version,
            committed: false,
            summary: "unchanged".to_owned(),
            changes,
            warnings: commit.warnings,
        });
    }
    let (documents, pushable) = tokio::task::spawn_blocking(move || {
        let pushable = crate::push::check_pushable(&documents);
        (documents, pushable)
    })
    .await?;
    if let Err((size, limit)) = pushable {
        return Err(ApplyError::TooLarge { size, limit });
    }
    let store = state.store.clone();
    let Commit {
        author,
        summary,
        rolled_back_to,
        warnings,
    } = commit;
    let record = tokio::task::spawn_blocking(move || match rolled_back_to {
        Some(target) => store.commit_rollback(documents, author, summary, target),
        None => store.commit(documents, author, summary),
    })
    .await??;
    tracing::info!(version = record.version, summary = %record.summary, "config committed");
    let outcome = ApplyOutcome {
        version: record.version,
        committed: true,
        summary: record.summary.clone(),
        changes,
        warnings,
    };
    state
        .metrics
        .config_version
        .set(i64::try_from(record.version).unwrap_or(i64::MAX));
    state.publish(record);
    Ok(outcome)
}

/// Documents by key, which also sorts them by kind, namespace and name. Later duplicates win
/// (stored sets have none).
fn by_key(
    documents: impl IntoIterator<Item = serde_json::Value>,
) -> BTreeMap<DocumentKey, serde_json::Value> {
    documents
        .into_iter()
        .filter_map(|document| Some((DocumentKey::of(&document)?, document)))
        .collect()
}

#[cfg(test)]
mod tests;
