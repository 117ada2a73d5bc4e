//! The pure transition functions: [`step`], [`force`] and [`resume`].
//!
//! No I/O and no clock: `now` is an argument, hardware work is returned as [`Action`]s and its
//! results come back as [`Event`]s tagged with the generation that issued them. Every function
//! here is total (no panics for any snapshot and event).

use super::model::{
    Action, Event, ForceError, ImagingResult, NextImage, Purpose, Refused, Snapshot, Transition,
    counter,
};
use super::{DeviceState, Timings};
use crate::domain::clock::Millis;

use DeviceState as S;

/// Upper bound on state entries inside one step (transient chains are at most ~5 long).
const MAX_HOPS: u32 = 32;

/// Apply one event.
///
/// Please events the current state cannot take return [`Refused`] (and change nothing).
/// Results and timeouts whose generation is not the snapshot's are ignored ("ignored late
/// result"), as are results the current state does not expect; both give a transition with
/// the unchanged snapshot, no actions and a log line.
///
/// # Errors
/// [`Refused`] for a please event the state cannot take.
pub fn step(
    snap: &Snapshot,
    event: Event,
    now: Millis,
    t: &Timings,
) -> Result<Transition, Refused> {
    if event.is_please() {
        return please(snap, event, now, t);
    }
    Ok(internal(snap, event, now, t))
}

/// Conditional state change: if the device is in `from`, enter `to` (running its entry
/// actions like any transition; counters are cleared: a human's decision resets the retry
/// budgets).
///
/// # Errors
/// [`ForceError::UnknownState`] if a name is not a state; [`ForceError::Conflict`] if the
/// device is not in `from`.
pub fn force(
    snap: &Snapshot,
    from: &str,
    to: &str,
    now: Millis,
    t: &Timings,
) -> Result<Transition, ForceError> {
    let from: DeviceState = from.parse()?;
    let to: DeviceState = to.parse()?;
    if snap.state != from {
        return Err(ForceError::Conflict {
            current: snap.state,
        });
    }
    let mut r = Run::new(snap, now, t);
    r.s.counters.clear_all();
    r.goto(to, format!("conditional state change from {from}"));
    Ok(r.finish())
}

/// After a controller restart: nothing that was in flight can still report, so
/// * a state whose deadline has passed times out (as the `Timeout` event would);
/// * a state with hardware in flight is re-entered, re-issuing its action (`flashing` restarts
///   the flash: a device caught mid-flash is never trusted);
/// * a transient state (never persisted by `step`, but storage may be older) is resolved;
/// * `ready`'s lost health check is forgotten (the next one is due at the same deadline);
/// * every other state is kept as it is.
#[must_use]
pub fn resume(snap: &Snapshot, now: Millis, t: &Timings) -> Transition {
    let st = snap.state;
    if !st.is_transient() && snap.deadline.is_some_and(|d| d <= now) {
        // A health check lost with the old process is not a failed one.
        let mut fresh = snap.clone();
        fresh.counters.clear(counter::HEALTH_CHECK_IN_FLIGHT);
        let mut tr = internal(
            &fresh,
            Event::Timeout {
                generation: snap.generation,
            },
            now,
            t,
        );
        tr.log
            .insert(0, "controller restarted: deadline passed while down".into());
        return tr;
    }
    let mut r = Run::new(snap, now, t);
    if st.is_transient() {
        r.goto(st, "controller restarted: resolving transient state");
    } else if st == S::Flashing {
        r.goto(
            st,
            "controller restarted mid-flash: restarting the flash (device not trusted)",
        );
    } else if st.has_hardware_in_flight() {
        r.goto(
            st,
            "controller restarted: re-issuing the action that was in flight",
        );
    } else if snap.deadline.is_none()
        && t.timeout(st).is_some()
        && !(st == S::Ready && snap.request.is_some())
    {
        r.goto(st, "controller restarted: missing deadline restored");
    } else if st == S::Ready && r.s.counters.get(counter::HEALTH_CHECK_IN_FLIGHT) > 0 {
        r.s.counters.clear(counter::HEALTH_CHECK_IN_FLIGHT);
        r.log
            .push("controller restarted: health check in flight forgotten".into());
    } else {
        r.log
            .push(format!("controller restarted: resuming in {st}"));
    }
    r.finish()
}

