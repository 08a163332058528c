//! Accepting connections: an accept error (e.g. `EMFILE`) is logged and retried after a
//! pause, so a full fd table neither ends a server nor turns its loop into a busy spin.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`; `server` names it in the log.
pub async fn accept(listener: &TcpListener, server: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, server, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
