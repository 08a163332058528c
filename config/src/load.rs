//! Reading config: files and directories → YAML documents → raw types → [`Config`].
//!
//! Every document of every file is looked at before anything is returned, so one run reports
//! every problem. A YAML syntax error stops reading the rest of its file (the parser cannot
//! recover), but other files and the documents before it are still checked.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use yaml_serde::Value;

use crate::error::{ConfigErrors, Diagnostic, Problems};
use crate::model::{Config, ResourceKey};
use crate::raw::{AnyDocument, Kind, DEFAULT_NAMESPACE};
use crate::validate::{self, Origin, Parsed};

/// Files larger than this are refused instead of read: a config is a few KiB, and a runaway
/// file must not take the sidecar's memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One named config text, e.g. a file's name and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Shown in diagnostics, e.g. `routes.yaml`.
    pub name: String,
    /// YAML text: one or more documents.
    pub text: String,
}

/// Parses and validates the documents of one text; `name` appears in diagnostics.
pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    parse_sources(&[Source {
        name: name.to_owned(),
        text: text.to_owned(),
    }])
}

/// Parses and validates a snapshot pushed by the control plane (or cached from one); `name`
/// appears in diagnostics. Unlike a file, a snapshot may hold no documents: that is the
/// defaults-only config, which the control plane serves after the last document is deleted and
/// a sidecar whose scope selects nothing receives. An empty file stays an error
/// ([`parse_str`]): there it is almost always a mistake.
pub fn parse_snapshot(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    let source = Source {
        name: name.to_owned(),
        text: text.to_owned(),
    };
    parse_all(std::slice::from_ref(&source), Empty::Allowed)
}

/// Parses and validates several texts as one config: references resolve across them, and the
/// error lists every problem of every source.
pub fn parse_sources(sources: &[Source]) -> Result<Config, ConfigErrors> {
    parse_all(sources, Empty::Refused)
}

/// Whether a source without documents is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Empty {
    /// A file: an empty one is a mistake.
    Refused,
    /// A pushed snapshot: an empty one is the defaults-only config.
    Allowed,
}

fn parse_all(sources: &[Source], empty: Empty) -> Result<Config, ConfigErrors> {
    let mut errors = Problems::default();
    let mut parsed = Vec::new();
    let mut broken = BTreeSet::new();
    for source in sources {
        parse_source(source, empty, &mut parsed, &mut broken, &mut errors);
    }
    match validate::validate(parsed, &broken) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(errors.into_errors()),
        Err(more) => {
            // Report in reading order: by source, then by line (a stable sort keeps the
            // problems of one document in field order).
            let position = |file: &str| sources.iter().position(|source| source.name == file);
            Err(errors.merge_sorted_by_key(more, |error| {
                (position(&error.file), error.line.unwrap_or(0))
            }))
        }
    }
}

/// Loads a file, or every `*.yaml` / `*.yml` file directly inside a directory (sorted by name,
/// dotfiles skipped), and validates them together.
pub fn load_path(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|error| {
        Diagnostic::file(&name, format!("cannot read: {error}"))
            .with_hint("check the path; give a YAML file or a directory of *.yaml files")
    })?;
    if !metadata.is_dir() {
        let text = read_file(path)?;
        return parse_sources(&[Source { name, text }]);
    }
    let mut files = Vec::new();
    let mut errors = Problems::default();
    let entries = std::fs::read_dir(path).map_err(|error| {
        Diagnostic::file(&name, format!("cannot list directory: {error}"))
            .with_hint("check the directory's permissions")
    })?;
    for entry in entries {
        match entry {
            Ok(entry) => {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let is_yaml = file_name.ends_with(".yaml") || file_name.ends_with(".yml");
                if is_yaml && !file_name.starts_with('.') {
                    files.push((file_name, entry.path()));
                }
            }
            Err(error) => errors.push(
                Diagnostic::file(&name, format!("cannot list directory: {error}"))
                    .with_hint("check the directory's permissions"),
            ),
        }
    }
    if files.is_empty() && errors.is_empty() {
        return Err(
            Diagnostic::file(&name, "directory has no *.yaml or *.yml files")
                .with_hint("put the config documents in files ending in .yaml, or give a file")
                .into(),
        );
    }
    files.sort();
    let mut sources = Vec::new();
    for (_, file) in files {
        match read_file(&file) {
            Ok(text) => sources.push(Source {
                name: file.display().to_string(),
                text,
            }),
            Err(error) => errors.extend(error),
        }
    }
    match parse_sources(&sources) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(errors.into_errors()),
        Err(more) => {
            errors.extend(more);
            Err(errors.into_errors())
        }
    }
}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let name = path.display().to_string();
    let cannot_read = |error: std::io::Error| {
        Diagnostic::file(&name, format!("cannot read: {error}"))
            .with_hint("check that the file exists, is readable and is UTF-8 text")
    };
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot_read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(
            Diagnostic::file(&name, format!("file is larger than {MAX_FILE_BYTES} bytes"))
                .with_hint("split the config into several files")
                .into(),
        );
    }
    Ok(text)
}

