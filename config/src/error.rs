//! What is wrong with a config, said so that a user can find and fix it.

use std::collections::BTreeSet;
use std::fmt;

/// One problem in a config: where it is (file, line, document, field), what it is, and what to
/// do about it.
///
/// Displays as
///
/// ```text
/// error: routes.yaml:14: HTTPRoute shop/payments: spec.rules[0].backendRefs[1].name: Backend "shop/payments-v3" does not exist
///   help: define a Backend named payments-v3 in namespace shop, or fix the name
/// ```
///
/// where the line, document, field and help parts are left out when unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File (or source) name as given to the loader.
    pub file: String,
    /// 1-based line where the document starts, or of a YAML syntax error.
    pub line: Option<usize>,
    /// The document, e.g. `HTTPRoute shop/payments`, or `document 3` when its kind or name is
    /// unknown; `None` for problems with the whole file.
    pub document: Option<String>,
    /// Path of the offending field, e.g. `spec.rules[0].backendRefs[1].name`; empty when the
    /// problem is the whole document (or file).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem with a whole file (missing, unreadable, empty).
    pub(crate) fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            document: None,
            field: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Writes `<severity>: file:line: document: field: message`, then the help line.
    fn write(&self, f: &mut fmt::Formatter<'_>, severity: &str) -> fmt::Result {
        write!(f, "{severity}: {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(document) = &self.document {
            write!(f, ": {document}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}

// === impl Diagnostic ===

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, "error")
    }
}

impl std::error::Error for Diagnostic {}

/// Something in a valid config that is almost certainly not what its author meant, such as a
/// route match that can never be selected. Warnings never reject a config: it is used as it
/// is, and the warnings are logged and reported alongside it.
///
/// Displays like an error, with `warning:` in front:
///
/// ```text
/// warning: routes.yaml:20: HTTPRoute shop/b: spec.rules[0].matches[0]: never selected for service shop/payments: ...
///   help: ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where it is and what it is, with the same parts as an error.
    pub diagnostic: Diagnostic,
}

// === impl Warning ===

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.diagnostic.write(f, "warning")
    }
}

/// Most problems a [`ConfigErrors`] lists one by one; the rest are counted. A generated file
/// that repeats one mistake 100,000 times would otherwise make an error of tens of MB in the
/// log, in `/config` and in `ficusctl`'s answer, and as much memory while it is collected.
pub const MAX_LISTED_ERRORS: usize = 100;

/// Every problem found in a set of config files; never empty when returned by the loader.
/// The first [`MAX_LISTED_ERRORS`] are listed; the rest are only counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.lines().join("\n"))]
pub struct ConfigErrors {
    /// The problems, in file and document order: at most [`MAX_LISTED_ERRORS`].
    pub errors: Vec<Diagnostic>,
    /// How many more problems were found and are not in `errors`.
    pub not_listed: usize,
    /// Every source (`file`) with a problem, listed or not: what a caller that leaves
    /// sources out until the rest is valid must leave out.
    pub sources: BTreeSet<String>,
}

impl ConfigErrors {
    /// Wraps a list of problems, keeping the first [`MAX_LISTED_ERRORS`] and counting the rest.
    pub fn new(errors: Vec<Diagnostic>) -> Self {
        Self::with_not_listed(errors, 0, BTreeSet::new())
    }

    /// [`ConfigErrors::new`] of `errors`, and `more` found before and not listed (in
    /// `sources`, with the sources of `errors`).
    pub fn with_not_listed(
        mut errors: Vec<Diagnostic>,
        more: usize,
        mut sources: BTreeSet<String>,
    ) -> Self {
        for error in &errors {
            note_source(&mut sources, &error.file);
        }
        let cut = errors.len().saturating_sub(MAX_LISTED_ERRORS);
        errors.truncate(MAX_LISTED_ERRORS);
        Self {
            errors,
            not_listed: more.saturating_add(cut),
            sources,
        }
    }

    /// One text per listed problem (as [`Diagnostic`] displays it), and a last one saying how
    /// many more there are when some are not listed: what logs and API answers show.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        if self.not_listed > 0 {
            let noun = if self.not_listed == 1 {
                "problem"
            } else {
                "problems"
            };
            lines.push(format!(
                "error: {} more {noun} not listed (only the first {MAX_LISTED_ERRORS} are)\n  \
                 help: fix the ones above and validate again to see the rest",
                self.not_listed
            ));
        }
        lines
    }
}

impl From<Diagnostic> for ConfigErrors {
    fn from(diagnostic: Diagnostic) -> Self {
        Self::new(vec![diagnostic])
    }
}

/// Adds `file` to `sources`, cloning it only when it is new (most problems share a source).
fn note_source(sources: &mut BTreeSet<String>, file: &str) {
    if !sources.contains(file) {
        sources.insert(file.to_owned());
    }
}

