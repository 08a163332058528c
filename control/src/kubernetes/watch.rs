//! `--kubernetes`: the cluster is the source of truth. Services, EndpointSlices, HTTPRoutes,
//! TCPRoutes and the `ficus.dev` kinds are followed with kube-rs's
//! [`watcher`](kube::runtime::watcher) (Services and EndpointSlices typed from k8s-openapi,
//! the others as [`DynamicObject`]s); every change (debounced) runs
//! [`translate`](super::translate::translate) over all cached objects and, when the result
//! validates and differs from the current version, commits it to the store as a new version
//! and pushes it as before. Objects that do not validate are left out of the result, one by
//! one (a route to an ExternalName Service, a mistyped Backend and the routes that name it), so the rest of the cluster keeps being pushed; each is logged at warn with its
//! diagnostics and counted in `ficus_control_kubernetes_objects_left_out_total{kind}`. The
//! whole result is refused — logged, counted as an `invalid` sync, and the last good version
//! keeps serving — only when the Mesh is invalid (it is global; this includes a Mesh naming
//! another trust domain than the CA's, as for apply), when an AuthorizationPolicy is (it
//! fails closed: left out, its workload would allow every caller), or when nothing valid is
//! left.
//!
//! kube's watcher does the list-then-watch protocol: paginated LIST, WATCH from its
//! `resourceVersion` with bookmarks, resuming a watch the API server ended, relisting on
//! `410 Gone`, back-off (0.8 s doubling to 30 s) after failures. What is left here is the
//! [`Cache`] its events feed (a relist replaces a resource's objects only once complete) and
//! one rule of ours: a kind whose CRD is not installed (404) counts as empty and is checked
//! again every minute. Nothing is committed before every resource has been listed once, so
//! a half-read cluster is never pushed.
//!
//! With `--kubernetes` the API's writes (`ficusctl apply`, `delete`, `rollback`) still work,
//! but the next change in the cluster replaces their result: the cluster wins. Several
//! control-plane replicas can each follow the cluster (their stores are independent); their
//! version numbers then differ between replicas.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use super::client::Client;
use super::translate::{translate, LeftOut};
use crate::apply::{check_documents, DocumentKey};
use crate::state::ControlState;

/// One kind of object the control plane follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// `kind` of its objects.
    pub kind: &'static str,
    /// Plural name: the last segment of its collection path.
    pub plural: &'static str,
}

impl Resource {
    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Collection path over all namespaces, e.g. `/api/v1/services`.
    pub fn path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }

    /// What kube needs to follow it as [`DynamicObject`]s.
    fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// Everything the translation reads; the first two are followed typed (k8s-openapi).
pub const RESOURCES: [Resource; 8] = [
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
    },
    Resource {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
    },
    Resource {
        group: "gateway.networking.k8s.io",
        version: "v1alpha2",
        kind: "TCPRoute",
        plural: "tcproutes",
    },
    Resource {
        group: "ficus.dev",
        version: "v1alpha1",
        kind: "Mesh",
        plural: "meshes",
    },
    Resource {
        group: "ficus.dev",
        version: "v1alpha1",
        kind: "Backend",
        plural: "backends",
    },
    Resource {
        group: "ficus.dev",
        version: "v1alpha1",
        kind: "TrafficPolicy",
        plural: "trafficpolicies",
    },
    Resource {
        group: "ficus.dev",
        version: "v1alpha1",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
    },
];

/// Changes closer together than this become one translation.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often a kind whose CRD is missing is checked again.
const MISSING_RECHECK: Duration = Duration::from_secs(60);

/// Objects by namespace and name.
type Objects = BTreeMap<(String, String), Value>;

/// The objects of every resource as JSON (what the translation reads), fed by the watchers'
/// events.
#[derive(Debug, Default)]
pub struct Cache {
    /// By resource: its objects, or `None` until it has been listed once.
    resources: [Option<Objects>; RESOURCES.len()],
    /// By resource: a relist in progress (between `Init` and `InitDone`).
    relisting: [Option<Objects>; RESOURCES.len()],
}

impl Cache {
    /// Applies one watcher event of resource `index` (objects as JSON); whether the objects
    /// the translation reads changed (the end of the first LIST always counts).
    pub fn apply(&mut self, index: usize, event: Event<Value>) -> bool {
        match event {
            Event::Init => {
                self.relisting[index] = Some(Objects::new());
                false
            }
            Event::InitApply(object) => {
                if let (Some(relisting), Some(key)) = (&mut self.relisting[index], key(&object)) {
                    relisting.insert(key, object);
                }
                false
            }
            Event::InitDone => {
                let listed = self.relisting[index].take().unwrap_or_default();
                self.replace(index, listed)
            }
            // kube sends these only after the first `InitDone`.
            Event::Apply(object) => match (key(&object), &mut self.resources[index]) {
                (Some(key), Some(objects)) => objects.insert(key, object.clone()) != Some(object),
                _ => false,
            },
            Event::Delete(object) => match (key(&object), &mut self.resources[index]) {
                (Some(key), Some(objects)) => objects.remove(&key).is_some(),
                _ => false,
            },
        }
    }

