//! The in-memory copy of the shared queue: requests, assignments, published devices and the
//! controllers' member keys, with their revisions, kept by one task per controller so the
//! scheduler and owner passes, the status long polls and the directory (device calls, the
//! whole-pool list) do not range-read etcd over and over.
//!
//! The task reads its four prefixes in one transaction (one revision R), then watches the
//! whole key prefix from R + 1 and applies every event. When the watch fails, is cancelled
//! (etcd compacted past the revision it asked for, or the member lost its leader: the
//! client sends require-leader) or ends, the copy is read again. The copy only moves
//! forward: a later read is linearizable, so it is at least as new as anything seen.
//! A copy that is behind is harmless: every write is compare-guarded and loses its race.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::directory::{Directory, Holder};
use super::requests::{
    AssignmentRow, ENDED_IN_SNAPSHOT, EndedRow, QueueSnapshot, RequestList, SharedRequest,
    Versioned, ended_at, in_passes,
};
use super::{Cluster, ClusterError, Member, PublishedDevice, lock};

/// Pause before reading again after a failed read or watch.
const RETRY: Duration = Duration::from_millis(300);

/// The copy itself. Keyed so events apply in O(log n); turned into a [`QueueSnapshot`]
/// only when a pass asks for one.
#[derive(Debug, Default)]
pub(super) struct Copy {
    /// A read succeeded at least once.
    synced: bool,
    /// A watch is open and applying events: the copy follows etcd within milliseconds.
    live: bool,
    /// The revision the copy reflects.
    revision: i64,
    /// The requests the passes work on ([`in_passes`]): open ones, and ended ones whose
    /// device's assignment is still there. What a snapshot holds.
    requests: BTreeMap<u64, Arc<Versioned<SharedRequest>>>,
    /// The other requests kept in etcd (ended, device freed), without their records: a
    /// day of them (`cluster.keep_closed_s`) would otherwise hold every log in memory on
    /// every controller. Calls about one of them read it from etcd.
    ended: HashMap<u64, EndedRow>,
    /// [`Copy::ended`] by when each ended: the sweep takes them from the front.
    by_end: BTreeSet<(crate::domain::clock::Millis, u64)>,
    /// How many assignments name each request.
    held: HashMap<u64, usize>,
    assignments: BTreeMap<(String, String), AssignmentRow>,
    devices: BTreeMap<(String, String), PublishedDevice>,
    /// `controllers/<name>`: who is present and where its API answers.
    members: BTreeMap<String, Member>,
    /// The snapshot last handed out, kept until the copy changes: the scheduler pass, the
    /// owner pass and the status polls of one revision share one build (a build clones
    /// every published device).
    cached: Option<Arc<QueueSnapshot>>,
}

/// What one event changed, for the wake-ups that follow it.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    /// The request whose key it was.
    request: Option<u64>,
    /// It concerns this controller's owner side: one of its assignments or published
    /// devices, or a request assigned to one of its devices before or after the event.
    owner: bool,
}

/// What a key under the prefix is, for the copy.
enum Key {
    Request(u64),
    Assignment(String, String),
    Device(String, String),
    Member(String),
    Other,
}

fn classify_key(prefix: &str, key: &[u8]) -> Key {
    let Some(rest) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
    else {
        return Key::Other;
    };
    let pair = |s: &str| s.split_once('/').map(|(c, d)| (c.to_owned(), d.to_owned()));
    if let Some(id) = rest.strip_prefix("requests/") {
        return id.parse().map_or(Key::Other, Key::Request);
    }
    if let Some((c, d)) = rest.strip_prefix("assign/").and_then(pair) {
        return Key::Assignment(c, d);
    }
    if let Some((c, d)) = rest.strip_prefix("devices/").and_then(pair) {
        return Key::Device(c, d);
    }
    if let Some(name) = rest.strip_prefix("controllers/") {
        return Key::Member(name.to_owned());
    }
    Key::Other
}

impl Copy {
    /// Whether request `id`, as the copy holds it now, is assigned to a device of `me`.
    fn owned_by(&self, id: u64, me: &str) -> bool {
        self.requests
            .get(&id)
            .is_some_and(|r| r.value.owner.as_deref() == Some(me))
    }

