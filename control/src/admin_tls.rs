//! Admin login by client certificate: the TLS of `--https` and the offline command that issues
//! admin certificates (`ficus-control issue-admin-cert`).
//!
//! `--https ADDR` serves the same HTTP API as `--http` over TLS 1.3, with a server certificate
//! from the mesh CA (URI SAN `spiffe://<td>/ns/ficus-system/sa/ficus-control`, DNS `localhost`,
//! IP 127.0.0.1 and the bind address; renewed like the `--grpc` one). The server asks for a
//! client certificate but does not require one: a certificate that is presented must chain to
//! the mesh root(s) (`<data>/ca.pem`, followed as `ca/extra-roots.pem` changes) or the
//! handshake fails (`unknown_ca`).
//!
//! **Who is an admin.** Exactly the SPIFFE IDs listed in `--admin-identities` (comma-separated,
//! in the mesh's trust domain), e.g. `spiffe://cluster.local/ns/ficus-system/sa/alice`. There is
//! no implicit rule such as "all of namespace ficus-system": an identity grants write access
//! only when an operator names it. A request whose verified client certificate carries a listed
//! identity may write, like a valid bearer token; any certificate with that identity counts,
//! however it was obtained, so never map a join token (or a Kubernetes service account) to a
//! listed identity unless that workload is meant to administer the mesh. Sidecar certificates
//! carry their workload's identity, which is not listed, so they are refused (403).
//!
//! **Getting a certificate.** On the control host, with read access to the CA key:
//! `ficus-control issue-admin-cert --data DIR --name alice --out DIR [--lifetime 24h]` writes
//! `cert.pem`, `key.pem` (0600) and `ca.pem` for `spiffe://<td>/ns/ficus-system/sa/alice`. There
//! is no revocation list: keep lifetimes short (default 24 h) and drop the identity from
//! `--admin-identities` to revoke early.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ficus_identity::ca::CertificateAuthority;
use ficus_identity::tls::{
    self, check_svid, CertStore, ClientAuth, TrustBundle, TrustStore, ALPN_HTTP1,
};
use ficus_identity::SpiffeId;
use tokio::sync::watch;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::auth::admin::AdminTokens;
use crate::ca::{ServerIdentity, CONTROL_NAMESPACE};
use crate::state::ControlState;

/// The SPIFFE IDs allowed to write through a client certificate (`--admin-identities`).
#[derive(Debug, Clone)]
pub struct AdminIdentities {
    ids: Vec<SpiffeId>,
    trust_domain: String,
}

