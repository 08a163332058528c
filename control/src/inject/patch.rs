//! RFC 6902 JSON Patch from an object to its changed form, as admission webhooks answer.
//!
//! Objects are compared member by member (so a patch never replaces `metadata` or `spec`
//! wholesale and leaves fields other admission plugins set alone); any other differing value
//! (a list, a string) is replaced whole. `inject` only touches `spec.initContainers`,
//! `spec.volumes` and, when it rewrites probes, `spec.containers`, so a patch is two or three
//! operations.

use serde_json::{json, Value};

/// The operations that turn `from` into `to` (empty when they are equal).
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut operations = Vec::new();
    diff_at(from, to, &mut String::new(), &mut operations);
    operations
}

fn diff_at(from: &Value, to: &Value, path: &mut String, operations: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let length = path.len();
                push_token(path, key);
                match b.get(key) {
                    Some(new) => diff_at(old, new, path, operations),
                    None => operations.push(json!({"op": "remove", "path": path})),
                }
                path.truncate(length);
            }
            for (key, new) in b {
                if !a.contains_key(key) {
                    let length = path.len();
                    push_token(path, key);
                    operations.push(json!({"op": "add", "path": path, "value": new}));
                    path.truncate(length);
                }
            }
        }
        _ if from == to => {}
        _ => operations.push(json!({"op": "replace", "path": path, "value": to})),
    }
}

/// Appends `/key` with `~` and `/` escaped (RFC 6901).
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_need_no_operation() {
        let value = json!({"a": [1, 2], "b": {"c": "d"}});
        assert!(diff(&value, &value).is_empty());
    }

    #[test]
    fn members_are_added_replaced_and_removed_with_escaped_paths() {
        let from = json!({"spec": {"containers": [1], "gone": true},
                          "metadata": {"annotations": {"a/b~c": "1"}}});
        let to = json!({"spec": {"containers": [1, 2], "volumes": []},
                        "metadata": {"annotations": {"a/b~c": "2"}}});
        let mut operations = diff(&from, &to);
        operations.sort_by_key(|o| o["path"].as_str().unwrap_or("").to_owned());
        assert_eq!(
            operations,
            vec![
                json!({"op": "replace", "path": "/metadata/annotations/a~1b~0c", "value": "2"}),
                json!({"op": "replace", "path": "/spec/containers", "value": [1, 2]}),
                json!({"op": "remove", "path": "/spec/gone"}),
                json!({"op": "add", "path": "/spec/volumes", "value": []}),
            ]
        );
    }
}
