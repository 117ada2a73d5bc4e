//! The request driver: the async side of the request layer.
//!
//! Every request event runs inside one store write: the pure machine
//! ([`step`](super::step)) decides, and its actions run in the same transaction where they
//! touch the store: a queue pass
//! ([`assign`]) hands free devices to waiting requests, and contacting Lifeguard (holding
//! the device and making it accept `please_image`/`please_power_cycle`) happens in that same
//! transaction, so no device is ever held twice and a device that is not free is never
//! assigned. Hardware work started by Lifeguard runs after the commit.
//!
//! Requests are woken by their own timers (the store's request deadline index), by
//! Lifeguard's reports (imaging results, devices becoming free) and by the API.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Action, DeviceChoice, DeviceView, Event, Holder, ImagingResult, LifeguardEvent, QueuePolicy,
    QueuedRequest, RequestSnapshot, RequestSpec, RequestState, Timings, assign, explain,
    fair_share_applies, needs_image, satisfiable, select,
};
use crate::domain::clock::{Clock, Millis};
use crate::domain::heartbeat::Heartbeat;
use crate::domain::lock;
use crate::domain::model::{Device, request_subject};
use crate::lifeguard::store::{Applied, ApplyError, apply};
use crate::lifeguard::{self, Lifeguard, Refused, Report, Reports};
use crate::storage::logs::{NewLog, append};
use crate::storage::requests::{self, StoredRequest};
use crate::storage::{Snapshot, Store, StoreError, Tx, history, inventory as inv, next_counter};

/// Deepest chain of request events one call may cause (search → assign → contact → lost →
/// search ...). Deeper chains continue on the next timer tick.
const MAX_DEPTH: u32 = 8;

/// Why a pool call failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    // The variant's name and the wrapped error say it all.
    #[allow(missing_docs)]
    Store(#[from] StoreError),
    /// No such request.
    #[error("no request with id {0}")]
    NoRequest(u64),
    /// No such device.
    #[error("no device named {0}")]
    NoDevice(String),
    /// No such image.
    #[error("no image named {0}")]
    NoImage(String),
    /// The named device is busy and the request did not ask to wait (HTTP 409).
    #[error("{0}")]
    Busy(String),
    /// The request's state ignored the event (HTTP 409).
    #[error("{0}")]
    Ignored(String),
}

/// Settings the in-transaction code needs.
#[derive(Debug, Clone)]
struct Ctx {
    timings: Timings,
    policy: QueuePolicy,
    lg: lifeguard::Timings,
    server: String,
}

/// What to do after a commit, plus what one write closure may reuse while it runs.
#[derive(Debug, Default)]
struct Post {
    lifeguard: Vec<Applied>,
    /// Requests written by the closure: subscribers and these requests' status long polls
    /// are woken after the commit.
    touched: Vec<u64>,
    /// Every device as the queue sees it ([`DeviceView`], with its holder's assignee), as
    /// this transaction last read it. Built once and reused by the nested steps of one
    /// request event (create's satisfiability check → search → queue pass → explanation)
    /// instead of decoding the whole inventory and the open requests for each (~10 ms with
    /// 10,000 devices). Dropped by every device write made through this closure
    /// ([`contact_lifeguard`], [`release`], the only ones here); a holder changes only with
    /// such a write, so the assignees cannot go stale otherwise.
    views: Option<Arc<Vec<DeviceView>>>,
    /// [`free_pick`]'s answer for one request, found when the request was created and
    /// reused by the queue pass that follows in the same closure. Dropped with `views`.
    pick: Option<(u64, Option<DeviceView>)>,
}

impl Post {
    /// The closure wrote a device: what it cached about devices is stale.
    fn devices_written(&mut self) {
        self.views = None;
        self.pick = None;
    }
}

/// All devices as the queue sees them, built once per write closure until a device is
/// written (see [`Post::views`]).
fn views_in_tx(tx: &Tx<'_>, post: &mut Post) -> Result<Arc<Vec<DeviceView>>, StoreError> {
    if let Some(v) = &post.views {
        return Ok(v.clone());
    }
    let open = requests::open_in_tx(tx)?;
    let assignees = assignees(&open);
    let mut views = Vec::with_capacity(usize::try_from(inv::device_count_in_tx(tx)?).unwrap_or(0));
    inv::for_each_device_in_tx(tx, |d| {
        views.extend(device_view(d, &assignees));
        Ok(())
    })?;
    let v = Arc::new(views);
    post.views = Some(v.clone());
    Ok(v)
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    ctx: Ctx,
    lifeguard: Lifeguard,
    /// Lifeguard's reports, until [`Pool::start`] takes them to follow.
    reports: std::sync::Mutex<Option<Reports>>,
    /// One channel per request that a status long poll is waiting on (see [`RequestWatch`]).
    watchers: std::sync::Mutex<HashMap<u64, watch::Sender<u64>>>,
    wake: Notify,
    kick: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Beaten by the timer loop; the systemd watchdog stops pinging when it goes stale.
    heartbeat: Option<Heartbeat>,
}

