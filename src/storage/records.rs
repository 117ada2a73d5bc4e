//! Versioned on-disk records.
//!
//! Every table value is a top-level enum whose variant index is the record version. Variants
//! are append-only and a `VN` struct is frozen once released: to change a layout, add `VN+1`
//! and an upgrade from `VN`. Reads accept every version; writes always use the newest.
//! Golden bytes of every version live in `tests/fixtures/records/` and must keep decoding.
//!
//! postcard rules (see `shared/reference/rust-stack.md` §1.5): no `skip_serializing_if`, no
//! tagged or untagged enums, no maps with unordered iteration, no `usize`.

use serde::{Deserialize, Serialize};

use super::codec::Record;
use crate::domain::clock::Millis;
use crate::domain::device_state::DeviceState;
use crate::domain::model::{
    AddressChange, Agent, BootMode, Device, DeviceFacts, DeviceWiring, Environment, FlashStep,
    HardwareTypeInfo, Image, LifeguardData, LogEntry, Registration, UnparsedWiring,
};
use crate::domain::names::{DeviceName, NameError};
use crate::domain::wiring::{RelayAddr, SutAddr};

/// Device table value.
// Records live only between decode and conversion; their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeviceRecord {
    /// Layout 1.
    V1(DeviceV1),
    /// Layout 2: adds the Lifeguard machine's persisted state, the holding request and the
    /// device's self-registration.
    V2(DeviceV2),
    /// Layout 3: adds the adb serial.
    V3(DeviceV3),
    /// Layout 4: adds the registration trust settings and a held address change.
    V4(DeviceV4),
}

impl Record for DeviceRecord {
    const TYPE_NAME: &'static str = "mozpool.DeviceRecord";
}

/// Device layout 1: inventory fields and the Lifeguard state name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeviceV1 {
    pub id: u64,
    pub name: String,
    pub server: String,
    pub hardware_type: Option<String>,
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub environment: Option<String>,
    pub relay: Option<String>,
    pub sut_addr: Option<String>,
    pub fastboot_serial: Option<String>,
    pub comments: Option<String>,
    pub retired: bool,
    pub origin: String,
    pub created: u64,
    pub updated: u64,
    pub state: String,
}

/// Device layout 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeviceV2 {
    pub id: u64,
    pub name: String,
    pub server: String,
    pub hardware_type: Option<String>,
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub environment: Option<String>,
    pub relay: Option<String>,
    pub sut_addr: Option<String>,
    pub fastboot_serial: Option<String>,
    pub comments: Option<String>,
    pub retired: bool,
    pub origin: String,
    pub created: u64,
    pub updated: u64,
    pub state: String,
    pub generation: u64,
    pub counters: Vec<(String, u32)>,
    pub entered_at: u64,
    pub deadline: Option<u64>,
    pub current_image: Option<String>,
    pub current_boot_config: Option<String>,
    pub next_image: Option<String>,
    pub next_boot_config: Option<String>,
    /// The current image has an agent (SUTAgent then; any agent since images name one).
    pub current_has_sut: bool,
    pub next_has_sut: bool,
    pub self_test: bool,
    pub request: Option<u64>,
    pub registration: Option<RegistrationV1>,
}

/// Device layout 3: layout 2 followed by the adb serial.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeviceV3 {
    pub v2: DeviceV2,
    pub adb_serial: Option<String>,
}

/// Device layout 4: layout 3 followed by what registrations may do to the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeviceV4 {
    pub v3: DeviceV3,
    pub allow_registration: bool,
    pub follow_address: bool,
    pub address_change: Option<AddressChangeV1>,
}

/// An address change held for a tech, as stored from device layout 4 on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct AddressChangeV1 {
    pub sut: String,
    pub agent_name: String,
    pub at: u64,
}

/// A device's self-registration, as stored from layout 2 on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct RegistrationV1 {
    pub at: u64,
    pub agent_name: String,
    pub ip: Option<String>,
    pub fields: Vec<(String, String)>,
}

