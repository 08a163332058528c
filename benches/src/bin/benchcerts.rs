//! `benchcerts`: the certificates of the mTLS benchmarks, from ficus-identity's CA.
//!
//! Generates one mesh root (ECDSA P-256, `ficus_identity::ca::CertificateAuthority`) and
//! writes it where `ficus-control` looks for a brought-in issuer (`--ca-dir`, i.e.
//! `<data>/ca/cert.pem` and `ca/key.pem`, modes 0700/0600), so the control plane signs the
//! Ficus sidecars' certificates under the same root as the ones issued here for Envoy and
//! for `tlsload`. Then issues, for every `--issue NAME=SPIFFE_ID`, an X.509-SVID (exactly one
//! URI SAN) with a fresh key: `OUT/NAME.pem` (chain) and `OUT/NAME-key.pem` (PKCS#8, 0600),
//! and writes the public root to `OUT/ca.pem`. An existing `--ca-dir` is reused, not
//! overwritten. Prints one JSON line naming the files.
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ficus_benches::duration::parse_duration;
use ficus_identity::ca::CertificateAuthority;
use ficus_identity::SpiffeId;

/// Mesh root and workload certificates for the mTLS benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// SPIFFE trust domain of the root and of every issued identity.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Where the issuer lives (`cert.pem`, `key.pem`): reused when present, created otherwise.
    /// Point it at `<ficus-control --data>/ca` before the control plane's first start.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Output directory for `ca.pem` and the issued certificates.
    #[arg(long)]
    out: PathBuf,
    /// `NAME=spiffe://…`: issue a certificate and key for this identity as `OUT/NAME.pem` and
    /// `OUT/NAME-key.pem`. Repeatable.
    #[arg(long, value_name = "NAME=ID")]
    issue: Vec<String>,
    /// Lifetime of the issued certificates.
    #[arg(long, default_value = "1440m", value_parser = parse_duration)]
    lifetime: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = load_or_generate(&args.ca_dir, &args.trust_domain)?;
    fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let root = args.out.join("ca.pem");
    write(&root, ca.root_pem().as_bytes(), 0o644)?;
    let mut issued = serde_json::Map::new();
    for spec in &args.issue {
        let Some((name, id)) = spec.split_once('=') else {
            bail!("--issue {spec:?}: expected NAME=spiffe://…");
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("--issue {spec:?}: NAME may hold letters, digits and '-' only");
        }
        let id = SpiffeId::parse(id).with_context(|| format!("--issue {spec:?}"))?;
        // `issue_server` with no DNS names or addresses: exactly one URI SAN, an X.509-SVID.
        let (cert, key_pem) = ca
            .issue_server(&id, &[], &[], args.lifetime)
            .with_context(|| format!("issue {id}"))?;
        let cert_path = args.out.join(format!("{name}.pem"));
        let key_path = args.out.join(format!("{name}-key.pem"));
        write(&key_path, key_pem.as_bytes(), 0o600)?;
        write(&cert_path, cert.chain_pem.as_bytes(), 0o644)?;
        issued.insert(
            name.to_owned(),
            serde_json::json!({
                "id": id.as_str(),
                "cert": cert_path.display().to_string(),
                "key": key_path.display().to_string(),
            }),
        );
    }
    let report = serde_json::json!({
        "trust_domain": args.trust_domain,
        "ca_dir": args.ca_dir.display().to_string(),
        "root": root.display().to_string(),
        "issued": issued,
    });
    println!("{report}");
    Ok(())
}

/// The issuer in `dir`, or a new root written there (key first, then the certificate, as
/// ficus-control itself does).
fn load_or_generate(dir: &Path, trust_domain: &str) -> anyhow::Result<CertificateAuthority> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() {
        let cert_pem =
            fs::read_to_string(&cert).with_context(|| format!("read {}", cert.display()))?;
        let key_pem =
            fs::read_to_string(&key).with_context(|| format!("read {}", key.display()))?;
        return CertificateAuthority::from_pem(trust_domain, &cert_pem, &key_pem)
            .with_context(|| format!("load the issuer from {}", dir.display()));
    }
    let ca = CertificateAuthority::generate(trust_domain).context("generate a root")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    write(&key, ca.key_pem().as_bytes(), 0o600)?;
    write(&cert, ca.cert_pem().as_bytes(), 0o644)?;
    Ok(ca)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(mode)))
        .with_context(|| format!("write {}", path.display()))
}
