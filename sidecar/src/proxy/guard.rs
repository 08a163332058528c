//! Checks on a request before it is routed, for what hyper's parser lets through.

use http::header::{CONTENT_LENGTH, HOST};
use http::Request;

use super::error::ProxyError;

/// Longest request target (path and query) forwarded (RELIABILITY: 8 KiB → 414).
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;
/// Largest `Content-Length` believed (1 PiB); hyper accepts up to `u64::MAX - 2`, and a
/// 20-digit length is a smuggling attempt, not an upload.
pub const MAX_CONTENT_LENGTH: u64 = 1 << 50;

/// Refuses requests that are malformed in ways the HTTP parser accepts, and spells the path
/// one way: percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin` to
/// routing and authorization, as it is to the app; [`ficus_config::path`]).
pub fn check<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
    if request.method() == http::Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT tunnels are not supported"));
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET {
        return Err(ProxyError::UriTooLong(target));
    }
    // The common path is checked in one pass; only one with a `%` (or another character
    // that needs a closer look) is decoded and checked again.
    if !plainly_normal(request.uri().path()) {
        if request.uri().path().contains('%') {
            decode_path(request)?;
        }
        check_path_fully(request.uri().path())?;
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    for value in request.headers().get_all(CONTENT_LENGTH) {
        let length = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_none_or(|l| l > MAX_CONTENT_LENGTH) {
            return Err(ProxyError::BadRequest("invalid Content-Length"));
        }
    }
    Ok(())
}

/// Replaces the request's path by its spelling with unreserved characters decoded.
fn decode_path<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
    let Some(path) = ficus_config::path::decode_unreserved(request.uri().path()) else {
        return Ok(());
    };
    let target = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(())
}

/// Refuses paths that routing, authorization and the upstream could read differently
/// (RELIABILITY HTTP1-6): encoded slashes or backslashes, `%00`, backslashes, `#`, dot
/// segments (plain, percent-encoded, or with `;` parameters) and empty segments.
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    if plainly_normal(path) {
        return Ok(());
    }
    check_path_fully(path)
}

/// One pass over the bytes: no `%`, `;`, backslash or `#`, no empty segment before the last,
/// and no segment of dots only. Such a path passes [`check_path_fully`]; anything else is left
/// to it.
fn plainly_normal(path: &str) -> bool {
    let mut segment = 0usize;
    let mut dots = 0usize;
    let mut slash_seen = false;
    for &byte in path.as_bytes() {
        match byte {
            b'%' | b';' | b'\\' | b'#' => return false,
            b'/' => {
                if slash_seen && (segment == 0 || dots == segment) {
                    return false;
                }
                slash_seen = true;
                segment = 0;
                dots = 0;
            }
            b'.' => {
                segment += 1;
                dots += 1;
            }
            _ => segment += 1,
        }
    }
    !(slash_seen && segment > 0 && dots == segment)
}

/// [`check_path`] the long way, naming what is wrong.
fn check_path_fully(path: &str) -> Result<(), ProxyError> {
    match ficus_config::path::ambiguity(path) {
        Some(problem) => Err(ProxyError::BadRequest(problem)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn refusals() {
        assert!(check(&mut request(
            "/ok",
            &[("host", "a"), ("content-length", "10")]
        ))
        .is_ok());
        let long = format!("/{}", "a".repeat(MAX_REQUEST_TARGET));
        assert!(matches!(
            check(&mut request(&long, &[])),
            Err(ProxyError::UriTooLong(_))
        ));
        assert!(check(&mut request("/", &[("host", "a"), ("host", "b")])).is_err());
        assert!(check(&mut request(
            "/",
            &[("content-length", "10000000000000000000")]
        ))
        .is_err());
    }

    #[test]
    fn unreserved_escapes_are_decoded_in_the_request() {
        let mut decoded = request("/%61dmin/%7Eu?q=%61", &[]);
        check(&mut decoded).unwrap();
        assert_eq!(
            decoded.uri(),
            "/admin/~u?q=%61",
            "the query is left as it is"
        );
        let mut absolute = request("http://shop:8080/%2D%61", &[]);
        check(&mut absolute).unwrap();
        assert_eq!(absolute.uri(), "http://shop:8080/-a");
        let mut kept = request("/a%20b", &[]);
        check(&mut kept).unwrap();
        assert_eq!(kept.uri(), "/a%20b");
        // Decoded first, checked after: an encoded dot segment is still refused.
        assert!(check(&mut request("/a/%2e%2E/admin", &[])).is_err());
    }

    /// Which paths are ambiguous is `ficus_config::path`'s to say (tested there); here, that
    /// the one-pass check agrees with it.
    #[test]
    fn the_fast_check_agrees_with_the_full_one() {
        // The one-pass check never lets through what the full check refuses.
        for path in [
            "/", "//", "/a//", "/a/", "/a/.", "/a/..", "/..", "/.", "/...", "/a.", "/.a", "*",
            "..", "a//b", "/a/b/", "/a/b//", "/a%2fb", "/a\\b", "/a#b", "/a/.b/", "/a/../",
            "/..;/a", "/a;b", "/.;",
        ] {
            if plainly_normal(path) {
                assert!(check_path_fully(path).is_ok(), "{path}");
            }
            assert_eq!(
                check_path(path).is_ok(),
                check_path_fully(path).is_ok(),
                "{path}"
            );
        }
        assert!(check_path("/public/..;/admin").is_err());
        assert!(check_path("/admin;x").is_ok());
    }
}
