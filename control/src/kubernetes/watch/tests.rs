use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::kubernetes::client::{self, stand_in};
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
fn resources_name_their_collections() {
    let service = &RESOURCES[index_of("Service")];
    assert_eq!(service.path(), "/api/v1/services");
    assert_eq!(service.api_version(), "v1");
    let route = &RESOURCES[index_of("HTTPRoute")];
    assert_eq!(
        route.path(),
        "/apis/gateway.networking.k8s.io/v1/httproutes"
    );
    assert_eq!(route.api_version(), "gateway.networking.k8s.io/v1");
    let resource = RESOURCES[index_of("TrafficPolicy")].api_resource();
    assert_eq!(resource.api_version, "ficus.dev/v1alpha1");
    assert_eq!(resource.plural, "trafficpolicies");
}

#[test]
fn watcher_events_change_the_cache() {
    let mut cache = Cache::default();
    let service = index_of("Service");
    assert!(!cache.ready());
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"}});
    let list = |cache: &mut Cache, objects: &[Value]| {
        assert!(!cache.apply(service, Event::Init));
        for object in objects {
            assert!(!cache.apply(service, Event::InitApply(object.clone())));
        }
        cache.apply(service, Event::InitDone)
    };
    assert!(
        list(&mut cache, std::slice::from_ref(&svc)),
        "the first LIST counts"
    );
    assert!(
        !list(&mut cache, std::slice::from_ref(&svc)),
        "the same LIST again changes nothing"
    );
    let mut modified = svc.clone();
    modified["metadata"]["resourceVersion"] = json!("2");
    assert!(cache.apply(service, Event::Apply(modified.clone())));
    assert!(!cache.apply(service, Event::Apply(modified.clone())));
    assert_eq!(cache.objects(), [modified.clone()]);
    // A relist replaces the objects only when it is complete.
    assert!(!cache.apply(service, Event::Init));
    assert_eq!(cache.objects().len(), 1, "kept while relisting");
    assert!(
        cache.apply(service, Event::InitDone),
        "relisted empty: web is gone"
    );
    assert!(cache.objects().is_empty());
    assert!(cache.apply(service, Event::Apply(modified.clone())));
    assert!(cache.apply(service, Event::Delete(modified.clone())));
    assert!(!cache.apply(service, Event::Delete(modified)));
    assert!(cache.objects().is_empty());
    assert!(
        !cache.apply(service, Event::Apply(json!({"metadata": {}}))),
        "no name: skipped"
    );
    assert!(!cache.ready());
    for index in 0..RESOURCES.len() {
        if index != service {
            cache.absent(index);
        }
    }
    assert!(cache.ready());
    // Objects of a resource not listed yet are not taken.
    let mut fresh = Cache::default();
    assert!(!fresh.apply(service, Event::Apply(svc)));
    assert!(fresh.objects().is_empty());
}

/// Services and EndpointSlices are followed typed (k8s-openapi): the objects the translation
/// then reads are those of the API server's JSON, and so is the config; the other kinds
/// come as DynamicObjects whose LIST items carry no type.
#[test]
fn typed_and_dynamic_objects_translate_like_the_api_servers_json() {
    let raw = cluster();
    let mut through_kube = Vec::new();
    for object in &raw {
        let index = index_of(object["kind"].as_str().unwrap());
        let resource = &RESOURCES[index];
        let mut item = object.clone();
        // As LIST items come: no type.
        item.as_object_mut().unwrap().remove("apiVersion");
        item.as_object_mut().unwrap().remove("kind");
        through_kube.push(match resource.kind {
            "Service" => to_json(resource, &serde_json::from_value::<Service>(item).unwrap()),
            "EndpointSlice" => to_json(
                resource,
                &serde_json::from_value::<EndpointSlice>(item).unwrap(),
            ),
            _ => to_json(
                resource,
                &serde_json::from_value::<DynamicObject>(item).unwrap(),
            ),
        });
    }
    for (raw, kube) in raw.iter().zip(&through_kube) {
        assert_eq!(raw["apiVersion"], kube["apiVersion"]);
        assert_eq!(raw["kind"], kube["kind"]);
        assert_eq!(raw["spec"], kube["spec"], "{}", raw["metadata"]["name"]);
        assert_eq!(raw["endpoints"], kube["endpoints"]);
        assert_eq!(raw["ports"], kube["ports"]);
    }
    assert_eq!(
        documents(&raw, "cluster.local", Some("cluster.local")).unwrap(),
        documents(&through_kube, "cluster.local", Some("cluster.local")).unwrap()
    );
}

