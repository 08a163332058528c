//! Circuit breaking per Backend: caps on concurrent requests and on requests queued for a
//! slot (`connectionPool.maxRequests`, `maxPendingRequests`). Past the caps a request fails
//! at once with 503 (flag `UO`) instead of piling up behind a slow Backend: the seed's cascade
//! was callers waiting on a service that could not answer.
//!
//! A request holds its slot until its response body is dropped (or, on failure, until the
//! exchange ends), retries included. Queued requests wait at most their own deadline. The
//! semaphores live on the snapshot: a config swap starts new counts while requests of the old
//! snapshot finish on the old ones, so for a moment up to twice the cap may be in flight.
//! `maxConnections` is not enforced separately (the HTTP/1.1 pool opens one connection per
//! concurrent request, so `maxRequests` bounds it too; HTTP/2 multiplexes on one).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ficus_config::ConnectionPool;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which cap a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Every request slot was busy and the queue was full.
    Pending,
    /// The request waited in the queue for a slot until its deadline.
    Requests,
}

impl Overflow {
    /// The `kind` label of `ficus_circuit_breaker_overflow_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Requests => "requests",
        }
    }
}

/// The caps of one Backend.
#[derive(Debug)]
pub struct Breaker {
    requests: Arc<Semaphore>,
    pending: Semaphore,
}

impl Breaker {
    /// From validated caps (each at least 1).
    pub fn new(pool: &ConnectionPool) -> Self {
        let cap = |n: u32| usize::try_from(n).unwrap_or(Semaphore::MAX_PERMITS);
        Self {
            requests: Arc::new(Semaphore::new(
                cap(pool.max_requests).min(Semaphore::MAX_PERMITS),
            )),
            pending: Semaphore::new(cap(pool.max_pending_requests).min(Semaphore::MAX_PERMITS)),
        }
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
        Breaker::new(&ConnectionPool {
            max_connections: 1024,
            max_pending_requests: pending,
            max_requests: requests,
        })
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