/// Handle to the request driver. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A driver over `lifeguard` and its `reports`; call [`Pool::start`] to run its timers.
    /// `heartbeat` is beaten by the timer loop on every pass (at least once a second).
    #[allow(clippy::too_many_arguments)]
    #[must_use]
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        timings: Timings,
        policy: QueuePolicy,
        (lifeguard, reports): (Lifeguard, Reports),
        server: String,
        heartbeat: Option<Heartbeat>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Pool {
        let ctx = Ctx {
            timings,
            policy,
            lg: lifeguard.timings().clone(),
            server,
        };
        Pool {
            inner: Arc::new(Inner {
                store,
                clock,
                ctx,
                lifeguard,
                reports: std::sync::Mutex::new(Some(reports)),
                watchers: std::sync::Mutex::default(),
                wake: Notify::new(),
                kick: Notify::new(),
                shutdown,
                tasks,
                heartbeat,
            }),
        }
    }

    /// Request timings in use.
    #[must_use]
    pub fn timings(&self) -> &Timings {
        &self.inner.ctx.timings
    }

    /// Queue policy in use (cluster mode's status answers positions with it too).
    #[must_use]
    pub fn policy(&self) -> &QueuePolicy {
        &self.inner.ctx.policy
    }

    /// Follow one request: [`RequestWatch::changed`] returns after the next commit that
    /// writes it. Only that request's waiters wake, not every long poll of the pool.
    #[must_use]
    pub fn watch_request(&self, id: u64) -> RequestWatch {
        let mut watchers = lock(&self.inner.watchers);
        let rx = watchers
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        RequestWatch {
            inner: self.inner.clone(),
            id,
            rx: Some(rx),
        }
    }

    /// How many requests have a status long poll waiting on them.
    #[must_use]
    pub fn watched_requests(&self) -> usize {
        lock(&self.inner.watchers).len()
    }

    /// Every device as the queue sees it, read from one snapshot (holders without their
    /// assignee): what cluster mode publishes for the other controllers.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub async fn device_views(&self) -> Result<Vec<DeviceView>, StoreError> {
        self.inner
            .store
            .read(|snap| {
                let none = HashMap::new();
                let mut views = Vec::new();
                snap.for_each_device(|d| {
                    views.extend(device_view(&d, &none));
                    Ok(())
                })?;
                Ok(views)
            })
            .await
    }

    /// One device as the queue sees it (as [`Pool::device_views`] shows it), `None` when
    /// there is no such device: a point read on the calling thread.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn device_view(&self, name: &str) -> Result<Option<DeviceView>, StoreError> {
        let d = self.inner.store.peek(|snap| snap.device(name))?;
        Ok(d.and_then(|d| device_view(&d, &HashMap::new())))
    }

    /// Every open request (not closed or failed), as stored: cluster mode's owner looks for
    /// the mirrors an earlier process of this controller left behind.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub async fn open_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
        self.inner.store.read(|snap| snap.requests(true)).await
    }

    /// A device changed outside Lifeguard (a tech settled its address change) and may be
    /// free now: run a queue pass.
    pub fn device_changed(&self) {
        self.inner.kick.notify_one();
    }

    /// Run the timers and the queue passes until shutdown.
    pub fn start(&self) {
        let this = self.clone();
        self.inner
            .tasks
            .spawn(async move { this.timer_loop().await });
        let this = self.clone();
        self.inner
            .tasks
            .spawn(async move { this.pass_loop().await });
        if let Some(reports) = lock(&self.inner.reports).take() {
            let this = self.clone();
            self.inner
                .tasks
                .spawn(async move { this.follow_reports(reports).await });
        }
        // Requests may have been waiting across a restart.
        self.inner.kick.notify_one();
    }

    /// Run `f` in one store write with the driver's settings and a fresh [`Post`], then
    /// carry out what the post collected once the commit is durable.
    async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>, Millis, &Ctx, &mut Post) -> Result<T, StoreError> + Send + 'static,
    {
        let c = self.inner.ctx.clone();
        let (value, post) = self
            .inner
            .store
            .write(move |tx, now| {
                let mut post = Post::default();
                let value = f(tx, now, &c, &mut post)?;
                Ok((value, post))
            })
            .await?;
        self.after_commit(post);
        Ok(value)
    }

    fn after_commit(&self, post: Post) {
        for a in post.lifeguard {
            self.inner.lifeguard.execute(a);
        }
        if !post.touched.is_empty() {
            let watchers = lock(&self.inner.watchers);
            for id in &post.touched {
                if let Some(w) = watchers.get(id) {
                    w.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
        self.inner.wake.notify_one();
    }

    /// Create a request and run its first search. A named device that is busy, when the
    /// request does not ask to wait, is refused with [`PoolError::Busy`] and nothing is stored.
    ///
    /// # Errors
    /// [`PoolError`].
    pub async fn create(
        &self,
        spec: RequestSpec,
        duration_secs: u64,
        owner_token: Option<String>,
    ) -> Result<StoredRequest, PoolError> {
        self.transact(move |tx, now, c, post| {
            create_tx(tx, now, c, spec, duration_secs, owner_token, post)
        })
        .await?
    }

    /// Deliver an event to a request. Returns the request after it, and whether its state
    /// took the event.
    ///
    /// # Errors
    /// [`PoolError::NoRequest`] or a store failure.
    pub async fn deliver(
        &self,
        id: u64,
        event: Event,
        actor: Option<String>,
    ) -> Result<(bool, StoredRequest), PoolError> {
        let result = self
            .transact(move |tx, now, c, post| {
                if let Some(a) = &actor {
                    let name = event.name();
                    append(
                        tx,
                        now,
                        NewLog::new(
                            request_subject(id),
                            "api",
                            format!("{name} requested by {a}"),
                        )
                        .by(Some(a.clone())),
                    )?;
                }
                let accepted = deliver_tx(tx, now, c, id, event, post, 0)?;
                let r = requests::get_in_tx(tx, id)?;
                Ok(accepted.zip(r))
            })
            .await?;
        result.ok_or(PoolError::NoRequest(id))
    }

    /// One request.
    ///
    /// # Errors
    /// Store failure.
    pub async fn get(&self, id: u64) -> Result<Option<StoredRequest>, StoreError> {
        self.inner.store.peek(move |snap| snap.request(id))
    }

    /// The request's 1-based position among waiting requests, if it is waiting.
    ///
    /// # Errors
    /// Store failure.
    pub async fn queue_position(&self, id: u64) -> Result<Option<usize>, StoreError> {
        let policy = self.inner.ctx.policy.clone();
        let now = self.inner.clock.now();
        self.inner
            .store
            .read(move |snap| {
                let open = snap.requests(true)?;
                let waiting = waiting(&open);
                if !waiting.iter().any(|w| w.id == id) {
                    return Ok(None);
                }
                let assignees = assignees(&open);
                let mut views = Vec::with_capacity(snap.device_count()?);
                snap.for_each_device(|d| {
                    views.extend(device_view(&d, &assignees));
                    Ok(())
                })?;
                Ok(super::position(&waiting, &views, now, &policy)
                    .into_iter()
                    .find(|(r, _)| *r == id)
                    .map(|(_, p)| p))
            })
            .await
    }

    async fn run_pass(&self) {
        let result = self
            .transact(|tx, now, c, post| run_pass(tx, now, c, post, 0))
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "queue pass failed");
        }
    }

    async fn pass_loop(&self) {
        loop {
            tokio::select! {
                () = self.inner.kick.notified() => {}
                () = self.inner.shutdown.cancelled() => break,
            }
            self.run_pass().await;
        }
    }

    async fn timer_loop(&self) {
        let inner = &self.inner;
        let timer = crate::domain::timers::TimerLoop {
            clock: inner.clock.as_ref(),
            wake: &inner.wake,
            shutdown: &inner.shutdown,
            heartbeat: inner.heartbeat.as_ref(),
        };
        timer.run(self).await;
    }

    /// Deliver `Expire` (past the lease and its grace) or `Timeout` to every due request;
    /// whether any moved.
    async fn timeout_pass(&self, now: Millis) -> bool {
        let due = self
            .inner
            .store
            .peek(move |snap| snap.due_requests(now, 512));
        let ids = match due {
            Ok(ids) if !ids.is_empty() => ids,
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(error = %e, "cannot read request deadlines");
                return false;
            }
        };
        let result = self
            .transact(move |tx, now, c, post| {
                let grace = c.timings.grace;
                for id in ids {
                    let Some(r) = requests::get_in_tx(tx, id)? else {
                        continue;
                    };
                    let event = if now >= r.snap.expires.plus(grace) {
                        Event::Expire
                    } else {
                        Event::Timeout {
                            generation: r.snap.generation,
                        }
                    };
                    deliver_tx(tx, now, c, id, event, post, 0)?;
                }
                Ok(!post.touched.is_empty())
            })
            .await;
        match result {
            Ok(progressed) => progressed,
            Err(e) => {
                tracing::error!(error = %e, "request timer pass failed");
                false
            }
        }
    }
}

