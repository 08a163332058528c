//! Sending a prepared request upstream: the response-header deadline, protocol switches
//! (WebSocket and other `Upgrade`s), and response cleanup.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ficus_config::ProxyLimits;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::error::ProxyError;
use super::headers::{
    append_forwarded, ensure_request_id, join_cookies, present, remove_hop_by_hop,
    remove_mesh_fields, strip_hop_by_hop, upgrade_protocol,
};
use super::mesh_timeout;
use crate::body::{Body, BodyIdle};
use crate::deadline::TimerSlot;
use crate::tunnel::copy_with_idle_timeout;
use crate::upstream::{EndpointPool, SwitchedPermit, UpstreamError};

/// The authority that names the destination, held without copying it out of the request
/// (the request forms share its buffer).
pub enum Authority {
    /// From an absolute-form URI or `:authority`.
    Uri(http::uri::Authority),
    /// From `Host`, checked to be visible ASCII when taken.
    Host(HeaderValue),
    /// Made up (inbound: the app's address when the request names none).
    Owned(String),
}

impl Authority {
    /// The authority as text (empty for a `Host` that is not visible ASCII).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Uri(authority) => authority.as_str(),
            Self::Host(host) => host.to_str().unwrap_or_default(),
            Self::Owned(authority) => authority,
        }
    }
}

/// Splits a downstream request for forwarding to an HTTP/1.1 or HTTP/2 (`http2`) upstream:
/// hop-by-hop headers removed (an HTTP/1.1 `Upgrade` kept, with its pending switch returned),
/// `x-ficus-peer-identity`, `x-ficus-orig-proto` and `x-ficus-timeout-ms` removed (only
/// sidecars may set them; inbound reads what a verified peer sent before this), and
/// `x-forwarded-client-cert` (nobody may), `x-forwarded-for`/`forwarded` appended,
/// `x-request-id` ensured. To an HTTP/1.1 upstream, HTTP/2 cookie fields are joined and a
/// GET or HEAD body of unknown length is sent chunked.
///
/// The switch is kept for HTTP/2 upstreams too: to a peer sidecar (mTLS) the pool sends it
/// over a connection of its own in HTTP/1.1 (see `upstream::PeerAlpn`); to an h2c upstream
/// the pool drops `Upgrade`/`Connection` (HTTP/2 has no switch), no `101` comes, and the
/// request is answered as a plain one, as before.
pub fn prepare<B: http_body::Body>(
    mut request: Request<B>,
    peer: SocketAddr,
    http2: bool,
) -> (http::request::Parts, B, Option<OnUpgrade>) {
    let present = present(request.headers());
    // A switch needs `Connection: upgrade`, a hop-by-hop header.
    let upgrade = match request.version() {
        http::Version::HTTP_11 if present.hop_by_hop => upgrade_protocol(request.headers()),
        _ => None,
    };
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    if present.hop_by_hop {
        remove_hop_by_hop(&mut parts.headers, upgrade.as_ref(), http2);
    }
    if present.ficus {
        remove_mesh_fields(&mut parts.headers);
    }
    if !http2 {
        if parts.version == http::Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        // hyper's HTTP/1.1 client sends a GET or HEAD of unknown length with no body at all
        // (it assumes none); a body that is there (HTTP/1.1 chunked, or HTTP/2 DATA without a
        // length) goes chunked instead of being dropped in silence.
        let bodiless_method = matches!(parts.method, http::Method::GET | http::Method::HEAD);
        if bodiless_method
            && !body.is_end_stream()
            && body.size_hint().exact().is_none()
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            parts.headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    }
    append_forwarded(&mut parts.headers, peer);
    ensure_request_id(&mut parts.headers);
    (parts, body, on_upgrade)
}

