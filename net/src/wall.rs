//! Waiting until a wall-clock time, for certificate renewal.
//!
//! `tokio::time::sleep` follows the monotonic clock, which stops while the host is suspended
//! or the VM is paused: a renewal timer set for 16 hours could fire hours after the
//! certificate expired. [`sleep_until`] waits in steps of at most [`STEP`] and looks at the
//! wall clock after each, so a resumed host notices within a minute.

use std::time::{Duration, SystemTime};

/// The longest single monotonic wait.
pub const STEP: Duration = Duration::from_secs(60);

/// Returns once the wall clock reads `deadline` or later (within [`STEP`] of a suspend).
pub async fn sleep_until(deadline: SystemTime) {
    sleep_until_with(deadline, SystemTime::now, STEP).await;
}

/// [`sleep_until`] with its clock and step given (tests).
async fn sleep_until_with(deadline: SystemTime, now: impl Fn() -> SystemTime, step: Duration) {
    while let Ok(left) = deadline.duration_since(now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(step)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_jump_ends_the_wait_at_the_next_step() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // The fake wall clock: monotonic time passed, plus what a suspend skipped.
        let skipped = AtomicU64::new(0);
        let began = tokio::time::Instant::now();
        let now = || start + began.elapsed() + Duration::from_secs(skipped.load(Ordering::SeqCst));
        let deadline = start + Duration::from_secs(3600);
        let waiting = sleep_until_with(deadline, now, Duration::from_secs(60));
        tokio::pin!(waiting);
        // Ten minutes pass; then the host "sleeps" through the deadline.
        assert!(tokio::time::timeout(Duration::from_secs(600), &mut waiting)
            .await
            .is_err());
        skipped.store(7200, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(61), &mut waiting)
            .await
            .expect("noticed at the next step, not 50 minutes later");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_jump_it_waits_until_the_deadline() {
        let began = tokio::time::Instant::now();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = || start + began.elapsed();
        sleep_until_with(
            start + Duration::from_secs(150),
            now,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(began.elapsed(), Duration::from_secs(150));
        // A deadline already past returns at once.
        sleep_until_with(start, now, Duration::from_secs(60)).await;
        assert_eq!(began.elapsed(), Duration::from_secs(150));
    }
}
