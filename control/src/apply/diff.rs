//! What a write changes, per document, as a summary line and as a readable text diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ficus_config::Source;
use serde::Serialize;

use crate::state::VersionRecord;

/// Lines of context around each change in the text diff.
const CONTEXT: usize = 3;
/// Documents named in a summary line before it says "and N more".
const SUMMARY_NAMES: usize = 5;
/// Above this many line pairs the text diff shows the whole document as replaced, so a huge
/// document cannot make the diff quadratic.
const MAX_DIFF_CELLS: usize = 1_000_000;

/// Identity of a document: a second document with the same key replaces the first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DocumentKey {
    /// `kind`, e.g. `HTTPRoute`.
    pub kind: String,
    /// `metadata.namespace` (`default` when left out).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// How one document differs between the current config and the result of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// New.
    Created,
    /// Replaced by a different document.
    Changed,
    /// Removed.
    Deleted,
    /// Named by the apply but identical to the current one.
    Unchanged,
}

/// One document's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentChange {
    /// Which document.
    #[serde(flatten)]
    pub key: DocumentKey,
    /// What happens to it.
    pub change: Change,
}

/// What an apply would change: `ficusctl diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// The version the diff is against (the current one).
    pub version: u64,
    /// Every document the apply names or changes.
    pub changes: Vec<DocumentChange>,
    /// The YAML of each created, changed or deleted document as a unified-style diff.
    pub text: String,
    /// The warnings the apply would answer (see [`super::ApplyOutcome::warnings`]).
    pub warnings: Vec<String>,
}

impl DocumentKey {
    /// The key of a stored (JSON) document; `None` without a string `kind` and `metadata.name`.
    pub fn of(document: &serde_json::Value) -> Option<Self> {
        let metadata = document.get("metadata");
        let namespace = match metadata.and_then(|m| m.get("namespace")) {
            None => ficus_config::raw::DEFAULT_NAMESPACE,
            Some(namespace) => namespace.as_str()?,
        };
        Some(Self {
            kind: document.get("kind")?.as_str()?.to_owned(),
            namespace: namespace.to_owned(),
            name: metadata?.get("name")?.as_str()?.to_owned(),
        })
    }

    /// The key of a YAML document as the user wrote it.
    fn of_yaml(document: &yaml_serde::Value) -> Option<Self> {
        let metadata = document.get("metadata");
        let namespace = match metadata.and_then(|m| m.get("namespace")) {
            None => ficus_config::raw::DEFAULT_NAMESPACE,
            Some(namespace) => namespace.as_str()?,
        };
        Some(Self {
            kind: document.get("kind")?.as_str()?.to_owned(),
            namespace: namespace.to_owned(),
            name: metadata?.get("name")?.as_str()?.to_owned(),
        })
    }
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Diff {
    /// The diff from `current` to `next`.
    pub(crate) fn new(
        current: &VersionRecord,
        next: &BTreeMap<DocumentKey, serde_json::Value>,
        changes: Vec<DocumentChange>,
    ) -> Self {
        let old: BTreeMap<DocumentKey, &serde_json::Value> = current
            .documents
            .iter()
            .filter_map(|document| Some((DocumentKey::of(document)?, document)))
            .collect();
        let mut text = String::new();
        for change in &changes {
            let before = old.get(&change.key).map(|d| yaml(d)).unwrap_or_default();
            let after = next.get(&change.key).map(yaml).unwrap_or_default();
            if change.change == Change::Unchanged {
                continue;
            }
            let from = match change.change {
                Change::Created => "/dev/null".to_owned(),
                _ => format!("{} (version {})", change.key, current.version),
            };
            let to = match change.change {
                Change::Deleted => "/dev/null".to_owned(),
                _ => format!("{} (applied)", change.key),
            };
            text.push_str(&format!("--- {from}\n+++ {to}\n"));
            text.push_str(&line_diff(&before, &after));
        }
        Self {
            version: current.version,
            changes,
            text,
            warnings: Vec::new(),
        }
    }
}

/// The keys of every document in `sources` that has a kind and a name. Parsing stops at a YAML
/// syntax error (validation reports it); documents before it still count.
pub(crate) fn keys_in_sources(sources: &[Source]) -> BTreeSet<DocumentKey> {
    let mut keys = BTreeSet::new();
    for source in sources {
        for document in yaml_serde::Deserializer::from_str(&source.text) {
            let Ok(mut value) = <yaml_serde::Value as serde::Deserialize>::deserialize(document)
            else {
                break;
            };
            if value.apply_merge().is_ok() {
                keys.extend(DocumentKey::of_yaml(&value));
            }
        }
    }
    keys
}

/// Per-document changes from `old` to `new`, in key order; unchanged documents are listed only
/// when `named`.
pub(crate) fn changes(
    old: &BTreeMap<DocumentKey, serde_json::Value>,
    new: &BTreeMap<DocumentKey, serde_json::Value>,
    named: &BTreeSet<DocumentKey>,
) -> Vec<DocumentChange> {
    let keys: BTreeSet<&DocumentKey> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let change = match (old.get(key), new.get(key)) {
                (None, Some(_)) => Change::Created,
                (Some(_), None) => Change::Deleted,
                (Some(a), Some(b)) if a != b => Change::Changed,
                _ if named.contains(key) => Change::Unchanged,
                _ => return None,
            };
            Some(DocumentChange {
                key: key.clone(),
                change,
            })
        })
        .collect()
}

