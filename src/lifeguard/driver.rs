//! The Lifeguard driver: the async side of the device state machine.
//!
//! It delivers events to devices through the store (one write transaction per event, or per
//! batch of timeouts), executes the machine's actions on the hardware after the commit, and
//! feeds every result back as an event tagged with the generation that asked for it. It
//! also runs the timers (the store's deadline index) and resumes every device after a
//! restart. One hardware action runs per device at a time: starting a new one cancels the
//! previous one, whose result would be ignored anyway (wrong generation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{Applied, ApplyError, apply};
use super::{Action, Event, ImagingResult, Timings, Transition, force, resume, step};
use crate::domain::clock::{Clock, Millis};
use crate::domain::heartbeat::Heartbeat;
use crate::domain::lock;
use crate::domain::model::{Agent, BootMode, Device, device_subject};
use crate::hw::config::HardwareConfig;
use crate::hw::ping::Prober;
use crate::hw::{
    self, Adb, FlashDeadlines, Flasher, ImageFiles, ImageRecipe, ImageSource, RelayAddr,
    RelayBoards,
};
use crate::storage::logs::{NewLog, append};
use crate::storage::{Snapshot, Store, StoreError, Tx};

/// Most fastboot output lines copied into a device's log per flash.
const MAX_FLASH_LOG_LINES: usize = 400;

/// How long the SUTAgent connection of a successful `sut_verifying` waits for the storage
/// check of `sut_sdcard_verifying`, the state that always follows (normally a few
/// milliseconds later). Unclaimed, it is closed by the timer loop.
const KEEP_SUT_SESSION: Duration = Duration::from_secs(5);

/// A SUTAgent connection kept from one state's action for the next one's.
struct KeptSession {
    session: hw::sut::Session,
    until: tokio::time::Instant,
}

/// The hardware the driver acts through.
#[derive(Debug)]
pub struct Hardware {
    /// Relay boards (one actor thread each).
    pub boards: RelayBoards,
    /// The fastboot runner.
    pub flasher: Flasher,
    /// The adb runner (the service's own adb server).
    pub adb: Adb,
    /// Reachability of devices whose image has no agent.
    pub prober: Arc<dyn Prober>,
    /// Image store and download cache.
    pub images: ImageFiles,
    /// Timeouts and limits.
    pub settings: HardwareConfig,
    /// Where finished hardware operations are counted and timed (`/metrics`).
    pub metrics: Arc<crate::hw::metrics::HwMetrics>,
}

impl Hardware {
    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// How long a hardware action in flight when the service stops may take to finish before it
/// is abandoned (long enough for a power cycle or a check, far shorter than a flash).
pub const SAFE_POINT_GRACE: Duration = Duration::from_secs(5);

/// What Lifeguard tells the layer above it (the pool) about devices, over the channel
/// [`Lifeguard::new`] returns: Lifeguard never imports the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A held device finished (or failed) the operation its request asked for.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    ImagingResult {
        /// The request that asked.
        request: u64,
        device: String,
        /// How it went.
        result: ImagingResult,
    },
    /// A device became free for the pool.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    DeviceAvailable { device: String },
}

/// The receiving end of Lifeguard's [`Report`]s. Unbounded: Lifeguard must never wait on
/// the pool, and reports are few (one per finished operation or freed device).
pub type Reports = mpsc::UnboundedReceiver<Report>;

/// Why an event was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    // The variant's name and the wrapped error say it all.
    #[allow(missing_docs)]
    Store(#[from] StoreError),
    /// The device or its state refused.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Why a device's relay cannot be addressed. The text goes into the device's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The inventory names no relay for the device.
    #[error("no relay wiring")]
    NotWired,
}

/// Why a device's SUTAgent cannot be addressed. The text goes into the device's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SutAddrError {
    /// The inventory has no SUTAgent address for the device.
    #[error("no SUTAgent address in the inventory")]
    Missing,
    /// The address's host could not be resolved.
    #[error("cannot resolve {text}: {source}")]
    Unresolvable {
        /// The address as the inventory has it.
        text: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The address resolved, but to nothing.
    #[error("{text} resolves to no address")]
    NoAddress {
        /// The address as the inventory has it.
        text: String,
    },
    /// The resolver did not answer within the action's time limit.
    #[error("cannot resolve {text}: no answer within {limit:?}")]
    ResolveTimedOut {
        /// The address as the inventory has it.
        text: String,
        /// The limit.
        limit: Duration,
    },
}

