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
//! - Known → SUT address updated (an IP change is logged explicitly); hardware type and pool
//!   are only filled in when the inventory has none (the inventory wins).
//! - Relay wiring is never taken from a registration. A device without wiring is flagged
//!   [`Device::needs_tech`] and the flag is logged.
//! - Refused: a retired device; a device owned by another controller; a device whose earlier
//!   registration came from another agent NAME; a wired device whose SUT address was set by
//!   the inventory/config/API (not by its own last registration) and names another host (a
//!   registration cannot re-point a wired device's agent: a tech changes the inventory).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::storage::Tx;

use super::parse::RegistrationMessage;
use crate::domain::clock::Millis;
use crate::domain::model::{Device, Registration, device_subject};
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
    /// The device is wired and its SUTAgent address, set by the inventory, config or API,
    /// names another host than the registration's.
    #[error(
        "name collision: device {device} is wired to relay {relay} with SUTAgent at {sut} (set by {origin}); a registration from {ip} cannot re-point it"
    )]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Wired {
        device: String,
        relay: String,
        sut: String,
        /// Who set the address (the device's origin).
        origin: String,
        /// The IPADDR of this registration.
        ip: String,
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
}

/// Apply `msg` in `tx`. `Ok(Err(refusal))` is a refusal (logged, nothing else written).
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
) -> Result<Result<Applied, Refusal>, StoreError> {
    let from = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
    // A wildcard IPADDR is the sender's address; without one there is nothing to record.
    let resolved = match peer {
        Some(p) if msg.wildcard => msg.at_peer(p).ok(),
        _ => None,
    };
    if msg.wildcard && resolved.is_none() {
        let reason = Refusal::NoPeer {
            ipaddr: msg.ipaddr.clone(),
        };
        refuse(tx, now, msg, &from, channel, None, &reason.to_string())?;
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
            flag_for_tech(tx, now, msg, &from, channel, &reason)?;
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
            &reason.to_string(),
        )?;
        return Ok(Err(reason));
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
        flag_for_tech(tx, now, msg, &from, channel, &reason)?;
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
    // A wired device whose SUT address was set by the inventory, config or API (not by its
    // own last registration) cannot be re-pointed at another host by a registration.
    if let (Some(relay), Some(sut)) = (&d.wiring.relay, &d.wiring.sut_addr) {
        let from_registration = d
            .registration
            .as_ref()
            .and_then(|r| r.ip.as_deref())
            .is_some_and(|ip| host_of(sut.as_str()) == ip);
        if !from_registration && host_of(sut.as_str()) != host_of(msg.sut_addr().as_str()) {
            return Some(Refusal::Wired {
                device: d.name.to_string(),
                relay: relay.to_string(),
                sut: sut.to_string(),
                origin: d.origin.to_string(),
                ip: msg.ip.clone(),
            });
        }
    }
    None
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Log a refusal under `registration` (and the device, when there is one).
///
/// # Errors
/// Storage failure.
pub fn refuse(
    tx: &Tx<'_>,
    now: Millis,
    msg: &RegistrationMessage,
    from: &str,
    channel: Channel,
    device: Option<&Device>,
    reason: &str,
) -> Result<(), StoreError> {
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
                "registration refused (via {} from {from}, NAME={} IPADDR={}): {reason}",
                channel.as_str(),
                msg.agent_name,
                msg.ipaddr
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
) -> Result<(), StoreError> {
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
                "needs a tech: registration refused (via {} from {from}, NAME={} IPADDR={} sut={}): {reason}",
                channel.as_str(),
                msg.agent_name,
                msg.ipaddr,
                msg.sut_addr(),
            ),
        },
    )?;
    Ok(())
}

/// Log a message that did not even parse, under `registration`.
///
/// # Errors
/// Storage failure.
pub fn log_malformed(
    tx: &Tx<'_>,
    now: Millis,
    from: &str,
    channel: Channel,
    reason: &str,
) -> Result<(), StoreError> {
    append(
        tx,
        now,
        NewLog::new(
            SUBJECT.to_owned(),
            "registration",
            format!(
                "registration refused (via {} from {from}): {reason}",
                channel.as_str()
            ),
        ),
    )?;
    Ok(())
}
