//! CustomResourceDefinitions of the `ficus.dev` kinds, generated from [`ficus_config::raw`].
//!
//! The `spec` schema of each kind is derived with `schemars` from the very serde types the
//! config loader parses (their doc comments become descriptions), then rewritten into a
//! Kubernetes *structural* schema: every subschema inlined (no `$ref`), `Option<T>` as
//! `nullable: true` instead of a `null` type or variant, no `additionalProperties: false`
//! (Kubernetes prunes unknown fields instead, and the loader rejects them), and only the
//! `format`s Kubernetes knows. `deploy/crds/*.yaml` are these objects; a test regenerates
//! them and fails when the committed files differ (run
//! `cargo test -p ficus-control write_crds -- --ignored` to rewrite them).
//!
//! HTTPRoute and TCPRoute are the Gateway API's own CRDs; install those from the Gateway
//! API release rather than copying them here.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use ficus_config::raw::{AuthorizationPolicySpec, BackendSpec, MeshSpec, TrafficPolicySpec};

/// The API group of Ficus's own kinds.
pub const GROUP: &str = "ficus.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// One kind's names and schema.
struct Definition {
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    /// What the kind is for (the CRD's top-level description).
    description: &'static str,
    spec: Value,
    /// Whether `spec` may be left out (a Mesh is all defaults).
    spec_optional: bool,
    /// `(name, JSON path, type)` columns for `kubectl get`.
    columns: &'static [(&'static str, &'static str, &'static str)],
}

/// The four CRDs, in the order `deploy/crds/` lists them.
pub fn crds() -> Vec<(String, Value)> {
    let definitions = [
        Definition {
            kind: "Mesh",
            plural: "meshes",
            short_names: &[],
            namespaced: false,
            description:
                "Mesh-wide settings: trust domain, mTLS mode, tracing, access logs, proxy \
                          limits. At most one (conventionally named default).",
            spec: spec_schema::<MeshSpec>(),
            spec_optional: true,
            columns: &[("mTLS", ".spec.mtls.mode", "string")],
        },
        Definition {
            kind: "Backend",
            plural: "backends",
            short_names: &["fbe"],
            namespaced: true,
            description: "The endpoints of one workload version; HTTPRoutes split traffic \
                          between Backends.",
            spec: spec_schema::<BackendSpec>(),
            spec_optional: false,
            columns: &[("Protocol", ".spec.protocol", "string")],
        },
        Definition {
            kind: "TrafficPolicy",
            plural: "trafficpolicies",
            short_names: &["ftp"],
            namespaced: true,
            description: "How clients talk to one Backend: connection pool, outlier detection, \
                          load balancing, retry budget, rate limit, fault injection.",
            spec: spec_schema::<TrafficPolicySpec>(),
            spec_optional: false,
            columns: &[("Backend", ".spec.targetRef.name", "string")],
        },
        Definition {
            kind: "AuthorizationPolicy",
            plural: "authorizationpolicies",
            short_names: &["fap"],
            namespaced: true,
            description: "Who may call one Backend (SPIFFE identities, methods, paths), enforced \
                          by the receiving sidecar.",
            spec: spec_schema::<AuthorizationPolicySpec>(),
            spec_optional: false,
            columns: &[
                ("Backend", ".spec.targetRef.name", "string"),
                ("Action", ".spec.action", "string"),
            ],
        },
    ];
    definitions
        .into_iter()
        .map(|d| (format!("{}.yaml", d.plural), crd(d)))
        .collect()
}

fn crd(definition: Definition) -> Value {
    let mut schema = json!({
        "type": "object",
        "description": definition.description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": definition.spec,
            "status": {
                "type": "object",
                "description": "Not written by Ficus yet.",
                "x-kubernetes-preserve-unknown-fields": true,
            },
        },
    });
    if !definition.spec_optional {
        schema["required"] = json!(["spec"]);
    }
    let mut columns: Vec<Value> = definition
        .columns
        .iter()
        .map(|(name, path, kind)| json!({"name": name, "jsonPath": path, "type": kind}))
        .collect();
    columns.push(json!({"name": "Age", "jsonPath": ".metadata.creationTimestamp", "type": "date"}));
    let singular = definition.kind.to_ascii_lowercase();
    let mut names = json!({
        "kind": definition.kind,
        "listKind": format!("{}List", definition.kind),
        "plural": definition.plural,
        "singular": singular,
        "categories": ["ficus"],
    });
    if !definition.short_names.is_empty() {
        names["shortNames"] = json!(definition.short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", definition.plural),
            "labels": {"app.kubernetes.io/part-of": "ficus"},
            "annotations": {
                "ficus.dev/generated-from": "ficus_config::raw (cargo test -p ficus-control write_crds -- --ignored)",
            },
        },
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": if definition.namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "additionalPrinterColumns": columns,
            }],
        },
    })
}

