use std::convert::Infallible;
use std::time::Instant;

use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::kubernetes::api::stand_in::{self, Body};
use crate::store::Store;

fn cluster() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/k8s/cluster/shop.json"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn index_of(kind: &str) -> usize {
    RESOURCES.iter().position(|r| r.kind == kind).unwrap()
}

#[test]
fn events_change_the_cache() {
    let mut cache = Cache::default();
    let service = index_of("Service");
    assert!(!cache.ready());
    let svc = json!({"metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"}});
    assert!(
        cache.replace(service, vec![svc.clone()]),
        "the first LIST counts"
    );
    assert!(
        !cache.replace(service, vec![svc.clone()]),
        "the same LIST again changes nothing"
    );
    let modified = json!({"type": "MODIFIED", "object": {"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "2"}}});
    assert_eq!(cache.apply(service, &modified), Ok(Applied::Changed));
    assert_eq!(cache.apply(service, &modified), Ok(Applied::Unchanged));
    assert_eq!(cache.objects()[0]["kind"], "Service");
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Service",
        "metadata": {"resourceVersion": "9"}}});
    assert_eq!(cache.apply(service, &bookmark), Ok(Applied::Bookmark));
    let deleted = json!({"type": "DELETED", "object": {"metadata": {"name": "web",
        "namespace": "shop"}}});
    assert_eq!(cache.apply(service, &deleted), Ok(Applied::Changed));
    assert!(cache.objects().is_empty());
    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "code": 410,
        "reason": "Expired", "message": "too old resource version: 1 (48213)"}});
    assert_eq!(cache.apply(service, &gone), Ok(Applied::Expired));
    let error = json!({"type": "ERROR", "object": {"kind": "Status", "code": 500,
        "message": "internal"}});
    assert!(cache.apply(service, &error).is_err());
    assert!(cache
        .apply(service, &json!({"type": "ADDED", "object": {}}))
        .is_err());
    assert!(cache
        .apply(service, &json!({"type": "WHATEVER", "object": svc}))
        .is_err());
    for index in 0..RESOURCES.len() {
        cache.replace(index, Vec::new());
    }
    assert!(cache.ready());
}

#[test]
fn list_items_get_their_type() {
    let body = json!({"kind": "ServiceList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "48213"},
        "items": [{"metadata": {"name": "web", "namespace": "shop"}, "spec": {}}]});
    let (items, version) =
        parse_list(&RESOURCES[index_of("Service")], body.to_string().as_bytes()).unwrap();
    assert_eq!(version, "48213");
    assert_eq!(items[0]["apiVersion"], "v1");
    assert_eq!(items[0]["kind"], "Service");
    assert!(parse_list(&RESOURCES[0], b"{}").is_err());
    assert!(parse_list(&RESOURCES[0], b"<html>").is_err());
}

#[test]
fn watch_streams_split_into_events_across_chunks() {
    let mut lines = Lines::default();
    assert!(lines.push(b"{\"type\":").unwrap().is_empty());
    let out = lines
        .push(b"\"ADDED\"}\n\n{\"type\":\"DELETED\"}\n{\"ty")
        .unwrap();
    assert_eq!(
        out,
        [
            b"{\"type\":\"ADDED\"}".to_vec(),
            b"{\"type\":\"DELETED\"}".to_vec()
        ]
    );
    assert_eq!(
        lines.push(b"pe\":1}\n").unwrap(),
        [b"{\"type\":1}".to_vec()]
    );
    assert!(lines.push(&vec![b'x'; MAX_EVENT + 1]).is_err(), "bounded");
}

/// The stand-in API server's view of the cluster, and a channel per watched resource.
struct Cluster {
    objects: Mutex<Vec<Value>>,
    lists: Mutex<Vec<String>>,
    watches: Mutex<BTreeMap<String, mpsc::Sender<Value>>>,
    /// Watch requests by collection path, in order.
    watch_requests: Mutex<Vec<String>>,
}

