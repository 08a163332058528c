//! The drain signal: set once on SIGTERM, `/drain` or `/quitquitquit`; listeners stop
//! accepting and connections finish in-flight work (HTTP/1 `Connection: close`, HTTP/2 GOAWAY).

use tokio::sync::watch;

/// Sends the drain signal.
#[derive(Debug)]
pub struct DrainSignal(watch::Sender<bool>);

/// Observes the drain signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

/// A new signal and its first observer.
pub fn channel() -> (DrainSignal, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainSignal(tx), Drain(rx))
}

impl DrainSignal {
    /// Starts draining; idempotent.
    pub fn drain(&self) {
        self.0.send_replace(true);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// A new observer.
    pub fn subscribe(&self) -> Drain {
        Drain(self.0.subscribe())
    }
}

impl Drain {
    /// Resolves once draining has started (at once if it already has). Cancel-safe.
    pub async fn signaled(mut self) {
        // An error means the sender is gone: the process is ending, so drain too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}
