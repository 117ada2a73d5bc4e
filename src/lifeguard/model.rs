//! The data the Lifeguard machine reads and writes: [`Snapshot`] (persisted by storage),
//! [`Event`] (fed in by the HTTP layer, the pool and the driver), [`Action`] (executed by the
//! driver), [`Transition`] (the result of one step) and the errors.
//!
//! Everything persisted here is postcard-safe: no `skip_serializing_if`, no internally tagged
//! enums, no `untagged`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DeviceState;
use crate::domain::clock::Millis;
use crate::domain::model::BootMode;
use crate::domain::names::ImageName;

/// Counter names used by the machine (persisted: never rename).
pub mod counter {
    /// Relay power-cycle failures/timeouts in `pc_power_cycling`.
    pub const POWER_CYCLING: &str = "power_cycling";
    /// Soft-reboot failures in `pc_sut_rebooting` (devices without relay wiring).
    pub const SUT_REBOOTING: &str = "sut_rebooting";
    /// Ping timeouts in the current `pc_pinging` round.
    pub const PC_PINGING: &str = "pc_pinging";
    /// Power-cycle rounds started by `pc_pinging` (never reset by `pc_power_cycling`).
    pub const PC_ROUNDS: &str = "pc_rounds";
    /// Flash failures/timeouts.
    pub const FLASHING: &str = "flashing";
    /// SUT verification timeouts.
    pub const SUT_VERIFYING: &str = "sut_verifying";
    /// Failures/timeouts of `sut_verify_power_cycle`.
    pub const SUT_VERIFY_POWER_CYCLE: &str = "sut_verify_power_cycle";
    /// SD-card check failures/timeouts.
    pub const SUT_SDCARD_VERIFYING: &str = "sut_sdcard_verifying";
    /// Power-off failures/timeouts.
    pub const POWERING_OFF: &str = "powering_off";
    /// 1 while an idle health check is in flight in `ready`.
    pub const HEALTH_CHECK_IN_FLIGHT: &str = "health_check_in_flight";
    /// 1 while the device is `ready`, unheld, and was rebooted and verified after it was last
    /// held (self-test or operation passed with no request attached); cleared when it is held,
    /// released, forced or starts any operation. Lets the pool hand it over at once.
    pub const VERIFIED_CLEAN: &str = "verified_clean";
    /// Sticky: automatic self-tests started after failures.
    pub const SELF_TEST_RETRIES: &str = "self_test_retries";
    /// Sticky: failed idle health checks.
    pub const HEALTH_CHECK_FAILURES: &str = "health_check_failures";

    /// Counters that survive `start_self_test`, so automatic failure → self-test → ready →
    /// failure loops end. Reset only by a real success (`operation_complete`, a passed
    /// health check), an accepted please event or a conditional state change.
    pub const STICKY: &[&str] = &[SELF_TEST_RETRIES, HEALTH_CHECK_FAILURES];
}

/// Named retry counters (MozPool's `state_counters`); absent = 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counters(pub BTreeMap<String, u32>);

impl Counters {
    /// A counter's value (0 when absent).
    #[must_use]
    pub fn get(&self, name: &str) -> u32 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Add one (saturating) and return the new value.
    pub fn increment(&mut self, name: &str) -> u32 {
        let v = self.0.entry(name.to_owned()).or_insert(0);
        *v = v.saturating_add(1);
        *v
    }

    /// Set a counter.
    pub fn set(&mut self, name: &str, value: u32) {
        if value == 0 {
            self.0.remove(name);
        } else {
            self.0.insert(name.to_owned(), value);
        }
    }

    /// Remove one counter.
    pub fn clear(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// Remove every counter.
    pub fn clear_all(&mut self) {
        self.0.clear();
    }

    /// Remove every counter except the [`counter::STICKY`] ones.
    pub fn clear_non_sticky(&mut self) {
        self.0.retain(|k, _| counter::STICKY.contains(&k.as_str()));
    }
}

/// The image a `please_image` asked for, kept until `operation_complete` promotes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct NextImage {
    pub image: ImageName,
    /// Boot configuration handed to the flasher (opaque JSON text, as MozPool's).
    pub boot_config: String,
    /// The image runs an agent (SUTAgent or adbd), so it is verified (and soft-rebooted)
    /// through it.
    pub has_agent: bool,
}

/// Why the device is being power-cycled and verified: decides what success means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// A requested operation (power cycle, reboot, image): success → `operation_complete`,
    /// which reports `complete` to an attached request.
    #[default]
    Operation,
    /// A self-test: success → `ready` directly, reporting nothing.
    SelfTest,
}

