//! The bearer tokens allowed to change the mesh through the HTTP API (`--admin-token-file`).
//!
//! One token per line; `#` comments and blank lines are ignored. Tokens are compared in
//! constant time and the file is re-read when it changes, so revoking a token means deleting
//! its line. Workload certificates play no part here: the API does not do TLS, so a sidecar's
//! certificate cannot be presented to it, let alone grant it anything.

use std::path::Path;
use std::sync::Arc;

use super::{bearer_token, lines, warn_if_weak, AuthError, TokenFile, TokenFileError, TokenTable};

/// The admin tokens in force.
#[derive(Debug)]
pub struct AdminTokens {
    file: Arc<TokenFile<()>>,
}

impl AdminTokens {
    /// Reads `path` (blocking). A file without any token is refused: it would lock every
    /// write out, which is never what an operator means.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        Ok(Self {
            file: TokenFile::load(path, parse)?,
        })
    }

    /// Re-reads the file whenever it changes (see [`TokenFile::watch`]).
    pub fn watch(&self) {
        self.file.watch();
    }

    /// Checks an `authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        let token = bearer_token(authorization)?;
        self.file
            .current()
            .find(token)
            .copied()
            .ok_or(AuthError::Unknown)
    }
}

/// Parses an admin token file.
pub fn parse(path: &Path, text: &str) -> Result<TokenTable<()>, TokenFileError> {
    let mut tokens = Vec::new();
    for (line, fields) in lines(text) {
        let [token] = fields.as_slice() else {
            return Err(TokenFileError::Line {
                path: path.to_owned(),
                line,
                reason: format!("expected one token per line, found {} fields", fields.len()),
            });
        };
        warn_if_weak(path, line, token);
        tokens.push(((*token).to_owned(), ()));
    }
    if tokens.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(TokenTable::new(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.tokens");
        std::fs::write(
            &path,
            "# admins\nalice-0123456789abcdef\n\nbob-0123456789abcdef\n",
        )
        .unwrap();
        let admins = AdminTokens::load(&path).unwrap();
        assert_eq!(admins.check(Some("Bearer alice-0123456789abcdef")), Ok(()));
        assert_eq!(admins.check(Some("bearer bob-0123456789abcdef")), Ok(()));
        assert_eq!(admins.check(None), Err(AuthError::Missing));
        assert_eq!(admins.check(Some("Bearer alice")), Err(AuthError::Unknown));
        assert_eq!(
            admins.check(Some("alice-0123456789abcdef")),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn bad_files_are_refused() {
        let path = Path::new("admin.tokens");
        assert_eq!(
            parse(path, "# none\n").unwrap_err().to_string(),
            "admin.tokens holds no token; write one token per line"
        );
        assert_eq!(
            parse(path, "a\nb c\n").unwrap_err().to_string(),
            "admin.tokens:2: expected one token per line, found 2 fields"
        );
    }
}
