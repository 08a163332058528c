//! A cap on the data plane's accepted connections, sized from the descriptor limit.
//!
//! Without it the accept loops take connections until the descriptor table is full (EMFILE),
//! and then the admin server cannot accept either: `/live` hangs and kubelet restarts the
//! sidecar, dropping every connection. A downstream connection may hold two descriptors (its
//! socket and an upstream connection), so the cap is half of what is left of `RLIMIT_NOFILE`
//! (the soft limit at start, first raised to the hard limit) after a reserve of an eighth of it, at least [`RESERVE_MIN`], for
//! the admin server, upstream connects, config files, certificates and the runtime's own.
//! When the cap is reached the accept loops stop accepting: new connections wait in the
//! listen backlog (the kernel's, bounded by it), not in the process. An upgraded connection
//! handed to a task of its own is counted until its HTTP connection's task ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of the cap at least.
const RESERVE_MIN: u64 = 64;

/// The soft descriptor limit is raised to the hard one, but not above this.
const MAX_RAISED: u64 = 1 << 20;

/// The cap never goes below this, whatever the limit (a sidecar that accepts nothing helps
/// no one).
const MIN_CONNECTIONS: usize = 8;

/// Permits for the connections the data plane holds; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// The cap was reached and said so in the log; cleared once a permit is free at once.
    logged: Arc<AtomicBool>,
}

impl ConnectionLimit {
    /// The cap for this process's descriptor limit (no cap when it has none), after raising
    /// the soft limit to the hard one (as Go's runtime does: the soft limit is often 1024,
    /// kept low for `select(2)`, which nothing here uses).
    pub fn from_rlimit() -> Self {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if let Some(hard) = limit.maximum.map(|hard| hard.min(MAX_RAISED)) {
            if limit.current.is_some_and(|soft| soft < hard) {
                let raised = rustix::process::Rlimit {
                    current: Some(hard),
                    maximum: limit.maximum,
                };
                match setrlimit(Resource::Nofile, raised) {
                    Ok(()) => limit = getrlimit(Resource::Nofile),
                    Err(error) => {
                        tracing::debug!(%error, "raising the soft descriptor limit failed");
                    }
                }
            }
        }
        Self::new(cap(limit.current))
    }

    /// At most `max` connections at a time.
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            logged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit for one more connection, waiting while the cap is reached (`None`: never,
    /// the semaphore is not closed). Cancel-safe: a wait given up holds nothing.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            if self.logged.load(Ordering::Relaxed) {
                self.logged.store(false, Ordering::Relaxed);
            }
            return Some(permit);
        }
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = self.max,
                "connection cap reached (descriptors kept for admin and upstreams); \
                 new connections wait in the listen backlog"
            );
        }
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}

/// The cap for a soft `RLIMIT_NOFILE` of `nofile` (`None`: unlimited).
fn cap(nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return Semaphore::MAX_PERMITS;
    };
    let reserve = (nofile / 8).max(RESERVE_MIN);
    let cap = nofile.saturating_sub(reserve) / 2;
    usize::try_from(cap)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_reserve_and_two_descriptors_per_connection() {
        assert_eq!(cap(Some(256)), 96);
        assert_eq!(cap(Some(1024)), 448);
        assert_eq!(cap(Some(1 << 20)), 458_752);
        assert_eq!(cap(Some(16)), MIN_CONNECTIONS);
        assert_eq!(cap(None), Semaphore::MAX_PERMITS);
    }

    #[tokio::test]
    async fn a_full_cap_waits_for_a_connection_to_end() {
        let limit = ConnectionLimit::new(1);
        let first = limit.acquire().await;
        assert!(first.is_some());
        let waiting = limit.acquire();
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(first);
        assert!(waiting.await.is_some());
    }
}
