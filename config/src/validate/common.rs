//! Checks shared by several kinds: names, durations, percentages, headers, paths, regexes.

use std::time::Duration;

use regex::{Regex, RegexBuilder};

use super::Report;
use crate::duration::parse_duration;
use crate::raw::{Kind, Metadata};

/// Compiled size cap of one user regex: enough for any sane route, small enough that a hostile
/// pattern cannot take the sidecar's memory.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Compiled size cap of all the user regexes of one config together: each sidecar holds them
/// all. A regex is charged the smallest of [`REGEX_TIERS`] it compiles within, so a config
/// may hold 4,096 path patterns of ASCII classes (`/api/v[0-9]+/[^/]+`: 2 KiB), 1,024 with a
/// Unicode class (`\d+`: 8 KiB), or 32 of the largest (`\w{5}`).
pub(crate) const REGEX_TOTAL_LIMIT: usize = 8 * 1024 * 1024;
/// What a regex is charged against [`REGEX_TOTAL_LIMIT`]: the first size cap it fits.
const REGEX_TIERS: [usize; 4] = [2 * 1024, 8 * 1024, 64 * 1024, REGEX_SIZE_LIMIT];

/// The most similar of `choices` to `given`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    given: &str,
    choices: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if given.len() > 64 {
        return None;
    }
    let limit = (given.chars().count() / 3).max(1);
    choices
        .into_iter()
        .filter(|choice| choice.len() <= 64 && *choice != given)
        .map(|choice| {
            let distance = if choice.eq_ignore_ascii_case(given) {
                0
            } else {
                edit_distance(given, choice)
            };
            (distance, choice)
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, choice)| choice)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Whether the list at `field`, of `len` items, has at most `max`; reports it when not. The
/// lists of routes are capped as Gateway API's CRDs cap them (`maxItems`), so a route that a
/// cluster accepts is accepted here, and a route's parentRefs × matches cannot multiply into
/// a route table too large for every sidecar's memory.
pub(crate) fn at_most(
    report: &mut Report<'_>,
    field: &str,
    len: usize,
    max: usize,
    hint: &str,
) -> bool {
    if len <= max {
        return true;
    }
    report.error(
        field,
        format!("{len} entries; at most {max} are allowed"),
        hint,
    );
    false
}

/// Checks `metadata.name` and `metadata.namespace`.
///
/// Namespaces and Backend names are DNS labels because callers address services as
/// `name.namespace`; other names may be DNS subdomains, as in Kubernetes.
pub(crate) fn check_metadata(report: &mut Report<'_>, kind: Kind, metadata: &Metadata) {
    let name = &metadata.name;
    if kind == Kind::Backend {
        if !is_dns_label(name) {
            report.error(
                "metadata.name",
                format!("Backend name {name:?} is not a DNS label"),
                "callers address Backends as <name>.<namespace>: use lowercase letters, digits and \
                 '-' (at most 63), starting and ending with a letter or digit",
            );
        }
    } else if !is_dns_subdomain(name) {
        report.error(
            "metadata.name",
            format!("name {name:?} is not a valid Kubernetes name"),
            "use lowercase letters, digits, '-' and '.' (at most 253), starting and ending with a \
             letter or digit",
        );
    }
    if !is_dns_label(&metadata.namespace) {
        report.error(
            "metadata.namespace",
            format!("namespace {:?} is not a DNS label", metadata.namespace),
            "use lowercase letters, digits and '-' (at most 63), or leave it out for `default`",
        );
    }
}

/// Lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Lowercase RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A host name (any case, as in `Host`): dot-separated labels of letters, digits and `-`.
pub(crate) fn check_hostname(report: &mut Report<'_>, field: &str, host: &str) -> Option<String> {
    let ok = host.len() <= 253
        && host
            .split('.')
            .all(|label| is_dns_label(&label.to_ascii_lowercase()));
    if ok {
        return Some(host.to_owned());
    }
    report.error(
        field,
        format!("{host:?} is not a valid host name"),
        "use a DNS name such as payments.shop.svc.cluster.local, without scheme, port or path",
    );
    None
}