impl From<DeviceV1> for DeviceV2 {
    /// A layout-1 device has no Lifeguard details yet: it keeps its state name and resumes
    /// from there (a state with a deadline gets one again when the driver resumes it).
    fn from(v: DeviceV1) -> DeviceV2 {
        DeviceV2 {
            id: v.id,
            name: v.name,
            server: v.server,
            hardware_type: v.hardware_type,
            processor: v.processor,
            pool: v.pool,
            os_version: v.os_version,
            environment: v.environment,
            relay: v.relay,
            sut_addr: v.sut_addr,
            fastboot_serial: v.fastboot_serial,
            comments: v.comments,
            retired: v.retired,
            origin: v.origin,
            created: v.created,
            updated: v.updated,
            state: v.state,
            generation: 0,
            counters: Vec::new(),
            entered_at: v.updated,
            deadline: None,
            current_image: None,
            current_boot_config: None,
            next_image: None,
            next_boot_config: None,
            current_has_sut: false,
            next_has_sut: false,
            self_test: false,
            request: None,
            registration: None,
        }
    }
}

impl TryFrom<DeviceRecord> for Device {
    type Error = NameError;

    /// Fails only on a name that is not a device name, which no edge ever let in: such a
    /// record is corrupt, and reading it reports that as for any corrupt record.
    fn try_from(r: DeviceRecord) -> Result<Device, NameError> {
        // A device stored before layout 4 gets the safe defaults: not open to a claim, an
        // address change held for a tech, none held yet. One that registered before keeps
        // its agent (a claim only matters for a device no agent registered as).
        let (v3, allow_registration, follow_address, address_change) = match r {
            DeviceRecord::V1(v1) => (DeviceV3::from(DeviceV2::from(v1)), false, false, None),
            DeviceRecord::V2(v2) => (DeviceV3::from(v2), false, false, None),
            DeviceRecord::V3(v3) => (v3, false, false, None),
            DeviceRecord::V4(v4) => (
                v4.v3,
                v4.allow_registration,
                v4.follow_address,
                v4.address_change,
            ),
        };
        let DeviceV3 { v2: v, adb_serial } = v3;
        // A stored change whose address no longer parses is dropped: the device keeps its
        // address, which is what a dismissed change does.
        let address_change = address_change.and_then(|c| {
            Some(AddressChange {
                sut: SutAddr::parse_owned(c.sut).ok()?,
                agent_name: c.agent_name,
                at: Millis(c.at),
            })
        });
        Ok(Device {
            id: v.id,
            name: DeviceName::try_from(v.name)?,
            server: v.server,
            facts: DeviceFacts {
                hardware_type: v.hardware_type,
                processor: v.processor,
                pool: v.pool,
                os_version: v.os_version,
                environment: v.environment,
            },
            wiring: wiring(v.relay, v.sut_addr, v.fastboot_serial, adb_serial),
            comments: v.comments,
            retired: v.retired,
            origin: v.origin,
            created: Millis(v.created),
            updated: Millis(v.updated),
            // A name this release does not know reads as `unknown` (MozPool 4.x's rule).
            state: v.state.parse().unwrap_or(DeviceState::Unknown),
            lifeguard: LifeguardData {
                generation: v.generation,
                counters: v.counters.into_iter().collect(),
                entered_at: Millis(v.entered_at),
                deadline: v.deadline.map(Millis),
                current_image: v.current_image,
                current_boot_config: v.current_boot_config,
                next_image: v.next_image,
                next_boot_config: v.next_boot_config,
                current_has_agent: v.current_has_sut,
                next_has_agent: v.next_has_sut,
                self_test: v.self_test,
            },
            request: v.request,
            registration: v.registration.map(|r| Registration {
                at: Millis(r.at),
                agent_name: r.agent_name,
                ip: r.ip,
                fields: r.fields.into_iter().collect(),
            }),
            allow_registration,
            follow_address,
            address_change,
        })
    }
}

impl From<DeviceV2> for DeviceV3 {
    fn from(v2: DeviceV2) -> DeviceV3 {
        DeviceV3 {
            v2,
            adb_serial: None,
        }
    }
}

/// The typed wiring of stored text. Text that no longer parses (a relay saved when any name
/// passed) is kept verbatim in [`UnparsedWiring`] rather than dropped or refused: the device
/// stays readable, counts as unwired, and its record is written back unchanged.
fn wiring(
    relay: Option<String>,
    sut_addr: Option<String>,
    fastboot_serial: Option<String>,
    adb_serial: Option<String>,
) -> DeviceWiring {
    let mut unparsed = UnparsedWiring::default();
    let relay = relay.and_then(|text| match RelayAddr::parse_owned(text) {
        Ok(a) => Some(a),
        Err(text) => {
            unparsed.relay = Some(text);
            None
        }
    });
    let sut_addr = sut_addr.and_then(|text| match SutAddr::parse_owned(text) {
        Ok(a) => Some(a),
        Err(text) => {
            unparsed.sut_addr = Some(text);
            None
        }
    });
    DeviceWiring {
        relay,
        sut_addr,
        fastboot_serial,
        adb_serial,
        unparsed,
    }
}

