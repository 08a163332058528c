//! Reading the sidecars' `/metrics`: a bounded HTTP GET, the Prometheus text format, and
//! quantiles of a histogram from the difference between two scrapes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest body read from an admin endpoint.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// `GET path` on `addr` over a new HTTP/1.1 connection, within `timeout`: status and body.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_count` … suffixes as exposed).
    pub name: String,
    /// Label pairs in exposition order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the Prometheus text format; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Sum of `name` over the samples whose labels pass `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| s.value)
            .sum()
    }

    /// The cumulative buckets (`le` → count) of histogram `name`, summed over the series
    /// whose labels pass `keep`.
    pub fn buckets(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Buckets {
        let bucket = format!("{name}_bucket");
        let mut counts: BTreeMap<Bound, f64> = BTreeMap::new();
        for sample in self.samples.iter().filter(|s| s.name == bucket && keep(s)) {
            let Some(le) = sample.label("le").and_then(parse_bound) else {
                continue;
            };
            *counts.entry(le).or_default() += sample.value;
        }
        Buckets(counts)
    }
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Cumulative histogram buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub BTreeMap<Bound, f64>);

impl Buckets {
    /// `self - earlier`, bucket by bucket (a counter reset gives the later counts).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let reset = self
            .0
            .iter()
            .any(|(le, count)| earlier.0.get(le).is_some_and(|before| before > count));
        if reset {
            return self.clone();
        }
        Buckets(
            self.0
                .iter()
                .map(|(le, count)| (*le, count - earlier.0.get(le).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Observations in total (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.0.values().last().copied().unwrap_or(0.0)
    }

    /// The `q` quantile (0..1) in seconds, interpolated linearly inside the bucket it falls
    /// in, as Prometheus' `histogram_quantile` does; `None` without observations. In the
    /// `+Inf` bucket it is the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for (Bound(upper), count) in &self.0 {
            if *count >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let inside = count - below;
                if inside <= 0.0 {
                    return Some(*upper);
                }
                return Some(lower + (upper - lower) * (rank - below) / inside);
            }
            lower = *upper;
            below = *count;
        }
        Some(lower)
    }
}

fn parse_bound(text: &str) -> Option<Bound> {
    match text {
        "+Inf" => Some(Bound(f64::INFINITY)),
        other => other.parse().ok().map(Bound),
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

/// `name{k="v",...} value [timestamp]` or `name value`.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let name = &line[..open];
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (name, labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels up to the closing `}`; returns them and the text after it.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break at,
                other => value.push(other),
            }
        };
        labels.push((key.trim().to_owned(), value));
        text = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x y\n# TYPE ficus_requests_total counter\n\
        ficus_requests_total{direction=\"outbound\",destination_backend=\"shop/a\",response_code=\"200\"} 7\n\
        ficus_requests_total{direction=\"outbound\",destination_backend=\"shop/a\",response_code=\"503\"} 3\n\
        ficus_retries_total 4\n\
        h_bucket{b=\"x\",le=\"0.1\"} 2\nh_bucket{b=\"x\",le=\"0.2\"} 6\nh_bucket{b=\"x\",le=\"+Inf\"} 10\n\
        h_bucket{b=\"y\",le=\"0.1\"} 2\nh_bucket{b=\"y\",le=\"0.2\"} 2\nh_bucket{b=\"y\",le=\"+Inf\"} 2\n\
        odd{v=\"a\\\"b,c}\"} 1\n";

    #[test]
    fn parses_samples_and_sums_by_label() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.sum("ficus_retries_total", |_| true), 4.0);
        let errors = scrape.sum("ficus_requests_total", |s| {
            s.label("response_code").is_some_and(|c| c.starts_with('5'))
        });
        assert_eq!(errors, 3.0);
        assert_eq!(scrape.sum("odd", |s| s.label("v") == Some("a\"b,c}")), 1.0);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_of_the_difference() {
        let scrape = Scrape::parse(TEXT);
        let all = scrape.buckets("h", |_| true);
        assert_eq!(all.count(), 12.0);
        // rank 6 of 12: 4 below 0.1, 8 at 0.2 → 0.1 + 0.1 × 2/4.
        let p50 = all.quantile(0.5).unwrap();
        assert!((p50 - 0.15).abs() < 1e-9, "{p50}");
        // Rank 11.4 lies in +Inf: the highest finite bound.
        assert_eq!(all.quantile(0.95), Some(0.2));
        let only_y = scrape.buckets("h", |s| s.label("b") == Some("y"));
        let delta = all.since(&only_y);
        assert_eq!(delta.count(), 10.0);
        assert_eq!(Buckets::default().quantile(0.5), None);
        // A counter reset (a restarted process) yields the newer counts.
        assert_eq!(only_y.since(&all), only_y);
    }
}
