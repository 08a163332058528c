//! The admin server: health, readiness, metrics, config, drain, log level, and the app's
//! relayed kubelet probes ([`app_probes`]).
//!
//! It runs on a runtime and thread of its own, so it answers even when the data plane is
//! saturated (`--workers 1` under load).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use ficus_net::listen::Listeners;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::body::{self, Body};
use crate::state::Shared;

pub mod app_probes;

use self::app_probes::AppProbes;

/// Largest admin request body (`PUT /log-level`).
const MAX_BODY: usize = 4096;

/// Serves the admin API on `listeners` (`--admin` and its IPv6 companion) forever.
/// `probes` are the app's kubelet probes answered under `/app-health/`.
pub async fn serve(listeners: Listeners, shared: Arc<Shared>, probes: Arc<AppProbes>) {
    loop {
        let (stream, peer) = match listeners.accept().await {
            Ok(accepted) => accepted,
            Err(error) if crate::listener::one_connection(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let probes = Arc::clone(&probes);
        tokio::spawn(async move {
            // Set by `/quitquitquit`: the process is told to stop only once this connection
            // has sent the answer (it closes after it), or the exit could cut the answer off.
            let quit = Arc::new(AtomicBool::new(false));
            let service = service_fn({
                let shared = Arc::clone(&shared);
                let quit = Arc::clone(&quit);
                move |request| {
                    let shared = Arc::clone(&shared);
                    let quit = Arc::clone(&quit);
                    let probes = Arc::clone(&probes);
                    async move {
                        if !write_allowed(request.method(), peer) {
                            return Ok(text(
                                StatusCode::FORBIDDEN,
                                "admin writes are accepted from loopback only\n",
                            ));
                        }
                        Ok::<_, std::convert::Infallible>(
                            route(&shared, &probes, request, &quit).await,
                        )
                    }
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "admin connection failed");
            }
            if quit.load(Ordering::Acquire) {
                shared.quit.notify_one();
            }
        });
    }
}

/// Answers one admin request; `/quitquitquit` sets `quit`, for the connection to act on once
/// the answer is out.
async fn route(
    shared: &Shared,
    probes: &AppProbes,
    request: Request<Incoming>,
    quit: &AtomicBool,
) -> Response<Body> {
    // HEAD is GET without the body (hyper leaves it out).
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    if let Some(probe) = probes.get(request.uri().path()) {
        if method != Method::GET {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        return probe
            .check(request.headers().get(http::header::USER_AGENT))
            .await;
    }
    match (request.uri().path(), method) {
        ("/live", Method::GET) => text(StatusCode::OK, "live\n"),
        ("/ready", Method::GET) => match shared.unready_reason() {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n")),
        },
        ("/metrics", Method::GET) => {
            let mut response = Response::new(body::full(shared.metrics.encode()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        ("/config", Method::GET) => json_text(StatusCode::OK, config_json(shared)),
        ("/drain", Method::POST) => {
            shared.drain.drain();
            text(StatusCode::OK, "draining\n")
        }
        ("/quitquitquit", Method::POST) => {
            shared.drain.drain();
            // The connection task stops the process once this answer is out (see `serve`).
            quit.store(true, Ordering::Release);
            let mut response = text(StatusCode::OK, "draining, then exiting\n");
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        ("/log-level", Method::GET) => text(StatusCode::OK, &format!("{}\n", shared.log.current())),
        ("/log-level", Method::PUT | Method::POST) => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            };
            let filter = String::from_utf8_lossy(&body).trim().to_owned();
            match shared.log.set(&filter) {
                Ok(()) => text(StatusCode::OK, &format!("{filter}\n")),
                Err(error) => text(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid filter: {error}\n"),
                ),
            }
        }
        (path, _) => match allowed_methods(path) {
            Some(allowed) => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
                response
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// The methods an admin path answers (the `Allow` of a 405), `None` for an unknown path.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/live" | "/ready" | "/metrics" | "/config" => Some("GET, HEAD"),
        "/drain" | "/quitquitquit" => Some("POST"),
        "/log-level" => Some("GET, HEAD, PUT, POST"),
        _ => None,
    }
}

/// Whether a request may proceed: reads (`GET`, `HEAD`) from anywhere (kubelet probes
/// `/ready` over the pod network), everything else (`POST /drain`, `/quitquitquit`,
/// `PUT /log-level`, ...) only from a loopback peer, IPv4-mapped IPv6 included.
fn write_allowed(method: &Method, peer: SocketAddr) -> bool {
    *method == Method::GET || *method == Method::HEAD || peer.ip().to_canonical().is_loopback()
}

/// The answer of `GET /config`.
#[derive(serde::Serialize)]
struct ConfigStatus<'a> {
    version: u64,
    source: &'a str,
    applied_at: Option<f64>,
    last_error: Option<String>,
    node_id: &'a str,
    workload: &'a str,
    namespace: &'a str,
    /// The snapshot's JSON text as it is.
    documents: &'a serde_json::value::RawValue,
    warnings: Vec<String>,
}

fn config_json(shared: &Shared) -> Vec<u8> {
    let snapshot = shared.snapshot.load();
    let status = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let applied_at = status
        .applied_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    let answer = ConfigStatus {
        version: snapshot.version,
        source: &snapshot.source,
        applied_at,
        last_error: status.last_error,
        node_id: &shared.identity.node_id,
        workload: &shared.identity.workload,
        namespace: &shared.identity.namespace,
        documents: &snapshot.documents,
        warnings: snapshot
            .config
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    // Strings, numbers and JSON text already checked: nothing here fails to serialize.
    serde_json::to_vec(&answer).unwrap_or_else(|_| b"{}".to_vec())
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::copy_from_slice(message.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A JSON answer already serialized.
fn json_text(status: StatusCode, text: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Binds the admin listener (std, so binding errors surface before any runtime starts).
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_from_loopback_reads_from_anywhere() {
        let peer = |text: &str| text.parse::<SocketAddr>().unwrap();
        for local in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
                assert!(write_allowed(&method, peer(local)), "{method} from {local}");
            }
        }
        for remote in [
            "192.0.2.2:1",
            "10.0.0.1:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
            "0.0.0.0:1",
        ] {
            assert!(
                write_allowed(&Method::GET, peer(remote)),
                "GET from {remote}"
            );
            assert!(
                write_allowed(&Method::HEAD, peer(remote)),
                "HEAD from {remote}"
            );
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert!(
                    !write_allowed(&method, peer(remote)),
                    "{method} from {remote}"
                );
            }
        }
    }
}
