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
    /// Fails a body that sends no frame within `timeout` of the previous one (or of the start).
    ///
    /// Frames only record the time; the timer is polled only while the body waits, and
    /// re-armed only when it fires early (a frame came meanwhile). A body that never waits
    /// never touches the timer wheel, and a streaming body re-arms once per `timeout`, not once
    /// per frame.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        last_frame: Instant,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            sleep: tokio::time::sleep_until(now + timeout),
            timeout,
            last_frame: now,
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
            *this.last_frame = Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = *this.last_frame + *this.timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(Some(Err(Box::new(BodyIdle(*this.timeout)))));
            }
            // A frame arrived since the timer was set: wait for the rest of the new period.
            this.sleep.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Boxes `body`, bounding gaps between frames unless it is already complete.
pub fn with_idle_timeout<B>(body: B, timeout: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        boxed(body)
    } else {
        IdleTimeout::new(body, timeout).boxed_unsync()
    }
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
}
