//! Serde mirrors of the YAML documents, before validation.
//!
//! Every struct denies unknown fields, so a typo is an error that names the field instead of a
//! setting that silently does nothing. Values here are unchecked: durations are strings,
//! references are names, regexes are uncompiled. `crate::validate` turns them into
//! [`crate::model`] types. Defaults that need no validation (a missing list is empty, a missing
//! `metadata.namespace` is `default`) are applied here; every other default lives in
//! `crate::validate`, next to the check of the value it replaces.

use std::collections::BTreeMap;

use serde::Deserialize;

mod policy;
mod route;

pub use policy::*;
pub use route::*;

/// The kinds of document Ficus understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Mesh`: mesh-wide settings.
    Mesh,
    /// `Backend`: endpoints of one workload version.
    Backend,
    /// `HTTPRoute`: Gateway API HTTP routing.
    HttpRoute,
    /// `TCPRoute`: Gateway API weighted opaque TCP.
    TcpRoute,
    /// `TrafficPolicy`: how to talk to one Backend.
    TrafficPolicy,
    /// `AuthorizationPolicy`: who may call one Backend.
    AuthorizationPolicy,
}

impl Kind {
    /// Every kind, in the order documentation lists them.
    pub const ALL: [Kind; 6] = [
        Kind::Mesh,
        Kind::Backend,
        Kind::HttpRoute,
        Kind::TcpRoute,
        Kind::TrafficPolicy,
        Kind::AuthorizationPolicy,
    ];

    /// The `kind:` value of documents of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::Backend => "Backend",
            Kind::HttpRoute => "HTTPRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The only `apiVersion:` accepted for this kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::HttpRoute => "gateway.networking.k8s.io/v1",
            Kind::TcpRoute => "gateway.networking.k8s.io/v1alpha2",
            Kind::Mesh | Kind::Backend | Kind::TrafficPolicy | Kind::AuthorizationPolicy => {
                "ficus.dev/v1alpha1"
            }
        }
    }

    /// The kind whose `kind:` value is exactly `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed document of any kind.
#[derive(Debug, Clone)]
pub enum AnyDocument {
    /// A `Mesh` document.
    Mesh(MeshDocument),
    /// A `Backend` document.
    Backend(BackendDocument),
    /// An `HTTPRoute` document.
    HttpRoute(HttpRouteDocument),
    /// A `TCPRoute` document.
    TcpRoute(TcpRouteDocument),
    /// A `TrafficPolicy` document.
    TrafficPolicy(TrafficPolicyDocument),
    /// An `AuthorizationPolicy` document.
    AuthorizationPolicy(AuthorizationPolicyDocument),
}

impl AnyDocument {
    /// The document's kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnyDocument::Mesh(_) => Kind::Mesh,
            AnyDocument::Backend(_) => Kind::Backend,
            AnyDocument::HttpRoute(_) => Kind::HttpRoute,
            AnyDocument::TcpRoute(_) => Kind::TcpRoute,
            AnyDocument::TrafficPolicy(_) => Kind::TrafficPolicy,
            AnyDocument::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    /// The document's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            AnyDocument::Mesh(d) => &d.metadata,
            AnyDocument::Backend(d) => &d.metadata,
            AnyDocument::HttpRoute(d) => &d.metadata,
            AnyDocument::TcpRoute(d) => &d.metadata,
            AnyDocument::TrafficPolicy(d) => &d.metadata,
            AnyDocument::AuthorizationPolicy(d) => &d.metadata,
        }
    }
}

/// A Kubernetes-shaped document whose `spec` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    /// Checked against [`Kind::api_version`] before the document is deserialized.
    pub api_version: String,
    /// One of [`Kind::ALL`]; selects the type of `spec`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// The kind-specific content.
    pub spec: S,
    /// Written by Kubernetes controllers on objects read back from a cluster; ignored, so that
    /// `kubectl get -o yaml` output loads as is.
    #[serde(default)]
    pub status: Option<yaml_serde::Value>,
}

/// The `Mesh` document; unlike other kinds its `spec` may be left out (all defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshDocument {
    /// `ficus.dev/v1alpha1`.
    pub api_version: String,
    /// `Mesh`.
    pub kind: String,
    /// Name (conventionally `default`); the namespace is ignored because a Mesh is global.
    pub metadata: Metadata,
    /// Mesh-wide settings; every field has a default.
    #[serde(default)]
    pub spec: MeshSpec,
    /// Ignored, see [`Document::status`].
    #[serde(default)]
    pub status: Option<yaml_serde::Value>,
}

/// A `Backend` document.
pub type BackendDocument = Document<BackendSpec>;
/// An `HTTPRoute` document.
pub type HttpRouteDocument = Document<HttpRouteSpec>;
/// A `TCPRoute` document.
pub type TcpRouteDocument = Document<TcpRouteSpec>;
/// A `TrafficPolicy` document.
pub type TrafficPolicyDocument = Document<TrafficPolicySpec>;
/// An `AuthorizationPolicy` document.
pub type AuthorizationPolicyDocument = Document<AuthorizationPolicySpec>;