/// Why a reachability probe (ping, health check) of a device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// There is no address to probe.
    #[error(transparent)]
    Address(#[from] SutAddrError),
    /// The probe itself failed (timeout, I/O).
    #[error(transparent)]
    Hw(#[from] hw::Error),
}

/// Why a check or reboot through a device's agent (SUTAgent or adb) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SutError {
    /// There is no address to talk to.
    #[error(transparent)]
    Address(#[from] SutAddrError),
    /// The image runs adbd but the inventory gives the device no adb (or USB fastboot) serial.
    #[error("no adb serial in the inventory")]
    NoAdbSerial,
    /// The image has no agent to talk to.
    #[error("image {0} has no agent to do this")]
    NoAgent(String),
    /// SUTAgent accepted `rebt` but the device has not been seen to reboot.
    #[error("soft reboot not confirmed: {0}")]
    RebootNotConfirmed(hw::Error),
    /// The agent could not be reached or answered badly.
    #[error(transparent)]
    Hw(#[from] hw::Error),
}

/// Why a flash failed. The text goes into the device's log; [`FlashError::image_at_fault`]
/// tells the state machine whether to blame the image rather than the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    /// The image's recipe could not be read.
    #[error("{0}")]
    Store(StoreError),
    /// The image is not in the registry (removed since the request asked for it).
    #[error("image {0} is not in the registry")]
    UnknownImage(String),
    /// The registry's image name is not a valid name.
    #[error("image name: {0}")]
    BadImageName(crate::domain::names::NameError),
    /// The inventory names no fastboot serial for the device.
    #[error("no fastboot serial in the inventory")]
    NoSerial,
    /// Fetching or checking the image's files failed.
    #[error("{0}")]
    Prepare(hw::Error),
    /// The device has no relay to power-cycle it into its bootloader.
    #[error(transparent)]
    Relay(RelayError),
    /// The power cycle into the bootloader failed.
    #[error("power cycle into the bootloader: {0}")]
    PowerCycle(hw::Error),
    /// `adb reboot bootloader` failed (or the device has no adb serial).
    #[error("adb reboot bootloader: {0}")]
    EnterFastboot(SutError),
    /// fastboot failed.
    #[error("{0}")]
    Fastboot(hw::Error),
}

impl FlashError {
    /// Whether the image (a bad file, a missing partition, a failed download) rather than
    /// the device is at fault.
    #[must_use]
    pub fn image_at_fault(&self) -> bool {
        match self {
            FlashError::UnknownImage(_) | FlashError::BadImageName(_) => true,
            FlashError::Prepare(e) | FlashError::Fastboot(e) => image_fault(e),
            FlashError::Store(_)
            | FlashError::NoSerial
            | FlashError::Relay(_)
            | FlashError::PowerCycle(_)
            | FlashError::EnterFastboot(_) => false,
        }
    }
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    timings: Timings,
    hw: Arc<Hardware>,
    /// Where [`Report`]s go; nobody listening (a test without a pool) is fine.
    reports: mpsc::UnboundedSender<Report>,
    /// Beaten by the timer loop; the systemd watchdog stops pinging when it goes stale.
    heartbeat: Option<Heartbeat>,
    inflight: Mutex<HashMap<String, (u64, AbortHandle)>>,
    /// By device: the connection a successful SUTAgent verify leaves open for the storage
    /// check that follows it, so a self-test connects once instead of twice.
    kept: Mutex<HashMap<String, KeptSession>>,
    /// By device: SUTAgent reboots sent (`rebt`) and not yet seen to happen, with the
    /// agent's uptime before them. The next verify first confirms the reboot (the agent
    /// went away and came back, or its uptime dropped), so an agent that accepts `rebt` and
    /// stays up does not pass. Kept in memory only: after a restart the device is verified
    /// as usual.
    unconfirmed: Mutex<HashMap<String, Option<u64>>>,
    health: Semaphore,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Handle to the Lifeguard driver. Cheap to clone.
#[derive(Clone)]
pub struct Lifeguard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lifeguard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifeguard").finish_non_exhaustive()
    }
}

impl Lifeguard {
    /// A driver over `store` and `hw`, and the channel of its [`Report`]s for the layer
    /// above; call [`Lifeguard::start`] to run it. `heartbeat` is beaten by the timer loop
    /// on every pass (at least once a second).
    #[must_use]
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        timings: Timings,
        hw: Arc<Hardware>,
        heartbeat: Option<Heartbeat>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> (Lifeguard, Reports) {
        let health = Semaphore::new(hw.settings.health_concurrency.max(1));
        let (reports, receiver) = mpsc::unbounded_channel();
        let lifeguard = Lifeguard {
            inner: Arc::new(Inner {
                store,
                clock,
                timings,
                hw,
                reports,
                heartbeat,
                inflight: Mutex::new(HashMap::new()),
                kept: Mutex::new(HashMap::new()),
                unconfirmed: Mutex::new(HashMap::new()),
                health,
                wake: Notify::new(),
                shutdown,
                tasks,
            }),
        };
        (lifeguard, receiver)
    }

    /// The state timeouts and limits in use.
    #[must_use]
    pub fn timings(&self) -> &Timings {
        &self.inner.timings
    }

    /// The hardware.
    #[must_use]
    pub fn hardware(&self) -> &Arc<Hardware> {
        &self.inner.hw
    }

