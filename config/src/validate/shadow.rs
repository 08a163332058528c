//! Warnings for HTTPRoute matches that can never be selected: shadowed by an identical match
//! that the service's route table ranks first.
//!
//! The tables are ranked as the sidecar ranks them ([`crate::precedence`]). Which routes share
//! a table follows GAMMA's ownership rules (the sidecar's `snapshot::applies`): the routes of
//! one namespace attached to one service. A producer route (in the service's namespace) and a
//! consumer route (in another) never meet in one table, since a namespace's consumer routes
//! replace the producer's routes for its callers; so only routes of the same namespace can
//! shadow each other.

use std::collections::{BTreeMap, BTreeSet};

use super::Origin;
use crate::error::Warning;
use crate::model::{HttpRoute, ResourceKey};
use crate::precedence::{MatchConditions, Precedence, Tie};
use crate::raw;

/// Where an HTTPRoute came from, and its raw rules (to tell written matches from the default).
pub(crate) struct RouteSource<'a> {
    /// For the diagnostic.
    pub origin: &'a Origin,
    /// The document as written.
    pub document: &'a raw::HttpRouteDocument,
}

/// One match in one service's table.
struct Entry<'a> {
    precedence: Precedence,
    tie: Tie,
    route: usize,
    rule: usize,
    matched: usize,
    conditions: MatchConditions<'a>,
}

/// A match that an earlier one in its table shadows.
struct Shadow {
    matched: usize,
    /// (route, rule, match) of the match the table selects instead.
    winner: (usize, usize, usize),
    /// Which part of the ranking put the winner first.
    reason: &'static str,
}

/// Most warnings a config gets; past them one more says how many were left out. (A config
/// repeating one match in 200,000 table entries would otherwise fill apply answers and
/// every sidecar's log.)
const MAX_WARNINGS: usize = 100;

/// Most shadowed matches a rule-level warning lists one by one.
const MAX_LISTED: usize = 10;

/// Warnings for every match (or whole rule) of `routes` that an identical match ranked before
/// it in the same table shadows; in route, rule, service, match order; at most
/// [`MAX_WARNINGS`] and a last one counting the rest; and how many there are in all.
/// Validation has capped the table entries looked at (`route::MAX_TABLE_ENTRIES`), so this is
/// quick.
pub(crate) fn shadowed(
    routes: &[HttpRoute],
    sources: &BTreeMap<ResourceKey, RouteSource<'_>>,
) -> (Vec<Warning>, usize) {
    let (mut warnings, total) = all_shadowed(routes, sources, MAX_WARNINGS + 1);
    if total > MAX_WARNINGS {
        let left = total - MAX_WARNINGS;
        warnings.truncate(MAX_WARNINGS + 1);
        let Some(Warning {
            diagnostic: mut last,
        }) = warnings.pop()
        else {
            return (warnings, total);
        };
        last.message = format!(
            "{left} more warnings about matches that can never be selected, from this one on, \
             are not shown"
        );
        last.hint = Some("fix the ones above and apply again to see the rest".to_owned());
        warnings.push(Warning { diagnostic: last });
    }
    (warnings, total)
}

