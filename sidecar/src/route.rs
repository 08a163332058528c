//! Route tables: which rule of which service a request takes.
//!
//! A service's table is built when a config is swapped in: every `matches[]` entry of every
//! rule of every HTTPRoute naming the service is compiled and sorted once in Gateway API
//! precedence order ([`ficus_config::precedence`], which the config's warnings about shadowed
//! matches rank by too), so a request walks one flat list and takes the first hit.
pub mod host;
pub mod matcher;
pub mod weighted;

use std::sync::Arc;

use http::{HeaderMap, Method};

pub use ficus_config::precedence::{Precedence, Tie};
pub use host::ServiceName;
pub use matcher::CompiledMatch;
pub use weighted::WeightedSet;

/// One compiled match pointing at the action of its rule.
#[derive(Debug)]
pub struct RouteEntry<A> {
    /// The conditions (one compiled match, shared by the tables of every service its route
    /// names: a route attached to 32 services would otherwise hold 32 copies of each).
    pub matcher: Arc<CompiledMatch>,
    /// What to do when they hold (shared by all matches of a rule).
    pub action: Arc<A>,
}

/// An entry with its rank: precedence, then the tie-breaker.
pub type RankedEntry<A> = (Precedence, Tie, RouteEntry<A>);

/// A service's compiled, precedence-ordered route list.
#[derive(Debug)]
pub struct RouteTable<A> {
    entries: Vec<RouteEntry<A>>,
}

impl<A> RouteTable<A> {
    /// Sorts entries by Gateway API precedence, ties broken by [`Tie`].
    pub fn new(mut entries: Vec<RankedEntry<A>>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        // Collected in place, the ranked entries' buffer (several times larger) would stay.
        let mut entries: Vec<_> = entries.into_iter().map(|(_, _, entry)| entry).collect();
        entries.shrink_to_fit();
        Self { entries }
    }

    /// The first entry whose conditions hold. The path is matched without its segments' `;`
    /// parameters, as authorization matches it ([`ficus_config::path::without_parameters`]).
    pub fn find(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&RouteEntry<A>> {
        let path = ficus_config::path::without_parameters(path);
        self.entries
            .iter()
            .find(|entry| entry.matcher.matches(method, &path, query, headers))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three routes on service `shop/web` whose first matches are spelled differently but
    /// select the same requests; `c` is the oldest.
    const ROUTES: &str = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: web, namespace: shop}
spec: {endpoints: [{address: 127.0.0.1:9001}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: shop}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {value: /api/}, method: GET, headers: [{name: X-A, value: '1'}, {name: x-b, value: '2'}]}]
    backendRefs: [{name: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: shop}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {value: /api}, method: GET, headers: [{name: x-b, value: '2'}, {name: x-a, value: '1'}]}]
    backendRefs: [{name: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: c, namespace: shop, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {value: /api}, method: GET, headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]}]
    backendRefs: [{name: web}]
  - backendRefs: [{name: web}]
";

    /// The config's warnings and the sidecar's table agree: matches the config calls identical
    /// select the same requests here, and the one it names as the winner is the one taken.
    #[test]
    fn warnings_name_the_match_the_table_takes() {
        let config = ficus_config::parse_str("routes.yaml", ROUTES).expect("valid");
        let mut entries = Vec::new();
        for route in &config.http_routes {
            let label = route.key.to_string();
            for (rule_index, rule) in route.rules.iter().enumerate() {
                for (match_index, m) in rule.matches.iter().enumerate() {
                    let entry = RouteEntry {
                        matcher: Arc::new(CompiledMatch::new(m)),
                        action: Arc::new(format!("{label} {rule_index} {match_index}")),
                    };
                    let tie = Tie::new(route.created.as_deref(), &label, rule_index, match_index);
                    entries.push((m.precedence(), tie, entry));
                }
            }
        }
        let table = RouteTable::new(entries);
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "1".parse().expect("valid"));
        headers.insert("x-b", "2".parse().expect("valid"));
        let taken = |method: &Method, path: &str, headers: &HeaderMap| {
            table
                .find(method, path, None, headers)
                .map(|entry| entry.action.as_str().to_owned())
        };
        // `;` parameters are not part of the path matched (as for authorization).
        for path in [
            "/api",
            "/api/",
            "/api/x",
            "/api;v=2",
            "/api;v=2/x",
            "/api%3Bv/x",
        ] {
            assert_eq!(
                taken(&Method::GET, path, &headers).as_deref(),
                Some("shop/c 0 0"),
                "{path}"
            );
        }
        assert_eq!(
            taken(&Method::POST, "/api", &headers).as_deref(),
            Some("shop/c 1 0")
        );

        let firsts: Vec<_> = config
            .http_routes
            .iter()
            .map(|r| &r.rules[0].matches[0])
            .collect();
        let compiled: Vec<_> = firsts.iter().map(|m| CompiledMatch::new(m)).collect();
        for m in &firsts[1..] {
            assert_eq!(m.conditions(), firsts[0].conditions());
        }
        let requests = [
            (Method::GET, "/api/x", headers.clone()),
            (Method::GET, "/apix", headers.clone()),
            (Method::GET, "/api", HeaderMap::new()),
            (Method::PUT, "/api", headers.clone()),
        ];
        for (method, path, headers) in &requests {
            let first = compiled[0].matches(method, path, None, headers);
            assert!(compiled
                .iter()
                .all(|c| c.matches(method, path, None, headers) == first));
        }

        let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        for (warning, loser) in warnings.iter().zip(["shop/a", "shop/b"]) {
            assert!(
                warning.contains(&format!("HTTPRoute {loser}: spec.rules[0]: "))
                    && warning.contains("HTTPRoute shop/c spec.rules[0].matches[0]"),
                "{warning}"
            );
        }
    }
}
