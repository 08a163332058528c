//! Authenticating sidecars that ask for a certificate.
//!
//! [`TokenAuthenticator`] is the seam: it turns the bearer token a sidecar presents into the
//! workload (service account) and namespace it may get a certificate for. The certificate's
//! SPIFFE ID is built from that answer alone, never from the CSR.
//!
//! Outside Kubernetes, [`JoinTokens`] reads `--join-token-file`. In Kubernetes a second
//! implementation will send the pod's projected service-account token to the API server's
//! TokenReview (checking the audience and expiry there) and answer with the service account
//! and namespace of `status.user`; the trait is async for that network call, and
//! [`AuthError`] grows the variants it needs (expired, wrong audience) without the signing
//! code changing.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::{lines, warn_if_weak, AuthError, TokenFile, TokenFileError, TokenTable};

/// Longest workload or namespace name (Kubernetes names are at most 253 bytes).
const MAX_NAME: usize = 253;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The workload (service account) name.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// Whether the token can be revoked under a stream it opened, and is checked again while
    /// the stream lasts ([`TokenAuthenticator::revoked`]): a join token is (its line removed
    /// from the file); a Kubernetes token is reviewed once (its pod's end ends the stream).
    pub revocable: bool,
}

/// Maps a presented token to the caller it authenticates.
#[tonic::async_trait]
pub trait TokenAuthenticator: fmt::Debug + Send + Sync + 'static {
    /// The workload and namespace `token` stands for, or why it stands for none. Must not
    /// reveal through its timing how close a wrong token came to a right one.
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError>;

    /// Whether `caller`, authenticated earlier with `token` (and [`Caller::revocable`]), no
    /// longer is. Cheap: no call leaves the process.
    fn revoked(&self, _token: &str, _caller: &Caller) -> bool {
        false
    }
}

/// Join tokens from `--join-token-file`: one `token workload namespace` per line, `#`
/// comments and blank lines ignored. Re-read when the file changes.
#[derive(Debug)]
pub struct JoinTokens {
    file: Arc<TokenFile<Caller>>,
}

impl JoinTokens {
    /// Reads `path` (blocking: call it before the runtime starts, or off it).
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let file = TokenFile::load(path, parse)?;
        if file.current().is_empty() {
            tracing::warn!(path = %path.display(), "the join token file holds no token yet");
        }
        Ok(Self { file })
    }

    /// Re-reads the file whenever it changes (see [`TokenFile::watch`]).
    pub fn watch(&self) {
        self.file.watch();
    }

    /// Number of tokens in force.
    pub fn len(&self) -> usize {
        self.file.current().len()
    }

    /// True when no token is in force.
    pub fn is_empty(&self) -> bool {
        self.file.current().is_empty()
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for JoinTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        self.file
            .current()
            .find(token)
            .cloned()
            .ok_or(AuthError::Unknown)
    }

    fn revoked(&self, token: &str, caller: &Caller) -> bool {
        self.file.current().find(token) != Some(caller)
    }
}

/// Parses a join token file.
pub fn parse(path: &Path, text: &str) -> Result<TokenTable<Caller>, TokenFileError> {
    let line_error = |line, reason: String| TokenFileError::Line {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut entries: Vec<(String, Caller)> = Vec::new();
    for (line, fields) in lines(text) {
        let [token, workload, namespace] = fields.as_slice() else {
            return Err(line_error(
                line,
                format!(
                    "expected `token workload namespace`, found {} field(s)",
                    fields.len()
                ),
            ));
        };
        for (what, name) in [("workload", workload), ("namespace", namespace)] {
            check_name(name).map_err(|why| line_error(line, format!("{what} {name:?}: {why}")))?;
        }
        if (*workload, *namespace)
            == (
                crate::ca::CONTROL_SERVICE_ACCOUNT,
                crate::ca::CONTROL_NAMESPACE,
            )
        {
            return Err(line_error(
                line,
                "this is the control plane's own identity, which is never issued to a workload"
                    .into(),
            ));
        }
        if entries.iter().any(|(seen, _)| seen == token) {
            return Err(line_error(line, "this token is already listed".into()));
        }
        warn_if_weak(path, line, token);
        entries.push((
            (*token).to_owned(),
            Caller {
                workload: (*workload).to_owned(),
                namespace: (*namespace).to_owned(),
                revocable: true,
            },
        ));
    }
    Ok(TokenTable::new(entries))
}

/// A workload or namespace must be a valid SPIFFE path segment (and a Kubernetes-sized name).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_NAME {
        return Err("longer than 253 characters");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err("only letters, digits, `-`, `.` and `_` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<TokenTable<Caller>, TokenFileError> {
        parse(Path::new("join.tokens"), text)
    }

    #[tokio::test]
    async fn tokens_map_to_workload_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join.tokens");
        std::fs::write(
            &path,
            "# token workload namespace\n\
             0123456789abcdef-web  web  shop\n\n\
             \t0123456789abcdef-pay payments shop  \n",
        )
        .unwrap();
        let tokens = JoinTokens::load(&path).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.authenticate("0123456789abcdef-pay").await,
            Ok(Caller {
                workload: "payments".into(),
                namespace: "shop".into(),
                revocable: true,
            })
        );
        assert_eq!(
            tokens
                .authenticate("0123456789abcdef-web")
                .await
                .unwrap()
                .workload,
            "web"
        );
        assert_eq!(
            tokens.authenticate("0123456789abcdef").await,
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let message = |text: &str| parsed(text).err().map(|e| e.to_string());
        assert_eq!(
            message("t web shop\nonly-two fields\n").as_deref(),
            Some("join.tokens:2: expected `token workload namespace`, found 2 field(s)")
        );
        assert_eq!(
            message("t web shop extra").as_deref(),
            Some("join.tokens:1: expected `token workload namespace`, found 4 field(s)")
        );
        assert!(message("t we/b shop")
            .unwrap()
            .contains("workload \"we/b\""));
        assert!(message("t web ..").unwrap().contains("namespace \"..\""));
        assert!(message("t web %41").is_some(), "no percent-encoding");
        assert_eq!(
            message("t a b\nt c d").as_deref(),
            Some("join.tokens:2: this token is already listed")
        );
        assert!(message("t ficus-control ficus-system")
            .unwrap()
            .contains("the control plane's own identity"));
        assert!(parsed("# nothing yet\n").unwrap().is_empty());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = JoinTokens::load(Path::new("/nonexistent/join.tokens")).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cannot read /nonexistent/join.tokens"));
    }
}
