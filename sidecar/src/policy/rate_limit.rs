//! Local rate limiting (`rateLimit`): a token bucket of `requests` tokens refilled evenly over
//! `per`, enforced by the receiving sidecar for its own workload's Backend (or by the calling
//! sidecar for a route). A request without a token gets 429 with `Retry-After` (flag `RL`).
//!
//! The bucket starts full, so a burst of up to `requests` passes at once. One mutex guards two
//! numbers; only workloads with a `rateLimit` touch it. A config swap keeps the bucket while
//! the limit is unchanged ([`super::Carryover::limiter`]), so a push grants no fresh burst.
//!
//! The same bucket limits a route in the calling sidecar when a TrafficPolicy targets an
//! HTTPRoute: one bucket per route per sidecar (callers do not share a count).

use std::sync::Mutex;
use std::time::Duration;

use ficus_config::RateLimit;
use tokio::time::Instant;

/// A token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    /// Tokens added per second.
    rate: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// From a validated limit; `None` when it cannot admit anything sensibly (zero values).
    pub fn new(limit: &RateLimit) -> Option<Self> {
        let per = limit.per.as_secs_f64();
        if limit.requests == 0 || per <= 0.0 {
            return None;
        }
        let capacity = f64::from(limit.requests);
        Some(Self {
            capacity,
            rate: capacity / per,
            state: Mutex::new(Bucket {
                tokens: capacity,
                refilled: Instant::now(),
            }),
        })
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let Ok(mut bucket) = self.state.lock() else {
            // A poisoned lock only means another thread panicked; do not block traffic on it.
            return Ok(());
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Saturating: a limit of one request per ~585 billion years still answers.
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per: Duration) -> RateLimiter {
        RateLimiter::new(&RateLimit { requests, per }).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_too_long_for_a_duration_saturates_instead_of_panicking() {
        let limiter = limiter(1, Duration::MAX);
        assert!(limiter.try_acquire().is_ok());
        let wait = limiter.try_acquire().unwrap_err();
        assert!(wait > Duration::from_secs(u64::MAX / 2));
        assert_eq!(retry_after_seconds(wait), u64::MAX);
        // Still limiting: the refusal did not poison the bucket.
        assert!(limiter.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_admits_a_burst_then_refuses() {
        let limiter = limiter(100, Duration::from_secs(60));
        for _ in 0..100 {
            assert!(limiter.try_acquire().is_ok());
        }
        let wait = limiter.try_acquire().unwrap_err();
        // One token every 600 ms.
        assert!(wait <= Duration::from_millis(601), "{wait:?}");
        assert_eq!(retry_after_seconds(wait), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_come_back_at_the_configured_rate() {
        let limiter = limiter(10, Duration::from_secs(1));
        for _ in 0..10 {
            assert!(limiter.try_acquire().is_ok());
        }
        assert!(limiter.try_acquire().is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        let admitted = (0..100).filter(|_| limiter.try_acquire().is_ok()).count();
        assert_eq!(admitted, 5);
        // Idle time never stores more than the capacity.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let admitted = (0..100).filter(|_| limiter.try_acquire().is_ok()).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
    }
}
