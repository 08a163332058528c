//! Kubernetes objects → the validated [`Config`] snapshot the control plane pushes.
//!
//! A pure function over the objects a watch would hold (as the API server returns them,
//! `status` and `managedFields` included):
//!
//! - `ficus.dev/v1alpha1` Mesh, Backend, TrafficPolicy, AuthorizationPolicy and the Gateway
//!   API's HTTPRoute and TCPRoute are Ficus documents already: they go in as they are, less
//!   what the API server keeps for itself (metadata keeps only `name`, `namespace`, `labels`,
//!   `annotations` and `creationTimestamp`, which orders tied HTTPRoutes; `status` goes). Otherwise a status update or a new `resourceVersion`
//!   would make a new version pushed to every sidecar, and `managedFields` would weigh on
//!   every snapshot.
//! - Each `v1` Service becomes a `Backend` of the same name and namespace (so HTTPRoute
//!   `backendRefs` to Services resolve): its endpoints are the ready addresses
//!   of the `discovery.k8s.io/v1` EndpointSlices labelled `kubernetes.io/service-name`, on
//!   the slice port of the Service's first port (by name), none when no pod is ready (then
//!   its share of requests gets 503 `UH`, as the Gateway API asks of a Service without
//!   ready endpoints); its protocol comes from that port's
//!   `appProtocol` (`http`, `kubernetes.io/h2c` → `http2`, `grpc`) or name prefix
//!   (`http-`, `h2c-`, `grpc-`), default `http`. With the annotation
//!   `ficus.dev/service-account: NAME` each endpoint requires the identity
//!   `spiffe://<trust-domain>/ns/<ns>/sa/NAME` (then sidecars talk mTLS to it); EndpointSlices
//!   do not name the pods' service accounts.
//! - A Backend object of the same name wins over the Service's.
//!
//! Everything then goes through `ficus_config::parse_sources`, the validation every other
//! source of config passes, with each object its own source, named after it
//! (`Service shop/monolith`) in diagnostics.
//! Services that cannot be Backends are listed in [`Translation::skipped`] with the reason:
//! `ExternalName`, an opaque TCP protocol (in Ficus a tcp Backend needs a local `listen`
//! address, which a Service does not have). A Service annotated with its pods' service
//! account gets it as the Backend's `serviceAccount` too, so that its pods find the policies
//! that target it even while no endpoint is ready (see `backend_for`).
//! Service cluster IPs are not carried: the config model has no field for them yet.
//!
//! # One bad object does not freeze the mesh
//!
//! The cluster is written by many hands, and a config is valid only as a whole: one route to
//! a Service whose pods are all gone, or one mistyped object in any namespace, would refuse
//! every translation, and endpoint changes everywhere else would stop being pushed (sidecars
//! would keep dialling deleted pod IPs). So failures are isolated per object: when the
//! documents do not validate, the objects the diagnostics name are left out (listed in
//! [`Translation::left_out`] with their diagnostics) and the rest is validated again. That
//! repeats while objects are left out, since leaving one out can break another (a route
//! naming a left-out Backend); each round leaves out at least one object, so there are at
//! most as many rounds as objects. What remains is a config that validates as a whole, like
//! any other.
//!
//! Three cases still refuse the whole translation: a Mesh with a problem (the Mesh is global —
//! mTLS mode, trust domain, proxy limits apply to every sidecar — so no part of the cluster
//! is right without it); an AuthorizationPolicy with a problem (leaving it out would take its
//! rules away, and a workload with no policy allows every caller, so it fails closed); and
//! nothing left when objects
//! were left out (an empty config would take every route and Backend away, rather than keep
//! the last good ones).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ficus_config::{Config, ConfigErrors, Diagnostic, Source};
use serde_json::{json, Value};

/// Annotation on a Service naming the service account its pods run as.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "ficus.dev/service-account";

/// The `metadata` fields a document keeps; the rest (`resourceVersion`, `uid`, `generation`,
/// `managedFields`, ...) is the API server's bookkeeping, not config. `creationTimestamp`
/// changes only when an object is made again, and it orders HTTPRoutes whose matches tie.
const KEPT_METADATA: [&str; 5] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "creationTimestamp",
];

/// The snapshot built from a cluster's objects.
#[derive(Debug)]
pub struct Translation {
    /// The validated config.
    pub config: Config,
    /// `(namespace/name, reason)` of Services that did not become Backends.
    pub skipped: Vec<(String, String)>,
    /// Objects that failed validation and are not in [`Translation::config`], in the order
    /// they were left out; the watch logs and counts them.
    pub left_out: Vec<LeftOut>,
}

/// An object left out of the config because it did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// `kind` of the object, e.g. `HTTPRoute`; `Service` for the Backend made from a Service.
    pub kind: String,
    /// The object as diagnostics name it, e.g. `HTTPRoute shop/shop`.
    pub object: String,
    /// What was wrong with it in the round it was left out (a route that names a Backend left
    /// out before says that the Backend does not exist).
    pub diagnostics: Vec<Diagnostic>,
}

