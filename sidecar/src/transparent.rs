//! Transparent mode (`--transparent`): connections redirected by the nat rules of
//! `ficus-sidecar redirect`, served by their original destination.
//!
//! Per accepted connection:
//! 1. The original destination is read from conntrack (`SO_ORIGINAL_DST`, or
//!    `IP6T_SO_ORIGINAL_DST` on an IPv6 socket). A connection that was not redirected (its
//!    original destination is the listener itself, or conntrack knows nothing) is served in
//!    explicit mode as before; one whose original destination is one of our own listeners is
//!    refused (a loop).
//! 2. Ports known to carry server-first protocols (MySQL, PostgreSQL, SMTP, ... and
//!    `--opaque-ports`, and the Mesh's `spec.proxy.opaquePorts`, which follows config swaps)
//!    go straight to opaque TCP, never waiting for a byte.
//! 3. Otherwise the first bytes are sniffed for at most `--detect-timeout`: an HTTP/1 method, the
//!    HTTP/2 preface or a TLS ClientHello. Silence (a server-first protocol on a port we did not
//!    know) and anything else is forwarded as opaque TCP to the original destination, with the
//!    bytes read so far replayed. Availability over correctness: a slow HTTP client that is
//!    mistaken for a server-first one still reaches its destination, only unrouted. Inbound
//!    (plaintext, to a port that is not opaque) it is the other way round, as the HTTP layer
//!    strips forged identity headers and authorizes: anything an HTTP server could take for a
//!    request (any method token, lower case too) is HTTP, and bytes that could still start
//!    one when the timeout passes get `headerReadTimeout` to decide, or are closed.
//! 4. HTTP is served by the usual handlers with a [`Redirected`] request extension. Outbound
//!    routes by the original destination (an endpoint address of a Backend names its
//!    service), else by `Host`, else passes the request through to the original destination
//!    unchanged (`destination_service="passthrough"`). Inbound terminates mTLS as the Mesh says,
//!    then sends the request to the app on the original port.
//!
//! The proxy itself must not be redirected: the rules exempt its uid, so the sidecar refuses
//! to run transparent as root.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ficus_config::MtlsMode;
use http::Request;
use prometheus::{IntCounterVec, Opts};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::authz::Decision;
use crate::body::Body;
use crate::detect::{Prefixed, Protocol};
use crate::drain::Drain;
use crate::listener::{serve_detected, serve_http, Side};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::{forward, path_and_query, upstream_uri};
use crate::proxy::headers::{strip_hop_by_hop, upgrade_protocol};
use crate::snapshot::{Snapshot, TcpService};
use crate::state::Shared;
use crate::telemetry::metrics::{Metrics, RequestMetrics};
use crate::tunnel::copy_with_idle_timeout;
use crate::upstream::{EndpointPool, PoolSettings};

/// Destination ports whose protocols speak first (or are never HTTP), after Linkerd's list:
/// SMTP, submission, MySQL, Galera, PostgreSQL, Redis, Elasticsearch transport, memcached.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// How long an inbound connection to an opaque port is read for a peer sidecar's ClientHello
/// under PERMISSIVE mTLS (at most the detection timeout): it is sent right after the TCP
/// handshake, and a server-first protocol's client waits this long for its server.
const OPAQUE_TLS_WAIT: Duration = Duration::from_millis(10);

/// Most bytes read while sniffing; an HTTP method or the HTTP/2 preface is decided well
/// before this.
const SNIFF_LIMIT: usize = 64;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS record (handshake content type, version 3.x).
    Tls,
    /// An HTTP/1 request line (a method token and a space).
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else.
    Opaque,
}

/// Classifies the start of a connection, or `None` while it could still be several things.
/// Empty lines before an HTTP/1 request line are skipped, as HTTP servers do (RFC 9112 §2.2).
pub fn classify(start: &[u8]) -> Option<Sniffed> {
    classify_by(start, false)
}

