//! Push mode (`--control`): subscribe to `ficus-control`, validate and swap in every pushed
//! snapshot (the same path as file mode), answer ACK or NACK, and cache what was accepted.
//!
//! The stream runs on the admin runtime, so parsing and validation never run on a data-plane
//! thread. Connection loss is retried with full-jitter exponential backoff (100 ms doubling
//! to 10 s); on reconnect the Hello carries the version and digest being served, so the
//! control plane sends only a changed snapshot, or a version bump, or nothing. HTTP/2
//! keepalive pings detect a dead control plane.
//!
//! Over TLS each snapshot also carries the trust bundle in force at the control plane (root
//! rotation: `ca/extra-roots.pem` changed). It came over the control connection, verified
//! against the roots in force, so it is authentic; it is put in force in the shared
//! [`TrustStore`] (every new handshake: inbound, outbound, to the control plane) only when our
//! current certificate chains to it — the same rule as for the bundle sent with a
//! certificate. Otherwise the roots in force stay (logged, counted in
//! `ficus_tls_trust_bundle_refused_total`) and the next certificate brings the bundle.
//! `ficus_tls_trust_bundle_roots` shows how many roots are in force. With `http://`
//! (`--insecure` control plane) the field is ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use ficus_config::wire::config_discovery_client::ConfigDiscoveryClient;
use ficus_config::wire::{self, sidecar_message, Ack, Hello, Nack, SidecarMessage, Snapshot};
use ficus_identity::tls::{TrustBundle, TrustStore};
use ficus_identity::SpiffeId;
use http::Uri;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cli::Args;
use crate::reload::Reloader;

pub mod certs;
mod channel;

/// Wait for the control plane to accept the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A stream that lasted this long was a working one: the reconnect backoff starts over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Largest snapshot accepted.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Control plane host: a DNS name (resolved at each connect, so a moved Service is
    /// followed) or an IP address, without brackets.
    pub host: String,
    /// Control plane gRPC port.
    pub port: u16,
    /// Origin for request URIs (`http://host:port` or `https://host:port`).
    pub origin: Uri,
    /// Namespaces besides our own that we call (empty: all).
    pub reach: Vec<String>,
    /// Where accepted snapshots are cached.
    pub cache_dir: Option<PathBuf>,
    /// TLS to the control plane (`https://`).
    pub tls: Option<ControlTls>,
    /// The token presented to obtain certificates and to subscribe (`--token-file`).
    pub token: Option<Arc<TokenFile>>,
}

/// The token in `--token-file`, read again each time it is presented: a Kubernetes projected
/// service-account token expires (an hour) and kubelet writes its successor into the file, so
/// the one read at start stops working.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// The last token read, presented when a later read fails (a file being replaced).
    last: std::sync::Mutex<String>,
}

impl TokenFile {
    /// Reads `path` now; an unreadable file is an error (a bad flag at start).
    pub fn open(path: &Path) -> Result<Self, String> {
        let token = read_token(path)?;
        Ok(Self {
            path: path.to_owned(),
            last: std::sync::Mutex::new(token),
        })
    }

    /// The token in the file now (or the last one read, if the file cannot be read).
    pub fn current(&self) -> String {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match read_token(&self.path) {
            Ok(token) if !token.is_empty() => *last = token,
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "the token file is empty; presenting the last token read")
            }
            Err(error) => tracing::warn!(%error, "presenting the last token read"),
        }
        last.clone()
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|e| format!("--token-file {}: {e}", path.display()))
}

/// TLS to the control plane: the mesh roots, and a client config that requires the control
/// plane's SPIFFE ID (`spiffe://<trust-domain>/ns/ficus-system/sa/ficus-control`).
#[derive(Debug, Clone)]
pub struct ControlTls {
    /// The roots in force: from `--ca-file` at start, then the bundle sent with each
    /// certificate (root rotation). Cloning shares the store (the mesh TLS configs use it).
    pub bundle: Arc<TrustStore>,
    /// Client config for the control connection (no client certificate: we authenticate with
    /// the token).
    pub client: Arc<rustls::ClientConfig>,
}

