//! Running the real `ficus-control` and `ficusctl`.
//!
//! [`ControlPlane`] starts `ficus-control --insecure` on free loopback ports over a data dir
//! (a temp dir, or one the test owns so that it can restart on it), waits for `/ready`, and
//! kills it on drop. [`ControlPlane::restart`] keeps the ports and the data dir, so sidecars
//! subscribed to [`ControlPlane::grpc_url`] reconnect to the new process.
//! [`ControlPlane::start_tls`] starts it without `--insecure`: TLS on `--grpc` and the CA, whose
//! root is in [`ControlPlane::ca_file`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client;
use crate::process::{binary, Sidecar, SidecarOptions};

/// How long `ficus-control` may take to answer `/ready`.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long one `ficusctl` run may take.
const CTL_DEADLINE: Duration = Duration::from_secs(60);

/// A running `ficus-control`, killed on drop.
#[derive(Debug)]
pub struct ControlPlane {
    child: Option<Child>,
    /// `--http`: the API, `/metrics`, `/ready`.
    pub http: SocketAddr,
    /// `--grpc`: the push streams.
    pub grpc: SocketAddr,
    data_dir: PathBuf,
    extra: Vec<String>,
    /// Holds the logs, and the data dir when the test did not give one.
    dir: tempfile::TempDir,
    starts: usize,
    /// Started without `--insecure`.
    tls: bool,
    /// A command the control plane runs under (e.g. `unshare -Urm ..`), empty for none.
    prefix: Vec<String>,
}

/// What one `ficusctl` run did.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl ControlPlane {
    /// Starts a control plane over a fresh temp data dir and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    /// Starts a control plane over `data_dir` (created when absent) and waits until ready.
    pub async fn start_on(data_dir: &Path) -> Self {
        Self::start_with(Some(data_dir), &[]).await
    }

    /// Starts a control plane with extra flags and waits until it is ready. A start that fails
    /// because a picked port was taken in the meantime is retried on other ports.
    pub async fn start_with(data_dir: Option<&Path>, extra: &[&str]) -> Self {
        Self::start_inner(data_dir, extra, false).await
    }

    /// Like [`ControlPlane::start_with`] but without `--insecure`: the control plane is the
    /// mesh CA (root in [`ControlPlane::ca_file`]) and `--grpc` speaks TLS.
    pub async fn start_tls(data_dir: Option<&Path>, extra: &[&str]) -> Self {
        Self::start_inner(data_dir, extra, true).await
    }

    /// `<data>/ca.pem`: the mesh root, for sidecars' `--ca-file` (TLS mode only).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// `https://` URL of the push endpoint (TLS mode).
    pub fn grpc_tls_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Starts `workload`'s push-mode sidecar ([`Self::join_options`], the token file
    /// `tokens/<workload>`) on [`Self::grpc_tls_url`] and waits until it is live.
    pub async fn start_joined(
        &self,
        tokens: &Path,
        workload: &str,
        app: Option<SocketAddr>,
    ) -> Sidecar {
        let options = self.join_options(workload, &tokens.join(workload), app);
        Sidecar::start_push(&self.grpc_tls_url(), options).await
    }

    /// Options for `workload`'s sidecar (node `<workload>-1`, its app at `app`) joining this
    /// TLS control plane with the join token in `token_file` and trusting [`Self::ca_file`].
    pub fn join_options(
        &self,
        workload: &str,
        token_file: &Path,
        app: Option<SocketAddr>,
    ) -> SidecarOptions {
        SidecarOptions {
            workload: Some(workload.to_owned()),
            node_id: Some(format!("{workload}-1")),
            app,
            extra: vec![
                "--token-file".into(),
                token_file.display().to_string(),
                "--ca-file".into(),
                self.ca_file().display().to_string(),
            ],
            ..SidecarOptions::default()
        }
    }

    /// Like [`ControlPlane::start_with`] (`--insecure`), run under `prefix`: a command that
    /// ends by executing the rest of its arguments, e.g. `unshare -Urm sh -c '..; exec "$@"'`.
    pub async fn start_under(prefix: &[&str], data_dir: &Path, extra: &[&str]) -> Self {
        let prefix: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
        Self::start_prefixed(Some(data_dir), extra, false, prefix).await
    }

    async fn start_inner(data_dir: Option<&Path>, extra: &[&str], tls: bool) -> Self {
        Self::start_prefixed(data_dir, extra, tls, Vec::new()).await
    }

    async fn start_prefixed(
        data_dir: Option<&Path>,
        extra: &[&str],
        tls: bool,
        prefix: Vec<String>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_owned);
        let mut control = Self {
            child: None,
            http: crate::free_addr(),
            grpc: crate::free_addr(),
            data_dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            dir,
            starts: 0,
            tls,
            prefix,
        };
        for _ in 0..3 {
            control.spawn();
            if control.try_wait_ready().await {
                return control;
            }
            (control.http, control.grpc) = (crate::free_addr(), crate::free_addr());
        }
        panic!("ficus-control failed to start 3 times:\n{}", control.log());
    }

    /// Starts a control plane (`--insecure`, a fresh data dir, `extra` flags) without waiting
    /// for it, for tests of its start-up; [`ControlPlane::wait_started`] waits for it.
    pub fn spawn_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut control = Self {
            child: None,
            http: crate::free_addr(),
            grpc: crate::free_addr(),
            data_dir: dir.path().join("data"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            dir,
            starts: 0,
            tls: false,
            prefix: Vec::new(),
        };
        control.spawn();
        control
    }

    /// Waits until `/ready` answers 200; the exit status if the process exits first. Panics
    /// after a deadline.
    pub async fn wait_started(&mut self) -> Result<(), ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < READY_DEADLINE {
            if let Some(status) = self.exited() {
                return Err(status);
            }
            if let Ok(response) = client::get(self.http, "control", "/ready").await {
                if response.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "ficus-control not ready within {READY_DEADLINE:?}:\n{}",
            self.log()
        );
    }

    /// `http://` URL of the API, for `ficusctl --server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://` URL of the push endpoint, for `ficus-sidecar --control` (plaintext: the
    /// control plane runs with `--insecure`).
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The `--data` directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, then reap: nothing gets a chance to flush.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (the process keeps running until it exits by itself).
    pub fn terminate(&self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
        }
    }

    /// Sends the signal `name` (`kill -NAME`: `HUP`, `USR1`, ..).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// The exit status if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Waits for the process to exit, at most `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "ficus-control did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process (SIGKILL) if it runs, starts it again on the same ports and data dir,
    /// and waits until it is ready. Binding a port the previous process just released can
    /// fail briefly, so a start that fails to listen is retried.
    pub async fn restart(&mut self) {
        self.kill_9();
        for _ in 0..20 {
            self.spawn();
            if self.try_wait_ready().await {
                return;
            }
            assert!(
                self.log()
                    .lines()
                    .last()
                    .is_some_and(|l| l.contains("cannot listen")),
                "ficus-control failed to restart:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "ficus-control could not restart on {} / {}:\n{}",
            self.http,
            self.grpc,
            self.log()
        );
    }

    /// Everything the control plane logged (stderr of every start).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("--- restart ---\n")
    }

    /// Runs `ficusctl --server <this> args…`.
    pub async fn ctl(&self, args: &[&str]) -> CtlOutput {
        ficusctl(&self.url(), args, None).await
    }

    /// Runs `ficusctl --server <this> args…` with `stdin` as its standard input.
    pub async fn ctl_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        ficusctl(&self.url(), args, Some(stdin)).await
    }

    /// `GET path` on the API as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = client::get(self.http, "control", path).await.expect("GET");
        serde_json::from_slice(&response.body).expect("JSON answer")
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("control-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let program = binary("ficus-control");
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        };
        let child = command
            .args((!self.tls).then_some("--insecure"))
            .arg("--data")
            .arg(&self.data_dir)
            .args([
                "--grpc",
                &self.grpc.to_string(),
                "--http",
                &self.http.to_string(),
            ])
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("FICUS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ficus-control");
        self.child = Some(child);
    }

    /// True once `/ready` answers 200; false when the process exited first.
    async fn try_wait_ready(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < READY_DEADLINE {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(response) = client::get(self.http, "control", "/ready").await {
                if response.status == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "ficus-control not ready within {READY_DEADLINE:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill_9();
        // RELIABILITY: no panics on any input. redb's own assertions on a corrupted file are
        // caught and reported as corruption (`store::open_database`), so they do not count.
        let log = self.log();
        let panics = log
            .lines()
            .filter(|line| line.contains("panicked at ") && !line.contains("/redb-"))
            .collect::<Vec<_>>();
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("ficus-control panicked during the test: {panics:?}\n{log}");
        }
    }
}

