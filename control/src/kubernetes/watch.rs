//! `--kubernetes`: the cluster is the source of truth. Services, EndpointSlices, HTTPRoutes,
//! TCPRoutes and the `ficus.dev` kinds are listed and watched through the thin
//! [`ApiClient`]; every change (debounced) runs [`translate`](super::translate::translate)
//! over all cached objects and, when the result validates and differs from the current
//! version, commits it to the store as a new version and pushes it as before. An invalid
//! result is logged and the last good version keeps serving.
//!
//! Each resource follows the usual list-then-watch protocol: LIST (its `resourceVersion`),
//! then WATCH from there with bookmarks; a watch that ends is resumed from the last version
//! seen, `410 Gone` (or an `ERROR` event with code 410) relists, other failures back off
//! (1 s doubling to 30 s) and relist. A kind whose CRD is not installed (404) counts as empty
//! and is checked again every minute. Nothing is committed before every resource has been
//! listed once, so a half-read cluster is never pushed.
//!
//! With `--kubernetes` the API's writes (`ficusctl apply`, `delete`, `rollback`) still work,
//! but the next change in the cluster replaces their result: the cluster wins. Several
//! control-plane replicas can each follow the cluster (their stores are independent); their
//! version numbers then differ between replicas.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::Notify;

use super::api::ApiClient;
use super::translate::translate;
use crate::apply::DocumentKey;
use crate::state::ControlState;

/// One kind of object the control plane follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Collection path (all namespaces), e.g. `/api/v1/services`.
    pub path: &'static str,
    /// `apiVersion` of its objects (LIST items do not carry it).
    pub api_version: &'static str,
    /// `kind` of its objects.
    pub kind: &'static str,
}

/// Everything the translation reads.
pub const RESOURCES: [Resource; 8] = [
    Resource {
        path: "/api/v1/services",
        api_version: "v1",
        kind: "Service",
    },
    Resource {
        path: "/apis/discovery.k8s.io/v1/endpointslices",
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
    },
    Resource {
        path: "/apis/gateway.networking.k8s.io/v1/httproutes",
        api_version: "gateway.networking.k8s.io/v1",
        kind: "HTTPRoute",
    },
    Resource {
        path: "/apis/gateway.networking.k8s.io/v1alpha2/tcproutes",
        api_version: "gateway.networking.k8s.io/v1alpha2",
        kind: "TCPRoute",
    },
    Resource {
        path: "/apis/ficus.dev/v1alpha1/meshes",
        api_version: "ficus.dev/v1alpha1",
        kind: "Mesh",
    },
    Resource {
        path: "/apis/ficus.dev/v1alpha1/backends",
        api_version: "ficus.dev/v1alpha1",
        kind: "Backend",
    },
    Resource {
        path: "/apis/ficus.dev/v1alpha1/trafficpolicies",
        api_version: "ficus.dev/v1alpha1",
        kind: "TrafficPolicy",
    },
    Resource {
        path: "/apis/ficus.dev/v1alpha1/authorizationpolicies",
        api_version: "ficus.dev/v1alpha1",
        kind: "AuthorizationPolicy",
    },
];

/// Largest LIST answer read (a big cluster's EndpointSlices are MiBs).
const MAX_LIST: usize = 64 * 1024 * 1024;
/// Largest single watch event.
const MAX_EVENT: usize = 8 * 1024 * 1024;
/// A LIST must be answered within this.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// The API server ends each watch after this many seconds (we then resume it).
const WATCH_SECONDS: u64 = 290;
/// Silence on a watch (no event, no bookmark) after which it is considered dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 40);
/// Changes closer together than this become one translation.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often a kind whose CRD is missing is checked again.
const MISSING_RECHECK: Duration = Duration::from_secs(60);
/// Back-off after a failure: from the first to the last value, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// What a watch event did to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// An object was added, changed or removed.
    Changed,
    /// The event changed nothing the translation reads (same object again).
    Unchanged,
    /// A bookmark: only the resource version moved.
    Bookmark,
    /// `410 Gone`: the version is too old; relist.
    Expired,
}

/// The objects of every resource, by resource, namespace and name.
#[derive(Debug)]
pub struct Cache {
    objects: BTreeMap<(usize, String, String), Value>,
    listed: [bool; RESOURCES.len()],
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            listed: [false; RESOURCES.len()],
        }
    }
}

impl Cache {
    /// Replaces resource `index`'s objects with a LIST's `items`; whether anything changed.
    pub fn replace(&mut self, index: usize, items: Vec<Value>) -> bool {
        let mut fresh = BTreeMap::new();
        for item in items {
            if let Some(key) = key(index, &item) {
                fresh.insert(key, item);
            }
        }
        let old: BTreeMap<_, _> = self
            .objects
            .iter()
            .filter(|((i, _, _), _)| *i == index)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let first = !self.listed[index];
        self.listed[index] = true;
        if old == fresh {
            return first;
        }
        self.objects.retain(|(i, _, _), _| *i != index);
        self.objects.extend(fresh);
        true
    }

