//! Backups and restores of the store.
//!
//! **Snapshot (online).** The running service holds redb's exclusive file lock, so nothing
//! else can read the file, and a raw copy of a file that is being committed to could tear. A
//! snapshot is therefore taken *inside* the service: [`snapshot`] opens one read transaction
//! (an MVCC view of the last commit; writers carry on undisturbed) and copies every table,
//! byte for byte without decoding, into a fresh redb file committed once. The result is a
//! normal store file, consistent as of one commit: every write acknowledged before the
//! snapshot began is in it.
//!
//! **Restore (offline).** [`restore`] works on a stopped service's data directory: it refuses
//! when the store is locked, copies the snapshot next to the store, [`validate`]s the copy
//! (opens it, checks the schema version, decodes every record of every table), keeps the
//! current store as `mozpool.redb.bak-<time>` (a hard link) and renames the copy over
//! `mozpool.redb`. At every instant `mozpool.redb` is either the old or the new file.
//!
//! **Coverage.** `TABLES` lists every table with how to copy and check it. A table present
//! in the store but missing from the list makes every snapshot fail loudly, so a new table
//! cannot be left out of backups silently.

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{
    Database, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError, Value, WriteTransaction,
};

use super::codec::{Encoded, Record};
use super::{SCHEMA_VERSION, Store, StoreError, tables};

/// The store's file name inside the data directory.
pub const DB_FILE: &str = "mozpool.redb";

/// The file name a downloaded backup is offered under (`GET /api/backup/`).
pub const DOWNLOAD_NAME: &str = "mozpool-backup.redb";

/// The ending of a store file, for scratch copies.
pub const FILE_SUFFIX: &str = ".redb";

/// How to copy and check one table.
struct TableOps {
    name: &'static str,
    copy: fn(&ReadTransaction, &WriteTransaction) -> Result<u64, StoreError>,
    check: fn(&ReadTransaction) -> Result<u64, StoreError>,
}

/// A table copied as it is and checked by reading every row.
macro_rules! walked {
    ($name:literal, $def:expr) => {
        TableOps {
            name: $name,
            copy: |s, d| copy(s, d, $def),
            check: |s| walk(s, $def),
        }
    };
}

/// A table of versioned records, checked by decoding every one.
macro_rules! decoded {
    ($name:literal, $def:expr) => {
        TableOps {
            name: $name,
            copy: |s, d| copy(s, d, $def),
            check: |s| check_records(s, $name, $def),
        }
    };
}

/// Every table of the store. **Add new tables here** (the snapshot refuses otherwise).
const TABLES: &[TableOps] = &[
    walked!("meta", tables::META),
    decoded!("devices", tables::DEVICES),
    decoded!("images", tables::IMAGES),
    decoded!("environments", tables::ENVIRONMENTS),
    decoded!("hardware_types", tables::HARDWARE_TYPES),
    decoded!("logs", tables::LOGS),
    walked!("log_index", tables::LOG_INDEX),
    walked!("log_heads", tables::LOG_HEADS),
    walked!("device_deadlines", tables::DEVICE_DEADLINES),
    TableOps {
        name: "requests",
        copy: |s, d| copy(s, d, tables::REQUESTS),
        // Decoded and converted, as the request driver will read them.
        check: |s| super::requests::list(s, false).map(|v| v.len() as u64),
    },
    walked!("open_requests", tables::OPEN_REQUESTS),
    walked!("request_deadlines", tables::REQUEST_DEADLINES),
    walked!("free_devices", tables::FREE_DEVICES),
    walked!("waiting_requests", tables::WAITING_REQUESTS),
    decoded!("device_usage", tables::DEVICE_USAGE),
    decoded!("usage_hours", tables::USAGE_HOURS),
    decoded!("failure_hours", tables::FAILURE_HOURS),
    decoded!("wait_hours", tables::WAIT_HOURS),
    walked!("request_waits", tables::REQUEST_WAITS),
];

/// What a snapshot or a validation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Schema version recorded in the file.
    pub schema_version: u64,
    /// Rows per table, in the order of the backup's table list.
    pub tables: Vec<(&'static str, u64)>,
    /// File size in bytes.
    pub bytes: u64,
}

