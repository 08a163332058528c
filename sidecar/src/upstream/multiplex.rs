//! The HTTP/2 connections of an endpoint and the streams each carries.
//!
//! A peer caps the streams it takes at once (`SETTINGS_MAX_CONCURRENT_STREAMS`; our own
//! inbound server says 100). Requests beyond the cap on one connection would wait inside
//! hyper, unbounded, until their try timed out, and a hundred long streams (SSE, gRPC watches)
//! would starve everything else. So the pool counts the requests in flight on each connection
//! and opens another connection when every one is at its peer's cap, as Envoy does.
//!
//! hyper does not tell the peer's SETTINGS, so [`SettingsReader`] follows the frames the peer
//! sends (their 9-byte headers; payloads are passed over) and reads the cap from each SETTINGS
//! frame: from the first frame, which RFC 9113 §3.4 requires to be its SETTINGS, and from any
//! later one that changes it. A peer that does not advertise one counts as
//! [`DEFAULT_STREAM_LIMIT`].
//!
//! The connections opened beyond the first are closed once they have carried no request for
//! the upstream idle timeout ([`Http2Conns::sweep`]): a burst must not leave sixteen
//! connections per endpoint open for good. The first stays, as the endpoint's multiplexed
//! connection (pinged while idle when it goes to a peer sidecar).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;

use crate::body::{Body, BoxError};
use crate::clock::Coarse;
use crate::h2_frames::{FrameCursor, FrameHeader, FrameVisitor, SETTINGS};

/// Streams per connection when the peer did not say (no SETTINGS yet, or no
/// `MAX_CONCURRENT_STREAMS` in it, which means "unlimited"): our own inbound server's default,
/// and a common one (Envoy, nginx, Go's `net/http` allow 100 to 250).
pub const DEFAULT_STREAM_LIMIT: usize = 100;
/// Most HTTP/2 connections to one endpoint. Past this, requests share the least busy
/// connection and wait in it for a stream, as they did with one connection.
pub const MAX_CONNECTIONS: usize = 16;

/// One HTTP/2 connection of a pool.
#[derive(Debug)]
pub struct Http2Conn {
    /// Sends on the connection (its task runs on its own).
    pub sender: http2::SendRequest<Body>,
    /// Its stream count and cap.
    pub streams: Arc<Streams>,
    /// When a sweep first found it without requests since the sweep before.
    pub quiet_since: Option<Coarse>,
}

/// The HTTP/2 connections of an endpoint, the first opened first, and whether a task sweeps
/// them (under one lock, so that a connection added as the sweeper stops starts another).
#[derive(Debug, Default)]
pub struct Http2Conns {
    /// Requests go to the first with room under its peer's stream cap.
    pub conns: Vec<Http2Conn>,
    /// Whether a sweeper task is running for them.
    pub sweeping: bool,
}

impl Http2Conns {
    /// Drops closed connections, and those beyond the first live one that carried no
    /// request for `idle_timeout`: quiet at two sweeps that far apart with none in between
    /// (a request takes its slot under the pool's lock, so none can slip in as one is
    /// dropped). Its sender dropped, hyper closes the connection (GOAWAY) once its last
    /// stream ends. Returns whether more than one is left, and so another sweep is due.
    pub fn sweep(&mut self, now: Coarse, idle_timeout: Duration) -> bool {
        self.conns.retain(Http2Conn::is_open);
        let mut first = true;
        self.conns.retain_mut(|conn| {
            if std::mem::take(&mut first) {
                return true;
            }
            let used = conn.streams.used.swap(false, Ordering::Relaxed);
            if used || conn.streams.in_flight() > 0 {
                conn.quiet_since = None;
                return true;
            }
            let since = *conn.quiet_since.get_or_insert(now);
            now.saturating_duration_since(since) < idle_timeout
        });
        self.sweeping = self.conns.len() > 1;
        self.sweeping
    }
}

/// The streams of one connection: how many requests are in flight and how many the peer
/// takes at once.
#[derive(Debug)]
pub struct Streams {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Whether a request took a slot since the last sweep.
    used: AtomicBool,
}

impl Streams {
    /// A connection with no stream yet, at the default cap until the peer says otherwise.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(DEFAULT_STREAM_LIMIT),
            used: AtomicBool::new(false),
        })
    }

    /// Whether another request fits under the peer's cap.
    pub fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) < self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more request until the slot is dropped.
    pub fn take(self: &Arc<Self>) -> StreamSlot {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.used.store(true, Ordering::Relaxed);
        StreamSlot(Arc::clone(self))
    }
}