impl ControlSettings {
    /// Reads `--control`, `--ca-file`, `--token-file`, `--trust-domain`, `--reach`,
    /// `--cache-dir`. `https://` needs `--ca-file`.
    pub fn from_args(args: &Args) -> Result<Self, String> {
        let url = args.control.as_deref().ok_or("--control is required")?;
        let origin: Uri = url.parse().map_err(|e| format!("--control {url:?}: {e}"))?;
        let (host, port) = match origin.scheme_str() {
            Some("http" | "https") => host_port(&origin),
            _ => Err("expected http://host:port or https://host:port".to_owned()),
        }
        .map_err(|problem| format!("--control {url}: {problem}"))?;
        let tls = match origin.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let path = args.ca_file.as_ref().ok_or_else(|| {
                    format!("--control {url}: https needs --ca-file (the mesh root, <data>/ca.pem of ficus-control)")
                })?;
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                let bundle = TrustBundle::from_pem(&pem, &args.trust_domain)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                let expected =
                    SpiffeId::workload(&args.trust_domain, "ficus-system", "ficus-control")
                        .map_err(|e| format!("--trust-domain {}: {e}", args.trust_domain))?;
                let bundle = TrustStore::new(bundle)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                let client = ficus_identity::tls::client_config_trusting(
                    None,
                    Arc::clone(&bundle),
                    &expected,
                )
                .map_err(|e| format!("TLS to the control plane: {e}"))?;
                Some(ControlTls { bundle, client })
            }
            _ => {
                return Err(format!(
                    "--control {url}: expected http://host:port or https://host:port"
                ))
            }
        };
        let token = match &args.token_file {
            None => None,
            Some(path) => Some(Arc::new(TokenFile::open(path)?)),
        };
        Ok(Self {
            host,
            port,
            origin,
            reach: args.reach.clone(),
            cache_dir: args.cache_dir.clone(),
            tls,
            token,
        })
    }

    /// `host:port` as given (for logs).
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The host (brackets of an IPv6 literal removed) and the port of a `--control` URL. The URL
/// must be an origin: no user info, path, query or fragment.
fn host_port(origin: &Uri) -> Result<(String, u16), String> {
    let authority = origin
        .authority()
        .ok_or("expected http://host:port or https://host:port")?;
    if authority.as_str().contains('@') {
        return Err("user information is not allowed".into());
    }
    if origin.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("expected no path (http://host:port or https://host:port)".into());
    }
    let port = authority
        .port_u16()
        .ok_or("a port is required (the control plane's gRPC port, 15012 by default)")?;
    if port == 0 {
        return Err("port 0 is not a port to connect to".into());
    }
    let host = authority.host();
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{host} is not an IPv6 address"))?;
            v6
        }
        None => {
            if host.parse::<std::net::IpAddr>().is_err() && !valid_dns_name(host) {
                return Err(format!("{host:?} is neither an IP address nor a DNS name"));
            }
            host
        }
    };
    Ok((host.to_owned(), port))
}

/// A DNS name as a resolver accepts it: dot-separated labels of 1-63 letters, digits, `-`
/// and `_`, not starting or ending with `-`; at most 253 characters; one trailing dot allowed.
fn valid_dns_name(name: &str) -> bool {
    ficus_identity::is_dns_name(name.strip_suffix('.').unwrap_or(name), true)
}

/// The last accepted snapshot, as cached on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    version: u64,
    digest: String,
    documents: String,
}

/// A push-mode subscriber.
#[derive(Debug)]
pub struct ControlClient {
    settings: ControlSettings,
    reloader: Reloader,
    /// `(version, digest)` being served.
    serving: (u64, String),
    /// `ficus_tls_trust_bundle_refused_total`.
    bundles_refused: prometheus::IntCounter,
}

impl ControlClient {
    /// A client that applies pushes through `reloader`.
    pub fn new(settings: ControlSettings, reloader: Reloader) -> Self {
        let bundles_refused = prometheus::IntCounter::new(
            "ficus_tls_trust_bundle_refused_total",
            "Trust bundles pushed by the control plane and not put in force",
        )
        .expect("static metric definition");
        if let Some(tls) = &settings.tls {
            let metrics = &reloader.shared().metrics;
            let roots = TrustBundleRoots::new(Arc::clone(&tls.bundle));
            for collector in [
                Box::new(roots) as Box<dyn prometheus::core::Collector>,
                Box::new(bundles_refused.clone()),
            ] {
                if let Err(error) = metrics.register(collector) {
                    tracing::warn!(%error, "trust bundle metrics not registered");
                }
            }
        }
        Self {
            settings,
            reloader,
            serving: (0, String::new()),
            bundles_refused,
        }
    }

