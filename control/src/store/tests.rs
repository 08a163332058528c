//! The store over real files in temp dirs: durability across reopen, numbering, locking, and
//! every way the data dir can be unusable.

use super::*;
use serde_json::json;

fn backend(name: &str) -> serde_json::Value {
    json!({"apiVersion": "ficus.dev/v1alpha1", "kind": "Backend",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"endpoints": [{"address": "127.0.0.1:9001"}]}})
}

#[test]
fn empty_store_has_version_0() {
    let dir = tempfile::tempdir().unwrap();
    let (store, current) = Store::open(&dir.path().join("data")).unwrap();
    assert_eq!(current, VersionRecord::empty());
    assert!(store.history().unwrap().is_empty());
    assert_eq!(store.get(1).unwrap(), None);
}

#[test]
fn versions_increase_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let one = store
        .commit(vec![backend("a")], Some("ana".into()), "first".into())
        .unwrap();
    let two = store
        .commit(vec![backend("a"), backend("b")], None, "second".into())
        .unwrap();
    assert_eq!((one.version, two.version), (1, 2));
    drop(store);

    let (store, current) = Store::open(dir.path()).unwrap();
    assert_eq!(current, two);
    assert_eq!(store.get(1).unwrap(), Some(one.clone()));
    let history = store.history().unwrap();
    let versions: Vec<(u64, usize)> = history.iter().map(|h| (h.version, h.documents)).collect();
    assert_eq!(versions, vec![(2, 2), (1, 1)]);
    assert_eq!(history[1].author.as_deref(), Some("ana"));
    let three = store
        .commit(one.documents, None, "rollback".into())
        .unwrap();
    assert_eq!(
        three.version, 3,
        "a rollback is a new number, never a reused one"
    );
}

/// History is read a page at a time, newest first, each page naming where the next starts.
#[test]
fn history_pages_go_back_from_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.history_page(None, 2).unwrap(),
        HistoryPage {
            versions: Vec::new(),
            next_before: None
        }
    );
    for n in 1..=5 {
        store.commit(Vec::new(), None, format!("v{n}")).unwrap();
    }
    let page = |before, limit| {
        let page = store.history_page(before, limit).unwrap();
        let versions: Vec<u64> = page.versions.iter().map(|h| h.version).collect();
        (versions, page.next_before)
    };
    assert_eq!(page(None, 2), (vec![5, 4], Some(4)));
    assert_eq!(page(Some(4), 2), (vec![3, 2], Some(2)));
    assert_eq!(page(Some(2), 2), (vec![1], None));
    assert_eq!(page(Some(3), 2), (vec![2, 1], None), "exactly the rest");
    assert_eq!(page(Some(1), 2), (vec![], None));
    assert_eq!(page(Some(99), 10), (vec![5, 4, 3, 2, 1], None));
}

/// A rollback records its target, durably, in the version and in its history entry.
#[test]
fn a_rollback_records_its_target_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let one = store
        .commit(vec![backend("a")], None, "first".into())
        .unwrap();
    store.commit(Vec::new(), None, "second".into()).unwrap();
    let three = store
        .commit_rollback(one.documents, None, "rollback to version 1: …".into(), 1)
        .unwrap();
    assert_eq!((three.version, three.rolled_back_to), (3, Some(1)));
    drop(store);
    let (store, current) = Store::open(dir.path()).unwrap();
    assert_eq!(current, three);
    assert_eq!(rollback_origins(&store), [Some(1), None, None]);
}

/// Records written before versions recorded a rollback's target still decode; a rollback
/// among them is recognised by its summary, so that the first plain rollback after an upgrade
/// does not go forward again.
#[test]
fn records_from_before_rollback_targets_were_stored_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let old_record = |version: u64, summary: &str| {
        json!({"version": version, "created_at_ms": 1, "author": null, "summary": summary,
               "documents": [backend("a")]})
    };
    let old_entry = |version: u64, summary: &str| {
        json!({"version": version, "created_at_ms": 1, "author": null, "summary": summary,
               "documents": 1})
    };
    let rows = [
        (1, "apply: 1 created: Backend shop/a"),
        (2, "rollback to version 1: 1 changed: Backend shop/a"),
        (
            3,
            "kubernetes: 1 documents from the cluster (0 Services skipped, 0 objects left out)",
        ),
    ];
    {
        let handle = store.read_handle();
        let transaction = handle.database.as_ref().unwrap().begin_write().unwrap();
        {
            let mut versions = transaction.open_table(VERSIONS).unwrap();
            let mut history = transaction.open_table(HISTORY).unwrap();
            for (version, summary) in rows {
                let record = serde_json::to_vec(&old_record(version, summary)).unwrap();
                let entry = serde_json::to_vec(&old_entry(version, summary)).unwrap();
                versions.insert(version, record.as_slice()).unwrap();
                history.insert(version, entry.as_slice()).unwrap();
            }
            let mut meta = transaction.open_table(META).unwrap();
            meta.insert(LAST, 3).unwrap();
            meta.insert(CURRENT, 2).unwrap();
        }
        transaction.commit().unwrap();
    }
    drop(store);
    let (store, current) = Store::open(dir.path()).unwrap();
    assert_eq!((current.version, current.rolled_back_to), (2, Some(1)));
    assert_eq!(store.get(3).unwrap().unwrap().rolled_back_to, None);
    assert_eq!(rollback_origins(&store), [None, Some(1), None]);
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let error = Store::open(dir.path()).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
}

