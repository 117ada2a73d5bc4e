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
//! Reads run on tokio's blocking pool in their own MVCC snapshot and never wait for writes.
//! Read closures get a [`Snapshot`], whose typed queries are the only way callers outside
//! this module read the store: they never see redb, its tables or the on-disk records.

pub mod backup;
mod codec;
pub mod inventory;
pub mod logs;
pub mod records;
pub mod requests;
mod snapshot;
pub mod tables;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

pub use codec::{CodecError, Encoded, Record, decode_bytes};
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
pub const SCHEMA_VERSION: u64 = 3;

/// Largest number of write closures committed together.
const MAX_BATCH: usize = 512;

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
    /// Run the closure in `tx`. Returns whether it failed at the storage level, and the
    /// completion to call with the batch's outcome.
    fn run(self: Box<Self>, tx: &Tx<'_>, now: Millis) -> (bool, Completion);
    /// Answer the caller without running its closure: the batch never began.
    fn refuse(self: Box<Self>, why: WriteError);
}

/// Tells one caller how its batch ended.
type Completion = Box<dyn FnOnce(Result<(), WriteError>) + Send>;

/// A caller's write closure and the channel its answer goes back on.
struct WriteJob<F, T> {
    /// The caller's closure.
    f: F,
    /// Where the closure's value (once committed) or the error goes.
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for WriteJob<F, T>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &Tx<'_>, now: Millis) -> (bool, Completion) {
        let WriteJob { f, reply } = *self;
        match f(tx, now) {
            Ok(value) => (
                false,
                Box::new(move |commit: Result<(), WriteError>| {
                    let _ = reply.send(commit.map(|()| value).map_err(StoreError::from));
                }),
            ),
            Err(e) => (
                true,
                Box::new(move |_| {
                    let _ = reply.send(Err(e));
                }),
            ),
        }
    }

    fn refuse(self: Box<Self>, why: WriteError) {
        let _ = self.reply.send(Err(StoreError::NotCommitted(why)));
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

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
    stats: Arc<StoreStats>,
    healthy: Arc<AtomicBool>,
    /// Bumped after every commit that changed more than the log, so live pages and long
    /// polls learn that something changed without polling (see [`Store::subscribe`]).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
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
        let db = builder().create(path)?;
        Store::start(db, path, clock)
    }

    /// Migrate an opened database and start its writer thread.
    fn start(db: Database, path: &Path, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        migrate(&db, path)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(StoreStats::default());
        let healthy = Arc::new(AtomicBool::new(true));
        let changes = Arc::new(tokio::sync::watch::channel(0).0);
        // Callers are answered from a task on the runtime that opened the store, if any.
        let answer = tokio::runtime::Handle::try_current().ok();
        {
            let db = db.clone();
            let stats = stats.clone();
            let healthy = healthy.clone();
            let changes = changes.clone();
            std::thread::Builder::new()
                .name("redb-writer".into())
                .spawn(move || {
                    let shared = Shared {
                        stats: &stats,
                        healthy: &healthy,
                        changes: &changes,
                    };
                    writer_loop(&db, rx, clock.as_ref(), &shared, answer);
                })
                .map_err(StoreError::WriterThread)?;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                jobs: tx,
                stats,
                healthy,
                changes,
            }),
        })
    }

    /// A receiver whose value changes after every commit that wrote more than log entries
    /// (devices, requests, inventory): what the live page and its long poll wait on.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The file path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commit statistics.
    #[must_use]
    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// False after a commit failed, until one succeeds again.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
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
        let rx = self.submit(f)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::write`] but without waiting (the log of API calls uses it; the record
    /// becomes durable with the next commit, which the writer starts at once).
    pub fn write_detached<F>(&self, f: F)
    where
        F: FnOnce(&Tx<'_>, Millis) -> Result<(), StoreError> + Send + 'static,
    {
        if let Err(e) = self.submit(f) {
            tracing::warn!(error = %e, "dropped a detached write");
        }
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
        let rx = self.submit(f)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(WriteJob { f, reply });
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
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&Snapshot::new(db.begin_read()?)))
            .await
            .map_err(StoreError::ReadTask)?
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
        f(&Snapshot::new(self.inner.db.begin_read()?))
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
    // Stores from before version 2 (or without a version) get their indexes built.
    if found.is_none_or(|v| v < 2) {
        inventory::rebuild_free_index(&tx)?;
        requests::rebuild_waiting_index(&tx)?;
    }
    tx.finish()?;
    wtx.commit()?;
    Ok(())
}

/// What the writer thread shares with the [`Store`] handles.
struct Shared<'a> {
    stats: &'a StoreStats,
    healthy: &'a AtomicBool,
    changes: &'a tokio::sync::watch::Sender<u64>,
}

fn writer_loop(
    db: &Database,
    mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>,
    clock: &dyn Clock,
    shared: &Shared<'_>,
    answer: Option<tokio::runtime::Handle>,
) {
    let Shared { stats, healthy, .. } = *shared;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut last_now = Millis(0);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Time never runs backwards inside the store, so log order matches time order.
        let now = clock.now().max(last_now);
        last_now = now;
        let started = Instant::now();
        let n = batch.len();
        let outcome = run_batch(db, batch.drain(..), now, shared, answer.as_ref());
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        stats.commit_latency.observe(elapsed);
        stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
        stats.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
        if outcome {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(n as u64, Ordering::Relaxed);
            stats.mark_commit();
            healthy.store(true, Ordering::Relaxed);
        } else {
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        if !outcome && Duration::from_micros(micros) < Duration::from_millis(1) {
            // A failing disk fails fast; do not spin.
            std::thread::sleep(Duration::from_millis(10));
        }
        if !outcome {
            healthy.store(false, Ordering::Relaxed);
        }
    }
}

/// Run one batch in one transaction. Returns whether it committed. Every caller is
/// answered: with its value, its own error, or the [`WriteError`] that stopped the batch.
fn run_batch(
    db: &Database,
    jobs: impl Iterator<Item = Box<dyn Job>>,
    now: Millis,
    shared: &Shared<'_>,
    answer: Option<&tokio::runtime::Handle>,
) -> bool {
    let stats = shared.stats;
    let tx = match db.begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a write transaction");
            let why = WriteError::Begin(Arc::new(e));
            let jobs: Vec<Box<dyn Job>> = jobs.collect();
            deliver(answer, move || {
                for job in jobs {
                    job.refuse(why.clone());
                }
            });
            return false;
        }
    };
    let mut completions = Vec::new();
    let mut failed = None;
    let batch = Tx::new(&tx);
    for job in jobs {
        let (hard_error, done) = job.run(&batch, now);
        if hard_error && failed.is_none() {
            failed = Some(WriteError::OtherWrite);
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
                failed = Some(WriteError::Log(Arc::new(e)));
            }
        }
    } else {
        drop(batch);
    }
    let result = match failed {
        Some(why) => {
            let _ = tx.abort();
            Err(why)
        }
        None => tx.commit().map_err(|e| {
            tracing::error!(error = %e, "commit failed");
            WriteError::Commit(Arc::new(e))
        }),
    };
    let ok = result.is_ok();
    if ok && touched {
        // Before any caller is answered, so a caller that reads the version next sees it.
        shared.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
    if ok {
        stats
            .log_records
            .fetch_add(logged as u64, Ordering::Relaxed);
    }
    deliver(answer, move || {
        for done in completions {
            done(result.clone());
        }
    });
    ok
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;

    use crate::domain::clock::{Clock, ManualClock, Millis};
    use crate::storage::{Store, StoreError, WriteError, builder, next_counter};

    /// An in-memory backend whose writes and syncs fail once `broken` is set: a disk that
    /// went bad under a running store.
    #[derive(Debug)]
    struct Failing {
        mem: InMemoryBackend,
        broken: Arc<AtomicBool>,
    }

    impl Failing {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.broken.load(Ordering::Relaxed) {
                Err(std::io::Error::other("disk on fire"))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Failing {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.mem.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.mem.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.mem.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.mem.write(offset, data)
        }
    }

    fn failing_store() -> (Store, Arc<AtomicBool>) {
        let broken = Arc::new(AtomicBool::new(false));
        let backend = Failing {
            mem: InMemoryBackend::new(),
            broken: broken.clone(),
        };
        let db = builder()
            .create_with_backend(backend)
            .expect("in-memory database");
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(1_000)));
        let store = Store::start(db, std::path::Path::new("(memory)"), clock).expect("store");
        (store, broken)
    }

    fn count(store: &Store) -> Result<u64, StoreError> {
        store.write_blocking(|tx, _| next_counter(tx, "test"))
    }

    /// A write whose commit fails learns that the commit failed and why; the next write
    /// learns that no write transaction could begin and why. Neither is told the store is
    /// shut down.
    #[test]
    fn failed_commit_and_begin_say_what_failed() {
        let (store, broken) = failing_store();
        assert_eq!(count(&store).expect("healthy write"), 1);
        broken.store(true, Ordering::Relaxed);
        let commit = count(&store).expect_err("the disk is broken");
        assert!(
            matches!(commit, StoreError::NotCommitted(WriteError::Commit(_))),
            "{commit:?}"
        );
        let text = commit.to_string();
        assert!(
            text.starts_with("the write was not committed: commit failed: "),
            "{text}"
        );
        let begin = count(&store).expect_err("redb refuses after an I/O error");
        assert!(
            matches!(begin, StoreError::NotCommitted(WriteError::Begin(_))),
            "{begin:?}"
        );
        assert!(
            begin
                .to_string()
                .starts_with("the write was not committed: cannot begin a write transaction: "),
            "{begin}"
        );
        // The writer is still there to answer: only a dropped store is "shut down".
        assert!(!matches!(count(&store), Err(StoreError::Closed)));
    }
}
