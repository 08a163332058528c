//! Response-header deadlines on one timer per downstream HTTP/1.1 connection.
//!
//! `tokio::time::timeout` makes a new timer entry per request: registered in the timer wheel
//! under the driver's lock on its first poll, removed again under the lock when dropped. A
//! connection's requests come one after another, so a [`TimerSlot`] lends each of them the
//! same boxed [`Sleep`]: reset to a later deadline while still registered, tokio only stores
//! the new deadline (the wheel re-files the entry when the old one comes round).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// A wait with no limit (a route timeout set to `0s`): [`timeout`], like `tokio::time::timeout`,
/// takes a duration past what `Instant` holds as no deadline.
pub const UNBOUNDED: Duration = Duration::MAX;

/// The timer a connection lends its requests' deadlines (empty while one is lent out).
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// An empty slot; the first request makes the timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The timer set to `deadline`: the slot's, or a new one when it is lent out.
    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let spare = self.0.try_lock().ok().and_then(|mut slot| slot.take());
        match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn put(&self, sleep: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.0.try_lock() {
            *slot = Some(sleep);
        }
    }
}

pin_project! {
    /// [`timeout`]'s future: `Some(output)`, or `None` once the deadline passed first.
    pub struct Timeout<'a, F> {
        #[pin]
        future: F,
        sleep: Option<Pin<Box<Sleep>>>,
        slot: &'a TimerSlot,
    }

    impl<'a, F> PinnedDrop for Timeout<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(sleep) = this.sleep.take() {
                this.slot.put(sleep);
            }
        }
    }
}

/// Runs `future` for at most `duration` after `from` (now when `None`) on the timer of `slot`.
///
/// `from` saves a clock read when the caller has a reading taken with nothing awaited since
/// (a request's arrival): the deadline is then the same within the microseconds in between.
pub fn timeout<F: Future>(
    slot: &TimerSlot,
    from: Option<Instant>,
    duration: Duration,
    future: F,
) -> Timeout<'_, F> {
    let now = from.unwrap_or_else(Instant::now);
    // Like tokio's `timeout`: a duration past what `Instant` holds means "no deadline".
    let deadline = now
        .checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
    Timeout {
        future,
        sleep: Some(slot.take(deadline)),
        slot,
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        // Unconstrained, like `tokio::time::timeout`'s timer: a future that uses up the task's
        // budget must not keep its deadline from being seen.
        let pending = match this.sleep {
            Some(sleep) => poll_unconstrained(sleep.as_mut(), cx).is_pending(),
            None => false,
        };
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

/// Polls `sleep` whatever is left of the task's cooperative budget, so that it always holds
/// the task's waker when it returns `Pending` (a budget-starved poll registers nothing) and a
/// future that uses up the budget still sees its deadline, as `tokio::time::timeout` makes
/// sure for its own timer.
pub(crate) fn poll_unconstrained(sleep: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    let mut sleep = tokio::task::unconstrained(sleep);
    Pin::new(&mut sleep).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_slot_lends_one_timer_to_consecutive_deadlines() {
        let slot = TimerSlot::new();
        assert_eq!(
            timeout(&slot, None, Duration::from_secs(1), async { 7 }).await,
            Some(7)
        );
        assert!(
            slot.0.lock().unwrap().is_some(),
            "timer returned to the slot"
        );
        let never = std::future::pending::<()>();
        assert_eq!(
            timeout(&slot, None, Duration::from_secs(1), never).await,
            None
        );
        // Reused after firing: a later deadline still holds.
        let started = Instant::now();
        let late = tokio::time::sleep(Duration::from_millis(1500));
        assert_eq!(
            timeout(&slot, None, Duration::from_secs(2), late).await,
            Some(())
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert!(slot.0.lock().unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_out_timer_means_a_new_one() {
        let slot = TimerSlot::new();
        let first = timeout(
            &slot,
            None,
            Duration::from_secs(5),
            std::future::pending::<()>(),
        );
        let second = timeout(
            &slot,
            None,
            Duration::from_secs(1),
            std::future::pending::<()>(),
        );
        assert_eq!(second.await, None);
        drop(first);
        assert!(slot.0.lock().unwrap().is_some());
    }
}
