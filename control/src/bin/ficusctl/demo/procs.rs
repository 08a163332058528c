//! The processes the demo starts: `ficus-control` and one `ficus-sidecar` per workload, found
//! next to the running `ficusctl`. [`Processes`] owns them: dropping it (also while a panic
//! unwinds) kills and reaps every one, and removes the temporary directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::CtlError;

/// How long a process may take to answer on its admin or API port.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How many times a start that lost a port race is retried on fresh ports.
const START_ATTEMPTS: usize = 3;
/// Bound of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A loopback address with a port nobody listens on right now (the port is released, so a
/// start that loses it to someone else is retried on another).
pub fn free_addr() -> Result<SocketAddr, CtlError> {
    free_addrs::<1>().map(|[addr]| addr)
}

/// `N` different free loopback addresses: all are bound at once before any is released (one
/// at a time, the kernel may hand out the same released port twice).
pub fn free_addrs<const N: usize>() -> Result<[SocketAddr; N], CtlError> {
    let failed =
        |e: std::io::Error| CtlError::failed(format!("cannot find a free loopback port: {e}"));
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(TcpListener::bind("127.0.0.1:0").map_err(failed)?);
    }
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, listener) in addrs.iter_mut().zip(&held) {
        *addr = listener.local_addr().map_err(failed)?;
    }
    Ok(addrs)
}

