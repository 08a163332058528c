//! RequestMirror: a copy of a share of a rule's requests goes to another Backend, marked with a
//! `-shadow` suffix on its Host/`:authority` (as Envoy does); the answer is discarded.
//!
//! The mirror never slows or fails the main request: the copy is sent from its own task, a
//! semaphore caps copies in flight per mirror Backend (past it copies are dropped and counted,
//! never queued; the semaphore is carried across config swaps, so a swap grants no fresh
//! room), and each copy is bounded by the per-try timeout (by the Mesh's
//! `upstreamResponseTimeout` when the rule sets no limit: a copy never waits without one, or
//! copies to a hung mirror would hold every slot for good). Only requests whose body is
//! already in memory are copied: requests without a body, and bodies buffered for retries.
//! Streamed bodies are not mirrored (copying them would tie the main request to the mirror),
//! nor are protocol switches (the shadow would accept a handshake that is then dropped).
//!
//! The copy is prepared for its own Backend: `x-ficus-orig-proto` (the far sidecar speaks
//! HTTP/1.1 to its app) is set when its endpoint is a peer sidecar (mTLS) and the mirror
//! Backend's protocol is `http`, and removed otherwise, whatever the main Backend needed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_config::ProxyLimits;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Request;
use tokio::sync::Semaphore;

use super::forward::{forward, path_and_query, upstream_uri};
use super::headers::X_FICUS_ORIG_PROTO;
use crate::body;
use crate::deadline::UNBOUNDED;
use crate::snapshot::BackendTarget;
use crate::telemetry::metrics::Metrics;

/// Copies in flight per mirror Backend before further copies are dropped.
pub const MAX_IN_FLIGHT: usize = 64;

/// A rule's mirror.
#[derive(Debug)]
pub struct Mirror {
    target: Arc<BackendTarget>,
    share: f64,
    in_flight: Arc<Semaphore>,
}

impl Mirror {
    /// Mirrors `percent` (0..=100) of requests to `target`; `in_flight` holds the places of
    /// copies in flight to it ([`MAX_IN_FLIGHT`]), shared by every rule and snapshot
    /// mirroring to that Backend.
    pub fn new(target: Arc<BackendTarget>, percent: f64, in_flight: Arc<Semaphore>) -> Self {
        Self {
            target,
            share: percent / 100.0,
            in_flight,
        }
    }

    /// Whether this request is one of the mirrored share.
    pub fn draw(&self) -> bool {
        self.share >= 1.0 || rand::random::<f64>() < self.share
    }

    /// Sends a copy of the request (head `parts` as prepared for the main upstream, `body`)
    /// to the mirror Backend in the background; `host` is the authority the caller used.
    pub fn spawn(
        &self,
        parts: &Parts,
        body: Bytes,
        host: &str,
        timeout: Duration,
        limits: &ProxyLimits,
        metrics: &Arc<Metrics>,
    ) {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            metrics.mirror_dropped.inc();
            return;
        };
        // Every endpoint ejected: the shadow Backend is failing; a copy would only add to it.
        let Some(endpoint) = self.target.healthy_endpoint().map(Arc::clone) else {
            metrics.mirror_dropped.inc();
            return;
        };
        let http2 = endpoint.is_http2();
        let shadow = shadow_authority(host);
        let Ok(uri) = upstream_uri(http2, &shadow, path_and_query(&parts.uri)) else {
            metrics.mirror_dropped.inc();
            return;
        };
        let body = if body.is_empty() {
            body::empty()
        } else {
            body::full(body)
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = parts.headers.clone();
        // Marked for this endpoint, not the main one (see the module doc).
        if endpoint.is_mtls() && !self.target.protocol.is_http2() {
            request
                .headers_mut()
                .insert(X_FICUS_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        } else {
            request.headers_mut().remove(X_FICUS_ORIG_PROTO);
        }
        if http2 {
            request.headers_mut().remove(header::HOST);
        } else if let Ok(value) = HeaderValue::from_str(&shadow) {
            request.headers_mut().insert(header::HOST, value);
        }
        metrics.mirror_sent.inc();
        let timeout = if timeout == UNBOUNDED {
            limits.upstream_response_timeout
        } else {
            timeout
        };
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The response and its body are dropped unread.
            if let Err(error) =
                forward(&endpoint, request, timeout, None, &limits, None, None).await
            {
                tracing::debug!(%error, "mirrored request failed");
            }
        });
    }
}

/// The authority of a copy: `-shadow` added to the host, before any port, as Envoy does
/// (`payments:8080` → `payments-shadow:8080`, `[::1]:80` → `[::1]-shadow:80`).
fn shadow_authority(authority: &str) -> String {
    let host_end = if authority.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the bracket.
        authority.find(']').map_or(authority.len(), |end| end + 1)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if !host.contains(':') => host.len(),
            _ => authority.len(),
        }
    };
    let (host, port) = authority.split_at(host_end);
    format!("{host}-shadow{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_suffix_goes_on_the_host_before_the_port() {
        assert_eq!(shadow_authority("payments"), "payments-shadow");
        assert_eq!(shadow_authority("payments:8080"), "payments-shadow:8080");
        assert_eq!(
            shadow_authority("payments.shop.svc.cluster.local:80"),
            "payments.shop.svc.cluster.local-shadow:80"
        );
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_authority("[::1]"), "[::1]-shadow");
    }
}
