use ficus_config::{ConfigErrors, Protocol, ResourceKey};

use super::*;

fn cluster() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/k8s/cluster/shop.json"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new("shop", name)
}

fn addresses(translation: &Translation, name: &str) -> Vec<(String, Option<String>)> {
    translation.config.backends[&key(name)]
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.identity.clone()))
        .collect()
}

#[test]
fn the_shop_cluster_becomes_the_snapshot() {
    let translation = translate(&cluster(), "cluster.local").unwrap();
    let config = &translation.config;
    assert_eq!(config.mesh.mtls_mode, ficus_config::MtlsMode::Strict);
    let id = |sa: &str| Some(format!("spiffe://cluster.local/ns/shop/sa/{sa}"));
    assert_eq!(
        addresses(&translation, "monolith"),
        [
            ("10.244.1.12:8080".to_owned(), id("monolith")),
            ("10.244.2.7:8080".to_owned(), id("monolith")),
        ],
        "ready endpoints only (the terminating pod is left out), on the slice's target port"
    );
    assert_eq!(
        addresses(&translation, "payments-v2"),
        [
            ("10.244.1.15:8080".to_owned(), id("payments-v2")),
            ("[fd00:10:244:1::f]:8080".to_owned(), id("payments-v2")),
        ],
        "both address families of a dual-stack Service"
    );
    assert_eq!(config.backends[&key("shop")].endpoints.len(), 2);
    assert_eq!(config.backends[&key("monolith")].protocol, Protocol::Http);

    let route = &config.http_routes[0];
    assert_eq!(route.key, key("shop"));
    assert_eq!(route.parents, [key("shop")]);
    let split: Vec<(String, u32)> = route.rules[0]
        .backend_refs
        .iter()
        .map(|r| (r.backend.name.clone(), r.weight))
        .collect();
    assert_eq!(
        split,
        [("monolith".to_owned(), 90), ("payments-v2".to_owned(), 10)]
    );
    assert!(config.traffic_policies.contains_key(&key("payments-v2")));
    assert_eq!(config.authorization_policies.len(), 1);

    let mut skipped = translation.skipped.clone();
    skipped.sort();
    let names: Vec<&str> = skipped.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["shop/cache", "shop/legacy-db"]);
    assert!(skipped[0].1.contains("opaque TCP"), "{skipped:?}");
    assert!(skipped[1].1.contains("ExternalName"), "{skipped:?}");
    // Its one pod is not ready: a Backend without endpoints (requests to it get 503 `UH`).
    assert_eq!(addresses(&translation, "storefront"), []);
}

#[test]
fn a_backend_object_wins_over_its_service() {
    let mut objects = cluster();
    objects.push(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
        "metadata": {"name": "payments-v2", "namespace": "shop", "resourceVersion": "9"},
        "spec": {"protocol": "http2", "endpoints": [{"address": "10.0.0.9:9090"}]},
    }));
    let translation = translate(&objects, "cluster.local").unwrap();
    let backend = &translation.config.backends[&key("payments-v2")];
    assert_eq!(backend.protocol, Protocol::Http2);
    assert_eq!(
        addresses(&translation, "payments-v2"),
        [("10.0.0.9:9090".to_owned(), None)]
    );
}

#[test]
fn protocols_follow_app_protocol_and_port_names() {
    for (port, expected) in [
        (
            json!({"name": "web", "appProtocol": "kubernetes.io/h2c"}),
            "http2",
        ),
        (json!({"name": "api", "appProtocol": "grpc"}), "grpc"),
        (json!({"name": "grpc-api"}), "grpc"),
        (json!({"name": "h2c"}), "http2"),
        (json!({"name": "http-admin"}), "http"),
        (json!({"name": "postgres"}), "tcp"),
        (json!({}), "http"),
    ] {
        assert_eq!(protocol(&port), expected, "{port}");
    }
}

/// The shop cluster with no EndpointSlice for Service `service` (its pods all gone).
fn without_ready_pods(service: &str) -> Vec<Value> {
    let mut objects = cluster();
    objects.retain(|o| {
        !(o["kind"] == "EndpointSlice"
            && o["metadata"]["labels"]["kubernetes.io/service-name"] == service)
    });
    objects
}

