//! SPIFFE IDs: parsing and validating `spiffe://<trust-domain>/<path>`.
//!
//! The rules are the SPIFFE ID specification's, read strictly (as go-spiffe does): the scheme is
//! exactly `spiffe`, the trust domain is lowercase `[a-z0-9._-]` with no port or userinfo, and the
//! path is a non-empty sequence of `/`-separated segments of `[a-zA-Z0-9._-]`, none of them empty,
//! `.` or `..`. There is no percent-decoding, no query and no fragment, so every valid ID has
//! exactly one spelling and comparing IDs is comparing strings. A bare trust domain
//! (`spiffe://td` or `spiffe://td/`) names no workload and is refused.
//!
//! Parsing never panics on any input; [`parse_bytes`](SpiffeId::parse_bytes) takes raw bytes
//! for fuzzing and for values read off the wire.

use std::fmt;

/// The scheme prefix every SPIFFE ID starts with.
const PREFIX: &str = "spiffe://";

/// The longest SPIFFE ID accepted, in bytes (the specification's limit).
pub const MAX_ID_LEN: usize = 2048;

/// The longest trust domain accepted, in bytes (the specification's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// How much of a rejected input an error message quotes.
const QUOTE_LEN: usize = 80;

/// Why a string is not an acceptable SPIFFE ID (or trust domain).
///
/// Every variant that quotes the input keeps at most its first 80 characters, so an error built
/// from a peer's certificate stays bounded in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input is longer than the specification allows.
    #[error("SPIFFE ID is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input is not UTF-8 (only reachable through [`SpiffeId::parse_bytes`]).
    #[error("SPIFFE ID is not valid UTF-8")]
    NotUtf8,
    /// The input does not start with `spiffe://` (exactly, lowercase).
    #[error("invalid SPIFFE ID {id:?}: the scheme must be `spiffe://`")]
    Scheme {
        /// The input (truncated).
        id: String,
    },
    /// Nothing between `spiffe://` and the path.
    #[error("invalid SPIFFE ID {id:?}: the trust domain is empty")]
    EmptyTrustDomain {
        /// The input (truncated).
        id: String,
    },
    /// The trust domain is longer than 255 bytes.
    #[error(
        "invalid SPIFFE ID {id:?}: the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
    )]
    TrustDomainTooLong {
        /// The input (truncated).
        id: String,
    },
    /// The trust domain has a port (`:`).
    #[error("invalid SPIFFE ID {id:?}: the trust domain may not have a port")]
    Port {
        /// The input (truncated).
        id: String,
    },
    /// The trust domain has userinfo (`@`).
    #[error("invalid SPIFFE ID {id:?}: the trust domain may not have userinfo")]
    UserInfo {
        /// The input (truncated).
        id: String,
    },
    /// A character outside lowercase `[a-z0-9._-]` in the trust domain (uppercase included: the
    /// specification makes IDs lowercase so that string comparison is identity comparison).
    #[error(
        "invalid SPIFFE ID {id:?}: trust domain character {ch:?} is not one of lowercase letters, \
         digits, `.`, `-` and `_`"
    )]
    TrustDomainChar {
        /// The input (truncated).
        id: String,
        /// The offending character.
        ch: char,
    },
    /// No path: `spiffe://td` or `spiffe://td/` names a trust domain, not a workload.
    #[error("invalid SPIFFE ID {id:?}: the path is empty (a bare trust domain names no workload)")]
    EmptyPath {
        /// The input (truncated).
        id: String,
    },
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("invalid SPIFFE ID {id:?}: the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment {
        /// The input (truncated).
        id: String,
    },
    /// A path segment is `.` or `..`.
    #[error("invalid SPIFFE ID {id:?}: the path has a `.` or `..` segment")]
    DotSegment {
        /// The input (truncated).
        id: String,
    },
    /// A `%`: percent-encoding would give one ID several spellings.
    #[error("invalid SPIFFE ID {id:?}: percent-encoding is not allowed")]
    PercentEncoding {
        /// The input (truncated).
        id: String,
    },
    /// A `?` (query).
    #[error("invalid SPIFFE ID {id:?}: a query is not allowed")]
    Query {
        /// The input (truncated).
        id: String,
    },
    /// A `#` (fragment).
    #[error("invalid SPIFFE ID {id:?}: a fragment is not allowed")]
    Fragment {
        /// The input (truncated).
        id: String,
    },
    /// A character outside `[a-zA-Z0-9._-]` in a path segment.
    #[error(
        "invalid SPIFFE ID {id:?}: path character {ch:?} is not one of letters, digits, `.`, `-` \
         and `_`"
    )]
    PathChar {
        /// The input (truncated).
        id: String,
        /// The offending character.
        ch: char,
    },
    /// A namespace or service account given to [`SpiffeId::workload`] is not a single valid path
    /// segment.
    #[error("invalid {part} {value:?} for a workload SPIFFE ID: {reason}")]
    WorkloadPart {
        /// `"namespace"` or `"service account"`.
        part: &'static str,
        /// The value (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>/<path>`; for workloads the path is
/// `/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the trust domain ends (and the path's `/` starts).
    trust_domain_len: usize,
}

