//! Watching `--config` (a file or a directory of `*.yaml`) for changes.
//!
//! We poll metadata (size, modification time, inode) a few times a second instead of using
//! inotify: it costs one `stat` per file, needs no extra dependency, and sees every way a file
//! can change, including Kubernetes ConfigMap updates that swap a symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::reload::Reloader;

/// How often the config path is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    name: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// What identifies the current contents of `path` cheaply.
fn fingerprint(path: &Path) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |p: PathBuf| {
        std::fs::metadata(&p).ok().map(|m| Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            inode: m.ino(),
            name: p,
        })
    };
    if path.is_dir() {
        let mut stamps: Vec<Stamp> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .filter_map(stamp)
                    .collect()
            })
            .unwrap_or_default();
        stamps.sort_by(|a, b| a.name.cmp(&b.name));
        stamps
    } else {
        stamp(path.to_path_buf()).into_iter().collect()
    }
}

/// Reloads `path` whenever it changes, forever. Parsing and validation run on the blocking
/// pool, never on a data-plane thread.
pub async fn watch(path: PathBuf, mut reloader: Reloader) {
    let source = format!("file:{}", path.display());
    let mut last = fingerprint(&path);
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (stamp, loaded) = {
            let path = path.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let stamp = fingerprint(&path);
                (stamp, path)
            })
            .await;
            let Ok((stamp, path)) = checked else { continue };
            if stamp == last {
                continue;
            }
            let loaded = tokio::task::spawn_blocking(move || ficus_config::load_path(&path)).await;
            (stamp, loaded)
        };
        last = stamp;
        match loaded {
            Ok(Ok(config)) => {
                if let Err(error) = reloader.apply(config, &source) {
                    tracing::warn!(%error, "config change could not be applied");
                }
            }
            Ok(Err(errors)) => reloader.reject(errors.to_string(), &source),
            Err(error) => tracing::error!(%error, "config loader task failed"),
        }
    }
}
