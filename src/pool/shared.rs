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

use super::{
    DeviceChoice, DeviceView, Event, Explanation, Holder, Pool, QueuePolicy, QueuedRequest,
    RequestState, Timings,
};
use crate::cluster::requests::{AssignmentRow, QueueSnapshot, SharedRequest, Versioned};
use crate::cluster::{Cluster, ClusterError, Leadership, PublishedDevice};
use crate::domain::clock::{Clock, Millis};

/// The longest the passes wait without any change: a safety net under the deadlines
/// computed from the queue (and what notices a lease running out without a new event).
pub const IDLE: Duration = Duration::from_secs(1);

/// The shortest wait for a time-based deadline.
const MIN_WAIT: Duration = Duration::from_millis(20);

/// At most this many ended requests are deleted per scheduler pass (at most the
/// snapshot's [`crate::cluster::requests::ENDED_IN_SNAPSHOT`]), so a backlog does not
/// hold up assignments.
const SWEEP_BATCH: usize = 64;

/// Ended requests due for deletion wait until one of them is this late (or a whole
/// [`SWEEP_BATCH`] is due), so a busy queue deletes them in a few transactions a second,
/// not in one per pass.
const SWEEP_SLACK: Duration = Duration::from_secs(1);

/// At most this many waiting requests get a new `waiting_because` per scheduler pass (the
/// front of the queue first), so a long queue whose explanations all change at once (a
/// device changed state) costs a few writes a pass, not one per waiter.
pub const REASON_BATCH: usize = 8;

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

/// The waiting requests of the shared queue, as the queue logic reads them, leaving out
/// `skip` (requests this pass already changed).
fn waiting_queue(snap: &QueueSnapshot, skip: &HashSet<u64>) -> Vec<QueuedRequest> {
    snap.requests
        .iter()
        .filter(|r| waiting(&r.value) && !skip.contains(&r.value.id))
        .map(|r| QueuedRequest {
            id: r.value.id,
            spec: r.value.spec.clone(),
            since: r.value.since,
        })
        .collect()
}

/// Every published device of the cluster as the queue logic reads it, with its controller.
/// A device with an assignment is never free; while the assigned request is open it is held
/// by that request's assignee, so fair share counts what each assignee holds on every rack,
/// as single-rack mode counts its holders. A `ready` request keeps its device when the
/// device's controller is gone (its lease ended, so the device is no longer published):
/// that device still counts as held, described by what its holder asked for
/// ([`gone_device`]).
fn cluster_views(snap: &QueueSnapshot) -> Vec<(&str, DeviceView)> {
    let open: HashMap<u64, &SharedRequest> = snap
        .requests
        .iter()
        .map(|r| &r.value)
        .filter(|r| r.state.is_open())
        .map(|r| (r.id, r))
        .collect();
    let assigned: HashMap<(&str, &str), u64> = snap
        .assignments
        .iter()
        .map(|a| {
            (
                (a.controller.as_str(), a.device.as_str()),
                a.assignment.request,
            )
        })
        .collect();
    let holder = |r: &SharedRequest| Holder {
        request: r.id,
        assignee: r.spec.assignee.clone(),
    };
    let mut views: Vec<(&str, DeviceView)> = snap
        .devices
        .iter()
        .map(|(c, d)| {
            let mut v = view(d);
            if let Some(id) = assigned.get(&(c.as_str(), d.name.as_str())) {
                v.free = false;
                v.held_by = open.get(id).map(|r| holder(r));
            }
            (c.as_str(), v)
        })
        .collect();
    let present: HashSet<(&str, &str)> = snap
        .devices
        .iter()
        .map(|(c, d)| (c.as_str(), d.name.as_str()))
        .collect();
    for a in &snap.assignments {
        if present.contains(&(a.controller.as_str(), a.device.as_str())) {
            continue;
        }
        let Some(r) = open
            .get(&a.assignment.request)
            .filter(|r| r.state == RequestState::Ready)
        else {
            continue;
        };
        if let Some(mut v) = gone_device(&a.device, r) {
            v.held_by = Some(holder(r));
            views.push((a.controller.as_str(), v));
        }
    }
    views
}

/// The view of a device whose controller is gone, held by ready request `r`: its published
/// view went with the controller's lease, so it is described by what `r` asked for (the
/// device matched every one of those criteria when it was assigned) and the image it was
/// readied with. A criterion `r` did not ask for is unknown, so a waiter asking for it does
/// not count this device among its matches. Never free.
fn gone_device(name: &str, r: &SharedRequest) -> Option<DeviceView> {
    let s = &r.spec;
    let mut v = DeviceView::new(name.parse().ok()?);
    v.lifeguard_state = "ready".to_owned();
    v.free = false;
    v.environment.clone_from(&s.environment);
    v.hardware_type.clone_from(&s.hardware_type);
    v.processor.clone_from(&s.processor);
    v.pool.clone_from(&s.pool);
    v.os_version.clone_from(&s.os_version);
    v.current_image = Some(s.image.clone());
    Some(v)
}

/// Each waiting request's 1-based queue position, from the same inputs the scheduler pass
/// hands `pool::queue::assign` (priority, aging, fair share over the whole cluster), through
/// single-rack mode's [`super::position`].
#[must_use]
pub fn queue_positions(
    snap: &QueueSnapshot,
    now: Millis,
    policy: &QueuePolicy,
) -> Vec<(u64, usize)> {
    let views: Vec<DeviceView> = cluster_views(snap).into_iter().map(|(_, v)| v).collect();
    super::position(&waiting_queue(snap, &HashSet::new()), &views, now, policy)
}

/// How long [`queue_position`] waits for the queue copy to reach a revision before it
/// reads etcd instead.
const COPY_CATCH_UP: Duration = Duration::from_millis(250);

/// Request `r`'s 1-based queue position: `None` at once when it is not waiting (as read),
/// else read as of its revision or later: from the in-memory queue copy when it has caught
/// up with that revision (no etcd call on a status poll), else from one etcd range read.
/// (`None` too when the queue, read later, no longer has it waiting.)
///
/// # Errors
/// etcd unavailable, when the copy is behind and the read fails.
pub async fn queue_position(
    cluster: &Cluster,
    r: &Versioned<SharedRequest>,
    now: Millis,
    policy: &QueuePolicy,
) -> Result<Option<usize>, ClusterError> {
    if !r.value.state.is_waiting() {
        return Ok(None);
    }
    let (id, revision) = (r.value.id, r.mod_revision);
    // A copy fed by a live watch catches up within milliseconds: waiting for it is much
    // cheaper for etcd than a range read of the whole queue.
    cluster.wait_for_copy(revision, COPY_CATCH_UP).await;
    let snap = match cluster.queue_copy() {
        Some((at, snap)) if at >= revision => snap,
        _ => Arc::new(cluster.queue_snapshot().await?),
    };
    Ok(queue_positions(&snap, now, policy)
        .into_iter()
        .find(|(r, _)| *r == id)
        .map(|(_, p)| p))
}

