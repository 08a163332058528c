//! Transparent interception in network namespaces (RELIABILITY harness: veth + iptables
//! REDIRECT inside namespaces the test creates and removes).
//!
//! The "pod" is a namespace `pod` where `ficus-sidecar redirect` installed the nat rules and
//! the sidecar runs as uid 1337 with `--transparent`; its "app" is this test process (root)
//! opening sockets inside `pod`. The "remote" addresses (10.77.0.2, 10.77.0.3, 10.77.0.4,
//! fd77::2) exist only in a second namespace `remote`, joined to `pod` by a veth pair.
//! Everything runs only as root (CI does); elsewhere each test says why it skips.

use std::net::SocketAddr;
use std::time::Duration;

use ficus_tests::client::Metrics;
use ficus_tests::netns::{
    self, http_get, link, wait_ready, NetNs, NsGreeter, NsHttpServer, PushMesh, PROXY_UID,
    TRANSPARENT_ADMIN,
};
use ficus_tests::process::{binary, Sidecar, SidecarOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// Skips (returns true with a message) when interception cannot be tested here.
fn skip(test: &str) -> bool {
    match netns::skip_reason() {
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            true
        }
        None => false,
    }
}

/// The pod and the remote side, joined by a veth pair.
struct World {
    pod: NetNs,
    remote: NetNs,
}

impl World {
    fn new() -> Self {
        let pod = NetNs::create("pod").expect("pod namespace");
        let remote = NetNs::create("remote").expect("remote namespace");
        link(
            &pod,
            &["10.77.0.1/24", "fd77::1/64"],
            &remote,
            &["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24", "fd77::2/64"],
        )
        .expect("veth pair");
        Self { pod, remote }
    }

    /// Runs `ficus-sidecar redirect ARGS` inside the pod; exit status and stderr.
    fn redirect(&self, args: &[&str]) -> (bool, String) {
        let output = netns::run(
            self.pod
                .command(binary("ficus-sidecar").to_str().expect("utf-8 path"))
                .arg("redirect")
                .args(args),
        )
        .expect("run ficus-sidecar redirect");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Installs the rules and starts the transparent sidecar as uid 1337 on `config`.
    async fn sidecar(&self, config: &str, extra: &[&str]) -> PodSidecar {
        let options = SidecarOptions {
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            ..SidecarOptions::default()
        };
        let sidecar = start_transparent(&self.pod, config, options);
        wait_ready(&self.pod).await;
        sidecar
    }
}

/// Installs the rules in `ns` and starts a transparent sidecar there as uid 1337 (not
/// waiting for it to be ready).
fn start_transparent(ns: &NetNs, config: &str, options: SidecarOptions) -> PodSidecar {
    PodSidecar::new(ns, netns::start_transparent(ns, config, options))
}

struct PodSidecar {
    _process: Sidecar,
    admin: SocketAddr,
    ns: String,
}

impl PodSidecar {
    fn new(ns: &NetNs, process: Sidecar) -> Self {
        Self {
            _process: process,
            admin: TRANSPARENT_ADMIN,
            ns: ns.name().to_owned(),
        }
    }

