//! Durable config versions in an embedded redb database, `DIR/ficus.redb`.
//!
//! Every version is a full [`VersionRecord`] stored as JSON under its number (a rollback also
//! records its target, which decides where the next plain rollback goes), next to a small
//! history entry (so `history` does not read every document of every version) and two counters:
//! `current` (the version sidecars get) and `last` (the highest number ever handed out, so a
//! number is never reused and never goes backwards, rollbacks included). A commit writes all of
//! them in one write transaction with [`Durability::Immediate`] and two-phase commit: when
//! [`Store::commit`] returns, the version survives `kill -9` and power loss. The same
//! transaction deletes the versions beyond the history limit (`--history-limit`, the newest
//! [`DEFAULT_HISTORY_LIMIT`] by default), except the one a plain rollback would go to: with
//! `--kubernetes`, endpoint churn commits a version every few hundred milliseconds, and every
//! version is a full copy of the config.
//!
//! Opening never yields a silently empty store over data it cannot read: the file is integrity
//! checked (every page checksum) on open, and the current record is decoded before the store is
//! handed out. Any failure is a [`StoreError`] naming the file and what to do.
//!
//! redb is synchronous and every commit waits for `fsync`: async callers run these methods in
//! `tokio::task::spawn_blocking` (the store is cheap to clone for that).
//!
//! redb latches an I/O failure: after one (a full disk, say), every later transaction fails
//! with `PreviousIo` until the database is opened again. So an operation that fails with an
//! I/O error marks the database stale, and the next operation first closes and reopens it
//! (with the same integrity check as at start; redb recovers the last durable commit). While
//! reopening fails, every operation fails with the reason and [`Store::unavailable`] says so,
//! which `/ready` reports.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::state::VersionRecord;

/// Name of the database file inside `--data`.
pub const FILE_NAME: &str = "ficus.redb";

/// Version number → the whole [`VersionRecord`] as JSON.
const VERSIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("versions");
/// Version number → its [`HistoryEntry`] as JSON.
const HISTORY: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("history");
/// `current` and `last` version numbers.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const CURRENT: &str = "current";
const LAST: &str = "last";

/// How many versions are kept by default (`--history-limit`).
pub const DEFAULT_HISTORY_LIMIT: u64 = 1000;

/// Page cache: the store holds a few MiB of config, not the default 1 GiB.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The versioned config store. Clones share one open database.
#[derive(Clone)]
pub struct Store {
    database: Arc<RwLock<Handle>>,
    path: PathBuf,
    /// How many of the newest versions are kept (at least 1).
    history_limit: u64,
}

/// The open database, and whether it must be reopened before it is used again.
///
/// Operations hold the read lock for their whole duration, so a reopen (under the write lock)
/// never closes the database under a transaction, and the file lock is released before the
/// file is opened again.
struct Handle {
    /// `None` while reopening fails.
    database: Option<Database>,
    /// An operation failed with an I/O error: redb refuses every later one until reopened.
    stale: bool,
}

/// One line of `ficusctl history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Version number.
    pub version: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Who made it, when known.
    pub author: Option<String>,
    /// What changed, one line.
    pub summary: String,
    /// How many documents the config holds at this version.
    pub documents: usize,
    /// For a rollback, the version whose documents it made current again (see
    /// [`VersionRecord::rolled_back_to`]).
    #[serde(default)]
    pub rolled_back_to: Option<u64>,
}

/// A page of history: what `GET /v1/history` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Newest first.
    pub versions: Vec<HistoryEntry>,
    /// When older versions exist, the `before` that asks for the next page (the oldest version
    /// of this one); `None` on the last page.
    pub next_before: Option<u64>,
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `--data` could not be created or read (permissions, a file in the way, a full disk).
    #[error("cannot use data directory {path}: {source}; check that it is a writable directory")]
    Directory {
        /// The data directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Another process (usually another `ficus-control`) holds the database lock.
    #[error(
        "{path} is in use by another process; is another ficus-control running on this --data?"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a redb database, fails its integrity check, or holds records that do not
    /// decode. Nothing is served from it.
    #[error(
        "{path} is corrupt: {reason}; restore it from a backup, or move it away to start with an \
         empty store"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// redb refused to open the file for another reason (I/O error, unsupported format).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error (boxed: it is large and this path is cold).
        source: Box<DatabaseError>,
    },
    /// A read or write transaction failed after opening (I/O error, disk full).
    #[error("{path}: {operation} failed: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        operation: &'static str,
        /// redb's error (boxed: it is large and this path is cold).
        source: Box<redb::Error>,
    },
    /// A version could not be serialized (a document is not representable as JSON).
    #[error("version {version} cannot be encoded: {source}")]
    Encode {
        /// The version being written.
        version: u64,
        /// serde's error.
        source: serde_json::Error,
    },
}

