//! Sidecar injection: Kubernetes manifests in, the same manifests with the Ficus sidecar out.
//!
//! One function, [`inject`], rewrites a Kubernetes object given as JSON; `ficusctl inject`
//! runs it over every document of a YAML stream and the admission webhook
//! ([`crate::webhook`]) runs it over the Pod of an AdmissionReview, so both produce exactly
//! the same pod. Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
//! and `List`s of them are rewritten; every other object passes through unchanged.
//!
//! # What an injected pod gets
//! - `ficus-init`, a first init container running `ficus-sidecar redirect` (iptables nat
//!   rules in the pod's network namespace) as root with only `NET_ADMIN` and `NET_RAW`.
//! - `ficus-sidecar`, a **native sidecar**: an init container with `restartPolicy: Always`,
//!   so it starts before the app (its startup probe on `/ready` holds the app containers
//!   back until the proxy has its config and certificate) and stops after the app (a Job's
//!   pod completes once its app containers have exited, no `/quitquitquit` needed). It runs
//!   as uid 1337 (the uid the redirect rules exempt, so the proxy's own traffic does not
//!   loop), non-root, with a read-only root filesystem and no capabilities, with
//!   `--transparent`, `--control` pointing at the control-plane Service, the pod's projected
//!   service-account token (audience `ficus`) as `--token-file`, the mesh root from the
//!   ConfigMap `ficus-root-ca` as `--ca-file`, and `--workload` / `--namespace` / `--node-id`
//!   from the downward API (service account, namespace, pod name).
//!
//! # App probes with mTLS STRICT
//! kubelet probes the pod IP in plaintext, which a STRICT inbound listener would refuse, and a
//! port excluded from redirection for kubelet's sake would take every mTLS caller of that port
//! past the sidecar to the app's plaintext server. So the app containers' `httpGet` and
//! `tcpSocket` probes are **rewritten to the sidecar's admin port**
//! (`/app-health/<container>/<livez|readyz|startupz>`), which relays them to the app over
//! loopback ([`probes`]); the probed ports stay in the mesh. The ports of the probes the
//! sidecar cannot relay (`grpc`, `HTTPS`, a `host`), of `httpGet`/`tcpSocket` lifecycle hooks,
//! and of every probe with `ficus.dev/rewrite-app-probes: "false"` are **excluded from inbound
//! redirection** instead, so kubelet reaches the app directly; other traffic to such a port
//! bypasses the sidecar (no mTLS, no authorization), which is reported as a warning when it is
//! also a declared container port. The admin port (15000, the startup probe's) is always
//! excluded.
//!
//! # Annotations (on the pod, or on the pod template of a workload)
//! | annotation | meaning |
//! |---|---|
//! | `ficus.dev/inject: "false"` | leave this pod alone (`"true"` is the default) |
//! | `ficus.dev/rewrite-app-probes: "false"` | leave app probes alone and exclude their ports from inbound redirection |
//! | `ficus.dev/exclude-outbound-ports: "5432,6379"` | outbound TCP to these ports is not redirected |
//! | `ficus.dev/exclude-inbound-ports: "9090"` | inbound TCP to these ports is not redirected |
//! | `ficus.dev/exclude-outbound-cidrs: "10.0.0.0/8,fd00::/8"` | outbound TCP to these networks is not redirected |
//! | `ficus.dev/proxy-cpu`, `ficus.dev/proxy-memory` | the sidecar's resource requests (default `100m`, `64Mi`) |
//! | `ficus.dev/proxy-cpu-limit`, `ficus.dev/proxy-memory-limit` | its limits (default `2`, `1Gi`; the requests in a Guaranteed pod) |
//!
//! Pods with `hostNetwork: true` are never injected: the redirect would rewrite the node's
//! own iptables. A pod that already has a `ficus-sidecar` container is left as it is, so
//! injecting twice changes nothing.
//!
//! # Layout
//! - [`annotations`] — reading and checking the annotations; [`quantity`] — resource
//!   quantities, compared exactly.
//! - [`containers`] — the init container, the sidecar and their volumes; [`resources`] —
//!   their requests and limits, and a Guaranteed pod kept Guaranteed.
//! - [`manifest`] — YAML streams in and out (for `ficusctl inject`).
//! - [`patch`] — the JSON Patch from an object to its injected form (for the webhook).
//! - [`probes`] — app probes rewritten to the sidecar's `/app-health/...` paths.

pub mod annotations;
pub mod containers;
pub mod manifest;
pub mod patch;
pub mod probes;
pub mod quantity;
pub mod resources;

use serde_json::{Map, Value};

use self::annotations::Annotations;

/// Name of the sidecar container; its presence marks a pod as injected.
pub const SIDECAR_NAME: &str = "ficus-sidecar";
/// Name of the init container that installs the redirect rules.
pub const INIT_NAME: &str = "ficus-init";

