//! A coarse monotonic clock, for stamps that are only ever compared with timeouts of
//! seconds: when a pooled upstream connection went idle, when a downstream connection's last
//! response ended.
//!
//! `CLOCK_MONOTONIC_COARSE` is the time of the last kernel tick, read from the vDSO's page
//! without the TSC: ~3 ns against ~22 ns for `Instant::now()` on the benchmark machine. A
//! proxied request took three such stamps (benches/README.md, "Clock reads, BOLT and the
//! second thread"). It advances once per tick (1–10 ms), so a stamp is up to a tick early: an
//! idle period measured with it is at most a tick too long or too short.

use std::time::Duration;

/// An instant of the coarse monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Coarse(coarsetime::Instant);

impl Coarse {
    /// The clock now (as of the last kernel tick).
    pub fn now() -> Self {
        // Not `now()`: that also stores the reading in a static every thread writes.
        Self(coarsetime::Instant::now_without_cache_update())
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        (self.0 - earlier.0).into()
    }

    /// The time since `self`.
    pub fn elapsed(self) -> Duration {
        Self::now().saturating_duration_since(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over a sleep, the coarse clock advances by the precise clock's time within a tick each
    /// way: the precise readings bracket the coarse ones (outer) or lie inside them (inner),
    /// so a thread descheduled between two readings cannot fail this.
    #[tokio::test]
    async fn advances_with_the_precise_clock_within_a_tick() {
        // A tick is at most 10 ms (HZ=100); each coarse reading is up to one tick late.
        const TICK: Duration = Duration::from_millis(10);
        let outer = std::time::Instant::now();
        let start = Coarse::now();
        let inner = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let inner = inner.elapsed();
        let coarse = start.elapsed();
        let outer = outer.elapsed();
        assert!(coarse + TICK >= inner, "{coarse:?} vs {inner:?}");
        assert!(coarse <= outer + TICK, "{coarse:?} vs {outer:?}");
        assert!(coarse >= Duration::from_millis(30) - TICK, "{coarse:?}");
        // Saturating: an earlier instant minus a later one is zero.
        assert_eq!(
            start.saturating_duration_since(Coarse::now()),
            Duration::ZERO
        );
    }
}
