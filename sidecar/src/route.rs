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

/// An entry with its rank: precedence, then the tie-breaker (route `namespace/name`, rule
/// index, match index).
pub type RankedEntry<A> = (Precedence, (String, usize, usize), RouteEntry<A>);

/// A service's compiled, precedence-ordered route list.
#[derive(Debug)]
pub struct RouteTable<A> {
    entries: Vec<RouteEntry<A>>,
}

impl<A> RouteTable<A> {
    /// Sorts entries by Gateway API precedence. `order` breaks ties between equal matches: the
    /// route's `namespace/name`, then rule index, then match index, as the spec says (we have no
    /// creation timestamps, so alphabetical order of routes stands in for age).
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
