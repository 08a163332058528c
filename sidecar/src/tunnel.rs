//! Byte tunnels (opaque TCP, upgraded HTTP connections) with an idle timeout and byte counts
//! that survive errors.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved by a tunnel, whether it ended cleanly or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Read from the first side (written to the second).
    pub forward: u64,
    /// Read from the second side (written to the first).
    pub backward: u64,
}

/// Counters a tunnel adds its bytes to as they move (not only when it ends, so a connection
/// that lasts hours shows its traffic as it goes).
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// Bytes read from the first side.
    pub forward: &'a IntCounter,
    /// Bytes read from the second side.
    pub backward: &'a IntCounter,
}

/// The bytes a running tunnel has moved so far, readable while it runs and after it was cut
/// mid-copy (its future dropped): the access-log line of an opaque TCP connection that the
/// drain timeout ends still has them.
#[derive(Debug, Default)]
pub struct Moved {
    forward: AtomicU64,
    backward: AtomicU64,
}

impl Moved {
    /// Bytes each way up to now.
    pub fn so_far(&self) -> Transferred {
        Transferred {
            forward: self.forward.load(Ordering::Relaxed),
            backward: self.backward.load(Ordering::Relaxed),
        }
    }

    fn total(&self) -> u64 {
        self.forward.load(Ordering::Relaxed) + self.backward.load(Ordering::Relaxed)
    }
}

/// Copies both ways between `a` and `b` until both sides have closed, an error occurs, or no
/// byte has moved in either direction for `idle` (checked every `idle`, so an idle tunnel
/// closes after between one and two periods). With `live`, bytes are counted there as they
/// move.
pub async fn copy_with_idle_timeout<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    live: Option<Live<'_>>,
) -> (Transferred, io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let moved = Moved::default();
    let result = copy_counted(a, b, idle, live, &moved).await;
    (moved.so_far(), result)
}

/// [`copy_with_idle_timeout`], counting into `moved`, which the caller can read even when this
/// future is dropped before it ends.
pub async fn copy_counted<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    live: Option<Live<'_>>,
    moved: &Moved,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a = Counted {
        inner: a,
        read: &moved.forward,
        live: live.map(|live| live.forward),
    };
    let mut b = Counted {
        inner: b,
        read: &moved.backward,
        live: live.map(|live| live.backward),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut seen = 0;
    loop {
        tokio::select! {
            result = &mut copy => break result.map(|_| ()),
            () = tokio::time::sleep(idle) => {
                let now = moved.total();
                if now == seen {
                    break Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"));
                }
                seen = now;
            }
        }
    }
}

/// Counts bytes read through it (and in `live`).
struct Counted<'a, S: ?Sized> {
    inner: &'a mut S,
    read: &'a AtomicU64,
    live: Option<&'a IntCounter>,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.fetch_add(n, Ordering::Relaxed);
            if let Some(live) = self.live {
                live.inc_by(n);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_close_and_report_bytes() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(async move {
            copy_with_idle_timeout(&mut a, &mut b, Duration::from_secs(10), None).await
        });
        a_peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).await.unwrap();
        b_peer.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        a_peer.read_exact(&mut got).await.unwrap();
        let started = tokio::time::Instant::now();
        let (transferred, result) = tunnel.await.unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            transferred,
            Transferred {
                forward: 5,
                backward: 2
            }
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_cut_mid_copy_leaves_its_counts() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let moved = Moved::default();
        {
            let copy = copy_counted(&mut a, &mut b, Duration::from_secs(10), None, &moved);
            tokio::pin!(copy);
            a_peer.write_all(b"hello").await.unwrap();
            b_peer.write_all(b"hi").await.unwrap();
            let mut got = [0u8; 5];
            tokio::select! {
                _ = &mut copy => panic!("the tunnel ended"),
                read = b_peer.read_exact(&mut got) => read.unwrap(),
            };
            let mut got = [0u8; 2];
            tokio::select! {
                _ = &mut copy => panic!("the tunnel ended"),
                read = a_peer.read_exact(&mut got) => read.unwrap(),
            };
            // Dropped here, both sides still open: as the runtime's shutdown drops it.
        }
        assert_eq!(
            moved.so_far(),
            Transferred {
                forward: 5,
                backward: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn active_tunnels_stay_open() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(async move {
            copy_with_idle_timeout(&mut a, &mut b, Duration::from_secs(10), None).await
        });
        let mut got = [0u8; 1];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            a_peer.write_all(b"x").await.unwrap();
            b_peer.read_exact(&mut got).await.unwrap();
        }
        drop(a_peer);
        drop(b_peer);
        let (transferred, result) = tunnel.await.unwrap();
        assert!(result.is_ok(), "both sides closed cleanly: {result:?}");
        assert_eq!(transferred.forward, 10);
    }
}
