//! The embedded store: one redb file, one writer thread, many readers.
//!
//! All writes go through [`Store::write`], which hands a closure to the `redb-writer` thread.
//! The thread takes every closure waiting in its queue, runs them one after another inside
//! **one** write transaction and commits it once with `Durability::Immediate` (a group
//! commit): one fsync for the whole batch, a total order of writes, and decisions that must
//! not race (assigning a device) serialized by design. A caller's future resolves only after
//! the commit that contains its write is durable.
//!
//! Contract for write closures: decide, then write. A closure that refuses (a domain error in
//! its `Ok` value) must not have written anything. A closure that returns `Err(StoreError)`
//! aborts the whole batch: every caller in it gets an error and nothing is committed.
//!
//! When the file stops taking writes (a full disk, an I/O error), redb refuses the database
//! until it is closed and opened again. The writer then stops taking writes itself: callers
//! get [`StoreError::fault`] with an [`Outage`] saying why and when it tries again, and the
//! writer probes the disk (see [`disk`]) until a reopen and a probe commit succeed; writes then
//! resume without a restart. Only committed writes were ever acknowledged, and redb reopens
//! at its last durable commit, so nothing acknowledged is lost.
//!
//! Reads run on tokio's blocking pool in their own MVCC snapshot and never wait for writes.
//! Read closures get a [`Snapshot`], whose typed queries are the only way callers outside
//! this module read the store: they never see redb, its tables or the on-disk records.

pub mod backup;
mod codec;
pub mod disk;
pub mod history;
pub mod inventory;
pub mod logs;
pub mod records;
pub mod requests;
mod snapshot;
pub mod tables;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

pub use codec::{CodecError, Encoded, Record, decode_bytes};
pub use disk::{Disk, Fault, FileDisk, Outage, SimDisk};
pub use snapshot::Snapshot;
pub use tx::Tx;

use crate::domain::clock::{Clock, Millis};
use crate::domain::histogram::{FAST_BUCKETS, Histogram};

/// The schema version this binary writes. A store with a newer version is refused.
///
/// 2: the `free_devices` and `waiting_requests` indexes (built from the records when a
/// version-1 store is opened).
/// 3: log layout 2: per-subject chains (`log_heads`, `LogV2::prev`) with sparse
/// `log_index` checkpoints instead of an index row per entry and subject. Older entries
/// keep their rows and are read as before; nothing is rewritten on upgrade.
/// 4: the history roll-ups (`device_usage`, `usage_hours`, `failure_hours`, `wait_hours`,
/// `request_waits`). On upgrade each device gets an open interval (its band since its record
/// last changed); the hourly rows begin with the upgrade. An older release must not run on
/// them (it would not keep them in step).
pub const SCHEMA_VERSION: u64 = 4;

/// Largest number of write closures committed together.
const MAX_BATCH: usize = 512;

/// How long a batch holding only writes that may wait for company (detached log lines
/// nobody waits for, and [`Store::write_background`]'s hardware steps) waits for a write
/// somebody is waiting on before it commits alone: a cluster controller's API calls come
/// milliseconds apart, and each write committed on its own costs an `fdatasync`. This is
/// also the most a crash can lose of log lines whose calls were already answered.
const DETACHED_LINGER: Duration = Duration::from_millis(10);

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, lock).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in {table} at {key}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Corrupt {
        table: &'static str,
        /// Key, as text.
        key: String,
        source: CodecError,
    },
    /// A record decoded but holds a value this release refuses (e.g. an invalid name).
    #[error("bad record in {table} at {key}: {message}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    BadRecord {
        table: &'static str,
        /// Key, as text.
        key: String,
        message: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(CodecError),
    /// The store file was written by a newer release.
    #[error(
        "the database at {path} has schema version {found}, newer than this release supports ({supported}); refusing to run an older mozpool on it"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    TooNew {
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Version of this binary.
        supported: u64,
    },
    /// The writer ran the write but its batch did not commit; the cause says at which step.
    #[error("the write was not committed: {0}")]
    NotCommitted(#[from] WriteError),
    /// The writer thread is gone (shutting down).
    #[error("the store is shut down")]
    Closed,
    /// A backup or restore could not be done (the message says why).
    #[error("{0}")]
    Backup(String),
    /// The writer thread could not be started when the store was opened.
    #[error("cannot start the writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
    /// A read on the blocking pool panicked or was cancelled before it answered.
    #[error("read task failed: {0}")]
    ReadTask(#[source] tokio::task::JoinError),
    /// A write asked for a table its own code still holds (a bug in the caller).
    #[error("table {0} is already in use in this transaction")]
    TableInUse(String),
    /// The store cannot be read right now: it is down after an I/O failure (a full disk)
    /// and the read needed the file, or the writer is reopening it.
    #[error("the store is down: {0}")]
    Unavailable(Outage),
}

impl StoreError {
    /// The storage fault behind this error (a full disk, an I/O error of the store file), if
    /// it is one: such an error is temporary, as the writer reopens the store by itself.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StoreError::Db(e) => disk::of_error(e),
            StoreError::NotCommitted(w) => w.fault(),
            StoreError::Unavailable(o) => Some(o.fault),
            _ => None,
        }
    }

    /// For a [`StoreError::fault`]: how long until the writer next tries to reopen the store
    /// (what the API's `Retry-After` says).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Unavailable(o) | StoreError::NotCommitted(WriteError::Refused(o)) => {
                Some(o.retry_in)
            }
            other => other.fault().map(|_| disk::FIRST_PROBE),
        }
    }
}

