//! `otlpsink`: a real OTLP/gRPC trace collector for `benches/run`'s tracing phase.
//!
//! Serves opentelemetry-proto's generated tonic `TraceService` over hyper HTTP/2 (h2c) on
//! one current-thread runtime, accepts every export and counts the requests and spans. On
//! SIGTERM or SIGINT, or after `--lifetime`, it prints `{"requests":N,"spans":M}` on stdout
//! and exits; `benches/run` compares the span count with the sidecar's
//! `ficus_trace_spans_exported_total`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// OTLP/gRPC trace sink that counts what it is sent.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (`:0` picks a port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// Seconds after which it stops by itself.
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
}

/// Export requests and spans received.
#[derive(Debug, Clone, Default)]
struct Counts {
    requests: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans
            .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counts = Counts::default();
    let stopped_by = runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("otlpsink listening on {}", listener.local_addr()?);
        tokio::select! {
            result = serve(listener, counts.clone()) => result.map(|()| "listener closed"),
            signal = interrupted() => Ok(signal),
            () = tokio::time::sleep(Duration::from_secs(args.lifetime)) => Ok("lifetime over"),
        }
    })?;
    eprintln!("otlpsink: stopped ({stopped_by})");
    println!(
        "{{\"requests\":{},\"spans\":{}}}",
        counts.requests.load(Ordering::Relaxed),
        counts.spans.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Accepts connections until the listener fails; each is served as h2c gRPC.
async fn serve(listener: TcpListener, counts: Counts) -> anyhow::Result<()> {
    let service = TraceServiceServer::new(counts);
    // Dropping the set (when `main` stops serving) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("otlpsink: accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(service.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// SIGINT or SIGTERM; returns the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
