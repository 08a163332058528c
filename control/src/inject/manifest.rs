//! YAML streams for `ficusctl inject`: documents in, injected documents out, in order.

use serde::Deserialize;
use serde_json::Value;

use super::{inject, InjectConfig, InjectError, Outcome};

/// Why a stream cannot be injected; nothing is printed then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A document is not YAML (or not representable as JSON, e.g. a non-string key).
    #[error("{source_name}: document {document}: {message}")]
    Yaml {
        /// File name or `<stdin>`.
        source_name: String,
        /// 1-based document number.
        document: usize,
        /// What the parser said (with line and column).
        message: String,
    },
    /// A workload that cannot be injected (bad annotation, odd shape).
    #[error("{source_name}: document {document} ({kind} {name}): {error}")]
    Inject {
        /// File name or `<stdin>`.
        source_name: String,
        /// 1-based document number.
        document: usize,
        /// The document's kind.
        kind: String,
        /// The document's name.
        name: String,
        /// Why.
        error: Box<InjectError>,
    },
}

/// Documents of a stream after injection, with warnings meant for stderr.
#[derive(Debug, Default)]
pub struct Injected {
    /// Every non-empty document, injected where it applies, in the input's order.
    pub documents: Vec<Value>,
    /// `document N (Kind name): ...` lines.
    pub warnings: Vec<String>,
    /// Pod specs the sidecar was added to.
    pub pods: usize,
}

/// Parses `text` (one or more YAML documents) and injects every workload in it.
pub fn inject_stream(
    source_name: &str,
    text: &str,
    config: &InjectConfig,
) -> Result<Injected, ManifestError> {
    let mut out = Injected::default();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let mut value = Value::deserialize(document).map_err(|e| ManifestError::Yaml {
            source_name: source_name.to_owned(),
            document: document_number,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document (`---` at the start or the end)
        }
        let describe = |value: &Value| {
            let field = |pointer: &str| {
                value
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            (field("/kind"), field("/metadata/name"))
        };
        match inject(&mut value, config) {
            Ok(Outcome::Injected { pods, warnings }) => {
                out.pods += pods;
                let (kind, name) = describe(&value);
                out.warnings.extend(
                    warnings
                        .into_iter()
                        .map(|w| format!("document {document_number} ({kind} {name}): {w}")),
                );
            }
            Ok(Outcome::Skipped(_) | Outcome::NotAWorkload) => {}
            Err(error) => {
                let (kind, name) = describe(&value);
                return Err(ManifestError::Inject {
                    source_name: source_name.to_owned(),
                    document: document_number,
                    kind,
                    name,
                    error: Box::new(error),
                });
            }
        }
        out.documents.push(value);
    }
    Ok(out)
}

/// The documents as a YAML stream (`---` between documents).
pub fn to_yaml(documents: &[Value]) -> Result<String, yaml_serde::Error> {
    let mut out = String::new();
    for (index, document) in documents.iter().enumerate() {
        if index > 0 {
            out.push_str("---\n");
        }
        out.push_str(&yaml_serde::to_string(document)?);
    }
    Ok(out)
}

/// The documents as JSON: the object itself when there is one, a `v1` `List` otherwise.
pub fn to_json(documents: Vec<Value>) -> String {
    let value = if documents.len() == 1 {
        documents.into_iter().next().unwrap_or(Value::Null)
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": documents})
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}
