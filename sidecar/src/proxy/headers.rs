//! Header handling every forwarded message gets: hop-by-hop removal (RFC 9110 §7.6.1),
//! `x-forwarded-for` / `forwarded`, and `x-request-id`.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Set by a client sidecar on an HTTP/1.x request it carries over HTTP/2 (mTLS between
/// sidecars), so the server sidecar turns it back into HTTP/1.1 for its app. Trusted only
/// from a verified mesh peer; removed before the app sees the request.
pub const X_FICUS_ORIG_PROTO: HeaderName = HeaderName::from_static("x-ficus-orig-proto");
/// Identity the server sidecar passes to its app; never trusted from outside.
pub const X_FICUS_PEER_IDENTITY: HeaderName = HeaderName::from_static("x-ficus-peer-identity");
/// Envoy's client-certificate header, which apps moved from Istio authorize on. Ficus never
/// sets it, so whoever sent one made it up (RELIABILITY HTTP1-5): removed on both sides.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The `Upgrade` protocol of an HTTP/1.1 request that asks to switch protocols
/// (`Connection: upgrade` plus `Upgrade`). An upgrade to `h2c` is not one: HTTP/2 on the
/// switched connection would carry requests past routing and authorization (h2c smuggling),
/// so such a request is forwarded as a plain one, without `Upgrade`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|protocol| {
            !protocol
                .to_str()
                .is_ok_and(|p| p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
        })
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers: the fixed set and every header `Connection` names.
/// `upgrade`: keep `Upgrade` and send `Connection: upgrade` (a protocol switch in progress).
/// `te_trailers`: keep `te: trailers` (HTTP/2 and gRPC need it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>, te_trailers: bool) {
    // Most messages carry none: one pass over the names is cheaper than eight hashed removals.
    if upgrade.is_none() && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    remove_hop_by_hop(headers, upgrade, te_trailers);
}

/// What a forwarded request may carry that [`prepare`](super::forward::prepare) removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    /// A hop-by-hop header (see [`strip_hop_by_hop`]).
    pub hop_by_hop: bool,
    /// `x-ficus-peer-identity`, `x-ficus-orig-proto` or `x-ficus-timeout-ms` (only sidecars
    /// may set them), or `x-forwarded-client-cert` (nobody may).
    pub ficus: bool,
}

/// One pass over the names instead of a hashed lookup per header that might be there.
pub fn present(headers: &HeaderMap) -> Present {
    let mut present = Present::default();
    for name in headers.keys() {
        present.hop_by_hop |= is_hop_by_hop(name);
        present.ficus |= name == X_FICUS_PEER_IDENTITY
            || name == X_FICUS_ORIG_PROTO
            || name == X_FORWARDED_CLIENT_CERT
            || name == super::mesh_timeout::X_FICUS_TIMEOUT_MS;
    }
    present
}

/// Removes the fields only sidecars may set (`x-ficus-peer-identity`, `x-ficus-orig-proto`,
/// `x-ficus-timeout-ms`) and `x-forwarded-client-cert` (nobody may): from a forwarded
/// request's head, and from its trailers, so that an app reading either sees only what its
/// own sidecar wrote.
pub fn remove_mesh_fields(headers: &mut HeaderMap) {
    headers.remove(X_FICUS_PEER_IDENTITY);
    headers.remove(X_FICUS_ORIG_PROTO);
    headers.remove(X_FORWARDED_CLIENT_CERT);
    headers.remove(super::mesh_timeout::X_FICUS_TIMEOUT_MS);
}

/// [`strip_hop_by_hop`] without first looking whether there is anything to remove.
pub fn remove_hop_by_hop(
    headers: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
    te_trailers: bool,
) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if name != header::TE {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    let trailers = te_trailers
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim() == "trailers"))
        });
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The headers [`strip_hop_by_hop`] removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Writes `ip` in dotted decimal (what `Display` writes, without the formatting machinery).
fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Sets `x-forwarded-proto: http`, replacing what the client sent: a plaintext client is not
/// believed when it says `https` (the app would set Secure cookies or skip its redirect).
pub fn overwrite_forwarded_proto(headers: &mut HeaderMap) {
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 message must carry one, joined
/// with `; ` (RFC 9113 §8.2.3). Call for a request that arrived as HTTP/2 and leaves as
/// HTTP/1.1.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Appends the peer to `x-forwarded-for` and `forwarded`, and sets `x-forwarded-proto` when
/// the request has none (an app's own call may pass on what its edge said).
pub fn append_forwarded(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let Some((alone, node)) = peer_values(ip) else {
        return;
    };
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(alone);
        }
        Entry::Occupied(mut entry) => {
            let xff = match entry.get().to_str() {
                Ok(previous) => {
                    let mut xff = String::with_capacity(previous.len() + 2 + alone.len());
                    xff.push_str(previous);
                    xff.push_str(", ");
                    xff.push_str(alone.to_str().unwrap_or_default());
                    HeaderValue::from_maybe_shared(Bytes::from(xff)).ok()
                }
                Err(_) => Some(alone),
            };
            if let Some(xff) = xff {
                entry.insert(xff);
            }
        }
    }
    headers.append(FORWARDED, node);
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static("http"));
}