/// Splits one source into documents and turns each into a raw document.
fn parse_source(
    source: &Source,
    empty: Empty,
    parsed: &mut Vec<Parsed>,
    broken: &mut BTreeSet<(Kind, ResourceKey)>,
    errors: &mut Problems,
) {
    let starts = document_starts(&source.text);
    let mut documents = 0;
    let mut syntax_error = false;
    for (index, document) in yaml_serde::Deserializer::from_str(&source.text).enumerate() {
        let line = starts.get(index).copied();
        let value = match <Value as serde::Deserialize>::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                errors.push(Diagnostic {
                    file: source.name.clone(),
                    line: error.location().map(|location| location.line()).or(line),
                    document: Some(format!("document {}", index + 1)),
                    field: String::new(),
                    message: format!("invalid YAML: {error}"),
                    hint: Some(
                        "fix the YAML syntax; the rest of this file was not read".to_owned(),
                    ),
                });
                // The parser cannot resume after an error: stop reading this file.
                syntax_error = true;
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        documents += 1;
        let origin = Origin {
            file: source.name.clone(),
            line,
            document: format!("document {}", index + 1),
        };
        match parse_document(value, origin, broken) {
            Ok(document) => parsed.push(document),
            Err(diagnostic) => errors.push(*diagnostic),
        }
    }
    if documents == 0 && !syntax_error && empty == Empty::Refused {
        errors.push(
            Diagnostic::file(&source.name, "file has no documents")
                .with_hint("an empty config is almost always a mistake; add at least one Backend"),
        );
    }
}

