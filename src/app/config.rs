//! The configuration file (`/etc/mozpool/mozpool.toml` on the appliance) and its checks.
//!
//! Every section rejects unknown keys; every value is typed and validated, so a typo or a
//! bad value stops start-up with a message naming the key and the line. Command-line flags
//! (`--listen`, `--data-dir`) override the file. The full reference is in `docs/config.md`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::model::{Agent, BootMode, Environment, FlashStep, HardwareTypeInfo, Image};
use crate::domain::names::{DeviceName, EnvironmentName, HardwareType, ImageName, ServerName};
use crate::domain::wiring::{RelayAddr, SutAddr};
use crate::hw::config::HardwareConfig;

/// Where the packaged configuration lives.
pub const DEFAULT_PATH: &str = "/etc/mozpool/mozpool.toml";

/// A configuration problem, with the file and line when known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a bad value; toml's message names key, line and column.
    #[error("{path}: {message}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Parse {
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value that parses but does not make sense with the rest.
    #[error("{path}:{line}: {message}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Invalid {
        path: PathBuf,
        /// 1-based line.
        line: usize,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Inventory sync from an external source.
    #[serde(default)]
    pub inventory: InventoryConfig,
    #[serde(default)]
    pub hardware_types: Vec<HardwareTypeConfig>,
    #[serde(default)]
    pub environments: Vec<EnvironmentConfig>,
    /// Images (flashing recipes).
    #[serde(default)]
    pub images: Vec<ImageConfig>,
    /// Devices wired to this controller.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Access control. Absent: the service is open, as the original MozPool was (and says
    /// so loudly); see [`crate::http::auth`].
    #[serde(default)]
    pub auth: Option<crate::http::auth::AuthConfig>,
    /// Hardware drivers: fastboot, image files, probe timeouts.
    #[serde(default)]
    pub hardware: HardwareConfig,
    /// Relay boards wired to this controller (see `docs/hardware.md`).
    #[serde(default)]
    pub relay_boards: Vec<crate::hw::BoardConfig>,
    /// Lifeguard state timeouts and retry limits (`docs/lifeguard.md`).
    #[serde(default)]
    pub lifeguard: crate::lifeguard::Timings,
    /// Request timeouts, retries, lease limits (`docs/requests.md`).
    #[serde(default)]
    pub requests: crate::pool::Timings,
    /// Queue policy: aging and fair share (`docs/requests.md`).
    #[serde(default)]
    pub queue: crate::pool::QueuePolicy,
    /// The simulated rack (`mozpool serve --simulate N`): timings and injected faults.
    #[serde(default)]
    pub simulate: SimulateConfig,
    /// Who may register and how fast (`docs/registration.md`).
    #[serde(default)]
    pub registration: crate::inventory::registration::trust::TrustConfig,
    /// Several racks, one pool, through etcd (`docs/cluster.md`). Absent: this controller
    /// runs alone and no cluster code runs.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[simulate]`: only used with `mozpool serve --simulate N`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulateConfig {
    /// How long a simulated device stays in its bootloader after power-on, in ms.
    pub bootloader_window_ms: u64,
    /// How long a simulated device takes to boot its OS after the bootloader, in ms.
    pub boot_time_ms: u64,
    /// Scale factor applied to the Lifeguard and request timeouts on the simulated rack,
    /// so a rack whose devices boot in seconds is not checked on a minutes scale.
    pub time_scale: f64,
    /// Faults injected per simulated device at start (`"sim-0003" = { does_not_boot = true }`).
    pub faults: std::collections::BTreeMap<String, crate::hw::sim::SimFaults>,
    /// How many of the simulated devices (the last ones) are phones: adbd, A/B slots,
    /// fastboot over TCP, into fastboot by `adb reboot bootloader`. They need Debian's
    /// `fastboot` and `adb`.
    pub phones: u32,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            bootloader_window_ms: 1500,
            boot_time_ms: 2000,
            time_scale: 0.05,
            faults: std::collections::BTreeMap::new(),
            phones: 0,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// This controller's name (normally its FQDN). Every device and request records its
    /// owning controller by this name.
    pub name: ServerName,
    /// Default `127.0.0.1:8080`; `--listen` overrides it.
    pub listen: SocketAddr,
    /// Base URL clients should use (`http://rack1.lab:8080`); when unset, URLs are built from
    /// each request's `Host` header.
    pub public_url: Option<String>,
    /// Where the database and caches live.
    pub data_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most concurrent HTTP connections, the reserve included.
    pub max_connections: usize,
    /// Connection slots kept for callers with a token and `/api/health/`: when the others
    /// are taken, a new connection may only make those calls (`crate::http::limits`).
    pub reserved_connections: usize,
    /// Most connections one peer address holds before its extra ones are limited to calls
    /// with a token and health checks (429 for the rest).
    pub max_connections_per_client: usize,
    /// Most long polls (`?wait=N`) one client (its token, else its address) holds at once;
    /// past it, 429.
    pub max_long_polls_per_client: usize,
    /// More names (`Host` values) the service answers to, besides `name`, `public_url`'s
    /// host and the listen address; other names are refused (DNS rebinding).
    pub host_aliases: Vec<String>,
    /// Seconds a client has to send its request headers.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send its whole request body once the headers are in; a
    /// client dribbling bytes is answered 408 and disconnected.
    pub body_timeout_secs: u64,
    /// Where devices register themselves (SUTAgent registration protocol, raw TCP, normally
    /// port 28001); unset = no registration listener.
    pub registration_listen: Option<SocketAddr>,
    /// Seconds a registration connection may take from accept to close (read, store, reply).
    pub registration_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: ServerName::localhost(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            data_dir: PathBuf::from("/var/lib/mozpool"),
            max_body_bytes: 64 * 1024,
            max_connections: 512,
            reserved_connections: 32,
            max_connections_per_client: 64,
            max_long_polls_per_client: 16,
            host_aliases: Vec::new(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            registration_listen: None,
            registration_timeout_secs: 10,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level for operator logs (stderr/journald): `error`, `warn`, `info`, `debug`, `trace`.
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// Durable log entries older than this many days are removed.
    pub retention_days: u64,
    /// At most this many durable log entries are kept.
    pub retention_max_records: u64,
    /// How often (seconds) retention runs.
    pub prune_interval_secs: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            retention_days: 14,
            retention_max_records: 10_000_000,
            prune_interval_secs: 300,
        }
    }
}