/// One object as a config source, with its kind.
struct Object {
    kind: String,
    source: Source,
}

/// Builds the config from `objects` (any order; unrelated kinds are ignored).
pub fn translate(objects: &[Value], trust_domain: &str) -> Result<Translation, ConfigErrors> {
    let mut sources = Vec::new();
    let mut explicit_backends = BTreeSet::new();
    let mut services = Vec::new();
    let mut slices: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap_or("");
        let kind = object["kind"].as_str().unwrap_or("");
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        match (api_version, kind) {
            ("ficus.dev/v1alpha1", _)
            | ("gateway.networking.k8s.io/v1", "HTTPRoute")
            | ("gateway.networking.k8s.io/v1alpha2", "TCPRoute") => {
                if kind == "Backend" {
                    explicit_backends.insert((namespace.to_owned(), name.to_owned()));
                }
                sources.push(Object {
                    kind: kind.to_owned(),
                    source: source(
                        &format!("{kind} {namespace}/{name}"),
                        &without_bookkeeping(object),
                    ),
                });
            }
            ("v1", "Service") => services.push(object),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(service) =
                    object["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
                {
                    slices
                        .entry((namespace.to_owned(), service.to_owned()))
                        .or_default()
                        .push(object);
                }
            }
            _ => {}
        }
    }
    let mut skipped = Vec::new();
    for service in services {
        let namespace = service["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = service["metadata"]["name"].as_str().unwrap_or("");
        let key = (namespace.to_owned(), name.to_owned());
        if explicit_backends.contains(&key) {
            continue;
        }
        let no_slices = Vec::new();
        let service_slices = slices.get(&key).unwrap_or(&no_slices);
        match backend_for(service, service_slices, trust_domain) {
            Ok(backend) => sources.push(Object {
                kind: "Service".to_owned(),
                source: source(&format!("Service {namespace}/{name}"), &backend),
            }),
            Err(reason) => skipped.push((format!("{namespace}/{name}"), reason)),
        }
    }
    let (config, left_out) = validate_leaving_out(sources)?;
    Ok(Translation {
        config,
        skipped,
        left_out,
    })
}

/// Validates `objects` as one config, leaving out the objects diagnostics name until the rest
/// validates (module docs); the config and what was left out. Refuses the whole when the Mesh
/// or an AuthorizationPolicy has a problem, when a diagnostic names no object, or when nothing
/// would be left.
fn validate_leaving_out(mut objects: Vec<Object>) -> Result<(Config, Vec<LeftOut>), ConfigErrors> {
    let mut left_out: Vec<LeftOut> = Vec::new();
    // Every round but the last leaves out at least one object: at most one more round than
    // there are objects.
    for _ in 0..=objects.len() {
        let sources: Vec<Source> = objects.iter().map(|o| o.source.clone()).collect();
        let errors = match ficus_config::parse_sources(&sources) {
            Ok(config) if config.documents.is_empty() && !left_out.is_empty() => {
                let diagnostics = left_out.into_iter().flat_map(|l| l.diagnostics).collect();
                return Err(ConfigErrors::new(diagnostics));
            }
            Ok(config) => return Ok((config, left_out)),
            Err(errors) => errors,
        };
        // Each object is its own source, so a diagnostic's `file` is the object (its
        // `document` may be `document 1` when the object has no usable name). `sources` names
        // every object with a problem, also those past the listed errors, so that one round
        // leaves out every object that fails in it.
        let named = |object: &Object| errors.sources.contains(&object.source.name);
        let unattributed = errors
            .sources
            .iter()
            .any(|source| !objects.iter().any(|o| o.source.name == *source));
        // The Mesh is global (mTLS mode, trust domain, limits of every sidecar): a cluster
        // without its Mesh is not "the rest of the cluster", so a Mesh with a problem keeps
        // refusing the whole translation, and the last good version keeps serving. So does an
        // AuthorizationPolicy: leaving one out would open its workload to every caller (a
        // workload without a policy allows all), so it fails closed, on the last good version.
        let fails_closed = |o: &Object| matches!(&*o.kind, "Mesh" | "AuthorizationPolicy");
        let global_failed = objects.iter().any(|o| fails_closed(o) && named(o));
        if unattributed || global_failed {
            return Err(errors);
        }
        let (failed, kept): (Vec<Object>, Vec<Object>) = objects.into_iter().partition(named);
        if failed.is_empty() {
            return Err(errors);
        }
        for object in failed {
            let mut diagnostics: Vec<Diagnostic> = errors
                .errors
                .iter()
                .filter(|d| d.file == object.source.name)
                .cloned()
                .collect();
            if diagnostics.is_empty() {
                // Its problems were past the listed ones.
                diagnostics.push(Diagnostic {
                    file: object.source.name.clone(),
                    line: None,
                    document: None,
                    field: String::new(),
                    message: format!(
                        "has problems not listed (only the first {} of the {} found with it \
                         are)",
                        ficus_config::MAX_LISTED_ERRORS,
                        errors.errors.len() + errors.not_listed
                    ),
                    hint: Some(
                        "check the object alone with `ficusctl validate` to see them".to_owned(),
                    ),
                });
            }
            left_out.push(LeftOut {
                kind: object.kind,
                object: object.source.name,
                diagnostics,
            });
        }
        objects = kept;
    }
    // Not reached (the bound above), but never loop or panic on cluster input.
    let diagnostics = left_out.into_iter().flat_map(|l| l.diagnostics).collect();
    Err(ConfigErrors::new(diagnostics))
}

