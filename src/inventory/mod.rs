//! Inventory operations shared by the API, the configuration sync, registrations and
//! inventory sync: create or update a device (logging exactly what changed), retire it,
//! set comments or environment.
//!
//! Each function runs inside a caller's write transaction, so a change and its log entry
//! commit together or not at all.

pub mod registration;
pub mod sync;

use crate::storage::Tx;
use serde::Deserialize;

use crate::domain::clock::Millis;
use crate::domain::device_state::DeviceState;
use crate::domain::model::{Device, DeviceFacts, DeviceWiring, UnparsedWiring, device_subject};
use crate::domain::names::DeviceName;
use crate::domain::names::NameError;
use crate::domain::wiring::{RelayAddr, SutAddr};
use crate::storage::logs::{NewLog, append};
use crate::storage::{StoreError, inventory as inv, next_counter};

/// The inventory fields of a device that an admin, the config or an inventory file sets.
/// `None` leaves a field unchanged on update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields are the inventory keys (docs/api.md); only the non-obvious ones are documented.
#[allow(missing_docs)]
pub struct DeviceFields {
    pub hardware_type: Option<String>,
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub environment: Option<String>,
    /// Relay address, parsed where the fields came in.
    pub relay: Option<RelayAddr>,
    /// SUTAgent address `host:port`, parsed where the fields came in.
    pub sut: Option<SutAddr>,
    pub fastboot_serial: Option<String>,
    /// adb serial (USB serial or `host:port`); unset = the fastboot serial.
    pub adb_serial: Option<String>,
    pub comments: Option<String>,
    /// A registration may claim the device although an admin created it
    /// ([`Device::allow_registration`]).
    pub allow_registration: Option<bool>,
    /// A registration from a new address moves the device at once
    /// ([`Device::follow_address`]).
    pub follow_address: Option<bool>,
}

/// Longest comment accepted.
pub const MAX_COMMENT_LEN: usize = 2000;

/// Why inventory fields from an untrusted source were refused: which field, and why. The
/// text is the API's 400 message and names the field itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A field that must be a name is not a valid one.
    #[error("{source}")]
    BadName {
        /// The field (`environment`, `hardware_type`, `pool`, ...).
        field: &'static str,
        /// What is wrong with the name (its text names the field).
        source: NameError,
    },
    /// `relay` is not a relay address.
    #[error("{0}")]
    BadRelay(crate::domain::wiring::AddrError),
    /// `sut` is not `host:port`.
    #[error("{0}")]
    BadSut(crate::domain::wiring::SutAddrError),
    /// `comments` is longer than [`MAX_COMMENT_LEN`] bytes.
    #[error("comments are longer than {MAX_COMMENT_LEN} bytes")]
    CommentsTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// Check inventory fields from an untrusted source (API body, inventory file): names are