/// Why the full family is refused in `st` (only called for states that refuse it).
fn busy_reason(st: DeviceState) -> String {
    if st == S::LockedOut {
        "device is locked out (managed outside mozpool); only a conditional state change gets it out"
            .into()
    } else if st == S::MaintenanceMode {
        "device is in maintenance; end maintenance first".into()
    } else if st == S::Off {
        "device is powered off; power it on or self-test it first".into()
    } else if st.is_failed() {
        format!("device has failed ({st}); only self-test, maintenance or power-off are accepted")
    } else {
        format!(
            "device is busy ({st} in progress); hardware actions never overlap and a device being worked on is not handed out"
        )
    }
}

fn please(snap: &Snapshot, event: Event, now: Millis, t: &Timings) -> Result<Transition, Refused> {
    let st = snap.state;
    let name = event.name();
    let refuse = |reason: String| Refused {
        state: st,
        event: name,
        reason,
    };
    let mut r = Run::new(snap, now, t);
    match event {
        Event::PleasePowerCycle | Event::PleaseReboot => {
            if !st.accepts_full_please() {
                return Err(refuse(busy_reason(st)));
            }
            let soft = matches!(event, Event::PleaseReboot);
            r.s.counters.clear_all();
            r.s.next_image = None;
            r.s.purpose = Purpose::Operation;
            r.log.push(format!("accepted {name}"));
            r.power_cycle_entry(soft, name);
        }
        Event::PleaseImage {
            image,
            boot_config,
            has_agent,
            request,
        } => {
            if !st.accepts_full_please() {
                return Err(refuse(busy_reason(st)));
            }
            match (snap.request, request) {
                (Some(held), Some(asker)) if held == asker => {}
                (Some(held), _) => {
                    return Err(refuse(format!("device is held by request {held}")));
                }
                (None, asker) => r.s.request = asker,
            }
            r.s.counters.clear_all();
            r.log.push(format!("accepted {name} {image}"));
            r.s.next_image = Some(NextImage {
                image,
                boot_config,
                has_agent,
            });
            r.goto(S::StartFlash, "please_image");
        }
        Event::Hold { request } => {
            if st != S::Ready || snap.request.is_some() {
                return Err(refuse(busy_reason(st)));
            }
            if snap.counters.get(counter::HEALTH_CHECK_IN_FLIGHT) > 0 {
                return Err(refuse("a health check is in flight".into()));
            }
            if snap.counters.get(counter::VERIFIED_CLEAN) == 0 {
                return Err(refuse(
                    "not rebooted and verified since it was last held".into(),
                ));
            }
            r.s.counters.clear(counter::VERIFIED_CLEAN);
            r.s.request = Some(request);
            r.goto(
                S::Ready,
                format!(
                    "held by request {request} as it is: rebooted and verified since its last use"
                ),
            );
        }
        Event::PleaseSelfTest | Event::PleaseStartMaintenance => {
            if !st.accepts_basic_please() {
                return Err(refuse(busy_reason(st)));
            }
            r.s.counters.clear_all();
            r.log.push(format!("accepted {name}"));
            if matches!(event, Event::PleaseSelfTest) {
                r.goto(S::StartSelfTest, name);
            } else {
                r.goto(S::StartMaintenance, name);
            }
        }
        Event::PleaseEndMaintenance => {
            if st != S::MaintenanceMode {
                if st.is_in_progress() || st == S::LockedOut {
                    return Err(refuse(busy_reason(st)));
                }
                return Err(refuse(format!("device is not in maintenance ({st})")));
            }
            r.s.counters.clear_all();
            r.log.push(format!("accepted {name}"));
            r.goto(S::StartSelfTest, name);
        }
        Event::PleasePowerOff => {
            let ok_state = st.accepts_full_please() || st == S::MaintenanceMode || st.is_failed();
            if st == S::Off {
                return Err(refuse("device is already off".into()));
            }
            if !ok_state {
                return Err(refuse(busy_reason(st)));
            }
            if let Some(held) = snap.request {
                return Err(refuse(format!(
                    "device is held by request {held}; release it first"
                )));
            }
            if !snap.has_power_control {
                return Err(refuse(
                    "no relay wiring: the device cannot be powered off".into(),
                ));
            }
            r.s.counters.clear_all();
            r.log.push(format!("accepted {name}"));
            r.goto(S::PoweringOff, name);
        }
        Event::PleasePowerOn => {
            if st != S::Off {
                if st.is_in_progress() || st == S::LockedOut {
                    return Err(refuse(busy_reason(st)));
                }
                return Err(refuse(format!("device is not powered off ({st})")));
            }
            r.s.counters.clear_all();
            r.log.push(format!("accepted {name}"));
            r.goto(S::StartSelfTest, name);
        }
        other => {
            // Not a please event: unreachable through `step`, handled totally anyway.
            return Ok(internal(snap, other, now, t));
        }
    }
    Ok(r.finish())
}