fn source(name: &str, object: &Value) -> Source {
    Source {
        name: name.to_owned(),
        text: object.to_string(),
    }
}

/// `object` as config: `metadata` cut down to [`KEPT_METADATA`], and no `status`.
fn without_bookkeeping(object: &Value) -> Value {
    let mut object = object.clone();
    if let Value::Object(fields) = &mut object {
        fields.remove("status");
        if let Some(Value::Object(metadata)) = fields.get_mut("metadata") {
            metadata.retain(|field, _| KEPT_METADATA.contains(&field.as_str()));
        }
    }
    object
}

/// The Backend document for `service`, or why there is none.
fn backend_for(service: &Value, slices: &[&Value], trust_domain: &str) -> Result<Value, String> {
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = service["metadata"]["name"].as_str().unwrap_or("");
    if service["spec"]["type"] == "ExternalName" {
        return Err("an ExternalName Service has no endpoints".to_owned());
    }
    let port = service["spec"]["ports"]
        .as_array()
        .and_then(|ports| ports.first())
        .ok_or("the Service has no ports")?;
    let port_name = port["name"].as_str().unwrap_or("");
    let protocol = protocol(port);
    if protocol == "tcp" {
        return Err(format!(
            "port {port_name:?} is opaque TCP; declare a tcp Backend with `listen` instead"
        ));
    }
    let account = service["metadata"]["annotations"][SERVICE_ACCOUNT_ANNOTATION].as_str();
    if let Some(account) = account.filter(|a| !ficus_config::is_service_account_name(a)) {
        return Err(format!(
            "annotation {SERVICE_ACCOUNT_ANNOTATION}: {account:?} is not a service account name"
        ));
    }
    let identity =
        account.map(|account| format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}"));
    let mut addresses = BTreeSet::new();
    for slice in slices {
        let Some(slice_port) = slice["ports"].as_array().and_then(|ports| {
            ports
                .iter()
                .find(|p| p["name"].as_str().unwrap_or("") == port_name)
                .and_then(|p| p["port"].as_u64())
        }) else {
            continue;
        };
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            // Ready unknown (null) counts as ready, as for kube-proxy; terminating does not.
            if endpoint["conditions"]["ready"] == false {
                continue;
            }
            for address in endpoint["addresses"].as_array().into_iter().flatten() {
                match address.as_str().map(str::parse::<IpAddr>) {
                    Some(Ok(IpAddr::V4(ip))) => addresses.insert(format!("{ip}:{slice_port}")),
                    Some(Ok(IpAddr::V6(ip))) => addresses.insert(format!("[{ip}]:{slice_port}")),
                    _ => false, // FQDN slices are not addresses Ficus can dial
                };
            }
        }
    }
    // Without ready endpoints the Backend has none (its requests get 503 `UH`). A sidecar
    // finds the policies protecting it by its Backend's name, its `serviceAccount`, or the
    // identities of its endpoints: with no endpoint to carry it, the service account is
    // written out, so that pods still starting (none ready) find their AuthorizationPolicy.
    // Only then: sidecars older than the field refuse it as unknown, and they are no worse
    // off than when this case held the whole sync.
    let endpoints: Vec<Value> = addresses
        .into_iter()
        .map(|address| match &identity {
            Some(id) => json!({"address": address, "identity": id}),
            None => json!({"address": address}),
        })
        .collect();
    let no_endpoints = endpoints.is_empty();
    let mut spec = json!({"protocol": protocol, "endpoints": endpoints});
    if let Some(account) = account.filter(|a| *a != name && no_endpoints) {
        spec["serviceAccount"] = json!(account);
    }
    Ok(json!({
        "apiVersion": "ficus.dev/v1alpha1",
        "kind": "Backend",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

/// The Ficus protocol of a Service port.
fn protocol(port: &Value) -> &'static str {
    let app = port["appProtocol"].as_str().unwrap_or("");
    let name = port["name"].as_str().unwrap_or("");
    let prefix = |p: &str| name == p || name.starts_with(&format!("{p}-"));
    match app {
        "http" | "https" => "http",
        "kubernetes.io/h2c" | "http2" | "h2c" => "http2",
        "grpc" => "grpc",
        "tcp" | "mysql" | "postgres" | "redis" | "mongo" => "tcp",
        _ if prefix("grpc") => "grpc",
        _ if prefix("h2c") || prefix("http2") => "http2",
        _ if prefix("tcp") || prefix("mysql") || prefix("redis") || prefix("postgres") => "tcp",
        _ => "http",
    }
}

#[cfg(test)]
mod tests;