impl SpiffeId {
    /// Parses and validates (SPIFFE rules: scheme `spiffe`, lowercase trust domain of
    /// `[a-z0-9.-_]`, no port, userinfo, query or fragment; a non-empty path of segments of
    /// `[a-zA-Z0-9.-_]`, none empty, `.` or `..`; no percent-encoding; at most 2048 bytes).
    pub fn parse(id: &str) -> Result<Self, SpiffeError> {
        if id.is_empty() {
            return Err(SpiffeError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeError::TooLong { len: id.len() });
        }
        let Some(rest) = id.strip_prefix(PREFIX) else {
            return Err(SpiffeError::Scheme { id: quote(id) });
        };
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain, id)?;
        check_path(path, id)?;
        Ok(Self {
            id: id.to_owned(),
            trust_domain_len: PREFIX.len() + trust_domain.len(),
        })
    }

    /// Like [`parse`](Self::parse), from raw bytes (a certificate's SAN, a fuzzer's input).
    /// Never panics.
    pub fn parse_bytes(id: &[u8]) -> Result<Self, SpiffeError> {
        match std::str::from_utf8(id) {
            Ok(id) => Self::parse(id),
            Err(_) => Err(SpiffeError::NotUtf8),
        }
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeError> {
        check_workload_part("namespace", namespace)?;
        check_workload_part("service account", service_account)?;
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.id[PREFIX.len()..self.trust_domain_len]
    }

    /// The path, starting with `/` (never empty).
    pub fn path(&self) -> &str {
        &self.id[self.trust_domain_len..]
    }

    /// The namespace of a workload ID (`/ns/<namespace>/sa/<service-account>`); `None` for any
    /// other path shape.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(namespace, _)| namespace)
    }

    /// The service account of a workload ID (`/ns/<namespace>/sa/<service-account>`); `None` for
    /// any other path shape.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts()
            .map(|(_, service_account)| service_account)
    }

    fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
                Some((namespace, service_account))
            }
            _ => None,
        }
    }
}

// === impl SpiffeId ===

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::parse(id)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

/// Checks a trust domain name on its own (`example.org`, not `spiffe://example.org`): what the
/// CA, the trust bundle and the mesh config accept as `trustDomain`.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeError> {
    let shown = format!("{PREFIX}{trust_domain}");
    check_trust_domain(trust_domain, &shown)
}

fn check_trust_domain(trust_domain: &str, id: &str) -> Result<(), SpiffeError> {
    if trust_domain.is_empty() {
        return Err(SpiffeError::EmptyTrustDomain { id: quote(id) });
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeError::TrustDomainTooLong { id: quote(id) });
    }
    for ch in trust_domain.chars() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeError::Port { id: quote(id) }),
            '@' => return Err(SpiffeError::UserInfo { id: quote(id) }),
            '%' => return Err(SpiffeError::PercentEncoding { id: quote(id) }),
            '?' => return Err(SpiffeError::Query { id: quote(id) }),
            '#' => return Err(SpiffeError::Fragment { id: quote(id) }),
            ch => return Err(SpiffeError::TrustDomainChar { id: quote(id), ch }),
        }
    }
    Ok(())
}

/// `path` is empty or starts with `/`.
fn check_path(path: &str, id: &str) -> Result<(), SpiffeError> {
    let Some(segments) = path.strip_prefix('/') else {
        return Err(SpiffeError::EmptyPath { id: quote(id) });
    };
    if segments.is_empty() {
        return Err(SpiffeError::EmptyPath { id: quote(id) });
    }
    for segment in segments.split('/') {
        check_segment(segment).map_err(|kind| kind.into_error(id))?;
    }
    Ok(())
}

