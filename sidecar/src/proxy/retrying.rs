//! The outbound exchange of a rule with a `retry` policy: buffer a replayable body, then try,
//! back off and try again within the retry budget and the route's total deadline.
//!
//! Each try is bounded by `timeouts.backendRequest` (else `timeouts.request`, else the Mesh's
//! `upstreamResponseTimeout`: `Timeouts::per_try`), the whole exchange, backoff included, by
//! `timeouts.request` (then 504, flag `UT`). Retries go
//! to another endpoint than the one that failed when the Backend has one. When the tries run
//! out, the caller gets the last upstream response (or error) with flag `URX`; when the budget
//! is spent, the caller gets the failed outcome as it was and the exhaustion is counted.
//!
//! gRPC calls are not buffered before the first try (a streaming call may wait for answers
//! before it ends its request): their body streams to the first try while a copy of up to
//! [`RETRY_BUFFER`] bytes is kept. The call is replayed only when that copy holds the whole
//! request (its end seen within [`RECORDING_GRACE`] of the failed try), else the failed outcome
//! goes back as it was.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ficus_config::ProxyLimits;
use http::request::Parts;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{flags, ProxyError};
use super::forward::forward;
use super::mirror::Copies;
use crate::body::{self, with_idle_timeout, Body, BodyIdle, BoxError};
use crate::policy::grpc;
use crate::policy::retry::{self, RetryPolicy, RETRY_BUFFER};
use crate::snapshot::BackendTarget;
use crate::telemetry::access_log;
use crate::telemetry::metrics::Metrics;
use crate::upstream::EndpointPool;

/// How long after a failed try a gRPC request body still being sent may take to end and
/// become replayable.
pub const RECORDING_GRACE: Duration = Duration::from_millis(50);

/// A request body after deciding whether the request can be replayed.
pub enum Replay {
    /// Held in memory: the request may be sent again.
    Buffered(Bytes),
    /// A gRPC call: streamed to the first try while a copy is kept for replay.
    Recorded(Incoming),
    /// Too large, of unknown length, or not idempotent: streamed once.
    Stream(Incoming),
}

/// Buffers the body of a replayable request (idempotent, or allowed by the route) when it is
/// empty or of a known length that fits the retry buffer; anything else is streamed. gRPC calls are recorded while they stream when
/// `policy` retries any gRPC status. Reading waits at most `idle` between frames.
pub async fn replayable(
    parts: &Parts,
    incoming: Incoming,
    idle: Duration,
    policy: &RetryPolicy,
) -> Result<Replay, ProxyError> {
    if grpc::is_grpc(&parts.headers) {
        return Ok(if policy.retries_any_grpc() {
            Replay::Recorded(incoming)
        } else {
            Replay::Stream(incoming)
        });
    }
    if !policy.replays(&parts.method) {
        return Ok(Replay::Stream(incoming));
    }
    if incoming.is_end_stream() {
        return Ok(Replay::Buffered(Bytes::new()));
    }
    match incoming.size_hint().exact() {
        Some(length) if length <= RETRY_BUFFER => {}
        _ => return Ok(Replay::Stream(incoming)),
    }
    match with_idle_timeout(incoming, idle).collect().await {
        Ok(collected) => Ok(Replay::Buffered(collected.to_bytes())),
        Err(error) if error.is::<BodyIdle>() => Err(ProxyError::DownstreamTimeout),
        Err(_) => Err(ProxyError::DownstreamBody),
    }
}

/// What one exchange needs besides the request.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The rule's policy.
    pub policy: &'a RetryPolicy,
    /// The Backend (endpoints and budget).
    pub target: &'a BackendTarget,
    /// Bound of each try ([`UNBOUNDED`](crate::deadline::UNBOUNDED): none of its own).
    pub per_try: Duration,
    /// Bound of the whole exchange, retries and backoff included, counted from `arrival`.
    pub total: Option<Duration>,
    /// When the request arrived: the total deadline includes what came before the first try
    /// (a wait for a breaker slot, buffering the body to replay).
    pub arrival: Instant,
    /// Proxy limits.
    pub limits: &'a ProxyLimits,
    /// Retry counters.
    pub metrics: &'a Metrics,
    /// Retries this exchange sent (read after [`Exchange::send`], for its span).
    pub retried: AtomicU32,
}