fn internal(snap: &Snapshot, event: Event, now: Millis, t: &Timings) -> Transition {
    let mut r = Run::new(snap, now, t);
    let st = snap.state;
    let name = event.name();
    if let Event::Release { request } = event {
        if snap.request == Some(request) {
            r.s.request = None;
            r.s.counters.clear(counter::VERIFIED_CLEAN);
            if st == S::Ready {
                r.goto(S::Ready, format!("request {request} released"));
            } else {
                r.log.push(format!("request {request} released in {st}"));
            }
        } else {
            r.log.push(format!(
                "ignored release of request {request}: not holding the device"
            ));
        }
        return r.finish();
    }
    if let Some(g) = event.generation()
        && g != snap.generation
    {
        r.log.push(format!(
            "ignored late result {name} (generation {g}, current {}) in {st}",
            snap.generation
        ));
        return r.finish();
    }
    match (st, event) {
        (_, Event::Timeout { .. }) => match snap.deadline {
            None => r.log.push(format!("ignored timeout in {st}: no deadline")),
            Some(d) if now < d => r
                .log
                .push(format!("ignored early timeout in {st}: due at {}", d.iso())),
            Some(_) => r.on_timeout(),
        },

        (S::PcPowerCycling, Event::PowerCycleOk { .. }) => {
            r.s.counters.clear(counter::POWER_CYCLING);
            r.goto(S::PcRebooting, "power cycle done");
        }
        (S::PcPowerCycling, Event::PowerCycleFailed { reason, .. }) => {
            r.power_cycle_failed(&reason);
        }
        (S::PcSutRebooting, Event::SutRebootOk { .. }) => {
            r.s.counters.clear(counter::SUT_REBOOTING);
            r.goto(S::PcRebooting, "SUTAgent reboot accepted");
        }
        (S::PcSutRebooting, Event::SutRebootFailed { reason, .. }) => {
            r.soft_reboot_failed(&reason);
        }
        (S::SutVerifyPowerCycle, Event::PowerCycleOk { .. } | Event::SutRebootOk { .. }) => {
            r.goto(S::SutVerifying, "power cycled; verifying again");
        }
        (
            S::SutVerifyPowerCycle,
            Event::PowerCycleFailed { reason, .. } | Event::SutRebootFailed { reason, .. },
        ) => r.sut_verify_power_cycle_failed(&reason),
        (S::PcPinging, Event::PingOk { .. }) => {
            r.s.counters.clear(counter::PC_PINGING);
            r.verified("device answers ping");
        }
        (S::PcPinging, Event::PingFailed { reason, .. }) => {
            r.log.push(format!(
                "ping failed ({reason}); waiting for the timeout to retry"
            ));
        }
        (S::SutVerifying, Event::SutVerifyOk { .. }) => {
            r.s.counters.clear(counter::SUT_VERIFYING);
            r.goto(S::SutSdcardVerifying, "SUTAgent verified");
        }
        (S::SutVerifying, Event::SutVerifyFailed { reason, .. }) => {
            r.log.push(format!(
                "SUT verify failed ({reason}); waiting for the timeout to retry"
            ));
        }
        (S::SutSdcardVerifying, Event::SutSdcardOk { .. }) => {
            r.s.counters.clear(counter::SUT_SDCARD_VERIFYING);
            r.verified("SD card verified");
        }
        (S::SutSdcardVerifying, Event::SutSdcardFailed { reason, .. }) => {
            r.sdcard_failed(&reason);
        }
        (S::Flashing, Event::FlashOk { .. }) => {
            r.s.counters.clear(counter::FLASHING);
            if let Some(n) = r.s.next_image.clone() {
                // The device now carries the new image even before it is verified.
                r.s.current_image = Some(n.image);
                r.s.current_boot_config = n.boot_config;
                r.s.current_has_agent = n.has_agent;
            }
            r.goto(
                S::FlashRebooting,
                "flash done; waiting for the image to boot",
            );
        }
        (
            S::Flashing,
            Event::FlashFailed {
                bad_image, reason, ..
            },
        ) => {
            if bad_image {
                r.bad_image = true;
                r.goto(
                    S::FailedFlashing,
                    format!("image refused by the device: {reason}"),
                );
            } else {
                r.flash_failed(&reason);
            }
        }
        (S::PoweringOff, Event::PowerOffOk { .. }) => {
            r.goto(S::Off, "powered off");
        }
        (S::PoweringOff, Event::PowerOffFailed { reason, .. }) => r.power_off_failed(&reason),
        (S::Ready, Event::HealthCheckOk { .. }) => {
            r.s.counters.clear(counter::HEALTH_CHECK_IN_FLIGHT);
            r.s.counters.clear(counter::HEALTH_CHECK_FAILURES);
            r.s.counters.clear(counter::SELF_TEST_RETRIES);
            r.log.push("health check passed".into());
        }
        (S::Ready, Event::HealthCheckFailed { reason, .. }) => r.health_check_failed(&reason),
        (_, ev) => {
            r.log
                .push(format!("ignored event {} in state {st}", ev.name()));
        }
    }
    r.finish()
}

