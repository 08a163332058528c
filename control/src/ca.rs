//! The mesh CA's files under `--data`, and the control plane's own server certificate.
//!
//! | path | mode | holds |
//! |---|---|---|
//! | `ca/` | 0700 | the issuer; created on first start |
//! | `ca/cert.pem` | 0644 | the issuer certificate, followed by its chain up to the root |
//! | `ca/key.pem` | 0600 | the issuer's private key |
//! | `ca/extra-roots.pem` | 0644 | optional: roots to trust besides the issuer's (root rotation) |
//! | `ca.pem` | 0644 | the public root(s) to trust: sidecars' `--ca-file` (rewritten on every start) |
//!
//! On first start (no `ca/cert.pem`) a self-signed root for `--trust-domain` is generated.
//! **Bring your own root:** before the first start, put an intermediate CA certificate signed
//! by your root into `ca/cert.pem` (intermediate first, then any further intermediates, then
//! the root) and its key into `ca/key.pem` (mode 0600). The control plane then issues under
//! it, sends the chain with every certificate, and writes your root to `ca.pem`. A root alone
//! (with its key) works the same way. The key never leaves `ca/key.pem`.
//!
//! Files are written atomically (temporary file, fsync, rename, fsync of the directory); the
//! key is written before the certificate, so `ca/cert.pem` is the commit point: a key without
//! a certificate is refused at start rather than overwritten, since it may be the only copy
//! of someone's key.
//!
//! **Root rotation** (no sidecar restarts; established connections are never cut). The trust
//! bundle — the issuer's root plus `ca/extra-roots.pem` — goes to every sidecar on its push
//! stream (`Snapshot.trust_bundle_pem`, see [`crate::push`]) and with every certificate the
//! control plane issues; sidecars put it in force for all new handshakes (inbound, outbound
//! and to the control plane) once their own certificate chains to it.
//! `ca/extra-roots.pem` is followed while the control plane runs ([`follow_extra_roots`],
//! polled every 2 s): a changed file is validated, put in force, written to `ca.pem` and pushed
//! at once; a bad one changes nothing (logged, counted). Replace it by renaming a new file
//! over it (a half-written file is refused, then picked up when complete).
//! 1. Put the new root into `ca/extra-roots.pem` (no restart). Within seconds every connected
//!    sidecar trusts both (`ficus_tls_trust_bundle_roots` on each sidecar).
//! 2. Move the old issuer away, put the new issuer's certificate and key into `ca/cert.pem` and
//!    `ca/key.pem` — first: from then on `ca/extra-roots.pem` changes wait for the restart —,
//!    then the old root into `ca/extra-roots.pem`, and restart (the issuer is read at start
//!    only). Certificates are now issued under the new root (the control plane's own
//!    too) and still accepted by sidecars that have not renewed yet, and vice versa. Wait one
//!    certificate lifetime, so every sidecar holds a certificate under the new root.
//! 3. Empty `ca/extra-roots.pem` (no restart): the old root is pushed out. A sidecar still
//!    holding an old-root certificate refuses a bundle its certificate does not chain to and
//!    keeps the old root until its next certificate brings the bundle.
//!
//! The control plane's own certificate (for the TLS of `--grpc`) is issued under the same CA
//! at every start, kept in memory only, and re-issued at 70 % of its lifetime.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ficus_identity::ca::{CaError, CertificateAuthority};
use ficus_identity::spiffe::SpiffeError;
use ficus_identity::tls::{CertStore, Credentials, TlsError};
use ficus_identity::SpiffeId;

use crate::state::ControlState;

