//! Watching `--config` (a file or a directory of `*.yaml`) for changes.
//!
//! inotify on the directory that holds the config (the file's parent, or the directory itself)
//! wakes us at once when anything in it is written and closed, created, renamed in or out, or
//! deleted. That covers editors and tools that replace a file by rename, and Kubernetes
//! ConfigMap updates, which swap the `..data` symlink by renaming a new one over it. For a
//! single config file, an event that finishes a write (close after writing, rename into place)
//! is acted on at once; other events, and every event of a config directory (where several
//! files may change together), are coalesced for [`DEBOUNCE`] so a multi-file write is read
//! once. Then, as before, we
//! compare metadata (size, modification time, inode; symlinks followed) and reload only when
//! it changed. A slow [`POLL_INTERVAL`] check stays as the fallback for filesystems without
//! inotify and for missed events (queue overflow, a watched directory that was replaced).
//! SIGHUP ([`crate::signals`]) reads the path at once whether or not its metadata changed (an
//! edit that kept size and modification time, a filesystem without inotify), and the result
//! goes the way a change's does: swapped in, or rejected and recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};
use tokio::sync::Notify;

use crate::reload::Reloader;

/// How often the config path is checked without an inotify event (fallback).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait before a config that could not be installed is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How long events are coalesced after the first one before the path is checked.
pub const DEBOUNCE: Duration = Duration::from_millis(1);

/// Event buffer size for the inotify stream (several events per read).
const EVENT_BUFFER: usize = 4096;

type Events = EventStream<Vec<u8>>;

/// Starts an inotify watch on the directory holding `path`; `None` (poll only) where inotify
/// is unavailable. Warns only when `loud` (the first attempt), not on every retry.
fn inotify_stream(path: &Path, loud: bool) -> Option<Events> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let started = Inotify::init().and_then(|inotify| {
        inotify.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        inotify.into_event_stream(vec![0u8; EVENT_BUFFER])
    });
    match started {
        Ok(stream) => Some(stream),
        Err(error) if loud => {
            tracing::warn!(%error, dir = %dir.display(), poll = ?POLL_INTERVAL,
                "inotify unavailable for the config directory; polling only");
            None
        }
        Err(error) => {
            tracing::debug!(%error, "inotify still unavailable for the config directory");
            None
        }
    }
}

/// Events that mark a write as finished: the writer closed the file, or renamed a complete
/// file (or a ConfigMap's `..data` symlink) into place.
fn completes_a_write(mask: EventMask) -> bool {
    mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
}

/// Waits for the next reason to check the path: an inotify event or the fallback tick.
///
/// When only one file is watched (`single_file`) and the events read so far include one that
/// finishes a write ([`completes_a_write`]), the path is checked at once: an atomic rename or
/// a closed file cannot be half-written. Otherwise (a `CREATE` that a write will follow, or a
/// directory where several files may be changing together) further events are coalesced for
/// [`DEBOUNCE`]. Drops the stream when it ends or fails, so the caller re-creates it on the
/// next tick.
async fn next_change(
    events: &mut Option<Events>,
    ticks: &mut tokio::time::Interval,
    single_file: bool,
) {
    use futures_util::FutureExt;
    let Some(stream) = events.as_mut() else {
        ticks.tick().await;
        return;
    };
    let mut completed = tokio::select! {
        event = stream.next() => match event {
            // The watched directory itself was removed or moved away: the watch is gone.
            Some(Ok(event)) if event.mask.contains(EventMask::IGNORED) => {
                *events = None;
                return;
            }
            Some(Ok(event)) => completes_a_write(event.mask),
            Some(Err(error)) => {
                tracing::warn!(%error, "inotify stream failed; polling until it is re-created");
                *events = None;
                return;
            }
            None => {
                *events = None;
                return;
            }
        },
        _ = ticks.tick() => return,
    };
    // Whatever the same read returned is already buffered: take it without waiting.
    while let Some(event) = stream.next().now_or_never() {
        match event {
            Some(Ok(event)) if !event.mask.contains(EventMask::IGNORED) => {
                completed |= completes_a_write(event.mask);
            }
            _ => {
                *events = None;
                return;
            }
        }
    }
    if single_file && completed {
        return;
    }
    let deadline = tokio::time::Instant::now() + DEBOUNCE;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(event)) if !event.mask.contains(EventMask::IGNORED) => continue,
                _ => {
                    *events = None;
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    name: PathBuf,
    /// `None`: listed but unreadable (a dangling symlink): its going away is a change too.
    meta: Option<Meta>,
}

