//! Lifeguard: the device state machine, as pure functions.
//!
//! Lifeguard decides what happens to one device: power-cycling it (soft SUTAgent reboot or
//! relay), flashing an image with fastboot, verifying it (SUTAgent or ping), self-testing it,
//! idle health checks, maintenance and power-off, and when to give up (`failed_*`). It is a
//! pure transition function in the style of MozPool 4.x's state machine:
//!
//! * [`step`]`(&Snapshot, Event, now, &Timings) -> Result<Transition, Refused>`;
//! * [`force`] — the conditional state change (`from` → `to`);
//! * [`resume`] — what to do with a persisted snapshot after a controller restart.
//!
//! This module owns no I/O and reads no clock. The driver (elsewhere) persists
//! [`Transition::next`], executes [`Transition::actions`] one at a time per device, and feeds
//! each result back as an [`Event`] tagged with the generation of the transition that issued
//! it; it also delivers `Timeout { generation }` once [`Snapshot::deadline`] passes. Results
//! and timeouts of an older generation are ignored, so late answers for a state already left
//! can never move the device.
//!
//! See `docs/lifeguard.md` for the state diagram and the mapping from MozPool's PXE states.

pub mod driver;
mod machine;
mod model;
pub mod store;
mod timings;

pub use crate::domain::device_state::{DeviceState, StateClass, UnknownState};
pub use driver::{
    DeliverError, Hardware, Lifeguard, ProbeError, RelayError, Report, Reports, SutAddrError,
    SutError, ToResume,
};
pub use machine::{force, resume, step};
pub use model::{
    Action, Counters, Event, ForceError, ImagingResult, NextImage, Purpose, Refused, Snapshot,
    Transition, counter,
};
pub use timings::Timings;

#[cfg(test)]
mod tests;