/// A Gateway API duration.
pub(crate) fn duration(report: &mut Report<'_>, field: &str, text: &str) -> Option<Duration> {
    match parse_duration(text) {
        Ok(duration) => Some(duration),
        Err(why) => {
            report.error(
                field,
                format!("invalid duration {text:?}: {why}"),
                "write whole numbers with units h, m, s or ms, e.g. 500ms, 2s or 1m30s",
            );
            None
        }
    }
}

/// A Gateway API duration that must be more than zero.
pub(crate) fn positive_duration(
    report: &mut Report<'_>,
    field: &str,
    text: &str,
) -> Option<Duration> {
    let value = duration(report, field, text)?;
    if value.is_zero() {
        report.error(
            field,
            "must be longer than 0s",
            "give a positive duration, e.g. 1s",
        );
        return None;
    }
    Some(value)
}

/// A percentage, 0..=100.
pub(crate) fn percent(report: &mut Report<'_>, field: &str, value: f64) -> Option<f64> {
    if (0.0..=100.0).contains(&value) {
        return Some(value);
    }
    report.error(
        field,
        format!("{value} is not a percentage"),
        "use a number from 0 to 100",
    );
    None
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 token.
pub(crate) fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// A header name, lowercased.
pub(crate) fn header_name(report: &mut Report<'_>, field: &str, name: &str) -> Option<String> {
    if is_token(name) {
        return Some(name.to_ascii_lowercase());
    }
    report.error(
        field,
        format!("{name:?} is not a valid header name"),
        "header names are letters, digits and !#$%&'*+-.^_`|~ (no spaces or colons), \
         e.g. x-request-id",
    );
    None
}

/// A header value: visible ASCII, spaces and tabs, so that it can never split a header.
pub(crate) fn header_value(report: &mut Report<'_>, field: &str, value: &str) -> Option<String> {
    let bad = value
        .chars()
        .find(|&c| !(c == '\t' || (' '..='~').contains(&c)));
    let Some(bad) = bad else {
        return Some(value.to_owned());
    };
    let what = match bad {
        '\r' | '\n' => "a line break",
        '\0' => "a NUL byte",
        c if c.is_control() => "a control character",
        _ => "a non-ASCII character",
    };
    report.error(
        field,
        format!("header value {value:?} contains {what}"),
        "header values are printable ASCII on one line; percent-encode anything else",
    );
    None
}

/// An HTTP method: an uppercase token.
pub(crate) fn method(report: &mut Report<'_>, field: &str, method: &str) -> Option<String> {
    if is_token(method) && !method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some(method.to_owned());
    }
    let hint = if is_token(method) {
        format!(
            "methods are case-sensitive: write {}",
            method.to_ascii_uppercase()
        )
    } else {
        "use a method such as GET, POST, PUT or DELETE".to_owned()
    };
    report.error(
        field,
        format!("{method:?} is not a valid HTTP method"),
        hint,
    );
    None
}

/// A request path (or path prefix): starts with `/`, printable ASCII, no query or fragment,
/// and spelled as the sidecar spells requests ([`crate::path`]), or no request could match it.
pub(crate) fn path(report: &mut Report<'_>, field: &str, path: &str) -> Option<String> {
    let printable = path.chars().all(|c| c.is_ascii_graphic());
    if !(path.starts_with('/') && printable && !path.contains(['?', '#'])) {
        let hint = if !path.starts_with('/') {
            format!(
                "paths start with '/': write \"/{}\"",
                path.trim_start_matches('/')
            )
        } else {
            "use printable ASCII without spaces, '?' or '#'; percent-encode other characters"
                .to_owned()
        };
        report.error(field, format!("{path:?} is not a valid path"), hint);
        return None;
    }
    if let Some(mut decoded) = crate::path::decode_unreserved(path) {
        // Encoded twice (`%%36%31`): the spelling a request would finally have.
        while let Some(again) = crate::path::decode_unreserved(&decoded) {
            decoded = again;
        }
        report.error(
            field,
            format!("{path:?} is not spelled as requests are matched"),
            format!(
                "requests are matched with escaped letters, digits and `-._~` decoded and other \
                 escapes in upper case: write {decoded:?}"
            ),
        );
        return None;
    }
    if let Some(problem) = crate::path::ambiguity(path) {
        report.error(
            field,
            format!("{path:?} can never match: a {problem} is refused with 400"),
            "write the path without `//`, `.` or `..` segments and without encoded `/`, `\\` or NUL",
        );
        return None;
    }
    Some(path.to_owned())
}

