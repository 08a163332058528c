//! Swapping in a new config: validate (done by the caller), compile, bind new listeners, then
//! one atomic pointer swap. Nothing on the request path waits for any of it, and a config that
//! fails at any step leaves the serving one untouched.

use std::sync::Arc;

use ficus_config::Config;
use serde_json::value::RawValue;

use crate::snapshot::{documents_text, BuildContext, Snapshot};
use crate::state::Shared;
use crate::tcp::TcpListeners;

/// Applies accepted configs and records rejected ones.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<Shared>,
    tcp: TcpListeners,
    next_version: u64,
}

impl Reloader {
    /// A reloader whose first accepted config gets version 1.
    pub fn new(shared: Arc<Shared>, tcp: TcpListeners) -> Self {
        Self {
            shared,
            tcp,
            next_version: 1,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// File mode: swaps in `config` as the next version. Returns the new version, or `None`
    /// when the documents equal the serving ones (nothing to do). An error (e.g. a listen
    /// address in use) changes nothing and is recorded as a rejection.
    pub fn apply(&mut self, config: Config, source: &str) -> Result<Option<u64>, String> {
        let documents = documents_text(&config.documents);
        let current = self.shared.snapshot.load();
        if current.version > 0 && documents.get() == current.documents.get() {
            // Reverted to what serves (say, after a rejected edit): nothing to swap.
            self.shared.clear_rejection();
            return Ok(None);
        }
        drop(current);
        let version = self.next_version;
        self.install(config, documents, version, source)?;
        self.warn_about_config(version, source);
        self.next_version += 1;
        Ok(Some(version))
    }

    /// Push mode: swaps in `config` under the control plane's `version`.
    pub fn apply_version(
        &mut self,
        config: Config,
        version: u64,
        source: &str,
    ) -> Result<(), String> {
        let documents = documents_text(&config.documents);
        self.install(config, documents, version, source)?;
        self.warn_about_config(version, source);
        Ok(())
    }

    /// Push mode: the documents did not change, only the version number moves.
    pub fn bump_version(&mut self, version: u64, source: &str) -> Result<(), String> {
        let current = self.shared.snapshot.load();
        let (config, documents) = (Config::clone(&current.config), current.documents.clone());
        drop(current);
        self.install(config, documents, version, source)
    }

    fn install(
        &mut self,
        config: Config,
        documents: Box<RawValue>,
        version: u64,
        source: &str,
    ) -> Result<(), String> {
        // What can still fail comes first: building the snapshot updates shared state (the
        // live pools' timeouts, policy state carried between configs), so a config must not
        // be rejected after it.
        let access_log = match self.shared.access_log_for(config.mesh.access_log.as_ref()) {
            Ok(log) => log,
            Err(message) => {
                self.reject(message.clone(), source);
                return Err(message);
            }
        };
        let listen = config
            .backends
            .values()
            .filter_map(|backend| backend.listen);
        let prepared = match self.tcp.prepare(listen.collect()) {
            Ok(prepared) => prepared,
            Err(message) => {
                self.reject(message.clone(), source);
                return Err(message);
            }
        };
        let cx = BuildContext {
            pools: &self.shared.pools,
            metrics: &self.shared.metrics,
            identity: &self.shared.identity,
            tls: self.shared.tls.as_ref(),
        };
        let mut snapshot = Snapshot::build(config, documents, version, source.to_owned(), &cx);
        snapshot.access_log = access_log;
        self.shared.install(snapshot);
        self.tcp.commit(prepared, &self.shared);
        self.shared.metrics.config_update(true, source_kind(source));
        tracing::info!(version, source, "config applied");
        Ok(())
    }

    /// Logs each warning of the config just swapped in (matches that can never be selected):
    /// the config serves as it is, but its author should hear about it. Not for a version
    /// bump, whose documents (and warnings) were logged when they came.
    fn warn_about_config(&self, version: u64, source: &str) {
        for warning in &self.shared.snapshot.load().config.warnings {
            // One line per warning: its parts as fields (its Display adds a help line).
            let d = &warning.diagnostic;
            tracing::warn!(
                version,
                source,
                file = %d.file,
                line = d.line,
                document = d.document.as_deref().unwrap_or_default(),
                field = %d.field,
                hint = d.hint.as_deref().unwrap_or_default(),
                "config warning: {}",
                d.message
            );
        }
    }

    /// Records a config that failed validation or could not be applied.
    pub fn reject(&self, message: String, source: &str) {
        tracing::error!(source, error = %message, "config rejected; the previous config keeps serving");
        self.shared
            .metrics
            .config_update(false, source_kind(source));
        self.shared.record_rejection(message);
    }
}

/// Bounded `source` label: `file` or `control`.
fn source_kind(source: &str) -> &'static str {
    if source.starts_with("file:") {
        "file"
    } else {
        "control"
    }
}
