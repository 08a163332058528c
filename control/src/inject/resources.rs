//! The injected containers' resources: requests, limits, and a Guaranteed pod kept Guaranteed.
//!
//! Both injected containers get limits: a namespace `ResourceQuota` on `limits.cpu` or
//! `limits.memory` refuses any pod with a container that has none. The sidecar's come from
//! `ficus.dev/proxy-cpu-limit` and `ficus.dev/proxy-memory-limit`; without them they are
//! [`DEFAULT_PROXY_CPU_LIMIT`] and [`DEFAULT_PROXY_MEMORY_LIMIT`] (raised to the request when
//! `ficus.dev/proxy-cpu` or `ficus.dev/proxy-memory` asks for more).
//!
//! Kubernetes gives a pod the Guaranteed QoS class (evicted last; exclusive cores under the
//! static CPU manager) only when every container, init containers included, has CPU and
//! memory limits equal to its requests; one container with `limits` above `requests` makes
//! the pod Burstable. So when the pod's own containers are all Guaranteed, the sidecar's
//! limits default to its requests, and `ficus-init` asks for as much as its limits. A limit
//! annotation still wins (with a warning that the pod becomes Burstable).

use serde_json::{json, Value};

use super::annotations::{Annotations, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT};
use super::quantity::Quantity;

/// The sidecar's CPU limit without `ficus.dev/proxy-cpu-limit` (as Istio's).
pub const DEFAULT_PROXY_CPU_LIMIT: &str = "2";
/// The sidecar's memory limit without `ficus.dev/proxy-memory-limit` (as Istio's).
pub const DEFAULT_PROXY_MEMORY_LIMIT: &str = "1Gi";
/// `ficus-init`'s requests: it runs iptables once and exits.
const INIT_REQUESTS: (&str, &str) = ("10m", "16Mi");
/// `ficus-init`'s limits.
const INIT_LIMITS: (&str, &str) = ("100m", "64Mi");

/// `ficus-init`'s `resources`; in a Guaranteed pod its requests are its limits.
pub fn init_resources(guaranteed: bool) -> Value {
    let (cpu, memory) = if guaranteed {
        INIT_LIMITS
    } else {
        INIT_REQUESTS
    };
    json!({
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": INIT_LIMITS.0, "memory": INIT_LIMITS.1},
    })
}

/// The sidecar's `resources`: requests from the annotations, each limit from its annotation,
/// else the request in a Guaranteed pod, else the default (or the request, when higher).
pub fn sidecar_resources(annotations: &Annotations, guaranteed: bool) -> Value {
    let limit = |annotated: &Option<Quantity>, request: &Quantity, default: &str| {
        match annotated {
            Some(limit) => limit.clone(),
            None if guaranteed => request.clone(),
            // The defaults are constants of the grammar (tested below).
            None => Quantity::parse(default)
                .expect("a default limit is a valid quantity")
                .max(request.clone()),
        }
    };
    json!({
        "requests": {"cpu": annotations.proxy_cpu, "memory": annotations.proxy_memory},
        "limits": {
            "cpu": limit(&annotations.proxy_cpu_limit, &annotations.proxy_cpu, DEFAULT_PROXY_CPU_LIMIT),
            "memory": limit(
                &annotations.proxy_memory_limit,
                &annotations.proxy_memory,
                DEFAULT_PROXY_MEMORY_LIMIT,
            ),
        },
    })
}

/// The limit annotations that make a Guaranteed pod Burstable: those set above the request.
pub fn limits_above_requests(annotations: &Annotations) -> Vec<&'static str> {
    let above = |limit: &Option<Quantity>, request: &Quantity| limit.as_ref() > Some(request);
    let mut names = Vec::new();
    if above(&annotations.proxy_cpu_limit, &annotations.proxy_cpu) {
        names.push(PROXY_CPU_LIMIT);
    }
    if above(&annotations.proxy_memory_limit, &annotations.proxy_memory) {
        names.push(PROXY_MEMORY_LIMIT);
    }
    names
}

/// Whether `containers` (all of a pod's, init containers included) would make it Guaranteed:
/// each has CPU and memory limits, and requests equal to them. A missing request counts as
/// equal (the API server defaults it to the limit); a quantity this module cannot read
/// (`1e3`) counts as different unless both are written the same.
pub fn guaranteed(containers: &[Value]) -> bool {
    !containers.is_empty()
        && containers.iter().all(|container| {
            ["cpu", "memory"].into_iter().all(|resource| {
                let get = |kind: &str| {
                    container
                        .get("resources")?
                        .get(kind)?
                        .get(resource)
                        .filter(|v| !v.is_null())
                };
                match (get("limits"), get("requests")) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(limit), Some(request)) => {
                        limit == request
                            || matches!(
                                (value(limit), value(request)),
                                (Some(limit), Some(request)) if limit == request
                            )
                    }
                }
            })
        })
}

