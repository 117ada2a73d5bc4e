//! The pure request machine: `step(snapshot, event, now, timings) -> Transition` (§4 of the
//! behaviour reference, with the defects of §9 fixed). No I/O, no clock.
//!
//! The driver persists the transition (state, generation, timeout, counters, assignment,
//! expiry) in the same store transaction that produced the event, then executes the
//! actions. Results come back as events. The holder of a device must be written from
//! [`Transition::assigned`], never from the queue's output directly: an `Assigned` event
//! that the machine ignores therefore never holds a device.
//!
//! Lease: a request keeps its device until `expires + grace`; an `expire` delivered earlier
//! (e.g. racing a renew) is ignored, so the request keeps reading `ready` during the grace.

use serde::{Deserialize, Serialize};

use super::config::Timings;
use super::select::Explanation;
use crate::domain::clock::Millis;
use crate::domain::names::{DeviceName, ImageName};
use crate::domain::request::{Assignment, DeviceChoice, RequestSnapshot};
use crate::domain::request_state::{Counters, ImagingResult, RequestState};

/// Inputs to the machine: API calls, search results, Lifeguard reports and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start searching (sent by the API right after creation).
    FindDevice,
    /// The queue gave this request `device` (the caller computed `needs_image` with
    /// [`super::select::needs_image`]).
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Assigned {
        device: DeviceName,
        /// See [`Assignment::needs_image`].
        needs_image: bool,
    },
    /// Answer to [`Action::Search`]: the pass gave this request nothing.
    NoDevice {
        /// Why, for the request log.
        explanation: Explanation,
    },
    /// No non-retired device could ever match ([`super::select::satisfiable`]).
    Unsatisfiable {
        /// Reason for the log.
        reason: String,
    },
    /// Lifeguard accepted the please event for `device` (4.x `lifeguard_contacted`).
    LifeguardContacted {
        /// The device it was sent to; other devices' reports are ignored.
        device: DeviceName,
    },
    /// Lifeguard's imaging result for `device` (4.x `lifeguard_finished`); also how the
    /// driver feeds a polled `imaging_result`.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    LifeguardFinished {
        /// The device reporting.
        device: DeviceName,
        imaging_result: ImagingResult,
    },
    /// The held device is not usable: Lifeguard refused the please event because the device
    /// left `ready` (§9.4, §9.8), or it failed while held.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    DeviceLost {
        device: DeviceName,
        /// Its Lifeguard state, for the log.
        lifeguard_state: String,
    },
    /// The client returned the request (`POST /return/`).
    Close,
    /// The lease ran out (the driver sends it once `now ≥ expires + grace`).
    Expire,
    /// `POST /renew/`: `expires := now + duration` (capped by `max_duration`).
    Renew {
        /// Requested lease length in seconds.
        duration_secs: u64,
    },
    /// The state's timeout passed.
    Timeout {
        /// The generation the timeout was armed in.
        generation: u64,
    },
}

impl Event {
    /// The 4.x-style event name, for logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Event::FindDevice => "find_device",
            Event::Assigned { .. } => "assigned",
            Event::NoDevice { .. } => "no_device",
            Event::Unsatisfiable { .. } => "unsatisfiable",
            Event::LifeguardContacted { .. } => "lifeguard_contacted",
            Event::LifeguardFinished { .. } => "lifeguard_finished",
            Event::DeviceLost { .. } => "device_lost",
            Event::Close => "close",
            Event::Expire => "expire",
            Event::Renew { .. } => "renew",
            Event::Timeout { .. } => "timeout",
        }
    }
}

/// The please event sent to Lifeguard for the assigned device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifeguardEvent {
    /// `please_image {image, boot_config}`; `boot_config` is the request's JSON text.
    PleaseImage {
        /// Image to install.
        image: ImageName,
        /// Boot config JSON text.
        boot_config: String,
    },
    /// `please_power_cycle`: the device already runs the reusable image with an equal
    /// boot config.
    PleasePowerCycle,
}