/// One step in the making: a working copy of the snapshot plus what was emitted.
struct Run<'a> {
    s: Snapshot,
    actions: Vec<Action>,
    log: Vec<String>,
    now: Millis,
    t: &'a Timings,
    hops: u32,
    /// The failure being entered is the image's fault.
    bad_image: bool,
    /// A failure result was already sent to the request in this step.
    notified_failure: bool,
}

impl<'a> Run<'a> {
    fn new(snap: &Snapshot, now: Millis, t: &'a Timings) -> Self {
        Run {
            s: snap.clone(),
            actions: Vec::new(),
            log: Vec::new(),
            now,
            t,
            hops: 0,
            bad_image: false,
            notified_failure: false,
        }
    }

    fn finish(self) -> Transition {
        Transition {
            next: self.s,
            actions: self.actions,
            log: self.log,
        }
    }

    /// Leave the current state for `to` (or re-enter it), then run `to`'s entry.
    fn goto(&mut self, to: DeviceState, why: impl Into<String>) {
        let why = why.into();
        self.hops += 1;
        if self.hops > MAX_HOPS {
            // Cannot happen with the entries below; a guard so that `step` stays total.
            self.log.push(format!(
                "transition chain too long at {to} ({why}); parking in unknown"
            ));
            self.set_state(S::Unknown);
            return;
        }
        // The timeline reads these lines back (domain::history::LogMark::parse).
        self.log.push(crate::domain::history::transition_line(
            self.s.state,
            to,
            &why,
        ));
        self.set_state(to);
        self.enter();
    }

    fn set_state(&mut self, to: DeviceState) {
        self.s.state = to;
        self.s.generation = self.s.generation.wrapping_add(1);
        self.s.entered_at = self.now;
        self.s.deadline = self.t.timeout(to).map(|d| self.now.plus(d));
    }

    fn emit(&mut self, a: Action) {
        self.actions.push(a);
    }

    fn fail(&mut self, state: DeviceState, why: impl Into<String>) {
        self.goto(state, why);
    }

