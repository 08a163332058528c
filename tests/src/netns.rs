//! Network namespaces for the transparent-interception tests (root only).
//!
//! Each test builds its own little network: namespaces named after the test process and a
//! counter (`ficus-<pid>-<n>-<role>`), joined by veth pairs created directly inside them, so
//! nothing ever appears in the host namespace and deleting the namespaces (in `Drop`, also when
//! the test panics) removes every interface, address and iptables rule with them.
//!
//! Sockets are created inside a namespace by a short-lived thread that first joins it
//! (`setns`); a socket stays in the namespace it was created in, so the test's tokio runtime
//! can use it afterwards. Processes (the sidecar, `iptables-save`) run under
//! `ip netns exec`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::client::Metrics;
use crate::control::ControlPlane;
use crate::process::{binary, Sidecar, SidecarOptions};

/// Longest wait for any command or network exchange of these helpers.
pub const TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why interception tests cannot run here (not root, tools missing), or `None`.
pub fn skip_reason() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return Some("not root (network namespaces and iptables need it; CI runs as root)".into());
    }
    for tool in [
        "ip",
        "iptables",
        "ip6tables",
        "iptables-save",
        "ip6tables-save",
        "setpriv",
    ] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{tool} not installed (scripts/install-test-deps installs it)"
            ));
        }
    }
    None
}

