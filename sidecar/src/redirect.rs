//! `ficus-sidecar redirect`: the nat rules of transparent mode, for iptables and ip6tables.
//!
//! What the rules do (the same for both families; what the init container of an injected pod
//! runs, as root with `NET_ADMIN`, before the app and the sidecar start):
//!
//! ```text
//! PREROUTING  -p tcp -j FICUS_INBOUND
//! FICUS_INBOUND     -p tcp --dport <sidecar ports, --exclude-inbound-ports> -j RETURN
//! FICUS_INBOUND     -p tcp -j FICUS_IN_REDIRECT
//! FICUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
//! OUTPUT      -p tcp -j FICUS_OUTPUT
//! FICUS_OUTPUT      -o lo -j RETURN                    (loopback: the pod talking to itself)
//! FICUS_OUTPUT      -m owner --uid-owner 1337 -j RETURN (the proxy's own connections: no loop)
//! FICUS_OUTPUT      -d 127.0.0.0/8 (::1/128) -j RETURN
//! FICUS_OUTPUT      -p tcp --dport <--exclude-outbound-ports> -j RETURN
//! FICUS_OUTPUT      -d <--exclude-cidrs of the family> -j RETURN
//! FICUS_OUTPUT      -p tcp -j FICUS_REDIRECT
//! FICUS_REDIRECT    -p tcp -j REDIRECT --to-ports 15001
//! ```
//!
//! Idempotent: our chains are replaced as a whole with `iptables-restore --noflush` (one atomic
//! transaction that leaves every other chain alone), and the two jumps from the built-in chains
//! are added only when `-C` does not find them. `--cleanup` deletes exactly those jumps and
//! chains. We run the system's binaries (`iptables` is whichever backend, nft or legacy, the
//! image selected) rather than linking netfilter libraries.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use clap::Args;

/// Longest run of one iptables tool (they wait at most 5 s for the xtables lock, `-w 5`).
const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Chains we own, in creation order.
const CHAINS: [&str; 4] = [
    "FICUS_INBOUND",
    "FICUS_IN_REDIRECT",
    "FICUS_OUTPUT",
    "FICUS_REDIRECT",
];

/// Jumps from built-in chains into ours: (built-in chain, rule after the chain name).
const JUMPS: [(&str, &[&str]); 2] = [
    ("PREROUTING", &["-p", "tcp", "-j", "FICUS_INBOUND"]),
    ("OUTPUT", &["-p", "tcp", "-j", "FICUS_OUTPUT"]),
];

/// Flags of `ficus-sidecar redirect`.
#[derive(Debug, Clone, Args)]
pub struct RedirectArgs {
    /// The proxy's uid: its own connections are never redirected (no loop).
    #[arg(long, env = "FICUS_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,

    /// Outbound destination ports that bypass the proxy.
    #[arg(
        long,
        env = "FICUS_EXCLUDE_OUTBOUND_PORTS",
        value_delimiter = ',',
        value_name = "P,.."
    )]
    pub exclude_outbound_ports: Vec<u16>,

    /// Inbound ports that bypass the proxy (besides the sidecar's own ports).
    #[arg(
        long,
        env = "FICUS_EXCLUDE_INBOUND_PORTS",
        value_delimiter = ',',
        value_name = "P,.."
    )]
    pub exclude_inbound_ports: Vec<u16>,

    /// Outbound destinations (IPv4 or IPv6 CIDRs) that bypass the proxy.
    #[arg(
        long,
        env = "FICUS_EXCLUDE_CIDRS",
        value_delimiter = ',',
        value_name = "CIDR,..",
        value_parser = parse_cidr
    )]
    pub exclude_cidrs: Vec<Cidr>,

    /// The sidecar's transparent inbound port (`--inbound`).
    #[arg(long, env = "FICUS_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// The sidecar's transparent outbound port (`--outbound`).
    #[arg(long, env = "FICUS_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// The sidecar's admin port (never redirected inbound, so probes reach it).
    #[arg(long, env = "FICUS_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,

    /// Remove the rules this command installs (and nothing else).
    #[arg(long, env = "FICUS_CLEANUP")]
    pub cleanup: bool,
}

/// An address block, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Parses `ADDR/PREFIX` (a bare address is a host route).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (address, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let address: IpAddr = address
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, fd00::/8)"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
    };
    Ok(Cidr { address, prefix })
}

/// An address family and its tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn includes(self, address: IpAddr) -> bool {
        matches!(
            (self, address),
            (Self::V4, IpAddr::V4(_)) | (Self::V6, IpAddr::V6(_))
        )
    }
}