/// Why a request for `device` of `controller` that does not ask to wait is refused now, as
/// single-rack mode refuses one for a busy device (`PoolError::Busy`, HTTP 409), decided
/// from what the cluster knows: the device's assignment first (an assigned device is never
/// free, whatever its published view still says: the scheduler assigns before the owner
/// publishes it held, and the owner frees the assignment of a returned device only once
/// its rack has published it verified), then its published view (not `ready`, or held on
/// its rack). Only that rack's device counts: names are unique per rack only. `None`: the
/// device may be requested (free, failed as single-rack mode lets a failed device be
/// requested, or not published).
#[must_use]
pub fn busy(snap: &QueueSnapshot, controller: &str, device: &str) -> Option<String> {
    let (_, view) = snap
        .devices
        .iter()
        .find(|(c, d)| c == controller && d.name.as_str() == device)?;
    if view.failed {
        return None;
    }
    let name = format!("device {device} on controller {controller} is busy");
    let wait = "(pass \"wait\": seconds to queue for it)";
    if let Some(a) = snap
        .assignments
        .iter()
        .find(|a| a.controller == controller && a.device == device)
    {
        let id = a.assignment.request;
        let open = snap
            .requests
            .iter()
            .any(|r| r.value.id == id && r.value.state.is_open());
        return Some(if open {
            format!("{name}: held by request {id}")
        } else {
            format!(
                "{name}: request {id} ended and its controller is taking it back (now {}) {wait}",
                view.state
            )
        });
    }
    if view.state != "ready" {
        return Some(format!("{name}: it is in state {} {wait}", view.state));
    }
    (!view.available).then(|| format!("{name}: it is held on its controller {wait}"))
}

/// The Lifeguard state `controller` publishes for `device` (empty when unpublished).
fn published_state(snap: &QueueSnapshot, controller: &str, device: &str) -> String {
    snap.devices
        .iter()
        .find(|(c, d)| c == controller && d.name.as_str() == device)
        .map_or_else(String::new, |(_, d)| d.state.clone())
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
    // The scheduler bounds the search of requests without `wait` by this rack's request
    // timings, the ones its single-rack requests use.
    let timings = pool.timings().clone();
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
        scheduler_loop(&cluster, &clock, &policy, &timings, &stop),
        owner_loop(owner, &wake, &stop),
    );
}

/// The copy of the queue a pass may act on: the lease is live and the copy includes this
/// controller's last write.
fn current(cluster: &Cluster) -> Option<Arc<QueueSnapshot>> {
    cluster.lease().borrow().live()?;
    let (revision, snap) = cluster.queue_copy()?;
    (revision >= cluster.last_write_revision()).then_some(snap)
}