impl LogConfig {
    /// `retention_days` and `retention_max_records` as the store's policy.
    #[must_use]
    pub fn retention(&self) -> crate::storage::logs::Retention {
        crate::storage::logs::Retention {
            max_age: Duration::from_secs(self.retention_days.saturating_mul(86_400)),
            max_records: self.retention_max_records,
        }
    }
}

/// `[inventory]`: sync devices from an inventory source (`docs/registration.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// A file path or a plain `http://` URL serving the JSON or CSV inventory; unset = no
    /// automatic sync (`mozpool inventory sync` still works).
    pub source: Option<String>,
    /// Seconds between syncs after the one at start-up; 0 = only at start-up.
    pub interval_secs: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            source: None,
            interval_secs: 3600,
        }
    }
}

/// `[[hardware_types]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct HardwareTypeConfig {
    pub name: Spanned<HardwareType>,
    pub processor: Option<String>,
    pub description: Option<String>,
    /// How its devices reach fastboot: `bootloader_window` (default), `adb`, `already`.
    #[serde(default)]
    pub boot_mode: BootMode,
}

/// `[[environments]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct EnvironmentConfig {
    pub name: Spanned<EnvironmentName>,
    pub description: Option<String>,
}

/// `[[images]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct ImageConfig {
    pub name: Spanned<ImageName>,
    pub description: Option<String>,
    /// Keys a request must give.
    #[serde(default)]
    pub boot_config_keys: Vec<String>,
    /// Reuse a device already running it.
    #[serde(default)]
    pub can_reuse: bool,
    /// Leave it out of the image list.
    #[serde(default)]
    pub hidden: bool,
    /// The image runs SUTAgent (the original's flag; `agent = "sut"` says the same).
    #[serde(default)]
    pub has_sut_agent: bool,
    /// What checks and soft-reboots a device running it: `sut`, `adb` or `none`.
    pub agent: Option<Agent>,
    /// Run in this order.
    #[serde(default)]
    pub steps: Vec<FlashStepConfig>,
}

impl ImageConfig {
    /// The agent `agent` names, else the one `has_sut_agent` implies.
    #[must_use]
    pub fn agent(&self) -> Agent {
        self.agent.unwrap_or(if self.has_sut_agent {
            Agent::Sut
        } else {
            Agent::None
        })
    }
}

