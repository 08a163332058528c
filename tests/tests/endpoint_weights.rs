//! Endpoint weights (`Backend.spec.endpoints[].weight`) through a real sidecar to real
//! upstreams on loopback: RoundRobin splits exactly, LeastRequest within binomial bounds, a
//! drained endpoint (weight 0) gets nothing, a config swap drains an endpoint, and opaque TCP
//! connections follow the weights too. A Backend without endpoints (scaled to zero) answers
//! its share 503 `UH` and closes its TCP connections, and scales back up by a swap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ficus_tests::client::H1Client;
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::{TcpEcho, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Backend `shop/api` (`protocol`, plus `extra` spec fields) with endpoints `(address,
/// weight)`, and a TrafficPolicy choosing `balancer` when one is given.
fn backend(
    protocol: &str,
    extra: &str,
    endpoints: &[(SocketAddr, u32)],
    balancer: Option<&str>,
) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(address, weight)| format!("{{address: \"{address}\", weight: {weight}}}"))
        .collect();
    let mut config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
         spec: {{protocol: {protocol}{extra}, endpoints: [{}]}}\n",
        endpoints.join(", ")
    );
    if let Some(balancer) = balancer {
        config += &format!(
            "---\napiVersion: ficus.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: api, namespace: shop}}\n\
             spec: {{targetRef: {{kind: Backend, name: api}}, loadBalancer: {{type: {balancer}}}}}\n"
        );
    }
    config
}

/// The upstream names that answered `n` sequential GETs of `path` on one connection.
async fn answers(sidecar: &Sidecar, path: &str, n: usize) -> Vec<String> {
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let response = client.get("api", path).await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        names.push(response.text());
    }
    names
}

/// Sends `ping` on a new connection to `listen` and returns the greeting of the echo server
/// that answered (`TcpEcho` prefixes its echo with it).
async fn echo_greeting(listen: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    assert_eq!(&got[2..], b"ping");
    String::from_utf8_lossy(&got[..2]).into_owned()
}

fn tally(names: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.as_str()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_splits_3_to_1_exactly_and_a_swap_drains_an_endpoint() {
    let (heavy, light, drained) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
        Upstream::start("drained").await,
    );
    let weighted = |heavy_weight| {
        backend(
            "http",
            "",
            &[
                (heavy.addr, heavy_weight),
                (light.addr, 1),
                (drained.addr, 0),
            ],
            Some("RoundRobin"),
        )
    };
    let sidecar = Sidecar::start(&weighted(3)).await;
    let names = answers(&sidecar, "/", 400).await;
    let counts = tally(&names);
    assert_eq!(
        (counts.get("heavy"), counts.get("light")),
        (Some(&300), Some(&100)),
        "{counts:?}"
    );
    assert_eq!(drained.count(), 0, "a drained endpoint gets no request");
    // Smooth: the order repeats every 4 picks (heavy heavy light heavy), so every 4
    // consecutive requests, wherever they start, hold exactly 3 for heavy.
    for (start, window) in names.windows(4).enumerate() {
        let heavies = window.iter().filter(|name| *name == "heavy").count();
        assert_eq!(heavies, 3, "requests {start}..{}: {window:?}", start + 4);
    }

    // Drain heavy by a config swap: new requests all go to light.
    let before = heavy.count();
    sidecar.write_config(&weighted(0));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let names = answers(&sidecar, "/", 40).await;
    assert!(names.iter().all(|name| name == "light"), "{names:?}");
    assert_eq!(heavy.count(), before);
    assert_eq!(drained.count(), 0);
}

#[tokio::test]
async fn least_request_splits_3_to_1_within_binomial_bounds() {
    let (heavy, light, drained) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
        Upstream::start("drained").await,
    );
    // No TrafficPolicy: LeastRequest is the default.
    let config = backend(
        "http",
        "",
        &[(heavy.addr, 3), (light.addr, 1), (drained.addr, 0)],
        None,
    );
    let sidecar = Sidecar::start(&config).await;
    // Why a binomial bound holds: one client, one request at a time, so nothing is in flight
    // when the sidecar picks; both upstreams answer after the same 100 ms, so their latency
    // estimates stay within a factor of 2 of each other (only a stall of over 100 ms on one
    // response could break that) and neither candidate is clearly cheaper. Then the first
    // candidate, drawn 3:1 by weight, is taken: heavy's count is Binomial(150, 3/4), mean
    // 112.5, sd 5.3. [89, 136] is 4.5 sd either side (the one or two requests that go to a not
    // yet measured endpoint, which looks cheap, fit in the margin), while an even split
    // (mean 75, sd 6.1) would reach 89 about once in 70 runs.
    let names = answers(&sidecar, "/delay/100", 150).await;
    let counts = tally(&names);
    let heavy_count = counts.get("heavy").copied().unwrap_or(0);
    assert!(
        (89..=136).contains(&heavy_count),
        "heavy got {heavy_count} of 150: {counts:?}"
    );
    assert_eq!(heavy.count() + light.count(), 150);
    assert_eq!(drained.count(), 0, "a drained endpoint gets no request");
}