impl Cluster {
    /// Sends a watch event on `kind`'s open watch, and keeps the LIST view in line.
    async fn event(&self, kind: &str, event: Value) {
        let resource = RESOURCES[index_of(kind)];
        if event["type"] != "ERROR" {
            let object = &event["object"];
            let mut objects = self.objects.lock().unwrap();
            objects.retain(|o| {
                !(o["kind"] == kind && o["metadata"]["name"] == object["metadata"]["name"])
            });
            if event["type"] != "DELETED" {
                objects.push(object.clone());
            }
        }
        let started = Instant::now();
        loop {
            let sender = self.watches.lock().unwrap().get(resource.path).cloned();
            if let Some(sender) = sender {
                if sender.send(event.clone()).await.is_ok() {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no watch on {kind}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn list_count(&self, kind: &str) -> usize {
        let path = RESOURCES[index_of(kind)].path;
        self.lists
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    fn watch_count(&self, kind: &str) -> usize {
        let path = RESOURCES[index_of(kind)].path;
        self.watch_requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

async fn stand_in_cluster() -> (Arc<Cluster>, ApiClient, tempfile::TempDir) {
    let cluster = Arc::new(Cluster {
        objects: Mutex::new(cluster()),
        lists: Mutex::new(Vec::new()),
        watches: Mutex::new(BTreeMap::new()),
        watch_requests: Mutex::new(Vec::new()),
    });
    let serving = Arc::clone(&cluster);
    let (server, dir) = stand_in::start(move |_method, path: String, authorization, _body| {
        let cluster = Arc::clone(&serving);
        async move {
            assert_eq!(authorization, "Bearer control-plane-own-token");
            let (collection, query) = path.split_once('?').unwrap_or((&path, ""));
            let Some(resource) = RESOURCES.iter().find(|r| r.path == collection) else {
                return stand_in::json(404, &json!({"kind": "Status", "code": 404}));
            };
            if resource.kind == "TCPRoute" {
                // The experimental Gateway API channel is not installed here.
                return stand_in::json(404, &json!({"kind": "Status", "code": 404}));
            }
            if query.contains("watch=1") {
                let (sender, receiver) = mpsc::channel::<Value>(16);
                cluster
                    .watches
                    .lock()
                    .unwrap()
                    .insert(resource.path.to_owned(), sender);
                cluster
                    .watch_requests
                    .lock()
                    .unwrap()
                    .push(resource.path.to_owned());
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let event = receiver.recv().await?;
                    let line = format!("{event}\n");
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                        receiver,
                    ))
                });
                return Response::new(BodyExt::boxed(StreamBody::new(stream)));
            }
            cluster.lists.lock().unwrap().push(resource.path.to_owned());
            let items: Vec<Value> = cluster
                .objects
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o["kind"] == resource.kind)
                .map(|o| {
                    let mut item = o.clone();
                    // As the API server sends them: no type on LIST items.
                    item.as_object_mut().unwrap().remove("apiVersion");
                    item.as_object_mut().unwrap().remove("kind");
                    item
                })
                .collect();
            let list: Response<Body> = stand_in::json(
                200,
                &json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version,
                        "metadata": {"resourceVersion": "48213"}, "items": items}),
            );
            list
        }
    })
    .await;
    (cluster, ApiClient::new(server).unwrap(), dir)
}

/// Waits until the current version is `version`.
async fn wait_version(state: &ControlState, version: u64) -> Arc<crate::state::VersionRecord> {
    let started = Instant::now();
    loop {
        let current = state.current();
        if current.version == version {
            return current;
        }
        assert!(
            current.version < version,
            "version {} went past {version}",
            current.version
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "version {version} never came (at {})",
            current.version
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn split(record: &crate::state::VersionRecord) -> Vec<u64> {
    let route = record
        .documents
        .iter()
        .find(|d| d["kind"] == "HTTPRoute")
        .expect("the route");
    route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["weight"].as_u64().unwrap())
        .collect()
}

fn route_with(weights: [u64; 2]) -> Value {
    let mut route = cluster()
        .into_iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(weights[0]);
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(weights[1]);
    route
}

#[tokio::test]
async fn the_cluster_becomes_versions_and_invalid_states_are_never_committed() {
    let (cluster, client, _dir) = stand_in_cluster().await;
    let data = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(data.path()).unwrap();
    let state = ControlState::new(store, current);
    let (report, mut outcomes) = mpsc::channel(64);
    let watcher = tokio::spawn(run_reporting(
        Arc::clone(&state),
        client,
        "cluster.local".to_owned(),
        Some(report),
    ));

    // Listed: one version with the Services as Backends and the route's 90/10 split.
    let first = wait_version(&state, 1).await;
    assert_eq!(split(&first), [90, 10]);
    assert!(first.documents.iter().any(|d| d["kind"] == "Backend"
        && d["metadata"]["name"] == "monolith"
        && d["spec"]["endpoints"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/monolith"));
    assert_eq!(first.author.as_deref(), Some("kubernetes"));

    // A change of the route is pushed as the next version.
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "MODIFIED", "object": route_with([50, 50])}),
        )
        .await;
    assert_eq!(split(&*wait_version(&state, 2).await), [50, 50]);

    // 410 Gone: the route is relisted; the same cluster makes no new version.
    let (lists, watches) = (
        cluster.list_count("HTTPRoute"),
        cluster.watch_count("HTTPRoute"),
    );
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "ERROR", "object": {"kind": "Status", "code": 410}}),
        )
        .await;
    let started = Instant::now();
    while cluster.list_count("HTTPRoute") == lists || cluster.watch_count("HTTPRoute") == watches {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no relist and new watch after 410"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The payments-v2 Service goes away: the route then points at nothing, which is invalid,
    // so no version is made; it comes back (the config of version 2: nothing new); then a real
    // change is version 3 — had the invalid state been committed, it would be 4.
    let service = cluster
        .objects
        .lock()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "payments-v2")
        .cloned()
        .unwrap();
    cluster
        .event("Service", json!({"type": "DELETED", "object": service}))
        .await;
    // Wait for the translation of that state: refused, naming what is missing.
    let refused = loop {
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
            .await
            .expect("a translation within 10 s")
            .expect("the watcher runs");
        if let Err(error) = outcome {
            break error;
        }
    };
    assert!(refused.contains("payments-v2"), "{refused}");
    assert_eq!(state.current().version, 2, "the last good version stays");
    cluster
        .event("Service", json!({"type": "ADDED", "object": service}))
        .await;
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "MODIFIED", "object": route_with([0, 100])}),
        )
        .await;
    assert_eq!(split(&*wait_version(&state, 3).await), [0, 100]);
    let syncs = |result: &str| {
        state
            .metrics
            .kubernetes_syncs
            .with_label_values(&[result])
            .get()
    };
    assert_eq!(syncs("committed"), 3);
    assert!(syncs("invalid") >= 1);
    watcher.abort();
}
