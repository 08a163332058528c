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

/// The documents as a YAML stream (`---` between documents) that YAML 1.1 readers read as
/// YAML 1.2 ones do.
///
/// yaml_serde writes YAML 1.2, where `yes`, `on`, `n` or `1_000` are strings and need no
/// quotes; kubectl (go-yaml v2, YAML 1.1) reads those plain scalars as booleans and numbers,
/// so `ficusctl inject -f app.yaml | kubectl apply -f -` would turn a ConfigMap value `"on"`
/// into `true` (or be refused). yaml_serde cannot be told to quote more, so a document with
/// any string (key or value) that YAML 1.1 would resolve to something else is written as JSON
/// instead, which is YAML whose strings are always quoted; the others stay block YAML.
pub fn to_yaml(documents: &[Value]) -> Result<String, yaml_serde::Error> {
    let mut out = String::new();
    for (index, document) in documents.iter().enumerate() {
        if index > 0 {
            out.push_str("---\n");
        }
        if has_yaml11_ambiguous_string(document) {
            // serde_json cannot fail on a `Value` (its keys are strings).
            out.push_str(&serde_json::to_string_pretty(document).unwrap_or_default());
            out.push('\n');
        } else {
            out.push_str(&yaml_serde::to_string(document)?);
        }
    }
    Ok(out)
}

/// Whether any key or string value of `value` would be written as a plain scalar that YAML
/// 1.1 reads as no string.
fn has_yaml11_ambiguous_string(value: &Value) -> bool {
    let ambiguous = |text: &str| yaml11_non_string(text) && written_plain(text);
    match value {
        Value::String(text) => ambiguous(text),
        Value::Array(items) => items.iter().any(has_yaml11_ambiguous_string),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| ambiguous(key) || has_yaml11_ambiguous_string(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether yaml_serde writes `text` unquoted (it quotes what YAML 1.2 reads as no string,
/// such as `'8080'` or `'true'`).
fn written_plain(text: &str) -> bool {
    yaml_serde::to_string(text).map_or(true, |out| !out.starts_with(['\'', '"']))
}

/// Whether go-yaml v2 (YAML 1.1, what kubectl reads with) resolves `text`, written as a plain
/// scalar, to a boolean, null, number or merge key. Errs towards yes: a false alarm only
/// costs a document written as JSON.
fn yaml11_non_string(text: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "", "~", "null", "Null", "NULL",
        "<<", "=",
    ];
    if WORDS.contains(&text) {
        return true;
    }
    // go-yaml v2 drops every `_` before reading a number.
    let number: String = text.chars().filter(|c| *c != '_').collect();
    let unsigned = number
        .strip_prefix(['+', '-'])
        .unwrap_or(&number)
        .to_ascii_lowercase();
    if matches!(unsigned.as_str(), ".inf" | ".nan") {
        return true;
    }
    let digits =
        |rest: &str, radix: u32| !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix));
    if let Some(rest) = unsigned.strip_prefix("0x") {
        return digits(rest, 16);
    }
    if let Some(rest) = unsigned.strip_prefix("0o") {
        return digits(rest, 8);
    }
    if let Some(rest) = unsigned.strip_prefix("0b") {
        return digits(rest, 2);
    }
    // Integers (leading zeros too: octal) and floats such as `1.`, `.5`, `1e3`, `1.5E-3`.
    let (mantissa, exponent) = match unsigned.split_once('e') {
        Some((mantissa, exponent)) => (
            mantissa,
            Some(exponent.strip_prefix(['+', '-']).unwrap_or(exponent)),
        ),
        None => (unsigned.as_str(), None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok = (digits(whole, 10) && (fraction.is_empty() || digits(fraction, 10)))
        || (whole.is_empty() && digits(fraction, 10));
    mantissa_ok && exponent.is_none_or(|e| digits(e, 10))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values YAML 1.2 reads as strings and YAML 1.1 (kubectl) as booleans or numbers.
    const RISKY: &[&str] = &[
        "yes", "on", "n", "Off", "0777", "1_000", "0b101", "0x1F", "+12", "1.", ".5", "1e3", "~",
        "-.inf",
    ];

    #[test]
    fn yaml_1_1_non_strings_are_recognised() {
        for text in RISKY
            .iter()
            .chain(&["", "NULL", "<<", "-0x10", "1.5E-3", "1__0"])
        {
            assert!(yaml11_non_string(text), "{text:?}");
        }
        // yaml_serde quotes these itself: no reason for JSON.
        for text in ["8080", "true", "null", "1.5", "0777"] {
            assert!(!written_plain(text), "{text:?}");
        }
        for text in ["on", "yes", "1_000", "n"] {
            assert!(written_plain(text), "{text:?}");
        }
        for text in [
            "web",
            "1.4.2",
            "web:1",
            "10.0.0.0/8",
            "8080a",
            "e3",
            "1e",
            "0x",
            "0b2",
            "yess",
            "1:30",
            "2001-12-14",
            "-",
            ".",
            "_",
        ] {
            assert!(!yaml11_non_string(text), "{text:?}");
        }
    }
}