/// A path that requests are matched against (a route's match, a policy's path): a [`path`]
/// without `;` parameters, which requests are matched without.
pub(crate) fn matched_path(report: &mut Report<'_>, field: &str, value: &str) -> Option<String> {
    let value = path(report, field, value)?;
    let bare = crate::path::without_parameters(&value);
    if bare != value {
        report.error(
            field,
            format!("{value:?} can never match: requests are matched without `;` parameters"),
            format!("write {bare:?}"),
        );
        return None;
    }
    Some(value)
}

/// A regex that must match a whole value: compiled as `^(?:pattern)$` with a size cap.
pub(crate) fn whole_match_regex(
    report: &mut Report<'_>,
    field: &str,
    pattern: &str,
) -> Option<Regex> {
    // Compiling the bare pattern first rejects unbalanced input such as `a)|(b`, which would
    // otherwise escape the anchoring group.
    let compiled = build_regex(pattern, REGEX_SIZE_LIMIT).and_then(|_| {
        let anchored = format!("^(?:{pattern})$");
        let build = |tier| build_regex(&anchored, tier).map(|regex| (regex, tier));
        let mut built = build(REGEX_TIERS[0]);
        for &tier in &REGEX_TIERS[1..] {
            if !matches!(built, Err(regex::Error::CompiledTooBig(_))) {
                break;
            }
            built = build(tier);
        }
        built
    });
    match compiled {
        Ok((regex, charge)) if charge <= *report.regex_budget => {
            *report.regex_budget -= charge;
            Some(regex)
        }
        Ok(_) => {
            report.error(
                field,
                format!(
                    "the config's regular expressions take more than {} MiB compiled, all \
                     together",
                    REGEX_TOTAL_LIMIT >> 20
                ),
                "use Exact or PathPrefix matches where they do, or simpler patterns (Unicode \
                 classes such as \\w compile large; (?-u:\\w) is ASCII-only and small)",
            );
            None
        }
        Err(error) => {
            report.error(
                field,
                format!(
                    "invalid regular expression {pattern:?}: {}",
                    regex_error(&error)
                ),
                "use RE2/Rust regex syntax (no look-around or backreferences); the pattern must \
                 match the whole value",
            );
            None
        }
    }
}

fn build_regex(pattern: &str, size_limit: usize) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(size_limit)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The one-line reason of a regex error (syntax errors draw a multi-line caret diagram).
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Checks the `group`/`kind` of a reference against the kinds it may name.
pub(crate) fn reference_kind(
    report: &mut Report<'_>,
    field: &str,
    group: Option<&str>,
    kind: Option<&str>,
    allowed: &[&str],
) {
    let kind = kind.unwrap_or("Service");
    if !allowed.contains(&kind) {
        report.error(
            format!("{field}.kind"),
            format!("kind {kind:?} cannot be referenced here"),
            format!("use kind {}", allowed.join(" or ")),
        );
    }
    if let Some(group) = group {
        if !["", "core", "ficus.dev"].contains(&group) {
            report.error(
                format!("{field}.group"),
                format!("unknown group {group:?}"),
                "leave group out, or use \"\" for Service and \"ficus.dev\" for Backend",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            closest("weigth", ["name", "weight", "port"]),
            Some("weight")
        );
        assert_eq!(closest("Weight", ["weight"]), Some("weight"));
        assert_eq!(closest("zzz", ["weight"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_label("payments-v2"));
        assert!(!is_dns_label("Payments"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("a..b"));
    }
}