    /// Apply a put of `kv` (a value that does not decode is dropped from the copy and
    /// logged: the range read would fail on it too). `me`: this controller's name.
    fn put(&mut self, prefix: &str, kv: &KeyValue, me: &str) -> Applied {
        self.put_raw(
            prefix,
            kv.key(),
            kv.value(),
            (kv.mod_revision(), kv.create_revision()),
            me,
        )
    }

    /// [`Copy::put`] of a key and value with their (mod, create) revisions.
    fn put_raw(
        &mut self,
        prefix: &str,
        raw_key: &[u8],
        raw_value: &[u8],
        (mod_revision, create_revision): (i64, i64),
        me: &str,
    ) -> Applied {
        self.cached = None;
        let bad = |e: serde_json::Error| {
            tracing::warn!(key = %String::from_utf8_lossy(raw_key), error = %e, "cluster: undecodable value in the queue");
        };
        let key = classify_key(prefix, raw_key);
        let applied = self.touches(&key, me);
        match key {
            Key::Request(id) => match serde_json::from_slice::<SharedRequest>(raw_value) {
                Ok(value) => {
                    let owner = applied.owner || value.owner.as_deref() == Some(me);
                    self.remove_request(id);
                    self.keep(Arc::new(Versioned {
                        value,
                        mod_revision,
                    }));
                    return Applied { owner, ..applied };
                }
                Err(e) => {
                    bad(e);
                    self.remove_request(id);
                }
            },
            Key::Assignment(c, d) => match serde_json::from_slice(raw_value) {
                Ok(assignment) => {
                    self.set_assignment(
                        (c.clone(), d.clone()),
                        Some(AssignmentRow {
                            controller: c,
                            device: d,
                            assignment,
                            create_revision,
                        }),
                    );
                }
                Err(e) => {
                    bad(e);
                    self.set_assignment((c, d), None);
                }
            },
            Key::Device(c, d) => match serde_json::from_slice(raw_value) {
                Ok(view) => {
                    self.devices.insert((c, d), view);
                }
                Err(e) => {
                    bad(e);
                    self.devices.remove(&(c, d));
                }
            },
            Key::Member(name) => match serde_json::from_slice(raw_value) {
                Ok(member) => {
                    self.members.insert(name, member);
                }
                Err(e) => {
                    bad(e);
                    self.members.remove(&name);
                }
            },
            Key::Other => {}
        }
        applied
    }

    /// What a change of `key` concerns, judged before it is applied.
    fn touches(&self, key: &Key, me: &str) -> Applied {
        match key {
            Key::Request(id) => Applied {
                request: Some(*id),
                owner: self.owned_by(*id, me),
            },
            Key::Assignment(c, _) | Key::Device(c, _) => Applied {
                request: None,
                owner: c == me,
            },
            Key::Member(_) | Key::Other => Applied::default(),
        }
    }

    fn delete(&mut self, prefix: &str, key: &[u8], me: &str) -> Applied {
        self.cached = None;
        let key = classify_key(prefix, key);
        let applied = self.touches(&key, me);
        match key {
            Key::Request(id) => self.remove_request(id),
            Key::Assignment(c, d) => self.set_assignment((c, d), None),
            Key::Device(c, d) => {
                self.devices.remove(&(c, d));
            }
            Key::Member(name) => {
                self.members.remove(&name);
            }
            Key::Other => {}
        }
        applied
    }

    /// Who holds each assigned device: an assignment whose request is still open and
    /// names that device and controller (between a return and the owner freeing the
    /// assignment, the request is closed and nobody holds the device).
    fn holders(&self) -> BTreeMap<(String, String), Holder> {
        self.assignments
            .iter()
            .filter_map(|(key, a)| {
                let r = &self.requests.get(&a.assignment.request)?.value;
                let same = r.device.as_deref() == Some(a.device.as_str())
                    && r.owner.as_deref() == Some(a.controller.as_str());
                (same && r.state.holds_device()).then(|| {
                    let holder = Holder {
                        request: r.id,
                        assignee: r.spec.assignee.clone(),
                        expires: r.expires,
                    };
                    (key.clone(), holder)
                })
            })
            .collect()
    }