    /// Resource `index` is not served (its CRD is not installed): it counts as listed and
    /// empty; whether that changed anything.
    pub fn absent(&mut self, index: usize) -> bool {
        self.relisting[index] = None;
        self.replace(index, Objects::new())
    }

    fn replace(&mut self, index: usize, objects: Objects) -> bool {
        let changed = self.resources[index].as_ref() != Some(&objects);
        self.resources[index] = Some(objects);
        changed
    }

    /// Whether every resource has been listed at least once.
    pub fn ready(&self) -> bool {
        self.resources.iter().all(Option::is_some)
    }

    /// Every cached object.
    pub fn objects(&self) -> Vec<Value> {
        self.resources
            .iter()
            .flatten()
            .flat_map(|objects| objects.values().cloned())
            .collect()
    }
}

fn key(object: &Value) -> Option<(String, String)> {
    let name = object["metadata"]["name"].as_str()?;
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("");
    Some((namespace.to_owned(), name.to_owned()))
}

/// An object as the translation reads it: JSON with `apiVersion` and `kind` (LIST items do
/// not carry them, so [`DynamicObject`]s from a LIST lack them).
pub fn to_json<K: Serialize>(resource: &Resource, object: &K) -> Value {
    // Serializing a k8s-openapi object or a DynamicObject cannot fail (string keys only);
    // were it to, the object has no name and the cache skips it.
    let mut object = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut object {
        map.insert("apiVersion".to_owned(), Value::from(resource.api_version()));
        map.insert("kind".to_owned(), Value::from(resource.kind));
    }
    object
}

/// The cluster as translated, ready to commit.
#[derive(Debug, PartialEq)]
struct Translated {
    /// The documents as the store keeps them (sorted by key).
    documents: Vec<Value>,
    /// How many Services did not become Backends.
    skipped: usize,
    /// Objects left out because they did not validate.
    left_out: Vec<LeftOut>,
    /// The config's warnings (matches that can never be selected), as displayed: the first
    /// 100 and one counting the rest.
    warnings: Vec<String>,
    /// How many warnings it has in all.
    warning_count: usize,
}

/// The translated cluster (objects that do not validate left out), or why it is invalid as a
/// whole. With `ca_trust_domain` (the CA's, when there is a CA) a Mesh must not declare
/// another one, the check apply and rollback make: committed, it would make every later
/// apply and rollback fail. That check runs on what remains; it only concerns the Mesh, so a
/// failure refuses the whole, as any invalid Mesh does.
fn documents(
    objects: &[Value],
    trust_domain: &str,
    ca_trust_domain: Option<&str>,
) -> Result<Translated, String> {
    let translation = translate(objects, trust_domain).map_err(|e| e.to_string())?;
    for (service, reason) in &translation.skipped {
        tracing::debug!(%service, %reason, "Service not turned into a Backend");
    }
    let sorted: BTreeMap<DocumentKey, Value> = translation
        .config
        .document_values()
        .into_iter()
        .filter_map(|d| Some((DocumentKey::of(&d)?, d)))
        .collect();
    if let Some(ca_trust_domain) = ca_trust_domain {
        check_documents(ca_trust_domain, &sorted, &[], "the cluster").map_err(|e| e.to_string())?;
    }
    Ok(Translated {
        documents: sorted.into_values().collect(),
        skipped: translation.skipped.len(),
        left_out: translation.left_out,
        warnings: translation
            .config
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect(),
        warning_count: translation.config.warning_count,
    })
}

/// Logs each left-out object at warn with its diagnostics, and counts it by kind.
fn report_left_out(state: &ControlState, left_out: &[LeftOut]) {
    for object in left_out {
        let diagnostics = object
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        tracing::warn!(
            object = %object.object,
            %diagnostics,
            "object left out of the config from the cluster: it is not valid"
        );
        state
            .metrics
            .kubernetes_objects_left_out
            .with_label_values(&[object.kind.as_str()])
            .inc();
    }
}