impl Pool {
    /// Follow Lifeguard's reports until shutdown: an imaging result goes to its request (on
    /// a task of its own, so one slow delivery does not hold up the rest), and a device
    /// that became free starts a queue pass.
    async fn follow_reports(&self, mut reports: Reports) {
        loop {
            let report = tokio::select! {
                r = reports.recv() => match r { Some(r) => r, None => break },
                () = self.inner.shutdown.cancelled() => break,
            };
            match report {
                Report::ImagingResult {
                    request,
                    device,
                    result,
                } => {
                    let Ok(device) = device.parse() else { continue };
                    let imaging_result = match result {
                        lifeguard::ImagingResult::Complete => ImagingResult::Complete,
                        lifeguard::ImagingResult::FailedBadDevice => ImagingResult::FailedBadDevice,
                        lifeguard::ImagingResult::FailedBadImage => ImagingResult::FailedBadImage,
                    };
                    let this = self.clone();
                    self.inner.tasks.spawn(async move {
                        let event = Event::LifeguardFinished {
                            device,
                            imaging_result,
                        };
                        if let Err(e) = this.deliver(request, event, None).await {
                            tracing::warn!(request, error = %e, "could not deliver an imaging result");
                        }
                    });
                }
                Report::DeviceAvailable { .. } => self.inner.kick.notify_one(),
            }
        }
    }
}

