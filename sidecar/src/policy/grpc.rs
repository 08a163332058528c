//! gRPC status codes as the policies see them: read from response headers (a trailers-only
//! response carries `grpc-status` there), or derived from the HTTP status of a gRPC response
//! without one, per gRPC's `http-grpc-status-mapping.md`. A status that arrives in trailers
//! (after a body) is not seen: by then the response has been committed to the caller.

use http::{HeaderMap, StatusCode};

/// `UNKNOWN`.
pub const UNKNOWN: u8 = 2;
/// `UNAVAILABLE`: the service is (most likely transiently) unable to handle the call.
pub const UNAVAILABLE: u8 = 14;
/// Largest defined code (`UNAUTHENTICATED`).
const MAX_CODE: u8 = 16;

/// Whether a request is a gRPC call (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status a caller would see from response headers, if they tell one: the
/// `grpc-status` header (an unparseable or undefined value counts as `UNKNOWN`), else, for
/// a non-200 HTTP status, the status gRPC clients derive from it.
pub fn status(http: StatusCode, headers: &HeaderMap) -> Option<u8> {
    if let Some(value) = headers.get("grpc-status") {
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.trim().parse::<u8>().ok())
            .filter(|code| *code <= MAX_CODE);
        return Some(code.unwrap_or(UNKNOWN));
    }
    (http != StatusCode::OK).then(|| from_http(http))
}

/// The gRPC status a retry may act on: as [`status`], except that a 502 or a 504 without
/// `grpc-status` tells none. gRPC clients read both as `UNAVAILABLE`, but behind them the
/// upstream may have acted on the call (a connection reset after the call was sent, a
/// timeout at a proxy further on), and replaying a call that was carried out would repeat
/// it. A 503 or a 429 without `grpc-status` is a refusal (no connection, a breaker, a rate
/// limit): the call was not carried out, and it may be retried like an `UNAVAILABLE`.
pub fn retry_status(http: StatusCode, headers: &HeaderMap) -> Option<u8> {
    if headers.get("grpc-status").is_none() && matches!(http.as_u16(), 502 | 504) {
        return None;
    }
    status(http, headers)
}

/// gRPC's mapping of an HTTP status without `grpc-status` to a gRPC code.
fn from_http(http: StatusCode) -> u8 {
    match http.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => UNKNOWN,
    }
}

/// Whether `code` stands for a server-side failure: the codes Envoy maps to a 5xx for outlier
/// detection (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
pub fn is_server_failure(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_see_no_status_where_the_call_may_have_been_carried_out() {
        for (http, retried) in [(502, None), (504, None), (503, Some(14)), (429, Some(14))] {
            let http = StatusCode::from_u16(http).unwrap();
            assert_eq!(retry_status(http, &HeaderMap::new()), retried, "{http}");
            assert_eq!(status(http, &HeaderMap::new()), Some(14), "{http}");
        }
        // What the server says wins.
        let mut unavailable = HeaderMap::new();
        unavailable.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            retry_status(StatusCode::GATEWAY_TIMEOUT, &unavailable),
            Some(14)
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_header_wins_and_bad_values_are_unknown() {
        let ok = StatusCode::OK;
        assert_eq!(status(ok, &headers(&[("grpc-status", "14")])), Some(14));
        assert_eq!(status(ok, &headers(&[("grpc-status", "0")])), Some(0));
        assert_eq!(
            status(ok, &headers(&[("grpc-status", "99")])),
            Some(UNKNOWN)
        );
        assert_eq!(status(ok, &headers(&[("grpc-status", "x")])), Some(UNKNOWN));
        assert_eq!(status(ok, &headers(&[])), None, "status in trailers, later");
        let bad_gateway = StatusCode::BAD_GATEWAY;
        assert_eq!(
            status(bad_gateway, &headers(&[("grpc-status", "8")])),
            Some(8)
        );
    }

    #[test]
    fn http_statuses_map_like_grpc_clients_map_them() {
        let none = HeaderMap::new();
        assert_eq!(
            status(StatusCode::SERVICE_UNAVAILABLE, &none),
            Some(UNAVAILABLE)
        );
        assert_eq!(
            status(StatusCode::TOO_MANY_REQUESTS, &none),
            Some(UNAVAILABLE)
        );
        assert_eq!(status(StatusCode::NOT_FOUND, &none), Some(12));
        assert_eq!(
            status(StatusCode::INTERNAL_SERVER_ERROR, &none),
            Some(UNKNOWN)
        );
    }

    #[test]
    fn grpc_requests_are_recognised_by_content_type() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&headers(&[])));
    }
}
