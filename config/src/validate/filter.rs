//! HTTPRoute `filters` → [`Filter`].

use std::collections::BTreeSet;

use super::common::{
    at_most, check_hostname, header_name, header_value, path, percent, reference_kind,
};
use super::{all, optional, Index, Report, Want};
use crate::model::{
    Filter, HeaderModifier, PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
};
use crate::raw::{self, FilterType, PathModifierType};

/// Gateway API's cap (its CRD's `maxItems`) on a rule's filters and on each list of a header
/// modifier.
const MAX_FILTERS: usize = 16;

/// Context of one rule's filters.
pub(crate) struct RuleContext<'a> {
    /// `spec.rules[i]`.
    pub field: &'a str,
    /// The route's namespace, for references without one.
    pub namespace: &'a str,
    /// Whether every match of the rule is a `PathPrefix` match.
    pub all_prefix: bool,
    /// Backends.
    pub index: &'a Index<'a>,
}

/// Validates the filters of one rule.
pub(crate) fn validate(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    filters: &[raw::HttpRouteFilter],
) -> Option<Vec<Filter>> {
    if !at_most(
        report,
        &format!("{}.filters", rule.field),
        filters.len(),
        MAX_FILTERS,
        "use at most 16 filters in one rule (Gateway API's limit)",
    ) {
        return None;
    }
    let mut seen = BTreeSet::new();
    let converted: Vec<_> = filters
        .iter()
        .enumerate()
        .map(|(i, filter)| {
            let field = format!("{}.filters[{i}]", rule.field);
            let filter_type = filter.filter_type;
            if filter_type != FilterType::RequestMirror && !seen.insert(filter_type as u8) {
                report.error(
                    format!("{field}.type"),
                    format!("{} appears twice in one rule", type_name(filter_type)),
                    "merge the two filters into one",
                );
                return None;
            }
            one(report, rule, &field, filter)
        })
        .collect();
    let has = |t: FilterType| filters.iter().any(|f| f.filter_type == t);
    if has(FilterType::RequestRedirect) && has(FilterType::UrlRewrite) {
        report.error(
            format!("{}.filters", rule.field),
            "a rule cannot both redirect and rewrite",
            "a RequestRedirect answers the client itself; put the URLRewrite in another rule",
        );
        return None;
    }
    all(converted)
}

fn type_name(filter_type: FilterType) -> &'static str {
    match filter_type {
        FilterType::RequestHeaderModifier => "RequestHeaderModifier",
        FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        FilterType::UrlRewrite => "URLRewrite",
        FilterType::RequestRedirect => "RequestRedirect",
        FilterType::RequestMirror => "RequestMirror",
    }
}

fn one(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    field: &str,
    filter: &raw::HttpRouteFilter,
) -> Option<Filter> {
    let present = [
        (
            FilterType::RequestHeaderModifier,
            "requestHeaderModifier",
            filter.request_header_modifier.is_some(),
        ),
        (
            FilterType::ResponseHeaderModifier,
            "responseHeaderModifier",
            filter.response_header_modifier.is_some(),
        ),
        (
            FilterType::UrlRewrite,
            "urlRewrite",
            filter.url_rewrite.is_some(),
        ),
        (
            FilterType::RequestRedirect,
            "requestRedirect",
            filter.request_redirect.is_some(),
        ),
        (
            FilterType::RequestMirror,
            "requestMirror",
            filter.request_mirror.is_some(),
        ),
    ];
    let mut consistent = true;
    for (filter_type, key, is_set) in present {
        if filter_type == filter.filter_type && !is_set {
            report.error(
                format!("{field}.{key}"),
                format!("a {} filter needs `{key}`", type_name(filter_type)),
                format!("add `{key}:` with the filter's settings"),
            );
            consistent = false;
        } else if filter_type != filter.filter_type && is_set {
            report.error(
                format!("{field}.{key}"),
                format!(
                    "`{key}` does not belong in a {} filter",
                    type_name(filter.filter_type)
                ),
                format!(
                    "remove it, or set `type: {}` in a filter of its own",
                    type_name(filter_type)
                ),
            );
            consistent = false;
        }
    }
    if !consistent {
        return None;
    }
    if let Some(modifier) = &filter.request_header_modifier {
        let field = format!("{field}.requestHeaderModifier");
        return header_modifier(report, &field, modifier).map(Filter::RequestHeaderModifier);
    }
    if let Some(modifier) = &filter.response_header_modifier {
        let field = format!("{field}.responseHeaderModifier");
        return header_modifier(report, &field, modifier).map(Filter::ResponseHeaderModifier);
    }
    if let Some(rewrite) = &filter.url_rewrite {
        return url_rewrite(report, rule, &format!("{field}.urlRewrite"), rewrite)
            .map(Filter::UrlRewrite);
    }
    if let Some(redirect) = &filter.request_redirect {
        return request_redirect(report, rule, &format!("{field}.requestRedirect"), redirect)
            .map(Filter::RequestRedirect);
    }
    let mirror = filter.request_mirror.as_ref()?;
    request_mirror(report, rule, &format!("{field}.requestMirror"), mirror)
        .map(Filter::RequestMirror)
}