/// The control plane's service account and namespace in its SPIFFE ID.
pub const CONTROL_NAMESPACE: &str = "ficus-system";
/// See [`CONTROL_NAMESPACE`].
pub const CONTROL_SERVICE_ACCOUNT: &str = "ficus-control";
/// Lifetime of the control plane's own server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Share of a server certificate's lifetime after which it is re-issued.
const RENEW_AT: f64 = 0.7;
/// Wait before retrying a failed re-issue.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Why the CA files cannot be loaded, created or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaFileError {
    /// A CA file or directory exists but cannot be read (permissions, not a file).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A CA file cannot be written (read-only data dir, disk full).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// One of `ca/cert.pem` and `ca/key.pem` exists without the other.
    #[error(
        "{present} exists but {missing} does not; restore it, or move both away to generate a new root"
    )]
    Incomplete {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// The files are there but are not a usable issuer (corrupt PEM, not a CA, expired, key
    /// does not match the certificate).
    #[error("{path} and its key are not a usable CA: {source}")]
    Invalid {
        /// `ca/cert.pem`.
        path: PathBuf,
        /// What the identity crate found wrong.
        source: CaError,
    },
    /// Generating a new root failed.
    #[error("cannot generate a root CA: {0}")]
    Generate(#[source] CaError),
    /// The control plane's SPIFFE ID is invalid (a bad `--trust-domain`).
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[source] SpiffeError),
    /// Issuing the control plane's own certificate failed.
    #[error("cannot issue the control plane's certificate: {0}")]
    Issue(#[source] CaError),
    /// The issued certificate and key are not usable for TLS.
    #[error("the control plane's certificate is unusable: {0}")]
    Credentials(#[source] TlsError),
}

/// The CA under `<data>/ca/`: loaded when present, generated (and written) otherwise. Then
/// `<data>/ca.pem` is (re)written with its root(s). Blocking.
pub fn load_or_generate(
    data: &Path,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaFileError> {
    let dir = data.join("ca");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let ca = match (exists(&cert_path)?, exists(&key_path)?) {
        (true, true) => {
            warn_if_key_is_exposed(&key_path);
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            let ca = CertificateAuthority::from_pem(trust_domain, &cert_pem, &key_pem).map_err(
                |source| CaFileError::Invalid {
                    path: cert_path.clone(),
                    source,
                },
            )?;
            tracing::info!(path = %cert_path.display(), trust_domain, "CA loaded");
            ca
        }
        (false, false) => {
            let ca = CertificateAuthority::generate(trust_domain).map_err(CaFileError::Generate)?;
            create_private_dir(&dir)?;
            // A SIGTERM during start-up waits for both files: a key without its certificate
            // would refuse every later start.
            let _together = ficus_net::signal::defer_start_up_exit();
            write_atomically(&key_path, ca.key_pem().as_bytes(), 0o600)?;
            write_atomically(&cert_path, ca.cert_pem().as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), trust_domain, "new root CA generated");
            ca
        }
        (true, false) => {
            return Err(CaFileError::Incomplete {
                present: cert_path,
                missing: key_path,
            })
        }
        (false, true) => {
            return Err(CaFileError::Incomplete {
                present: key_path,
                missing: cert_path,
            })
        }
    };
    let extra_path = dir.join("extra-roots.pem");
    if exists(&extra_path)? {
        let pem = read(&extra_path)?;
        ca.set_extra_roots(&pem)
            .map_err(|source| CaFileError::Invalid {
                path: extra_path.clone(),
                source,
            })?;
        tracing::info!(path = %extra_path.display(), "extra trusted roots loaded");
    }
    write_atomically(&data.join("ca.pem"), ca.bundle_pem().as_bytes(), 0o644)?;
    Ok(ca)
}

/// How often `ca/extra-roots.pem` is looked at for changes.
pub const EXTRA_ROOTS_POLL: Duration = Duration::from_secs(2);
/// Largest `ca/extra-roots.pem` read (a bundle of a few roots is a few KB).
const MAX_EXTRA_ROOTS: u64 = 1024 * 1024;

/// Publishes `ca`'s trust bundle on `state` (the push streams send it) and starts
/// [`follow_extra_roots`]. Must be called inside a tokio runtime.
pub fn publish_and_follow(data: &Path, ca: &Arc<CertificateAuthority>, state: &ControlState) {
    state.trust_bundle.send_replace(Arc::from(ca.bundle_pem()));
    tokio::spawn(follow_extra_roots(
        data.to_owned(),
        Arc::clone(ca),
        state.trust_bundle.clone(),
        state.metrics.trust_bundle_roots.clone(),
        state.metrics.trust_bundle_reload_failures.clone(),
        EXTRA_ROOTS_POLL,
    ));
}

/// Follows `<data>/ca/extra-roots.pem` while the control plane runs (polled every `poll`,
/// [`EXTRA_ROOTS_POLL`] in the control plane; a missing file means no extra roots). A changed file is validated
/// and put in force in `ca` (so every certificate answer carries it), written to
/// `<data>/ca.pem`, and published on `bundle` (the push streams send it to every connected
/// sidecar at once). A bad file changes nothing: the current bundle stays in force, the error
/// is logged and counted in `failures`; fixing the file is picked up at the next poll. Once
/// `ca/cert.pem` differs from the issuer loaded at start (rotation step 2 in progress),
/// changes wait for the restart.
/// `roots` shows how many roots the bundle in force holds. Runs until the process ends.
pub async fn follow_extra_roots(
    data: PathBuf,
    ca: Arc<CertificateAuthority>,
    bundle: tokio::sync::watch::Sender<Arc<str>>,
    roots: prometheus::IntGauge,
    failures: prometheus::IntCounter,
    poll: Duration,
) {
    let path = data.join("ca").join("extra-roots.pem");
    let issuer_path = data.join("ca").join("cert.pem");
    // The extra-roots text last put in force (none yet: the first poll re-reads the file, and
    // pushes only if it changed since the start).
    let mut loaded: Option<String> = None;
    let issuer = fs::read_to_string(&issuer_path).ok();
    let mut refused: Option<String> = None;
    let mut held = false;
    roots.set(count_roots(&ca.bundle_pem()));
    loop {
        tokio::time::sleep(poll).await;
        // A new issuer on disk waits for a restart; so do the extra roots written with it
        // (rotation step 2 writes the old root there: pushed under the old issuer, it would
        // take the new root away from the sidecars just before the control plane presents a
        // certificate under it).
        if fs::read_to_string(&issuer_path).ok() != issuer {
            if !held {
                tracing::warn!(path = %issuer_path.display(),
                    "the issuer changed on disk: restart ficus-control to use it; \
                     extra-roots.pem changes wait for that restart");
                held = true;
            }
            continue;
        }
        held = false;
        let text = match read_extra_roots(&path) {
            Ok(text) => text,
            Err(error) => {
                if refused.as_deref() != Some(error.as_str()) {
                    failures.inc();
                    tracing::error!(path = %path.display(), %error,
                        "cannot read the extra trusted roots; the trust bundle in force stays");
                    refused = Some(error);
                }
                continue;
            }
        };
        if loaded.as_deref() == Some(text.as_str()) || refused.as_deref() == Some(text.as_str()) {
            continue;
        }
        let before = ca.bundle_pem();
        if let Err(error) = ca.set_extra_roots(&text) {
            failures.inc();
            tracing::error!(path = %path.display(), %error,
                "invalid extra trusted roots refused; the trust bundle in force stays");
            refused = Some(text);
            continue;
        }
        refused = None;
        loaded = Some(text);
        let pem = ca.bundle_pem();
        if pem == before {
            continue;
        }
        let written = {
            let (path, pem) = (data.join("ca.pem"), pem.clone());
            tokio::task::spawn_blocking(move || write_atomically(&path, pem.as_bytes(), 0o644))
                .await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "rewriting ca.pem failed"),
            Err(error) => tracing::error!(%error, "rewriting ca.pem failed"),
        }
        let count = count_roots(&pem);
        roots.set(count);
        tracing::info!(path = %path.display(), roots = count,
            "extra trusted roots reloaded; pushing the new trust bundle to the sidecars");
        bundle.send_replace(Arc::from(pem));
    }
}

/// The text of `ca/extra-roots.pem`: empty when there is none; an error when it cannot be
/// read or is too large.
fn read_extra_roots(path: &Path) -> Result<String, String> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.len() > MAX_EXTRA_ROOTS => {
            return Err(format!("larger than {MAX_EXTRA_ROOTS} bytes"))
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(error) => return Err(error.to_string()),
    }
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(error.to_string()),
    }
}

