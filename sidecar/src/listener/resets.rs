//! The stream resets a downstream HTTP/2 connection sends, counted by error code.
//!
//! h2 refuses some of what a client sends at the stream level on its own, and tells neither
//! hyper nor the sidecar: it resets a malformed request's stream (PROTOCOL_ERROR), one opened
//! past `maxConcurrentStreams` (REFUSED_STREAM), one whose DATA overruns its window
//! (FLOW_CONTROL_ERROR). RELIABILITY wants every refusal counted, so the connection's writes
//! pass through [`ResetsCounted`], which follows the frames the sidecar sends
//! ([`crate::h2_frames`]) and reads the error code of each RST_STREAM; the refusals among
//! them ([`H2Refusal`]) are counted in `ficus_http_rejected_total{reason="h2_…"}` and logged at
//! debug (a client can cause them at will, as fast as it likes).
//!
//! The write side sees every reset, not only h2's refusals. The others are not counted:
//! `CANCEL` (a stream the proxy dropped before its response was complete, e.g. its upstream
//! went away), `INTERNAL_ERROR` (hyper: a response body failed), `NO_ERROR` (a complete
//! response before the whole request body: the client may stop sending), `STREAM_CLOSED`
//! (frames on a stream h2 had already forgotten). Two blind spots: when a response body fails
//! because its HTTP/2 upstream reset the stream, hyper passes the upstream's code on, so an
//! upstream's PROTOCOL_ERROR or FLOW_CONTROL_ERROR mid-response counts as a refusal here
//! (rare: our requests are well-formed and we keep to their windows); and h2's own 431 to a
//! request over `maxHeaderBytes` is a HEADERS frame whose status only HPACK decoding would
//! tell, so it is not counted, unless the request has a body still to come, which h2 then
//! resets with PROTOCOL_ERROR.
//!
//! A reset counts once its last byte is written. The cost per write is one pass over the
//! frame headers in the bytes written (9 bytes each; payloads are passed over, not copied):
//! no allocation, no lock; a count is an increment of a handle resolved at start.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h2_frames::{FrameCursor, FrameHeader, FrameVisitor, RST_STREAM};
use crate::telemetry::metrics::{H2Refusal, Metrics};

/// The server side of a downstream HTTP/2 connection, written through: counts the streams h2
/// refuses by the RST_STREAM frames it writes (module doc).
#[derive(Debug)]
pub struct ResetsCounted<I> {
    inner: I,
    cursor: FrameCursor,
    resets: Resets,
}

/// What the frames written tell: each RST_STREAM's error code.
#[derive(Debug)]
struct Resets {
    metrics: Arc<Metrics>,
    /// Whom the connection serves, for the log line.
    peer: SocketAddr,
    /// The error code of the RST_STREAM being written, as much of it as has passed.
    code: [u8; 4],
    code_len: usize,
}

impl<I> ResetsCounted<I> {
    /// Wraps `inner`, the connection to `peer`, whose first byte written is the start of the
    /// server's first frame; refusals count into `metrics`.
    pub fn new(inner: I, metrics: Arc<Metrics>, peer: SocketAddr) -> Self {
        Self {
            inner,
            cursor: FrameCursor::new(),
            resets: Resets {
                metrics,
                peer,
                code: [0; 4],
                code_len: 0,
            },
        }
    }

    /// Follows the frames through the first `written` bytes of `bufs` (a write took them).
    fn written(&mut self, bufs: &[io::IoSlice<'_>], mut written: usize) {
        for buf in bufs {
            if written == 0 {
                break;
            }
            let n = written.min(buf.len());
            self.cursor.feed(&buf[..n], &mut self.resets);
            written -= n;
        }
    }
}

impl Resets {
    /// Whether `header` is an RST_STREAM's (whose payload is its 4-byte error code; h2 never
    /// writes one of another length).
    fn is_reset(header: &FrameHeader) -> bool {
        header.kind == RST_STREAM && header.length == 4
    }
}

impl FrameVisitor for Resets {
    fn header(&mut self, header: &FrameHeader) -> bool {
        self.code_len = 0;
        Self::is_reset(header)
    }

    fn payload(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.code.len() - self.code_len);
        self.code[self.code_len..self.code_len + n].copy_from_slice(&bytes[..n]);
        self.code_len += n;
    }

