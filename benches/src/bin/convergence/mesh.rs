//! The config the bench applies: `services` Backends, each with an HTTPRoute, in namespace
//! `bench`. The route of the first service sets a response header to the revision, so every
//! apply changes exactly one document, and every sidecar's scoped snapshot with it (sidecars
//! subscribe with an empty `reach`, so they see every route of the mesh).

use std::fmt::Write;

/// The namespace of every document and every simulated sidecar.
pub const NAMESPACE: &str = "bench";

/// The name of service `index`; simulated sidecars of workload `index` own its Backend.
pub fn service(index: usize) -> String {
    format!("svc-{index:03}")
}

/// The YAML document stream for `revision`.
pub fn config(services: usize, revision: u64) -> String {
    let mut out = String::new();
    for index in 0..services {
        let name = service(index);
        let port = 20_000 + index;
        // `write!` to a String cannot fail.
        let _ = write!(
            out,
            r#"---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  protocol: http
  endpoints: [{{address: "127.0.0.1:{port}"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{name: {name}}}]
  rules:
  - backendRefs: [{{name: {name}}}]
"#
        );
        if index == 0 {
            let _ = write!(
                out,
                r#"    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-config-revision, value: "{revision}"}}]
"#
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_changes_one_document_per_revision() {
        let one = ficus_config::parse_str("one.yaml", &config(3, 1));
        assert!(one.is_ok(), "{:?}", one.err().map(|e| e.to_string()));
        let (a, b) = (config(3, 1), config(3, 2));
        let differing = a.lines().zip(b.lines()).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 1);
    }
}