/// A subscription to one request's commits, from [`Pool::watch_request`].
pub struct RequestWatch {
    inner: Arc<Inner>,
    id: u64,
    rx: Option<watch::Receiver<u64>>,
}

impl RequestWatch {
    /// Wait for the next commit that writes the request (returns at once if one happened
    /// since the last call or since the watch was made).
    pub async fn changed(&mut self) {
        if let Some(rx) = &mut self.rx {
            // The sender lives in the pool's map as long as a receiver does.
            let _ = rx.changed().await;
        }
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut watchers = lock(&self.inner.watchers);
        if watchers
            .get(&self.id)
            .is_some_and(|w| w.receiver_count() == 0)
        {
            watchers.remove(&self.id);
        }
    }
}

/// Waiting requests as the queue sees them.
fn waiting(open: &[StoredRequest]) -> Vec<QueuedRequest> {
    open.iter()
        .filter(|r| r.snap.state.is_waiting())
        .map(|r| QueuedRequest {
            id: r.snap.id,
            spec: r.snap.spec.clone(),
            since: r.snap.spec.created,
        })
        .collect()
}

/// The assignee of each open request, by id: what a device view names as its holder.
fn assignees(open: &[StoredRequest]) -> HashMap<u64, &str> {
    open.iter()
        .map(|r| (r.snap.id, r.snap.spec.assignee.as_str()))
        .collect()
}

/// One device as the queue sees it; `assignees` names the holder's assignee by request id.
fn device_view(d: &Device, assignees: &HashMap<u64, &str>) -> Option<DeviceView> {
    let mut v = DeviceView::new(d.name.clone());
    v.lifeguard_state.replace_range(.., d.state.name());
    v.free = d.available();
    v.failed = d.state.is_failed();
    v.retired = d.retired;
    v.held_by = d.request.map(|request| Holder {
        request,
        assignee: assignees
            .get(&request)
            .map_or_else(String::new, |a| (*a).to_owned()),
    });
    v.environment = d.facts.environment.as_deref().and_then(|e| e.parse().ok());
    v.hardware_type = d
        .facts
        .hardware_type
        .as_deref()
        .and_then(|h| h.parse().ok());
    v.processor.clone_from(&d.facts.processor);
    v.pool.clone_from(&d.facts.pool);
    v.os_version.clone_from(&d.facts.os_version);
    v.current_image = d
        .lifeguard
        .current_image
        .as_deref()
        .and_then(|i| i.parse().ok());
    v.current_boot_config
        .clone_from(&d.lifeguard.current_boot_config);
    Some(v)
}