/// [`classify`] for bytes a peer sidecar sent as opaque TCP (ALPN `ficus-tcp`) to a port that
/// is not opaque by this sidecar's config: whatever an HTTP server could take for a request is
/// HTTP, so that it goes through the HTTP layer rather than past it. Any token (RFC 9110
/// `tchar`) followed by a space is a request line, lower-case methods included, and empty lines
/// before it are skipped however many there are (servers skip them all).
pub fn classify_strict(start: &[u8]) -> Option<Sniffed> {
    classify_by(start, true)
}

/// What [`classify`] and [`classify_strict`] share: empty lines skipped, a TLS record only
/// without them, the HTTP/2 preface, then a method and a space; they differ in what a method
/// is and in what may follow empty lines.
fn classify_by(start: &[u8], strict: bool) -> Option<Sniffed> {
    let lines = start
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let start = &start[lines..];
    let first = *start.first()?;
    if !strict && lines > 0 && !first.is_ascii_uppercase() {
        return Some(Sniffed::Opaque);
    }
    if first == 0x16 && lines == 0 {
        return match start.get(1) {
            None => None,
            Some(3) => Some(Sniffed::Tls),
            Some(_) => Some(Sniffed::Opaque),
        };
    }
    if start.starts_with(PREFACE) {
        return Some(Sniffed::Http2);
    }
    if PREFACE.starts_with(start) {
        return None;
    }
    for (i, &byte) in start.iter().enumerate() {
        let method = if strict {
            is_tchar(byte) && i < SNIFF_LIMIT
        } else {
            // A method is a token; real ones are upper-case letters (and `-`/`_` in
            // extensions).
            matches!(byte, b'A'..=b'Z' | b'-' | b'_') && i < 20
        };
        match byte {
            b' ' if i > 0 => return Some(Sniffed::Http1),
            _ if method => {}
            _ => return Some(Sniffed::Opaque),
        }
    }
    None
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Most bytes [`classify_strict`] reads before it decides (empty lines count here, not in
/// [`SNIFF_LIMIT`]); a peer still undecided then is closed.
const STRICT_SNIFF_LIMIT: usize = 16 * 1024;

/// Why a redirected connection was forwarded as opaque TCP (a label value).
fn opaque_reason(read: &[u8], timed_out: bool) -> &'static str {
    match (read.is_empty(), timed_out) {
        (true, true) => "server_first",
        (_, true) => "undecided",
        _ => match classify(read) {
            Some(Sniffed::Tls) => "tls",
            _ => "not_http",
        },
    }
}

/// Reads the first bytes for at most `timeout`, after the `read` already read. `None` when
/// the peer closed or failed, or (`strict`: [`classify_strict`]) left its bytes undecided by
/// closing or by sending [`STRICT_SNIFF_LIMIT`] of them.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut read: Vec<u8>,
    timeout: Duration,
    strict: bool,
) -> Option<(Option<Sniffed>, Vec<u8>)> {
    let classify = if strict { classify_strict } else { classify };
    read.reserve(SNIFF_LIMIT.saturating_sub(read.len()));
    if let Some(sniffed) = classify(&read) {
        return Some((Some(sniffed), read));
    }
    let decided = tokio::time::timeout(timeout, async {
        loop {
            match stream.read_buf(&mut read).await {
                // The client ended its side before its bytes could be told apart: they go on
                // as opaque TCP, and so does its end of stream (a half-close, not a reset).
                // Strict, bytes that might yet have been HTTP never go past the HTTP layer.
                Ok(0) if !read.is_empty() && !strict => return Some(Sniffed::Opaque),
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(sniffed) = classify(&read) {
                return Some(sniffed);
            }
            if strict && read.len() >= STRICT_SNIFF_LIMIT {
                return None;
            }
            if !strict && read.len() >= SNIFF_LIMIT {
                return Some(Sniffed::Opaque);
            }
        }
    })
    .await;
    match decided {
        Ok(Some(sniffed)) => Some((Some(sniffed), read)),
        Ok(None) => None,
        Err(_) => Some((None, read)),
    }
}

/// Whether `ip` is an address of this host (network namespace): only those can be bound.
/// Asked only when a destination port is one of ours, so rarely.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The original destination of a redirected connection (conntrack's view before REDIRECT).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let address = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    address
        .as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// Metrics of transparent mode.
#[derive(Debug)]
pub struct TransparentMetrics {
    intercepted: IntCounterVec,
    passthrough: IntCounterVec,
    refused: IntCounterVec,
}

impl TransparentMetrics {
    /// Creates and registers them with `metrics`.
    pub fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let this = Self {
            intercepted: vec(
                "ficus_intercepted_connections_total",
                "Redirected connections by direction and how they were served (http or opaque)",
                &["direction", "protocol"],
            )?,
            passthrough: vec(
                "ficus_passthrough_connections_total",
                "Outbound redirected connections forwarded unchanged as bytes to their original \
                 destination, by reason",
                &["reason"],
            )?,
            refused: vec(
                "ficus_intercept_refused_total",
                "Redirected connections refused, by reason",
                &["reason"],
            )?,
        };
        metrics.register(Box::new(this.intercepted.clone()))?;
        metrics.register(Box::new(this.passthrough.clone()))?;
        metrics.register(Box::new(this.refused.clone()))?;
        for direction in ["outbound", "inbound"] {
            for protocol in ["http", "opaque"] {
                this.intercepted.with_label_values(&[direction, protocol]);
            }
        }
        Ok(this)
    }
}