#[derive(Debug, PartialEq, Eq)]
struct Meta {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    /// Permissions: a file made readable (chmod) is read again.
    mode: u32,
}

/// What identifies the current contents of `path` cheaply: in a directory, every file
/// [`ficus_config::load_path`] reads (`*.yaml`, `*.yml`, no dotfiles), readable or not.
fn fingerprint(path: &Path) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |name: PathBuf| Stamp {
        meta: std::fs::metadata(&name).ok().map(|m| Meta {
            len: m.len(),
            modified: m.modified().ok(),
            inode: m.ino(),
            mode: m.mode(),
        }),
        name,
    };
    if path.is_dir() {
        let mut stamps: Vec<Stamp> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        (name.ends_with(".yaml") || name.ends_with(".yml"))
                            && !name.starts_with('.')
                    })
                    .map(|e| stamp(e.path()))
                    .collect()
            })
            .unwrap_or_default();
        stamps.sort_by(|a, b| a.name.cmp(&b.name));
        stamps
    } else {
        let stamp = stamp(path.to_path_buf());
        stamp.meta.is_some().then_some(stamp).into_iter().collect()
    }
}

/// Reloads `path` whenever it changes, and whenever `reload` is notified (SIGHUP) whether it
/// changed or not, forever. Parsing and validation run on the blocking pool, never on a
/// data-plane thread.
pub async fn watch(path: PathBuf, mut reloader: Reloader, reload: Arc<Notify>) {
    let source = format!("file:{}", path.display());
    let mut events = inotify_stream(&path, true);
    // Which directory the watch is on depends on whether `path` is a directory right now.
    let mut watched_as_dir = path.is_dir();
    let mut last = fingerprint(&path);
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.reset();
    // A valid config that could not be installed (a listen address still taken, an access
    // log directory not there yet) is tried again: after 1 s, then twice as long each time,
    // up to 30 s (when and how long).
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        // Events that `next_change` took before a SIGHUP cut it short need nothing more: the
        // path is read just below.
        let forced = tokio::select! {
            () = next_change(&mut events, &mut ticks, !watched_as_dir) => false,
            () = reload.notified() => true,
        };
        if retry.is_some_and(|(at, _)| tokio::time::Instant::now() >= at) {
            last = Vec::new();
        }
        let is_dir = path.is_dir();
        if events.is_none() || is_dir != watched_as_dir {
            // Lost (the directory was replaced, the queue failed), never started, or a config
            // directory that was missing (so its parent was watched) exists again: try again
            // on each wake, polling meanwhile.
            events = inotify_stream(&path, false);
            watched_as_dir = is_dir;
        }
        // One hop to the blocking pool: compare the metadata, and read only when it changed.
        let checked = {
            let path = path.clone();
            let previous = std::mem::take(&mut last);
            tokio::task::spawn_blocking(move || {
                let stamp = fingerprint(&path);
                let loaded = (forced || stamp != previous).then(|| ficus_config::load_path(&path));
                (stamp, loaded)
            })
            .await
        };
        let Ok((stamp, loaded)) = checked else {
            tracing::error!("config loader task failed");
            continue;
        };
        last = stamp;
        let Some(loaded) = loaded else { continue };
        match loaded {
            Ok(config) => match reloader.apply(config, &source) {
                Ok(applied) => {
                    retry = None;
                    if forced && applied.is_none() {
                        tracing::info!(source, "SIGHUP: the config is unchanged");
                    }
                }
                Err(error) => {
                    let wait = retry.map_or(POLL_INTERVAL, |(_, wait)| (wait * 2).min(MAX_RETRY));
                    tracing::warn!(%error, retry_in = ?wait, "config change could not be applied");
                    retry = Some((tokio::time::Instant::now() + wait, wait));
                }
            },
            Err(errors) => {
                retry = None;
                reloader.reject(errors.to_string(), &source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ficus-watch-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The fallback tick is set to an hour, so only an inotify event can wake `next_change`
    /// within the (generous, bounded) wait.
    async fn woken_by_inotify(events: &mut Option<Events>) -> bool {
        let mut ticks = tokio::time::interval(Duration::from_secs(3600));
        ticks.reset();
        tokio::time::timeout(
            Duration::from_secs(10),
            next_change(events, &mut ticks, true),
        )
        .await
        .is_ok()
    }

    #[test]
    fn a_permission_change_changes_the_fingerprint() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let file = dir.0.join("config.yaml");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
        let unreadable = fingerprint(&file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_ne!(fingerprint(&file), unreadable, "made readable: read again");
    }

    #[test]
    fn a_dangling_file_going_away_changes_the_fingerprint() {
        let dir = TempDir::new("dangling");
        std::fs::write(dir.0.join("a.yaml"), "x").unwrap();
        symlink(dir.0.join("nowhere"), dir.0.join("b.yaml")).unwrap();
        let with_dangling = fingerprint(&dir.0);
        std::fs::remove_file(dir.0.join("b.yaml")).unwrap();
        assert_ne!(
            fingerprint(&dir.0),
            with_dangling,
            "the load that failed on b.yaml is tried again"
        );
        // Dotfiles are not read, so they are no change either.
        let before = fingerprint(&dir.0);
        std::fs::write(dir.0.join(".tmp.yaml"), "x").unwrap();
        assert_eq!(fingerprint(&dir.0), before);
    }

    #[tokio::test]
    async fn rename_replace_and_in_place_write_wake_the_watcher() {
        let dir = TempDir::new("rename");
        let path = dir.0.join("config.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut events = inotify_stream(&path, true);
        assert!(events.is_some(), "inotify available on this system");
        let before = fingerprint(&path);

        let temp = dir.0.join(".config.yaml.tmp");
        std::fs::write(&temp, "a: 2\n").unwrap();
        std::fs::rename(&temp, &path).unwrap();
        assert!(woken_by_inotify(&mut events).await, "rename woke it");
        assert!(events.is_some());
        let renamed = fingerprint(&path);
        assert_ne!(renamed, before, "the renamed file differs");

        std::fs::write(&path, "a: 33\n").unwrap();
        assert!(
            woken_by_inotify(&mut events).await,
            "in-place write woke it"
        );
        assert_ne!(fingerprint(&path), renamed);
    }

    #[tokio::test]
    async fn configmap_data_symlink_swap_wakes_the_watcher() {
        // The layout the kubelet makes for a ConfigMap volume:
        //   config.yaml -> ..data/config.yaml, ..data -> ..2026_v1/
        // and an update renames a new `..data` symlink over the old one.
        let dir = TempDir::new("configmap");
        let d = &dir.0;
        std::fs::create_dir(d.join("..2026_v1")).unwrap();
        std::fs::write(d.join("..2026_v1/config.yaml"), "a: 1\n").unwrap();
        symlink("..2026_v1", d.join("..data")).unwrap();
        symlink("..data/config.yaml", d.join("config.yaml")).unwrap();
        let path = d.join("config.yaml");
        let mut events = inotify_stream(&path, true);
        assert!(events.is_some(), "inotify available on this system");
        let before = fingerprint(&path);
        assert_eq!(before.len(), 1, "the symlink is followed");

        std::fs::create_dir(d.join("..2026_v2")).unwrap();
        std::fs::write(d.join("..2026_v2/config.yaml"), "a: 22\n").unwrap();
        symlink("..2026_v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(woken_by_inotify(&mut events).await, "..data swap woke it");
        std::fs::remove_dir_all(d.join("..2026_v1")).unwrap();
        assert_ne!(fingerprint(&path), before, "the new target is seen");
    }

    #[tokio::test]
    async fn a_removed_directory_drops_the_stream_for_polling() {
        let dir = TempDir::new("removed");
        let sub = dir.0.join("conf");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), "a: 1\n").unwrap();
        let mut events = inotify_stream(&sub, true);
        assert!(events.is_some());
        std::fs::remove_dir_all(&sub).unwrap();
        // Events for the deleted file, then IN_DELETE_SELF / IN_IGNORED: bounded number of wakes.
        for _ in 0..10 {
            if events.is_none() {
                break;
            }
            assert!(woken_by_inotify(&mut events).await);
        }
        assert!(events.is_none(), "a dead watch falls back to polling");
    }
}
