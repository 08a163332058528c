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
//! HTTP/2 one to its endpoint) when the cap is reached first closes an idle pooled HTTP/1.1
//! connection of the Backend (to another endpoint: one to its own would have been reused),
//! which gives its place up; with none idle it fails at once with 503 `UO` and
//! `kind="connections"`, without dialling, and is never retried. A connection counts until its
//! connection task ends (closed by either side, or dropped from the idle pool). It matters
//! when `maxConnections` is below `maxRequests` (HTTP/1.1 needs a connection per concurrent
//! request) or below the number of endpoints. Shared HTTP/2 connections are not closed to
//! make room (they may carry other requests at any moment). Opaque TCP and mirrored requests
//! are not counted.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
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
            connections: ConnectionCap(Arc::new(CapState {
                permits: Arc::new(Semaphore::new(cap(pool.max_connections))),
                metrics: Arc::clone(metrics),
                holders: Mutex::new(Vec::new()),
            })),
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
/// the Backend's requests (one reference count per request).
#[derive(Debug, Clone)]
pub struct ConnectionCap(Arc<CapState>);

#[derive(Debug)]
struct CapState {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Where connections holding places may sit idle (the pools that opened them).
    holders: Mutex<Vec<Weak<dyn IdleHolder>>>,
}

/// Keeps idle connections that hold places of a [`ConnectionCap`] (an endpoint's pool).
pub trait IdleHolder: std::fmt::Debug + Send + Sync {
    /// Closes one idle connection holding a place of `permits`, which frees the place;
    /// whether there was one.
    fn close_idle(&self, permits: &Arc<Semaphore>) -> bool;
}

impl ConnectionCap {
    /// A permit for one more connection, held until the connection ends. When the cap is
    /// reached an idle connection of a holder gives its place up; `None` (counted as an
    /// overflow) when none was idle.
    pub fn open(&self) -> Option<OwnedSemaphorePermit> {
        let permits = &self.0.permits;
        if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
            return Some(permit);
        }
        // Another request may take the freed place first: then this one overflows.
        let permit = self
            .close_idle()
            .then(|| Arc::clone(permits).try_acquire_owned().ok())
            .flatten();
        if permit.is_none() {
            self.0
                .metrics
                .breaker_overflow(Overflow::Connections.kind());
        }
        permit
    }

    /// Notes that `holder` opened a connection with a place of this cap and may keep it idle.
    pub fn opened_by(&self, holder: Weak<dyn IdleHolder>) {
        let Ok(mut holders) = self.0.holders.lock() else {
            return;
        };
        if holders.iter().any(|h| Weak::ptr_eq(h, &holder)) {
            return;
        }
        holders.retain(|h| h.strong_count() > 0);
        holders.push(holder);
    }

    /// Closes one idle connection holding a place; whether one was found.
    fn close_idle(&self) -> bool {
        // Upgraded outside the lock: closing takes the holder's own lock.
        let holders: Vec<Arc<dyn IdleHolder>> = match self.0.holders.lock() {
            Ok(holders) => holders.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return false,
        };
        holders.iter().any(|h| h.close_idle(&self.0.permits))
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

    fn breaker_of(connections: u32) -> Breaker {
        Breaker::new(
            &ConnectionPool {
                max_connections: connections,
                max_pending_requests: 1,
                max_requests: 1,
            },
            &Metrics::new(),
        )
    }

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

    /// Idle connections, each holding a place of some cap.
    #[derive(Debug, Default)]
    struct Idle(Mutex<Vec<OwnedSemaphorePermit>>);

    impl IdleHolder for Idle {
        fn close_idle(&self, permits: &Arc<Semaphore>) -> bool {
            let mut idle = self.0.lock().unwrap();
            let found = idle
                .iter()
                .position(|p| Arc::ptr_eq(p.semaphore(), permits));
            found.map(|i| idle.remove(i)).is_some()
        }
    }

    #[test]
    fn an_idle_connection_gives_its_place_up_at_the_cap() {
        let breaker = breaker(10, 10);
        let other = breaker_of(1);
        let mut request = Request::new(());
        breaker.tag(&mut request);
        let cap = request.extensions().get::<ConnectionCap>().unwrap().clone();
        let pool = Arc::new(Idle::default());
        let holder: Arc<dyn IdleHolder> = pool.clone();
        cap.opened_by(Arc::downgrade(&holder));
        cap.opened_by(Arc::downgrade(&holder));
        assert_eq!(cap.0.holders.lock().unwrap().len(), 1, "noted once");
        let busy = cap.open().unwrap();
        // One idle connection of this cap, one of another Backend's.
        pool.0.lock().unwrap().push(cap.open().unwrap());
        pool.0
            .lock()
            .unwrap()
            .push(other.connections.open().unwrap());
        let third = cap.open().expect("the idle connection made room");
        assert_eq!(pool.0.lock().unwrap().len(), 1, "the other Backend's stays");
        assert!(cap.open().is_none(), "nothing idle left to close");
        drop((busy, third));
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
