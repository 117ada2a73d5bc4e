//! Where the store's bytes live, and what the store does when they stop taking writes.
//!
//! redb latches the first I/O error of a database: every later transaction fails with
//! "Previous I/O error occurred. Please close and re-open the database". A full disk would
//! therefore wedge the store until the process restarts, even after space was freed. The
//! writer thread (see [`super::writer_loop`]) instead records an [`Outage`], refuses writes
//! with it (the API answers 503 with `Retry-After`), and every probe interval asks the
//! [`Disk`] whether writes fit again ([`Disk::probe`]); when they do, it closes the database,
//! opens it again through [`Disk::backend`] (redb repairs it from its last durable commit)
//! and commits a probe write before it takes callers' writes again.
//!
//! This module owns the classification of redb's errors into [`Fault`]s; nothing above
//! storage looks inside a redb error.

use std::io::{ErrorKind, Write as _};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rand::RngCore as _;
use redb::{BackendError, StorageBackend};

use crate::domain::clock::Millis;

/// Bytes the file probe writes (and syncs) beside the store: about what a small batch plus
/// redb's reopen bookkeeping needs, so a passing probe means a reopen is likely to succeed.
const PROBE_BYTES: usize = 64 * 1024;

/// The first probe comes this long after the failure; each failed probe doubles the wait.
pub(super) const FIRST_PROBE: Duration = Duration::from_millis(500);

/// The longest wait between two probes: how long writes may stay refused after the disk has
/// room again.
pub(super) const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Where the store's bytes live: the file in the data directory (the service), or a backend a
/// test controls. The writer asks it for a fresh backend at every (re)open.
pub trait Disk: Send + Sync + 'static {
    /// redb's handle on the bytes.
    type Backend: StorageBackend;

    /// Open the store's bytes afresh (at start, and to reopen after an I/O failure).
    ///
    /// # Errors
    /// The file cannot be opened.
    fn backend(&self) -> std::io::Result<Self::Backend>;

    /// Write and sync a little data *beside* the store (never into it) and remove it, to learn
    /// whether the disk takes writes again before the store is closed for a reopen: while the
    /// database stays open, readers keep its cached pages.
    ///
    /// # Errors
    /// The write or the sync failed (for a full disk: `ErrorKind::StorageFull`).
    fn probe(&self) -> std::io::Result<()>;
}

/// The store's file in a directory of the local filesystem.
#[derive(Debug, Clone)]
pub struct FileDisk {
    /// The store file.
    path: PathBuf,
}

impl FileDisk {
    /// The store file at `path` (created at the first open when missing).
    #[must_use]
    pub fn new(path: &Path) -> FileDisk {
        FileDisk {
            path: path.to_owned(),
        }
    }
}

impl Disk for FileDisk {
    type Backend = redb::backends::FileBackend;

    fn backend(&self) -> std::io::Result<Self::Backend> {
        // As redb's own `Builder::create`: read-write, created when missing, never truncated.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        redb::backends::FileBackend::new(file).map_err(std::io::Error::other)
    }

    fn probe(&self) -> std::io::Result<()> {
        let mut name = self.path.clone().into_os_string();
        name.push(".probe");
        probe_file(Path::new(&name))
    }
}

/// The store's file on a simulated filesystem that can be made full (or broken): while it is,
/// every write, every sync and every growth of the file fails with `ENOSPC` (or `EIO`), as on
/// a real full filesystem (reads and the file lock keep working). For tests of the disk-full
/// behaviour without a small filesystem. Clones share the switch: keep one, hand one to the
/// store.
#[derive(Debug, Clone)]
pub struct SimDisk {
    file: FileDisk,
    /// The errno every write fails with, 0 while writes work.
    failing: Arc<AtomicI32>,
}

/// `ENOSPC` on Linux (and every other Unix): what `write(2)` says on a full filesystem.
const ENOSPC: i32 = 28;
/// `EIO`: what a dying disk says.
const EIO: i32 = 5;

