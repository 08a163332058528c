//! Circuit breaking per Backend: caps on concurrent requests and on requests queued for a
//! slot (`connectionPool.maxRequests`, `maxPendingRequests`). Past the caps a request fails
//! at once with 503 (flag `UO`) instead of piling up behind a slow Backend: the seed's cascade
//! was callers waiting on a service that could not answer.
//!
//! A request holds its slot until its response body is dropped (or, on failure, until the
//! exchange ends), retries included. Queued requests wait at most their own deadline. The
//! semaphores live on the snapshot: a config swap starts new counts while requests of the old
//! snapshot finish on the old ones; when neither the Backend nor its policy changed, the new
//! snapshot keeps the same breaker ([`super::Carryover`]).
//!
//! `maxConnections` caps the upstream connections opened for the Backend's requests
//! ([`ConnectionCap`]): a request that needs a new connection (no idle HTTP/1.1 one, or no live
//! HTTP/2 one to its endpoint) when the cap is reached fails at once with 503 `UO` and
//! `kind="connections"`, without dialling. A connection counts until its connection task ends
//! (closed by either side, or dropped from the idle pool). It matters when `maxConnections`
//! is below `maxRequests` (HTTP/1.1 needs a connection per concurrent request) or below the
//! number of HTTP/2 endpoints. Opaque TCP and mirrored requests are not counted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ficus_config::ConnectionPool;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics::Metrics;

/// Which cap a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Every request slot was busy and the queue was full.
    Pending,
    /// The request waited in the queue for a slot until its deadline.
    Requests,
    /// The request needed a new upstream connection and `maxConnections` were open.
    Connections,
}

impl Overflow {
    /// The `kind` label of `ficus_circuit_breaker_overflow_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Requests => "requests",
            Self::Connections => "connections",
        }
    }
}

/// The caps of one Backend.
#[derive(Debug)]
pub struct Breaker {
    requests: Arc<Semaphore>,
    pending: Semaphore,
    connections: ConnectionCap,
}

impl Breaker {
    /// From validated caps (each at least 1); `metrics` counts connection overflows.
    pub fn new(pool: &ConnectionPool, metrics: &Arc<Metrics>) -> Self {
        let cap = |n: u32| {
            usize::try_from(n)
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS)
        };
        Self {
            requests: Arc::new(Semaphore::new(cap(pool.max_requests))),
            pending: Semaphore::new(cap(pool.max_pending_requests)),
            connections: ConnectionCap {
                permits: Arc::new(Semaphore::new(cap(pool.max_connections))),
                metrics: Arc::clone(metrics),
            },
        }
    }

    /// Marks `request` as one of this Backend's, so the pool counts any connection it opens
    /// for it against `maxConnections`.
    pub fn tag<B>(&self, request: &mut Request<B>) {
        request.extensions_mut().insert(self.connections.clone());
    }

    /// A request slot: at once if one is free, else after waiting in the queue at most `wait`.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(permit) = Arc::clone(&self.requests).try_acquire_owned() {
            return Ok(permit);
        }
        let Ok(_queued) = self.pending.try_acquire() else {
            return Err(Overflow::Pending);
        };
        match tokio::time::timeout(wait, Arc::clone(&self.requests).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a full queue anyway.
            Ok(Err(_)) | Err(_) => Err(Overflow::Requests),
        }
    }
}

/// A Backend's cap on open upstream connections, carried to the pool in the extensions of
/// the Backend's requests.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl ConnectionCap {
    /// A permit for one more connection, held until the connection ends; `None` (counted as
    /// an overflow) when the cap is reached.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() {
            self.metrics.breaker_overflow(Overflow::Connections.kind());
        }
        permit
    }
}

pin_project! {
    /// A response body that keeps its request slot until it is dropped.
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B> Guarded<B> {
    /// Wraps `inner`, releasing `permit` when the body ends or is dropped.
    pub fn new(inner: B, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            permit: Some(permit),
        }
    }
}

impl<B: HttpBody> HttpBody for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.permit.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(requests: u32, pending: u32) -> Breaker {
        Breaker::new(
            &ConnectionPool {
                max_connections: 2,
                max_pending_requests: pending,
                max_requests: requests,
            },
            &Metrics::new(),
        )
    }

    #[test]
    fn connections_past_the_cap_are_refused_and_counted() {
        let breaker = breaker(10, 10);
        let mut request = Request::new(());
        breaker.tag(&mut request);
        let cap = request.extensions().get::<ConnectionCap>().unwrap();
        let first = cap.open().unwrap();
        let _second = cap.open().unwrap();
        assert!(cap.open().is_none());
        drop(first);
        assert!(cap.open().is_some(), "a closed connection frees its place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_overflows_at_once() {
        let breaker = Arc::new(breaker(1, 1));
        let held = breaker.acquire(Duration::from_secs(1)).await.unwrap();
        let queued = {
            let breaker = Arc::clone(&breaker);
            tokio::spawn(async move { breaker.acquire(Duration::from_secs(10)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        assert_eq!(
            breaker.acquire(Duration::from_secs(10)).await.unwrap_err(),
            Overflow::Pending
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(held);
        assert!(
            queued.await.unwrap(),
            "the queued request gets the freed slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_at_its_deadline() {
        let breaker = breaker(1, 1);
        let _held = breaker.acquire(Duration::from_secs(1)).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            breaker.acquire(Duration::from_secs(2)).await.unwrap_err(),
            Overflow::Requests
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The queue slot was given back.
        assert_eq!(
            breaker.acquire(Duration::from_millis(1)).await.unwrap_err(),
            Overflow::Requests
        );
    }
}