/// Problems as they are found: the first [`MAX_LISTED_ERRORS`] kept, the rest counted, so
/// that a config with millions of mistakes costs no more memory than one with a hundred.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    listed: Vec<Diagnostic>,
    not_listed: usize,
    /// The source of every problem, listed or not.
    sources: BTreeSet<String>,
}

impl Problems {
    /// Records a problem.
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        note_source(&mut self.sources, &diagnostic.file);
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(diagnostic);
        } else {
            self.not_listed = self.not_listed.saturating_add(1);
        }
    }

    /// Records the problems of `errors`.
    pub(crate) fn extend(&mut self, errors: ConfigErrors) {
        self.not_listed = self.not_listed.saturating_add(errors.not_listed);
        self.sources.extend(errors.sources);
        for diagnostic in errors.errors {
            self.push(diagnostic);
        }
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.not_listed == 0
    }

    /// The problems of `self` and `other` together, listed ones ordered by `key` (a stable
    /// sort) before the first [`MAX_LISTED_ERRORS`] are kept.
    pub(crate) fn merge_sorted_by_key<K: Ord>(
        self,
        other: Problems,
        key: impl FnMut(&Diagnostic) -> K,
    ) -> ConfigErrors {
        let mut listed = self.listed;
        listed.extend(other.listed);
        listed.sort_by_key(key);
        let mut sources = self.sources;
        sources.extend(other.sources);
        let more = self.not_listed.saturating_add(other.not_listed);
        ConfigErrors::with_not_listed(listed, more, sources)
    }

    /// The recorded problems.
    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors::with_not_listed(self.listed, self.not_listed, self.sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Diagnostic {
        Diagnostic {
            file: "routes.yaml".to_owned(),
            line: Some(14),
            document: Some("HTTPRoute shop/payments".to_owned()),
            field: "spec.rules[0].backendRefs[1].name".to_owned(),
            message: "Backend \"shop/payments-v3\" does not exist".to_owned(),
            hint: Some(
                "define a Backend named payments-v3 in namespace shop, or fix the name".to_owned(),
            ),
        }
    }

    #[test]
    fn displays_every_part() {
        assert_eq!(
            example().to_string(),
            "error: routes.yaml:14: HTTPRoute shop/payments: spec.rules[0].backendRefs[1].name: \
             Backend \"shop/payments-v3\" does not exist\n  \
             help: define a Backend named payments-v3 in namespace shop, or fix the name"
        );
    }

    #[test]
    fn omits_unknown_parts() {
        let diagnostic = Diagnostic::file("mesh.yaml", "file has no documents");
        assert_eq!(
            diagnostic.to_string(),
            "error: mesh.yaml: file has no documents"
        );
    }

    #[test]
    fn warnings_display_like_errors() {
        let warning = Warning {
            diagnostic: example(),
        };
        let text = warning.to_string();
        assert!(
            text.starts_with("warning: routes.yaml:14: HTTPRoute shop/payments: spec.rules"),
            "{text}"
        );
        assert_eq!(
            text.strip_prefix("warning"),
            example().to_string().strip_prefix("error")
        );
    }

    #[test]
    fn joins_all_errors() {
        let errors = ConfigErrors::new(vec![example(), Diagnostic::file("a.yaml", "boom")]);
        let text = errors.to_string();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("error: a.yaml: boom"));
    }

    #[test]
    fn lists_the_first_hundred_and_counts_the_rest() {
        let many = |n: usize| (0..n).map(|i| Diagnostic::file(format!("{i}.yaml"), "boom"));
        let errors = ConfigErrors::new(many(MAX_LISTED_ERRORS).collect());
        assert_eq!(errors.not_listed, 0);
        assert_eq!(errors.lines().len(), MAX_LISTED_ERRORS);

        let errors = ConfigErrors::new(many(250).collect());
        assert_eq!(errors.errors.len(), MAX_LISTED_ERRORS);
        assert_eq!(errors.errors[99].file, "99.yaml");
        assert_eq!(errors.not_listed, 150);
        let lines = errors.lines();
        assert_eq!(lines.len(), MAX_LISTED_ERRORS + 1);
        assert!(
            lines[MAX_LISTED_ERRORS].starts_with("error: 150 more problems not listed"),
            "{}",
            lines[MAX_LISTED_ERRORS]
        );
        assert_eq!(errors.to_string(), lines.join("\n"));

        // Collected one by one, with counts carried over, then merged in order.
        let mut first = Problems::default();
        for diagnostic in many(150).collect::<Vec<_>>().into_iter().rev() {
            first.push(diagnostic);
        }
        let mut second = Problems::default();
        second.extend(ConfigErrors::new(many(120).collect()));
        assert!(!second.is_empty());
        let merged = first.merge_sorted_by_key(second, |d| d.file.clone());
        assert_eq!(merged.errors.len(), MAX_LISTED_ERRORS);
        assert_eq!(merged.not_listed, 270 - MAX_LISTED_ERRORS);
        assert_eq!(merged.sources.len(), 150, "every source, listed or not");
        assert!(merged.errors.windows(2).all(|w| w[0].file <= w[1].file));
    }
}
