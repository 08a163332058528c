//! Checks on a request before it is routed, for what hyper's parser lets through.

use http::header::{CONTENT_LENGTH, HOST};
use http::Request;

use super::error::ProxyError;

/// Longest request target (path and query) forwarded (RELIABILITY: 8 KiB → 414).
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;
/// Largest `Content-Length` believed (1 PiB); hyper accepts up to `u64::MAX - 2`, and a
/// 20-digit length is a smuggling attempt, not an upload.
pub const MAX_CONTENT_LENGTH: u64 = 1 << 50;

/// Refuses requests that are malformed in ways the HTTP parser accepts.
pub fn check<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET {
        return Err(ProxyError::UriTooLong(target));
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
        assert!(check(&request("/ok", &[("host", "a"), ("content-length", "10")])).is_ok());
        let long = format!("/{}", "a".repeat(MAX_REQUEST_TARGET));
        assert!(matches!(
            check(&request(&long, &[])),
            Err(ProxyError::UriTooLong(_))
        ));
        assert!(check(&request("/", &[("host", "a"), ("host", "b")])).is_err());
        assert!(check(&request("/", &[("content-length", "10000000000000000000")])).is_err());
    }
}
