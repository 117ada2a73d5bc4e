//! Applying a validated registration to the inventory, inside one store write.
//!
//! Decide first, then write (the store's contract): every refusal is decided before anything
//! is written, and a refusal writes only its `registration` log entry.
//!
//! Policy:
//! - A wildcard `IPADDR` (Negatus's `0.0.0.0:20701`) is the TCP peer's address.
//! - The device is found by its device name, or else by an earlier registration whose agent
//!   NAME is the same (a device created under another name that registered before).
//! - A generic NAME (`SUTAgent`, `0011223344556677`) is no identity: it is matched to the one
//!   non-retired device whose SUTAgent address is the peer's address. None or several: nothing
//!   is created or merged; the registration is refused and flagged for a tech (a `needs a
//!   tech` entry in the `registration` log and a WARN line).
//! - Unknown → created through [`upsert_device`][crate::inventory::upsert_device] (origin
//!   `registration`, state `new`, so Lifeguard self-tests it before it joins the pool) with
//!   SUT address `IPADDR:CMDPORT`, hardware type / pool from `HARDWARE` / `POOL` when they are
//!   valid names.
//! - Over TCP, `IPADDR` must be the sender's own address (the peer); a wildcard means the
//!   peer. The HTTP form is an admin's call and says where the device is.
//! - Unknown devices are created at most `new_devices_per_minute` ([`Gate::may_create`]).
//! - Known → SUT address unchanged: details refreshed. SUT address changed: followed only
//!   when the device says so ([`Device::follow_address`]); otherwise the device keeps its
//!   address and the change is held for a tech ([`Device::address_change`]), which takes it
//!   out of the pool until a tech accepts or dismisses it. Hardware type and pool are only
//!   filled in when the inventory has none (the inventory wins).
//! - Relay wiring is never taken from a registration. A device without wiring is flagged
//!   [`Device::needs_tech`] and the flag is logged.
//! - Refused: a retired device; a device owned by another controller; a device whose earlier
//!   registration came from another agent NAME; a device an admin created that no agent
//!   registered as yet, unless the admin allowed it ([`Device::allow_registration`]).
//! - Refusals are logged at a bounded rate ([`Gate::refusal`]); all are counted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::trust::{Gate, Refused, unlogged_note};

use crate::storage::Tx;

use super::parse::RegistrationMessage;
use crate::domain::clock::Millis;
use crate::domain::model::{AddressChange, Device, Registration, device_subject};
use crate::domain::names::HardwareType;
use crate::inventory::{DeviceFields, Upsert, upsert_device_returning};
use crate::storage::logs::{NewLog, append};
use crate::storage::{StoreError, inventory as inv};

/// Log subject of registration events (accepted and refused).
pub const SUBJECT: &str = "registration";

/// How the registration arrived (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The raw TCP protocol.
    Tcp,
    /// `POST /api/device/register/`.
    Http,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Tcp => "tcp",
            Channel::Http => "http",
        }
    }
}

/// A registration that was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The device as stored afterwards.
    pub device: Device,
    /// Whether it was created by this registration.
    pub created: bool,
    /// What changed (empty when nothing did).
    pub changes: Vec<String>,
}