/// One started process.
#[derive(Debug)]
struct Started {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Every process the demo started, its temporary directory and the binaries' directory.
#[derive(Debug)]
pub struct Processes {
    started: Vec<Started>,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    pids: Vec<u32>,
    ports: Vec<u16>,
    /// Log of the last start attempt that exited and was retried.
    last_failed_log: Option<PathBuf>,
}

/// A running sidecar's addresses.
#[derive(Debug, Clone)]
pub struct SidecarAddrs {
    /// `--node-id`, also the workload's instance name in the table.
    pub node_id: String,
    /// `--workload`.
    pub workload: String,
    /// `--outbound`.
    pub outbound: SocketAddr,
    /// `--inbound`.
    pub inbound: SocketAddr,
    /// `--admin`.
    pub admin: SocketAddr,
}

/// The running control plane's addresses.
#[derive(Debug, Clone, Copy)]
pub struct ControlAddrs {
    /// `--http`: the API.
    pub http: SocketAddr,
    /// `--grpc`: push and signing, over TLS.
    pub grpc: SocketAddr,
}

impl Processes {
    /// Finds `ficus-control` and `ficus-sidecar` next to this executable and makes the
    /// temporary directory.
    pub fn new() -> Result<Self, CtlError> {
        let exe = std::env::current_exe()
            .map_err(|e| CtlError::failed(format!("cannot find this executable: {e}")))?;
        let bin_dir = exe
            .parent()
            .map(Path::to_owned)
            .ok_or_else(|| CtlError::failed("this executable has no directory"))?;
        for name in ["ficus-control", "ficus-sidecar"] {
            if !bin_dir.join(name).is_file() {
                return Err(CtlError::failed(format!(
                    "{name} not found next to ficusctl in {}: build all binaries first \
                     (cargo build --release --workspace --bins)",
                    bin_dir.display()
                )));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("ficus-demo-")
            .tempdir()
            .map_err(|e| CtlError::failed(format!("cannot create a temporary directory: {e}")))?;
        Ok(Self {
            started: Vec::new(),
            bin_dir,
            dir,
            pids: Vec::new(),
            ports: Vec::new(),
            last_failed_log: None,
        })
    }

    /// The temporary directory (data dir, tokens, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of everything started (including failed starts).
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Every port given to a started process.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Records a port this process listens on (an app), for the list printed at the end.
    pub fn note_port(&mut self, port: u16) {
        self.ports.push(port);
    }

    /// The control plane's root certificate, for sidecars' `--ca-file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("data").join("ca.pem")
    }

    /// Starts `ficus-control` as the CA with a join token for each workload of `workloads`
    /// (in namespace `shop`), and waits until its API is ready.
    pub async fn start_control(&mut self, workloads: &[&str]) -> Result<ControlAddrs, CtlError> {
        let tokens = self.dir().join("join.tokens");
        let mut lines = String::from("# token workload namespace\n");
        for workload in workloads {
            let token = format!("demo-{workload}-{:016x}", rand::random::<u64>());
            lines.push_str(&format!("{token} {workload} shop\n"));
            write_private(&self.dir().join(format!("{workload}.token")), &token)?;
        }
        write_private(&tokens, &lines)?;
        let data = self.dir().join("data");
        for _ in 0..START_ATTEMPTS {
            let [http, grpc] = free_addrs()?;
            let addrs = ControlAddrs { http, grpc };
            let mut command = Command::new(self.bin_dir.join("ficus-control"));
            command
                .arg("--data")
                .arg(&data)
                .args(["--http", &addrs.http.to_string()])
                .args(["--grpc", &addrs.grpc.to_string()])
                .arg("--join-token-file")
                .arg(&tokens);
            let index = self.spawn("ficus-control", command, &[addrs.http, addrs.grpc])?;
            if self.wait_answer(index, addrs.http, "/ready").await? {
                return Ok(addrs);
            }
            self.forget_failed(index);
        }
        Err(self.failed_start("ficus-control"))
    }

    /// Starts a push-mode sidecar for `workload` (instance `node_id`) in front of `app`, and
    /// waits until its admin server answers (it becomes ready once it has config and a
    /// certificate).
    pub async fn start_sidecar(
        &mut self,
        control: ControlAddrs,
        workload: &str,
        node_id: &str,
        app: SocketAddr,
    ) -> Result<SidecarAddrs, CtlError> {
        for _ in 0..START_ATTEMPTS {
            let [outbound, inbound, admin] = free_addrs()?;
            let addrs = SidecarAddrs {
                node_id: node_id.to_owned(),
                workload: workload.to_owned(),
                outbound,
                inbound,
                admin,
            };
            let mut command = Command::new(self.bin_dir.join("ficus-sidecar"));
            command
                .args(["--control", &format!("https://{}", control.grpc)])
                .arg("--ca-file")
                .arg(self.ca_file())
                .arg("--token-file")
                .arg(self.dir().join(format!("{workload}.token")))
                .args(["--workload", workload, "--namespace", "shop"])
                .args(["--node-id", node_id])
                .args(["--outbound", &addrs.outbound.to_string()])
                .args(["--inbound", &addrs.inbound.to_string()])
                .args(["--admin", &addrs.admin.to_string()])
                .args(["--app", &app.to_string()])
                .args(["--workers", "1", "--drain-timeout", "2s"])
                .args(["--log-level", "warn"]);
            let ports = [addrs.outbound, addrs.inbound, addrs.admin];
            let index = self.spawn(node_id, command, &ports)?;
            if self.wait_answer(index, addrs.admin, "/live").await? {
                return Ok(addrs);
            }
            self.forget_failed(index);
        }
        Err(self.failed_start(node_id))
    }

    /// Whether every started process still runs; the name of the first that exited if not.
    pub fn exited(&mut self) -> Option<String> {
        self.started
            .iter_mut()
            .find_map(|p| p.child.try_wait().ok().flatten().map(|_| p.name.clone()))
    }

    /// The last lines a process logged.
    pub fn log_tail(&self, name: &str) -> String {
        let Some(process) = self.started.iter().rev().find(|p| p.name == name) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Kills and reaps every process; returns how many were still running.
    pub fn stop_all(&mut self) -> usize {
        let mut running = 0;
        for process in &mut self.started {
            if process.child.try_wait().ok().flatten().is_none() {
                running += 1;
                let _ = process.child.kill();
            }
            let _ = process.child.wait();
        }
        self.started.clear();
        running
    }

    fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        ports: &[SocketAddr],
    ) -> Result<usize, CtlError> {
        let log = self.dir().join(format!("{name}.log"));
        let file = File::create(&log)
            .map_err(|e| CtlError::failed(format!("cannot create {}: {e}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| CtlError::failed(format!("cannot start {name}: {e}")))?;
        self.pids.push(child.id());
        self.ports.extend(ports.iter().map(SocketAddr::port));
        self.started.push(Started {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(self.started.len() - 1)
    }

    /// Polls `path` on `addr` until it answers 200 (true) or the process exits (false; an error
    /// when it exited with 2, bad flags, which other ports would not change).
    async fn wait_answer(
        &mut self,
        index: usize,
        addr: SocketAddr,
        path: &str,
    ) -> Result<bool, CtlError> {
        let started = Instant::now();
        while started.elapsed() < START_DEADLINE {
            if let Some(status) = self.started[index].child.try_wait().ok().flatten() {
                if status.code() == Some(2) {
                    let name = self.started[index].name.clone();
                    return Err(CtlError::failed(format!(
                        "{name} refused its flags ({status}); are all binaries from the same \
                         build (cargo build --release --workspace --bins)? Its log:\n{}",
                        self.log_tail(&name)
                    )));
                }
                // Most likely a port taken between picking and binding it: try other ports.
                return Ok(false);
            }
            if let Ok((200, _)) = super::scrape::get(addr, path, PROBE_TIMEOUT).await {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = self.started[index].name.clone();
        Err(CtlError::failed(format!(
            "{name} did not answer {path} within {START_DEADLINE:?}; its log:\n{}",
            self.log_tail(&name)
        )))
    }

    /// Drops a start attempt that exited (reaped already), so that [`Processes::exited`] does
    /// not report it once a retry runs; its pid and ports stay listed. The last attempt's log
    /// is kept for [`Processes::failed_start`].
    fn forget_failed(&mut self, index: usize) {
        let mut attempt = self.started.remove(index);
        let _ = attempt.child.wait();
        self.last_failed_log = Some(attempt.log);
    }

    fn failed_start(&self, name: &str) -> CtlError {
        let log = self
            .last_failed_log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        CtlError::failed(format!(
            "{name} exited at start {START_ATTEMPTS} times; its log:\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        ))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Writes a secret file readable only by us.
fn write_private(path: &Path, text: &str) -> Result<(), CtlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))
}