impl AdminIdentities {
    /// Parses the listed IDs; each must be a valid SPIFFE ID in `trust_domain`.
    pub fn parse(list: &[String], trust_domain: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for text in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let id = SpiffeId::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
            if id.trust_domain() != trust_domain {
                return Err(format!(
                    "{text:?} is not in the trust domain {trust_domain:?}"
                ));
            }
            ids.push(id);
        }
        Ok(Self {
            ids,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The listed IDs.
    pub fn ids(&self) -> &[SpiffeId] {
        &self.ids
    }

    /// Whether no identity is listed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is listed.
    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.ids.iter().any(|listed| listed == id)
    }

    /// The identity of a verified client chain (leaf first): its single SPIFFE URI SAN in
    /// the mesh's trust domain, or why there is none.
    pub fn identity_of(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId, String> {
        let leaf = chain.first().ok_or("no client certificate")?;
        let id = check_svid(leaf).map_err(|e| format!("not an X.509-SVID: {e}"))?;
        if id.trust_domain() != self.trust_domain {
            return Err(format!(
                "{id} is not in the trust domain {}",
                self.trust_domain
            ));
        }
        Ok(id)
    }
}

/// Puts every trust bundle published on `bundle` in force on `trust` until the sender is gone,
/// so `--https` follows root rotation (`ca/extra-roots.pem`) without a restart. A bundle that
/// cannot be used leaves the one in force.
pub async fn follow_bundle(trust: Arc<TrustStore>, mut bundle: watch::Receiver<Arc<str>>) {
    while bundle.changed().await.is_ok() {
        let pem = Arc::clone(&bundle.borrow_and_update());
        if pem.is_empty() {
            continue;
        }
        match TrustBundle::from_pem(&pem, trust.trust_domain()).and_then(|b| trust.install(b)) {
            Ok(true) => tracing::info!("--https trusts the new trust bundle"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "--https keeps its trust bundle: the new one is unusable");
            }
        }
    }
}

/// The server config of `--https`: the mesh's (TLS 1.3 only, the certificate from `store`, no
/// session resumption, so every connection's client certificate is verified afresh) with client
/// certificates requested, not required: one that is presented must chain to the bundle in
/// force on `trust` (else `unknown_ca`) and be an X.509-SVID of the trust domain. ALPN
/// `http/1.1` only.
pub fn server_config(
    store: Arc<CertStore>,
    trust: Arc<TrustStore>,
) -> Result<Arc<ServerConfig>, String> {
    let config = tls::server_config_trusting(store, trust, ClientAuth::Optional)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Issues an admin certificate `spiffe://<td>/ns/ficus-system/sa/<name>` from `ca` valid for
/// `lifetime`, and writes `cert.pem` (chain), `key.pem` (0600) and `ca.pem` (the roots) into
/// `out` (created 0700 if missing). Returns the identity. Blocking.
pub fn issue_admin_cert(
    ca: &CertificateAuthority,
    name: &str,
    lifetime: Duration,
    out: &Path,
) -> Result<SpiffeId, String> {
    let id = SpiffeId::workload(ca.trust_domain(), CONTROL_NAMESPACE, name)
        .map_err(|e| format!("--name {name:?}: {e}"))?;
    let (issued, key_pem) = ca
        .issue_server(&id, &[], &[], lifetime)
        .map_err(|e| format!("cannot issue the certificate: {e}"))?;
    if !out.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    }
    write(&out.join("key.pem"), key_pem.as_bytes(), 0o600)?;
    write(&out.join("cert.pem"), issued.chain_pem.as_bytes(), 0o644)?;
    write(&out.join("ca.pem"), ca.bundle_pem().as_bytes(), 0o644)?;
    Ok(id)
}

/// Writes `bytes` to `path` with `mode` (a file that exists is replaced, its mode reset).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Serves `--https` on `listeners` (the address and its IPv6 companion): issues its server
/// certificate from `ca` (renewed by a task of its own) and spawns [`crate::api::serve_tls`].
pub fn start(
    listeners: ficus_net::listen::Listeners,
    ca: &Arc<CertificateAuthority>,
    state: Arc<ControlState>,
    admin: Option<Arc<AdminTokens>>,
    identities: AdminIdentities,
) -> Result<(), String> {
    let address = listeners
        .local_addr()
        .map_err(|e| format!("--https: {e}"))?;
    let identity = ServerIdentity::new(ca.trust_domain(), address).map_err(|e| e.to_string())?;
    let credentials = identity.issue(ca).map_err(|e| e.to_string())?;
    let store = CertStore::with_credentials(credentials);
    let bundle = TrustBundle::from_pem(&ca.bundle_pem(), ca.trust_domain())
        .map_err(|e| format!("the trust bundle is unusable: {e}"))?;
    let trust =
        TrustStore::new(bundle).map_err(|e| format!("the trust bundle is unusable: {e}"))?;
    tokio::spawn(follow_bundle(
        Arc::clone(&trust),
        state.trust_bundle.subscribe(),
    ));
    let config = server_config(Arc::clone(&store), trust)?;
    tokio::spawn(identity.keep_renewed(Arc::clone(ca), store));
    tracing::info!(%address, admin_identities = identities.ids.len(),
        admin_tokens = admin.is_some(), "HTTPS API started");
    tokio::spawn(crate::api::serve_tls(
        listeners,
        TlsAcceptor::from(config),
        state,
        admin,
        Arc::new(identities),
    ));
    Ok(())
}

/// `ficus-control issue-admin-cert`: loads the CA from `<data>/ca/` (never creates one) and
/// runs [`issue_admin_cert`]. Blocking.
pub fn issue_admin_cert_command(
    data: &Path,
    trust_domain: &str,
    name: &str,
    lifetime: Duration,
    out: &Path,
) -> Result<SpiffeId, String> {
    let cert = data.join("ca").join("cert.pem");
    if !cert.exists() {
        return Err(format!(
            "{} does not exist: give the --data of a control plane that has started once",
            cert.display()
        ));
    }
    let ca = crate::ca::load_or_generate(data, trust_domain)
        .map_err(|e| format!("certificate authority: {e}"))?;
    issue_admin_cert(&ca, name, lifetime, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_identities_are_exact_and_in_the_trust_domain() {
        let list = vec!["spiffe://cluster.local/ns/ficus-system/sa/alice".to_owned()];
        let admins = AdminIdentities::parse(&list, "cluster.local").unwrap();
        let alice = SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/alice").unwrap();
        let bob = SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/bob").unwrap();
        assert!(admins.contains(&alice));
        assert!(!admins.contains(&bob));
        assert!(AdminIdentities::parse(&list, "example.org").is_err());
        assert!(AdminIdentities::parse(&["alice".to_owned()], "cluster.local").is_err());
    }

    /// Credentials for `name` issued by `ca` (through the real issuing command).
    fn credentials(ca: &CertificateAuthority, name: &str) -> ficus_identity::tls::Credentials {
        let dir = tempfile::tempdir().unwrap();
        issue_admin_cert(ca, name, Duration::from_secs(3600), dir.path()).unwrap();
        ficus_identity::tls::Credentials::from_pem_key(
            &fs::read_to_string(dir.path().join("cert.pem")).unwrap(),
            &fs::read_to_string(dir.path().join("key.pem")).unwrap(),
        )
        .unwrap()
    }

    /// A real TLS 1.3 handshake over an in-memory pipe, then one byte each way: what the
    /// server saw of the client (its identity, or none), or the server's error.
    async fn admin_handshake(
        server: Arc<ServerConfig>,
        client: Option<ficus_identity::tls::Credentials>,
        bundle_pem: &str,
    ) -> Result<Option<SpiffeId>, std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server_id =
            SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/server").unwrap();
        let bundle = TrustBundle::from_pem(bundle_pem, "cluster.local").unwrap();
        let client =
            tls::client_config(client.map(CertStore::with_credentials), &bundle, &server_id)
                .unwrap();
        let client = tls::with_alpn(&client, ALPN_HTTP1);
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut stream = TlsAcceptor::from(server).accept(server_io).await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            stream.write_all(b"y").await?;
            stream.flush().await?;
            Ok(tls::peer_identity(stream.get_ref().1.peer_certificates()))
        };
        let client_side = async move {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(client)
                .connect(name, client_io)
                .await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await
        };
        let (server_result, _) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("the handshake finished in time");
        server_result
    }