impl From<&Device> for DeviceRecord {
    fn from(d: &Device) -> DeviceRecord {
        let l = &d.lifeguard;
        let v2 = DeviceV2 {
            id: d.id,
            name: d.name.to_string(),
            server: d.server.clone(),
            hardware_type: d.facts.hardware_type.clone(),
            processor: d.facts.processor.clone(),
            pool: d.facts.pool.clone(),
            os_version: d.facts.os_version.clone(),
            environment: d.facts.environment.clone(),
            relay: d
                .wiring
                .relay
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| d.wiring.unparsed.relay.clone()),
            sut_addr: d
                .wiring
                .sut_addr
                .as_ref()
                .map(|a| a.as_str().to_owned())
                .or_else(|| d.wiring.unparsed.sut_addr.clone()),
            fastboot_serial: d.wiring.fastboot_serial.clone(),
            comments: d.comments.clone(),
            retired: d.retired,
            origin: d.origin.clone(),
            created: d.created.0,
            updated: d.updated.0,
            state: d.state.name().to_owned(),
            generation: l.generation,
            counters: l.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            entered_at: l.entered_at.0,
            deadline: l.deadline.map(|m| m.0),
            current_image: l.current_image.clone(),
            current_boot_config: l.current_boot_config.clone(),
            next_image: l.next_image.clone(),
            next_boot_config: l.next_boot_config.clone(),
            current_has_sut: l.current_has_agent,
            next_has_sut: l.next_has_agent,
            self_test: l.self_test,
            request: d.request,
            registration: d.registration.as_ref().map(|r| RegistrationV1 {
                at: r.at.0,
                agent_name: r.agent_name.clone(),
                ip: r.ip.clone(),
                fields: r
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
        };
        DeviceRecord::V4(DeviceV4 {
            v3: DeviceV3 {
                v2,
                adb_serial: d.wiring.adb_serial.clone(),
            },
            allow_registration: d.allow_registration,
            follow_address: d.follow_address,
            address_change: d.address_change.as_ref().map(|c| AddressChangeV1 {
                sut: c.sut.as_str().to_owned(),
                agent_name: c.agent_name.clone(),
                at: c.at.0,
            }),
        })
    }
}

/// Image table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ImageRecord {
    /// Layout 1.
    V1(ImageV1),
    /// Layout 2: the agent kind instead of `has_sut_agent`, and recipe steps beyond `flash`.
    V2(ImageV2),
}

impl Record for ImageRecord {
    const TYPE_NAME: &'static str = "mozpool.ImageRecord";
}

/// Image layout 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ImageV1 {
    pub name: String,
    pub description: Option<String>,
    pub boot_config_keys: Vec<String>,
    pub can_reuse: bool,
    pub hidden: bool,
    pub has_sut_agent: bool,
    /// (partition, file) pairs.
    pub steps: Vec<(String, String)>,
}

/// Image layout 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ImageV2 {
    pub name: String,
    pub description: Option<String>,
    pub boot_config_keys: Vec<String>,
    pub can_reuse: bool,
    pub hidden: bool,
    pub agent: AgentV1,
    pub steps: Vec<StepV1>,
}

/// An image's agent kind, as stored from image layout 2 on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum AgentV1 {
    Sut,
    Adb,
    None,
}

/// A recipe step, as stored from image layout 2 on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum StepV1 {
    Flash(String, String),
    Erase(String),
    Format(String),
    Wipe,
    SetActive(String),
    RebootFastboot,
}