/// Everything the machine knows about one device; storage persists it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Snapshot {
    /// Current state (never a transient one after a step).
    pub state: DeviceState,
    /// Incremented on every transition, including re-entries. Actions are tagged with it and
    /// results carrying another generation are ignored as late.
    pub generation: u64,
    pub counters: Counters,
    /// When the current state was (re-)entered.
    pub entered_at: Millis,
    /// When a `Timeout` is due; `None` = never. Always `Some` while hardware is in flight.
    pub deadline: Option<Millis>,
    /// The device has relay wiring (can be power-cycled and powered off).
    pub has_power_control: bool,
    /// How the device gets into fastboot (its hardware type's; not persisted with the state).
    pub boot_mode: BootMode,
    /// Image on the device (`None` while being flashed or unknown).
    pub current_image: Option<ImageName>,
    /// Boot configuration the current image was flashed with (`""` when none).
    pub current_boot_config: String,
    /// The current image runs an agent (SUTAgent or adbd): verify and soft-reboot through it.
    pub current_has_agent: bool,
    /// Image being installed by a `please_image`, promoted at `operation_complete`.
    pub next_image: Option<NextImage>,
    /// Pool request holding the device, told about imaging results.
    pub request: Option<u64>,
    /// What the current power-cycle/verify run is for.
    pub purpose: Purpose,
}

impl Snapshot {
    /// A device just added by inventory: `new`, due at once (→ self-test).
    #[must_use]
    pub fn new_device(now: Millis, has_power_control: bool, t: &super::Timings) -> Self {
        Snapshot {
            state: DeviceState::New,
            generation: 0,
            counters: Counters::default(),
            entered_at: now,
            deadline: t.timeout(DeviceState::New).map(|d| now.plus(d)),
            has_power_control,
            boot_mode: BootMode::default(),
            current_image: None,
            current_boot_config: String::new(),
            current_has_agent: false,
            next_image: None,
            request: None,
            purpose: Purpose::Operation,
        }
    }

    /// Free for the pool: [`Device::available`](crate::domain::model::Device::available)'s
    /// rule on a snapshot (never of a retired device: `apply` refuses those).
    #[must_use]
    pub fn is_available(&self) -> bool {
        crate::domain::model::available(self.state, self.request, false)
    }
}

/// Result reported to the pool request holding the device (MozPool's imaging result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagingResult {
    /// `complete`: the operation finished and the device is `ready`.
    #[serde(rename = "complete")]
    Complete,
    /// `failed-bad-device`: the device failed; try another one.
    #[serde(rename = "failed-bad-device")]
    FailedBadDevice,
    /// `failed-bad-image`: the image cannot be flashed; another device will not help.
    #[serde(rename = "failed-bad-image")]
    FailedBadImage,
}

impl ImagingResult {
    /// MozPool's wire string.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ImagingResult::Complete => "complete",
            ImagingResult::FailedBadDevice => "failed-bad-device",
            ImagingResult::FailedBadImage => "failed-bad-image",
        }
    }
}

