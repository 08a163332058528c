//! The header-read deadline of a downstream HTTP/1.1 connection, kept by the connection
//! instead of by hyper.
//!
//! hyper's `header_read_timeout` boxes a new timer for every request head it waits for,
//! registers it in tokio's timer wheel and removes it again once the head is in: an
//! allocation, two wheel updates under the timer lock and a clock read per request. Here a
//! connection has one [`Sleep`] for its life. Requests mark themselves in a [`HeadWatch`]
//! (a head came in; its response body ended), and the timer is looked at only when it fires:
//! with a request in flight, or a later idle start, it is pushed to the new deadline (tokio
//! only stores a later deadline and re-files the entry when the old one comes round).
//!
//! Two deadlines share the timer. Between requests the connection may stay idle for the
//! connection idle timeout (`connectionIdleTimeout`) after the previous response ended; once
//! a head has begun (its first bytes are in, read through [`HeadRead`]) it must be complete
//! within the header timeout (slowloris). The first head begins when the connection opens
//! (protocol detection has read its first bytes). Either way the connection is closed when the
//! deadline passes (hyper closes too; it answers no `408`, see `Server::on_error`). The clock
//! is read for a head's start only when the connection's task finds a head begun but not
//! complete: a head that arrives in one read is in (the request is being answered) before it
//! looks. Bytes read while a response is still going out (a pipelined next head) are not
//! counted as a head's start: such a head is timed from its next bytes, or as idle.
//!
//! An HTTP/2 connection has a watch of its own kind ([`HeadWatch::multiplexed`], counting its
//! streams) and [`IdleGoaway`]: once it has had no stream for the connection idle timeout it
//! is sent GOAWAY and closes (RELIABILITY: connection idle → GOAWAY and close). Without it a
//! client that answers PINGs could keep an idle connection forever.
//!
//! The same timer bounds a stream the client stops granting flow-control window to (no
//! `WINDOW_UPDATE`): the socket keeps taking bytes (PINGs, other streams), so the write-stall
//! bound of the socket (`stall`) never sees it, yet the stream holds its upstream connection.
//! A response body that hands hyper a data frame is *waiting* until hyper comes back for the
//! next one, which hyper does only once the frame has gone out within the client's window.
//! Waiting streams are counted by the generation of the connection's stall check they began
//! in; a check that finds one still waiting from before the previous check closes the
//! connection: a stream took no bytes for between one and two check periods.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1::UpgradeableConnection;
use hyper::service::HttpService;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::clock::Coarse;
use crate::deadline::{poll_unconstrained, TimerSlot};
use crate::telemetry::metrics::Metrics;

/// The resolution of tokio's timer.
const TICK: Duration = Duration::from_millis(1);

/// Whether a request of the connection is being answered, and since when it is idle.
#[derive(Debug)]
pub struct HeadWatch {
    /// When the connection was opened.
    opened: Instant,
    /// The same on the coarse clock: the origin of `idle_since`.
    opened_coarse: Coarse,
    /// A request head is in and its response has not ended yet (HTTP/1.1).
    busy: AtomicBool,
    /// HTTP/1.1: bytes came from the client since the last response ended ([`HeadRead`]).
    head_read: AtomicBool,
    /// HTTP/1.1: the connection has timed the start of a head that is not in yet (cleared
    /// when a head comes in).
    head_pending: AtomicBool,
    /// Streams whose response has not ended yet (HTTP/2: [`HeadWatch::multiplexed`]).
    streams: AtomicU32,
    /// Counts `streams` rather than setting `busy`.
    multiplexed: bool,
    /// When the last response ended: nanoseconds after `opened_coarse` on the coarse clock
    /// (0: none yet). It is stamped once per request, so it uses the cheap clock. The stamp
    /// is off by a tick at most, against a timeout of seconds.
    idle_since: AtomicU64,
    /// The timer the connection's requests borrow for their response-header deadline.
    timer: TimerSlot,
    /// HTTP/2: the stall checks the connection has made so far.
    generation: AtomicU32,
    /// HTTP/2: response bodies waiting for hyper to take their next frame, by the parity of
    /// the generation they began waiting in.
    waiting: [AtomicU32; 2],
    /// HTTP/2: whether the client's resets are judged ([`HeadWatch::resets_abusive`]).
    judge_resets: bool,
    /// HTTP/2, judged: streams begun on the connection so far.
    begun: AtomicU32,
    /// HTTP/2, judged: streams whose request was dropped before it had a response, within
    /// [`PREMATURE_LIFETIME`] of their start (the client reset them: RST_STREAM).
    cancelled: AtomicU32,
}

