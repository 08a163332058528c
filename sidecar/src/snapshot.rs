//! An immutable, versioned view of the config compiled for the request path.
//!
//! Everything a request needs is resolved here, once per config: route tables in precedence
//! order, weighted backend sets, endpoint pools, header names and values, metric handles.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use ficus_config::{
    Config, Filter, Protocol, ProxyLimits, RateLimit, ResourceKey, RouteRule, Timeouts,
};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::authz::{is_own_backend, Authorizer};
use crate::mtls::MeshTls;
use crate::policy::balance::InFlight;
use crate::policy::rate_limit::RateLimiter;
use crate::policy::retry::RetryPolicy;
use crate::policy::BackendPolicy;
use crate::proxy::filters::{HeaderOps, Redirect, Rewrite};
use crate::proxy::mirror::Mirror;
use crate::route::{CompiledMatch, RouteEntry, RouteTable, ServiceName, Tie, WeightedSet};
use crate::state::Identity;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{Direction, Metrics, RequestMetrics};
use crate::telemetry::trace::TraceSettings;
use crate::upstream::{EndpointPool, PoolRegistry, PoolSettings};

/// A map keyed by config names, looked up by request-supplied names.
type ServiceMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The compiled config a request runs on from start to end.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every accepted config.
    pub version: u64,
    /// Where it came from (`file:<path>`).
    pub source: String,
    /// The validated config, without its documents (those are [`Snapshot::documents`]).
    pub config: Arc<Config>,
    /// The config's documents as one JSON array, for `/config` and to tell an unchanged
    /// file (text, as [`Config::documents`] are: a tree of JSON values took about 50 times
    /// their size, in every sidecar, for as long as the config served; a 180 KB file's was
    /// ~9 MB of a 12 MB heap).
    pub documents: Box<serde_json::value::RawValue>,
    /// Limits for new connections.
    pub limits: ProxyLimits,
    /// Server settings for new downstream connections.
    pub server: ServerSettings,
    /// Outbound services: name → the namespaces that have a service of that name, with its
    /// routes. Looked up per request by names the request supplies: one hashed lookup (foldhash:
    /// fast, randomly seeded, rather than SipHash), then a scan of the few namespaces.
    services: ServiceMap<Vec<(String, Arc<Service>)>>,
    /// Opaque TCP services by local listen address.
    pub tcp: HashMap<SocketAddr, Arc<TcpService>>,
    /// The local app.
    pub inbound: Arc<InboundTarget>,
    /// Metrics for requests that name no service.
    pub unrouted: Arc<RequestMetrics>,
    /// `Mesh.spec.tracing`: `None` when tracing is off.
    pub tracing: Option<TraceSettings>,
    /// Transparent mode: the service of each Backend endpoint address (an original destination
    /// routes like a request to that Backend's name).
    destinations: HashMap<SocketAddr, Arc<Service>>,
    /// Transparent mode: metrics for requests passed through to an unknown destination.
    pub passthrough: Arc<RequestMetrics>,
    /// Transparent mode: the opaque TCP service of each `tcp` Backend endpoint address (an
    /// intercepted connection there is split like one to the Backend's `listen` address).
    tcp_destinations: HashMap<SocketAddr, Arc<TcpService>>,
    /// The access-log writer when `Mesh.spec.accessLog` is set (attached by
    /// `Shared::access_log_for` before the swap).
    pub access_log: Option<Arc<AccessLog>>,
}

/// An outbound service: its precedence-ordered route table.
#[derive(Debug)]
pub struct Service {
    /// `namespace/name`, the `destination_service` label (shared with the spans).
    pub label: Arc<str>,
    /// Routes.
    pub table: RouteTable<RuleAction>,
    /// Metrics for requests of this service that match no rule.
    pub unmatched: Arc<RequestMetrics>,
}

