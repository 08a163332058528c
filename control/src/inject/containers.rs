//! The containers and volumes injection adds, and the probe ports it must leave alone.

use serde_json::{json, Map, Value};

use super::annotations::Annotations;
use super::probes::APP_PROBES_ENV;
use super::resources::{init_resources, sidecar_resources};
use super::{InjectConfig, INIT_NAME, SIDECAR_NAME};

/// Volumes injection adds (their names must be free in the pod).
pub const VOLUME_NAMES: &[&str] = &[TOKEN_VOLUME, CA_VOLUME, CACHE_VOLUME, XTABLES_VOLUME];
const TOKEN_VOLUME: &str = "ficus-token";
const CA_VOLUME: &str = "ficus-ca";
const CACHE_VOLUME: &str = "ficus-cache";
const XTABLES_VOLUME: &str = "ficus-xtables";
/// Where the projected service-account token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/ficus.dev/token";
/// Where the mesh root (ConfigMap) is mounted.
pub const CA_DIR: &str = "/var/run/secrets/ficus.dev/ca";
/// The sidecar's writable cache directory (`--cache-dir`).
pub const CACHE_DIR: &str = "/var/lib/ficus/cache";
/// Lifetime asked for the projected token; kubelet refreshes it at 80 %.
const TOKEN_SECONDS: u64 = 3600;

/// `ficus-init`: installs the redirect rules, then exits. Root with `NET_ADMIN` and `NET_RAW`
/// only (iptables needs both); `/run` is a small writable tmpfs for iptables' lock file so
/// that the root filesystem stays read-only. `guaranteed`: the pod's containers are all
/// Guaranteed ([`super::resources`]).
pub fn init_container(
    config: &InjectConfig,
    annotations: &Annotations,
    exclude_inbound: &[u16],
    guaranteed: bool,
) -> Value {
    let mut args = vec![
        "redirect".to_owned(),
        "--proxy-uid".to_owned(),
        config.proxy_uid.to_string(),
    ];
    let mut list = |flag: &str, items: Vec<String>| {
        if !items.is_empty() {
            args.push(flag.to_owned());
            args.push(items.join(","));
        }
    };
    list("--exclude-inbound-ports", to_strings(exclude_inbound));
    list(
        "--exclude-outbound-ports",
        to_strings(&annotations.exclude_outbound_ports),
    );
    list(
        "--exclude-cidrs",
        annotations.exclude_outbound_cidrs.clone(),
    );
    json!({
        "name": INIT_NAME,
        "image": config.image,
        "args": args,
        "resources": init_resources(guaranteed),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "runAsGroup": 0,
        },
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    })
}

/// `ficus-sidecar`: the proxy as a native sidecar (`restartPolicy: Always`). `guaranteed`: the
/// pod's containers are all Guaranteed ([`super::resources`]).
pub fn sidecar_container(
    config: &InjectConfig,
    annotations: &Annotations,
    guaranteed: bool,
    app_probes: &Map<String, Value>,
) -> Value {
    let admin = config.admin_port;
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": admin},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        })
    };
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if !app_probes.is_empty() {
        // The app's own probes, which kubelet now sends to `/app-health/...` on the admin port.
        env.push(json!({
            "name": APP_PROBES_ENV,
            "value": Value::Object(app_probes.clone()).to_string(),
        }));
    }
    json!({
        "name": SIDECAR_NAME,
        "image": config.image,
        "restartPolicy": "Always",
        "args": [
            "--control", config.control_url,
            "--transparent",
            // Kubernetes expands $(VAR) from the env below (the downward API).
            "--workload", "$(POD_SERVICE_ACCOUNT)",
            "--namespace", "$(POD_NAMESPACE)",
            "--node-id", "$(POD_NAME)",
            "--trust-domain", config.trust_domain,
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--ca-file", format!("{CA_DIR}/ca.pem"),
            "--cache-dir", CACHE_DIR,
            // kubelet probes the pod IP, so admin listens on every address.
            "--admin", format!("0.0.0.0:{admin}"),
            "--log-format", "json",
        ],
        "env": env,
        "ports": [{"name": "ficus-admin", "containerPort": admin, "protocol": "TCP"}],
        "resources": sidecar_resources(annotations, guaranteed),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // The app starts only once this passes: config loaded, certificate issued.
        "startupProbe": probe("/ready", 1, 600),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true},
            {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
        ],
    })
}