async fn scheduler_loop(
    cluster: &Cluster,
    clock: &Arc<dyn Clock>,
    policy: &QueuePolicy,
    timings: &Timings,
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
            if let Some(due) = next_deadline(&snap, now, cluster.keep_closed(), timings) {
                next = next.min(tokio::time::Instant::now() + due);
            }
            if let Err(e) = schedule(cluster, &snap, now, policy, timings).await {
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

/// The owner's loop runs on the changes that concern this controller's devices
/// (`Cluster::owner_changes`), not on every event of the cluster: most events are other
/// racks' requests, and a pass builds a snapshot of the whole copy. While the copy lags
/// behind this controller's own last write (a scheduler write need not concern the
/// owner), it waits for any change instead.
async fn owner_loop(mut owner: Owner, wake: &tokio::sync::Notify, stop: &CancellationToken) {
    let cluster = owner.cluster.clone();
    let mut owner_rx = cluster.owner_changes();
    let mut queue_rx = cluster.queue_changes();
    let mut lease_rx = cluster.lease();
    loop {
        owner_rx.borrow_and_update();
        queue_rx.borrow_and_update();
        lease_rx.borrow_and_update();
        let snap = current(&cluster);
        let behind = snap.is_none();
        if let Some(snap) = snap {
            if let Err(e) = owner.pass(&snap).await {
                tracing::debug!(error = %e, "cluster: owner pass stopped");
            }
            owner.follow_mirrors();
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = owner_rx.changed() => if r.is_err() { return },
            r = queue_rx.changed(), if behind => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
            () = wake.notified() => {}
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// How long until the next time-based change the scheduler makes: an open request
/// expiring, a wait or a bounded search running out ([`wait_over`]), an ended request due
/// for deletion (one whose device is still assigned waits for its owner, which is an
/// event). At least [`MIN_WAIT`], so a deadline a failed pass left behind does not spin.
fn next_deadline(
    snap: &QueueSnapshot,
    now: Millis,
    keep: Duration,
    timings: &Timings,
) -> Option<Duration> {
    // An ended request in the snapshot still has its device's assignment: nothing is due
    // for it until its owner frees the device.
    let open = snap.requests.iter().filter_map(|r| {
        let v = &r.value;
        v.state.is_open().then(|| {
            let wait = waiting(v).then(|| wait_over(v, timings));
            wait.map_or(v.expires, |w| w.min(v.expires))
        })
    });
    let sweep = snap
        .oldest_ended
        .first()
        .map(|e| e.ended.plus(keep).plus(SWEEP_SLACK));
    let at = open.chain(sweep).min()?;
    Some(Duration::from_millis(at.0.saturating_sub(now.0)).max(MIN_WAIT))
}

/// Is `r` still waiting for a device?
fn waiting(r: &SharedRequest) -> bool {
    r.state == RequestState::Queued
}

/// When waiting request `r` gives up if no device came, counted from when it began this
/// wait ([`SharedRequest::waiting_since`]: a request back in the queue waits afresh, as a
/// single-rack request back to searching gets its whole `wait` again and restarts its
/// search counters): with `wait`, that many seconds on; without, when single-rack mode's
/// bounded search would make its last try (`pool::machine`: a search at once, then one
/// every `finding_device`, failing at try `finding_tries_any` for `any`,
/// `finding_tries_specific` for a named device).
fn wait_over(r: &SharedRequest, t: &Timings) -> Millis {
    if let Some(w) = r.spec.wait {
        return r.waiting_since().plus(Duration::from_secs(w));
    }
    let tries = match r.spec.requested_device {
        DeviceChoice::Any => t.finding_tries_any,
        DeviceChoice::Named(_) => t.finding_tries_specific,
    };
    r.waiting_since()
        .plus(t.finding_device.saturating_mul(tries.saturating_sub(1)))
}

/// The log line failing waiting request `r` with `failed_device_not_found` when it has a
/// `wait` and the wait ran out by `now` (with the reason it waited, `waiting_because`, when
/// there is one); `None` otherwise.
fn wait_ran_out(r: &SharedRequest, now: Millis, t: &Timings) -> Option<String> {
    r.spec.wait?;
    (wait_over(r, t) <= now).then(|| match &r.explanation {
        Some(why) => format!("no device found within its wait: {why}"),
        None => "no device found within its wait".to_owned(),
    })
}

/// How waiting request `r` without `wait`, which this pass's search left without a device,
/// ends now, in single-rack mode's state and request-log wording (`pool::machine` on
/// `no_device` in `finding_device`), or `None` while it searches on:
/// - named: `failed_bad_device` as soon as its device (on its rack) is failed and not held
///   (single-rack mode's rule: the search's explanation counts a failed device); else
///   `failed_device_busy` once its search is over ([`wait_over`]);
/// - `any`: `failed_device_not_found` once its search is over.
///
/// The line ends with the explanation of this search, as a single-rack request's ends with
/// its last search's.
fn search_over(
    r: &SharedRequest,
    devices: &Devices<'_>,
    now: Millis,
    t: &Timings,
) -> Option<(RequestState, String)> {
    if r.spec.wait.is_some() {
        return None;
    }
    let over = wait_over(r, t) <= now;
    match &r.spec.requested_device {
        DeviceChoice::Named(dev) if devices.failed(&r.spec, dev.as_str()) => Some((
            RequestState::FailedBadDevice,
            format!("device {dev} is failed: {}", devices.explain(&r.spec)),
        )),
        DeviceChoice::Named(dev) => over.then(|| {
            let n = t.finding_tries_specific;
            (
                RequestState::FailedDeviceBusy,
                format!(
                    "device {dev} is busy after {n} tries: {}",
                    devices.explain(&r.spec)
                ),
            )
        }),
        DeviceChoice::Any => over.then(|| {
            let n = t.finding_tries_any;
            (
                RequestState::FailedDeviceNotFound,
                format!(
                    "no device found after {n} tries: {}",
                    devices.explain(&r.spec)
                ),
            )
        }),
    }
}

/// The cluster's devices with their controllers ([`cluster_views`], after any grants of
/// the pass), for explaining why requests wait.
struct Devices<'a> {
    views: &'a [(&'a str, DeviceView)],
    /// The same views without their controllers, built once when first needed (most
    /// passes end no bounded search).
    all: std::cell::OnceCell<Vec<DeviceView>>,
}

impl<'a> Devices<'a> {
    fn new(views: &'a [(&'a str, DeviceView)]) -> Self {
        Devices {
            views,
            all: std::cell::OnceCell::new(),
        }
    }

    /// Every device, without its controller.
    fn all(&self) -> &[DeviceView] {
        self.all
            .get_or_init(|| self.views.iter().map(|(_, v)| v.clone()).collect())
    }

    /// Why a request with `spec` waits: over its rack's devices only when it is pinned to
    /// one (no other rack's can serve it), else over all.
    fn explain(&self, spec: &super::RequestSpec) -> Explanation {
        match pinned(spec) {
            Some((c, _)) => {
                let rack: Vec<DeviceView> = self
                    .views
                    .iter()
                    .filter(|(vc, _)| *vc == c)
                    .map(|(_, v)| v.clone())
                    .collect();
                super::explain(spec, &rack)
            }
            None => super::explain(spec, self.all()),
        }
    }

    /// Would [`Devices::explain`] count named `device` failed (failed, not held, matching
    /// every criterion of `spec`)? Only the copies of the name that could serve the
    /// request are looked at, so this costs no explanation per waiter and pass.
    fn failed(&self, spec: &super::RequestSpec, device: &str) -> bool {
        let rack = pinned(spec).map(|(c, _)| c);
        self.views.iter().any(|(c, v)| {
            rack.is_none_or(|r| r == *c)
                && v.name.as_str() == device
                && !v.retired
                && v.failed
                && v.held_by.is_none()
                && super::matches(spec, v)
        })
    }
}

