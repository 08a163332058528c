//! Draining, in two phases, as a pod's shutdown needs it.
//!
//! 1. **Inbound** ([`DrainSignal::drain`]: SIGTERM, SIGINT, `POST /drain`): readiness turns
//!    503, the inbound listeners stop accepting, and inbound connections finish their
//!    in-flight requests (HTTP/1 `Connection: close`, HTTP/2 GOAWAY). The outbound side keeps
//!    serving: the app may still be sending requests during its own shutdown (a native
//!    sidecar is stopped after the app; a plain container gets SIGTERM together with it).
//! 2. **Everything** ([`DrainSignal::stop`]): the outbound listeners (and the opaque TCP
//!    `listen:` ones) stop too and outbound connections finish in-flight work. The process
//!    enters it once inbound is drained and the outbound side has been quiet — no connection
//!    open and none opened — for the quiet period (what Istio's
//!    `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` does), at the drain timeout, or at once on
//!    `/quitquitquit` (a Job's app is done).
//!
//! The outbound side's activity is counted per connection by [`Activity`], two atomic
//! operations per connection and nothing per request: from accept to the end of the
//! connection's task, and for an HTTP connection as long as its socket lives ([`Tracked`]),
//! so a WebSocket or other upgraded connection, handed on to a tunnel, still counts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// How often [`DrainSignal::outbound_quiet`] looks again while connections are open.
const QUIET_POLL: Duration = Duration::from_millis(20);

/// Whether the drain is over and the process is closing what is left (see [`cut`]).
static CUT: AtomicBool = AtomicBool::new(false);

/// Marks the end of the drain: the runtime is about to drop the connections still open. From
/// here a request dropped before its response ended was cut by the sidecar, not left by its
/// client. (With `--workers` above 1 the workers run on for the runtime's shutdown, at most
/// 200 ms: a client that leaves in that moment is counted `SD` too.)
pub fn cut() {
    CUT.store(true, Ordering::Release);
}

/// The flag of a request that ends unanswered: `SD` once the
/// sidecar is closing what the drain left ([`cut`]), else `DC` (its client went away). Read
/// only on that path, never per request.
pub fn unfinished_flag() -> &'static str {
    if CUT.load(Ordering::Acquire) {
        crate::proxy::error::flags::SHUT_DOWN
    } else {
        crate::telemetry::metrics::DOWNSTREAM_CLOSED
    }
}

/// How far draining has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Not draining.
    Serving,
    /// Inbound drains; outbound serves.
    Inbound,
    /// Everything drains.
    All,
}

/// Sends the drain signal; owns the outbound side's activity count.
#[derive(Debug)]
pub struct DrainSignal {
    phase: watch::Sender<Phase>,
    outbound: Arc<Activity>,
}

/// Observes the drain signal for one side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    phase: watch::Receiver<Phase>,
    /// The phase this side drains at.
    at: Phase,
    /// Where this side's connections are counted (outbound only).
    activity: Option<Arc<Activity>>,
}

impl Default for DrainSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainSignal {
    /// A signal in phase [`Phase::Serving`].
    pub fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Serving),
            outbound: Arc::default(),
        }
    }

    /// Starts draining inbound (phase 1); idempotent, never goes back.
    pub fn drain(&self) {
        self.advance(Phase::Inbound);
    }

    /// Drains everything (phase 2); idempotent.
    pub fn stop(&self) {
        self.advance(Phase::All);
    }

    fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|phase| {
            let later = *phase < to;
            if later {
                *phase = to;
            }
            later
        });
    }

    /// Whether draining has started (readiness is then 503).
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Inbound
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// An observer for inbound listeners and connections: drains in phase 1.
    pub fn inbound(&self) -> Drain {
        Drain {
            phase: self.phase.subscribe(),
            at: Phase::Inbound,
            activity: None,
        }
    }

    /// An observer for outbound listeners and connections (opaque TCP `listen:` ones too):
    /// drains in phase 2, and counts their connections.
    pub fn outbound(&self) -> Drain {
        Drain {
            phase: self.phase.subscribe(),
            at: Phase::All,
            activity: Some(Arc::clone(&self.outbound)),
        }
    }

    /// Outbound connections open now.
    pub fn outbound_open(&self) -> usize {
        self.outbound.open.load(Ordering::Acquire)
    }

    /// Resolves once no outbound connection has been open, and none opened, for `period`.
    pub async fn outbound_quiet(&self, period: Duration) {
        self.outbound.quiet(period).await;
    }
}

impl Drain {
    /// Resolves once this side drains (at once if it already does). Cancel-safe.
    pub async fn signaled(mut self) {
        let at = self.at;
        // An error means the sender is gone: the process is ending, so drain too.
        let _ = self.phase.wait_for(|phase| *phase >= at).await;
    }