/// The `x-forwarded-for` entry and the `forwarded` element for `ip`. The last peer's are kept
/// per thread and cloned (a reference count), since a connection's requests (and on loopback
/// all of them) come from one address.
fn peer_values(ip: IpAddr) -> Option<(HeaderValue, HeaderValue)> {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue, HeaderValue)>> =
            const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if let Some((cached, alone, node)) = last.as_ref() {
            if *cached == ip {
                return Some((alone.clone(), node.clone()));
            }
        }
        let (alone, node) = forwarded_values(ip)?;
        *last = Some((ip, alone.clone(), node.clone()));
        Some((alone, node))
    })
}

fn forwarded_values(ip: IpAddr) -> Option<(HeaderValue, HeaderValue)> {
    use std::fmt::Write;
    let mut alone = String::with_capacity(40);
    let mut node = String::with_capacity(56);
    match ip {
        IpAddr::V4(v4) => {
            push_ipv4(&mut alone, v4);
            node.push_str("for=");
            node.push_str(&alone);
            node.push_str(";proto=http");
        }
        IpAddr::V6(v6) => {
            let _ = write!(alone, "{v6}");
            let _ = write!(node, "for=\"[{v6}]\";proto=http");
        }
    }
    let alone = HeaderValue::from_maybe_shared(Bytes::from(alone)).ok()?;
    let node = HeaderValue::from_maybe_shared(Bytes::from(node)).ok()?;
    Some((alone, node))
}

/// Adds an `x-request-id` (a random UUID v4) when the request has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // One hashed lookup: the vacant entry is where the new id goes.
    let Entry::Vacant(entry) = headers.entry(X_REQUEST_ID) else {
        return;
    };
    // Version 4 in the 13th hex digit, variant 10xx in the 17th.
    let bits = rand::random::<u128>() & !(0xF000 << 64) & !(0xC000 << 48);
    let bits = bits | (0x4000 << 64) | (0x8000 << 48);
    // Where each byte's two digits go, around the dashes (a fixed layout the compiler unrolls).
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut id = *b"00000000-0000-0000-0000-000000000000";
    for (at, byte) in AT.into_iter().zip(bits.to_be_bytes()) {
        id[at] = HEX[usize::from(byte >> 4)];
        id[at + 1] = HEX[usize::from(byte & 0xF)];
    }
    if let Ok(value) = HeaderValue::from_bytes(&id) {
        entry.insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn present_finds_what_prepare_removes() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let p = present(&h);
        assert!(!p.hop_by_hop && !p.ficus);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        assert!(present(&h).hop_by_hop);
        let mut h = HeaderMap::new();
        h.insert(X_FICUS_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        assert!(present(&h).ficus && !present(&h).hop_by_hop);
        let mut h = HeaderMap::new();
        h.insert(
            X_FICUS_PEER_IDENTITY,
            HeaderValue::from_static("spiffe://x"),
        );
        assert!(present(&h).ficus);
        let mut h = HeaderMap::new();
        h.insert(
            super::super::mesh_timeout::X_FICUS_TIMEOUT_MS,
            HeaderValue::from_static("60000"),
        );
        assert!(present(&h).ficus);
    }

    #[test]
    fn upgrade_is_kept_when_switching() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let protocol = upgrade_protocol(&h).unwrap();
        strip_hop_by_hop(&mut h, Some(&protocol), false);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded(&mut h, "127.0.0.1:5000".parse().unwrap());
        append_forwarded(&mut h, "[::1]:5000".parse().unwrap());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1, ::1");
        // The per-thread cache of the last peer's values gives the same answers.
        let mut again = HeaderMap::new();
        append_forwarded(&mut again, "[::ffff:10.1.2.3]:1".parse().unwrap());
        append_forwarded(&mut again, "10.1.2.3:2".parse().unwrap());
        assert_eq!(again[X_FORWARDED_FOR], "10.1.2.3, 10.1.2.3");
        assert_eq!(again.get_all(FORWARDED).iter().count(), 2);
        assert_eq!(again[X_FORWARDED_PROTO], "http");
        let mut fresh = HeaderMap::new();
        append_forwarded(&mut fresh, "10.1.2.3:3".parse().unwrap());
        assert_eq!(fresh[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(fresh[FORWARDED], "for=10.1.2.3;proto=http");
        let forwarded: Vec<_> = h.get_all(FORWARDED).iter().collect();
        assert_eq!(
            forwarded,
            ["for=127.0.0.1;proto=http", "for=\"[::1]\";proto=http"]
        );
    }

    #[test]
    fn ipv4_is_written_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.99.100.209",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut out = String::new();
            push_ipv4(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_unchanged() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, None, true);
        assert_eq!(h, before);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h, None, true);
        assert_eq!(h, before);
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[X_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        for (i, c) in id.chars().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, '-', "{id}"),
                _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}"),
            }
        }
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        ensure_request_id(&mut h);
        assert_eq!(h[X_REQUEST_ID], id.as_str());
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other[X_REQUEST_ID], id.as_str(), "a fresh id per request");
    }
}