impl SnapshotInfo {
    /// Rows in one table (0 when absent).
    #[must_use]
    pub fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|(n, _)| *n == table)
            .map_or(0, |(_, r)| *r)
    }
}

fn backup_error(msg: impl Into<String>) -> StoreError {
    StoreError::Backup(msg.into())
}

fn copy<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for item in from.iter()? {
        let (k, v) = item?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

fn walk<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0;
    for item in table.iter()? {
        let (k, v) = item?;
        // Materialize both, so a damaged page is noticed.
        let _ = (k.value(), v.value());
        n += 1;
    }
    if n != table.len()? {
        return Err(backup_error(format!(
            "table {} has {} entries but iterates {n}",
            redb::TableHandle::name(&def),
            table.len()?
        )));
    }
    Ok(n)
}

fn check_records<K: Key + 'static, T: Record>(
    src: &ReadTransaction,
    name: &'static str,
    def: TableDefinition<K, Encoded<T>>,
) -> Result<u64, StoreError> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0u64;
    for item in table.iter()? {
        let (_, v) = item?;
        v.value().decode().map_err(|source| StoreError::Corrupt {
            table: name,
            key: format!("entry #{n}"),
            source,
        })?;
        n += 1;
    }
    Ok(n)
}

/// Tables in `tx` that [`TABLES`] does not know.
fn uncovered(tx: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    let mut out: Vec<String> = tx
        .list_tables()
        .map_err(|e| StoreError::Db(e.into()))?
        .map(|h| redb::TableHandle::name(&h).to_owned())
        .filter(|n| !TABLES.iter().any(|t| t.name == n))
        .collect();
    out.extend(
        tx.list_multimap_tables()
            .map_err(|e| StoreError::Db(e.into()))?
            .map(|h| redb::MultimapTableHandle::name(&h).to_owned()),
    );
    Ok(out)
}

/// Write a consistent snapshot of `store` to `dest` (a new or empty file). Blocking: run it
/// on the blocking pool. The source is read in one read transaction, so concurrent writes
/// are neither blocked nor partly included.
///
/// # Errors
/// Storage failure, or a table this code does not know how to copy.
pub fn snapshot(store: &Store, dest: &Path) -> Result<SnapshotInfo, StoreError> {
    let src = store.db()?.begin_read()?;
    let missing = uncovered(&src)?;
    if !missing.is_empty() {
        return Err(backup_error(format!(
            "tables not covered by storage::backup::TABLES: {}; refusing an incomplete backup",
            missing.join(", ")
        )));
    }
    let out = Database::create(dest)?;
    let tx = out.begin_write()?;
    let mut rows = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        rows.push((t.name, (t.copy)(&src, &tx)?));
    }
    tx.commit()?;
    drop(src);
    let schema_version = schema_version(&out.begin_read()?)?;
    drop(out);
    let bytes = std::fs::metadata(dest)
        .map_err(|e| backup_error(format!("cannot stat {}: {e}", dest.display())))?
        .len();
    Ok(SnapshotInfo {
        schema_version,
        tables: rows,
        bytes,
    })
}

fn schema_version(tx: &ReadTransaction) -> Result<u64, StoreError> {
    let meta = match tx.open_table(tables::META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(backup_error("not a mozpool store: no meta table"));
        }
        Err(e) => return Err(e.into()),
    };
    meta.get("schema_version")?
        .map(|v| v.value())
        .ok_or_else(|| backup_error("not a mozpool store: no schema version"))
}