    /// The entry action of the state just entered.
    fn enter(&mut self) {
        let st = self.s.state;
        match st {
            S::New
            | S::Unknown
            | S::LockedOut
            | S::Troubleshooting
            | S::Off
            | S::MaintenanceMode
            | S::PcRebooting
            | S::FlashRebooting => {}
            S::Ready => {
                self.s.counters.clear(counter::HEALTH_CHECK_IN_FLIGHT);
                if self.s.request.is_some() {
                    self.s.deadline = None;
                }
            }
            S::StartSelfTest => {
                self.s.counters.clear_non_sticky();
                // Fix §9.13: a stale next image must not be promoted by a later success.
                self.s.next_image = None;
                self.s.purpose = Purpose::SelfTest;
                self.power_cycle_entry(false, "self-test");
            }
            S::StartMaintenance => {
                self.s.counters.clear_all();
                self.s.next_image = None;
                self.goto(S::MaintenanceMode, "maintenance");
            }
            S::StartFlash => {
                self.s.counters.clear_all();
                self.s.purpose = Purpose::Operation;
                self.goto(S::Flashing, "flashing");
            }
            S::Flashing => {
                let Some(n) = self.s.next_image.clone() else {
                    self.fail(S::FailedFlashing, "no image to flash");
                    return;
                };
                if !self.s.has_power_control && self.s.boot_mode.needs_power_control() {
                    self.fail(
                        S::FailedPowerCycling,
                        "no relay wiring: cannot power-cycle into the bootloader",
                    );
                    return;
                }
                // The device's contents are about to be overwritten.
                self.s.current_image = None;
                self.s.current_boot_config.clear();
                self.s.current_has_agent = false;
                self.emit(Action::Flash {
                    image: n.image,
                    boot_config: n.boot_config,
                });
            }
            S::PcSutRebooting => {
                if !self.s.current_has_agent {
                    if self.s.has_power_control {
                        self.goto(S::PcPowerCycling, "no SUTAgent for a soft reboot");
                    } else {
                        self.fail(
                            S::FailedPowerCycling,
                            "no relay wiring and no SUTAgent for a soft reboot",
                        );
                    }
                    return;
                }
                self.emit(Action::SutReboot);
            }
            S::PcPowerCycling => {
                if !self.s.has_power_control {
                    self.fail(S::FailedPowerCycling, "no relay wiring");
                    return;
                }
                self.emit(Action::PowerCycle);
            }
            S::PcPinging => self.emit(Action::Ping),
            S::SutVerifying => self.emit(Action::SutVerify),
            S::SutVerifyPowerCycle => {
                if self.s.has_power_control {
                    self.emit(Action::PowerCycle);
                } else {
                    self.emit(Action::SutReboot);
                }
            }
            S::SutSdcardVerifying => self.emit(Action::SutSdcardCheck),
            S::OperationComplete => {
                if let Some(n) = self.s.next_image.take() {
                    self.s.current_image = Some(n.image);
                    self.s.current_boot_config = n.boot_config;
                    self.s.current_has_agent = n.has_agent;
                }
                // A real success: every retry budget starts afresh.
                self.s.counters.clear_all();
                if let Some(request) = self.s.request {
                    self.emit(Action::NotifyRequest {
                        request,
                        result: ImagingResult::Complete,
                    });
                } else {
                    self.s.counters.set(counter::VERIFIED_CLEAN, 1);
                }
                self.goto(S::Ready, "operation complete");
            }
            S::PoweringOff => {
                if !self.s.has_power_control {
                    self.fail(S::FailedPoweringOff, "no relay wiring");
                    return;
                }
                self.emit(Action::PowerOff);
            }
            S::FailedPowerCycling
            | S::FailedPoweringOff
            | S::FailedFlashing
            | S::FailedPinging
            | S::FailedSutVerifying
            | S::FailedSutSdcardVerifying
            | S::FailedSelfTest
            | S::FailedHealthCheck => self.enter_failed(st),
        }
    }

    fn enter_failed(&mut self, st: DeviceState) {
        self.log.push(format!("device has failed: {st}"));
        let bad_image = std::mem::take(&mut self.bad_image);
        if let Some(request) = self.s.request
            && !self.notified_failure
        {
            self.notified_failure = true;
            let result = if bad_image {
                ImagingResult::FailedBadImage
            } else {
                ImagingResult::FailedBadDevice
            };
            self.emit(Action::NotifyRequest { request, result });
        }
        if !st.retried_by_self_test() || bad_image {
            return;
        }
        let done = self.s.counters.get(counter::SELF_TEST_RETRIES);
        if done < self.t.max_self_test_retries {
            self.s.counters.increment(counter::SELF_TEST_RETRIES);
            self.goto(
                S::StartSelfTest,
                format!(
                    "automatic self-test {}/{} after {st}",
                    done + 1,
                    self.t.max_self_test_retries
                ),
            );
        } else if self.s.purpose == Purpose::SelfTest {
            self.goto(
                S::FailedSelfTest,
                format!("{} automatic self-tests failed; last failure {st}", done),
            );
        } else {
            self.log.push(format!(
                "no automatic self-test left ({done} done); waiting for a human"
            ));
        }
    }

