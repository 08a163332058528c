//! Routing: weighted splits, Gateway API precedence, filters, route timeouts.

use std::collections::BTreeMap;

use bytes::Bytes;
use ficus_tests::client::{self, H1Client};
use ficus_tests::process::Sidecar;
use ficus_tests::upstream::Upstream;
use http::Request;
use http_body_util::Full;

fn backends(list: &[(&str, std::net::SocketAddr)]) -> String {
    list.iter()
        .map(|(name, addr)| {
            format!(
                "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
            )
        })
        .collect()
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: shop, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: shop}}]\n  rules:\n{rules}"
    )
}

async fn tally(sidecar: &Sidecar, host: &str, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let response = client.get(host, path).await.unwrap();
        assert_eq!(response.status, 200);
        *counts.entry(response.text()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_split_90_10_within_statistical_bounds() {
    let (monolith, v2, dark) = (
        Upstream::start("monolith").await,
        Upstream::start("payments-v2").await,
        Upstream::start("dark").await,
    );
    let config = backends(&[("monolith", monolith.addr), ("payments-v2", v2.addr), ("dark", dark.addr)])
        + &route(
            "  - matches: [{path: {type: PathPrefix, value: /api/payments}}]\n    \
             backendRefs: [{name: monolith, weight: 90}, {name: payments-v2, weight: 10}, {name: dark, weight: 0}]\n",
        );
    let sidecar = Sidecar::start(&config).await;
    let counts = tally(&sidecar, "shop", "/api/payments/charge", 2000).await;
    let v2_count = counts.get("payments-v2").copied().unwrap_or(0);
    // Binomial(2000, 0.1): mean 200, sd 13.4; [130, 270] is more than 5 sd either side.
    assert!(
        (130..=270).contains(&v2_count),
        "payments-v2 got {v2_count} of 2000: {counts:?}"
    );
    assert_eq!(
        counts.get("monolith").copied().unwrap_or(0) + v2_count,
        2000
    );
    assert_eq!(dark.count(), 0, "a 0-weight backend gets nothing");
    let metrics = sidecar.metrics().await;
    let labels = [
        ("destination_service", "shop/shop"),
        ("destination_backend", "shop/payments-v2"),
    ];
    assert_eq!(
        metrics.sum("ficus_requests_total", &labels),
        v2_count as f64
    );
}

#[tokio::test]
async fn gateway_api_precedence() {
    let names = [
        "exact",
        "long-prefix",
        "prefix",
        "method",
        "header",
        "query",
        "fallback",
    ];
    let mut servers = Vec::new();
    for name in names {
        servers.push((name, Upstream::start(name).await));
    }
    let list: Vec<_> = servers.iter().map(|(n, u)| (*n, u.addr)).collect();
    // Rules are written in the worst order on purpose: precedence, not order, must decide.
    let config = backends(&list)
        + &route(
            "  - backendRefs: [{name: fallback}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: prefix}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: v, value: \"2\"}]}]\n    backendRefs: [{name: query}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: \"yes\"}]}]\n    backendRefs: [{name: header}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api}, method: DELETE}]\n    backendRefs: [{name: method}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api/payments}}]\n    backendRefs: [{name: long-prefix}]\n\
             \x20 - matches: [{path: {type: Exact, value: /api/payments/health}}]\n    backendRefs: [{name: exact}]\n",
        );
    let sidecar = Sidecar::start(&config).await;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("GET", "/api/payments/health", &[], "exact"),
        ("GET", "/api/payments/x", &[], "long-prefix"),
        ("GET", "/api/other", &[], "prefix"),
        ("DELETE", "/api/other", &[("x-canary", "yes")], "method"),
        ("GET", "/api/other?v=2", &[("x-canary", "yes")], "header"),
        ("GET", "/api/other?v=2", &[], "query"),
        ("GET", "/apix", &[], "fallback"),
        ("GET", "/", &[], "fallback"),
    ];
    for (method, path, headers, want) in cases {
        let mut request = Request::builder()
            .method(*method)
            .uri(*path)
            .header("host", "shop");
        for (k, v) in *headers {
            request = request.header(*k, *v);
        }
        let response = client::send(
            sidecar.outbound,
            request.body(Full::new(Bytes::new())).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.text(), *want, "{method} {path} {headers:?}");
    }
}

#[tokio::test]
async fn filters_rewrite_headers_and_redirect() {
    let upstream = Upstream::start("v2").await;
    let config = backends(&[("v2", upstream.addr)])
        + &route(
            "  - matches: [{path: {type: PathPrefix, value: /old}}]\n    \
             filters:\n    - {type: RequestRedirect, requestRedirect: {scheme: https, hostname: shop.example, statusCode: 302}}\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /v1}}]\n    \
             filters:\n    - {type: URLRewrite, urlRewrite: {hostname: v2.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n    \
             - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-env, value: prod}], add: [{name: x-tag, value: b}], remove: [x-debug]}}\n    \
             - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served-by, value: ficus}], remove: [x-upstream]}}\n    \
             backendRefs: [{name: v2}]\n",
        );
    let sidecar = Sidecar::start(&config).await;

    let response = client::get(sidecar.outbound, "shop:8080", "/old/page?q=1")
        .await
        .unwrap();
    assert_eq!(response.status, 302);
    assert_eq!(
        response.header("location"),
        "https://shop.example/old/page?q=1"
    );
    assert_eq!(upstream.count(), 0);

    let request = Request::get("/v1/items?id=7")
        .header("host", "shop")
        .header("x-tag", "a")
        .header("x-debug", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client::send(sidecar.outbound, request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-served-by"), "ficus");
    assert_eq!(response.header("x-upstream"), "");
    let seen = upstream.last().unwrap();
    assert_eq!(seen.uri, "/v2/items?id=7");
    assert_eq!(seen.headers["host"], "v2.internal");
    assert_eq!(seen.headers["x-env"], "prod");
    assert_eq!(seen.headers.get_all("x-tag").iter().count(), 2);
    assert!(!seen.headers.contains_key("x-debug"));
}

#[tokio::test]
async fn route_request_timeout_gives_504() {
    let upstream = Upstream::start("slow").await;
    let config = backends(&[("slow", upstream.addr)])
        + &route("  - backendRefs: [{name: slow}]\n    timeouts: {request: 300ms}\n");
    let sidecar = Sidecar::start(&config).await;
    let response = client::get(sidecar.outbound, "shop", "/delay/5000")
        .await
        .unwrap();
    assert_eq!(response.status, 504);
    assert_eq!(response.header("x-ficus-error"), "upstream-timeout");
    let response = client::get(sidecar.outbound, "shop", "/delay/10")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("response_flags", "UT"), ("response_code", "504")]
        ),
        1.0
    );
}