/// [`shadowed`]: the first `limit` warnings, and how many there are in all (the rest are
/// counted, not written: a config within the caps can still have ~200,000 of them).
fn all_shadowed(
    routes: &[HttpRoute],
    sources: &BTreeMap<ResourceKey, RouteSource<'_>>,
    limit: usize,
) -> (Vec<Warning>, usize) {
    // (service, namespace of the routes) → the table's entries.
    let mut tables: BTreeMap<(&ResourceKey, &str), Vec<Entry<'_>>> = BTreeMap::new();
    for (route_index, route) in routes.iter().enumerate() {
        let label = route.key.to_string();
        let parents: BTreeSet<&ResourceKey> = route.parents.iter().collect();
        for parent in parents {
            let table = tables
                .entry((parent, route.key.namespace.as_str()))
                .or_default();
            for (rule_index, rule) in route.rules.iter().enumerate() {
                for (match_index, route_match) in rule.matches.iter().enumerate() {
                    table.push(Entry {
                        precedence: route_match.precedence(),
                        tie: Tie::new(route.created.as_deref(), &label, rule_index, match_index),
                        route: route_index,
                        rule: rule_index,
                        matched: match_index,
                        conditions: route_match.conditions(),
                    });
                }
            }
        }
    }

    // (route, rule, service) → its shadowed matches.
    let mut found: BTreeMap<(usize, usize, &ResourceKey), Vec<Shadow>> = BTreeMap::new();
    for ((service, _), mut entries) in tables {
        entries.sort_by(|a, b| (a.precedence, &a.tie).cmp(&(b.precedence, &b.tie)));
        let mut first: BTreeMap<&MatchConditions<'_>, &Entry<'_>> = BTreeMap::new();
        for entry in &entries {
            let Some(winner) = first.get(&entry.conditions) else {
                first.insert(&entry.conditions, entry);
                continue;
            };
            let reason = if winner.precedence == entry.precedence {
                winner.tie.reason_before(&entry.tie)
            } else {
                "it ranks first"
            };
            found
                .entry((entry.route, entry.rule, service))
                .or_default()
                .push(Shadow {
                    matched: entry.matched,
                    winner: (winner.route, winner.rule, winner.matched),
                    reason,
                });
        }
    }

    let mut warnings = Vec::new();
    let mut total = 0usize;
    for ((route, rule, service), mut shadows) in found {
        let whole_rule = shadows.len() == routes[route].rules[rule].matches.len();
        let count = if whole_rule { 1 } else { shadows.len() };
        total = total.saturating_add(count);
        if warnings.len() >= limit {
            continue;
        }
        shadows.sort_by_key(|shadow| shadow.matched);
        shadows.truncate(if whole_rule {
            shadows.len()
        } else {
            limit - warnings.len()
        });
        let key = &routes[route].key;
        let Some(source) = sources.get(key) else {
            continue;
        };
        let field = format!("spec.rules[{rule}]");
        let name = |(route, rule, matched): (usize, usize, usize)| {
            describe(routes, sources, route, rule, matched)
        };
        if whole_rule {
            let written = source
                .document
                .spec
                .rules
                .get(rule)
                .is_some_and(|r| !r.matches.is_empty());
            let mut why: Vec<String> = shadows
                .iter()
                .take(MAX_LISTED)
                .map(|shadow| {
                    let what = if written {
                        format!("matches[{}]", shadow.matched)
                    } else {
                        "it has no matches (every request: PathPrefix /) and".to_owned()
                    };
                    format!(
                        "{what} is the same as {}, which wins ({})",
                        name(shadow.winner),
                        shadow.reason
                    )
                })
                .collect();
            if shadows.len() > MAX_LISTED {
                why.push(format!("and {} more", shadows.len() - MAX_LISTED));
            }
            let message = format!(
                "this rule can never be selected for service {service}: {}",
                why.join("; ")
            );
            let hint = "remove the rule, or give it matches that differ from those (path, \
                        method, headers or query parameters)";
            warnings.push(Warning {
                diagnostic: source.origin.diagnostic(field, message, hint),
            });
            continue;
        }
        for shadow in shadows {
            let message = format!(
                "never selected for service {service}: {} has the same conditions and wins ({})",
                name(shadow.winner),
                shadow.reason
            );
            let hint = "remove this match, or make it differ from that one (path, method, \
                        headers or query parameters)";
            warnings.push(Warning {
                diagnostic: source.origin.diagnostic(
                    format!("{field}.matches[{}]", shadow.matched),
                    message,
                    hint,
                ),
            });
        }
    }
    // `found` is in route index order, which is document order.
    (warnings, total)
}

/// `HTTPRoute shop/a spec.rules[0].matches[1]`, or `… spec.rules[0]` for a rule whose only
/// match is the default one.
fn describe(
    routes: &[HttpRoute],
    sources: &BTreeMap<ResourceKey, RouteSource<'_>>,
    route: usize,
    rule: usize,
    matched: usize,
) -> String {
    let key = &routes[route].key;
    let written = sources
        .get(key)
        .and_then(|source| source.document.spec.rules.get(rule))
        .is_none_or(|r| !r.matches.is_empty());
    if written {
        format!("HTTPRoute {key} spec.rules[{rule}].matches[{matched}]")
    } else {
        format!("HTTPRoute {key} spec.rules[{rule}] (no matches: every request)")
    }
}