    async fn metrics(&self, world: &World) -> Metrics {
        let ns = if world.pod.name() == self.ns {
            &world.pod
        } else {
            &world.remote
        };
        let fetched = http_get(ns, self.admin, "admin", "/metrics", &[])
            .await
            .expect("GET /metrics in the namespace");
        Metrics::parse(&fetched.body)
    }
}

const CONFIG: &str = "\
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: monolith, namespace: shop}
spec:
  endpoints: [{address: \"10.77.0.2:80\"}]
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: payments-v2, namespace: shop}
spec:
  endpoints: [{address: \"10.77.0.3:80\"}]
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: legacy-v6, namespace: shop}
spec:
  endpoints: [{address: \"[fd77::2]:80\"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: monolith, namespace: shop}
spec:
  parentRefs: [{name: monolith}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: \"yes\"}]}]
    backendRefs: [{name: payments-v2}]
  - backendRefs: [{name: monolith}]
";

/// Opaque TCP Backends: `db` (its endpoint is what the app dials) is split entirely to `db-v2`.
const TCP_CONFIG: &str = "\
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: db, namespace: shop}
spec: {protocol: tcp, listen: \"127.0.0.1:16000\", endpoints: [{address: \"10.77.0.2:9000\"}]}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: db-v2, namespace: shop}
spec: {protocol: tcp, listen: \"127.0.0.1:16001\", endpoints: [{address: \"10.77.0.3:9000\"}]}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{name: db}]
  rules: [{backendRefs: [{name: db-v2, weight: 1}]}]
";

#[tokio::test]
async fn outbound_http_is_routed_by_original_destination_and_unknown_passes_through() {
    if skip("outbound_http_is_routed_by_original_destination_and_unknown_passes_through") {
        return;
    }
    let world = World::new();
    let monolith = NsHttpServer::start(&world.remote, addr("10.77.0.2:80"), "monolith").unwrap();
    let v2 = NsHttpServer::start(&world.remote, addr("10.77.0.3:80"), "payments-v2").unwrap();
    let stranger = NsHttpServer::start(&world.remote, addr("10.77.0.4:8080"), "stranger").unwrap();
    let v6 = NsHttpServer::start(&world.remote, addr("[fd77::2]:80"), "monolith-v6").unwrap();
    let sidecar = world.sidecar(CONFIG, &[]).await;

    // The app calls the monolith's address; the sidecar's route sends canaries elsewhere.
    let pod = &world.pod;
    let plain = http_get(pod, addr("10.77.0.2:80"), "10.77.0.2", "/", &[])
        .await
        .unwrap();
    assert_eq!((plain.status, plain.body.as_str()), (200, "monolith"));
    let canary = http_get(
        pod,
        addr("10.77.0.2:80"),
        "10.77.0.2",
        "/",
        &[("x-canary", "yes")],
    )
    .await
    .unwrap();
    assert_eq!(
        (canary.status, canary.body.as_str()),
        (200, "payments-v2"),
        "the header route applies to intercepted traffic"
    );
    // HTTP/2 with prior knowledge is detected and routed the same way.
    let h2 = netns::h2c_get(
        pod,
        addr("10.77.0.2:80"),
        "http://10.77.0.2/",
        &[("x-canary", "yes")],
    )
    .await
    .unwrap();
    assert_eq!(h2, (200, "payments-v2".to_owned()));
    // A destination Ficus does not know, under a Host it does not know: unchanged.
    let malformed = [("traceparent", "00-not-a-trace-context")];
    let unknown = http_get(
        pod,
        addr("10.77.0.4:8080"),
        "stranger.example",
        "/x",
        &malformed,
    )
    .await
    .unwrap();
    assert_eq!((unknown.status, unknown.body.as_str()), (200, "stranger"));
    // IPv6: ip6tables redirects to the sidecar's [::1] listener; routed by its endpoint.
    let over_v6 = http_get(pod, addr("[fd77::2]:80"), "[fd77::2]", "/", &[])
        .await
        .unwrap();
    assert_eq!(
        (over_v6.status, over_v6.body.as_str()),
        (200, "monolith-v6")
    );
    assert_eq!(monolith.count(), 1);
    assert_eq!(v2.count(), 2);
    assert_eq!(stranger.count(), 1);
    assert_eq!(v6.count(), 1);
    // The routed requests were proxied (the sidecar adds x-request-id); the passthrough one
    // arrived as the app sent it.
    for server in [&monolith, &v2, &v6] {
        let headers = server.received.lock().unwrap()[0].clone();
        assert!(headers.contains_key("x-request-id"), "{headers:?}");
    }
    let passed = stranger.received.lock().unwrap()[0].clone();
    assert!(!passed.contains_key("x-request-id"), "{passed:?}");
    assert!(!passed.contains_key("x-forwarded-for"), "{passed:?}");
    assert_eq!(passed["host"], "stranger.example");
    // Except for a malformed trace context, which is replaced on this path too.
    let traceparent = passed["traceparent"].to_str().unwrap();
    assert!(
        traceparent.len() == 55 && traceparent.starts_with("00-"),
        "{traceparent}"
    );

    let metrics = sidecar.metrics(&world).await;
    let requests = |service: &str, backend: &str| {
        metrics.sum(
            "ficus_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_service", service),
                ("destination_backend", backend),
                ("response_code", "200"),
            ],
        )
    };
    assert_eq!(requests("shop/monolith", "shop/monolith"), 1.0);
    assert_eq!(requests("shop/monolith", "shop/payments-v2"), 2.0);
    assert_eq!(requests("shop/legacy-v6", "shop/legacy-v6"), 1.0);
    assert_eq!(requests("passthrough", "passthrough"), 1.0);
    // Exactly the app's five connections were intercepted: the sidecar's own upstream
    // connections (uid 1337) were not redirected back to it, so there is no loop.
    assert_eq!(
        metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "outbound")]
        ),
        5.0
    );
}

#[tokio::test]
async fn unknown_destination_is_routed_by_host_and_own_listeners_are_refused() {
    if skip("unknown_destination_is_routed_by_host_and_own_listeners_are_refused") {
        return;
    }
    let world = World::new();
    let v2 = NsHttpServer::start(&world.remote, addr("10.77.0.3:80"), "payments-v2").unwrap();
    let stranger = NsHttpServer::start(&world.remote, addr("10.77.0.4:8080"), "stranger").unwrap();
    let sidecar = world.sidecar(CONFIG, &[]).await;
    // A service address the config does not model (a ClusterIP, say): Host names the service.
    let by_host = http_get(
        &world.pod,
        addr("10.77.0.4:8080"),
        "payments-v2.shop",
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        (by_host.status, by_host.body.as_str()),
        (200, "payments-v2")
    );
    assert_eq!((v2.count(), stranger.count()), (1, 0));
    // Misconfigured rules that send the app's calls to the pod's own inbound port to the
    // outbound listener: forwarding them would loop, so they are refused.
    netns::run_ok(world.pod.command("iptables").args([
        "-t",
        "nat",
        "-I",
        "FICUS_OUTPUT",
        "1",
        "-d",
        "10.77.0.1/32",
        "-p",
        "tcp",
        "--dport",
        "15006",
        "-j",
        "FICUS_REDIRECT",
    ]))
    .unwrap();
    let looped = http_get(&world.pod, addr("10.77.0.1:15006"), "x", "/", &[]).await;
    assert!(looped.is_err(), "{looped:?}");
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_intercept_refused_total",
            &[("reason", "own_listener")]
        ),
        1.0
    );
}

/// Reads the greeting, then checks the echo, all within `netns::TIMEOUT`.
async fn greeted(world: &World, to: SocketAddr, greeting: &str) {
    let mut stream = world.pod.connect(to).await.unwrap();
    let mut got = vec![0u8; greeting.len()];
    tokio::time::timeout(netns::TIMEOUT, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no greeting from {to} within {:?}", netns::TIMEOUT))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), greeting);
    stream.write_all(b"ping\n").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::time::timeout(netns::TIMEOUT, stream.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping\n");
}

#[tokio::test]
async fn server_first_protocols_on_opaque_ports_never_wait_for_detection() {
    if skip("server_first_protocols_on_opaque_ports_never_wait_for_detection") {
        return;
    }
    let world = World::new();
    let _mysql = NsGreeter::start(&world.remote, addr("10.77.0.2:3306"), "5.7.44-mysql\n").unwrap();
    let _custom =
        NsGreeter::start(&world.remote, addr("10.77.0.2:7000"), "HELLO custom\n").unwrap();
    let _v6 = NsGreeter::start(&world.remote, addr("[fd77::2]:5432"), "postgres-ish\n").unwrap();
    // A tcp Backend's endpoint is opaque by config, and its TCPRoute applies.
    let _db = NsGreeter::start(&world.remote, addr("10.77.0.2:9000"), "db-v1\n").unwrap();
    let _db_v2 = NsGreeter::start(&world.remote, addr("10.77.0.3:9000"), "db-v2\n").unwrap();
    let config = format!("{CONFIG}{TCP_CONFIG}");
    // A detection timeout far longer than the greeting wait below: a greeting can only
    // arrive in time if the sidecar forwarded without sniffing.
    let sidecar = world
        .sidecar(
            &config,
            &["--detect-timeout", "300s", "--opaque-ports", "7000"],
        )
        .await;
    greeted(&world, addr("10.77.0.2:9000"), "db-v2\n").await;
    greeted(&world, addr("10.77.0.2:3306"), "5.7.44-mysql\n").await;
    greeted(&world, addr("10.77.0.2:7000"), "HELLO custom\n").await;
    greeted(&world, addr("[fd77::2]:5432"), "postgres-ish\n").await;
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_passthrough_connections_total",
            &[("reason", "opaque_port")]
        ),
        3.0,
        "the connection to the tcp Backend was routed, not passed through"
    );
    assert_eq!(
        metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "outbound"), ("protocol", "opaque")]
        ),
        4.0
    );
}

