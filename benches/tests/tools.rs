//! The harness tools against each other on loopback: `loadgen` → `upstream`, both modes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the child when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `upstream` on a free port and returns it with its address.
fn upstream() -> (Running, String) {
    spawn_listening(env!("CARGO_BIN_EXE_upstream"), &[], "upstream")
}

/// Starts a tool with `--listen 127.0.0.1:0` and ARGS; returns it with the address it prints
/// first on stderr (`NAME listening on ADDR`).
fn spawn_listening(bin: &str, args: &[&str], name: &str) -> (Running, String) {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{name} writes its address: {e}"));
    let addr = line
        .trim()
        .strip_prefix(&format!("{name} listening on "))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (running, addr)
}

fn loadgen(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("loadgen prints JSON")
}

#[test]
fn fixed_rate_against_upstream() {
    let (_upstream, addr) = upstream();
    let report = loadgen(&[
        "--target",
        &addr,
        "--rate",
        "200",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    // The schedule holds 200 requests in the measured second; never more.
    assert!(requests <= 200, "{report}");
    assert_eq!(report["errors_io"], 0, "{report}");
    assert_eq!(report["errors_status"], 0, "{report}");
    assert_eq!(report["errors_timeout"], 0, "{report}");
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["p50_ms"].as_f64() <= report["max_ms"].as_f64(),
        "{report}"
    );
}

#[test]
fn max_throughput_against_upstream() {
    let (_upstream, addr) = upstream();
    let report = loadgen(&[
        "--target",
        &addr,
        "--max",
        "--connections",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
    ]);
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors_io"], 0, "{report}");
    assert_eq!(report["mode"], "max");
}

#[test]
fn refused_connections_are_io_errors_and_the_run_ends() {
    // Bind and drop a listener: its port is very likely closed for the next second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind")
        .port();
    let target = format!("127.0.0.1:{port}");
    let report = loadgen(&[
        "--target",
        &target,
        "--rate",
        "50",
        "--connections",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(report["requests"], 0, "{report}");
    assert!(report["errors_io"].as_u64().unwrap() > 0, "{report}");
    assert!(report["first_error"].is_string(), "{report}");
}

#[test]
fn h2c_streams_against_upstream() {
    let (_upstream, addr) = upstream();
    let report = loadgen(&[
        "--target",
        &addr,
        "--h2",
        "--connections",
        "2",
        "--streams",
        "4",
        "--rate",
        "400",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
    ]);
    assert_eq!(report["protocol"], "h2c", "{report}");
    assert_eq!(report["streams_per_connection"], 4, "{report}");
    let requests = report["requests"].as_u64().unwrap();
    // 400 req/s for half a second, spread over 2 x 4 streams.
    assert!(requests > 0 && requests <= 200, "{report}");
    assert_eq!(report["errors_io"], 0, "{report}");
    assert_eq!(report["errors_status"], 0, "{report}");
    assert_eq!(report["errors_timeout"], 0, "{report}");
}

#[test]
fn relay_carries_http_between_loadgen_and_upstream() {
    let (_upstream, upstream_addr) = upstream();
    let (_relay, addr) = spawn_listening(
        env!("CARGO_BIN_EXE_relay"),
        &["--upstream", &upstream_addr],
        "relay",
    );
    let report = loadgen(&[
        "--target",
        &addr,
        "--max",
        "--connections",
        "4",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
    ]);
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors_io"], 0, "{report}");
    assert_eq!(report["errors_status"], 0, "{report}");
    assert_eq!(report["errors_timeout"], 0, "{report}");
}

/// More than the sockets buffer, read late, so some of it waits in the relay; then the
/// client's EOF ends the connection.
#[test]
fn relay_copies_bytes_both_ways_and_closes_after_the_client() {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    // An echo server: one connection, echoes until EOF, then closes.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = echo.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 8192];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let (_relay, addr) = spawn_listening(
        env!("CARGO_BIN_EXE_relay"),
        &["--upstream", &echo_addr],
        "relay",
    );
    let mut client = TcpStream::connect(&addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // (Shared with the writer's clone: the same socket.)
    client
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let payload = sent.clone();
    let (first_written, written) = std::sync::mpsc::channel();
    let writing = std::thread::spawn(move || {
        let (head, tail) = payload.split_at(1 << 20);
        writer.write_all(head).unwrap();
        let _ = first_written.send(());
        writer.write_all(tail).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // Nothing is read until the first MiB is in, so the echo backs up into the relay (bounded:
    // if the buffers on the way hold less, the wait ends and reading unblocks the writer).
    let _ = written.recv_timeout(Duration::from_secs(5));
    let mut received = Vec::new();
    client
        .read_to_end(&mut received)
        .expect("the relay closes after the client's EOF");
    writing.join().unwrap();
    server.join().unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the bytes came back changed");
}
