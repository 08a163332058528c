//! Operator signals besides the stop ones (SIGTERM and SIGINT are [`crate::app`]'s): SIGHUP
//! reads `--config` again now, SIGUSR1 reopens the access log file.
//!
//! Both are caught in every mode, because their default action ends the process and operators
//! send them by habit: `kill -HUP` to reload, logrotate's `postrotate kill -USR1` (nginx's
//! convention) to reopen logs. Neither touches the request path: SIGHUP wakes the config
//! watcher on the admin runtime, SIGUSR1 sets a flag the access-log writer thread reads
//! before its next batch.
//!
//! They are caught first thing at process start (`app::run`), so one sent during start-up
//! (while the config is read and the listeners bound) is kept, not fatal, and answered as
//! soon as the admin thread serves: SIGHUP then reads `--config` again, since the file may
//! have changed after start-up read it (the reload a `kill -HUP` asked for is done, not
//! lost), and SIGUSR1 reopens the access log file.

use std::sync::Arc;

use ficus_net::signal::{catch, next};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::Notify;

use crate::state::Shared;

/// SIGHUP and SIGUSR1, caught (`None`: it could not be, and keeps its default action).
#[derive(Debug)]
pub struct OperatorSignals {
    hangup: Option<Signal>,
    user1: Option<Signal>,
}

impl OperatorSignals {
    /// Catches both from now on (call on a runtime: the handlers are tokio's); deliveries
    /// before [`OperatorSignals::run`] are kept for it. One that cannot be installed is
    /// logged and ends the process, as by default.
    pub fn install() -> Self {
        Self {
            hangup: catch(SignalKind::hangup(), "SIGHUP"),
            user1: catch(SignalKind::user_defined1(), "SIGUSR1"),
        }
    }

    /// Answers the signals until the runtime stops. `reload` wakes the `--config` watcher
    /// ([`crate::watch::watch`]); `None` in push mode, where SIGHUP has nothing to reload.
    pub async fn run(mut self, shared: Arc<Shared>, reload: Option<Arc<Notify>>) {
        loop {
            tokio::select! {
                Some(()) = next(&mut self.hangup) => match &reload {
                    Some(reload) => {
                        tracing::info!("SIGHUP: reading --config again");
                        // A permit is kept when the watcher is busy: it reads the path again
                        // once done, so no SIGHUP falls between two reads.
                        reload.notify_one();
                    }
                    None => tracing::info!(
                        "SIGHUP: nothing to reload (the config comes from the control plane)"
                    ),
                },
                Some(()) = next(&mut self.user1) => match shared.snapshot.load().access_log.as_ref() {
                    Some(log) if log.reopen() => {
                        tracing::debug!("SIGUSR1: the access log file is reopened before its next batch");
                    }
                    Some(_) => tracing::info!(
                        "SIGUSR1: the access log goes to stdout or stderr; nothing to reopen"
                    ),
                    None => tracing::info!("SIGUSR1: the access log is off; nothing to reopen"),
                },
                else => return,
            }
        }
    }
}