/// One `steps` entry of an image: `action` (default `flash`) with the parts it needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct FlashStepConfig {
    /// `flash`, `erase`, `format`, `wipe`, `set_active`, `reboot_fastboot`.
    pub action: Option<String>,
    pub partition: Option<String>,
    /// File name (no path), for `flash`.
    pub file: Option<String>,
    /// Slot, for `set_active`.
    pub slot: Option<String>,
}

impl FlashStepConfig {
    /// The domain step.
    ///
    /// # Errors
    /// What is missing or not allowed.
    pub fn step(&self) -> Result<FlashStep, String> {
        FlashStep::from_parts(
            self.action.as_deref(),
            self.partition.as_deref(),
            self.file.as_deref(),
            self.slot.as_deref(),
        )
    }
}

/// `[[devices]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
// Fields mirror the TOML keys, documented in docs/config.md.
#[allow(missing_docs)]
pub struct DeviceConfig {
    pub name: Spanned<DeviceName>,
    /// Hardware type (must be listed in `hardware_types` when that list is not empty).
    pub hardware_type: Option<HardwareType>,
    /// Processor architecture (defaults to the hardware type's).
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub environment: Option<EnvironmentName>,
    pub relay: Option<RelayAddr>,
    /// SUTAgent address `host:port`.
    pub sut: Option<SutAddr>,
    pub fastboot_serial: Option<String>,
    /// adb serial (USB serial or `host:port`); unset = the fastboot serial.
    pub adb_serial: Option<String>,
    pub comments: Option<String>,
    /// A registration may claim this device (no agent registered as it yet).
    pub allow_registration: Option<bool>,
    /// A registration from a new address moves the device at once (else held for a tech).
    pub follow_address: Option<bool>,
}

