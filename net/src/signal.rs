//! Catching a Unix signal that may fail to be caught: the sidecar's and the control plane's
//! SIGHUP/SIGUSR1 and SIGTERM/SIGINT handlers, installed first thing at process start, and
//! [`StartUpStop`], what a SIGTERM or SIGINT does while the process is still starting.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Catches `kind` from now on (call on a runtime: the handler is tokio's); `None`, logged,
/// when it cannot be caught, and the signal then keeps its default action (for `name`, e.g.
/// `SIGHUP`, that ends the process).
///
/// A delivery is kept for this listener until it is received, however late; but a signal
/// that arrives while no listener of its kind exists is lost (tokio's handler stays installed
/// and nothing answers it), so each process catches all its signals once, at start, and keeps
/// every listener for as long as it runs.
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

/// Held while start-up writes what must not be left half written (a key without its
/// certificate); [`StartUpStop`] takes it before it ends the process.
static NO_START_UP_EXIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Keeps a SIGTERM or SIGINT during start-up ([`StartUpStop`]) from ending the process until
/// the guard is dropped: hold it around writes that belong together.
pub fn defer_start_up_exit() -> std::sync::MutexGuard<'static, ()> {
    NO_START_UP_EXIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SIGTERM and SIGINT during start-up (config and files read, store opened, listeners
/// bound): caught at process start like the others, they end the process at once with exit
/// code 0, the code of a clean shutdown, before it serves anything: there is nothing to drain
/// yet, and finishing a start-up that may take long (a large config, a slow disk) only to
/// stop would keep a pod's termination waiting. Without handlers they would end it too, but
/// killed by the signal, and a handler installed only once serving would leave a moment in
/// between where the signal kills without a drain.
///
/// These are listeners of their own, beside the ones the process stops on once it serves
/// (created at the same time, so those keep a signal that comes after start-up); dropping
/// them at the end of start-up leaves the signal to those.
#[derive(Debug)]
pub struct StartUpStop {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl StartUpStop {
    /// Catches both from now on (call on a runtime, as [`catch`]).
    pub fn catch() -> Self {
        Self {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            int: catch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Waits for `started` (the end of start-up, e.g. a channel the starting thread sends on)
    /// and returns what it gives; a SIGTERM or SIGINT first, even one that came before this
    /// was called, is logged and ends the process with exit code 0. Run it on a runtime that
    /// is driven while the process starts (a thread of its own, or a multi-thread runtime),
    /// or the exit waits for start-up to end.
    pub async fn until_started<F: Future>(mut self, started: F) -> F::Output {
        let name = tokio::select! {
            // Both at once: serving has begun, and its own handlers have the signal too.
            biased;
            output = started => return output,
            Some(()) = next(&mut self.term) => "SIGTERM",
            Some(()) = next(&mut self.int) => "SIGINT",
        };
        tracing::info!("{name} during start-up: exiting before serving anything (exit 0)");
        // Not in the middle of writes that belong together (the guard is never released).
        let _held = defer_start_up_exit();
        std::process::exit(0)
    }
}
