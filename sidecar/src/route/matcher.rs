//! One compiled `matches[]` entry. Its rank is the config's
//! ([`ficus_config::precedence`]), read from the validated match it is compiled from.

use std::borrow::Cow;

use ficus_config::path::percent_decoded;
use ficus_config::{PathMatch, RouteMatch, StringMatch};
use http::header::HeaderName;
use http::{HeaderMap, Method};

/// Conditions of one `matches[]` entry with header names and the method parsed up front.
/// Each field of the [`RouteMatch`] is compiled on its own and one to one, so two matches with
/// equal [`RouteMatch::conditions`] match the same requests (what the config's warnings about
/// shadowed matches rely on).
#[derive(Debug, Clone)]
pub struct CompiledMatch {
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<(HeaderName, StringMatch)>,
    query: Vec<(String, StringMatch)>,
}

impl CompiledMatch {
    /// Compiles a validated match. Header names were validated by the config crate; one that
    /// still fails to parse here makes the match never apply rather than apply too widely.
    pub fn new(m: &RouteMatch) -> Self {
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .unwrap_or_else(|_| HeaderName::from_static("x-ficus-invalid-header-name"));
                (name, h.value.clone())
            })
            .collect();
        Self {
            path: m.path.clone(),
            method: m
                .method
                .as_deref()
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
            headers,
            query: m
                .query_params
                .iter()
                .map(|q| (q.name.clone(), q.value.clone()))
                .collect(),
        }
    }

    /// The prefix this match consumed, for `ReplacePrefixMatch`.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a request satisfies every condition.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        path_matches(&self.path, path)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(name, want)| header_matches(headers, name, want))
            && self
                .query
                .iter()
                .all(|(name, want)| query_value(query, name).is_some_and(|v| want.is_match(&v)))
    }
}

/// Header condition. A header sent more than once is matched as the one value its lines
/// combine into (RFC 9110 §5.3, as Gateway API asks and Envoy does): joined with `,`, or with
/// `; ` for `cookie` (HTTP/2 sends it in crumbs, RFC 9113 §8.2.3). So `x-env: prod` does
/// not match a request that sent `x-env: prod` and `x-env: staging`. A value that is not
/// visible ASCII matches nothing.
fn header_matches(headers: &HeaderMap, name: &HeaderName, want: &StringMatch) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Ok(first) = first.to_str() else {
        return false;
    };
    let Some(second) = values.next() else {
        return want.is_match(first);
    };
    let separator = if name == http::header::COOKIE {
        "; "
    } else {
        ","
    };
    let mut joined = String::from(first);
    for value in std::iter::once(second).chain(values) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        joined.push_str(separator);
        joined.push_str(value);
    }
    want.is_match(&joined)
}

/// Path condition. Prefixes match whole segments: `/api` matches `/api` and `/api/x`, not
/// `/apix`.
pub fn path_matches(condition: &PathMatch, path: &str) -> bool {
    match condition {
        PathMatch::Exact(want) => path == want,
        PathMatch::Prefix(prefix) => {
            prefix == "/"
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        PathMatch::RegularExpression(re) => re.is_match(path),
    }
}

/// First value of query parameter `name` (Gateway API's advice for a repeated parameter),
/// with name and value percent-decoded as Envoy reads them (`a%40b` is `a@b`; `+` stays `+`).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decoded(key) == name).then(|| percent_decoded(value))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_owned())
    }

    #[test]
    fn prefix_matches_whole_segments() {
        assert!(path_matches(&prefix("/api"), "/api"));
        assert!(path_matches(&prefix("/api"), "/api/"));
        assert!(path_matches(&prefix("/api"), "/api/payments"));
        assert!(!path_matches(&prefix("/api"), "/apix"));
        assert!(!path_matches(&prefix("/api"), "/"));
        assert!(path_matches(&prefix("/"), "/anything"));
    }

    #[test]
    fn a_repeated_header_matches_as_its_combined_value() {
        let name = HeaderName::from_static("x-env");
        let exact = |v: &str| StringMatch::Exact(v.to_owned());
        let mut headers = HeaderMap::new();
        assert!(!header_matches(&headers, &name, &exact("prod")));
        headers.append(&name, "prod".parse().unwrap());
        assert!(header_matches(&headers, &name, &exact("prod")));
        headers.append(&name, "staging".parse().unwrap());
        assert!(!header_matches(&headers, &name, &exact("prod")));
        assert!(!header_matches(&headers, &name, &exact("staging")));
        assert!(header_matches(&headers, &name, &exact("prod,staging")));
        let mut crumbs = HeaderMap::new();
        crumbs.append(http::header::COOKIE, "a=1".parse().unwrap());
        crumbs.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert!(header_matches(
            &crumbs,
            &http::header::COOKIE,
            &exact("a=1; b=2")
        ));
        let mut opaque = HeaderMap::new();
        opaque.append(&name, "prod".parse().unwrap());
        opaque.append(&name, http::HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(!header_matches(&opaque, &name, &exact("prod")));
    }

    #[test]
    fn query_values() {
        let value = |query, name| query_value(query, name).map(Cow::into_owned);
        assert_eq!(value(Some("a=1&b=2&a=3"), "a").as_deref(), Some("1"));
        assert_eq!(value(Some("flag&b=2"), "flag").as_deref(), Some(""));
        assert_eq!(value(Some("b=2"), "a"), None);
        assert_eq!(value(None, "a"), None);
        // Decoded, name and value; `+` is not a space; broken escapes stay as written.
        assert_eq!(
            value(Some("user=a%40b.c"), "user").as_deref(),
            Some("a@b.c")
        );
        assert_eq!(value(Some("us%65r=x"), "user").as_deref(), Some("x"));
        assert_eq!(value(Some("q=a+b%20c"), "q").as_deref(), Some("a+b c"));
        assert_eq!(value(Some("q=100%&r=%zz%4"), "q").as_deref(), Some("100%"));
        assert_eq!(value(Some("r=%zz%4"), "r").as_deref(), Some("%zz%4"));
        assert_eq!(value(Some("q=caf%C3%A9"), "q").as_deref(), Some("café"));
        assert_eq!(value(Some("q=%FF"), "q").as_deref(), Some("%FF"));
        assert_eq!(value(Some("q=%+9"), "q").as_deref(), Some("%+9"));
    }

    proptest! {
        /// A prefix condition holds exactly when the path is the prefix or continues it with
        /// a new segment.
        #[test]
        fn prefix_is_segment_aware(
            segments in prop::collection::vec("[a-z]{1,4}", 1..4),
            tail in "[a-z/]{0,6}",
        ) {
            let p = format!("/{}", segments.join("/"));
            let path = format!("{p}{tail}");
            let expect = tail.is_empty() || tail.starts_with('/');
            prop_assert_eq!(path_matches(&prefix(&p), &path), expect);
        }

        /// Exact holds only for the same string.
        #[test]
        fn exact_is_equality(a in "/[a-z/]{0,8}", b in "/[a-z/]{0,8}") {
            prop_assert_eq!(path_matches(&PathMatch::Exact(a.clone()), &b), a == b);
        }
    }
}