    /// Start a power cycle: soft (SUTAgent) first when asked and possible, relay otherwise;
    /// a device with neither cannot be power-cycled.
    fn power_cycle_entry(&mut self, prefer_soft: bool, why: &str) {
        let sut = self.s.current_has_agent;
        if prefer_soft && sut {
            self.goto(S::PcSutRebooting, why);
        } else if self.s.has_power_control {
            self.goto(S::PcPowerCycling, why);
        } else if sut {
            self.goto(
                S::PcSutRebooting,
                format!("{why} (no relay wiring: soft reboot)"),
            );
        } else {
            self.fail(S::FailedPowerCycling, "no relay wiring");
        }
    }

    /// The device has booted: verify it as its image allows.
    fn after_boot(&mut self, why: &str) {
        if self.s.current_has_agent {
            self.goto(S::SutVerifying, why);
        } else {
            self.goto(S::PcPinging, why);
        }
    }

    /// Verification passed.
    fn verified(&mut self, why: &str) {
        match self.s.purpose {
            Purpose::SelfTest => {
                self.s.counters.clear_non_sticky();
                if self.s.request.is_none() {
                    self.s.counters.set(counter::VERIFIED_CLEAN, 1);
                }
                self.goto(S::Ready, format!("self-test passed ({why})"));
            }
            Purpose::Operation => self.goto(S::OperationComplete, why),
        }
    }

    fn on_timeout(&mut self) {
        let st = self.s.state;
        match st {
            S::New => self.goto(S::StartSelfTest, "new device"),
            S::Ready => self.ready_timeout(),
            S::PcSutRebooting => self.soft_reboot_failed("timed out"),
            S::PcPowerCycling => self.power_cycle_failed("timed out"),
            S::PcRebooting => self.after_boot("boot wait over"),
            S::FlashRebooting => self.after_boot("boot wait over"),
            S::PcPinging => self.ping_timeout(),
            S::Flashing => self.flash_failed("timed out"),
            S::SutVerifying => {
                let c = self.s.counters.increment(counter::SUT_VERIFYING);
                let every = self.t.sut_verify_power_cycle_every;
                if c > self.t.max_sut_verifying {
                    self.fail(
                        S::FailedSutVerifying,
                        format!("SUTAgent did not verify after {c} attempts"),
                    );
                } else if every > 0 && c.is_multiple_of(every) {
                    self.goto(
                        S::SutVerifyPowerCycle,
                        format!("SUT verify timed out {c} times"),
                    );
                } else {
                    self.goto(S::SutVerifying, format!("timed out ({c})"));
                }
            }
            S::SutVerifyPowerCycle => self.sut_verify_power_cycle_failed("timed out"),
            S::SutSdcardVerifying => self.sdcard_failed("timed out"),
            S::PoweringOff => self.power_off_failed("timed out"),
            S::Unknown
            | S::LockedOut
            | S::Troubleshooting
            | S::Off
            | S::MaintenanceMode
            | S::StartSelfTest
            | S::StartMaintenance
            | S::StartFlash
            | S::OperationComplete
            | S::FailedPowerCycling
            | S::FailedPoweringOff
            | S::FailedFlashing
            | S::FailedPinging
            | S::FailedSutVerifying
            | S::FailedSutSdcardVerifying
            | S::FailedSelfTest
            | S::FailedHealthCheck => {
                // A stored deadline in a state without a timeout (older data): drop it.
                self.s.deadline = None;
                self.log
                    .push(format!("timeout in {st}, which has none: deadline cleared"));
            }
        }
    }

    fn ready_timeout(&mut self) {
        if self.s.request.is_some() {
            self.s.deadline = None;
            self.log
                .push("held by a request: no idle health check".to_owned());
            return;
        }
        if self.s.counters.get(counter::HEALTH_CHECK_IN_FLIGHT) > 0 {
            self.health_check_failed("the previous health check never answered");
            return;
        }
        self.goto(S::Ready, "idle health check");
        self.s.counters.set(counter::HEALTH_CHECK_IN_FLIGHT, 1);
        let sut = self.s.current_has_agent;
        self.emit(Action::HealthCheck { agent: sut });
    }

