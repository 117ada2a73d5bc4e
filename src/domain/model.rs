//! Domain types of the inventory, shared by every layer: what a device, image, environment,
//! hardware type and log entry *are*, independent of how they are stored or shown.
//!
//! Storage keeps versioned records (`storage::records`) and converts to and from these; the
//! HTTP layer renders them as JSON views.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;
use crate::domain::device_state::DeviceState;
use crate::domain::names::DeviceName;
use crate::domain::wiring::{RelayAddr, SutAddr};

/// One test device in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Stable integer id (the original's `id`, also its `inventory_id`).
    pub id: u64,
    /// Short unique name (`panda-0042`), checked where it entered.
    pub name: DeviceName,
    /// The controller that owns the device (its configured server name); only the owner
    /// powers, flashes or hands it out.
    pub server: String,
    /// Inventory facts used to match requests.
    pub facts: DeviceFacts,
    /// Where the device is wired and how to reach it.
    pub wiring: DeviceWiring,
    /// Free-text operator notes.
    pub comments: Option<String>,
    /// Retired devices stay in the store (their history is kept) but are never used.
    pub retired: bool,
    /// Where the record came from (`config`, `api`, `registration`, `inventory`, `simulate`).
    pub origin: String,
    /// When the record was created.
    pub created: Millis,
    /// When the record last changed.
    pub updated: Millis,
    /// The device's Lifeguard state (stored as its name; a name this release does not know
    /// reads as [`DeviceState::Unknown`], as in MozPool 4.x).
    pub state: DeviceState,
    /// The rest of the Lifeguard state machine's persisted state.
    pub lifeguard: LifeguardData,
    /// The request holding the device, if any.
    pub request: Option<u64>,
    /// What the device said when it last registered itself, if it ever did.
    pub registration: Option<Registration>,
    /// Whether a registration may claim this device although an admin created it (API,
    /// config, inventory) and no agent has registered as it yet. Off by default: an admin's
    /// device is not handed to the first agent that names it.
    pub allow_registration: bool,
    /// Whether a registration from a new address moves the device there at once (DHCP
    /// leases that change). Off by default: the change is held for a tech
    /// ([`Device::address_change`]).
    pub follow_address: bool,
    /// A registration from another address than the device's, held until a tech accepts or
    /// dismisses it; while it is held the pool does not hand the device out.
    pub address_change: Option<AddressChange>,
}

/// A SUTAgent address a registration announced for a known device, held for a tech.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressChange {
    /// The address the registration announced (`IPADDR:CMDPORT`, the sender's host).
    pub sut: SutAddr,
    /// The agent's `NAME` in that registration.
    pub agent_name: String,
    /// When it (last) arrived.
    pub at: Millis,
}

impl Device {
    /// A wired PandaBoard named `name` in the state named `state`, for tests; change what a
    /// test needs.
    #[cfg(test)]
    pub(crate) fn for_test(name: &str, state: &str) -> Device {
        Device {
            id: 1,
            name: name.parse().expect("a device name"),
            server: "rack1".to_owned(),
            facts: DeviceFacts {
                hardware_type: Some("panda".into()),
                processor: None,
                pool: None,
                os_version: None,
                environment: None,
            },
            wiring: DeviceWiring {
                relay: Some("relay-1:bank1:relay1".parse().expect("a relay address")),
                ..DeviceWiring::default()
            },
            comments: None,
            retired: false,
            origin: "config".into(),
            created: Millis(0),
            updated: Millis(0),
            state: state.parse().expect("a state name"),
            lifeguard: LifeguardData::default(),
            request: None,
            registration: None,
            allow_registration: false,
            follow_address: false,
            address_change: None,
        }
    }

    /// The pool may hand this device out right now: not retired, held by no request,
    /// `ready`, and no address change waiting for a tech. The one definition of "available":
    /// the free-device index, the pool's views and Lifeguard's "became available" all ask this.
    #[must_use]
    pub fn available(&self) -> bool {
        available(self.state, self.request, self.retired) && self.address_change.is_none()
    }

    /// Why a tech must look at this device before it can be used, if anything.
    #[must_use]
    pub fn needs_tech(&self) -> Option<String> {
        if let Some(c) = &self.address_change {
            let from = self
                .wiring
                .sut_addr
                .as_ref()
                .map_or("(none)", SutAddr::as_str);
            Some(format!(
                "a registration (agent {}) moved the device's SUTAgent address from {from} to {}: the pool does not hand it out until a tech accepts or dismisses the change",
                c.agent_name,
                c.sut.as_str()
            ))
        } else if self.wiring.unparsed.relay.is_some() {
            Some(
                "the stored relay address does not parse: the device cannot be power-cycled until a tech records its wiring again in the inventory".to_owned(),
            )
        } else if self.wiring.relay.is_none() {
            Some(
                "no relay wiring: the device cannot be power-cycled until a tech wires it and records it in the inventory".to_owned(),
            )
        } else {
            None
        }
    }
}

