//! Accept loops and downstream HTTP connections.
//!
//! Accept errors such as `EMFILE` (out of file descriptors) are logged and retried after a
//! pause instead of ending the loop or spinning. Every connection watches the drain signal of
//! its side (inbound drains first, outbound once the app is done; see [`crate::drain`]):
//! HTTP/1 finishes its in-flight request and closes, HTTP/2 sends GOAWAY. The accept loops
//! share a [`ConnectionLimit`], so that a flood leaves descriptors for the admin server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ficus_config::MtlsMode;
use ficus_identity::tls;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::authz::Decision;
use crate::detect::{detect, DetectError, Prefixed, Protocol};
use crate::drain::Drain;
use crate::snapshot::ServerSettings;
use crate::state::Shared;
use crate::transparent::Redirected;

mod head;
mod limit;
mod resets;

pub use limit::ConnectionLimit;

use ficus_net::stall::{StallBounded, MAX_WRITE_STALL};
use head::{Graceful, HeadRead, HeadTimed, HeadWatch, IdleGoaway, Watched};
use resets::ResetsCounted;

/// Pause after an accept error, so a full fd table does not turn into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Drives a hyper connection ([`Graceful`]); on drain asks it to finish in-flight requests and
/// stop (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), then waits for that. A macro rather
/// than a generic `async fn`: the compiler cannot prove such a function's future `Send` for
/// hyper's connection types (a higher-ranked lifetime limitation).
macro_rules! until_drained {
    ($connection:expr, $drain:expr) => {{
        let connection = $connection;
        tokio::pin!(connection);
        let drained = $drain.signaled_when_woken();
        tokio::pin!(drained);
        tokio::select! {
            result = connection.as_mut() => result,
            () = &mut drained => {
                Graceful::graceful_shutdown(connection.as_mut());
                connection.await
            }
        }
    }};
}

/// Which side of the sidecar a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// App → mesh on `--outbound`.
    Outbound,
    /// Mesh → app on `--inbound`.
    Inbound,
}