    /// [`Drain::signaled`], polled only when it was woken: beside a connection in a `select!`,
    /// where the connection is polled a few times per request.
    pub fn signaled_when_woken(self) -> WhenWoken<impl Future<Output = ()>> {
        WhenWoken::new(self.signaled())
    }

    /// Counts a connection of this side as open until the guard is dropped (nothing for a
    /// side that is not counted).
    pub fn track(&self) -> Option<Active> {
        self.activity.as_ref().map(|activity| {
            activity.opened.fetch_add(1, Ordering::AcqRel);
            activity.open.fetch_add(1, Ordering::AcqRel);
            Active(Arc::clone(activity))
        })
    }
}

pin_project! {
    /// Polls `inner` only after `inner`'s own waker was woken (and once at first). A task
    /// polls all its futures whenever any of them wakes it; a `watch` channel's wait takes a
    /// lock on every poll, and a connection's drain signal would be polled with every request.
    pub struct WhenWoken<F> {
        #[pin]
        inner: F,
        flag: Arc<WakeFlag>,
        waker: Waker,
    }
}

/// Set when the inner future's waker is woken; passes the wake on to the task.
#[derive(Debug)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    fn new(inner: F) -> Self {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// Connections of one side: open now, and ever opened.
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    opened: AtomicU64,
}

impl Activity {
    async fn quiet(&self, period: Duration) {
        loop {
            if self.open.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(QUIET_POLL.min(period)).await;
                continue;
            }
            let seen = self.opened.load(Ordering::Acquire);
            tokio::time::sleep(period).await;
            if self.open.load(Ordering::Acquire) == 0 && self.opened.load(Ordering::Acquire) == seen
            {
                return;
            }
        }
    }
}

/// An open connection, counted in its side's [`Activity`] until dropped.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O object that counts as an open connection of its side for as long as it exists,
/// also after an HTTP upgrade has handed it on to a tunnel task.
#[derive(Debug)]
pub struct Tracked<I> {
    inner: I,
    _active: Option<Active>,
}

impl<I> Tracked<I> {
    /// Wraps `inner`, counted by `active` (from [`Drain::track`]).
    pub fn new(inner: I, active: Option<Active>) -> Self {
        Self {
            inner,
            _active: active,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

    #[tokio::test(start_paused = true)]
    async fn phases_reach_their_sides() {
        let signal = DrainSignal::new();
        let (inbound, outbound) = (signal.inbound(), signal.outbound());
        assert!(!signal.is_draining());
        let inbound_done = tokio::spawn(inbound.signaled());
        let outbound_done = tokio::spawn(outbound.clone().signaled());
        signal.drain();
        assert!(signal.is_draining());
        inbound_done.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!outbound_done.is_finished(), "outbound serves in phase 1");
        signal.drain();
        assert_eq!(signal.phase(), Phase::Inbound);
        signal.stop();
        outbound_done.await.unwrap();
        signal.drain();
        assert_eq!(signal.phase(), Phase::All, "never goes back");
        // A late observer sees the phase at once.
        signal.inbound().signaled().await;
        outbound.signaled().await;
    }

    #[tokio::test]
    async fn a_signal_polled_only_when_woken_still_resolves_beside_a_busy_future() {
        let signal = DrainSignal::new();
        let drained = signal.outbound().signaled_when_woken();
        tokio::pin!(drained);
        // A task woken over and over by something else (a connection serving requests).
        for _ in 0..100 {
            tokio::select! {
                () = &mut drained => panic!("not drained yet"),
                () = tokio::task::yield_now() => {}
            }
        }
        signal.stop();
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("resolves once the phase is reached");
        // A late observer sees the phase at once.
        signal.inbound().signaled_when_woken().await;
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_waits_for_open_connections_and_new_ones() {
        let signal = DrainSignal::new();
        let outbound = signal.outbound();
        assert!(signal.inbound().track().is_none(), "inbound is not counted");
        let held = outbound.track();
        assert_eq!(signal.outbound_open(), 1);
        let period = Duration::from_secs(1);
        let quiet = tokio::spawn(async move { signal.outbound_quiet(period).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!quiet.is_finished(), "an open connection is not quiet");
        drop(held);
        tokio::time::sleep(period / 2).await;
        // A short connection within the period restarts it.
        drop(outbound.track());
        tokio::time::sleep(period * 3 / 4).await;
        assert!(
            !quiet.is_finished(),
            "a connection opened within the period"
        );
        tokio::time::sleep(period * 2).await;
        assert!(quiet.is_finished());
    }

    #[tokio::test]
    async fn tracked_io_counts_while_it_lives() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let signal = DrainSignal::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut tracked = Tracked::new(a, signal.outbound().track());
        assert_eq!(signal.outbound_open(), 1);
        tracked.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        drop(tracked);
        assert_eq!(signal.outbound_open(), 0);
    }
}
