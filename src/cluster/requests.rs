//! The shared queue's records in etcd (`docs/cluster.md`, "Keys"): requests, the id
//! counter, idempotency keys and assignments. Plain reads and compare-guarded
//! transactions; what to write is decided above (the HTTP handlers and `pool::shared`).
//!
//! - `<prefix>requests/<id>`: a [`SharedRequest`], not under any lease, so an
//!   acknowledged request survives the controller that took it;
//! - `<prefix>counter`: its version (how many times it was put) is the last request id
//!   handed out; each create puts it once and takes the version after the put, so ids stay
//!   integers, unique cluster-wide, without compare-and-retry between concurrent creates;
//! - `<prefix>idem/<key>`: the request id created for a client's `Idempotency-Key`,
//!   created in the same transaction (compare create revision 0);
//! - `<prefix>assign/<controller>/<device>`: an [`Assignment`], written only by the
//!   scheduler guarded by its election revision. Keyed by controller too because device
//!   names are only unique per rack (every simulated rack has a `sim-0001`).

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::{Write, Written};
use super::{Cluster, ClusterError, Leadership, PublishedDevice, lock};
use crate::domain::clock::{Clock, Millis};
use crate::domain::request::RequestSpec;
use crate::domain::request_state::RequestState;

/// One request of the shared queue, as stored at `<prefix>requests/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct SharedRequest {
    pub id: u64,
    pub spec: RequestSpec,
    pub expires: Millis,
    /// `queued` (waiting), `pending` (assigned, its owner preparing the device), `ready`,
    /// `closed` (returned or expired) or `failed_device_not_found`.
    pub state: RequestState,
    /// The assigned device and the controller owning it.
    pub device: Option<String>,
    pub owner: Option<String>,
    /// The controller that accepted the create (`imaging_server` in the JSON).
    pub taken_by: String,
    /// Why it still waits, as the scheduler last saw it.
    pub explanation: Option<String>,
    /// The API token that created it (only it or an admin may renew or return it).
    pub owner_token: Option<String>,
    /// Arrival in the queue (kept when a request goes back to waiting).
    pub since: Millis,
    /// When it last went back to waiting after an assignment fell through (absent: it has
    /// waited since `since`). A request without `wait` searches a bounded time from here,
    /// as single-rack mode's search counters restart when a request searches again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued: Option<Millis>,
    /// When it was returned, expired or failed: the scheduler deletes it
    /// `cluster.keep_closed_s` later (records without it count from `expires`).
    #[serde(default)]
    pub ended: Option<Millis>,
    /// What happened to it, oldest first: the last [`MAX_LOG_LINES`] lines, each written in
    /// the transaction that made the change it describes (records written before the log
    /// existed have none).
    #[serde(default)]
    pub log: Vec<LogLine>,
}

/// Most log lines a shared request keeps (older ones are dropped), so a request that keeps
/// changing does not grow its etcd value without bound.
pub const MAX_LOG_LINES: usize = 50;

/// One line of a shared request's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// 1 for the request's first line, then one more per line (kept when older lines are
    /// dropped, so a client can tell what it already saw).
    pub seq: u64,
    /// When it happened.
    pub ts: Millis,
    /// Who wrote it: `api` (a client's call), `scheduler` or `owner` (the device's
    /// controller).
    pub source: String,
    /// What happened.
    pub message: String,
}

impl SharedRequest {
    /// Append a log line, dropping the oldest beyond [`MAX_LOG_LINES`].
    pub fn push_log(&mut self, ts: Millis, source: &str, message: impl Into<String>) {
        let seq = self.log.last().map_or(1, |l| l.seq + 1);
        self.log.push(LogLine {
            seq,
            ts,
            source: source.to_owned(),
            message: message.into(),
        });
        let over = self.log.len().saturating_sub(MAX_LOG_LINES);
        self.log.drain(..over);
    }

    /// End the request as `closed` at `now` (returned, expired, or a late create), with the
    /// log line saying why.
    pub fn close(&mut self, now: Millis, source: &str, message: impl Into<String>) {
        self.end(RequestState::Closed, now, source, message);
    }

