//! The body type of the proxy and a wrapper that bounds the gap between body frames.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Errors crossing a tower/hyper boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every request and response body the proxy handles.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors convert to [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The body stopped sending frames for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for more than {0:?}")]
pub struct BodyIdle(pub Duration);

pin_project! {
    /// Fails a body that keeps its reader waiting for a frame longer than `timeout`.
    ///
    /// Only waiting counts: the clock is read when the reader finds no frame ready (the
    /// first wait after a frame), not per frame, and the time the reader spends elsewhere
    /// (a slow client) is not blamed on this body. The timer is made at the first wait and
    /// moved to each later wait's deadline, which on a registered timer only stores it. A body
    /// whose frames are ready whenever asked (a small response read with its head) neither
    /// reads the clock nor touches the timer wheel.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
        waiting: bool,
        // Removes the mesh's own fields from trailers (a request body going to the app).
        strip_mesh_trailers: bool,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: None,
            timeout,
            waiting: false,
            strip_mesh_trailers: false,
        }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            let mut frame = frame.map(|f| f.map_err(Into::into));
            if *this.strip_mesh_trailers {
                if let Some(trailers) = frame
                    .as_mut()
                    .and_then(|f| f.as_mut().ok())
                    .and_then(Frame::trailers_mut)
                {
                    crate::proxy::headers::remove_mesh_fields(trailers);
                }
            }
            return Poll::Ready(frame);
        }
        if !*this.waiting {
            *this.waiting = true;
            // A timeout past what `Instant` holds means none.
            let Some(deadline) = Instant::now().checked_add(*this.timeout) else {
                return Poll::Pending;
            };
            match this.sleep.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(deadline),
                None => this.sleep.set(Some(tokio::time::sleep_until(deadline))),
            }
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyIdle(*this.timeout))))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The longest gap allowed in the body of a request with this head: `streamIdleTimeout` for a
/// gRPC call (a client stream may be quiet for minutes; gRPC needs HTTP/2, so an HTTP/1.x
/// request costs one comparison), `bodyIdleTimeout` for anything else.
pub fn request_idle(
    limits: &ficus_config::ProxyLimits,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Duration {
    if version == http::Version::HTTP_2 && crate::policy::grpc::is_grpc(headers) {
        limits.stream_idle_timeout
    } else {
        limits.body_idle_timeout
    }
}

/// Boxes `body`, bounding gaps between frames; a body already complete becomes [`empty`]
/// (a box of nothing allocates nothing).
pub fn with_idle_timeout<B>(body: B, timeout: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    idle_bounded(body, timeout, false)
}

fn idle_bounded<B>(body: B, timeout: Duration, strip_mesh_trailers: bool) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        empty()
    } else {
        let mut body = IdleTimeout::new(body, timeout);
        body.strip_mesh_trailers = strip_mesh_trailers;
        body.boxed_unsync()
    }
}

/// [`with_idle_timeout`] for a request body going to the app: its trailers lose the fields
/// only sidecars may set, as its head did in
/// [`prepare`](crate::proxy::forward::prepare) (an app must not find a forged
/// `x-ficus-peer-identity` there either).
pub fn request_to_app<B>(body: B, timeout: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    idle_bounded(body, timeout, true)
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    fn channel() -> (
        Sender,
        Pin<Box<IdleTimeout<impl HttpBody<Data = Bytes, Error = BoxError>>>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (
            tx,
            Box::pin(IdleTimeout::new(
                StreamBody::new(stream),
                Duration::from_secs(5),
            )),
        )
    }

    #[tokio::test]
    async fn request_trailers_to_the_app_lose_the_mesh_fields() {
        let trailers = || {
            let mut t = http::HeaderMap::new();
            t.insert("x-ficus-peer-identity", "spiffe://forged".parse().unwrap());
            t.insert("x-forwarded-client-cert", "By=x".parse().unwrap());
            t.insert("grpc-status", "0".parse().unwrap());
            t
        };
        let frames = || {
            futures_util::stream::iter([
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                Ok(Frame::trailers(trailers())),
            ])
        };
        let to_app = request_to_app(StreamBody::new(frames()), Duration::from_secs(5));
        let seen = to_app.collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen["grpc-status"], "0");
        // Any other body keeps its trailers as they are.
        let other = with_idle_timeout(StreamBody::new(frames()), Duration::from_secs(5));
        let seen = other.collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(seen, trailers());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_the_idle_timeout() {
        let (_tx, mut body) = channel();
        let started = Instant::now();
        let frame = body.frame().await.expect("an error frame");
        assert!(frame.unwrap_err().is::<BodyIdle>());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn frames_reset_the_timer() {
        let (tx, mut body) = channel();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_away_is_not_idle_time() {
        let (tx, mut body) = channel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        // The reader is busy for twice the timeout (a slow client), then waits 4 s.
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await;
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "b");
    }
}