/// What the injected containers look like; [`InjectConfig::default`] is what `ficusctl inject`
/// and the webhook use unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of `ficus-sidecar` (the init container runs the same image).
    pub image: String,
    /// `--control` of the sidecar: the control plane's push/CSR endpoint.
    pub control_url: String,
    /// `--trust-domain` of the sidecar.
    pub trust_domain: String,
    /// ConfigMap (in the pod's namespace) whose key `ca.pem` holds the mesh root.
    pub ca_config_map: String,
    /// Audience of the projected service-account token the control plane reviews.
    pub token_audience: String,
    /// uid the proxy runs as; the redirect rules exempt its traffic.
    pub proxy_uid: u32,
    /// Admin port of the sidecar (`/ready`, `/live`, `/metrics`), probed by kubelet.
    pub admin_port: u16,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: format!("ficus/ficus-sidecar:{}", env!("CARGO_PKG_VERSION")),
            control_url: "https://ficus-control.ficus-system.svc:15012".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            ca_config_map: "ficus-root-ca".to_owned(),
            token_audience: "ficus".to_owned(),
            proxy_uid: 1337,
            admin_port: 15000,
        }
    }
}

/// What [`inject`] did with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added to this many pod specs (a `List` may hold several).
    Injected {
        /// Pod specs changed.
        pods: usize,
        /// Things the user should know (e.g. a probe port that bypasses the mesh).
        warnings: Vec<String>,
    },
    /// A pod (template) that is deliberately left as it is.
    Skipped(Skip),
    /// Not a kind that holds a pod template (a Service, a ConfigMap, a CRD...).
    NotAWorkload,
}

/// Why a pod was not injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `ficus.dev/inject: "false"`.
    OptedOut,
    /// It already has a `ficus-sidecar` container.
    AlreadyInjected,
    /// `hostNetwork: true`: redirect rules would land in the node's network namespace.
    HostNetwork,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OptedOut => "opted out with ficus.dev/inject: \"false\"",
            Self::AlreadyInjected => "already injected",
            Self::HostNetwork => "hostNetwork pods are not injected",
        })
    }
}