    /// Resume every device after a (re)start, then run the timers until shutdown.
    ///
    /// # Errors
    /// Storage failure while resuming.
    pub async fn start(&self) -> Result<(), StoreError> {
        let devices = self.to_resume().await?;
        self.resume_and_run(devices).await
    }

    /// The devices a (re)start resumes: every device in the store now, with its generation.
    /// Read before the API opens, so that a device created through it meanwhile is not
    /// taken for one that was there before the restart.
    ///
    /// # Errors
    /// Storage failure.
    pub async fn to_resume(&self) -> Result<ToResume, StoreError> {
        let devices = self
            .inner
            .store
            .read(|snap| {
                Ok(snap
                    .devices()?
                    .into_iter()
                    .filter(|d| !d.retired)
                    .map(|d| (d.name.into(), d.lifeguard.generation))
                    .collect())
            })
            .await?;
        Ok(ToResume(devices))
    }

    /// Resume `devices` (see [`Lifeguard::to_resume`]), then run the timers until shutdown.
    ///
    /// The API may already be serving meanwhile (a rack of thousands of devices takes a
    /// while to resume): a device that an event moved since the list was read is live
    /// already and is left as it is.
    ///
    /// # Errors
    /// Storage failure while resuming.
    pub async fn resume_and_run(&self, devices: ToResume) -> Result<(), StoreError> {
        /// Devices resumed per transaction: a transaction keeps its dirty pages in memory,
        /// hundreds of MiB for a rack of 10,000 devices in one. Each device resumes on its
        /// own, so a crash between two chunks leaves the rest to the next start.
        const DEVICES_PER_WRITE: usize = 500;
        let devices = devices.0;
        for chunk in devices.chunks(DEVICES_PER_WRITE) {
            let (t, chunk) = (self.inner.timings.clone(), chunk.to_vec());
            let applied = self
                .inner
                .store
                .write(move |tx, now| {
                    let mut out = Vec::new();
                    for (name, generation) in chunk {
                        let resumed = apply(tx, now, &name, None, |s| {
                            Ok(if s.generation == generation {
                                resume(s, now, &t)
                            } else {
                                Transition::unchanged(s)
                            })
                        })?;
                        if let Ok(a) = resumed {
                            out.push(a);
                        }
                    }
                    Ok(out)
                })
                .await?;
            for a in applied {
                self.execute(a);
            }
        }
        let this = self.clone();
        self.inner
            .tasks
            .spawn(async move { this.timer_loop().await });
        Ok(())
    }

    /// Deliver an event from outside (API, pool, human) and execute what it starts.
    ///
    /// # Errors
    /// The refusal (HTTP 409), an unknown device, or a store failure.
    pub async fn deliver(
        &self,
        name: &str,
        event: Event,
        actor: Option<String>,
    ) -> Result<Applied, DeliverError> {
        self.transition(name, actor, false, move |s, now, t| {
            step(s, event, now, t).map_err(ApplyError::from)
        })
        .await
    }

    /// Deliver a hardware action's result: as [`Driver::deliver`], but nobody waits on it,
    /// so its write may share a later commit ([`Store::write_background`]).
    async fn deliver_result(&self, name: &str, event: Event) -> Result<Applied, DeliverError> {
        self.transition(name, None, true, move |s, now, t| {
            step(s, event, now, t).map_err(ApplyError::from)
        })
        .await
    }

    /// Run one transition of `name` in its own store write (`background`: one nobody is
    /// waiting on), then execute its actions.
    async fn transition<F>(
        &self,
        name: &str,
        actor: Option<String>,
        background: bool,
        f: F,
    ) -> Result<Applied, DeliverError>
    where
        F: FnOnce(&super::Snapshot, Millis, &Timings) -> Result<super::Transition, ApplyError>
            + Send
            + 'static,
    {
        let t = self.inner.timings.clone();
        let n = name.to_owned();
        let write = move |tx: &Tx<'_>, now| apply(tx, now, &n, actor.as_deref(), |s| f(s, now, &t));
        let applied = if background {
            self.inner.store.write_background(write).await??
        } else {
            self.inner.store.write(write).await??
        };
        self.execute(applied.clone());
        Ok(applied)
    }

    /// The conditional state change: `from` → `to`, 409 when the device is not in `from`.
    ///
    /// # Errors
    /// As [`Lifeguard::deliver`].
    pub async fn force(
        &self,
        name: &str,
        from: String,
        to: String,
        actor: Option<String>,
    ) -> Result<Applied, DeliverError> {
        self.transition(name, actor, false, move |s, now, t| {
            force(s, &from, &to, now, t).map_err(ApplyError::from)
        })
        .await
    }

