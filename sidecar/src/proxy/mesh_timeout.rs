//! The caller's wait for response headers, carried to the peer sidecar on mesh (mTLS) hops.
//!
//! The calling sidecar enforces the route's timeouts; the receiving sidecar, which knows
//! nothing of the caller's route, would otherwise wait for its app at most the Mesh's
//! `upstreamResponseTimeout` and cut a call with `timeouts: {request: 60s}` at 15 s. So, as
//! gRPC carries `grpc-timeout`, the calling sidecar sends [`X_FICUS_TIMEOUT_MS`] with every
//! try to a peer sidecar: how long it will wait for this try's response headers, in whole
//! milliseconds (rounded up, at least 1), or `none` when the route sets no limit. The
//! receiving sidecar waits that long for its app instead of its own default.
//!
//! Trust: the header is read only on requests from a verified peer sidecar (mTLS). From
//! anyone else (plaintext under PERMISSIVE or DISABLE, the local app on outbound) it is
//! removed unread by `forward::prepare`, so a client outside the mesh cannot extend the
//! receiving sidecar's wait past its default; the app never sees it either. A verified peer's
//! value is taken as it is (it comes from route config the mesh's operators wrote); one that
//! does not parse is ignored and the default applies.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::deadline::UNBOUNDED;

/// `x-ficus-timeout-ms`: how long the calling sidecar waits for this try's response headers.
pub const X_FICUS_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-ficus-timeout-ms");

/// The value that says the caller sets no limit.
const NONE: &str = "none";

/// Longest value in digits: 12 digits of milliseconds are over 30 years, past the Gateway
/// API's longest duration (99,999 h); a longer wait is written as `none`.
const MAX_DIGITS: usize = 12;

/// Writes the wait `timeout` ([`UNBOUNDED`]: no limit) into a request to a peer sidecar.
pub fn write(headers: &mut HeaderMap, timeout: Duration) {
    let millis = timeout.as_nanos().div_ceil(1_000_000).max(1);
    let value = if timeout == UNBOUNDED || millis >= 10u128.pow(MAX_DIGITS as u32) {
        HeaderValue::from_static(NONE)
    } else {
        // Below 10^12: fits a u64.
        HeaderValue::from(millis as u64)
    };
    headers.insert(X_FICUS_TIMEOUT_MS, value);
}

/// The wait a verified peer sidecar asked for ([`UNBOUNDED`] for `none`), if its header
/// parses. Call only for requests from a verified peer.
pub fn read(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(X_FICUS_TIMEOUT_MS)?.as_bytes();
    if value == NONE.as_bytes() {
        return Some(UNBOUNDED);
    }
    if value.is_empty() || value.len() > MAX_DIGITS || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let millis = value
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    // Never written as 0: a try with no time left is not sent.
    (millis > 0).then(|| Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(timeout: Duration) -> (String, Option<Duration>) {
        let mut headers = HeaderMap::new();
        write(&mut headers, timeout);
        let text = headers[X_FICUS_TIMEOUT_MS].to_str().unwrap().to_owned();
        (text, read(&headers))
    }

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        let second = Duration::from_secs(1);
        assert_eq!(round_trip(second), ("1000".to_owned(), Some(second)));
        let (text, read) = round_trip(Duration::from_micros(1500));
        assert_eq!((text.as_str(), read), ("2", Some(Duration::from_millis(2))));
        // Never 0, which would not parse: the caller still waits for something.
        let (text, _) = round_trip(Duration::from_nanos(1));
        assert_eq!(text, "1");
    }

    #[test]
    fn no_limit_and_very_long_waits_are_none() {
        assert_eq!(round_trip(UNBOUNDED), ("none".to_owned(), Some(UNBOUNDED)));
        let years = Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(round_trip(years), ("none".to_owned(), Some(UNBOUNDED)));
        let (text, read) = round_trip(Duration::from_secs(99_999 * 3600));
        assert_eq!(text, "359996400000");
        assert_eq!(read, Some(Duration::from_secs(99_999 * 3600)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in ["", "0", "-5", "1.5", "10s", " 10", "1000000000000", "None"] {
            let mut headers = HeaderMap::new();
            headers.insert(X_FICUS_TIMEOUT_MS, HeaderValue::from_str(bad).unwrap());
            assert_eq!(read(&headers), None, "{bad:?}");
        }
        assert_eq!(read(&HeaderMap::new()), None);
    }
}