impl Store {
    /// Opens (creating when absent) the store in `dir`, returning it and its current version
    /// ([`VersionRecord::empty`] when nothing was ever committed).
    pub fn open(dir: &Path) -> Result<(Store, VersionRecord), StoreError> {
        let directory_error = |source| StoreError::Directory {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory_error)?;
        // `create_dir_all` accepts an existing file only as an error; also check readability
        // here so a permission problem is reported as one, not as a database error.
        std::fs::read_dir(dir).map_err(directory_error)?;
        let path = dir.join(FILE_NAME);
        let created = !path.exists();
        let database = open_database(&path)?;
        if created {
            // redb fsyncs the file, not the directory entry that names it: without this a
            // power loss right after the first commit could lose the whole file.
            std::fs::File::open(dir)
                .and_then(|directory| directory.sync_all())
                .map_err(directory_error)?;
        }
        let store = Store {
            database: Arc::new(RwLock::new(Handle {
                database: Some(database),
                stale: false,
            })),
            path,
            history_limit: DEFAULT_HISTORY_LIMIT,
        };
        store.create_tables()?;
        let current = store.current()?;
        Ok((store, current))
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This store, keeping only the newest `limit` versions (at least 1) from the next commit
    /// on ([`DEFAULT_HISTORY_LIMIT`] unless set).
    pub fn with_history_limit(mut self, limit: u64) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// How many of the newest versions are kept.
    pub fn history_limit(&self) -> u64 {
        self.history_limit
    }

    /// Stores `documents` as a new version (the next number) and makes it current, in one
    /// durable transaction. Blocks for an `fsync`.
    pub fn commit(
        &self,
        documents: Vec<serde_json::Value>,
        author: Option<String>,
        summary: String,
    ) -> Result<VersionRecord, StoreError> {
        self.commit_from(documents, author, summary, None)
    }

    /// [`Store::commit`] of a rollback: `documents` are those of version `target`, and the
    /// new version records it ([`VersionRecord::rolled_back_to`]).
    pub fn commit_rollback(
        &self,
        documents: Vec<serde_json::Value>,
        author: Option<String>,
        summary: String,
        target: u64,
    ) -> Result<VersionRecord, StoreError> {
        self.commit_from(documents, author, summary, Some(target))
    }

    fn commit_from(
        &self,
        documents: Vec<serde_json::Value>,
        author: Option<String>,
        summary: String,
        rolled_back_to: Option<u64>,
    ) -> Result<VersionRecord, StoreError> {
        self.using(|database| {
            self.write_version(database, documents, author, summary, rolled_back_to)
        })
    }

    fn write_version(
        &self,
        database: &Database,
        documents: Vec<serde_json::Value>,
        author: Option<String>,
        summary: String,
        rolled_back_to: Option<u64>,
    ) -> Result<VersionRecord, StoreError> {
        let mut transaction = database
            .begin_write()
            .map_err(|e| self.failed("begin write", e))?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(|e| self.failed("set durability", e))?;
        transaction.set_two_phase_commit(true);
        let record = {
            let mut meta = transaction
                .open_table(META)
                .map_err(|e| self.failed("open meta", e))?;
            let last = meta
                .get(LAST)
                .map_err(|e| self.failed("read meta", e))?
                .map(|v| v.value());
            let version = last.unwrap_or(0) + 1;
            let record = VersionRecord {
                version,
                created_at_ms: now_ms(),
                author,
                summary,
                documents,
                rolled_back_to,
            };
            let entry = HistoryEntry {
                version,
                created_at_ms: record.created_at_ms,
                author: record.author.clone(),
                summary: record.summary.clone(),
                documents: record.documents.len(),
                rolled_back_to,
            };
            let encode = |source| StoreError::Encode { version, source };
            let record_json = serde_json::to_vec(&record).map_err(encode)?;
            let entry_json = serde_json::to_vec(&entry).map_err(encode)?;
            let mut versions = transaction
                .open_table(VERSIONS)
                .map_err(|e| self.failed("open versions", e))?;
            versions
                .insert(version, record_json.as_slice())
                .map_err(|e| self.failed("write version", e))?;
            let mut history = transaction
                .open_table(HISTORY)
                .map_err(|e| self.failed("open history", e))?;
            history
                .insert(version, entry_json.as_slice())
                .map_err(|e| self.failed("write history", e))?;
            // Keep the newest `history_limit` versions, and the one a plain rollback from
            // this version goes to (see `apply::default_rollback_target`): after a rollback to
            // an old version that one may be far older.
            let oldest_kept = version.saturating_sub(self.history_limit) + 1;
            let rollback_target = match rolled_back_to {
                Some(origin) => origin.checked_sub(1),
                None => version.checked_sub(1),
            };
            let keep = |number: u64| Some(number) == rollback_target;
            versions
                .retain_in(..oldest_kept, |number, _| keep(number))
                .map_err(|e| self.failed("drop old versions", e))?;
            history
                .retain_in(..oldest_kept, |number, _| keep(number))
                .map_err(|e| self.failed("drop old versions", e))?;
            meta.insert(LAST, version)
                .map_err(|e| self.failed("write meta", e))?;
            meta.insert(CURRENT, version)
                .map_err(|e| self.failed("write meta", e))?;
            record
        };
        transaction.commit().map_err(|e| self.failed("commit", e))?;
        Ok(record)
    }

    /// The current version ([`VersionRecord::empty`] before the first commit).
    pub fn current(&self) -> Result<VersionRecord, StoreError> {
        self.using(|database| self.read_current(database))
    }

    fn read_current(&self, database: &Database) -> Result<VersionRecord, StoreError> {
        let read = database
            .begin_read()
            .map_err(|e| self.failed("begin read", e))?;
        let meta = read
            .open_table(META)
            .map_err(|e| self.failed("open meta", e))?;
        let current = meta
            .get(CURRENT)
            .map_err(|e| self.failed("read meta", e))?
            .map(|v| v.value());
        let last = meta
            .get(LAST)
            .map_err(|e| self.failed("read meta", e))?
            .map(|v| v.value());
        let Some(current) = current else {
            return Ok(VersionRecord::empty());
        };
        if last.is_none_or(|last| last < current) {
            return Err(self.corrupt(format!("current version {current} is above the last one")));
        }
        self.read_version(database, current)?
            .ok_or_else(|| self.corrupt(format!("current version {current} is missing")))
    }

    /// Version `version`, or `None` when there is no such version.
    pub fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.using(|database| self.read_version(database, version))
    }