    /// Keep request `r` (not yet in the copy): its record if the passes work on it, else
    /// only its [`EndedRow`].
    fn keep(&mut self, r: Arc<Versioned<SharedRequest>>) {
        let id = r.value.id;
        if in_passes(&r.value, self.held.contains_key(&id)) {
            self.requests.insert(id, r);
        } else {
            let row = EndedRow {
                id,
                mod_revision: r.mod_revision,
                ended: ended_at(&r.value),
            };
            self.by_end.insert((row.ended, id));
            self.ended.insert(id, row);
        }
    }

    fn remove_request(&mut self, id: u64) {
        self.requests.remove(&id);
        if let Some(row) = self.ended.remove(&id) {
            self.by_end.remove(&(row.ended, id));
        }
    }

    /// After request `id`'s assignments changed: an ended request whose device was freed
    /// drops its record. (The reverse cannot happen: the scheduler assigns only waiting
    /// requests, and a read of the whole queue applies assignments before requests.)
    fn reindex(&mut self, id: u64) {
        let held = self.held.contains_key(&id);
        let freed = self
            .requests
            .get(&id)
            .is_some_and(|r| !in_passes(&r.value, held));
        if freed && let Some(r) = self.requests.remove(&id) {
            self.keep(r);
        }
    }

    /// Every published device with its controller.
    fn device_views(&self) -> Vec<(String, PublishedDevice)> {
        self.devices
            .iter()
            .map(|((c, _), v)| (c.clone(), v.clone()))
            .collect()
    }

    /// Set (or with `None` delete) the assignment of a device, keeping the requests it
    /// names in the right index.
    fn set_assignment(&mut self, key: (String, String), row: Option<AssignmentRow>) {
        let new = row.as_ref().map(|r| r.assignment.request);
        let old = match row {
            Some(row) => self.assignments.insert(key, row),
            None => self.assignments.remove(&key),
        }
        .map(|r| r.assignment.request);
        if old == new {
            return;
        }
        if let Some(id) = old {
            if let Some(n) = self.held.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&id);
                }
            }
            self.reindex(id);
        }
        if let Some(id) = new {
            *self.held.entry(id).or_default() += 1;
        }
    }

    /// The snapshot of the copy as it is now: built once per change and shared.
    fn snapshot(&mut self) -> Arc<QueueSnapshot> {
        let snap = self.cached.get_or_insert_with(|| {
            Arc::new(QueueSnapshot {
                requests: self.requests.values().cloned().collect(),
                oldest_ended: self
                    .by_end
                    .iter()
                    .take(ENDED_IN_SNAPSHOT)
                    .filter_map(|(_, id)| self.ended.get(id).copied())
                    .collect(),
                assignments: self.assignments.values().cloned().collect(),
                devices: self
                    .devices
                    .iter()
                    .map(|((c, _), v)| (c.clone(), v.clone()))
                    .collect(),
            })
        });
        snap.clone()
    }
}

/// The copy and its change channels (each carries the copy's revision, 0 before the first
/// read).
#[derive(Debug)]
pub(super) struct Shared {
    copy: std::sync::Mutex<Copy>,
    /// Any change of the copy: the scheduler pass.
    changed: watch::Sender<i64>,
    /// A change that concerns this controller's owner side ([`Applied::owner`]), a new read
    /// of the whole copy, or the watch ending: the owner pass, which otherwise would run
    /// (and build a snapshot) for every event of every controller.
    owner_changed: watch::Sender<i64>,
    /// The status long polls waiting on a request, by request id: a change of that request
    /// (or a new read, or the watch ending) wakes its polls only, not every poll of the
    /// controller on every event.
    waiters: std::sync::Mutex<HashMap<u64, watch::Sender<i64>>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            copy: std::sync::Mutex::default(),
            changed: watch::channel(0).0,
            owner_changed: watch::channel(0).0,
            waiters: std::sync::Mutex::default(),
        }
    }
}