/// Why a registration was refused. Its text is the reason sent back to the agent (`ERROR
/// <reason>`), shown in the API's JSON and written to the registration log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The device is retired: a tech must bring it back through the inventory.
    #[error("device {device} is retired; un-retire it in the inventory first")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Retired { device: String },
    /// The device is run by another controller, which alone may change it.
    #[error("device {device} belongs to controller {owner}, not {server}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    OtherController {
        device: String,
        /// The controller that runs it.
        owner: String,
        /// This controller.
        server: String,
    },
    /// The device was registered before by an agent with another NAME.
    #[error("name collision: device {device} was registered by agent {registered_by}, not {agent}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    OtherAgent {
        device: String,
        /// The agent NAME of its earlier registration.
        registered_by: String,
        /// The agent NAME of this registration.
        agent: String,
    },
    /// A generic agent NAME that matches no single device by address: a tech must tell
    /// which device it is.
    #[error(
        "agent NAME {agent} is not a device identity and {matched} devices have a SUTAgent address on {peer}: a tech must give the device this host in the inventory (sut), or give the agent a unique NAME"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Unmatched {
        agent: String,
        /// The address the registration came from.
        peer: String,
        /// How many devices have a SUTAgent address on that host (0 or more than 1).
        matched: usize,
    },
    /// A wildcard `IPADDR` arrived where the sender's address is unknown.
    #[error("IPADDR {ipaddr} is a wildcard and the sender's address is unknown")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    NoPeer { ipaddr: String },
    /// `IPADDR` names another host than the one the registration came from: an agent
    /// registers its own address.
    #[error(
        "IPADDR {ipaddr} is not the address this registration came from ({peer}): an agent registers its own address"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    NotPeer { ipaddr: String, peer: String },
    /// An admin created the device and has not opened it to registrations.
    #[error(
        "device {device} was created by {origin} and no agent has registered as it: an admin must allow it first (allow_registration)"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    NotOpen { device: String, origin: String },
    /// The registration announced another address; the change is held for a tech.
    #[error(
        "device {device} has its SUTAgent at {sut}; the change to {new} is held until a tech accepts it"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    AddressHeld {
        device: String,
        sut: String,
        new: String,
    },
    /// Too many new devices from registrations in the last minute.
    #[error(
        "too many new devices from registrations (at most {per_minute} a minute): try again later"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    TooManyNew { per_minute: u32 },
}

impl Refusal {
    /// How `/metrics` counts it.
    #[must_use]
    pub fn kind(&self) -> Refused {
        match self {
            Refusal::AddressHeld { .. } => Refused::Held,
            Refusal::TooManyNew { .. } => Refused::RateLimited,
            _ => Refused::Policy,
        }
    }
}