fn count_roots(pem: &str) -> i64 {
    pem.matches("-----BEGIN CERTIFICATE-----").count() as i64
}

/// Who the control plane is on `--grpc`, and the names its certificate carries.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// `spiffe://<td>/ns/ficus-system/sa/ficus-control`: what sidecars verify.
    pub id: SpiffeId,
    /// `localhost`.
    pub dns_names: Vec<String>,
    /// The `--grpc` address (unless unspecified) and 127.0.0.1, for clients that check them.
    pub ips: Vec<IpAddr>,
    /// How long each certificate lives.
    pub lifetime: Duration,
}

impl ServerIdentity {
    /// The identity of a control plane in `trust_domain` listening on `grpc`.
    pub fn new(trust_domain: &str, grpc: SocketAddr) -> Result<Self, CaFileError> {
        let id = SpiffeId::workload(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
            .map_err(CaFileError::TrustDomain)?;
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !grpc.ip().is_unspecified() && !ips.contains(&grpc.ip()) {
            ips.push(grpc.ip());
        }
        Ok(Self {
            id,
            dns_names: vec!["localhost".to_owned()],
            ips,
            lifetime: SERVER_CERT_LIFETIME,
        })
    }

    /// A fresh certificate and key from `ca`.
    pub fn issue(&self, ca: &CertificateAuthority) -> Result<Credentials, CaFileError> {
        let (issued, key_pem) = ca
            .issue_server(&self.id, &self.dns_names, &self.ips, self.lifetime)
            .map_err(CaFileError::Issue)?;
        Credentials::from_pem_key(&issued.chain_pem, &key_pem).map_err(CaFileError::Credentials)
    }

    /// Re-issues into `store` at 70 % of each certificate's lifetime (retrying every 30 s on
    /// failure while the current one is still valid). Runs until the process ends.
    pub async fn keep_renewed(self, ca: Arc<CertificateAuthority>, store: Arc<CertStore>) {
        let mut wait = self.lifetime.mul_f64(RENEW_AT);
        loop {
            ficus_net::wall::sleep_until(std::time::SystemTime::now() + wait).await;
            let identity = self.clone();
            let ca = Arc::clone(&ca);
            match tokio::task::spawn_blocking(move || identity.issue(&ca)).await {
                Ok(Ok(credentials)) => {
                    tracing::info!(id = %self.id, "control plane certificate renewed");
                    store.install(credentials);
                    wait = self.lifetime.mul_f64(RENEW_AT);
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "renewing the control plane certificate failed; retrying");
                    wait = RENEW_RETRY;
                }
                Err(error) => {
                    tracing::error!(%error, "certificate renewal task failed; retrying");
                    wait = RENEW_RETRY;
                }
            }
        }
    }
}

