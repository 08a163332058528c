//! The HTTP API on `--http`: what `ficusctl` uses, plus `/metrics`, `/live` and `/ready`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/apply` | JSON `{"sources": [{"name", "text"}], "author"?}`, or YAML text with the file name in `x-ficus-source-name` | [`ApplyOutcome`] |
//! | `POST /v1/diff` | as apply | [`Diff`](crate::apply::Diff) |
//! | `GET /v1/config?kind=&namespace=&name=` | – | current version and its (filtered) documents |
//! | `DELETE /v1/config/{kind}/{namespace}/{name}` | – | [`ApplyOutcome`] |
//! | `GET /v1/history?limit=&before=` | – | `{"current", "next_rollback", "versions": [HistoryEntry], "next_before"}`, newest first (see [`history`]) |
//! | `GET /v1/versions/{n}` | – | the [`VersionRecord`](crate::state::VersionRecord) |
//! | `POST /v1/rollback` | `{"version": n}`, `{}` or empty (see [`apply::default_rollback_target`]) | [`ApplyOutcome`] |
//! | `GET /v1/status` | – | `{"version", "sidecars": [SidecarStatus]}` |
//!
//! A write (and a diff) of a config that is valid but has warnings (route matches that can
//! never be selected) succeeds; its answer lists them in `warnings`, one `warning: …` text each,
//! as errors are in `diagnostics`.
//!
//! Errors are JSON `{"error": "...", "diagnostics": ["..."]}`: 400 invalid config or request,
//! 401 no or wrong admin token, 404, 405, 408 body too slow, 413 body over 4 MiB, 500 store
//! failure. Writes take the author from the JSON body or the `x-ficus-author` header.
//!
//! # Who may change the mesh
//! With `--admin-token-file`, every route that changes or previews a change (`apply`, `diff`,
//! `DELETE /v1/config/…`, `rollback`; in fact every method but GET and HEAD, so that no route
//! added later is open by mistake) needs `authorization: Bearer <token>` with a token from
//! that file (compared in constant time, see [`crate::auth`]); without one, or with a wrong one,
//! the answer is 401 with a JSON error and the refusal is logged with the peer address.
//! `ficus-control` refuses a non-loopback `--http` without `--admin-token-file`. Reads
//! (`config`, `history`, `versions`, `status`), `/metrics` and the health routes stay open.
//!
//! `--http` is plain HTTP and never asks for client certificates. `--https` serves the same
//! routes over TLS and asks for one (see [`crate::admin_tls`]): a write is allowed with a
//! verified client certificate whose SPIFFE ID is listed in `--admin-identities`, or with a
//! valid bearer token; otherwise 401 (no credential, or a wrong token) or 403 (a certificate of
//! an identity that is not an admin, such as a sidecar's). Reads stay open there too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_identity::SpiffeId;
use ficus_net::listen::Listeners;
use ficus_net::stall::StallBounded;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admin_tls::AdminIdentities;
use crate::apply::{self, ApplyError, ApplyOutcome, DocumentKey};
use crate::auth::admin::AdminTokens;
use crate::auth::AuthError;
use crate::state::ControlState;

/// Largest request body: a config is KiBs; this leaves room for big meshes.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// Time to send the request headers (also the keep-alive idle limit between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send the whole request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may take no bytes of a response before its connection is closed, so that
/// one that stops reading does not keep its connection place.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// The response body of every route.
type Body = Full<Bytes>;

/// Serves the API on `listeners` (`--http` and its IPv6 companion) until the process ends.
/// With `admin`, writes need one of its tokens.
pub async fn serve(
    listeners: Listeners,
    state: Arc<ControlState>,
    admin: Option<Arc<AdminTokens>>,
) {
    state
        .metrics
        .config_version
        .set(i64::try_from(state.current().version).unwrap_or(i64::MAX));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = crate::listen::accept(&listeners, "api").await;
        let access = Access {
            tokens: admin.clone(),
            tls: None,
            peer,
        };
        tokio::spawn(serve_connection(
            stream,
            Arc::clone(&state),
            Arc::new(access),
            permit,
        ));
    }
}