#[tokio::test]
async fn opaque_tcp_connections_follow_endpoint_weights() {
    let (heavy, light) = (TcpEcho::start("h:").await, TcpEcho::start("l:").await);
    let config = |listen: SocketAddr| {
        backend(
            "tcp",
            &format!(", listen: \"{listen}\""),
            &[(heavy.addr, 3), (light.addr, 1)],
            Some("RoundRobin"),
        )
    };
    let (_sidecar, listen) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let mut greetings = Vec::new();
    for _ in 0..40 {
        greetings.push(echo_greeting(listen).await);
    }
    let counts = tally(&greetings);
    assert_eq!(
        (counts.get("h:"), counts.get("l:")),
        (Some(&30), Some(&10)),
        "{counts:?}"
    );
    for window in greetings.windows(4) {
        assert_eq!(
            window.iter().filter(|g| *g == "h:").count(),
            3,
            "{window:?}"
        );
    }
}

/// A Backend scaled to zero (`endpoints: []`, as a Kubernetes Service whose pods are all
/// unready translates to) keeps its routes: its share of a split gets 503 with
/// `x-ficus-error: no-healthy-upstream`, the other share is served, its opaque TCP
/// connections are closed at once and counted, and a swap that gives it an endpoint back
/// serves it again.
#[tokio::test]
async fn a_backend_without_endpoints_answers_503_for_its_share_and_scales_back_up() {
    let (stable, canary) = (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    );
    let echo = TcpEcho::start("t:").await;
    let config = |listen: SocketAddr, canary_endpoints: &str, tcp_endpoints: &str| {
        format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: stable, namespace: shop}}\n\
             spec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
             apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: canary, namespace: shop}}\n\
             spec: {{endpoints: [{canary_endpoints}]}}\n---\n\
             apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: cache, namespace: shop}}\n\
             spec: {{protocol: tcp, listen: \"{listen}\", endpoints: [{tcp_endpoints}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: shop, namespace: shop}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: shop}}]\n  rules:\n\
             \x20 - backendRefs: [{{name: stable, weight: 50}}, {{name: canary, weight: 50}}]\n",
            stable.addr
        )
    };
    let options = SidecarOptions::default();
    let (sidecar, listen) = Sidecar::start_listening(|l| config(l, "", ""), options).await;

    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..400 {
        let response = client.get("shop", "/").await.unwrap();
        match response.status {
            200 => {
                assert_eq!(response.text(), "stable");
                served += 1;
            }
            503 => {
                assert_eq!(response.header("x-ficus-error"), "no-healthy-upstream");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    // 400 draws at 1/2: 200 ± 60 is beyond six standard deviations (10).
    assert!(
        (140..=260).contains(&refused),
        "{served} served, {refused} refused"
    );
    let direct = client.get("canary", "/").await.unwrap();
    assert_eq!(
        direct.status,
        503,
        "the Backend's own name: {}",
        direct.text()
    );
    assert_eq!(canary.count(), 0);

    // Opaque TCP to a Backend without endpoints: closed at once, nothing sent.
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let _ = stream.write_all(b"ping").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the connection is closed within 10 s");
    assert!(read.is_err() || got.is_empty(), "{got:?}");
    let metrics = sidecar.metrics().await;
    let failures = |reason| metrics.sum("ficus_upstream_failures_total", &[("reason", reason)]);
    assert!(failures("no_healthy_upstream") >= (refused + 2) as f64);

    // Scaled back up: every request is served, by both.
    sidecar.write_config(&config(
        listen,
        &format!("{{address: \"{}\"}}", canary.addr),
        &format!("{{address: \"{}\"}}", echo.addr),
    ));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let mut names = Vec::new();
    for _ in 0..100 {
        let response = client.get("shop", "/").await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        names.push(response.text());
    }
    let counts = tally(&names);
    assert!(counts.get("canary").is_some_and(|&n| n > 10), "{counts:?}");
    assert_eq!(echo_greeting(listen).await, "t:");
}