fn header_modifier(
    report: &mut Report<'_>,
    field: &str,
    modifier: &raw::HeaderModifier,
) -> Option<HeaderModifier> {
    let lists_ok = [
        ("set", modifier.set.len()),
        ("add", modifier.add.len()),
        ("remove", modifier.remove.len()),
    ]
    .into_iter()
    .fold(true, |ok, (list, len)| {
        let hint = "change at most 16 headers in each list (Gateway API's limit)";
        at_most(report, &format!("{field}.{list}"), len, MAX_FILTERS, hint) && ok
    });
    if !lists_ok {
        return None;
    }
    let mut pairs = |list: &str, headers: &[raw::HeaderValue]| {
        let mut names = BTreeSet::new();
        let converted = headers
            .iter()
            .enumerate()
            .map(|(i, header)| {
                let field = format!("{field}.{list}[{i}]");
                let name = header_name(report, &format!("{field}.name"), &header.name);
                let value = header_value(report, &format!("{field}.value"), &header.value);
                let name = name?;
                if let Some(why) = reserved(&name) {
                    report.error(
                        format!("{field}.name"),
                        format!("header {name:?} cannot be set by a filter: {why}"),
                        "leave it to the proxy (URLRewrite sets the host)",
                    );
                    return None;
                }
                if !names.insert(name.clone()) {
                    report.error(
                        format!("{field}.name"),
                        format!("header {name:?} appears twice in `{list}`"),
                        "list each header once per modifier",
                    );
                    return None;
                }
                Some((name, value?))
            })
            .collect();
        all(converted)
    };
    let set = pairs("set", &modifier.set);
    let add = pairs("add", &modifier.add);
    let remove: Vec<_> = modifier
        .remove
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(report, &format!("{field}.remove[{i}]"), name))
        .collect();
    Some(HeaderModifier {
        set: set?,
        add: add?,
        remove: all(remove)?,
    })
}

/// Why a header (lowercase) is the proxy's own and no filter may set or add it, if it is:
/// message framing and hop-by-hop headers (a filter could make a truncated response look
/// complete, or smuggle a second message), `host` (routing writes it), and the headers the
/// mesh carries identities and flags in.
fn reserved(name: &str) -> Option<&'static str> {
    match name {
        "content-length" | "transfer-encoding" | "trailer" => Some("it frames the message"),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "upgrade" => {
            Some("it is hop-by-hop")
        }
        "host" => Some("routing sets it"),
        "x-forwarded-client-cert" => Some("it carries the verified peer identity"),
        _ if name.starts_with("x-ficus-") => Some("x-ficus-* headers are the mesh's"),
        _ => None,
    }
}

fn url_rewrite(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    field: &str,
    rewrite: &raw::UrlRewrite,
) -> Option<UrlRewrite> {
    let hostname = rewrite
        .hostname
        .as_ref()
        .map(|h| check_hostname(report, &format!("{field}.hostname"), h));
    let path = rewrite
        .path
        .as_ref()
        .map(|p| path_modifier(report, rule, &format!("{field}.path"), p));
    Some(UrlRewrite {
        hostname: optional(hostname)?,
        path: optional(path)?,
    })
}