impl Exchange<'_> {
    /// Sends the request (head `parts`, body `replay`: buffered, or recorded as it streams)
    /// to `endpoint`, retrying per policy. A streamed body is also kept for `copies` (mirrors)
    /// as it goes to the first try. Returns the outcome and, when it differs from the
    /// outcome's own, the response flag.
    pub async fn send(
        &self,
        mut endpoint: &Arc<EndpointPool>,
        parts: &Parts,
        replay: Replay,
        copies: Copies,
    ) -> (Result<Response<Body>, ProxyError>, Option<&'static str>) {
        // A deadline past what an `Instant` can hold is no deadline.
        let deadline = self.total.and_then(|total| self.arrival.checked_add(total));
        self.target.policy.budget.deposit();
        let grpc = grpc::is_grpc(&parts.headers);
        let idle = if grpc {
            self.limits.stream_idle_timeout
        } else {
            self.limits.body_idle_timeout
        };
        let (mut body, mut first, recording) = match replay {
            Replay::Buffered(body) => (Some(body), None, None),
            Replay::Recorded(incoming) => {
                let idle = with_idle_timeout(incoming, idle);
                // Counted once, as it streams from the caller (replays are not received).
                let counted = access_log::count_received(&parts.extensions, idle);
                let (recorder, recording) = Recorder::new(counted);
                (
                    None,
                    Some(copies.wrap(body::boxed(recorder))),
                    Some(recording),
                )
            }
            Replay::Stream(incoming) => {
                let idle = with_idle_timeout(incoming, idle);
                let counted = access_log::count_received(&parts.extensions, idle);
                (None, Some(copies.wrap(counted)), None)
            }
        };
        let mut retries = 0;
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let try_timeout = remaining.map_or(self.per_try, |r| r.min(self.per_try));
            let total_expired = ProxyError::Timeout(self.total.unwrap_or(try_timeout));
            if try_timeout.is_zero() {
                return (Err(total_expired), None);
            }
            let mut request = match (first.take(), &body) {
                (Some(streamed), _) => head(parts, streamed),
                (None, Some(body)) => rebuild(parts, body),
                // Unreachable: without a kept body the loop never comes back.
                (None, None) => return (Err(total_expired), None),
            };
            self.target.policy.tag(&mut request);
            if retries > 0 {
                // The line names the endpoint of the last try that was sent.
                access_log::note_retry(&parts.extensions, endpoint.address());
            }
            let in_flight = self.target.start(endpoint);
            let outcome = forward(
                endpoint,
                request,
                try_timeout,
                None,
                self.limits,
                None,
                None,
            )
            .await;
            self.target.finish(endpoint, in_flight, &outcome);
            if matches!(outcome, Err(ProxyError::Timeout(_))) && Some(try_timeout) == remaining {
                // The route's deadline, not the try's, ran out.
                return (Err(total_expired), None);
            }
            let Some(retry_after) = self.retryable(&outcome, grpc) else {
                return (outcome, None);
            };
            if body.is_none() {
                let grace = remaining.map_or(RECORDING_GRACE, |r| r.min(RECORDING_GRACE));
                body = match &recording {
                    Some(recording) => recording.whole(grace).await,
                    None => None,
                };
                if body.is_none() {
                    // Part of the request is gone: it cannot be sent again.
                    return (outcome, None);
                }
            }
            let exhausted = (retries > 0).then_some(flags::RETRIES_EXHAUSTED);
            if retries >= self.policy.attempts() {
                return (outcome, exhausted);
            }
            let wait = self.policy.backoff(retries, retry_after);
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left <= wait) {
                return (outcome, exhausted);
            }
            if !self.target.policy.budget.try_withdraw() {
                self.metrics.retry_budget_exhausted.inc();
                return (outcome, None);
            }
            // Dropping the failed response closes (does not pool) its connection.
            drop(outcome);
            tokio::time::sleep(wait).await;
            retries += 1;
            self.retried.store(retries, Ordering::Relaxed);
            self.metrics.retries.inc();
            endpoint = self.target.endpoint_except(endpoint);
        }
    }

    /// `Some(Retry-After)` when the outcome is one the policy retries; `grpc` for gRPC calls,
    /// which are retried on gRPC statuses and on failures where nothing was processed only.
    fn retryable(
        &self,
        outcome: &Result<Response<Body>, ProxyError>,
        grpc: bool,
    ) -> Option<Option<Duration>> {
        match outcome {
            Ok(response) if grpc => {
                let code = grpc::retry_status(response.status(), response.headers())?;
                if !self.policy.retries_grpc(code) {
                    return None;
                }
                retry::grpc_pushback(response.headers()).ok()
            }
            Err(ProxyError::Upstream(upstream)) if grpc => {
                self.policy.retries_unsent(upstream).then_some(None)
            }
            Err(_) if grpc => None,
            Ok(response) => self
                .policy
                .retries_status(response.status().as_u16())
                .then(|| retry::retry_after(response.headers())),
            Err(error @ ProxyError::Upstream(upstream)) => {
                let status = error.classify().0.as_u16();
                self.policy.retries_error(upstream, status).then_some(None)
            }
            Err(error @ ProxyError::Timeout(_)) => self
                .policy
                .retries_status(error.classify().0.as_u16())
                .then_some(None),
            Err(_) => None,
        }
    }
}