/// Serves the API over TLS (`--https`, see [`crate::admin_tls`]) on `listeners` until the
/// process ends. Writes always need a client certificate of one of `identities` or (with
/// `admin`) a valid bearer token.
pub async fn serve_tls(
    listeners: Listeners,
    acceptor: TlsAcceptor,
    state: Arc<ControlState>,
    admin: Option<Arc<AdminTokens>>,
    identities: Arc<AdminIdentities>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = crate::listen::accept(&listeners, "api (https)").await;
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let admin = admin.clone();
        let identities = Arc::clone(&identities);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    state
                        .metrics
                        .tls_handshake_failed
                        .with_label_values(&["error"])
                        .inc();
                    tracing::info!(%peer, %error, "api TLS handshake failed");
                    return;
                }
                Err(_) => {
                    state
                        .metrics
                        .tls_handshake_failed
                        .with_label_values(&["timeout"])
                        .inc();
                    tracing::info!(%peer, "api TLS handshake not finished within 10 s");
                    return;
                }
            };
            // The chain was verified in the handshake; this reads its SPIFFE identity.
            let client = match stream.get_ref().1.peer_certificates() {
                None => ClientCert::None,
                Some(chain) => match identities.identity_of(chain) {
                    Ok(id) => ClientCert::Id(id),
                    Err(reason) => ClientCert::Unusable(reason),
                },
            };
            let access = Access {
                tokens: admin,
                tls: Some((identities, client)),
                peer,
            };
            serve_connection(stream, state, Arc::new(access), permit).await;
        });
    }
}

/// What one connection may do: the admin tokens, and over TLS the admin identities and the
/// client certificate's identity.
struct Access {
    tokens: Option<Arc<AdminTokens>>,
    tls: Option<(Arc<AdminIdentities>, ClientCert)>,
    peer: SocketAddr,
}

/// The client certificate of a TLS connection.
enum ClientCert {
    /// None presented.
    None,
    /// Verified, with this identity.
    Id(SpiffeId),
    /// Chains to the mesh root but carries no usable SPIFFE ID.
    Unusable(String),
}

async fn serve_connection<S>(
    stream: S,
    state: Arc<ControlState>,
    access: Arc<Access>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = access.peer;
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let access = Arc::clone(&access);
        async move {
            let response = match refuse_unauthorized(&state, &access, &request) {
                Some(refused) => refused,
                None => route(&state, request).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(
            TokioIo::new(StallBounded::new(stream, WRITE_STALL)),
            service,
        )
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "api connection failed");
    }
    drop(permit);
}

/// A 401 or 403 for a write that is not authorised: without a valid admin token (when admin
/// tokens are configured) and, over TLS, without a client certificate of an admin identity.
fn refuse_unauthorized(
    state: &ControlState,
    access: &Access,
    request: &Request<Incoming>,
) -> Option<Response<Body>> {
    let path = request.uri().path();
    let method = request.method();
    // Deny by default: every method but GET and HEAD needs the token, whatever the path
    // (and however it is escaped), so a route added later cannot be left open by mistake.
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    if let Some((identities, ClientCert::Id(id))) = &access.tls {
        if identities.contains(id) {
            return None;
        }
    }
    if access.tokens.is_none() && access.tls.is_none() {
        return None; // plain --http on loopback without --admin-token-file
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let token = match &access.tokens {
        Some(tokens) => match tokens.check(header) {
            Ok(()) => return None,
            Err(reason) => Some(reason),
        },
        None => None,
    };
    let peer = access.peer;
    state.metrics.api_denied.inc();
    let (status, message) = match (&access.tls, token) {
        (_, Some(AuthError::Unknown)) => (
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: the admin token is not valid; check \
            --token-file against the control plane's --admin-token-file"
                .to_owned(),
        ),
        (Some((_, ClientCert::Id(id))), _) => (
            StatusCode::FORBIDDEN,
            format!(
                "403 Forbidden: the client certificate's identity {id} is not an admin \
                 identity of this control plane (--admin-identities)"
            ),
        ),
        (Some((_, ClientCert::Unusable(reason))), _) => (
            StatusCode::FORBIDDEN,
            format!("403 Forbidden: the client certificate grants nothing: {reason}"),
        ),
        (Some((_, ClientCert::None)), None | Some(AuthError::Missing)) => (
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: changes need an admin client certificate (ficusctl --cert-file \
             and --key-file; see ficus-control issue-admin-cert) or an admin token (ficusctl \
             --token-file)"
                .to_owned(),
        ),
        (None, Some(AuthError::Missing)) => (
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: this control plane requires an admin token for \
            changes; pass ficusctl --token-file FILE (a token from its --admin-token-file)"
                .to_owned(),
        ),
        (_, Some(other)) => (
            StatusCode::UNAUTHORIZED,
            format!("401 Unauthorized: {other}"),
        ),
        (None, None) => (StatusCode::UNAUTHORIZED, "401 Unauthorized".to_owned()),
    };
    tracing::warn!(%peer, %method, path = %path.chars().take(200).collect::<String>(),
        status = status.as_u16(), %message, "write refused");
    let mut response = error(status, &message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ficus-control\""),
        );
    }
    Some(response)
}