/// Accepts until `drain` says this side drains, handing each connection to `serve` on
/// `tracker` (and counting it while it runs, when `drain` counts its side's connections).
/// Each connection holds a permit of `limit` while its task runs; with none free, the loop
/// waits before accepting.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: Drain,
    tracker: TaskTracker,
    limit: ConnectionLimit,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let drained = drain.clone().signaled();
    tokio::pin!(drained);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut drained => break,
            permit = limit.acquire() => permit,
        };
        tokio::select! {
            biased;
            () = &mut drained => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // Counted (outbound) from accept to the end of the connection's task.
                    let active = drain.track();
                    let serving = serve(stream, peer);
                    tracker.spawn(async move {
                        let _active = active;
                        let _permit = permit;
                        serving.await;
                    });
                }
                Err(error) if one_connection(&error) => {
                    tracing::debug!(listener = name, %error, "a connection failed before accept");
                }
                Err(error) => {
                    tracing::warn!(listener = name, %error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// Whether an accept error concerns only the connection being accepted (its client reset it
/// while it waited in the backlog), so the next accept may succeed at once; the others (out of
/// descriptors or memory) get the back-off.
pub fn one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

/// Serves an accepted connection until it ends or, after the drain signal, until its
/// in-flight requests are done. Inbound connections may be TLS (terminated here, the peer's
/// SPIFFE ID verified and passed on); what the mesh's mTLS mode allows decides the rest.
pub async fn serve_http(
    shared: Arc<Shared>,
    side: Side,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: Drain,
) {
    let detect_timeout = shared.snapshot.load().server.detect_timeout;
    let (protocol, read) = match detect(&mut stream, detect_timeout).await {
        Ok(detected) => detected,
        Err(error) => {
            if matches!(error, DetectError::Timeout(_)) {
                shared.metrics.http_rejected("detect_timeout");
            }
            tracing::debug!(%peer, %error, "closing connection before any request");
            return;
        }
    };
    let prefixed = Prefixed::new(read, stream);
    serve_detected(shared, side, prefixed, protocol, peer, drain, None).await;
}

/// [`serve_http`] once the protocol is known (`prefixed` replays the bytes read to find it).
/// `redirected` (transparent mode) is attached to every request of the connection.
pub async fn serve_detected(
    shared: Arc<Shared>,
    side: Side,
    prefixed: Prefixed<TcpStream>,
    protocol: Protocol,
    peer: SocketAddr,
    drain: Drain,
    redirected: Option<Redirected>,
) {
    // Settings of the config in force when the connection arrived; the connection does not
    // keep the whole snapshot alive.
    let (server, mode) = {
        let snapshot = shared.snapshot.load();
        (snapshot.server.clone(), snapshot.config.mesh.mtls_mode)
    };
    match (side, protocol) {
        (Side::Inbound, Protocol::Tls) => {
            let Some(tls) = shared.tls.clone().filter(|_| mode != MtlsMode::Disable) else {
                shared.metrics.tls_handshake_failed("tls_not_enabled");
                return;
            };
            // Not certified yet (the control plane has not answered), or expired: nothing to
            // offer.
            if !tls.has_certificate() {
                shared.metrics.tls_handshake_failed("no_certificate");
                tracing::info!(%peer, "inbound TLS refused: no valid workload certificate (yet)");
                return;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
            let accepted =
                tokio::time::timeout(server.detect_timeout, acceptor.accept(prefixed)).await;
            let mut stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let reason =
                        tls::rustls_error(&error).map_or("io", tls::handshake_failure_reason);
                    shared.metrics.tls_handshake_failed(reason);
                    tracing::info!(%peer, reason, %error, "inbound TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failed("timeout");
                    let within = server.detect_timeout;
                    tracing::info!(%peer, ?within, "inbound TLS handshake not complete in time");
                    return;
                }
            };
            let identity = tls::peer_identity(stream.get_ref().1.peer_certificates())
                .and_then(|id| HeaderValue::from_str(id.as_str()).ok());
            if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_OPAQUE_TCP) {
                let context = (identity, redirected);
                serve_opaque_alpn(shared, side, stream, peer, context, &server, drain).await;
                return;
            }
            let (protocol, read) = match detect(&mut stream, server.detect_timeout).await {
                Ok((Protocol::Http2, read)) => (Protocol::Http2, read),
                Ok((_, read)) => (Protocol::Http1, read),
                Err(error) => {
                    tracing::debug!(%peer, %error, "closing TLS connection before any request");
                    return;
                }
            };
            let io = TokioIo::new(Prefixed::new(read, stream));
            let context = (identity, redirected);
            serve_io(shared, side, io, protocol, peer, context, &server, drain).await;
        }
        (Side::Inbound, _) if mode == MtlsMode::Strict => {
            shared.metrics.tls_handshake_failed("plaintext");
            tracing::info!(%peer, "plaintext refused: mTLS is STRICT");
        }
        (_, protocol) => {
            let protocol = if protocol == Protocol::Http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            serve_io(
                shared,
                side,
                TokioIo::new(prefixed),
                protocol,
                peer,
                (None, redirected),
                &server,
                drain,
            )
            .await;
        }
    }
}

/// Serves an inbound mTLS connection on which the peer chose ALPN `ficus-tcp` (opaque TCP to
/// a `tcp` Backend's endpoint). The client's ALPN does not decide what is HTTP, this sidecar
/// does: unless the original port is opaque by its config, whoever speaks first is looked at,
/// and HTTP from the client is served as HTTP (authorization by path, identity headers
/// stripped and set, path checks), never copied past all that to the app.
async fn serve_opaque_alpn<S>(
    shared: Arc<Shared>,
    side: Side,
    mut stream: S,
    peer: SocketAddr,
    context: (Option<HeaderValue>, Option<Redirected>),
    server: &ServerSettings,
    drain: Drain,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use crate::transparent::{first_speaker, sniff, FirstSpeaker, Sniffed};
    let (identity, redirected) = context;
    let original = redirected.as_ref().map(Redirected::original);
    let peer_id = identity.as_ref().and_then(|v| v.to_str().ok());
    // Transparent: the original port's; explicit: the app's port, by the built-in list and
    // the Mesh's `opaquePorts`.
    let opaque_port = match &redirected {
        Some(redirected) => redirected.is_opaque_port(),
        None => {
            let snapshot = shared.snapshot.load();
            let port = snapshot.inbound.http1.address().port();
            crate::transparent::DEFAULT_OPAQUE_PORTS.contains(&port)
                || snapshot.limits.opaque_ports.binary_search(&port).is_ok()
        }
    };
    if opaque_port {
        crate::mtls::serve_opaque(&shared, stream, peer_id, peer, original, None).await;
        return;
    }
    let http = |sniffed: Option<Sniffed>| match sniffed {
        Some(Sniffed::Http1) => Some(Protocol::Http1),
        Some(Sniffed::Http2) => Some(Protocol::Http2),
        _ => None,
    };
    let (app, denied) = {
        let snapshot = shared.snapshot.load();
        let authz = &snapshot.inbound.authz;
        let denied = authz.is_active() && authz.check_tcp(peer_id) == Decision::Deny;
        let app = original.unwrap_or_else(|| snapshot.inbound.http1.address());
        (app, denied)
    };
    // What goes to the HTTP layer: the protocol and the bytes read to tell it.
    let (protocol, read) = if denied {
        // A peer that may not use opaque TCP gets no app connection: its HTTP is served (and
        // authorized per request), anything else is closed at the detection timeout.
        let sniffed = sniff(&mut stream, Vec::new(), server.detect_timeout, true).await;
        let Some(to_http) = sniffed.and_then(|(sniffed, read)| Some((http(sniffed)?, read))) else {
            shared.metrics.authz_denied();
            tracing::info!(%peer, peer_id, "opaque TCP over mTLS denied by authorization policy");
            return;
        };
        to_http
    } else {
        match first_speaker(&shared, &mut stream, app, server.detect_timeout, true).await {
            FirstSpeaker::Client(sniffed, read, connected) => match (http(sniffed), sniffed) {
                (Some(protocol), _) => (protocol, read),
                // Bytes that were still undecided at the detection timeout (a request line
                // sent in pieces): never handed to the app past the HTTP layer.
                (None, None) => {
                    shared.metrics.http_rejected("undecided");
                    tracing::info!(%peer, peer_id, "opaque TCP over mTLS closed: its first bytes were still undecided");
                    return;
                }
                (None, Some(_)) => {
                    let stream = Prefixed::new(read, stream);
                    let connected = Some(connected);
                    crate::mtls::serve_opaque(&shared, stream, peer_id, peer, original, connected)
                        .await;
                    return;
                }
            },
            FirstSpeaker::App(connected) => {
                let connected = Some(connected);
                crate::mtls::serve_opaque(&shared, stream, peer_id, peer, original, connected)
                    .await;
                return;
            }
            FirstSpeaker::Neither => return,
        }
    };
    let io = TokioIo::new(Prefixed::new(read, stream));
    let context = (identity, redirected);
    serve_io(shared, side, io, protocol, peer, context, server, drain).await;
}

/// Serves HTTP/1.1 or HTTP/2 on `io`. `context` holds the verified peer's SPIFFE ID (inbound
/// mTLS), passed to the app, and the original destination of a redirected connection.
#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    shared: Arc<Shared>,
    side: Side,
    io: TokioIo<I>,
    protocol: Protocol,
    peer: SocketAddr,
    context: (Option<HeaderValue>, Option<Redirected>),
    server: &ServerSettings,
    drain: Drain,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (identity, redirected) = context;
    let metrics = Arc::clone(&shared.metrics);
    // The socket counts as activity of its side while it lives, upgraded tunnels included;
    // a client that takes no bytes for the stall limit loses the connection.
    let idle = shared.snapshot.load().limits.connection_idle_timeout;
    let stall = idle.min(MAX_WRITE_STALL);
    let io = TokioIo::new(StallBounded::new(
        crate::drain::Tracked::new(io.into_inner(), drain.track()),
        stall,
    ));
    // HTTP/1.1: the header-read deadline, kept per connection; HTTP/2: the idle deadline
    // (see `head`).
    let watch = match protocol {
        // A verified peer sidecar's resets are its callers' timeouts, not an attack.
        Protocol::Http2 => HeadWatch::multiplexed(identity.is_none()),
        _ => HeadWatch::new(),
    };
    let request_watch = watch.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let shared = Arc::clone(&shared);
        let identity = identity.clone();
        if let Some(redirected) = &redirected {
            request.extensions_mut().insert(redirected.clone());
        }
        let begun = request_watch.begin();
        // Not boxed: hyper keeps the service's future in a box of its own per connection,
        // so a request costs a move into it rather than an allocation of its ~4 KB.
        async move {
            let timer = begun.timer();
            let response = match side {
                Side::Outbound => {
                    crate::proxy::outbound::handle(&shared, peer, request, timer).await
                }
                Side::Inbound => {
                    crate::proxy::inbound::handle(&shared, peer, identity, request, timer).await
                }
            };
            Ok::<_, std::convert::Infallible>(response.map(|body| Watched::new(body, begun)))
        }
    });
    let result = match protocol {
        Protocol::Http2 => {
            // The streams h2 refuses on its own are seen only in the frames it writes.
            let io = ResetsCounted::new(io.into_inner(), Arc::clone(&metrics), peer);
            let connection = server.http2.serve_connection(TokioIo::new(io), service);
            let counted = (Arc::clone(&metrics), peer);
            let connection = IdleGoaway::new(connection, watch, (idle, stall), counted);
            until_drained!(connection, drain)
        }
        _ => {
            let io = TokioIo::new(HeadRead::new(io.into_inner(), watch.clone()));
            let connection = server.http1.serve_connection(io, service).with_upgrades();
            let connection = HeadTimed::new(connection, watch, server.header_read_timeout, idle);
            until_drained!(connection, drain)
        }
    };
    if let Err(error) = result {
        match refusal(&error) {
            Some(Refusal::Request(reason)) => {
                metrics.http_rejected(reason);
                tracing::info!(%peer, reason, %error, "request refused by the HTTP parser");
            }
            Some(Refusal::GoAway(reason)) => {
                metrics.h2_goaway_sent(reason);
                tracing::info!(%peer, reason, %error, "HTTP/2 connection closed with GOAWAY");
            }
            None => tracing::debug!(%peer, %error, "downstream connection ended with an error"),
        }
    }
}