/// What one rule does.
#[derive(Debug)]
pub struct RuleAction {
    /// Request header changes.
    pub request_headers: Option<HeaderOps>,
    /// Response header changes.
    pub response_headers: Option<HeaderOps>,
    /// Host/path rewrite.
    pub rewrite: Option<Rewrite>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Weighted backends (absent only with a redirect).
    pub backends: Option<WeightedSet<RouteBackend>>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retries, when the rule has a `retry`.
    pub retry: Option<RetryPolicy>,
    /// The rule's RequestMirror filters, each with its own share of requests.
    pub mirrors: Box<[Mirror]>,
    /// The route's rate limit (a TrafficPolicy targeting the HTTPRoute): one bucket shared by
    /// all the route's rules and parents.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Metrics for redirects answered by this rule.
    pub local_metrics: Arc<RequestMetrics>,
    /// The HTTPRoute (`namespace/name`) of the rule, for spans' `http.route`.
    pub route: Option<Arc<str>>,
}

/// A backend as seen from one service's rule: the target plus its metric handles.
#[derive(Debug)]
pub struct RouteBackend {
    /// The backend.
    pub target: Arc<BackendTarget>,
    /// `ficus_requests_total` etc. for (outbound, service, backend).
    pub metrics: Arc<RequestMetrics>,
}

/// A Backend's endpoints, chosen by its balancer (`loadBalancer`, endpoint weights).
#[derive(Debug)]
pub struct BackendTarget {
    /// `namespace/name`, the `destination_backend` label (shared with the spans).
    pub label: Arc<str>,
    /// Protocol to the endpoints.
    pub protocol: Protocol,
    /// Its TrafficPolicy, compiled (defaults without one); carried over from the previous
    /// snapshot when neither changed.
    pub policy: Arc<BackendPolicy>,
    endpoints: Vec<Arc<EndpointPool>>,
    /// The SPIFFE ID each endpoint must present (parallel to `endpoints`), for spans.
    identities: Vec<Option<Arc<str>>>,
}

impl BackendTarget {
    /// The next endpoint by the Backend's balancer and weights, skipping ejected ones, and
    /// drained ones (weight 0) while another is available (all ejected: ignore ejection).
    /// `None` when the Backend has no endpoints (scaled to zero).
    pub fn endpoint(&self) -> Option<&Arc<EndpointPool>> {
        self.pick().map(|(endpoint, _)| endpoint)
    }

    /// [`BackendTarget::endpoint`] for an HTTP request: `None` also when outlier detection
    /// has every endpoint ejected, so the request fails fast (503 `UH`) until one is due back
    /// on probation (RELIABILITY UP-3), rather than going to an endpoint known to fail.
    pub fn healthy_endpoint(&self) -> Option<&Arc<EndpointPool>> {
        let (endpoint, available) = self.pick()?;
        available.then_some(endpoint)
    }

    /// The balancer's choice, and whether it is in the rotation (not ejected); `None`
    /// without endpoints.
    fn pick(&self) -> Option<(&Arc<EndpointPool>, bool)> {
        if self.endpoints.is_empty() {
            return None;
        }
        let available = |j: usize| {
            self.policy
                .outliers
                .as_ref()
                .is_none_or(|o| !o.is_ejected(j))
        };
        let i = self.policy.balancer.pick(available);
        // The balancer falls back to an ejected endpoint only when all of them are.
        let in_rotation = self.policy.outliers.is_none() || available(i);
        let endpoint = self.endpoints.get(i).or(self.endpoints.last())?;
        Some((endpoint, in_rotation))
    }

    /// Records a try's outcome on `endpoint` for outlier detection (nothing without it).
    pub fn record(&self, endpoint: &Arc<EndpointPool>, failed: bool) {
        if let Some(outliers) = &self.policy.outliers {
            if let Some(index) = self.endpoints.iter().position(|e| Arc::ptr_eq(e, endpoint)) {
                outliers.record(index, failed);
            }
        }
    }

    /// Ends a try on `endpoint` started with [`BackendTarget::start`]: its latency and whether
    /// it failed feed the balancer, and outlier detection counts the failure.
    pub fn finish(
        &self,
        endpoint: &Arc<EndpointPool>,
        in_flight: Option<InFlight>,
        outcome: &Result<http::Response<crate::body::Body>, crate::proxy::error::ProxyError>,
    ) {
        if in_flight.is_none() && self.policy.outliers.is_none() {
            return;
        }
        if crate::policy::outlier::is_downstream_fault(outcome) {
            // Neither a failure nor a success of the endpoint: its run of failures stays as
            // it was, and the balancer takes no sample.
            if let Some(in_flight) = in_flight {
                in_flight.discard();
            }
            return;
        }
        let failed = crate::policy::outlier::is_failure(outcome);
        if let Some(in_flight) = in_flight {
            in_flight.finish(failed);
        }
        self.record(endpoint, failed);
    }