    /// Run the actions of a committed transition.
    pub fn execute(&self, applied: Applied) {
        for action in applied.actions {
            match action {
                Action::NotifyRequest { request, result } => {
                    let _ = self.inner.reports.send(Report::ImagingResult {
                        request,
                        device: applied.device.clone(),
                        result,
                    });
                }
                hw_action => {
                    self.spawn_action(applied.record.clone(), applied.generation, hw_action)
                }
            }
        }
        if applied.became_available {
            let _ = self.inner.reports.send(Report::DeviceAvailable {
                device: applied.device.clone(),
            });
        }
        self.inner.wake.notify_one();
    }

    /// Record in the device's log that a hardware action was cut short by shutdown.
    async fn log_abandoned(&self, device: &str, what: &str) {
        let entry = NewLog::new(
            device_subject(device),
            "statemachine",
            format!(
                "service stopping: {what} abandoned after {SAFE_POINT_GRACE:?} in flight; the restart resumes the state"
            ),
        );
        if let Err(e) = self
            .inner
            .store
            .write(move |tx, now| append(tx, now, entry))
            .await
        {
            tracing::warn!(device, error = %e, "could not log an abandoned action");
        }
    }

    fn spawn_action(&self, record: Arc<Device>, generation: u64, action: Action) {
        if self.inner.shutdown.is_cancelled() {
            // Stopping: start nothing new; the stored state and deadline resume it.
            tracing::debug!(device = %record.name, %action, "not started: stopping");
            return;
        }
        let this = self.clone();
        let device = record.name.to_string();
        let mut inflight = lock(&self.inner.inflight);
        if let Some((_, previous)) = inflight.remove(&device) {
            previous.abort();
        }
        let handle = self.inner.tasks.spawn(async move {
            let what = action.to_string();
            // Boxed so that abandoning it below really drops it (and kills its child) before
            // the log line is written.
            let mut run = Box::pin(this.run_action(&record, generation, action));
            let event = tokio::select! {
                e = &mut run => e,
                () = this.inner.shutdown.cancelled() => {
                    // Stopping: a short action (a power cycle, a check) gets to its end and
                    // its result is recorded; a long one (a flash) is abandoned, its child
                    // killed with the future, and the device's log says so. The state and
                    // its deadline are stored, so the restart resumes it.
                    match tokio::time::timeout(SAFE_POINT_GRACE, &mut run).await {
                        Ok(e) => e,
                        Err(_) => {
                            drop(run);
                            this.log_abandoned(&record.name, &what).await;
                            return;
                        }
                    }
                }
            };
            let name = record.name.as_str();
            {
                let mut inflight = lock(&this.inner.inflight);
                if inflight.get(name).is_some_and(|(g, _)| *g == generation) {
                    inflight.remove(name);
                }
            }
            if let Some(event) = event
                && let Err(e) = this.deliver_result(name, event).await
            {
                tracing::warn!(device = %name, error = %e, "could not deliver a hardware result");
            }
        });
        inflight.insert(device, (generation, handle.abort_handle()));
    }