/// Runs a command to completion within [`TIMEOUT`]; its output, or an error naming it.
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("{command:?}: {e}"))?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{command:?} did not finish within {TIMEOUT:?}");
        }
        // Outputs here are small (they fit the pipe buffer), so polling the exit is enough.
        // clippy.toml disallows std::thread::sleep; a timed park waits the same way.
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let description = format!("{command:?}");
    let output = run(command)?;
    if !output.status.success() {
        anyhow::bail!(
            "{description} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ficus-<pid>-<n>-<role>` with its loopback up.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ficus-{}-{n}-{role}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on the links made here: addresses (link-local ones
        // too, which neighbour discovery uses) are usable as soon as the link is up.
        ns.enter(|| {
            for conf in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
            Ok(())
        })?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS args..`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// The `ip netns exec NS` prefix, for a process started elsewhere.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it creates live here).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }

    /// A listener bound to `address` inside the namespace.
    pub fn listen(&self, address: SocketAddr) -> anyhow::Result<TcpListener> {
        let listener = self.enter(move || {
            let listener = std::net::TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        Ok(TcpListener::from_std(listener)?)
    }

    /// A connection to `address` made from inside the namespace (as this process's uid).
    pub async fn connect(&self, address: SocketAddr) -> anyhow::Result<TcpStream> {
        let path = format!("/run/netns/{}", self.name);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let connected = (|| {
                let file = std::fs::File::open(&path)?;
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let stream = std::net::TcpStream::connect_timeout(&address, TIMEOUT)?;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(stream)
            })();
            let _ = sender.send(connected);
        });
        let stream = tokio::time::timeout(TIMEOUT + Duration::from_secs(1), receiver)
            .await
            .map_err(|_| anyhow::anyhow!("connect to {address} in {} timed out", self.name))?
            .map_err(|_| anyhow::anyhow!("connect thread ended"))?
            .map_err(|e| anyhow::anyhow!("connect to {address} in {}: {e}", self.name))?;
        Ok(TcpStream::from_std(stream)?)
    }

    /// `iptables-save -t nat` (or `ip6tables-save`) without comments and counters, so two
    /// dumps compare equal exactly when the rules are the same.
    pub fn nat_rules(&self, ipv6: bool) -> anyhow::Result<String> {
        let tool = if ipv6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        let text = run_ok(self.command(tool).args(["-t", "nat"]))?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.strip_suffix(" [0:0]") {
                Some(chain) => chain.to_owned(),
                None => l.split(" [").next().unwrap_or(l).to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and their veth peers), addresses
        // and rules; processes still inside keep it alive only until they exit.
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Joins `a` and `b` with a veth pair (`eth0` in both, up) and gives each end its addresses
/// (CIDRs; IPv6 ones without duplicate address detection, so they are usable at once).
pub fn link(a: &NetNs, a_addrs: &[&str], b: &NetNs, b_addrs: &[&str]) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args([
        "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0", "netns",
        &b.name,
    ]))?;
    for (ns, addrs) in [(a, a_addrs), (b, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", "eth0"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
    }
    // Static neighbour entries: the first IPv6 neighbour solicitation after a link comes up
    // can be lost, and waiting a second for the retry would outlast a connect timeout.
    let mac = |ns: &NetNs| -> anyhow::Result<String> {
        let shown = ns.ip(&["link", "show", "eth0"])?;
        shown
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no MAC address in {shown:?}"))
    };
    let (a_mac, b_mac) = (mac(a)?, mac(b)?);
    for (ns, peer_addrs, peer_mac) in [(a, b_addrs, &b_mac), (b, a_addrs, &a_mac)] {
        for cidr in peer_addrs {
            let ip = cidr.split('/').next().unwrap_or(cidr);
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                peer_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
    }
    // Wait (bounded) until no address is tentative any more.
    let started = Instant::now();
    for ns in [a, b] {
        while !ns
            .ip(&["-6", "addr", "show", "tentative"])?
            .trim()
            .is_empty()
        {
            if started.elapsed() > TIMEOUT {
                anyhow::bail!("IPv6 addresses in {} stay tentative", ns.name);
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// An HTTP server in a namespace that answers every request with its name (body and
/// `x-upstream`) and counts the requests it got.
#[derive(Debug)]
pub struct NsHttpServer {
    /// Requests received.
    pub received: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: JoinHandle<()>,
}

impl NsHttpServer {
    /// Starts `name` on `address` inside `ns`.
    pub fn start(ns: &NetNs, address: SocketAddr, name: &'static str) -> anyhow::Result<Self> {
        let listener = ns.listen(address)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        if let Ok(mut list) = recorded.lock() {
                            list.push(request.headers().clone());
                        }
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from(name)));
                            response
                                .headers_mut()
                                .insert("x-upstream", http::HeaderValue::from_static(name));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { received, task })
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for NsHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server-first TCP server in a namespace: greets each connection, then echoes.
#[derive(Debug)]
pub struct NsGreeter {
    task: JoinHandle<()>,
}

impl NsGreeter {
    /// Starts on `address` inside `ns`, greeting with `greeting`.
    pub fn start(ns: &NetNs, address: SocketAddr, greeting: &'static str) -> anyhow::Result<Self> {
        let listener = ns.listen(address)?;
        Ok(Self {
            task: crate::upstream::serve_greeting_echo(listener, greeting),
        })
    }
}

impl Drop for NsGreeter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read by [`http_get`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Fetched {
    /// The first header named `name`, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// `GET path` over a new connection made inside `ns` to `address`, with `Host: host` and
/// `extra` headers, `Connection: close`; the whole response within [`TIMEOUT`].
pub async fn http_get(
    ns: &NetNs,
    address: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Fetched> {
    let mut stream = ns.connect(address).await?;
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| anyhow::anyhow!("no complete answer from {address} within {TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("incomplete response from {address}: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line from {address}: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Fetched {
        status,
        headers,
        body,
    })
}

/// Decodes a complete chunked body (test responses are small and whole).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// Forwards connections accepted inside a namespace to an address of the host namespace (the
/// control plane on the host's loopback, for sidecars inside namespaces); stops on drop.
#[derive(Debug)]
pub struct Relay {
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `listen` inside `ns`; each connection is joined to a new one to `to`.
    pub fn start(ns: &NetNs, listen: SocketAddr, to: SocketAddr) -> anyhow::Result<Self> {
        let listener = ns.listen(listen)?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inside, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let connected = tokio::time::timeout(TIMEOUT, TcpStream::connect(to)).await;
                    if let Ok(Ok(mut outside)) = connected {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET uri` (absolute, `http://authority/path`) over a new h2c (prior knowledge) connection
/// made inside `ns` to `address`, with `extra` headers; status and body within [`TIMEOUT`].
pub async fn h2c_get(
    ns: &NetNs,
    address: SocketAddr,
    uri: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = ns.connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(uri);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new()))?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no h2c answer from {address} within {TIMEOUT:?}"))?
}

/// The uid transparent sidecars run as (their own traffic is not intercepted).
pub const PROXY_UID: &str = "1337";

/// A transparent sidecar's admin address inside its namespace.
pub const TRANSPARENT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);

/// The command prefix that runs a program inside `ns` as uid and gid 1337 ([`PROXY_UID`]),
/// no supplementary groups: how a transparent sidecar runs (`SidecarOptions::prefix`).
pub fn proxy_prefix(ns: &NetNs) -> Vec<String> {
    let mut prefix = ns.exec_prefix();
    prefix.extend(
        [
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            "--",
        ]
        .map(str::to_owned),
    );
    prefix
}