/// A quantity as a manifest may hold it: a string, or a plain number (YAML `cpu: 1`).
fn value(quantity: &Value) -> Option<Quantity> {
    match quantity {
        Value::String(text) => Quantity::parse(text),
        Value::Number(number) => Quantity::parse(&number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: Value) -> Annotations {
        Annotations::read(Some(&pairs)).unwrap()
    }

    fn container(resources: Value) -> Value {
        json!({"name": "app", "image": "app", "resources": resources})
    }

    #[test]
    fn the_defaults_parse() {
        for default in [
            DEFAULT_PROXY_CPU_LIMIT,
            DEFAULT_PROXY_MEMORY_LIMIT,
            INIT_REQUESTS.0,
            INIT_REQUESTS.1,
            INIT_LIMITS.0,
            INIT_LIMITS.1,
        ] {
            assert!(Quantity::parse(default).is_some(), "{default}");
        }
    }

    #[test]
    fn limits_default_and_follow_annotations() {
        let resources = sidecar_resources(&annotations(json!({})), false);
        assert_eq!(
            resources,
            json!({"requests": {"cpu": "100m", "memory": "64Mi"},
                   "limits": {"cpu": "2", "memory": "1Gi"}})
        );
        let resources = sidecar_resources(
            &annotations(json!({"ficus.dev/proxy-cpu-limit": "500m",
                                "ficus.dev/proxy-memory-limit": "256Mi"})),
            false,
        );
        assert_eq!(
            resources["limits"],
            json!({"cpu": "500m", "memory": "256Mi"})
        );
        // A request above the default limit raises the limit rather than failing the pod.
        let resources = sidecar_resources(
            &annotations(json!({"ficus.dev/proxy-cpu": "3", "ficus.dev/proxy-memory": "2Gi"})),
            false,
        );
        assert_eq!(resources["limits"], json!({"cpu": "3", "memory": "2Gi"}));
    }

    #[test]
    fn a_guaranteed_pod_gets_limits_equal_to_requests() {
        let resources =
            sidecar_resources(&annotations(json!({"ficus.dev/proxy-cpu": "250m"})), true);
        assert_eq!(resources["limits"], resources["requests"]);
        assert_eq!(
            resources["limits"],
            json!({"cpu": "250m", "memory": "64Mi"})
        );
        assert_eq!(
            init_resources(true)["requests"],
            init_resources(true)["limits"]
        );
        assert_ne!(
            init_resources(false)["requests"],
            init_resources(false)["limits"]
        );

        let explicit = annotations(json!({"ficus.dev/proxy-memory-limit": "128Mi",
                                          "ficus.dev/proxy-cpu-limit": "100m"}));
        assert_eq!(
            sidecar_resources(&explicit, true)["limits"],
            json!({"cpu": "100m", "memory": "128Mi"}),
            "an annotation wins"
        );
        assert_eq!(limits_above_requests(&explicit), [PROXY_MEMORY_LIMIT]);
        assert!(limits_above_requests(&annotations(json!({}))).is_empty());
    }

    #[test]
    fn guaranteed_needs_every_container_at_its_limits() {
        let exact = container(json!({"requests": {"cpu": "1", "memory": "1Gi"},
                                     "limits": {"cpu": "1000m", "memory": "1024Mi"}}));
        let limits_only = container(json!({"limits": {"cpu": 1, "memory": "128Mi"}}));
        let same_text = container(json!({"requests": {"cpu": "1e3", "memory": "1Gi"},
                                         "limits": {"cpu": "1e3", "memory": "1Gi"}}));
        assert!(guaranteed(std::slice::from_ref(&exact)));
        assert!(guaranteed(&[limits_only.clone(), exact.clone(), same_text]));

        let burstable = container(json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                                         "limits": {"cpu": "1", "memory": "1Gi"}}));
        let no_memory_limit = container(json!({"limits": {"cpu": "1"}}));
        let unreadable = container(json!({"requests": {"cpu": "1e3", "memory": "1Gi"},
                                          "limits": {"cpu": "1000", "memory": "1Gi"}}));
        let best_effort = json!({"name": "app", "image": "app"});
        for other in [burstable, no_memory_limit, unreadable, best_effort] {
            assert!(!guaranteed(&[exact.clone(), other.clone()]), "{other}");
        }
        assert!(!guaranteed(&[]));
    }
}