    fn end(&mut self, header: &FrameHeader) {
        if !Self::is_reset(header) {
            return;
        }
        let code = u32::from_be_bytes(self.code);
        let Some(refusal) = H2Refusal::from_code(code) else {
            tracing::trace!(peer = %self.peer, stream = header.stream, code, "HTTP/2 stream reset");
            return;
        };
        self.metrics.h2_refused(refusal);
        tracing::debug!(
            peer = %self.peer, stream = header.stream, reason = refusal.as_str(),
            "HTTP/2 stream refused and reset"
        );
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ResetsCounted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ResetsCounted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.written(&[io::IoSlice::new(buf)], written);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            this.written(bufs, written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2_frames::tests::frame;
    use crate::h2_frames::SETTINGS;

    /// A writer that takes at most `max` bytes per write (vectored or not) and keeps them.
    struct Trickle {
        max: usize,
        taken: Vec<u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut n = 0;
            for buf in bufs {
                let k = (this.max - n).min(buf.len());
                this.taken.extend_from_slice(&buf[..k]);
                n += k;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn reset(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// What a server writes: its SETTINGS, responses (a DATA frame larger than any write
    /// here, with RST_STREAM-looking bytes inside), and resets of each kind: two
    /// REFUSED_STREAM, one PROTOCOL_ERROR, one FLOW_CONTROL_ERROR, and CANCEL, INTERNAL_ERROR,
    /// NO_ERROR and STREAM_CLOSED, which are not refusals.
    fn server_frames() -> Vec<Vec<u8>> {
        let mut data = Vec::new();
        for _ in 0..1_000 {
            data.extend_from_slice(&reset(1, 0x7));
        }
        vec![
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 5]),
            frame(SETTINGS, 0x1, 0, &[]),
            reset(11, 0x7),
            frame(0x1, 0x4, 1, b"\x88"),
            frame(0x0, 0, 1, &data),
            reset(3, 0x1),
            reset(5, 0x8),
            frame(0x0, 0x1, 1, &[]),
            reset(7, 0x2),
            reset(9, 0x0),
            reset(13, 0x7),
            reset(15, 0x3),
            reset(17, 0x5),
            frame(0x7, 0, 0, &[0, 0, 0, 17, 0, 0, 0, 0]),
        ]
    }

    fn counted(metrics: &Metrics) -> [u64; 3] {
        let text = String::from_utf8(metrics.encode()).unwrap();
        [
            "h2_refused_stream",
            "h2_protocol_error",
            "h2_flow_control_error",
        ]
        .map(|reason| {
            let series = format!("ficus_http_rejected_total{{reason=\"{reason}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&series)).unwrap();
            line[series.len()..].parse().unwrap()
        })
    }

    #[tokio::test]
    async fn refusals_are_counted_by_code_across_write_boundaries() {
        use tokio::io::AsyncWriteExt;
        let frames = server_frames();
        let stream = frames.concat();
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        for max in [1, 2, 4, 9, 10, 13, 100, 4096, usize::MAX] {
            // Plain writes of the whole stream, cut wherever the writer stops.
            let metrics = Metrics::new();
            let trickle = Trickle {
                max,
                taken: Vec::new(),
            };
            let mut io = ResetsCounted::new(trickle, Arc::clone(&metrics), peer);
            io.write_all(&stream).await.unwrap();
            assert_eq!(io.inner.taken, stream);
            assert_eq!(counted(&metrics), [2, 1, 1], "writes of {max}");

            // Vectored writes, a frame per slice (h2 writes a DATA payload as a slice of its
            // own), partly taken.
            let metrics = Metrics::new();
            let trickle = Trickle {
                max,
                taken: Vec::new(),
            };
            let mut io = ResetsCounted::new(trickle, Arc::clone(&metrics), peer);
            let mut at = (0, 0);
            while at.0 < frames.len() {
                let mut slices = vec![io::IoSlice::new(&frames[at.0][at.1..])];
                slices.extend(frames[at.0 + 1..].iter().map(|f| io::IoSlice::new(f)));
                let mut n = io.write_vectored(&slices).await.unwrap();
                while n > 0 {
                    let k = n.min(frames[at.0].len() - at.1);
                    n -= k;
                    at.1 += k;
                    if at.1 == frames[at.0].len() {
                        at = (at.0 + 1, 0);
                    }
                }
            }
            assert_eq!(io.inner.taken, stream);
            assert_eq!(counted(&metrics), [2, 1, 1], "vectored writes of {max}");
        }
    }

    #[tokio::test]
    async fn a_reset_counts_once_its_last_byte_is_written() {
        use tokio::io::AsyncWriteExt;
        let metrics = Metrics::new();
        let trickle = Trickle {
            max: usize::MAX,
            taken: Vec::new(),
        };
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let mut io = ResetsCounted::new(trickle, Arc::clone(&metrics), peer);
        let refused = reset(1, 0x7);
        io.write_all(&refused[..12]).await.unwrap();
        assert_eq!(counted(&metrics), [0, 0, 0]);
        io.write_all(&refused[12..]).await.unwrap();
        assert_eq!(counted(&metrics), [1, 0, 0]);
    }
}
