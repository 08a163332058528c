//! RequestMirror: a copy of a share of a rule's requests goes to another Backend, marked with a
//! `-shadow` suffix on its Host/`:authority` (as Envoy does); the answer is discarded.
//!
//! The mirror never slows or fails the main request: the copy is sent from its own task, a
//! semaphore caps copies in flight per mirror Backend (past it copies are dropped and counted,
//! never queued; the semaphore is carried across config swaps, so a swap grants no fresh
//! room), and each copy is bounded by the per-try timeout (by the Mesh's
//! `upstreamResponseTimeout` when the rule sets no limit: a copy never waits without one, or
//! copies to a hung mirror would hold every slot for good). A body already in memory (buffered
//! for retries) is copied at once. A streamed body is copied as it passes to the main upstream
//! ([`Copies::wrap`]: its data copied out, up to [`COPY_LIMIT`] bytes), and the copy
//! is sent when the main request's body has ended; one that grows past the limit, carries
//! trailers, fails, or does not end within the copy's timeout is dropped and counted. The
//! main request never waits for the mirror. Protocol switches are not mirrored (the shadow
//! would accept a handshake that is then dropped).
//!
//! The copy is prepared for its own Backend: `x-ficus-orig-proto` (the far sidecar speaks
//! HTTP/1.1 to its app) is set when its endpoint is a peer sidecar (mTLS) and the mirror
//! Backend's protocol is `http`, and removed otherwise, whatever the main Backend needed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ficus_config::ProxyLimits;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{oneshot, Semaphore};

use super::forward::{forward, path_and_query, upstream_uri};
use super::headers::X_FICUS_ORIG_PROTO;
use crate::body::{self, Body, BoxError};
use crate::deadline::UNBOUNDED;
use crate::snapshot::BackendTarget;
use crate::telemetry::metrics::Metrics;

/// Copies in flight per mirror Backend before further copies are dropped.
pub const MAX_IN_FLIGHT: usize = 64;

/// The largest streamed body copied to a mirror (the retry buffer's size): with
/// [`MAX_IN_FLIGHT`] copies per mirror Backend, at most 4 MiB of copied data per mirror (up
/// to twice that in buffers while bodies of unknown length grow).
pub const COPY_LIMIT: u64 = crate::policy::retry::RETRY_BUFFER;

/// Where a streamed request body's copies go, one per mirror that took a copy (see
/// [`Copies::wrap`]).
#[derive(Debug, Default)]
pub struct Copies(Vec<oneshot::Sender<Bytes>>);

impl Copies {
    /// Adds the place of one copy ([`Mirror::spawn`]'s answer for a body still to come).
    pub fn push(&mut self, copy: oneshot::Sender<Bytes>) {
        self.0.push(copy);
    }

    /// `body`, keeping what passes for the copies (unchanged when there are none). A body
    /// of known length gets a buffer of that size at once.
    pub fn wrap(self, body: Body) -> Body {
        if self.0.is_empty() {
            return body;
        }
        let declared = body.size_hint().exact().unwrap_or(0).min(COPY_LIMIT);
        body::boxed(Tee {
            inner: body,
            kept: BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0)),
            copies: self.0,
        })
    }
}

/// A body that copies its data for the mirrors and hands them the whole body at its end.
/// Dropping the senders gives a copy up. The data is copied, not shared: a frame's `Bytes`
/// would pin the whole read buffer it was cut from, far more than its length.
struct Tee {
    inner: Body,
    kept: BytesMut,
    copies: Vec<oneshot::Sender<Bytes>>,
}

impl Tee {
    fn give_up(&mut self) {
        self.copies.clear();
        self.kept = BytesMut::new();
    }

