//! What is wrong with a config, said so that a user can find and fix it.

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

/// Every problem found in a set of config files; never empty when returned by the loader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.errors))]
pub struct ConfigErrors {
    /// The problems, in file and document order.
    pub errors: Vec<Diagnostic>,
}

impl ConfigErrors {
    /// Wraps a list of problems.
    pub fn new(errors: Vec<Diagnostic>) -> Self {
        Self { errors }
    }
}

impl From<Diagnostic> for ConfigErrors {
    fn from(diagnostic: Diagnostic) -> Self {
        Self {
            errors: vec![diagnostic],
        }
    }
}

fn join_lines(errors: &[Diagnostic]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
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
}
