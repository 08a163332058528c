//! Raw documents → validated [`Config`], collecting every problem instead of stopping at one.
//!
//! Validation runs in two passes. The first names every document: it finds duplicates and
//! indexes Backends (with their protocol), so the second pass can resolve references in any
//! order and across files. The second pass converts each document; each converter reports all
//! of its problems and yields `None` when it had any. A config is returned only when no
//! document had a problem, so a partly valid config can never be used.

mod backend;
mod common;
mod filter;
mod matches;
mod mesh;
mod policy;
mod route;
mod shadow;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::error::{Diagnostic, Problems};
use crate::model::{Config, Mesh, ResourceKey};
use crate::raw::{self, AnyDocument, Kind};

pub(crate) use common::closest;

/// Where a document came from, for diagnostics.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// Source name.
    pub file: String,
    /// Line where the document starts.
    pub line: Option<usize>,
    /// `Kind namespace/name`, or `document N`.
    pub document: String,
}

impl Origin {
    /// A diagnostic about `field` of this document.
    pub(crate) fn diagnostic(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            document: Some(self.document.clone()),
            field: field.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    fn at(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{line}", self.file),
            None => self.file.clone(),
        }
    }
}

/// A document that parsed into its raw type.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Where it came from.
    pub origin: Origin,
    /// The raw document.
    pub document: AnyDocument,
    /// The document as JSON text (keys sorted), `metadata.namespace` filled in.
    pub json: Box<serde_json::value::RawValue>,
}

/// Whether `name` is a Kubernetes service account name (a lowercase RFC 1123 subdomain), as
/// `Backend.spec.serviceAccount` must be.
pub fn is_service_account_name(name: &str) -> bool {
    common::is_dns_subdomain(name)
}

/// Collects the problems of one document.
pub(crate) struct Report<'a> {
    origin: &'a Origin,
    errors: &'a mut Problems,
    /// Compiled regex size the config may still use, shared by all its documents.
    pub(crate) regex_budget: &'a mut usize,
}

impl Report<'_> {
    /// Records a problem with `field`; every problem comes with a hint on what to do.
    pub(crate) fn error(
        &mut self,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(self.origin.diagnostic(field, message, hint));
    }
}

/// What a reference needs the Backend it names to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// `http`, `http2` or `grpc` (HTTPRoute backends and mirrors).
    Http,
    /// `tcp` (TCPRoute parents and backends).
    Tcp,
    /// Anything (policy targets).
    Any,
}

/// Every Backend of the config, for resolving references.
pub(crate) struct Index<'a> {
    backends: BTreeMap<ResourceKey, raw::Protocol>,
    /// HTTPRoutes by key (targets of route policies).
    pub(crate) routes: BTreeSet<ResourceKey>,
    broken: &'a BTreeSet<(Kind, ResourceKey)>,
}

impl Index<'_> {
    /// Resolves a reference to a Backend from a document in `namespace`; reports a missing
    /// Backend or one of the wrong protocol at `field`.
    pub(crate) fn backend(
        &self,
        report: &mut Report<'_>,
        field: &str,
        namespace: &str,
        name: &str,
        want: Want,
    ) -> Option<ResourceKey> {
        let key = ResourceKey::new(namespace, name);
        let Some(&protocol) = self.backends.get(&key) else {
            if !self.broken.contains(&(Kind::Backend, key.clone())) {
                let message = format!("Backend \"{key}\" does not exist");
                report.error(field, message, self.missing_hint(&key));
            }
            return None;
        };
        let is_tcp = protocol == raw::Protocol::Tcp;
        match want {
            Want::Http if is_tcp => report.error(
                field,
                format!(
                    "Backend \"{key}\" is a tcp Backend; HTTP traffic needs an http, http2 or \
                     grpc Backend"
                ),
                "send opaque TCP with a TCPRoute whose parentRef is the tcp Backend, or name an \
                 HTTP Backend",
            ),
            Want::Tcp if !is_tcp => report.error(
                field,
                format!("Backend \"{key}\" is not a tcp Backend"),
                "TCPRoutes only carry tcp Backends; set `protocol: tcp` and `listen` on it, or use \
                 an HTTPRoute",
            ),
            _ => return Some(key),
        }
        None
    }

    fn missing_hint(&self, key: &ResourceKey) -> String {
        let in_namespace = self
            .backends
            .keys()
            .filter(|k| k.namespace == key.namespace);
        if let Some(best) = closest(&key.name, in_namespace.map(|k| k.name.as_str())) {
            return format!(
                "did you mean {best}? (or define a Backend named {})",
                key.name
            );
        }
        if let Some(other) = self.backends.keys().find(|k| k.name == key.name) {
            return format!(
                "a Backend named {} exists in namespace {}: set `namespace: {}`, or define one in \
                 namespace {}",
                key.name, other.namespace, other.namespace, key.namespace
            );
        }
        format!(
            "define a Backend named {} in namespace {}, or fix the name",
            key.name, key.namespace
        )
    }
}

/// Things that must be unique across documents, filled in as documents are converted.
#[derive(Default)]
pub(crate) struct Claims {
    /// `listen` address → Backend that listens there.
    pub listens: BTreeMap<SocketAddr, ResourceKey>,
    /// (tcp Backend, the namespace whose callers it serves: `None` for all, a producer route)
    /// → TCPRoute that took its listener over for them.
    pub tcp_parents: BTreeMap<(ResourceKey, Option<String>), ResourceKey>,
    /// Backend → TrafficPolicy that targets it.
    pub traffic_targets: BTreeMap<ResourceKey, ResourceKey>,
    /// HTTPRoute → TrafficPolicy that targets it.
    pub route_targets: BTreeMap<ResourceKey, ResourceKey>,
}