    fn finish(&mut self) {
        let whole = std::mem::take(&mut self.kept).freeze();
        for copy in self.copies.drain(..) {
            let _ = copy.send(whole.clone());
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.copies.is_empty() {
            return polled;
        }
        match &polled {
            Poll::Pending => {}
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                // A copy whose mirror stopped waiting (its timeout) is not kept any longer.
                _ if {
                    this.copies.retain(|copy| !copy.is_closed());
                    this.copies.is_empty()
                } =>
                {
                    this.give_up();
                }
                Some(data) if (this.kept.len() + data.len()) as u64 <= COPY_LIMIT => {
                    this.kept.extend_from_slice(data);
                    // The end may come with the last data (a reader that knows the length
                    // stops there, without asking for the end of the stream).
                    if this.inner.is_end_stream() || this.inner.size_hint().exact() == Some(0) {
                        this.finish();
                    }
                }
                // Too big, or trailers (a copy would not carry them).
                _ => this.give_up(),
            },
            Poll::Ready(Some(Err(_))) => this.give_up(),
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

    /// Sends a copy of the request (head `parts` as prepared for the main upstream) to the
    /// mirror Backend in the background; `host` is the authority the caller used. `body`: the
    /// body when it is in memory; `None` for a body still streaming, whose copy is then
    /// awaited on the returned sender (see [`Copies`]). The copy, its wait for the body
    /// included, gets `timeout` (the rule's per-try timeout; else the Mesh's
    /// `upstreamResponseTimeout`). Nothing is returned when the copy is dropped: no room,
    /// or no healthy endpoint.
    pub fn spawn(
        &self,
        parts: &Parts,
        body: Option<Bytes>,
        host: &str,
        timeout: Duration,
        limits: &ProxyLimits,
        metrics: &Arc<Metrics>,
    ) -> Option<oneshot::Sender<Bytes>> {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            metrics.mirror_dropped.inc();
            return None;
        };
        // Every endpoint ejected: the shadow Backend is failing; a copy would only add to it.
        let Some(endpoint) = self.target.healthy_endpoint().map(Arc::clone) else {
            metrics.mirror_dropped.inc();
            return None;
        };
        let http2 = endpoint.is_http2();
        let shadow = shadow_authority(host);
        let Ok(uri) = upstream_uri(http2, &shadow, path_and_query(&parts.uri)) else {
            metrics.mirror_dropped.inc();
            return None;
        };
        let mut request = Request::new(body::empty());
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
        let timeout = if timeout == UNBOUNDED {
            limits.upstream_response_timeout
        } else {
            timeout
        };
        let (later, sender) = match body {
            Some(body) => {
                metrics.mirror_sent.inc();
                if !body.is_empty() {
                    *request.body_mut() = body::full(body);
                }
                (None, None)
            }
            None => {
                let (tx, rx) = oneshot::channel::<Bytes>();
                (Some((rx, Arc::clone(metrics))), Some(tx))
            }
        };
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let started = tokio::time::Instant::now();
            if let Some((later, metrics)) = later {
                match tokio::time::timeout(timeout, later).await {
                    Ok(Ok(body)) => {
                        metrics.mirror_sent.inc();
                        if !body.is_empty() {
                            *request.body_mut() = body::full(body);
                        }
                    }
                    _ => {
                        metrics.mirror_dropped.inc();
                        return;
                    }
                }
            }
            let left = timeout.saturating_sub(started.elapsed());
            // The response and its body are dropped unread.
            if let Err(error) = forward(&endpoint, request, left, None, &limits, None, None).await {
                tracing::debug!(%error, "mirrored request failed");
            }
        });
        sender
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
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn streamed(frames: Vec<Frame<Bytes>>) -> Body {
        body::boxed(StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, BoxError>),
        )))
    }

    async fn copy_of(frames: Vec<Frame<Bytes>>) -> Option<Bytes> {
        let (tx, copy) = oneshot::channel();
        let mut copies = Copies::default();
        copies.push(tx);
        let sent: Vec<u8> = frames
            .iter()
            .filter_map(Frame::data_ref)
            .flat_map(|data| data.iter().copied())
            .collect();
        let passed = copies.wrap(streamed(frames)).collect().await.unwrap();
        assert_eq!(passed.to_bytes(), sent, "the main body passes whole");
        copy.await.ok()
    }

    #[tokio::test]
    async fn a_streamed_body_is_copied_whole_within_the_limit() {
        let frames = vec![
            Frame::data(Bytes::from("ab")),
            Frame::data(Bytes::from("cd")),
        ];
        assert_eq!(copy_of(frames).await.unwrap(), "abcd");
        assert_eq!(copy_of(Vec::new()).await.unwrap(), "");
        let limit = COPY_LIMIT as usize;
        let at_limit = vec![Frame::data(Bytes::from(vec![1; limit]))];
        assert_eq!(copy_of(at_limit).await.unwrap().len(), limit);
        // Past the limit, or with trailers: the main body passes whole, no copy.
        let past = vec![
            Frame::data(Bytes::from(vec![1; limit])),
            Frame::data(Bytes::from("x")),
        ];
        assert_eq!(copy_of(past).await, None);
        let trailers = vec![
            Frame::data(Bytes::from("ab")),
            Frame::trailers(http::HeaderMap::new()),
        ];
        assert_eq!(copy_of(trailers).await, None);
    }

    /// A body of declared length that never says it has ended (HTTP/2 whose END_STREAM
    /// comes in a frame of its own): its reader stops at the length, and the copy is whole.
    #[tokio::test]
    async fn a_body_read_to_its_declared_length_is_copied() {
        struct Declared(std::collections::VecDeque<Bytes>);
        impl HttpBody for Declared {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
            }
            fn size_hint(&self) -> SizeHint {
                SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
            }
        }
        let (tx, copy) = oneshot::channel();
        let mut copies = Copies::default();
        copies.push(tx);
        let parts = [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")].into();
        let mut body = copies.wrap(body::boxed(Declared(parts)));
        for _ in 0..2 {
            body.frame().await.unwrap().unwrap();
        }
        assert_eq!(body.size_hint().exact(), Some(0));
        drop(body);
        assert_eq!(copy.await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_gives_no_copy() {
        let (copy_tx, copy) = oneshot::channel();
        let mut copies = Copies::default();
        copies.push(copy_tx);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut body = copies.wrap(body::boxed(StreamBody::new(stream)));
        tx.send(Ok(Frame::data(Bytes::from("ab")))).await.unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(copy.await.is_err());
    }

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