/// One scheduler pass, when this controller is the scheduler: close expired requests, fail
/// waiting ones whose wait ran out ([`wait_ran_out`]), send a dead owner's unfinished
/// requests back to the queue, hand available devices to waiting requests
/// (`pool::queue::assign`), then fail those without `wait` that it left waiting past their
/// bounded search ([`search_over`]). Every write carries the election revision.
async fn schedule(
    cluster: &Cluster,
    snap: &QueueSnapshot,
    now: Millis,
    policy: &QueuePolicy,
    timings: &Timings,
) -> Result<(), ClusterError> {
    let Some(lead) = cluster.leadership() else {
        return Ok(());
    };
    let present: HashSet<(&str, &str)> = snap
        .devices
        .iter()
        .map(|(c, d)| (c.as_str(), d.name.as_str()))
        .collect();
    let mut done: HashSet<u64> = HashSet::new();
    // Expiry, and waits that ran out. (A bounded search ends after the queue pass: as on a
    // single rack, its last try searches before it gives up.)
    for r in &snap.requests {
        let v = &r.value;
        let next = if v.state.is_open() && v.expires <= now {
            Some((RequestState::Closed, "Request expired.".to_owned()))
        } else if waiting(v) {
            wait_ran_out(v, now, timings).map(|l| (RequestState::FailedDeviceNotFound, l))
        } else {
            None
        };
        if let Some((state, line)) = next {
            end_as_leader(cluster, &lead, r, state, now, line).await?;
            done.insert(v.id);
        }
    }
    // Ended requests kept long enough, whose device (if any) its owner has freed: deleted
    // with their idempotency keys, so etcd and every pass's read stay small.
    let keep = cluster.keep_closed();
    let due: Vec<(u64, i64, Millis)> = snap
        .oldest_ended
        .iter()
        .map(|e| (e.id, e.mod_revision, e.ended.plus(keep)))
        .filter(|d| d.2 <= now)
        .collect();
    let sweep = due.len() >= SWEEP_BATCH || due.iter().any(|d| d.2.plus(SWEEP_SLACK) <= now);
    let ended: Vec<(u64, i64)> = due
        .iter()
        .filter(|_| sweep)
        .take(SWEEP_BATCH)
        .map(|d| (d.0, d.1))
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
                    nv.requeue(
                        now,
                        "scheduler",
                        format!(
                            "back to the queue: device {} of {} left the pool (its controller's lease ended)",
                            a.device, a.controller
                        ),
                    );
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
    // The queue pass, over every published device of the cluster (held ones too, so fair
    // share counts each assignee's holdings). Device names are unique per rack only, so
    // each round offers at most one available device per name (the others count for fair
    // share but wait for the next round); rounds repeat while they assign.
    let base = cluster_views(snap);
    let mut granted: HashMap<(&str, String), Holder> = HashMap::new();
    let mut served: HashSet<u64> = done;
    let with_grants = |granted: &HashMap<(&str, String), Holder>| -> Vec<(&str, DeviceView)> {
        base.iter()
            .map(|(c, v)| {
                let mut v = v.clone();
                if let Some(h) = granted.get(&(*c, v.name.to_string())) {
                    v.free = false;
                    v.held_by = Some(h.clone());
                }
                (*c, v)
            })
            .collect()
    };
    loop {
        let queue = waiting_queue(snap, &served);
        if queue.is_empty() {
            break;
        }
        let (views, by_name, queue) = offer_round(with_grants(&granted), queue);
        // As single-rack mode's driver: without fair share only available devices matter
        // to `assign` (pool::queue's proptest checks the two agree).
        let views: Vec<DeviceView> = if super::fair_share_applies(&queue, policy) {
            views
        } else {
            views.into_iter().filter(DeviceView::available).collect()
        };
        let picks = super::assign(&queue, &views, now, policy);
        if picks.is_empty() {
            break;
        }
        // The assignment transactions go out together: each waits on etcd's commit, and
        // etcd commits concurrent ones in one batch (one after the other, a burst of
        // requests took a commit each).
        let mut writes = tokio::task::JoinSet::new();
        for (id, name) in picks {
            let controller = by_name[name.as_str()];
            served.insert(id);
            let Some(r) = snap.requests.iter().find(|r| r.value.id == id) else {
                continue;
            };
            granted.insert(
                (controller, name.to_string()),
                Holder {
                    request: id,
                    assignee: r.value.spec.assignee.clone(),
                },
            );
            let mut nv = r.value.clone();
            nv.state = RequestState::Pending;
            nv.device = Some(name.to_string());
            nv.owner = Some(controller.to_owned());
            nv.explanation = None;
            nv.push_log(
                now,
                "scheduler",
                format!("assigned device {name} on controller {controller}"),
            );
            let (cluster, mod_revision) = (cluster.clone(), r.mod_revision);
            let controller = controller.to_owned();
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
    let views = with_grants(&granted);
    // Requests without `wait` that this search left without a device and whose bounded
    // search is over (or whose named device failed) end as on a single rack.
    let devices = Devices::new(&views);
    for r in &snap.requests {
        let v = &r.value;
        if !waiting(v) || served.contains(&v.id) {
            continue;
        }
        let Some((state, line)) = search_over(v, &devices, now, timings) else {
            continue;
        };
        end_as_leader(cluster, &lead, r, state, now, line).await?;
        served.insert(v.id);
    }
    // Why the others still wait, in single-rack mode's words, written only when it changed
    // and for at most REASON_BATCH requests a pass, front of the queue first.
    for (id, why) in reasons(snap, &served, &views, now, policy) {
        let Some(r) = snap.requests.iter().find(|r| r.value.id == id) else {
            continue;
        };
        let mut nv = r.value.clone();
        if nv.explanation.is_none() {
            nv.push_log(now, "scheduler", format!("queued: {why}"));
        }
        nv.explanation = Some(why);
        cluster
            .update_request_as_leader(&lead, &nv, r.mod_revision, None)
            .await?;
    }
    Ok(())
}

/// End request `r` in `state` as the scheduler, with the scheduler's log line saying why.
async fn end_as_leader(
    cluster: &Cluster,
    lead: &Leadership,
    r: &Versioned<SharedRequest>,
    state: RequestState,
    now: Millis,
    line: String,
) -> Result<(), ClusterError> {
    let mut nv = r.value.clone();
    nv.end(state, now, "scheduler", line);
    cluster
        .update_request_as_leader(lead, &nv, r.mod_revision, None)
        .await
        .map(|_| ())
}

/// The controller a waiting request is pinned to, with the device name: a named request
/// created in cluster mode names its rack (`RequestSpec::controller`).
fn pinned(spec: &super::RequestSpec) -> Option<(&str, &str)> {
    match (&spec.requested_device, &spec.controller) {
        (DeviceChoice::Named(n), Some(c)) => Some((c.as_str(), n.as_str())),
        _ => None,
    }
}

/// One round of the queue pass: `pool::queue::assign` matches devices by name, and names
/// are unique per rack only, so a round offers at most one available device per name (the
/// others stay in `views` as not free: they still count for fair share). The copy wanted by
/// a waiter pinned to its rack is offered first; a pinned waiter whose name is offered from
/// another rack sits this round out, so it is never handed another rack's device. Returns
/// the round's views, which controller offers each name, and the round's queue.
fn offer_round<'a>(
    round: Vec<(&'a str, DeviceView)>,
    queue: Vec<QueuedRequest>,
) -> (
    Vec<DeviceView>,
    HashMap<String, &'a str>,
    Vec<QueuedRequest>,
) {
    let wanted: HashSet<(&str, &str)> = queue.iter().filter_map(|q| pinned(&q.spec)).collect();
    let mut by_name: HashMap<String, &'a str> = HashMap::new();
    for first in [true, false] {
        for (c, v) in &round {
            if v.available() && (!first || wanted.contains(&(*c, v.name.as_str()))) {
                by_name.entry(v.name.to_string()).or_insert(*c);
            }
        }
    }
    let views = round
        .into_iter()
        .map(|(c, mut v)| {
            if v.available() && by_name.get(v.name.as_str()) != Some(&c) {
                v.free = false;
            }
            v
        })
        .collect();
    let queue = queue
        .into_iter()
        .filter(|q| match pinned(&q.spec) {
            Some((c, n)) => by_name.get(n).is_none_or(|o| *o == c),
            None => true,
        })
        .collect();
    (views, by_name, queue)
}

/// The waiting requests (but `skip`) whose explanation differs from the one they carry,
/// with the new one: at most [`REASON_BATCH`], in queue order. `views` are the cluster's
/// devices (with their controllers) as the queue pass left them; a request pinned to a rack
/// is explained over that rack's devices only, since no other rack's can serve it.
fn reasons(
    snap: &QueueSnapshot,
    skip: &HashSet<u64>,
    views: &[(&str, DeviceView)],
    now: Millis,
    policy: &QueuePolicy,
) -> Vec<(u64, String)> {
    let queue = waiting_queue(snap, skip);
    let by_id: HashMap<u64, &SharedRequest> = snap
        .requests
        .iter()
        .map(|r| (r.value.id, &r.value))
        .collect();
    let devices = Devices::new(views);
    super::position(&queue, devices.all(), now, policy)
        .into_iter()
        .filter_map(|(id, _)| {
            let r = by_id.get(&id)?;
            let why = devices.explain(&r.spec).to_string();
            (r.explanation.as_deref() != Some(why.as_str())).then_some((id, why))
        })
        .take(REASON_BATCH)
        .collect()
}

/// A local request holding one of this rack's devices for a shared request.
#[derive(Debug, Clone)]
struct Mirror {
    shared: u64,
    local: u64,
    expires: Millis,
    /// What preparing the device went through, as the owner saw it (time, line): written
    /// into the shared request's log with the next change the owner makes to it (ready,
    /// or back to the queue), so progress costs no writes of its own.
    notes: Vec<(Millis, String)>,
    /// The device's Lifeguard state last noted.
    seen: String,
}

/// Most progress notes a mirror keeps before they are written (the oldest are dropped).
const MAX_NOTES: usize = 20;

impl Mirror {
    fn new(shared: u64, local: u64, expires: Millis) -> Mirror {
        Mirror {
            shared,
            local,
            expires,
            notes: Vec::new(),
            seen: String::new(),
        }
    }

    fn note(&mut self, at: Millis, line: String) {
        self.notes.push((at, line));
        let over = self.notes.len().saturating_sub(MAX_NOTES);
        self.notes.drain(..over);
    }

    /// Move the notes into `r`'s log.
    fn flush(&mut self, r: &mut SharedRequest) {
        for (at, line) in self.notes.drain(..) {
            r.push_log(at, "owner", line);
        }
    }
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
        // (etcd commits concurrent writes in one batch).
        let mut writes = tokio::task::JoinSet::new();
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
                if self.view_settled(snap, &me, &a.device) {
                    let (cluster, me, device, id) =
                        (self.cluster.clone(), me.clone(), a.device.clone(), v.id);
                    writes.spawn(async move {
                        cluster
                            .release_assignment(&me, &device, id)
                            .await
                            .map(|_| None)
                    });
                }
                continue;
            }
            match mirror {
                None if v.state == RequestState::Pending => {
                    let seen = published_state(snap, &me, &a.device);
                    self.start_mirror(v, r.mod_revision, &a.device, seen)
                        .await?;
                }
                None => {}
                Some(mut m) => {
                    let local = self.pool.get(m.local).await.ok().flatten();
                    let state = local.as_ref().map(|l| l.snap.state);
                    if v.state == RequestState::Pending {
                        self.note_progress(snap, &me, &a.device, &mut m);
                        self.mirrors.insert(a.device.clone(), m.clone());
                    }
                    match state {
                        Some(RequestState::Ready) if v.state == RequestState::Pending => {
                            let mut nv = v.clone();
                            nv.state = RequestState::Ready;
                            m.flush(&mut nv);
                            nv.push_log(
                                self.clock.now(),
                                "owner",
                                format!("device {} on controller {me} is ready", a.device),
                            );
                            // A failed compare: the request changed meanwhile (returned,
                            // reassigned); the next pass sees what it is now, and the
                            // notes stay with the mirror for the next write. Only a
                            // report that landed takes the flushed mirror along.
                            let (cluster, rev) = (self.cluster.clone(), r.mod_revision);
                            let device = a.device.clone();
                            writes.spawn(async move {
                                let landed = cluster.update_request(&nv, rev, None).await?;
                                Ok(landed.then_some((device, m)))
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
                            m.flush(&mut nv);
                            nv.requeue(
                                self.clock.now(),
                                "owner",
                                format!(
                                    "back to the queue: preparing device {} on controller {me} failed (local request {})",
                                    a.device,
                                    state.map_or_else(|| "gone".to_owned(), |s| s.to_string())
                                ),
                            );
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
            match done {
                Ok(Ok(Some((device, m)))) => {
                    self.mirrors.insert(device, m);
                }
                Ok(Err(e)) => failed = Some(e),
                _ => {}
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
                        Mirror::new(a.assignment.request, id, local.snap.expires),
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

    /// Note the device's Lifeguard state when it changed since the last pass (flashing,
    /// rebooting, verifying…), as its rack published it.
    fn note_progress(&self, snap: &QueueSnapshot, me: &str, device: &str, m: &mut Mirror) {
        let state = published_state(snap, me, device);
        // `ready` is said by the ready line itself.
        if !state.is_empty() && state != "ready" && state != m.seen {
            m.note(
                self.clock.now(),
                format!("device {device} on controller {me}: {state}"),
            );
            m.seen = state;
        }
    }

    /// The device's view in etcd equals what this controller would publish now (one
    /// point read of the device's record: a pass runs on every change of this rack's
    /// assignments while returned devices self-test, so reading every device each time
    /// was most of its cost).
    fn view_settled(&self, snap: &QueueSnapshot, me: &str, device: &str) -> bool {
        let local = match self.pool.device_view(device) {
            Ok(Some(local)) => local,
            Ok(None) => return true,
            Err(e) => {
                tracing::debug!(device, error = %e, "cluster: cannot read a device's view");
                return false;
            }
        };
        let now = published(&local);
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
        seen: String,
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
                let mut m = Mirror::new(v.id, local.snap.id, v.expires);
                // Progress notes start from the state it was offered in (`ready`).
                m.seen = seen;
                m.note(
                    now,
                    format!(
                        "controller {} holds device {device} for it (local request {}); preparing it",
                        self.cluster.name(),
                        local.snap.id
                    ),
                );
                self.mirrors.insert(device.to_owned(), m);
                Ok(())
            }
            other => {
                let why = match &other {
                    Ok(l) => format!("its local request ended {}", l.snap.state),
                    Err(e) => e.clone(),
                };
                tracing::warn!(request = v.id, device, %why, "cluster: cannot hold an assigned device; back to the queue");
                let me = self.cluster.name().to_owned();
                let mut nv = v.clone();
                nv.requeue(
                    now,
                    "owner",
                    format!(
                        "back to the queue: controller {me} cannot hold device {device}: {why}"
                    ),
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::requests::{Assignment, test_request};

    fn device(name: &str) -> PublishedDevice {
        published(&DeviceView::new(name.parse().expect("name")))
    }

    fn request(
        id: u64,
        assignee: &str,
        priority: i32,
        state: RequestState,
    ) -> Arc<Versioned<SharedRequest>> {
        let mut value = test_request(id, assignee);
        value.spec.priority = priority;
        value.state = state;
        Arc::new(Versioned {
            value,
            mod_revision: 1,
        })
    }

    fn assignment(controller: &str, device: &str, request: u64) -> AssignmentRow {
        AssignmentRow {
            controller: controller.into(),
            device: device.into(),
            assignment: Assignment { request },
            create_revision: 1,
        }
    }

    /// Three racks whose devices all share the name `sim-0001`: alice holds the devices of
    /// rack-a and rack-b (ready requests 1 and 2); rack-c's is free; alice (priority 5,
    /// older) and bob (priority 0) wait.
    fn three_racks() -> QueueSnapshot {
        let mut held_a = device("sim-0001");
        held_a.available = false;
        held_a.held = true;
        let held_b = held_a.clone();
        QueueSnapshot {
            requests: vec![
                request(1, "alice", 0, RequestState::Ready),
                request(2, "alice", 0, RequestState::Ready),
                request(3, "alice", 5, RequestState::Queued),
                request(4, "bob", 0, RequestState::Queued),
            ],
            assignments: vec![
                assignment("rack-a", "sim-0001", 1),
                assignment("rack-b", "sim-0001", 2),
            ],
            devices: vec![
                ("rack-a".into(), held_a),
                ("rack-b".into(), held_b),
                ("rack-c".into(), device("sim-0001")),
            ],
            oldest_ended: Vec::new(),
        }
    }

    #[test]
    fn a_named_device_is_busy_as_its_rack_and_its_assignment_say() {
        // rack-a's sim-0001 is held by request 1 (ready) and published held; rack-b's is
        // held by request 2 too, but its rack still publishes it available (the owner has
        // not yet published the assignment); rack-c's is free.
        let mut snap = three_racks();
        snap.devices[1].1 = device("sim-0001");
        assert_eq!(
            busy(&snap, "rack-a", "sim-0001").as_deref(),
            Some("device sim-0001 on controller rack-a is busy: held by request 1")
        );
        assert_eq!(
            busy(&snap, "rack-b", "sim-0001").as_deref(),
            Some("device sim-0001 on controller rack-b is busy: held by request 2"),
            "the assignment counts, not the published view"
        );
        assert_eq!(
            busy(&snap, "rack-c", "sim-0001"),
            None,
            "another rack's copy"
        );
        assert_eq!(busy(&snap, "rack-q", "sim-0001"), None, "not published");
        // Request 1 was returned: its device stays busy until its owner frees the
        // assignment (once its rack has published it verified).
        Arc::make_mut(&mut snap.requests[0]).value.state = RequestState::Closed;
        let why = busy(&snap, "rack-a", "sim-0001").expect("busy");
        assert!(why.contains("request 1 ended"), "{why}");
        // No assignment: the published view decides, as single-rack mode's device state.
        snap.assignments.clear();
        snap.devices[0].1.state = "self_test".into();
        assert_eq!(
            busy(&snap, "rack-a", "sim-0001").as_deref(),
            Some(
                "device sim-0001 on controller rack-a is busy: it is in state self_test (pass \"wait\": seconds to queue for it)"
            )
        );
        snap.devices[0].1.state = "ready".into();
        assert!(
            busy(&snap, "rack-a", "sim-0001").is_some(),
            "still held there"
        );
        snap.devices[0].1.held = false;
        snap.devices[0].1.available = true;
        assert_eq!(busy(&snap, "rack-a", "sim-0001"), None);
        // A failed device may be requested, as on a single rack.
        snap.devices[0].1.state = "failed_sut_verifying".into();
        snap.devices[0].1.failed = true;
        snap.devices[0].1.available = false;
        assert_eq!(busy(&snap, "rack-a", "sim-0001"), None);
    }

    #[test]
    fn progress_notes_are_bounded_and_written_once() {
        let mut m = Mirror::new(4, 9, Millis(0));
        for i in 0..(MAX_NOTES as u64 + 3) {
            m.note(Millis(i), format!("note {i}"));
        }
        let mut r = request(4, "alice", 0, RequestState::Pending).value.clone();
        m.flush(&mut r);
        assert_eq!(r.log.len(), MAX_NOTES);
        assert_eq!(r.log[0].message, "note 3", "the oldest notes went");
        assert!(r.log.iter().all(|l| l.source == "owner"));
        m.flush(&mut r);
        assert_eq!(
            r.log.len(),
            MAX_NOTES,
            "flushed notes are not written twice"
        );
    }

    #[test]
    fn holdings_on_every_rack_count_for_fair_share() {
        let snap = three_racks();
        let views = cluster_views(&snap);
        let holders: Vec<Option<u64>> = views
            .iter()
            .map(|(_, v)| v.held_by.as_ref().map(|h| h.request))
            .collect();
        assert_eq!(holders, vec![Some(1), Some(2), None]);
        let views: Vec<DeviceView> = views.into_iter().map(|(_, v)| v).collect();
        let queue = waiting_queue(&snap, &HashSet::new());
        let policy = QueuePolicy::default();
        // Alice holds 2 of 3 (her share, ⌈3/2⌉): bob is served first despite priority,
        // exactly as single-rack mode decides over the same inventory.
        let picks = super::super::assign(&queue, &views, Millis(10), &policy);
        assert_eq!(picks.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![4]);
        assert_eq!(
            queue_positions(&snap, Millis(10), &policy),
            vec![(4, 1), (3, 2)]
        );
        // Seeing only the available device (as before), alice's priority would win.
        let available: Vec<DeviceView> = views.iter().filter(|v| v.available()).cloned().collect();
        let blind = super::super::assign(&queue, &available, Millis(10), &policy);
        assert_eq!(blind.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn a_returned_requests_device_is_neither_free_nor_held() {
        let mut snap = three_racks();
        Arc::make_mut(&mut snap.requests[0]).value.state = RequestState::Closed;
        let views = cluster_views(&snap);
        assert!(views[0].1.held_by.is_none());
        assert!(
            !views[0].1.available(),
            "not offered before its owner frees it"
        );
        // Alice now holds 1 of 3, under her share: her priority wins.
        assert_eq!(
            queue_positions(&snap, Millis(10), &QueuePolicy::default()),
            vec![(3, 1), (4, 2)]
        );
    }

    #[test]
    fn reasons_use_single_rack_wording_and_are_written_only_when_changed() {
        let mut snap = three_racks();
        snap.devices.truncate(2);
        // The views borrow their controller names from a copy, so `snap` can change below.
        let racks = snap.clone();
        let views = cluster_views(&racks);
        let plain: Vec<DeviceView> = views.iter().map(|(_, v)| v.clone()).collect();
        let policy = QueuePolicy::default();
        let got = reasons(&snap, &HashSet::new(), &views, Millis(10), &policy);
        let expect = super::super::explain(&snap.requests[2].value.spec, &plain).to_string();
        assert!(expect.contains("2 held"), "{expect}");
        // Queue order: alice holds both devices, over her share, so bob comes first.
        assert_eq!(got, vec![(4, expect.clone()), (3, expect.clone())]);
        // Already carried: not written again.
        Arc::make_mut(&mut snap.requests[3]).value.explanation = Some(expect.clone());
        let got = reasons(&snap, &HashSet::new(), &views, Millis(10), &policy);
        assert_eq!(got, vec![(3, expect)]);
    }

    #[test]
    fn reasons_are_bounded_per_pass_front_of_the_queue_first() {
        let mut snap = three_racks();
        for id in 10..1010 {
            snap.requests
                .push(request(id, "carol", 0, RequestState::Queued));
        }
        let views = cluster_views(&snap);
        let got = reasons(
            &snap,
            &HashSet::new(),
            &views,
            Millis(10),
            &QueuePolicy::default(),
        );
        assert_eq!(got.len(), REASON_BATCH);
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        let order: Vec<u64> = queue_positions(&snap, Millis(10), &QueuePolicy::default())
            .into_iter()
            .take(REASON_BATCH)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, order);
    }

    #[test]
    fn a_ready_device_of_a_gone_controller_still_counts_for_fair_share() {
        // Alice holds rack-a's device (ready; rack-a's lease is gone, so the device is not
        // published) and rack-b's; rack-c and rack-d each have a free one.
        let mut snap = three_racks();
        snap.devices.remove(0);
        snap.devices.push(("rack-d".into(), device("sim-0001")));
        let views = cluster_views(&snap);
        let gone = views
            .iter()
            .find(|(c, _)| *c == "rack-a")
            .expect("the gone device is still counted");
        assert_eq!(gone.1.held_by.as_ref().map(|h| h.request), Some(1));
        assert!(!gone.1.available(), "never offered");
        // She holds 2 of the 4 matching devices (her share, ⌈4/2⌉): bob comes first. Not
        // counting the gone device she would hold 1 of 3 and her priority would win.
        let policy = QueuePolicy::default();
        assert_eq!(
            queue_positions(&snap, Millis(10), &policy),
            vec![(4, 1), (3, 2)]
        );
        // Only a ready request keeps a gone controller's device: a pending one goes back to
        // the queue, so its device does not count.
        Arc::make_mut(&mut snap.requests[0]).value.state = RequestState::Pending;
        assert!(cluster_views(&snap).iter().all(|(c, _)| *c != "rack-a"));
        assert_eq!(
            queue_positions(&snap, Millis(10), &policy),
            vec![(3, 1), (4, 2)]
        );
    }

    #[test]
    fn a_gone_device_is_described_by_what_its_holder_asked_for() {
        let mut r = request(1, "alice", 0, RequestState::Ready).value.clone();
        r.spec.pool = Some("b2g".into());
        let v = gone_device("sim-0009", &r).expect("valid name");
        let mut wants_b2g = r.spec.clone();
        wants_b2g.assignee = "bob".into();
        assert!(super::super::matches(&wants_b2g, &v));
        let mut wants_other = wants_b2g.clone();
        wants_other.processor = Some("armv7".into());
        assert!(
            !super::super::matches(&wants_other, &v),
            "a criterion its holder did not ask for is unknown"
        );
        assert!(gone_device("not a name!", &r).is_none());
    }

    fn pinned_queue(id: u64, controller: &str) -> QueuedRequest {
        let r = request(id, "alice", 0, RequestState::Queued).value.clone();
        let mut spec = r.spec;
        spec.requested_device = DeviceChoice::Named("sim-0001".parse().expect("name"));
        spec.controller = Some(controller.into());
        QueuedRequest {
            id,
            spec,
            since: r.since,
        }
    }

    #[test]
    fn a_pinned_request_gets_its_racks_device_only() {
        let free = |c: &'static str| (c, view(&device("sim-0001")));
        // Both racks offer sim-0001; the waiter pinned to rack-b gets rack-b's.
        let round = vec![free("rack-a"), free("rack-b")];
        let (views, by_name, queue) = offer_round(round, vec![pinned_queue(7, "rack-b")]);
        assert_eq!(by_name["sim-0001"], "rack-b");
        assert_eq!(
            views.iter().map(DeviceView::available).collect::<Vec<_>>(),
            vec![false, true]
        );
        assert_eq!(queue.len(), 1);
        let picks = super::super::assign(&queue, &views, Millis(10), &QueuePolicy::default());
        assert_eq!(picks.len(), 1);
        assert_eq!(by_name[picks[0].1.as_str()], "rack-b");
        // Only rack-a's is free: the waiter pinned to rack-b sits the round out instead of
        // taking it; an unpinned waiter for the name still may.
        let mut busy = view(&device("sim-0001"));
        busy.free = false;
        let round = vec![free("rack-a"), ("rack-b", busy)];
        let mut unpinned = pinned_queue(8, "rack-b");
        unpinned.spec.controller = None;
        let (_, by_name, queue) = offer_round(round, vec![pinned_queue(7, "rack-b"), unpinned]);
        assert_eq!(by_name["sim-0001"], "rack-a");
        assert_eq!(queue.iter().map(|q| q.id).collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn a_pinned_request_is_explained_over_its_rack_only() {
        // Bob waits for rack-a's sim-0001 (held by alice); rack-c's sim-0001 is free but
        // not his, so he waits because his device is held, not "1 free".
        let mut snap = three_racks();
        snap.requests.truncate(2);
        let mut bob = request(4, "bob", 0, RequestState::Queued);
        Arc::make_mut(&mut bob).value.spec.requested_device =
            DeviceChoice::Named("sim-0001".parse().expect("name"));
        Arc::make_mut(&mut bob).value.spec.controller = Some("rack-a".into());
        snap.requests.push(bob);
        let views = cluster_views(&snap);
        let got = reasons(
            &snap,
            &HashSet::new(),
            &views,
            Millis(10),
            &QueuePolicy::default(),
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].1.ends_with("of 1 matching all criteria: 1 held"),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn a_search_without_wait_is_bounded_as_on_a_single_rack() {
        let t = Timings::default();
        // Single-rack mode searches at once, then every 10 s: `any` gives up at its 60th
        // try (590 s on), a named device at its 2nd (10 s on). `wait` counts from arrival
        // (or the return to the queue).
        let any = request(5, "alice", 0, RequestState::Queued).value.clone();
        assert_eq!(wait_over(&any, &t), Millis(5 + 590_000));
        assert_eq!(wait_over(&any, &t.scaled(0.01)), Millis(5 + 5_900));
        let mut named = any.clone();
        named.spec.requested_device = DeviceChoice::Named("sim-0001".parse().expect("name"));
        assert_eq!(wait_over(&named, &t), Millis(5 + 10_000));
        let mut waits = any.clone();
        waits.spec.wait = Some(120);
        assert_eq!(wait_over(&waits, &t), Millis(5 + 120_000));
        // Back in the queue after its assignment fell through, it searches afresh.
        let mut back = any.clone();
        back.state = RequestState::Pending;
        back.requeue(Millis(700_000), "owner", "back to the queue: test");
        assert_eq!(back.state, RequestState::Queued);
        assert_eq!(wait_over(&back, &t), Millis(700_000 + 590_000));
        let mut waits_back = waits.clone();
        waits_back.requeue(Millis(700_000), "owner", "back to the queue: test");
        assert_eq!(
            wait_over(&waits_back, &t),
            Millis(700_000 + 120_000),
            "a whole wait again"
        );
        // The scheduler's next deadline is the search's end (before its expiry at 1,000 s).
        let snap = |r: SharedRequest| QueueSnapshot {
            requests: vec![Arc::new(Versioned {
                value: r,
                mod_revision: 1,
            })],
            assignments: Vec::new(),
            devices: Vec::new(),
            oldest_ended: Vec::new(),
        };
        let keep = Duration::from_secs(86_400);
        assert_eq!(
            next_deadline(&snap(any), Millis(5), keep, &t),
            Some(Duration::from_secs(590))
        );
        assert_eq!(
            next_deadline(&snap(named), Millis(5), keep, &t),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            next_deadline(&snap(back), Millis(700_000), keep, &t),
            Some(Duration::from_secs(300)),
            "its expiry comes first"
        );
    }

    #[test]
    fn a_search_without_wait_ends_as_on_a_single_rack() {
        let t = Timings::default();
        // rack-a's and rack-b's sim-0001 are held; rack-c's has failed.
        let mut snap = three_racks();
        let failed = &mut snap.devices[2].1;
        failed.state = "failed_self_test".to_owned();
        failed.failed = true;
        failed.available = false;
        let views = cluster_views(&snap);
        let devices = Devices::new(&views);
        let all: Vec<DeviceView> = views.iter().map(|(_, v)| v.clone()).collect();
        // `any` (bob, arrived at 4 ms): not found once its 60th try is due.
        let any = snap.requests[3].value.clone();
        assert_eq!(search_over(&any, &devices, Millis(4 + 589_999), &t), None);
        let why = super::super::explain(&any.spec, &all).to_string();
        assert!(why.ends_with("2 held, 1 in failed_self_test"), "{why}");
        assert_eq!(
            search_over(&any, &devices, Millis(4 + 590_000), &t),
            Some((
                RequestState::FailedDeviceNotFound,
                format!("no device found after 60 tries: {why}")
            ))
        );
        // Named, rack-c's failed device: a bad device at once.
        let mut named = any.clone();
        named.spec.requested_device = DeviceChoice::Named("sim-0001".parse().expect("name"));
        named.spec.controller = Some("rack-c".into());
        assert_eq!(
            search_over(&named, &devices, Millis(5), &t),
            Some((
                RequestState::FailedBadDevice,
                "device sim-0001 is failed: 1 device matches device=sim-0001; of 1 matching all criteria: 1 in failed_self_test".to_owned()
            ))
        );
        // Named, rack-a's held device (another rack's copy failing does not count): busy
        // once its 2nd try is due.
        named.spec.controller = Some("rack-a".into());
        assert_eq!(search_over(&named, &devices, Millis(5), &t), None);
        assert_eq!(
            search_over(&named, &devices, Millis(4 + 10_000), &t),
            Some((
                RequestState::FailedDeviceBusy,
                "device sim-0001 is busy after 2 tries: 1 device matches device=sim-0001; of 1 matching all criteria: 1 held".to_owned()
            ))
        );
        // With `wait`, only the wait decides, with the reason it carries.
        let mut waits = any;
        waits.spec.wait = Some(1);
        assert_eq!(
            search_over(&waits, &devices, Millis(u64::MAX / 2), &t),
            None
        );
        assert_eq!(wait_ran_out(&waits, Millis(1003), &t), None);
        assert_eq!(
            wait_ran_out(&waits, Millis(1004), &t).as_deref(),
            Some("no device found within its wait")
        );
        waits.explanation = Some("no criteria".into());
        assert_eq!(
            wait_ran_out(&waits, Millis(1004), &t).as_deref(),
            Some("no device found within its wait: no criteria")
        );
    }
}
