//! Who is calling: bearer tokens for the admin API and for certificate signing.
//!
//! Tokens live in files (`--admin-token-file`, `--join-token-file`) that are re-read when they
//! change, so a token can be added or revoked without a restart; an edit that does not parse
//! is logged and the previous tokens stay in force. Only SHA-256 digests of the tokens are
//! kept, and a presented token is compared with every entry in constant time: neither the
//! position of a match nor the length of a stored token shows in the timing.
//!
//! # Layout
//! - [`join`] — [`TokenAuthenticator`](join::TokenAuthenticator), the seam that maps a
//!   sidecar's token to its workload and namespace, and its join-token implementation.
//! - [`admin`] — the tokens allowed to use the write API.

pub mod admin;
pub mod join;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// How often token files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Largest token file read (a few thousand tokens).
const MAX_FILE: u64 = 1024 * 1024;
/// Tokens shorter than this are accepted with a warning: they are guessable.
const WEAK_TOKEN: usize = 16;

/// Why a caller was not authenticated. Every variant is answered with 401 /
/// `UNAUTHENTICATED`; the message never says whether a token is close to a real one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `authorization: Bearer <token>` header (or metadata) at all.
    #[error("no bearer token: send `authorization: Bearer <token>`")]
    Missing,
    /// The header is there but is not `Bearer <token>`.
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    /// A token that no token file lists (or one that was revoked).
    #[error("unknown token")]
    Unknown,
    /// No way to authenticate is configured (e.g. no `--join-token-file`).
    #[error("{0}")]
    NotConfigured(&'static str),
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file cannot be read (missing, permissions, not a file).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than 1 MiB: not a token file.
    #[error("{path} is larger than {MAX_FILE} bytes; is it a token file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line does not have the expected shape.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// No token at all (only comments or blank lines).
    #[error("{path} holds no token; write one token per line")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// `Bearer <token>` → the token (the scheme is case-insensitive, as HTTP says).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Tokens (by digest) and what each one stands for.
#[derive(Debug)]
pub struct TokenTable<T> {
    entries: Vec<([u8; 32], T)>,
}

impl<T> TokenTable<T> {
    /// A table of `(token, value)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(token, value)| (digest(&token), value))
                .collect(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `token`. Every entry is compared, in constant time, whether or not an
    /// earlier one matched; tokens are compared as SHA-256 digests so that their lengths do
    /// not show either.
    pub fn find(&self, token: &str) -> Option<&T> {
        let wanted = digest(token);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (position, (stored, _)) in self.entries.iter().enumerate() {
            let equal = stored.ct_eq(&wanted);
            index = u64::conditional_select(&index, &(position as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            self.entries
                .get(usize::try_from(index).ok()?)
                .map(|(_, value)| value)
        } else {
            None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token file, parsed, and re-parsed by [`TokenFile::watch`] whenever it changes.
#[derive(Debug)]
pub struct TokenFile<T> {
    path: PathBuf,
    parse: fn(&Path, &str) -> Result<TokenTable<T>, TokenFileError>,
    current: ArcSwap<TokenTable<T>>,
}

impl<T: Send + Sync + 'static> TokenFile<T> {
    /// Reads and parses `path` (blocking: call it before the runtime starts, or off it).
    pub fn load(
        path: &Path,
        parse: fn(&Path, &str) -> Result<TokenTable<T>, TokenFileError>,
    ) -> Result<Arc<Self>, TokenFileError> {
        let text = read(path)?;
        let table = parse(path, &text)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            parse,
            current: ArcSwap::from_pointee(table),
        }))
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<TokenTable<T>> {
        self.current.load_full()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file every few seconds when it changed (modification time, size or
    /// inode: editors and Kubernetes secret updates replace the file); a version that does not
    /// parse is logged and ignored. Runs until the process ends.
    pub fn watch(self: &Arc<Self>) {
        let file = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = stamp(&file.path).await;
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                file.reload_if_changed(&mut seen).await;
            }
        });
    }

    /// One check of [`TokenFile::watch`]; true when new tokens were installed.
    async fn reload_if_changed(&self, seen: &mut Option<Stamp>) -> bool {
        let now = stamp(&self.path).await;
        if now == *seen {
            return false;
        }
        *seen = now;
        let path = self.path.clone();
        let parse = self.parse;
        let parsed = tokio::task::spawn_blocking(move || {
            let text = read(&path)?;
            parse(&path, &text)
        })
        .await;
        match parsed {
            Ok(Ok(table)) => {
                tracing::info!(path = %self.path.display(), tokens = table.len(),
                    "token file reloaded");
                self.current.store(Arc::new(table));
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "token file not reloaded; the previous tokens stay");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "token file reload task failed");
                false
            }
        }
    }
}

/// What tells a changed file apart.
type Stamp = (SystemTime, u64, u64);

async fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

fn read(path: &Path) -> Result<String, TokenFileError> {
    let read_error = |source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.len() > MAX_FILE {
        return Err(TokenFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// The meaningful lines of a token file: 1-based number and whitespace-separated fields;
/// blank lines and lines starting with `#` are skipped.
fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#'))
            .then(|| (index + 1, line.split_whitespace().collect()))
    })
}

fn warn_if_weak(path: &Path, line: usize, token: &str) {
    if token.len() < WEAK_TOKEN {
        tracing::warn!(path = %path.display(), line,
            "token shorter than {WEAK_TOKEN} characters: easy to guess; use e.g. `openssl rand -hex 32`");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Bearer  ")), Err(AuthError::Malformed));
    }

    #[test]
    fn tables_find_only_exact_tokens() {
        let table = TokenTable::new([
            ("first-token".to_owned(), 1),
            ("second-token".to_owned(), 2),
            ("third".to_owned(), 3),
        ]);
        assert_eq!(table.find("first-token"), Some(&1));
        assert_eq!(table.find("second-token"), Some(&2));
        assert_eq!(table.find("third"), Some(&3));
        assert_eq!(table.find("third "), None);
        assert_eq!(table.find("thir"), None);
        assert_eq!(table.find(""), None);
        assert_eq!(table.find("FIRST-TOKEN"), None);
        let empty: TokenTable<u8> = TokenTable::new([]);
        assert_eq!(empty.find("anything"), None);
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let parsed: Vec<_> = lines("# header\n\n  a b c  \n\t# indented comment\nd\n").collect();
        assert_eq!(parsed, vec![(3, vec!["a", "b", "c"]), (5, vec!["d"])]);
    }

    #[tokio::test]
    async fn an_edited_file_is_reloaded_and_a_broken_edit_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "one\n").unwrap();
        let parse = |path: &Path, text: &str| {
            let mut tokens = Vec::new();
            for (line, fields) in lines(text) {
                if fields.len() != 1 {
                    return Err(TokenFileError::Line {
                        path: path.to_owned(),
                        line,
                        reason: "one token per line".into(),
                    });
                }
                tokens.push((fields[0].to_owned(), ()));
            }
            Ok(TokenTable::new(tokens))
        };
        let file = TokenFile::load(&path, parse).unwrap();
        assert!(file.current().find("one").is_some());
        let mut seen = stamp(&path).await;
        assert!(!file.reload_if_changed(&mut seen).await, "unchanged");

        // Replaced (new inode, new size), as editors and secret mounts do.
        let replace = |text: &str| {
            let temp = dir.path().join("tokens.new");
            std::fs::write(&temp, text).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        };
        replace("one two three\n");
        assert!(!file.reload_if_changed(&mut seen).await, "a broken edit");
        assert!(file.current().find("one").is_some(), "the old tokens stay");

        replace("# rotated\ntwo\n");
        assert!(file.reload_if_changed(&mut seen).await);
        assert!(file.current().find("two").is_some());
        assert!(file.current().find("one").is_none(), "revoked");
    }
}