/// `apply: 1 created, 1 changed: Backend shop/a, HTTPRoute shop/shop`.
pub(crate) fn summary(verb: &str, changes: &[DocumentChange]) -> String {
    let count = |wanted: Change| changes.iter().filter(|c| c.change == wanted).count();
    let counts: Vec<String> = [
        (Change::Created, "created"),
        (Change::Changed, "changed"),
        (Change::Deleted, "deleted"),
    ]
    .into_iter()
    .filter(|(change, _)| count(*change) > 0)
    .map(|(change, word)| format!("{} {word}", count(change)))
    .collect();
    if counts.is_empty() {
        return format!("{verb}: no changes");
    }
    let touched: Vec<String> = changes
        .iter()
        .filter(|c| c.change != Change::Unchanged)
        .map(|c| c.key.to_string())
        .collect();
    let mut names = touched
        .iter()
        .take(SUMMARY_NAMES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if touched.len() > SUMMARY_NAMES {
        names.push_str(&format!(" and {} more", touched.len() - SUMMARY_NAMES));
    }
    format!("{verb}: {}: {names}", counts.join(", "))
}

fn yaml(document: &serde_json::Value) -> String {
    yaml_serde::to_string(document).unwrap_or_else(|_| document.to_string())
}

/// A unified-style line diff with [`CONTEXT`] lines around each change.
fn line_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let operations = if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        a.iter()
            .map(|l| ('-', *l))
            .chain(b.iter().map(|l| ('+', *l)))
            .collect()
    } else {
        lcs_operations(&a, &b)
    };
    let changed: Vec<usize> = operations
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op != ' ')
        .map(|(i, _)| i)
        .collect();
    let visible = |index: usize| {
        changed
            .iter()
            .any(|&c| index + CONTEXT >= c && index <= c + CONTEXT)
    };
    let mut out = String::new();
    let mut skipped = false;
    for (index, (op, line)) in operations.iter().enumerate() {
        if visible(index) {
            if skipped || (index > 0 && out.is_empty()) {
                out.push_str("@@\n");
            }
            skipped = false;
            out.push_str(&format!("{op}{line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

/// Keep/remove/add operations turning `a` into `b`, from a longest common subsequence.
fn lcs_operations<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    // lengths[i][j]: LCS length of a[i..] and b[j..].
    let mut lengths = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lengths[i][j] = if a[i] == b[j] {
                lengths[i + 1][j + 1] + 1
            } else {
                lengths[i + 1][j].max(lengths[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut operations) = (0, 0, Vec::with_capacity(n + m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            operations.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lengths[i + 1][j] >= lengths[i][j + 1]) {
            operations.push(('-', a[i]));
            i += 1;
        } else {
            operations.push(('+', b[j]));
            j += 1;
        }
    }
    operations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_changes_with_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let after = "a\nb\nc\nd\ne\nF\ng\nh\ni\n";
        assert_eq!(
            line_diff(before, after),
            "@@\n c\n d\n e\n-f\n+F\n g\n h\n i\n"
        );
        assert_eq!(line_diff("", "x\n"), "+x\n");
        assert_eq!(line_diff("x\n", ""), "-x\n");
    }

    #[test]
    fn summary_counts_and_names() {
        let key = |kind: &str, name: &str| DocumentKey {
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        };
        let changes = vec![
            DocumentChange {
                key: key("Backend", "a"),
                change: Change::Created,
            },
            DocumentChange {
                key: key("Backend", "b"),
                change: Change::Unchanged,
            },
            DocumentChange {
                key: key("HTTPRoute", "shop"),
                change: Change::Changed,
            },
        ];
        assert_eq!(
            summary("apply", &changes),
            "apply: 1 created, 1 changed: Backend shop/a, HTTPRoute shop/shop"
        );
        assert_eq!(summary("apply", &changes[1..2]), "apply: no changes");
    }
}