/// The translation of `objects`, which must leave nothing out.
#[track_caller]
fn translated_whole(objects: &[Value]) -> Translation {
    let translation = translate(objects, "cluster.local").unwrap();
    assert!(
        translation.left_out.is_empty(),
        "{:?}",
        translation.left_out
    );
    translation
}

/// `(object, diagnostics as text)` of what `translation` left out, in order.
fn left_out_of(translation: &Translation) -> Vec<(String, String)> {
    translation
        .left_out
        .iter()
        .map(|l| {
            let text = ConfigErrors::new(l.diagnostics.clone()).to_string();
            (l.object.clone(), text)
        })
        .collect()
}

#[test]
fn invalid_objects_are_left_out_and_named_with_their_diagnostics() {
    let mut objects = cluster();
    let route = objects
        .iter_mut()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    route["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("payments-v3");
    let translation = translate(&objects, "cluster.local").unwrap();
    let left_out = left_out_of(&translation);
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    assert_eq!(left_out[0].0, "HTTPRoute shop/shop");
    assert!(left_out[0].1.contains("payments-v3"), "{left_out:?}");
    assert_eq!(translation.left_out[0].kind, "HTTPRoute");
    assert!(translation.config.http_routes.is_empty());
    assert_eq!(translation.config.backends.len(), 4, "the rest is kept");

    // A route to a Service whose pods are all gone: the Service is a Backend without
    // endpoints, so the route, its policies and the rest of the cluster all stay.
    let objects = without_ready_pods("payments-v2");
    let translation = translated_whole(&objects);
    assert_eq!(addresses(&translation, "payments-v2"), []);
    let config = &translation.config;
    assert_eq!(config.http_routes.len(), 1);
    assert!(config.traffic_policies.contains_key(&key("payments-v2")));
    assert_eq!(config.authorization_policies.len(), 1);
}

/// A sidecar finds the policies protecting it by its Backend's name, its `serviceAccount` or
/// its endpoints' identities. A Service whose pods run as another service account and are
/// all unready has no endpoint to carry that link: its Backend names the account, so its
/// starting pods still find their policy, and the rest of the cluster goes on syncing.
#[test]
fn a_protected_service_without_ready_pods_names_its_account() {
    let mut objects = without_ready_pods("payments-v2");
    let service = objects
        .iter_mut()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "payments-v2")
        .unwrap();
    service["metadata"]["annotations"][SERVICE_ACCOUNT_ANNOTATION] = json!("payments");
    let translation = translated_whole(&objects);
    assert_eq!(addresses(&translation, "payments-v2"), []);
    let backend = &translation.config.backends[&key("payments-v2")];
    assert_eq!(backend.service_account.as_deref(), Some("payments"));
    assert_eq!(translation.config.authorization_policies.len(), 1);
    // With ready endpoints their identities link the pods (the field is left out, which
    // sidecars older than it would refuse); an account equal to the name needs none either.
    let backends = &translation.config.backends;
    assert_eq!(backends[&key("shop")].service_account, None);
    assert_eq!(backends[&key("monolith")].service_account, None);
    // An annotation that is no service account name: the Service is skipped, saying why.
    let service = objects
        .iter_mut()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "payments-v2")
        .unwrap();
    service["metadata"]["annotations"][SERVICE_ACCOUNT_ANNOTATION] = json!("Payments_SA");
    objects.retain(|o| o["kind"] != "AuthorizationPolicy");
    let translation = translate(&objects, "cluster.local").unwrap();
    assert!(
        translation
            .skipped
            .iter()
            .any(|(service, reason)| service == "shop/payments-v2"
                && reason.contains("not a service account name")),
        "{:?}",
        translation.skipped
    );
}

#[test]
fn objects_broken_by_a_left_out_object_are_left_out_next() {
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
    let translation = translate(&objects, "cluster.local").unwrap();
    let left_out = left_out_of(&translation);
    let names: Vec<&str> = left_out.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["Backend shop/payments-v3", "HTTPRoute shop/shop"]);
    assert!(left_out[0].1.contains("not an ip:port"), "{left_out:?}");
    assert!(
        left_out[1]
            .1
            .contains("Backend \"shop/payments-v3\" does not exist"),
        "{left_out:?}"
    );
    let config = &translation.config;
    assert!(config.http_routes.is_empty());
    assert!(!config.backends.contains_key(&key("payments-v3")));
    assert!(config.traffic_policies.contains_key(&key("payments-v2")));
    assert_eq!(config.authorization_policies.len(), 1);
}

