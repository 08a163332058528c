//! The demo's applications: small HTTP/1.1 servers on loopback ports of this process. Each
//! answers with its own name; one can be switched to "bad" (every other request fails with
//! 503, the rest hang for [`SLOW`] before answering).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a bad instance takes to answer the requests it does not fail (longer than the
/// route's per-try timeout, so the caller gives up on the try and retries elsewhere).
pub const SLOW: Duration = Duration::from_millis(1500);
/// Longest a connection may stay open without a complete request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One running app.
#[derive(Debug)]
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    bad: Arc<AtomicBool>,
    payments: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl App {
    /// Binds a free loopback port and serves there until dropped.
    pub async fn start(name: &'static str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bad = Arc::new(AtomicBool::new(false));
        let counts = Counts {
            served: Arc::new(AtomicU64::new(0)),
            payments: Arc::new(AtomicU64::new(0)),
        };
        let payments = Arc::clone(&counts.payments);
        let task = tokio::spawn(serve(listener, name, Arc::clone(&bad), counts));
        Ok(Self {
            addr,
            bad,
            payments,
            task,
        })
    }

    /// How many `/api/payments…` requests it has answered with 200.
    pub fn payments_answered(&self) -> u64 {
        self.payments.load(Ordering::Relaxed)
    }

    /// Turns the fault on or off.
    pub fn set_bad(&self, bad: bool) {
        self.bad.store(bad, Ordering::Relaxed);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An app's counters.
#[derive(Debug, Clone)]
struct Counts {
    /// Every request (decides which fail while bad).
    served: Arc<AtomicU64>,
    /// `/api/payments…` answered with 200.
    payments: Arc<AtomicU64>,
}

async fn serve(listener: TcpListener, name: &'static str, bad: Arc<AtomicBool>, counts: Counts) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (bad, counts) = (Arc::clone(&bad), counts.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                answer(request, name, Arc::clone(&bad), counts.clone())
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    name: &'static str,
    bad: Arc<AtomicBool>,
    counts: Counts,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = counts.served.fetch_add(1, Ordering::Relaxed);
    if bad.load(Ordering::Relaxed) {
        if n.is_multiple_of(2) {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "bad instance\n".into(),
            ));
        }
        tokio::time::sleep(SLOW).await;
    }
    let path = request.uri().path();
    if path == "/api/payments" || path.starts_with("/api/payments/") {
        counts.payments.fetch_add(1, Ordering::Relaxed);
    }
    let body = format!("{name} {path}\n");
    Ok(text(StatusCode::OK, body))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}