/// Streams a client may reset prematurely on one HTTP/2 connection before it is judged (with
/// [`HeadWatch::resets_abusive`]), as Envoy's premature-reset limit: half of its 500 streams.
/// h2 limits resets of streams the server has not picked up yet; this limits resets of
/// streams already handed to the proxy, whatever their pace (RELIABILITY H2-1).
const PREMATURE_RESETS: u32 = 250;
/// A stream reset later than this after it began is not premature (a client's deadline).
const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
/// How long a connection sent GOAWAY for its resets may finish its streams before it is
/// dropped (a client that keeps opening streams regardless is not waited for).
const RESET_FLOOD_GRACE: Duration = Duration::from_secs(1);

impl HeadWatch {
    /// A watch for a connection opened now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            opened_coarse: Coarse::now(),
            busy: AtomicBool::new(false),
            head_read: AtomicBool::new(false),
            // The first head began when the connection opened.
            head_pending: AtomicBool::new(true),
            streams: AtomicU32::new(0),
            multiplexed: false,
            idle_since: AtomicU64::new(0),
            timer: TimerSlot::new(),
            generation: AtomicU32::new(0),
            waiting: [AtomicU32::new(0), AtomicU32::new(0)],
            judge_resets: false,
            begun: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
        })
    }

    /// A watch for an HTTP/2 connection opened now: it counts concurrent streams, and its
    /// timer is not lent to them. `judge_resets`: the client's premature resets may get it
    /// GOAWAY (not for a verified peer sidecar, whose resets are its callers' timeouts).
    pub fn multiplexed(judge_resets: bool) -> Arc<Self> {
        let mut watch = Self::new();
        if let Some(watch) = Arc::get_mut(&mut watch) {
            watch.multiplexed = true;
            watch.judge_resets = judge_resets;
        }
        watch
    }

    /// The connection's timer for response-header deadlines (HTTP/1.1, one request at a
    /// time; `None` for a multiplexed connection, whose streams run concurrently).
    pub fn timer(&self) -> Option<&TimerSlot> {
        (!self.multiplexed).then_some(&self.timer)
    }

    /// A request head came in (the service was called). The request ends when the returned
    /// [`Begun`] is dropped, or the response body it is handed to ([`Watched`]) ends: an
    /// HTTP/2 stream the client resets before its response is counted out too.
    pub fn begin(self: &Arc<Self>) -> Begun {
        let mut started = None;
        if self.multiplexed {
            self.streams.fetch_add(1, Ordering::Relaxed);
            if self.judge_resets {
                self.begun.fetch_add(1, Ordering::Relaxed);
                started = Some(Coarse::now());
            }
        } else {
            self.busy.store(true, Ordering::Relaxed);
            self.head_pending.store(false, Ordering::Relaxed);
        }
        Begun(Some(Arc::clone(self)), started)
    }

    /// HTTP/2: whether the client has reset at least [`PREMATURE_RESETS`] streams within
    /// [`PREMATURE_LIFETIME`] of their start and before their responses, and those are half
    /// of the streams it opened or more: a rapid reset however paced.
    pub fn resets_abusive(&self) -> bool {
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        cancelled >= PREMATURE_RESETS
            && u64::from(cancelled) * 2 >= u64::from(self.begun.load(Ordering::Relaxed))
    }

    /// The response of a request in flight ended (its body is done or dropped).
    fn end(&self) {
        let since = u64::try_from(self.opened_coarse.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_since.store(since, Ordering::Relaxed);
        if self.multiplexed {
            self.streams.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.head_read.store(false, Ordering::Relaxed);
            self.busy.store(false, Ordering::Relaxed);
        }
    }

    /// HTTP/1.1: whether a head has begun (bytes came in since the last response ended) that
    /// the connection has not timed yet; it is timed from now on.
    fn head_begun(&self) -> bool {
        if self.busy.load(Ordering::Relaxed)
            || !self.head_read.load(Ordering::Relaxed)
            || self.head_pending.load(Ordering::Relaxed)
        {
            return false;
        }
        self.head_pending.store(true, Ordering::Relaxed);
        true
    }

    /// HTTP/1.1: what the connection waits for, as [`Waiting`].
    fn waiting(&self, idle: Duration) -> Waiting {
        if self.busy.load(Ordering::Relaxed) {
            Waiting::Response
        } else if self.head_pending.load(Ordering::Relaxed) {
            Waiting::Head
        } else {
            let since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
            Waiting::Idle(self.opened.checked_add(since + idle))
        }
    }

    /// When the next request head must have arrived, or `None` while a request is answered.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let busy = if self.multiplexed {
            self.streams.load(Ordering::Relaxed) > 0
        } else {
            self.busy.load(Ordering::Relaxed)
        };
        if busy {
            return None;
        }
        let since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(self.opened + since + timeout)
    }

    /// A response body handed hyper a data frame: it waits until hyper polls it again.
    /// Returns the generation to hand back to [`HeadWatch::resume`].
    fn wait(&self) -> u32 {
        let generation = self.generation.load(Ordering::Relaxed);
        self.waiting[generation as usize & 1].fetch_add(1, Ordering::Relaxed);
        generation
    }

    /// A response body that waited since `generation` was polled again (or dropped).
    fn resume(&self, generation: u32) {
        self.waiting[generation as usize & 1].fetch_sub(1, Ordering::Relaxed);
    }

    /// One stall check: whether a body has waited since before the previous check. If none
    /// has, a new generation begins (in the slot of the one just found empty).
    fn stalled(&self) -> bool {
        let generation = self.generation.load(Ordering::Relaxed);
        let previous = generation.wrapping_sub(1) as usize & 1;
        if self.waiting[previous].load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.generation
            .store(generation.wrapping_add(1), Ordering::Relaxed);
        false
    }
}