/// More invalid objects than an error lists (100): all are left out, those past the listed
/// errors with a note that their problems were not listed; the rest is kept.
#[test]
fn invalid_objects_past_the_listed_errors_are_left_out_too() {
    let mut objects = cluster();
    for i in 0..150 {
        objects.push(json!({
            "apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
            "metadata": {"name": format!("broken-{i:03}"), "namespace": "shop"},
            "spec": {"protocol": "http", "endpoints": [{"address": "10.0.0.1"}]},
        }));
    }
    let translation = translate(&objects, "cluster.local").unwrap();
    let left_out = left_out_of(&translation);
    assert_eq!(left_out.len(), 150);
    let noted = left_out
        .iter()
        .filter(|(_, text)| text.contains("has problems not listed"))
        .count();
    assert_eq!(noted, 50, "{left_out:?}");
    assert!(left_out
        .iter()
        .all(|(name, _)| name.starts_with("Backend shop/broken-")));
    assert_eq!(translation.config.backends.len(), 4, "the rest is kept");
    assert_eq!(translation.config.http_routes.len(), 1);
}

#[test]
fn an_invalid_mesh_refuses_the_whole_translation() {
    let mut objects = cluster();
    let mesh = objects.iter_mut().find(|o| o["kind"] == "Mesh").unwrap();
    mesh["spec"]["trustDomain"] = json!("Not A Domain");
    // Also a route that alone would be left out: the Mesh failing refuses everything anyway.
    let route = objects
        .iter_mut()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    route["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("payments-v3");
    let errors = translate(&objects, "cluster.local")
        .unwrap_err()
        .to_string();
    assert!(errors.contains("Mesh default"), "{errors}");
    assert!(errors.contains("spec.trustDomain"), "{errors}");
}

#[test]
fn nothing_valid_left_refuses_the_whole_translation() {
    let route = cluster()
        .into_iter()
        .find(|o| o["kind"] == "HTTPRoute")
        .unwrap();
    let errors = translate(&[route], "cluster.local")
        .unwrap_err()
        .to_string();
    assert!(errors.contains("HTTPRoute shop/shop"), "{errors}");
    // An empty cluster is still the empty config, as before.
    let translation = translate(&[], "cluster.local").unwrap();
    assert!(translation.config.documents.is_empty());
    assert!(translation.left_out.is_empty());
}

#[test]
fn objects_of_other_kinds_are_ignored() {
    let mut objects = cluster();
    objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ficus-root-ca", "namespace": "shop"}, "data": {"ca.pem": "x"}}));
    objects.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "monolith", "namespace": "shop"}, "spec": {}}));
    assert!(translate(&objects, "cluster.local").is_ok());
}

#[test]
fn server_bookkeeping_does_not_change_the_snapshot() {
    let before = cluster();
    let mut after = before.clone();
    for object in &mut after {
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!("999999");
        metadata["uid"] = json!("00000000-0000-0000-0000-000000000001");
        metadata["generation"] = json!(42);
        metadata["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
        object["status"] = json!({"conditions": [{"type": "Accepted", "status": "True"}]});
    }
    let documents = |objects: &[Value]| {
        translate(objects, "cluster.local")
            .unwrap()
            .config
            .document_values()
    };
    let translated = documents(&before);
    assert_eq!(translated, documents(&after));
    for document in &translated {
        assert!(document.get("status").is_none(), "{document}");
        let metadata = document["metadata"].as_object().unwrap();
        for field in metadata.keys() {
            assert!(
                [
                    "name",
                    "namespace",
                    "labels",
                    "annotations",
                    "creationTimestamp"
                ]
                .contains(&field.as_str()),
                "{field} kept in {document}"
            );
        }
    }
    let route = translated
        .iter()
        .find(|d| d["kind"] == "HTTPRoute")
        .unwrap();
    assert!(route["metadata"]["annotations"].is_object(), "{route}");
}
