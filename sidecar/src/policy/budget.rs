//! The retry budget: retries may add at most a ratio of the requests seen over a sliding
//! window, plus a floor per second so that low-traffic services can still retry.
//!
//! # Why budgets and not only max attempts?
//! `attempts: 2` alone lets a failing upstream receive three times its normal load exactly when
//! it is least able to take it. A budget caps the extra load at (by default) 20 %: when every
//! request fails, callers get the original error quickly instead of amplifying the outage.
//!
//! The window is ten one-second slots behind a mutex held for a few additions; only routes
//! with a `retry` policy touch it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Length of the sliding window in one-second slots.
const WINDOW_SECONDS: usize = 10;
/// Default share of requests that may be retried.
pub const DEFAULT_RATIO: f64 = 0.2;
/// Default retries per second allowed whatever the traffic: RELIABILITY.md's 3/s, the same
/// as a TrafficPolicy `retryBudget` that leaves `minRetriesPerSecond` out.
pub const DEFAULT_MIN_PER_SECOND: u32 = 3;

/// A Backend's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    origin: Instant,
    window: Mutex<[Slot; WINDOW_SECONDS]>,
}

/// Counts of one second of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Seconds since `origin` this slot counts; older content is stale.
    second: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// A budget of `ratio` (0.0..=1.0) of requests plus `min_per_second` retries per second,
    /// over a 10 s window.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            ratio,
            reserve: f64::from(min_per_second) * WINDOW_SECONDS as f64,
            origin: Instant::now(),
            window: Mutex::new([Slot::default(); WINDOW_SECONDS]),
        }
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        let now = self.second();
        if let Ok(mut window) = self.window.lock() {
            slot(&mut window, now).requests += 1;
        }
    }

    /// Takes one retry from the budget; `false` when it is exhausted.
    pub fn try_withdraw(&self) -> bool {
        let now = self.second();
        let Ok(mut window) = self.window.lock() else {
            return false;
        };
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in window
            .iter()
            .filter(|s| s.second + WINDOW_SECONDS as u64 > now)
        {
            requests += s.requests;
            retries += s.retries;
        }
        let allowed = self.reserve + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            slot(&mut window, now).retries += 1;
            true
        } else {
            false
        }
    }

    fn second(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(DEFAULT_RATIO, DEFAULT_MIN_PER_SECOND)
    }
}

/// The slot of second `now`, cleared if it still holds an older second.
fn slot(window: &mut [Slot; WINDOW_SECONDS], now: u64) -> &mut Slot {
    let index = usize::try_from(now % WINDOW_SECONDS as u64).unwrap_or(0);
    let slot = &mut window[index];
    if slot.second != now {
        *slot = Slot {
            second: now,
            ..Slot::default()
        };
    }
    slot
}

/// The window length, for documentation and tests.
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECONDS as u64);

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(budget: &RetryBudget) -> usize {
        (0..100_000).take_while(|_| budget.try_withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_second_times_the_window() {
        let budget = RetryBudget::new(0.2, 10);
        assert_eq!(withdraw_all(&budget), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ratio_adds_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0);
        assert!(!budget.try_withdraw());
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_age_out_of_the_window() {
        let budget = RetryBudget::new(0.0, 1);
        assert_eq!(withdraw_all(&budget), 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        // The slot of second 0 is still inside the window.
        assert!(!budget.try_withdraw());
        tokio::time::advance(WINDOW).await;
        assert_eq!(withdraw_all(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_stop_funding_retries() {
        let budget = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(!budget.try_withdraw());
    }
}
