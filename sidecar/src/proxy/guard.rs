//! Checks on a request before it is routed, for what hyper's parser lets through.

use http::header::{CONTENT_LENGTH, HOST};
use http::Request;

use super::error::ProxyError;

/// Longest request target (path and query) forwarded (RELIABILITY: 8 KiB → 414).
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;
/// Largest `Content-Length` believed (1 PiB); hyper accepts up to `u64::MAX - 2`, and a
/// 20-digit length is a smuggling attempt, not an upload.
pub const MAX_CONTENT_LENGTH: u64 = 1 << 50;

/// Header fields a peer sidecar may add to a request on its way (see `proxy::inbound`).
pub const PEER_ADDED_FIELDS: usize = 16;

/// Refuses requests that are malformed in ways the HTTP parser accepts, and spells the path
/// one way: percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin` to
/// routing and authorization, as it is to the app; [`ficus_config::path`]).
///
/// `max_headers` bounds an HTTP/2 request's fields, its four pseudo-headers counted (hyper
/// holds HTTP/1.1 to it while parsing).
pub fn check<B>(request: &mut Request<B>, max_headers: usize) -> Result<(), ProxyError> {
    if request.version() == http::Version::HTTP_2 {
        let fields = request.headers().len() + 4;
        if fields > max_headers {
            return Err(ProxyError::TooManyHeaders(fields));
        }
    }
    if request.method() == http::Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT tunnels are not supported"));
    }
    // Methods are case-sensitive, and every registered one is upper case; some app servers
    // upper-case what they get, so `delete` would be DELETE to the app and not to a policy.
    if request
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(ProxyError::BadRequest("lower-case method"));
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
    check_host(request)?;
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

/// The bounded `ficus_http_rejected_total` reason of a refusal by [`check`].
pub fn rejection_reason(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::UriTooLong(_) => "uri_too_long",
        ProxyError::TooManyHeaders(_) => "too_many_headers",
        _ => "bad_request",
    }
}

/// RELIABILITY HTTP1-4 and H2-3: one Host at most; an HTTP/1.1 request names its authority
/// (Host, or an absolute-form target); an HTTP/2 request's `host`, if any, agrees with its
/// `:authority`. (An absolute-form HTTP/1.1 target wins over Host, as RFC 9112 §3.2.2 says.)
fn check_host<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if host.is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let authority = request.uri().authority();
    match request.version() {
        http::Version::HTTP_11 if host.is_none() && authority.is_none() => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        http::Version::HTTP_2 => match (host, authority) {
            (Some(host), Some(authority))
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                Err(ProxyError::BadRequest("host differs from :authority"))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
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
pub(crate) fn plainly_normal(path: &str) -> bool {
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
pub(crate) fn check_path_fully(path: &str) -> Result<(), ProxyError> {
    match ficus_config::path::ambiguity(path) {
        Some(problem) => Err(ProxyError::BadRequest(problem)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_one<B>(request: &mut Request<B>) -> Result<(), ProxyError> {
        check(request, 100)
    }

    #[test]
    fn http2_field_count_includes_the_pseudo_headers() {
        let h2 = |fields: usize| {
            let mut builder = Request::get("http://shop/").version(http::Version::HTTP_2);
            for _ in 0..fields {
                builder = builder.header("cookie", "a=b");
            }
            check(&mut builder.body(()).unwrap(), 100)
        };
        assert!(h2(96).is_ok());
        assert!(matches!(h2(97), Err(ProxyError::TooManyHeaders(101))));
        let error = h2(5000).unwrap_err();
        assert_eq!(rejection_reason(&error), "too_many_headers");
        assert_eq!(error.into_response().0.status(), 431);
    }

    /// An HTTP/1.1 GET; one naming no Host gets `host: a` unless its target is absolute.
    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        if !uri.starts_with("http") && !headers.iter().any(|(name, _)| *name == "host") {
            builder = builder.header("host", "a");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        let bare = |version| {
            let mut request = Request::get("/").version(version).body(()).unwrap();
            check(&mut request, 100)
        };
        assert!(bare(http::Version::HTTP_11).is_err(), "HTTP/1.1 needs Host");
        assert!(bare(http::Version::HTTP_10).is_ok());
        assert!(bare(http::Version::HTTP_2).is_ok());
        assert!(
            check_one(&mut request("http://a/", &[])).is_ok(),
            "absolute form"
        );
        let h2 = |host: &str| {
            let mut request = Request::get("http://shop:8080/")
                .version(http::Version::HTTP_2)
                .header("host", host)
                .body(())
                .unwrap();
            check(&mut request, 100)
        };
        assert!(h2("shop:8080").is_ok());
        assert!(h2("SHOP:8080").is_ok(), "hosts compare without case");
        assert!(h2("shop").is_err(), "host ≠ :authority");
        assert!(h2("admin:8080").is_err());
    }

    #[test]
    fn refusals() {
        assert!(check_one(&mut request(
            "/ok",
            &[("host", "a"), ("content-length", "10")]
        ))
        .is_ok());
        let long = format!("/{}", "a".repeat(MAX_REQUEST_TARGET));
        assert!(matches!(
            check_one(&mut request(&long, &[])),
            Err(ProxyError::UriTooLong(_))
        ));
        assert!(check_one(&mut request("/", &[("host", "a"), ("host", "b")])).is_err());
        assert!(check_one(&mut request(
            "/",
            &[("content-length", "10000000000000000000")]
        ))
        .is_err());
        // Lower-case methods: `delete` is DELETE to some app servers, not to a policy.
        for method in ["delete", "Get", "pAtCh"] {
            let mut lower = request("/", &[("host", "a")]);
            *lower.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap();
            assert!(check_one(&mut lower).is_err(), "{method}");
        }
        let mut extension = request("/", &[("host", "a")]);
        *extension.method_mut() = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert!(check_one(&mut extension).is_ok());
    }

    #[test]
    fn unreserved_escapes_are_decoded_in_the_request() {
        let mut decoded = request("/%61dmin/%7Eu?q=%61", &[]);
        check(&mut decoded, 100).unwrap();
        assert_eq!(
            decoded.uri(),
            "/admin/~u?q=%61",
            "the query is left as it is"
        );
        let mut absolute = request("http://shop:8080/%2D%61", &[]);
        check(&mut absolute, 100).unwrap();
        assert_eq!(absolute.uri(), "http://shop:8080/-a");
        let mut kept = request("/a%20b", &[]);
        check(&mut kept, 100).unwrap();
        assert_eq!(kept.uri(), "/a%20b");
        // Decoded first, checked after: an encoded dot segment is still refused.
        assert!(check_one(&mut request("/a/%2e%2E/admin", &[])).is_err());
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
