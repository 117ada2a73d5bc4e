//! Lifeguard transitions inside a store transaction: load a device, run the pure machine,
//! write the new snapshot and its log lines back, return the actions to execute after the
//! commit.
//!
//! Running inside the caller's write transaction is what lets the request layer assign a
//! device and make it accept `please_image` atomically (MozPool 4.x raced here, §9.8).

use std::sync::Arc;

use crate::storage::Tx;

use super::{
    Action, Counters, DeviceState, ForceError, NextImage, Purpose, Refused, Snapshot, Transition,
};
use crate::domain::clock::Millis;
use crate::domain::history;
use crate::domain::model::{BootMode, Device, device_subject};
use crate::storage::logs::{NewLog, append};
use crate::storage::{StoreError, inventory as inv};

/// The machine's view of a stored device.
#[must_use]
pub fn snapshot_of(d: &Device, boot_mode: BootMode) -> Snapshot {
    let l = &d.lifeguard;
    Snapshot {
        state: d.state,
        generation: l.generation,
        counters: Counters(l.counters.clone()),
        entered_at: l.entered_at,
        deadline: l.deadline,
        has_power_control: d.wiring.relay.is_some(),
        boot_mode,
        current_image: l.current_image.as_deref().and_then(|s| s.parse().ok()),
        current_boot_config: l.current_boot_config.clone().unwrap_or_default(),
        current_has_agent: l.current_has_agent,
        next_image: l
            .next_image
            .as_deref()
            .and_then(|s| s.parse().ok())
            .map(|image| NextImage {
                image,
                boot_config: l.next_boot_config.clone().unwrap_or_default(),
                has_agent: l.next_has_agent,
            }),
        request: d.request,
        purpose: if l.self_test {
            Purpose::SelfTest
        } else {
            Purpose::Operation
        },
    }
}

/// Write a snapshot back into the device record.
pub fn write_back(d: &mut Device, s: &Snapshot) {
    d.state = s.state;
    d.request = s.request;
    let l = &mut d.lifeguard;
    l.generation = s.generation;
    l.counters = s.counters.0.clone();
    l.entered_at = s.entered_at;
    l.deadline = s.deadline;
    l.current_image = s.current_image.as_ref().map(ToString::to_string);
    l.current_boot_config = Some(s.current_boot_config.clone()).filter(|c| !c.is_empty());
    l.current_has_agent = s.current_has_agent;
    l.next_image = s.next_image.as_ref().map(|n| n.image.to_string());
    l.next_boot_config = s.next_image.as_ref().map(|n| n.boot_config.clone());
    l.next_has_agent = s.next_image.as_ref().is_some_and(|n| n.has_agent);
    l.self_test = s.purpose == Purpose::SelfTest;
}

/// A committed-to-be transition: what the driver must do after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Applied {
    pub device: String,
    /// State after the transition.
    pub state: DeviceState,
    /// Generation after the transition; hardware results must carry it.
    pub generation: u64,
    /// Actions to execute.
    pub actions: Vec<Action>,
    /// Held by a request after the transition.
    pub request: Option<u64>,
    /// The device is free for the pool after the transition (and was not before).
    pub became_available: bool,
    /// The device record as this transition left it (its wiring is what the actions use).
    pub record: Arc<Device>,
}

/// Why a transition was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// No such device.
    #[error("no device named {0}")]
    NoDevice(String),
    /// The device is retired.
    #[error("device {0} is retired")]
    Retired(String),
    /// The state cannot take this event (HTTP 409).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A conditional state change failed.
    #[error(transparent)]
    Force(#[from] ForceError),
}

/// Load `name`, run `f` on its snapshot, and persist the result with its log lines.
/// Nothing is written when `f` refuses.
///
/// # Errors
/// Outer: storage failure. Inner: the refusal.
pub fn apply<F>(
    tx: &Tx<'_>,
    now: Millis,
    name: &str,
    actor: Option<&str>,
    f: F,
) -> Result<Result<Applied, ApplyError>, StoreError>
where
    F: FnOnce(&Snapshot) -> Result<Transition, ApplyError>,
{
    let Some(mut device) = inv::device_in_tx(tx, name)? else {
        return Ok(Err(ApplyError::NoDevice(name.to_owned())));
    };
    if device.retired {
        return Ok(Err(ApplyError::Retired(name.to_owned())));
    }
    let old = inv::IndexKeys::of(&device);
    let boot_mode = match &device.facts.hardware_type {
        Some(t) => inv::hardware_type_in_tx(tx, t)?.map(|h| h.boot_mode),
        None => None,
    };
    let before = snapshot_of(&device, boot_mode.unwrap_or_default());
    let tr = match f(&before) {
        Ok(tr) => tr,
        Err(e) => return Ok(Err(e)),
    };
    let was_available = device.available();
    if !tr.is_noop(&before) {
        write_back(&mut device, &tr.next);
        device.updated = now;
        inv::replace_device(tx, Some(old), &device)?;
    }
    // Asked of the device, not the machine's snapshot: a device whose address change waits
    // for a tech is `ready` but not available.
    let became_available = device.available() && !was_available;
    if before.state != tr.next.state {
        tracing::info!(device = name, from = %before.state, to = %tr.next.state, "device state");
    }
    // A request taking or letting go of the device gets a line of its own, after the
    // machine's: the device's timeline tells `in_use` from `ready` by it.
    let held = (before.request != tr.next.request)
        .then(|| history::held_line(tr.next.request, before.request));
    for line in tr.log.iter().cloned().chain(held) {
        append(
            tx,
            now,
            NewLog::new(device_subject(name), "statemachine", line).by(actor.map(str::to_owned)),
        )?;
    }
    // The flaky table counts a transition that entered a failed state once, however many
    // states it passed through (an automatic self-test after a failure is the same failure).
    let failed = tr.log.iter().any(|line| {
        matches!(history::LogMark::parse(line),
            Some(history::LogMark::State { from, to }) if history::is_failure(from, to))
    });
    if failed {
        crate::storage::history::device_failed(tx, name, now)?;
    }
    Ok(Ok(Applied {
        device: name.to_owned(),
        state: tr.next.state,
        generation: tr.next.generation,
        actions: tr.actions,
        request: tr.next.request,
        became_available,
        record: Arc::new(device),
    }))
}
