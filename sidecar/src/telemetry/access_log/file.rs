//! An access-log file that follows its path, so that log rotation works without a signal.
//!
//! logrotate's default (`create`) renames the file and creates a new one at the path; a
//! writer that keeps its descriptor would go on appending to the renamed file. Before a batch,
//! at most once every [`CHECK_EVERY`], the writer thread compares the (device, inode) the path
//! names with those of the file it has open; when they differ, or the path is gone, it opens
//! the path again (append, created if absent) and writes the batch there. Lines written
//! between the rename and the next check land in the renamed file, whole: none is lost or
//! written twice (with `compress`, use `delaycompress`, so that the renamed file is not
//! compressed while those lines may still come). `copytruncate` keeps working too (the inode
//! stays, and appends follow the truncation). The check is one `stat` on the writer thread,
//! never on the request path.
//!
//! SIGUSR1 ([`LogFile::reopen`]) opens the path again before the next batch whatever it names,
//! as nginx does: a `postrotate` `kill -USR1` gets the new file at once rather than up to
//! [`CHECK_EVERY`] later, and a file that was removed and created again under the same inode
//! number (which the comparison cannot tell from the open one) is reopened too.
//!
//! When the path cannot be opened again, lines go on to the file already open while it still
//! has a name (renamed: nothing is lost); once it has none (removed), they would be written to
//! nothing, so each batch fails and its lines count as `write_error`, until an open succeeds
//! (tried again at the next check). Either way the first failure is logged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often, at most, the path is compared with the open file.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The access-log file and the path it was opened at.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`: what the path named when it was opened.
    id: (u64, u64),
    /// When the path was last compared with `file`.
    checked: Instant,
    every: Duration,
    /// The last reopen failed (logged once until one succeeds).
    failing: bool,
    /// The last reopen failed and `file` has no name left: writing to it would lose the lines.
    orphaned: bool,
}