/// [`Device::available`] from its three facts, for Lifeguard's machine, whose snapshot has
/// no device record (and never sees a retired device: Lifeguard refuses those first).
#[must_use]
pub const fn available(state: DeviceState, request: Option<u64>, retired: bool) -> bool {
    !retired && request.is_none() && state.is_free_for_pool()
}

/// Persisted state of a device's Lifeguard state machine besides the state name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeguardData {
    /// Incremented on every transition; hardware results carry the generation that asked for
    /// them, so late results for a state already left are recognised and ignored.
    pub generation: u64,
    /// Retry counters per phase.
    pub counters: BTreeMap<String, u32>,
    /// When the current state was entered.
    pub entered_at: Millis,
    /// When the current state times out, if it does.
    pub deadline: Option<Millis>,
    /// Image currently on the device (`None` = unknown or clobbered).
    pub current_image: Option<String>,
    /// Boot config (JSON text) the current image was installed with.
    pub current_boot_config: Option<String>,
    /// Image being installed.
    pub next_image: Option<String>,
    /// Boot config for the image being installed.
    pub next_boot_config: Option<String>,
    /// The current image runs an agent, SUTAgent or adbd (recorded when it was installed); which one
    /// its image says.
    pub current_has_agent: bool,
    /// The image being installed runs an agent.
    pub next_has_agent: bool,
    /// The verification under way is a self-test (success leads to `ready` without reporting
    /// an imaging result).
    pub self_test: bool,
}

/// A device's self-registration (SUTAgent registration protocol or its JSON form).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// When it last registered.
    pub at: Millis,
    /// The agent's `NAME` (usually the Wi-Fi MAC).
    pub agent_name: String,
    /// The address it registered from / announced (`IPADDR`).
    pub ip: Option<String>,
    /// Every other field it sent (`OS`, `SCRNWIDTH`, `MEMORY`, `HARDWARE`, `POOL`, ...).
    pub fields: BTreeMap<String, String>,
}

/// Matching criteria a request can ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Hardware type (`panda`).
    pub hardware_type: Option<String>,
    /// Processor architecture (`armv7`).
    pub processor: Option<String>,
    /// Pool (`b2g`, `mobile`).
    pub pool: Option<String>,
    /// OS version (`4.0.4`).
    pub os_version: Option<String>,
    /// Environment (pool partition) name; requests for `any` match every environment.
    pub environment: Option<String>,
}

/// How the controller reaches a device's power and its agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWiring {
    /// Relay address (`board:bankB:relayR` or `board:pinN`); `None` = no power control.
    pub relay: Option<RelayAddr>,
    /// SUTAgent command address `host:port`.
    pub sut_addr: Option<SutAddr>,
    /// fastboot serial number: the USB serial, or `tcp:host:port` for fastboot over TCP.
    pub fastboot_serial: Option<String>,
    /// adb serial: the USB serial, or `host:port` for adb over TCP. `None` means the
    /// fastboot serial, when that is a USB one (a phone shows the same serial to both).
    pub adb_serial: Option<String>,
    /// Stored wiring text this release cannot parse, kept so that nothing is lost.
    #[serde(default)]
    pub unparsed: UnparsedWiring,
}

impl DeviceWiring {
    /// The serial adb knows the device by, if any.
    #[must_use]
    pub fn adb_serial(&self) -> Option<&str> {
        self.adb_serial.as_deref().or_else(|| {
            self.fastboot_serial
                .as_deref()
                .filter(|s| !s.starts_with("tcp:") && !s.starts_with("udp:"))
        })
    }
}

/// Wiring text read from the store that does not parse (written before addresses were
/// checked at the edge, when any name passed as a relay). It is written back verbatim while
/// the typed field stays `None`, so the device counts as unwired (a tech must look at it)
/// and nothing drives a relay from a guess; setting the field at an edge replaces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnparsedWiring {
    /// The stored relay text, when it is not a relay address.
    pub relay: Option<String>,
    /// The stored SUTAgent address text, when it is not `host:port`.
    pub sut_addr: Option<String>,
}