/// Translates `objects`, leaving out the objects that do not validate (logged and counted),
/// and commits the rest as a new version when it validates (a Mesh's trust domain included,
/// as for apply) and differs from the current one; the new version, if any. An invalid Mesh
/// refuses the whole.
pub async fn publish(
    state: &ControlState,
    objects: Vec<Value>,
    trust_domain: &str,
) -> Result<Option<u64>, String> {
    let trust_domain = trust_domain.to_owned();
    let ca_trust_domain = state.trust_domain.get().cloned();
    let Translated {
        documents,
        skipped,
        left_out,
        warnings,
        warning_count,
    } = tokio::task::spawn_blocking(move || {
        documents(&objects, &trust_domain, ca_trust_domain.as_deref())
    })
    .await
    .map_err(|e| format!("translation task: {e}"))??;
    report_left_out(state, &left_out);
    let _write = state.writes.lock().await;
    let current = state.current();
    if documents == current.documents {
        return Ok(None);
    }
    let (documents, pushable) = tokio::task::spawn_blocking(move || {
        let pushable = crate::push::check_pushable(&documents);
        (documents, pushable)
    })
    .await
    .map_err(|e| format!("size check task: {e}"))?;
    if let Err((size, limit)) = pushable {
        return Err(format!(
            "the cluster's config would be {size} bytes when pushed, over the limit of {limit}; \
             the last good version stays"
        ));
    }
    let mut summary = format!(
        "kubernetes: {} documents from the cluster ({skipped} Services skipped, {} objects \
         left out)",
        documents.len(),
        left_out.len()
    );
    match warning_count {
        0 => {}
        1 => summary.push_str(", 1 warning"),
        n => summary.push_str(&format!(", {n} warnings")),
    }
    let store = state.store.clone();
    let record = tokio::task::spawn_blocking(move || {
        store.commit(documents, Some("kubernetes".to_owned()), summary)
    })
    .await
    .map_err(|e| format!("store task: {e}"))?
    .map_err(|e| format!("store: {e}"))?;
    let version = record.version;
    tracing::info!(version, summary = %record.summary, "config committed from the cluster");
    // As the sidecars do when they apply it, and once per committed version (a resync that
    // changes nothing commits nothing).
    for warning in &warnings {
        tracing::warn!(version, "config from the cluster: {warning}");
    }
    state
        .metrics
        .config_version
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    state.publish(record);
    Ok(Some(version))
}

/// Follows every resource and keeps the store in line with the cluster until the process
/// ends.
pub async fn run(state: Arc<ControlState>, client: Client, trust_domain: String) {
    run_reporting(state, client, trust_domain, None, MISSING_RECHECK).await;
}

/// [`run`], sending the outcome of every translation to `report` when given (dropped when
/// the channel is full), checking kinds that are not served again after `recheck`.
async fn run_reporting(
    state: Arc<ControlState>,
    client: Client,
    trust_domain: String,
    report: Option<tokio::sync::mpsc::Sender<Result<Option<u64>, String>>>,
    recheck: Duration,
) {
    let cache = Arc::new(Mutex::new(Cache::default()));
    let changed = Arc::new(Notify::new());
    for (index, resource) in RESOURCES.iter().enumerate() {
        let cache = Arc::clone(&cache);
        let changed = Arc::clone(&changed);
        match resource.kind {
            "Service" => tokio::spawn(follow(
                Api::<Service>::all(client.clone()),
                index,
                cache,
                changed,
                recheck,
            )),
            "EndpointSlice" => tokio::spawn(follow(
                Api::<EndpointSlice>::all(client.clone()),
                index,
                cache,
                changed,
                recheck,
            )),
            _ => tokio::spawn(follow(
                Api::<DynamicObject>::all_with(client.clone(), &resource.api_resource()),
                index,
                cache,
                changed,
                recheck,
            )),
        };
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

/// Whether a watcher error says the API server does not serve the resource (404: its CRD is
/// not installed).
fn not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            if status.code == 404
    )
}

/// Follows resource `index` through `api` with kube's watcher, forever; while it is not
/// served, checks again every `recheck`.
async fn follow<K>(
    api: Api<K>,
    index: usize,
    cache: Arc<Mutex<Cache>>,
    changed: Arc<Notify>,
    recheck: Duration,
) where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    let resource = &RESOURCES[index];
    loop {
        let events = watcher(api.clone(), watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) if not_served(&error) => {
                    tracing::info!(
                        kind = resource.kind,
                        "not served by the API server (CRD not installed?); counted as empty"
                    );
                    if cache.lock().is_ok_and(|mut c| c.absent(index)) {
                        changed.notify_one();
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(kind = resource.kind, %error, "watch failed; retrying");
                    continue;
                }
            };
            let event = match event {
                Event::Init => Event::Init,
                Event::InitApply(object) => Event::InitApply(to_json(resource, &object)),
                Event::InitDone => Event::InitDone,
                Event::Apply(object) => Event::Apply(to_json(resource, &object)),
                Event::Delete(object) => Event::Delete(to_json(resource, &object)),
            };
            if cache.lock().is_ok_and(|mut c| c.apply(index, event)) {
                changed.notify_one();
            }
        }
        tokio::time::sleep(recheck).await;
    }
}

#[cfg(test)]
mod tests;