/// Everything that can happen to a device.
///
/// `Please*` and `Release` come from humans (HTTP) or the pool; the rest are results of actions
/// (tagged with the generation of the transition that issued them) and timeouts (tagged with
/// the generation that set the deadline), delivered by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Relay power cycle, then verify. Full family.
    PleasePowerCycle,
    /// Soft SUTAgent reboot where available, relay power cycle otherwise or on failure. Full family.
    PleaseReboot,
    /// Switch the power off and stay `off`.
    PleasePowerOff,
    /// From `off`: power on through a self-test.
    PleasePowerOn,
    /// Flash `image` and verify it. Full family; in `ready` only when unheld or held by `request`.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    PleaseImage {
        image: ImageName,
        /// Boot configuration for the flasher.
        boot_config: String,
        /// The image runs an agent (from the image registry).
        has_agent: bool,
        /// The pool request asking; attached to the device when it was unheld.
        request: Option<u64>,
    },
    /// Self-test: power cycle and verify. Basic family.
    PleaseSelfTest,
    /// Leave the pool for the humans. Basic family.
    PleaseStartMaintenance,
    /// Back from maintenance through a self-test.
    PleaseEndMaintenance,
    /// The pool hands this `ready` device to `request` as it is, without another power cycle.
    /// Refused unless it was rebooted and verified since it was last held
    /// ([`counter::VERIFIED_CLEAN`]) and no health check is in flight. Pool only (not HTTP).
    Hold {
        /// The request taking the device.
        request: u64,
    },
    /// The pool closed `request`: detach it (never refused; no-op if it does not hold the device).
    Release {
        /// The request being closed.
        request: u64,
    },
    /// The deadline set by transition `generation` passed.
    Timeout {
        /// Generation that set the deadline.
        generation: u64,
    },
    /// `PowerCycle` succeeded.
    PowerCycleOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `PowerCycle` failed.
    PowerCycleFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `PowerOff` succeeded.
    PowerOffOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `PowerOff` failed.
    PowerOffFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `SutReboot` was accepted by the agent.
    SutRebootOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `SutReboot` failed.
    SutRebootFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `Ping` reached the device.
    PingOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `Ping` did not reach the device (the state waits for its timeout to retry).
    PingFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `SutVerify` passed.
    SutVerifyOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `SutVerify` failed (the state waits for its timeout to retry).
    SutVerifyFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `SutSdcardCheck` passed.
    SutSdcardOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `SutSdcardCheck` failed.
    SutSdcardFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// `Flash` finished (every partition written, `fastboot reboot` sent).
    FlashOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `Flash` failed.
    FlashFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// The image is at fault (e.g. `FAILED (remote: 'Partition not found')`): report
        /// `failed-bad-image`, do not retry.
        bad_image: bool,
        /// Human-readable cause (fastboot's output).
        reason: String,
    },
    /// `HealthCheck` passed.
    HealthCheckOk {
        /// Generation of the issuing transition.
        generation: u64,
    },
    /// `HealthCheck` failed: the device leaves the pool for a self-test.
    HealthCheckFailed {
        /// Generation of the issuing transition.
        generation: u64,
        /// Human-readable cause.
        reason: String,
    },
}

impl Event {
    /// Stable snake_case name (MozPool's event names where they exist), for logs and the HTTP
    /// event endpoint.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Event::PleasePowerCycle => "please_power_cycle",
            Event::PleaseReboot => "please_reboot",
            Event::PleasePowerOff => "please_power_off",
            Event::PleasePowerOn => "please_power_on",
            Event::PleaseImage { .. } => "please_image",
            Event::PleaseSelfTest => "please_self_test",
            Event::PleaseStartMaintenance => "please_start_maintenance",
            Event::PleaseEndMaintenance => "please_end_maintenance",
            Event::Hold { .. } => "hold",
            Event::Release { .. } => "release",
            Event::Timeout { .. } => "timeout",
            Event::PowerCycleOk { .. } => "power_cycle_ok",
            Event::PowerCycleFailed { .. } => "power_cycle_failed",
            Event::PowerOffOk { .. } => "power_off_ok",
            Event::PowerOffFailed { .. } => "power_off_failed",
            Event::SutRebootOk { .. } => "sut_reboot_ok",
            Event::SutRebootFailed { .. } => "sut_reboot_failed",
            Event::PingOk { .. } => "ping_ok",
            Event::PingFailed { .. } => "ping_failed",
            Event::SutVerifyOk { .. } => "sut_verify_ok",
            Event::SutVerifyFailed { .. } => "sut_verify_failed",
            Event::SutSdcardOk { .. } => "sut_sdcard_ok",
            Event::SutSdcardFailed { .. } => "sut_sdcard_failed",
            Event::FlashOk { .. } => "flash_ok",
            Event::FlashFailed { .. } => "flash_failed",
            Event::HealthCheckOk { .. } => "health_check_ok",
            Event::HealthCheckFailed { .. } => "health_check_failed",
        }
    }

    /// The generation a result or timeout carries; `None` for please/release events.
    #[must_use]
    pub const fn generation(&self) -> Option<u64> {
        match self {
            Event::PleasePowerCycle
            | Event::PleaseReboot
            | Event::PleasePowerOff
            | Event::PleasePowerOn
            | Event::PleaseImage { .. }
            | Event::PleaseSelfTest
            | Event::PleaseStartMaintenance
            | Event::PleaseEndMaintenance
            | Event::Hold { .. }
            | Event::Release { .. } => None,
            Event::Timeout { generation }
            | Event::PowerCycleOk { generation }
            | Event::PowerCycleFailed { generation, .. }
            | Event::PowerOffOk { generation }
            | Event::PowerOffFailed { generation, .. }
            | Event::SutRebootOk { generation }
            | Event::SutRebootFailed { generation, .. }
            | Event::PingOk { generation }
            | Event::PingFailed { generation, .. }
            | Event::SutVerifyOk { generation }
            | Event::SutVerifyFailed { generation, .. }
            | Event::SutSdcardOk { generation }
            | Event::SutSdcardFailed { generation, .. }
            | Event::FlashOk { generation }
            | Event::FlashFailed { generation, .. }
            | Event::HealthCheckOk { generation }
            | Event::HealthCheckFailed { generation, .. } => Some(*generation),
        }
    }

    /// A `please_*` event (may be refused).
    #[must_use]
    pub const fn is_please(&self) -> bool {
        matches!(
            self,
            Event::PleasePowerCycle
                | Event::PleaseReboot
                | Event::PleasePowerOff
                | Event::PleasePowerOn
                | Event::PleaseImage { .. }
                | Event::PleaseSelfTest
                | Event::PleaseStartMaintenance
                | Event::PleaseEndMaintenance
                | Event::Hold { .. }
        )
    }
}