/// Transparent-mode settings, shared by the listeners.
#[derive(Debug)]
pub struct Transparent {
    opaque_ports: Vec<u16>,
    detect_timeout: Duration,
    own: Vec<SocketAddr>,
    metrics: TransparentMetrics,
}

impl Transparent {
    /// Settings from flags; `own` are the addresses this sidecar listens on.
    pub fn new(
        extra_opaque_ports: &[u16],
        detect_timeout: Duration,
        own: Vec<SocketAddr>,
        metrics: TransparentMetrics,
    ) -> Self {
        let mut opaque_ports: Vec<u16> = DEFAULT_OPAQUE_PORTS.to_vec();
        opaque_ports.extend_from_slice(extra_opaque_ports);
        opaque_ports.sort_unstable();
        opaque_ports.dedup();
        Self {
            opaque_ports,
            detect_timeout,
            own,
            metrics,
        }
    }

    /// Whether connections to `port` go to opaque TCP unsniffed: a built-in or
    /// `--opaque-ports` port, or one of the serving Mesh's `spec.proxy.opaquePorts`
    /// (`configured`, sorted), so a config swap changes the set for new connections.
    fn is_opaque_port(&self, port: u16, configured: &[u16]) -> bool {
        self.opaque_ports.binary_search(&port).is_ok() || configured.binary_search(&port).is_ok()
    }

    /// Whether `destination` is one of our own listeners (connecting there would loop).
    fn is_own(&self, destination: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == destination.port()
                && (own.ip() == destination.ip()
                    || (own.ip().is_loopback() && destination.ip().is_loopback())
                    || (own.ip().is_unspecified()
                        && own.is_ipv4() == destination.is_ipv4()
                        && is_local(destination.ip())))
        })
    }
}

/// The original destination of a redirected connection, attached to each of its requests.
#[derive(Debug, Clone)]
pub struct Redirected(Arc<Destination>);

struct Destination {
    original: SocketAddr,
    /// Whether the original port is opaque by config (built-in, `--opaque-ports`, the
    /// Mesh's `opaquePorts`).
    opaque_port: bool,
    /// Pools are looked up on first use: routed outbound connections never need them.
    shared: Arc<Shared>,
    settings: PoolSettings,
    http1: OnceLock<Arc<EndpointPool>>,
    http2: OnceLock<Arc<EndpointPool>>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("original", &self.original)
            .finish_non_exhaustive()
    }
}

impl Redirected {
    fn new(
        shared: &Arc<Shared>,
        original: SocketAddr,
        settings: PoolSettings,
        opaque_port: bool,
    ) -> Self {
        Self(Arc::new(Destination {
            original,
            opaque_port,
            shared: Arc::clone(shared),
            settings,
            http1: OnceLock::new(),
            http2: OnceLock::new(),
        }))
    }

    /// Where the client connected to.
    pub fn original(&self) -> SocketAddr {
        self.0.original
    }