    /// Counts a request in flight to `endpoint` for least-request balancing, until the guard
    /// is finished or dropped (nothing with other balancers).
    pub fn start(&self, endpoint: &Arc<EndpointPool>) -> Option<InFlight> {
        if !self.policy.balancer.tracks_load() {
            return None;
        }
        let index = self
            .endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, endpoint))?;
        self.policy.balancer.start(index)
    }

    /// The next endpoint other than `failed`, when there is another that speaks the same way
    /// (HTTP/2 or not, mTLS or not: the request head was prepared for that), else `failed`.
    pub fn endpoint_except<'a>(&'a self, failed: &'a Arc<EndpointPool>) -> &'a Arc<EndpointPool> {
        let usable = |e: &Arc<EndpointPool>| {
            !Arc::ptr_eq(e, failed)
                && e.is_http2() == failed.is_http2()
                && e.is_mtls() == failed.is_mtls()
        };
        if self.endpoints.len() > 1 {
            for _ in 0..2 {
                let Some(next) = self.healthy_endpoint() else {
                    break;
                };
                if usable(next) {
                    return next;
                }
            }
        }
        failed
    }

    /// The identity `endpoint` must present, when it is reached over mTLS.
    pub fn identity(&self, endpoint: &Arc<EndpointPool>) -> Option<&Arc<str>> {
        if !endpoint.is_mtls() {
            return None;
        }
        let index = self
            .endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, endpoint))?;
        self.identities.get(index)?.as_ref()
    }
}

/// An opaque TCP listener's service.
#[derive(Debug)]
pub struct TcpService {
    /// `namespace/name`.
    pub label: String,
    /// Weighted TCP backends, chosen per connection.
    pub backends: WeightedSet<Arc<BackendTarget>>,
}

/// Inbound traffic goes to the local app, over the protocol the peer used.
#[derive(Debug)]
pub struct InboundTarget {
    /// HTTP/1.1 connections to the app.
    pub http1: Arc<EndpointPool>,
    /// HTTP/2 connections to the app.
    pub http2: Arc<EndpointPool>,
    /// Metrics for (inbound, workload, app).
    pub metrics: Arc<RequestMetrics>,
    /// AuthorizationPolicies protecting this workload.
    pub authz: Authorizer,
    /// `rateLimit` of the TrafficPolicy of this workload's Backend.
    pub rate_limit: Option<Arc<RateLimiter>>,
}

/// What a snapshot needs besides the config.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// Pools outlive snapshots.
    pub pools: &'a PoolRegistry,
    /// Metric registry.
    pub metrics: &'a Arc<Metrics>,
    /// Who we are.
    pub identity: &'a Identity,
    /// Our mesh TLS, if we have an identity.
    pub tls: Option<&'a Arc<MeshTls>>,
}

/// mTLS settings for an endpoint that names the identity it must present, unless mTLS is off
/// or we have no identity (then plaintext; a STRICT peer will refuse it).
fn endpoint_tls(
    endpoint: &ficus_config::Endpoint,
    mode: ficus_config::MtlsMode,
    cx: &BuildContext<'_>,
) -> Option<(Arc<rustls::ClientConfig>, String)> {
    let identity = endpoint.identity.as_deref()?;
    let tls = cx.tls.filter(|_| mode != ficus_config::MtlsMode::Disable)?;
    let expected = ficus_identity::SpiffeId::parse(identity)
        .map_err(|error| tracing::warn!(identity, %error, "endpoint identity is not a SPIFFE ID"))
        .ok()?;
    match tls.client_for(&expected) {
        Ok(config) => Some((config, identity.to_owned())),
        Err(error) => {
            tracing::warn!(identity, %error, "no TLS config for endpoint");
            None
        }
    }
}

/// The services (route parents) in other namespaces that routes of `own_namespace` attach to:
/// GAMMA's consumer routes, which replace the producer's routes for this namespace's callers.
pub(crate) fn consumer_parents<'c>(
    routes: impl Iterator<Item = (&'c ResourceKey, &'c [ResourceKey])>,
    own_namespace: &str,
) -> HashSet<&'c ResourceKey> {
    routes
        .filter(|(route, _)| route.namespace == own_namespace)
        .flat_map(|(_, parents)| parents.iter())
        .filter(|parent| parent.namespace != own_namespace)
        .collect()
}

