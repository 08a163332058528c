//! The push protocol server: `ficus.v1.ConfigDiscovery/Subscribe` streams over HTTP/2.
//!
//! Commits are debounced centrally (a burst of applies within ~100 ms becomes one
//! publication, at most 1 s late under a continuous stream of applies). Each stream then
//! runs its own task that sends the sidecar's scoped snapshot of the latest publication
//! through a one-slot queue: a slow sidecar holds up only its own task, and when it catches
//! up it gets the newest snapshot, never the ones in between. Sidecars answer with ACK or
//! NACK by nonce; answers to anything but the last push are stale and ignored.
//!
//! A version counts as acknowledged in the registry only when the sidecar ACKs a push of it on
//! this stream, never from its Hello (see [`crate::registry`]). So a new stream whose sidecar
//! says it already serves the latest publication, with the same documents, still gets it, as
//! `unchanged` (no documents): a confirmation the sidecar ACKs without reloading anything.
//!
//! On TLS streams every snapshot also carries the trust bundle in force
//! ([`ControlState::trust_bundle`]). When the bundle changes (`ca/extra-roots.pem` reloaded)
//! and a sidecar has nothing else coming, it gets a trust-bundle refresh: a snapshot of the
//! version and digest it already serves, `unchanged`, answered by ACK like any other (not
//! counted as config convergence). A new stream gets one too unless a config push carries the
//! bundle, so a sidecar that was away during a change catches up when it reconnects.
//!
//! HTTP/2 keepalive pings on every connection ([`crate::grpc`]) detect dead peers; a dead
//! stream's task ends and the sidecar is marked disconnected.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ficus_config::wire::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use ficus_config::wire::{
    self, control_message, sidecar_message, ControlMessage, Hello, SidecarMessage, Snapshot,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::join::{Caller, TokenAuthenticator};
use crate::auth::{bearer_token, AuthError};
use crate::scope::{self, Scope};
use crate::state::{ControlState, VersionRecord};

/// Quiet time that ends a burst of commits.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a commit waits for a burst to end.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// A new stream must say Hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message either way.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Largest encoded document set a version may have: a push carries it whole (a sidecar without
/// `--reach` gets everything) with the trust bundle and a few small fields beside it.
pub const MAX_DOCUMENTS: usize = MAX_MESSAGE - 256 * 1024;

/// Refuses `documents` whose push encoding would exceed [`MAX_DOCUMENTS`]: such a version
/// could never reach a sidecar (every stream would fail on it, with no NACK to show why).
pub fn check_pushable(documents: &[serde_json::Value]) -> Result<(), (usize, usize)> {
    let size = ficus_config::wire::encode_documents(documents).len();
    if size > MAX_DOCUMENTS {
        Err((size, MAX_DOCUMENTS))
    } else {
        Ok(())
    }
}
/// Longest NACK text logged (the registry keeps up to 4096 characters for `status`).
const MAX_LOGGED: usize = 512;
/// Longest field of a Hello (node id, workload, namespace, digest, each reach entry).
const MAX_HELLO_FIELD: usize = 256;
/// How often a stream opened with a revocable token (a join token) checks it is still
/// listed: the token file itself is re-read every 5 s.
const RECHECK: Duration = Duration::from_secs(5);