/// A Mesh with `upstreamResponseTimeout: 1s`, Backend `slow`, and one HTTPRoute per service
/// in `timeouts` (service name, the rule's `timeouts` mapping).
fn one_second_mesh(slow: std::net::SocketAddr, timeouts: &[(&str, &str)]) -> String {
    let mut config = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                      spec: {proxy: {upstreamResponseTimeout: 1s}}\n---\n"
        .to_owned()
        + &backends(&[("slow", slow)]);
    for (service, timeouts) in timeouts {
        config += &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {service}, namespace: shop}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: {service}}}]\n  \
             rules: [{{backendRefs: [{{name: slow}}], timeouts: {timeouts}}}]\n---\n"
        );
    }
    config
}

/// The Mesh's `upstreamResponseTimeout` is the per-try wait only of rules that set no timeout:
/// `request` alone bounds each try too (as Envoy's route timeout does), `0s` sets no limit,
/// and a shorter `request` still cuts the wait.
#[tokio::test]
async fn route_timeouts_outlast_the_mesh_default() {
    let upstream = Upstream::start("slow").await;
    let config = one_second_mesh(
        upstream.addr,
        &[
            ("long", "{request: 6s}"),
            ("unbounded", "{request: 0s}"),
            ("each-try", "{backendRequest: 6s}"),
            ("short", "{request: 1s}"),
        ],
    );
    let sidecar = Sidecar::start(&config).await;
    let outbound = sidecar.outbound;
    // Answered after 3 s: 2 s past the 1 s timeouts, 3 s within the 6 s ones.
    let get = |host: &'static str| async move {
        let response = client::get(outbound, host, "/delay/3000").await;
        (host, response.unwrap().status)
    };
    // `slow` has no HTTPRoute: the Mesh default (1 s) is its per-try wait.
    let statuses = tokio::join!(
        get("long"),
        get("unbounded"),
        get("each-try"),
        get("short"),
        get("slow")
    );
    assert_eq!(
        statuses,
        (
            ("long", 200),
            ("unbounded", 200),
            ("each-try", 200),
            ("short", 504),
            ("slow", 504)
        )
    );
}

#[tokio::test]
async fn unmatched_path_of_a_known_service_is_404() {
    let upstream = Upstream::start("api").await;
    let config = backends(&[("api", upstream.addr)])
        + &route(
            "  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: api}]\n",
        );
    let sidecar = Sidecar::start(&config).await;
    let response = client::get(sidecar.outbound, "shop", "/other")
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.header("x-ficus-error"), "no-route");
    assert_eq!(
        client::get(sidecar.outbound, "shop", "/only")
            .await
            .unwrap()
            .status,
        200
    );
}

