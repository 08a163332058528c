//! The `ficus-control` process under test: start (optionally pinned with `taskset`), wait
//! until ready, sample its memory and CPU from `/proc`, stop.
//!
//! `std::process` rather than tokio's: spawning and signalling do not block, and exit is
//! polled with `try_wait`, so the runtime needs no child-process driver.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api;

/// A running `ficus-control`; killed when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    /// Process id (`taskset` execs the control plane, so the id stays the same).
    pub pid: u32,
    /// Push streams.
    pub grpc: SocketAddr,
    /// HTTP API, `/ready`, `/metrics`.
    pub http: SocketAddr,
    /// Its stderr (logs).
    pub log: PathBuf,
}

/// Where to find and how to run the binary.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `ficus-control` binary.
    pub binary: PathBuf,
    /// `--data`: an empty directory, so every run starts at version 0.
    pub data: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// `taskset -c` CPU list, if it is to be pinned.
    pub cpus: Option<String>,
    /// `--grpc`.
    pub grpc: SocketAddr,
    /// `--http`.
    pub http: SocketAddr,
}

/// One reading of the control plane's resource use.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS so far), KiB.
    pub hwm_kib: u64,
    /// utime + stime, seconds (all threads).
    pub cpu_seconds: f64,
    /// stime alone, seconds: the kernel's share (loopback TCP is mostly here).
    pub system_seconds: f64,
}

impl ControlPlane {
    /// Starts the control plane and waits (up to `ready_within`) until `/ready` says 200.
    pub async fn start(launch: &Launch, ready_within: Duration) -> anyhow::Result<Self> {
        let log = std::fs::File::create(&launch.log)
            .with_context(|| format!("creating {}", launch.log.display()))?;
        let mut command = match &launch.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus).arg(&launch.binary);
                command
            }
            None => Command::new(&launch.binary),
        };
        command
            .arg("--insecure")
            .arg("--data")
            .arg(&launch.data)
            .arg("--grpc")
            .arg(launch.grpc.to_string())
            .arg("--http")
            .arg(launch.http.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.binary.display()))?;
        let mut control = Self {
            pid: child.id(),
            child,
            grpc: launch.grpc,
            http: launch.http,
            log: launch.log.clone(),
        };
        let deadline = Instant::now() + ready_within;
        loop {
            if let Some(status) = control.child.try_wait()? {
                bail!(
                    "ficus-control exited at start ({status}); its log:\n{}",
                    control.log_tail().await
                );
            }
            if api::ready(control.http).await {
                return Ok(control);
            }
            if Instant::now() >= deadline {
                bail!(
                    "ficus-control not ready within {ready_within:?}; its log:\n{}",
                    control.log_tail().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads memory and CPU from `/proc/PID/status` and `/proc/PID/stat`.
    pub async fn sample(&self, clock_ticks: f64) -> anyhow::Result<Sample> {
        let at = Instant::now();
        let status = proc_status(self.pid).await?;
        let (user, system) = cpu_split(self.pid).await?;
        Ok(Sample {
            at,
            rss_kib: status_kib(&status, "VmRSS:")?,
            hwm_kib: status_kib(&status, "VmHWM:")?,
            cpu_seconds: (user + system) as f64 / clock_ticks,
            system_seconds: system as f64 / clock_ticks,
        })
    }

    /// The CPUs it may run on and its thread count, from `/proc/PID/status`.
    pub async fn placement(&self) -> anyhow::Result<(String, u64)> {
        let status = proc_status(self.pid).await?;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        let threads = status_kib(&status, "Threads:")?;
        Ok((cpus, threads))
    }

    /// The last lines of its log, for error messages.
    pub async fn log_tail(&self) -> String {
        let text = tokio::fs::read_to_string(&self.log)
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        // `kill` from procps: std only sends SIGKILL, and a clean exit is worth asking for.
        let _ = Command::new("kill")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Drop kills it.
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn proc_status(pid: u32) -> anyhow::Result<String> {
    tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .with_context(|| format!("reading /proc/{pid}/status (has ficus-control exited?)"))
}

/// The number of a `Key:   123 kB` line of `/proc/PID/status`.
fn status_kib(status: &str, key: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {key} in /proc/PID/status"))
}

/// This process's `VmHWM`, KiB (the simulated sidecars' memory).
pub async fn own_peak_rss_kib() -> Option<u64> {
    let status = proc_status(std::process::id()).await.ok()?;
    status_kib(&status, "VmHWM:").ok()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub async fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let (user, system) = cpu_split(pid).await?;
    Ok(user + system)
}

/// (utime, stime) of a process (all its threads), in clock ticks.
async fn cpu_split(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).context("unexpected /proc/PID/stat format")
}

/// Fields 14 and 15 of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Busy time of the whole machine (every core, every process) in clock ticks: user, nice,
/// system, irq and softirq of the `cpu` line of `/proc/stat`.
pub async fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = tokio::fs::read_to_string("/proc/stat")
        .await
        .context("reading /proc/stat")?;
    parse_busy_ticks(&stat).context("unexpected /proc/stat format")
}

fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq ...
    Some(fields.first()? + fields.get(1)? + fields.get(2)? + fields.get(5)? + fields.get(6)?)
}

/// `USER_HZ`, from `getconf CLK_TCK` (100 on every mainstream Linux build).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The soft limit on open files of this process (the control plane inherits it).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The default control-plane binary: `ficus-control` next to this one (`target/release`).
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidate = dir.join("ficus-control");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "no ficus-control next to {}; build it (cargo build --release -p ficus-control) or \
         pass --control-bin",
        exe.display()
    )
}

/// A free port on 127.0.0.1, found by binding port 0. Another process could take it before
/// the control plane binds; the control plane then fails to start with a clear message.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_after_a_command_with_spaces() {
        let stat = "42 (ficus (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat), Some((7, 3)));
    }

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 0 0 0\ncpu0 5 0 2 500 3 1 1 0 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(21));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tficus-control\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t2\n";
        assert_eq!(status_kib(status, "VmRSS:").unwrap(), 1024);
        assert_eq!(status_kib(status, "Threads:").unwrap(), 2);
        assert!(status_kib(status, "VmSwap:").is_err());
    }
}