    /// Puts a trust bundle pushed by the control plane in force, if our current certificate
    /// chains to it (see the module docs). Nothing happens over `http://` or for an empty one.
    fn take_bundle(&self, pem: &str) {
        let Some(control) = &self.settings.tls else {
            return;
        };
        if pem.trim().is_empty() {
            return;
        }
        let refused = |reason: String| {
            self.bundles_refused.inc();
            tracing::warn!(%reason, "pushed trust bundle refused; the roots in force stay");
        };
        let bundle = match TrustBundle::from_pem(pem, control.bundle.trust_domain()) {
            Ok(bundle) => bundle,
            Err(error) => return refused(format!("invalid: {error}")),
        };
        if bundle == control.bundle.bundle() {
            return;
        }
        let current = self
            .reloader
            .shared()
            .tls
            .as_ref()
            .and_then(|tls| tls.store.current());
        let Some(current) = current else {
            // Not a refusal: the certificate, when it comes, brings the bundle with it.
            tracing::debug!("pushed trust bundle left for the first certificate to bring");
            return;
        };
        if let Err(error) = bundle.check_chain(current.chain()) {
            return refused(format!(
                "our current certificate does not chain to it: {error}"
            ));
        }
        match control.bundle.install(bundle) {
            Ok(_) => {}
            Err(error) => refused(error.to_string()),
        }
    }

