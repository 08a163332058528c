//! The HTTP/2 connections of an endpoint and the streams each carries.
//!
//! A peer caps the streams it takes at once (`SETTINGS_MAX_CONCURRENT_STREAMS`; our own
//! inbound server says 100). Requests beyond the cap on one connection would wait inside
//! hyper, unbounded, until their try timed out, and a hundred long streams (SSE, gRPC watches)
//! would starve everything else. So the pool counts the requests in flight on each connection
//! and opens another connection when every one is at its peer's cap, as Envoy does.
//!
//! hyper does not tell the peer's SETTINGS, so [`SettingsReader`] reads the cap from the first
//! frame the peer sends, which RFC 9113 §3.4 requires to be its SETTINGS. A later SETTINGS
//! that changes the cap is not followed (h2 itself still honours it; the pool then only
//! opens connections late or early). A peer that does not advertise one counts as
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

/// An upstream I/O stream that reads `SETTINGS_MAX_CONCURRENT_STREAMS` from the first frame
/// the peer sends into [`Streams`], then passes bytes through untouched.
#[derive(Debug)]
pub struct SettingsReader<I> {
    io: I,
    parse: Option<FirstFrame>,
}

/// The first frame of the peer as it arrives.
#[derive(Debug)]
struct FirstFrame {
    bytes: Vec<u8>,
    streams: Arc<Streams>,
    read: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Frame type SETTINGS and its ACK flag (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Setting identifier of `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Largest first frame read (a SETTINGS frame lists at most a few settings of 6 bytes).
const MAX_FIRST_FRAME: usize = 16 * 1024;

impl<I> SettingsReader<I> {
    /// Wraps `io`; `read` is told once the first frame was read (or the stream ended).
    pub fn new(io: I, streams: Arc<Streams>, read: tokio::sync::oneshot::Sender<()>) -> Self {
        Self {
            io,
            parse: Some(FirstFrame {
                bytes: Vec::with_capacity(64),
                streams,
                read: Some(read),
            }),
        }
    }
}

impl FirstFrame {
    /// Takes bytes as read; whether the first frame is complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() < 9 {
            return false;
        }
        let length = usize::from(self.bytes[0]) << 16
            | usize::from(self.bytes[1]) << 8
            | usize::from(self.bytes[2]);
        if length > MAX_FIRST_FRAME {
            return true;
        }
        let Some(payload) = self.bytes.get(9..9 + length) else {
            return false;
        };
        if self.bytes[3] == SETTINGS && self.bytes[4] & ACK == 0 {
            for setting in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([setting[0], setting[1]]);
                let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                if id == MAX_CONCURRENT_STREAMS {
                    // A cap of 0 still lets one request wait on the connection.
                    let limit = usize::try_from(value).unwrap_or(usize::MAX).max(1);
                    self.streams.limit.store(limit, Ordering::Relaxed);
                }
            }
        }
        true
    }
}

impl Drop for FirstFrame {
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            let _ = read.send(());
        }
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
        if let (Poll::Ready(result), Some(parse)) = (&polled, this.parse.as_mut()) {
            let read = &buf.filled()[before..];
            // An error or the end of the stream ends the parse too.
            if result.is_err() || read.is_empty() || parse.feed(read) {
                this.parse = None;
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
        let length = entries.len() * 6;
        let mut frame = vec![0, 0, length as u8, SETTINGS, flags, 0, 0, 0, 0];
        for (id, value) in entries {
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&value.to_be_bytes());
        }
        frame
    }

    #[test]
    fn the_cap_is_read_from_the_first_settings_frame_in_pieces() {
        let streams = Streams::new();
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let mut first = FirstFrame {
            bytes: Vec::new(),
            streams: Arc::clone(&streams),
            read: Some(tx),
        };
        let frame = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 10)], 0);
        assert!(!first.feed(&frame[..5]));
        assert!(!first.feed(&frame[5..12]));
        assert!(first.feed(&frame[12..]));
        assert_eq!(streams.limit.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn no_cap_or_an_ack_leaves_the_default() {
        for frame in [
            settings(&[(0x4, 65_535)], 0),
            settings(&[(MAX_CONCURRENT_STREAMS, 10)], ACK),
        ] {
            let streams = Streams::new();
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let mut first = FirstFrame {
                bytes: Vec::new(),
                streams: Arc::clone(&streams),
                read: Some(tx),
            };
            assert!(first.feed(&frame));
            assert_eq!(streams.limit.load(Ordering::Relaxed), DEFAULT_STREAM_LIMIT);
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
