//! The sidecar's HTTP/2 connections to upstreams, against real hyper (and raw frame) servers:
//! more connections when one is at the peer's stream cap, flow-control windows, GOAWAY.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::client;
use ficus_tests::process::Sidecar;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Hang guard of every wait (not a performance bound).
const WAIT: Duration = Duration::from_secs(10);

fn h2c_backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  protocol: http2\n  endpoints: [{{address: \"{addr}\"}}]\n---\n"
    )
}

/// An h2c upstream that takes `max_streams` streams per connection and holds every request
/// until `gate` has a permit for it; counts connections and requests being held.
struct HeldUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl HeldUpstream {
    async fn start(max_streams: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (counted, holding, gated) = (
            Arc::clone(&connections),
            Arc::clone(&held),
            Arc::clone(&gate),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (holding, gated) = (Arc::clone(&holding), Arc::clone(&gated));
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let (holding, gated) = (Arc::clone(&holding), Arc::clone(&gated));
                    async move {
                        holding.fetch_add(1, Ordering::SeqCst);
                        // Each request takes a permit for good: `add_permits(n)` frees n.
                        if let Ok(permit) = gated.acquire().await {
                            permit.forget();
                        }
                        holding.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            connections,
            held,
            gate,
        }
    }
}

/// 20 requests at once to an h2c upstream that takes 10 streams per connection: the sidecar
/// opens a second connection instead of queueing 10 of them behind the first (they would
/// wait for a stream until their try timed out).
#[tokio::test]
async fn requests_beyond_the_peers_stream_cap_go_to_another_connection() {
    let upstream = HeldUpstream::start(10).await;
    let sidecar = Sidecar::start(&h2c_backend("payments", upstream.addr)).await;
    let outbound = sidecar.outbound;
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { client::get(outbound, "payments", "/hold").await }))
        .collect();
    let held = Arc::clone(&upstream.held);
    ficus_tests::until("20 requests held by the upstream at once", WAIT, || {
        let held = held.load(Ordering::SeqCst);
        async move { held == 20 }
    })
    .await;
    assert!(upstream.connections.load(Ordering::SeqCst) >= 2);
    upstream.gate.add_permits(20);
    for call in calls {
        let response = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
        assert_eq!(response.unwrap().status, 200);
    }
}