/// The volumes the two containers mount.
pub fn volumes(config: &InjectConfig) -> Vec<Value> {
    vec![
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": TOKEN_SECONDS,
            "path": "token",
        }}]}}),
        json!({"name": CA_VOLUME, "configMap": {
            "name": config.ca_config_map,
            "items": [{"key": "ca.pem", "path": "ca.pem"}],
        }}),
        // The cache holds the last snapshot as JSON (escaped): room for the largest one the
        // control plane sends (16 MiB) several times over, so a big config never gets every
        // meshed pod evicted at once.
        json!({"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}),
        json!({"name": XTABLES_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ]
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn to_strings(ports: &[u16]) -> Vec<String> {
    ports.iter().map(u16::to_string).collect()
}

/// A port kubelet connects to on its own (a probe or a lifecycle hook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePort {
    /// The port number (names resolved against the container's ports).
    pub port: u16,
    /// The container that declares the probe.
    pub container: String,
    /// Whether the container also lists the port in `ports` (i.e. it likely serves on it).
    pub declared: bool,
}

/// Probe ports of the app containers, and warnings about probes that could not be read.
#[derive(Debug, Default)]
pub struct ProbePorts {
    /// Each port once per container.
    pub ports: Vec<ProbePort>,
    /// E.g. a named port that no `ports` entry defines.
    pub warnings: Vec<String>,
}

/// The ports `container` declares: `(name, number)`.
pub(super) fn declared_ports(container: &Value) -> Vec<(Option<String>, u16)> {
    container
        .get("ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let number = p.get("containerPort")?.as_u64()?;
                    let number = u16::try_from(number).ok()?;
                    let name = p.get("name").and_then(Value::as_str).map(str::to_owned);
                    Some((name, number))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every `httpGet`, `tcpSocket` and `grpc` port of the probes and lifecycle hooks of
/// `containers` (after [`super::probes::rewrite`], those it left to kubelet), except
/// `admin_port`, where rewritten probes go.
pub fn probe_ports(containers: &[Value], admin_port: u16) -> ProbePorts {
    let mut found = ProbePorts::default();
    for container in containers {
        let name = container.get("name").and_then(Value::as_str).unwrap_or("");
        let declared = declared_ports(container);
        let handlers = ["livenessProbe", "readinessProbe", "startupProbe"]
            .iter()
            .filter_map(|probe| container.get(*probe))
            .chain(
                ["postStart", "preStop"]
                    .iter()
                    .filter_map(|hook| container.pointer(&format!("/lifecycle/{hook}"))),
            );
        for handler in handlers {
            for action in ["httpGet", "tcpSocket", "grpc"] {
                let Some(port) = handler.get(action).and_then(|a| a.get("port")) else {
                    continue;
                };
                let Some(number) = super::probes::resolve(port, &declared) else {
                    found.warnings.push(format!(
                        "container {name:?}: probe port {port} is not a port number or a \
                         name in its ports; it is not excluded from inbound redirection, so \
                         with mTLS STRICT kubelet's probe will fail"
                    ));
                    continue;
                };
                if number == admin_port {
                    continue;
                }
                let entry = ProbePort {
                    port: number,
                    container: name.to_owned(),
                    declared: declared.iter().any(|(_, n)| *n == number),
                };
                if !found.ports.contains(&entry) {
                    found.ports.push(entry);
                }
            }
        }
    }
    found
}