#[tokio::test]
async fn silent_connections_become_opaque_after_the_detect_timeout() {
    if skip("silent_connections_become_opaque_after_the_detect_timeout") {
        return;
    }
    let world = World::new();
    let _greeter = NsGreeter::start(&world.remote, addr("10.77.0.2:7001"), "* OK ready\n").unwrap();
    let sidecar = world.sidecar(CONFIG, &["--detect-timeout", "200ms"]).await;
    greeted(&world, addr("10.77.0.2:7001"), "* OK ready\n").await;
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_passthrough_connections_total",
            &[("reason", "server_first")]
        ),
        1.0
    );
}

/// A client that sends a few bytes and ends its side before they can be classified (a
/// half-close during detection) is forwarded, end of stream included, not dropped.
#[tokio::test]
async fn a_half_close_during_detection_is_forwarded() {
    if skip("a_half_close_during_detection_is_forwarded") {
        return;
    }
    let world = World::new();
    let _echo = NsGreeter::start(&world.remote, addr("10.77.0.2:7002"), "").unwrap();
    let _sidecar = world.sidecar(CONFIG, &["--detect-timeout", "30s"]).await;
    let mut stream = world.pod.connect(addr("10.77.0.2:7002")).await.unwrap();
    stream.write_all(b"HEL").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(netns::TIMEOUT, stream.read_to_end(&mut echoed))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert_eq!(echoed, b"HEL");
}