    /// Run one hardware action on `device` as its transition committed it.
    async fn run_action(&self, device: &Device, generation: u64, action: Action) -> Option<Event> {
        let s = &self.inner.hw.settings;
        let g = generation;
        let kind = hw_kind(&action);
        // An exchange that outlives its state's deadline would only be ignored as a late
        // result (MozPool 4.x's 195 s wrapper around a 45 s state, §9.10): each one gets at
        // most the time left in the state.
        let left = device
            .lifeguard
            .deadline
            .map_or(Duration::MAX, |d| d.since(self.inner.clock.now()));
        let within = |ms: u64| {
            Hardware::ms(ms)
                .min(left.saturating_sub(Duration::from_millis(50)))
                .max(Duration::from_millis(50))
        };
        let sut_limit = within(s.sut_timeout_ms);
        let ping_limit = within(s.ping_timeout_ms);
        if matches!(
            action,
            Action::PowerCycle | Action::PowerOff | Action::Flash { .. }
        ) {
            // The relay or a flash restarts the device for certain: no soft reboot is left to
            // confirm.
            lock(&self.inner.unconfirmed).remove(device.name.as_str());
        }
        let started = std::time::Instant::now();
        // Each branch's future is boxed: the action's future would otherwise be as large as
        // its largest branch (a flash, ~10 KiB), for every action of every device, and a
        // rack of 10,000 devices resuming at once would hold 10,000 of them.
        let event = match action {
            Action::PowerCycle => match self.relay(device) {
                Ok(addr) => match self
                    .inner
                    .hw
                    .boards
                    .power_cycle(&addr, Hardware::ms(s.power_off_time_ms))
                    .boxed()
                    .await
                {
                    Ok(()) => Event::PowerCycleOk { generation: g },
                    Err(e) => Event::PowerCycleFailed {
                        generation: g,
                        reason: e.to_string(),
                    },
                },
                Err(e) => Event::PowerCycleFailed {
                    generation: g,
                    reason: e.to_string(),
                },
            },
            Action::PowerOff => match self.relay(device) {
                Ok(addr) => match self.inner.hw.boards.power_off(&addr).boxed().await {
                    Ok(()) => Event::PowerOffOk { generation: g },
                    Err(e) => Event::PowerOffFailed {
                        generation: g,
                        reason: e.to_string(),
                    },
                },
                Err(e) => Event::PowerOffFailed {
                    generation: g,
                    reason: e.to_string(),
                },
            },
            Action::SutReboot => match self.agent_reboot(device, sut_limit).boxed().await {
                Ok(()) => Event::SutRebootOk { generation: g },
                Err(e) => Event::SutRebootFailed {
                    generation: g,
                    reason: e.to_string(),
                },
            },
            Action::Ping => match self.probe_within(device, ping_limit).boxed().await {
                Ok(()) => Event::PingOk { generation: g },
                Err(e) => Event::PingFailed {
                    generation: g,
                    reason: e.to_string(),
                },
            },
            Action::SutVerify => match self.agent_verify(device, sut_limit, true).boxed().await {
                Ok(()) => Event::SutVerifyOk { generation: g },
                Err(e) => Event::SutVerifyFailed {
                    generation: g,
                    reason: e.to_string(),
                },
            },
            Action::SutSdcardCheck => {
                match self.agent_storage_check(device, sut_limit).boxed().await {
                    Ok(()) => Event::SutSdcardOk { generation: g },
                    Err(e) => Event::SutSdcardFailed {
                        generation: g,
                        reason: e.to_string(),
                    },
                }
            }
            Action::HealthCheck { agent } => {
                let _permit = self.inner.health.acquire().await;
                let result = if agent {
                    self.agent_verify(device, sut_limit, false)
                        .boxed()
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    self.probe_within(device, ping_limit)
                        .boxed()
                        .await
                        .map_err(|e| e.to_string())
                };
                match result {
                    Ok(()) => Event::HealthCheckOk { generation: g },
                    Err(reason) => Event::HealthCheckFailed {
                        generation: g,
                        reason,
                    },
                }
            }
            Action::Flash { image, boot_config } => {
                match self
                    .flash(device, image.as_str(), &boot_config)
                    .boxed()
                    .await
                {
                    Ok(()) => Event::FlashOk { generation: g },
                    Err(e) => Event::FlashFailed {
                        generation: g,
                        bad_image: e.image_at_fault(),
                        reason: e.to_string(),
                    },
                }
            }
            Action::NotifyRequest { .. } => return None,
        };
        self.inner
            .hw
            .metrics
            .record(kind, hw_ok(&event), started.elapsed());
        Some(event)
    }

    fn relay(&self, d: &Device) -> Result<RelayAddr, RelayError> {
        d.wiring.relay.clone().ok_or(RelayError::NotWired)
    }

    /// One reachability probe of a device, now (the `/ping/` endpoint); it changes no state.
    ///
    /// # Errors
    /// Why the device did not answer.
    pub async fn probe(&self, d: &Device) -> Result<(), ProbeError> {
        self.probe_within(d, Hardware::ms(self.inner.hw.settings.ping_timeout_ms))
            .await
    }

    /// Whether the device's host answers at all (a refused port counts: its network stack
    /// is up), for images without an agent.
    async fn probe_within(&self, d: &Device, limit: Duration) -> Result<(), ProbeError> {
        let (addr, limit) = sut_addr(d, limit).await?;
        self.inner.hw.prober.probe(addr, limit).await?;
        Ok(())
    }

    /// The agent of the image on the device: what its image says, or SUTAgent for a device
    /// whose image left the registry while it was flagged as having one (as before images
    /// named their agent).
    async fn agent_of(&self, d: &Device) -> Agent {
        let Some(image) = d.lifeguard.current_image.clone() else {
            return Agent::None;
        };
        match self.inner.store.peek(move |snap| snap.image(&image)) {
            Ok(Some(img)) => img.agent,
            Ok(None) | Err(_) if d.lifeguard.current_has_agent => Agent::Sut,
            Ok(None) | Err(_) => Agent::None,
        }
    }

    fn adb_serial(d: &Device) -> Result<&str, SutError> {
        d.wiring.adb_serial().ok_or(SutError::NoAdbSerial)
    }

    /// Verify through the image's agent. A SUTAgent connection is kept for the storage check
    /// that follows when `keep` (a verify state, not an idle health check).
    async fn agent_verify(&self, d: &Device, limit: Duration, keep: bool) -> Result<(), SutError> {
        let agent = self.agent_of(d).await;
        let pending = lock(&self.inner.unconfirmed).get(d.name.as_str()).copied();
        if let (Agent::Sut, Some(before)) = (agent, pending) {
            let (addr, _) = sut_addr(d, limit).await?;
            hw::sut::confirm_rebooted(addr, before, limit)
                .await
                .map_err(SutError::RebootNotConfirmed)?;
            lock(&self.inner.unconfirmed).remove(d.name.as_str());
        }
        match agent {
            Agent::Sut if keep => self.sut_verify_keeping(d, limit).await,
            Agent::Sut => self.sut_verify(d, limit).await,
            Agent::Adb => Ok(self
                .inner
                .hw
                .adb
                .verify(Self::adb_serial(d)?, limit)
                .await?),
            Agent::None => Err(SutError::NoAgent(image_name(d))),
        }
    }