    /// Applies one watch event of resource `index` (`{"type", "object"}`).
    pub fn apply(&mut self, index: usize, event: &Value) -> Result<Applied, String> {
        let kind = event["type"].as_str().unwrap_or("");
        let object = &event["object"];
        match kind {
            "BOOKMARK" => return Ok(Applied::Bookmark),
            "ERROR" => {
                return if object["code"] == 410 {
                    Ok(Applied::Expired)
                } else {
                    Err(format!("watch error: {}", object["message"]))
                }
            }
            _ => {}
        }
        let key = key(index, object).ok_or("a watch event without metadata.name")?;
        let mut object = object.clone();
        fill_type(&RESOURCES[index], &mut object);
        let changed = match kind {
            "ADDED" | "MODIFIED" => self.objects.insert(key, object.clone()) != Some(object),
            "DELETED" => self.objects.remove(&key).is_some(),
            other => return Err(format!("unknown watch event type {other:?}")),
        };
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::Unchanged
        })
    }

    /// Whether every resource has been listed at least once.
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|listed| *listed)
    }

    /// Every cached object.
    pub fn objects(&self) -> Vec<Value> {
        self.objects.values().cloned().collect()
    }
}

fn key(index: usize, object: &Value) -> Option<(usize, String, String)> {
    let name = object["metadata"]["name"].as_str()?;
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("");
    Some((index, namespace.to_owned(), name.to_owned()))
}

/// LIST items carry no `apiVersion`/`kind`; the translation needs them.
fn fill_type(resource: &Resource, object: &mut Value) {
    if let Value::Object(map) = object {
        map.insert("apiVersion".to_owned(), Value::from(resource.api_version));
        map.insert("kind".to_owned(), Value::from(resource.kind));
    }
}

/// A LIST answer: its items (typed) and the collection's `resourceVersion`.
pub fn parse_list(resource: &Resource, body: &[u8]) -> Result<(Vec<Value>, String), String> {
    let list: Value = serde_json::from_slice(body).map_err(|e| format!("LIST answer: {e}"))?;
    let version = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or("LIST answer without metadata.resourceVersion")?
        .to_owned();
    let mut items = match &list["items"] {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        _ => return Err("LIST answer: items is not a list".to_owned()),
    };
    for item in &mut items {
        fill_type(resource, item);
    }
    Ok((items, version))
}

/// Splits a watch stream into its newline-separated events, each at most [`MAX_EVENT`].
#[derive(Debug, Default)]
pub struct Lines {
    buffer: Vec<u8>,
}

impl Lines {
    /// Adds `chunk`; the complete lines it finished (empty lines skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buffer.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line.to_vec());
            }
        }
        if self.buffer.len() > MAX_EVENT {
            return Err(format!("a watch event longer than {MAX_EVENT} bytes"));
        }
        Ok(lines)
    }
}

/// The translated cluster as the store keeps documents (sorted by key), or why it is invalid.
fn documents(objects: &[Value], trust_domain: &str) -> Result<(Vec<Value>, usize), String> {
    let translation = translate(objects, trust_domain).map_err(|e| e.to_string())?;
    for (service, reason) in &translation.skipped {
        tracing::debug!(%service, %reason, "Service not turned into a Backend");
    }
    let sorted: BTreeMap<DocumentKey, Value> = translation
        .config
        .documents
        .into_iter()
        .filter_map(|d| Some((DocumentKey::of(&d)?, d)))
        .collect();
    Ok((sorted.into_values().collect(), translation.skipped.len()))
}

/// Translates `objects` and commits the result as a new version when it validates and differs
/// from the current one; the new version, if any.
pub async fn publish(
    state: &ControlState,
    objects: Vec<Value>,
    trust_domain: &str,
) -> Result<Option<u64>, String> {
    let trust_domain = trust_domain.to_owned();
    let (documents, skipped) =
        tokio::task::spawn_blocking(move || documents(&objects, &trust_domain))
            .await
            .map_err(|e| format!("translation task: {e}"))??;
    let _write = state.writes.lock().await;
    let current = state.current();
    if documents == current.documents {
        return Ok(None);
    }
    let summary = format!(
        "kubernetes: {} documents from the cluster ({skipped} Services skipped)",
        documents.len()
    );
    let store = state.store.clone();
    let record = tokio::task::spawn_blocking(move || {
        store.commit(documents, Some("kubernetes".to_owned()), summary)
    })
    .await
    .map_err(|e| format!("store task: {e}"))?
    .map_err(|e| format!("store: {e}"))?;
    let version = record.version;
    tracing::info!(version, summary = %record.summary, "config committed from the cluster");
    state
        .metrics
        .config_version
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    state.publish(record);
    Ok(Some(version))
}

/// Follows every resource and keeps the store in line with the cluster until the process
/// ends.
pub async fn run(state: Arc<ControlState>, client: ApiClient, trust_domain: String) {
    run_reporting(state, client, trust_domain, None).await;
}