/// What an HTTP/1.1 connection is waiting for.
enum Waiting {
    /// A request is being answered: its own timeouts bound it.
    Response,
    /// The rest of a head that has begun: the header timeout from its start.
    Head,
    /// A next request: until the deadline (`None`: no limit `Instant` can hold).
    Idle(Option<Instant>),
}

/// A request counted in its connection's [`HeadWatch`] until this is dropped or handed to
/// the response body ([`Watched::new`]).
/// The second field: when the stream began, on a connection whose resets are judged.
#[derive(Debug)]
pub struct Begun(Option<Arc<HeadWatch>>, Option<Coarse>);

impl Begun {
    /// The connection's timer for response-header deadlines, as [`HeadWatch::timer`].
    pub fn timer(&self) -> Option<&TimerSlot> {
        self.0.as_deref().and_then(HeadWatch::timer)
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            // Dropped before a response was handed over: on HTTP/2, the client reset the
            // stream (or the connection went).
            if self
                .1
                .is_some_and(|started| started.elapsed() < PREMATURE_LIFETIME)
            {
                watch.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            watch.end();
        }
    }
}

pin_project! {
    /// A response body that ends its request in a [`HeadWatch`] when it is done or dropped.
    /// On an HTTP/2 connection it also tells the watch when hyper holds a frame of it
    /// (waiting for the client's window).
    pub struct Watched<B> {
        #[pin]
        inner: B,
        watch: Option<Arc<HeadWatch>>,
        // HTTP/2: the generation it has waited since, after handing hyper a data frame.
        waiting: Option<u32>,
    }

    impl<B> PinnedDrop for Watched<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(watch) = this.watch.take() {
                if let Some(generation) = this.waiting.take() {
                    watch.resume(generation);
                }
                watch.end();
            }
        }
    }
}