impl Shared {
    /// Wake the polls waiting on `ids` (`None`: every poll).
    fn wake_waiters(&self, ids: Option<&[u64]>, revision: i64) {
        let waiters = lock(&self.waiters);
        match ids {
            Some(ids) => {
                for id in ids {
                    if let Some(w) = waiters.get(id) {
                        w.send_replace(revision);
                    }
                }
            }
            None => {
                for w in waiters.values() {
                    w.send_replace(revision);
                }
            }
        }
    }

    /// Everyone following the copy: it was read again, or its watch ended.
    fn wake_all(&self, revision: i64) {
        self.changed.send_replace(revision);
        self.owner_changed.send_replace(revision);
        self.wake_waiters(None, revision);
    }

    /// Follow request `id` for a status long poll.
    fn waiter(&self, id: u64) -> Waiter<'_> {
        let rx = lock(&self.waiters)
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            shared: self,
            id,
            rx: Some(rx),
        }
    }
}

/// A status long poll's subscription to one request's changes; the last one of a request
/// removes its entry.
struct Waiter<'a> {
    shared: &'a Shared,
    id: u64,
    rx: Option<watch::Receiver<i64>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // The receiver goes first, so the count below no longer includes it.
        drop(self.rx.take());
        let mut waiters = lock(&self.shared.waiters);
        if waiters
            .get(&self.id)
            .is_some_and(|w| w.receiver_count() == 0)
        {
            waiters.remove(&self.id);
        }
    }
}

/// Keep the copy until `stop`.
pub(super) async fn run(cluster: Cluster, stop: CancellationToken) {
    let inner = &cluster.inner;
    let prefix = inner.config.prefix.clone();
    let me = inner.name.clone();
    let mut touched: Vec<u64> = Vec::new();
    loop {
        let from = match read(&cluster).await {
            Ok(rev) => rev + 1,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot read the queue");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let watched = inner
            .etcd
            .call(inner.config.timeout(), |mut c| {
                let (key, opts) = (prefix.clone(), opts.clone());
                async move { c.watch(key, Some(opts)).await }
            })
            .await;
        let mut stream = match watched {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot watch the queue");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        lock(&inner.queue.copy).live = true;
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) if !resp.canceled() && resp.compact_revision() == 0 => {
                    if resp.events().is_empty() {
                        continue;
                    }
                    touched.clear();
                    let mut owner = false;
                    let revision = {
                        let mut copy = lock(&inner.queue.copy);
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            let applied = match e.event_type() {
                                EventType::Put => copy.put(&prefix, kv, &me),
                                EventType::Delete => copy.delete(&prefix, kv.key(), &me),
                            };
                            owner |= applied.owner;
                            touched.extend(applied.request);
                            copy.revision = copy.revision.max(kv.mod_revision());
                        }
                        copy.revision
                    };
                    inner.queue.changed.send_replace(revision);
                    if owner {
                        inner.queue.owner_changed.send_replace(revision);
                    }
                    if !touched.is_empty() {
                        inner.queue.wake_waiters(Some(&touched), revision);
                    }
                }
                other => {
                    // Compacted past our revision, cancelled (the member lost its leader),
                    // closed or failed: read the whole queue again.
                    tracing::debug!(outcome = ?other.as_ref().map(|r| r.as_ref().map(etcd_client::WatchResponse::cancel_reason)), "cluster: queue watch ended; reading again");
                    break;
                }
            }
        }
        let revision = {
            let mut copy = lock(&inner.queue.copy);
            copy.live = false;
            copy.revision
        };
        // Polls following the copy go to watching their key; the passes look again.
        inner.queue.wake_all(revision);
    }
}