impl Config {
    /// Read and check a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and check configuration text (`path` is only used in messages).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and line.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check(path, text)?;
        Ok(config)
    }

    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, span.start),
            message,
        };
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                0..0,
                format!("server.public_url {url:?} must start with http:// or https://"),
            ));
        }
        if !(self.simulate.time_scale > 0.0 && self.simulate.time_scale <= 1.0) {
            return Err(invalid(
                0..0,
                "simulate.time_scale must be in (0, 1]".into(),
            ));
        }
        // Board settings, duplicates and name clashes; addresses are resolved against it below.
        let boards = crate::hw::BoardIndex::new(&self.relay_boards)
            .map_err(|e| invalid(0..0, format!("[[relay_boards]]: {e}")))?;
        if self.server.max_body_bytes < 1024 || self.server.max_connections == 0 {
            return Err(invalid(
                0..0,
                "server.max_body_bytes must be at least 1024 and server.max_connections at least 1"
                    .into(),
            ));
        }
        if self.server.reserved_connections >= self.server.max_connections {
            return Err(invalid(
                0..0,
                "server.reserved_connections must be less than server.max_connections".into(),
            ));
        }
        if self.server.max_connections_per_client == 0 || self.server.max_long_polls_per_client == 0
        {
            return Err(invalid(
                0..0,
                "server.max_connections_per_client and server.max_long_polls_per_client must be at least 1"
                    .into(),
            ));
        }
        if let Some(bad) = self.server.host_aliases.iter().find(|a| {
            a.is_empty()
                || a.len() > 253
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        }) {
            return Err(invalid(
                0..0,
                format!("server.host_aliases: {bad:?} is not a host name or address (no port)"),
            ));
        }
        if self.server.header_timeout_secs == 0 || self.server.body_timeout_secs == 0 {
            return Err(invalid(
                0..0,
                "server.header_timeout_secs and server.body_timeout_secs must be at least 1".into(),
            ));
        }
        if let Some(auth) = &self.auth
            && let Err((offset, message)) = auth.check()
        {
            return Err(invalid(offset..offset, message));
        }
        if self.server.registration_timeout_secs == 0 {
            return Err(invalid(
                0..0,
                "server.registration_timeout_secs must be at least 1".into(),
            ));
        }
        self.registration
            .check()
            .map_err(|message| invalid(0..0, message))?;
        if let Some(cluster) = &self.cluster {
            cluster.check().map_err(|message| invalid(0..0, message))?;
            // Every controller's keys are named after it: two called "localhost" would
            // overwrite each other's devices.
            if cluster.name.as_ref().unwrap_or(&self.server.name) == &ServerName::localhost() {
                return Err(invalid(
                    0..0,
                    "[cluster] needs this controller's unique name: set server.name (its FQDN) or cluster.name"
                        .into(),
                ));
            }
        }
        if let Some(src) = &self.inventory.source
            && (src.is_empty() || src.starts_with("https://"))
        {
            return Err(invalid(
                0..0,
                format!("inventory.source {src:?} must be a file path or an http:// URL"),
            ));
        }
        let mut seen = BTreeSet::new();
        for h in &self.hardware_types {
            if !seen.insert(h.name.get_ref().as_str()) {
                return Err(invalid(
                    h.name.span(),
                    format!("hardware type {} is listed twice", h.name.get_ref()),
                ));
            }
        }
        let types = seen;
        let mut seen = BTreeSet::new();
        for e in &self.environments {
            if !seen.insert(e.name.get_ref().as_str()) {
                return Err(invalid(
                    e.name.span(),
                    format!("environment {} is listed twice", e.name.get_ref()),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for i in &self.images {
            if !seen.insert(i.name.get_ref().as_str()) {
                return Err(invalid(
                    i.name.span(),
                    format!("image {} is listed twice", i.name.get_ref()),
                ));
            }
            for (n, s) in i.steps.iter().enumerate() {
                if let Err(e) = s.step() {
                    return Err(invalid(
                        i.name.span(),
                        format!("image {}: step {}: {e}", i.name.get_ref(), n + 1),
                    ));
                }
            }
            if i.agent.is_some_and(|a| a != Agent::Sut) && i.has_sut_agent {
                return Err(invalid(
                    i.name.span(),
                    format!(
                        "image {}: has_sut_agent = true contradicts agent = {:?}",
                        i.name.get_ref(),
                        i.agent().as_str()
                    ),
                ));
            }
            for k in &i.boot_config_keys {
                if crate::domain::names::check_name("boot config key", k).is_err() {
                    return Err(invalid(
                        i.name.span(),
                        format!(
                            "image {}: bad boot_config_keys entry {k:?}",
                            i.name.get_ref()
                        ),
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for d in &self.devices {
            let name = d.name.get_ref();
            if !seen.insert(name.as_str()) {
                return Err(invalid(
                    d.name.span(),
                    format!("device {name} is listed twice"),
                ));
            }
            if let Some(t) = &d.hardware_type
                && !types.is_empty()
                && !types.contains(t.as_str())
            {
                return Err(invalid(
                    d.name.span(),
                    format!("device {name}: hardware_type {t} is not in [[hardware_types]]"),
                ));
            }
            if let Some(addr) = &d.relay
                && !boards.is_empty()
                && let Err(e) = boards.check(addr)
            {
                return Err(invalid(
                    d.name.span(),
                    format!("device {name}: relay {:?}: {e}", addr.to_string()),
                ));
            }
        }
        Ok(())
    }

    /// Images as domain values.
    #[must_use]
    pub fn image_models(&self) -> Vec<Image> {
        self.images
            .iter()
            .map(|i| Image {
                name: i.name.get_ref().to_string(),
                description: i.description.clone(),
                boot_config_keys: i.boot_config_keys.clone(),
                can_reuse: i.can_reuse,
                hidden: i.hidden,
                agent: i.agent(),
                // `check` refused every step that does not convert.
                steps: i.steps.iter().filter_map(|s| s.step().ok()).collect(),
            })
            .collect()
    }

    /// Environments as domain values.
    #[must_use]
    pub fn environment_models(&self) -> Vec<Environment> {
        self.environments
            .iter()
            .map(|e| Environment {
                name: e.name.get_ref().to_string(),
                description: e.description.clone(),
            })
            .collect()
    }

    /// Hardware types as domain values.
    #[must_use]
    pub fn hardware_type_models(&self) -> Vec<HardwareTypeInfo> {
        self.hardware_types
            .iter()
            .map(|h| HardwareTypeInfo {
                name: h.name.get_ref().to_string(),
                processor: h.processor.clone(),
                description: h.description.clone(),
                boot_mode: h.boot_mode,
            })
            .collect()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn cluster_needs_a_controller_name() {
        let section = "[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
        let err = parse(section).expect_err("localhost").to_string();
        assert!(err.contains("unique name"), "{err}");
        let c = parse(&format!("[server]\nname = \"rack1.lab\"\n{section}")).expect("named");
        assert!(c.cluster.is_some_and(|c| c.name.is_none()));
        assert!(parse(&format!("{section}name = \"rack1\"\n")).is_ok());
        assert!(parse("").expect("default").cluster.is_none());
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = parse("").expect("empty config");
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.log.retention_days, 14);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_names_line() {
        let err = parse("[server]\n\nlisten = \"nowhere\"\n")
            .expect_err("bad addr")
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[[devices]]\nname = \"../etc\"\n")
            .expect_err("bad name")
            .to_string();
        assert!(err.contains("device name"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn duplicate_device_names_its_line() {
        let err = parse("[[devices]]\nname = \"a\"\n\n[[devices]]\nname = \"a\"\n")
            .expect_err("dup")
            .to_string();
        assert!(err.contains("test.toml:5"), "{err}");
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_hardware_type_is_refused() {
        let text = "[[hardware_types]]\nname = \"panda\"\n[[devices]]\nname = \"d1\"\nhardware_type = \"nexus\"\n";
        let err = parse(text).expect_err("unknown type").to_string();
        assert!(err.contains("nexus"), "{err}");
    }

    #[test]
    fn image_steps_cannot_name_paths() {
        let text = "[[images]]\nname = \"b2g\"\nsteps = [{ partition = \"boot\", file = \"../../etc/shadow\" }]\n";
        assert!(parse(text).is_err());
    }

    #[test]
    fn registration_and_inventory_keys() {
        let c = parse("[server]\nregistration_listen = \"0.0.0.0:28001\"\n[inventory]\nsource = \"/etc/mozpool/inventory.csv\"\ninterval_secs = 60\n")
            .expect("keys");
        assert_eq!(c.server.registration_listen.map(|a| a.port()), Some(28001));
        assert_eq!(c.inventory.interval_secs, 60);
        assert!(
            parse("")
                .expect("default")
                .server
                .registration_listen
                .is_none()
        );
        let err = parse("[inventory]\nsource = \"https://x\"\n")
            .expect_err("https")
            .to_string();
        assert!(err.contains("inventory.source"), "{err}");
        let err = parse("[inventory]\nsorce = \"x\"\n")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("sorce") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn relay_addresses_are_checked_against_their_board() {
        let boards = "[[relay_boards]]\nname = \"usb1\"\nkind = { type = \"proxr\", banks = 1, transport = { type = \"serial\", path = \"/dev/x\" } }\n\
            [[relay_boards]]\nname = \"ts1-a\"\nkind = { type = \"proxr\", transport = { type = \"tcp\", host = \"ts1\", port = 2101 } }\n\
            [[relay_boards]]\nname = \"ts1-b\"\nkind = { type = \"proxr\", transport = { type = \"tcp\", host = \"ts1\", port = 2102 } }\n";
        let device =
            |relay: &str| format!("{boards}[[devices]]\nname = \"d1\"\nrelay = \"{relay}\"\n");
        parse(&device("usb1:bank1:relay8")).expect("bank 1 of a 1-bank board");
        parse(&device("ts1:2102:bank4:relay1")).expect("host:port");
        let err = parse(&device("usb1:bank2:relay1"))
            .expect_err("a 1-bank board has no bank 2")
            .to_string();
        assert!(
            err.contains("device d1") && err.contains("banks 1..=1"),
            "{err}"
        );
        let err = parse(&device("ts1:bank1:relay1"))
            .expect_err("ambiguous")
            .to_string();
        assert!(
            err.contains("ts1-a (ts1:2101)") && err.contains("ts1-b (ts1:2102)"),
            "{err}"
        );
        let err = parse(&format!(
            "{boards}[[relay_boards]]\nname = \"ts1\"\nkind = {{ type = \"gpio\", active_low = true, pins = [26] }}\n"
        ))
        .expect_err("a board named like a host")
        .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        let err = parse(
            "[[relay_boards]]\nname = \"hat\"\nkind = { type = \"gpio\", active_low = true }\n",
        )
        .expect_err("no pins")
        .to_string();
        assert!(err.contains("list the BCM pins"), "{err}");
    }

    #[test]
    fn host_port() {
        assert!(crate::domain::names::valid_host_port("10.0.0.5:20701"));
        assert!(crate::domain::names::valid_host_port("panda-1.lab:20701"));
        assert!(!crate::domain::names::valid_host_port("panda-1"));
        assert!(!crate::domain::names::valid_host_port(":20701"));
        assert!(!crate::domain::names::valid_host_port("a:0"));
        assert!(!crate::domain::names::valid_host_port("a b:1"));
    }
}