    /// End the request in `state` (closed or failed) at `now`, with the log line saying why.
    pub fn end(
        &mut self,
        state: RequestState,
        now: Millis,
        source: &str,
        message: impl Into<String>,
    ) {
        self.state = state;
        self.ended = Some(now);
        self.push_log(now, source, message);
    }

    /// Back to waiting at `now` (its assignment fell through), with the log line saying
    /// why: no device, no owner, and a fresh bounded search (`requeued`).
    pub fn requeue(&mut self, now: Millis, source: &str, message: impl Into<String>) {
        self.state = RequestState::Queued;
        self.device = None;
        self.owner = None;
        self.requeued = Some(now);
        self.push_log(now, source, message);
    }

    /// When it began its current wait for a device: its last return to the queue, else its
    /// arrival.
    #[must_use]
    pub fn waiting_since(&self) -> Millis {
        self.requeued.unwrap_or(self.since)
    }

    /// `self` with one more log line (see [`SharedRequest::push_log`]).
    #[must_use]
    pub fn with_log(mut self, ts: Millis, source: &str, message: impl Into<String>) -> Self {
        self.push_log(ts, source, message);
        self
    }
}

/// The tests' request record: `assignee` waits for any device with image `android`,
/// created and queued at `id` ms, taken by rack-a, expiring at 1,000 s. Tests set what
/// else they need on the result (state, device, priority…).
#[cfg(test)]
pub(crate) fn test_request(id: u64, assignee: &str) -> SharedRequest {
    SharedRequest {
        id,
        spec: RequestSpec::new(
            crate::domain::request::DeviceChoice::Any,
            assignee,
            "android".parse().expect("image"),
            Millis(id),
        ),
        expires: Millis(1_000_000),
        state: RequestState::Queued,
        device: None,
        owner: None,
        taken_by: "rack-a".into(),
        explanation: None,
        owner_token: None,
        since: Millis(id),
        requeued: None,
        ended: None,
        log: Vec::new(),
    }
}

/// A value read from etcd with its mod revision, for a later compare.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// The key's mod revision when read.
    pub mod_revision: i64,
}

/// `<prefix>assign/<controller>/<device>`: the device is handed to `request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The request holding the device.
    pub request: u64,
}

/// An assignment key read back: where it points and when it was created.
#[derive(Debug, Clone)]
pub struct AssignmentRow {
    /// Owner controller.
    pub controller: String,
    /// Device name on that controller.
    pub device: String,
    /// The assignment.
    pub assignment: Assignment,
    /// The key's create revision (an assignment's identity in the history).
    pub create_revision: i64,
}

/// Everything a scheduler pass needs, read in one transaction (one revision).
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    /// The requests the passes work on ([`in_passes`]), by id: every open request, and
    /// every ended one whose device's assignment is still there. Shared with the copy it
    /// was taken from: a pass's snapshot costs a reference count per record, not a deep
    /// clone. The other ended requests (kept `cluster.keep_closed_s`, a day by default)
    /// stay out, so a busy lab's day of them costs a pass nothing.
    pub requests: Vec<Arc<Versioned<SharedRequest>>>,
    /// The longest-ended of the requests left out, at most [`ENDED_IN_SNAPSHOT`], longest
    /// first: what the scheduler deletes next.
    pub oldest_ended: Vec<EndedRow>,
    /// Every assignment.
    pub assignments: Vec<AssignmentRow>,
    /// Every published device: (controller, view).
    pub devices: Vec<(String, PublishedDevice)>,
}

/// An ended request whose device is freed, as the sweep of ended requests needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedRow {
    /// The request.
    pub id: u64,
    /// Its key's mod revision (the deletion's guard).
    pub mod_revision: i64,
    /// When it ended ([`ended_at`]).
    pub ended: Millis,
}

/// Requests and every published device (controller, view): what the request list shows.
pub type RequestList = (Vec<SharedRequest>, Vec<(String, PublishedDevice)>);

/// How long the request list waits for the copy to include what etcd had committed when
/// the call came: the watch delivers within milliseconds unless the machine is overloaded.
const COPY_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(50);

