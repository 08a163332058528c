//! How the matches of a service's HTTPRoutes are ranked, and when two select the same requests.
//!
//! The sidecar sorts every `matches[]` entry of a service's route table by [`Precedence`], ties
//! broken by [`Tie`], and takes the first whose conditions hold. The validator ranks them with
//! the same types to find matches that can never be selected (a warning): a match whose
//! [`MatchConditions`] equal those of a match ranked before it in the same table. Both read
//! these definitions, so what the warning says and what the sidecar does cannot drift apart.

use std::cmp::Reverse;

use crate::model::{PathMatch, RouteMatch, StringMatch};

/// Gateway API precedence; smaller sorts first. Exact paths beat prefixes, longer prefixes
/// beat shorter ones, regexes come after prefixes; then a method match, then more header
/// matches, then more query matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
}

/// How the Gateway API breaks ties between equal matches: the oldest route first (by
/// `creationTimestamp`; routes without one, outside a cluster, after those with one), then the
/// route's `namespace/name`, then the rule's index, then the match's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tie {
    undated: bool,
    created: String,
    route: String,
    rule: usize,
    matched: usize,
}

/// The conditions of a match in one canonical form: two matches with equal conditions select
/// exactly the same requests, since the sidecar's matcher compiles each field of a
/// [`RouteMatch`] on its own and one to one (header names and the method parsed, nothing else
/// changed). Paths are compared as validation normalised them (a `PathPrefix` of `/api/` is
/// `/api`), regexes by their text, header and query conditions as sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchConditions<'a> {
    path: Condition<'a>,
    method: Option<&'a str>,
    headers: Vec<(&'a str, Condition<'a>)>,
    query: Vec<(&'a str, Condition<'a>)>,
}

/// One value condition: its comparison and the text it compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Condition<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

// === impl RouteMatch ===

impl RouteMatch {
    /// This match's rank in its service's route table.
    pub fn precedence(&self) -> Precedence {
        let (path_kind, path_len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::RegularExpression(re) => (2, re.as_str().len()),
        };
        Precedence {
            path_kind,
            path_len: Reverse(path_len),
            no_method: self.method.is_none(),
            headers: Reverse(self.headers.len()),
            query: Reverse(self.query_params.len()),
        }
    }

    /// What this match compares, in the canonical form that makes equal conditions equal.
    pub fn conditions(&self) -> MatchConditions<'_> {
        let path = match &self.path {
            PathMatch::Exact(p) => Condition::Exact(p),
            PathMatch::Prefix(p) => Condition::Prefix(p),
            PathMatch::RegularExpression(re) => Condition::Regex(re.as_str()),
        };
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .map(|h| (h.name.as_str(), Condition::of(&h.value)))
            .collect();
        headers.sort_unstable();
        headers.dedup();
        let mut query: Vec<_> = self
            .query_params
            .iter()
            .map(|q| (q.name.as_str(), Condition::of(&q.value)))
            .collect();
        query.sort_unstable();
        query.dedup();
        MatchConditions {
            path,
            method: self.method.as_deref(),
            headers,
            query,
        }
    }
}

// === impl Tie ===

impl Tie {
    /// The tie-breaker of match `matched` of rule `rule` of route `route` (`namespace/name`),
    /// created at `created` (a Kubernetes timestamp, which orders as text).
    pub fn new(created: Option<&str>, route: &str, rule: usize, matched: usize) -> Self {
        Self {
            undated: created.is_none(),
            created: created.unwrap_or_default().to_owned(),
            route: route.to_owned(),
            rule,
            matched,
        }
    }

    /// Why `self` wins over `later` (which it sorts before), for a user: which part of the
    /// tie-break decided.
    pub fn reason_before(&self, later: &Self) -> &'static str {
        if self.undated != later.undated {
            "a route with a creationTimestamp wins a tie over one without"
        } else if self.created != later.created {
            "the older route (by creationTimestamp) wins a tie"
        } else if self.route != later.route {
            "ties between routes of equal creationTimestamp, or none, go to the first by namespace/name"
        } else if self.rule != later.rule {
            "the earlier rule of a route wins a tie"
        } else {
            "the earlier match of a rule wins a tie"
        }
    }
}

// === impl Condition ===

impl<'a> Condition<'a> {
    fn of(value: &'a StringMatch) -> Self {
        match value {
            StringMatch::Exact(text) => Self::Exact(text),
            StringMatch::RegularExpression(re) => Self::Regex(re.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HeaderMatch, QueryParamMatch};

    fn route_match(path: PathMatch, headers: &[(&str, &str)], method: Option<&str>) -> RouteMatch {
        RouteMatch {
            path,
            headers: headers
                .iter()
                .map(|(name, value)| HeaderMatch {
                    name: (*name).to_owned(),
                    value: StringMatch::Exact((*value).to_owned()),
                })
                .collect(),
            query_params: Vec::new(),
            method: method.map(str::to_owned),
        }
    }

    #[test]
    fn header_order_does_not_matter_but_values_and_kinds_do() {
        let prefix = || PathMatch::Prefix("/api".to_owned());
        let a = route_match(prefix(), &[("a", "1"), ("b", "2")], Some("GET"));
        let b = route_match(prefix(), &[("b", "2"), ("a", "1")], Some("GET"));
        assert_eq!(a.conditions(), b.conditions());
        assert_eq!(a.precedence(), b.precedence());
        let other_value = route_match(prefix(), &[("a", "1"), ("b", "3")], Some("GET"));
        assert_ne!(a.conditions(), other_value.conditions());
        let no_method = route_match(prefix(), &[("a", "1"), ("b", "2")], None);
        assert_ne!(a.conditions(), no_method.conditions());
        let exact = route_match(
            PathMatch::Exact("/api".to_owned()),
            &[("a", "1"), ("b", "2")],
            Some("GET"),
        );
        assert_ne!(a.conditions(), exact.conditions());
    }

    #[test]
    fn exact_and_regex_values_differ() {
        let regex = regex::Regex::new("^(?:1)$").expect("valid");
        let mut a = route_match(PathMatch::Prefix("/".to_owned()), &[], None);
        let mut b = a.clone();
        a.query_params.push(QueryParamMatch {
            name: "v".to_owned(),
            value: StringMatch::Exact("1".to_owned()),
        });
        b.query_params.push(QueryParamMatch {
            name: "v".to_owned(),
            value: StringMatch::RegularExpression(regex),
        });
        assert_ne!(a.conditions(), b.conditions());
    }

    #[test]
    fn ties_go_to_the_oldest_then_by_name_then_by_position() {
        let old = Tie::new(Some("2026-01-01T00:00:00Z"), "shop/z", 3, 3);
        let new = Tie::new(Some("2026-02-01T00:00:00Z"), "shop/a", 0, 0);
        let undated = Tie::new(None, "shop/a", 0, 0);
        assert!(old < new && new < undated);
        assert!(Tie::new(None, "shop/a", 1, 0) < Tie::new(None, "shop/b", 0, 0));
        assert!(Tie::new(None, "shop/a", 0, 1) < Tie::new(None, "shop/a", 1, 0));
        assert!(old.reason_before(&new).contains("older"));
        assert!(new.reason_before(&undated).contains("creationTimestamp"));
    }
}
