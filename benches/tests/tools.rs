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
    let mut child = Command::new(env!("CARGO_BIN_EXE_upstream"))
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("upstream starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("upstream writes its address");
    let addr = line
        .trim()
        .strip_prefix("upstream listening on ")
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
