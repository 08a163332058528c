//! Route filters compiled for the request path: header modifiers, URL rewrite, redirect.

use ficus_config::{HeaderModifier, PathModifier, RequestRedirect, UrlRewrite};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// `RequestHeaderModifier` / `ResponseHeaderModifier` with names and values parsed.
#[derive(Debug, Clone)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compiles a validated modifier; `None` if it does nothing. Entries that still fail to
    /// parse (validation should have caught them) are skipped.
    pub fn new(modifier: &HeaderModifier) -> Option<Self> {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        };
        let ops = Self {
            set: pairs(&modifier.set),
            add: pairs(&modifier.add),
            remove: modifier
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        };
        (!ops.set.is_empty() || !ops.add.is_empty() || !ops.remove.is_empty()).then_some(ops)
    }

    /// Applies set, then add, then remove (Gateway API order).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// `URLRewrite`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// New authority.
    pub hostname: Option<String>,
    path: Option<PathModifier>,
}

impl Rewrite {
    /// Compiles a validated rewrite.
    pub fn new(rewrite: &UrlRewrite) -> Self {
        Self {
            hostname: rewrite.hostname.clone(),
            path: rewrite.path.clone(),
        }
    }

    /// The rewritten path, if the rewrite changes it. `prefix` is the matched `PathPrefix`.
    pub fn path(&self, path: &str, prefix: Option<&str>) -> Option<String> {
        self.path.as_ref().map(|m| modify_path(m, path, prefix))
    }
}

/// `RequestRedirect`.
#[derive(Debug, Clone)]
pub struct Redirect {
    redirect: RequestRedirect,
}

impl Redirect {
    /// Compiles a validated redirect.
    pub fn new(redirect: &RequestRedirect) -> Self {
        Self {
            redirect: redirect.clone(),
        }
    }

    /// Status code of the redirect.
    pub fn status(&self) -> u16 {
        self.redirect.status_code
    }

    /// The `Location` for a request to `host` (may carry a port) at `path`?`query`.
    pub fn location(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
    ) -> String {
        let r = &self.redirect;
        let scheme = r.scheme.as_deref().unwrap_or("http");
        let (request_host, request_port) = split_port(host);
        let hostname = r.hostname.as_deref().unwrap_or(request_host);
        let port = match (r.port, &r.scheme) {
            (Some(port), _) => Some(port),
            // A scheme change drops the request's port (it belonged to the old scheme).
            (None, Some(_)) => None,
            (None, None) => request_port,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let path = r
            .path
            .as_ref()
            .map_or_else(|| path.to_owned(), |m| modify_path(m, path, prefix));
        let mut location = format!("{scheme}://{hostname}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(&path);
        if let Some(query) = query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

fn split_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

/// Applies a path modifier. `ReplacePrefixMatch` swaps the matched prefix for the replacement,
/// keeping segment boundaries: prefix `/foo`, replacement `/bar`: `/foo/x` → `/bar/x`.
pub fn modify_path(modifier: &PathModifier, path: &str, prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = match prefix {
                Some(p) if p != "/" => after_prefix(path, p),
                // Prefix `/`: the whole path follows the replacement.
                _ => path,
            };
            let replacement = replacement.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".to_owned()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// What follows the matched `prefix` in `path`: the rest after it, or, when the route matched
/// `path` without its `;` parameters (`/api;v=1/x` for prefix `/api`), the rest after as many
/// segments as the prefix has (their parameters go with the replaced prefix).
fn after_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    if let Some(rest) = path.strip_prefix(prefix) {
        if rest.is_empty() || rest.starts_with('/') {
            return rest;
        }
    }
    let mut rest = path;
    for _ in 0..prefix.trim_end_matches('/').matches('/').count() {
        rest = match rest.get(1..).and_then(|tail| tail.find('/')) {
            Some(at) => &rest[at + 1..],
            None => "",
        };
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(replacement: &str, prefix: &str, path: &str) -> String {
        modify_path(
            &PathModifier::ReplacePrefixMatch(replacement.to_owned()),
            path,
            Some(prefix),
        )
    }

    #[test]
    fn replace_prefix_match_keeps_segments() {
        assert_eq!(prefix("/bar", "/foo", "/foo/x"), "/bar/x");
        assert_eq!(prefix("/bar", "/foo", "/foo"), "/bar");
        assert_eq!(prefix("/", "/foo", "/foo/x"), "/x");
        assert_eq!(prefix("/", "/foo", "/foo"), "/");
        assert_eq!(prefix("/v2/", "/", "/x"), "/v2/x");
        // Matched without `;` parameters: the prefix's segments are replaced, parameters and
        // all, and no empty segment is left.
        assert_eq!(prefix("/", "/api", "/api;x/admin"), "/admin");
        assert_eq!(prefix("/new", "/api/v1", "/api;x/v1/u"), "/new/u");
        assert_eq!(prefix("/new", "/api/v1", "/api/v1;y"), "/new");
        assert_eq!(prefix("/new", "/api", "/api;x"), "/new");
    }

    #[test]
    fn redirect_location() {
        let redirect = |r: RequestRedirect| Redirect::new(&r);
        let base = RequestRedirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status_code: 301,
        };
        let r = redirect(RequestRedirect {
            scheme: Some("https".into()),
            ..base.clone()
        });
        assert_eq!(
            r.location("shop:8080", "/a", Some("q=1"), None),
            "https://shop/a?q=1"
        );
        let r = redirect(RequestRedirect {
            hostname: Some("new".into()),
            ..base.clone()
        });
        assert_eq!(
            r.location("shop:8080", "/a", None, None),
            "http://new:8080/a"
        );
        let r = redirect(RequestRedirect {
            path: Some(PathModifier::ReplaceFullPath("/moved".into())),
            port: Some(9000),
            ..base
        });
        assert_eq!(
            r.location("shop", "/a", None, None),
            "http://shop:9000/moved"
        );
    }

    #[test]
    fn header_ops_order() {
        let ops = HeaderOps::new(&HeaderModifier {
            set: vec![("x-a".into(), "1".into())],
            add: vec![("x-b".into(), "2".into())],
            remove: vec!["x-c".into()],
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("0"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        headers.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut headers);
        assert_eq!(headers["x-a"], "1");
        assert_eq!(headers.get_all("x-b").iter().count(), 2);
        assert!(!headers.contains_key("x-c"));
    }
}
