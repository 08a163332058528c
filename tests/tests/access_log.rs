//! Access logs: one JSON line per HTTP request and per opaque TCP connection, off by default,
//! switched on and off by editing the Mesh document of the running sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ficus_tests::client::{self, H1Client};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::upstream::{hanging_upstream, send_and_abandon, TcpEcho, Upstream};
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn mesh(log: Option<&Path>) -> String {
    let spec = match log {
        Some(path) => format!("{{accessLog: {{path: \"{}\"}}}}", path.display()),
        None => "{}".to_owned(),
    };
    format!("apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {spec}\n---\n")
}

fn backend(name: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{protocol: http, endpoints: [{{address: \"{addr}\"}}]}}\n---\n"
    )
}

/// The lines of `path` once it has at least `n` (panics after 10 s).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only whole lines: the writer may be mid-line.
        let whole: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        if whole.len() >= n {
            return whole
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} has {} lines, want {n}:\n{text}",
            path.display(),
            whole.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_rfc3339_utc(time: &str) -> bool {
    let b = time.as_bytes();
    b.len() == 24
        && time.ends_with('Z')
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && time.starts_with("20")
}

/// Backend `shop/db`: opaque TCP from `listen` to `endpoint`.
fn tcp_db(listen: SocketAddr, endpoint: SocketAddr) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
         spec: {{protocol: tcp, listen: \"{listen}\", endpoints: [{{address: \"{endpoint}\"}}]}}\n"
    )
}

/// The line of one connection through [`tcp_db`] that sent `ping` to an echo server greeting
/// with `hi\n`: 4 bytes in, 7 out, with `flags`.
#[track_caller]
fn assert_db_line(line: &Value, listen: SocketAddr, endpoint: SocketAddr, flags: &str) {
    assert_eq!(line["kind"], "tcp", "{line}");
    assert_eq!(line["listen"], listen.to_string());
    assert_eq!(line["service"], "shop/db");
    assert_eq!(line["backend"], "shop/db");
    assert_eq!(line["upstream"], endpoint.to_string());
    assert_eq!(line["response_flags"], flags);
    assert_eq!(line["bytes_received"], 4);
    assert_eq!(line["bytes_sent"], 7);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
}

fn log_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test]
async fn http_requests_are_logged_with_their_fields() {
    let (upstream, app) = (Upstream::start("ok").await, Upstream::start("app").await);
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let config = mesh(Some(&path)) + &backend("ok", upstream.addr);
    let options = SidecarOptions {
        app: Some(app.addr),
        ..SidecarOptions::default()
    };
    let sidecar = Sidecar::start_with(&config, options).await;

    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let request = Request::post("/echo?x=1")
        .header("host", "ok")
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "hello"));
    let response = client.get("nowhere", "/missing").await.unwrap();
    assert_eq!(response.status, 502);
    let inbound = client::get(sidecar.inbound, "client", "/status/503")
        .await
        .unwrap();
    assert_eq!(inbound.status, 503);

    let lines = lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let find = |status: u64| {
        lines
            .iter()
            .find(|l| l["status"] == status)
            .unwrap_or_else(|| panic!("no line with status {status}: {lines:#?}"))
    };

    let ok = find(200);
    assert!(is_rfc3339_utc(ok["time"].as_str().unwrap()), "{ok}");
    assert_eq!(ok["kind"], "http");
    assert_eq!(ok["direction"], "outbound");
    assert_eq!(ok["trace_id"], TRACE_ID);
    assert_eq!(ok["request_id"], "req-1");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["authority"], "ok");
    assert_eq!(ok["path"], "/echo?x=1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_flags"], "");
    assert_eq!(ok["bytes_received"], 5);
    assert_eq!(ok["bytes_sent"], 5);
    assert_eq!(ok["upstream"], upstream.addr.to_string());
    assert!(ok["downstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ok["peer_identity"], Value::Null);
    assert_eq!(ok["service"], "shop/ok");
    assert_eq!(ok["backend"], "shop/ok");
    let (headers, total) = (
        ok["response_duration_ms"].as_f64().unwrap(),
        ok["duration_ms"].as_f64().unwrap(),
    );
    assert!(headers > 0.0 && total >= headers, "{ok}");

    let no_route = find(502);
    assert_eq!(no_route["response_flags"], "NR");
    assert_eq!(no_route["service"], "unknown");
    assert_eq!(no_route["backend"], "none");
    assert_eq!(no_route["upstream"], Value::Null);
    assert_eq!(no_route["trace_id"], Value::Null);
    assert_eq!(no_route["path"], "/missing");

    let inbound = find(503);
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(inbound["service"], "shop/client");
    assert_eq!(inbound["backend"], "app");
    assert_eq!(inbound["upstream"], app.addr.to_string());
    assert_eq!(inbound["bytes_received"], 0);
}

/// A retried request's line names the endpoint of its last try, the one that answered.
#[tokio::test]
async fn a_retried_request_logs_the_endpoint_of_its_last_try() {
    let good = Upstream::start("good").await;
    // A port nothing listens on: connecting to it fails at once.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let config = mesh(Some(&path))
        + &format!(
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: api, namespace: shop}}\n\
             spec: {{protocol: http, endpoints: [{{address: \"{refused}\"}}, {{address: \"{}\"}}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api, namespace: shop}}\n\
             spec:\n  parentRefs: [{{kind: Service, name: api}}]\n  rules:\n  - backendRefs: [{{name: api}}]\n    \
             retry: {{attempts: 1, codes: [503], backoff: 1ms}}\n",
            good.addr
        );
    let sidecar = Sidecar::start(&config).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    for _ in 0..6 {
        let response = client.get("api.shop", "/").await.unwrap();
        assert_eq!(response.status, 200);
    }
    let lines = lines(&path, 6).await;
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.sum("ficus_retries_total", &[]) >= 1.0,
        "some first tries went to the refused port"
    );
    for line in &lines {
        assert_eq!(line["upstream"], good.addr.to_string(), "{line}");
    }
}

#[tokio::test]
async fn tcp_connections_are_logged() {
    let echo = TcpEcho::start("hi\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let config = |listen: SocketAddr| mesh(Some(&path)) + &tcp_db(listen, echo.addr);
    let (sidecar, listen) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the sidecar closes after the upstream does")
        .unwrap();

    let lines = lines(&path, 1).await;
    let line = &lines[0];
    assert!(is_rfc3339_utc(line["time"].as_str().unwrap()), "{line}");
    assert_eq!(line["direction"], "outbound");
    assert_db_line(line, listen, echo.addr, "");
    drop(sidecar);
}

/// A TCP connection that outlives a config swap is logged where the config in force when it
/// ends says (it does not keep the old config, and its log writer, alive meanwhile).
#[tokio::test]
async fn a_tcp_connection_across_a_swap_is_logged_by_the_new_config() {
    let echo = TcpEcho::start("hi\n").await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (log_path(&dir, "first.log"), log_path(&dir, "second.log"));
    let db = |listen: SocketAddr| tcp_db(listen, echo.addr);
    let config = |listen| mesh(Some(&first)) + &db(listen);
    let (sidecar, listen) = Sidecar::start_listening(config, SidecarOptions::default()).await;
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting).await.unwrap();
    sidecar.write_config(&(mesh(Some(&second)) + &db(listen)));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the sidecar closes after the upstream does")
        .unwrap();
    let lines = lines(&second, 1).await;
    assert_eq!(lines[0]["kind"], "tcp");
    assert_eq!(lines[0]["bytes_sent"], 3);
    let old = std::fs::read_to_string(&first).unwrap_or_default();
    assert!(old.is_empty(), "nothing in the old log: {old}");
    drop(sidecar);
}

/// An opaque TCP connection the drain timeout cuts still has its line once the process has
/// exited: flag `SD` and the bytes it had moved each way (the line is queued as the runtime's
/// shutdown drops the connection, before the writer's last flush).
#[tokio::test]
async fn a_tcp_connection_cut_at_the_drain_timeout_is_logged_before_exit() {
    let echo = TcpEcho::start("hi\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let config = |listen: SocketAddr| mesh(Some(&path)) + &tcp_db(listen, echo.addr);
    let options = SidecarOptions {
        drain_timeout: Some("500ms".into()),
        ..Default::default()
    };
    let (mut sidecar, listen) = Sidecar::start_listening(config, options).await;
    let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut greeting = [0u8; 3];
    stream.read_exact(&mut greeting).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // The client keeps the connection open: only the drain timeout ends it.
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "one line, for the cut connection: {text:?}");
    // The connection was open from before the signal to the end of the drain.
    assert_db_line(&lines[0], listen, echo.addr, "SD");
    drop(stream);
}

#[tokio::test]
async fn off_by_default_and_switched_by_hot_swap() {
    let upstream = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (log_path(&dir, "first.log"), log_path(&dir, "second.log"));
    let sidecar = Sidecar::start(&backend("ok", upstream.addr)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let get = |path: &'static str| {
        Request::get(path)
            .header("host", "ok")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(client.send(get("/off-1")).await.unwrap().status, 200);

    // On: lines go to the first file.
    sidecar.write_config(&(mesh(Some(&first)) + &backend("ok", upstream.addr)));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(client.send(get("/on-1")).await.unwrap().status, 200);
    assert_eq!(client.send(get("/on-2")).await.unwrap().status, 200);
    let on = lines(&first, 2).await;

    // Off again: requests log nothing.
    sidecar.write_config(&(mesh(None) + &backend("ok", upstream.addr)));
    sidecar.wait_version(3, Duration::from_secs(10)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(client.send(get("/off-2")).await.unwrap().status, 200);

    // On with another file; the marker request shows the new writer is running.
    sidecar.write_config(&(mesh(Some(&second)) + &backend("ok", upstream.addr)));
    sidecar.wait_version(4, Duration::from_secs(10)).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    assert_eq!(client.send(get("/marker")).await.unwrap().status, 200);
    let marker = lines(&second, 1).await;

    let paths = |lines: &[Value]| -> Vec<String> {
        lines
            .iter()
            .map(|l| l["path"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let first_paths = paths(&lines(&first, 0).await);
    assert_eq!(paths(&on), ["/on-1", "/on-2"]);
    assert_eq!(first_paths, ["/on-1", "/on-2"], "nothing logged while off");
    assert_eq!(paths(&marker), ["/marker"]);

    // A file that cannot be opened rejects the config; the last good one keeps serving.
    sidecar.write_config(
        &(mesh(Some(Path::new("/proc/ficus-no-such-dir/access.log")))
            + &backend("ok", upstream.addr)),
    );
    let started = Instant::now();
    let error = loop {
        let config = sidecar.config().await;
        if let Some(error) = config["last_error"].as_str() {
            break error.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never rejected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("spec.accessLog.path"), "{error}");
    assert_eq!(sidecar.config().await["version"], 4);
    assert_eq!(client.send(get("/still")).await.unwrap().status, 200);
    let marker = lines(&second, 2).await;
    assert_eq!(paths(&marker), ["/marker", "/still"]);
}

#[tokio::test]
async fn the_trace_id_is_that_of_the_sidecar_span_when_tracing_is_on() {
    let upstream = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    // Spans go to a collector that is not there: dropped and counted, never waited for.
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{accessLog: {{path: \"{}\"}}, tracing: {{otlpEndpoint: \"http://{}\"}}}}\n---\n",
        path.display(),
        ficus_tests::free_addr()
    ) + &backend("ok", upstream.addr);
    let sidecar = Sidecar::start(&config).await;
    let response = client::get(sidecar.outbound, "ok", "/no-trace-header")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let lines = lines(&path, 1).await;
    let sent = upstream.last().expect("the upstream got the request");
    let traceparent = sent.headers["traceparent"].to_str().unwrap().to_owned();
    let trace_id = traceparent.split('-').nth(1).unwrap();
    assert_eq!(lines[0]["trace_id"], trace_id, "{traceparent}");
}

/// With tracing off, a malformed trace context is replaced on the way upstream, and the line
/// logs the trace id that was sent on, not one read from the malformed header.
#[tokio::test]
async fn with_tracing_off_the_line_logs_the_trace_id_sent_on() {
    let upstream = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let sidecar = Sidecar::start(&(mesh(Some(&path)) + &backend("ok", upstream.addr))).await;
    // A bad flags field: malformed, so the whole context is replaced.
    let malformed = format!("00-{TRACE_ID}-00f067aa0ba902b7-0g");
    let request = Request::get("/malformed")
        .header("host", "ok")
        .header("traceparent", malformed.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client::send(sidecar.outbound, request).await.unwrap();
    assert_eq!(response.status, 200);
    let lines = lines(&path, 1).await;
    let sent = upstream.last().expect("the upstream got the request");
    let traceparent = sent.headers["traceparent"].to_str().unwrap().to_owned();
    assert_ne!(traceparent, malformed);
    let trace_id = traceparent.split('-').nth(1).unwrap();
    assert_eq!(lines[0]["trace_id"], trace_id, "{traceparent}");
}

#[tokio::test]
async fn a_request_abandoned_by_its_client_is_logged_as_dc() {
    // An upstream that accepts and never answers; it says when the request got there.
    let (hang, mut got_there, upstream) = hanging_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let sidecar = Sidecar::start(&(mesh(Some(&path)) + &backend("hang", hang))).await;
    send_and_abandon(sidecar.outbound, "hang", &mut got_there).await;

    let lines = lines(&path, 1).await;
    let line = &lines[0];
    assert_eq!(line["status"], 0, "{line}");
    assert_eq!(line["response_flags"], "DC");
    assert_eq!(line["path"], "/hanging");
    assert_eq!(line["service"], "shop/hang");
    assert_eq!(line["backend"], "shop/hang");
    assert_eq!(line["upstream"], hang.to_string());
    upstream.abort();
}

/// Client sidecar `web` → mTLS → server sidecar `payments` → app, both logging to one file
/// (the Mesh is shared), tracing on towards a collector that is not there.
#[tokio::test]
async fn both_sides_of_an_mtls_hop_log_the_peer_identity_and_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n").unwrap();
    let control = ficus_tests::control::ControlPlane::start_tls(
        None,
        &["--join-token-file", tokens.to_str().unwrap()],
    )
    .await;
    let url = control.grpc_tls_url();
    let sidecar = |workload: &'static str, app: Option<SocketAddr>| {
        let token = dir.path().join(workload);
        std::fs::write(&token, format!("tok-{workload}\n")).unwrap();
        Sidecar::start_push(&url, control.join_options(workload, &token, app))
    };
    let app = Upstream::start("payments-app").await;
    let server = sidecar("payments", Some(app.addr)).await;
    let web = sidecar("web", None).await;
    let path = log_path(&dir, "access.log");
    let config = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{mtls: {{mode: STRICT}}, accessLog: {{path: \"{}\"}}, \
         tracing: {{otlpEndpoint: \"http://{}\"}}}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: payments, namespace: shop}}\n\
         spec:\n  endpoints: [{{address: \"{}\", identity: \"spiffe://cluster.local/ns/shop/sa/payments\"}}]\n",
        path.display(),
        ficus_tests::free_addr(),
        server.inbound
    );
    let output = control.ctl_stdin(&["apply", "-f", "-"], &config).await;
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    server.wait_ready(Duration::from_secs(30)).await;
    web.wait_ready(Duration::from_secs(30)).await;

    let response = client::get(web.outbound, "payments", "/api/pay")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let lines = lines(&path, 2).await;
    let side = |direction: &str| {
        lines
            .iter()
            .find(|l| l["direction"] == direction)
            .unwrap_or_else(|| panic!("no {direction} line: {lines:#?}"))
    };
    let (outbound, inbound) = (side("outbound"), side("inbound"));
    assert_eq!(outbound["service"], "shop/payments");
    assert_eq!(outbound["backend"], "shop/payments");
    assert_eq!(outbound["upstream"], server.inbound.to_string());
    assert_eq!(outbound["status"], 200);
    assert_eq!(
        inbound["peer_identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(inbound["service"], "shop/payments");
    assert_eq!(inbound["backend"], "app");
    assert_eq!(inbound["upstream"], app.addr.to_string());
    assert_eq!(inbound["path"], "/api/pay");
    assert_eq!(inbound["status"], 200);
    // One trace: the client sidecar started it, the server sidecar continued it.
    let trace = outbound["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace.len(), 32);
    assert_eq!(inbound["trace_id"], trace);
}

/// Requests the drain timeout cuts log their `SD` lines as the process stops: the lines are
/// out before it has exited, although the log is a pipe read slowly (the writer is given a
/// moment at exit, instead of being cut off mid-batch).
#[tokio::test]
async fn requests_cut_at_the_drain_timeout_are_logged_before_exit() {
    // About 80 KB of lines: more than a pipe holds, so the writer is still at them at exit.
    const CUT: usize = 200;
    let (hang, mut got_there, upstream) = hanging_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = log_path(&dir, "stdout");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    // Opened first (without a writer, which a non-blocking read end allows), so that the
    // shell's redirection below does not wait for it.
    let mut reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();
    let config = mesh(Some(Path::new("/dev/stdout"))) + &backend("hang", hang);
    let options = SidecarOptions {
        drain_timeout: Some("300ms".into()),
        // The sidecar's stdout is the pipe (`exec` keeps the shell's pid for the signal).
        prefix: vec![
            "sh".into(),
            "-c".into(),
            format!("exec \"$@\" > '{}'", fifo.display()),
            "sh".into(),
        ],
        ..Default::default()
    };
    // The pipe is read slowly: 4 KiB every 10 ms, until it is empty after the sidecar exited
    // (before the sidecar opens it, a read finds no writer and returns 0 too).
    let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_exit = std::sync::Arc::clone(&exited);
    let read = tokio::spawn(async move {
        let mut text = Vec::new();
        let mut buffer = [0u8; 4096];
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, reader.read(&mut buffer)).await {
            if n == 0 && seen_exit.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            text.extend_from_slice(&buffer[..n]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut sidecar = Sidecar::start_with(&config, options).await;
    // Requests in flight whose clients stay connected: only the drain timeout ends them.
    let mut clients = Vec::new();
    for _ in 0..CUT {
        let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
            .await
            .unwrap();
        stream
            .write_all(b"GET /hanging HTTP/1.1\r\nhost: hang\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), got_there.recv())
            .await
            .expect("the request reached the upstream")
            .expect("the upstream is running");
        clients.push(stream);
    }
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    exited.store(true, std::sync::atomic::Ordering::SeqCst);
    let text = read.await.unwrap();
    let cut = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["response_flags"] == "SD" && line["path"] == "/hanging")
        .count();
    assert_eq!(
        cut,
        CUT,
        "every cut request is logged ({} bytes read)",
        text.len()
    );
    drop(clients);
    upstream.abort();
}

/// The `path` of each whole line of `file` (none when it does not exist).
fn logged_paths(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            line["path"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// A SIGTERM while requests are in flight: those that finish during the drain and those the
/// drain timeout cuts (`SD`: the sidecar cut them, their clients were still there) all have
/// their line in the file once the process has exited.
#[tokio::test]
async fn every_request_has_its_line_in_the_file_after_a_sigterm() {
    const FINISHING: usize = 40;
    const CUT: usize = 40;
    let upstream = Upstream::start("ok").await;
    let (hang, mut got_there, hanging) = hanging_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let config = mesh(Some(&path)) + &backend("ok", upstream.addr) + &backend("hang", hang);
    let options = SidecarOptions {
        drain_timeout: Some("3s".into()),
        ..Default::default()
    };
    let mut sidecar = Sidecar::start_with(&config, options).await;
    // Requests the upstream answers after 1.5 s (setting up the hanging ones below takes a
    // while on a busy machine): they finish while the sidecar drains (3 s).
    let finishing: Vec<_> = (0..FINISHING)
        .map(|i| {
            let outbound = sidecar.outbound;
            tokio::spawn(async move {
                client::get(outbound, "ok", &format!("/delay/1500?finishing={i}")).await
            })
        })
        .collect();
    // Requests that are never answered: the drain timeout cuts them.
    let mut clients = Vec::new();
    for i in 0..CUT {
        let mut stream = tokio::net::TcpStream::connect(sidecar.outbound)
            .await
            .unwrap();
        let head = format!("GET /hanging?cut={i} HTTP/1.1\r\nhost: hang\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), got_there.recv())
            .await
            .expect("the request reached the upstream")
            .expect("the upstream is running");
        clients.push(stream);
    }
    let started = Instant::now();
    while upstream.count() < FINISHING {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} of {FINISHING} requests reached the upstream",
            upstream.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sidecar.terminate();
    for request in finishing {
        let response = request.await.unwrap().expect("answered during the drain");
        assert_eq!(response.status, 200);
    }
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));

    let mut logged = logged_paths(&path);
    logged.sort();
    let mut sent: Vec<String> = (0..FINISHING)
        .map(|i| format!("/delay/1500?finishing={i}"))
        .chain((0..CUT).map(|i| format!("/hanging?cut={i}")))
        .collect();
    sent.sort();
    assert_eq!(logged, sent, "one line per request, none missing");
    let flags: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["response_flags"].clone())
        .collect();
    assert_eq!(flags.iter().filter(|f| *f == "SD").count(), CUT);
    assert_eq!(flags.iter().filter(|f| *f == "DC").count(), 0);
    drop(clients);
    hanging.abort();
}

/// logrotate's default `create` mode: the file is renamed away (and a new one may or may not
/// be created). The sidecar notices and writes on at the path; the lines before the rename
/// stay in the renamed file, and no line is lost or written twice.
#[tokio::test]
async fn a_log_file_renamed_by_rotation_is_followed_by_a_new_one_at_its_path() {
    const BEFORE: usize = 10;
    const AFTER: usize = 10;
    let upstream = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (path, rotated) = (log_path(&dir, "access.log"), log_path(&dir, "access.log.1"));
    let sidecar = Sidecar::start(&(mesh(Some(&path)) + &backend("ok", upstream.addr))).await;
    let mut client = H1Client::connect(sidecar.outbound).await.unwrap();
    let mut sent = Vec::new();
    let mut request = |n: usize| {
        let path = format!("/r/{n}");
        sent.push(path.clone());
        path
    };
    for n in 0..BEFORE {
        let response = client.get("ok", &request(n)).await.unwrap();
        assert_eq!(response.status, 200);
    }
    lines(&path, BEFORE).await;
    std::fs::rename(&path, &rotated).unwrap();

    // Requests until one is logged at the path again (the writer looks at the path now and
    // then, so the first ones may still go to the renamed file).
    let started = Instant::now();
    let mut n = BEFORE;
    while logged_paths(&path).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no new file at {} after {} requests",
            path.display(),
            n - BEFORE
        );
        let response = client.get("ok", &request(n)).await.unwrap();
        assert_eq!(response.status, 200);
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reopened_at = n;
    for _ in 0..AFTER {
        let response = client.get("ok", &request(n)).await.unwrap();
        assert_eq!(response.status, 200);
        n += 1;
    }

    // Every line is in one of the two files, exactly once.
    let started = Instant::now();
    let (old, new) = loop {
        let (old, new) = (logged_paths(&rotated), logged_paths(&path));
        if old.len() + new.len() >= sent.len() {
            break (old, new);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} + {} lines, want {}",
            old.len(),
            new.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        sent[..BEFORE].iter().all(|path| old.contains(path)),
        "the lines before the rename stay in the renamed file: {old:?}"
    );
    assert!(
        sent[reopened_at..].iter().all(|path| new.contains(path)),
        "the lines after the reopen are all in the new file: {new:?}"
    );
    let mut all: Vec<String> = old.iter().chain(&new).cloned().collect();
    all.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(all, expected, "no line lost or doubled");
    let metrics = sidecar.metrics().await;
    let dropped = metrics.sum("ficus_access_log_dropped_total", &[]);
    assert_eq!(dropped, 0.0, "no line dropped");
}

/// logrotate's `postrotate kill -USR1` (nginx's convention): the sidecar reopens the file at
/// its path at once, without waiting for a line to write or for its own comparison of the path
/// with the open file, and goes on serving. Lines before the signal stay in the renamed file.
#[tokio::test]
async fn sigusr1_reopens_the_log_file_at_its_path_at_once() {
    let upstream = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (path, rotated) = (log_path(&dir, "access.log"), log_path(&dir, "access.log.1"));
    let mut sidecar = Sidecar::start(&(mesh(Some(&path)) + &backend("ok", upstream.addr))).await;
    sidecar.set_log_level("info").await;
    let response = client::get(sidecar.outbound, "ok", "/before")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    lines(&path, 1).await;
    std::fs::rename(&path, &rotated).unwrap();

    sidecar.signal("USR1");
    // No request in between: only the signal can make the sidecar open the path again.
    let started = Instant::now();
    loop {
        if let Some(status) = sidecar.wait_exit_now() {
            panic!("the sidecar exited on SIGUSR1: {status}");
        }
        let fds = sidecar.open_fds();
        if fds.contains(&path) && !fds.contains(&rotated) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the access log is still open at {}: {fds:?}",
            rotated.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar
        .wait_log("reopened at its path (SIGUSR1)", Duration::from_secs(10))
        .await;

    let response = client::get(sidecar.outbound, "ok", "/after").await.unwrap();
    assert_eq!(response.status, 200, "still serving");
    lines(&path, 1).await;
    assert_eq!(logged_paths(&path), ["/after"]);
    assert_eq!(logged_paths(&rotated), ["/before"]);
    assert!(sidecar.wait_exit_now().is_none(), "still running");
    let metrics = sidecar.metrics().await;
    assert_eq!(metrics.sum("ficus_access_log_dropped_total", &[]), 0.0);
}