/// Whether the route `route` attached to `parent` routes this sidecar's calls (the Gateway
/// API's GAMMA rules): a producer route (in the service's namespace) does, unless this
/// namespace has consumer routes for the service; a consumer route (in another namespace)
/// routes only the calls of its own namespace. So a route in namespace `evil` naming
/// `shop/payments` cannot take over shop's callers.
pub(crate) fn applies(
    route: &ResourceKey,
    parent: &ResourceKey,
    own_namespace: &str,
    consumed: &HashSet<&ResourceKey>,
) -> bool {
    if route.namespace == parent.namespace {
        !consumed.contains(parent)
    } else {
        route.namespace == own_namespace
    }
}

/// `documents` as the JSON text of one array (what [`Snapshot::documents`] holds).
pub fn documents_text(
    documents: &[Box<serde_json::value::RawValue>],
) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(documents).unwrap_or_else(|_| {
        // Values serialize; an empty array stands in should that ever fail.
        serde_json::value::RawValue::from_string("[]".to_owned())
            .unwrap_or_else(|_| unreachable!("[] is JSON"))
    })
}

impl Snapshot {
    /// Compiles `config`. Validation already happened; this cannot fail.
    /// `documents` is `config`'s documents as [`documents_text`] writes them (its callers
    /// have it already); `config.documents` is dropped, the text kept.
    pub fn build(
        mut config: Config,
        documents: Box<serde_json::value::RawValue>,
        version: u64,
        source: String,
        cx: &BuildContext<'_>,
    ) -> Self {
        config.documents = Vec::new();
        let limits = config.mesh.proxy.clone();
        let settings = PoolSettings {
            connect_timeout: limits.connect_timeout,
            idle_timeout: limits.upstream_idle_timeout,
            body_idle_timeout: limits.body_idle_timeout,
            stream_idle_timeout: limits.stream_idle_timeout,
        };
        let policies: HashMap<&ResourceKey, &ficus_config::TrafficPolicy> = config
            .traffic_policies
            .values()
            .map(|p| (&p.target, p))
            .collect();
        let targets: HashMap<&ResourceKey, Arc<BackendTarget>> = config
            .backends
            .iter()
            .map(|(key, backend)| {
                let endpoints = backend
                    .endpoints
                    .iter()
                    .map(|e| {
                        let tls = endpoint_tls(e, config.mesh.mtls_mode, cx);
                        cx.pools
                            .pool_with(e.address, backend.protocol.is_http2(), tls, settings)
                    })
                    .collect();
                let target = BackendTarget {
                    label: Arc::from(key.to_string()),
                    protocol: backend.protocol,
                    policy: cx.pools.policies().policy(
                        backend,
                        policies.get(key).copied(),
                        cx.metrics,
                    ),
                    endpoints,
                    identities: backend
                        .endpoints
                        .iter()
                        .map(|e| e.identity.as_deref().map(Arc::from))
                        .collect(),
                };
                (key, Arc::new(target))
            })
            .collect();

        // Backends no longer configured have no state to carry over.
        cx.pools
            .policies()
            .retain(|key| config.backends.contains_key(key));
        let mut services: ServiceMap<ServiceMap<Arc<Service>>> = ServiceMap::default();
        let mut routed: HashMap<ResourceKey, Vec<_>> = HashMap::new();
        let mut route_limits: HashMap<String, Arc<RateLimiter>> = HashMap::new();
        let own_namespace = cx.identity.namespace.as_str();
        let consumed = consumer_parents(
            config.http_routes.iter().map(|r| (&r.key, &r.parents[..])),
            own_namespace,
        );
        // Each match compiled once, whichever services' tables take it.
        let compiled: Vec<Vec<Vec<Arc<CompiledMatch>>>> = config
            .http_routes
            .iter()
            .map(|route| {
                route
                    .rules
                    .iter()
                    .map(|rule| {
                        let matches = rule.matches.iter();
                        matches.map(|m| Arc::new(CompiledMatch::new(m))).collect()
                    })
                    .collect()
            })
            .collect();
        for (route, compiled) in config.http_routes.iter().zip(&compiled) {
            if let Some(limit) = &route.rate_limit {
                let subject = format!("route:{}", route.key);
                if let Some(limiter) = cx.pools.policies().limiter(&subject, limit) {
                    route_limits.insert(route.key.to_string(), limiter);
                }
            }
            let applying = route
                .parents
                .iter()
                .filter(|parent| applies(&route.key, parent, own_namespace, &consumed));
            for parent in applying {
                for (rule_index, (rule, matchers)) in route.rules.iter().zip(compiled).enumerate() {
                    routed.entry(parent.clone()).or_default().push((
                        route.key.to_string(),
                        route.created.as_deref(),
                        rule_index,
                        rule,
                        matchers,
                    ));
                }
            }
        }
        for (service, rules) in routed {
            let label = service.to_string();
            let mut entries = Vec::new();
            for (route_label, created, rule_index, rule, matchers) in rules {
                let mut action = compile_rule(rule, &label, &targets, cx);
                action.route = Some(Arc::from(route_label.as_str()));
                action.rate_limit = route_limits.get(&route_label).cloned();
                let action = Arc::new(action);
                for (match_index, (m, matcher)) in rule.matches.iter().zip(matchers).enumerate() {
                    let precedence = m.precedence();
                    let entry = RouteEntry {
                        matcher: Arc::clone(matcher),
                        action: Arc::clone(&action),
                    };
                    entries.push((
                        precedence,
                        Tie::new(created, &route_label, rule_index, match_index),
                        entry,
                    ));
                }
            }
            let unmatched = cx
                .metrics
                .request_metrics(Direction::Outbound, &label, "none");
            let compiled = Service {
                label: Arc::from(label),
                table: RouteTable::new(entries),
                unmatched,
            };
            services
                .entry(service.namespace)
                .or_default()
                .insert(service.name, Arc::new(compiled));
        }
        // A Backend with no HTTPRoute of its name is reachable directly by that name.
        for (key, target) in &targets {
            let by_name = services.entry(key.namespace.clone()).or_default();
            if target.protocol == Protocol::Tcp || by_name.contains_key(&key.name) {
                continue;
            }
            let label = key.to_string();
            by_name.insert(
                key.name.clone(),
                Arc::new(direct_service(label, target, cx)),
            );
        }

        // Original destinations: each endpoint of an HTTP Backend stands for the service of the
        // Backend's name (the first Backend in key order wins a shared address).
        let mut destinations = HashMap::new();
        for (key, backend) in &config.backends {
            let Some(service) = services.get(&key.namespace).and_then(|s| s.get(&key.name)) else {
                continue;
            };
            for endpoint in &backend.endpoints {
                destinations
                    .entry(endpoint.address)
                    .or_insert_with(|| Arc::clone(service));
            }
        }

        let mut tcp = HashMap::new();
        let mut tcp_destinations = HashMap::new();
        let consumed_tcp = consumer_parents(
            config.tcp_routes.iter().map(|r| (&r.key, &r.parents[..])),
            own_namespace,
        );
        for (key, backend) in &config.backends {
            let Some(listen) = backend.listen else {
                continue;
            };
            let parent_route = config.tcp_routes.iter().find(|r| {
                r.parents.contains(key) && applies(&r.key, key, own_namespace, &consumed_tcp)
            });
            let weighted: Vec<(Arc<BackendTarget>, u32)> = match parent_route {
                Some(route) => route
                    .backend_refs
                    .iter()
                    .filter_map(|r| targets.get(&r.backend).map(|t| (Arc::clone(t), r.weight)))
                    .collect(),
                None => targets
                    .get(key)
                    .map(|t| (Arc::clone(t), 1))
                    .into_iter()
                    .collect(),
            };
            if let Some(backends) = WeightedSet::new(weighted) {
                let service = Arc::new(TcpService {
                    label: key.to_string(),
                    backends,
                });
                for endpoint in &backend.endpoints {
                    tcp_destinations
                        .entry(endpoint.address)
                        .or_insert_with(|| Arc::clone(&service));
                }
                tcp.insert(listen, service);
            }
        }

        let app = cx.identity.app;
        let inbound = Arc::new(InboundTarget {
            http1: cx.pools.pool(app, false, settings),
            http2: cx.pools.pool(app, true, settings),
            metrics: cx.metrics.request_metrics(
                Direction::Inbound,
                &format!("{}/{}", cx.identity.namespace, cx.identity.workload),
                "app",
            ),
            authz: Authorizer::new(&config, &cx.identity.namespace, &cx.identity.workload),
            rate_limit: inbound_rate_limit(&config, cx.identity)
                .and_then(|limit| cx.pools.policies().limiter("inbound", limit)),
        });
        let unrouted = cx
            .metrics
            .request_metrics(Direction::Outbound, "unknown", "none");
        let tracing = config.mesh.tracing.as_ref().map(|t| {
            let inbound = format!("{}/{}", cx.identity.namespace, cx.identity.workload);
            TraceSettings::new(t, inbound)
        });
        Self {
            tracing,
            version,
            source,
            server: ServerSettings::new(&limits),
            limits,
            config: Arc::new(config),
            documents,
            services: by_name_then_namespace(services),
            tcp,
            inbound,
            unrouted,
            destinations,
            tcp_destinations,
            passthrough: cx.metrics.request_metrics(
                Direction::Outbound,
                "passthrough",
                "passthrough",
            ),
            access_log: None,
        }
    }