    /// Serves the cached snapshot, if there is a valid one (start-up while the control plane
    /// may be down). Returns its version.
    pub fn load_cache(&mut self) -> Option<u64> {
        let path = cache_file(self.settings.cache_dir.as_deref()?);
        let text = std::fs::read_to_string(&path).ok()?;
        let cached: Cached = match serde_json::from_str(&text) {
            Ok(cached) => cached,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring unreadable config cache");
                return None;
            }
        };
        if wire::digest(&cached.documents) != cached.digest {
            tracing::warn!(path = %path.display(), "ignoring config cache with a bad digest");
            return None;
        }
        let version = self
            .settings
            .cache_dir
            .as_deref()
            .map_or(cached.version, |dir| bumped_version(dir, &cached));
        let cached = Cached { version, ..cached };
        let source = format!("cache:{}", path.display());
        let config = match ficus_config::parse_snapshot(&source, &cached.documents) {
            Ok(config) => config,
            Err(errors) => {
                tracing::warn!(path = %path.display(), %errors, "ignoring invalid config cache");
                return None;
            }
        };
        match self.reloader.apply_version(config, cached.version, &source) {
            Ok(()) => {
                tracing::info!(
                    version = cached.version,
                    "serving cached config until the control plane answers"
                );
                self.serving = (cached.version, cached.digest);
                Some(cached.version)
            }
            Err(error) => {
                tracing::warn!(%error, "cached config could not be applied");
                None
            }
        }
    }

    /// Subscribes forever, reconnecting with backoff. The backoff starts over only after a
    /// stream that lasted ([`HEALTHY_SESSION`]): a control plane that accepts streams and ends
    /// them at once (a snapshot it cannot send, a bug) is retried less and less often, not in
    /// a loop.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = tokio::time::Instant::now();
            let lasted = |subscribed| subscribed && started.elapsed() >= HEALTHY_SESSION;
            match self.session().await {
                Ok(()) => {
                    if lasted(true) {
                        backoff = BACKOFF_MIN;
                    }
                    tracing::info!("control plane closed the stream; reconnecting");
                }
                Err(SessionEnd { error, subscribed }) => {
                    if lasted(subscribed) {
                        backoff = BACKOFF_MIN;
                    }
                    if subscribed {
                        tracing::warn!(control = %self.settings.target(), %error, "control plane stream lost");
                    } else {
                        tracing::warn!(control = %self.settings.target(), %error, "control plane unreachable; retrying");
                    }
                }
            }
            // Full jitter: a random wait in [0, backoff], so sidecars do not reconnect in step.
            let wait = backoff.mul_f64(rand::random::<f64>());
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self) -> Result<(), SessionEnd> {
        let fail = |error: String| SessionEnd {
            error,
            subscribed: false,
        };
        let channel = channel::connect(&self.settings).await.map_err(fail)?;
        let mut client = ConfigDiscoveryClient::with_origin(channel, self.settings.origin.clone())
            .max_decoding_message_size(MAX_MESSAGE);

        let (tx, rx) = mpsc::channel::<SidecarMessage>(4);
        let identity = &self.reloader.shared().identity;
        let hello = Hello {
            node_id: identity.node_id.clone(),
            workload: identity.workload.clone(),
            namespace: identity.namespace.clone(),
            version: self.serving.0,
            digest: self.serving.1.clone(),
            reach: self.settings.reach.clone(),
        };
        let hello = SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(hello)),
        };
        tx.send(hello)
            .await
            .map_err(|_| fail("stream closed".into()))?;
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|message| (message, rx))
        });
        let mut request = tonic::Request::new(outbound);
        if let Some(token) = &self.settings.token {
            let bearer = format!("Bearer {}", token.current())
                .parse()
                .map_err(|_| fail("the token holds characters not allowed in a header".into()))?;
            request.metadata_mut().insert("authorization", bearer);
        }
        let response = tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(request))
            .await
            .map_err(|_| fail("subscribe timed out".into()))?
            .map_err(|status| fail(format!("subscribe refused: {status}")))?;
        tracing::info!(control = %self.settings.target(), version = self.serving.0, "subscribed to the control plane");
        let mut inbound = response.into_inner();
        loop {
            let message = inbound.message().await.map_err(|status| SessionEnd {
                error: format!("stream failed: {status}"),
                subscribed: true,
            })?;
            let Some(message) = message else {
                return Ok(());
            };
            let Some(wire::control_message::Kind::Snapshot(snapshot)) = message.kind else {
                continue;
            };
            let answer = self.take(snapshot).await;
            if tx.send(answer).await.is_err() {
                return Err(SessionEnd {
                    error: "stream closed".into(),
                    subscribed: true,
                });
            }
        }
    }

    /// Validates and swaps in a snapshot; returns the ACK or NACK.
    async fn take(&mut self, snapshot: Snapshot) -> SidecarMessage {
        let Snapshot {
            version,
            nonce,
            documents,
            digest,
            unchanged,
            trust_bundle_pem,
        } = snapshot;
        self.take_bundle(&trust_bundle_pem);
        if version < self.serving.0 {
            // The control plane is the source of truth, so this is taken; but versions only
            // go back when its store did (restored from an older backup, or another store).
            tracing::warn!(
                version,
                serving = self.serving.0,
                "the control plane pushed an older version than the one served"
            );
        }
        let source = format!("control:v{version}");
        // Refusals found here are recorded like the ones an install finds (counter,
        // `/config` `last_error`).
        let refuse = |message: String| {
            self.reloader.reject(message.clone(), &source);
            Err(message)
        };
        let (documents, result) =
            if unchanged && version == self.serving.0 && digest == self.serving.1 {
                // A trust-bundle refresh of what we serve: nothing to reload.
                (documents, Ok(()))
            } else if unchanged {
                let result = if digest == self.serving.1 {
                    self.reloader.bump_version(version, &source)
                } else {
                    refuse(
                        "control plane sent 'unchanged' for documents this sidecar does not have"
                            .into(),
                    )
                };
                (documents, result)
            } else if wire::digest(&documents) != digest {
                (documents, refuse("snapshot digest mismatch".to_owned()))
            } else {
                // Parsing (YAML, validation, regexes) runs off this thread, which also serves
                // admin: a large push must not hold up probes.
                let parsing = source.clone();
                let parsed = tokio::task::spawn_blocking(move || {
                    let parsed = ficus_config::parse_snapshot(&parsing, &documents);
                    (documents, parsed)
                })
                .await;
                match parsed {
                    Ok((documents, Ok(config))) => (
                        documents,
                        self.reloader.apply_version(config, version, &source),
                    ),
                    Ok((documents, Err(errors))) => (documents, refuse(errors.to_string())),
                    Err(error) => (String::new(), refuse(format!("parsing failed: {error}"))),
                }
            };
        let kind = match result {
            Ok(()) => {
                if !unchanged {
                    self.write_cache(version, &digest, documents).await;
                } else if version != self.serving.0 {
                    // The same documents under a newer version: a restart from the cache must
                    // not serve an older version than this one.
                    self.bump_cache(version, &digest).await;
                }
                self.serving = (version, digest);
                sidecar_message::Kind::Ack(Ack { version, nonce })
            }
            Err(error) => {
                tracing::warn!(version, %error, "pushed config rejected; NACK");
                sidecar_message::Kind::Nack(Nack {
                    version,
                    nonce,
                    error,
                    serving_version: self.serving.0,
                })
            }
        };
        SidecarMessage { kind: Some(kind) }
    }

    /// Writes the accepted snapshot atomically: temp file, fsync, rename, fsync directory.
    async fn write_cache(&self, version: u64, digest: &str, documents: String) {
        let Some(dir) = self.settings.cache_dir.clone() else {
            return;
        };
        let cached = Cached {
            version,
            digest: digest.to_owned(),
            documents,
        };
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &cached)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "writing the config cache failed"),
            Err(error) => tracing::warn!(%error, "config cache task failed"),
        }
    }

    /// Records that the cached documents of `digest` are served under `version` now (an
    /// `unchanged` push): a small file beside the cache, so that a version bump (with
    /// `--kubernetes`, endpoint churn elsewhere makes one every second or so) does not rewrite
    /// the documents. Renamed into place without fsync: a power loss may lose the newest bump,
    /// never the documents.
    async fn bump_cache(&self, version: u64, digest: &str) {
        let Some(dir) = self.settings.cache_dir.clone() else {
            return;
        };
        let bump = Bump {
            version,
            digest: digest.to_owned(),
        };
        let bumped = tokio::task::spawn_blocking(move || {
            let temp = dir.join(".version.json.tmp");
            std::fs::write(
                &temp,
                serde_json::to_vec(&bump).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&temp, bump_file(&dir))
        })
        .await;
        match bumped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "updating the config cache's version failed"),
            Err(error) => tracing::warn!(%error, "config cache task failed"),
        }
    }
}

