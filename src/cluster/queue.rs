//! The in-memory copy of the shared queue: requests, assignments, published devices and the
//! controllers' member keys, with their revisions, kept by one task per controller so the
//! scheduler and owner passes, the status long polls and the directory (device calls, the
//! whole-pool list) do not range-read etcd over and over.
//!
//! The task reads the three prefixes in one transaction (one revision R), then watches the
//! whole key prefix from R + 1 and applies every event. When the watch fails, is cancelled
//! (etcd compacted past the revision it asked for, or the member lost its leader: the
//! client sends require-leader) or ends, the copy is read again. The copy only moves
//! forward: a later read is linearizable, so it is at least as new as anything seen.
//! A copy that is behind is harmless: every write is compare-guarded and loses its race.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::directory::Directory;
use super::requests::{AssignmentRow, QueueSnapshot, SharedRequest, Versioned};
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
    requests: BTreeMap<u64, Arc<Versioned<SharedRequest>>>,
    assignments: BTreeMap<(String, String), AssignmentRow>,
    devices: BTreeMap<(String, String), PublishedDevice>,
    /// `controllers/<name>`: who is present and where its API answers.
    members: BTreeMap<String, Member>,
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
    /// Apply a put of `kv` (a value that does not decode is dropped from the copy and
    /// logged: the range read would fail on it too).
    fn put(&mut self, prefix: &str, kv: &KeyValue) {
        let bad = |e: serde_json::Error| {
            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "cluster: undecodable value in the queue");
        };
        match classify_key(prefix, kv.key()) {
            Key::Request(id) => match serde_json::from_slice(kv.value()) {
                Ok(value) => {
                    self.requests.insert(
                        id,
                        Arc::new(Versioned {
                            value,
                            mod_revision: kv.mod_revision(),
                        }),
                    );
                }
                Err(e) => {
                    bad(e);
                    self.requests.remove(&id);
                }
            },
            Key::Assignment(c, d) => match serde_json::from_slice(kv.value()) {
                Ok(assignment) => {
                    self.assignments.insert(
                        (c.clone(), d.clone()),
                        AssignmentRow {
                            controller: c,
                            device: d,
                            assignment,
                            create_revision: kv.create_revision(),
                        },
                    );
                }
                Err(e) => {
                    bad(e);
                    self.assignments.remove(&(c, d));
                }
            },
            Key::Device(c, d) => match serde_json::from_slice(kv.value()) {
                Ok(view) => {
                    self.devices.insert((c, d), view);
                }
                Err(e) => {
                    bad(e);
                    self.devices.remove(&(c, d));
                }
            },
            Key::Member(name) => match serde_json::from_slice(kv.value()) {
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
    }

    fn delete(&mut self, prefix: &str, key: &[u8]) {
        match classify_key(prefix, key) {
            Key::Request(id) => {
                self.requests.remove(&id);
            }
            Key::Assignment(c, d) => {
                self.assignments.remove(&(c, d));
            }
            Key::Device(c, d) => {
                self.devices.remove(&(c, d));
            }
            Key::Member(name) => {
                self.members.remove(&name);
            }
            Key::Other => {}
        }
    }

    fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            requests: self.requests.values().cloned().collect(),
            assignments: self.assignments.values().cloned().collect(),
            devices: self
                .devices
                .iter()
                .map(|((c, _), v)| (c.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The copy and its change channel (the copy's revision, 0 before the first read).
#[derive(Debug)]
pub(super) struct Shared {
    copy: std::sync::Mutex<Copy>,
    changed: watch::Sender<i64>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            copy: std::sync::Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// Keep the copy until `stop`.
pub(super) async fn run(cluster: Cluster, stop: CancellationToken) {
    let inner = &cluster.inner;
    let prefix = inner.config.prefix.clone();
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
                    let revision = {
                        let mut copy = lock(&inner.queue.copy);
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            match e.event_type() {
                                EventType::Put => copy.put(&prefix, kv),
                                EventType::Delete => copy.delete(&prefix, kv.key()),
                            }
                            copy.revision = copy.revision.max(kv.mod_revision());
                        }
                        copy.revision
                    };
                    inner.queue.changed.send_replace(revision);
                }
                other => {
                    // Compacted past our revision, cancelled (the member lost its leader),
                    // closed or failed: read the whole queue again.
                    tracing::debug!(outcome = ?other.as_ref().map(|r| r.as_ref().map(etcd_client::WatchResponse::cancel_reason)), "cluster: queue watch ended; reading again");
                    break;
                }
            }
        }
        lock(&inner.queue.copy).live = false;
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
    let txn = Txn::new().and_then([
        prefixed("requests/"),
        prefixed("assign/"),
        prefixed("devices/"),
        prefixed("controllers/"),
    ]);
    let resp = inner.etcd.txn(inner.config.timeout(), txn).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut fresh = Copy::default();
    for op in resp.op_responses() {
        if let etcd_client::TxnOpResponse::Get(g) = op {
            for kv in g.kvs() {
                fresh.put(prefix, kv);
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
    inner.queue.changed.send_replace(revision);
    Ok(revision)
}

impl Cluster {
    /// The in-memory copy of the queue and the revision it reflects; `None` until the
    /// first read succeeded (or when [`Cluster::start`] was not called).
    #[must_use]
    pub fn queue_copy(&self) -> Option<(i64, QueueSnapshot)> {
        let copy = lock(&self.inner.queue.copy);
        copy.synced.then(|| (copy.revision, copy.snapshot()))
    }

    /// The directory (who publishes which device, where each controller answers) from the
    /// copy: when a watch is feeding it right now, as fresh as etcd's last event, at no
    /// etcd call; with `stale_ok`, also what the copy last knew while its watch is down.
    pub(super) fn directory_from_copy(&self, stale_ok: bool) -> Option<Directory> {
        let copy = lock(&self.inner.queue.copy);
        if !(copy.synced && (copy.live || stale_ok)) {
            return None;
        }
        let mut devices: Vec<(String, PublishedDevice)> = copy
            .devices
            .iter()
            .map(|((c, _), v)| (c.clone(), v.clone()))
            .collect();
        devices.sort_by(|a, b| a.1.name.as_str().cmp(b.1.name.as_str()).then(a.0.cmp(&b.0)));
        Some(Directory {
            revision: copy.revision,
            members: copy.members.clone(),
            devices,
        })
    }

    /// Request `id` from the copy while a watch feeds it: the copy's revision and the
    /// record (`None` when the copy has no such request); `None` when the copy is not live.
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
        Some(
            copy.requests
                .get(&id)
                .is_none_or(|r| r.mod_revision != revision),
        )
    }

    /// Wait until request `id`'s key changes after `revision` (or `within` passes): the
    /// status long poll. Follows the in-memory copy while its watch is live (no etcd call
    /// per poll); otherwise watches the key itself. Returns early, without error, when
    /// etcd cannot be watched (the caller reads again and answers).
    pub async fn wait_request_change(&self, id: u64, revision: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.queue_changes();
        if self.live_revision().is_some() {
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