    /// Whether the original port is opaque by this sidecar's config.
    pub fn is_opaque_port(&self) -> bool {
        self.0.opaque_port
    }

    /// The connections to the original destination, HTTP/2 or HTTP/1.1.
    pub fn pool(&self, http2: bool) -> &Arc<EndpointPool> {
        let destination = &*self.0;
        let cell = if http2 {
            &destination.http2
        } else {
            &destination.http1
        };
        cell.get_or_init(|| {
            let pools = &destination.shared.pools;
            pools.pool(destination.original, http2, destination.settings)
        })
    }

    /// The extension of `request`, if its connection was redirected.
    pub fn of<B>(request: &Request<B>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }
}

/// Inbound: the app's pool on the original port, when the request came through redirection.
pub fn app_pool(extensions: &http::Extensions, http2: bool) -> Option<&Arc<EndpointPool>> {
    extensions.get::<Redirected>().map(|r| r.pool(http2))
}

/// Serves one connection accepted by a transparent listener.
pub async fn serve(
    shared: Arc<Shared>,
    transparent: Arc<Transparent>,
    side: Side,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: Drain,
) {
    let original = match (original_dst(&stream), stream.local_addr()) {
        (Ok(original), Ok(local)) if original != local => original,
        // Not redirected: someone connected to the listener itself (explicit mode).
        _ => return serve_http(shared, side, stream, peer, drain).await,
    };
    let direction = match side {
        Side::Outbound => "outbound",
        Side::Inbound => "inbound",
    };
    if transparent.is_own(original) {
        transparent
            .metrics
            .refused
            .with_label_values(&["own_listener"])
            .inc();
        tracing::warn!(%peer, %original, "redirected connection to our own listener refused (loop)");
        return;
    }
    let (settings, mode, opaque_port) = {
        let snapshot = shared.snapshot.load();
        let limits = &snapshot.limits;
        (
            PoolSettings {
                connect_timeout: limits.connect_timeout,
                idle_timeout: limits.upstream_idle_timeout,
                body_idle_timeout: limits.body_idle_timeout,
                stream_idle_timeout: limits.stream_idle_timeout,
            },
            snapshot.config.mesh.mtls_mode,
            transparent.is_opaque_port(original.port(), &limits.opaque_ports),
        )
    };
    // A `tcp` Backend's endpoint is opaque by config: split by its TCPRoute, never sniffed.
    let tcp_service = match side {
        Side::Outbound => shared.snapshot.load().tcp_service_at(original).cloned(),
        Side::Inbound => None,
    };
    // Inbound under STRICT with a mesh identity everything must be mTLS, whose client speaks
    // first (its ClientHello), so an opaque port is read too: opaque TCP from a peer sidecar
    // (ALPN `ficus-tcp`) is terminated and handed to the app instead of refused. Nothing
    // server-first can be legitimate there.
    let mtls_only = side == Side::Inbound && mode == MtlsMode::Strict && shared.tls.is_some();
    // Inbound under PERMISSIVE a peer sidecar's mTLS may come to an opaque port too: its
    // ClientHello is there at once, so the port is read briefly (a server-first protocol's
    // client waits at most that long before its server is connected).
    let mtls_possible = side == Side::Inbound && mode != MtlsMode::Disable && shared.tls.is_some();
    let wait = if tcp_service.is_some() || (opaque_port && !mtls_possible) {
        None
    } else if opaque_port && !mtls_only {
        Some(transparent.detect_timeout.min(OPAQUE_TLS_WAIT))
    } else {
        Some(transparent.detect_timeout)
    };
    // Inbound plaintext to a port that is not opaque: whatever an HTTP server could take for a
    // request is HTTP ([`classify_strict`]), so that neither a lower-case method nor a request
    // that starts slowly gets past the HTTP layer (identity header stripping, authorization)
    // as opaque TCP.
    let strict = side == Side::Inbound && !opaque_port;
    let (mut sniffed, mut read) = match wait {
        None => (None, Vec::new()),
        Some(wait) => match sniff(&mut stream, Vec::new(), wait, strict).await {
            Some(sniffed) => sniffed,
            None => return,
        },
    };
    // Inbound, a client that has not spoken by the detection timeout on a port that is not
    // opaque: a server-first protocol, or an HTTP client that connected ahead of its request.
    // Whichever side speaks first decides, so a late request is still served as HTTP (its
    // authorization, identity header stripping and metrics) rather than copied past them.
    let mut app = None;
    if side == Side::Inbound && !opaque_port && sniffed.is_none() && read.is_empty() {
        if mtls_only {
            // Under STRICT every legitimate client is a peer sidecar whose ClientHello comes
            // at once: a client still silent here is closed, and no app connection is opened
            // for it (waiting for a server-first app would hold one for the idle timeout).
            shared.metrics.tls_handshake_failed("timeout");
            tracing::info!(%peer, %original, "silent inbound connection closed: mTLS is STRICT");
            return;
        }
        let detect = transparent.detect_timeout;
        match first_speaker(&shared, &mut stream, original, detect, strict).await {
            FirstSpeaker::Client(late, bytes, connected) => {
                (sniffed, read, app) = (late, bytes, Some(connected));
            }
            FirstSpeaker::App(connected) => app = Some(connected),
            FirstSpeaker::Neither => return,
        }
    }
    // Inbound, a client whose first bytes could still start an HTTP request at the detection
    // timeout gets an HTTP server's time for its header block (`headerReadTimeout`); still
    // undecided then, it is closed as an HTTP server would close it. (Under STRICT plaintext
    // is refused below whatever it is.)
    if strict && !mtls_only && sniffed.is_none() && !read.is_empty() {
        let header_wait = shared.snapshot.load().limits.header_read_timeout;
        match sniff(&mut stream, read, header_wait, true).await {
            Some((Some(late), bytes)) => (sniffed, read) = (Some(late), bytes),
            _ => {
                transparent
                    .metrics
                    .refused
                    .with_label_values(&["undecided"])
                    .inc();
                tracing::info!(%peer, %original, "inbound connection closed: its first bytes were neither HTTP nor anything else within the header timeout");
                return;
            }
        }
    }
    let protocol = match (side, sniffed) {
        (_, Some(Sniffed::Http1)) if !opaque_port => Some(Protocol::Http1),
        (_, Some(Sniffed::Http2)) if !opaque_port => Some(Protocol::Http2),
        // Inbound TLS is the mesh's mTLS when we have a mesh identity; otherwise (and
        // outbound, where it is the app's own) it is passed through.
        (Side::Inbound, Some(Sniffed::Tls)) if mtls_possible => Some(Protocol::Tls),
        _ => None,
    };
    let metrics = &transparent.metrics;
    if let Some(protocol) = protocol {
        // An app connection opened while waiting for the client is not needed.
        drop(app);
        metrics
            .intercepted
            .with_label_values(&[direction, "http"])
            .inc();
        let redirected = Redirected::new(&shared, original, settings, opaque_port);
        let io = Prefixed::new(read, stream);
        return serve_detected(shared, side, io, protocol, peer, drain, Some(redirected)).await;
    }
    let reason = if opaque_port {
        "opaque_port"
    } else {
        opaque_reason(&read, sniffed.is_none())
    };
    if side == Side::Inbound && mode == MtlsMode::Strict {
        // Opaque TCP is not mTLS'd between sidecars, so STRICT refuses it like any plaintext.
        shared.metrics.tls_handshake_failed("plaintext");
        tracing::info!(%peer, %original, reason, "opaque inbound connection refused: mTLS is STRICT");
        return;
    }
    if side == Side::Inbound {
        // Plaintext has no peer identity: authorization decides on that alone, as for opaque
        // TCP over mTLS (an ALLOW policy for some identities refuses it).
        let snapshot = shared.snapshot.load();
        let authz = &snapshot.inbound.authz;
        if authz.is_active() && authz.check_tcp(None) == Decision::Deny {
            shared.metrics.authz_denied();
            tracing::info!(%peer, %original, reason, "opaque inbound connection denied by authorization policy");
            return;
        }
    }
    metrics
        .intercepted
        .with_label_values(&[direction, "opaque"])
        .inc();
    let downstream = Prefixed::new(read, stream);
    match tcp_service {
        Some(service) => forward_tcp_service(&shared, &service, downstream).await,
        None => {
            if side == Side::Outbound {
                metrics.passthrough.with_label_values(&[reason]).inc();
            }
            forward_opaque(&shared, original, downstream, app, reason).await;
        }
    }
}

