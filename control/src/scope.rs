//! Which documents a sidecar receives.
//!
//! A sidecar gets what it needs to route and to guard its own workload, not the whole mesh:
//! - the Mesh document;
//! - Backends, HTTPRoutes, TCPRoutes and TrafficPolicies of its own namespace and of the
//!   namespaces it declares it calls (`reach`; an empty list means every namespace), except
//!   routes of another namespace attached only to services outside it (GAMMA consumer routes:
//!   they route their own namespace's calls alone);
//! - any Backend those routes reference in another namespace (a backendRef, a mirror, or a
//!   TCPRoute's parentRef), and that Backend's TrafficPolicy; TrafficPolicies that target an
//!   HTTPRoute go with the route;
//! - the AuthorizationPolicies that protect its own workload (target Backend named like the
//!   workload, or whose endpoints carry the workload's SPIFFE identity).
//!
//! The result always validates on its own: every reference it contains is closed over.

use std::collections::BTreeSet;

use serde_json::Value;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The sidecar's namespace.
    pub namespace: String,
    /// The sidecar's workload (service account).
    pub workload: String,
    /// Other namespaces it calls; empty: all.
    pub reach: Vec<String>,
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn namespace(doc: &Value) -> &str {
    doc["metadata"]["namespace"].as_str().unwrap_or("default")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

/// `(namespace, name)` of every Backend a route document references: its rules' backendRefs
/// and mirrors, and a TCPRoute's parentRefs (its listening Backend, which may live in another
/// namespace; an HTTPRoute's parentRefs name Services, which need no Backend).
fn backend_refs(doc: &Value) -> Vec<(String, String)> {
    let own = namespace(doc);
    let mut refs = Vec::new();
    let mut push = |r: &Value| {
        if let Some(name) = r["name"].as_str() {
            let ns = r["namespace"].as_str().unwrap_or(own);
            refs.push((ns.to_owned(), name.to_owned()));
        }
    };
    if kind(doc) == "TCPRoute" {
        for parent in doc["spec"]["parentRefs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            push(parent);
        }
    }
    let rules = doc["spec"]["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for rule in rules {
        for r in rule["backendRefs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            push(r);
        }
        for filter in rule["filters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            push(&filter["requestMirror"]["backendRef"]);
        }
    }
    refs
}

/// The target Backend `(namespace, name)` of a policy document.
fn target(doc: &Value) -> (String, String) {
    let name = doc["spec"]["targetRef"]["name"].as_str().unwrap_or("");
    (namespace(doc).to_owned(), name.to_owned())
}

/// Whether a Backend document is this workload.
fn is_own_backend(doc: &Value, scope: &Scope) -> bool {
    if namespace(doc) != scope.namespace {
        return false;
    }
    let identity = format!("/ns/{}/sa/{}", scope.namespace, scope.workload);
    name(doc) == scope.workload
        || doc["spec"]["serviceAccount"].as_str() == Some(&scope.workload)
        || doc["spec"]["endpoints"].as_array().is_some_and(|eps| {
            eps.iter().any(|e| {
                e["identity"]
                    .as_str()
                    .is_some_and(|i| i.ends_with(&identity))
            })
        })
}

/// The documents of `all` that `scope` receives, in the order of `all`.
pub fn select(all: &[Value], scope: &Scope) -> Vec<Value> {
    let visible = |ns: &str| {
        ns == scope.namespace || scope.reach.is_empty() || scope.reach.iter().any(|r| r == ns)
    };
    // A route routes the calls of its own namespace; one attached to a service of its own
    // namespace (a producer route) also those of every namespace that sees it. One attached
    // only to services elsewhere (a consumer route) goes to its own namespace alone.
    let route_visible = |doc: &Value| {
        let own = namespace(doc);
        own == scope.namespace
            || (visible(own)
                && doc["spec"]["parentRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|parent| parent["namespace"].as_str().unwrap_or(own) == own))
    };
    let shown = |doc: &Value| match kind(doc) {
        "Backend" => visible(namespace(doc)),
        "HTTPRoute" | "TCPRoute" => route_visible(doc),
        _ => false,
    };
    let mut backends: BTreeSet<(String, String)> = BTreeSet::new();
    for doc in all.iter().filter(|d| shown(d)) {
        if kind(doc) == "Backend" {
            backends.insert((namespace(doc).to_owned(), name(doc).to_owned()));
        } else {
            backends.extend(backend_refs(doc));
        }
    }
    let own_backends: BTreeSet<(String, String)> = all
        .iter()
        .filter(|d| kind(d) == "Backend" && is_own_backend(d, scope))
        .map(|d| (namespace(d).to_owned(), name(d).to_owned()))
        .collect();
    backends.extend(own_backends.iter().cloned());
    let sent_routes: BTreeSet<(String, String)> = all
        .iter()
        .filter(|d| kind(d) == "HTTPRoute" && route_visible(d))
        .map(|d| (namespace(d).to_owned(), name(d).to_owned()))
        .collect();
    all.iter()
        .filter(|doc| match kind(doc) {
            "Mesh" => true,
            "Backend" => backends.contains(&(namespace(doc).to_owned(), name(doc).to_owned())),
            "HTTPRoute" | "TCPRoute" => route_visible(doc),
            // A route's TrafficPolicy (its rate limit) goes wherever the route goes.
            "TrafficPolicy" if doc["spec"]["targetRef"]["kind"] == "HTTPRoute" => {
                let route = (namespace(doc).to_owned(), target(doc).1);
                sent_routes.contains(&route)
            }
            "TrafficPolicy" => backends.contains(&target(doc)),
            "AuthorizationPolicy" => own_backends.contains(&target(doc)),
            _ => true,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use ficus_config::wire;
    use serde_json::json;

    use super::*;

    fn backend(ns: &str, name: &str) -> Value {
        json!({"kind": "Backend", "metadata": {"namespace": ns, "name": name},
               "spec": {"endpoints": [{"address": "127.0.0.1:1"}]}})
    }

    fn names(docs: &[Value]) -> Vec<String> {
        docs.iter()
            .map(|d| format!("{} {}/{}", kind(d), namespace(d), name(d)))
            .collect()
    }

    #[test]
    fn scoped_to_reach_with_referenced_backends_and_own_policy() {
        let all = vec![
            json!({"kind": "Mesh", "metadata": {"namespace": "default", "name": "default"}}),
            backend("shop", "monolith"),
            backend("shop", "payments-v2"),
            backend("billing", "ledger"),
            backend("hr", "people"),
            json!({"kind": "HTTPRoute", "metadata": {"namespace": "shop", "name": "shop"},
                   "spec": {"rules": [{"backendRefs": [{"name": "monolith"}, {"name": "ledger", "namespace": "billing"}]}]}}),
            json!({"kind": "TrafficPolicy", "metadata": {"namespace": "billing", "name": "ledger"},
                   "spec": {"targetRef": {"kind": "Backend", "name": "ledger"}}}),
            json!({"kind": "TrafficPolicy", "metadata": {"namespace": "hr", "name": "people"},
                   "spec": {"targetRef": {"kind": "Backend", "name": "people"}}}),
            json!({"kind": "TrafficPolicy", "metadata": {"namespace": "shop", "name": "limit"},
                   "spec": {"targetRef": {"kind": "HTTPRoute", "name": "shop"}}}),
            json!({"kind": "AuthorizationPolicy", "metadata": {"namespace": "shop", "name": "p"},
                   "spec": {"targetRef": {"kind": "Backend", "name": "payments-v2"}}}),
            json!({"kind": "AuthorizationPolicy", "metadata": {"namespace": "shop", "name": "m"},
                   "spec": {"targetRef": {"kind": "Backend", "name": "monolith"}}}),
        ];
        let scope = Scope {
            namespace: "shop".into(),
            workload: "payments-v2".into(),
            reach: vec!["none".into()],
        };
        assert_eq!(
            names(&select(&all, &scope)),
            [
                "Mesh default/default",
                "Backend shop/monolith",
                "Backend shop/payments-v2",
                "Backend billing/ledger",
                "HTTPRoute shop/shop",
                "TrafficPolicy billing/ledger",
                "TrafficPolicy shop/limit",
                "AuthorizationPolicy shop/p",
            ]
        );
        let everything = Scope {
            reach: vec![],
            ..scope
        };
        let all_names = names(&select(&all, &everything));
        assert!(all_names.contains(&"Backend hr/people".to_owned()));
        assert!(
            !all_names.contains(&"AuthorizationPolicy shop/m".to_owned()),
            "not its inbound policy"
        );
    }

    /// A Backend names the service account of its pods when that is not its name: their
    /// sidecars get its AuthorizationPolicy even while it lists no endpoint.
    #[test]
    fn a_backend_naming_our_service_account_is_ours() {
        let all = vec![
            json!({"kind": "Backend", "metadata": {"namespace": "shop", "name": "payments"},
                   "spec": {"endpoints": [], "serviceAccount": "payments-sa"}}),
            json!({"kind": "AuthorizationPolicy", "metadata": {"namespace": "shop", "name": "p"},
                   "spec": {"targetRef": {"kind": "Backend", "name": "payments"}}}),
        ];
        let scope = |workload: &str| Scope {
            namespace: "shop".into(),
            workload: workload.into(),
            reach: vec![],
        };
        assert!(names(&select(&all, &scope("payments-sa")))
            .contains(&"AuthorizationPolicy shop/p".to_owned()));
        assert!(!names(&select(&all, &scope("other")))
            .contains(&"AuthorizationPolicy shop/p".to_owned()));
    }

    /// GAMMA: a route in another namespace than its service's (a consumer route) routes only
    /// its own namespace's calls, so it goes to that namespace's sidecars alone; the
    /// service's own (producer) routes go to every sidecar that sees the namespace.
    #[test]
    fn a_consumer_route_goes_to_its_own_namespace_only() {
        let backend = |ns: &str, name: &str| {
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
                   "metadata": {"namespace": ns, "name": name},
                   "spec": {"endpoints": [{"address": "127.0.0.1:1"}]}})
        };
        let route = |ns: &str, name: &str, backend: &str| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"namespace": ns, "name": name},
                   "spec": {"parentRefs": [{"kind": "Service", "name": "payments", "namespace": "shop"}],
                            "rules": [{"backendRefs": [{"name": backend}]}]}})
        };
        let all = vec![
            backend("shop", "monolith"),
            backend("evil", "collector"),
            route("shop", "payments", "monolith"),
            route("evil", "takeover", "collector"),
            // The consumer route's rate limit goes where the route goes, no further.
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "TrafficPolicy",
                   "metadata": {"namespace": "evil", "name": "takeover-limit"},
                   "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                          "name": "takeover"},
                            "rateLimit": {"requests": 10, "per": "1s"}}}),
        ];
        let selected = |namespace: &str| {
            let scope = Scope {
                namespace: namespace.into(),
                workload: "app".into(),
                reach: vec![],
            };
            let selected = select(&all, &scope);
            ficus_config::parse_str("scoped.yaml", &wire::encode_documents(&selected))
                .unwrap_or_else(|errors| panic!("{namespace}'s scope is valid: {errors}"));
            names(&selected)
        };
        let web = selected("web");
        assert!(
            web.contains(&"HTTPRoute shop/payments".to_owned()),
            "{web:?}"
        );
        assert!(
            !web.contains(&"HTTPRoute evil/takeover".to_owned()),
            "{web:?}"
        );
        assert!(
            !web.contains(&"TrafficPolicy evil/takeover-limit".to_owned()),
            "{web:?}"
        );
        let evil = selected("evil");
        assert!(
            evil.contains(&"HTTPRoute evil/takeover".to_owned()),
            "{evil:?}"
        );
        assert!(
            evil.contains(&"TrafficPolicy evil/takeover-limit".to_owned()),
            "{evil:?}"
        );
    }

    #[test]
    fn tcp_route_brings_its_parent_backend_from_another_namespace() {
        let all = vec![
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
                   "metadata": {"namespace": "data", "name": "db"},
                   "spec": {"protocol": "tcp", "listen": "127.0.0.1:15432",
                            "endpoints": [{"address": "127.0.0.1:5432"}]}}),
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
                   "metadata": {"namespace": "shop", "name": "db-replica"},
                   "spec": {"protocol": "tcp", "listen": "127.0.0.1:15433",
                            "endpoints": [{"address": "127.0.0.1:5433"}]}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
                   "metadata": {"namespace": "shop", "name": "db"},
                   "spec": {"parentRefs": [{"kind": "Backend", "name": "db", "namespace": "data"}],
                            "rules": [{"backendRefs": [{"name": "db-replica"}]}]}}),
        ];
        ficus_config::parse_str("all.yaml", &wire::encode_documents(&all))
            .unwrap_or_else(|errors| panic!("the whole config is valid: {errors}"));
        let scope = Scope {
            namespace: "shop".into(),
            workload: "web".into(),
            reach: vec!["shop".into()],
        };
        let selected = select(&all, &scope);
        assert!(
            names(&selected).contains(&"Backend data/db".to_owned()),
            "{:?}",
            names(&selected)
        );
        ficus_config::parse_str("scoped.yaml", &wire::encode_documents(&selected))
            .unwrap_or_else(|errors| panic!("the scoped config validates on its own: {errors}"));
    }
}