#[tokio::test]
async fn inbound_goes_to_the_app_on_the_original_port() {
    if skip("inbound_goes_to_the_app_on_the_original_port") {
        return;
    }
    let world = World::new();
    // The pod's app listens on its pod IP, port 8080 (the sidecar's --app is elsewhere).
    let app = NsHttpServer::start(&world.pod, addr("10.77.0.1:8080"), "pod-app").unwrap();
    let app_v6 = NsHttpServer::start(&world.pod, addr("[fd77::1]:8080"), "pod-app-v6").unwrap();
    let _tls_app = NsGreeter::start(&world.pod, addr("10.77.0.1:8443"), "").unwrap();
    let sidecar = world.sidecar(CONFIG, &[]).await;
    let fetched = http_get(&world.remote, addr("10.77.0.1:8080"), "pod", "/", &[])
        .await
        .unwrap();
    assert_eq!((fetched.status, fetched.body.as_str()), (200, "pod-app"));
    assert_eq!(app.count(), 1);
    // IPv6: ip6tables redirects to the sidecar's [::]:15006 listener.
    let fetched = http_get(&world.remote, addr("[fd77::1]:8080"), "pod", "/", &[])
        .await
        .unwrap();
    assert_eq!((fetched.status, fetched.body.as_str()), (200, "pod-app-v6"));
    assert_eq!(app_v6.count(), 1);
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "inbound"), ("protocol", "http")]
        ),
        2.0
    );
    // TLS the sidecar cannot terminate (it has no mesh identity) reaches the app unchanged.
    let mut tls = world.remote.connect(addr("10.77.0.1:8443")).await.unwrap();
    let record = [0x16, 0x03, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
    tls.write_all(&record).await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(netns::TIMEOUT, tls.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(echoed, record);
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "inbound"), ("protocol", "opaque")]
        ),
        1.0
    );
    // The admin port is never redirected (probes reach it).
    let ready = http_get(&world.remote, addr("10.77.0.1:15000"), "pod", "/ready", &[]).await;
    assert!(ready.is_err(), "admin listens on the pod's loopback only");
}