/// Why an object cannot be injected. The object is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// A workload of a known kind without the pod template where Kubernetes puts it.
    #[error("{kind} has no pod template at {path}")]
    NoPodSpec {
        /// The object's kind.
        kind: String,
        /// Where the template was expected (JSON pointer).
        path: &'static str,
    },
    /// A field has the wrong JSON type (e.g. `containers` is not a list).
    #[error("{path} must be {expected}")]
    Shape {
        /// The field.
        path: String,
        /// What it must be.
        expected: &'static str,
    },
    /// An annotation that does not parse.
    #[error("annotation {name}: {reason}")]
    Annotation {
        /// The annotation.
        name: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The pod already uses a name the injection needs (a volume or container).
    #[error(
        "the pod already has a {what} named {name:?}; rename it so that the sidecar's can be added"
    )]
    NameTaken {
        /// `volume` or `container`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Injects the sidecar into `object` in place (a Pod, a workload with a pod template, or a
/// `List` of them). On error `object` is unchanged.
pub fn inject(object: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let group = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .map_or("", |v| v.rsplit_once('/').map_or("", |(group, _)| group));
    let template = match (group, kind) {
        ("", "Pod") => Template::Pod,
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Template::At("/spec/template"),
        ("batch", "CronJob") => Template::At("/spec/jobTemplate/spec/template"),
        ("", "List") => return inject_list(object, config),
        _ => return Ok(Outcome::NotAWorkload),
    };
    let mut copy = object.clone();
    let pod = match template {
        Template::Pod => &mut copy,
        Template::At(path) => copy
            .pointer_mut(path)
            .filter(|t| t.is_object())
            .ok_or_else(|| InjectError::NoPodSpec {
                kind: kind.to_owned(),
                path,
            })?,
    };
    let outcome = inject_pod(pod, config)?;
    if matches!(outcome, Outcome::Injected { .. }) {
        *object = copy;
    }
    Ok(outcome)
}

/// Where a kind keeps its pod.
enum Template {
    /// The object is the pod.
    Pod,
    /// The pod template (`metadata` + `spec`) is at this JSON pointer.
    At(&'static str),
}

fn inject_list(list: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let Some(items) = list.get("items") else {
        return Ok(Outcome::NotAWorkload);
    };
    let Value::Array(items) = items else {
        return Err(shape("/items", "a list"));
    };
    let mut injected = items.clone();
    let (mut pods, mut warnings, mut skip) = (0, Vec::new(), None);
    for (index, item) in injected.iter_mut().enumerate() {
        match inject(item, config) {
            Ok(Outcome::Injected {
                pods: n,
                warnings: w,
            }) => {
                pods += n;
                warnings.extend(w.into_iter().map(|w| format!("items[{index}]: {w}")));
            }
            Ok(Outcome::Skipped(why)) => skip = skip.or(Some(why)),
            Ok(Outcome::NotAWorkload) => {}
            Err(error) => return Err(prefix(error, &format!("/items/{index}"))),
        }
    }
    if pods > 0 {
        list["items"] = Value::Array(injected);
        return Ok(Outcome::Injected { pods, warnings });
    }
    Ok(skip.map_or(Outcome::NotAWorkload, Outcome::Skipped))
}

/// Injects into a pod or pod template: an object with `metadata` and `spec`.
fn inject_pod(pod: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let annotations = Annotations::read(pod.pointer("/metadata/annotations"))?;
    if !annotations.inject {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let spec = match pod.get_mut("spec") {
        Some(Value::Object(spec)) => spec,
        _ => return Err(shape("spec", "an object (the pod spec)")),
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    for list in ["containers", "initContainers"] {
        for container in array(spec, list)? {
            if container.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME) {
                return Ok(Outcome::Skipped(Skip::AlreadyInjected));
            }
        }
    }
    // kubelet probes the app containers and any native sidecars the pod already has: their
    // HTTP and TCP probes go to the sidecar's admin port, which relays them to the app.
    let is_native = |c: &Value| c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
    // Both lists are checked to be lists before anything is rewritten.
    array(spec, "containers")?;
    array(spec, "initContainers")?;
    let mut app_probes = Map::new();
    if annotations.rewrite_app_probes {
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(containers)) = spec.get_mut(list) {
                for container in containers
                    .iter_mut()
                    .filter(|c| list == "containers" || is_native(c))
                {
                    app_probes.extend(probes::rewrite(
                        std::slice::from_mut(container),
                        config.admin_port,
                    ));
                }
            }
        }
    }
    let mut probed: Vec<Value> = array(spec, "containers")?.to_vec();
    probed.extend(
        array(spec, "initContainers")?
            .iter()
            .filter(|c| is_native(c))
            .cloned(),
    );
    // What is left for kubelet to reach directly must bypass the sidecar.
    let probes = containers::probe_ports(&probed, config.admin_port);
    let mut warnings = probes.warnings;
    let mut exclude_inbound = annotations.exclude_inbound_ports.clone();
    exclude_inbound.push(config.admin_port);
    for port in &probes.ports {
        if !exclude_inbound.contains(&port.port) {
            exclude_inbound.push(port.port);
        }
        if port.declared {
            warnings.push(format!(
                "port {} of container {:?} is reached by kubelet directly (a grpc or HTTPS \
                 probe, a lifecycle hook, or {}: \"false\"), so it is excluded from inbound \
                 redirection: traffic to it bypasses the sidecar (no mTLS, no authorization); \
                 use an httpGet or tcpSocket probe, or a port of its own, to keep it in the mesh",
                port.port,
                port.container,
                annotations::REWRITE_APP_PROBES,
            ));
        }
    }
    exclude_inbound.sort_unstable();
    exclude_inbound.dedup();

    let names = |list: &str| -> Result<Vec<String>, InjectError> {
        Ok(array(spec, list)?
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect())
    };
    let taken_volumes = names("volumes")?;
    let taken_containers = [names("containers")?, names("initContainers")?].concat();
    for volume in containers::VOLUME_NAMES {
        if taken_volumes.iter().any(|v| v == volume) {
            return Err(InjectError::NameTaken {
                what: "volume",
                name: (*volume).to_owned(),
            });
        }
    }
    if taken_containers.iter().any(|c| c == INIT_NAME) {
        return Err(InjectError::NameTaken {
            what: "container",
            name: INIT_NAME.to_owned(),
        });
    }

    // Every container counts for the pod's QoS class, init containers included.
    let all = [array(spec, "containers")?, array(spec, "initContainers")?].concat();
    let guaranteed = resources::guaranteed(&all);
    if guaranteed {
        for name in resources::limits_above_requests(&annotations) {
            warnings.push(format!(
                "the pod's containers are all Guaranteed (limits equal to requests), but \
                 {name} sets the sidecar's limit above its request, so the pod becomes \
                 Burstable; drop it to keep the pod Guaranteed"
            ));
        }
    }
    let init = containers::init_container(config, &annotations, &exclude_inbound, guaranteed);
    let sidecar = containers::sidecar_container(config, &annotations, guaranteed, &app_probes);
    let mut init_containers = vec![init, sidecar];
    init_containers.extend(array(spec, "initContainers")?.iter().cloned());
    spec.insert("initContainers".to_owned(), Value::Array(init_containers));
    let mut volumes = array(spec, "volumes")?.to_vec();
    volumes.extend(containers::volumes(config));
    spec.insert("volumes".to_owned(), Value::Array(volumes));
    Ok(Outcome::Injected { pods: 1, warnings })
}

/// `spec[name]` as a slice: absent or null is empty, anything but a list is an error.
fn array<'a>(spec: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], InjectError> {
    match spec.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(shape(&format!("spec.{name}"), "a list")),
    }
}

fn shape(path: &str, expected: &'static str) -> InjectError {
    InjectError::Shape {
        path: path.to_owned(),
        expected,
    }
}

fn prefix(error: InjectError, at: &str) -> InjectError {
    match error {
        InjectError::Shape { path, expected } => InjectError::Shape {
            path: format!("{at}: {path}"),
            expected,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