impl SimDisk {
    /// The store file at `path`, on a filesystem with room.
    #[must_use]
    pub fn new(path: &Path) -> SimDisk {
        SimDisk {
            file: FileDisk::new(path),
            failing: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Make the filesystem full (`true`) or give it room again (`false`).
    pub fn set_full(&self, full: bool) {
        self.failing
            .store(if full { ENOSPC } else { 0 }, Ordering::SeqCst);
    }

    /// Make every write fail with an I/O error (`true`), or work again (`false`).
    pub fn set_broken(&self, broken: bool) {
        self.failing
            .store(if broken { EIO } else { 0 }, Ordering::SeqCst);
    }

    fn check(failing: &AtomicI32) -> std::io::Result<()> {
        match failing.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

impl Disk for SimDisk {
    type Backend = SimBackend;

    fn backend(&self) -> std::io::Result<SimBackend> {
        Ok(SimBackend {
            file: self.file.backend()?,
            failing: self.failing.clone(),
        })
    }

    fn probe(&self) -> std::io::Result<()> {
        SimDisk::check(&self.failing)?;
        self.file.probe()
    }
}

/// redb's file backend with [`SimDisk`]'s switch in front of every write.
#[derive(Debug)]
pub struct SimBackend {
    file: redb::backends::FileBackend,
    failing: Arc<AtomicI32>,
}

impl StorageBackend for SimBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len > self.file.len()? {
            SimDisk::check(&self.failing)?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        SimDisk::check(&self.failing)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        SimDisk::check(&self.failing)?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    // The file's locks, so that a second open of the file is refused as on the real one.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Write [`PROBE_BYTES`] of random data to `path`, sync it and remove it. Random, so a
/// compressing filesystem cannot store it in less space than it takes.
///
/// # Errors
/// Creating, writing or syncing the file failed.
pub fn probe_file(path: &Path) -> std::io::Result<()> {
    let mut data = vec![0u8; PROBE_BYTES];
    rand::rng().fill_bytes(&mut data);
    let written = std::fs::File::create(path).and_then(|mut f| {
        f.write_all(&data)?;
        f.sync_all()
    });
    // Removed whatever happened: a half-written probe must not keep the space it took.
    let _ = std::fs::remove_file(path);
    written
}

/// What kind of failure stopped the store's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The filesystem holding the store has no space left (`ENOSPC`, or a quota: `EDQUOT`).
    DiskFull,
    /// Another I/O error of the store file.
    Io,
}

impl Fault {
    /// Stable name for `/api/health/` and logs (`disk_full`, `io_error`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::DiskFull => "disk_full",
            Fault::Io => "io_error",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::DiskFull => "the disk holding the store is full",
            Fault::Io => "the store file had an I/O error",
        })
    }
}

/// Why the store takes no writes right now, and when it tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// The kind of failure (decides the API's error code).
    pub fault: Fault,
    /// The error that started the outage, as text (for the operator).
    pub cause: String,
    /// When the outage began (the store's clock).
    pub since: Millis,
    /// How long until the writer next probes the disk (the API's `Retry-After`).
    pub retry_in: Duration,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; writes resume by themselves once it takes writes again ({})",
            self.fault, self.cause
        )
    }
}

/// The fault an I/O-level redb storage error stands for, if it is one.
fn of_storage(e: &redb::StorageError) -> Option<Fault> {
    match e {
        redb::StorageError::Io(io) => Some(of_io(io)),
        // The database latched an earlier I/O error, or was closed under the caller (a
        // reopen in progress): either way the store is not usable until it is reopened.
        redb::StorageError::PreviousIo | redb::StorageError::DatabaseClosed => Some(Fault::Io),
        _ => None,
    }
}

/// [`Fault::DiskFull`] for "no space" and quota errors, else [`Fault::Io`].
pub(super) fn of_io(e: &std::io::Error) -> Fault {
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Fault::DiskFull,
        _ => Fault::Io,
    }
}

/// The fault behind a redb error, if it is an I/O failure of the store.
pub(super) fn of_error(e: &redb::Error) -> Option<Fault> {
    match e {
        redb::Error::Io(io) => Some(of_io(io)),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => Some(Fault::Io),
        _ => None,
    }
}

/// The fault behind a failed `begin_write`, if any.
pub(super) fn of_transaction(e: &redb::TransactionError) -> Option<Fault> {
    match e {
        redb::TransactionError::Storage(s) => of_storage(s),
        _ => None,
    }
}

/// The fault behind a failed commit, if any.
pub(super) fn of_commit(e: &redb::CommitError) -> Option<Fault> {
    match e {
        redb::CommitError::Storage(s) => of_storage(s),
        _ => None,
    }
}

/// The fault behind a failed open, if any.
pub(super) fn of_open(e: &redb::DatabaseError) -> Option<Fault> {
    match e {
        redb::DatabaseError::Storage(s) => of_storage(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_and_quota_are_a_full_disk() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        assert_eq!(of_io(&full), Fault::DiskFull);
        let quota = std::io::Error::from_raw_os_error(122); // EDQUOT
        assert_eq!(of_io(&quota), Fault::DiskFull);
        let eio = std::io::Error::from_raw_os_error(5);
        assert_eq!(of_io(&eio), Fault::Io);
        let commit = redb::CommitError::Storage(redb::StorageError::Io(full));
        assert_eq!(of_commit(&commit), Some(Fault::DiskFull));
        assert_eq!(
            of_commit(&redb::CommitError::TransactionPoisoned),
            None,
            "not an I/O failure"
        );
        assert_eq!(of_error(&redb::Error::PreviousIo), Some(Fault::Io));
    }

    #[test]
    fn probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("dir");
        let disk = FileDisk::new(&dir.path().join("s.redb"));
        disk.probe().expect("probe");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