/// valid names, comments are not huge (the addresses were parsed into their types already).
///
/// # Errors
/// The first field that is wrong, and why.
pub fn check_fields(f: &DeviceFields) -> Result<(), FieldError> {
    use crate::domain::names::{EnvironmentName, HardwareType, check_name};
    let bad = |field: &'static str| move |source| FieldError::BadName { field, source };
    if let Some(e) = &f.environment {
        e.parse::<EnvironmentName>().map_err(bad("environment"))?;
    }
    if let Some(h) = &f.hardware_type {
        h.parse::<HardwareType>().map_err(bad("hardware_type"))?;
    }
    for (label, v) in [
        ("processor", &f.processor),
        ("pool", &f.pool),
        ("os_version", &f.os_version),
        ("fastboot_serial", &f.fastboot_serial),
        ("adb_serial", &f.adb_serial),
    ] {
        if let Some(v) = v {
            check_name(label, v).map_err(bad(label))?;
        }
    }
    if let Some(c) = f.comments.as_ref().filter(|c| c.len() > MAX_COMMENT_LEN) {
        return Err(FieldError::CommentsTooLong { len: c.len() });
    }
    Ok(())
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsert {
    /// A new device was created (state `new`).
    Created,
    /// These fields changed (`field: old -> new`).
    Updated(Vec<String>),
    /// Nothing changed.
    Unchanged,
}

/// Create a device or update its inventory fields, logging the change. A retired device
/// named again is brought back (un-retired) and goes through `new` again.
///
/// # Errors
/// Storage failure.
pub fn upsert_device(
    tx: &Tx<'_>,
    now: Millis,
    server: &str,
    name: &DeviceName,
    fields: &DeviceFields,
    origin: &str,
    actor: Option<&str>,
) -> Result<Upsert, StoreError> {
    upsert_device_returning(tx, now, server, name, fields, origin, actor).map(|(u, _)| u)
}

/// [`upsert_device`], also returning the device as stored afterwards (a registration
/// changes it further; reading it back could only fail in ways that cannot happen).
///
/// # Errors
/// Storage failure.
pub fn upsert_device_returning(
    tx: &Tx<'_>,
    now: Millis,
    server: &str,
    name: &DeviceName,
    fields: &DeviceFields,
    origin: &str,
    actor: Option<&str>,
) -> Result<(Upsert, Device), StoreError> {
    let existing = inv::device_in_tx(tx, name)?;
    let (device, outcome) = match existing {
        None => {
            let id = next_counter(tx, "next_device_id")?;
            let d = Device {
                id,
                name: name.clone(),
                server: server.to_owned(),
                facts: DeviceFacts {
                    hardware_type: fields.hardware_type.clone(),
                    processor: fields.processor.clone(),
                    pool: fields.pool.clone(),
                    os_version: fields.os_version.clone(),
                    environment: fields.environment.clone(),
                },
                wiring: DeviceWiring {
                    relay: fields.relay.clone(),
                    sut_addr: fields.sut.clone(),
                    fastboot_serial: fields.fastboot_serial.clone(),
                    adb_serial: fields.adb_serial.clone(),
                    unparsed: UnparsedWiring::default(),
                },
                comments: fields.comments.clone(),
                retired: false,
                origin: origin.to_owned(),
                created: now,
                updated: now,
                state: DeviceState::New,
                // `new` is due at once: the Lifeguard driver starts its self-test.
                lifeguard: crate::domain::model::LifeguardData {
                    entered_at: now,
                    deadline: Some(now),
                    ..Default::default()
                },
                request: None,
                registration: None,
                allow_registration: fields.allow_registration.unwrap_or(false),
                follow_address: fields.follow_address.unwrap_or(false),
                address_change: None,
            };
            (d, Upsert::Created)
        }
        Some(mut d) => {
            let mut changes = Vec::new();
            set_field(
                &mut changes,
                "hardware_type",
                &mut d.facts.hardware_type,
                &fields.hardware_type,
            );
            set_field(
                &mut changes,
                "processor",
                &mut d.facts.processor,
                &fields.processor,
            );
            set_field(&mut changes, "pool", &mut d.facts.pool, &fields.pool);
            set_field(
                &mut changes,
                "os_version",
                &mut d.facts.os_version,
                &fields.os_version,
            );
            set_field(
                &mut changes,
                "environment",
                &mut d.facts.environment,
                &fields.environment,
            );
            set_wiring(
                &mut changes,
                "relay",
                (&mut d.wiring.relay, &mut d.wiring.unparsed.relay),
                &fields.relay,
            );
            set_wiring(
                &mut changes,
                "sut",
                (&mut d.wiring.sut_addr, &mut d.wiring.unparsed.sut_addr),
                &fields.sut,
            );
            set_field(
                &mut changes,
                "fastboot_serial",
                &mut d.wiring.fastboot_serial,
                &fields.fastboot_serial,
            );
            set_field(
                &mut changes,
                "adb_serial",
                &mut d.wiring.adb_serial,
                &fields.adb_serial,
            );
            set_field(&mut changes, "comments", &mut d.comments, &fields.comments);
            set_flag(
                &mut changes,
                "allow_registration",
                &mut d.allow_registration,
                fields.allow_registration,
            );
            set_flag(
                &mut changes,
                "follow_address",
                &mut d.follow_address,
                fields.follow_address,
            );
            // A tech (API, config, inventory) who sets the address has decided where the
            // device is: a held change is settled by that. A registration's own address
            // (its device re-registering where it was) settles nothing.
            if fields.sut.is_some()
                && origin != "registration"
                && let Some(c) = d.address_change.take()
            {
                changes.push(format!(
                    "held address change to {} dismissed (sut set)",
                    c.sut.as_str()
                ));
            }
            if d.retired {
                d.retired = false;
                d.state = DeviceState::New;
                changes.push("retired: true -> false".to_owned());
            }
            if changes.is_empty() {
                return Ok((Upsert::Unchanged, d));
            }
            d.updated = now;
            (d, Upsert::Updated(changes))
        }
    };
    inv::put_device(tx, &device)?;
    let message = match &outcome {
        Upsert::Created => format!("device created ({origin})"),
        Upsert::Updated(c) => format!("inventory updated ({origin}): {}", c.join(", ")),
        Upsert::Unchanged => String::new(),
    };
    append(
        tx,
        now,
        NewLog::new(device_subject(name), "inventory", message).by(actor.map(str::to_owned)),
    )?;
    Ok((outcome, device))
}

/// Set `slot` to `value` when one is given and differs, noting `label: old -> new`.
fn set_field<T: Clone + PartialEq + std::fmt::Display>(
    changes: &mut Vec<String>,
    label: &str,
    slot: &mut Option<T>,
    value: &Option<T>,
) {
    if let Some(v) = value
        && slot.as_ref() != Some(v)
    {
        changes.push(format!("{label}: {} -> {v}", shown(slot.as_ref(), None)));
        slot.clone_from(value);
    }
}

/// Set a flag when a value is given and differs, noting `label: old -> new`.
fn set_flag(changes: &mut Vec<String>, label: &str, slot: &mut bool, value: Option<bool>) {
    if let Some(v) = value
        && *slot != v
    {
        changes.push(format!("{label}: {slot} -> {v}"));
        *slot = v;
    }
}

/// [`set_field`] for a wiring field, whose old value may be stored text that did not parse
/// (shown as it was, and replaced by the new value).
fn set_wiring<T: Clone + PartialEq + std::fmt::Display>(
    changes: &mut Vec<String>,
    label: &str,
    (slot, unparsed): (&mut Option<T>, &mut Option<String>),
    value: &Option<T>,
) {
    if let Some(v) = value
        && (slot.as_ref() != Some(v) || unparsed.is_some())
    {
        changes.push(format!(
            "{label}: {} -> {v}",
            shown(slot.as_ref(), unparsed.as_deref())
        ));
        slot.clone_from(value);
        *unparsed = None;
    }
}

/// A field's old value in a change line: the value, the unparsed text, or `(none)`.
fn shown<T: std::fmt::Display>(value: Option<&T>, unparsed: Option<&str>) -> String {
    match (value, unparsed) {
        (Some(v), _) => v.to_string(),
        (None, Some(text)) => text.to_owned(),
        (None, None) => "(none)".to_owned(),
    }
}

/// Retire a device: it stays in the store with its history but is never used again.
/// Returns `None` when there is no such device, `Some(false)` when it was already retired.
///
/// # Errors
/// Storage failure.
pub fn retire_device(
    tx: &Tx<'_>,
    now: Millis,
    name: &str,
    reason: &str,
    actor: Option<&str>,
) -> Result<Option<bool>, StoreError> {
    let Some(mut d) = inv::device_in_tx(tx, name)? else {
        return Ok(None);
    };
    if d.retired {
        return Ok(Some(false));
    }
    d.retired = true;
    d.updated = now;
    inv::put_device(tx, &d)?;
    append(
        tx,
        now,
        NewLog::new(
            device_subject(name),
            "inventory",
            format!("device retired: {reason}"),
        )
        .by(actor.map(str::to_owned)),
    )?;
    Ok(Some(true))
}
