use std::path::PathBuf;

use super::*;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

fn yaml(crd: &Value) -> String {
    format!(
        "# Generated from ficus_config::raw; do not edit. Regenerate with\n\
         # cargo test -p ficus-control write_crds -- --ignored\n{}",
        yaml_serde::to_string(crd).expect("a CRD serializes")
    )
}

#[test]
fn the_committed_crds_are_the_generated_ones() {
    for (file, crd) in crds() {
        let path = deploy_dir().join(&file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run the write_crds test", path.display()));
        assert!(
            committed == yaml(&crd),
            "{} differs from the CRD generated from ficus_config::raw; regenerate with \
             `cargo test -p ficus-control write_crds -- --ignored`",
            path.display()
        );
    }
}

/// Rewrites `deploy/crds/` from the Rust types.
#[test]
#[ignore = "writes deploy/crds/; run it after changing ficus_config::raw"]
fn write_crds() {
    std::fs::create_dir_all(deploy_dir()).unwrap();
    for (file, crd) in crds() {
        std::fs::write(deploy_dir().join(file), yaml(&crd)).unwrap();
    }
}

/// Walks every subschema, calling `check` with its JSON path.
fn walk(schema: &Value, path: &str, check: &mut dyn FnMut(&str, &Map<String, Value>)) {
    let Some(map) = schema.as_object() else {
        panic!("{path}: a schema is an object, found {schema}");
    };
    check(path, map);
    if let Some(Value::Object(properties)) = map.get("properties") {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), check);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = map.get(key) {
            walk(child, &format!("{path}[{key}]"), check);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(list)) = map.get(key) {
            for (index, child) in list.iter().enumerate() {
                walk(child, &format!("{path}.{key}[{index}]"), check);
            }
        }
    }
}

#[test]
fn schemas_are_structural() {
    for (file, crd) in crds() {
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(schema, &file, &mut |path, map| {
            for banned in ["$ref", "$schema", "definitions", "$defs", "const"] {
                assert!(!map.contains_key(banned), "{path}: {banned}");
            }
            assert_ne!(
                map.get("default"),
                Some(&Value::Null),
                "{path}: null default"
            );
            let preserve = map.contains_key("x-kubernetes-preserve-unknown-fields");
            match map.get("type") {
                Some(Value::String(kind)) => {
                    if kind == "array" {
                        assert!(map.contains_key("items"), "{path}: array without items");
                    }
                    if map.contains_key("properties") {
                        assert_eq!(kind, "object", "{path}");
                    }
                }
                None if preserve => {}
                other => panic!("{path}: every field needs one type, found {other:?}"),
            }
            assert!(
                !(map.contains_key("properties") && map.contains_key("additionalProperties")),
                "{path}: properties and additionalProperties are exclusive"
            );
            if let Some(Value::String(format)) = map.get("format") {
                assert!(
                    FORMATS.contains(&format.as_str()),
                    "{path}: format {format}"
                );
            }
        });
    }
}

#[test]
fn the_schemas_follow_the_serde_types() {
    let crds: Vec<Value> = crds().into_iter().map(|(_, crd)| crd).collect();
    let spec = |index: usize| {
        crds[index]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            .clone()
    };
    let mesh = spec(0);
    assert_eq!(
        mesh["properties"]["mtls"]["properties"]["mode"]["enum"],
        json!(["DISABLE", "PERMISSIVE", "STRICT"])
    );
    assert_eq!(mesh["properties"]["mtls"]["nullable"], true);
    let backend = spec(1);
    assert_eq!(
        backend["properties"]["protocol"]["enum"],
        json!(["http", "http2", "grpc", "tcp"])
    );
    assert_eq!(
        backend["properties"]["endpoints"]["items"]["required"],
        json!(["address"])
    );
    let policy = spec(2);
    assert!(policy["properties"]["outlierDetection"]["properties"]
        .get("consecutive5xx")
        .is_some());
    assert_eq!(policy["required"], json!(["targetRef"]));
    assert!(policy["description"]
        .as_str()
        .unwrap()
        .contains("how clients talk to one Backend"));
    let authz = spec(3);
    assert_eq!(
        authz["properties"]["action"]["enum"],
        json!(["ALLOW", "DENY"])
    );
    assert_eq!(crds[0]["spec"]["scope"], "Cluster");
    assert_eq!(crds[1]["spec"]["scope"], "Namespaced");
    assert_eq!(
        crds[3]["metadata"]["name"],
        "authorizationpolicies.ficus.dev"
    );
}