/// The `iptables-restore` input that (re)creates our chains for `family`.
pub fn chains_script(family: Family, args: &RedirectArgs) -> String {
    let mut script = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(script, ":{chain} - [0:0]");
    }
    let mut own = vec![args.admin_port, args.outbound_port, args.inbound_port];
    own.extend(&args.exclude_inbound_ports);
    dedup(&mut own);
    for port in own {
        let _ = writeln!(script, "-A FICUS_INBOUND -p tcp --dport {port} -j RETURN");
    }
    script.push_str("-A FICUS_INBOUND -p tcp -j FICUS_IN_REDIRECT\n");
    let _ = writeln!(
        script,
        "-A FICUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    );
    script.push_str("-A FICUS_OUTPUT -o lo -j RETURN\n");
    let _ = writeln!(
        script,
        "-A FICUS_OUTPUT -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    );
    let _ = writeln!(script, "-A FICUS_OUTPUT -d {} -j RETURN", family.loopback());
    let mut excluded = args.exclude_outbound_ports.clone();
    dedup(&mut excluded);
    for port in excluded {
        let _ = writeln!(script, "-A FICUS_OUTPUT -p tcp --dport {port} -j RETURN");
    }
    for cidr in args
        .exclude_cidrs
        .iter()
        .filter(|c| family.includes(c.address))
    {
        let _ = writeln!(script, "-A FICUS_OUTPUT -d {cidr} -j RETURN");
    }
    script.push_str("-A FICUS_OUTPUT -p tcp -j FICUS_REDIRECT\n");
    let _ = writeln!(
        script,
        "-A FICUS_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    );
    script.push_str("COMMIT\n");
    script
}

fn dedup(ports: &mut Vec<u16>) {
    let mut seen = Vec::with_capacity(ports.len());
    ports.retain(|p| {
        let new = !seen.contains(p);
        seen.push(*p);
        new
    });
}

/// Why the rules could not be installed or removed; one line for the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// The tool is not installed.
    #[error("{0} not found in PATH: install iptables (nft or legacy) in the image that runs `ficus-sidecar redirect`")]
    Missing(&'static str),
    /// Not allowed to change the nat table here.
    #[error("{tool}: permission denied: `ficus-sidecar redirect` needs root with CAP_NET_ADMIN (and CAP_NET_RAW) in this network namespace ({detail})")]
    NotPermitted {
        /// Tool.
        tool: &'static str,
        /// The tool's own message.
        detail: String,
    },
    /// Anything else the tool reported.
    #[error("{tool} failed: {detail}")]
    Failed {
        /// Tool.
        tool: &'static str,
        /// The tool's own message.
        detail: String,
    },
}

/// Output of one tool run.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_tool(tool: &'static str, args: &[&str], input: Option<&str>) -> Result<Ran, RedirectError> {
    let mut command = Command::new(tool);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => RedirectError::Missing(tool),
        std::io::ErrorKind::PermissionDenied => RedirectError::NotPermitted {
            tool,
            detail: error.to_string(),
        },
        _ => RedirectError::Failed {
            tool,
            detail: error.to_string(),
        },
    })?;
    // Both pipes are drained by threads while we wait, so a large listing cannot block it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // The tool reads all of its input before it exits; a write error shows in its status.
        let _ = stdin.write_all(text.as_bytes());
    }
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TOOL_TIMEOUT => {
                // clippy.toml disallows std::thread::sleep; a timed park waits the same way.
                std::thread::park_timeout(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RedirectError::Failed {
                    tool,
                    detail: format!("did not finish within {TOOL_TIMEOUT:?}"),
                });
            }
            Err(error) => {
                return Err(RedirectError::Failed {
                    tool,
                    detail: error.to_string(),
                })
            }
        }
    };
    Ok(Ran {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The error for a failed run: permission problems named as such, else the first line.
fn failure(tool: &'static str, ran: &Ran) -> RedirectError {
    let detail = ran
        .stderr
        .lines()
        .chain(ran.stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_owned();
    let lower = ran.stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        RedirectError::NotPermitted { tool, detail }
    } else {
        let detail = match ran.code {
            Some(code) => format!("exit {code}: {detail}"),
            None => format!("killed: {detail}"),
        };
        RedirectError::Failed { tool, detail }
    }
}

/// Runs `tool -t nat args`; `Ok(true)` on success, `Ok(false)` on exit 1 when `soft` (a `-C`
/// that found nothing), an error otherwise.
fn nat(tool: &'static str, args: &[&str], soft: bool) -> Result<bool, RedirectError> {
    let mut all = vec!["-w", "5", "-t", "nat"];
    all.extend_from_slice(args);
    let ran = run_tool(tool, &all, None)?;
    match ran.code {
        Some(0) => Ok(true),
        Some(1) if soft => Ok(false),
        _ => Err(failure(tool, &ran)),
    }
}

/// The chains of ours that exist now (from `-S`, which also proves we may read the table).
fn existing_chains(family: Family) -> Result<Vec<&'static str>, RedirectError> {
    let tool = family.tool();
    let ran = run_tool(tool, &["-w", "5", "-t", "nat", "-S"], None)?;
    if ran.code != Some(0) {
        return Err(failure(tool, &ran));
    }
    Ok(CHAINS
        .into_iter()
        .filter(|chain| {
            ran.stdout
                .lines()
                .any(|l| l.trim() == format!("-N {chain}"))
        })
        .collect())
}

/// Installs (or, with `--cleanup`, removes) the rules for `family`.
pub fn apply(family: Family, args: &RedirectArgs) -> Result<(), RedirectError> {
    let tool = family.tool();
    let existing = existing_chains(family)?;
    if args.cleanup {
        for (chain, rule) in JUMPS {
            if !existing.contains(&rule[3]) {
                continue;
            }
            // Delete every copy (someone may have added one twice by hand); bounded.
            for _ in 0..64 {
                let mut delete = vec!["-D", chain];
                delete.extend_from_slice(rule);
                if !nat(tool, &delete, true)? {
                    break;
                }
            }
        }
        for chain in &existing {
            nat(tool, &["-F", chain], false)?;
        }
        for chain in &existing {
            nat(tool, &["-X", chain], false)?;
        }
        return Ok(());
    }
    let script = chains_script(family, args);
    let restore = family.restore();
    let ran = run_tool(restore, &["-w", "5", "--noflush"], Some(&script))?;
    if ran.code != Some(0) {
        return Err(failure(restore, &ran));
    }
    for (chain, rule) in JUMPS {
        let mut check = vec!["-C", chain];
        check.extend_from_slice(rule);
        if !nat(tool, &check, true)? {
            let mut append = vec!["-A", chain];
            append.extend_from_slice(rule);
            nat(tool, &append, false)?;
        }
    }
    Ok(())
}

/// Whether this network namespace has IPv6 at all (a kernel booted with `ipv6.disable=1`
/// has no ip6 nat table to program).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Runs the subcommand; returns the exit code (0, or 1 with one line on stderr).
pub fn run(args: &RedirectArgs) -> u8 {
    let mut families = vec![Family::V4];
    if ipv6_enabled() {
        families.push(Family::V6);
    } else {
        eprintln!("ficus-sidecar redirect: IPv6 is disabled here; ip6tables rules skipped");
    }
    for family in families {
        if let Err(error) = apply(family, args) {
            eprintln!("error: {error}");
            return crate::app::exit::FATAL;
        }
    }
    let done = if args.cleanup { "removed" } else { "installed" };
    eprintln!("ficus-sidecar redirect: nat rules {done}");
    crate::app::exit::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RedirectArgs {
        RedirectArgs {
            proxy_uid: 1337,
            exclude_outbound_ports: vec![22, 22],
            exclude_inbound_ports: vec![9090],
            exclude_cidrs: vec![
                parse_cidr("10.96.0.0/12").unwrap(),
                parse_cidr("fd00::/8").unwrap(),
            ],
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            cleanup: false,
        }
    }

    #[test]
    fn cidrs_parse_or_explain() {
        assert_eq!(parse_cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().prefix, 8);
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(parse_cidr("example.com/8")
            .unwrap_err()
            .contains("not an IP"));
    }

    #[test]
    fn scripts_keep_families_apart_and_exempt_the_proxy() {
        let v4 = chains_script(Family::V4, &args());
        assert!(v4.contains("-A FICUS_OUTPUT -d 10.96.0.0/12 -j RETURN"));
        assert!(!v4.contains("fd00::"));
        assert!(v4.contains("-A FICUS_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert_eq!(v4.matches("--dport 22 ").count(), 1, "{v4}");
        for port in [15000, 15001, 15006, 9090] {
            assert!(v4.contains(&format!("-A FICUS_INBOUND -p tcp --dport {port} -j RETURN")));
        }
        let v6 = chains_script(Family::V6, &args());
        assert!(v6.contains("-A FICUS_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(v6.contains("-d ::1/128"));
        assert!(!v6.contains("10.96"));
        // The redirect is the last rule of the output chain: every exemption comes first.
        let last = v4
            .lines()
            .rfind(|l| l.starts_with("-A FICUS_OUTPUT"))
            .unwrap();
        assert_eq!(last, "-A FICUS_OUTPUT -p tcp -j FICUS_REDIRECT");
    }
}