/// Apply `msg` in `tx`. `Ok(Err(refusal))` is a refusal: counted, logged when the gate's
/// log rate allows, and nothing else written, except that a held address change is
/// recorded on the device ([`Refusal::AddressHeld`]).
///
/// # Errors
/// Storage failure only.
pub fn apply(
    tx: &Tx<'_>,
    now: Millis,
    server: &str,
    msg: &RegistrationMessage,
    peer: Option<IpAddr>,
    channel: Channel,
    gate: &Gate,
) -> Result<Result<Applied, Refusal>, StoreError> {
    let result = decide_and_apply(tx, now, server, msg, peer, channel, gate)?;
    // Refusals are counted (and logged) where they are decided.
    if result.is_ok() {
        gate.metrics
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(result)
}

fn decide_and_apply(
    tx: &Tx<'_>,
    now: Millis,
    server: &str,
    msg: &RegistrationMessage,
    peer: Option<IpAddr>,
    channel: Channel,
    gate: &Gate,
) -> Result<Result<Applied, Refusal>, StoreError> {
    let from = peer.map_or_else(|| "?".to_owned(), |p| p.to_canonical().to_string());
    // Over TCP the sender is the only witness of where the agent is: IPADDR must be it.
    if channel == Channel::Tcp
        && !msg.wildcard
        && let Some(p) = peer
        && msg.ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) != Ok(p.to_canonical())
    {
        let reason = Refusal::NotPeer {
            ipaddr: msg.ipaddr.clone(),
            peer: from.clone(),
        };
        refuse(tx, now, msg, &from, channel, None, &reason, gate)?;
        return Ok(Err(reason));
    }
    // A wildcard IPADDR is the sender's address; without one there is nothing to record.
    let resolved = match peer {
        Some(p) if msg.wildcard => msg.at_peer(p).ok(),
        _ => None,
    };
    if msg.wildcard && resolved.is_none() {
        let reason = Refusal::NoPeer {
            ipaddr: msg.ipaddr.clone(),
        };
        refuse(tx, now, msg, &from, channel, None, &reason, gate)?;
        return Ok(Err(reason));
    }
    let msg = resolved.as_ref().unwrap_or(msg);
    let existing = match find(tx, msg, peer)? {
        Found::Device(d) => Some(*d),
        Found::New => None,
        Found::Unmatched(matched) => {
            let reason = Refusal::Unmatched {
                agent: msg.agent_name.clone(),
                peer: from.clone(),
                matched,
            };
            flag_for_tech(tx, now, msg, &from, channel, &reason, gate)?;
            return Ok(Err(reason));
        }
    };
    if let Some(reason) = existing.as_ref().and_then(|d| refusal(d, msg, server)) {
        refuse(
            tx,
            now,
            msg,
            &from,
            channel,
            existing.as_ref(),
            &reason,
            gate,
        )?;
        return Ok(Err(reason));
    }
    if existing.is_none() && !gate.may_create(now) {
        let reason = Refusal::TooManyNew {
            per_minute: gate.config.new_devices_per_minute,
        };
        refuse(tx, now, msg, &from, channel, None, &reason, gate)?;
        return Ok(Err(reason));
    }
    if let Some(d) = &existing
        && let Some(old) = &d.wiring.sut_addr
        && old != msg.sut_addr()
        && !d.follow_address
    {
        return hold(tx, now, msg, &from, channel, d.clone(), gate);
    }
    let Some(name) = existing
        .as_ref()
        .map(|d| d.name.clone())
        .or_else(|| msg.device_name.clone())
    else {
        // `find` answers `New` only for a message that names a device.
        let reason = Refusal::Unmatched {
            agent: msg.agent_name.clone(),
            peer: from.clone(),
            matched: 0,
        };
        flag_for_tech(tx, now, msg, &from, channel, &reason, gate)?;
        return Ok(Err(reason));
    };
    let valid = |v: &Option<String>| v.clone().filter(|h| h.parse::<HardwareType>().is_ok());
    let fill = |have: &Option<String>, v: Option<String>| if have.is_none() { v } else { None };
    let fields = match &existing {
        None => DeviceFields {
            hardware_type: valid(&msg.hardware),
            pool: valid(&msg.pool),
            sut: Some(msg.sut_addr().clone()),
            ..DeviceFields::default()
        },
        Some(d) => DeviceFields {
            hardware_type: fill(&d.facts.hardware_type, valid(&msg.hardware)),
            pool: fill(&d.facts.pool, valid(&msg.pool)),
            sut: Some(msg.sut_addr().clone()),
            ..DeviceFields::default()
        },
    };
    let old_ip = existing
        .as_ref()
        .and_then(|d| d.registration.as_ref())
        .and_then(|r| r.ip.clone());
    let actor = format!("agent {}", msg.agent_name);
    let (outcome, mut device) = upsert_device_returning(
        tx,
        now,
        server,
        &name,
        &fields,
        "registration",
        Some(&actor),
    )?;
    let registration = Registration {
        at: now,
        agent_name: msg.agent_name.clone(),
        ip: Some(msg.ip.clone()),
        fields: msg.fields.clone(),
    };
    let mut changes = match &outcome {
        Upsert::Updated(c) => c.clone(),
        Upsert::Created | Upsert::Unchanged => Vec::new(),
    };
    if let Some(old) = &old_ip
        && *old != msg.ip
    {
        changes.push(format!("IP address changed: {old} -> {}", msg.ip));
    }
    if let Some(old) = device.registration.as_ref().map(|r| &r.fields) {
        let keys: BTreeSet<&String> = old.keys().chain(msg.fields.keys()).collect();
        let changed: Vec<&str> = keys
            .into_iter()
            .filter(|k| old.get(*k) != msg.fields.get(*k))
            .map(String::as_str)
            .collect();
        if !changed.is_empty() {
            changes.push(format!("details changed: {}", changed.join(", ")));
        }
    }
    device.registration = Some(registration);
    inv::put_device(tx, &device)?;
    let mut message = format!(
        "registered via {} from {from}: NAME={} IPADDR={} sut={}",
        channel.as_str(),
        msg.agent_name,
        msg.ipaddr,
        msg.sut_addr()
    );
    if msg.wildcard {
        message.push_str(" (wildcard IPADDR: the sender's address)");
    }
    if msg.placeholder_name() {
        message.push_str(" (generic NAME, matched by its SUTAgent address)");
    }
    if outcome == Upsert::Created {
        message.push_str(" (new device)");
    }
    if !changes.is_empty() {
        message.push_str("; ");
        message.push_str(&changes.join("; "));
    }
    if let Some(ip) = peer
        && ip.to_string() != msg.ip
        && !ip.is_loopback()
    {
        message.push_str(&format!("; note: connected from {ip}, not IPADDR"));
    }
    append(
        tx,
        now,
        NewLog {
            subjects: vec![device_subject(&name), SUBJECT.to_owned()],
            source: "registration".into(),
            actor: Some(actor.clone()),
            message,
        },
    )?;
    let news = outcome == Upsert::Created || !changes.is_empty();
    if let Some(why) = device.needs_tech().filter(|_| news) {
        append(
            tx,
            now,
            NewLog::new(
                device_subject(&name),
                "registration",
                format!("needs a tech: {why}"),
            )
            .by(Some(actor)),
        )?;
    }
    Ok(Ok(Applied {
        device,
        created: outcome == Upsert::Created,
        changes,
    }))
}