/// Validates parsed documents as one config. `broken` names documents that exist but did not
/// parse: references to them are not reported again.
pub(crate) fn validate(
    parsed: Vec<Parsed>,
    broken: &BTreeSet<(Kind, ResourceKey)>,
) -> Result<Config, Problems> {
    let mut errors = Problems::default();
    let mut index = Index {
        backends: BTreeMap::new(),
        routes: BTreeSet::new(),
        broken,
    };
    let mut first_seen: BTreeMap<(Kind, ResourceKey), &Origin> = BTreeMap::new();
    let mut first_mesh: Option<&Origin> = None;
    let mut duplicate = vec![false; parsed.len()];
    let mut regex_budget = common::REGEX_TOTAL_LIMIT;

    for (position, document) in parsed.iter().enumerate() {
        let mut report = Report {
            origin: &document.origin,
            errors: &mut errors,
            regex_budget: &mut regex_budget,
        };
        let kind = document.document.kind();
        let metadata = document.document.metadata();
        common::check_metadata(&mut report, kind, metadata);
        let key = ResourceKey::new(&metadata.namespace, &metadata.name);
        if kind == Kind::Mesh {
            if let Some(first) = first_mesh {
                report.error(
                    "",
                    "more than one Mesh document",
                    format!(
                        "the mesh is configured once; merge this into the Mesh in {}",
                        first.at()
                    ),
                );
                duplicate[position] = true;
            } else {
                first_mesh = Some(&document.origin);
            }
            continue;
        }
        if let Some(first) = first_seen.get(&(kind, key.clone())) {
            report.error(
                "metadata.name",
                format!("duplicate {kind} \"{key}\""),
                format!(
                    "another {kind} with this name is in {}; rename or remove one",
                    first.at()
                ),
            );
            duplicate[position] = true;
            continue;
        }
        first_seen.insert((kind, key.clone()), &document.origin);
        if let AnyDocument::Backend(backend) = &document.document {
            index.backends.insert(key, backend.spec.protocol);
        } else if kind == Kind::HttpRoute {
            index.routes.insert(key);
        }
    }

    let mut config = Config {
        mesh: Mesh::default(),
        backends: BTreeMap::new(),
        http_routes: Vec::new(),
        tcp_routes: Vec::new(),
        traffic_policies: BTreeMap::new(),
        authorization_policies: Vec::new(),
        documents: Vec::new(),
        warnings: Vec::new(),
        warning_count: 0,
    };
    let mut claims = Claims::default();
    let mut route_limits = Vec::new();
    let mut table_entries = 0;
    for (position, document) in parsed.iter().enumerate() {
        let mut report = Report {
            origin: &document.origin,
            errors: &mut errors,
            regex_budget: &mut regex_budget,
        };
        let keep = !duplicate[position];
        match &document.document {
            AnyDocument::Mesh(mesh) => {
                if let Some(mesh) = mesh::validate(&mut report, &mesh.spec) {
                    if keep {
                        config.mesh = mesh;
                    }
                }
            }
            AnyDocument::Backend(backend) => {
                if let Some(backend) = backend::validate(&mut report, backend, &mut claims, keep) {
                    if keep {
                        config.backends.insert(backend.key.clone(), backend);
                    }
                }
            }
            AnyDocument::HttpRoute(route) => {
                if let Some(route) = route::validate_http(&mut report, route, &index) {
                    route::count_table_entries(&mut report, &route, &mut table_entries);
                    config.http_routes.push(route);
                }
            }
            AnyDocument::TcpRoute(route) => {
                if let Some(route) = route::validate_tcp(&mut report, route, &index, &mut claims) {
                    config.tcp_routes.push(route);
                }
            }
            AnyDocument::TrafficPolicy(policy) => {
                match policy::validate_traffic(&mut report, policy, &index, &mut claims) {
                    Some(policy::Traffic::Backend(policy)) => {
                        config
                            .traffic_policies
                            .insert(policy.target.clone(), policy);
                    }
                    Some(policy::Traffic::Route(route, limit)) => route_limits.push((route, limit)),
                    None => {}
                }
            }
            AnyDocument::AuthorizationPolicy(policy) => {
                if let Some(policy) = policy::validate_authorization(&mut report, policy, &index) {
                    config.authorization_policies.push(policy);
                }
            }
        }
    }
    for (key, limit) in route_limits {
        for route in config.http_routes.iter_mut().filter(|r| r.key == key) {
            route.rate_limit = Some(limit);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Duplicates were refused above, so each route's key names one document.
    let sources: BTreeMap<ResourceKey, shadow::RouteSource<'_>> = parsed
        .iter()
        .filter_map(|document| match &document.document {
            AnyDocument::HttpRoute(route) => {
                let key = ResourceKey::new(&route.metadata.namespace, &route.metadata.name);
                let origin = &document.origin;
                Some((
                    key,
                    shadow::RouteSource {
                        origin,
                        document: route,
                    },
                ))
            }
            _ => None,
        })
        .collect();
    (config.warnings, config.warning_count) = shadow::shadowed(&config.http_routes, &sources);
    config.documents = parsed.into_iter().map(|document| document.json).collect();
    Ok(config)
}

/// `Some` of every item when all are `Some`. Callers collect every item first, so that every
/// item reports its problems before the first `None` ends the conversion.
pub(crate) fn all<T>(items: Vec<Option<T>>) -> Option<Vec<T>> {
    items.into_iter().collect()
}

/// An optional setting that passed its checks: `Some(None)` when left out, `Some(Some(v))`
/// when valid, `None` when it had a problem.
pub(crate) fn optional<T>(checked: Option<Option<T>>) -> Option<Option<T>> {
    match checked {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}
