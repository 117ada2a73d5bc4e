//! `[hardware]`: the hardware drivers' settings (fastboot, image files, time limits of each
//! kind of exchange), read from the configuration file by the app layer.

use std::path::PathBuf;

use serde::Deserialize;

/// `[hardware]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    /// The `fastboot` executable.
    pub fastboot: PathBuf,
    /// The `adb` executable.
    pub adb: PathBuf,
    /// Port of the service's own adb server (one above adb's default 5037, so a person's
    /// adb on the same box is never shared, restarted or killed by the service).
    pub adb_server_port: u16,
    /// Time limit of one adb exchange (check, storage check, reboot), in ms.
    pub adb_timeout_ms: u64,
    /// Image store: `<image_store>/<image>/<file>`. Default `<data_dir>/images`.
    pub image_store: Option<PathBuf>,
    /// Size limit of the download cache for build URLs, in MiB.
    pub download_cache_mib: u64,
    /// Largest single downloaded file, in MiB.
    pub max_download_mib: u64,
    /// Time limit for downloading one image's files, in ms.
    pub download_timeout_ms: u64,
    /// Time limit of one SUTAgent exchange (verify, reboot, storage check), in ms.
    pub sut_timeout_ms: u64,
    /// Time limit of one reachability probe, in ms.
    pub ping_timeout_ms: u64,
    /// How long a power cycle keeps the device unpowered, in ms.
    pub power_off_time_ms: u64,
    /// How long fastboot may wait for the device to appear in its bootloader, in ms.
    pub flash_appear_ms: u64,
    /// Time limit of flashing one partition, in ms.
    pub flash_step_ms: u64,
    /// Time limit of `fastboot reboot`, in ms.
    pub flash_reboot_ms: u64,
    /// Most health checks running at once across the rack.
    pub health_concurrency: usize,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig {
            fastboot: PathBuf::from("/usr/bin/fastboot"),
            adb: PathBuf::from("/usr/bin/adb"),
            adb_server_port: 5038,
            adb_timeout_ms: 30_000,
            image_store: None,
            download_cache_mib: 4096,
            max_download_mib: 2048,
            download_timeout_ms: 30 * 60 * 1000,
            sut_timeout_ms: 30_000,
            ping_timeout_ms: 10_000,
            power_off_time_ms: 1000,
            flash_appear_ms: 60_000,
            flash_step_ms: 300_000,
            flash_reboot_ms: 60_000,
            health_concurrency: 64,
        }
    }
}
