//! Turning a `Host` / `:authority` into a mesh service name.
//!
//! `payments`, `payments.shop` and `payments.shop.svc.<cluster domain>` name service
//! `payments` (the first in the caller's own namespace). Anything else (an IP, `example.com`)
//! is not a mesh service.

use std::borrow::Cow;

/// A service named by an authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName<'a> {
    /// Service name (lowercase).
    pub name: Cow<'a, str>,
    /// Namespace when the authority gave one (lowercase).
    pub namespace: Option<Cow<'a, str>>,
}

impl<'a> ServiceName<'a> {
    /// Parses an authority (`host` or `host:port`, IPv6 in brackets).
    pub fn parse(authority: &'a str) -> Option<Self> {
        // The common forms, `name` and `name:port` in lowercase, in one pass without copies.
        let bytes = authority.as_bytes();
        match bytes
            .iter()
            .position(|b| matches!(b, b'.' | b':' | b'[' | b'A'..=b'Z'))
        {
            None if !bytes.is_empty() => {
                return Some(Self {
                    name: Cow::Borrowed(authority),
                    namespace: None,
                })
            }
            Some(colon)
                if colon > 0
                    && bytes[colon] == b':'
                    && bytes[colon + 1..].iter().all(u8::is_ascii_digit) =>
            {
                return Some(Self {
                    name: Cow::Borrowed(&authority[..colon]),
                    namespace: None,
                })
            }
            _ => {}
        }
        let host = strip_port(authority)?;
        if host.is_empty() || host.starts_with('[') {
            return None;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let mut labels = host.split('.');
        let name = labels.next().filter(|l| !l.is_empty())?;
        let namespace = labels.next();
        match (namespace, labels.next()) {
            (_, None) => {}
            (Some(_), Some("svc")) => {}
            _ => return None,
        }
        if namespace.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            name: lower(name),
            namespace: namespace.map(lower),
        })
    }
}

fn strip_port(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        return Some(authority);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        Some(_) => None,
        None => Some(authority),
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<(String, Option<String>)> {
        ServiceName::parse(s).map(|n| (n.name.into_owned(), n.namespace.map(Cow::into_owned)))
    }

    #[test]
    fn forms_of_a_service_name() {
        let shop = Some(("payments".to_owned(), Some("shop".to_owned())));
        assert_eq!(parse("payments"), Some(("payments".to_owned(), None)));
        assert_eq!(parse("payments:8080"), Some(("payments".to_owned(), None)));
        assert_eq!(parse("payments.shop"), shop);
        assert_eq!(parse("payments.shop.svc.cluster.local"), shop);
        assert_eq!(parse("Payments.SHOP.svc.cluster.local:80"), shop);
        assert_eq!(parse("payments.shop.svc"), shop);
        assert_eq!(
            parse("pay_ments-2:"),
            Some(("pay_ments-2".to_owned(), None))
        );
        assert_eq!(parse("Payments:80"), Some(("payments".to_owned(), None)));
    }

    #[test]
    fn non_service_authorities() {
        assert_eq!(parse("127.0.0.1:9001"), None);
        assert_eq!(parse("example.com.au"), None);
        assert_eq!(parse("[::1]:80"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(":80"), None);
        assert_eq!(parse("a..svc"), None);
        assert_eq!(parse("host:port"), None);
        assert_eq!(parse(":"), None);
    }
}