/// Runs `command` to completion with stdout and stderr captured, feeding it `stdin` (else
/// stdin is empty); kills it and panics (naming `what`) if it has not exited within `deadline`.
pub async fn output_within(
    mut command: Command,
    stdin: Option<String>,
    deadline: Duration,
    what: &str,
) -> std::process::Output {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let run = tokio::task::spawn_blocking(move || {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        child.wait_with_output()
    });
    match tokio::time::timeout(deadline, run).await {
        Ok(joined) => joined
            .expect("wait task")
            .unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not exit within {deadline:?}");
        }
    }
}

/// Runs `ficusctl --server server args…` to completion (at most a minute), feeding `stdin`.
pub async fn ficusctl(server: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    let mut command = Command::new(binary("ficusctl"));
    command
        .args(["--server", server])
        .args(args)
        .env_remove("FICUS_SERVER");
    let output = output_within(
        command,
        stdin.map(str::to_owned),
        CTL_DEADLINE,
        &format!("ficusctl {args:?}"),
    )
    .await;
    CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `ficus-control args…` expecting it to exit by itself (within 20 s, e.g. on a bad data
/// dir); returns its status and stderr.
pub async fn run_control(args: &[&str]) -> (ExitStatus, String) {
    let child = Command::new(binary("ficus-control"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ficus-control");
    let pid = child.id();
    let run = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(joined) => {
            let output = joined
                .expect("ficus-control task")
                .expect("ficus-control output");
            (
                output.status,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("ficus-control {args:?} did not exit within 20 s");
        }
    }
}