    /// An empty snapshot (push mode before the first config): every request is unrouted.
    pub fn empty(cx: &BuildContext<'_>) -> Self {
        let config = Config {
            mesh: Default::default(),
            backends: Default::default(),
            http_routes: Vec::new(),
            tcp_routes: Vec::new(),
            traffic_policies: Default::default(),
            authorization_policies: Vec::new(),
            documents: Vec::new(),
            warnings: Vec::new(),
            warning_count: 0,
        };
        Self::build(config, documents_text(&[]), 0, "none".to_owned(), cx)
    }

    /// Transparent mode: the service whose Backend has an endpoint at `destination`.
    pub fn service_at(&self, destination: SocketAddr) -> Option<&Arc<Service>> {
        self.destinations.get(&destination)
    }

    /// Transparent mode: the opaque TCP service whose `tcp` Backend has an endpoint at
    /// `destination`.
    pub fn tcp_service_at(&self, destination: SocketAddr) -> Option<&Arc<TcpService>> {
        self.tcp_destinations.get(&destination)
    }

    /// The service an authority names, resolving bare names in `own_namespace`.
    pub fn service(&self, name: &ServiceName<'_>, own_namespace: &str) -> Option<&Arc<Service>> {
        let namespace = name.namespace.as_deref().unwrap_or(own_namespace);
        self.services
            .get(name.name.as_ref())?
            .iter()
            .find(|(ns, _)| ns == namespace)
            .map(|(_, service)| service)
    }
}