/// Inbound plaintext (PERMISSIVE, no mesh identity here) cannot get past the sidecar's HTTP
/// handling or its authorization by how it starts: a request sent after the detection timeout
/// (a client that connected ahead of it), started before it and finished after it, or after
/// an empty line, or with a lower-case method, is still served as HTTP, so
/// an AuthorizationPolicy refuses it and a forged `x-ficus-peer-identity` never reaches the
/// app; bytes that are not HTTP are copied only if authorization allows a caller without an
/// identity.
#[tokio::test]
async fn inbound_plaintext_cannot_bypass_http_handling_or_authorization() {
    if skip("inbound_plaintext_cannot_bypass_http_handling_or_authorization") {
        return;
    }
    let world = World::new();
    let app = NsHttpServer::start(&world.pod, addr("10.77.0.1:8080"), "pod-app").unwrap();
    let _greeter = NsGreeter::start(&world.pod, addr("10.77.0.1:7000"), "").unwrap();
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: pod\r\nx-ficus-peer-identity: spiffe://cluster.local/ns/shop/sa/web\r\n\r\n";
    // A status line from the sidecar (or the app), or nothing when the connection is closed:
    // `first` after `delay`, then `rest` after `pause`.
    let send_in_two =
        |first: Vec<u8>, delay: Duration, rest: &'static [u8], pause: Duration, port: u16| {
            let world = &world;
            async move {
                let mut stream = world
                    .remote
                    .connect(SocketAddr::new(addr("10.77.0.1:0").ip(), port))
                    .await
                    .unwrap();
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(&first).await;
                tokio::time::sleep(pause).await;
                let _ = stream.write_all(rest).await;
                let mut answer = vec![0u8; 12];
                match tokio::time::timeout(netns::TIMEOUT, stream.read_exact(&mut answer)).await {
                    Ok(Ok(_)) => String::from_utf8_lossy(&answer).into_owned(),
                    Ok(Err(_)) => String::new(),
                    Err(_) => panic!("no answer and no close within {:?}", netns::TIMEOUT),
                }
            }
        };
    let send = |prefix: &'static [u8], delay: Duration, port: u16| async move {
        let mut whole = prefix.to_vec();
        whole.extend_from_slice(REQUEST);
        send_in_two(whole, delay, b"", Duration::ZERO, port).await
    };
    // A request whose first byte comes before the detection timeout and the rest after it.
    let slow_start = || {
        send_in_two(
            b"G".to_vec(),
            Duration::ZERO,
            &REQUEST[1..],
            Duration::from_millis(400),
            8080,
        )
    };
    // A lower-case method, which some app servers take for the upper-case one.
    let lower_case = || {
        send_in_two(b"get / HTTP/1.1\r\nhost: pod\r\nx-ficus-peer-identity: spiffe://cluster.local/ns/shop/sa/web\r\n\r\n".to_vec(), Duration::ZERO, b"", Duration::ZERO, 8080)
    };
    // Without a policy: late or after an empty line, the request is HTTP, and the forged
    // identity header is stripped on the way to the app.
    let sidecar = world.sidecar(CONFIG, &["--detect-timeout", "100ms"]).await;
    assert_eq!(
        send(b"", Duration::from_millis(400), 8080).await,
        "HTTP/1.1 200"
    );
    assert_eq!(send(b"\r\n", Duration::ZERO, 8080).await, "HTTP/1.1 200");
    assert_eq!(slow_start().await, "HTTP/1.1 200");
    // HTTP, and refused there: it never reaches the app as opaque bytes.
    assert_eq!(lower_case().await, "HTTP/1.1 400");
    let received = app.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    assert!(
        received
            .iter()
            .all(|headers| headers.get("x-ficus-peer-identity").is_none()),
        "{received:?}"
    );
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(
        metrics.sum(
            "ficus_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        3.0
    );
    assert_eq!(
        metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "inbound"), ("protocol", "opaque")]
        ),
        0.0
    );
    drop(sidecar);
    // With an ALLOW policy for one identity, a caller without one is refused, however its
    // bytes start.
    let policy = "---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: client, namespace: shop}\n\
                  spec: {endpoints: [{address: \"10.77.0.1:8080\"}]}\n---\n\
                  apiVersion: ficus.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: web-only, namespace: shop}\n\
                  spec:\n  targetRef: {kind: Backend, name: client}\n  action: ALLOW\n  rules:\n  - from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/web\"]}]\n";
    let sidecar = world
        .sidecar(&format!("{CONFIG}{policy}"), &["--detect-timeout", "100ms"])
        .await;
    assert_eq!(
        send(b"", Duration::from_millis(400), 8080).await,
        "HTTP/1.1 403"
    );
    assert_eq!(send(b"\r\n", Duration::ZERO, 8080).await, "HTTP/1.1 403");
    assert_eq!(slow_start().await, "HTTP/1.1 403");
    // Not HTTP at all: copied only for an allowed caller, so closed here.
    assert_eq!(send(b"HELLO\n", Duration::ZERO, 7000).await, "");
    assert_eq!(
        app.received.lock().unwrap().len(),
        3,
        "nothing more reached the app"
    );
    let metrics = sidecar.metrics(&world).await;
    assert_eq!(metrics.sum("ficus_authz_denied_total", &[]), 4.0);
}

