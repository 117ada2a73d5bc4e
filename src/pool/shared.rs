//! Cluster mode's shared queue, above the etcd records of `cluster::requests`
//! (`docs/cluster.md`): the scheduler pass (run by the elected scheduler only) and the
//! owner's side (each controller acting on the assignments of its own devices through a
//! local *mirror* request on this rack's [`Pool`], so preparing, flashing, verifying and the
//! self-test after a return are exactly single-rack mode's).
//!
//! Both passes run on the in-memory copy of the queue the cluster layer keeps from a watch
//! (`Cluster::queue_copy`), when it changes, and on timers only for time-based work; every
//! write is a compare-guarded transaction, so a pass on a copy that is behind only loses
//! its race.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeviceChoice, DeviceView, Event, Pool, QueuePolicy, QueuedRequest, RequestState};
use crate::cluster::requests::{AssignmentRow, QueueSnapshot, SharedRequest};
use crate::cluster::{Cluster, ClusterError, PublishedDevice};
use crate::domain::clock::{Clock, Millis};
use crate::domain::names::DeviceName;

/// The longest the passes wait without any change: a safety net under the deadlines
/// computed from the queue (and what notices a lease running out without a new event).
pub const IDLE: Duration = Duration::from_secs(1);

/// The shortest wait for a time-based deadline.
const MIN_WAIT: Duration = Duration::from_millis(20);

/// At most this many ended requests are deleted per scheduler pass, so a backlog does not
/// hold up assignments.
const SWEEP_BATCH: usize = 64;

/// A device's pool view as cluster mode publishes it.
#[must_use]
pub fn published(v: &DeviceView) -> PublishedDevice {
    PublishedDevice {
        name: v.name.clone(),
        available: v.available(),
        state: v.lifeguard_state.clone(),
        failed: v.failed,
        retired: v.retired,
        held: v.held_by.is_some(),
        hardware_type: v.hardware_type.clone(),
        processor: v.processor.clone(),
        pool: v.pool.clone(),
        os_version: v.os_version.clone(),
        environment: v.environment.clone(),
        current_image: v.current_image.clone(),
    }
}

/// A published view as the queue logic reads devices.
fn view(p: &PublishedDevice) -> DeviceView {
    let mut v = DeviceView::new(p.name.clone());
    v.lifeguard_state.clone_from(&p.state);
    v.free = p.available;
    v.failed = p.failed;
    v.retired = p.retired;
    v.environment.clone_from(&p.environment);
    v.hardware_type.clone_from(&p.hardware_type);
    v.processor.clone_from(&p.processor);
    v.pool.clone_from(&p.pool);
    v.os_version.clone_from(&p.os_version);
    v.current_image.clone_from(&p.current_image);
    v
}

/// Run the scheduler and owner passes until `stop`: whenever the in-memory copy of the
/// queue changes (bursts coalesce: the copy's channel keeps only the latest revision), when
/// this controller's lease or election changes, when a local mirror request changes (the
/// owner's side), and at the next time-based deadline (expiry, a wait running out, the
/// retention sweep), at least every [`IDLE`]. A pass needs a live lease. After its own
/// write, the controller waits for the copy to include it rather than act again on a copy
/// that does not show it yet (that would only lose compares).
pub async fn run(
    cluster: Cluster,
    pool: Pool,
    clock: Arc<dyn Clock>,
    policy: QueuePolicy,
    stop: CancellationToken,
) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let owner = Owner {
        cluster: cluster.clone(),
        pool,
        clock: clock.clone(),
        mirrors: HashMap::new(),
        adopted: false,
        wake: wake.clone(),
        followers: HashMap::new(),
    };
    // Two loops, so the owner's reaction to an assignment does not wait behind a scheduler
    // pass's transactions (and the reverse).
    tokio::join!(
        scheduler_loop(&cluster, &clock, &policy, &stop),
        owner_loop(owner, &wake, &stop),
    );
}

/// The copy of the queue a pass may act on: the lease is live and the copy includes this
/// controller's last write.
fn current(cluster: &Cluster) -> Option<QueueSnapshot> {
    cluster.lease().borrow().live()?;
    let (revision, snap) = cluster.queue_copy()?;
    (revision >= cluster.last_write_revision()).then_some(snap)
}

