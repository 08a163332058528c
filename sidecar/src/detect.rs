//! Protocol detection on a downstream connection: HTTP/2 prior knowledge or HTTP/1.
//!
//! We read until the bytes either stop matching the HTTP/2 connection preface or complete
//! it, within a timeout (a peer that sends nothing is closed, RELIABILITY row RES-1), then
//! replay what we read to the chosen HTTP server through [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a downstream connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake (first byte 0x16, a handshake record).
    Tls,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Why detection failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectError {
    /// Nothing decisive arrived within the timeout.
    #[error("no protocol detected within {0:?}")]
    Timeout(Duration),
    /// The peer closed before sending anything decisive.
    #[error("connection closed before a request")]
    Closed,
    /// Reading failed.
    #[error("reading failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads the start of `stream` and decides. Returns the protocol and the bytes read.
pub async fn detect<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Protocol, Vec<u8>), DetectError>
where
    S: AsyncRead + Unpin,
{
    let mut read = Vec::with_capacity(1024);
    let decided = tokio::time::timeout(timeout, async {
        loop {
            if stream.read_buf(&mut read).await? == 0 {
                return Err(DetectError::Closed);
            }
            if let Some(protocol) = decide(&read) {
                return Ok(protocol);
            }
        }
    })
    .await
    .map_err(|_| DetectError::Timeout(timeout))??;
    Ok((decided, read))
}

/// The protocol `start` shows, or `None` if it is a proper prefix of the HTTP/2 preface.
pub fn decide(start: &[u8]) -> Option<Protocol> {
    if start.first() == Some(&0x16) {
        return Some(Protocol::Tls);
    }
    let common = start.len().min(PREFACE.len());
    if start[..common] != PREFACE[..common] {
        Some(Protocol::Http1)
    } else if start.len() >= PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// An IO that first yields `prefix`, then reads from `inner`; writes go to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decide(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"P"), None);
        assert_eq!(decide(b"POST"), Some(Protocol::Http1));
        assert_eq!(decide(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(decide(PREFACE), Some(Protocol::Http2));
        assert_eq!(decide(&[0x16, 0x03, 0x01]), Some(Protocol::Tls));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_and_bytes_are_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let silent = detect(&mut server, Duration::from_secs(1)).await;
        assert!(matches!(silent, Err(DetectError::Timeout(_))));
        client.write_all(b"GET /").await.unwrap();
        let (protocol, read) = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        client.write_all(b" HTTP/1.1").await.unwrap();
        drop(client);
        let mut replayed = Prefixed::new(read, server);
        let mut all = String::new();
        replayed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1");
    }

    proptest! {
        /// Any input decides as HTTP/2 exactly when it starts with the whole preface.
        #[test]
        fn only_the_full_preface_is_http2(start in prop::collection::vec(any::<u8>(), 1..40)) {
            match decide(&start) {
                Some(Protocol::Http2) => prop_assert!(start.starts_with(PREFACE)),
                Some(Protocol::Tls) => prop_assert_eq!(start[0], 0x16),
                Some(Protocol::Http1) => prop_assert!(!PREFACE.starts_with(&start[..start.len().min(24)]) ),
                None => prop_assert!(PREFACE.starts_with(&start)),
            }
        }
    }
}