/// Read requests, assignments and devices at one revision into the copy; returns it.
async fn read(cluster: &Cluster) -> Result<i64, ClusterError> {
    let inner = &cluster.inner;
    let prefix = &inner.config.prefix;
    let prefixed = |k: &str| {
        TxnOp::get(
            format!("{prefix}{k}"),
            Some(GetOptions::new().with_prefix()),
        )
    };
    // Assignments first: whether an ended request keeps its record depends on them.
    let txn = Txn::new().and_then([
        prefixed("assign/"),
        prefixed("devices/"),
        prefixed("controllers/"),
        prefixed("requests/"),
    ]);
    let resp = inner.etcd.txn(inner.config.timeout(), txn).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut fresh = Copy::default();
    for op in resp.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op {
            for kv in g.kvs() {
                fresh.put(prefix, kv, "");
            }
        }
    }
    {
        let mut copy = lock(&inner.queue.copy);
        if revision < copy.revision {
            // An endpoint behind the copy (cannot happen with linearizable reads; kept
            // so the copy never moves backwards).
            return Ok(copy.revision);
        }
        fresh.synced = true;
        fresh.revision = revision;
        *copy = fresh;
    }
    inner.queue.wake_all(revision);
    Ok(revision)
}

impl Cluster {
    /// The in-memory copy of the queue and the revision it reflects; `None` until the
    /// first read succeeded (or when [`Cluster::start`] was not called). Built once per
    /// change of the copy and shared by everyone asking until the next one.
    #[must_use]
    pub fn queue_copy(&self) -> Option<(i64, Arc<QueueSnapshot>)> {
        let mut copy = lock(&self.inner.queue.copy);
        copy.synced.then(|| (copy.revision, copy.snapshot()))
    }

    /// The queue as this controller knows it now: the in-memory copy while a watch feeds
    /// it (no etcd call; first given up to 250 ms to include this controller's own last
    /// write), else one etcd read at one revision ([`Cluster::queue_snapshot`]).
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when the copy is not live and etcd cannot be read.
    pub async fn current_queue(&self) -> Result<Arc<QueueSnapshot>, ClusterError> {
        self.wait_for_copy(self.last_write_revision(), Duration::from_millis(250))
            .await;
        let live = {
            let mut copy = lock(&self.inner.queue.copy);
            (copy.synced && copy.live).then(|| copy.snapshot())
        };
        match live {
            Some(snap) => Ok(snap),
            None => Ok(Arc::new(self.queue_snapshot().await?)),
        }
    }

    /// Request `id` as the copy holds it, when a live watch feeds the copy and the record
    /// there is newer than `revision` (a status long poll woken by its change reads it
    /// here, not from etcd: the copy applies etcd's events in revision order, so this is a
    /// committed version later than the one the poll started from). `None` also for a
    /// request that ended and freed its device: the copy keeps no record of those.
    #[must_use]
    pub fn request_after(&self, id: u64, revision: i64) -> Option<Arc<Versioned<SharedRequest>>> {
        let copy = lock(&self.inner.queue.copy);
        if !(copy.synced && copy.live) {
            return None;
        }
        copy.requests
            .get(&id)
            .filter(|r| r.mod_revision > revision)
            .cloned()
    }

    /// The directory (who publishes which device, where each controller answers) from the
    /// copy: when a watch is feeding it right now, as fresh as etcd's last event, at no
    /// etcd call; with `stale_ok`, also what the copy last knew while its watch is down.
    pub(super) fn directory_from_copy(&self, stale_ok: bool) -> Option<Directory> {
        let copy = lock(&self.inner.queue.copy);
        if !(copy.synced && (copy.live || stale_ok)) {
            return None;
        }
        let mut devices = copy.device_views();
        devices.sort_by(|a, b| a.1.name.as_str().cmp(b.1.name.as_str()).then(a.0.cmp(&b.0)));
        Some(Directory {
            revision: copy.revision,
            members: copy.members.clone(),
            devices,
            holders: copy.holders(),
        })
    }

    /// The open requests and every published device, from a copy fed by a live watch that
    /// includes revision `at`; `None` otherwise.
    pub(super) fn open_requests_from_copy(&self, at: i64) -> Option<RequestList> {
        let copy = lock(&self.inner.queue.copy);
        if !(copy.synced && copy.live && copy.revision >= at) {
            return None;
        }
        let requests = copy
            .requests
            .values()
            .filter(|r| r.value.state.is_open())
            .map(|r| r.value.clone())
            .collect();
        Some((requests, copy.device_views()))
    }

    /// Who holds each assigned device, as the copy knows it now (live or not; empty
    /// before its first read).
    pub(super) fn holders_from_copy(&self) -> BTreeMap<(String, String), Holder> {
        lock(&self.inner.queue.copy).holders()
    }