async fn route(state: &Arc<ControlState>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (segments.as_slice(), &method) {
        (["live"], &Method::GET) => text(StatusCode::OK, "live\n"),
        // The store is opened before the API starts, so serving means ready, unless an I/O
        // error left the store unusable and reopening it fails (a full disk, say).
        (["ready"], &Method::GET) => {
            let store = state.store.clone();
            match tokio::task::spawn_blocking(move || store.unavailable()).await {
                Ok(None) => text(StatusCode::OK, "ready\n"),
                Ok(Some(reason)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: the store is not writable: {reason}\n"),
                ),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: store check failed: {e}\n"),
                ),
            }
        }
        (["metrics"], &Method::GET) => {
            let current = u64::try_from(state.metrics.config_version.get()).unwrap_or(0);
            state
                .metrics
                .observe_sidecars(&state.registry.list(), current);
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (["v1", "apply"], &Method::POST) => match read_sources(request).await {
            Ok((sources, author)) => {
                detached(state, |state| async move {
                    apply::apply(&state, sources, author).await
                })
                .await
            }
            Err(response) => {
                // A body refused before it was parsed: too large, not JSON or not UTF-8.
                let reason = match response.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => Some("too_large"),
                    StatusCode::BAD_REQUEST => Some("invalid"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    state
                        .metrics
                        .writes_refused
                        .with_label_values(&[reason])
                        .inc();
                }
                response
            }
        },
        (["v1", "diff"], &Method::POST) => match read_sources(request).await {
            Ok((sources, _)) => match apply::diff(state, sources).await {
                Ok(diff) => json(StatusCode::OK, &diff),
                Err(error) => apply_error(&error),
            },
            Err(response) => response,
        },
        (["v1", "config"], &Method::GET) => config(state, request.uri().query()),
        (["v1", "config", kind, namespace, name], &Method::DELETE) => {
            let Some(kind) = canonical_kind(kind) else {
                return error(StatusCode::NOT_FOUND, &unknown_kind(kind));
            };
            let key = DocumentKey {
                kind: kind.to_owned(),
                namespace: (*namespace).to_owned(),
                name: (*name).to_owned(),
            };
            let author = header_author(&request);
            detached(state, |state| async move {
                apply::delete(&state, key, author).await
            })
            .await
        }
        (["v1", "history"], &Method::GET) => history(state, request.uri().query()).await,
        (["v1", "versions", number], &Method::GET) => {
            let Ok(number) = number.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, "a version is a number");
            };
            let store = state.store.clone();
            match tokio::task::spawn_blocking(move || store.get(number)).await {
                Ok(Ok(Some(record))) => json(StatusCode::OK, &record),
                Ok(Ok(None)) => error(
                    StatusCode::NOT_FOUND,
                    &apply::missing_version(state, number).to_string(),
                ),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (["v1", "rollback"], &Method::POST) => {
            let author = header_author(&request);
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let parsed: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
                RollbackRequest::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
                    }
                }
            };
            let author = parsed.author.or(author);
            detached(state, |state| async move {
                apply::rollback(&state, parsed.version, author).await
            })
            .await
        }
        (["v1", "status"], &Method::GET) => json(
            StatusCode::OK,
            &serde_json::json!({"version": state.current().version, "sidecars": state.registry.list()}),
        ),
        (["live" | "ready" | "metrics"], _)
        | (["v1", "apply" | "diff" | "config" | "history" | "rollback" | "status"], _)
        | (["v1", "config", _, _, _], _)
        | (["v1", "versions", _], _) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