/// The push service over `state`; [`crate::grpc`] serves it next to the certificate service.
/// Must be called inside a tokio runtime (it starts the debounce task).
///
/// With an `authenticator` (join tokens), a stream must carry `authorization: Bearer <token>`
/// and its Hello must name the token's workload and namespace: a sidecar reads only its own
/// scoped config. Without one (`--insecure`, local development) streams are open.
pub fn service(
    state: Arc<ControlState>,
    authenticator: Option<Arc<dyn TokenAuthenticator>>,
) -> ConfigDiscoveryServer<Push> {
    let published = debounced(state.current.subscribe());
    let push = Push {
        state,
        published,
        scopes: Arc::new(ScopeCache::default()),
        authenticator,
    };
    ConfigDiscoveryServer::new(push)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Republishes `input` once it has been quiet for [`DEBOUNCE`] (or after [`MAX_DEBOUNCE`]).
fn debounced(
    mut input: watch::Receiver<Arc<VersionRecord>>,
) -> watch::Receiver<Arc<VersionRecord>> {
    let (output, published) = watch::channel(Arc::clone(&input.borrow_and_update()));
    tokio::spawn(async move {
        while input.changed().await.is_ok() {
            let burst = Instant::now();
            loop {
                match tokio::time::timeout(DEBOUNCE, input.changed()).await {
                    Err(_quiet) => break,
                    Ok(Err(_closed)) => return,
                    Ok(Ok(())) if burst.elapsed() >= MAX_DEBOUNCE => break,
                    Ok(Ok(())) => {}
                }
            }
            output.send_replace(Arc::clone(&input.borrow_and_update()));
        }
    });
    published
}

/// A scoped, encoded snapshot.
#[derive(Debug)]
struct Scoped {
    documents: String,
    digest: String,
}

/// Scoped snapshots of the newest publication, shared by sidecars with the same scope.
#[derive(Debug, Default)]
struct ScopeCache {
    entries: Mutex<(u64, HashMap<Scope, Arc<Scoped>>)>,
}

impl ScopeCache {
    fn get(&self, record: &VersionRecord, scope: &Scope) -> Arc<Scoped> {
        if let Ok(entries) = self.entries.lock() {
            if entries.0 == record.version {
                if let Some(found) = entries.1.get(scope) {
                    return Arc::clone(found);
                }
            }
        }
        let documents = wire::encode_documents(&scope::select(&record.documents, scope));
        let scoped = Arc::new(Scoped {
            digest: wire::digest(&documents),
            documents,
        });
        if let Ok(mut entries) = self.entries.lock() {
            if entries.0 != record.version {
                *entries = (record.version, HashMap::new());
            }
            entries.1.insert(scope.clone(), Arc::clone(&scoped));
        }
        scoped
    }
}

/// The `ConfigDiscovery` service: one task per subscribed sidecar.
#[derive(Debug, Clone)]
pub struct Push {
    state: Arc<ControlState>,
    published: watch::Receiver<Arc<VersionRecord>>,
    scopes: Arc<ScopeCache>,
    authenticator: Option<Arc<dyn TokenAuthenticator>>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for Push {
    type SubscribeStream = Outbound;

    async fn subscribe(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let caller = match &self.authenticator {
            None => None,
            Some(authenticator) => {
                let header = request.metadata().get("authorization").map(|v| v.to_str());
                let token = match header.transpose() {
                    Ok(header) => bearer_token(header),
                    Err(_) => Err(AuthError::Malformed),
                };
                let caller = match token {
                    Ok(token) => authenticator
                        .authenticate(token)
                        .await
                        .map(|caller| (token.to_owned(), caller)),
                    Err(error) => Err(error),
                };
                Some(caller.map_err(|error| Status::unauthenticated(error.to_string()))?)
            }
        };
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(SidecarMessage {
                kind: Some(sidecar_message::Kind::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10 s")),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ))
            }
        };
        check_hello(&hello)?;
        if let Some((_, caller)) = &caller {
            if caller.workload != hello.workload || caller.namespace != hello.namespace {
                return Err(Status::permission_denied(format!(
                    "the token is for {}.{}, not {}.{}",
                    caller.workload, caller.namespace, hello.workload, hello.namespace
                )));
            }
        }
        let revocable = caller.filter(|(_, caller)| caller.revocable);
        let (tx, rx) = mpsc::channel(1);
        let stream = PushStream {
            state: Arc::clone(&self.state),
            scopes: Arc::clone(&self.scopes),
            published: self.published.clone(),
            tx,
            revocable: revocable.zip(self.authenticator.clone()),
        };
        tokio::spawn(stream.run(hello, inbound));
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|message| (message, rx))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

fn check_hello(hello: &Hello) -> Result<(), Status> {
    let fields = [&hello.node_id, &hello.workload, &hello.namespace];
    if fields.iter().any(|f| f.is_empty()) {
        return Err(Status::invalid_argument(
            "Hello needs node_id, workload and namespace",
        ));
    }
    let too_long = fields.iter().any(|f| f.len() > MAX_HELLO_FIELD)
        || hello.reach.iter().any(|r| r.len() > MAX_HELLO_FIELD)
        || hello.digest.len() > MAX_HELLO_FIELD
        || hello.reach.len() > 1024;
    if too_long {
        return Err(Status::invalid_argument("Hello field too long"));
    }
    Ok(())
}

/// What was last sent on a stream, awaiting its answer.
#[derive(Debug)]
struct Sent {
    record: Arc<VersionRecord>,
    nonce: String,
    digest: String,
    /// A trust-bundle refresh of the version already served (no config convergence to observe).
    refresh: bool,
    /// A confirmation: the latest version, which the sidecar said in its Hello it already
    /// serves with these documents, sent `unchanged` so that its ACK confirms it. It counts
    /// as acknowledged, but is no config convergence to observe.
    confirmation: bool,
    /// The sidecar NACKed it (kept so the same version is not pushed again).
    nacked: bool,
}

struct PushStream {
    state: Arc<ControlState>,
    scopes: Arc<ScopeCache>,
    published: watch::Receiver<Arc<VersionRecord>>,
    tx: mpsc::Sender<Result<ControlMessage, Status>>,
    /// The token the stream was opened with and its caller, when the token can be revoked
    /// (the stream ends then), with the authenticator to ask.
    revocable: Option<((String, Caller), Arc<dyn TokenAuthenticator>)>,
}

impl PushStream {
    async fn run(mut self, hello: Hello, mut inbound: Streaming<SidecarMessage>) {
        let node = hello.node_id.clone();
        let registry = &self.state.registry;
        let metrics = &self.state.metrics;
        let serving = (hello.version > 0).then_some(hello.version);
        let stream = registry.connect(&node, &hello.workload, &hello.namespace, serving);
        metrics.connected_sidecars.set(registry.connected() as i64);
        // Hello fields are the sidecar's bytes (bounded by `check_hello`): logged with `?`, which
        // escapes them, so that a sidecar cannot forge log lines.
        tracing::info!(node = ?node, workload = ?hello.workload, namespace = ?hello.namespace,
            version = hello.version, "sidecar subscribed");
        let scope = Scope {
            namespace: hello.namespace.clone(),
            workload: hello.workload.clone(),
            reach: hello.reach.clone(),
        };
        // What the sidecar serves: (version, digest).
        let mut serving = (hello.version, hello.digest.clone());
        let mut sent: Option<Sent> = None;
        // Whether a config push went out on this stream: until then the sidecar's own word
        // (its Hello) is all there is, and the latest version is pushed even when it matches.
        let mut pushed = false;
        let mut trust = self.state.trust_bundle.subscribe();
        // The bundle last sent on this stream (none yet: the sidecar's may be older).
        let mut bundle_sent: Arc<str> = Arc::from("");
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let latest = Arc::clone(&self.published.borrow_and_update());
            let bundle = Arc::clone(&trust.borrow_and_update());
            let pending = sent.as_ref().map(|s| s.record.version);
            // Behind, or at the same version number with other documents (a sidecar whose
            // cache came from another control plane, or another scope).
            let behind = |serving: &(u64, String)| {
                latest.version != serving.0 || self.scopes.get(&latest, &scope).digest != serving.1
            };
            if latest.version > 0
                && pending != Some(latest.version)
                && (behind(&serving) || !pushed)
            {
                let confirmation = !behind(&serving);
                let scoped = self.scopes.get(&latest, &scope);
                // `unchanged` only when the sidecar will hold these documents whatever it does
                // with a push still unanswered: it may yet take that push's documents (a
                // rollback right after an apply goes back to what it served before).
                let in_flight = sent
                    .as_ref()
                    .filter(|s| !s.nacked && !s.refresh)
                    .map(|s| &s.digest);
                let unchanged =
                    scoped.digest == serving.1 && in_flight.is_none_or(|d| *d == scoped.digest);
                let nonce = format!("{:016x}", rand::random::<u64>());
                let snapshot = Snapshot {
                    version: latest.version,
                    nonce: nonce.clone(),
                    documents: if unchanged {
                        String::new()
                    } else {
                        scoped.documents.clone()
                    },
                    digest: scoped.digest.clone(),
                    unchanged,
                    trust_bundle_pem: bundle.to_string(),
                };
                let message = ControlMessage {
                    kind: Some(control_message::Kind::Snapshot(snapshot)),
                };
                if self.tx.send(Ok(message)).await.is_err() {
                    break;
                }
                metrics.pushes.inc();
                bundle_sent = Arc::clone(&bundle);
                pushed = true;
                sent = Some(Sent {
                    record: latest,
                    nonce,
                    digest: scoped.digest.clone(),
                    refresh: false,
                    confirmation,
                    nacked: false,
                });
            } else if !bundle.is_empty()
                && bundle != bundle_sent
                && sent.as_ref().is_none_or(|s| s.nacked)
            {
                // A trust-bundle refresh: the version and digest the sidecar serves, unchanged.
                let nonce = format!("{:016x}", rand::random::<u64>());
                let snapshot = Snapshot {
                    version: serving.0,
                    nonce: nonce.clone(),
                    documents: String::new(),
                    digest: serving.1.clone(),
                    unchanged: true,
                    trust_bundle_pem: bundle.to_string(),
                };
                let message = ControlMessage {
                    kind: Some(control_message::Kind::Snapshot(snapshot)),
                };
                if self.tx.send(Ok(message)).await.is_err() {
                    break;
                }
                metrics.trust_bundle_pushes.inc();
                bundle_sent = Arc::clone(&bundle);
                let record = if latest.version == serving.0 {
                    latest
                } else {
                    Arc::new(VersionRecord {
                        version: serving.0,
                        ..VersionRecord::empty()
                    })
                };
                // After a NACK, `sent` stays (so the refused version is not pushed again) and
                // the refresh's ACK is ignored as stale.
                if sent.is_none() {
                    sent = Some(Sent {
                        record,
                        nonce,
                        digest: serving.1.clone(),
                        refresh: true,
                        confirmation: false,
                        nacked: false,
                    });
                }
            }
            tokio::select! {
                _ = recheck.tick(), if self.revocable.is_some() => {
                    if self.revoked() {
                        tracing::info!(node = ?node, "the stream's join token was revoked");
                        let status = Status::unauthenticated("the join token was revoked");
                        // The answer is best-effort: a sidecar that reads nothing just loses
                        // the stream.
                        let _ = self.tx.try_send(Err(status));
                        break;
                    }
                }
                changed = trust.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = self.published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        self.answer(&node, stream, message, &mut sent, &mut serving);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = ?node, %status, "push stream failed");
                        break;
                    }
                },
            }
        }
        registry.disconnect(&node, stream);
        metrics.connected_sidecars.set(registry.connected() as i64);
        tracing::info!(node = ?node, "sidecar disconnected");
    }

    /// Whether the token the stream was opened with has been revoked since.
    fn revoked(&self) -> bool {
        self.revocable
            .as_ref()
            .is_some_and(|((token, caller), authenticator)| authenticator.revoked(token, caller))
    }

    /// Records the sidecar's answer on stream `stream` to what was last `sent`.
    fn answer(
        &self,
        node: &str,
        stream: u64,
        message: SidecarMessage,
        sent: &mut Option<Sent>,
        serving: &mut (u64, String),
    ) {
        let registry = &self.state.registry;
        let metrics = &self.state.metrics;
        let matches = |nonce: &str| sent.as_ref().is_some_and(|s| s.nonce == nonce);
        match message.kind {
            Some(sidecar_message::Kind::Ack(ack)) if matches(&ack.nonce) => {
                if let Some(done) = sent.take() {
                    *serving = (done.record.version, done.digest);
                    if done.refresh {
                        // A trust-bundle refresh: the config state is what it was.
                        return;
                    }
                    registry.ack(node, stream, done.record.version);
                    if done.confirmation {
                        return;
                    }
                    let committed = done.record.created_at_ms;
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    if committed > 0 {
                        metrics
                            .push_convergence
                            .observe(now.saturating_sub(committed) as f64 / 1000.0);
                    }
                }
            }
            Some(sidecar_message::Kind::Nack(nack)) if matches(&nack.nonce) => {
                // Keep `sent`: the same version is not pushed again; the next one will be.
                // A refused refresh is dropped (its bundle is not sent again).
                if sent.as_ref().is_some_and(|s| s.refresh) {
                    *sent = None;
                } else if let Some(sent) = sent.as_mut() {
                    sent.nacked = true;
                }
                // The sidecar says what it serves: another version than we thought means an
                // earlier push took effect after all (its ACK came under an older nonce and was
                // ignored). Its documents are then not known here, so the next push carries
                // them in full, never `unchanged`.
                if nack.serving_version != serving.0 {
                    *serving = (nack.serving_version, String::new());
                }
                let version = sent.as_ref().map_or(nack.version, |s| s.record.version);
                registry.nack(node, stream, version, &truncate(&nack.error, 4096));
                metrics.nacks.inc();
                // The sidecar's text: bounded and escaped (`?`), it cannot forge log lines.
                tracing::warn!(node = ?node, version, error = ?truncate(&nack.error, MAX_LOGGED),
                    "sidecar rejected config");
            }
            Some(sidecar_message::Kind::Ack(_) | sidecar_message::Kind::Nack(_)) => {
                tracing::debug!(node, "stale answer ignored");
            }
            Some(sidecar_message::Kind::Hello(_)) | None => {
                tracing::debug!(node, "unexpected message ignored");
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> Arc<VersionRecord> {
        Arc::new(VersionRecord {
            version,
            ..VersionRecord::empty()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_commits_is_published_once_at_its_end() {
        let (input, rx) = watch::channel(record(0));
        let mut published = debounced(rx);
        let counter = tokio::spawn(async move {
            let mut seen = Vec::new();
            while published.changed().await.is_ok() {
                seen.push(published.borrow_and_update().version);
            }
            seen
        });
        // 50 commits over 1 s: 20 ms apart, always inside the quiet window.
        for version in 1..=50 {
            input.send_replace(record(version));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(input);
        let seen = counter.await.unwrap();
        assert_eq!(seen.last(), Some(&50), "ends at the last version: {seen:?}");
        assert!(
            seen.len() <= 3,
            "a burst coalesces into few publications: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_commit_is_published_after_the_quiet_time() {
        let (input, rx) = watch::channel(record(0));
        let mut published = debounced(rx);
        let started = tokio::time::Instant::now();
        input.send_replace(record(7));
        published.changed().await.unwrap();
        assert_eq!(published.borrow().version, 7);
        assert_eq!(started.elapsed(), DEBOUNCE);
    }
}
