//! App probes rewritten to the sidecar, so that a probed serving port stays in the mesh.
//!
//! kubelet probes the pod IP in plaintext. With the port redirected to a STRICT sidecar the
//! probe would be refused; with the port excluded from redirection (what injection used to
//! do for every probe port) every mTLS caller's ClientHello to that port would reach the
//! app's plaintext server instead, and fail. So, as Istio does, the app containers'
//! `httpGet` and `tcpSocket` probes (liveness, readiness, startup) are pointed at the
//! sidecar's admin port, path `/app-health/<container>/<livez|readyz|startupz>`, and the
//! originals go to the sidecar as JSON in `FICUS_APP_PROBES` (its `--app-probes`):
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
//!   "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 1},
//!  "/app-health/web/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1}}
//! ```
//!
//! The sidecar answers exactly those paths by sending the GET (or opening the TCP
//! connection) to `127.0.0.1:<port>` itself. Left as they are, and so still excluded from
//! redirection by [`super::containers::probe_ports`]: `grpc` probes, `HTTPS` probes (an app
//! serving its own TLS on a port must exclude that port anyway: the sidecar cannot terminate
//! it), probes with a `host` (not the pod), ports that name no declared port, lifecycle hooks,
//! and everything when `ficus.dev/rewrite-app-probes: "false"`.

use serde_json::{json, Map, Value};

/// The sidecar's environment variable (its `--app-probes`) that carries the original probes.
pub const APP_PROBES_ENV: &str = "FICUS_APP_PROBES";
/// Prefix of the admin paths rewritten probes use.
pub const PATH_PREFIX: &str = "/app-health/";

/// The probes kubelet runs on a container, and the last segment of their admin path.
const KINDS: &[(&str, &str)] = &[
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// Points the `httpGet` and `tcpSocket` probes of `containers` at `admin_port` and returns
/// the originals by admin path (empty when nothing was rewritten).
pub fn rewrite(containers: &mut [Value], admin_port: u16) -> Map<String, Value> {
    let mut originals = Map::new();
    for container in containers {
        let Some(name) = container.get("name").and_then(Value::as_str) else {
            continue;
        };
        let name = name.to_owned();
        let declared = super::containers::declared_ports(container);
        for (field, segment) in KINDS {
            let Some(probe) = container.get_mut(*field).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(target) = target(probe, &declared) else {
                continue;
            };
            let path = format!("{PATH_PREFIX}{name}/{segment}");
            let mut original = Map::new();
            original.insert(target.0.to_owned(), target.1);
            if let Some(timeout) = probe.get("timeoutSeconds") {
                original.insert("timeoutSeconds".to_owned(), timeout.clone());
            }
            probe.remove("tcpSocket");
            probe.insert(
                "httpGet".to_owned(),
                json!({"path": path, "port": admin_port, "scheme": "HTTP"}),
            );
            originals.insert(path, Value::Object(original));
        }
    }
    originals
}

/// What the sidecar must check for `probe` (`("httpGet" | "tcpSocket", details)` with the
/// port as a number), or `None` when it is left to kubelet.
fn target(
    probe: &Map<String, Value>,
    declared: &[(Option<String>, u16)],
) -> Option<(&'static str, Value)> {
    if let Some(http) = probe.get("httpGet").and_then(Value::as_object) {
        let scheme = http.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if scheme != "HTTP" || has_host(http) {
            return None;
        }
        let port = resolve(http.get("port")?, declared)?;
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            // kubelet puts a relative path after the host's `/`.
            format!("/{path}")
        };
        // The sidecar takes exactly what `http` can send (it refuses to start otherwise);
        // kubelet is more lenient (it escapes a path with spaces or non-ASCII itself), so a
        // probe it would take and the sidecar would not is left to kubelet.
        if http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
            return None;
        }
        let mut target = json!({"path": path, "port": port, "scheme": "HTTP"});
        if let Some(headers) = http.get("httpHeaders").and_then(Value::as_array) {
            let sendable = headers.iter().all(|header| {
                let text = |key| header.get(key).and_then(Value::as_str);
                text("name").is_some_and(|n| http::HeaderName::try_from(n).is_ok())
                    && text("value").is_some_and(|v| http::HeaderValue::try_from(v).is_ok())
            });
            if !sendable {
                return None;
            }
            target["httpHeaders"] = Value::Array(headers.clone());
        }
        return Some(("httpGet", target));
    }
    if let Some(tcp) = probe.get("tcpSocket").and_then(Value::as_object) {
        if has_host(tcp) {
            return None;
        }
        let port = resolve(tcp.get("port")?, declared)?;
        return Some(("tcpSocket", json!({"port": port})));
    }
    None
}

fn has_host(action: &Map<String, Value>) -> bool {
    action
        .get("host")
        .and_then(Value::as_str)
        .is_some_and(|h| !h.is_empty())
}

/// A probe port as a number: a number, or the name of one of the container's ports.
pub(super) fn resolve(port: &Value, declared: &[(Option<String>, u16)]) -> Option<u16> {
    let number = match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => declared
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .map(|(_, number)| *number),
        _ => None,
    };
    number.filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_tcp_probes_point_at_the_admin_port_and_keep_their_settings() {
        let mut containers = vec![json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                "httpHeaders": [{"name": "x-probe", "value": "1"}]},
                "periodSeconds": 5, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 4},
            "startupProbe": {"httpGet": {"path": "up", "port": 8080, "scheme": "HTTP"}},
        })];
        let originals = rewrite(&mut containers, 15000);
        let web = &containers[0];
        assert_eq!(
            web["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15000, "scheme": "HTTP"},
                   "periodSeconds": 5, "timeoutSeconds": 2})
        );
        assert_eq!(
            web["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15000, "scheme": "HTTP"},
                   "failureThreshold": 4})
        );
        assert_eq!(
            web["startupProbe"]["httpGet"]["path"],
            "/app-health/web/startupz"
        );
        assert_eq!(
            Value::Object(originals),
            json!({
                "/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080,
                    "scheme": "HTTP", "httpHeaders": [{"name": "x-probe", "value": "1"}]},
                    "timeoutSeconds": 2},
                "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
                "/app-health/web/startupz": {"httpGet": {"path": "/up", "port": 8080,
                    "scheme": "HTTP"}},
            })
        );
    }

    #[test]
    fn probes_the_sidecar_cannot_relay_are_left_to_kubelet() {
        let untouched = json!({
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
            "livenessProbe": {"grpc": {"port": 9090}},
            "startupProbe": {"httpGet": {"path": "/", "port": "nope"}},
            "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 8080}}},
        });
        let elsewhere = json!({
            "name": "other",
            "readinessProbe": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}},
            "livenessProbe": {"exec": {"command": ["true"]}},
            // kubelet escapes these itself; the sidecar could not send them as they are.
            "startupProbe": {"httpGet": {"path": "/health check", "port": 80}},
        });
        let odd_header = json!({
            "name": "third",
            "readinessProbe": {"httpGet": {"path": "/a<b", "port": 80}},
            "livenessProbe": {"httpGet": {"path": "/", "port": 80,
                "httpHeaders": [{"name": "x-bad", "value": "a\u{7}b"}]}},
        });
        let mut containers = vec![untouched.clone(), elsewhere.clone(), odd_header.clone()];
        assert!(rewrite(&mut containers, 15000).is_empty());
        assert_eq!(containers, [untouched, elsewhere, odd_header]);
    }
}