/// The structural OpenAPI v3 schema of `T`.
fn spec_schema<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    let schema = settings.into_generator().into_root_schema_for::<T>();
    structural(schema.to_value())
}

/// Formats Kubernetes understands; others (`uint32`, ...) are dropped.
const FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
];

/// Rewrites a schemars schema into a Kubernetes structural schema (see the module docs).
fn structural(value: Value) -> Value {
    let Value::Object(mut map) = value else {
        return value;
    };
    for key in [
        "$schema",
        "title",
        "components",
        "definitions",
        "$defs",
        "examples",
        "example",
    ] {
        map.remove(key);
    }
    // A null default is what `Option` fields get; Kubernetes would store the null.
    if map.get("default") == Some(&Value::Null) {
        map.remove("default");
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }
    if let Some(Value::String(format)) = map.get("format") {
        if !FORMATS.contains(&format.as_str()) {
            map.remove("format");
        }
    }
    // `type: [T, "null"]` → `type: T, nullable: true`.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if rest.len() < types.len() {
            map.insert("nullable".to_owned(), Value::Bool(true));
        }
        if let [single] = rest.as_slice() {
            map.insert("type".to_owned(), single.clone());
        }
    }
    // `anyOf: [S, {null}]` (an optional enum or struct) → S with `nullable: true`.
    for combinator in ["anyOf", "oneOf"] {
        if let Some(Value::Array(variants)) = map.get(combinator).cloned() {
            let (nulls, rest): (Vec<Value>, Vec<Value>) =
                variants.into_iter().partition(is_null_schema);
            if let (false, [single]) = (nulls.is_empty(), rest.as_slice()) {
                map.remove(combinator);
                if let Value::Object(inner) = single.clone() {
                    for (key, value) in inner {
                        map.entry(key).or_insert(value);
                    }
                }
                map.insert("nullable".to_owned(), Value::Bool(true));
            }
        }
    }
    // Unit variants with doc comments come as `oneOf: [{enum: [A], description}, ...]`:
    // one string enum, the variants' descriptions folded into the field's.
    for combinator in ["oneOf", "anyOf"] {
        let Some(Value::Array(variants)) = map.get(combinator) else {
            continue;
        };
        let values: Option<Vec<(Value, Option<String>)>> = variants
            .iter()
            .map(|variant| {
                let constant = variant
                    .get("const")
                    .cloned()
                    .or_else(|| match variant.get("enum") {
                        Some(Value::Array(list)) if list.len() == 1 => Some(list[0].clone()),
                        _ => None,
                    })
                    .filter(Value::is_string)?;
                let description = variant
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Some((constant, description))
            })
            .collect();
        let Some(values) = values.filter(|v| !v.is_empty()) else {
            continue;
        };
        map.remove(combinator);
        let explained: Vec<String> = values
            .iter()
            .filter_map(|(value, description)| {
                Some(format!(
                    "`{}`: {}",
                    value.as_str()?,
                    description.as_deref()?
                ))
            })
            .collect();
        if !explained.is_empty() {
            let mut description = map
                .get("description")
                .and_then(Value::as_str)
                .map_or_else(String::new, |d| format!("{d} "));
            description.push_str(&explained.join(" "));
            map.insert("description".to_owned(), Value::String(description));
        }
        map.insert("type".to_owned(), json!("string"));
        map.insert(
            "enum".to_owned(),
            Value::Array(values.into_iter().map(|(value, _)| value).collect()),
        );
    }
    if let Some(Value::Array(values)) = map.get_mut("enum") {
        let before = values.len();
        values.retain(|v| !v.is_null());
        if values.len() < before {
            map.insert("nullable".to_owned(), Value::Bool(true));
        }
    }
    if let Some(constant) = map.remove("const") {
        map.insert("enum".to_owned(), json!([constant]));
    }
    Value::Object(
        map.into_iter()
            .map(|(key, value)| {
                let value = match key.as_str() {
                    // Maps of subschemas, and subschemas: recurse.
                    "properties" => Value::Object(
                        value
                            .as_object()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(name, schema)| (name, structural(schema)))
                            .collect::<Map<String, Value>>(),
                    ),
                    "items" | "additionalProperties" | "not" => structural(value),
                    "anyOf" | "oneOf" | "allOf" => match value {
                        Value::Array(list) => {
                            Value::Array(list.into_iter().map(structural).collect())
                        }
                        other => other,
                    },
                    _ => value,
                };
                (key, value)
            })
            .collect(),
    )
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type") == Some(&json!("null"))
        || schema.get("enum") == Some(&json!([null]))
        || schema.get("const") == Some(&Value::Null)
        || schema.get("nullable") == Some(&Value::Bool(true))
            && schema.as_object().is_some_and(|m| m.len() == 1)
}

#[cfg(test)]
mod tests;