/// A fresh request from a kept head and body (extensions are not carried over).
fn rebuild(parts: &Parts, body: &Bytes) -> Request<Body> {
    let body = if body.is_empty() {
        body::empty()
    } else {
        body::full(body.clone())
    };
    head(parts, body)
}

/// A request of head `parts` (extensions are not carried over) and `body`.
fn head(parts: &Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// A request body that keeps a copy of what passes through, up to [`RETRY_BUFFER`] bytes.
/// Dropped before the body's end (the upstream answered before it took the whole request,
/// e.g. a 503 refusal), it leaves the rest of the body to its [`Recording`], which reads it
/// when a retry needs the whole request.
struct Recorder {
    inner: Option<Body>,
    shared: Arc<Shared>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let open = self
            .shared
            .state
            .lock()
            .is_ok_and(|state| matches!(*state, State::Open(_)));
        if open {
            if let Ok(mut rest) = self.shared.rest.lock() {
                *rest = Some(inner);
            }
            self.shared.settled.notify_one();
        }
    }
}

/// What a [`Recording`] knows of the body.
#[derive(Debug)]
enum State {
    /// Still streaming; the bytes so far.
    Open(BytesMut),
    /// Ended whole, within the buffer.
    Complete(Bytes),
    /// Too big, with trailers, failed, or dropped before its end: not replayable.
    Lost,
}

struct Shared {
    state: Mutex<State>,
    /// The rest of the body, left by a [`Recorder`] dropped before the end.
    rest: Mutex<Option<Body>>,
    settled: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Records what one poll of the body gave (`ended`: the body says it is over).
    fn record(&self, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>, ended: bool) {
        match polled {
            Poll::Pending => {}
            Poll::Ready(None) => self.settle(|state| {
                if let State::Open(bytes) = state {
                    *state = State::Complete(std::mem::take(bytes).freeze());
                }
            }),
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.data_ref();
                self.settle(|state| {
                    let State::Open(bytes) = state else {
                        return;
                    };
                    match data {
                        Some(data) if (bytes.len() + data.len()) as u64 <= RETRY_BUFFER => {
                            bytes.extend_from_slice(data);
                            if ended {
                                *state = State::Complete(std::mem::take(bytes).freeze());
                            }
                        }
                        // Too big, or trailers (which a replay would not carry).
                        _ => *state = State::Lost,
                    }
                });
            }
            Poll::Ready(Some(Err(_))) => self.settle(|state| *state = State::Lost),
        }
    }

    /// Changes the state; wakes the waiter once it is no longer open.
    fn settle(&self, change: impl FnOnce(&mut State)) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        change(&mut state);
        if !matches!(*state, State::Open(_)) {
            self.settled.notify_one();
        }
    }
}

/// The copy a [`Recorder`] keeps.
#[derive(Debug)]
struct Recording(Arc<Shared>);

impl Recording {
    /// The whole body, once it has ended (waiting at most `grace` for that); `None` when it
    /// cannot be replayed.
    async fn whole(&self, grace: Duration) -> Option<Bytes> {
        let waited = tokio::time::timeout(grace, async {
            loop {
                match &*self.0.state.lock().ok()? {
                    State::Complete(bytes) => return Some(bytes.clone()),
                    State::Lost => return None,
                    State::Open(_) => {}
                }
                let rest = self.0.rest.lock().ok()?.take();
                match rest {
                    // The try let go of the body before its end: read the rest here.
                    Some(mut rest) => loop {
                        let polled =
                            std::future::poll_fn(|cx| match Pin::new(&mut rest).poll_frame(cx) {
                                Poll::Pending => Poll::Pending,
                                ready => Poll::Ready(ready),
                            })
                            .await;
                        let done = matches!(polled, Poll::Ready(None));
                        self.0.record(&polled, rest.is_end_stream());
                        let open = matches!(&*self.0.state.lock().ok()?, State::Open(_));
                        if done || !open {
                            break;
                        }
                    },
                    // The try still holds it: wait for its end, or for the try to let go.
                    None => self.0.settled.notified().await,
                }
            }
        });
        waited.await.ok().flatten()
    }
}

impl Recorder {
    fn new(inner: Body) -> (Self, Recording) {
        let state = if inner.is_end_stream() {
            State::Complete(Bytes::new())
        } else {
            State::Open(BytesMut::new())
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            rest: Mutex::new(None),
            settled: Notify::new(),
        });
        let recording = Recording(Arc::clone(&shared));
        (
            Self {
                inner: Some(inner),
                shared,
            },
            recording,
        )
    }
}

impl HttpBody for Recorder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        // The sender may stop polling once the body says it has ended.
        this.shared.record(&polled, inner.is_end_stream());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
