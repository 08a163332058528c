//! The control plane's HTTP API as the bench uses it: `/ready`, `POST /v1/apply` (what
//! `ficusctl apply -f` sends) and `/metrics`.
//!
//! Every request opens its own HTTP/1.1 connection (the API closes idle keep-alive
//! connections after 10 s, longer than the bench's quiet phases) and is bounded as a whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Bound on one API request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `POST /v1/apply` answered (the fields the bench needs).
#[derive(Debug, Deserialize)]
pub struct Applied {
    /// The current version afterwards.
    pub version: u64,
    /// Whether the apply made a new version (it always should here).
    pub committed: bool,
}

/// Whether `GET /ready` answers 200 within a second.
pub async fn ready(http: SocketAddr) -> bool {
    matches!(
        request(http, Method::GET, "/ready", None, PROBE_TIMEOUT).await,
        Ok((StatusCode::OK, _))
    )
}

/// Applies a YAML document stream, as `ficusctl apply -f convergence.yaml` does; returns once
/// the new version is durable.
pub async fn apply(http: SocketAddr, yaml: String) -> anyhow::Result<Applied> {
    let (status, body) =
        request(http, Method::POST, "/v1/apply", Some(yaml), REQUEST_TIMEOUT).await?;
    if status != StatusCode::OK {
        bail!(
            "apply answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("apply answered something other than an outcome")
}

/// Every sample of `/metrics`, keyed by name and labels as written
/// (`ficus_control_pushes_total`, `ficus_control_push_convergence_seconds_bucket{le="0.25"}`).
pub async fn metrics(http: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) = request(http, Method::GET, "/metrics", None, REQUEST_TIMEOUT).await?;
    if status != StatusCode::OK {
        bail!("/metrics answered {status}");
    }
    Ok(parse_metrics(&String::from_utf8_lossy(&body)))
}

/// Prometheus text format: `name{labels} value` lines; comments are skipped.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of what histogram `name` recorded between two scrapes, as the upper
/// bound of the bucket it falls in (`None` when nothing was recorded, infinity when it is
/// beyond the last finite bucket).
pub fn bucket_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(key, count)| {
            let bound = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count - before.get(key).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(bound, _)| *bound)
}

/// One request on a fresh connection, everything within `within`.
async fn request(
    http: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
    within: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(http)
            .await
            .with_context(|| format!("connecting to {http}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the response is read and the sender dropped; errors show in `send`.
            let _ = connection.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, http.to_string());
        if body.is_some() {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/yaml")
                .header("x-ficus-source-name", "convergence.yaml");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(within, exchange)
        .await
        .with_context(|| format!("{path} on {http}: no answer within {within:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_and_bucket_quantiles() {
        let before = parse_metrics(
            "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"0.25\"} 1\n\
             h_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        );
        let after = parse_metrics(
            "h_bucket{le=\"0.1\"} 51\nh_bucket{le=\"0.25\"} 100\nh_bucket{le=\"+Inf\"} 101\n\
             h_count 101\nficus_control_connected_sidecars 1000\n",
        );
        assert_eq!(after["ficus_control_connected_sidecars"], 1000.0);
        assert_eq!(after["h_count"], 101.0);
        assert_eq!(bucket_quantile(&before, &after, "h", 0.5), Some(0.1));
        assert_eq!(bucket_quantile(&before, &after, "h", 0.99), Some(0.25));
        assert_eq!(
            bucket_quantile(&before, &after, "h", 1.0),
            Some(f64::INFINITY)
        );
        assert_eq!(bucket_quantile(&after, &after, "h", 0.5), None);
    }
}