/// The device [`select::best`] would pick for `spec` among every device, found through
/// the free-device index: a free device already running a reusable image is usually the
/// first one looked at, so with one waiting request a pass reads a handful of records
/// instead of the whole inventory. Only free devices can be picked, and only they are read.
fn free_pick(tx: &Tx<'_>, spec: &RequestSpec) -> Result<Option<DeviceView>, StoreError> {
    if spec.can_reuse {
        let none = HashMap::new();
        // Name order within one image: the first reusable match is the best device.
        let mut found = None;
        inv::visit_free_devices_in_tx(tx, Some(spec.image.as_str()), |d| {
            found = device_view(&d, &none)
                .filter(|v| v.available() && select::matches(spec, v) && select::reusable(spec, v));
            Ok(if found.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(select::best(spec, &free_views(tx)?).cloned())
}

/// Every device the pool may hand out right now, as the queue sees it, read through the
/// free-device index: the records of busy devices are not decoded. Nobody holds a free
/// device, so the views name no holder.
fn free_views(tx: &Tx<'_>) -> Result<Vec<DeviceView>, StoreError> {
    let none = HashMap::new();
    let mut views = Vec::new();
    inv::visit_free_devices_in_tx(tx, None, |d| {
        views.extend(device_view(&d, &none));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(views)
}

fn create_tx(
    tx: &Tx<'_>,
    now: Millis,
    c: &Ctx,
    mut spec: RequestSpec,
    duration_secs: u64,
    owner_token: Option<String>,
    post: &mut Post,
) -> Result<Result<StoredRequest, PoolError>, StoreError> {
    let Some(image) = inv::image_in_tx(tx, spec.image.as_str())? else {
        return Ok(Err(PoolError::NoImage(spec.image.to_string())));
    };
    spec.can_reuse = image.can_reuse;
    spec.boot_config_keys.clone_from(&image.boot_config_keys);
    spec.created = now;
    if let DeviceChoice::Named(name) = &spec.requested_device {
        let Some(d) = inv::device_in_tx(tx, name.as_str())?.filter(|d| !d.retired) else {
            return Ok(Err(PoolError::NoDevice(name.to_string())));
        };
        if spec.wait.is_none() && !d.state.is_failed() {
            if let Some(held) = d.request {
                return Ok(Err(PoolError::Busy(format!(
                    "device {name} is busy: held by request {held}"
                ))));
            }
            if !d.state.is_free_for_pool() {
                return Ok(Err(PoolError::Busy(format!(
                    "device {name} is busy: it is in state {} (pass \"wait\": seconds to queue for it)",
                    d.state
                ))));
            }
        }
    }
    let id = next_counter(tx, "next_request_id")?;
    let (expires, capped) = c.timings.lease_end(now, duration_secs);
    let snap = RequestSnapshot::new(id, spec, expires);
    let mut note = format!(
        "request created for {} by {}: {} with image {}",
        snap.spec.assignee,
        owner_token.as_deref().unwrap_or("anonymous"),
        snap.spec.requested_device,
        snap.spec.image
    );
    if capped {
        note.push_str(&format!(
            " (duration capped at {} s)",
            c.timings.max_duration.as_secs()
        ));
    }
    // A free device that fits proves the request satisfiable without reading the inventory.
    let pick = free_pick(tx, &snap.spec)?;
    let fits = pick.is_some();
    post.pick = Some((id, pick));
    let unsatisfiable = if fits {
        None
    } else {
        satisfiable(&snap.spec, &views_in_tx(tx, post)?).err()
    };
    let stored = StoredRequest {
        snap,
        server: c.server.clone(),
        owner_token,
        explanation: None,
    };
    requests::replace(tx, None, &stored, c.timings.grace)?;
    post.touched.push(id);
    append(
        tx,
        now,
        NewLog::new(request_subject(id), "api", note).by(stored.owner_token.clone()),
    )?;
    let event = match unsatisfiable {
        Some(u) => Event::Unsatisfiable { reason: u.reason },
        None => Event::FindDevice,
    };
    deliver_tx(tx, now, c, id, event, post, 0)?;
    let r = requests::get_in_tx(tx, id)?;
    Ok(r.ok_or(PoolError::NoRequest(id)))
}

/// Deliver one event to a request and run its actions. `None` when there is no such
/// request; otherwise whether its state took the event.
fn deliver_tx(
    tx: &Tx<'_>,
    now: Millis,
    c: &Ctx,
    id: u64,
    event: Event,
    post: &mut Post,
    depth: u32,
) -> Result<Option<bool>, StoreError> {
    let Some(mut r) = requests::get_in_tx(tx, id)? else {
        return Ok(None);
    };
    let (explanation, wait_reason) = match &event {
        Event::NoDevice { explanation } => (
            Some(explanation.to_string()),
            Some(explanation.wait_reason()),
        ),
        _ => (None, None),
    };
    let before = r.snap.state;
    let old = requests::IndexKeys::of(&r.snap, c.timings.grace);
    let tr = super::step(&r.snap, event, now, &c.timings);
    r.snap = tr.apply(&r.snap);
    if explanation.is_some() {
        r.explanation = explanation;
    } else if !r.snap.state.is_waiting() {
        r.explanation = None;
    }
    requests::replace(tx, Some(old), &r, c.timings.grace)?;
    post.touched.push(id);
    // The request-wait chart, in the transaction that changes the request.
    if let Some(why) = wait_reason
        && r.snap.state.is_waiting()
    {
        history::request_waited(tx, id, why)?;
    }
    if before != RequestState::Ready && r.snap.state == RequestState::Ready {
        history::request_served(tx, id, r.snap.spec.created, now)?;
    } else if !before.is_terminal() && before != RequestState::Ready && r.snap.state.is_terminal() {
        // One that was served has no reason left to drop (the usual check-in).
        history::request_ended(tx, id)?;
    }
    if before != r.snap.state {
        tracing::info!(request = id, from = %before, to = %r.snap.state, "request state");
    }
    for line in tr.logs() {
        append(
            tx,
            now,
            NewLog::new(request_subject(id), "statemachine", line.to_owned()),
        )?;
    }
    for action in tr.actions {
        match action {
            Action::Log(_) => {}
            Action::Search => {
                let got = run_pass(tx, now, c, post, depth + 1)?;
                if !got.contains(&id) {
                    let Some(r) = requests::get_in_tx(tx, id)? else {
                        continue;
                    };
                    if r.snap.state.is_waiting() && depth < MAX_DEPTH {
                        let explanation = explain(&r.snap.spec, &views_in_tx(tx, post)?);
                        deliver_tx(
                            tx,
                            now,
                            c,
                            id,
                            Event::NoDevice { explanation },
                            post,
                            depth + 1,
                        )?;
                    }
                }
            }
            Action::ContactLifeguard { device, event } => {
                post.devices_written();
                let result = contact_lifeguard(tx, now, c, id, device.as_str(), event)?;
                let replies = match result {
                    // Held as it is: nothing to wait for, the device is ready for it now.
                    Ok((applied, true)) => {
                        post.lifeguard.push(applied);
                        vec![
                            Event::LifeguardContacted {
                                device: device.clone(),
                            },
                            Event::LifeguardFinished {
                                device,
                                imaging_result: ImagingResult::Complete,
                            },
                        ]
                    }
                    Ok((applied, false)) => {
                        post.lifeguard.push(applied);
                        vec![Event::LifeguardContacted { device }]
                    }
                    Err(e) => vec![Event::DeviceLost {
                        device,
                        lifeguard_state: lost_state(&e),
                    }],
                };
                if depth < MAX_DEPTH {
                    for reply in replies {
                        deliver_tx(tx, now, c, id, reply, post, depth + 1)?;
                    }
                }
            }
            Action::ReleaseDevice { device, reverify } => {
                post.devices_written();
                release(tx, now, c, id, device.as_str(), reverify, post)?;
            }
        }
    }
    Ok(Some(tr.accepted))
}

/// Hold `device` for request `id` and make Lifeguard accept the please event, in this
/// transaction. A power cycle is skipped when the device was rebooted and verified since
/// its last user (Lifeguard's `hold`; see `reboot_before_handover`): then the second value
/// is true and the device is ready for the request already. `Ok(Err(_))` when the device
/// is not free or refuses (see [`lost_state`] for what the request's log says then).
fn contact_lifeguard(
    tx: &Tx<'_>,
    now: Millis,
    c: &Ctx,
    id: u64,
    device: &str,
    event: LifeguardEvent,
) -> Result<Result<(Applied, bool), ApplyError>, StoreError> {
    if matches!(event, LifeguardEvent::PleasePowerCycle) && !c.timings.reboot_before_handover {
        let t = c.lg.clone();
        let held = apply(tx, now, device, Some("pool"), |s| {
            lifeguard::step(s, lifeguard::Event::Hold { request: id }, now, &t)
                .map_err(ApplyError::from)
        })?;
        if let Ok(applied) = held {
            return Ok(Ok((applied, true)));
        }
    }
    let please = match event {
        LifeguardEvent::PleaseImage { image, boot_config } => {
            let has_agent = inv::image_in_tx(tx, image.as_str())?
                .is_some_and(|i| i.agent != crate::domain::model::Agent::None);
            lifeguard::Event::PleaseImage {
                image,
                boot_config,
                has_agent,
                request: Some(id),
            }
        }
        LifeguardEvent::PleasePowerCycle => lifeguard::Event::PleasePowerCycle,
    };
    let name = please_name(&please);
    let t = c.lg.clone();
    let result = apply(tx, now, device, Some("pool"), |s| {
        let mut held = s.clone();
        match held.request {
            None => held.request = Some(id),
            Some(r) if r == id => {}
            Some(r) => {
                return Err(ApplyError::Refused(Refused {
                    state: s.state,
                    event: name,
                    reason: format!("held by request {r}"),
                }));
            }
        }
        if !s.state.is_free_for_pool() {
            return Err(ApplyError::Refused(Refused {
                state: s.state,
                event: name,
                reason: format!("not ready ({})", s.state),
            }));
        }
        lifeguard::step(&held, please, now, &t).map_err(ApplyError::from)
    })?;
    Ok(result.map(|applied| (applied, false)))
}

/// What a lost device's [`Event::DeviceLost`] reports for a refused please event: the
/// state Lifeguard refused it in, or else why there was no state to ask.
fn lost_state(e: &ApplyError) -> String {
    match e {
        ApplyError::Refused(r) => r.state.to_string(),
        other => other.to_string(),
    }
}

fn please_name(e: &lifeguard::Event) -> &'static str {
    match e {
        lifeguard::Event::PleaseImage { .. } => "please_image",
        _ => "please_power_cycle",
    }
}

/// Let go of a device: Lifeguard forgets the hold and, when asked to and the device is
/// idle, reboots and verifies it (a self-test) before anyone else can get it.
fn release(
    tx: &Tx<'_>,
    now: Millis,
    c: &Ctx,
    id: u64,
    device: &str,
    reverify: bool,
    post: &mut Post,
) -> Result<(), StoreError> {
    let t = c.lg.clone();
    // Release and, when asked to and the device is then idle, start its self-test: one
    // step after the other on the same snapshot, written once (and no queue pass is woken
    // for the moment the device was free in between).
    let released = apply(tx, now, device, Some("pool"), |s| {
        let done = lifeguard::step(s, lifeguard::Event::Release { request: id }, now, &t)?;
        let idle = done.next.is_available();
        if !(reverify && idle) {
            return Ok(done);
        }
        Ok(
            match lifeguard::step(&done.next, lifeguard::Event::PleaseSelfTest, now, &t) {
                Ok(test) => lifeguard::Transition {
                    next: test.next,
                    actions: [done.actions, test.actions].concat(),
                    log: [done.log, test.log].concat(),
                },
                Err(_) => done,
            },
        )
    })?;
    if let Ok(a) = released {
        post.lifeguard.push(a);
    }
    Ok(())
}

/// One queue pass: give free devices to waiting requests. Returns the requests that got one.
fn run_pass(
    tx: &Tx<'_>,
    now: Millis,
    c: &Ctx,
    post: &mut Post,
    depth: u32,
) -> Result<HashSet<u64>, StoreError> {
    let mut got = HashSet::new();
    if depth > MAX_DEPTH {
        return Ok(got);
    }
    let queue = waiting(&requests::waiting_in_tx(tx)?);
    let picks: Vec<(u64, DeviceView)> = match queue.as_slice() {
        [] => return Ok(got),
        // One waiting request: neither order nor fair share matter, only its best device.
        [only] => match post.pick.take() {
            Some((id, pick)) if id == only.id => pick,
            _ => free_pick(tx, &only.spec)?,
        }
        .map(|v| (only.id, v))
        .into_iter()
        .collect(),
        _ => {
            // Without fair share a pass looks at available devices only, and those are
            // the free-device index's: the rest of the inventory is decoded only when
            // fair share has to count what each assignee holds (or when this closure has
            // built the views already).
            let views = if fair_share_applies(&queue, &c.policy) || post.views.is_some() {
                views_in_tx(tx, post)?
            } else {
                Arc::new(free_views(tx)?)
            };
            if !views.iter().any(DeviceView::available) {
                return Ok(got);
            }
            assign(&queue, &views, now, &c.policy)
                .into_iter()
                .filter_map(|(rid, device)| {
                    let v = views.iter().find(|v| v.name == device)?;
                    Some((rid, v.clone()))
                })
                .collect()
        }
    };
    for (rid, view) in picks {
        let Some(q) = queue.iter().find(|q| q.id == rid) else {
            continue;
        };
        let needs = needs_image(&q.spec, &view);
        got.insert(rid);
        deliver_tx(
            tx,
            now,
            c,
            rid,
            Event::Assigned {
                device: view.name,
                needs_image: needs,
            },
            post,
            depth + 1,
        )?;
    }
    Ok(got)
}

/// Whether a request's state means the client should stop polling.
#[must_use]
pub fn settled(state: RequestState) -> bool {
    state == RequestState::Ready || state.is_terminal()
}

impl crate::domain::timers::Deadlines for Pool {
    async fn pass(&self, now: Millis) -> bool {
        self.timeout_pass(now).await
    }

    async fn next_deadline(&self) -> Option<Millis> {
        self.inner
            .store
            .peek(Snapshot::next_request_deadline)
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::SystemClock;
    use crate::pool::{DeviceChoice, RequestSnapshot, RequestSpec};

    fn ctx() -> Ctx {
        Ctx {
            timings: Timings::default(),
            policy: QueuePolicy::default(),
            lg: lifeguard::Timings::default(),
            server: "rack1".to_owned(),
        }
    }

    fn stored(id: u64, assignee: &str, state: RequestState, created: Millis) -> StoredRequest {
        let spec = RequestSpec::new(
            DeviceChoice::Any,
            assignee,
            "android".parse().expect("image"),
            created,
        );
        let mut snap = RequestSnapshot::new(id, spec, Millis(created.0 + 3_600_000));
        snap.state = state;
        StoredRequest {
            snap,
            server: "rack1".to_owned(),
            owner_token: None,
            explanation: None,
        }
    }

    /// A pass with two assignees waiting must see what each already holds (fair share),
    /// although it otherwise reads only the free devices.
    #[tokio::test]
    async fn a_pass_with_fair_share_counts_the_devices_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join(crate::storage::backup::DB_FILE),
            Arc::new(SystemClock),
        )
        .expect("store");
        let grace = ctx().timings.grace;
        store
            .write(move |tx, now| {
                for (name, holder) in [
                    ("panda-1", Some(1)),
                    ("panda-2", Some(2)),
                    ("panda-3", None),
                ] {
                    let mut d = Device::for_test(name, "ready");
                    d.lifeguard.current_image = Some("android".into());
                    d.request = holder;
                    inv::put_device(tx, &d)?;
                }
                // Alice holds two of the three devices and waits with an older request of
                // higher priority; Bob waits too.
                for (id, who, state) in [
                    (1, "alice", RequestState::Ready),
                    (2, "alice", RequestState::Ready),
                    (3, "alice", RequestState::FindingDevice),
                    (4, "bob", RequestState::FindingDevice),
                ] {
                    let mut r = stored(id, who, state, Millis(now.0 - 1000 + id));
                    if id == 3 {
                        r.snap.spec.priority = 5;
                    }
                    requests::put(tx, &r, grace)?;
                }
                Ok(())
            })
            .await
            .expect("setup");
        let got = store
            .write(move |tx, now| run_pass(tx, now, &ctx(), &mut Post::default(), 0))
            .await
            .expect("pass");
        assert_eq!(
            got,
            HashSet::from([4]),
            "alice is at her share of 2 of 3 devices"
        );
    }

    /// The views a closure keeps ([`Post::views`]) must not outlive a device write made in
    /// the same closure: a queue pass or an explanation after an assignment has to see the
    /// device held.
    #[tokio::test]
    async fn views_built_before_an_assignment_are_not_reused_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join(crate::storage::backup::DB_FILE),
            Arc::new(SystemClock),
        )
        .expect("store");
        let ctx = ctx();
        let grace = ctx.timings.grace;
        store
            .write(move |tx, now| {
                let mut d = Device::for_test("panda-1", "ready");
                d.lifeguard.current_image = Some("android".into());
                inv::put_device(tx, &d)?;
                requests::put(
                    tx,
                    &stored(7, "alice", RequestState::FindingDevice, now),
                    grace,
                )
            })
            .await
            .expect("setup");
        let (before, after) = store
            .write(move |tx, now| {
                let mut post = Post::default();
                let before = views_in_tx(tx, &mut post)?;
                let event = Event::Assigned {
                    device: "panda-1".parse().expect("name"),
                    needs_image: false,
                };
                deliver_tx(tx, now, &ctx, 7, event, &mut post, 0)?;
                let after = views_in_tx(tx, &mut post)?;
                Ok((before, after))
            })
            .await
            .expect("assign");
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].held_by, None, "{before:?}");
        assert_eq!(after.len(), 1);
        let held = after[0]
            .held_by
            .as_ref()
            .expect("held after the assignment");
        assert_eq!((held.request, held.assignee.as_str()), (7, "alice"));
    }
}
