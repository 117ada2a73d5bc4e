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
use crate::clock::Millis;
use crate::model::{
    Device, DeviceFacts, DeviceWiring, Environment, FlashStep, HardwareTypeInfo, Image, LogEntry,
};

/// Device table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeviceRecord {
    /// Layout 1.
    V1(DeviceV1),
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

impl From<DeviceRecord> for Device {
    fn from(r: DeviceRecord) -> Device {
        match r {
            DeviceRecord::V1(v) => Device {
                id: v.id,
                name: v.name,
                server: v.server,
                facts: DeviceFacts {
                    hardware_type: v.hardware_type,
                    processor: v.processor,
                    pool: v.pool,
                    os_version: v.os_version,
                    environment: v.environment,
                },
                wiring: DeviceWiring {
                    relay: v.relay,
                    sut_addr: v.sut_addr,
                    fastboot_serial: v.fastboot_serial,
                },
                comments: v.comments,
                retired: v.retired,
                origin: v.origin,
                created: Millis(v.created),
                updated: Millis(v.updated),
                state: v.state,
            },
        }
    }
}

impl From<&Device> for DeviceRecord {
    fn from(d: &Device) -> DeviceRecord {
        DeviceRecord::V1(DeviceV1 {
            id: d.id,
            name: d.name.clone(),
            server: d.server.clone(),
            hardware_type: d.facts.hardware_type.clone(),
            processor: d.facts.processor.clone(),
            pool: d.facts.pool.clone(),
            os_version: d.facts.os_version.clone(),
            environment: d.facts.environment.clone(),
            relay: d.wiring.relay.clone(),
            sut_addr: d.wiring.sut_addr.clone(),
            fastboot_serial: d.wiring.fastboot_serial.clone(),
            comments: d.comments.clone(),
            retired: d.retired,
            origin: d.origin.clone(),
            created: d.created.0,
            updated: d.updated.0,
            state: d.state.clone(),
        })
    }
}

/// Image table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ImageRecord {
    /// Layout 1.
    V1(ImageV1),
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

impl From<ImageRecord> for Image {
    fn from(r: ImageRecord) -> Image {
        match r {
            ImageRecord::V1(v) => Image {
                name: v.name,
                description: v.description,
                boot_config_keys: v.boot_config_keys,
                can_reuse: v.can_reuse,
                hidden: v.hidden,
                has_sut_agent: v.has_sut_agent,
                steps: v
                    .steps
                    .into_iter()
                    .map(|(partition, file)| FlashStep { partition, file })
                    .collect(),
            },
        }
    }
}

impl From<&Image> for ImageRecord {
    fn from(i: &Image) -> ImageRecord {
        ImageRecord::V1(ImageV1 {
            name: i.name.clone(),
            description: i.description.clone(),
            boot_config_keys: i.boot_config_keys.clone(),
            can_reuse: i.can_reuse,
            hidden: i.hidden,
            has_sut_agent: i.has_sut_agent,
            steps: i
                .steps
                .iter()
                .map(|s| (s.partition.clone(), s.file.clone()))
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
}

impl Record for HardwareTypeRecord {
    const TYPE_NAME: &'static str = "mozpool.HardwareTypeRecord";
}

impl From<HardwareTypeRecord> for HardwareTypeInfo {
    fn from(r: HardwareTypeRecord) -> HardwareTypeInfo {
        match r {
            HardwareTypeRecord::V1(name, processor, description) => HardwareTypeInfo {
                name,
                processor,
                description,
            },
        }
    }
}

impl From<&HardwareTypeInfo> for HardwareTypeRecord {
    fn from(h: &HardwareTypeInfo) -> HardwareTypeRecord {
        HardwareTypeRecord::V1(h.name.clone(), h.processor.clone(), h.description.clone())
    }
}

/// Log table value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LogRecord {
    /// Layout 1.
    V1(LogV1),
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

impl LogRecord {
    /// Convert to the domain type, given the key.
    #[must_use]
    pub fn into_entry(self, seq: u64) -> LogEntry {
        match self {
            LogRecord::V1(v) => LogEntry {
                seq,
                ts: Millis(v.ts),
                subjects: v.subjects,
                source: v.source,
                actor: v.actor,
                message: v.message,
            },
        }
    }

    /// The subjects this record is indexed under.
    #[must_use]
    pub fn subjects(&self) -> &[String] {
        match self {
            LogRecord::V1(v) => &v.subjects,
        }
    }

    /// When it was written.
    #[must_use]
    pub fn ts(&self) -> Millis {
        match self {
            LogRecord::V1(v) => Millis(v.ts),
        }
    }
}