#[tokio::test]
async fn redirect_is_idempotent_and_cleanup_removes_exactly_its_rules() {
    if skip("redirect_is_idempotent_and_cleanup_removes_exactly_its_rules") {
        return;
    }
    let world = World::new();
    let pod = &world.pod;
    // Someone else's rules, which must survive both commands.
    for tool in ["iptables", "ip6tables"] {
        netns::run_ok(pod.command(tool).args([
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
        ]))
        .unwrap();
    }
    let before = (pod.nat_rules(false).unwrap(), pod.nat_rules(true).unwrap());
    let args = [
        "--proxy-uid",
        PROXY_UID,
        "--exclude-outbound-ports",
        "22,9999",
        "--exclude-inbound-ports",
        "8081",
        "--exclude-cidrs",
        "10.96.0.0/12,fd00:96::/64",
    ];
    let (ok, stderr) = world.redirect(&args);
    assert!(ok, "{stderr}");
    let installed = (pod.nat_rules(false).unwrap(), pod.nat_rules(true).unwrap());
    for (rules, cidr) in [
        (&installed.0, "10.96.0.0/12"),
        (&installed.1, "fd00:96::/64"),
    ] {
        for wanted in [
            "-A OUTPUT -p tcp -j FICUS_OUTPUT".to_owned(),
            "-A PREROUTING -p tcp -j FICUS_INBOUND".to_owned(),
            "-A FICUS_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_owned(),
            "-A FICUS_OUTPUT -p tcp -m tcp --dport 9999 -j RETURN".to_owned(),
            "-A FICUS_INBOUND -p tcp -m tcp --dport 8081 -j RETURN".to_owned(),
            "-A FICUS_INBOUND -p tcp -m tcp --dport 15000 -j RETURN".to_owned(),
            format!("-A FICUS_OUTPUT -d {cidr} -j RETURN"),
            "-A FICUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001".to_owned(),
            "-A FICUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006".to_owned(),
        ] {
            assert!(rules.contains(&wanted), "{wanted:?} missing from\n{rules}");
        }
    }
    assert!(!installed.0.contains("fd00:96"), "{}", installed.0);
    // Twice: the same rules, no duplicates.
    let (ok, stderr) = world.redirect(&args);
    assert!(ok, "{stderr}");
    assert_eq!(
        (pod.nat_rules(false).unwrap(), pod.nat_rules(true).unwrap()),
        installed
    );
    // Cleanup leaves exactly what was there before; a second cleanup finds nothing to do.
    for _ in 0..2 {
        let (ok, stderr) = world.redirect(&["--cleanup"]);
        assert!(ok, "{stderr}");
        assert_eq!(
            (pod.nat_rules(false).unwrap(), pod.nat_rules(true).unwrap()),
            before
        );
    }
}