/// Who spoke first on an inbound connection whose client was silent at first.
pub enum FirstSpeaker {
    /// The client: what its first bytes look like, the bytes, and the app connection opened
    /// meanwhile.
    Client(Option<Sniffed>, Vec<u8>, TcpStream),
    /// The app (a server-first protocol): its connection, whose bytes are still unread.
    App(TcpStream),
    /// The client left, the app could not be reached, or nobody spoke within the idle limit.
    Neither,
}

/// Connects the app at `original` and waits for the client or the app to speak, the client
/// first when both have. The app connection is counted as the connection's own (a client
/// that speaks HTTP after all has it closed unused). `strict`: the client's bytes are told
/// apart by [`classify_strict`].
pub async fn first_speaker<S: AsyncRead + Unpin>(
    shared: &Shared,
    client: &mut S,
    original: SocketAddr,
    detect_timeout: Duration,
    strict: bool,
) -> FirstSpeaker {
    let idle = shared.snapshot.load().limits.connection_idle_timeout;
    let Some(app) = connect(shared, original).await else {
        return FirstSpeaker::Neither;
    };
    // Whether the client spoke first (`biased`: it wins a tie); its first bytes. A read is
    // cancel-safe: bytes are either returned or left in the stream (TLS: in its session).
    let mut first = Vec::with_capacity(SNIFF_LIMIT);
    let spoke = tokio::time::timeout(idle, async {
        tokio::select! {
            biased;
            read = client.read_buf(&mut first) => read.map(Some),
            ready = app.readable() => ready.map(|()| None),
        }
    })
    .await;
    match spoke {
        // The client closed before its first byte.
        Ok(Ok(Some(0))) => FirstSpeaker::Neither,
        Ok(Ok(Some(_))) => match sniff(client, first, detect_timeout, strict).await {
            Some((sniffed, read)) => FirstSpeaker::Client(sniffed, read, app),
            None => FirstSpeaker::Neither,
        },
        Ok(Ok(None)) => FirstSpeaker::App(app),
        Ok(Err(_)) | Err(_) => FirstSpeaker::Neither,
    }
}

