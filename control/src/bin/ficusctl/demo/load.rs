//! Steady load through the gateway's outbound listener, as an app would send it (service name
//! in `Host`): a fixed rate of GETs from a few workers, each with its own keep-alive
//! connection and a timeout on every request, counted by outcome.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bound of one request, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer body read.
const MAX_BODY: usize = 64 * 1024;

/// Outcome counters (monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests sent.
    pub sent: AtomicU64,
    /// 2xx answers.
    pub ok: AtomicU64,
    /// Other answers, connection failures and timeouts.
    pub failed: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Everything else.
    pub failed: u64,
}

impl Totals {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Totals) -> Totals {
        Totals {
            sent: self.sent.saturating_sub(earlier.sent),
            ok: self.ok.saturating_sub(earlier.ok),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }

    /// Failed share of the finished requests, in percent.
    pub fn error_percent(self) -> f64 {
        let done = self.ok + self.failed;
        if done == 0 {
            0.0
        } else {
            100.0 * self.failed as f64 / done as f64
        }
    }
}

impl Counters {
    /// The current values.
    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The running load: `payments` counts `/api/payments/…`, `other` the monolith's routes.
#[derive(Debug)]
pub struct Load {
    /// Requests to `/api/payments`.
    pub payments: Arc<Counters>,
    /// Requests to other routes (the monolith).
    pub other: Arc<Counters>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` workers sending `rate` requests a second in all to `target`; one in
    /// five goes to a monolith route, the rest to `/api/payments/<n>`.
    pub fn start(target: SocketAddr, rate: u32, workers: u32) -> Self {
        let payments = Arc::new(Counters::default());
        let other = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let period = Duration::from_secs_f64(f64::from(workers.max(1)) / f64::from(rate.max(1)));
        let count = workers.max(1);
        let workers = (0..count)
            .map(|worker| {
                let (payments, other, stopped) =
                    (Arc::clone(&payments), Arc::clone(&other), stopped.clone());
                tokio::spawn(async move {
                    // Spread the workers' ticks over the period instead of sending in bursts.
                    let offset = period.mul_f64(f64::from(worker) / f64::from(count));
                    tokio::time::sleep(offset).await;
                    run_worker(target, period, worker, payments, other, stopped).await;
                })
            })
            .collect();
        Self {
            payments,
            other,
            stop,
            workers,
        }
    }

    /// Stops the workers (requests in flight are abandoned).
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        for worker in self.workers.drain(..) {
            worker.abort();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run_worker(
    target: SocketAddr,
    period: Duration,
    worker: u32,
    payments: Arc<Counters>,
    other: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<SendRequest<Empty<Bytes>>> = None;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        n += 1;
        let (path, counters) = if n.is_multiple_of(5) {
            (format!("/api/catalog/{worker}-{n}"), &other)
        } else {
            (format!("/api/payments/{worker}-{n}"), &payments)
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            send(target, &mut connection, "shop", &path),
        )
        .await;
        match outcome {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) => {
                connection = None;
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends one GET on `connection` (opened first when there is none or it closed); the status.
pub async fn send(
    target: SocketAddr,
    connection: &mut Option<SendRequest<Empty<Bytes>>>,
    host: &str,
    path: &str,
) -> Result<u16, String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        *connection = Some(sender);
    }
    let Some(sender) = connection.as_mut() else {
        return Err("no connection".to_owned());
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(HOST, host)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Sends `count` GETs of `path` to `target` from `concurrency` connections at once; the
/// statuses seen (0 for a failure without an answer) with their counts.
pub async fn burst(
    target: SocketAddr,
    path: &str,
    count: u32,
    concurrency: u32,
) -> std::collections::BTreeMap<u16, u32> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, path) = (Arc::clone(&next), path.to_owned());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut connection = None;
                while next.fetch_add(1, Ordering::Relaxed) < u64::from(count) {
                    let outcome = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        send(target, &mut connection, "shop", &path),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(status)) => seen.push(status),
                        _ => {
                            connection = None;
                            seen.push(0);
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap_or_default() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}