/// Why a batch did not commit, as told to every caller whose write was in it (redb's
/// per-operation errors, one variant per step of the writer's batch).
///
/// Cloned once per caller, so the redb causes are shared behind an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The writer could not begin the write transaction, so no write in the batch ran.
    #[error("cannot begin a write transaction: {0}")]
    Begin(#[source] Arc<redb::TransactionError>),
    /// Another write in the same batch failed with a storage error; the batch was aborted.
    #[error("another write in its batch failed")]
    OtherWrite,
    /// The batch's log entries could not be written; the batch was aborted.
    #[error("cannot write the batch's log entries: {0}")]
    Log(#[source] Arc<StoreError>),
    /// redb could not commit (and make durable) the batch's transaction.
    #[error("commit failed: {0}")]
    Commit(#[source] Arc<redb::CommitError>),
    /// Another write in the same batch hit a storage fault; the batch was aborted.
    #[error("another write in its batch failed: {0}")]
    Aborted(Fault),
    /// The store takes no writes until the writer has reopened it (the write never ran).
    #[error("{0}")]
    Refused(Outage),
}

impl WriteError {
    /// The storage fault that stopped the batch, if it was one.
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        match self {
            WriteError::Begin(e) => disk::of_transaction(e),
            WriteError::OtherWrite => None,
            WriteError::Log(e) => e.fault(),
            WriteError::Commit(e) => disk::of_commit(e),
            WriteError::Aborted(f) => Some(*f),
            WriteError::Refused(o) => Some(o.fault),
        }
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
redb_from!(
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// What the writer thread runs for one caller: its closure, or only its answer when the
/// batch could not even begin.
trait Job: Send {
    /// Run the closure in `tx`. Returns its storage-level failure, if any, and the completion
    /// to call with the batch's outcome.
    fn run(self: Box<Self>, tx: &Tx<'_>, now: Millis) -> (Option<Failure>, Completion);
    /// Answer the caller without running its closure: the batch never began.
    fn refuse(self: Box<Self>, why: WriteError);
    /// The write may wait for company (see [`DETACHED_LINGER`]).
    fn lingers(&self) -> bool;
}

/// Tells one caller how its batch ended.
type Completion = Box<dyn FnOnce(Result<(), WriteError>) + Send>;

/// Why a batch (or one write of it) failed, as the writer needs to know it: whether the store
/// file itself failed, and the error as text for the operator.
struct Failure {
    fault: Option<Fault>,
    cause: String,
}

impl Failure {
    fn of(fault: Option<Fault>, cause: &impl std::fmt::Display) -> Failure {
        Failure {
            fault,
            cause: cause.to_string(),
        }
    }
}

/// A caller's write closure and the channel its answer goes back on.
struct WriteJob<F, T> {
    /// The caller's closure.
    f: F,
    /// Where the closure's value (once committed) or the error goes.
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// Submitted by [`Store::write_detached`] or [`Store::write_background`].
    lingers: bool,
}

impl<F, T> Job for WriteJob<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Tx<'_>, now: Millis) -> (Option<Failure>, Completion) {
        let WriteJob { f, reply, .. } = *self;
        match f(tx, now) {
            Ok(value) => (
                None,
                Box::new(move |commit: Result<(), WriteError>| {
                    let _ = reply.send(commit.map(|()| value).map_err(StoreError::from));
                }),
            ),
            Err(e) => (
                Some(Failure::of(e.fault(), &e)),
                Box::new(move |_| {
                    let _ = reply.send(Err(e));
                }),
            ),
        }
    }

    fn refuse(self: Box<Self>, why: WriteError) {
        let _ = self.reply.send(Err(StoreError::NotCommitted(why)));
    }

    fn lingers(&self) -> bool {
        self.lingers
    }
}

/// Counters the writer keeps for `/metrics`, the watchdog and benchmarks.
#[derive(Debug)]
pub struct StoreStats {
    /// Commits done.
    pub commits: AtomicU64,
    /// Write closures committed.
    pub writes: AtomicU64,
    /// Log entries committed.
    pub log_records: AtomicU64,
    /// Total commit time in microseconds.
    pub commit_micros: AtomicU64,
    /// Longest commit in microseconds.
    pub max_commit_micros: AtomicU64,
    /// Commits that failed.
    pub failures: AtomicU64,
    /// Times the writer reopened the store after an I/O failure (a full disk) and took
    /// writes again.
    pub reopens: AtomicU64,
    /// Latency of every commit attempt (the whole batch: closures plus fsync).
    pub commit_latency: Histogram,
    /// The writer's heartbeat: milliseconds after `epoch` of the last successful commit, plus
    /// one (0 = none yet). The watchdog reads it to tell a live writer from a stuck one.
    last_commit: AtomicU64,
    /// Base for `last_commit`.
    epoch: Instant,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            log_records: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            max_commit_micros: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            commit_latency: Histogram::new(FAST_BUCKETS),
            last_commit: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl StoreStats {
    /// Time since the last successful commit, `None` before the first.
    #[must_use]
    pub fn since_last_commit(&self) -> Option<Duration> {
        match self.last_commit.load(Ordering::Relaxed) {
            0 => None,
            at => {
                let now = self.epoch.elapsed();
                Some(now.saturating_sub(Duration::from_millis(at - 1)))
            }
        }
    }

    fn mark_commit(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_commit.store(ms + 1, Ordering::Relaxed);
    }
}

/// What the writer thread and every [`Store`] handle share.
struct Shared {
    /// The open database. Readers clone the `Arc` for the length of one read; the writer
    /// empties the slot while it reopens the database after an I/O failure (redb refuses a
    /// second open of a file that is still open), and fills it again with the new one.
    db: RwLock<Option<Arc<Database>>>,
    stats: StoreStats,
    /// False after a commit failed, until one succeeds again.
    healthy: AtomicBool,
    /// Set while the store takes no writes (see [`disk`]); cleared by a successful reopen.
    outage: Mutex<Option<Down>>,
    /// Bumped after every commit that changed more than the log, so live pages and long
    /// polls learn that something changed without polling (see [`Store::subscribe`]).
    changes: tokio::sync::watch::Sender<u64>,
}

/// The writer's record of an outage: what [`Store::outage`] reports, and its probe schedule.
#[derive(Debug, Clone)]
struct Down {
    fault: Fault,
    cause: String,
    since: Millis,
    /// When the writer probes the disk next.
    next_probe: Instant,
    /// The wait before the probe after next (doubles up to [`disk::MAX_PROBE_INTERVAL`]).
    interval: Duration,
}

impl Down {
    fn outage(&self) -> Outage {
        Outage {
            fault: self.fault,
            cause: self.cause.clone(),
            since: self.since,
            retry_in: self.next_probe.saturating_duration_since(Instant::now()),
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    path: PathBuf,
    jobs: mpsc::Sender<Box<dyn Job>>,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store file and start its writer thread.
    ///
    /// # Errors
    /// If the file cannot be opened, is locked by another process, or is too new.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        Store::open_on(FileDisk::new(path), path, clock)
    }

    /// Open (or create) the store on `disk` and start its writer thread, which reopens it
    /// through `disk` after an I/O failure. `path` is the store file's path, for messages,
    /// `/metrics` and backups.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_on<D: Disk>(
        disk: D,
        path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        let db = builder().create_with_backend(disk.backend().map_err(redb::Error::Io)?)?;
        migrate(&db, path)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            stats: StoreStats::default(),
            healthy: AtomicBool::new(true),
            outage: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        });
        // Callers are answered from a task on the runtime that opened the store, if any.
        let answer = tokio::runtime::Handle::try_current().ok();
        let writer = Writer {
            disk,
            down: None,
            db: Some(db),
            shared: shared.clone(),
            clock,
            answer,
        };
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(StoreError::WriterThread)?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                path: path.to_owned(),
                jobs: tx,
            }),
        })
    }

    /// A receiver whose value changes after every commit that wrote more than log entries
    /// (devices, requests, inventory): what the live page and its long poll wait on.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.changes.subscribe()
    }

    /// The file path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commit statistics.
    #[must_use]
    pub fn stats(&self) -> &StoreStats {
        &self.inner.shared.stats
    }

    /// False after a commit failed, until one succeeds again.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Relaxed)
    }

    /// Why the store takes no writes right now (a full disk, an I/O error), or `None` when
    /// it does. The writer clears it by itself once a reopen and a probe write succeed.
    #[must_use]
    pub fn outage(&self) -> Option<Outage> {
        crate::domain::lock(&self.inner.shared.outage)
            .as_ref()
            .map(Down::outage)
    }

    /// The open database, or why there is none (the writer is reopening it).
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self
            .inner
            .shared
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        slot.ok_or_else(|| self.unavailable())
    }

    /// The error for a store that cannot answer because of its outage.
    fn unavailable(&self) -> StoreError {
        self.outage()
            .map_or(StoreError::Closed, StoreError::Unavailable)
    }

    /// A read's error, told as the outage when the store is down: a read of a database
    /// that latched an I/O error says "previous I/O error", which is not what happened.
    fn explain(&self, e: StoreError) -> StoreError {
        if e.fault().is_some()
            && let Some(outage) = self.outage()
        {
            return StoreError::Unavailable(outage);
        }
        e
    }

    /// Run `f` in the writer's next transaction and wait until that transaction is durable.
    /// `f` gets the transaction and the commit batch's time.
    ///
    /// # Errors
    /// `f`'s own storage error, a failed commit, or a closed store.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::write`], for a step nobody is waiting on right now (a hardware
    /// action's result, a timer): its batch may wait up to [`DETACHED_LINGER`] for a
    /// write somebody waits for and share its commit. The caller still acts only once the
    /// write is durable.
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn write_background<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.submit(f, true)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::write`] but without waiting (the log of API calls uses it; the record
    /// becomes durable with the next commit, which waits up to [`DETACHED_LINGER`] for a
    /// write somebody waits for).
    pub fn write_detached<F>(&self, f: F)
    where
        F: FnOnce(&Tx<'_>, Millis) -> Result<(), StoreError> + Send + 'static,
    {
        if let Err(e) = self.submit(f, true) {
            tracing::warn!(error = %e, "dropped a detached write");
        }
    }

    /// Commit every write submitted before this call, detached ones included (a batch of
    /// only those waits up to [`DETACHED_LINGER`] otherwise): what shutdown does last.
    ///
    /// # Errors
    /// As [`Store::write`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_, _| Ok(())).await
    }

    /// Blocking form of [`Store::write`] for threads outside the runtime.
    ///
    /// # Errors
    /// As [`Store::write`].
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    fn submit<T, F>(
        &self,
        f: F,
        lingers: bool,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(WriteJob { f, reply, lingers });
        self.inner.jobs.send(job).map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Run `f` on a read [`Snapshot`], on the blocking pool.
    ///
    /// # Errors
    /// `f`'s error, or a failed task.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(&Snapshot::new(db.begin_read()?)))
            .await
            .map_err(StoreError::ReadTask)?
            .map_err(|e| self.explain(e))
    }

    /// A short read on the calling thread: a point lookup or a scan bounded by a small
    /// limit, never one that grows with the store. Handing such a read to the blocking pool
    /// (two thread wake-ups) costs more than the read, whose pages are in redb's cache.
    ///
    /// # Errors
    /// `f`'s error.
    pub fn peek<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Snapshot) -> Result<T, StoreError>,
    {
        self.read_blocking(f)
    }

    /// Blocking form of [`Store::read`].
    ///
    /// # Errors
    /// `f`'s error.
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Snapshot) -> Result<T, StoreError>,
    {
        let db = self.db()?;
        let snap = db
            .begin_read()
            .map_err(|e| self.explain(StoreError::from(e)))?;
        f(&Snapshot::new(snap)).map_err(|e| self.explain(e))
    }
}

/// The database settings every store is opened with.
fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(64 * 1024 * 1024);
    builder.set_repair_callback(|session| {
        tracing::warn!(
            progress = session.progress(),
            "repairing the database after an unclean shutdown"
        );
    });
    builder
}

/// Create the tables, record the schema version, refuse a newer file.
fn migrate(db: &Database, path: &Path) -> Result<(), StoreError> {
    let wtx = db.begin_write()?;
    let tx = Tx::new(&wtx);
    let found = {
        let mut meta = tx.meta()?;
        let found = meta.get("schema_version")?.map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: path.to_owned(),
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(v) if v == SCHEMA_VERSION => {}
            found => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
                if found.is_some() {
                    tracing::info!(
                        from = ?found,
                        to = SCHEMA_VERSION,
                        "upgrading the store's schema"
                    );
                }
            }
        }
        found
    };
    // Every table exists from the first start on (readers need not tell "missing" apart
    // from "empty").
    tx.devices()?;
    tx.images()?;
    tx.environments()?;
    tx.hardware_types()?;
    tx.logs()?;
    tx.log_index()?;
    tx.log_heads()?;
    tx.device_deadlines()?;
    tx.requests()?;
    tx.open_requests()?;
    tx.request_deadlines()?;
    tx.free_devices()?;
    tx.waiting_requests()?;
    tx.device_usage()?;
    tx.usage_hours()?;
    tx.failure_hours()?;
    tx.wait_hours()?;
    tx.request_waits()?;
    // Stores from before version 2 (or without a version) get their indexes built.
    if found.is_none_or(|v| v < 2) {
        inventory::rebuild_free_index(&tx)?;
        requests::rebuild_waiting_index(&tx)?;
    }
    // Stores from before version 4 get an open interval per device for the pool chart.
    if found.is_some_and(|v| v < 4) {
        history::open_intervals_on_upgrade(&tx)?;
    }
    tx.finish()?;
    wtx.commit()?;
    Ok(())
}

/// How long a reopen waits for reads in progress to let go of the failed database (redb
/// refuses to open a file that is still open).
const READERS_GRACE: Duration = Duration::from_secs(2);

/// The writer thread's state: the database it commits to, and how to reopen it.
struct Writer<D: Disk> {
    disk: D,
    /// The outage, while the store takes no writes (published to [`Shared::outage`]).
    down: Option<Down>,
    /// The database batches commit to; `None` after a failed reopen closed it.
    db: Option<Arc<Database>>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    /// The runtime that wakes callers (see [`deliver`]).
    answer: Option<tokio::runtime::Handle>,
}

/// Add the writes waiting to `batch`. A batch of writes that may linger only waits up to
/// [`DETACHED_LINGER`] for more (when `linger`), and commits as soon as it holds one that
/// may not.
fn gather(rx: &mpsc::Receiver<Box<dyn Job>>, batch: &mut Vec<Box<dyn Job>>, linger: bool) {
    let mut waited_for = batch.iter().any(|j| !j.lingers());
    let mut until = None;
    while batch.len() < MAX_BATCH {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) if waited_for || !linger => return,
            Err(mpsc::TryRecvError::Empty) => {
                let until = *until.get_or_insert_with(|| Instant::now() + DETACHED_LINGER);
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        waited_for |= !job.lingers();
        batch.push(job);
    }
}

/// The writer thread: take every write waiting, commit them as one batch, answer their
/// callers; while the store is down, refuse writes and probe the disk until it reopens.
fn writer_loop<D: Disk>(mut w: Writer<D>, rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut last_now = Millis(0);
    loop {
        if w.next_probe().is_some_and(|at| at <= Instant::now()) {
            w.heal();
        }
        let first = match w.next_probe() {
            None => rx.recv().ok(),
            // Down: wake up for the next probe even when no write comes.
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        let Some(first) = first else { break };
        batch.push(first);
        gather(&rx, &mut batch, w.next_probe().is_none());
        let started = Instant::now();
        let db = match (&w.db, w.outage()) {
            (Some(db), None) => db.clone(),
            (_, outage) => {
                // The writes never run: nothing of them can be half-done.
                let why = WriteError::Refused(outage.unwrap_or_else(|| w.lost_db()));
                let jobs: Vec<Box<dyn Job>> = std::mem::take(&mut batch);
                deliver(w.answer.as_ref(), move || {
                    for job in jobs {
                        job.refuse(why.clone());
                    }
                });
                // Callers that retry at once must not make this thread spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Time never runs backwards inside the store, so log order matches time order.
        let now = w.clock.now().max(last_now);
        last_now = now;
        let n = batch.len();
        let (outcome, answers) = run_batch(&db, batch.drain(..), now, &w.shared);
        let stats = &w.shared.stats;
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        stats.commit_latency.observe(elapsed);
        stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
        stats.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
        let failed = match outcome {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(n as u64, Ordering::Relaxed);
                stats.mark_commit();
                w.shared.healthy.store(true, Ordering::Relaxed);
                false
            }
            Err(failure) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                w.shared.healthy.store(false, Ordering::Relaxed);
                if let Some(fault) = failure.fault.or_else(|| latched(&db)) {
                    w.go_down(fault, failure.cause);
                }
                true
            }
        };
        deliver(w.answer.as_ref(), answers);
        if failed && Duration::from_micros(micros) < Duration::from_millis(1) {
            // A failing disk fails fast; do not spin.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// After a batch failed for a reason that was not an I/O error (a closure's own storage
/// error, a poisoned transaction): whether the database latched an I/O error all the same.
fn latched(db: &Database) -> Option<Fault> {
    match db.begin_write() {
        Ok(tx) => {
            let _ = tx.abort();
            None
        }
        Err(e) => disk::of_transaction(&e),
    }
}

impl<D: Disk> Writer<D> {
    /// The current outage, if any.
    fn outage(&self) -> Option<Outage> {
        self.down.as_ref().map(Down::outage)
    }

    /// When the next probe is due, while the store is down.
    fn next_probe(&self) -> Option<Instant> {
        self.down.as_ref().map(|d| d.next_probe)
    }

    /// Show the writer's outage state to the handles ([`Store::outage`]).
    fn publish(&self) {
        crate::domain::lock(&self.shared.outage).clone_from(&self.down);
    }

    /// The outage to report when there is no database but no outage either (cannot happen:
    /// the database is only closed during an outage).
    fn lost_db(&self) -> Outage {
        Outage {
            fault: Fault::Io,
            cause: "the store is not open".into(),
            since: self.clock.now(),
            retry_in: Duration::ZERO,
        }
    }

    /// Stop taking writes: the database latched an I/O error and must be reopened.
    fn go_down(&mut self, fault: Fault, cause: String) {
        tracing::error!(
            fault = fault.as_str(),
            %cause,
            "{fault}: the store takes no writes until it is reopened; probing the disk every {}..{} s",
            disk::FIRST_PROBE.as_secs_f32(),
            disk::MAX_PROBE_INTERVAL.as_secs()
        );
        self.down = Some(Down {
            fault,
            cause,
            since: self.clock.now(),
            next_probe: Instant::now() + disk::FIRST_PROBE,
            interval: disk::FIRST_PROBE,
        });
        self.publish();
    }

    /// Probe the disk and, when it takes writes, reopen the store and commit a probe write.
    /// On success the store takes writes again; else the next probe is scheduled later.
    fn heal(&mut self) {
        if self.down.is_none() {
            return;
        }
        let result = self.reopen();
        let Some(down) = self.down.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                let took = self.clock.now().0.saturating_sub(down.since.0);
                // At warning level, as the error that began the outage, so that
                // `journalctl -p warning` shows the end too.
                tracing::warn!(
                    fault = down.fault.as_str(),
                    down_ms = took,
                    "the store was reopened and takes writes again"
                );
                let stats = &self.shared.stats;
                stats.reopens.fetch_add(1, Ordering::Relaxed);
                stats.mark_commit();
                self.shared.healthy.store(true, Ordering::Relaxed);
                self.down = None;
            }
            Err(failure) => {
                // What the probe met is the latest news of the disk (freed, then full again;
                // or an I/O error that became a full disk).
                if let Some(fault) = failure.fault {
                    down.fault = fault;
                }
                down.interval = (down.interval * 2).min(disk::MAX_PROBE_INTERVAL);
                down.next_probe = Instant::now() + down.interval;
                tracing::info!(
                    fault = down.fault.as_str(),
                    error = %failure.cause,
                    retry_in_ms = u64::try_from(down.interval.as_millis()).unwrap_or(u64::MAX),
                    "the store is still down"
                );
            }
        }
        self.publish();
    }

    /// The reopen: probe beside the store (while the old database still serves cached
    /// reads), close the old database, open it again (redb rolls back to its last durable
    /// commit) and commit a probe write into it.
    fn reopen(&mut self) -> Result<(), Failure> {
        self.disk
            .probe()
            .map_err(|e| Failure::of(Some(disk::of_io(&e)), &format!("probe write: {e}")))?;
        self.close_db();
        let backend = self
            .disk
            .backend()
            .map_err(|e| Failure::of(Some(disk::of_io(&e)), &format!("open: {e}")))?;
        let db = builder()
            .create_with_backend(backend)
            .map_err(|e| Failure::of(disk::of_open(&e), &format!("reopen: {e}")))?;
        probe_commit(&db)?;
        let db = Arc::new(db);
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(db.clone());
        self.db = Some(db);
        Ok(())
    }

    /// Take the database away from readers and close it, once the reads in progress are done
    /// (bounded by [`READERS_GRACE`]; a reopen that still finds it open fails and is retried).
    fn close_db(&mut self) {
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let Some(mut db) = self.db.take() else { return };
        let deadline = Instant::now() + READERS_GRACE;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    if let Err(e) = db.close() {
                        tracing::debug!(error = %e, "closing the failed store");
                    }
                    return;
                }
                Err(held) if Instant::now() < deadline => {
                    db = held;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    tracing::warn!(
                        "reads in progress still hold the failed store; reopening later"
                    );
                    return;
                }
            }
        }
    }
}

/// One real commit into a reopened store before callers' writes are taken again: the count
/// of reopens, in META.
fn probe_commit(db: &Database) -> Result<(), Failure> {
    let wtx = db
        .begin_write()
        .map_err(|e| Failure::of(disk::of_transaction(&e), &format!("probe commit: {e}")))?;
    let tx = Tx::new(&wtx);
    let written = next_counter(&tx, "reopens").and_then(|_| tx.finish());
    if let Err(e) = written {
        return Err(Failure::of(e.fault(), &format!("probe commit: {e}")));
    }
    wtx.commit()
        .map_err(|e| Failure::of(disk::of_commit(&e), &format!("probe commit: {e}")))
}

/// The calls that answer a batch's callers, run by [`deliver`].
type Answers = Box<dyn FnOnce() + Send>;

/// Run one batch in one transaction. Returns why the batch failed, if it did, and the
/// answers for every caller: its value, its own error, or the [`WriteError`] that stopped
/// the batch. The writer delivers them after it has recorded a failure, so a caller told
/// "disk full" finds the store's outage already set.
fn run_batch(
    db: &Database,
    jobs: impl Iterator<Item = Box<dyn Job>>,
    now: Millis,
    shared: &Shared,
) -> (Result<(), Failure>, Answers) {
    let tx = match db.begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a write transaction");
            let failure = Failure::of(disk::of_transaction(&e), &e);
            let why = WriteError::Begin(Arc::new(e));
            let jobs: Vec<Box<dyn Job>> = jobs.collect();
            let answers = Box::new(move || {
                for job in jobs {
                    job.refuse(why.clone());
                }
            });
            return (Err(failure), answers);
        }
    };
    let mut completions = Vec::new();
    let mut failed: Option<(WriteError, Failure)> = None;
    let batch = Tx::new(&tx);
    for job in jobs {
        let (failure, done) = job.run(&batch, now);
        if let Some(failure) = failure
            && failed.is_none()
        {
            // The others are told whether the store itself failed (then they may retry).
            let why = failure
                .fault
                .map_or(WriteError::OtherWrite, WriteError::Aborted);
            failed = Some((why, failure));
        }
        completions.push(done);
    }
    let mut logged = 0;
    let touched = batch.touched();
    if failed.is_none() {
        match batch.finish() {
            Ok(n) => logged = n,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the batch's log entries");
                let failure = Failure::of(e.fault(), &e);
                failed = Some((WriteError::Log(Arc::new(e)), failure));
            }
        }
    } else {
        drop(batch);
    }
    let (result, failure) = match failed {
        Some((why, failure)) => {
            let _ = tx.abort();
            (Err(why), Some(failure))
        }
        None => match tx.commit() {
            Ok(()) => (Ok(()), None),
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                let failure = Failure::of(disk::of_commit(&e), &e);
                (Err(WriteError::Commit(Arc::new(e))), Some(failure))
            }
        },
    };
    let ok = result.is_ok();
    if ok && touched {
        // Before any caller is answered, so a caller that reads the version next sees it.
        shared.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
    if ok {
        shared
            .stats
            .log_records
            .fetch_add(logged as u64, Ordering::Relaxed);
    }
    let answers = Box::new(move || {
        for done in completions {
            done(result.clone());
        }
    });
    (failure.map_or(Ok(()), Err), answers)
}

/// Run `answers` (the calls that wake the batch's callers) on the runtime when there is one.
fn deliver(answer: Option<&tokio::runtime::Handle>, answers: impl FnOnce() + Send + 'static) {
    match answer {
        // Waking each caller from this thread cost the writer a thread wake-up per write
        // (~7 % of its time); one task on the runtime wakes them instead, while the writer
        // starts the next batch.
        Some(rt) => drop(rt.spawn(async move { answers() })),
        None => answers(),
    }
}

/// Decode a stored value, mapping failures to [`StoreError::Corrupt`].
///
/// # Errors
/// A corrupt record.
pub fn decode<T: Record>(
    table: &'static str,
    key: impl std::fmt::Display,
    value: &Encoded<T>,
) -> Result<T, StoreError> {
    value.decode().map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

/// Encode a record for insertion.
///
/// # Errors
/// [`StoreError::Encode`].
pub fn encode<T: Record>(value: &T) -> Result<Encoded<T>, StoreError> {
    Encoded::encode(value).map_err(StoreError::Encode)
}

/// Next value of a META counter, starting at 1, and store it.
///
/// # Errors
/// Storage failure.
pub fn next_counter(tx: &Tx<'_>, name: &str) -> Result<u64, StoreError> {
    let mut meta = tx.meta()?;
    let next = meta.get(name)?.map_or(1, |v| v.value() + 1);
    meta.insert(name, next)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use crate::domain::clock::{Clock, ManualClock, Millis};
    use crate::storage::{Fault, SimDisk, Store, StoreError, WriteError, next_counter};

    fn clock() -> Arc<dyn Clock> {
        Arc::new(ManualClock::new(Millis(1_000)))
    }

    /// A store on a [`SimDisk`] in a fresh directory, and the disk's switch.
    fn sim_store() -> (tempfile::TempDir, PathBuf, Store, SimDisk) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let disk = SimDisk::new(&path);
        let store = Store::open_on(disk.clone(), &path, clock()).expect("store");
        (dir, path, store, disk)
    }

    fn count(store: &Store) -> Result<u64, StoreError> {
        store.write_blocking(|tx, _| next_counter(tx, "test"))
    }

    fn read_count(store: &Store) -> Result<Option<u64>, StoreError> {
        store.read_blocking(|snap| snap.meta_value("test"))
    }

    /// Detached writes that come a millisecond apart wait for each other and share one
    /// commit (each alone would cost an fdatasync); a waited write after them finds them
    /// durable.
    #[test]
    fn detached_writes_share_a_commit_and_come_before_a_later_write() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.redb"), clock()).expect("store");
        count(&store).expect("first commit");
        let before = store.stats().commits.load(Ordering::Relaxed);
        for _ in 0..4 {
            store.write_detached(|tx, _| next_counter(tx, "detached").map(|_| ()));
            std::thread::sleep(Duration::from_millis(1));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while store
            .read_blocking(|s| s.meta_value("detached"))
            .expect("read")
            != Some(4)
        {
            assert!(Instant::now() < deadline, "detached writes not committed");
            std::thread::sleep(Duration::from_millis(2));
        }
        let commits = store.stats().commits.load(Ordering::Relaxed) - before;
        assert!(commits <= 2, "4 detached writes took {commits} commits");

        store.write_detached(|tx, _| next_counter(tx, "detached").map(|_| ()));
        count(&store).expect("waited write");
        assert_eq!(
            store
                .read_blocking(|s| s.meta_value("detached"))
                .expect("read"),
            Some(5)
        );
    }

    /// A background write waits for company: a waited write that comes while it lingers
    /// shares its commit, and each caller gets its answer once that commit is durable.
    /// Alone, it still commits within the linger.
    #[test]
    fn a_background_write_shares_the_commit_of_a_waited_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.redb"), clock()).expect("store");
        count(&store).expect("first commit");
        rt.block_on(async {
            let before = store.stats().commits.load(Ordering::Relaxed);
            let background = {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write_background(|tx, _| next_counter(tx, "background"))
                        .await
                })
            };
            tokio::task::yield_now().await;
            let waited = store.write(|tx, _| next_counter(tx, "waited")).await;
            assert_eq!(waited.expect("waited write"), 1);
            assert_eq!(background.await.expect("task").expect("background"), 1);
            let commits = store.stats().commits.load(Ordering::Relaxed) - before;
            assert_eq!(commits, 1, "the two writes took {commits} commits");
            let alone = tokio::time::timeout(
                Duration::from_secs(5),
                store.write_background(|tx, _| next_counter(tx, "background")),
            )
            .await
            .expect("a lone background write commits");
            assert_eq!(alone.expect("background"), 2);
        });
    }

    /// Wait until the writer has reopened the store (or fail after `secs`).
    fn wait_up(store: &Store, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while store.outage().is_some() {
            assert!(
                Instant::now() < deadline,
                "still down: {:?}",
                store.outage()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open the file again once the dropped store's writer has let go of it.
    fn reopen_from_disk(path: &Path) -> Store {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Store::open(path, clock()) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    /// A full disk: the write that meets it is told so (and not saved), later writes are
    /// refused with the outage without running, the store stays down while the disk is full,
    /// and once there is room it reopens by itself; every acknowledged write is there, in
    /// the running store and after a reopen from disk.
    #[test]
    fn a_full_disk_refuses_writes_then_heals_without_losing_any() {
        let (_dir, path, store, disk) = sim_store();
        for n in 1..=5 {
            assert_eq!(count(&store).expect("healthy write"), n);
        }
        disk.set_full(true);
        let hit = count(&store).expect_err("the disk is full");
        assert!(
            matches!(hit, StoreError::NotCommitted(WriteError::Commit(_))),
            "{hit:?}"
        );
        assert_eq!(hit.fault(), Some(Fault::DiskFull), "{hit}");
        assert!(
            hit.to_string()
                .starts_with("the write was not committed: commit failed: "),
            "{hit}"
        );
        let outage = store.outage().expect("down");
        assert_eq!(outage.fault, Fault::DiskFull);
        assert!(!store.healthy());

        let refused = count(&store).expect_err("refused while down");
        let StoreError::NotCommitted(WriteError::Refused(o)) = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(o.fault, Fault::DiskFull);
        assert!(
            refused
                .to_string()
                .starts_with("the write was not committed: the disk holding the store is full"),
            "{refused}"
        );
        assert!(refused.retry_after().expect("retry") <= crate::storage::disk::MAX_PROBE_INTERVAL);
        // The writer is still there to answer: only a dropped store is "shut down".
        assert!(!matches!(refused, StoreError::Closed));

        // Probes fail while the disk stays full (the first comes after 0.5 s).
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(store.outage().map(|o| o.fault), Some(Fault::DiskFull));
        assert_eq!(
            store
                .stats()
                .reopens
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // Reads answer with what was committed, or say the store is down; never anything else.
        match read_count(&store) {
            Ok(v) => assert_eq!(v, Some(5)),
            Err(e) => assert_eq!(e.fault(), Some(Fault::DiskFull), "{e}"),
        }

        disk.set_full(false);
        wait_up(&store, 15);
        assert!(store.healthy());
        assert_eq!(
            store
                .stats()
                .reopens
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The write that met the full disk was not saved; the five acknowledged ones were.
        assert_eq!(read_count(&store).expect("read"), Some(5));
        assert_eq!(count(&store).expect("writes resume"), 6);

        drop(store);
        let again = reopen_from_disk(&path);
        assert_eq!(read_count(&again).expect("read"), Some(6));
        assert_eq!(
            again
                .read_blocking(|snap| snap.meta_value("reopens"))
                .expect("read"),
            Some(1),
            "the probe write is committed"
        );
    }

    /// Any I/O error of the file (not only a full disk) is healed the same way, and is told
    /// as an I/O error, not as a full disk.
    #[test]
    fn an_io_error_is_healed_too() {
        let (_dir, _path, store, disk) = sim_store();
        assert_eq!(count(&store).expect("healthy write"), 1);
        disk.set_broken(true);
        let hit = count(&store).expect_err("the disk is broken");
        assert_eq!(hit.fault(), Some(Fault::Io), "{hit}");
        let refused = count(&store).expect_err("refused while down");
        assert!(
            refused
                .to_string()
                .contains("the store file had an I/O error"),
            "{refused}"
        );
        disk.set_broken(false);
        wait_up(&store, 15);
        assert_eq!(count(&store).expect("writes resume"), 2);
    }

    /// A disk that fills up again while the store is down changes what the outage says.
    #[test]
    fn a_probe_tells_the_latest_fault() {
        let (_dir, _path, store, disk) = sim_store();
        assert_eq!(count(&store).expect("healthy write"), 1);
        disk.set_broken(true);
        assert_eq!(count(&store).expect_err("broken").fault(), Some(Fault::Io));
        disk.set_full(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.outage().map(|o| o.fault) != Some(Fault::DiskFull) {
            assert!(Instant::now() < deadline, "{:?}", store.outage());
            std::thread::sleep(Duration::from_millis(20));
        }
        disk.set_full(false);
        wait_up(&store, 15);
        assert_eq!(count(&store).expect("writes resume"), 2);
    }
}