/// Forwards an intercepted connection to a `tcp` Backend's endpoint as the service's
/// TCPRoute splits it (like a connection to the Backend's `listen` address).
async fn forward_tcp_service(
    shared: &Shared,
    service: &TcpService,
    mut downstream: Prefixed<TcpStream>,
) {
    let metrics = &shared.metrics;
    let idle = shared.snapshot.load().limits.connection_idle_timeout;
    metrics.tcp_opened.inc();
    let mut relayed = crate::tcp::Relayed::default();
    crate::tcp::relay_to_service(metrics, service, &mut downstream, idle, &mut relayed).await;
    metrics.tcp_closed.inc();
}

/// Copies bytes between the client and the original destination (`app`, when it is connected
/// already).
async fn forward_opaque(
    shared: &Shared,
    original: SocketAddr,
    mut downstream: Prefixed<TcpStream>,
    app: Option<TcpStream>,
    reason: &'static str,
) {
    let metrics = &shared.metrics;
    let idle = shared.snapshot.load().limits.connection_idle_timeout;
    metrics.tcp_opened.inc();
    let upstream = match app {
        Some(app) => Some(app),
        None => connect(shared, original).await,
    };
    if let Some(mut upstream) = upstream {
        let (_, result) = copy_with_idle_timeout(
            &mut downstream,
            &mut upstream,
            idle,
            Some(metrics.tcp_live()),
        )
        .await;
        if let Err(error) = result {
            tracing::debug!(%original, reason, %error, "opaque connection ended");
        }
    }
    metrics.tcp_closed.inc();
}