/// Requests are routed by their path with percent-encoded letters decoded: `/%61dmin` is
/// `/admin` to the app, so it takes the `/admin` route (a route meant to lock it down is not
/// sidestepped by spelling), and the upstream gets the decoded spelling.
#[tokio::test]
async fn encoded_letters_take_the_route_of_the_decoded_path() {
    let (monolith, admin) = (
        Upstream::start("monolith").await,
        Upstream::start("admin").await,
    );
    let config = backends(&[("monolith", monolith.addr), ("admin", admin.addr)])
        + &route(
            "  - matches: [{path: {type: Exact, value: /admin}}]\n    backendRefs: [{name: admin}]\n\
             \x20 - backendRefs: [{name: monolith}]\n",
        );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for path in ["/admin", "/%61dmin", "/%61%44min"] {
        let response = client.get("shop", path).await.unwrap();
        let expected = if path == "/%61%44min" {
            "monolith"
        } else {
            "admin"
        };
        assert_eq!(
            (response.status, response.text()),
            (200, expected.to_owned()),
            "{path}"
        );
    }
    assert_eq!(admin.last().unwrap().uri, "/admin");
    assert_eq!(monolith.last().unwrap().uri, "/aDmin");
}

/// GAMMA: a route in another namespace than its service's (a consumer route) routes only the
/// calls of its own namespace, and there replaces the service's own routes; it cannot take
/// over the calls of the service's namespace or of any other.
#[tokio::test]
async fn a_route_from_another_namespace_routes_only_its_own_namespaces_calls() {
    let (monolith, collector) = (
        Upstream::start("monolith").await,
        Upstream::start("collector").await,
    );
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: monolith, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: collector, namespace: evil}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: payments}}]\n  rules:\n  - backendRefs: [{{name: monolith}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: takeover, namespace: evil}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: payments, namespace: shop}}]\n  rules:\n\
         \x20 - matches: [{{path: {{type: Exact, value: /api/payments/charge}}}}]\n    backendRefs: [{{name: collector}}]\n",
        monolith.addr, collector.addr
    );
    let in_namespace = |namespace: &str| ficus_tests::process::SidecarOptions {
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    for namespace in ["shop", "web"] {
        let sidecar = Sidecar::start_with(&config, in_namespace(namespace)).await;
        let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
        let response = client
            .get("payments.shop", "/api/payments/charge")
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.text()),
            (200, "monolith".to_owned()),
            "a caller in {namespace}"
        );
        // The split in effect here is the producer's: the gauge shows no other.
        let metrics = sidecar.metrics().await;
        let weights = |route| {
            metrics.sum(
                "ficus_route_backend_weight",
                &[("destination_service", "shop/payments"), ("route", route)],
            )
        };
        assert_eq!(
            (weights("shop/payments"), weights("evil/takeover")),
            (1.0, 0.0)
        );
    }
    assert_eq!(collector.count(), 0);
    // In its own namespace the consumer route is the service's only route.
    let sidecar = Sidecar::start_with(&config, in_namespace("evil")).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let charge = client
        .get("payments.shop", "/api/payments/charge")
        .await
        .unwrap();
    assert_eq!(
        (charge.status, charge.text()),
        (200, "collector".to_owned())
    );
    let other = client
        .get("payments.shop", "/api/payments/refund")
        .await
        .unwrap();
    assert_eq!(other.status, 404, "{}", other.text());
}

/// Two routes whose matches tie: the oldest by `creationTimestamp` wins (Gateway API), so a
/// route added later cannot silently take over; without timestamps (files), the first by
/// `namespace/name`.
#[tokio::test]
async fn tied_routes_go_to_the_oldest() {
    let (legacy, v2) = (Upstream::start("legacy").await, Upstream::start("v2").await);
    let config = |legacy_created: &str, v2_created: &str| {
        let route = |name: &str, created: &str, backend: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: {name}, namespace: shop{created}}}\n\
                 spec:\n  parentRefs: [{{kind: Service, name: shop}}]\n  rules:\n\
                 \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: {backend}}}]\n---\n"
            )
        };
        backends(&[("legacy", legacy.addr), ("v2", v2.addr)])
            + &route("zz-legacy", legacy_created, "legacy")
            + &route("api-v2", v2_created, "v2")
    };
    let answer = |config: String| async move {
        let sidecar = Sidecar::start(&config).await;
        let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
        client.get("shop", "/api/x").await.unwrap().text()
    };
    let dated = config(
        ", creationTimestamp: \"2026-01-05T10:00:00Z\"",
        ", creationTimestamp: \"2026-06-01T08:30:00Z\"",
    );
    assert_eq!(answer(dated).await, "legacy", "the older route");
    assert_eq!(
        answer(config("", "")).await,
        "v2",
        "shop/api-v2 before shop/zz-legacy"
    );
}