/// `POST /v1/apply` and `/v1/diff` bodies in their JSON form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    sources: Vec<SourceJson>,
    #[serde(default)]
    author: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceJson {
    name: String,
    text: String,
}

/// `POST /v1/rollback` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    author: Option<String>,
}

/// The sources (and author) of an apply or diff: JSON, or one YAML text.
async fn read_sources(
    request: Request<Incoming>,
) -> Result<(Vec<ficus_config::Source>, Option<String>), Response<Body>> {
    let is_json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let name = request
        .headers()
        .get("x-ficus-source-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("request body")
        .to_owned();
    let author = header_author(&request);
    let body = read_body(request).await?;
    if is_json {
        let parsed: ApplyRequest = serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))?;
        let sources = parsed
            .sources
            .into_iter()
            .map(|s| ficus_config::Source {
                name: s.name,
                text: s.text,
            })
            .collect();
        return Ok((sources, parsed.author.or(author)));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))?;
    Ok((vec![ficus_config::Source { name, text }], author))
}

/// The whole body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let limited = Limited::new(request.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body took too long",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {MAX_BODY} bytes; split the config"),
            ))
        }
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {e}"),
        )),
    }
}

/// `GET /v1/config`: the current version, documents filtered by kind, namespace and name. A
/// kind is taken as [`canonical_kind`] reads it; an unknown one is a 400 naming the known
/// ones, not an empty answer.
fn config(state: &ControlState, query: Option<&str>) -> Response<Body> {
    let query = parse_query(query.unwrap_or(""));
    let kind = match query.get("kind").filter(|k| !k.is_empty()) {
        None => None,
        Some(text) => match canonical_kind(text) {
            Some(kind) => Some(kind),
            None => return error(StatusCode::BAD_REQUEST, &unknown_kind(text)),
        },
    };
    let current = state.current();
    let wanted = |document: &serde_json::Value| {
        let Some(key) = DocumentKey::of(document) else {
            return false;
        };
        kind.is_none_or(|kind| kind == key.kind)
            && query
                .get("namespace")
                .is_none_or(|n| n.is_empty() || *n == key.namespace)
            && query
                .get("name")
                .is_none_or(|n| n.is_empty() || *n == key.name)
    };
    let documents: Vec<&serde_json::Value> =
        current.documents.iter().filter(|d| wanted(d)).collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "version": current.version,
            "created_at_ms": current.created_at_ms,
            "author": current.author,
            "summary": current.summary,
            "documents": documents,
        }),
    )
}

/// Versions per history page when the request names no `limit`.
const HISTORY_PAGE: usize = 100;
/// Most versions per history page: a larger `limit` is served as this many. Keeps the answer
/// small whatever the history's length (with `--kubernetes` every endpoint change is a
/// version), on a route that needs no token.
const MAX_HISTORY_PAGE: usize = 1000;

/// `GET /v1/history?limit=N&before=V`: at most `N` versions (default [`HISTORY_PAGE`], at most
/// [`MAX_HISTORY_PAGE`]), newest first, only those below `V` when `before` is given.
/// `next_before` is the `before` of the next (older) page, `null` on the last one. The store
/// reads only the page, not the whole history. `next_rollback` is the version a rollback
/// without a version would go to now (`null`: none), so that `history` can say so.
async fn history(state: &Arc<ControlState>, query: Option<&str>) -> Response<Body> {
    let query = parse_query(query.unwrap_or(""));
    let number = |name: &str| -> Result<Option<u64>, String> {
        match query.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(value) => value
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{name}={value:?}: {name} is a whole number")),
        }
    };
    let (limit, before) = match (number("limit"), number("before")) {
        (Ok(limit), Ok(before)) => (limit, before),
        (Err(message), _) | (_, Err(message)) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let limit = match limit {
        None => HISTORY_PAGE,
        Some(0) => return error(StatusCode::BAD_REQUEST, "limit must be at least 1"),
        Some(limit) => usize::try_from(limit).map_or(MAX_HISTORY_PAGE, |l| l.min(MAX_HISTORY_PAGE)),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.history_page(before, limit)).await {
        Ok(Ok(page)) => {
            let current = state.current();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "current": current.version,
                    "next_rollback": apply::default_rollback_target(&current).ok(),
                    "versions": page.versions,
                    "next_before": page.next_before,
                }),
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Runs a write (apply, delete, rollback) as a task of its own, so that a client that goes
/// away or stops waiting cannot cancel it between its commit and its publication: a version
/// stored but never published would be dropped by the next write (which starts from the
/// published one) or go live at the next restart, unasked.
async fn detached<F>(
    state: &Arc<ControlState>,
    write: impl FnOnce(Arc<ControlState>) -> F,
) -> Response<Body>
where
    F: std::future::Future<Output = Result<ApplyOutcome, ApplyError>> + Send + 'static,
{
    match tokio::spawn(write(Arc::clone(state))).await {
        Ok(Err(error)) => {
            if let Some(reason) = refusal_reason(&error) {
                state
                    .metrics
                    .writes_refused
                    .with_label_values(&[reason])
                    .inc();
            }
            apply_error(&error)
        }
        Ok(result) => outcome(result),
        Err(error) => apply_error(&ApplyError::Task(error)),
    }
}

/// The `ficus_control_writes_refused_total` reason of a write refused for what it asked.
fn refusal_reason(error: &ApplyError) -> Option<&'static str> {
    match error {
        ApplyError::Invalid(_) => Some("invalid"),
        ApplyError::TooLarge { .. } => Some("too_large"),
        _ => None,
    }
}