/// What hyper (or our deadlines) refused when a downstream connection ended with an error.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A request: `ficus_http_rejected_total{reason}` (hyper answered 400/414/431 first).
    Request(&'static str),
    /// The HTTP/2 connection, with a GOAWAY carrying this error code.
    GoAway(&'static str),
}

/// Sorts out the errors that are a refusal of what the client sent (RELIABILITY: each is
/// counted and logged); a client that went away is not one.
fn refusal(error: &head::Ended) -> Option<Refusal> {
    let error = match error {
        head::Ended::HeaderTimeout(_) => return Some(Refusal::Request("header_timeout")),
        head::Ended::Hyper(error) => error,
        // Counted when its GOAWAY was sent.
        head::Ended::IdleTimeout(_) | head::Ended::Stalled(_) | head::Ended::ResetFlood(_) => {
            return None
        }
    };
    if error.is_parse_too_large() {
        return Some(Refusal::Request("too_large"));
    }
    if error.is_parse() {
        return Some(Refusal::Request("malformed"));
    }
    // A GOAWAY this side sent for an error of the client's (a remote one is the client's own,
    // an I/O error is not a GOAWAY).
    let h2 = crate::upstream::h2_cause(error)?;
    let reason = h2.reason().filter(|_| !h2.is_remote() && !h2.is_io())?;
    goaway_reason(reason).map(Refusal::GoAway)
}

/// The fixed label of an HTTP/2 error code (none for `NO_ERROR`, a graceful close).
fn goaway_reason(reason: h2::Reason) -> Option<&'static str> {
    Some(match reason {
        h2::Reason::NO_ERROR => return None,
        h2::Reason::PROTOCOL_ERROR => "protocol_error",
        h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
        h2::Reason::SETTINGS_TIMEOUT => "settings_timeout",
        h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
        h2::Reason::COMPRESSION_ERROR => "compression_error",
        h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
        _ => "other",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resource_errors_pause_the_accept_loop() {
        use std::io::{Error, ErrorKind};
        assert!(one_connection(&Error::from(ErrorKind::ConnectionAborted)));
        assert!(one_connection(&Error::from(ErrorKind::ConnectionReset)));
        // EMFILE and ENOMEM: the process is out of something; retrying at once would spin.
        assert!(!one_connection(&Error::from_raw_os_error(24)));
        assert!(!one_connection(&Error::from_raw_os_error(12)));
    }
}