    /// Request `id` from the copy while a watch feeds it: the copy's revision and the
    /// record (`None` when the copy has no record of it: no such request, or one that
    /// ended and freed its device); `None` when the copy is not live.
    pub(super) fn copied_request(
        &self,
        id: u64,
    ) -> Option<(i64, Option<Arc<Versioned<SharedRequest>>>)> {
        let copy = lock(&self.inner.queue.copy);
        (copy.synced && copy.live).then(|| (copy.revision, copy.requests.get(&id).cloned()))
    }

    /// Wait (at most `within`) until the copy reflects `revision`, while a watch feeds it;
    /// at once when it is not live.
    pub async fn wait_for_copy(&self, revision: i64, within: Duration) {
        if self.live_revision().is_none() {
            return;
        }
        let mut changes = self.queue_changes();
        let _ = tokio::time::timeout(within, changes.wait_for(|at| *at >= revision)).await;
    }

    /// Follow the copy: the value (its revision) changes whenever it does.
    #[must_use]
    pub fn queue_changes(&self) -> watch::Receiver<i64> {
        self.inner.queue.changed.subscribe()
    }

    /// Follow what the owner pass reads in the copy: the value (the copy's revision)
    /// changes with an event about one of this controller's assignments or published
    /// devices, or a request assigned to one of its devices (before or after the event),
    /// and when the copy is read again or its watch ends. Other events leave it alone.
    #[must_use]
    pub fn owner_changes(&self) -> watch::Receiver<i64> {
        self.inner.queue.owner_changed.subscribe()
    }

    /// The copy's revision when a watch is feeding it right now.
    fn live_revision(&self) -> Option<i64> {
        let copy = lock(&self.inner.queue.copy);
        (copy.synced && copy.live).then_some(copy.revision)
    }

    /// Request `id` in the copy changed after `revision` (or is gone), as far as a copy
    /// fed by a live watch can tell; `None` when the copy is not live.
    fn copy_changed(&self, id: u64, revision: i64) -> Option<bool> {
        let copy = lock(&self.inner.queue.copy);
        if !(copy.synced && copy.live) {
            return None;
        }
        if copy.revision <= revision {
            return Some(false);
        }
        let now = copy
            .requests
            .get(&id)
            .map(|r| r.mod_revision)
            .or_else(|| copy.ended.get(&id).map(|e| e.mod_revision));
        Some(now != Some(revision))
    }