/// The stand-in API server's view of the cluster, and a channel per open watch.
struct Cluster {
    objects: Mutex<Vec<Value>>,
    /// LIST requests by collection path, in order.
    lists: Mutex<Vec<String>>,
    watches: Mutex<BTreeMap<String, mpsc::Sender<Value>>>,
    /// Watch requests: collection path and the `resourceVersion` asked for.
    watch_requests: Mutex<Vec<(String, String)>>,
    /// Whether the experimental Gateway API channel (TCPRoute) is installed.
    tcp_routes: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Sends a watch event on `kind`'s open watch, and keeps the LIST view in line.
    async fn event(&self, kind: &str, event: Value) {
        let path = RESOURCES[index_of(kind)].path();
        if event["type"] == "ADDED" || event["type"] == "MODIFIED" || event["type"] == "DELETED" {
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
            let sender = self.watches.lock().unwrap().get(&path).cloned();
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

    /// Ends `kind`'s open watch, as the API server does after `timeoutSeconds`.
    fn end_watch(&self, kind: &str) {
        self.watches
            .lock()
            .unwrap()
            .remove(&RESOURCES[index_of(kind)].path());
    }

    fn list_count(&self, kind: &str) -> usize {
        let path = RESOURCES[index_of(kind)].path();
        self.lists
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == path)
            .count()
    }

    /// The `resourceVersion`s of `kind`'s watch requests, in order.
    fn watch_versions(&self, kind: &str) -> Vec<String> {
        let path = RESOURCES[index_of(kind)].path();
        self.watch_requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, version)| version.clone())
            .collect()
    }

    /// Waits until `kind` has had more than `watches` watch requests.
    async fn wait_watches(&self, kind: &str, watches: usize) {
        let started = Instant::now();
        while self.watch_versions(kind).len() <= watches {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no new watch of {kind}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of `name` in a query string.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn stand_in_cluster() -> (Arc<Cluster>, Client, tempfile::TempDir) {
    let cluster = Arc::new(Cluster {
        objects: Mutex::new(cluster()),
        lists: Mutex::new(Vec::new()),
        watches: Mutex::new(BTreeMap::new()),
        watch_requests: Mutex::new(Vec::new()),
        tcp_routes: std::sync::atomic::AtomicBool::new(false),
    });
    let serving = Arc::clone(&cluster);
    let (config, dir) = stand_in::start(move |method, path: String, authorization, _body| {
        let cluster = Arc::clone(&serving);
        async move {
            assert_eq!(method, http::Method::GET);
            assert_eq!(authorization, format!("Bearer {}", stand_in::OWN_TOKEN));
            let (collection, query) = path.split_once('?').unwrap_or((&path, ""));
            let Some(resource) = RESOURCES.iter().find(|r| r.path() == collection) else {
                return stand_in::status(404, "NotFound", "the server could not find the requested resource");
            };
            let watch = query_value(query, "watch") == Some("true");
            if !watch {
                cluster.lists.lock().unwrap().push(resource.path());
            }
            if resource.kind == "TCPRoute" && !cluster.tcp_routes.load(Ordering::Relaxed) {
                // The experimental Gateway API channel is not installed (yet).
                return stand_in::status(404, "NotFound", "the server could not find the requested resource");
            }
            if watch {
                let (sender, receiver) = mpsc::channel::<Value>(16);
                cluster
                    .watches
                    .lock()
                    .unwrap()
                    .insert(resource.path(), sender);
                cluster.watch_requests.lock().unwrap().push((
                    resource.path(),
                    query_value(query, "resourceVersion")
                        .unwrap_or("")
                        .to_owned(),
                ));
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let event = receiver.recv().await?;
                    let line = format!("{event}\n");
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                        receiver,
                    ))
                });
                let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
                return response;
            }
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
            stand_in::json(
                200,
                &json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": "48213"}, "items": items}),
            )
        }
    })
    .await;
    (cluster, client::connect(config).unwrap(), dir)
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