impl From<ImageRecord> for Image {
    fn from(r: ImageRecord) -> Image {
        match r {
            ImageRecord::V1(v) => Image {
                name: v.name,
                description: v.description,
                boot_config_keys: v.boot_config_keys,
                can_reuse: v.can_reuse,
                hidden: v.hidden,
                agent: if v.has_sut_agent {
                    Agent::Sut
                } else {
                    Agent::None
                },
                steps: v
                    .steps
                    .into_iter()
                    .map(|(partition, file)| FlashStep::Flash { partition, file })
                    .collect(),
            },
            ImageRecord::V2(v) => Image {
                name: v.name,
                description: v.description,
                boot_config_keys: v.boot_config_keys,
                can_reuse: v.can_reuse,
                hidden: v.hidden,
                agent: match v.agent {
                    AgentV1::Sut => Agent::Sut,
                    AgentV1::Adb => Agent::Adb,
                    AgentV1::None => Agent::None,
                },
                steps: v
                    .steps
                    .into_iter()
                    .map(|s| match s {
                        StepV1::Flash(partition, file) => FlashStep::Flash { partition, file },
                        StepV1::Erase(partition) => FlashStep::Erase { partition },
                        StepV1::Format(partition) => FlashStep::Format { partition },
                        StepV1::Wipe => FlashStep::Wipe,
                        StepV1::SetActive(slot) => FlashStep::SetActive { slot },
                        StepV1::RebootFastboot => FlashStep::RebootFastboot,
                    })
                    .collect(),
            },
        }
    }
}

impl From<&Image> for ImageRecord {
    fn from(i: &Image) -> ImageRecord {
        ImageRecord::V2(ImageV2 {
            name: i.name.clone(),
            description: i.description.clone(),
            boot_config_keys: i.boot_config_keys.clone(),
            can_reuse: i.can_reuse,
            hidden: i.hidden,
            agent: match i.agent {
                Agent::Sut => AgentV1::Sut,
                Agent::Adb => AgentV1::Adb,
                Agent::None => AgentV1::None,
            },
            steps: i
                .steps
                .iter()
                .map(|s| match s {
                    FlashStep::Flash { partition, file } => {
                        StepV1::Flash(partition.clone(), file.clone())
                    }
                    FlashStep::Erase { partition } => StepV1::Erase(partition.clone()),
                    FlashStep::Format { partition } => StepV1::Format(partition.clone()),
                    FlashStep::Wipe => StepV1::Wipe,
                    FlashStep::SetActive { slot } => StepV1::SetActive(slot.clone()),
                    FlashStep::RebootFastboot => StepV1::RebootFastboot,
                })
                .collect(),
        })
    }
}

/// Environment table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnvironmentRecord {
    /// Layout 1: (name, description).
    V1(String, Option<String>),
}

impl Record for EnvironmentRecord {
    const TYPE_NAME: &'static str = "mozpool.EnvironmentRecord";
}

impl From<EnvironmentRecord> for Environment {
    fn from(r: EnvironmentRecord) -> Environment {
        match r {
            EnvironmentRecord::V1(name, description) => Environment { name, description },
        }
    }
}

impl From<&Environment> for EnvironmentRecord {
    fn from(e: &Environment) -> EnvironmentRecord {
        EnvironmentRecord::V1(e.name.clone(), e.description.clone())
    }
}

/// Hardware type table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HardwareTypeRecord {
    /// Layout 1: (name, processor, description).
    V1(String, Option<String>, Option<String>),
    /// Layout 2: (name, processor, description, boot mode).
    V2(String, Option<String>, Option<String>, BootModeV1),
}

/// A hardware type's boot mode, as stored from layout 2 on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum BootModeV1 {
    BootloaderWindow,
    Adb,
    Already,
}

impl Record for HardwareTypeRecord {
    const TYPE_NAME: &'static str = "mozpool.HardwareTypeRecord";
}

impl From<HardwareTypeRecord> for HardwareTypeInfo {
    fn from(r: HardwareTypeRecord) -> HardwareTypeInfo {
        match r {
            // Every type flashed through its bootloader window before boot modes existed.
            HardwareTypeRecord::V1(name, processor, description) => HardwareTypeInfo {
                name,
                processor,
                description,
                boot_mode: BootMode::BootloaderWindow,
            },
            HardwareTypeRecord::V2(name, processor, description, mode) => HardwareTypeInfo {
                name,
                processor,
                description,
                boot_mode: match mode {
                    BootModeV1::BootloaderWindow => BootMode::BootloaderWindow,
                    BootModeV1::Adb => BootMode::Adb,
                    BootModeV1::Already => BootMode::Already,
                },
            },
        }
    }
}

impl From<&HardwareTypeInfo> for HardwareTypeRecord {
    fn from(h: &HardwareTypeInfo) -> HardwareTypeRecord {
        HardwareTypeRecord::V2(
            h.name.clone(),
            h.processor.clone(),
            h.description.clone(),
            match h.boot_mode {
                BootMode::BootloaderWindow => BootModeV1::BootloaderWindow,
                BootMode::Adb => BootModeV1::Adb,
                BootMode::Already => BootModeV1::Already,
            },
        )
    }
}