    /// Wait until request `id`'s key changes after `revision` (or `within` passes): the
    /// status long poll. Follows the in-memory copy while its watch is live (no etcd call
    /// per poll, and only a change of this request wakes it); otherwise watches the key
    /// itself. Returns early, without error, when etcd cannot be watched (the caller reads
    /// again and answers).
    pub async fn wait_request_change(&self, id: u64, revision: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        if self.live_revision().is_some() {
            // Subscribed before the copy is looked at: a change applied after the look
            // wakes this poll.
            let mut waiter = self.inner.queue.waiter(id);
            let Some(changes) = waiter.rx.as_mut() else {
                return;
            };
            loop {
                changes.borrow_and_update();
                match self.copy_changed(id, revision) {
                    Some(true) => return,
                    Some(false) => {}
                    None => break,
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    () = tokio::time::sleep_until(deadline) => return,
                }
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.watch_request_key(id, revision, left).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::requests::test_request;
    use crate::domain::clock::Millis;
    use crate::domain::request_state::RequestState;

    const PREFIX: &str = "/mp/";

    /// A waiting request, or one pending on `owner`'s sim-0001, as etcd holds it.
    fn request(id: u64, owner: Option<&str>) -> Vec<u8> {
        let mut r = test_request(id, "alice");
        if let Some(owner) = owner {
            r.state = RequestState::Pending;
            r.device = Some("sim-0001".to_owned());
            r.owner = Some(owner.to_owned());
        }
        serde_json::to_vec(&r).expect("encode")
    }

    fn put(copy: &mut Copy, key: &str, value: &[u8], revision: i64) -> Applied {
        copy.put_raw(
            PREFIX,
            format!("{PREFIX}{key}").as_bytes(),
            value,
            (revision, revision),
            "rack-a",
        )
    }

    #[test]
    fn only_events_about_this_racks_devices_concern_its_owner() {
        let mut copy = Copy::default();
        let a = put(&mut copy, "requests/7", &request(7, None), 2);
        assert_eq!((a.request, a.owner), (Some(7), false), "a waiting request");
        let a = put(&mut copy, "requests/8", &request(8, Some("rack-b")), 3);
        assert_eq!((a.request, a.owner), (Some(8), false), "another rack's");
        let a = put(&mut copy, "requests/7", &request(7, Some("rack-a")), 4);
        assert_eq!((a.request, a.owner), (Some(7), true), "assigned to us");
        let a = put(&mut copy, "requests/7", &request(7, None), 5);
        assert!(a.owner, "taken back from us: the owner must see it go");
        let assignment = br#"{"request": 7}"#;
        assert!(put(&mut copy, "assign/rack-a/sim-0001", assignment, 6).owner);
        assert!(!put(&mut copy, "assign/rack-b/sim-0001", assignment, 7).owner);
        let device = serde_json::to_vec(&crate::cluster::ready_device("sim-0001")).expect("encode");
        assert!(put(&mut copy, "devices/rack-a/sim-0001", &device, 8).owner);
        assert!(!put(&mut copy, "devices/rack-c/sim-0001", &device, 9).owner);
        let gone = copy.delete(
            PREFIX,
            format!("{PREFIX}assign/rack-a/sim-0001").as_bytes(),
            "rack-a",
        );
        assert!(gone.owner && gone.request.is_none());
        assert!(
            !copy
                .delete(PREFIX, format!("{PREFIX}requests/8").as_bytes(), "rack-a")
                .owner
        );
        assert!(!put(&mut copy, "controllers/rack-b", b"{}", 10).owner);
    }

    #[test]
    fn holders_are_open_requests_their_assignment_names() {
        let mut copy = Copy::default();
        let assignment = |id: u64| format!(r#"{{"request": {id}}}"#);
        // 7: pending on rack-b's sim-0001 (request() assigns sim-0001).
        put(&mut copy, "requests/7", &request(7, Some("rack-b")), 2);
        put(
            &mut copy,
            "assign/rack-b/sim-0001",
            assignment(7).as_bytes(),
            3,
        );
        let holders = copy.holders();
        let h = holders
            .get(&("rack-b".to_owned(), "sim-0001".to_owned()))
            .expect("held");
        assert_eq!(
            (h.request, h.assignee.as_str(), h.expires),
            (7, "alice", Millis(1_000_000))
        );
        assert_eq!(holders.len(), 1);
        // An assignment whose request names another controller's device, or whose request
        // is missing: nobody shown.
        put(
            &mut copy,
            "assign/rack-c/sim-0001",
            assignment(7).as_bytes(),
            4,
        );
        put(
            &mut copy,
            "assign/rack-c/sim-0002",
            assignment(9).as_bytes(),
            5,
        );
        assert_eq!(copy.holders().len(), 1);
        // Returned: closed while its assignment is still there.
        let mut closed: SharedRequest =
            serde_json::from_slice(&request(7, Some("rack-b"))).expect("decode");
        closed.state = RequestState::Closed;
        let closed = serde_json::to_vec(&closed).expect("encode");
        put(&mut copy, "requests/7", &closed, 6);
        assert!(copy.holders().is_empty());
    }

    #[test]
    fn a_snapshot_is_built_once_per_change() {
        let mut copy = Copy::default();
        put(&mut copy, "requests/7", &request(7, None), 2);
        let first = copy.snapshot();
        assert!(Arc::ptr_eq(&first, &copy.snapshot()), "unchanged: shared");
        put(&mut copy, "requests/8", &request(8, None), 3);
        let second = copy.snapshot();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(first.requests.len(), 1, "a snapshot taken stays as it was");
        assert_eq!(second.requests.len(), 2);
        copy.delete(PREFIX, format!("{PREFIX}requests/7").as_bytes(), "rack-a");
        assert_eq!(copy.snapshot().requests.len(), 1);
    }

    /// An ended request stays in the snapshots while its device's assignment is there;
    /// then only the oldest ended ones are named, longest ended first, for the sweep.
    #[test]
    fn ended_requests_leave_the_snapshot_once_their_device_is_freed() {
        let ended = |id: u64, at: u64| {
            let mut r = test_request(id, "alice");
            r.state = RequestState::Closed;
            r.ended = Some(Millis(at));
            serde_json::to_vec(&r).expect("encode")
        };
        let ids = |copy: &mut Copy| -> Vec<u64> {
            copy.snapshot()
                .requests
                .iter()
                .map(|r| r.value.id)
                .collect()
        };
        let swept = |copy: &mut Copy| -> Vec<(u64, i64, u64)> {
            copy.snapshot()
                .oldest_ended
                .iter()
                .map(|e| (e.id, e.mod_revision, e.ended.0))
                .collect()
        };
        let mut copy = Copy::default();
        put(&mut copy, "requests/7", &request(7, Some("rack-a")), 2);
        put(&mut copy, "assign/rack-a/sim-0001", br#"{"request": 7}"#, 3);
        put(&mut copy, "requests/8", &request(8, None), 4);
        put(&mut copy, "requests/7", &ended(7, 500), 5);
        assert_eq!(ids(&mut copy), [7, 8], "7 ended but still holds its device");
        assert!(swept(&mut copy).is_empty());
        // Older ended requests, loaded after their assignment events (a full read applies
        // assignments before requests).
        put(&mut copy, "assign/rack-b/sim-0002", br#"{"request": 9}"#, 6);
        put(&mut copy, "requests/9", &ended(9, 100), 6);
        put(&mut copy, "requests/10", &ended(10, 300), 6);
        assert_eq!(ids(&mut copy), [7, 8, 9]);
        assert_eq!(swept(&mut copy), [(10, 6, 300)]);
        copy.delete(
            PREFIX,
            format!("{PREFIX}assign/rack-a/sim-0001").as_bytes(),
            "rack-a",
        );
        assert_eq!(ids(&mut copy), [8, 9]);
        assert_eq!(swept(&mut copy), [(10, 6, 300), (7, 5, 500)]);
        // The assignment of one device moves to another request: 9 is freed.
        put(&mut copy, "assign/rack-b/sim-0002", br#"{"request": 8}"#, 7);
        assert_eq!(ids(&mut copy), [8]);
        assert_eq!(swept(&mut copy), [(9, 6, 100), (10, 6, 300), (7, 5, 500)]);
        copy.delete(PREFIX, format!("{PREFIX}requests/9").as_bytes(), "rack-a");
        assert_eq!(swept(&mut copy), [(10, 6, 300), (7, 5, 500)]);
        assert!(
            !copy.requests.contains_key(&10) && !copy.requests.contains_key(&7),
            "no record is kept of an ended request whose device is freed"
        );
        assert_eq!(copy.ended.len(), 2);
        // A status poll on 7 still sees its key change when it is deleted.
        copy.delete(PREFIX, format!("{PREFIX}requests/7").as_bytes(), "rack-a");
        assert_eq!(swept(&mut copy), [(10, 6, 300)]);
        assert!(!copy.ended.contains_key(&7));
    }

    #[test]
    fn a_change_wakes_the_polls_of_its_request_only() {
        let shared = Shared::default();
        let mut seven = shared.waiter(7);
        let mut eight = shared.waiter(8);
        let also_seven = shared.waiter(7);
        shared.wake_waiters(Some(&[7]), 5);
        let changed = |w: &mut Waiter<'_>| {
            w.rx.as_mut()
                .expect("subscribed")
                .has_changed()
                .expect("open")
        };
        assert!(changed(&mut seven));
        assert!(!changed(&mut eight));
        shared.wake_all(6);
        assert!(
            changed(&mut eight),
            "a new read or a lost watch wakes everyone"
        );
        drop(seven);
        assert_eq!(lock(&shared.waiters).len(), 2, "7 still has a poll");
        drop(also_seven);
        drop(eight);
        assert!(
            lock(&shared.waiters).is_empty(),
            "no entry outlives its polls"
        );
    }
}