#[tokio::test]
async fn redirect_explains_missing_permission_and_missing_iptables() {
    if skip("redirect_explains_missing_permission_and_missing_iptables") {
        return;
    }
    let world = World::new();
    let sidecar = binary("ficus-sidecar");
    let sidecar = sidecar.to_str().unwrap();
    let prefix = netns::proxy_prefix(&world.pod);
    let not_root = netns::run(
        std::process::Command::new(&prefix[0])
            .args(&prefix[1..])
            .args([sidecar, "redirect"]),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&not_root.stderr);
    assert_eq!(not_root.status.code(), Some(1), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("permission denied"), "{stderr}");

    let no_tools =
        netns::run(
            world
                .pod
                .command("env")
                .args(["PATH=/nonexistent", sidecar, "redirect"]),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_tools.stderr);
    assert_eq!(no_tools.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: iptables not found in PATH"),
        "{stderr}"
    );
}

#[tokio::test]
async fn transparent_mode_refuses_to_run_as_root() {
    if skip("transparent_mode_refuses_to_run_as_root") {
        return;
    }
    let (status, stderr) =
        ficus_tests::process::run_sidecar(&["--transparent", "--config", "/nonexistent"]).await;
    // Flags are checked before the config is read.
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must not run as root"), "{stderr}");
}

#[tokio::test]
async fn intercepted_calls_cross_mtls_between_transparent_sidecars() {
    if skip("intercepted_calls_cross_mtls_between_transparent_sidecars") {
        return;
    }
    let world = World::new();
    let mesh = PushMesh::start(&world.pod, &world.remote).await;
    // The payments app listens on its pod IP; its own sidecar guards it (STRICT).
    let app = NsHttpServer::start(&world.remote, addr("10.77.0.2:8080"), "payments-app").unwrap();
    let web = PodSidecar::new(&world.pod, mesh.sidecar(&world.pod, "web"));
    let payments = PodSidecar::new(&world.remote, mesh.sidecar(&world.remote, "payments"));
    let config = "\
apiVersion: ficus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: ficus.dev/v1alpha1
kind: Backend
metadata: {name: payments, namespace: shop}
spec:
  endpoints: [{address: \"10.77.0.2:8080\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}]
";
    mesh.apply(config).await;
    wait_ready(&world.pod).await;
    wait_ready(&world.remote).await;

    // The web app calls the payments pod's address in plaintext, as if there were no mesh.
    let fetched = http_get(
        &world.pod,
        addr("10.77.0.2:8080"),
        "10.77.0.2:8080",
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        (fetched.status, fetched.body.as_str()),
        (200, "payments-app")
    );
    let seen = app.received.lock().unwrap()[0].clone();
    assert_eq!(
        seen["x-ficus-peer-identity"], "spiffe://cluster.local/ns/shop/sa/web",
        "the payments sidecar verified the web sidecar's certificate"
    );
    let web_metrics = web.metrics(&world).await;
    assert_eq!(
        web_metrics.sum(
            "ficus_requests_total",
            &[
                ("direction", "outbound"),
                ("destination_service", "shop/payments"),
                ("response_code", "200")
            ]
        ),
        1.0
    );
    let payments_metrics = payments.metrics(&world).await;
    assert_eq!(
        payments_metrics.sum(
            "ficus_intercepted_connections_total",
            &[("direction", "inbound"), ("protocol", "http")]
        ),
        1.0,
        "the TLS connection from the web sidecar was redirected to the payments sidecar"
    );
    assert_eq!(
        payments_metrics.sum(
            "ficus_requests_total",
            &[("direction", "inbound"), ("response_code", "200")]
        ),
        1.0
    );
}