fn cache_file(dir: &Path) -> PathBuf {
    dir.join("snapshot.json")
}

/// A newer version for the cached documents ([`ControlClient::bump_cache`]).
#[derive(Debug, Serialize, Deserialize)]
struct Bump {
    version: u64,
    digest: String,
}

fn bump_file(dir: &Path) -> PathBuf {
    dir.join("version.json")
}

/// The version to serve the cached documents under: a bump of the same documents to a newer
/// version, if there is one.
fn bumped_version(dir: &Path, cached: &Cached) -> u64 {
    std::fs::read(bump_file(dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Bump>(&bytes).ok())
        .filter(|bump| bump.digest == cached.digest)
        .map_or(cached.version, |bump| bump.version.max(cached.version))
}

fn write_atomically(dir: &Path, cached: &Cached) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(".snapshot.json.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(cached).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, cache_file(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// `ficus_tls_trust_bundle_roots`: the roots in force, read from the trust store at each
/// scrape (so installs from pushes and from certificate answers both show).
struct TrustBundleRoots {
    trust: Arc<TrustStore>,
    roots: prometheus::IntGauge,
}

impl TrustBundleRoots {
    fn new(trust: Arc<TrustStore>) -> Self {
        let roots = prometheus::IntGauge::new(
            "ficus_tls_trust_bundle_roots",
            "Roots in the trust bundle in force",
        )
        .expect("static metric definition");
        Self { trust, roots }
    }
}

impl prometheus::core::Collector for TrustBundleRoots {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.roots.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let roots = self.trust.bundle().certificates().len();
        self.roots.set(i64::try_from(roots).unwrap_or(i64::MAX));
        self.roots.collect()
    }
}

impl std::fmt::Debug for TrustBundleRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundleRoots").finish_non_exhaustive()
    }
}

/// Why a session ended, and whether it got as far as subscribing (which resets the backoff).
#[derive(Debug)]
struct SessionEnd {
    error: String,
    subscribed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(String, u16), String> {
        host_port(&url.parse::<Uri>().map_err(|e| e.to_string())?)
    }

    #[test]
    fn control_urls_take_names_and_addresses() {
        let ok = |url: &str, host: &str, port: u16| {
            assert_eq!(parse(url), Ok((host.to_owned(), port)), "{url}");
        };
        ok(
            "https://ficus-control.ficus-system.svc:15012",
            "ficus-control.ficus-system.svc",
            15012,
        );
        ok("http://localhost:15012", "localhost", 15012);
        ok("http://localhost:15012/", "localhost", 15012);
        ok(
            "https://ficus-control.ficus-system.svc.cluster.local.:1",
            "ficus-control.ficus-system.svc.cluster.local.",
            1,
        );
        ok("http://127.0.0.1:15012", "127.0.0.1", 15012);
        ok("http://[::1]:15012", "::1", 15012);
        for bad in [
            "http://localhost",
            "http://localhost:0",
            "http://user@localhost:15012",
            "http://localhost:15012/ficus",
            "http://localhost:15012?x=1",
            "http://-bad.example:1",
            "http://a..b:1",
            "http://[not-v6]:1",
            "http://under_score-ok.but%20space:1",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("http://{}.example:1", "a".repeat(64));
        assert!(parse(&long).is_err(), "64-character label accepted");
    }

    #[tokio::test]
    async fn addresses_resolve_without_dns() {
        assert_eq!(
            channel::resolve("127.0.0.1", 15012).await,
            Ok(vec!["127.0.0.1:15012".parse().unwrap()])
        );
        assert_eq!(
            channel::resolve("::1", 1).await,
            Ok(vec!["[::1]:1".parse().unwrap()])
        );
        // /etc/hosts (every resolver configuration has localhost there).
        let local = channel::resolve("localhost", 7)
            .await
            .expect("localhost resolves");
        assert!(
            local.iter().all(|a| a.ip().is_loopback() && a.port() == 7),
            "{local:?}"
        );
    }
}
