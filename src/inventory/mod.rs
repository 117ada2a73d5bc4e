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
use crate::domain::model::{Device, DeviceFacts, DeviceWiring, device_subject};
use crate::domain::names::NameError;
use crate::storage::logs::{NewLog, append};
use crate::storage::{StoreError, inventory as inv, next_counter};

/// The inventory fields of a device that an admin, the config or an inventory file sets.
/// `None` leaves a field unchanged on update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFields {
    /// Hardware type.
    pub hardware_type: Option<String>,
    /// Processor architecture.
    pub processor: Option<String>,
    /// Pool.
    pub pool: Option<String>,
    /// OS version.
    pub os_version: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Relay address.
    pub relay: Option<String>,
    /// SUTAgent address `host:port`.
    pub sut: Option<String>,
    /// fastboot serial.
    pub fastboot_serial: Option<String>,
    /// Notes.
    pub comments: Option<String>,
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
    /// `sut` is not `host:port`.
    #[error("sut {value:?} must be host:port")]
    SutNotHostPort {
        /// The value given.
        value: String,
    },
    /// `comments` is longer than [`MAX_COMMENT_LEN`] bytes.
    #[error("comments are longer than {MAX_COMMENT_LEN} bytes")]
    CommentsTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// Check inventory fields from an untrusted source (API body, inventory file): names are
/// valid names, `sut` is `host:port`, comments are not huge.
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
        ("relay", &f.relay),
    ] {
        if let Some(v) = v {
            check_name(label, v).map_err(bad(label))?;
        }
    }
    if let Some(s) = &f.sut
        && !crate::domain::names::valid_host_port(s)
    {
        return Err(FieldError::SutNotHostPort { value: s.clone() });
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
    name: &str,
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
    name: &str,
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
                name: name.to_owned(),
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
                },
                comments: fields.comments.clone(),
                retired: false,
                origin: origin.to_owned(),
                created: now,
                updated: now,
                state: "new".to_owned(),
                // `new` is due at once: the Lifeguard driver starts its self-test.
                lifeguard: crate::domain::model::LifeguardData {
                    entered_at: now,
                    deadline: Some(now),
                    ..Default::default()
                },
                request: None,
                registration: None,
            };
            (d, Upsert::Created)
        }
        Some(mut d) => {
            let mut changes = Vec::new();
            let mut set = |label: &str, slot: &mut Option<String>, value: &Option<String>| {
                if value.is_some() && slot != value {
                    changes.push(format!(
                        "{label}: {} -> {}",
                        slot.as_deref().unwrap_or("(none)"),
                        value.as_deref().unwrap_or("(none)")
                    ));
                    slot.clone_from(value);
                }
            };
            set(
                "hardware_type",
                &mut d.facts.hardware_type,
                &fields.hardware_type,
            );
            set("processor", &mut d.facts.processor, &fields.processor);
            set("pool", &mut d.facts.pool, &fields.pool);
            set("os_version", &mut d.facts.os_version, &fields.os_version);
            set("environment", &mut d.facts.environment, &fields.environment);
            set("relay", &mut d.wiring.relay, &fields.relay);
            set("sut", &mut d.wiring.sut_addr, &fields.sut);
            set(
                "fastboot_serial",
                &mut d.wiring.fastboot_serial,
                &fields.fastboot_serial,
            );
            set("comments", &mut d.comments, &fields.comments);
            if d.retired {
                d.retired = false;
                d.state = "new".to_owned();
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
