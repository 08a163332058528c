//! Request paths in one spelling, for routing, authorization and the app alike.
//!
//! A path that two readers could understand differently is a policy bypass: a DENY on
//! `/admin*` that sees `/%61dmin` while the app serves `/admin`, or a route that sees
//! `/public/..;/admin` while a Java app serves `/admin`. Ficus does not guess which reading the
//! app makes. It decodes what RFC 3986 says is the same path (percent-encoded unreserved
//! characters: `%61` is `a`, §6.2.2.2) and refuses the rest of what could be read two ways
//! (RELIABILITY HTTP1-6): encoded separators, backslashes, `%00`, `#`, dot segments (also
//! encoded, also with `;` parameters) and empty segments.
//!
//! The sidecar applies both to every request before routing ([`decode_unreserved`], then
//! [`ambiguity`]); the validator refuses route and policy path values that [`ambiguity`]
//! refuses or that decoding would change, since no request could ever match them.

/// Why `path` could be read two ways, or `None` when it has one reading. Percent-encoded
/// unreserved characters are not refused here (decode them first: [`decode_unreserved`]).
pub fn ambiguity(path: &str) -> Option<&'static str> {
    // Without a `%` nothing is encoded: no lowercased copies on the common path.
    let escaped = path.contains('%');
    let encoded = escaped && {
        let lower = path.to_ascii_lowercase();
        ["%2f", "%5c", "%00"].iter().any(|e| lower.contains(e))
    };
    if encoded || path.contains('\\') || path.contains('#') {
        return Some("path with an encoded separator, backslash, NUL or #");
    }
    let dot = |segment: &str| {
        // A segment's `;` parameters are dropped by some servers before they resolve dot
        // segments (Tomcat reads `/a/..;/b` as `/b`).
        let segment = segment.split(';').next().unwrap_or(segment);
        if !escaped {
            return segment == "." || segment == "..";
        }
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if dot(segment) || (segment.is_empty() && segments.peek().is_some()) {
            return Some("path with dot or empty segments");
        }
    }
    None
}

/// `path` with its percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, or
/// `None` when it has none. Other escapes are kept as they are.
pub fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let unreserved = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high)
                .zip(hex(low))
                .map(|(h, l)| h << 4 | l)
                .filter(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')),
            _ => None,
        };
        match unreserved {
            Some(c) => {
                decoded.get_or_insert_with(|| bytes[..i].to_vec()).push(c);
                i += 3;
            }
            None => {
                if let Some(out) = &mut decoded {
                    out.push(bytes[i]);
                }
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced by ASCII bytes, so the text stays UTF-8.
    decoded.map(|out| String::from_utf8_lossy(&out).into_owned())
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_kept() {
        assert_eq!(decode_unreserved("/admin"), None);
        assert_eq!(decode_unreserved("/a%20b"), None);
        assert_eq!(decode_unreserved("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(
            decode_unreserved("/%41%7e%7E%2D%5f%2e").as_deref(),
            Some("/A~~-_.")
        );
        assert_eq!(decode_unreserved("/x%2Fy%61").as_deref(), Some("/x%2Fya"));
        assert_eq!(decode_unreserved("/%6"), None);
        assert_eq!(decode_unreserved("/%zz%61").as_deref(), Some("/%zza"));
        assert_eq!(decode_unreserved("/é%61").as_deref(), Some("/éa"));
    }

    #[test]
    fn ambiguous_paths() {
        for bad in [
            "/a/../admin",
            "/%2e%2e/admin",
            "/a%2Fb",
            "//admin",
            "/a/./b",
            "/a%5cb",
            "/a%00",
            "/.%2E/x",
            "/public/..;/admin",
            "/public/.;x/admin",
            "/a\\b",
            "/a#b",
        ] {
            assert!(ambiguity(bad).is_some(), "{bad}");
        }
        for good in [
            "/",
            "/admin",
            "/api/payments/",
            "/a.b/c..d",
            "/admin;x",
            "/a%20b",
            "/..a;",
        ] {
            assert_eq!(ambiguity(good), None, "{good}");
        }
    }
}