/// Checks `value` against a structural schema the way the API server would (types, enums,
/// required fields, bounds) and also reports the unknown fields it would prune, since the
/// Ficus loader rejects them. A schema with neither `properties` nor `additionalProperties`
/// (like `metadata` here) accepts any object.
fn check(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null"));
        }
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let fits = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !fits {
        errors.push(format!("{path}: {value} is not of type {kind}"));
        return;
    }
    if let (Some(number), Some(minimum)) = (value.as_f64(), schema["minimum"].as_f64()) {
        if number < minimum {
            errors.push(format!("{path}: {number} < {minimum}"));
        }
    }
    if let (Some(number), Some(maximum)) = (value.as_f64(), schema["maximum"].as_f64()) {
        if number > maximum {
            errors.push(format!("{path}: {number} > {maximum}"));
        }
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(required.as_str().unwrap_or("")) {
                    errors.push(format!("{path}: {required} is required"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional, properties) {
                    (Some(child_schema), _, _) => check(child, child_schema, &child_path, errors),
                    (None, Some(child_schema), _) => {
                        check(child, child_schema, &child_path, errors);
                    }
                    (None, None, Some(_)) => errors.push(format!("{child_path}: unknown field")),
                    (None, None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check(item, &schema["items"], &format!("{path}[{index}]"), errors);
            }
        }
        _ => {}
    }
}

/// Errors of `document` against the CRD of its kind (None: not a ficus.dev kind).
fn check_document(document: &Value) -> Option<Vec<String>> {
    let kind = document["kind"].as_str()?;
    if document["apiVersion"] != "ficus.dev/v1alpha1" {
        return None;
    }
    let (_, crd) = crds()
        .into_iter()
        .find(|(_, crd)| crd["spec"]["names"]["kind"] == kind)?;
    let mut errors = Vec::new();
    check(
        document,
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        kind,
        &mut errors,
    );
    Some(errors)
}

fn documents(path: &std::path::Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

#[test]
fn the_example_configs_are_valid_custom_resources() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("config/examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("deploy/examples/mesh.yaml"));
    let mut checked = 0;
    for file in files {
        for document in documents(&file) {
            if let Some(errors) = check_document(&document) {
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} ficus.dev documents found");
}

#[test]
fn the_schemas_refuse_what_the_loader_refuses() {
    let bad = [
        (
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
                   "metadata": {"name": "b"},
                   "spec": {"protocl": "http", "endpoints": [{"address": "127.0.0.1:1"}]}}),
            "Backend.spec.protocl: unknown field",
        ),
        (
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
                   "metadata": {"name": "b"},
                   "spec": {"protocol": "udp", "endpoints": [{"address": "127.0.0.1:1"}]}}),
            "Backend.spec.protocol: \"udp\" is not one of",
        ),
        (
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "TrafficPolicy",
                   "metadata": {"name": "p"}, "spec": {"targetRef": {"kind": "Backend"}}}),
            "TrafficPolicy.spec.targetRef: \"name\" is required",
        ),
        (
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "p"}}),
            "AuthorizationPolicy: \"spec\" is required",
        ),
        (
            json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "TrafficPolicy",
                   "metadata": {"name": "p"}, "spec": {"targetRef": {"kind": "Backend",
                   "name": "b"}, "connectionPool": {"maxRequests": -1}}}),
            "TrafficPolicy.spec.connectionPool.maxRequests: -1 < 0",
        ),
    ];
    for (document, expected) in bad {
        let errors = check_document(&document).unwrap();
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {errors:?}"
        );
        // With a valid Backend `b` beside it, the document's own fault is all that is wrong.
        let backend = json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
            "metadata": {"name": "b"}, "spec": {"endpoints": [{"address": "127.0.0.1:1"}]}});
        let text = if document["kind"] == "Backend" {
            serde_json::to_string(&document).unwrap()
        } else {
            format!("{backend}\n---\n{document}")
        };
        assert!(
            ficus_config::parse_str("bad.yaml", &text).is_err(),
            "the loader refuses it too: {text}"
        );
    }
}
