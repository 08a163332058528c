//! `tlsload`: new mutual-TLS connections per second against a proxy's mTLS listener.
//!
//! Each of `--concurrency` tasks loops: TCP connect, TLS 1.3 handshake presenting a mesh
//! client certificate (`--cert`/`--key`) and verifying the server's chain to `--ca` and its
//! SPIFFE ID (`--server-id`, ficus-identity's verifier), one `GET` over HTTP/1.1 with
//! `Connection: close`, the whole response read, close. No session resumption, so every
//! connection is a full handshake (ECDHE + certificate signatures and verification on both
//! sides). The request makes sure the server finished its side of the handshake (in TLS 1.3
//! the client is done first) and that the connection was usable.
//!
//! Connections completed after `--warmup`, divided by `--duration`, are `handshakes_per_s`;
//! the latency is connect → response read. Every wait is bounded by `--timeout`; the run stops
//! by itself at `warmup + duration`. Prints one JSON line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use ficus_benches::duration::parse_duration;
use ficus_benches::latency::Latencies;
use ficus_identity::tls::{self, CertStore, Credentials, TrustBundle};
use ficus_identity::SpiffeId;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};
use tokio_rustls::TlsConnector;

/// New mTLS connections per second (one request each) against a TLS listener.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server proxy's mTLS listener (loopback only in this harness).
    #[arg(long)]
    target: SocketAddr,
    /// `Host` of the request.
    #[arg(long, default_value = "upstream")]
    host: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Mesh root(s), PEM.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Client certificate chain (an X.509-SVID), PEM.
    #[arg(long)]
    cert: std::path::PathBuf,
    /// Its private key, PEM.
    #[arg(long)]
    key: std::path::PathBuf,
    /// The SPIFFE ID the server must present.
    #[arg(long)]
    server_id: String,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Connections in flight at once, each its own task.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Measured time (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Bound on one connection: connect, handshake, request and response.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

/// What one task saw.
#[derive(Debug, Default)]
struct Tally {
    latencies: Latencies,
    ok: u64,
    status_errors: u64,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=10_000).contains(&args.concurrency),
        "--concurrency must be between 1 and 10000"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
    };
    let credentials = Credentials::from_pem_key(&read(&args.cert)?, &read(&args.key)?)
        .context("client certificate and key")?;
    let bundle = TrustBundle::from_pem(&read(&args.ca)?, &args.trust_domain).context("--ca")?;
    let expected = SpiffeId::parse(&args.server_id).context("--server-id")?;
    let config = tls::client_config(
        Some(CertStore::with_credentials(credentials)),
        &bundle,
        &expected,
    )
    .context("TLS client config")?;
    // ficus-identity's client offers h2 only (sidecar to sidecar); this client speaks HTTP/1.1.
    let mut config: ClientConfig = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let connector = connector.clone();
        let (target, host, path, limit) = (
            args.target,
            args.host.clone(),
            args.path.clone(),
            args.timeout,
        );
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let began = Instant::now();
                let result = timeout(limit, once(&connector, target, &host, &path)).await;
                let measured = began >= measure_from;
                let outcome = match result {
                    Err(_) => Err(None),
                    Ok(Err(error)) => Err(Some(error)),
                    Ok(Ok(status)) => Ok(status),
                };
                if let Err(Some(error)) = &outcome {
                    if tally.first_error.is_none() {
                        tally.first_error = Some(format!("{error:#}"));
                    }
                }
                let failed = outcome.is_err();
                if measured {
                    match outcome {
                        Ok(status) if status.is_success() => {
                            tally.ok += 1;
                            tally.latencies.record(began.elapsed());
                        }
                        Ok(_) => tally.status_errors += 1,
                        Err(None) => tally.timeouts += 1,
                        Err(Some(_)) => tally.errors += 1,
                    }
                }
                if failed {
                    // Do not spin on a refused or failing port.
                    sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("connection task panicked")?;
        total.latencies.merge(&tally.latencies);
        total.ok += tally.ok;
        total.status_errors += tally.status_errors;
        total.errors += tally.errors;
        total.timeouts += tally.timeouts;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    let seconds = args.duration.as_secs_f64();
    let mut report = serde_json::Map::new();
    report.insert("mode".into(), "tls-connections".into());
    report.insert("target".into(), args.target.to_string().into());
    report.insert("concurrency".into(), args.concurrency.into());
    report.insert("warmup_s".into(), args.warmup.as_secs_f64().into());
    report.insert("duration_s".into(), seconds.into());
    report.insert("ok".into(), total.ok.into());
    report.insert(
        "handshakes_per_s".into(),
        ((total.ok as f64 / seconds * 10.0).round() / 10.0).into(),
    );
    report.insert("errors_status".into(), total.status_errors.into());
    report.insert("errors_io".into(), total.errors.into());
    report.insert("errors_timeout".into(), total.timeouts.into());
    report.extend(total.latencies.summary().to_json());
    report.insert("first_error".into(), total.first_error.into());
    Ok(serde_json::Value::Object(report))
}

/// One connection: connect, handshake, one request, the whole response; returns its status.
async fn once(
    connector: &TlsConnector,
    target: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<hyper::StatusCode> {
    let tcp = TcpStream::connect(target).await.context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    // The server's identity is its URI SAN (checked by the verifier); the name is not used.
    let name = ServerName::IpAddress(target.ip().into());
    let stream = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .context("request")?;
    let response = sender.send_request(request).await.context("request")?;
    let status = response.status();
    response.into_body().collect().await.context("body")?;
    drop(sender);
    // The connection ends with the response (`Connection: close`); do not leave its task.
    let _ = driver.await;
    Ok(status)
}