/// A connection to the original destination within the connect timeout, failures counted.
async fn connect(shared: &Shared, original: SocketAddr) -> Option<TcpStream> {
    let connect_timeout = shared.snapshot.load().limits.connect_timeout;
    match tokio::time::timeout(connect_timeout, TcpStream::connect(original)).await {
        Ok(Ok(upstream)) => {
            let _ = upstream.set_nodelay(true);
            Some(upstream)
        }
        Ok(Err(error)) => {
            shared.metrics.upstream_failure("connect_refused");
            tracing::debug!(%original, %error, "opaque connect failed");
            None
        }
        Err(_) => {
            shared.metrics.upstream_failure("connect_timeout");
            tracing::debug!(%original, "opaque connect timed out");
            None
        }
    }
}

/// Outbound HTTP to a destination Ficus knows nothing about, under a `Host` it does not know
/// either: sent to the original destination as the app addressed it (hop-by-hop headers are
/// the proxy's business; nothing else is routed, rewritten or retried).
pub async fn passthrough<'s>(
    snapshot: &'s Snapshot,
    redirected: &Redirected,
    authority: &str,
    request: Request<hyper::body::Incoming>,
) -> (http::Response<Body>, &'s RequestMetrics, &'static str) {
    let metrics = &*snapshot.passthrough;
    let http2 = request.version() == http::Version::HTTP_2;
    let pool = redirected.pool(http2);
    // Not `forward::prepare`: no x-forwarded-for or x-request-id for a destination outside
    // the mesh; only the hop-by-hop headers, which belong to each connection, go.
    let mut request = request;
    let upgrade = match request.version() {
        http::Version::HTTP_11 => upgrade_protocol(request.headers()),
        _ => None,
    };
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, incoming) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade.as_ref(), http2);
    let limits = &snapshot.limits;
    parts.uri = match upstream_uri(http2, authority, path_and_query(&parts.uri)) {
        Ok(uri) => uri,
        Err(error) => {
            let (response, flag) = error.into_response();
            return (response, metrics, flag);
        }
    };
    if http2 {
        parts.headers.remove(http::header::HOST);
    }
    let idle = crate::body::request_idle(limits, parts.version, &parts.headers);
    let body = crate::body::with_idle_timeout(incoming, idle);
    let request = Request::from_parts(parts, body);
    match forward(
        pool,
        request,
        limits.upstream_response_timeout,
        on_upgrade,
        limits,
        None,
        None,
    )
    .await
    {
        Ok(response) => (response, metrics, ""),
        Err(error) => {
            let error: ProxyError = error;
            tracing::debug!(original = %redirected.original(), %error, "passthrough request failed");
            let (response, flag) = error.into_response();
            (response, metrics, flag)
        }
    }
}