impl LifeguardEvent {
    /// Lifeguard's event name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            LifeguardEvent::PleaseImage { .. } => "please_image",
            LifeguardEvent::PleasePowerCycle => "please_power_cycle",
        }
    }
}

/// Work for the driver. Results come back as [`Event`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a queue pass now and answer this request with `Assigned` or `NoDevice` (or
    /// `Unsatisfiable`).
    Search,
    /// Send `event` to Lifeguard for `device`, conditionally on the device being `ready`
    /// (§9.8); accepted ⇒ `LifeguardContacted`, refused ⇒ `DeviceLost`, no answer ⇒ the
    /// `contacting_lifeguard` timeout retries.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    ContactLifeguard {
        device: DeviceName,
        /// What to ask.
        event: LifeguardEvent,
    },
    /// Drop the hold on `device`. With `reverify` (always set by this machine) the device
    /// must be rebooted and verified by Lifeguard before anyone else gets it: a client may
    /// have left it in any condition.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    ReleaseDevice {
        device: DeviceName,
        /// Reboot and verify before the next assignment.
        reverify: bool,
    },
    /// A line for the request log.
    Log(String),
}

/// The result of one `step`: the full next persisted values plus actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Next state.
    pub state: RequestState,
    /// Next generation (bumped on every state entry).
    pub generation: u64,
    /// Next timeout.
    pub timeout: Option<Millis>,
    /// Next counters.
    pub counters: Counters,
    /// Next holder; write device holds from this.
    pub assigned: Option<Assignment>,
    /// Next lease end.
    pub expires: Millis,
    /// Work for the driver, in order.
    pub actions: Vec<Action>,
    /// The event was handled (`false`: ignored in this state; an API may answer 409).
    pub accepted: bool,
}

impl Transition {
    /// The snapshot after applying this transition to `snap`.
    #[must_use]
    pub fn apply(&self, snap: &RequestSnapshot) -> RequestSnapshot {
        RequestSnapshot {
            id: snap.id,
            spec: snap.spec.clone(),
            state: self.state,
            generation: self.generation,
            timeout: self.timeout,
            counters: self.counters,
            assigned: self.assigned.clone(),
            expires: self.expires,
        }
    }