/// Installs the rules in `ns` (`ficus-sidecar redirect --proxy-uid 1337`, asserting it
/// succeeds) and starts a transparent sidecar there as uid 1337 on `config`: outbound on
/// 127.0.0.1:15001, inbound on 0.0.0.0:15006, admin on [`TRANSPARENT_ADMIN`], `--transparent`
/// before `options.extra`. Does not wait for it to be ready ([`wait_ready`]).
pub fn start_transparent(ns: &NetNs, config: &str, options: SidecarOptions) -> Sidecar {
    let output = run(ns
        .command(binary("ficus-sidecar").to_str().expect("utf-8 path"))
        .args(["redirect", "--proxy-uid", PROXY_UID]))
    .expect("run ficus-sidecar redirect");
    assert!(
        output.status.success(),
        "redirect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let prefix = proxy_prefix(ns);
    let mut extra = vec!["--transparent".to_owned()];
    extra.extend(options.extra);
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let options = SidecarOptions {
        addresses: Some((
            loopback(15001),
            SocketAddr::from(([0, 0, 0, 0], 15006)),
            TRANSPARENT_ADMIN,
        )),
        // Nothing listens there: inbound must go to the original port instead.
        app: Some(loopback(9)),
        extra,
        prefix,
        ..options
    };
    Sidecar::spawn(config, options)
}

/// Waits (up to 30 s, then panics) until the transparent sidecar in `ns` says it is ready.
pub async fn wait_ready(ns: &NetNs) {
    let started = Instant::now();
    loop {
        if let Ok(ready) = http_get(ns, TRANSPARENT_ADMIN, "admin", "/ready", &[]).await {
            if ready.status == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "transparent sidecar in {} not ready within 30 s",
            ns.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `/metrics` of the transparent sidecar in `ns`.
pub async fn transparent_metrics(ns: &NetNs) -> Metrics {
    let fetched = http_get(ns, TRANSPARENT_ADMIN, "admin", "/metrics", &[])
        .await
        .expect("GET /metrics in the namespace");
    Metrics::parse(&fetched.body)
}

/// A TLS control plane (the mesh CA) on the host's loopback for two pods' transparent
/// sidecars in push mode, workloads `web` and `payments` (namespace `shop`), each with its
/// join token: each namespace reaches it through a relay on its own 127.0.0.1:15012
/// (loopback is never intercepted).
pub struct PushMesh {
    /// The control plane.
    pub control: ControlPlane,
    files: tempfile::TempDir,
    ca: std::path::PathBuf,
    _relays: (Relay, Relay),
}

impl PushMesh {
    /// The address each namespace's relay listens on.
    pub const GRPC: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15012);

    /// Starts the control plane and a relay to it in `pod` and in `remote`.
    pub async fn start(pod: &NetNs, remote: &NetNs) -> Self {
        let files = tempfile::tempdir().expect("temporary directory");
        let tokens = files.path().join("tokens");
        std::fs::write(&tokens, "tok-web web shop\ntok-payments payments shop\n")
            .expect("write the join tokens");
        let control = ControlPlane::start_tls(
            None,
            &["--join-token-file", tokens.to_str().expect("utf-8 path")],
        )
        .await;
        // uid 1337 reads the root and its token from here.
        {
            use std::os::unix::fs::PermissionsExt;
            let readable = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(files.path(), readable).expect("chmod the directory");
        }
        let ca = files.path().join("ca.pem");
        std::fs::copy(control.ca_file(), &ca).expect("copy the root");
        for workload in ["web", "payments"] {
            std::fs::write(files.path().join(workload), format!("tok-{workload}\n"))
                .expect("write a token file");
        }
        let _relays = (
            Relay::start(pod, Self::GRPC, control.grpc).expect("relay in the pod"),
            Relay::start(remote, Self::GRPC, control.grpc).expect("relay in the remote"),
        );
        Self {
            control,
            files,
            ca,
            _relays,
        }
    }

    /// Applies `yaml` (`ficusctl apply -f -`), asserting it succeeded.
    pub async fn apply(&self, yaml: &str) {
        let applied = self.control.ctl_stdin(&["apply", "-f", "-"], yaml).await;
        assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    }

    /// Installs the rules in `ns` and starts `workload`'s transparent sidecar there
    /// (`<workload>-1`), pushed by the control plane, not waiting for it to be ready.
    pub fn sidecar(&self, ns: &NetNs, workload: &str) -> Sidecar {
        start_transparent(ns, "", self.options(workload))
    }

    /// The options of `workload`'s push-mode sidecar (`<workload>-1`, its join token and the
    /// root), for a sidecar started some other way than [`PushMesh::sidecar`].
    pub fn options(&self, workload: &str) -> SidecarOptions {
        SidecarOptions {
            control: Some(format!("https://{}", Self::GRPC)),
            workload: Some(workload.to_owned()),
            node_id: Some(format!("{workload}-1")),
            extra: vec![
                "--token-file".into(),
                self.files.path().join(workload).display().to_string(),
                "--ca-file".into(),
                self.ca.display().to_string(),
            ],
            ..SidecarOptions::default()
        }
    }
}
