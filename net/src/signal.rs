//! Catching a Unix signal that may fail to be caught: the sidecar's and the control plane's
//! SIGHUP/SIGUSR1 (and the control plane's SIGTERM/SIGINT) handlers.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Catches `kind` from now on (call on a runtime: the handler is tokio's); `None`, logged,
/// when it cannot be caught, and the signal then keeps its default action (for `name`, e.g.
/// `SIGHUP`, that ends the process).
pub fn catch(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::error!(%error, "cannot catch {name}; it would end the process");
            None
        }
    }
}

/// The next delivery of a caught signal; never, for one that could not be caught. `None`
/// when the runtime is shutting down.
pub async fn next(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