impl Http2Conn {
    /// Whether the connection still takes requests.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// A request counted on its connection: dropped when the request failed, or when its
/// response body ended or was dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<Streams>);

impl StreamSlot {
    /// The streams of the connection the request is counted on.
    pub fn streams(&self) -> &Arc<Streams> {
        &self.0
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/2 response body that frees its stream's slot when it ends.
pub struct Http2Body {
    inner: Incoming,
    slot: Option<StreamSlot>,
}

impl Http2Body {
    /// `inner`, counted by `slot` until it ends or is dropped.
    pub fn new(inner: Incoming, slot: StreamSlot) -> Self {
        Self {
            inner,
            slot: Some(slot),
        }
    }
}

impl HttpBody for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            self.slot = None;
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream side of an HTTP/2 connection, read through: follows the peer's frames and
/// sets its connection's stream cap from every SETTINGS frame ([`FrameScan`]).
pub struct SettingsReader<I> {
    io: I,
    scan: FrameScan,
}

/// Where the peer's frames begin and end as its bytes arrive, and the SETTINGS among them.
#[derive(Debug)]
struct FrameScan {
    cursor: FrameCursor,
    settings: SettingsFrames,
}

/// What the peer's frames tell: its SETTINGS, read whole, and the end of its first frame.
#[derive(Debug)]
struct SettingsFrames {
    streams: Arc<Streams>,
    /// Told when the first frame was read, or the stream ended first.
    first: Option<tokio::sync::oneshot::Sender<()>>,
    /// The payload of the SETTINGS frame being read, so far.
    payload: Vec<u8>,
}

/// The ACK flag of a SETTINGS frame (RFC 9113 §6.5).
const ACK: u8 = 0x1;
/// Setting identifier of `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Largest SETTINGS frame read (one lists a few settings of 6 bytes each); a larger one is
/// passed over, and h2 refuses it (our max frame size is 16 KiB).
const MAX_SETTINGS_FRAME: usize = 16 * 1024;

impl<I> SettingsReader<I> {
    /// Wraps `io`; `read` is told once the first frame was read (or the stream ended).
    pub fn new(io: I, streams: Arc<Streams>, read: tokio::sync::oneshot::Sender<()>) -> Self {
        Self {
            io,
            scan: FrameScan::new(streams, read),
        }
    }
}

impl FrameScan {
    fn new(streams: Arc<Streams>, first: tokio::sync::oneshot::Sender<()>) -> Self {
        Self {
            cursor: FrameCursor::new(),
            settings: SettingsFrames {
                streams,
                first: Some(first),
                payload: Vec::new(),
            },
        }
    }

    /// Takes bytes as read.
    fn feed(&mut self, bytes: &[u8]) {
        self.cursor.feed(bytes, &mut self.settings);
    }
}

impl SettingsFrames {
    /// Whether `header` starts a SETTINGS frame whose settings are read (not an ACK, not
    /// oversized).
    fn is_read(header: &FrameHeader) -> bool {
        header.kind == SETTINGS && header.flags & ACK == 0 && header.length <= MAX_SETTINGS_FRAME
    }

    /// Sets the cap from the SETTINGS payload read; one that leaves it out keeps it (RFC 9113
    /// §6.5: each setting keeps its value until changed).
    fn apply(&self) {
        for setting in self.payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            if id == MAX_CONCURRENT_STREAMS {
                // A cap of 0 still lets one request wait on the connection.
                let limit = usize::try_from(value).unwrap_or(usize::MAX).max(1);
                self.streams.limit.store(limit, Ordering::Relaxed);
            }
        }
    }

    /// A whole frame was read (or the stream ended): the first one tells the handshake.
    fn frame_read(&mut self) {
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
    }
}

impl FrameVisitor for SettingsFrames {
    fn header(&mut self, header: &FrameHeader) -> bool {
        Self::is_read(header)
    }

    fn payload(&mut self, bytes: &[u8]) {
        self.payload.extend_from_slice(bytes);
    }

    fn end(&mut self, header: &FrameHeader) {
        if Self::is_read(header) {
            self.apply();
            // A large (legal) SETTINGS frame does not keep its buffer for the connection's
            // life; the usual few settings fit in a small one.
            if self.payload.capacity() > 256 {
                self.payload = Vec::new();
            } else {
                self.payload.clear();
            }
        }
        self.frame_read();
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SettingsReader<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(result) = &polled {
            let read = &buf.filled()[before..];
            if result.is_err() || read.is_empty() {
                // The end of the stream (or an error) before the first frame tells too.
                this.scan.settings.frame_read();
            } else {
                this.scan.feed(read);
            }
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SettingsReader<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(u16, u32)], flags: u8) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in entries {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        crate::h2_frames::tests::frame(SETTINGS, flags, 0, &payload)
    }

