//! Route tables: which rule of which service a request takes.
//!
//! A service's table is built when a config is swapped in: every `matches[]` entry of every
//! rule of every HTTPRoute naming the service is compiled and sorted once in Gateway API
//! precedence order, so a request walks one flat list and takes the first hit.
pub mod host;
pub mod matcher;
pub mod weighted;

use std::sync::Arc;

use http::{HeaderMap, Method};

pub use host::ServiceName;
pub use matcher::{CompiledMatch, Precedence};
pub use weighted::WeightedSet;

/// One compiled match pointing at the action of its rule.
#[derive(Debug)]
pub struct RouteEntry<A> {
    /// The conditions.
    pub matcher: CompiledMatch,
    /// What to do when they hold (shared by all matches of a rule).
    pub action: Arc<A>,
}

/// An entry with its rank: precedence, then the tie-breaker.
pub type RankedEntry<A> = (Precedence, Tie, RouteEntry<A>);

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
}

/// A service's compiled, precedence-ordered route list.
#[derive(Debug)]
pub struct RouteTable<A> {
    entries: Vec<RouteEntry<A>>,
}

impl<A> RouteTable<A> {
    /// Sorts entries by Gateway API precedence, ties broken by [`Tie`].
    pub fn new(mut entries: Vec<RankedEntry<A>>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Self {
            entries: entries.into_iter().map(|(_, _, entry)| entry).collect(),
        }
    }

    /// The first entry whose conditions hold.
    pub fn find(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&RouteEntry<A>> {
        self.entries
            .iter()
            .find(|entry| entry.matcher.matches(method, path, query, headers))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
