//! The mutating admission webhook (`--webhook`): AdmissionReview v1 in, a JSON Patch that
//! injects the sidecar out — the same injection as `ficusctl inject` ([`crate::inject`]).
//!
//! Served over HTTPS (TLS 1.3, HTTP/1.1 or HTTP/2 by ALPN) with a certificate the mesh CA
//! issues for `--webhook-dns-name` (default `ficus-control.ficus-system.svc`), re-issued at
//! 70 % of its lifetime; the MutatingWebhookConfiguration's `caBundle` is the mesh root
//! (`<data>/ca.pem`). Route: `POST /inject`.
//!
//! The answer is always `allowed: true`: an error of ours (a bad annotation, an odd pod) must
//! not be the reason a pod cannot be created. The configuration says `failurePolicy: Fail`,
//! so while the control plane cannot be reached pods of the mesh's namespaces wait rather
//! than start without a sidecar (outside mTLS and their policies); when injection fails here (a bad
//! annotation, an odd pod) the pod is admitted unchanged with the reason as an admission
//! warning (kubectl prints it), logged and counted in
//! `ficus_control_webhook_requests_total{result="error"}`. Re-injection is idempotent: a pod
//! that already has the sidecar gets no patch.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ficus_net::listen::Listeners;
use ficus_net::stall::StallBounded;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::inject::{self, patch, InjectConfig, Outcome};
use crate::metrics::Metrics;

/// The path the webhook configuration points at.
pub const PATH: &str = "/inject";
/// Largest AdmissionReview read (a pod object is KiBs; the API server's own limit is 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send the request headers (also the keep-alive idle limit).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send the body (the API server's own webhook timeout is at most 30 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (API servers keep a few).
const MAX_CONNECTIONS: usize = 256;
/// Longest the peer may take no bytes of a response before its connection is closed.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// What the webhook decided for one AdmissionReview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A patch that adds the sidecar.
    Injected,
    /// No patch: not a create, not a workload, opted out, already injected, host network.
    Skipped,
    /// No patch because injection failed; the pod is admitted unchanged (fail open).
    Error,
}

impl Decision {
    /// The `result` label of `ficus_control_webhook_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }
}

/// Why a request body is not an AdmissionReview we can answer (HTTP 400; the API server then
/// applies `failurePolicy`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(String),
    /// JSON, but not an `admission.k8s.io/v1` AdmissionReview with `request.uid`.
    #[error("expected an admission.k8s.io/v1 AdmissionReview with request.uid")]
    NotAReview,
}

/// Answers one AdmissionReview (the request body): the response review and what was done.
pub fn review(body: &[u8], config: &InjectConfig) -> Result<(Value, Decision), ReviewError> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(ReviewError::NotAReview);
    }
    let request = review.get("request").ok_or(ReviewError::NotAReview)?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NotAReview)?;
    let mut response = json!({"uid": uid, "allowed": true});
    let operation = request.get("operation").and_then(Value::as_str);
    let decision = match (operation, request.get("object")) {
        (Some("CREATE"), Some(object)) => {
            let mut injected = object.clone();
            match inject::inject(&mut injected, config) {
                Ok(Outcome::Injected { warnings, .. }) => {
                    let operations = patch::diff(object, &injected);
                    let text = serde_json::to_vec(&operations).unwrap_or_default();
                    response["patchType"] = json!("JSONPatch");
                    response["patch"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(text));
                    if !warnings.is_empty() {
                        response["warnings"] = json!(warnings
                            .iter()
                            .map(|w| format!("ficus: {w}"))
                            .collect::<Vec<_>>());
                    }
                    Decision::Injected
                }
                Ok(Outcome::Skipped(_) | Outcome::NotAWorkload) => Decision::Skipped,
                Err(error) => {
                    tracing::warn!(uid, %error, "sidecar not injected; admitting the pod unchanged");
                    response["warnings"] = json!([format!("ficus: sidecar not injected: {error}")]);
                    Decision::Error
                }
            }
        }
        _ => Decision::Skipped,
    };
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    Ok((answer, decision))
}