/// [`run`], sending the outcome of every translation to `report` when given (dropped when
/// the channel is full).
async fn run_reporting(
    state: Arc<ControlState>,
    client: ApiClient,
    trust_domain: String,
    report: Option<tokio::sync::mpsc::Sender<Result<Option<u64>, String>>>,
) {
    let cache = Arc::new(Mutex::new(Cache::default()));
    let changed = Arc::new(Notify::new());
    for index in 0..RESOURCES.len() {
        tokio::spawn(follow(
            client.clone(),
            index,
            Arc::clone(&cache),
            Arc::clone(&changed),
        ));
    }
    loop {
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        let objects = match cache.lock() {
            Ok(cache) if cache.ready() => cache.objects(),
            _ => continue,
        };
        let outcome = publish(&state, objects, &trust_domain).await;
        let result = match &outcome {
            Ok(Some(_)) => "committed",
            Ok(None) => "unchanged",
            Err(error) => {
                tracing::warn!(%error, "the cluster's config is not valid; the last good version stays");
                "invalid"
            }
        };
        state
            .metrics
            .kubernetes_syncs
            .with_label_values(&[result])
            .inc();
        if let Some(report) = &report {
            let _ = report.try_send(outcome);
        }
    }
}

/// Why a watch ended.
enum WatchEnd {
    /// The server closed it (its timeout): resume from this version.
    Closed(String),
    /// The version is gone: relist.
    Expired,
}

/// List-then-watch of one resource, forever.
async fn follow(client: ApiClient, index: usize, cache: Arc<Mutex<Cache>>, changed: Arc<Notify>) {
    let resource = &RESOURCES[index];
    let mut backoff = BACKOFF.0;
    loop {
        let mut version = match list(&client, resource).await {
            Ok(Some((items, version))) => {
                if cache.lock().is_ok_and(|mut c| c.replace(index, items)) {
                    changed.notify_one();
                }
                version
            }
            Ok(None) => {
                tracing::info!(
                    kind = resource.kind,
                    "not served by the API server (CRD not installed?); counted as empty"
                );
                if cache.lock().is_ok_and(|mut c| c.replace(index, Vec::new())) {
                    changed.notify_one();
                }
                tokio::time::sleep(MISSING_RECHECK).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(kind = resource.kind, %error, "LIST failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        loop {
            match watch(&client, index, &version, &cache, &changed).await {
                Ok(WatchEnd::Closed(last)) => version = last,
                Ok(WatchEnd::Expired) => break,
                Err(error) => {
                    tracing::warn!(kind = resource.kind, %error, "watch failed; relisting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    break;
                }
            }
        }
    }
}

/// LISTs `resource`: its items and version, or `None` when the API server does not serve it.
async fn list(
    client: &ApiClient,
    resource: &Resource,
) -> Result<Option<(Vec<Value>, String)>, String> {
    let request = async {
        let response = client.send(Method::GET, resource.path, None).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_LIST)
            .collect()
            .await
            .map_err(|e| format!("reading the LIST answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(LIST_TIMEOUT, request)
        .await
        .map_err(|_| format!("LIST not answered within {LIST_TIMEOUT:?}"))??;
    match status {
        StatusCode::OK => parse_list(resource, &body).map(Some),
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(format!("LIST answered {other}: {}", excerpt(&body))),
    }
}

/// Watches resource `index` from `version`, applying events to `cache`.
async fn watch(
    client: &ApiClient,
    index: usize,
    version: &str,
    cache: &Mutex<Cache>,
    changed: &Notify,
) -> Result<WatchEnd, String> {
    let resource = &RESOURCES[index];
    let path = format!(
        "{}?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}",
        resource.path
    );
    let response = tokio::time::timeout(LIST_TIMEOUT, client.send(Method::GET, &path, None))
        .await
        .map_err(|_| "watch not answered in time".to_owned())??;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::GONE => return Ok(WatchEnd::Expired),
        other => return Err(format!("watch answered {other}")),
    }
    let mut body = response.into_body();
    let mut lines = Lines::default();
    let mut last = version.to_owned();
    loop {
        let frame = match tokio::time::timeout(WATCH_IDLE, body.frame()).await {
            Err(_) => return Err(format!("watch silent for {WATCH_IDLE:?}")),
            Ok(None) => return Ok(WatchEnd::Closed(last)),
            Ok(Some(Err(error))) => return Err(format!("watch stream: {error}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        for line in lines.push(&data)? {
            let event: Value =
                serde_json::from_slice(&line).map_err(|e| format!("watch event: {e}"))?;
            let applied = cache
                .lock()
                .map_err(|_| "cache lock poisoned".to_owned())?
                .apply(index, &event)?;
            if let Some(seen) = event["object"]["metadata"]["resourceVersion"].as_str() {
                last = seen.to_owned();
            }
            match applied {
                Applied::Changed => changed.notify_one(),
                Applied::Expired => return Ok(WatchEnd::Expired),
                Applied::Unchanged | Applied::Bookmark => {}
            }
        }
    }
}

fn excerpt(body: &Bytes) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

#[cfg(test)]
mod tests;