fn route_with(weights: [u64; 2], version: u64) -> Value {
    let mut route = cluster()
        .into_iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(weights[0]);
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(weights[1]);
    route["metadata"]["resourceVersion"] = json!(version.to_string());
    route
}

#[tokio::test]
async fn the_cluster_becomes_versions_and_invalid_objects_are_left_out() {
    let (cluster, client, _dir) = stand_in_cluster().await;
    // Without the AuthorizationPolicy on payments-v2, which would make the deletion of its
    // Service below refuse the whole cluster rather than leave objects out.
    cluster
        .objects
        .lock()
        .unwrap()
        .retain(|o| o["kind"] != "AuthorizationPolicy");
    let data = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(data.path()).unwrap();
    let state = ControlState::new(store, current);
    let (report, mut outcomes) = mpsc::channel(64);
    let watcher = tokio::spawn(run_reporting(
        Arc::clone(&state),
        client,
        "cluster.local".to_owned(),
        Some(report),
        Duration::from_millis(100),
    ));

    // Listed (TCPRoute is not served: counted as empty): one version with the Services as
    // Backends and the route's 90/10 split.
    let first = wait_version(&state, 1).await;
    assert_eq!(split(&first), [90, 10]);
    assert!(first.documents.iter().any(|d| d["kind"] == "Backend"
        && d["metadata"]["name"] == "monolith"
        && d["spec"]["endpoints"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/monolith"));
    assert_eq!(first.author.as_deref(), Some("kubernetes"));
    assert!(cluster.list_count("TCPRoute") >= 1);
    assert!(cluster.watch_versions("TCPRoute").is_empty());

    // The missing CRD is checked again: once installed, TCPRoutes are listed and watched
    // (none exist: nothing new to commit).
    cluster.tcp_routes.store(true, Ordering::Relaxed);
    cluster.wait_watches("TCPRoute", 0).await;

    // A change of the route is pushed as the next version.
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "MODIFIED", "object": route_with([50, 50], 48250)}),
        )
        .await;
    let second = wait_version(&state, 2).await;
    assert_eq!(split(&second), [50, 50]);

    // A bookmark moves the version; a watch the API server ends is resumed from there,
    // without a LIST.
    let lists = cluster.list_count("HTTPRoute");
    let watches = cluster.watch_versions("HTTPRoute").len();
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "BOOKMARK", "object": {"kind": "HTTPRoute",
                "apiVersion": "gateway.networking.k8s.io/v1",
                "metadata": {"resourceVersion": "48300"}}}),
        )
        .await;
    cluster.end_watch("HTTPRoute");
    cluster.wait_watches("HTTPRoute", watches).await;
    assert_eq!(
        cluster
            .watch_versions("HTTPRoute")
            .last()
            .map(String::as_str),
        Some("48300")
    );
    assert_eq!(
        cluster.list_count("HTTPRoute"),
        lists,
        "resumed, not relisted"
    );

    // 410 Gone: the route is relisted and watched again; the same cluster makes no new
    // version.
    let watches = cluster.watch_versions("HTTPRoute").len();
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version: 48300 (48400)"}}),
        )
        .await;
    cluster.wait_watches("HTTPRoute", watches).await;
    assert_eq!(
        cluster.list_count("HTTPRoute"),
        lists + 1,
        "relisted after 410"
    );
    assert_eq!(
        cluster
            .watch_versions("HTTPRoute")
            .last()
            .map(String::as_str),
        Some("48213"),
        "watched from the new LIST"
    );

    // The payments-v2 Service goes away: the route (and the traffic policy on payments-v2)
    // then name nothing and are left out, and the rest is version 3; it comes back: version 4 is
    // the config of version 2 again.
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
    let third = wait_version(&state, 3).await;
    assert!(!third.documents.iter().any(|d| d["kind"] == "HTTPRoute"));
    assert!(third.documents.iter().any(|d| d["kind"] == "Mesh"));
    assert_eq!(left_out(&state, "HTTPRoute"), 1);
    cluster
        .event("Service", json!({"type": "ADDED", "object": service}))
        .await;
    assert_eq!(
        wait_version(&state, 4).await.documents,
        second.documents,
        "the config of version 2 again"
    );

    // An invalid Mesh refuses the whole cluster, so no version is made; it is fixed (the
    // config of version 4: nothing new); then a real change is version 5 — had the invalid
    // state been committed, it would be 6.
    let mesh = cluster
        .objects
        .lock()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Mesh")
        .cloned()
        .unwrap();
    let mut invalid = mesh.clone();
    invalid["spec"]["trustDomain"] = json!("Not A Domain");
    cluster
        .event("Mesh", json!({"type": "MODIFIED", "object": invalid}))
        .await;
    // Wait for the translation of that state: refused, naming the Mesh.
    let refused = loop {
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
            .await
            .expect("a translation within 10 s")
            .expect("the watcher runs");
        if let Err(error) = outcome {
            break error;
        }
    };
    assert!(refused.contains("spec.trustDomain"), "{refused}");
    assert_eq!(state.current().version, 4, "the last good version stays");
    cluster
        .event("Mesh", json!({"type": "MODIFIED", "object": mesh}))
        .await;
    cluster
        .event(
            "HTTPRoute",
            json!({"type": "MODIFIED", "object": route_with([0, 100], 48500)}),
        )
        .await;
    assert_eq!(split(&*wait_version(&state, 5).await), [0, 100]);
    let syncs = |result: &str| {
        state
            .metrics
            .kubernetes_syncs
            .with_label_values(&[result])
            .get()
    };
    assert_eq!(syncs("committed"), 5);
    assert!(syncs("invalid") >= 1);
    watcher.abort();
}