/// What [`find`] found.
enum Found {
    /// The device this registration is about.
    Device(Box<Device>),
    /// No device yet: the registration names a new one.
    New,
    /// A generic NAME that matches this many devices by address (0 or more than 1).
    Unmatched(usize),
}

/// The device this registration is about: by device name, else by an earlier registration
/// with the same agent NAME. A generic NAME names no device: it is the one non-retired
/// device whose SUTAgent address is on the sender's host, if there is exactly one.
fn find(tx: &Tx<'_>, msg: &RegistrationMessage, peer: Option<IpAddr>) -> Result<Found, StoreError> {
    let Some(device_name) = &msg.device_name else {
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return Ok(Found::Unmatched(0));
        };
        let mut matched: Vec<Device> = inv::devices_in_tx(tx)?
            .into_iter()
            .filter(|d| {
                !d.retired
                    && d.wiring
                        .sut_addr
                        .as_ref()
                        .is_some_and(|s| on_host(s.host(), peer))
            })
            .collect();
        return Ok(match matched.len() {
            1 => matched
                .pop()
                .map_or(Found::Unmatched(0), |d| Found::Device(Box::new(d))),
            n => Found::Unmatched(n),
        });
    };
    if let Some(d) = inv::device_in_tx(tx, device_name)? {
        return Ok(Found::Device(Box::new(d)));
    }
    Ok(inv::devices_in_tx(tx)?
        .into_iter()
        .find(|d| {
            d.registration
                .as_ref()
                .is_some_and(|r| same_agent(&r.agent_name, &msg.agent_name))
        })
        .map_or(Found::New, |d| Found::Device(Box::new(d))))
}

/// Whether a SUTAgent address's host (as written, IPv6 in brackets) is `peer`. Host names
/// never match: resolving them inside a store write is not an option, and the inventory of
/// a lab whose agents register with a generic NAME gives their addresses as IPs.
fn on_host(host: &str, peer: IpAddr) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|h| h.to_canonical() == peer)
}