    /// A frame of `frame_type` with `length` payload bytes (all 0xff, so that a scan that
    /// lost its place would read nonsense).
    fn frame(frame_type: u8, length: usize) -> Vec<u8> {
        crate::h2_frames::tests::frame(frame_type, 0, 1, &vec![0xff; length])
    }

    fn scan() -> (FrameScan, Arc<Streams>, tokio::sync::oneshot::Receiver<()>) {
        let streams = Streams::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        (FrameScan::new(Arc::clone(&streams), tx), streams, rx)
    }

    #[test]
    fn the_cap_is_read_from_the_first_settings_frame_in_pieces() {
        let (mut scan, streams, mut first) = scan();
        let frame = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 10)], 0);
        scan.feed(&frame[..5]);
        scan.feed(&frame[5..12]);
        assert!(
            first.try_recv().is_err(),
            "not told before the frame is whole"
        );
        scan.feed(&frame[12..]);
        assert_eq!(streams.limit.load(Ordering::Relaxed), 10);
        assert_eq!(first.try_recv(), Ok(()));
    }

    #[test]
    fn no_cap_or_an_ack_leaves_the_default() {
        for frame in [
            settings(&[(0x4, 65_535)], 0),
            settings(&[(MAX_CONCURRENT_STREAMS, 10)], ACK),
        ] {
            let (mut scan, streams, mut first) = scan();
            scan.feed(&frame);
            assert_eq!(streams.limit.load(Ordering::Relaxed), DEFAULT_STREAM_LIMIT);
            assert_eq!(first.try_recv(), Ok(()));
        }
    }

    /// The cap follows every SETTINGS frame among others (a DATA frame larger than a read,
    /// HEADERS, an empty frame, an ACK, one oversized frame passed over), whatever the sizes
    /// of the reads the bytes arrive in; a SETTINGS without the cap keeps it.
    #[test]
    fn later_settings_frames_change_the_cap_at_any_read_boundary() {
        let mut stream = settings(&[(MAX_CONCURRENT_STREAMS, 10)], 0);
        let mut expected = vec![(stream.len(), 10)];
        for (frames, cap) in [
            (vec![frame(0x1, 40), frame(0x0, 20_000)], 10),
            (vec![settings(&[(MAX_CONCURRENT_STREAMS, 3)], 0)], 3),
            (
                vec![
                    frame(0x8, 0),
                    settings(&[(MAX_CONCURRENT_STREAMS, 50)], ACK),
                ],
                3,
            ),
            (
                vec![frame(SETTINGS, MAX_SETTINGS_FRAME + 6), frame(0x0, 7)],
                3,
            ),
            (vec![settings(&[(0x4, 1 << 20)], 0)], 3),
            (
                vec![settings(&[(0x2, 0), (MAX_CONCURRENT_STREAMS, 0)], 0)],
                1,
            ),
            (
                vec![frame(0x0, 5), settings(&[(MAX_CONCURRENT_STREAMS, 200)], 0)],
                200,
            ),
        ] {
            for frame in frames {
                stream.extend_from_slice(&frame);
            }
            expected.push((stream.len(), cap));
        }
        for read_size in [1, 2, 5, 9, 13, 4096, 65_536] {
            let (mut scan, streams, _first) = scan();
            let mut at = 0;
            let mut checks = expected.iter().peekable();
            for piece in stream.chunks(read_size) {
                scan.feed(piece);
                at += piece.len();
                // Every frame ending at or before here has been read.
                let mut cap = None;
                while let Some(&&(end, value)) = checks.peek() {
                    if end > at {
                        break;
                    }
                    cap = Some(value);
                    checks.next();
                }
                if let Some(cap) = cap {
                    let limit = streams.limit.load(Ordering::Relaxed);
                    assert_eq!(limit, cap, "reads of {read_size}, at byte {at}");
                }
            }
            assert_eq!(streams.limit.load(Ordering::Relaxed), 200);
        }
    }

    #[test]
    fn a_slot_counts_until_dropped() {
        let streams = Streams::new();
        streams.limit.store(2, Ordering::Relaxed);
        let a = streams.take();
        assert!(streams.has_room());
        let b = streams.take();
        assert!(!streams.has_room());
        drop(a);
        assert!(streams.has_room());
        drop(b);
        assert_eq!(streams.in_flight(), 0);
    }
}