    /// The storage check through the image's agent.
    async fn agent_storage_check(&self, d: &Device, limit: Duration) -> Result<(), SutError> {
        match self.agent_of(d).await {
            Agent::Sut => self.storage_check(d, limit).await,
            Agent::Adb => Ok(self
                .inner
                .hw
                .adb
                .check_storage(Self::adb_serial(d)?, limit)
                .await?),
            Agent::None => Err(SutError::NoAgent(image_name(d))),
        }
    }

    /// A reboot through the image's agent (SUTAgent `rebt`, `adb reboot`).
    async fn agent_reboot(&self, d: &Device, limit: Duration) -> Result<(), SutError> {
        match self.agent_of(d).await {
            Agent::Sut => {
                let (addr, limit) = sut_addr(d, limit).await?;
                let sent = hw::sut::reboot(addr, limit).await?;
                lock(&self.inner.unconfirmed).insert(d.name.to_string(), sent.uptime_before);
                Ok(())
            }
            Agent::Adb => Ok(self
                .inner
                .hw
                .adb
                .reboot(Self::adb_serial(d)?, false, limit)
                .await?),
            Agent::None => Err(SutError::NoAgent(image_name(d))),
        }
    }

    /// The boot mode of the device's hardware type (the bootloader window when it has none).
    async fn boot_mode_of(&self, d: &Device) -> Result<BootMode, StoreError> {
        let Some(t) = d.facts.hardware_type.clone() else {
            return Ok(BootMode::default());
        };
        let types = self.inner.store.peek(|snap| snap.hardware_types())?;
        Ok(types
            .into_iter()
            .find(|h| h.name == t)
            .map_or(BootMode::default(), |h| h.boot_mode))
    }

    /// Get the device into fastboot as its boot mode says.
    async fn enter_fastboot(&self, d: &Device, mode: BootMode) -> Result<(), FlashError> {
        let s = &self.inner.hw.settings;
        match mode {
            BootMode::BootloaderWindow => {
                let addr = self.relay(d).map_err(FlashError::Relay)?;
                self.inner
                    .hw
                    .boards
                    .power_cycle(&addr, Hardware::ms(s.power_off_time_ms))
                    .await
                    .map_err(FlashError::PowerCycle)
            }
            BootMode::Adb => {
                let serial = Self::adb_serial(d).map_err(FlashError::EnterFastboot)?;
                self.inner
                    .hw
                    .adb
                    .reboot(serial, true, Hardware::ms(s.adb_timeout_ms))
                    .await
                    .map_err(|e| FlashError::EnterFastboot(e.into()))
            }
            BootMode::Already => Ok(()),
        }
    }

    async fn sut_verify(&self, d: &Device, limit: Duration) -> Result<(), SutError> {
        let (addr, limit) = sut_addr(d, limit).await?;
        hw::sut::verify(addr, limit).await?;
        Ok(())
    }

    /// `ver` on a new connection; after a good answer the connection is kept for the
    /// storage check that follows ([`Lifeguard::storage_check`]).
    async fn sut_verify_keeping(&self, d: &Device, limit: Duration) -> Result<(), SutError> {
        let (addr, limit) = sut_addr(d, limit).await?;
        let mut session = hw::sut::Session::open(addr, limit).await?;
        match session.ver().await {
            Ok(_) => {
                let now = tokio::time::Instant::now();
                let mut kept = lock(&self.inner.kept);
                kept.retain(|_, k| k.until > now);
                kept.insert(
                    d.name.to_string(),
                    KeptSession {
                        session,
                        until: now + KEEP_SUT_SESSION,
                    },
                );
                Ok(())
            }
            Err(e) => {
                session.quit().await;
                Err(e.into())
            }
        }
    }

    /// The storage check, on the connection the verify before it kept when there is one
    /// and it has not expired ([`hw::sut::check_storage_on`]: a kept connection the agent
    /// has closed meanwhile is not held against the device).
    async fn storage_check(&self, d: &Device, limit: Duration) -> Result<(), SutError> {
        let (addr, limit) = sut_addr(d, limit).await?;
        let kept = lock(&self.inner.kept)
            .remove(d.name.as_str())
            .filter(|k| k.until > tokio::time::Instant::now())
            .map(|k| k.session);
        hw::sut::check_storage_on(kept, addr, limit).await?;
        Ok(())
    }

    /// Close kept SUTAgent connections nobody claimed in time.
    fn close_expired_sessions(&self) {
        let now = tokio::time::Instant::now();
        lock(&self.inner.kept).retain(|_, k| k.until > now);
    }