impl<B> Watched<B> {
    /// Wraps `inner`, the response body of the request `begun`, which it now ends.
    pub fn new(inner: B, mut begun: Begun) -> Self {
        Self {
            inner,
            watch: begun.0.take(),
            waiting: None,
        }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let Some(watch) = this.watch.as_deref() else {
            return this.inner.poll_frame(cx);
        };
        if let Some(generation) = this.waiting.take() {
            watch.resume(generation);
        }
        let frame = this.inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Ready(None) => {
                if let Some(watch) = this.watch.take() {
                    watch.end();
                }
            }
            // hyper comes back for the next frame once this one is within the window; the
            // last one (end of stream) it does not come back for.
            Poll::Ready(Some(Ok(data)))
                if watch.multiplexed && data.is_data() && !this.inner.is_end_stream() =>
            {
                *this.waiting = Some(watch.wait());
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The downstream socket of an HTTP/1.1 connection, telling its [`HeadWatch`] when bytes
    /// come in (so that a head that has begun is timed by the header timeout, not the idle
    /// one).
    pub struct HeadRead<I> {
        #[pin]
        inner: I,
        watch: Arc<HeadWatch>,
    }
}

impl<I> HeadRead<I> {
    /// Wraps `inner`, reporting to `watch`.
    pub fn new(inner: I, watch: Arc<HeadWatch>) -> Self {
        Self { inner, watch }
    }
}

impl<I: AsyncRead> AsyncRead for HeadRead<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.head_read.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for HeadRead<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// How a [`HeadTimed`] connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// hyper ended it with an error.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// A request head that had begun was not complete in time.
    #[error("no complete request head within {0:?}")]
    HeaderTimeout(Duration),
    /// No request began for the connection idle timeout.
    #[error("no request for {0:?}")]
    IdleTimeout(Duration),
    /// An HTTP/2 stream's response took no bytes (no window from the client) for this long.
    #[error("a response stream took no bytes for {0:?}")]
    Stalled(Duration),
    /// An HTTP/2 client sent GOAWAY for its premature resets (counted then) had not ended
    /// this long after it.
    #[error("still open {0:?} after a GOAWAY for its premature stream resets")]
    ResetFlood(Duration),
}

pin_project! {
    /// An HTTP/1.1 connection future with its header-read and idle deadlines.
    pub struct HeadTimed<C> {
        #[pin]
        connection: C,
        #[pin]
        sleep: Sleep,
        watch: Arc<HeadWatch>,
        timeout: Duration,
        idle: Duration,
        // When the head being read must be complete (while the watch has one pending).
        head_deadline: Instant,
        // The sleep holds this task's waker and has not fired since.
        armed: bool,
    }
}

impl<C> HeadTimed<C> {
    /// Bounds each request head of `connection` (whose service reports to `watch`) by
    /// `timeout` from its first bytes, and the wait for a next request by `idle`.
    pub fn new(connection: C, watch: Arc<HeadWatch>, timeout: Duration, idle: Duration) -> Self {
        let deadline = watch.opened + timeout;
        Self {
            connection,
            sleep: tokio::time::sleep_until(deadline),
            watch,
            timeout,
            idle,
            head_deadline: deadline,
            armed: false,
        }
    }
}

/// A server connection future that can be asked to finish the requests it has in flight and
/// close (drain): hyper's HTTP/1.1 and HTTP/2 connections, and the wrappers here.
pub trait Graceful: Future {
    /// Asks the connection to finish its requests in flight and close.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, E, B> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

impl<C: Graceful<Output = hyper::Result<()>>> Graceful for HeadTimed<C> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().connection.graceful_shutdown();
    }
}