/// Log table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LogRecord {
    /// Layout 1: found through a `log_index` row per subject.
    V1(LogV1),
    /// Layout 2: also links each subject's previous entry (the per-subject chain).
    V2(LogV2),
}

impl Record for LogRecord {
    const TYPE_NAME: &'static str = "mozpool.LogRecord";
}

/// Log layout 1. The sequence number is the table key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct LogV1 {
    pub ts: u64,
    pub subjects: Vec<String>,
    pub source: String,
    pub actor: Option<String>,
    pub message: String,
}

/// Log layout 2. `prev[i]` is the sequence number of the previous entry about
/// `subjects[i]` (0: none, or written before layout 2), so a subject's history is a walk
/// back along its chain from the newest entry (`log_heads`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct LogV2 {
    pub ts: u64,
    pub subjects: Vec<String>,
    pub prev: Vec<u64>,
    pub source: String,
    pub actor: Option<String>,
    pub message: String,
}

/// `device_usage` value: the band a device is in since when (its open interval of the pool
/// chart), and its last failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageOpenRecord {
    /// Layout 1.
    V1(UsageOpenV1),
}

impl Record for UsageOpenRecord {
    const TYPE_NAME: &'static str = "mozpool.UsageOpenRecord";
}

/// `device_usage` layout 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageOpenV1 {
    /// The band: 0 in use, 1 ready, 2 preparing, 3 out of service.
    pub band: u8,
    /// Since when (ms).
    pub since: u64,
    /// The device's last entry into a failed state (ms), 0 when none is known.
    pub last_failure: u64,
}

/// `usage_hours` value: device-milliseconds spent in each band during one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageHourRecord {
    /// Layout 1.
    V1(UsageHourV1),
}

impl Record for UsageHourRecord {
    const TYPE_NAME: &'static str = "mozpool.UsageHourRecord";
}

/// `usage_hours` layout 1: milliseconds per band, in band order (in use, ready, preparing,
/// out of service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UsageHourV1 {
    /// Device-milliseconds per band.
    pub ms: [u64; 4],
}

/// `failure_hours` value: how often one device failed during one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureHourRecord {
    /// Layout 1.
    V1(FailureHourV1),
}

impl Record for FailureHourRecord {
    const TYPE_NAME: &'static str = "mozpool.FailureHourRecord";
}

/// `failure_hours` layout 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureHourV1 {
    /// Entries into a failed state in the hour.
    pub failures: u32,
    /// The last of them (ms).
    pub last: u64,
}

/// `wait_hours` value: the requests that became ready during one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitHourRecord {
    /// Layout 1.
    V1(WaitHourV1),
}

impl Record for WaitHourRecord {
    const TYPE_NAME: &'static str = "mozpool.WaitHourRecord";
}

/// `wait_hours` layout 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WaitHourV1 {
    /// Requests per bar of `domain::history::WAIT_BOUNDS_MS` (plus the overflow bar last);
    /// shorter when the later bars are empty.
    pub bars: Vec<u64>,
    /// Of them, those that waited in the queue, per reason code (`Waited::code`); shorter
    /// when the later codes are empty.
    pub waited: Vec<u64>,
}

impl LogRecord {
    /// Convert to the domain type, given the key.
    #[must_use]
    pub fn into_entry(self, seq: u64) -> LogEntry {
        let (ts, subjects, source, actor, message) = match self {
            LogRecord::V1(v) => (v.ts, v.subjects, v.source, v.actor, v.message),
            LogRecord::V2(v) => (v.ts, v.subjects, v.source, v.actor, v.message),
        };
        LogEntry {
            seq,
            ts: Millis(ts),
            subjects,
            source,
            actor,
            message,
        }
    }

    /// The subjects this record is about.
    #[must_use]
    pub fn subjects(&self) -> &[String] {
        match self {
            LogRecord::V1(v) => &v.subjects,
            LogRecord::V2(v) => &v.subjects,
        }
    }

    /// When it was written.
    #[must_use]
    pub fn ts(&self) -> Millis {
        match self {
            LogRecord::V1(v) => Millis(v.ts),
            LogRecord::V2(v) => Millis(v.ts),
        }
    }

