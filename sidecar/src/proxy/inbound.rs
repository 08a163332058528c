//! Inbound: requests from peers, forwarded to the local app.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::forward::{forward, path_and_query, prepare, upstream_uri, Authority};
use super::headers::{overwrite_forwarded_proto, X_FICUS_ORIG_PROTO, X_FICUS_PEER_IDENTITY};
use super::mesh_timeout;
use crate::authz::Decision;
use crate::body::Body;
use crate::deadline::TimerSlot;
use crate::policy::rate_limit;
use crate::state::Shared;
use crate::telemetry::access_log;
use crate::telemetry::metrics::{Direction, Recorder};
use crate::telemetry::trace::{Finishing, Kind, PeerIdentity, Span};

/// Handles one request from a peer. Never fails: errors become responses. `timer`: the
/// downstream connection's timer for the response-header deadline (HTTP/1.1).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the arguments"
)]
pub fn handle<'a>(
    shared: &'a Shared,
    peer: SocketAddr,
    identity: Option<HeaderValue>,
    mut request: Request<Incoming>,
    timer: Option<&'a TimerSlot>,
) -> impl Future<Output = Response<Body>> + use<'a> {
    async move {
        let started = Instant::now();
        let snapshot = shared.snapshot.load_full();
        let mut log = access_log::Pending::begin(
            snapshot.access_log.as_ref(),
            &mut request,
            Direction::Inbound,
            peer,
            identity.as_ref(),
        );
        let mut span = Finishing::new(
            Span::start(snapshot.tracing.as_ref(), Kind::Server, &request, peer),
            &shared.traces,
            started,
        );
        access_log::set_trace_id(&mut log, span.trace_id());
        if span.is_recording() {
            span.set_peer_identity(identity.clone().map(PeerIdentity::Verified));
        }
        let inbound = &snapshot.inbound;
        let limits = &snapshot.limits;
        // Counts the request once even if the peer goes away and this future is dropped.
        let recorder = Recorder::new(&inbound.metrics, started);
        // A peer sidecar forwards what its app sent within the limit, plus the fields it adds
        // itself (request id, forwarding and trace context, the caller's deadline).
        let max_headers = match identity {
            Some(_) => limits.max_headers + super::guard::PEER_ADDED_FIELDS,
            None => limits.max_headers,
        };
        if let Err(error) = super::guard::check(&mut request, max_headers) {
            shared
                .metrics
                .http_rejected(super::guard::rejection_reason(&error));
            let (response, flag) = error.into_response();
            let elapsed = recorder.record(&inbound.metrics, response.status().as_u16(), flag);
            span.finish(&response, flag, elapsed);
            return access_log::finish(log, response, &inbound.metrics, flag);
        }
        if inbound.authz.is_active() {
            let peer_id = identity.as_ref().and_then(|v| v.to_str().ok());
            if inbound
                .authz
                .check(peer_id, request.method(), request.uri().path())
                == Decision::Deny
            {
                shared.metrics.authz_denied();
                tracing::info!(%peer, peer_id, method = %request.method(), "request denied by authorization policy");
                let (response, flag) = ProxyError::Denied.into_response();
                let elapsed = recorder.record(&inbound.metrics, response.status().as_u16(), flag);
                span.finish(&response, flag, elapsed);
                return access_log::finish(log, response, &inbound.metrics, flag);
            }
        }
        if let Some(limiter) = &inbound.rate_limit {
            if let Err(wait) = limiter.try_acquire() {
                shared.metrics.rate_limited.inc();
                let retry_after = rate_limit::retry_after_seconds(wait);
                let (response, flag) = ProxyError::RateLimited { retry_after }.into_response();
                let elapsed = recorder.record(&inbound.metrics, response.status().as_u16(), flag);
                span.finish(&response, flag, elapsed);
                return access_log::finish(log, response, &inbound.metrics, flag);
            }
        }
        // HTTP/2 to the app when the peer spoke it, unless a verified client sidecar says the
        // request began as HTTP/1.1 and only crossed the mesh as HTTP/2.
        let carried_http1 = identity.is_some()
            && request
                .headers()
                .get(X_FICUS_ORIG_PROTO)
                .is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));
        let http2 = request.version() == Version::HTTP_2 && !carried_http1;
        // How long the calling sidecar waits: the app may take that long, not only the Mesh
        // default. Read from a verified peer sidecar only; `prepare` removes it from anyone's.
        let timeout = identity
            .as_ref()
            .and_then(|_| mesh_timeout::read(request.headers()))
            .unwrap_or(limits.upstream_response_timeout);
        let (mut parts, incoming, on_upgrade) = prepare(request, peer, http2);
        span.inject(&mut parts.headers);
        // `prepare` removed any caller-supplied value; only a verified mTLS peer sets it. A
        // mesh peer passes on its app's `x-forwarded-proto`; a plaintext client is not
        // believed about it.
        match identity {
            Some(identity) => {
                parts.headers.insert(X_FICUS_PEER_IDENTITY, identity);
            }
            None => overwrite_forwarded_proto(&mut parts.headers),
        }

        // Shares the request's bytes (no copy); the app's address is written out only when the
        // request names no authority.
        let authority = match parts.uri.authority() {
            Some(authority) => Authority::Uri(authority.clone()),
            None => match parts
                .headers
                .get(header::HOST)
                .filter(|h| h.to_str().is_ok())
            {
                Some(host) => Authority::Host(host.clone()),
                None => Authority::Owned(shared.identity.app.to_string()),
            },
        };
        let authority_kind = authority;
        let authority = authority_kind.as_str();
        let target = path_and_query(&parts.uri);
        let (response, flag) = match upstream_uri(http2, authority, target) {
            Err(error) => error.into_response(),
            Ok(uri) => {
                parts.uri = uri;
                if http2 {
                    parts.headers.remove(header::HOST);
                } else if let Authority::Uri(uri_authority) = &authority_kind {
                    // An absolute-form target wins over `Host` (RFC 9112 §3.2.2): the app
                    // gets the authority routing and authorization saw.
                    if let Ok(host) = HeaderValue::from_str(uri_authority.as_str()) {
                        parts.headers.insert(header::HOST, host);
                    }
                } else if !parts.headers.contains_key(header::HOST) {
                    if let Ok(host) = HeaderValue::from_str(authority) {
                        parts.headers.insert(header::HOST, host);
                    }
                }
                // Transparent mode: the app on the port the peer connected to, not `--app`.
                let original = crate::transparent::app_pool(&parts.extensions, http2).cloned();
                let pool = match &original {
                    Some(pool) => pool,
                    None if http2 => &inbound.http2,
                    None => &inbound.http1,
                };
                let idle = crate::body::request_idle(limits, parts.version, &parts.headers);
                let body = crate::body::request_to_app(incoming, idle);
                let body = access_log::count_received(&parts.extensions, body);
                access_log::note_upstream(&parts.extensions, pool.address(), &inbound.metrics);
                let request = Request::from_parts(parts, body);
                // Nothing was awaited since the request came in: its arrival is "now".
                let from = Some(started);
                match forward(pool, request, timeout, on_upgrade, limits, timer, from).await {
                    Ok(response) => (response, ""),
                    Err(error) => {
                        tracing::debug!(%error, "inbound request to the app failed");
                        error.into_response()
                    }
                }
            }
        };
        let elapsed = recorder.record(&inbound.metrics, response.status().as_u16(), flag);
        let response =
            crate::telemetry::grpc::finish(response, &inbound.metrics, span, flag, elapsed);
        access_log::finish(log, response, &inbound.metrics, flag)
    }
}