/// A named flashing recipe in the image registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Image {
    /// Image name (`b2g`).
    pub name: String,
    pub description: Option<String>,
    /// Keys a request for this image must give in its body (`b2gbase`).
    pub boot_config_keys: Vec<String>,
    /// A device already running this image with an equal boot config may be reused with a
    /// reboot instead of a reflash.
    pub can_reuse: bool,
    /// Hidden images (`self-test`) are left out of `/api/image/list/`.
    pub hidden: bool,
    /// What runs on the device with this image to check and soft-reboot it.
    pub agent: Agent,
    /// What fastboot does, in order: partitions to flash with the file (a name in the image
    /// store or build URL) for each, erases, slot changes.
    pub steps: Vec<FlashStep>,
}

impl Image {
    /// The original's `has_sut_agent` column.
    #[must_use]
    pub fn has_sut_agent(&self) -> bool {
        self.agent == Agent::Sut
    }
}

/// How the service checks a device and reboots it without its relay, decided by the image
/// the device runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agent {
    /// Mozilla's SUTAgent on its command port (`ver`, a storage write, `rebt`).
    Sut,
    /// adbd (`getprop sys.boot_completed`, a file written in `/data/local/tmp`, `adb reboot`).
    Adb,
    /// Nothing to talk to: health is reachability of the device's address, and only a relay
    /// can reboot it.
    #[default]
    None,
}

impl Agent {
    /// The name used in configuration and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Agent::Sut => "sut",
            Agent::Adb => "adb",
            Agent::None => "none",
        }
    }

    /// Parse the configuration/JSON name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Agent> {
        match s {
            "sut" => Some(Agent::Sut),
            "adb" => Some(Agent::Adb),
            "none" => Some(Agent::None),
            _ => None,
        }
    }
}

/// How a device of a hardware type gets into fastboot to be flashed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// A power cycle through its relay lands it in its bootloader for a few seconds, where
    /// fastboot catches it (PandaBoards).
    #[default]
    BootloaderWindow,
    /// `adb reboot bootloader` from its running OS (phones).
    Adb,
    /// It sits in fastboot already (a board without an OS, or one parked there by a tech).
    Already,
}

impl BootMode {
    /// The name used in configuration and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            BootMode::BootloaderWindow => "bootloader_window",
            BootMode::Adb => "adb",
            BootMode::Already => "already",
        }
    }

    /// Parse the configuration/JSON name.
    #[must_use]
    pub fn parse(s: &str) -> Option<BootMode> {
        match s {
            "bootloader_window" => Some(BootMode::BootloaderWindow),
            "adb" => Some(BootMode::Adb),
            "already" => Some(BootMode::Already),
            _ => None,
        }
    }

    /// Whether reaching fastboot needs the device's relay.
    #[must_use]
    pub const fn needs_power_control(self) -> bool {
        matches!(self, BootMode::BootloaderWindow)
    }
}

/// One step of an image recipe, run with fastboot in this order. `F` is how the flashed file
/// is named: a file name in the image store or build URL here, a local path once the
/// hardware layer has fetched it (`hw::fastboot::FastbootStep`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlashStep<F = String> {
    /// `fastboot flash PARTITION FILE`; the file is a name, never a path.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Flash { partition: String, file: F },
    /// `fastboot erase PARTITION`.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Erase { partition: String },
    /// `fastboot format PARTITION` (a fresh file system).
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Format { partition: String },
    /// `fastboot -w`: erase userdata and cache and format them.
    Wipe,
    /// `fastboot set_active SLOT` (`a`/`b` devices).
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    SetActive { slot: String },
    /// `fastboot reboot fastboot`: into userspace fastboot (fastbootd), which flashes
    /// logical (dynamic) partitions.
    RebootFastboot,
}

impl<F> FlashStep<F> {
    /// The same step with its file (if it has one) replaced by `file(old)`.
    ///
    /// # Errors
    /// What `file` returns.
    pub fn try_map_file<G, E>(
        &self,
        file: impl FnOnce(&F) -> Result<G, E>,
    ) -> Result<FlashStep<G>, E> {
        Ok(match self {
            FlashStep::Flash { partition, file: f } => FlashStep::Flash {
                partition: partition.clone(),
                file: file(f)?,
            },
            FlashStep::Erase { partition } => FlashStep::Erase {
                partition: partition.clone(),
            },
            FlashStep::Format { partition } => FlashStep::Format {
                partition: partition.clone(),
            },
            FlashStep::Wipe => FlashStep::Wipe,
            FlashStep::SetActive { slot } => FlashStep::SetActive { slot: slot.clone() },
            FlashStep::RebootFastboot => FlashStep::RebootFastboot,
        })
    }