/// Work for the driver. Hardware actions are executed one at a time per device; their results
/// come back as events tagged with [`Transition::next`]'s generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Relay power cycle → `PowerCycleOk`/`PowerCycleFailed`.
    PowerCycle,
    /// Relay power off → `PowerOffOk`/`PowerOffFailed`.
    PowerOff,
    /// Reboot through the image's agent (SUTAgent `rebt`, `adb reboot`) →
    /// `SutRebootOk`/`SutRebootFailed`. The names of this and the next actions are the original's
    /// state names, which were written when SUTAgent was the only agent.
    SutReboot,
    /// Reachability probe of the device's address → `PingOk`/`PingFailed`.
    Ping,
    /// Verification through the image's agent → `SutVerifyOk`/`SutVerifyFailed`.
    SutVerify,
    /// Storage check (write, read back, remove a file) through the image's agent →
    /// `SutSdcardOk`/`SutSdcardFailed`.
    SutSdcardCheck,
    /// Idle health check (verify through the agent if `agent`, else reachability) →
    /// `HealthCheckOk`/`HealthCheckFailed`.
    HealthCheck {
        /// Check through the image's agent rather than reachability.
        agent: bool,
    },
    /// Get the device into fastboot as its hardware type's boot mode says, run the image
    /// recipe's steps, `fastboot reboot` → `FlashOk`/`FlashFailed`.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Flash {
        image: ImageName,
        boot_config: String,
    },
    /// Tell the pool request holding the device how its operation ended (not hardware; no result).
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    NotifyRequest { request: u64, result: ImagingResult },
}

impl std::fmt::Display for Action {
    /// What the action is, as the device's log names it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::PowerCycle => f.write_str("power cycle"),
            Action::PowerOff => f.write_str("power off"),
            Action::SutReboot => f.write_str("SUTAgent reboot"),
            Action::Ping => f.write_str("reachability probe"),
            Action::SutVerify => f.write_str("SUTAgent verification"),
            Action::SutSdcardCheck => f.write_str("SD card check"),
            Action::HealthCheck { .. } => f.write_str("health check"),
            Action::Flash { image, .. } => write!(f, "flash of {image}"),
            Action::NotifyRequest { request, .. } => write!(f, "report to request {request}"),
        }
    }
}

impl Action {
    /// Touches the device (as opposed to notifying the pool).
    #[must_use]
    pub const fn is_hardware(&self) -> bool {
        !matches!(self, Action::NotifyRequest { .. })
    }
}

/// The result of one step: the snapshot to persist, the actions to execute (hardware ones
/// tagged with `next.generation`) and the human-readable log lines explaining why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Snapshot after the event (equal to the input when nothing changed).
    pub next: Snapshot,
    /// Actions to execute, in order.
    pub actions: Vec<Action>,
    /// One line per state change (with its reason) or per ignored event.
    pub log: Vec<String>,
}

impl Transition {
    /// Nothing happens to `snap`.
    #[must_use]
    pub fn unchanged(snap: &Snapshot) -> Transition {
        Transition {
            next: snap.clone(),
            actions: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Nothing changed and nothing is to be done (an ignored event).
    #[must_use]
    pub fn is_noop(&self, before: &Snapshot) -> bool {
        self.actions.is_empty() && self.next == *before
    }
}

/// A please event the current state cannot take (HTTP 409 with `reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} refused in state {state}: {reason}")]
pub struct Refused {
    /// State the device was in.
    pub state: DeviceState,
    /// Name of the refused event.
    pub event: &'static str,
    /// Why, for the human.
    pub reason: String,
}

/// A refused conditional state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForceError {
    /// The device is not in `from` (HTTP 409).
    #[error("device is in state {current}, not in the expected one")]
    Conflict {
        /// The actual state.
        current: DeviceState,
    },
    /// `from` or `to` is not a state name (HTTP 400).
    #[error(transparent)]
    UnknownState(#[from] crate::domain::device_state::UnknownState),
}
