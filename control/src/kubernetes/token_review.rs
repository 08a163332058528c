//! Authenticating sidecars in Kubernetes: the projected service-account token a sidecar
//! presents is sent to the API server's TokenReview, and the workload (service account) and
//! namespace come from the review's answer — never from the token's claims as the sidecar
//! reads them, and never from the CSR.
//!
//! [`review_request`] and [`caller_from_review`] are pure (tested on real TokenReview JSON);
//! [`TokenReviewer`] creates the review through kube's [`Client`] (`Api::<TokenReview>::create`)
//! and plugs into [`TokenAuthenticator`], the seam the signing and push services use.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::client::Client;
use crate::auth::join::{Caller, TokenAuthenticator};
use crate::auth::AuthError;

/// The audience injected sidecars' projected tokens are minted for.
pub const AUDIENCE: &str = "ficus";
/// The whole review (connect, TLS, request, answer) must finish within this.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// `status.user.username` of a service account: `system:serviceaccount:<ns>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The TokenReview to create for `token`, asking the API server to check `audience` too.
pub fn review_request(token: &str, audience: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    }
}

/// Why a TokenReview answer does not authenticate a workload (all map to
/// [`AuthError::Unknown`] for the caller; the reason is logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewRefusal {
    /// `status.authenticated` is not true (expired, revoked, wrong audience, bound pod gone).
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for our audience (an API server that ignored `audiences`).
    #[error("the token is not for audience {0:?}")]
    Audience(String),
    /// Authenticated, but not as a service account (a user or node token).
    #[error("{0:?} is not a service account")]
    NotAServiceAccount(String),
}

/// The workload and namespace a TokenReview answer (what the API server returned from the
/// create) authenticates for `audience`.
pub fn caller_from_review(review: &TokenReview, audience: &str) -> Result<Caller, ReviewRefusal> {
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| ReviewRefusal::NotAuthenticated("the answer has no status".to_owned()))?;
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("no reason given");
        return Err(ReviewRefusal::NotAuthenticated(why.to_owned()));
    }
    // The API server answers with the audiences the token is valid for among those asked; an
    // empty or missing list means it did not check them (only old servers), so refuse.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(ReviewRefusal::Audience(audience.to_owned()));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|user| user.username.as_deref())
        .unwrap_or("");
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
        revocable: false,
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
#[derive(Clone)]
pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer for tokens of `audience` (normally [`AUDIENCE`]), asking through `client`.
    pub fn new(client: Client, audience: &str) -> Self {
        Self {
            reviews: Api::all(client),
            audience: audience.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let review = review_request(token, &self.audience);
        let params = PostParams::default();
        let created = self.reviews.create(&params, &review);
        match tokio::time::timeout(REVIEW_TIMEOUT, created).await {
            Ok(Ok(answer)) => caller_from_review(&answer, &self.audience).map_err(|refusal| {
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

    fn revoked(&self, token: &str, caller: &Caller) -> bool {
        self.0
            .iter()
            .any(|authenticator| authenticator.revoked(token, caller))
    }
}

#[cfg(test)]
mod tests;