/// Serves the webhook on `listeners` (`--webhook` and its IPv6 companion) over TLS until the
/// process ends.
pub async fn serve(
    listeners: Listeners,
    tls: TlsAcceptor,
    config: Arc<InjectConfig>,
    metrics: Arc<Metrics>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = crate::listen::accept(&listeners, "webhook").await;
        let tls = tls.clone();
        let config = Arc::clone(&config);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, config, metrics).await,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "webhook TLS handshake failed");
                }
                Err(_) => tracing::info!(%peer, "webhook TLS handshake not finished within 10 s"),
            }
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    config: Arc<InjectConfig>,
    metrics: Arc<Metrics>,
) {
    let service = service_fn(move |request| {
        let config = Arc::clone(&config);
        let metrics = Arc::clone(&metrics);
        async move { Ok::<_, Infallible>(handle(request, &config, &metrics).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if let Err(error) = builder
        .serve_connection(
            TokioIo::new(StallBounded::new(stream, WRITE_STALL)),
            service,
        )
        .await
    {
        tracing::debug!(%peer, %error, "webhook connection ended");
    }
}

async fn handle(
    request: Request<Incoming>,
    config: &InjectConfig,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "no such route; the webhook is POST /inject\n",
        );
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {error}\n"),
            )
        }
        Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "body not sent within 10 s\n"),
    };
    let (answer, decision) = match review(&body, config) {
        Ok(reviewed) => reviewed,
        Err(error) => {
            metrics
                .webhook_requests
                .with_label_values(&["invalid"])
                .inc();
            return plain(StatusCode::BAD_REQUEST, &format!("{error}\n"));
        }
    };
    metrics
        .webhook_requests
        .with_label_values(&[decision.label()])
        .inc();
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&answer).unwrap_or_default(),
    )));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
                "oldObject": null,
                "dryRun": false,
            },
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "web-5d8f-", "annotations": annotations},
               "spec": {"containers": [{"name": "web", "image": "web:1"}]}})
    }

    /// The annotations of the pod in an AdmissionReview body.
    fn body_annotations(body: &[u8]) -> serde_json::Map<String, Value> {
        let review: Value = serde_json::from_slice(body).unwrap();
        review["request"]["object"]["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .clone()
    }

    fn decode(answer: &Value) -> Value {
        let text = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn a_pod_create_gets_a_patch() {
        let (answer, decision) = review(
            &admission("CREATE", pod(json!({}))),
            &InjectConfig::default(),
        )
        .unwrap();
        assert_eq!(decision, Decision::Injected);
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let operations = decode(&answer);
        assert_eq!(operations.as_array().unwrap().len(), 2, "{operations}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    }

    #[test]
    fn skips_and_errors_are_allowed_without_a_patch() {
        let config = InjectConfig::default();
        for (body, decision) in [
            (admission("UPDATE", pod(json!({}))), Decision::Skipped),
            (
                admission("CREATE", pod(json!({"ficus.dev/inject": "false"}))),
                Decision::Skipped,
            ),
            (
                admission(
                    "CREATE",
                    pod(json!({"ficus.dev/exclude-inbound-ports": "x"})),
                ),
                Decision::Error,
            ),
            (
                admission(
                    "CREATE",
                    pod(json!({"ficus.dev/proxy-memory-limit": "32Mi"})),
                ),
                Decision::Error,
            ),
            (
                admission("CREATE", pod(json!({"ficus.dev/proxy-cpu-limit": "two"}))),
                Decision::Error,
            ),
        ] {
            let (answer, got) = review(&body, &config).unwrap();
            assert_eq!(got, decision);
            assert_eq!(answer["response"]["allowed"], true);
            assert!(answer["response"].get("patch").is_none(), "{answer}");
            if decision == Decision::Error {
                let warning = answer["response"]["warnings"][0].as_str().unwrap();
                let annotations = body_annotations(&body);
                let name = annotations.keys().next().unwrap();
                assert!(
                    warning
                        .starts_with(&format!("ficus: sidecar not injected: annotation {name}: ")),
                    "{warning}"
                );
            }
        }
    }

    #[test]
    fn not_a_review_is_refused() {
        let config = InjectConfig::default();
        assert!(matches!(review(b"{", &config), Err(ReviewError::Json(_))));
        for body in [
            json!({}),
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "request": {"uid": "x"}}),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {}}),
        ] {
            let body = serde_json::to_vec(&body).unwrap();
            assert_eq!(review(&body, &config), Err(ReviewError::NotAReview));
        }
    }
}