    /// The previous entry about `subject` in its chain: `None` for a layout-1 record or a
    /// record not about `subject`, `Some(0)` where the chain starts.
    #[must_use]
    pub fn prev_for(&self, subject: &str) -> Option<u64> {
        match self {
            LogRecord::V1(_) => None,
            LogRecord::V2(v) => v
                .subjects
                .iter()
                .position(|s| s == subject)
                .map(|i| v.prev.get(i).copied().unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(state: &str) -> DeviceV1 {
        DeviceV1 {
            id: 3,
            name: "panda-3".into(),
            server: "rack1".into(),
            hardware_type: Some("panda".into()),
            processor: None,
            pool: None,
            os_version: None,
            environment: None,
            relay: Some("relay-1:bank1:relay3".into()),
            sut_addr: Some("10.0.0.3:20701".into()),
            fastboot_serial: None,
            comments: None,
            retired: false,
            origin: "config".into(),
            created: 1,
            updated: 2,
            state: state.into(),
        }
    }

    fn bytes(r: &DeviceRecord) -> Vec<u8> {
        postcard::to_allocvec(r).unwrap_or_default()
    }

    #[test]
    fn an_unknown_state_name_reads_as_unknown() {
        let d = Device::try_from(DeviceRecord::V1(v1("pxe_booting"))).expect("valid");
        assert_eq!(d.state, DeviceState::Unknown);
        assert!(!d.available());
    }

    #[test]
    fn typed_fields_write_back_the_bytes_they_were_read_from() {
        let stored =
            DeviceRecord::from(&Device::try_from(DeviceRecord::V1(v1("ready"))).expect("valid"));
        let d = Device::try_from(stored.clone()).expect("valid");
        assert_eq!(d.state, DeviceState::Ready);
        assert!(d.available());
        assert_eq!(bytes(&DeviceRecord::from(&d)), bytes(&stored));
    }

    #[test]
    fn wiring_text_that_does_not_parse_is_kept_verbatim() {
        let mut old = v1("ready");
        // Accepted as a name before relays were parsed at the edge, but not an address.
        old.relay = Some("relay-1:bank33:relay1".into());
        old.sut_addr = Some("panda-3".into());
        let stored = DeviceRecord::V1(old);
        let d = Device::try_from(stored.clone()).expect("readable");
        assert_eq!(d.wiring.relay, None);
        assert_eq!(d.wiring.sut_addr, None);
        assert_eq!(
            d.wiring.unparsed.relay.as_deref(),
            Some("relay-1:bank33:relay1")
        );
        assert_eq!(d.wiring.unparsed.sut_addr.as_deref(), Some("panda-3"));
        assert!(d.needs_tech().is_some());
        let DeviceRecord::V4(back) = DeviceRecord::from(&d) else {
            panic!("writes the newest layout");
        };
        assert_eq!(back.v3.v2.relay.as_deref(), Some("relay-1:bank33:relay1"));
        assert_eq!(back.v3.v2.sut_addr.as_deref(), Some("panda-3"));
    }

    #[test]
    fn a_stored_name_that_is_not_a_device_name_is_a_corrupt_record() {
        let mut bad = v1("ready");
        bad.name = "../x".into();
        assert!(Device::try_from(DeviceRecord::V1(bad)).is_err());
    }

    #[test]
    fn images_and_hardware_types_from_before_agents_and_boot_modes() {
        let v1 = ImageRecord::V1(ImageV1 {
            name: "b2g".into(),
            description: None,
            boot_config_keys: Vec::new(),
            can_reuse: false,
            hidden: false,
            has_sut_agent: true,
            steps: vec![("boot".into(), "boot.img".into())],
        });
        let image = Image::from(v1);
        assert_eq!(image.agent, Agent::Sut);
        assert_eq!(
            image.steps,
            vec![FlashStep::Flash {
                partition: "boot".into(),
                file: "boot.img".into()
            }]
        );
        let h = HardwareTypeInfo::from(HardwareTypeRecord::V1("panda".into(), None, None));
        assert_eq!(h.boot_mode, BootMode::BootloaderWindow);
        // What is written reads back the same.
        let mut phone = image.clone();
        phone.agent = Agent::Adb;
        phone.steps.push(FlashStep::SetActive { slot: "b".into() });
        phone.steps.push(FlashStep::RebootFastboot);
        assert_eq!(Image::from(ImageRecord::from(&phone)), phone);
    }
}