#[tokio::test]
async fn a_mesh_in_another_trust_domain_is_never_committed() {
    let data = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(data.path()).unwrap();
    let state = ControlState::new(store, current);
    let _ = state.trust_domain.set("cluster.local".to_owned());
    let mut objects = cluster();
    let mesh = objects.iter_mut().find(|o| o["kind"] == "Mesh").unwrap();
    mesh["spec"]["trustDomain"] = json!("elsewhere.example");

    let refused = publish(&state, objects, "cluster.local").await.unwrap_err();
    assert!(refused.contains("spec.trustDomain"), "{refused}");
    assert!(refused.contains("elsewhere.example"), "{refused}");
    assert_eq!(state.current().version, 0, "nothing committed");
    assert!(state.store.history().unwrap().is_empty());

    // With the CA's trust domain the same cluster is committed.
    assert_eq!(
        publish(&state, cluster(), "cluster.local").await,
        Ok(Some(1))
    );
}

/// Service `web` in namespace `blog` with one ready endpoint at `address`, and its slice.
fn blog(address: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "blog"},
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "blog",
                "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}]}),
    ]
}

fn has(record: &crate::state::VersionRecord, kind: &str, namespace: &str, name: &str) -> bool {
    record.documents.iter().any(|d| {
        d["kind"] == kind
            && d["metadata"]["namespace"] == namespace
            && d["metadata"]["name"] == name
    })
}

/// How many objects of `kind` the watch has left out so far.
fn left_out(state: &ControlState, kind: &str) -> u64 {
    state
        .metrics
        .kubernetes_objects_left_out
        .with_label_values(&[kind])
        .get()
}

fn new_state() -> (Arc<ControlState>, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(data.path()).unwrap();
    (ControlState::new(store, current), data)
}

/// payments-v2 loses its last ready pod: its Service becomes a Backend without endpoints (its
/// share of requests gets 503 `UH`), so the route, the policies on it and an endpoint change
/// in another namespace are all committed, nothing left out.
#[tokio::test]
async fn a_service_losing_its_last_ready_pod_keeps_its_routes_and_policies() {
    let (state, _data) = new_state();
    let mut objects = cluster();
    objects.extend(blog("10.244.3.4"));
    assert_eq!(publish(&state, objects, "cluster.local").await, Ok(Some(1)));

    let mut objects = cluster();
    objects.retain(|o| {
        !(o["kind"] == "EndpointSlice"
            && o["metadata"]["labels"]["kubernetes.io/service-name"] == "payments-v2")
    });
    objects.extend(blog("10.244.3.5"));
    assert_eq!(publish(&state, objects, "cluster.local").await, Ok(Some(2)));
    let current = state.current();
    let backend = |namespace: &str, name: &str| {
        current
            .documents
            .iter()
            .find(|d| {
                d["kind"] == "Backend"
                    && d["metadata"]["namespace"] == namespace
                    && d["metadata"]["name"] == name
            })
            .unwrap_or_else(|| panic!("Backend {namespace}/{name}"))
    };
    assert_eq!(
        backend("blog", "web")["spec"]["endpoints"][0]["address"],
        "10.244.3.5:8080"
    );
    assert_eq!(
        backend("shop", "payments-v2")["spec"]["endpoints"],
        json!([])
    );
    for kind in ["HTTPRoute", "TrafficPolicy", "AuthorizationPolicy"] {
        let name = if kind == "HTTPRoute" {
            "shop"
        } else {
            "payments-v2"
        };
        assert!(has(&current, kind, "shop", name), "{kind}");
        assert_eq!(left_out(&state, kind), 0, "{kind}");
    }
}