fn exists(path: &Path) -> Result<bool, CaFileError> {
    path.try_exists().map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CaFileError> {
    fs::read_to_string(path).map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })
}

fn warn_if_key_is_exposed(path: &Path) {
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                "the CA key is readable by other users; chmod 600 it");
        }
    }
}

/// Creates `dir` (and its parents) and gives it mode 0700.
fn create_private_dir(dir: &Path) -> Result<(), CaFileError> {
    let write_error = |source| CaFileError::Write {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(write_error)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(write_error)
}

/// Writes `bytes` to `path` with `mode`: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory. A crash leaves the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaFileError> {
    let write_error = |source| CaFileError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash may have another mode; start from nothing.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(write_error(error)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(write_error)?;
    // The umask may have narrowed the mode; say exactly what is meant.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&temp, path).map_err(write_error)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_root_is_written_with_private_modes() {
        let data = tempfile::tempdir().unwrap();
        let ca = load_or_generate(data.path(), "cluster.local").unwrap();
        assert_eq!(mode(&data.path().join("ca")), 0o700);
        assert_eq!(mode(&data.path().join("ca/key.pem")), 0o600);
        assert_eq!(mode(&data.path().join("ca/cert.pem")), 0o644);
        assert_eq!(mode(&data.path().join("ca.pem")), 0o644);
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            ca.root_pem()
        );
        let leftovers: Vec<_> = fs::read_dir(data.path().join("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_restart_loads_the_same_root() {
        let data = tempfile::tempdir().unwrap();
        let first = load_or_generate(data.path(), "cluster.local").unwrap();
        fs::remove_file(data.path().join("ca.pem")).unwrap();
        let second = load_or_generate(data.path(), "cluster.local").unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        assert_eq!(first.cert_pem(), second.cert_pem());
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            first.root_pem(),
            "ca.pem is rewritten"
        );
    }

    #[test]
    fn corrupt_or_incomplete_files_are_errors() {
        let data = tempfile::tempdir().unwrap();
        load_or_generate(data.path(), "cluster.local").unwrap();
        let cert = data.path().join("ca/cert.pem");
        let good = fs::read_to_string(&cert).unwrap();

        fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = load_or_generate(data.path(), "cluster.local").unwrap_err();
        assert!(matches!(error, CaFileError::Invalid { .. }), "{error}");
        assert!(error.to_string().contains("ca/cert.pem"), "{error}");

        fs::write(&cert, good).unwrap();
        fs::write(data.path().join("ca/key.pem"), "not a key").unwrap();
        let error = load_or_generate(data.path(), "cluster.local").unwrap_err();
        assert!(matches!(error, CaFileError::Invalid { .. }), "{error}");

        fs::remove_file(&cert).unwrap();
        let error = load_or_generate(data.path(), "cluster.local").unwrap_err();
        assert!(matches!(error, CaFileError::Incomplete { .. }), "{error}");
        assert!(
            error.to_string().contains("cert.pem does not"),
            "a lone key is never overwritten: {error}"
        );
    }

    #[test]
    fn extra_roots_are_written_to_ca_pem_and_bad_ones_refuse_the_start() {
        let data = tempfile::tempdir().unwrap();
        let ca = load_or_generate(data.path(), "cluster.local").unwrap();
        let next = CertificateAuthority::generate("cluster.local").unwrap();
        let extra = data.path().join("ca/extra-roots.pem");
        fs::write(&extra, next.root_pem()).unwrap();
        let loaded = load_or_generate(data.path(), "cluster.local").unwrap();
        let bundle = format!("{}{}", ca.root_pem(), next.root_pem());
        assert_eq!(loaded.bundle_pem(), bundle);
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            bundle
        );
        fs::write(&extra, "not a certificate").unwrap();
        let error = load_or_generate(data.path(), "cluster.local").unwrap_err();
        assert!(error.to_string().contains("extra-roots.pem"), "{error}");
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            bundle,
            "ca.pem untouched by a refused start"
        );
    }

    #[tokio::test]
    async fn a_changed_extra_roots_file_is_followed_and_a_bad_one_changes_nothing() {
        const POLL: Duration = Duration::from_millis(20);
        let data = tempfile::tempdir().unwrap();
        let ca = Arc::new(load_or_generate(data.path(), "cluster.local").unwrap());
        let next = CertificateAuthority::generate("cluster.local").unwrap();
        let (bundle, mut published) = tokio::sync::watch::channel(Arc::from(ca.bundle_pem()));
        let roots = prometheus::IntGauge::new("roots", "roots").unwrap();
        let failures = prometheus::IntCounter::new("failures", "failures").unwrap();
        tokio::spawn(follow_extra_roots(
            data.path().to_owned(),
            Arc::clone(&ca),
            bundle,
            roots.clone(),
            failures.clone(),
            POLL,
        ));
        let extra = data.path().join("ca/extra-roots.pem");
        let both = format!("{}{}", ca.root_pem(), next.root_pem());

        // Written atomically: the follower polls every 20 ms and must never read half a file
        // (a truncated PEM would be refused and counted, or counted apart from the bad text).
        write_atomically(&extra, next.root_pem().as_bytes(), 0o644).unwrap();
        tokio::time::timeout(Duration::from_secs(30), published.changed())
            .await
            .expect("the new bundle is published")
            .unwrap();
        assert_eq!(&**published.borrow_and_update(), both.as_str());
        assert_eq!(ca.bundle_pem(), both, "certificate answers carry it too");
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            both
        );
        assert_eq!(roots.get(), 2);

        // A bad file: counted once, nothing changes, nothing is published.
        write_atomically(&extra, b"not a certificate", 0o644).unwrap();
        let started = std::time::Instant::now();
        while failures.get() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never looked at"
            );
            tokio::time::sleep(POLL).await;
        }
        for _ in 0..5 {
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(failures.get(), 1, "the same bad text is counted once");
        assert_eq!(ca.bundle_pem(), both);
        assert_eq!(
            fs::read_to_string(data.path().join("ca.pem")).unwrap(),
            both
        );
        assert!(!published.has_changed().unwrap());

        // Removing the file removes the extra roots.
        fs::remove_file(&extra).unwrap();
        tokio::time::timeout(Duration::from_secs(30), published.changed())
            .await
            .expect("the smaller bundle is published")
            .unwrap();
        assert_eq!(&**published.borrow_and_update(), ca.root_pem().as_str());
        assert_eq!(roots.get(), 1);
    }

    #[test]
    fn another_ca_can_be_brought() {
        let data = tempfile::tempdir().unwrap();
        let own = CertificateAuthority::generate("example.org").unwrap();
        fs::create_dir_all(data.path().join("ca")).unwrap();
        fs::write(data.path().join("ca/cert.pem"), own.cert_pem()).unwrap();
        fs::write(data.path().join("ca/key.pem"), own.key_pem()).unwrap();
        let loaded = load_or_generate(data.path(), "example.org").unwrap();
        assert_eq!(loaded.root_pem(), own.root_pem());
    }

    #[test]
    fn the_server_identity_names_the_control_plane() {
        let identity =
            ServerIdentity::new("cluster.local", "0.0.0.0:15012".parse().unwrap()).unwrap();
        assert_eq!(
            identity.id.as_str(),
            "spiffe://cluster.local/ns/ficus-system/sa/ficus-control"
        );
        assert_eq!(identity.ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let identity =
            ServerIdentity::new("cluster.local", "10.1.2.3:15012".parse().unwrap()).unwrap();
        assert_eq!(identity.ips.len(), 2);
        assert!(ServerIdentity::new("Bad Domain", "127.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn atomic_writes_replace_and_set_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
    }
}
