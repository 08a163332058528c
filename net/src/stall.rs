//! A downstream that takes no bytes: writes to it fail after a bound instead of waiting
//! forever (RELIABILITY: every network wait has a timeout).
//!
//! A client that sends a request and then stops reading (a zero TCP window, kept alive by
//! the kernel's window probes) would otherwise hold its connection, the upstream connection
//! its response comes from, and any breaker or pool place, for as long as it likes: hyper
//! just waits for the socket to become writable. [`WriteStall`] bounds that wait. The timer
//! exists only once a write has had to wait, and it is only re-armed when a write waits again
//! after one that made progress, so a healthy connection pays a flag per write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest a downstream may take no bytes at all before its connection is closed (Envoy's
/// stream idle timeout), or the connection idle timeout when that is shorter.
pub const MAX_WRITE_STALL: Duration = Duration::from_secs(300);

/// The write-stall bound of one connection.
#[derive(Debug)]
pub struct WriteStall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` counts the current stall (it may hold an old deadline otherwise).
    armed: bool,
}

impl WriteStall {
    /// Writes fail once the peer has taken nothing for `limit`.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Passes a write's (or flush's) outcome on: progress ends a stall; a write that has to
    /// wait starts one, or fails with `TimedOut` once the current one has lasted the limit.
    pub fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = |limit| Instant::now().checked_add(limit);
        let timer = match (&mut self.timer, self.armed) {
            (Some(timer), true) => timer,
            (slot, _) => {
                let Some(deadline) = deadline(self.limit) else {
                    return Poll::Pending;
                };
                self.armed = true;
                match slot {
                    Some(timer) => {
                        timer.as_mut().reset(deadline);
                        timer
                    }
                    None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no bytes for {:?}", self.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream whose writes fail once its peer has taken no bytes for a limit ([`WriteStall`]).
#[derive(Debug)]
pub struct StallBounded<I> {
    inner: I,
    stall: WriteStall,
}

impl<I> StallBounded<I> {
    /// Wraps `inner`: a write that waits for `limit` without progress fails with `TimedOut`.
    pub fn new(inner: I, limit: Duration) -> Self {
        Self {
            inner,
            stall: WriteStall::new(limit),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallBounded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallBounded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.stall.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_fails_the_write_at_the_limit() {
        let (a, _b) = tokio::io::duplex(64);
        let mut writer = StallBounded::new(a, Duration::from_secs(5));
        let started = Instant::now();
        let error = writer.write_all(&[7; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut writer = StallBounded::new(a, Duration::from_secs(5));
        // 64 bytes every 3 s: each stall is shorter than the limit, their sum far longer.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                got += b.read(&mut chunk).await.unwrap();
            }
        });
        writer.write_all(&[7; 1024]).await.unwrap();
        reader.await.unwrap();
    }
}