/// `metadata`: identity of the document. Fields Kubernetes adds to stored objects are accepted
/// and ignored so that documents read back from a cluster load unchanged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique per kind within the namespace; referenced by routes and policies.
    pub name: String,
    /// Namespace; references without a namespace resolve in the referencing document's one.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Free-form labels; not interpreted by Ficus.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Free-form annotations; not interpreted by Ficus.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Set by Kubernetes; ignored.
    #[serde(default)]
    pub uid: Option<String>,
    /// Set by Kubernetes; ignored.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Set by Kubernetes; ignored.
    #[serde(default)]
    pub generation: Option<i64>,
    /// Set by Kubernetes (often `null` in `--dry-run` output); an HTTPRoute's breaks
    /// precedence ties (the oldest route first), other kinds ignore it.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Set by Kubernetes while an object is being deleted; ignored.
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    /// Set by Kubernetes; ignored.
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Set by Kubernetes server-side apply; ignored.
    #[serde(default)]
    pub managed_fields: Option<yaml_serde::Value>,
    /// Set by Kubernetes controllers; ignored.
    #[serde(default)]
    pub finalizers: Option<Vec<String>>,
    /// Set by Kubernetes controllers; ignored.
    #[serde(default)]
    pub owner_references: Option<yaml_serde::Value>,
}

/// The namespace of documents that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// `Mesh.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// SPIFFE trust domain of workload identities; default `cluster.local`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// mTLS between sidecars; default `PERMISSIVE`.
    #[serde(default)]
    pub mtls: Option<Mtls>,
    /// Trace export; off when left out.
    #[serde(default)]
    pub tracing: Option<Tracing>,
    /// Data-plane limits; each left-out field keeps its default.
    #[serde(default)]
    pub proxy: Option<ProxyLimits>,
    /// JSON access logs, one line per request or TCP connection; off when left out.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
}

/// `Mesh.spec.accessLog`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLog {
    /// `/dev/stdout`, `/dev/stderr` or an absolute file path (appended to, created if absent).
    pub path: String,
}

/// `Mesh.spec.mtls`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    /// Whether sidecars talk mTLS to each other.
    pub mode: MtlsMode,
}

/// `Mesh.spec.mtls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum MtlsMode {
    /// Plaintext only.
    #[serde(rename = "DISABLE")]
    Disable,
    /// Accept mTLS and plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

/// `Mesh.spec.tracing`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// OTLP/gRPC collector URL, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// Share of traces kept, 0..=100; default 100 (tracing configured means traces wanted).
    #[serde(default)]
    pub sampling_percent: Option<f64>,
}

/// `Mesh.spec.proxy`: overrides of [`crate::model::ProxyLimits`]; durations as strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyLimits {
    /// Longest wait for a complete request header block.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// Longest gap between body chunks.
    #[serde(default)]
    pub body_idle_timeout: Option<String>,
    /// Longest gap between body chunks of a gRPC call (streams, both ways), instead of
    /// `bodyIdleTimeout`; default 5m.
    #[serde(default)]
    pub stream_idle_timeout: Option<String>,
    /// Upstream TCP connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Wait for upstream response headers when no route timeout or peer sidecar sets one.
    #[serde(default)]
    pub upstream_response_timeout: Option<String>,
    /// Idle time before a pooled upstream connection is closed.
    #[serde(default)]
    pub upstream_idle_timeout: Option<String>,
    /// Idle time before a downstream connection is closed.
    #[serde(default)]
    pub connection_idle_timeout: Option<String>,
    /// Largest request header block in bytes.
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    /// Most header fields per request.
    #[serde(default)]
    pub max_headers: Option<u64>,
    /// Concurrent HTTP/2 streams per downstream connection.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// Transparent mode: destination ports never sniffed for HTTP (server-first protocols
    /// such as MySQL), forwarded as opaque TCP at once; added to the sidecar's built-in list
    /// and its `--opaque-ports`.
    #[serde(default)]
    pub opaque_ports: Option<Vec<u64>>,
}

/// `Backend.spec`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendSpec {
    /// Wire protocol to the endpoints; default `http`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Where the workload listens; none (a workload scaled to zero) answers its requests 503.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// `ip:port` of the local listener that forwards opaque TCP; `tcp` Backends only.
    #[serde(default)]
    pub listen: Option<String>,
    /// The Kubernetes service account the workload's pods run as (in the Backend's
    /// namespace), when it is not the Backend's name: the policies that target this Backend
    /// (AuthorizationPolicy, a TrafficPolicy's `rateLimit`) then protect those pods even while
    /// no endpoint carries their identity (a workload scaled to zero, pods not ready yet).
    #[serde(default)]
    pub service_account: Option<String>,
}

/// `Backend.spec.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// gRPC (HTTP/2 with prior knowledge).
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// One `Backend.spec.endpoints[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `ip:port` to connect to (`[v6]:port` for IPv6).
    pub address: String,
    /// SPIFFE ID the endpoint must present; given, the connection uses mTLS.
    #[serde(default)]
    pub identity: Option<String>,
    /// Relative share of the Backend's requests (connections for `tcp`), 0 to 1,000,000;
    /// default 1. 0 drains the endpoint: it gets no new requests while another endpoint is
    /// available.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 1_000_000)))]
    pub weight: Option<u32>,
}
