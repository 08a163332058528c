//! Accept loops and downstream HTTP connections.
//!
//! Accept errors such as `EMFILE` (out of file descriptors) are logged and retried after a
//! pause instead of ending the loop or spinning. Every connection watches the drain signal:
//! HTTP/1 finishes its in-flight request and closes, HTTP/2 sends GOAWAY.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::detect::{detect, DetectError, Prefixed, Protocol};
use crate::drain::Drain;
use crate::state::Shared;

/// Pause after an accept error, so a full fd table does not turn into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Drives a hyper connection; on drain asks it to finish in-flight requests and stop
/// (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), then waits for that. A macro because the
/// HTTP/1.1 (with upgrades) and HTTP/2 connection types share no trait for this.
macro_rules! until_drained {
    ($connection:expr, $drain:expr) => {{
        let connection = $connection;
        tokio::pin!(connection);
        let drained = $drain.signaled();
        tokio::pin!(drained);
        tokio::select! {
            result = connection.as_mut() => result,
            () = &mut drained => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    }};
}

/// Which side of the sidecar a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// App → mesh on `--outbound`.
    Outbound,
    /// Mesh → app on `--inbound`.
    Inbound,
}

/// Accepts until drained, handing each connection to `serve` on `tracker`.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: Drain,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let drained = drain.signaled();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            biased;
            () = &mut drained => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(serve(stream, peer));
                }
                Err(error) => {
                    tracing::warn!(listener = name, %error, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on an accepted connection until it ends or,
/// after the drain signal, until its in-flight requests are done.
pub async fn serve_http(
    shared: Arc<Shared>,
    side: Side,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: Drain,
) {
    // Settings of the config in force when the connection arrived; the connection does not
    // keep the whole snapshot alive.
    let server = shared.snapshot.load().server.clone();
    let (protocol, read) = match detect(&mut stream, server.detect_timeout).await {
        Ok(detected) => detected,
        Err(error) => {
            if matches!(error, DetectError::Timeout(_)) {
                shared.metrics.http_rejected("detect_timeout");
            }
            tracing::debug!(%peer, %error, "closing connection before any request");
            return;
        }
    };
    let io = TokioIo::new(Prefixed::new(read, stream));
    let handler = Arc::clone(&shared);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&handler);
        async move {
            let response = match side {
                Side::Outbound => crate::proxy::outbound::handle(&shared, peer, request).await,
                Side::Inbound => crate::proxy::inbound::handle(&shared, peer, request).await,
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let result = match protocol {
        Protocol::Http1 => {
            let connection = server.http1.serve_connection(io, service).with_upgrades();
            until_drained!(connection, drain).map_err(|e| e.to_string())
        }
        Protocol::Http2 => {
            let connection = server.http2.serve_connection(io, service);
            until_drained!(connection, drain).map_err(|e| e.to_string())
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "downstream connection ended with an error");
    }
}