    /// The action's name in configuration and JSON.
    #[must_use]
    pub const fn action(&self) -> &'static str {
        match self {
            FlashStep::Flash { .. } => "flash",
            FlashStep::Erase { .. } => "erase",
            FlashStep::Format { .. } => "format",
            FlashStep::Wipe => "wipe",
            FlashStep::SetActive { .. } => "set_active",
            FlashStep::RebootFastboot => "reboot_fastboot",
        }
    }

    /// The partition a step works on, if any.
    #[must_use]
    pub fn partition(&self) -> Option<&str> {
        match self {
            FlashStep::Flash { partition, .. }
            | FlashStep::Erase { partition }
            | FlashStep::Format { partition } => Some(partition),
            _ => None,
        }
    }

    /// The slot a step activates, if any.
    #[must_use]
    pub fn slot(&self) -> Option<&str> {
        match self {
            FlashStep::SetActive { slot } => Some(slot),
            _ => None,
        }
    }
}

impl FlashStep {
    /// The file a step flashes, if any.
    #[must_use]
    pub fn file(&self) -> Option<&str> {
        match self {
            FlashStep::Flash { file, .. } => Some(file),
            _ => None,
        }
    }

    /// Build a step from its parts as configuration and JSON give them (`action` defaults
    /// to `flash`).
    ///
    /// # Errors
    /// A sentence saying which part is missing, unknown or not allowed with the action.
    pub fn from_parts(
        action: Option<&str>,
        partition: Option<&str>,
        file: Option<&str>,
        slot: Option<&str>,
    ) -> Result<FlashStep, String> {
        let action = action.unwrap_or("flash");
        let need = |v: Option<&str>, what: &str| {
            v.filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("a {action} step needs a {what}"))
        };
        let refuse = |v: Option<&str>, what: &str| match v {
            Some(_) => Err(format!("a {action} step takes no {what}")),
            None => Ok(()),
        };
        let step = match action {
            "flash" => FlashStep::Flash {
                partition: need(partition, "partition")?,
                file: need(file, "file")?,
            },
            "erase" | "format" => {
                refuse(file, "file")?;
                let partition = need(partition, "partition")?;
                if action == "erase" {
                    FlashStep::Erase { partition }
                } else {
                    FlashStep::Format { partition }
                }
            }
            "set_active" => FlashStep::SetActive {
                slot: need(slot, "slot")?,
            },
            "wipe" | "reboot_fastboot" => {
                refuse(partition, "partition")?;
                refuse(file, "file")?;
                if action == "wipe" {
                    FlashStep::Wipe
                } else {
                    FlashStep::RebootFastboot
                }
            }
            other => {
                return Err(format!(
                    "unknown step action {other:?} (flash, erase, format, wipe, set_active, reboot_fastboot)"
                ));
            }
        };
        if !matches!(step, FlashStep::SetActive { .. }) {
            refuse(slot, "slot")?;
        }
        for (kind, v) in [
            ("partition", step.partition()),
            ("file name", step.file()),
            ("slot", step.slot()),
        ] {
            if let Some(v) = v {
                crate::domain::names::check_name(kind, v)
                    .map_err(|e| format!("{e} (letters, digits, . _ : -; no paths)"))?;
            }
        }
        Ok(step)
    }
}

/// An environment (pool partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct Environment {
    pub name: String,
    pub description: Option<String>,
}

/// A hardware type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct HardwareTypeInfo {
    /// Name (`panda`).
    pub name: String,
    /// Processor architecture of this type, used as the default for its devices.
    pub processor: Option<String>,
    pub description: Option<String>,
    /// How its devices get into fastboot to be flashed.
    pub boot_mode: BootMode,
}

/// One entry of the durable log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct LogEntry {
    /// Monotonic sequence number; newer entries have larger numbers.
    pub seq: u64,
    /// When it was written.
    pub ts: Millis,
    /// What it is about: `device:<name>`, `request:<id>`, `board:<name>`, `api`, `registration`.
    pub subjects: Vec<String>,
    /// Which part wrote it (`statemachine`, `api`, `sut`, `fastboot`, `registration`).
    pub source: String,
    /// Who caused it (token name or `anonymous`), when known.
    pub actor: Option<String>,
    pub message: String,
}

/// Subject key of a device's log.
#[must_use]
pub fn device_subject(name: &str) -> String {
    format!("device:{name}")
}

/// Subject key of a request's log.
#[must_use]
pub fn request_subject(id: u64) -> String {
    format!("request:{id}")
}