/// Open the store file at `path` read-only and check it completely: a redb file, a schema
/// version this release supports, every record of every table decodable, no unknown table.
///
/// # Errors
/// Why the file is not a usable store.
pub fn validate(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let db = ReadOnlyDatabase::open(path).map_err(|e| {
        backup_error(format!(
            "{} is not a readable mozpool store: {e}",
            path.display()
        ))
    })?;
    let tx = db.begin_read()?;
    let schema_version = schema_version(&tx)?;
    if schema_version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let missing = uncovered(&tx)?;
    if !missing.is_empty() {
        return Err(backup_error(format!(
            "{} has tables this release does not know: {}",
            path.display(),
            missing.join(", ")
        )));
    }
    let mut rows = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        rows.push((t.name, (t.check)(&tx)?));
    }
    drop(tx);
    drop(db);
    let bytes = std::fs::metadata(path)
        .map_err(|e| backup_error(format!("cannot stat {}: {e}", path.display())))?
        .len();
    Ok(SnapshotInfo {
        schema_version,
        tables: rows,
        bytes,
    })
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored snapshot's contents.
    pub info: SnapshotInfo,
    /// Where the previous store was kept, if there was one.
    pub previous: Option<PathBuf>,
    /// The store path now holding the snapshot.
    pub store: PathBuf,
}

/// Replace the store in `data_dir` with the snapshot at `snapshot`. The service must be
/// stopped. `label` names the kept previous store (`mozpool.redb.bak-<label>`).
///
/// # Errors
/// The store is in use, the snapshot is invalid, or a file operation failed (the current
/// store is then untouched).
pub fn restore(snapshot: &Path, data_dir: &Path, label: &str) -> Result<RestoreReport, StoreError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        backup_error(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(data_dir).map_err(|e| io("create", data_dir, e))?;
    let store = data_dir.join(DB_FILE);
    // Hold a (shared, read-only) lock on the current store through the swap: a running
    // service holds the exclusive lock, so this refuses while it runs, and a service started
    // meanwhile cannot lock the old file mid-swap. Read-only, so the current file is not
    // modified by the check.
    let current = if store.exists() {
        match ReadOnlyDatabase::open(&store) {
            Ok(db) => Some(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(backup_error(format!(
                    "{} is in use: stop the service first (systemctl stop mozpool)",
                    store.display()
                )));
            }
            // A damaged current store must not prevent restoring over it.
            Err(e) => {
                tracing::warn!(error = %e, "the current store does not open; replacing it anyway");
                None
            }
        }
    } else {
        None
    };
    let staging = data_dir.join(format!(".{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(snapshot, &staging).map_err(|e| io("copy the snapshot to", &staging, e))?;
    let result = (|| {
        File::open(&staging)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("sync", &staging, e))?;
        let info = validate(&staging)?;
        match_owner(&staging, data_dir);
        let previous = if store.exists() {
            let mut bak = data_dir.join(format!("{DB_FILE}.bak-{label}"));
            let mut i = 1;
            while bak.exists() {
                bak = data_dir.join(format!("{DB_FILE}.bak-{label}-{i}"));
                i += 1;
            }
            std::fs::hard_link(&store, &bak)
                .map_err(|e| io("keep the previous store as", &bak, e))?;
            Some(bak)
        } else {
            None
        };
        std::fs::rename(&staging, &store).map_err(|e| io("replace", &store, e))?;
        File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", data_dir, e))?;
        Ok(RestoreReport {
            info,
            previous,
            store: store.clone(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    drop(current);
    result
}

/// Give `file` the data directory's owner, so a restore run as root leaves a store the
/// service user can open. Best effort: without the privilege it only warns.
fn match_owner(file: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(f), Ok(d)) = (std::fs::metadata(file), std::fs::metadata(dir)) else {
        return;
    };
    if (f.uid(), f.gid()) != (d.uid(), d.gid())
        && let Err(e) = std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid()))
    {
        tracing::warn!(error = %e, file = %file.display(), "cannot give the restored store the data directory's owner");
    }
}

/// `20261125T084331` from a time, for file names.
#[must_use]
pub fn file_label(now: crate::domain::clock::Millis) -> String {
    now.iso()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::Millis;

    #[test]
    fn label() {
        assert_eq!(file_label(Millis(1_764_059_011_123)), "20251125T082331");
    }

    #[test]
    fn every_table_is_covered() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(
            &dir.path().join(DB_FILE),
            std::sync::Arc::new(crate::domain::clock::SystemClock),
        )
        .expect("open");
        let tx = store.db().expect("db").begin_read().expect("read");
        assert_eq!(uncovered(&tx).expect("list"), Vec::<String>::new());
    }
}
