//! Running the real binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client;

/// Where the workspace's binaries are: `$FICUS_BIN_DIR`, else `<target>/debug` (honouring
/// `CARGO_TARGET_DIR`). The test command in README.md builds them first.
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("FICUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join("target")
                });
            target.join("debug")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A running `ficus-sidecar` on free loopback ports, killed on drop.
#[derive(Debug)]
pub struct Sidecar {
    child: Option<Child>,
    /// `--outbound`.
    pub outbound: SocketAddr,
    /// `--inbound`.
    pub inbound: SocketAddr,
    /// `--admin`.
    pub admin: SocketAddr,
    /// The config file (inside `dir`).
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
    stderr: Option<PanicWatch>,
}

/// Passes a child's stderr on to the test's and notes whether it reported a panic (a panic
/// in a task does not end the process, so nothing else would fail the test).
#[derive(Debug)]
pub struct PanicWatch {
    panicked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The last [`KEPT_STDERR`] bytes or so, for tests that look for a log line.
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Says when the reader has seen the end of stderr.
    done: Option<std::sync::mpsc::Receiver<()>>,
}

/// How much of a child's stderr a [`PanicWatch`] keeps.
const KEPT_STDERR: usize = 1 << 20;

impl PanicWatch {
    /// Starts reading `child`'s piped stderr.
    pub fn new(child: &mut Child) -> Option<Self> {
        use std::io::{BufRead, Write};
        let stderr = child.stderr.take()?;
        let panicked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::clone(&panicked);
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&kept);
        let (ended, done) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if line.windows(12).any(|w| w == b"panicked at ") {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // Straight to the process's stderr, as an inherited descriptor would.
                let _ = std::io::stderr().write_all(&line);
                if let Ok(mut kept) = keep.lock() {
                    if kept.len() + line.len() > KEPT_STDERR {
                        let half = kept.len() / 2;
                        kept.drain(..half);
                    }
                    kept.extend_from_slice(&line);
                }
                line.clear();
            }
            let _ = ended.send(());
        });
        Some(Self {
            panicked,
            kept,
            thread: Some(thread),
            done: Some(done),
        })
    }

    /// What the child has written to stderr so far (the last megabyte or so).
    pub fn text(&self) -> String {
        let kept = self.kept.lock().map(|k| k.clone()).unwrap_or_default();
        String::from_utf8_lossy(&kept).into_owned()
    }

    /// After the child has exited: whether it reported a panic (all of its stderr read).
    /// Waits at most a few seconds for the end of stderr: a grandchild that inherited it
    /// could hold it open, and the reader thread is then left behind.
    pub fn finish(&mut self) -> bool {
        if let (Some(thread), Some(done)) = (self.thread.take(), self.done.take()) {
            if done.recv_timeout(Duration::from_secs(5)).is_ok() {
                let _ = thread.join();
            }
        }
        self.panicked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How to start a sidecar.
#[derive(Debug, Clone, Default)]
pub struct SidecarOptions {
    /// `--app`; a free port when `None`.
    pub app: Option<SocketAddr>,
    /// `--workers` (default 2).
    pub workers: Option<usize>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<String>,
    /// Push mode: `--control URL` instead of `--config` (the config text is then ignored).
    pub control: Option<String>,
    /// `--cache-dir` (push mode).
    pub cache_dir: Option<PathBuf>,
    /// `--workload` (default `client`).
    pub workload: Option<String>,
    /// `--namespace` (default `shop`).
    pub namespace: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// Fixed listener addresses `(outbound, inbound, admin)` (to restart on the same ports).
    pub addresses: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Extra flags.
    pub extra: Vec<String>,
    /// A command the sidecar runs under, e.g. `ip netns exec NS setpriv --reuid 1337 ..`;
    /// the config directory is then made readable for other uids.
    pub prefix: Vec<String>,
    /// The config file is a named pipe (the config text is then ignored): start-up waits in
    /// reading it until the test writes a config into [`Sidecar::config_path`] and closes it,
    /// so a test can act at a known point of start-up.
    pub config_fifo: bool,
}

impl Sidecar {
    /// Starts a sidecar on `config` (YAML) and waits until `/ready` says 200.
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, SidecarOptions::default()).await
    }

    /// Starts a sidecar with options and waits until it is ready. Free ports are picked by
    /// binding port 0 and releasing it, so another process can take one in between; a sidecar
    /// that exits at start (a bind failure) is started again on new ports, up to 3 times
    /// (addresses in `config` stay as they are: see [`Sidecar::start_listening`]).
    pub async fn start_with(config: &str, options: SidecarOptions) -> Self {
        Self::start_listening(|_| config.to_owned(), options)
            .await
            .0
    }

    /// [`Sidecar::start_with`] for a config with a TCP `listen:` address: `config` renders the
    /// config for a free address picked here, picked again with the other ports when the
    /// sidecar exits at start (the port was taken in between). The sidecar, and the address
    /// it listens on.
    pub async fn start_listening(
        config: impl Fn(SocketAddr) -> String,
        options: SidecarOptions,
    ) -> (Self, SocketAddr) {
        for _ in 0..3 {
            let listen = crate::free_addr();
            let mut sidecar = Self::spawn(&config(listen), options.clone());
            if sidecar.try_wait_ready(Duration::from_secs(20)).await {
                return (sidecar, listen);
            }
        }
        panic!("sidecar failed to start 3 times");
    }

    /// Waits until `/ready` answers 200 (true) or the process exits (false); panics after
    /// `deadline`.
    async fn try_wait_ready(&mut self, deadline: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!("sidecar exited at start with {status}; retrying on other ports");
                self.child = None;
                return false;
            }
            if let Ok(response) = client::get(self.admin, "admin", "/ready").await {
                if response.status == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sidecar not ready within {deadline:?}");
    }

    /// Starts a sidecar without waiting for anything.
    pub fn spawn(config: &str, options: SidecarOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("config.yaml");
        if options.config_fifo {
            let made = Command::new("mkfifo")
                .arg(&config_path)
                .status()
                .expect("mkfifo (coreutils) runs");
            assert!(made.success(), "mkfifo {}", config_path.display());
        } else {
            std::fs::write(&config_path, config).expect("write config");
        }
        let (outbound, inbound, admin) = options
            .addresses
            .unwrap_or_else(|| (crate::free_addr(), crate::free_addr(), crate::free_addr()));
        let app = options.app.unwrap_or_else(crate::free_addr);
        let mut command = match options.prefix.split_first() {
            None => Command::new(binary("ficus-sidecar")),
            Some((program, args)) => {
                use std::os::unix::fs::PermissionsExt;
                let readable = std::fs::Permissions::from_mode(0o755);
                std::fs::set_permissions(dir.path(), readable).expect("chmod config dir");
                let mut command = Command::new(program);
                command.args(args).arg(binary("ficus-sidecar"));
                command
            }
        };
        match &options.control {
            Some(url) => command.args(["--control", url]),
            None => command.arg("--config").arg(&config_path),
        };
        if let Some(dir) = &options.cache_dir {
            command.arg("--cache-dir").arg(dir);
        }
        if let Some(id) = &options.node_id {
            command.args(["--node-id", id]);
        }
        let workload = options.workload.as_deref().unwrap_or("client");
        let namespace = options.namespace.as_deref().unwrap_or("shop");
        command
            .args(["--outbound", &outbound.to_string()])
            .args(["--inbound", &inbound.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--app", &app.to_string()])
            .args(["--workers", &options.workers.unwrap_or(2).to_string()])
            .args(["--workload", workload, "--namespace", namespace])
            .args(
                options
                    .drain_timeout
                    .iter()
                    .flat_map(|d| ["--drain-timeout".to_owned(), d.clone()]),
            )
            .args(&options.extra)
            .env(
                "RUST_LOG",
                std::env::var("FICUS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ficus-sidecar");
        let stderr = PanicWatch::new(&mut child);
        Self {
            child: Some(child),
            outbound,
            inbound,
            admin,
            config_path,
            dir,
            stderr,
        }
    }

    /// Starts a push-mode sidecar subscribed to `control` and waits until its admin server
    /// answers (it may not be ready: that needs a config). A sidecar that exits first (one of
    /// its free ports was taken in between) is started again on new ports, up to 3 times,
    /// unless the options fix its addresses.
    pub async fn start_push(control: &str, options: SidecarOptions) -> Self {
        let options = SidecarOptions {
            control: Some(control.to_owned()),
            ..options
        };
        for _ in 0..3 {
            let mut sidecar = Self::spawn("", options.clone());
            let started = Instant::now();
            loop {
                if client::get(sidecar.admin, "admin", "/live").await.is_ok() {
                    return sidecar;
                }
                if let Some(status) = sidecar.wait_exit_now() {
                    assert!(
                        options.addresses.is_none(),
                        "sidecar exited at start with {status}"
                    );
                    eprintln!("sidecar exited at start with {status}; retrying on other ports");
                    sidecar.child = None;
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "sidecar admin never came up"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("sidecar failed to start 3 times");
    }

    /// Waits until `/ready` answers 200; panics after `deadline`.
    pub async fn wait_ready(&self, deadline: Duration) {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(response) = client::get(self.admin, "admin", "/ready").await {
                if response.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sidecar not ready within {deadline:?}");
    }

    /// Replaces the config file atomically (write a temp file, rename over).
    pub fn write_config(&self, config: &str) {
        let temp = self.dir.path().join(".config.yaml.tmp");
        std::fs::write(&temp, config).expect("write temp config");
        std::fs::rename(&temp, &self.config_path).expect("rename config");
    }

    /// `GET /config` as JSON.
    pub async fn config(&self) -> serde_json::Value {
        let response = client::get(self.admin, "admin", "/config")
            .await
            .expect("GET /config");
        serde_json::from_slice(&response.body).expect("/config is JSON")
    }

    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> crate::client::Metrics {
        let response = client::get(self.admin, "admin", "/metrics")
            .await
            .expect("GET /metrics");
        crate::client::Metrics::parse(&String::from_utf8_lossy(&response.body))
    }

    /// Polls what the sidecar logged (stderr) until it contains `text`; panics after
    /// `deadline`.
    pub async fn wait_log(&self, text: &str, deadline: Duration) {
        let started = Instant::now();
        loop {
            if self
                .stderr
                .as_ref()
                .is_some_and(|s| s.text().contains(text))
            {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "the sidecar did not log {text:?} within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `/metrics` until the samples named `name` with `labels` sum to at least `value`
    /// (counters that move a little after what the test saw, such as at a connection's end);
    /// panics with the last sum after `deadline`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        deadline: Duration,
    ) -> crate::client::Metrics {
        let started = std::time::Instant::now();
        loop {
            let metrics = self.metrics().await;
            let now = metrics.sum(name, labels);
            if now >= value {
                return metrics;
            }
            assert!(
                started.elapsed() < deadline,
                "{name}{labels:?} is {now}, not {value}, after {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/config` reports `version` (or later).
    pub async fn wait_version(&self, version: u64, deadline: Duration) {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self.config().await["version"].as_u64().unwrap_or(0) >= version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("config version {version} not reached within {deadline:?}");
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process's resident memory (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the sidecar's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// What the process's descriptors point at (`/proc/PID/fd` links).
    pub fn open_fds(&self) -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the sidecar's /proc fd directory")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`kill -NAME`: `HUP`, `USR1`, ..).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// `PUT /log-level` (e.g. `info`, for a test that waits for an info line: tests start
    /// sidecars at `warn`).
    pub async fn set_log_level(&self, filter: &str) {
        let request = http::Request::put("/log-level")
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                filter.to_owned(),
            )))
            .expect("a valid request");
        let response = client::send(self.admin, request)
            .await
            .expect("PUT /log-level");
        assert_eq!(response.status, 200, "PUT /log-level {filter}");
    }

    /// The exit status if the process has already exited.
    pub fn wait_exit_now(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit, at most `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "sidecar did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // RELIABILITY: no panics on any input. A test that is failing anyway keeps its own
        // message.
        let panicked = self.stderr.as_mut().is_some_and(PanicWatch::finish);
        if panicked && !std::thread::panicking() {
            panic!("ficus-sidecar panicked during the test (its stderr is above)");
        }
    }
}

/// Runs `ficus-sidecar` with `args` to completion (at most 20 s); returns status and stderr.
pub async fn run_sidecar(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(binary("ficus-sidecar"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ficus-sidecar");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return (status, stderr);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ficus-sidecar {args:?} did not exit within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(script: &str) -> bool {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut watch = PanicWatch::new(&mut child).unwrap();
        child.wait().unwrap();
        watch.finish()
    }

    #[test]
    fn a_panic_on_stderr_is_noticed() {
        assert!(watch(
            "echo starting >&2; echo \"thread 'fake' panicked at the-panic-watch-test (not a real panic)\" >&2"
        ));
        assert!(!watch("echo 'WARN nothing panicked here' >&2"));
    }
}