/// namespace → name → service, turned into name → [(namespace, service)].
fn by_name_then_namespace(
    services: ServiceMap<ServiceMap<Arc<Service>>>,
) -> ServiceMap<Vec<(String, Arc<Service>)>> {
    let mut by_name: ServiceMap<Vec<(String, Arc<Service>)>> = ServiceMap::default();
    for (namespace, named) in services {
        for (name, service) in named {
            by_name
                .entry(name)
                .or_default()
                .push((namespace.clone(), service));
        }
    }
    by_name
}

/// The rate limit of the TrafficPolicies that target this workload's Backends with one: the
/// strictest, when several Backends are this workload's (by name, `serviceAccount` or
/// endpoint identity), whatever order the policies are in.
fn inbound_rate_limit<'c>(config: &'c Config, identity: &Identity) -> Option<&'c RateLimit> {
    // requests / per, compared without division: a/p < b/q when a·q < b·p.
    let rate = |limit: &RateLimit| (u128::from(limit.requests), limit.per.as_nanos());
    config
        .traffic_policies
        .values()
        .filter(|p| is_own_backend(config, &p.target, &identity.namespace, &identity.workload))
        .filter_map(|p| p.rate_limit.as_ref())
        .min_by(|a, b| {
            let ((a_requests, a_per), (b_requests, b_per)) = (rate(a), rate(b));
            (a_requests * b_per).cmp(&(b_requests * a_per))
        })
}