    /// Fetch the image's files, get the device into fastboot as its hardware type's boot mode
    /// says, run the recipe with fastboot.
    async fn flash(&self, d: &Device, image: &str, boot_config: &str) -> Result<(), FlashError> {
        let s = &self.inner.hw.settings;
        let name = image.to_owned();
        let found = self
            .inner
            .store
            .peek(move |snap| snap.image(&name))
            .map_err(FlashError::Store)?;
        let Some(img) = found else {
            return Err(FlashError::UnknownImage(image.to_owned()));
        };
        let recipe = ImageRecipe {
            name: img.name.parse().map_err(FlashError::BadImageName)?,
            steps: img.steps.clone(),
        };
        let source = build_url(boot_config).map_or(ImageSource::Store, ImageSource::Url);
        let serial = d
            .wiring
            .fastboot_serial
            .clone()
            .ok_or(FlashError::NoSerial)?;
        self.log(
            &d.name,
            "fastboot",
            format!(
                "preparing image {image} ({} partitions)",
                recipe.steps.len()
            ),
        );
        let store = self.inner.store.clone();
        let dev = d.name.clone();
        let steps = self
            .inner
            .hw
            .images
            .steps(
                &recipe,
                &source,
                Hardware::ms(s.download_timeout_ms),
                |file, n, total| {
                    if total == Some(n) {
                        let msg = format!("downloaded {file} ({n} bytes)");
                        let dev = dev.clone();
                        store.write_detached(move |tx, now| {
                            append(tx, now, NewLog::new(device_subject(&dev), "fastboot", msg))
                                .map(|_| ())
                        });
                    }
                },
            )
            .await
            .map_err(FlashError::Prepare)?;
        let mode = self.boot_mode_of(d).await.map_err(FlashError::Store)?;
        self.log(
            &d.name,
            "fastboot",
            format!("getting into fastboot: {}", mode.as_str()),
        );
        self.enter_fastboot(d, mode).await?;
        let deadlines = FlashDeadlines {
            appear: Hardware::ms(s.flash_appear_ms),
            per_step: Hardware::ms(s.flash_step_ms),
            reboot: Hardware::ms(s.flash_reboot_ms),
        };
        let store = self.inner.store.clone();
        let dev = d.name.clone();
        let mut lines = 0usize;
        self.inner
            .hw
            .flasher
            .flash(&serial, &steps, &deadlines, move |line| {
                lines += 1;
                if lines <= MAX_FLASH_LOG_LINES {
                    let msg = line.to_owned();
                    let dev = dev.clone();
                    store.write_detached(move |tx, now| {
                        append(tx, now, NewLog::new(device_subject(&dev), "fastboot", msg))
                            .map(|_| ())
                    });
                }
            })
            .await
            .map_err(FlashError::Fastboot)
    }

    fn log(&self, device: &str, source: &str, message: String) {
        let entry = NewLog::new(device_subject(device), source, message);
        self.inner
            .store
            .write_detached(move |tx, now| append(tx, now, entry).map(|_| ()));
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

    /// Deliver `Timeout` to every device whose deadline passed; whether any moved.
    async fn timeout_pass(&self, now: Millis) -> bool {
        let due = self
            .inner
            .store
            .peek(move |snap| snap.due_devices(now, 512));
        let names: Vec<String> = match due {
            Ok(due) if !due.is_empty() => due.into_iter().map(|(_, n)| n).collect(),
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(error = %e, "cannot read device deadlines");
                return false;
            }
        };
        let t = self.inner.timings.clone();
        // Nobody waits on a timer: the write may share a later commit.
        let result = self
            .inner
            .store
            .write_background(move |tx, now| {
                let mut out = Vec::new();
                for name in names {
                    let r = apply(tx, now, &name, None, |s| {
                        step(
                            s,
                            Event::Timeout {
                                generation: s.generation,
                            },
                            now,
                            &t,
                        )
                        .map_err(ApplyError::from)
                    })?;
                    if let Ok(a) = r {
                        out.push(a);
                    }
                }
                Ok(out)
            })
            .await;
        match result {
            Ok(applied) => {
                let progressed = !applied.is_empty();
                for a in applied {
                    self.execute(a);
                }
                progressed
            }
            Err(e) => {
                tracing::error!(error = %e, "timeout pass failed");
                false
            }
        }
    }
}