    fn read_version(
        &self,
        database: &Database,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let read = database
            .begin_read()
            .map_err(|e| self.failed("begin read", e))?;
        let versions = read
            .open_table(VERSIONS)
            .map_err(|e| self.failed("open versions", e))?;
        let Some(bytes) = versions
            .get(version)
            .map_err(|e| self.failed("read version", e))?
        else {
            return Ok(None);
        };
        let mut record: VersionRecord = serde_json::from_slice(bytes.value())
            .map_err(|e| self.corrupt(format!("version {version} does not decode: {e}")))?;
        record.rolled_back_to = record
            .rolled_back_to
            .or_else(|| rolled_back_to_in(&record.summary));
        if record.version != version {
            return Err(self.corrupt(format!(
                "version {version} holds version {}",
                record.version
            )));
        }
        Ok(Some(record))
    }

    /// At most `limit` (at least one) history entries, newest first: the newest versions, or
    /// with `before` the newest below it. Reads only those entries (and one more, to tell
    /// whether there are older ones), however long the history is.
    pub fn history_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.using(|database| self.read_history(database, before, limit))
    }

    fn read_history(
        &self,
        database: &Database,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let read = database
            .begin_read()
            .map_err(|e| self.failed("begin read", e))?;
        let history = read
            .open_table(HISTORY)
            .map_err(|e| self.failed("open history", e))?;
        let range = match before {
            Some(before) => history.range(..before),
            None => history.range::<u64>(..),
        };
        let limit = limit.max(1);
        let mut versions = Vec::new();
        let mut more = false;
        for item in range.map_err(|e| self.failed("read history", e))?.rev() {
            if versions.len() == limit {
                more = true;
                break;
            }
            let (version, bytes) = item.map_err(|e| self.failed("read history", e))?;
            let version = version.value();
            let mut entry: HistoryEntry = serde_json::from_slice(bytes.value()).map_err(|e| {
                self.corrupt(format!("history of version {version} does not decode: {e}"))
            })?;
            entry.rolled_back_to = entry
                .rolled_back_to
                .or_else(|| rolled_back_to_in(&entry.summary));
            versions.push(entry);
        }
        let next_before = versions
            .last()
            .map(|entry: &HistoryEntry| entry.version)
            .filter(|_| more);
        Ok(HistoryPage {
            versions,
            next_before,
        })
    }

    /// Every version, newest first (tests only: the API pages with
    /// [`Store::history_page`]).
    #[cfg(test)]
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self.history_page(None, usize::MAX)?.versions)
    }

    /// Creates the tables on first open, so that reads never meet a missing table.
    fn create_tables(&self) -> Result<(), StoreError> {
        self.using(|database| self.create_tables_in(database))
    }

    fn create_tables_in(&self, database: &Database) -> Result<(), StoreError> {
        let mut transaction = database
            .begin_write()
            .map_err(|e| self.failed("begin write", e))?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(|e| self.failed("set durability", e))?;
        transaction
            .open_table(VERSIONS)
            .map_err(|e| self.failed("create tables", e))?;
        transaction
            .open_table(HISTORY)
            .map_err(|e| self.failed("create tables", e))?;
        transaction
            .open_table(META)
            .map_err(|e| self.failed("create tables", e))?;
        transaction
            .commit()
            .map_err(|e| self.failed("create tables", e))
    }

    /// `None` while the store works; after an I/O error, why it cannot be used (the reopen
    /// failed). Tries the reopen first, so a disk that was freed since counts as working.
    pub fn unavailable(&self) -> Option<String> {
        let stale = self.read_handle().stale;
        if stale {
            let mut handle = self.write_handle();
            if let Err(error) = self.reopen(&mut handle) {
                return Some(error.to_string());
            }
        }
        None
    }

    /// Runs `operation` on the open database, reopening it first when an earlier operation
    /// left it stale; marks it stale when `operation` fails with an I/O error.
    fn using<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.read_handle().stale {
            let mut handle = self.write_handle();
            self.reopen(&mut handle)?;
        }
        let handle = self.read_handle();
        let Some(database) = handle.database.as_ref() else {
            // Another operation failed in between and its reopen did too.
            return Err(self.unavailable_error());
        };
        let result = operation(database);
        drop(handle);
        if result.as_ref().is_err_and(StoreError::is_io) {
            self.write_handle().stale = true;
            tracing::warn!(path = %self.path.display(), "store I/O failed; reopening it before the next operation");
        }
        result
    }

    /// Closes and reopens a stale database (a fresh one is left alone).
    fn reopen(&self, handle: &mut Handle) -> Result<(), StoreError> {
        if !handle.stale {
            return Ok(());
        }
        // Close first: the file stays locked while the old database is open.
        handle.database = None;
        match open_database(&self.path) {
            Ok(database) => {
                tracing::info!(path = %self.path.display(), "store reopened after an I/O error");
                handle.database = Some(database);
                handle.stale = false;
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn unavailable_error(&self) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            operation: "reopen",
            source: Box::new(redb::Error::DatabaseClosed),
        }
    }

    fn read_handle(&self) -> std::sync::RwLockReadGuard<'_, Handle> {
        // A panic under the lock leaves the handle as consistent as any failure does.
        self.database.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_handle(&self) -> std::sync::RwLockWriteGuard<'_, Handle> {
        self.database
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self, operation: &'static str, error: impl Into<redb::Error>) -> StoreError {
        match error.into() {
            redb::Error::Corrupted(reason) => self.corrupt(reason),
            source => StoreError::Database {
                path: self.path.clone(),
                operation,
                source: Box::new(source),
            },
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

// === impl StoreError ===

impl StoreError {
    /// Whether this is an I/O failure (a full disk, a failing device, or the latched result of
    /// an earlier one) after which the database must be reopened.
    pub fn is_io(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => {
                matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            StoreError::Open { source, .. } => {
                matches!(**source, DatabaseError::Storage(redb::StorageError::Io(_)))
            }
            _ => false,
        }
    }
}

// === impl Store ===

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opens the file with an integrity check. redb may panic on a file altered outside it (its
/// debug builds assert on impossible pages); that, too, is reported as corruption.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let opened = std::panic::catch_unwind(|| {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
    });
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    match opened {
        Ok(Ok(database)) => Ok(database),
        Err(_) => Err(corrupt("the database failed to load".to_owned())),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Locked {
            path: path.to_owned(),
        }),
        Ok(Err(DatabaseError::Storage(redb::StorageError::Corrupted(reason)))) => {
            Err(corrupt(reason))
        }
        Ok(Err(DatabaseError::Storage(redb::StorageError::Io(error))))
            if error.kind() == io::ErrorKind::InvalidData =>
        {
            Err(corrupt(format!("not a ficus store ({error})")))
        }
        Ok(Err(source)) => Err(StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// The target of a rollback stored before records said so, from its summary (`rollback to
/// version 3: 1 changed: …`, the only summary that starts so): without it a plain rollback from
/// such a version, right after an upgrade, would go forward again.
fn rolled_back_to_in(summary: &str) -> Option<u64> {
    let rest = summary.strip_prefix("rollback to version ")?;
    let (number, _) = rest.split_once(':')?;
    number.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
