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
//! [`percent_decoded`] decodes a query parameter's name or value for route matching.

/// Why `path` could be read two ways, or `None` when it has one reading. It is read as
/// [`decode_unreserved`] spells it: an escape that this spelling would still change was
/// encoded twice (`%%36%31` decodes to `%61`, which the app reads as `a`), and is refused.
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
    if escaped && decode_unreserved(path).is_some() {
        return Some("path with a percent-encoded letter, digit or `-._~` left after decoding");
    }
    // A segment's `;` parameters (also an encoded `;`, which the app decodes) are dropped by
    // some servers before they resolve dot segments: Tomcat reads `/a/..;/b` as `/b`, and
    // `/;/b` as `//b`.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        // (An encoded dot, `%2e`, was refused above: decoding would change it.)
        let bare = without_segment_parameters(segment);
        if bare == "." || bare == ".." || (bare.is_empty() && !last) {
            return Some("path with dot or empty segments");
        }
    }
    None
}

/// `path` without its segments' `;` parameters (`/a;x/b;v=1` is `/a/b`), an encoded `;`
/// (`%3B`) included: the path servers that drop them (Tomcat, Jetty, Spring) serve, and so the
/// path routing and authorization match, so that `/admin;x` is `/admin` to a policy too
/// (RELIABILITY HTTP1-6). The request is forwarded as it came. Borrowed when it has none.
pub fn without_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') && encoded_semicolon(path).is_none() {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(without_segment_parameters(segment));
    }
    std::borrow::Cow::Owned(out)
}

/// One segment without its `;` parameters (from its first `;` or `%3B` on).
fn without_segment_parameters(segment: &str) -> &str {
    let end = segment.find(';').unwrap_or(segment.len());
    let end = encoded_semicolon(segment).map_or(end, |at| at.min(end));
    &segment[..end]
}

/// Where the first `%3B` (either case) in `text` starts.
fn encoded_semicolon(text: &str) -> Option<usize> {
    if !text.contains('%') {
        return None;
    }
    text.as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'))
}

/// `path` in the one spelling that routing, authorization and the app see, or `None` when it
/// is spelled so already: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// decoded (RFC 3986 §6.2.2.2), and the hex digits of the other escapes in upper case
/// (§6.2.2.1: `%c3%a9` is `%C3%A9`). Those escapes are kept.
pub fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let escape = escape_at(bytes, i);
        match escape {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                decoded.get_or_insert_with(|| bytes[..i].to_vec()).push(c);
                i += 3;
            }
            Some(_) if bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) => {
                let out = decoded.get_or_insert_with(|| bytes[..i].to_vec());
                out.push(b'%');
                out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
                i += 3;
            }
            _ => {
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

/// `text` with every `%XX` escape decoded (a query parameter's name or value, as Envoy reads
/// them for matching; `+` stays `+`); as it is when it has none, when an escape is not two
/// hex digits (kept as written), or when the decoded bytes are not UTF-8. Allocates only when
/// there is a `%`.
pub fn percent_decoded(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('%') {
        return std::borrow::Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = escape_at(bytes, i);
        match escape {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).map_or(std::borrow::Cow::Borrowed(text), std::borrow::Cow::Owned)
}

/// The byte a `%XX` escape at `bytes[i]` stands for, if one is there.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(b'%'), Some(&high), Some(&low)) => hex(high).zip(hex(low)).map(|(h, l)| h << 4 | l),
        _ => None,
    }
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
        // Other escapes are kept, their hex digits in upper case.
        assert_eq!(
            decode_unreserved("/caf%c3%a9").as_deref(),
            Some("/caf%C3%A9")
        );
        assert_eq!(decode_unreserved("/caf%C3%A9"), None);
        assert_eq!(decode_unreserved("/x%2fy").as_deref(), Some("/x%2Fy"));
    }

    #[test]
    fn parameters_are_dropped() {
        assert_eq!(without_parameters("/admin"), "/admin");
        assert!(matches!(
            without_parameters("/a/b"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(without_parameters("/admin;x"), "/admin");
        assert_eq!(without_parameters("/a;x/b;v=1/c"), "/a/b/c");
        assert_eq!(without_parameters("/admin%3bx/y"), "/admin/y");
        assert_eq!(without_parameters("/admin%3Bx"), "/admin");
        assert_eq!(without_parameters("/a%20b;x"), "/a%20b");
        assert_eq!(without_parameters("/a/;x"), "/a/");
        assert_eq!(without_parameters("/%3"), "/%3");
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
            // Encoded twice: the app decodes what is left to `/admin`.
            "/%%36%31dmin",
            // An encoded `;` is a `;` to the app.
            "/public/..%3b/admin",
            "/public/..%3Bx/admin",
            // Parameters on an empty segment: `//admin` once they are dropped.
            "/;/admin",
            "/;x/admin",
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
            "/a/;x",
            "/%2561",
            "/a%3Bb",
        ] {
            assert_eq!(ambiguity(good), None, "{good}");
        }
    }
}