fn same_agent(a: &str, b: &str) -> bool {
    match (super::parse::mac_of(a), super::parse::mac_of(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Why an existing device may not take this registration, if it may not.
fn refusal(d: &Device, msg: &RegistrationMessage, server: &str) -> Option<Refusal> {
    if d.retired {
        return Some(Refusal::Retired {
            device: d.name.to_string(),
        });
    }
    if d.server != server {
        return Some(Refusal::OtherController {
            device: d.name.to_string(),
            owner: d.server.to_string(),
            server: server.to_owned(),
        });
    }
    if !msg.placeholder_name()
        && let Some(r) = &d.registration
        && !same_agent(&r.agent_name, &msg.agent_name)
    {
        return Some(Refusal::OtherAgent {
            device: d.name.to_string(),
            registered_by: r.agent_name.clone(),
            agent: msg.agent_name.clone(),
        });
    }
    // A device an admin created is not handed to the first agent that names it.
    if d.registration.is_none() && d.origin != "registration" && !d.allow_registration {
        return Some(Refusal::NotOpen {
            device: d.name.to_string(),
            origin: d.origin.clone(),
        });
    }
    None
}

/// Hold an address change of `d` for a tech: the device keeps its address, records the
/// one announced, and is out of the pool until a tech accepts or dismisses it. The first
/// time an address is held it is logged (and at WARN); the same address again only
/// refreshes its time, and other addresses after it are logged at the gate's rate.
fn hold(
    tx: &Tx<'_>,
    now: Millis,
    msg: &RegistrationMessage,
    from: &str,
    channel: Channel,
    mut d: Device,
    gate: &Gate,
) -> Result<Result<Applied, Refusal>, StoreError> {
    let old = d
        .wiring
        .sut_addr
        .as_ref()
        .map_or_else(String::new, |a| a.as_str().to_owned());
    let reason = Refusal::AddressHeld {
        device: d.name.to_string(),
        sut: old.clone(),
        new: msg.sut_addr().as_str().to_owned(),
    };
    let first = d.address_change.is_none();
    let same = d
        .address_change
        .as_ref()
        .is_some_and(|c| &c.sut == msg.sut_addr());
    let log = if first {
        gate.metrics.refused(Refused::Held);
        Some(0)
    } else if same {
        gate.metrics.refused(Refused::Held);
        None
    } else {
        gate.refusal(Refused::Held, now)
    };
    d.address_change = Some(AddressChange {
        sut: msg.sut_addr().clone(),
        agent_name: msg.agent_name.clone(),
        at: now,
    });
    inv::put_device(tx, &d)?;
    if let Some(unlogged) = log {
        tracing::warn!(
            device = %d.name,
            from,
            old = %old,
            new = %msg.sut_addr(),
            "registration from a new address held for a tech"
        );
        append(
            tx,
            now,
            NewLog {
                subjects: vec![device_subject(&d.name), SUBJECT.to_owned()],
                source: "registration".into(),
                actor: Some(format!("agent {}", msg.agent_name)),
                message: format!(
                    "needs a tech: registration via {} from {from} (NAME={} IPADDR={}) announced SUTAgent address {}, not {old}; the device keeps {old} and is not handed out until a tech accepts or dismisses the change{}",
                    channel.as_str(),
                    msg.agent_name,
                    msg.ipaddr,
                    msg.sut_addr(),
                    unlogged_note(unlogged),
                ),
            },
        )?;
    }
    Ok(Err(reason))
}

/// Log a refusal under `registration` (and the device, when there is one).
///
/// # Errors
/// Storage failure.
// One argument per thing the log line says; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn refuse(
    tx: &Tx<'_>,
    now: Millis,
    msg: &RegistrationMessage,
    from: &str,
    channel: Channel,
    device: Option<&Device>,
    reason: &Refusal,
    gate: &Gate,
) -> Result<(), StoreError> {
    let Some(unlogged) = gate.refusal(reason.kind(), now) else {
        return Ok(());
    };
    tracing::info!(from, agent = %msg.agent_name, %reason, "registration refused");
    let mut subjects = vec![SUBJECT.to_owned()];
    subjects.extend(device.map(|d| device_subject(&d.name)));
    append(
        tx,
        now,
        NewLog {
            subjects,
            source: "registration".into(),
            actor: Some(format!("agent {}", msg.agent_name)),
            message: format!(
                "registration refused (via {} from {from}, NAME={} IPADDR={}): {reason}{}",
                channel.as_str(),
                msg.agent_name,
                msg.ipaddr,
                unlogged_note(unlogged),
            ),
        },
    )?;
    Ok(())
}

/// Refuse a registration that needs a tech to say which device it is: logged under
/// `registration` as `needs a tech: ...` with what arrived and what to do, and at WARN.
///
/// # Errors
/// Storage failure.
fn flag_for_tech(
    tx: &Tx<'_>,
    now: Millis,
    msg: &RegistrationMessage,
    from: &str,
    channel: Channel,
    reason: &Refusal,
    gate: &Gate,
) -> Result<(), StoreError> {
    let Some(unlogged) = gate.refusal(reason.kind(), now) else {
        return Ok(());
    };
    tracing::warn!(
        from,
        agent = %msg.agent_name,
        ipaddr = %msg.ipaddr,
        %reason,
        "registration needs a tech"
    );
    append(
        tx,
        now,
        NewLog {
            subjects: vec![SUBJECT.to_owned()],
            source: "registration".into(),
            actor: Some(format!("agent {}", msg.agent_name)),
            message: format!(
                "needs a tech: registration refused (via {} from {from}, NAME={} IPADDR={} sut={}): {reason}{}",
                channel.as_str(),
                msg.agent_name,
                msg.ipaddr,
                msg.sut_addr(),
                unlogged_note(unlogged),
            ),
        },
    )?;
    Ok(())
}

/// Log a message that did not even parse (or a connection that sent none), under
/// `registration`. The caller asked the gate first ([`Gate::refusal`]); `unlogged` is
/// what it answered.
///
/// # Errors
/// Storage failure.
pub fn log_malformed(
    tx: &Tx<'_>,
    now: Millis,
    from: &str,
    channel: Channel,
    reason: &str,
    unlogged: u64,
) -> Result<(), StoreError> {
    append(
        tx,
        now,
        NewLog::new(
            SUBJECT.to_owned(),
            "registration",
            format!(
                "registration refused (via {} from {from}): {reason}{}",
                channel.as_str(),
                unlogged_note(unlogged),
            ),
        ),
    )?;
    Ok(())
}

/// Why a held address change could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// No such device.
    #[error("no device named {0}")]
    NoDevice(String),
    /// The device holds no address change.
    #[error("device {0} holds no address change")]
    NothingHeld(String),
}

/// A tech settles the address change `name` holds: `accept` moves the device to the
/// announced address, otherwise it keeps its address. Either way the change is cleared (the
/// device may be handed out again) and the decision is logged. Returns the device after.
///
/// # Errors
/// Storage failure.
pub fn settle_address_change(
    tx: &Tx<'_>,
    now: Millis,
    name: &str,
    accept: bool,
    actor: &str,
) -> Result<Result<Device, SettleError>, StoreError> {
    let Some(mut d) = inv::device_in_tx(tx, name)? else {
        return Ok(Err(SettleError::NoDevice(name.to_owned())));
    };
    let Some(change) = d.address_change.take() else {
        return Ok(Err(SettleError::NothingHeld(name.to_owned())));
    };
    let old = d
        .wiring
        .sut_addr
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |a| a.as_str().to_owned());
    let message = if accept {
        if let Some(r) = d.registration.as_mut() {
            r.ip = Some(change.sut.host().trim_matches(['[', ']']).to_owned());
        }
        d.wiring.sut_addr = Some(change.sut.clone());
        d.wiring.unparsed.sut_addr = None;
        format!(
            "address change accepted: sut: {old} -> {} (announced by agent {})",
            change.sut, change.agent_name
        )
    } else {
        format!(
            "address change dismissed: the device keeps {old}, not {} (announced by agent {})",
            change.sut, change.agent_name
        )
    };
    d.updated = now;
    inv::put_device(tx, &d)?;
    append(
        tx,
        now,
        NewLog::new(device_subject(&d.name), "inventory", message).by(Some(actor.to_owned())),
    )?;
    Ok(Ok(d))
}