fn path_modifier(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    field: &str,
    modifier: &raw::PathModifier,
) -> Option<PathModifier> {
    let (given, other, other_name) = match modifier.modifier_type {
        PathModifierType::ReplaceFullPath => (
            &modifier.replace_full_path,
            &modifier.replace_prefix_match,
            "replacePrefixMatch",
        ),
        PathModifierType::ReplacePrefixMatch => (
            &modifier.replace_prefix_match,
            &modifier.replace_full_path,
            "replaceFullPath",
        ),
    };
    let (own_name, type_name) = match modifier.modifier_type {
        PathModifierType::ReplaceFullPath => ("replaceFullPath", "ReplaceFullPath"),
        PathModifierType::ReplacePrefixMatch => ("replacePrefixMatch", "ReplacePrefixMatch"),
    };
    if other.is_some() {
        report.error(
            format!("{field}.{other_name}"),
            format!("`{other_name}` does not belong with type {type_name}"),
            format!("remove it, or use `{own_name}`"),
        );
    }
    let Some(value) = given else {
        report.error(
            format!("{field}.{own_name}"),
            format!("type {type_name} needs `{own_name}`"),
            format!("add `{own_name}: /new/path`"),
        );
        return None;
    };
    // An empty `replacePrefixMatch` takes the prefix away (`/foo/bar` → `/bar`), as the
    // Gateway API's table has it.
    let value =
        if value.is_empty() && modifier.modifier_type == PathModifierType::ReplacePrefixMatch {
            String::new()
        } else {
            path(report, &format!("{field}.{own_name}"), value)?
        };
    if modifier.modifier_type == PathModifierType::ReplacePrefixMatch && !rule.all_prefix {
        report.error(
            format!("{field}.type"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
            "use ReplaceFullPath, or make every path match of this rule `type: PathPrefix`",
        );
        return None;
    }
    if other.is_some() {
        return None;
    }
    Some(match modifier.modifier_type {
        PathModifierType::ReplaceFullPath => PathModifier::ReplaceFullPath(value),
        PathModifierType::ReplacePrefixMatch => PathModifier::ReplacePrefixMatch(value),
    })
}

fn request_redirect(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    field: &str,
    redirect: &raw::RequestRedirect,
) -> Option<RequestRedirect> {
    let scheme = match redirect.scheme.as_deref() {
        None => Some(None),
        Some(scheme @ ("http" | "https")) => Some(Some(scheme.to_owned())),
        Some(other) => {
            report.error(
                format!("{field}.scheme"),
                format!("unknown scheme {other:?}"),
                "use http or https",
            );
            None
        }
    };
    let hostname = redirect
        .hostname
        .as_ref()
        .map(|h| check_hostname(report, &format!("{field}.hostname"), h));
    let path = redirect
        .path
        .as_ref()
        .map(|p| path_modifier(report, rule, &format!("{field}.path"), p));
    let port = match redirect.port {
        Some(0) => {
            report.error(
                format!("{field}.port"),
                "port 0 is not a port",
                "use a port from 1 to 65535, or leave it out",
            );
            None
        }
        port => Some(port),
    };
    let status_code = match redirect.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => Some(code),
        code => {
            report.error(
                format!("{field}.statusCode"),
                format!("{code} is not a redirect status"),
                "use 301 or 302 (also 303, 307 or 308)",
            );
            None
        }
    };
    Some(RequestRedirect {
        scheme: scheme?,
        hostname: optional(hostname)?,
        path: optional(path)?,
        port: port?,
        status_code: status_code?,
    })
}

fn request_mirror(
    report: &mut Report<'_>,
    rule: &RuleContext<'_>,
    field: &str,
    mirror: &raw::RequestMirror,
) -> Option<RequestMirror> {
    let target = &mirror.backend_ref;
    let target_field = format!("{field}.backendRef");
    reference_kind(
        report,
        &target_field,
        target.group.as_deref(),
        target.kind.as_deref(),
        &["Service", "Backend"],
    );
    let namespace = target.namespace.as_deref().unwrap_or(rule.namespace);
    let backend = rule.index.backend(
        report,
        &format!("{target_field}.name"),
        namespace,
        &target.name,
        Want::Http,
    );
    let percent = percent(
        report,
        &format!("{field}.percent"),
        mirror.percent.unwrap_or(100.0),
    );
    Some(RequestMirror {
        backend: backend?,
        percent: percent?,
    })
}