/// What is wrong with one path segment (the caller adds the context).
enum SegmentError {
    Empty,
    Dot,
    Percent,
    Query,
    Fragment,
    Char(char),
}

impl SegmentError {
    fn into_error(self, id: &str) -> SpiffeError {
        let id = quote(id);
        match self {
            Self::Empty => SpiffeError::EmptySegment { id },
            Self::Dot => SpiffeError::DotSegment { id },
            Self::Percent => SpiffeError::PercentEncoding { id },
            Self::Query => SpiffeError::Query { id },
            Self::Fragment => SpiffeError::Fragment { id },
            Self::Char(ch) => SpiffeError::PathChar { id, ch },
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "it is empty",
            Self::Dot => "it is `.` or `..`",
            Self::Percent => "percent-encoding is not allowed",
            Self::Query | Self::Fragment | Self::Char(_) => {
                "only letters, digits, `.`, `-` and `_` are allowed"
            }
        }
    }
}

fn check_segment(segment: &str) -> Result<(), SegmentError> {
    if segment.is_empty() {
        return Err(SegmentError::Empty);
    }
    if segment == "." || segment == ".." {
        return Err(SegmentError::Dot);
    }
    for ch in segment.chars() {
        match ch {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
            '%' => return Err(SegmentError::Percent),
            '?' => return Err(SegmentError::Query),
            '#' => return Err(SegmentError::Fragment),
            ch => return Err(SegmentError::Char(ch)),
        }
    }
    Ok(())
}

fn check_workload_part(part: &'static str, value: &str) -> Result<(), SpiffeError> {
    check_segment(value).map_err(|error| SpiffeError::WorkloadPart {
        part,
        value: quote(value),
        reason: error.reason(),
    })
}