/// How many of the ended requests left out of a [`QueueSnapshot`] it names.
pub const ENDED_IN_SNAPSHOT: usize = 64;

/// Whether the scheduler and owner passes work on `r`: it is open, or its device's
/// assignment (`held`) has not been freed yet.
#[must_use]
pub fn in_passes(r: &SharedRequest, held: bool) -> bool {
    r.state.is_open() || held
}

/// When an ended request ended (records from before `ended` was kept count from
/// `expires`).
#[must_use]
pub fn ended_at(r: &SharedRequest) -> Millis {
    r.ended.unwrap_or(r.expires)
}

/// The counter's value: only its version counts.
const COUNTER_VALUE: &str = "its version is the last block of request ids handed out";

/// How long a controller keeps checking for a create it answered 503 that etcd committed
/// later ([`Cluster::close_if_created_late`]): longer than any quorum outage it rides out
/// with its clients still waiting.
const LATE_CREATE_WATCH: std::time::Duration = std::time::Duration::from_secs(600);

/// Request ids a controller reserves with one put of the counter: version `v` of the
/// counter is ids `(v - 1) * ID_BLOCK + 1 ..= v * ID_BLOCK`. A create then costs one
/// transaction, not two; ids a controller had not used when it stopped stay unused.
pub const ID_BLOCK: u64 = 16;

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| {
        ClusterError::Refused(format!(
            "undecodable value at {}: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn gets(responses: &[TxnOpResponse], i: usize) -> Vec<etcd_client::KeyValue> {
    match responses.get(i) {
        Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
        _ => Vec::new(),
    }
}

impl Cluster {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.config.prefix)
    }

    /// Key of request `id`.
    fn request_key(&self, id: u64) -> String {
        self.key(&format!("requests/{id}"))
    }

    /// Key of the assignment of `device` on `controller`.
    #[must_use]
    pub fn assign_key(&self, controller: &str, device: &str) -> String {
        self.key(&format!("assign/{controller}/{device}"))
    }

    /// A guarded write of the queue, sent with whatever other writes are waiting
    /// (`cluster::batch`).
    async fn write(&self, write: Write) -> Result<Written, ClusterError> {
        let written = self.inner.writes.write(write).await?;
        if written.succeeded {
            // Remembered so a pass can wait for the in-memory copy to include this write
            // instead of acting again on a copy that does not show it yet.
            self.inner
                .written
                .fetch_max(written.revision, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(written)
    }

    /// A read-only transaction (a linearizable read; never batched with writes).
    async fn read(&self, txn: Txn) -> Result<TxnResponse, ClusterError> {
        self.inner.etcd.txn(self.inner.config.timeout(), txn).await
    }

    /// etcd's current revision: one linearizable read of no record (a count of one key).
    /// `i64::MAX` in the unlikely case etcd's answer has no header.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub(super) async fn current_revision(&self) -> Result<i64, ClusterError> {
        let probe = TxnOp::get(
            self.key("counter"),
            Some(GetOptions::new().with_count_only()),
        );
        Ok(self
            .read(Txn::new().and_then([probe]))
            .await?
            .header()
            .map_or(i64::MAX, |h| h.revision()))
    }

    /// The revision of the last queue write this controller made (0 if none): a copy of
    /// the queue older than this does not show it yet.
    #[must_use]
    pub fn last_write_revision(&self) -> i64 {
        self.inner
            .written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Create a request: `build` gets the new id. With `idem`, a second create with the same
    /// key (on any controller) returns the first request instead (`false`: not new).
    ///
    /// The id comes from this controller's block of ids ([`ID_BLOCK`]), reserved by one
    /// plain put of `<prefix>counter` (etcd counts a key's puts atomically, so concurrent
    /// reservations on any controllers never retry on a compare), and the request is then
    /// one transaction. Ids are unique and increasing per controller, not gapless, and not
    /// in creation order across controllers.
    ///
    /// A create that finds etcd unavailable is tried once more (with a new id; the first
    /// one's stays unused).
    ///
    /// A write that timed out may still commit later: etcd cannot take back a proposal a
    /// member accepted before it lost quorum, and when quorum returns it may be committed.
    /// Its client was answered 503 and will never use or return that request, so without
    /// an idempotency key (with one, a retry finds it and it is the answer) this
    /// controller watches for it and closes it ([`Cluster::close_if_created_late`]).
    /// `clock` dates that close.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot take the write.
    pub async fn create_request(
        &self,
        idem: Option<&str>,
        clock: &Arc<dyn Clock>,
        build: impl Fn(u64) -> SharedRequest,
    ) -> Result<(SharedRequest, bool), ClusterError> {
        match self.try_create(idem, clock, &build).await {
            Err(e) if e.is_unavailable() => self.try_create(idem, clock, &build).await,
            other => other,
        }
    }

    /// The next id of this controller's block, reserving a new block when it is used up.
    async fn next_id(&self) -> Result<u64, ClusterError> {
        if let Some(id) = lock(&self.inner.ids).pop_front() {
            return Ok(id);
        }
        // One reservation at a time: concurrent creates that found the block used up wait
        // for it rather than each reserving a block (their puts of the one counter key
        // could not share a transaction).
        let _reserving = self.inner.reserving.lock().await;
        if let Some(id) = lock(&self.inner.ids).pop_front() {
            return Ok(id);
        }
        let written = self
            .write(Write::new().put_returning_previous(&self.key("counter"), COUNTER_VALUE.into()))
            .await?;
        let prev = match written.responses.first() {
            Some(TxnOpResponse::Put(p)) => p.prev_key().map_or(0, KeyValue::version),
            _ => 0,
        };
        // The counter's version after this put is the block's number.
        let block = u64::try_from(prev).unwrap_or(0) + 1;
        let mut ids = lock(&self.inner.ids);
        ids.extend((block - 1) * ID_BLOCK + 1..=block * ID_BLOCK);
        ids.pop_front()
            .ok_or_else(|| ClusterError::Refused("empty id block".into()))
    }

    async fn try_create(
        &self,
        idem: Option<&str>,
        clock: &Arc<dyn Clock>,
        build: &impl Fn(u64) -> SharedRequest,
    ) -> Result<(SharedRequest, bool), ClusterError> {
        let idem_key = idem.map(|k| self.key(&format!("idem/{k}")));
        if let Some(k) = &idem_key
            && let Some(r) = self.idem_request(k).await?
        {
            return Ok((r, false));
        }
        let id = self.next_id().await?;
        let r = build(id);
        let rkey = self.request_key(id);
        let mut write = Write::new().if_create_revision(&rkey, 0);
        if let Some(k) = &idem_key {
            write = write.if_create_revision(k, 0).put(k, encode(&id));
        }
        let written = match self.write(write.put(&rkey, encode(&r))).await {
            Ok(w) => w,
            Err(e) => {
                if e.is_unavailable() && idem_key.is_none() {
                    self.close_if_created_late(id, clock.clone());
                }
                return Err(e);
            }
        };
        if written.succeeded {
            return Ok((r, true));
        }
        // Our own write, committed after its call had given up and been sent again.
        if self.request(id).await?.is_some_and(|old| old.value == r) {
            return Ok((r, true));
        }
        // The idempotency key was taken meanwhile (a retry racing the first try): that
        // request is the answer.
        if let Some(k) = &idem_key
            && let Some(r) = self.idem_request(k).await?
        {
            return Ok((r, false));
        }
        Err(ClusterError::Unavailable(format!(
            "request id {id} is already in use (was {} edited by hand?); retry",
            self.key("counter")
        )))
    }

    /// Request `id`'s create was answered with an error after its write was sent: read it
    /// until etcd answers, and if the write was committed after all, close the request
    /// (its client was told the create failed). One linearizable read that finds no such
    /// request settles it: a proposal still pending in some member's log when a new raft
    /// leader serves that read can never be committed any more.
    fn close_if_created_late(&self, id: u64, clock: Arc<dyn Clock>) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let give_up = tokio::time::Instant::now() + LATE_CREATE_WATCH;
            while tokio::time::Instant::now() < give_up {
                match cluster.request(id).await {
                    Ok(None) => return,
                    Ok(Some(r)) if !r.value.state.is_open() => return,
                    Ok(Some(r)) => {
                        let mut nv = r.value.clone();
                        nv.close(
                            clock.now(),
                            "api",
                            format!(
                                "Closed by controller {}: its create was answered 503 (etcd unavailable) and reached etcd only later, so its client does not know it.",
                                cluster.name()
                            ),
                        );
                        if let Ok(true) = cluster.update_request(&nv, r.mod_revision, None).await {
                            tracing::warn!(
                                request = id,
                                "cluster: closed a request whose create had been answered 503 and was committed later"
                            );
                            return;
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        });
    }

    /// The request created for a client's `Idempotency-Key` `idem` (as sent, without the
    /// prefix), if both the key and the request exist.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub async fn idempotent_request(
        &self,
        idem: &str,
    ) -> Result<Option<SharedRequest>, ClusterError> {
        self.idem_request(&self.key(&format!("idem/{idem}"))).await
    }

    /// The request an idempotency key names, if both exist.
    async fn idem_request(&self, key: &str) -> Result<Option<SharedRequest>, ClusterError> {
        let resp = self
            .read(Txn::new().and_then([TxnOp::get(key, None)]))
            .await?;
        let Some(kv) = gets(&resp.op_responses(), 0).into_iter().next() else {
            return Ok(None);
        };
        let id: u64 = decode(kv.key(), kv.value())?;
        Ok(self.request(id).await?.map(|r| r.value))
    }

    /// Request `id` with its mod revision.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub async fn request(&self, id: u64) -> Result<Option<Versioned<SharedRequest>>, ClusterError> {
        let resp = self
            .read(Txn::new().and_then([TxnOp::get(self.request_key(id), None)]))
            .await?;
        gets(&resp.op_responses(), 0)
            .first()
            .map(|kv| {
                Ok(Versioned {
                    value: decode(kv.key(), kv.value())?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// Request `id` to change with a guarded write: from the in-memory copy when it has
    /// the request (a copy that is behind only makes the write's compare fail, and the
    /// caller then reads etcd with [`Cluster::request`]), else from etcd.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when the copy cannot answer and etcd cannot be read.
    pub async fn request_to_change(
        &self,
        id: u64,
    ) -> Result<Option<Versioned<SharedRequest>>, ClusterError> {
        match self.copied_request(id) {
            Some((_, Some(r))) => Ok(Some((*r).clone())),
            _ => self.request(id).await,
        }
    }

    /// `write` with `r` put (and `delete_assignment` deleted).
    fn request_write(
        &self,
        write: Write,
        r: &SharedRequest,
        delete_assignment: Option<(&str, &str)>,
    ) -> Write {
        let write = write.put(&self.request_key(r.id), encode(r));
        match delete_assignment {
            Some((c, d)) => write.delete(&self.assign_key(c, d)),
            None => write,
        }
    }

    /// Write `r` if its key still has `mod_revision` (nobody changed it since it was read);
    /// `Ok(false)` when it changed. `delete_assignment`: also delete that assignment key in
    /// the same transaction.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot take the write.
    pub async fn update_request(
        &self,
        r: &SharedRequest,
        mod_revision: i64,
        delete_assignment: Option<(&str, &str)>,
    ) -> Result<bool, ClusterError> {
        let guard = Write::new().if_mod_revision(&self.request_key(r.id), mod_revision);
        let write = self.request_write(guard, r, delete_assignment);
        Ok(self.write(write).await?.succeeded)
    }

    /// As [`Cluster::update_request`], also guarded by `leadership`'s election revision:
    /// the scheduler's writes (expiry, sending a dead owner's request back to the queue).
    ///
    /// # Errors
    /// [`ClusterError::NotLeader`] when the election is lost; `Ok(false)` when the request
    /// changed since it was read.
    pub async fn update_request_as_leader(
        &self,
        leadership: &Leadership,
        r: &SharedRequest,
        mod_revision: i64,
        delete_assignment: Option<(&str, &str)>,
    ) -> Result<bool, ClusterError> {
        let key = self.request_key(r.id);
        let guard = Write::new()
            .if_mod_revision(&key, mod_revision)
            .if_create_revision(&self.scheduler_key(), leadership.revision)
            .else_get(&key);
        let written = self
            .write(self.request_write(guard, r, delete_assignment))
            .await?;
        if written.succeeded {
            return Ok(true);
        }
        // Which compare failed: the request changed (fine, next pass) or the election.
        match gets(&written.responses, 0).first() {
            Some(kv) if kv.mod_revision() != mod_revision => Ok(false),
            _ => Err(ClusterError::NotLeader(leadership.revision)),
        }
    }

    /// The assignment transaction: hand `device` of `controller` to `r` (read at
    /// `mod_revision`, waiting) only if the device has no assignment, the request is
    /// unchanged and this controller still holds the election at `leadership`'s revision.
    /// `Ok(false)` when the device or the request changed; [`ClusterError::NotLeader`] when
    /// the election is gone.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot take the write.
    pub async fn assign(
        &self,
        leadership: &Leadership,
        r: &SharedRequest,
        mod_revision: i64,
        controller: &str,
        device: &str,
    ) -> Result<bool, ClusterError> {
        let akey = self.assign_key(controller, device);
        let rkey = self.request_key(r.id);
        let write = Write::new()
            .if_create_revision(&akey, 0)
            .if_mod_revision(&rkey, mod_revision)
            .if_create_revision(&self.scheduler_key(), leadership.revision)
            .put(&akey, encode(&Assignment { request: r.id }))
            .put(&rkey, encode(r))
            .else_get(&self.scheduler_key());
        let written = self.write(write).await?;
        if written.succeeded {
            return Ok(true);
        }
        match gets(&written.responses, 0).first() {
            Some(kv) if kv.create_revision() == leadership.revision => Ok(false),
            _ => Err(ClusterError::NotLeader(leadership.revision)),
        }
    }

    /// Delete an assignment key, only if it still holds `request` (its owner is done
    /// with it: returned and verified, or failed).
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot take the write.
    pub async fn release_assignment(
        &self,
        controller: &str,
        device: &str,
        request: u64,
    ) -> Result<bool, ClusterError> {
        let akey = self.assign_key(controller, device);
        let write = Write::new()
            .if_value(&akey, encode(&Assignment { request }))
            .delete(&akey);
        Ok(self.write(write).await?.succeeded)
    }

    /// How long an ended request stays in etcd (`cluster.keep_closed_s`).
    #[must_use]
    pub fn keep_closed(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.inner.config.keep_closed_s)
    }

    /// Delete ended requests, each `(id, mod_revision)` as read, with the idempotency keys
    /// that name them, one guarded write per request (unchanged since read, and
    /// `leadership`'s election revision), sent together. Returns how many went.
    ///
    /// # Errors
    /// [`ClusterError::NotLeader`] when the election is lost; [`ClusterError::Unavailable`]
    /// when etcd cannot take the writes.
    pub async fn delete_requests_as_leader(
        &self,
        leadership: &Leadership,
        ended: &[(u64, i64)],
    ) -> Result<usize, ClusterError> {
        if ended.is_empty() {
            return Ok(0);
        }
        let resp = self
            .read(Txn::new().and_then([TxnOp::get(
                self.key("idem/"),
                Some(GetOptions::new().with_prefix()),
            )]))
            .await?;
        let idem: Vec<(String, u64)> = gets(&resp.op_responses(), 0)
            .iter()
            .filter_map(|kv| {
                Some((
                    String::from_utf8(kv.key().to_vec()).ok()?,
                    serde_json::from_slice(kv.value()).ok()?,
                ))
            })
            .collect();
        let mut writes = tokio::task::JoinSet::new();
        for &(id, mod_revision) in ended {
            let key = self.request_key(id);
            let mut write = Write::new()
                .if_mod_revision(&key, mod_revision)
                .if_create_revision(&self.scheduler_key(), leadership.revision)
                .delete(&key)
                .else_get(&self.scheduler_key());
            for (k, _) in idem.iter().filter(|(_, i)| *i == id) {
                write = write.delete(k);
            }
            let cluster = self.clone();
            writes.spawn(async move { cluster.write(write).await });
        }
        let mut gone = 0;
        let mut failed = None;
        while let Some(done) = writes.join_next().await {
            let written = match done {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    failed = Some(e);
                    continue;
                }
                Err(e) => {
                    failed = Some(ClusterError::Refused(format!("deletion task: {e}")));
                    continue;
                }
            };
            if written.succeeded {
                gone += 1;
                continue;
            }
            match gets(&written.responses, 0).first() {
                Some(kv) if kv.create_revision() == leadership.revision => {}
                _ => failed = Some(ClusterError::NotLeader(leadership.revision)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(gone),
        }
    }

    /// Requests, assignments and published devices at one revision.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub async fn queue_snapshot(&self) -> Result<QueueSnapshot, ClusterError> {
        let prefixed = |k: &str| TxnOp::get(self.key(k), Some(GetOptions::new().with_prefix()));
        let resp = self
            .read(Txn::new().and_then([
                prefixed("requests/"),
                prefixed("assign/"),
                prefixed("devices/"),
            ]))
            .await?;
        let responses = resp.op_responses();
        let mut snap = QueueSnapshot::default();
        let mut requests = Vec::new();
        for kv in gets(&responses, 0) {
            requests.push(Arc::new(Versioned {
                value: decode(kv.key(), kv.value())?,
                mod_revision: kv.mod_revision(),
            }));
        }
        let tail = |kv: &etcd_client::KeyValue, what: &str| -> Option<(String, String)> {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rest = key.strip_prefix(&self.key(what))?;
            let (c, d) = rest.split_once('/')?;
            Some((c.to_owned(), d.to_owned()))
        };
        for kv in gets(&responses, 1) {
            if let Some((controller, device)) = tail(&kv, "assign/") {
                snap.assignments.push(AssignmentRow {
                    controller,
                    device,
                    assignment: decode(kv.key(), kv.value())?,
                    create_revision: kv.create_revision(),
                });
            }
        }
        for kv in gets(&responses, 2) {
            if let Some((controller, _)) = tail(&kv, "devices/") {
                snap.devices
                    .push((controller, decode(kv.key(), kv.value())?));
            }
        }
        let held: std::collections::HashSet<u64> = snap
            .assignments
            .iter()
            .map(|a| a.assignment.request)
            .collect();
        let mut ended = Vec::new();
        for r in requests {
            if in_passes(&r.value, held.contains(&r.value.id)) {
                snap.requests.push(r);
            } else {
                ended.push(EndedRow {
                    id: r.value.id,
                    mod_revision: r.mod_revision,
                    ended: ended_at(&r.value),
                });
            }
        }
        ended.sort_by_key(|e| (e.ended, e.id));
        ended.truncate(ENDED_IN_SNAPSHOT);
        snap.oldest_ended = ended;
        Ok(snap)
    }

    /// The open requests and every published device: the request list without ended
    /// requests. One linearizable read of etcd's revision (no records), then the in-memory
    /// copy once it includes that revision (so the list shows whatever was acknowledged
    /// before the call, on any controller); else [`Cluster::all_requests`], filtered. The
    /// copy holds no ended requests' records, so a day of them costs this list nothing.
    ///
    /// The copy learns revisions only from events under the prefix: when another
    /// application's write to the same etcd made the last revision, the copy never reaches
    /// it, so the wait is short ([`COPY_CATCH_UP`]) before the read of every request.
    /// (A requested progress notification could tell, but in Debian's etcd 3.4.23 it may
    /// run ahead of events not yet sent: etcd issue 15220, fixed in later releases.)
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub async fn open_requests(&self) -> Result<RequestList, ClusterError> {
        let at = self.current_revision().await?;
        self.wait_for_copy(at, COPY_CATCH_UP).await;
        if let Some(open) = self.open_requests_from_copy(at) {
            return Ok(open);
        }
        let (mut requests, devices) = self.all_requests().await?;
        requests.retain(|r| r.state.is_open());
        Ok((requests, devices))
    }

    /// Every request (ended ones too, as long as they are kept) and every published
    /// device, at one revision: the request list with ended requests.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read.
    pub async fn all_requests(&self) -> Result<RequestList, ClusterError> {
        let prefixed = |k: &str| TxnOp::get(self.key(k), Some(GetOptions::new().with_prefix()));
        let resp = self
            .read(Txn::new().and_then([prefixed("requests/"), prefixed("devices/")]))
            .await?;
        let responses = resp.op_responses();
        let requests = gets(&responses, 0)
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect::<Result<Vec<SharedRequest>, _>>()?;
        let mut devices = Vec::new();
        let dir = self.key("devices/");
        for kv in gets(&responses, 1) {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some((controller, _)) = key.strip_prefix(&dir).and_then(|r| r.split_once('/')) {
                devices.push((controller.to_owned(), decode(kv.key(), kv.value())?));
            }
        }
        Ok((requests, devices))
    }

    /// Wait until request `id`'s key changes after `revision` (or `within` passes), with a
    /// watch on the key: [`Cluster::wait_request_change`] when the in-memory copy is not
    /// live. Returns early, without error, when etcd cannot be watched.
    pub(super) async fn watch_request_key(
        &self,
        id: u64,
        revision: i64,
        within: std::time::Duration,
    ) {
        let key = self.request_key(id);
        let watch = self
            .inner
            .etcd
            .call(self.inner.config.timeout(), |mut c| {
                let key = key.clone();
                async move {
                    c.watch(
                        key,
                        Some(etcd_client::WatchOptions::new().with_start_revision(revision + 1)),
                    )
                    .await
                }
            })
            .await;
        let Ok(mut stream) = watch else {
            tokio::time::sleep(within.min(std::time::Duration::from_millis(200))).await;
            return;
        };
        let _ = tokio::time::timeout(within, async {
            while let Ok(Some(resp)) = stream.message().await {
                if !resp.events().is_empty() || resp.canceled() {
                    return;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_lines_and_counts_on() {
        let mut r = test_request(7, "alice");
        for i in 0..(MAX_LOG_LINES as u64 + 5) {
            r.push_log(Millis(i), "api", format!("line {i}"));
        }
        assert_eq!(r.log.len(), MAX_LOG_LINES);
        assert_eq!(r.log[0].seq, 6, "the five oldest went");
        assert_eq!(r.log[0].message, "line 5");
        let last = r.log.last().expect("line");
        assert_eq!((last.seq, last.ts), (MAX_LOG_LINES as u64 + 5, Millis(54)));
    }

    #[test]
    fn records_written_before_the_log_existed_still_decode() {
        let mut v = serde_json::to_value(test_request(7, "alice")).expect("json");
        let o = v.as_object_mut().expect("object");
        o.remove("log");
        o.remove("ended");
        assert!(!o.contains_key("requeued"), "not written while absent");
        let r: SharedRequest = serde_json::from_value(v).expect("decodes");
        assert!(r.log.is_empty());
        assert_eq!(r.ended, None);
        assert_eq!((r.requeued, r.waiting_since()), (None, Millis(7)));
    }

    #[test]
    fn a_request_back_in_the_queue_waits_from_then() {
        let mut r = test_request(7, "alice");
        r.state = RequestState::Pending;
        r.device = Some("sim-0001".into());
        r.owner = Some("rack-a".into());
        r.requeue(Millis(90), "owner", "back to the queue: test");
        assert_eq!(r.state, RequestState::Queued);
        assert_eq!((&r.device, &r.owner), (&None, &None));
        assert_eq!((r.since, r.waiting_since()), (Millis(7), Millis(90)));
        assert_eq!(r.log.last().map(|l| l.ts), Some(Millis(90)));
        let back: SharedRequest =
            serde_json::from_value(serde_json::to_value(&r).expect("json")).expect("decodes");
        assert_eq!(back.requeued, Some(Millis(90)));
    }
}