/// Whether this process runs as root, read without unsafe code from the owner of
/// `/proc/self` (the effective uid).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        // Empty lines before a request line are skipped, as HTTP servers skip them.
        assert_eq!(classify(b"\r\nGET / HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"\r\n\r\n"), None);
        assert_eq!(classify(b"\r\n\x16\x03"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(PREFACE), Some(Sniffed::Http2));
        assert_eq!(classify(b"POST /"), Some(Sniffed::Http1));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Sniffed::Tls));
        assert_eq!(classify(&[0x16, 0x00]), Some(Sniffed::Opaque));
        // Redis, inline and RESP; a binary handshake.
        assert_eq!(classify(b"PING\r\n"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Sniffed::Opaque));
        assert_eq!(
            classify(&[0, 0, 0, 8, 4, 210, 22, 47]),
            Some(Sniffed::Opaque)
        );
        assert_eq!(classify(b" GET"), Some(Sniffed::Opaque));
        assert_eq!(classify(&[b'A'; 21]), Some(Sniffed::Opaque));
    }

    #[test]
    fn strict_classification_takes_whatever_a_server_would_parse_for_http() {
        // Lower-case and unusual methods, and any number of empty lines first.
        assert_eq!(
            classify_strict(b"get /admin HTTP/1.1"),
            Some(Sniffed::Http1)
        );
        assert_eq!(classify_strict(b"M!x /"), Some(Sniffed::Http1));
        let mut lines = b"\r\n".repeat(200);
        assert_eq!(classify_strict(&lines), None, "undecided, not opaque");
        lines.extend_from_slice(b"GET / HTTP/1.1");
        assert_eq!(classify_strict(&lines), Some(Sniffed::Http1));
        assert_eq!(classify_strict(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify_strict(PREFACE), Some(Sniffed::Http2));
        // What no HTTP server would take for a request stays opaque.
        assert_eq!(
            classify_strict(&[0, 0, 0, 8, 4, 210]),
            Some(Sniffed::Opaque)
        );
        assert_eq!(classify_strict(b"*1\r\n$4\r\n"), Some(Sniffed::Opaque));
        assert_eq!(classify_strict(b"PING\r\n"), Some(Sniffed::Opaque));
        assert_eq!(classify_strict(&[0x16, 0x03, 0x01]), Some(Sniffed::Tls));
    }

    #[tokio::test(start_paused = true)]
    async fn strict_sniffing_never_calls_undecided_bytes_opaque() {
        use tokio::io::AsyncWriteExt;
        // A request line sent in pieces, the rest after the detection timeout: undecided.
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(b"GE").await.unwrap();
        let sniffed = sniff(&mut server, Vec::new(), Duration::from_secs(1), true).await;
        assert_eq!(sniffed, Some((None, b"GE".to_vec())));
        // Only empty lines, more than any limit: given up (closed), not opaque.
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(&b"\r\n".repeat(STRICT_SNIFF_LIMIT))
            .await
            .unwrap();
        assert_eq!(
            sniff(&mut server, Vec::new(), Duration::from_secs(1), true).await,
            None
        );
        // A partial line and then the end of the client's side: closed, not opaque.
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(b"GET").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            sniff(&mut server, Vec::new(), Duration::from_secs(1), true).await,
            None
        );
        // Not strict (plaintext transparent), the last two go on as opaque TCP.
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(b"GET").await.unwrap();
        client.shutdown().await.unwrap();
        let sniffed = sniff(&mut server, Vec::new(), Duration::from_secs(1), false).await;
        assert_eq!(sniffed.map(|s| s.0), Some(Some(Sniffed::Opaque)));
    }

    #[test]
    fn reasons() {
        assert_eq!(opaque_reason(b"", true), "server_first");
        assert_eq!(opaque_reason(b"GE", true), "undecided");
        assert_eq!(opaque_reason(&[0x16, 3, 1], false), "tls");
        assert_eq!(opaque_reason(b"PING\r\n", false), "not_http");
    }

    #[test]
    fn own_listeners_are_recognised() {
        let metrics = TransparentMetrics::register(&Metrics::new()).unwrap();
        let own = vec![
            "127.0.0.1:15001".parse().unwrap(),
            "0.0.0.0:15006".parse().unwrap(),
            "[::1]:15001".parse().unwrap(),
        ];
        let t = Transparent::new(&[7000], Duration::from_millis(100), own, metrics);
        assert!(t.is_own("127.0.0.1:15001".parse().unwrap()));
        assert!(t.is_own("127.0.0.2:15001".parse().unwrap()));
        assert!(
            !t.is_own("10.1.2.3:15006".parse().unwrap()),
            "not an address of ours"
        );
        assert!(t.is_own("127.0.0.1:15006".parse().unwrap()));
        assert!(t.is_own("[::1]:15001".parse().unwrap()));
        assert!(!t.is_own("10.1.2.3:15001".parse().unwrap()));
        assert!(!t.is_own("10.1.2.3:80".parse().unwrap()));
        assert!(t.opaque_ports.contains(&7000) && t.opaque_ports.contains(&5432));
        assert!(t.is_opaque_port(7000, &[]) && t.is_opaque_port(5432, &[]));
        assert!(!t.is_opaque_port(8080, &[]));
        assert!(
            t.is_opaque_port(8080, &[1521, 8080]),
            "the Mesh's ports are added"
        );
        assert!(
            t.is_opaque_port(3306, &[1521, 8080]),
            "to the built-in ones"
        );
    }
}