fn compile_rule(
    rule: &RouteRule,
    service_label: &str,
    targets: &HashMap<&ResourceKey, Arc<BackendTarget>>,
    cx: &BuildContext<'_>,
) -> RuleAction {
    let mut action = RuleAction {
        request_headers: None,
        response_headers: None,
        rewrite: None,
        redirect: None,
        backends: None,
        timeouts: rule.timeouts,
        retry: rule.retry.as_ref().map(RetryPolicy::new),
        mirrors: Box::default(),
        rate_limit: None,
        local_metrics: cx
            .metrics
            .request_metrics(Direction::Outbound, service_label, "local"),
        route: None,
    };
    for filter in &rule.filters {
        match filter {
            Filter::RequestHeaderModifier(m) => action.request_headers = HeaderOps::new(m),
            Filter::ResponseHeaderModifier(m) => action.response_headers = HeaderOps::new(m),
            Filter::UrlRewrite(r) => action.rewrite = Some(Rewrite::new(r)),
            Filter::RequestRedirect(r) => action.redirect = Some(Redirect::new(r)),
            Filter::RequestMirror(m) => {
                if let Some(target) = targets.get(&m.backend) {
                    let mut mirrors = std::mem::take(&mut action.mirrors).into_vec();
                    let slots = cx.pools.policies().mirror_slots(&m.backend);
                    mirrors.push(Mirror::new(Arc::clone(target), m.percent, slots));
                    action.mirrors = mirrors.into_boxed_slice();
                }
            }
        }
    }
    let weighted = rule.backend_refs.iter().filter_map(|r| {
        let target = targets.get(&r.backend)?;
        let metrics = cx
            .metrics
            .request_metrics(Direction::Outbound, service_label, &target.label);
        Some((
            RouteBackend {
                target: Arc::clone(target),
                metrics,
            },
            r.weight,
        ))
    });
    action.backends = WeightedSet::new(weighted);
    action
}

fn direct_service(label: String, target: &Arc<BackendTarget>, cx: &BuildContext<'_>) -> Service {
    let metrics = cx
        .metrics
        .request_metrics(Direction::Outbound, &label, &target.label);
    let action = RuleAction {
        request_headers: None,
        response_headers: None,
        rewrite: None,
        redirect: None,
        backends: WeightedSet::new([(
            RouteBackend {
                target: Arc::clone(target),
                metrics,
            },
            1,
        )]),
        timeouts: Timeouts::default(),
        retry: None,
        mirrors: Box::default(),
        rate_limit: None,
        local_metrics: cx
            .metrics
            .request_metrics(Direction::Outbound, &label, "local"),
        route: None,
    };
    let catch_all = ficus_config::RouteMatch {
        path: ficus_config::PathMatch::Prefix("/".to_owned()),
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    };
    let matcher = Arc::new(CompiledMatch::new(&catch_all));
    let entry = RouteEntry {
        matcher,
        action: Arc::new(action),
    };
    let unmatched = cx
        .metrics
        .request_metrics(Direction::Outbound, &label, "none");
    let table = RouteTable::new(vec![(
        catch_all.precedence(),
        Tie::new(None, &label, 0, 0),
        entry,
    )]);
    Service {
        label: Arc::from(label),
        table,
        unmatched,
    }
}

/// Downstream HTTP server settings, applied to connections accepted while they are in force.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// HTTP/1.1 connections.
    pub http1: hyper::server::conn::http1::Builder,
    /// HTTP/2 (prior knowledge) connections.
    pub http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// How long a new connection may take to show its protocol.
    pub detect_timeout: std::time::Duration,
    /// How long an HTTP/1.1 connection may take to send a whole request head, from its
    /// start or from the end of the previous response (kept by `listener`, not hyper).
    pub header_read_timeout: std::time::Duration,
}

