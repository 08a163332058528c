//! Outbound: the local app's requests, routed by service name to weighted Backends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use super::error::{flags, ProxyError};
use super::forward::{forward, path_and_query, prepare, upstream_uri, Authority};
use super::headers::X_FICUS_ORIG_PROTO;
use super::mirror::{Copies, COPY_LIMIT};
use super::retrying::{replayable, Exchange, Replay};
use crate::body::{self, with_idle_timeout, Body};
use crate::deadline::{TimerSlot, UNBOUNDED};
use crate::policy::breaker::Guarded;
use crate::route::ServiceName;
use crate::snapshot::{RouteBackend, Snapshot};
use crate::state::Shared;
use crate::telemetry::access_log;
use crate::telemetry::metrics::{Direction, Recorder, RequestMetrics};
use crate::telemetry::trace::{Finishing, Kind, PeerIdentity, Span};

/// Handles one request from the local app. Never fails: errors become responses. `timer`:
/// the downstream connection's timer for the response-header deadline (HTTP/1.1).
///
/// (An `async` block, not an `async fn`: an `async fn` keeps a second copy of each argument
/// in its future, and every request's future is this one. The same holds for the functions
/// it awaits on the request path, each marked with the same `expect`.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the arguments"
)]
pub fn handle<'a>(
    shared: &'a Shared,
    peer: SocketAddr,
    mut request: Request<Incoming>,
    timer: Option<&'a TimerSlot>,
) -> impl Future<Output = Response<Body>> + use<'a> {
    async move {
        let started = Instant::now();
        // The request runs on this snapshot to its end, whatever is swapped in meanwhile.
        let snapshot = shared.snapshot.load_full();
        let mut log = access_log::Pending::begin(
            snapshot.access_log.as_ref(),
            &mut request,
            Direction::Outbound,
            peer,
            None,
        );
        let mut span = Finishing::new(
            Span::start(snapshot.tracing.as_ref(), Kind::Client, &request, peer),
            &shared.traces,
            started,
        );
        access_log::set_trace_id(&mut log, span.trace_id());
        // Counts the request once even if the client goes away and this future is dropped.
        let mut recorder = Recorder::new(&snapshot.unrouted, started);
        let (response, metrics, flag) = route_and_forward(
            shared,
            &snapshot,
            peer,
            request,
            &mut span,
            &mut recorder,
            timer,
        )
        .await;
        let elapsed = recorder.record(metrics, response.status().as_u16(), flag);
        let response = crate::telemetry::grpc::finish(response, metrics, span, flag, elapsed);
        access_log::finish(log, response, metrics, flag)
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the arguments"
)]
fn route_and_forward<'a, 's>(
    shared: &'a Shared,
    snapshot: &'s Snapshot,
    peer: SocketAddr,
    mut request: Request<Incoming>,
    span: &'a mut Span,
    recorder: &'a mut Recorder<'s>,
    timer: Option<&'a TimerSlot>,
) -> impl Future<Output = (Response<Body>, &'s RequestMetrics, &'static str)> + use<'a, 's> {
    async move {
        let max_headers = snapshot.limits.max_headers;
        let checked = super::guard::check(&mut request, max_headers);
        let authority = match checked.and_then(|()| authority(&request)) {
            Ok(authority) => authority,
            Err(error) => {
                shared
                    .metrics
                    .http_rejected(super::guard::rejection_reason(&error));
                let (response, flag) = error.into_response();
                // Typed: an async block's output type is taken from its first return.
                let metrics: &'s RequestMetrics = &snapshot.unrouted;
                return (response, metrics, flag);
            }
        };
        // Transparent mode: the original destination names the service, else Host does; with
        // neither known the request passes through to where the app connected.
        let redirected = crate::transparent::Redirected::of(&request);
        let by_destination = redirected
            .as_ref()
            .and_then(|r| snapshot.service_at(r.original()));
        let Some(service) = by_destination.or_else(|| {
            ServiceName::parse(authority.as_str())
                .and_then(|name| snapshot.service(&name, &shared.identity.namespace))
        }) else {
            if let Some(redirected) = &redirected {
                recorder.route(&snapshot.passthrough);
                // Our span's context goes along (or a sound one in place of a malformed
                // header), as on every other path: the destination's span is its child.
                let mut request = request;
                span.inject(request.headers_mut());
                // Boxed, like the retrying exchange below: a rare path's state would otherwise
                // grow the future of every request, which is moved (copied) when it is boxed for
                // hyper (listener::serve_io).
                let passthrough = crate::transparent::passthrough(
                    snapshot,
                    redirected,
                    authority.as_str(),
                    request,
                );
                return Box::pin(passthrough).await;
            }
            let (response, flag) =
                ProxyError::NoService(authority.as_str().to_owned()).into_response();
            return (response, &snapshot.unrouted, flag);
        };
        span.set_service(&service.label);
        let found = {
            let (method, uri, headers) = (request.method(), request.uri(), request.headers());
            service.table.find(method, uri.path(), uri.query(), headers)
        };
        let Some(entry) = found else {
            let (response, flag) = ProxyError::NoRule(service.label.to_string()).into_response();
            return (response, &service.unmatched, flag);
        };
        let action = &entry.action;
        // The route's rate limit holds for everything the route answers, redirects included.
        if let Some(limiter) = &action.rate_limit {
            if let Err(wait) = limiter.try_acquire() {
                shared.metrics.rate_limited.inc();
                let retry_after = crate::policy::rate_limit::retry_after_seconds(wait);
                let (response, flag) = ProxyError::RateLimited { retry_after }.into_response();
                return (response, &action.local_metrics, flag);
            }
        }
        span.set_route(action.route.as_ref());
        if let Some(redirect) = &action.redirect {
            let uri = request.uri();
            let location = redirect.location(
                authority.as_str(),
                uri.path(),
                uri.query(),
                entry.matcher.prefix(),
            );
            let mut response = Response::new(body::empty());
            *response.status_mut() =
                StatusCode::from_u16(redirect.status()).unwrap_or(StatusCode::FOUND);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return (response, &action.local_metrics, "");
        }
        let Some(backends) = &action.backends else {
            let (response, flag) = ProxyError::NoRule(service.label.to_string()).into_response();
            return (response, &service.unmatched, flag);
        };
        let RouteBackend {
            target: backend,
            metrics,
        } = backends.pick();
        recorder.route(metrics);
        // Fault injection stands in for the network: before the breaker and any try.
        let mut injected = false;
        // The route's deadlines count from the request's arrival, or from the end of an
        // injected delay: the delay stands in for the network before the exchange starts and
        // is not counted against the route's timeouts (`policy::fault`).
        let mut deadline_from = recorder.started();
        if let Some(fault) = &backend.policy.fault {
            if let Some(delay) = fault.delay() {
                injected = true;
                tokio::time::sleep(delay).await;
                deadline_from += delay;
            }
            if let Some(status) = fault.abort() {
                let mut response = Response::new(body::full("fault injected\n"));
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert("x-ficus-error", HeaderValue::from_static("fault-injected"));
                return (response, metrics, flags::FAULT_INJECTED);
            }
        }
        let Some(endpoint) = backend.healthy_endpoint() else {
            shared.metrics.upstream_failure("no_healthy_upstream");
            let error = ProxyError::NoHealthyUpstream(backend.label.to_string());
            let (response, flag) = error.into_response();
            return (response, metrics, flag);
        };
        access_log::note_upstream(request.extensions(), endpoint.address(), metrics);
        if span.is_recording() {
            span.set_backend(&backend.label);
            span.set_endpoint(endpoint.address());
            span.set_peer_identity(backend.identity(endpoint).cloned().map(PeerIdentity::Named));
        }
        // HTTP/2 for h2c/gRPC backends and for mTLS to peer sidecars (ALPN h2): the app's
        // HTTP/1.1 crosses the mesh as HTTP/2 and turns back into HTTP/1.1 at the other side.
        let http2 = endpoint.is_http2();

        // The far sidecar speaks to its app what the Backend says the app speaks, whatever
        // the caller spoke (an h2c caller of an HTTP/1.1 app, an HTTP/1.1 caller of a gRPC one).
        let carried_http1 = endpoint.is_mtls() && !backend.protocol.is_http2();
        let (mut parts, incoming, on_upgrade) = prepare(request, peer, http2);
        let upgrading = on_upgrade.is_some();
        span.inject(&mut parts.headers);
        if carried_http1 {
            parts
                .headers
                .insert(X_FICUS_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        }
        if let Some(ops) = &action.request_headers {
            ops.apply(&mut parts.headers);
        }

        let mut host = authority.as_str();
        // `Host` already says `host` when it named the service and nothing has changed either.
        let mut host_kept =
            matches!(authority, Authority::Host(_)) && action.request_headers.is_none();
        let mut target = path_and_query(&parts.uri);
        if let Some(rewrite) = &action.rewrite {
            if let Some(hostname) = &rewrite.hostname {
                host = hostname;
                host_kept = false;
            }
            if let Some(path) = rewrite.path(parts.uri.path(), entry.matcher.prefix()) {
                let rewritten = match parts.uri.query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path,
                };
                match PathAndQuery::try_from(rewritten) {
                    Ok(rewritten) => target = rewritten,
                    Err(_) => {
                        let error = ProxyError::BadRequest("rewritten path is not a valid target");
                        let (response, flag) = error.into_response();
                        return (response, metrics, flag);
                    }
                }
            }
        }
        parts.uri = match upstream_uri(http2, host, target) {
            Ok(uri) => uri,
            Err(error) => {
                let (response, flag) = error.into_response();
                return (response, metrics, flag);
            }
        };
        if http2 {
            parts.headers.remove(header::HOST);
        } else if !host_kept
            && parts
                .headers
                .get(header::HOST)
                .is_none_or(|h| h.as_bytes() != host.as_bytes())
        {
            if let Ok(host) = HeaderValue::from_str(host) {
                parts.headers.insert(header::HOST, host);
            }
        }

        let limits = &snapshot.limits;
        // Each try waits `backendRequest`, else `request`, else (a rule with neither) the
        // Mesh's `upstreamResponseTimeout`; a timeout set to `0s` sets no limit.
        let total = action.timeouts.total();
        let per_try = action
            .timeouts
            .per_try(limits.upstream_response_timeout)
            .unwrap_or(UNBOUNDED);
        let timeout = total.map_or(per_try, |total| total.min(per_try));
        // Circuit breaking: fail fast rather than queue behind a Backend that is already full.
        let permit = match &backend.policy.breaker {
            None => None,
            Some(breaker) => match breaker.acquire(timeout).await {
                Ok(permit) => Some(permit),
                Err(overflow) => {
                    shared.metrics.breaker_overflow(overflow.kind());
                    let (response, flag) = ProxyError::Overflow(overflow).into_response();
                    return (response, metrics, flag);
                }
            },
        };
        // The request's arrival stands for "now" in the try's deadline while nothing has been
        // awaited since (no injected delay, no breaker to queue at): one clock read fewer.
        let arrival = (!injected && backend.policy.breaker.is_none()).then(|| recorder.started());
        // The route's total deadline counts from the arrival (after an injected delay): what
        // was awaited since (a breaker slot) is taken off what the try may have.
        let timeout = match total {
            Some(total) if arrival.is_none() => {
                let left = total.saturating_sub(deadline_from.elapsed());
                if left.is_zero() {
                    // Spent queueing: nothing is sent (a try with no time could still be).
                    let (response, flag) = ProxyError::Timeout(total).into_response();
                    return (response, metrics, flag);
                }
                timeout.min(left)
            }
            _ => timeout,
        };
        // One try without retries; the outcome counts for outlier detection.
        let send_once = |parts: http::request::Parts, incoming, from, copies: Copies| async move {
            let idle = crate::body::request_idle(limits, parts.version, &parts.headers);
            let body = with_idle_timeout(incoming, idle);
            let body = copies.wrap(access_log::count_received(&parts.extensions, body));
            let mut upstream_request = Request::from_parts(parts, body);
            backend.policy.tag(&mut upstream_request);
            let in_flight = backend.start(endpoint);
            let outcome = forward(
                endpoint,
                upstream_request,
                timeout,
                on_upgrade,
                limits,
                timer,
                from,
            )
            .await;
            backend.finish(endpoint, in_flight, &outcome);
            outcome
        };
        // Each of the rule's mirrors draws its share of requests on its own. A body in memory
        // (`ready`) is copied at once; a streamed one as it passes (the returned copies wrap
        // it), unless it is known to be longer than a copy may be (`at_least` bytes).
        let mirror_copies = |ready: Option<Bytes>, at_least: u64| {
            let mut copies = Copies::default();
            for mirror in action.mirrors.iter().filter(|m| m.draw()) {
                if ready.is_none() && at_least > COPY_LIMIT {
                    shared.metrics.mirror_dropped.inc();
                    continue;
                }
                let copy = mirror.spawn(
                    &parts,
                    ready.clone(),
                    host,
                    timeout,
                    limits,
                    &shared.metrics,
                );
                if let Some(copy) = copy {
                    copies.push(copy);
                }
            }
            copies
        };
        // What `mirror_copies` needs to know of a body still to be read.
        let streamed = |incoming: &Incoming| match incoming.is_end_stream() {
            true => (Some(Bytes::new()), 0),
            false => (None, incoming.size_hint().lower()),
        };
        let (result, flag) = match &action.retry {
            // A protocol switch is never replayed; everything else may be, if its body allows.
            Some(policy) if !upgrading => {
                // Reading the body sends nothing upstream: what is left of the route's total
                // deadline bounds it (and the body idle timeout, between frames), not a try's.
                let read = replayable(&parts, incoming, limits.body_idle_timeout, policy);
                let replay = match total {
                    Some(total) => {
                        let left = total.saturating_sub(deadline_from.elapsed());
                        // The route's deadline passed: 504 `UT`, as for any other wait.
                        tokio::time::timeout(left, read)
                            .await
                            .unwrap_or(Err(ProxyError::Timeout(total)))
                    }
                    None => read.await,
                };
                match replay {
                    Ok(Replay::Stream(incoming)) => {
                        let (ready, at_least) = streamed(&incoming);
                        let copies = mirror_copies(ready, at_least);
                        (send_once(parts, incoming, None, copies).await, None)
                    }
                    Ok(replay) => {
                        let copies = match &replay {
                            Replay::Buffered(body) => {
                                access_log::note_received(&parts.extensions, body.len());
                                mirror_copies(Some(body.clone()), 0)
                            }
                            Replay::Recorded(incoming) => {
                                let (ready, at_least) = streamed(incoming);
                                mirror_copies(ready, at_least)
                            }
                            // Sent by the arm above.
                            Replay::Stream(_) => Copies::default(),
                        };
                        let exchange = Exchange {
                            policy,
                            target: backend,
                            per_try,
                            total,
                            arrival: tokio::time::Instant::from_std(deadline_from),
                            limits,
                            metrics: &shared.metrics,
                            retried: AtomicU32::new(0),
                        };
                        let sent = Box::pin(exchange.send(endpoint, &parts, replay, copies)).await;
                        span.set_retries(exchange.retried.load(Ordering::Relaxed));
                        sent
                    }
                    Err(error) => (Err(error), None),
                }
            }
            _ => {
                // A protocol switch is not mirrored: the shadow would take a handshake whose
                // connection is then dropped.
                let copies = if upgrading {
                    Copies::default()
                } else {
                    let (ready, at_least) = streamed(&incoming);
                    mirror_copies(ready, at_least)
                };
                (send_once(parts, incoming, arrival, copies).await, None)
            }
        };
        match result {
            Ok(mut response) => {
                if let Some(ops) = &action.response_headers {
                    ops.apply(response.headers_mut());
                }
                if let Some(permit) = permit {
                    response = response.map(|b| body::boxed(Guarded::new(b, permit)));
                }
                let flag = match flag {
                    Some(flag) => flag,
                    None if injected => flags::FAULT_INJECTED,
                    None => "",
                };
                (response, metrics, flag)
            }
            Err(error) => {
                log_failure(shared, &error, endpoint.address(), timeout);
                let (response, own_flag) = error.into_response();
                (response, metrics, flag.unwrap_or(own_flag))
            }
        }
    }
}

fn log_failure(shared: &Shared, error: &ProxyError, endpoint: SocketAddr, timeout: Duration) {
    let reason = match error {
        ProxyError::Upstream(e) => e.reason(),
        ProxyError::Timeout(_) => "timeout",
        // The client's doing: no upstream failure to count.
        ProxyError::DownstreamBody | ProxyError::DownstreamTimeout => {
            tracing::debug!(%endpoint, %error, "request body failed downstream");
            return;
        }
        _ => "other",
    };
    shared.metrics.upstream_failure(reason);
    tracing::debug!(%endpoint, ?timeout, %error, "upstream request failed");
}

/// The authority that names the destination: absolute-form URI (or `:authority`) first, then
/// `Host` (`guard::check` already refused several).
fn authority(request: &Request<Incoming>) -> Result<Authority, ProxyError> {
    let host = request.headers().get(header::HOST);
    if let Some(authority) = request.uri().authority() {
        return Ok(Authority::Uri(authority.clone()));
    }
    host.filter(|h| h.to_str().is_ok())
        .map(|h| Authority::Host(h.clone()))
        .ok_or(ProxyError::BadRequest("request has no Host"))
}