/// A device's SUTAgent (service) address, resolved within `limit` (a host name on tokio's
/// blocking pool, [`hw::sut::resolve`]), and the part of `limit` left for talking to it.
async fn sut_addr(d: &Device, limit: Duration) -> Result<(SocketAddr, Duration), SutAddrError> {
    let text = d.wiring.sut_addr.as_ref().ok_or(SutAddrError::Missing)?;
    let started = tokio::time::Instant::now();
    let addr = hw::sut::resolve(text.as_str(), limit)
        .await
        .map_err(|e| match e {
            hw::sut::ResolveError::NoAddress => SutAddrError::NoAddress {
                text: text.to_string(),
            },
            hw::sut::ResolveError::TimedOut(limit) => SutAddrError::ResolveTimedOut {
                text: text.to_string(),
                limit,
            },
            hw::sut::ResolveError::Lookup(source) => SutAddrError::Unresolvable {
                text: text.to_string(),
                source,
            },
        })?;
    Ok((addr, limit.saturating_sub(started.elapsed())))
}

/// The device's current image name, for messages.
fn image_name(d: &Device) -> String {
    d.lifeguard
        .current_image
        .clone()
        .unwrap_or_else(|| "(none)".into())
}

/// The build URL a boot config names (`b2gbase`, as the original's B2G images, or
/// `build_url`), if any.
fn build_url(boot_config: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(boot_config).ok()?;
    ["build_url", "b2gbase"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|u| u.as_str()).map(str::to_owned))
}

/// Whether a flashing error is the image's fault (bad file, missing partition, bad
/// download) rather than the device's.
fn image_fault(e: &hw::Error) -> bool {
    match e {
        hw::Error::FastbootFailed { msg } => {
            let m = msg.to_ascii_lowercase();
            m.contains("partition") || m.contains("image") || m.contains("too large")
        }
        hw::Error::Download { .. }
        | hw::Error::ChecksumMismatch { .. }
        | hw::Error::BadFileName(_) => true,
        hw::Error::Io { context, .. } => context.starts_with("image file"),
        _ => false,
    }
}

/// The `/metrics` kind of a hardware action (`mozpool_hw_operations_total{kind=...}`).
fn hw_kind(action: &Action) -> &'static str {
    match action {
        Action::PowerCycle => "power_cycle",
        Action::PowerOff => "power_off",
        Action::SutReboot => "sut_reboot",
        Action::Ping => "ping",
        Action::SutVerify => "sut_verify",
        Action::SutSdcardCheck => "sut_sdcard_check",
        Action::HealthCheck { .. } => "health_check",
        Action::Flash { .. } => "flash",
        Action::NotifyRequest { .. } => "notify_request",
    }
}

/// Whether a hardware action's result event is a success.
fn hw_ok(event: &Event) -> bool {
    matches!(
        event,
        Event::PowerCycleOk { .. }
            | Event::PowerOffOk { .. }
            | Event::SutRebootOk { .. }
            | Event::PingOk { .. }
            | Event::SutVerifyOk { .. }
            | Event::SutSdcardOk { .. }
            | Event::HealthCheckOk { .. }
            | Event::FlashOk { .. }
    )
}

impl crate::domain::timers::Deadlines for Lifeguard {
    async fn pass(&self, now: Millis) -> bool {
        self.close_expired_sessions();
        self.timeout_pass(now).await
    }

    async fn next_deadline(&self) -> Option<Millis> {
        self.inner
            .store
            .peek(Snapshot::next_device_deadline)
            .ok()
            .flatten()
    }
}

/// The devices to resume after a (re)start and the generation each had then
/// ([`Lifeguard::to_resume`]).
#[derive(Debug)]
pub struct ToResume(Vec<(String, u64)>);

/// `.boxed()` on a future: puts it on the heap, so the future awaiting it holds a pointer
/// rather than the whole state machine (see [`Lifeguard::run_action`]).
trait Boxed: std::future::Future + Sized {
    fn boxed(self) -> std::pin::Pin<Box<Self>> {
        Box::pin(self)
    }
}

impl<F: std::future::Future> Boxed for F {}

#[cfg(test)]
mod error_texts {
    use super::{ProbeError, RelayError, SutAddrError, SutError, hw};

    /// The driver writes these errors into device logs, whose texts tests and operators
    /// know: they are the texts of the `String` errors they replaced.
    #[test]
    fn hardware_errors_read_as_before() {
        assert_eq!(RelayError::NotWired.to_string(), "no relay wiring");
        assert_eq!(
            SutAddrError::Missing.to_string(),
            "no SUTAgent address in the inventory"
        );
        let e = SutAddrError::Unresolvable {
            text: "x:1".into(),
            source: std::io::Error::other("no such host"),
        };
        assert_eq!(e.to_string(), "cannot resolve x:1: no such host");
        let e = SutAddrError::NoAddress { text: "x:1".into() };
        assert_eq!(e.to_string(), "x:1 resolves to no address");
        let hw = || hw::Error::NoReply { op: "ver".into() };
        assert_eq!(SutError::Hw(hw()).to_string(), hw().to_string());
        assert_eq!(ProbeError::Hw(hw()).to_string(), hw().to_string());
        assert_eq!(
            SutError::Address(SutAddrError::Missing).to_string(),
            "no SUTAgent address in the inventory"
        );
    }
}