    fn health_check_failed(&mut self, reason: &str) {
        self.s.counters.clear(counter::HEALTH_CHECK_IN_FLIGHT);
        let c = self.s.counters.increment(counter::HEALTH_CHECK_FAILURES);
        if c > self.t.max_health_check_failures {
            self.fail(
                S::FailedHealthCheck,
                format!("health check failed ({reason}); {c} failures"),
            );
        } else {
            self.goto(
                S::StartSelfTest,
                format!("health check failed ({reason}); out of the pool for a self-test"),
            );
        }
    }

    /// One more failure of `what`, counted on `counter`: past `limit` the device fails into
    /// `failed`, otherwise it re-enters `retry`.
    fn retry_or_fail(
        &mut self,
        counter: &'static str,
        limit: u32,
        failed: DeviceState,
        retry: DeviceState,
        what: &str,
        reason: &str,
    ) {
        let c = self.s.counters.increment(counter);
        if c > limit {
            self.fail(failed, format!("{what} failed {c} times (last: {reason})"));
        } else {
            self.goto(retry, format!("{what} failed ({reason}); retry {c}"));
        }
    }

    fn power_cycle_failed(&mut self, reason: &str) {
        let limit = self.t.max_power_cycling;
        self.retry_or_fail(
            counter::POWER_CYCLING,
            limit,
            S::FailedPowerCycling,
            S::PcPowerCycling,
            "power cycle",
            reason,
        );
    }

    fn soft_reboot_failed(&mut self, reason: &str) {
        if self.s.has_power_control {
            self.goto(
                S::PcPowerCycling,
                format!("SUTAgent reboot failed ({reason}); falling back to the relay"),
            );
            return;
        }
        let c = self.s.counters.increment(counter::SUT_REBOOTING);
        if c > self.t.max_sut_rebooting {
            self.fail(
                S::FailedPowerCycling,
                format!("SUTAgent reboot failed {c} times ({reason}) and no relay wiring"),
            );
        } else {
            self.goto(
                S::PcSutRebooting,
                format!("SUTAgent reboot failed ({reason}); retry {c}"),
            );
        }
    }

    fn ping_timeout(&mut self) {
        let c = self.s.counters.increment(counter::PC_PINGING);
        if c <= self.t.max_pc_pinging {
            self.goto(S::PcPinging, format!("no answer ({c})"));
            return;
        }
        self.s.counters.clear(counter::PC_PINGING);
        let rounds = self.s.counters.increment(counter::PC_ROUNDS);
        if rounds > self.t.max_pc_rounds {
            self.fail(
                S::FailedPinging,
                format!("unreachable after {rounds} power-cycle rounds"),
            );
        } else if self.s.has_power_control {
            self.goto(
                S::PcPowerCycling,
                format!("unreachable after {c} pings; power-cycle round {rounds}"),
            );
        } else if self.s.current_has_agent {
            self.goto(
                S::PcSutRebooting,
                format!("unreachable after {c} pings; soft-reboot round {rounds}"),
            );
        } else {
            self.fail(
                S::FailedPinging,
                format!("unreachable after {c} pings and no relay wiring to power-cycle it"),
            );
        }
    }

    fn flash_failed(&mut self, reason: &str) {
        let limit = self.t.max_flashing;
        self.retry_or_fail(
            counter::FLASHING,
            limit,
            S::FailedFlashing,
            S::Flashing,
            "flash",
            reason,
        );
    }

    fn sut_verify_power_cycle_failed(&mut self, reason: &str) {
        let c = self.s.counters.increment(counter::SUT_VERIFY_POWER_CYCLE);
        if c > self.t.max_sut_verify_power_cycle {
            self.fail(
                S::FailedSutVerifying,
                format!("power cycle for SUT verification failed {c} times (last: {reason})"),
            );
        } else {
            self.goto(
                S::SutVerifyPowerCycle,
                format!("power cycle failed ({reason}); retry {c}"),
            );
        }
    }

    fn sdcard_failed(&mut self, reason: &str) {
        let limit = self.t.max_sut_sdcard_verifying;
        self.retry_or_fail(
            counter::SUT_SDCARD_VERIFYING,
            limit,
            S::FailedSutSdcardVerifying,
            S::SutSdcardVerifying,
            "SD card check",
            reason,
        );
    }

    fn power_off_failed(&mut self, reason: &str) {
        let limit = self.t.max_powering_off;
        self.retry_or_fail(
            counter::POWERING_OFF,
            limit,
            S::FailedPoweringOff,
            S::PoweringOff,
            "power off",
            reason,
        );
    }
}