async fn scheduler_loop(
    cluster: &Cluster,
    clock: &Arc<dyn Clock>,
    policy: &QueuePolicy,
    stop: &CancellationToken,
) {
    let mut queue_rx = cluster.queue_changes();
    let mut lease_rx = cluster.lease();
    let mut leader_rx = cluster.leader_changes();
    loop {
        queue_rx.borrow_and_update();
        lease_rx.borrow_and_update();
        leader_rx.borrow_and_update();
        let mut next = tokio::time::Instant::now() + IDLE;
        if cluster.leadership().is_some()
            && let Some(snap) = current(cluster)
        {
            let now = clock.now();
            if let Some(due) = next_deadline(&snap, now, cluster.keep_closed()) {
                next = next.min(tokio::time::Instant::now() + due);
            }
            if let Err(e) = schedule(cluster, &snap, now, policy).await {
                tracing::debug!(error = %e, "cluster: scheduler pass stopped");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = queue_rx.changed() => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
            r = leader_rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

async fn owner_loop(mut owner: Owner, wake: &tokio::sync::Notify, stop: &CancellationToken) {
    let cluster = owner.cluster.clone();
    let mut queue_rx = cluster.queue_changes();
    let mut lease_rx = cluster.lease();
    loop {
        queue_rx.borrow_and_update();
        lease_rx.borrow_and_update();
        if let Some(snap) = current(&cluster) {
            if let Err(e) = owner.pass(&snap).await {
                tracing::debug!(error = %e, "cluster: owner pass stopped");
            }
            owner.follow_mirrors();
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = queue_rx.changed() => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
            () = wake.notified() => {}
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// How long until the next time-based change the scheduler makes: an open request
/// expiring, a wait running out, an ended request due for deletion (one whose device
/// is still assigned waits for its owner, which is an event). At least [`MIN_WAIT`], so a
/// deadline a failed pass left behind does not spin.
fn next_deadline(snap: &QueueSnapshot, now: Millis, keep: Duration) -> Option<Duration> {
    let held: HashSet<u64> = snap
        .assignments
        .iter()
        .map(|a| a.assignment.request)
        .collect();
    let at = snap
        .requests
        .iter()
        .filter_map(|r| {
            let v = &r.value;
            if v.state.is_open() {
                let wait = waiting(v)
                    .then(|| v.spec.wait.map(|w| v.since.plus(Duration::from_secs(w))))
                    .flatten();
                Some(wait.map_or(v.expires, |w| w.min(v.expires)))
            } else if held.contains(&v.id) {
                None
            } else {
                Some(v.ended.unwrap_or(v.expires).plus(keep))
            }
        })
        .min()?;
    Some(Duration::from_millis(at.0.saturating_sub(now.0)).max(MIN_WAIT))
}

/// Is `r` still waiting for a device?
fn waiting(r: &SharedRequest) -> bool {
    r.state == RequestState::Queued
}

/// One scheduler pass, when this controller is the scheduler: close expired requests,
/// send a dead owner's unfinished requests back to the queue, and hand available devices to
/// waiting requests (`pool::queue::assign`). Every write carries the election revision.
async fn schedule(
    cluster: &Cluster,
    snap: &QueueSnapshot,
    now: Millis,
    policy: &QueuePolicy,
) -> Result<(), ClusterError> {
    let Some(lead) = cluster.leadership() else {
        return Ok(());
    };
    let present: HashSet<(&str, &str)> = snap
        .devices
        .iter()
        .map(|(c, d)| (c.as_str(), d.name.as_str()))
        .collect();
    let assigned: HashSet<(&str, &str)> = snap
        .assignments
        .iter()
        .map(|a| (a.controller.as_str(), a.device.as_str()))
        .collect();
    let mut done: HashSet<u64> = HashSet::new();
    // Expiry, and waits that ran out.
    for r in &snap.requests {
        let v = &r.value;
        let next = if v.state.is_open() && v.expires <= now {
            Some(RequestState::Closed)
        } else if waiting(v)
            && v.spec
                .wait
                .is_some_and(|w| v.since.plus(Duration::from_secs(w)) <= now)
        {
            Some(RequestState::FailedDeviceNotFound)
        } else {
            None
        };
        if let Some(state) = next {
            let mut nv = v.clone();
            nv.state = state;
            nv.ended = Some(now);
            cluster
                .update_request_as_leader(&lead, &nv, r.mod_revision, None)
                .await?;
            done.insert(v.id);
        }
    }
    // Ended requests kept long enough, whose device (if any) its owner has freed: deleted
    // with their idempotency keys, so etcd and every pass's read stay small.
    let keep = cluster.keep_closed();
    let held: HashSet<u64> = snap
        .assignments
        .iter()
        .map(|a| a.assignment.request)
        .collect();
    let ended: Vec<(u64, i64)> = snap
        .requests
        .iter()
        .filter(|r| {
            let v = &r.value;
            !v.state.is_open()
                && !done.contains(&v.id)
                && !held.contains(&v.id)
                && v.ended.unwrap_or(v.expires).plus(keep) <= now
        })
        .take(SWEEP_BATCH)
        .map(|r| (r.value.id, r.mod_revision))
        .collect();
    let gone = cluster.delete_requests_as_leader(&lead, &ended).await?;
    if gone > 0 {
        tracing::info!(
            requests = gone,
            "cluster: deleted ended requests past cluster.keep_closed_s"
        );
    }
    // Assignments to devices whose owner's lease is gone: not-yet-ready requests go back
    // to the queue; a ready one stays the job's until returned or expired.
    for a in &snap.assignments {
        if present.contains(&(a.controller.as_str(), a.device.as_str())) {
            continue;
        }
        let r = snap
            .requests
            .iter()
            .find(|r| r.value.id == a.assignment.request);
        match r {
            Some(r) if r.value.state == RequestState::Ready => {}
            Some(r) if !done.contains(&r.value.id) => {
                let mut nv = r.value.clone();
                if nv.state.is_open() {
                    nv.state = RequestState::Queued;
                    nv.device = None;
                    nv.owner = None;
                }
                cluster
                    .update_request_as_leader(
                        &lead,
                        &nv,
                        r.mod_revision,
                        Some((&a.controller, &a.device)),
                    )
                    .await?;
                done.insert(nv.id);
            }
            _ => {}
        }
    }
    // The queue pass. Device names are unique per rack only, so each round offers at most
    // one device per name; rounds repeat while they assign.
    let mut taken: HashSet<(String, String)> = HashSet::new();
    let mut served: HashSet<u64> = done;
    loop {
        let queue: Vec<QueuedRequest> = snap
            .requests
            .iter()
            .filter(|r| waiting(&r.value) && !served.contains(&r.value.id))
            .map(|r| QueuedRequest {
                id: r.value.id,
                spec: r.value.spec.clone(),
                since: r.value.since,
            })
            .collect();
        if queue.is_empty() {
            return Ok(());
        }
        let mut by_name: HashMap<DeviceName, &str> = HashMap::new();
        let mut views = Vec::new();
        for (c, d) in &snap.devices {
            let key = (c.clone(), d.name.to_string());
            if !d.available
                || assigned.contains(&(c.as_str(), d.name.as_str()))
                || taken.contains(&key)
                || by_name.contains_key(&d.name)
            {
                continue;
            }
            by_name.insert(d.name.clone(), c);
            views.push(view(d));
        }
        let picks = super::assign(&queue, &views, now, policy);
        if picks.is_empty() {
            return Ok(());
        }
        // The assignment transactions go out together: each waits on etcd's commit, and
        // etcd commits concurrent ones in one batch (one after the other, a burst of
        // requests took a commit each).
        let mut writes = tokio::task::JoinSet::new();
        for (id, name) in picks {
            let controller = by_name[&name].to_owned();
            served.insert(id);
            taken.insert((controller.clone(), name.to_string()));
            let Some(r) = snap.requests.iter().find(|r| r.value.id == id) else {
                continue;
            };
            let mut nv = r.value.clone();
            nv.state = RequestState::Pending;
            nv.device = Some(name.to_string());
            nv.owner = Some(controller.clone());
            nv.explanation = None;
            let (cluster, mod_revision) = (cluster.clone(), r.mod_revision);
            writes.spawn(async move {
                let ok = cluster
                    .assign(&lead, &nv, mod_revision, &controller, name.as_str())
                    .await?;
                if ok {
                    tracing::info!(request = id, device = %name, %controller, "cluster: assigned");
                }
                Ok::<(), ClusterError>(())
            });
        }
        let mut failed = None;
        while let Some(done) = writes.join_next().await {
            if let Ok(Err(e)) = done {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// A local request holding one of this rack's devices for a shared request.
#[derive(Debug, Clone)]
struct Mirror {
    shared: u64,
    local: u64,
    expires: Millis,
}

/// The owner's side: assignments of this controller's devices, carried out locally.
struct Owner {
    cluster: Cluster,
    pool: Pool,
    clock: Arc<dyn Clock>,
    /// By device name.
    mirrors: HashMap<String, Mirror>,
    /// The mirrors left by an earlier process of this controller were dealt with.
    adopted: bool,
    /// Woken when a mirror's local request changes (it became ready, or failed).
    wake: Arc<tokio::sync::Notify>,
    /// The tasks following each mirror's local request, by local id.
    followers: HashMap<u64, tokio::task::AbortHandle>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        for f in self.followers.values() {
            f.abort();
        }
    }
}

impl Owner {
    /// Follow the local request of every mirror (and stop following the others), so the
    /// owner reports a mirror ready as soon as its rack made it so, not at a later pass:
    /// the same per-request channel a local status long poll waits on.
    fn follow_mirrors(&mut self) {
        let locals: HashSet<u64> = self.mirrors.values().map(|m| m.local).collect();
        self.followers.retain(|local, f| {
            let keep = locals.contains(local);
            if !keep {
                f.abort();
            }
            keep
        });
        let mut added = false;
        for local in locals {
            if self.followers.contains_key(&local) {
                continue;
            }
            added = true;
            let mut changes = self.pool.watch_request(local);
            let wake = self.wake.clone();
            let task = tokio::spawn(async move {
                loop {
                    changes.changed().await;
                    wake.notify_one();
                }
            });
            self.followers.insert(local, task.abort_handle());
        }
        if added {
            // The local request may have changed (become ready) between its creation in
            // the pass and this subscription: one more pass looks.
            self.wake.notify_one();
        }
    }

    async fn pass(&mut self, snap: &QueueSnapshot) -> Result<(), ClusterError> {
        let me = self.cluster.name().to_owned();
        let mine: Vec<_> = snap
            .assignments
            .iter()
            .filter(|a| a.controller == me)
            .collect();
        if !self.adopted {
            self.adopt(&mine).await;
        }
        // Mirrors whose assignment is gone (taken back by the scheduler): release locally.
        let live: HashSet<&str> = mine.iter().map(|a| a.device.as_str()).collect();
        let stale: Vec<String> = self
            .mirrors
            .keys()
            .filter(|d| !live.contains(d.as_str()))
            .cloned()
            .collect();
        for d in stale {
            if let Some(m) = self.mirrors.remove(&d) {
                self.close_local(m.local).await;
            }
        }
        // Ready reports and freed assignments go out together at the end of the pass
        // (etcd commits concurrent writes in one batch); the local device views are read
        // at most once a pass.
        let mut writes = tokio::task::JoinSet::new();
        let mut views = None;
        for a in mine {
            let Some(r) = snap
                .requests
                .iter()
                .find(|r| r.value.id == a.assignment.request)
            else {
                continue;
            };
            let v = &r.value;
            let mirror = self.mirrors.get(&a.device).cloned();
            if !v.state.is_open() || v.device.as_deref() != Some(a.device.as_str()) {
                // Returned or expired: hand the device back locally (Lifeguard self-tests
                // it), then free the assignment once the published view has caught up
                // with the device's state, so it is not offered before it is verified.
                if let Some(m) = mirror {
                    self.close_local(m.local).await;
                    self.mirrors.remove(&a.device);
                    continue;
                }
                if self.view_settled(&mut views, snap, &me, &a.device).await {
                    let (cluster, me, device, id) =
                        (self.cluster.clone(), me.clone(), a.device.clone(), v.id);
                    writes.spawn(async move {
                        cluster.release_assignment(&me, &device, id).await.map(drop)
                    });
                }
                continue;
            }
            match mirror {
                None if v.state == RequestState::Pending => {
                    self.start_mirror(v, r.mod_revision, &a.device).await?;
                }
                None => {}
                Some(m) => {
                    let local = self.pool.get(m.local).await.ok().flatten();
                    let state = local.as_ref().map(|l| l.snap.state);
                    match state {
                        Some(RequestState::Ready) if v.state == RequestState::Pending => {
                            let mut nv = v.clone();
                            nv.state = RequestState::Ready;
                            // A failed compare: the request changed meanwhile (returned,
                            // reassigned); the next pass sees what it is now.
                            let (cluster, rev) = (self.cluster.clone(), r.mod_revision);
                            writes.spawn(async move {
                                cluster.update_request(&nv, rev, None).await.map(drop)
                            });
                        }
                        Some(s) if s.is_open() => {
                            if v.expires > m.expires {
                                self.renew_local(&a.device, &m, v.expires).await;
                            }
                        }
                        _ => {
                            // The local request failed (bad image, device failure): the
                            // shared one goes back to the queue and the device is freed.
                            let mut nv = v.clone();
                            nv.state = RequestState::Queued;
                            nv.device = None;
                            nv.owner = None;
                            if self
                                .cluster
                                .update_request(&nv, r.mod_revision, Some((&me, &a.device)))
                                .await?
                            {
                                self.mirrors.remove(&a.device);
                            }
                        }
                    }
                }
            }
        }
        let mut failed = None;
        while let Some(done) = writes.join_next().await {
            if let Ok(Err(e)) = done {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Once, at the first pass after start-up: the open local requests an earlier process
    /// of this controller left (it was killed while holding devices; in cluster mode every
    /// local request is a mirror made for one named device). One whose device still has an
    /// assignment becomes that assignment's mirror again, so the pass carries it on
    /// (reports it ready, renews it, or closes it when the shared request ended). The
    /// others are closed: their shared request went back to the queue or ended meanwhile,
    /// and without this the device stayed held locally, out of the pool, until the old
    /// request's lease ran out.
    async fn adopt(&mut self, mine: &[&AssignmentRow]) {
        let open = match self.pool.open_requests().await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot read the local requests; trying again");
                return;
            }
        };
        for local in open {
            let id = local.snap.id;
            let device = match &local.snap.spec.requested_device {
                DeviceChoice::Named(d) => d.to_string(),
                DeviceChoice::Any => String::new(),
            };
            match mine.iter().find(|a| a.device == device) {
                Some(a) if !self.mirrors.contains_key(&device) => {
                    tracing::info!(
                        request = a.assignment.request,
                        local = id,
                        device,
                        "cluster: carrying on with a mirror left by an earlier process"
                    );
                    self.mirrors.insert(
                        device,
                        Mirror {
                            shared: a.assignment.request,
                            local: id,
                            expires: local.snap.expires,
                        },
                    );
                }
                _ => {
                    tracing::info!(
                        local = id,
                        device,
                        "cluster: closing a mirror left by an earlier process"
                    );
                    self.close_local(id).await;
                }
            }
        }
        self.adopted = true;
    }

    /// The device's view in etcd equals what this controller would publish now.
    /// `views`: the local views, read on first use and kept for the rest of the pass.
    async fn view_settled(
        &self,
        views: &mut Option<Vec<DeviceView>>,
        snap: &QueueSnapshot,
        me: &str,
        device: &str,
    ) -> bool {
        if views.is_none() {
            *views = self.pool.device_views().await.ok();
        }
        let Some(views) = views.as_ref() else {
            return false;
        };
        let Some(local) = views.iter().find(|v| v.name.as_str() == device) else {
            return true;
        };
        let now = published(local);
        snap.devices
            .iter()
            .any(|(c, d)| c == me && d.name.as_str() == device && *d == now)
    }

    /// Hold `device` locally for `v` through a local request for exactly that device.
    async fn start_mirror(
        &mut self,
        v: &SharedRequest,
        mod_revision: i64,
        device: &str,
    ) -> Result<(), ClusterError> {
        let now = self.clock.now();
        let secs = v.expires.0.saturating_sub(now.0).div_ceil(1000).max(1);
        let mut spec = v.spec.clone();
        let named = device.parse().map(DeviceChoice::Named);
        let result = match named {
            Ok(choice) => {
                spec.requested_device = choice;
                spec.created = now;
                spec.wait = None;
                self.pool
                    .create(spec, secs, None)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(local) if local.snap.state.is_open() => {
                tracing::info!(
                    request = v.id,
                    local = local.snap.id,
                    device,
                    "cluster: preparing an assigned device"
                );
                self.mirrors.insert(
                    device.to_owned(),
                    Mirror {
                        shared: v.id,
                        local: local.snap.id,
                        expires: v.expires,
                    },
                );
                Ok(())
            }
            other => {
                tracing::warn!(request = v.id, device, result = ?other.map(|l| l.snap.state), "cluster: cannot hold an assigned device; back to the queue");
                let mut nv = v.clone();
                nv.state = RequestState::Queued;
                nv.device = None;
                nv.owner = None;
                let me = self.cluster.name().to_owned();
                self.cluster
                    .update_request(&nv, mod_revision, Some((&me, device)))
                    .await?;
                Ok(())
            }
        }
    }

    async fn close_local(&self, local: u64) {
        if let Err(e) = self.pool.deliver(local, Event::Close, None).await {
            tracing::warn!(local, error = %e, "cluster: cannot close a local mirror request");
        }
    }

    async fn renew_local(&mut self, device: &str, m: &Mirror, expires: Millis) {
        let secs = expires
            .0
            .saturating_sub(self.clock.now().0)
            .div_ceil(1000)
            .max(1);
        if self
            .pool
            .deliver(
                m.local,
                Event::Renew {
                    duration_secs: secs,
                },
                None,
            )
            .await
            .is_ok()
            && let Some(mm) = self.mirrors.get_mut(device)
        {
            debug_assert_eq!(mm.shared, m.shared);
            mm.expires = expires;
        }
    }
}