/// Names the document from its `kind` and `metadata`, checks `apiVersion`, then deserializes
/// it into the raw type of its kind.
fn parse_document(
    mut value: Value,
    mut origin: Origin,
    broken: &mut BTreeSet<(Kind, ResourceKey)>,
) -> Result<Parsed, Box<Diagnostic>> {
    value.apply_merge().map_err(|error| {
        let message = format!("invalid merge key: {error}");
        Box::new(origin.diagnostic("", message, "`<<` takes a mapping or a list of mappings"))
    })?;
    if !value.is_mapping() {
        return Err(Box::new(origin.diagnostic(
            "",
            format!("a document must be a mapping, not {}", value_type(&value)),
            "start each document with apiVersion, kind, metadata and spec",
        )));
    }
    let kind_name = match value.get("kind") {
        None => {
            return Err(Box::new(origin.diagnostic(
                "kind",
                "missing field `kind`",
                known_kinds_hint(),
            )))
        }
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => {
            let message = format!("kind must be a string, not {}", value_type(other));
            return Err(Box::new(origin.diagnostic(
                "kind",
                message,
                known_kinds_hint(),
            )));
        }
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        let hint = match Kind::ALL
            .iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(&kind_name))
        {
            Some(kind) => format!("kinds are case-sensitive: did you mean {kind}?"),
            None => known_kinds_hint(),
        };
        return Err(Box::new(origin.diagnostic(
            "kind",
            format!("unknown kind {kind_name:?}"),
            hint,
        )));
    };
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let namespace = match metadata.and_then(|m| m.get("namespace")) {
        Some(namespace) => namespace.as_str().map(str::to_owned),
        None => Some(DEFAULT_NAMESPACE.to_owned()),
    };
    let key = match (name, namespace) {
        (Some(name), Some(namespace)) => {
            origin.document = match kind {
                Kind::Mesh => format!("Mesh {name}"),
                _ => format!("{kind} {namespace}/{name}"),
            };
            Some((kind, ResourceKey::new(namespace, name)))
        }
        _ => None,
    };
    if depth(&value) > MAX_DEPTH {
        broken.extend(key);
        return Err(Box::new(origin.diagnostic(
            "",
            format!("the document nests lists and mappings more than {MAX_DEPTH} deep"),
            "no Ficus field nests that deep; look for a runaway `status` or metadata field",
        )));
    }
    let document = typed_document(kind, &value, &origin).inspect_err(|_| {
        // The document still counts as existing, so that references to it do not add
        // "does not exist" noise to its own error.
        broken.extend(key);
    })?;
    if let Some(Value::Mapping(metadata)) = value.get_mut("metadata") {
        if !metadata.contains_key("namespace") {
            metadata.insert("namespace".into(), DEFAULT_NAMESPACE.into());
        }
    }
    // Through a JSON value (its keys sorted), then text: only this document's tree is ever
    // alive, not every document's (see `Config::documents`).
    let json = serde_json::to_value(&value)
        .and_then(|json| serde_json::value::to_raw_value(&json))
        .map_err(|error| {
            Box::new(origin.diagnostic(
                "",
                format!("cannot be represented as JSON: {error}"),
                "use string keys and no YAML tags",
            ))
        })?;
    Ok(Parsed {
        origin,
        document,
        json,
    })
}

/// Checks `apiVersion`, then deserializes `value` into the raw type of `kind`.
fn typed_document(
    kind: Kind,
    value: &Value,
    origin: &Origin,
) -> Result<AnyDocument, Box<Diagnostic>> {
    match value.get("apiVersion") {
        Some(Value::String(api_version)) if api_version == kind.api_version() => {}
        found => {
            let found = match found {
                None => "none".to_owned(),
                Some(Value::String(text)) => format!("{text:?}"),
                Some(other) => value_type(other).to_owned(),
            };
            let want = kind.api_version();
            let message = format!("{kind} needs apiVersion {want:?}, found {found}");
            return Err(Box::new(origin.diagnostic(
                "apiVersion",
                message,
                format!("set `apiVersion: {want}`"),
            )));
        }
    }
    Ok(match kind {
        Kind::Mesh => AnyDocument::Mesh(typed(value, origin)?),
        Kind::Backend => AnyDocument::Backend(typed(value, origin)?),
        Kind::HttpRoute => AnyDocument::HttpRoute(typed(value, origin)?),
        Kind::TcpRoute => AnyDocument::TcpRoute(typed(value, origin)?),
        Kind::TrafficPolicy => AnyDocument::TrafficPolicy(typed(value, origin)?),
        Kind::AuthorizationPolicy => AnyDocument::AuthorizationPolicy(typed(value, origin)?),
    })
}

/// Deserializes `value` into a raw type, naming the field of the first problem.
fn typed<T: DeserializeOwned>(value: &Value, origin: &Origin) -> Result<T, Box<Diagnostic>> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let message = error.into_inner().to_string();
        let hint = serde_hint(&message);
        Box::new(origin.diagnostic(field, message, hint))
    })
}

/// A hint for a serde error message, with a spelling suggestion where serde lists the choices.
fn serde_hint(message: &str) -> String {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if let Some((given, choices)) = quoted.split_first() {
        if message.starts_with("unknown field") || message.starts_with("unknown variant") {
            let what = if message.starts_with("unknown field") {
                "field"
            } else {
                "value"
            };
            return match validate::closest(given, choices.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None if choices.is_empty() => format!("remove the {what}; none is allowed here"),
                None => format!("check the spelling; allowed: {}", choices.join(", ")),
            };
        }
        if message.starts_with("missing field") {
            return format!("add `{given}`");
        }
    }
    if message.contains("expected a string") {
        return "quote the value, e.g. \"1.0\"".to_owned();
    }
    "see the document format in the Ficus docs (INTERFACES.md, \"Config documents\")".to_owned()
}