/// The first [`QUOTE_LEN`] characters of `input`, for error messages.
fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LEN) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_workload_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");

        let built = SpiffeId::workload("cluster.local", "default", "web").unwrap();
        assert_eq!(built, id);
    }

    #[test]
    fn other_paths_have_no_workload_parts() {
        for id in [
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
            "spiffe://td/ns/a/xx/b",
            "spiffe://td/control",
        ] {
            let id = SpiffeId::parse(id).unwrap();
            assert_eq!(id.namespace(), None, "{id}");
            assert_eq!(id.service_account(), None, "{id}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        type Check = fn(&SpiffeError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, SpiffeError::Empty)),
            ("http://td/a", |e| matches!(e, SpiffeError::Scheme { .. })),
            ("SPIFFE://td/a", |e| matches!(e, SpiffeError::Scheme { .. })),
            ("spiffe:/td/a", |e| matches!(e, SpiffeError::Scheme { .. })),
            ("spiffe://", |e| {
                matches!(e, SpiffeError::EmptyTrustDomain { .. })
            }),
            ("spiffe:///a", |e| {
                matches!(e, SpiffeError::EmptyTrustDomain { .. })
            }),
            ("spiffe://td", |e| {
                matches!(e, SpiffeError::EmptyPath { .. })
            }),
            ("spiffe://td/", |e| {
                matches!(e, SpiffeError::EmptyPath { .. })
            }),
            ("spiffe://td:8080/a", |e| {
                matches!(e, SpiffeError::Port { .. })
            }),
            ("spiffe://user@td/a", |e| {
                matches!(e, SpiffeError::UserInfo { .. })
            }),
            ("spiffe://TD/a", |e| {
                matches!(e, SpiffeError::TrustDomainChar { ch: 'T', .. })
            }),
            ("spiffe://t d/a", |e| {
                matches!(e, SpiffeError::TrustDomainChar { .. })
            }),
            ("spiffe://td?x=1", |e| {
                matches!(e, SpiffeError::Query { .. })
            }),
            ("spiffe://td/a/", |e| {
                matches!(e, SpiffeError::EmptySegment { .. })
            }),
            ("spiffe://td//a", |e| {
                matches!(e, SpiffeError::EmptySegment { .. })
            }),
            ("spiffe://td/a/./b", |e| {
                matches!(e, SpiffeError::DotSegment { .. })
            }),
            ("spiffe://td/a/../b", |e| {
                matches!(e, SpiffeError::DotSegment { .. })
            }),
            ("spiffe://td/..", |e| {
                matches!(e, SpiffeError::DotSegment { .. })
            }),
            ("spiffe://td/a%2Fb", |e| {
                matches!(e, SpiffeError::PercentEncoding { .. })
            }),
            ("spiffe://td/a?b", |e| {
                matches!(e, SpiffeError::Query { .. })
            }),
            ("spiffe://td/a#b", |e| {
                matches!(e, SpiffeError::Fragment { .. })
            }),
            ("spiffe://td/a b", |e| {
                matches!(e, SpiffeError::PathChar { ch: ' ', .. })
            }),
            ("spiffe://td/é", |e| {
                matches!(e, SpiffeError::PathChar { ch: 'é', .. })
            }),
        ];
        for (input, check) in cases {
            let error = SpiffeId::parse(input).expect_err(input);
            assert!(check(&error), "{input:?}: {error:?}");
        }
    }

    #[test]
    fn length_limits() {
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN - 12));
        assert_eq!(long_path.len(), MAX_ID_LEN);
        assert!(SpiffeId::parse(&long_path).is_ok());
        let too_long = format!("{long_path}a");
        assert_eq!(
            SpiffeId::parse(&too_long),
            Err(SpiffeError::TooLong {
                len: MAX_ID_LEN + 1
            })
        );

        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let error = SpiffeId::parse(&format!("spiffe://{td}a/x")).unwrap_err();
        assert!(matches!(error, SpiffeError::TrustDomainTooLong { .. }));
        // The message quotes a bounded prefix of the input.
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn workload_refuses_parts_that_are_not_one_segment() {
        for (ns, sa) in [
            ("a/b", "c"),
            ("a", ".."),
            ("", "c"),
            ("a", "b%20"),
            ("a", "b/"),
        ] {
            let error = SpiffeId::workload("td", ns, sa).unwrap_err();
            assert!(
                matches!(error, SpiffeError::WorkloadPart { .. }),
                "{ns}/{sa}: {error}"
            );
        }
        assert!(matches!(
            SpiffeId::workload("TD", "a", "b"),
            Err(SpiffeError::TrustDomainChar { .. })
        ));
    }

    #[test]
    fn trust_domains() {
        assert!(validate_trust_domain("cluster.local").is_ok());
        assert!(validate_trust_domain("").is_err());
        assert!(validate_trust_domain("a/b").is_err());
        assert!(validate_trust_domain("a:1").is_err());
        assert!(validate_trust_domain("Upper").is_err());
    }

    #[test]
    fn parse_bytes_refuses_invalid_utf8() {
        assert_eq!(
            SpiffeId::parse_bytes(b"spiffe://td/\xff"),
            Err(SpiffeError::NotUtf8)
        );
        assert!(SpiffeId::parse_bytes(b"spiffe://td/a").is_ok());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
    }

    fn valid_id() -> impl Strategy<Value = String> {
        ("[a-z0-9._-]{1,20}", prop::collection::vec(segment(), 1..6))
            .prop_map(|(td, segments)| format!("spiffe://{td}/{}", segments.join("/")))
    }

    proptest! {
        #[test]
        fn roundtrip(input in valid_id()) {
            let id = SpiffeId::parse(&input).unwrap();
            prop_assert_eq!(id.to_string(), input.clone());
            let text = id.to_string();
            let again = SpiffeId::parse(&text).unwrap();
            prop_assert_eq!(&again, &id);
            let prefix = format!("spiffe://{}/", id.trust_domain());
            prop_assert!(input.starts_with(&prefix));
        }

        #[test]
        fn workload_roundtrip(td in "[a-z0-9._-]{1,20}", ns in segment(), sa in segment()) {
            let id = SpiffeId::workload(&td, &ns, &sa).unwrap();
            prop_assert_eq!(id.trust_domain(), td.as_str());
            prop_assert_eq!(id.namespace(), Some(ns.as_str()));
            prop_assert_eq!(id.service_account(), Some(sa.as_str()));
            prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        }

        #[test]
        fn never_panics(input in any::<String>()) {
            if let Ok(id) = SpiffeId::parse(&input) {
                prop_assert_eq!(id.as_str(), input.as_str());
                let _ = (id.trust_domain(), id.namespace(), id.service_account());
            }
        }

        #[test]
        fn never_panics_near_valid(input in "spiffe://[a-zA-Z0-9.:@%/?#_-]{0,30}") {
            if let Ok(id) = SpiffeId::parse(&input) {
                let text = id.to_string();
                prop_assert_eq!(SpiffeId::parse(&text).unwrap(), id);
            }
        }

        #[test]
        fn never_panics_on_bytes(input in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = SpiffeId::parse_bytes(&input);
        }
    }
}
