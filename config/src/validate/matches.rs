//! HTTPRoute `matches` → [`RouteMatch`].

use std::collections::BTreeSet;

use super::common::{at_most, header_name, header_value, matched_path, method, whole_match_regex};
use super::{all, optional, Report};
use crate::model::{HeaderMatch, PathMatch, QueryParamMatch, RouteMatch, StringMatch};
use crate::raw::{self, PathMatchType, StringMatchType};

/// Gateway API's caps (its CRD's `maxItems`): matches in a rule, headers and query
/// parameters in a match.
const MAX_MATCHES: usize = 64;
const MAX_CONDITIONS: usize = 16;

/// Validates the `matches` of the rule at `rule_field`; no matches means prefix `/`.
pub(crate) fn validate(
    report: &mut Report<'_>,
    rule_field: &str,
    matches: &[raw::HttpRouteMatch],
) -> Option<Vec<RouteMatch>> {
    if matches.is_empty() {
        return Some(vec![RouteMatch {
            path: PathMatch::Prefix("/".to_owned()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }]);
    }
    if !at_most(
        report,
        &format!("{rule_field}.matches"),
        matches.len(),
        MAX_MATCHES,
        "split the rule into several (Gateway API allows 64 matches in one)",
    ) {
        return None;
    }
    let matches = matches
        .iter()
        .enumerate()
        .map(|(i, route_match)| one(report, &format!("{rule_field}.matches[{i}]"), route_match))
        .collect();
    all(matches)
}

/// Whether every match of a rule compares paths by prefix (as `ReplacePrefixMatch` needs).
pub(crate) fn all_path_prefix(matches: &[raw::HttpRouteMatch]) -> bool {
    matches.iter().all(|m| {
        m.path
            .as_ref()
            .is_none_or(|path| path.match_type == PathMatchType::PathPrefix)
    })
}

fn one(
    report: &mut Report<'_>,
    field: &str,
    route_match: &raw::HttpRouteMatch,
) -> Option<RouteMatch> {
    let path = match &route_match.path {
        Some(path_match) => self::path_match(report, &format!("{field}.path"), path_match),
        None => Some(PathMatch::Prefix("/".to_owned())),
    };
    let headers_ok = at_most(
        report,
        &format!("{field}.headers"),
        route_match.headers.len(),
        MAX_CONDITIONS,
        "match on at most 16 headers (Gateway API's limit); a regex can cover several values",
    );
    let query_ok = at_most(
        report,
        &format!("{field}.queryParams"),
        route_match.query_params.len(),
        MAX_CONDITIONS,
        "match on at most 16 query parameters (Gateway API's limit)",
    );
    if !headers_ok || !query_ok {
        return None;
    }
    let mut names = BTreeSet::new();
    let headers: Vec<_> = route_match
        .headers
        .iter()
        .enumerate()
        .map(|(i, header)| {
            let field = format!("{field}.headers[{i}]");
            let name = header_name(report, &format!("{field}.name"), &header.name)?;
            if !names.insert(name.clone()) {
                report.error(
                    format!("{field}.name"),
                    format!("header {name:?} is matched twice in one match"),
                    "merge the conditions into one (a regex can express alternatives), or use two \
                     matches",
                );
                return None;
            }
            let value = string_match(report, &format!("{field}.value"), header, true)?;
            Some(HeaderMatch { name, value })
        })
        .collect();
    let query_params: Vec<_> = route_match
        .query_params
        .iter()
        .enumerate()
        .map(|(i, param)| {
            let field = format!("{field}.queryParams[{i}]");
            let name_ok =
                !param.name.is_empty() && param.name.chars().all(|c| c.is_ascii_graphic());
            if !name_ok {
                report.error(
                    format!("{field}.name"),
                    format!("{:?} is not a valid query parameter name", param.name),
                    "use the parameter name as it appears before '=' in the URL, e.g. version",
                );
            }
            let value = string_match(report, &format!("{field}.value"), param, false);
            Some(QueryParamMatch {
                name: name_ok.then(|| param.name.clone())?,
                value: value?,
            })
        })
        .collect();
    let method = route_match
        .method
        .as_ref()
        .map(|m| method(report, &format!("{field}.method"), m));
    Some(RouteMatch {
        path: path?,
        headers: all(headers)?,
        query_params: all(query_params)?,
        method: optional(method)?,
    })
}

fn path_match(
    report: &mut Report<'_>,
    field: &str,
    path_match: &raw::HttpPathMatch,
) -> Option<PathMatch> {
    let value = path_match.value.as_deref().unwrap_or("/");
    let value_field = format!("{field}.value");
    match path_match.match_type {
        PathMatchType::Exact => matched_path(report, &value_field, value).map(PathMatch::Exact),
        PathMatchType::PathPrefix => {
            let prefix = matched_path(report, &value_field, value)?;
            // `/api/` and `/api` select the same segment prefix; the model keeps one spelling.
            let trimmed = prefix.trim_end_matches('/');
            let normalized = if trimmed.is_empty() { "/" } else { trimmed };
            Some(PathMatch::Prefix(normalized.to_owned()))
        }
        PathMatchType::RegularExpression => {
            whole_match_regex(report, &value_field, value).map(PathMatch::RegularExpression)
        }
    }
}

fn string_match(
    report: &mut Report<'_>,
    field: &str,
    condition: &raw::HttpStringMatch,
    is_header: bool,
) -> Option<StringMatch> {
    match condition.match_type {
        StringMatchType::Exact if is_header => {
            header_value(report, field, &condition.value).map(StringMatch::Exact)
        }
        StringMatchType::Exact => Some(StringMatch::Exact(condition.value.clone())),
        StringMatchType::RegularExpression => {
            whole_match_regex(report, field, &condition.value).map(StringMatch::RegularExpression)
        }
    }
}
