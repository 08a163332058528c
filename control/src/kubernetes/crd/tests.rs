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