fn known_kinds_hint() -> String {
    let kinds: Vec<&str> = Kind::ALL.iter().map(|kind| kind.as_str()).collect();
    format!("known kinds: {}", kinds.join(", "))
}

/// Deepest nesting of lists and mappings a document may have. The documents are kept as JSON
/// text and read back as values where needed (the control plane's store, `get`), and
/// serde_json reads at most 128 levels: a deeper document would pass here and be lost there.
/// No field of ours nests a tenth as deep.
const MAX_DEPTH: usize = 64;

/// How deep `value` nests lists and mappings (a scalar is 0), without recursing.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Sequence(items) => Box::new(items.iter()),
            Value::Mapping(mapping) => Box::new(mapping.iter().flat_map(|(k, v)| [k, v])),
            Value::Tagged(tagged) => Box::new(std::iter::once(&tagged.value)),
            _ => continue,
        };
        let level = level + 1;
        deepest = deepest.max(level);
        stack.extend(children.map(|child| (child, level)));
    }
    deepest
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// 1-based line of the first content line of each YAML document, in document order.
///
/// A `---` line starts a document (on that line when content follows the marker, else on the
/// next content line); so does the first content line after a `...` end marker or at the top of
/// the file. Comments, blank lines and directives are not content. YAML forbids markers inside
/// scalars at column 0, so a line scan agrees with the parser.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut in_document = false;
    let mut pending_marker: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = if index == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if let Some(rest) = marker(line, "---") {
            starts.extend(pending_marker.take());
            in_document = true;
            if is_blank_or_comment(rest) {
                pending_marker = Some(number);
            } else {
                starts.push(number);
            }
        } else if marker(line, "...").is_some() {
            starts.extend(pending_marker.take());
            in_document = false;
        } else if is_blank_or_comment(line) || (!in_document && line.starts_with('%')) {
            continue;
        } else if pending_marker.take().is_some() || !in_document {
            starts.push(number);
            in_document = true;
        }
    }
    starts.extend(pending_marker);
    starts
}

fn marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_document_starts() {
        let text =
            "# header\n\nkind: A\n---\nkind: B\n--- # c\n\n# x\nkind: C\n---\n---\nkind: E\n";
        assert_eq!(document_starts(text), vec![3, 5, 9, 10, 12]);
        assert_eq!(document_starts("--- {a: 1}\n"), vec![1]);
        assert_eq!(
            document_starts("%YAML 1.2\n---\na: 1\n...\nb: 2\n"),
            vec![3, 5]
        );
        assert_eq!(document_starts(""), Vec::<usize>::new());
        assert_eq!(document_starts("a: |\n  ---x\n----\n"), vec![1]);
    }

    #[test]
    fn hints_suggest_spelling() {
        let hint = serde_hint("unknown field `weigth`, expected one of `name`, `weight`");
        assert_eq!(hint, "did you mean `weight`?");
        assert_eq!(serde_hint("missing field `name`"), "add `name`");
        assert!(serde_hint("unknown field `x`, there are no fields").contains("none is allowed"));
    }

    #[test]
    fn an_empty_snapshot_is_the_defaults_but_an_empty_file_is_refused() {
        let defaults = parse_snapshot("control:v2", "").expect("an empty snapshot is valid");
        assert!(defaults.documents.is_empty());
        assert!(parse_snapshot("control:v2", "---\n").is_ok());
        let refused = parse_str("mesh.yaml", "").unwrap_err().to_string();
        assert!(refused.contains("file has no documents"), "{refused}");
        // Documents in a snapshot are still validated.
        assert!(parse_snapshot("control:v2", "kind: Nope\n").is_err());
    }
}
