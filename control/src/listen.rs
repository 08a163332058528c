//! Binding and accepting: each server's listener gets its IPv6 companion (`[::]` beside
//! `0.0.0.0`, `[::1]` beside `127.0.0.1`; [`ficus_net::listen`]) and accepts from both through
//! one loop, so IPv6 connections share the connection limit, TLS and bounds of IPv4 ones. An
//! accept error (e.g. `EMFILE`) is logged and retried after a pause, so a full fd table
//! neither ends a server nor turns its loop into a busy spin.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ficus_net::listen::{companion_or_log, Listeners};
use tokio::net::{TcpSocket, TcpStream};

/// Pause after a failed accept.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Pending connections a listener holds by default (as `tokio::net::TcpListener::bind`).
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Binds `address` (`flag` names it in the log) with room for `backlog` pending
/// connections, and its IPv6 companion with the same. Only the primary's failure is an
/// error: without IPv6 here the companion is left out with a debug line, and one that cannot
/// be bound for another reason (its port taken) with a warning. Needs a tokio runtime.
pub fn bind(address: SocketAddr, backlog: u32, flag: &'static str) -> io::Result<Listeners> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let primary = socket.listen(backlog)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    let companion = companion_or_log(primary.local_addr()?, backlog, flag)
        .map(tokio::net::TcpListener::from_std)
        .transpose()?;
    Ok(Listeners::new(primary, companion))
}

/// The next connection on `listeners`; `server` names it in the log.
pub async fn accept(listeners: &Listeners, server: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listeners.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, server, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