/// Sends `request` to `pool`'s endpoint and waits at most `timeout` for response headers
/// ([`UNBOUNDED`](crate::deadline::UNBOUNDED): no limit), on the downstream connection's
/// reused timer when there is one (`timer`, HTTP/1.1). A peer sidecar (mTLS) is told the wait
/// in `x-ficus-timeout-ms` (see [`mesh_timeout`]), so that it waits as long for its app. On
/// that timer the wait counts from `from` when given (the request's arrival, with nothing
/// awaited since); without a timer, and without `from`, it counts from now.
/// With `downstream` (the client's pending upgrade) a `101` response joins the two
/// connections into a byte tunnel, closed after `limits.connection_idle_timeout` of silence.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the arguments"
)]
pub fn forward<'a>(
    pool: &'a Arc<EndpointPool>,
    mut request: Request<Body>,
    timeout: Duration,
    downstream: Option<OnUpgrade>,
    limits: &'a ProxyLimits,
    timer: Option<&'a TimerSlot>,
    from: Option<std::time::Instant>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + use<'a> {
    async move {
        if pool.is_mtls() {
            mesh_timeout::write(request.headers_mut(), timeout);
        }
        // Pinned where it is made: the timeout holds a reference, not another copy of the future.
        let send = std::pin::pin!(pool.send(request));
        let sent = match timer {
            Some(timer) => {
                let from = from.map(tokio::time::Instant::from_std);
                crate::deadline::timeout(timer, from, timeout, send).await
            }
            None => tokio::time::timeout(timeout, send).await.ok(),
        };
        let mut response = match sent {
            Some(Ok(response)) => response,
            Some(Err(error)) => {
                return Err(downstream_fault(&error).unwrap_or_else(|| error.into()))
            }
            None => return Err(ProxyError::Timeout(timeout)),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(downstream) = downstream else {
                return Err(ProxyError::UpstreamProtocol("switched protocols unasked"));
            };
            let upstream = hyper::upgrade::on(&mut response);
            let protocol = response.headers().get(http::header::UPGRADE).cloned();
            strip_hop_by_hop(response.headers_mut(), protocol.as_ref(), false);
            let permit = response.extensions_mut().remove::<SwitchedPermit>();
            tokio::spawn(tunnel(
                downstream,
                upstream,
                limits.connection_idle_timeout,
                permit,
            ));
            return Ok(response);
        }
        strip_hop_by_hop(response.headers_mut(), None, false);
        // The pool bounded the body by the body idle timeout.
        Ok(response)
    }
}

/// The downstream's part in a failed exchange, read from the error's causes: its request
/// body went idle ([`ProxyError::DownstreamTimeout`]), or failed — the client closed or reset
/// mid-body ([`ProxyError::DownstreamBody`]). Either is the client's doing: not retried, and
/// never counted against the endpoint by outlier detection or the balancer.
///
/// Over HTTP/1.1 hyper hands the body's error back as a "user body" error (a user error with
/// a cause; the only such error of a client connection), with ours beneath it. Over HTTP/2
/// it resets the stream instead and the body's error is only logged: the exchange fails with
/// a reset our side sent (neither the peer's nor h2's own, which a client connection sends
/// for nothing else while the response is awaited), so an idle body shows as a failed one.
fn downstream_fault(error: &UpstreamError) -> Option<ProxyError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut body_failed = false;
    while let Some(error) = cause {
        if error.is::<BodyIdle>() {
            return Some(ProxyError::DownstreamTimeout);
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            body_failed |= hyper.is_user() && std::error::Error::source(hyper).is_some();
        } else if let Some(h2) = error.downcast_ref::<h2::Error>() {
            body_failed |= h2.is_reset() && !h2.is_remote() && !h2.is_library();
        }
        cause = error.source();
    }
    body_failed.then_some(ProxyError::DownstreamBody)
}

/// Copies bytes both ways once both sides have switched protocols.
/// `permit`: the upstream connection's place among its Backend's `maxConnections`, held
/// while the tunnel lasts.
async fn tunnel(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    permit: Option<SwitchedPermit>,
) {
    let _permit = permit;
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "protocol switch failed");
            return;
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    let (bytes, result) = copy_with_idle_timeout(&mut downstream, &mut upstream, idle, None).await;
    tracing::debug!(
        up = bytes.forward,
        down = bytes.backward,
        ?result,
        "upgraded connection ended"
    );
}

/// The URI to send upstream: origin-form for HTTP/1.1; for HTTP/2 absolute, so hyper fills
/// `:scheme` and `:authority` (the authority the caller used, not the endpoint address).
pub fn upstream_uri(
    http2: bool,
    authority: &str,
    path_and_query: PathAndQuery,
) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path_and_query);
    if http2 {
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(
            http::uri::Authority::try_from(authority)
                .map_err(|_| ProxyError::BadRequest("authority cannot be forwarded"))?,
        );
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

/// The request's path and query (`/` when it has none, as in `OPTIONS *` or CONNECT).
pub fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}