fn outcome(result: Result<ApplyOutcome, ApplyError>) -> Response<Body> {
    match result {
        Ok(outcome) => json(StatusCode::OK, &outcome),
        Err(e) => apply_error(&e),
    }
}

fn apply_error(apply_error: &ApplyError) -> Response<Body> {
    let (status, diagnostics) = match apply_error {
        ApplyError::Invalid(errors) => (StatusCode::BAD_REQUEST, errors.lines()),
        ApplyError::NotFound(_) | ApplyError::NoSuchVersion(_) | ApplyError::NotKept { .. } => {
            (StatusCode::NOT_FOUND, Vec::new())
        }
        ApplyError::NothingToRollBack(_) | ApplyError::NothingBefore { .. } => {
            (StatusCode::BAD_REQUEST, Vec::new())
        }
        ApplyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Vec::new()),
        ApplyError::Store(_) | ApplyError::Task(_) => {
            tracing::error!(error = %apply_error, "write failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
        }
    };
    json(
        status,
        &serde_json::json!({"error": apply_error.to_string(), "diagnostics": diagnostics}),
    )
}

fn header_author(request: &Request<Incoming>) -> Option<String> {
    let author = request
        .headers()
        .get("x-ficus-author")?
        .to_str()
        .ok()?
        .trim();
    (!author.is_empty()).then(|| author.chars().take(200).collect())
}

/// The kind `text` names, as users type it: the kind or its plural, in any case (`HTTPRoute`,
/// `httproute`, `httproutes`, `meshes`, `trafficpolicies`), as kubectl takes them. `None` for
/// anything else: callers refuse it with [`unknown_kind`] rather than match nothing.
pub fn canonical_kind(text: &str) -> Option<&'static str> {
    ficus_config::raw::Kind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .find(|kind| text.eq_ignore_ascii_case(kind) || text.eq_ignore_ascii_case(&plural(kind)))
}

/// The refusal of a kind [`canonical_kind`] does not know, naming the known ones.
pub fn unknown_kind(text: &str) -> String {
    let known: Vec<&str> = ficus_config::raw::Kind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect();
    format!(
        "unknown kind {text:?}; the kinds are {} (any case, singular or plural, e.g. httproutes)",
        known.join(", ")
    )
}

