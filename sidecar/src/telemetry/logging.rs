//! `tracing` setup: text or JSON lines on stderr, with a filter that `/log-level` can change.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::cli::LogFormat;

/// Changes the active log filter at run time.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &self.current())
            .finish()
    }
}

impl LogHandle {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces the filter; an unparsable filter is an error and changes nothing.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        check_directives(filter)?;
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        if let Ok(mut current) = self.current.lock() {
            *current = filter.to_owned();
        }
        Ok(())
    }
}

/// Refuses what `EnvFilter` would take in a way nobody means: an empty filter (every log line
/// off) and a bare word that is not a level (`degub` reads as a module name, which turns every
/// other line off, errors included). `target=level` and levels pass.
fn check_directives(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err("empty filter (it would turn every log line off; send `off` for that)".into());
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l)) {
            return Err(format!(
                "{directive:?} is not a level; use one of {} or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter` when set.
pub fn init(format: LogFormat, default_filter: &str) -> LogHandle {
    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_owned());
    let filter = EnvFilter::try_new(&filter_text).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A second init (tests running in-process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => registry.with(fmt.with_ansi(false)).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    LogHandle {
        handle,
        current: std::sync::Arc::new(std::sync::Mutex::new(filter_text)),
    }
}