impl LogFile {
    /// Opens `path` for appending, created if absent; a FIFO or socket is refused (opening
    /// one nobody reads would block the config swap).
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        Self::open_checking_every(path, CHECK_EVERY)
    }

    /// [`LogFile::open`], comparing the path with the open file at most once every `every`.
    pub(super) fn open_checking_every(path: &Path, every: Duration) -> io::Result<Self> {
        let (file, id) = open_append(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            id,
            checked: Instant::now(),
            every,
            failing: false,
            orphaned: false,
        })
    }

    /// Called before each batch: when it is time, opens the path again if it no longer names
    /// the open file. An error means the batch would be lost (see the module doc).
    pub(super) fn follow_path(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if now.saturating_duration_since(self.checked) >= self.every {
            self.checked = now;
            self.check();
        }
        if self.orphaned {
            return Err(io::Error::other(format!(
                "{} was removed and cannot be created again",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// SIGUSR1: opens the path again now, even when it still names the open file (the next
    /// comparison is [`CHECK_EVERY`] from now). When it cannot be opened, as after a failed
    /// comparison: the lines go on to the open file while it has a name.
    pub(super) fn reopen(&mut self) {
        self.checked = Instant::now();
        if self.open_again() {
            tracing::info!(
                path = %self.path.display(),
                "the access log file was reopened at its path (SIGUSR1)"
            );
        }
    }

    /// Compares the path with the open file and reopens it when they differ.
    fn check(&mut self) {
        let moved = match std::fs::metadata(&self.path) {
            Ok(named) => (named.dev(), named.ino()) != self.id,
            Err(error) if error.kind() == io::ErrorKind::NotFound => true,
            // Cannot tell (a directory no longer searchable): keep writing where we are, and
            // to nothing counted as lost if the open file was already found without a name.
            Err(_) => return,
        };
        if !moved {
            self.orphaned = false;
            return;
        }
        if self.open_again() {
            tracing::info!(
                path = %self.path.display(),
                "the access log file was moved or removed (log rotation); \
                 writing to a new one at its path"
            );
        }
    }

    /// Opens the path (append, created if absent) in place of the open file; whether it
    /// could. A failure is logged once until an open succeeds.
    fn open_again(&mut self) -> bool {
        match open_append(&self.path) {
            Ok((file, id)) => {
                (self.file, self.id) = (file, id);
                (self.failing, self.orphaned) = (false, false);
                true
            }
            Err(error) => {
                // fstat of the open file: zero links means no name is left for its lines.
                self.orphaned = self.file.metadata().map_or(true, |m| m.nlink() == 0);
                if !self.failing {
                    tracing::warn!(
                        %error,
                        orphaned = self.orphaned,
                        "the access log file cannot be opened again at its path; \
                         lines go on to the old file while it has a name, else are lost"
                    );
                }
                self.failing = true;
                false
            }
        }
    }
}

// === impl LogFile ===

impl Write for LogFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Opens `path` for appending (created if absent) with its (device, inode).
fn open_append(path: &Path) -> io::Result<(File, (u64, u64))> {
    let special =
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_socket());
    if special {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a FIFO or socket, not a file", path.display()),
        ));
    }
    // Non-blocking, and checked again once open: a FIFO put at the path after the check
    // above would otherwise block this thread in `open` until a reader came (O_NONBLOCK
    // changes nothing for a regular file's writes).
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot open {}: {error}", path.display()),
            )
        })?;
    let opened = file.metadata()?;
    if !opened.file_type().is_file() && !opened.file_type().is_char_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok((file, (opened.dev(), opened.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn text(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// A fresh directory of this test's own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("ficus-access-log-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_renamed_file_is_followed_by_a_new_one_at_the_path() {
        let dir = TempDir::new("renamed");
        let (path, rotated) = (
            dir.path().join("access.log"),
            dir.path().join("access.log.1"),
        );
        let mut log = LogFile::open_checking_every(&path, Duration::ZERO).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"two\n").unwrap();
        assert_eq!(text(&rotated), "one\n");
        assert_eq!(text(&path), "two\n");
        // Removed outright: created again.
        std::fs::remove_file(&path).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"three\n").unwrap();
        assert_eq!(text(&path), "three\n");
        assert_eq!(text(&rotated), "one\n");
    }

    #[test]
    fn the_path_is_compared_at_most_once_per_interval() {
        let dir = TempDir::new("interval");
        let (path, rotated) = (
            dir.path().join("access.log"),
            dir.path().join("access.log.1"),
        );
        let mut log = LogFile::open_checking_every(&path, Duration::from_secs(3600)).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"one\n").unwrap();
        assert_eq!(
            text(&rotated),
            "one\n",
            "still the open file until the next check"
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_reopen_does_not_wait_for_the_interval() {
        let dir = TempDir::new("reopen");
        let (path, rotated) = (
            dir.path().join("access.log"),
            dir.path().join("access.log.1"),
        );
        let mut log = LogFile::open_checking_every(&path, Duration::from_secs(3600)).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.follow_path().unwrap();
        log.write_all(b"two\n").unwrap();
        assert_eq!(text(&rotated), "one\n");
        assert_eq!(text(&path), "two\n", "created at the path at once");
        // Not moved: opened again all the same (a new descriptor, taken while the old one
        // was still open, on the same file).
        let (descriptor, id) = (log.file.as_raw_fd(), log.id);
        log.reopen();
        assert_ne!(log.file.as_raw_fd(), descriptor, "opened again");
        assert_eq!(log.id, id, "the same file");
        log.write_all(b"three\n").unwrap();
        assert_eq!(text(&path), "two\nthree\n");
    }

    #[test]
    fn lines_for_a_removed_file_that_cannot_be_reopened_are_refused_until_it_can() {
        let dir = TempDir::new("removed");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let path = logs.join("access.log");
        let mut log = LogFile::open_checking_every(&path, Duration::ZERO).unwrap();
        // The directory goes away with the file: nothing can be created at the path.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&logs).unwrap();
        assert!(log.follow_path().is_err());
        assert!(log.follow_path().is_err());
        std::fs::create_dir(&logs).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"back\n").unwrap();
        assert_eq!(text(&path), "back\n");
    }

    #[test]
    fn a_renamed_file_keeps_the_lines_when_the_path_cannot_be_opened() {
        let dir = TempDir::new("kept");
        let (path, rotated) = (
            dir.path().join("access.log"),
            dir.path().join("access.log.1"),
        );
        let mut log = LogFile::open_checking_every(&path, Duration::ZERO).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Something that cannot be opened for appending now has the path.
        std::fs::create_dir(&path).unwrap();
        log.follow_path().unwrap();
        log.write_all(b"kept\n").unwrap();
        assert_eq!(text(&rotated), "kept\n");
    }
}