impl<C> Future for HeadTimed<C>
where
    C: Future<Output = hyper::Result<()>>,
{
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.connection.poll(cx) {
            return Poll::Ready(result.map_err(Ended::from));
        }
        // A head begun but not complete: it has the header timeout from now. The timer, set
        // for the idle deadline, is brought forward.
        if this.watch.head_begun() {
            let deadline = Instant::now() + *this.timeout;
            *this.head_deadline = deadline;
            if deadline < this.sleep.deadline() {
                this.sleep.as_mut().reset(deadline);
                *this.armed = false;
            }
        }
        // An armed timer wakes this task when it fires; until then there is nothing to check.
        if *this.armed && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if poll_unconstrained(this.sleep.as_mut(), cx).is_pending() {
                *this.armed = true;
                return Poll::Pending;
            }
            let now = Instant::now();
            // Within the timer's resolution (1 ms) counts as passed: no re-arming for a
            // rounding difference between tokio's ticks and the clock.
            let (deadline, ended) = match this.watch.waiting(*this.idle) {
                // A request is being answered: its own timeouts bound it; look again later.
                Waiting::Response => (now + *this.timeout, None),
                Waiting::Head => (
                    *this.head_deadline,
                    Some(Ended::HeaderTimeout(*this.timeout)),
                ),
                Waiting::Idle(Some(deadline)) => (deadline, Some(Ended::IdleTimeout(*this.idle))),
                // No limit: look again (a head may begin) in a while.
                Waiting::Idle(None) => (now + *this.timeout, None),
            };
            match ended {
                Some(ended) if deadline <= now + TICK => return Poll::Ready(Err(ended)),
                _ => this.sleep.as_mut().reset(deadline),
            }
        }
    }
}

pin_project! {
    /// An HTTP/2 connection future that sends GOAWAY once the connection has had no stream
    /// for `idle`, then runs until the connection closes; and that ends the connection when
    /// one of its responses has waited for the client's window for over `stall`.
    pub struct IdleGoaway<C> {
        #[pin]
        connection: C,
        #[pin]
        sleep: Sleep,
        watch: Arc<HeadWatch>,
        idle: Duration,
        // The period of the stall checks.
        stall: Duration,
        // GOAWAY was sent; the timer is done with.
        closing: bool,
        // The client's resets ([`HeadWatch::resets_abusive`]) got it GOAWAY: when it is
        // dropped if it has not ended by then.
        reset_flood: Option<Instant>,
        // Where such a GOAWAY is counted, and whom it went to.
        metrics: Arc<Metrics>,
        peer: SocketAddr,
    }
}

impl<C> IdleGoaway<C> {
    /// Closes `connection` (whose service reports to `watch`, a multiplexed one) after `idle`
    /// without a stream, or once a response has waited for window for between `stall` and
    /// twice that.
    pub fn new(
        connection: C,
        watch: Arc<HeadWatch>,
        (idle, stall): (Duration, Duration),
        (metrics, peer): (Arc<Metrics>, SocketAddr),
    ) -> Self {
        let first = watch.opened.checked_add(idle.min(stall));
        Self {
            connection,
            sleep: tokio::time::sleep_until(first.unwrap_or(watch.opened)),
            closing: first.is_none(),
            reset_flood: None,
            metrics,
            peer,
            watch,
            idle,
            stall,
        }
    }
}

impl<C: Graceful<Output = hyper::Result<()>>> Graceful for IdleGoaway<C> {
    /// Sends GOAWAY: the streams in flight finish, then the connection closes (drain).
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().connection.graceful_shutdown();
    }
}

