//! Authenticating sidecars in Kubernetes: the projected service-account token a sidecar
//! presents is sent to the API server's TokenReview, and the workload (service account) and
//! namespace come from the review's answer — never from the token's claims as the sidecar
//! reads them, and never from the CSR.
//!
//! [`review_request`] and [`caller_from_review`] are pure (tested on real TokenReview JSON);
//! [`TokenReviewer`] is the thin layer that POSTs the request to the API server (in-cluster:
//! `KUBERNETES_SERVICE_HOST`, the pod's own service-account token and CA) and plugs into
//! [`TokenAuthenticator`], the seam the signing and push services use.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use super::api::ApiClient;
pub use super::api::ApiServer;
use crate::auth::join::{Caller, TokenAuthenticator};
use crate::auth::AuthError;

/// The audience injected sidecars' projected tokens are minted for.
pub const AUDIENCE: &str = "ficus";
/// The whole review (connect, TLS, request, answer) must finish within this.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TokenReview answer read.
const MAX_ANSWER: usize = 256 * 1024;
/// `status.user.username` of a service account: `system:serviceaccount:<ns>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The TokenReview to create for `token`, asking the API server to check `audience` too.
pub fn review_request(token: &str, audience: &str) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    })
}

/// Why a TokenReview answer does not authenticate a workload (all map to
/// [`AuthError::Unknown`] for the caller; the reason is logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewRefusal {
    /// Not a TokenReview answer.
    #[error("not a TokenReview answer: {0}")]
    Malformed(String),
    /// `status.authenticated` is false (expired, revoked, wrong audience, bound pod gone).
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for our audience (an API server that ignored `audiences`).
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    /// Authenticated, but not as a service account (a user or node token).
    #[error("{0:?} is not a service account")]
    NotAServiceAccount(String),
}

/// The workload and namespace a TokenReview answer (the API server's response body)
/// authenticates for `audience`.
pub fn caller_from_review(body: &[u8], audience: &str) -> Result<Caller, ReviewRefusal> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewRefusal::Malformed(e.to_string()))?;
    if review["kind"] != "TokenReview" {
        return Err(ReviewRefusal::Malformed(format!("kind {}", review["kind"])));
    }
    let status = &review["status"];
    if status["authenticated"] != true {
        let why = status["error"].as_str().unwrap_or("no reason given");
        return Err(ReviewRefusal::NotAuthenticated(why.to_owned()));
    }
    // The API server answers with the audiences the token is valid for among those asked; an
    // empty or missing list means it did not check them (only old servers), so refuse.
    let audiences = status["audiences"].as_array();
    if !audiences.is_some_and(|list| list.iter().any(|a| a == audience)) {
        return Err(ReviewRefusal::Audience(audience.to_owned()));
    }
    let username = status["user"]["username"].as_str().unwrap_or("");
    let rest = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .ok_or_else(|| ReviewRefusal::NotAServiceAccount(username.to_owned()))?;
    let (namespace, name) = rest
        .split_once(':')
        .filter(|(ns, sa)| valid_name(ns) && valid_name(sa))
        .ok_or_else(|| ReviewRefusal::NotAServiceAccount(username.to_owned()))?;
    Ok(Caller {
        workload: name.to_owned(),
        namespace: namespace.to_owned(),
    })
}

/// A Kubernetes name usable as a SPIFFE path segment.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// [`TokenAuthenticator`] backed by the API server's TokenReview.
#[derive(Debug)]
pub struct TokenReviewer {
    client: ApiClient,
    audience: String,
}

impl TokenReviewer {
    /// A reviewer for tokens of `audience` (normally [`AUDIENCE`]).
    pub fn new(server: ApiServer, audience: &str) -> Result<Self, String> {
        Ok(Self {
            client: ApiClient::new(server)?,
            audience: audience.to_owned(),
        })
    }

    /// POSTs the review and returns the answer's body.
    async fn post(&self, token: &str) -> Result<Bytes, String> {
        let body = serde_json::to_vec(&review_request(token, &self.audience)).unwrap_or_default();
        let response = self
            .client
            .send(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Some(body),
            )
            .await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
        Ok(body)
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        match tokio::time::timeout(REVIEW_TIMEOUT, self.post(token)).await {
            Ok(Ok(body)) => caller_from_review(&body, &self.audience).map_err(|refusal| {
                tracing::info!(%refusal, "token refused by TokenReview");
                AuthError::Unknown
            }),
            Ok(Err(error)) => {
                tracing::warn!(%error, "TokenReview failed");
                Err(AuthError::Unknown)
            }
            Err(_) => {
                tracing::warn!("TokenReview not answered within 5 s");
                Err(AuthError::Unknown)
            }
        }
    }
}

/// Tries each authenticator in turn (join tokens first, then TokenReview): the first that
/// knows the token answers.
#[derive(Debug)]
pub struct FirstOf(pub Vec<Arc<dyn TokenAuthenticator>>);

#[tonic::async_trait]
impl TokenAuthenticator for FirstOf {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let mut last = AuthError::NotConfigured("no authenticator configured");
        for authenticator in &self.0 {
            match authenticator.authenticate(token).await {
                Ok(caller) => return Ok(caller),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests;