    #[tokio::test]
    async fn https_asks_for_certificates_and_follows_the_trust_bundle() {
        let old = CertificateAuthority::generate("cluster.local").unwrap();
        let new = CertificateAuthority::generate("cluster.local").unwrap();
        let both = format!("{}{}", old.bundle_pem(), new.bundle_pem());
        let alice = SpiffeId::parse("spiffe://cluster.local/ns/ficus-system/sa/alice").unwrap();
        let store = CertStore::with_credentials(credentials(&old, "server"));
        let trust =
            TrustStore::new(TrustBundle::from_pem(&old.bundle_pem(), "cluster.local").unwrap())
                .unwrap();
        let config = server_config(store, Arc::clone(&trust)).unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN_HTTP1.to_vec()]);

        // No certificate: admitted (a bearer token may follow); one of the mesh: its identity.
        let anonymous = admin_handshake(Arc::clone(&config), None, &both).await;
        assert_eq!(anonymous.unwrap(), None);
        let from_old =
            admin_handshake(Arc::clone(&config), Some(credentials(&old, "alice")), &both);
        assert_eq!(from_old.await.unwrap(), Some(alice.clone()));
        // One from a root not (yet) trusted: refused at the handshake.
        let from_new =
            || admin_handshake(Arc::clone(&config), Some(credentials(&new, "alice")), &both);
        assert!(from_new().await.is_err());

        // The published bundle is followed; an unusable one changes nothing.
        let (publish, bundle) = watch::channel(Arc::<str>::from(""));
        let follower = tokio::spawn(follow_bundle(Arc::clone(&trust), bundle));
        publish.send(Arc::from("not a bundle")).unwrap();
        publish.send(Arc::from(both.as_str())).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while trust.bundle().certificates().len() != 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the new bundle was installed");
        assert_eq!(from_new().await.unwrap(), Some(alice));
        publish.send(Arc::from("not a bundle")).unwrap();
        drop(publish);
        follower.await.unwrap();
        assert_eq!(trust.bundle().certificates().len(), 2);
    }

    #[test]
    fn issued_admin_certificates_are_svids_of_the_name() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("admin");
        let id = issue_admin_cert(&ca, "alice", Duration::from_secs(3600), &out).unwrap();
        assert_eq!(
            id.as_str(),
            "spiffe://cluster.local/ns/ficus-system/sa/alice"
        );
        let mode = fs::metadata(out.join("key.pem")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let chain = ficus_identity::tls::Credentials::from_pem_key(
            &fs::read_to_string(out.join("cert.pem")).unwrap(),
            &fs::read_to_string(out.join("key.pem")).unwrap(),
        )
        .unwrap();
        let admins = AdminIdentities::parse(&[id.to_string()], "cluster.local").unwrap();
        assert_eq!(admins.identity_of(chain.chain()).unwrap(), id);
        assert!(issue_admin_cert(&ca, "not/valid", Duration::from_secs(60), &out).is_err());
    }
}