impl<C: Graceful<Output = hyper::Result<()>>> Future for IdleGoaway<C> {
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Ended::from));
            }
            // Streams reset by the client are dropped (by their own tasks) while the
            // connection reads its frames; the check is one load per poll. The GOAWAY is a
            // graceful one (all hyper can send), and a client that goes on opening streams
            // regardless has the connection dropped after a short grace.
            if this.reset_flood.is_none() && this.watch.resets_abusive() {
                let dropped_at = Instant::now() + RESET_FLOOD_GRACE;
                *this.reset_flood = Some(dropped_at);
                this.metrics.h2_goaway_sent("premature_reset");
                tracing::info!(
                    peer = %this.peer, resets = PREMATURE_RESETS,
                    "HTTP/2 client reset most of its streams before their responses: GOAWAY"
                );
                this.connection.as_mut().graceful_shutdown();
                if *this.closing || dropped_at < this.sleep.deadline() {
                    this.sleep.as_mut().reset(dropped_at);
                }
                continue;
            }
            // After an idle GOAWAY the timer is done with, unless a reset flood's grace runs.
            let timed = !*this.closing || this.reset_flood.is_some();
            if !timed || poll_unconstrained(this.sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            if this
                .reset_flood
                .is_some_and(|at| at <= Instant::now() + TICK)
            {
                return Poll::Ready(Err(Ended::ResetFlood(RESET_FLOOD_GRACE)));
            }
            // The client is not taking a stream's bytes: the connection is dropped, which
            // ends its streams and the upstream requests behind them.
            if this.watch.stalled() {
                return Poll::Ready(Err(Ended::Stalled(*this.stall)));
            }
            // The timer fires at least once per stall period (one generation each), and at
            // the end of a reset flood's grace.
            let now = Instant::now();
            let mut check = now + *this.stall;
            if let Some(dropped_at) = *this.reset_flood {
                check = check.min(dropped_at);
            }
            match this.watch.deadline(*this.idle) {
                Some(deadline) if deadline <= now + TICK => {
                    if !*this.closing {
                        *this.closing = true;
                        this.connection.as_mut().graceful_shutdown();
                    }
                    if this.reset_flood.is_some() {
                        this.sleep.as_mut().reset(check);
                    }
                    // Polled again: the GOAWAY goes out and the connection may end now.
                }
                Some(deadline) => this.sleep.as_mut().reset(deadline.min(check)),
                // Streams are open: their own timeouts bound them; look again later.
                None => this.sleep.as_mut().reset(check),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_abusive_at_the_limit_when_most_streams_are_reset() {
        let watch = HeadWatch::multiplexed(true);
        // Streams answered: handed to a response body, which ends them.
        for _ in 0..300 {
            drop(Watched::new(
                http_body_util::Empty::<Bytes>::new(),
                watch.begin(),
            ));
        }
        for _ in 0..PREMATURE_RESETS {
            drop(watch.begin());
        }
        assert!(
            !watch.resets_abusive(),
            "250 of 550: a client that cancels some"
        );
        for _ in 0..50 {
            drop(watch.begin());
        }
        assert!(watch.resets_abusive(), "300 of 600");
        // A verified peer's resets are not judged; HTTP/1.1 has no streams to reset.
        for watch in [HeadWatch::multiplexed(false), HeadWatch::new()] {
            for _ in 0..1000 {
                drop(watch.begin());
            }
            assert!(!watch.resets_abusive());
        }
    }

    #[test]
    // The coarse clock is the kernel's, not tokio's: no paused time for it.
    #[allow(clippy::disallowed_methods)]
    fn a_stream_reset_after_its_first_second_is_not_premature() {
        let watch = HeadWatch::multiplexed(true);
        let streams: Vec<_> = (0..PREMATURE_RESETS).map(|_| watch.begin()).collect();
        std::thread::sleep(PREMATURE_LIFETIME + Duration::from_millis(100));
        drop(streams);
        assert!(!watch.resets_abusive(), "client deadlines, not a flood");
    }

    #[test]
    fn a_body_waiting_across_two_checks_is_a_stall() {
        let watch = HeadWatch::multiplexed(true);
        let _waiting = watch.wait();
        // The first check may come right after the wait began: not a stall yet.
        assert!(!watch.stalled());
        assert!(watch.stalled(), "waited for a whole check period");
    }

    #[test]
    fn bodies_that_hyper_comes_back_for_are_not_stalls() {
        let watch = HeadWatch::multiplexed(true);
        for _ in 0..10 {
            // A stream that keeps moving, waiting in every period, but never for a whole one.
            let waiting = watch.wait();
            assert!(!watch.stalled());
            watch.resume(waiting);
            let waiting = watch.wait();
            watch.resume(waiting);
        }
        let waiting = watch.wait();
        assert!(!watch.stalled());
        watch.resume(waiting);
        assert!(!watch.stalled());
    }
}