/// English plural of a kind name: `Mesh` → `Meshes`, `TrafficPolicy` → `TrafficPolicies`.
fn plural(kind: &str) -> String {
    if let Some(stem) = kind.strip_suffix('y') {
        format!("{stem}ies")
    } else if kind.ends_with("sh") || kind.ends_with('s') {
        format!("{kind}es")
    } else {
        format!("{kind}s")
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as space); invalid escapes stay as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                        index += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(message.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\",\"diagnostics\":[]}}").into_bytes()
    });
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": message, "diagnostics": []}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("shop%2Fa+b"), "shop/a b");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        let query = parse_query("kind=Backend&name=&x");
        assert_eq!(query.get("kind").map(String::as_str), Some("Backend"));
        assert_eq!(query.get("x").map(String::as_str), Some(""));
    }

    /// A client that asks for a response and reads none of it loses its connection, and its
    /// connection place, at the write-stall limit.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_gives_its_place_back() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, current) = crate::store::Store::open(dir.path()).unwrap();
        let state = ControlState::new(store, current);
        let places = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&places).acquire_owned().await.unwrap();
        // 64 bytes of buffer: the metrics page does not fit.
        let (mut client, server) = tokio::io::duplex(64);
        let access = Access {
            tokens: None,
            tls: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let served = tokio::spawn(serve_connection(server, state, Arc::new(access), permit));
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: control\r\n\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        tokio::time::timeout(WRITE_STALL * 4, served)
            .await
            .expect("the connection was closed")
            .unwrap();
        assert_eq!(started.elapsed(), WRITE_STALL);
        assert_eq!(places.available_permits(), 1);
        drop(client);
    }

    /// `GET path` on a connection served by [`serve_connection`]; the status and JSON answer.
    async fn get_json(state: &Arc<ControlState>, path: &str) -> (StatusCode, serde_json::Value) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let access = Access {
            tokens: None,
            tls: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        tokio::spawn(serve_connection(
            server,
            Arc::clone(state),
            Arc::new(access),
            permit,
        ));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(http::header::HOST, "control")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// The versions of a history answer, and its `next_before`.
    fn page(answer: &serde_json::Value) -> (Vec<u64>, Option<u64>) {
        let versions = answer["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["version"].as_u64().unwrap())
            .collect();
        (versions, answer["next_before"].as_u64())
    }

    /// 250 versions: pages of at most 100 by default, newest first, `before` continuing where
    /// the last page ended, and the last page saying there is no more.
    #[tokio::test]
    async fn history_is_served_in_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::Store::open(dir.path()).unwrap();
        for n in 1..=250 {
            store.commit(Vec::new(), None, format!("v{n}")).unwrap();
        }
        let current = store.current().unwrap();
        let state = ControlState::new(store, current);
        let newest = |from: u64, count: u64| (0..count).map(|i| from - i).collect::<Vec<u64>>();

        let (status, first) = get_json(&state, "/v1/history").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["current"], 250);
        assert_eq!(page(&first), (newest(250, 100), Some(151)));
        assert_eq!(first["versions"][0]["summary"], "v250");

        let (_, second) = get_json(&state, "/v1/history?before=151").await;
        assert_eq!(page(&second), (newest(150, 100), Some(51)));
        let (_, last) = get_json(&state, "/v1/history?before=51").await;
        assert_eq!(page(&last), (newest(50, 50), None));
        assert!(last["next_before"].is_null(), "{last}");

        let (_, small) = get_json(&state, "/v1/history?limit=3&before=10").await;
        assert_eq!(page(&small), (vec![9, 8, 7], Some(7)));
        let (_, exact) = get_json(&state, "/v1/history?limit=3&before=4").await;
        assert_eq!(page(&exact), (vec![3, 2, 1], None), "nothing below 1");
        let (_, everything) = get_json(&state, "/v1/history?limit=100000").await;
        assert_eq!(
            page(&everything),
            (newest(250, 250), None),
            "a limit past the cap is served (as the cap), not refused"
        );
        for bad in ["limit=0", "limit=x", "before=-1"] {
            let (status, answer) = get_json(&state, &format!("/v1/history?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        }
    }

    #[test]
    fn kinds_are_taken_as_users_type_them() {
        for (text, kind) in [
            ("httproute", "HTTPRoute"),
            ("httproutes", "HTTPRoute"),
            ("HTTPRoutes", "HTTPRoute"),
            ("backends", "Backend"),
            ("Backend", "Backend"),
            ("meshes", "Mesh"),
            ("tcproutes", "TCPRoute"),
            ("trafficpolicies", "TrafficPolicy"),
            ("authorizationpolicy", "AuthorizationPolicy"),
        ] {
            assert_eq!(canonical_kind(text), Some(kind), "{text}");
        }
        for text in ["Gateway", "routes", "httproutez", "meshs", "", "s"] {
            assert_eq!(canonical_kind(text), None, "{text}");
        }
        let refusal = unknown_kind("routes");
        assert!(
            refusal.starts_with("unknown kind \"routes\"; the kinds are Mesh, Backend, HTTPRoute"),
            "{refusal}"
        );
    }
}