impl ServerSettings {
    /// Settings from the limits. Header limits are exact (`max_header_size`), not rounded up to
    /// a buffer size.
    pub fn new(limits: &ProxyLimits) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // hyper's header-read timeout (30 s by default) off: hyper boxes and registers a new
        // timer for every request head; `listener` keeps one per connection instead.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            // Flattened writes: a response head and its body chunk are copied into one buffer
            // and go out in one `write`, instead of a `writev` of the head and the queued chunk
            // (which also keeps the chunk, and the upstream read buffer it shares, alive until
            // the flush). +3-4 % requests per CPU second on small messages; no change measured
            // on 64 KiB and 1 MiB bodies (benches/README.md, "Flattened writes").
            .writev(false)
            .keep_alive(true);
        // Every HTTP/2 limit is set here rather than left to hyper's or h2's defaults, which
        // change between releases (RELIABILITY group B; h2 ≥ 0.4.18 is pinned in Cargo.toml).
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // SETTINGS_MAX_CONCURRENT_STREAMS; h2 answers streams past it with REFUSED_STREAM
            // (H2-5).
            .max_concurrent_streams(limits.max_concurrent_streams)
            // SETTINGS_MAX_HEADER_LIST_SIZE, counted by h2 on the decoded list (HPACK
            // references expanded, 32 bytes per field): past it h2 answers 431 itself, past
            // 4× it sends GOAWAY ENHANCE_YOUR_CALM and stops decoding (H2-3). It also bounds
            // the CONTINUATION frames of one header block (H2-2): h2 allows this size over
            // the frame size, +25 %, at least 5, then GOAWAY ENHANCE_YOUR_CALM.
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table the client may fill, per
            // connection (4 KiB, the RFC 7541 default and h2's).
            .header_table_size(4096)
            // SETTINGS_MAX_FRAME_SIZE: the protocol's minimum (16 KiB), so one frame buffers
            // at most that much.
            .max_frame_size(16 * 1024)
            // Streams the client resets before hyper takes them: past this, GOAWAY
            // ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487, H2-1).
            .max_pending_accept_reset_streams(Some(100))
            // Streams h2 itself resets for the client's errors (malformed headers, refused
            // streams): past this, GOAWAY ENHANCE_YOUR_CALM (RUSTSEC-2024-0003).
            .max_local_error_reset_streams(Some(1024))
            // Flow control as RELIABILITY's limits table says: 64 KiB per stream, 1 MiB per
            // connection (what a client may send before the proxy reads it).
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1024 * 1024)
            // Response bytes h2 buffers per stream for a slow client (hyper's default is
            // 400 KiB): with 100 streams, a few MiB per connection at most.
            .max_send_buf_size(64 * 1024)
            .keep_alive_interval(Some(std::time::Duration::from_secs(60)))
            .keep_alive_timeout(std::time::Duration::from_secs(20));
        Self {
            http1,
            http2,
            detect_timeout: limits.header_read_timeout,
            header_read_timeout: limits.header_read_timeout,
        }
    }
}

#[cfg(test)]
mod inbound_rate_limit_tests {
    use super::*;

    /// Two Backends are this workload's (its name, and one naming its service account): the
    /// stricter of their limits holds, whichever policy comes first.
    #[test]
    fn the_strictest_own_limit_holds() {
        let backend = |name: &str, extra: &str| {
            format!(
                "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                 metadata: {{name: {name}, namespace: shop}}\nspec: {{endpoints: []{extra}}}\n---\n"
            )
        };
        let policy = |name: &str, limit: &str| {
            format!(
                "apiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\n\
                 metadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{targetRef: {{kind: Backend, name: {name}}}, rateLimit: {limit}}}\n---\n"
            )
        };
        let identity = Identity {
            workload: "api".into(),
            namespace: "shop".into(),
            node_id: "n".into(),
            app: ([127, 0, 0, 1], 1).into(),
        };
        for (a, b) in [("100", "10"), ("10", "100")] {
            let text = backend("api", "")
                + &backend("api-v2", ", serviceAccount: api")
                + &policy("api", &format!("{{requests: {a}, per: 1s}}"))
                + &policy("api-v2", &format!("{{requests: {b}, per: 1s}}"));
            let config = ficus_config::parse_str("limits.yaml", &text).unwrap();
            let limit = inbound_rate_limit(&config, &identity).unwrap();
            assert_eq!(limit.requests, 10, "{a} and {b}");
        }
        // 100 a minute is stricter than 10 a second.
        let text = backend("api", "")
            + &backend("api-v2", ", serviceAccount: api")
            + &policy("api", "{requests: 10, per: 1s}")
            + &policy("api-v2", "{requests: 100, per: 1m}");
        let config = ficus_config::parse_str("limits.yaml", &text).unwrap();
        assert_eq!(
            inbound_rate_limit(&config, &identity).unwrap().requests,
            100
        );
    }
}