    /// The log lines among the actions.
    pub fn logs(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().filter_map(|a| match a {
            Action::Log(s) => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Builds a [`Transition`] from a snapshot.
struct Step<'a> {
    snap: &'a RequestSnapshot,
    now: Millis,
    t: &'a Timings,
    tr: Transition,
}

impl<'a> Step<'a> {
    fn new(snap: &'a RequestSnapshot, now: Millis, t: &'a Timings) -> Self {
        Step {
            snap,
            now,
            t,
            tr: Transition {
                state: snap.state,
                generation: snap.generation,
                timeout: snap.timeout,
                counters: snap.counters,
                assigned: snap.assigned.clone(),
                expires: snap.expires,
                actions: Vec::new(),
                accepted: true,
            },
        }
    }

    fn log(&mut self, msg: impl Into<String>) {
        self.tr.actions.push(Action::Log(msg.into()));
    }

    fn ignore(mut self, event: &Event) -> Transition {
        self.tr.accepted = false;
        let msg = format!(
            "ignored event {} in state {}",
            event.name(),
            self.snap.state
        );
        self.log(msg);
        self.tr
    }

    /// Ignore without a log line (late timeouts are routine).
    fn ignore_quietly(mut self) -> Transition {
        self.tr.accepted = false;
        self.tr
    }

    /// Enter (or re-enter) `state` with an optional timeout.
    fn goto(&mut self, state: RequestState, timeout: Option<std::time::Duration>) {
        if state != self.tr.state {
            self.log(format!("entering state {state}"));
        }
        self.tr.state = state;
        self.tr.generation = self.tr.generation.wrapping_add(1);
        self.tr.timeout = timeout.map(|d| self.now.plus(d));
    }

    fn release(&mut self) {
        if let Some(a) = self.tr.assigned.take() {
            self.tr.actions.push(Action::ReleaseDevice {
                device: a.device,
                reverify: true,
            });
        }
    }

    /// Back to searching: release, reset the search counters (§9.12), `finding_device`
    /// (no `wait`) or `queued` (with `wait`), and ask for a search.
    fn search(&mut self) {
        self.release();
        self.tr.counters = self.tr.counters.reset_search();
        match self.snap.spec.wait {
            Some(w) => self.goto(
                RequestState::Queued,
                Some(std::time::Duration::from_secs(w)),
            ),
            None => self.goto(RequestState::FindingDevice, Some(self.t.finding_device)),
        }
        self.tr.actions.push(Action::Search);
    }

    fn fail(&mut self, state: RequestState, msg: impl Into<String>) {
        self.log(msg);
        self.release();
        self.goto(state, None);
    }

    fn contact(&mut self) {
        let Some(a) = self.tr.assigned.clone() else {
            return;
        };
        let event = if a.needs_image || !self.snap.spec.can_reuse {
            LifeguardEvent::PleaseImage {
                image: self.snap.spec.image.clone(),
                boot_config: self.snap.spec.boot_config_json(),
            }
        } else {
            LifeguardEvent::PleasePowerCycle
        };
        self.tr.actions.push(Action::ContactLifeguard {
            device: a.device,
            event,
        });
    }

    fn is_assigned(&self, device: &DeviceName) -> bool {
        self.snap
            .assigned
            .as_ref()
            .is_some_and(|a| &a.device == device)
    }

    fn specific(&self) -> Option<&DeviceName> {
        match &self.snap.spec.requested_device {
            DeviceChoice::Any => None,
            DeviceChoice::Named(n) => Some(n),
        }
    }

    /// §4.4 with early results accepted in `contacting_lifeguard` as well.
    fn imaging_result(mut self, device: &DeviceName, result: &ImagingResult) -> Transition {
        match result {
            ImagingResult::Complete => {
                self.log(format!("device {device} is ready"));
                self.goto(RequestState::Ready, None);
            }
            ImagingResult::FailedBadImage => {
                self.tr.counters.bad_images = self.tr.counters.bad_images.saturating_add(1);
                let n = self.tr.counters.bad_images;
                if n >= self.t.bad_image_tries {
                    self.fail(
                        RequestState::FailedBadImage,
                        format!("image {} failed on {n} devices", self.snap.spec.image),
                    );
                } else {
                    self.log(format!(
                        "image {} failed on device {device}; trying another device",
                        self.snap.spec.image
                    ));
                    self.search();
                }
            }
            ImagingResult::FailedBadDevice => {
                if self.specific().is_some() {
                    self.fail(
                        RequestState::FailedBadDevice,
                        format!("device {device} failed while being prepared"),
                    );
                } else {
                    self.log(format!(
                        "device {device} failed while being prepared; searching again"
                    ));
                    self.search();
                }
            }
            ImagingResult::Other(code) => {
                self.log(format!(
                    "warning: unknown imaging result {code:?} from device {device}; searching again"
                ));
                self.search();
            }
        }
        self.tr
    }
}

/// Advance a request by one event. Pure; never panics on any (state, event) pair.
#[must_use]
pub fn step(snap: &RequestSnapshot, event: Event, now: Millis, t: &Timings) -> Transition {
    use RequestState as S;
    let mut s = Step::new(snap, now, t);
    let state = snap.state;

    // Timers: stale generations and early deliveries are ignored quietly. An unknown
    // state accepts any timeout (its stored generation may be meaningless).
    if let Event::Timeout { generation } = event {
        let due = snap.timeout.is_some_and(|at| now >= at);
        if state != S::Unknown && (generation != snap.generation || !due) {
            return s.ignore_quietly();
        }
    }

    // Events with the same meaning in every state.
    match &event {
        Event::Renew { duration_secs } => {
            if !state.is_open() {
                return s.ignore(&event);
            }
            let (end, capped) = t.lease_end(now, *duration_secs);
            s.tr.expires = end;
            let note = if capped {
                " (capped at max_duration)"
            } else {
                ""
            };
            s.log(format!("Request renewed until {}{note}.", end.iso()));
            return s.tr;
        }
        Event::Close => {
            if state == S::Closed {
                // Idempotent.
                return s.tr;
            }
            s.log(if state.is_failed() {
                format!("Request closed (was {state}).")
            } else {
                "Request closed.".to_owned()
            });
            s.release();
            s.goto(S::Closed, None);
            return s.tr;
        }
        Event::Expire => {
            if state.is_terminal() {
                return s.ignore(&event);
            }
            let due = t.expire_due(snap.expires);
            if state != S::Expired && now < due {
                s.tr.accepted = false;
                s.log(format!(
                    "expire ignored: lease runs until {} (+ grace)",
                    snap.expires.iso()
                ));
                return s.tr;
            }
            s.log("Request expired.");
            s.release();
            s.goto(S::Closed, None);
            return s.tr;
        }
        _ => {}
    }

    match (state, &event) {
        (S::Closed | S::Expired, _) => s.ignore(&event),
        (st, _) if st.is_failed() => s.ignore(&event),

        (S::New, Event::FindDevice) => {
            s.search();
            s.tr
        }
        (S::New | S::FindingDevice | S::Queued | S::Unknown, Event::Unsatisfiable { reason }) => {
            let msg = format!("no device can ever serve this request: {reason}");
            s.fail(S::FailedDeviceNotFound, msg);
            s.tr
        }

        // Waiting.
        (S::FindingDevice | S::Queued, Event::FindDevice) => {
            s.tr.actions.push(Action::Search);
            s.tr
        }
        (
            S::FindingDevice | S::Queued,
            Event::Assigned {
                device,
                needs_image,
            },
        ) => {
            if let Some(want) = s.specific()
                && want != device
            {
                let msg = format!("warning: refused device {device}: request is for {want}");
                s.log(msg);
                s.tr.accepted = false;
                return s.tr;
            }
            s.log(format!("Assigning device {device}."));
            s.tr.assigned = Some(Assignment {
                device: device.clone(),
                needs_image: *needs_image,
            });
            s.goto(S::ContactingLifeguard, Some(t.contacting_lifeguard));
            s.contact();
            s.tr
        }
        (S::FindingDevice, Event::NoDevice { explanation }) => {
            s.tr.counters.finding_device = s.tr.counters.finding_device.saturating_add(1);
            let n = s.tr.counters.finding_device;
            match s.specific().cloned() {
                Some(dev) => {
                    let limit = t.finding_tries_specific;
                    if explanation.failed > 0 {
                        s.fail(
                            S::FailedBadDevice,
                            format!("device {dev} is failed: {explanation}"),
                        );
                    } else if n >= limit {
                        s.fail(
                            S::FailedDeviceBusy,
                            format!("device {dev} is busy after {n} tries: {explanation}"),
                        );
                    } else {
                        s.log(format!("no device yet (try {n} of {limit}): {explanation}"));
                        s.goto(S::FindingDevice, Some(t.finding_device));
                    }
                }
                None => {
                    let limit = t.finding_tries_any;
                    if n >= limit {
                        s.fail(
                            S::FailedDeviceNotFound,
                            format!("no device found after {n} tries: {explanation}"),
                        );
                    } else {
                        s.log(format!("no device yet (try {n} of {limit}): {explanation}"));
                        s.goto(S::FindingDevice, Some(t.finding_device));
                    }
                }
            }
            s.tr
        }
        (S::Queued, Event::NoDevice { explanation }) => {
            s.log(format!("queued: {explanation}"));
            s.tr
        }
        (S::FindingDevice, Event::Timeout { .. }) => {
            s.goto(S::FindingDevice, Some(t.finding_device));
            s.tr.actions.push(Action::Search);
            s.tr
        }
        (S::Queued, Event::Timeout { .. }) => {
            let w = snap.spec.wait.unwrap_or(0);
            s.fail(
                S::FailedDeviceNotFound,
                format!("no matching device became free within the wait of {w} s"),
            );
            s.tr
        }

        // Legacy contact_lifeguard: its timeout moves on (or back to searching when the
        // stored row has no assignment).
        (S::ContactLifeguard, Event::Timeout { .. }) => {
            if snap.assigned.is_some() {
                s.goto(S::ContactingLifeguard, Some(t.contacting_lifeguard));
                s.contact();
            } else {
                s.search();
            }
            s.tr
        }

        // Contacting Lifeguard.
        (S::ContactingLifeguard, Event::LifeguardContacted { device }) if s.is_assigned(device) => {
            s.goto(S::Pending, Some(t.pending));
            s.tr
        }
        (S::ContactingLifeguard, Event::Timeout { .. }) => {
            s.tr.counters.contacting_lifeguard =
                s.tr.counters.contacting_lifeguard.saturating_add(1);
            let n = s.tr.counters.contacting_lifeguard;
            if n >= t.contacting_tries {
                let dev = snap
                    .assigned
                    .as_ref()
                    .map_or_else(String::new, |a| a.device.to_string());
                s.fail(
                    S::FailedDeviceNotFound,
                    format!("Lifeguard did not accept device {dev} after {n} attempts"),
                );
            } else {
                s.goto(S::ContactingLifeguard, Some(t.contacting_lifeguard));
                s.contact();
            }
            s.tr
        }
        (
            S::ContactingLifeguard | S::Pending,
            Event::LifeguardFinished {
                device,
                imaging_result,
            },
        ) if s.is_assigned(device) => {
            let (device, result) = (device.clone(), imaging_result.clone());
            s.imaging_result(&device, &result)
        }
        (
            S::ContactingLifeguard | S::Pending | S::ContactLifeguard,
            Event::DeviceLost {
                device,
                lifeguard_state,
            },
        ) if s.is_assigned(device) => {
            s.log(format!(
                "device {device} is not ready (lifeguard state {lifeguard_state}); searching again"
            ));
            s.search();
            s.tr
        }

        // Pending without a result.
        (S::Pending, Event::Timeout { .. }) => {
            s.tr.counters.pending = s.tr.counters.pending.saturating_add(1);
            let n = s.tr.counters.pending;
            if n < t.pending_tries {
                s.goto(S::Pending, Some(t.pending));
            } else if let Some(dev) = s.specific().cloned() {
                s.fail(
                    S::FailedBadDevice,
                    format!("device {dev} did not finish preparing after {n} polls"),
                );
            } else {
                s.log(format!(
                    "no imaging result after {n} polls; trying another device"
                ));
                s.search();
            }
            s.tr
        }

        // Ready: failures are reported, the device stays with the client (§9.13).
        (
            S::Ready,
            Event::LifeguardFinished {
                device,
                imaging_result,
            },
        ) if s.is_assigned(device) && *imaging_result != ImagingResult::Complete => {
            let msg = format!(
                "error: device {device} failed while the request was ready (imaging result {imaging_result}); return the request and ask again"
            );
            s.log(msg);
            s.tr
        }
        (
            S::Ready,
            Event::DeviceLost {
                device,
                lifeguard_state,
            },
        ) if s.is_assigned(device) => {
            let msg = format!(
                "error: device {device} failed while the request was ready (lifeguard state {lifeguard_state}); return the request and ask again"
            );
            s.log(msg);
            s.tr
        }

        // Unknown stored state: a timeout or find_device sends it back to searching.
        (S::Unknown, Event::Timeout { .. } | Event::FindDevice) => {
            s.log("request was in an unknown state; searching again");
            s.search();
            s.tr
        }

        _ => s.ignore(&event),
    }
}

#[cfg(test)]
mod tests;