/// A Backend object that is invalid is left out in the first round; the route that names it
/// then fails ("does not exist") and is left out in the second; the rest is committed.
#[tokio::test]
async fn an_invalid_backend_and_the_route_naming_it_are_left_out() {
    let (state, _data) = new_state();
    let mut objects = cluster();
    objects.push(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
        "metadata": {"name": "payments-v3", "namespace": "shop"},
        "spec": {"protocol": "http", "endpoints": [{"address": "10.0.0.1"}]},
    }));
    let route = objects
        .iter_mut()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    route["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("payments-v3");

    assert_eq!(publish(&state, objects, "cluster.local").await, Ok(Some(1)));
    let current = state.current();
    assert!(!has(&current, "Backend", "shop", "payments-v3"));
    assert!(!has(&current, "HTTPRoute", "shop", "shop"));
    for name in ["shop", "monolith", "payments-v2"] {
        assert!(has(&current, "Backend", "shop", name), "{name}");
    }
    assert!(has(&current, "TrafficPolicy", "shop", "payments-v2"));
    assert!(has(&current, "AuthorizationPolicy", "shop", "payments-v2"));
    let left_out = |kind: &str| left_out(&state, kind);
    assert_eq!((left_out("Backend"), left_out("HTTPRoute")), (1, 1));
}

/// The Mesh is global: an invalid one refuses the whole sync, even when everything else would
/// be valid or could be left out.
#[tokio::test]
async fn an_invalid_mesh_refuses_the_whole_sync() {
    let (state, _data) = new_state();
    assert_eq!(
        publish(&state, cluster(), "cluster.local").await,
        Ok(Some(1))
    );

    let mut objects = cluster();
    let mesh = objects.iter_mut().find(|o| o["kind"] == "Mesh").unwrap();
    mesh["spec"]["trustDomain"] = json!("Not A Domain");
    objects.retain(|o| {
        !(o["kind"] == "EndpointSlice"
            && o["metadata"]["labels"]["kubernetes.io/service-name"] == "payments-v2")
    });
    objects.extend(blog("10.244.3.5"));
    let refused = publish(&state, objects, "cluster.local").await.unwrap_err();
    assert!(refused.contains("Mesh default"), "{refused}");
    assert!(refused.contains("spec.trustDomain"), "{refused}");
    assert_eq!(state.current().version, 1, "the last good version stays");
    assert_eq!(state.store.history().unwrap().len(), 1);
    assert_eq!(
        left_out(&state, "HTTPRoute"),
        0,
        "nothing is left out of a refused sync"
    );
}

/// A cluster route with a match that can never be selected is committed (a warning never
/// refuses a config), and the version's summary counts the warning (each is logged).
#[tokio::test]
async fn warnings_of_the_clusters_config_are_counted_in_the_summary() {
    let (state, _data) = new_state();
    let mut objects = cluster();
    let route = objects
        .iter_mut()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    // Rule 1 repeats rule 0's match: it is shadowed, so the whole rule is never selected.
    route["spec"]["rules"][1]["matches"] = route["spec"]["rules"][0]["matches"].clone();
    assert_eq!(publish(&state, objects, "cluster.local").await, Ok(Some(1)));
    let current = state.current();
    assert!(has(&current, "HTTPRoute", "shop", "shop"));
    assert!(
        current.summary.ends_with("0 objects left out), 1 warning"),
        "{}",
        current.summary
    );

    // Without it, no warning is counted.
    assert_eq!(
        publish(&state, cluster(), "cluster.local").await,
        Ok(Some(2))
    );
    let summary = &state.current().summary;
    assert!(summary.ends_with("0 objects left out)"), "{summary}");
}