#[test]
fn garbage_file_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
    let error = Store::open(dir.path()).unwrap_err();
    assert!(error.to_string().contains("corrupt"), "{error}");
    // The file is left as it was, for a human to look at.
    assert_eq!(
        std::fs::read(dir.path().join(FILE_NAME)).unwrap(),
        vec![0x5a; 64 * 1024]
    );
}

#[test]
fn damaged_pages_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    for n in 0..20 {
        store
            .commit(vec![backend(&format!("b{n}"))], None, format!("v{n}"))
            .unwrap();
    }
    drop(store);
    let path = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    // Keep the header (the first page), scribble over everything after it.
    for byte in bytes.iter_mut().skip(4096) {
        *byte ^= 0xa5;
    }
    std::fs::write(&path, bytes).unwrap();
    let error = Store::open(dir.path()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

#[test]
fn a_file_where_the_dir_should_be_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "not a directory").unwrap();
    let error = Store::open(&file).unwrap_err();
    assert!(matches!(error, StoreError::Directory { .. }), "{error}");
    let error = Store::open(&file.join("below")).unwrap_err();
    assert!(
        error.to_string().contains("cannot use data directory"),
        "{error}"
    );
}

#[test]
fn an_unreadable_dir_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Store::open(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&data).is_ok() {
        // Root ignores permissions; the file-in-the-way test covers the error path.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    let error = Store::open(&data).unwrap_err();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(error, StoreError::Directory { .. }), "{error}");
}

/// `rolled_back_to` of each version in `store`'s history, newest first.
fn rollback_origins(store: &Store) -> Vec<Option<u64>> {
    store
        .history()
        .unwrap()
        .iter()
        .map(|h| h.rolled_back_to)
        .collect()
}

/// After an I/O error the database is reopened before the next operation; while reopening
/// fails, operations fail and [`Store::unavailable`] says why (what `/ready` reports), and once
/// the file is usable again the store works without a restart.
#[test]
fn a_stale_database_is_reopened_and_unavailable_while_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store
        .commit(vec![backend("a")], None, "first".into())
        .unwrap();
    assert_eq!(store.unavailable(), None);
    let good = std::fs::read(store.path()).unwrap();
    // What an I/O error leaves behind (redb then answers `PreviousIo` until reopened).
    store.write_handle().stale = true;
    std::fs::write(store.path(), b"not a database").unwrap();
    let reason = store.unavailable().expect("the reopen fails");
    assert!(reason.contains("corrupt"), "{reason}");
    assert!(store.commit(vec![], None, "refused".into()).is_err());

    std::fs::write(store.path(), &good).unwrap();
    assert_eq!(store.unavailable(), None);
    let two = store.commit(vec![], None, "second".into()).unwrap();
    assert_eq!(two.version, 2);
    assert_eq!(store.current().unwrap(), two);
}

/// Only the newest `--history-limit` versions are kept, plus the one a plain rollback from the
/// current version goes to; numbers still never go back.
#[test]
fn history_keeps_the_newest_versions_and_the_rollback_target() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = store.with_history_limit(3);
    for n in 1..=10 {
        store
            .commit(vec![backend(&format!("b{n}"))], None, format!("v{n}"))
            .unwrap();
    }
    let kept: Vec<u64> = store.history().unwrap().iter().map(|h| h.version).collect();
    assert_eq!(kept, [10, 9, 8]);
    assert_eq!(store.get(7).unwrap(), None);
    assert_eq!(store.get(1).unwrap(), None);
    let kept = |store: &Store| -> Vec<u64> {
        store.history().unwrap().iter().map(|h| h.version).collect()
    };
    // A plain rollback from a rollback to 9 goes to 8: kept beyond the limit.
    let nine = store.get(9).unwrap().unwrap();
    store
        .commit_rollback(nine.documents, None, "rollback to version 9".into(), 9)
        .unwrap();
    assert_eq!(kept(&store), [11, 10, 9, 8]);
    assert_eq!(
        store.get(8).unwrap().map(|r| r.summary),
        Some("v8".to_owned())
    );
    // Not needed any more after the next apply.
    store
        .commit(vec![backend("x")], None, "v12".into())
        .unwrap();
    assert_eq!(kept(&store), [12, 11, 10]);
    store
        .commit_rollback(vec![], None, "rollback to version 11".into(), 11)
        .unwrap();
    assert_eq!(kept(&store), [13, 12, 11, 10]);
    drop(store);
    let (store, current) = Store::open(dir.path()).unwrap();
    assert_eq!(current.version, 13);
    assert_eq!(
        store.get(10).unwrap().map(|r| r.summary),
        Some("v10".to_owned())
    );
}
