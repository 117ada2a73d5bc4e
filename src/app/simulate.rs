//! `mozpool serve --simulate N`: a virtual rack wired through the real drivers, so a
//! newcomer sees a working pool on any laptop and tests run the real code paths.
//!
//! The rack ([`SimRack`]) serves ProXR relay boards on pseudo-terminals, one SUTAgent per
//! device on loopback and a `fastboot` stand-in script; this module starts it and writes the
//! matching configuration: boards, devices and their wiring, a hardware type, an
//! environment, an image with files in the image store, and timeouts scaled to a rack whose
//! devices boot in seconds.

use std::path::Path;

use crate::app::config::{
    Config, DeviceConfig, EnvironmentConfig, FlashStepConfig, HardwareTypeConfig, ImageConfig,
};
use crate::hw::sim::{SimRack, SimTimings};

/// Image every simulated device can be flashed with.
pub const SIM_IMAGE: &str = "android";

/// The same files as an image without an agent (health by reachability).
pub const SIM_BARE_IMAGE: &str = "android-bare";

/// The phones' image: checked over adb, its slot `a` made active.
pub const SIM_ADB_IMAGE: &str = "android-adb";

/// Start a simulated rack of `n` devices under `dir` and add it to `config`. `mozpool_exe`
/// is the binary providing the hidden `sim-fastboot` subcommand.
///
/// # Errors
/// pty, socket or file errors.
pub fn start_rack(
    config: &mut Config,
    n: u32,
    mozpool_exe: &Path,
    dir: &Path,
) -> std::io::Result<SimRack> {
    let sim = &config.simulate;
    let timings = SimTimings {
        bootloader_window: std::time::Duration::from_millis(sim.bootloader_window_ms),
        boot_time: std::time::Duration::from_millis(sim.boot_time_ms),
    };
    let phones = usize::try_from(sim.phones.min(n)).unwrap_or(0);
    raise_fd_limit(usize::try_from(n).unwrap_or(usize::MAX), phones)?;
    let building = std::time::Instant::now();
    // Phones are flashed by Debian's fastboot over its TCP transport (the one `[hardware]`
    // names, before the rack's wrapper takes its place) and checked with its adb.
    let real_fastboot = config.hardware.fastboot.clone();
    if phones > 0 {
        for (tool, path) in [("fastboot", &real_fastboot), ("adb", &config.hardware.adb)] {
            if !path.is_file() {
                return Err(std::io::Error::other(format!(
                    "[simulate] phones = {phones} needs Debian's {tool} at {} (apt install {tool})",
                    path.display()
                )));
            }
        }
    }
    let rack = SimRack::start_with(
        usize::try_from(n).unwrap_or(0),
        phones,
        timings,
        mozpool_exe,
        &dir.join("sim"),
        real_fastboot.is_file().then_some(real_fastboot.as_path()),
    )?;
    tracing::info!(
        devices = n,
        boards = rack.boards.len(),
        took_ms = building.elapsed().as_millis(),
        "simulated rack built"
    );
    for d in &rack.devices {
        if let Some(f) = sim.faults.get(d.name.as_str()) {
            d.device.set_faults(f.clone());
        }
    }
    let scale = sim.time_scale;
    config.lifeguard = config.lifeguard.scaled(scale);
    config.requests = config.requests.scaled(scale);
    config.queue = config.queue.scaled(scale);
    // Serial boards on pseudo-terminals: no cool-down (only single-connection TCP modules rest).
    config
        .relay_boards
        .extend(rack.board_configs.iter().cloned());
    // A board runs one relay operation at a time, but waits a power cycle's off time outside
    // its queue: a cycle may wait for two operations (off, on) of every other device on its
    // board, plus its own off time. Keep the power states' timeouts above that worst case
    // (the original chose 60 s for 14 devices x ~3 s, when the off time held the board).
    let off_time = 200;
    let per_op = 2 * 100;
    let per_board = u64::from(n.min(32));
    let floor = off_time + per_board * per_op + 1000;
    let l = &mut config.lifeguard;
    l.pc_power_cycling_ms = l.pc_power_cycling_ms.max(floor);
    l.sut_verify_power_cycle_ms = l.sut_verify_power_cycle_ms.max(floor);
    l.powering_off_ms = l.powering_off_ms.max(floor);
    l.flashing_ms = l.flashing_ms.max(floor + 30_000);
    // SUTAgent and reachability checks get at least a second per attempt, so a busy laptop
    // (or CI machine) does not turn slow answers into failures.
    l.sut_verifying_ms = l.sut_verifying_ms.max(1500);
    l.sut_sdcard_verifying_ms = l.sut_sdcard_verifying_ms.max(1500);
    l.pc_sut_rebooting_ms = l.pc_sut_rebooting_ms.max(1500);
    l.pc_pinging_ms = l.pc_pinging_ms.max(250);
    config.hardware.fastboot.clone_from(&rack.fastboot_path);
    // The rack's own adb server: never a person's (5037) nor another rack's.
    config.hardware.adb_server_port = adb_server_port()?;
    config.hardware.adb_timeout_ms = 10_000;
    config.hardware.sut_timeout_ms = 2000;
    config.hardware.ping_timeout_ms = 1000;
    config.hardware.power_off_time_ms = off_time;
    config.hardware.flash_appear_ms = 10_000;
    config.hardware.flash_step_ms = 30_000;
    config.hardware.flash_reboot_ms = 10_000;
    let store = config
        .hardware
        .image_store
        .clone()
        .unwrap_or_else(|| config.server.data_dir.join("images"));
    for image in [SIM_IMAGE, SIM_BARE_IMAGE, SIM_ADB_IMAGE] {
        let image_dir = store.join(image);
        std::fs::create_dir_all(&image_dir)?;
        for (file, bytes) in [("boot.img", 4096usize), ("system.img", 65_536)] {
            let path = image_dir.join(file);
            if !path.exists() {
                std::fs::write(&path, vec![0x5a; bytes])?;
            }
        }
    }
    add_inventory(config, &rack);
    Ok(rack)
}

fn add_inventory(config: &mut Config, rack: &SimRack) {
    if let Some(n) = name("sim-panda") {
        config.hardware_types.push(HardwareTypeConfig {
            name: n,
            processor: Some("armv7".into()),
            description: Some("simulated PandaBoard".into()),
            boot_mode: crate::domain::model::BootMode::BootloaderWindow,
        });
    }
    if let Some(n) = name("sim-phone") {
        config.hardware_types.push(HardwareTypeConfig {
            name: n,
            processor: Some("arm64".into()),
            description: Some("simulated phone: adbd, A/B slots, fastboot over TCP".into()),
            boot_mode: crate::domain::model::BootMode::Adb,
        });
    }
    if let Some(n) = name("sim") {
        config.environments.push(EnvironmentConfig {
            name: n,
            description: Some("the simulated rack".into()),
        });
    }
    if let Some(n) = name(SIM_IMAGE) {
        config.images.push(ImageConfig {
            name: n,
            description: Some("Android with SUTAgent (simulated files)".into()),
            boot_config_keys: Vec::new(),
            can_reuse: true,
            hidden: false,
            has_sut_agent: true,
            agent: None,
            steps: sim_steps(),
        });
    }
    if let Some(n) = name(SIM_BARE_IMAGE) {
        config.images.push(ImageConfig {
            name: n,
            description: Some("a build without any agent: checked by reachability".into()),
            boot_config_keys: Vec::new(),
            can_reuse: true,
            hidden: false,
            has_sut_agent: false,
            agent: Some(crate::domain::model::Agent::None),
            steps: sim_steps(),
        });
    }
    if let Some(n) = name(SIM_ADB_IMAGE) {
        let mut steps = sim_steps();
        steps.push(FlashStepConfig {
            action: Some("set_active".into()),
            slot: Some("a".into()),
            ..FlashStepConfig::default()
        });
        config.images.push(ImageConfig {
            name: n,
            description: Some("Android checked over adb (simulated files)".into()),
            boot_config_keys: Vec::new(),
            can_reuse: true,
            hidden: false,
            has_sut_agent: false,
            agent: Some(crate::domain::model::Agent::Adb),
            steps,
        });
    }
    // The simulated devices register from loopback.
    if config.registration.allow.is_empty() {
        config.registration.allow =
            crate::inventory::registration::trust::Cidr::loopback().to_vec();
    }
    for d in &rack.devices {
        let Some(dn) = name(d.name.as_str()) else {
            continue;
        };
        let kind = if d.adb_serial.is_some() {
            "sim-phone"
        } else {
            "sim-panda"
        };
        config.devices.push(DeviceConfig {
            name: dn,
            hardware_type: kind.parse().ok(),
            processor: None,
            pool: Some("mobile".into()),
            os_version: Some("4.0.4".into()),
            environment: "sim".parse().ok(),
            relay: Some(d.relay.clone()),
            sut: d.sut_addr.to_string().parse().ok(),
            fastboot_serial: Some(d.fastboot_serial.clone()),
            adb_serial: d.adb_serial.clone(),
            comments: None,
            // Simulated devices register when they boot, as SUTAgent does.
            allow_registration: Some(true),
            follow_address: None,
        });
    }
}

/// File descriptors a rack of `n` devices (`phones` of them phones) needs at most, about:
/// a listener per SUTAgent and two per phone (adbd, fastboot), a pty and the driver's end of
/// it per relay board, room for half the devices to be talking to the service at once (two
/// descriptors per connection, both ends in this process), and the service's own.
#[must_use]
pub fn fds_needed(n: usize, phones: usize) -> u64 {
    let listeners = n + phones;
    let boards = 3 * n.div_ceil(crate::hw::sim::rack::RELAYS_PER_BOARD);
    u64::try_from(listeners + boards + n / 2 + 256).unwrap_or(u64::MAX)
}

/// Raise the soft limit of open files to the hard limit (a rack of thousands of devices
/// needs tens of thousands of sockets, the usual soft limit is 1024), and above the hard
/// limit when the rack needs more and the process may (root, `CAP_SYS_RESOURCE`).
///
/// # Errors
/// When the limit stays below [`fds_needed`]: a clear message instead of sockets failing
/// one by one later.
pub fn raise_fd_limit(n: usize, phones: usize) -> std::io::Result<()> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let need = fds_needed(n, phones);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    // The kernel refuses more than fs.nr_open (1,048,576 by default) even when unlimited.
    let hard_cap = if hard == RLIM_INFINITY { 1 << 20 } else { hard };
    let (mut new_soft, mut new_hard) = (soft.max(hard_cap), hard);
    if hard_cap < need && setrlimit(Resource::RLIMIT_NOFILE, need, need).is_ok() {
        (new_soft, new_hard) = (need, need);
    } else if new_soft > soft {
        setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard).map_err(std::io::Error::from)?;
    }
    if new_soft < need {
        return Err(std::io::Error::other(format!(
            "a simulated rack of {n} devices needs about {need} open files, but this process may open only {new_soft} (hard limit {hard}): raise it (`ulimit -Hn`, or LimitNOFILE= in a unit) or simulate fewer devices"
        )));
    }
    if (new_soft, new_hard) != (soft, hard) {
        tracing::info!(
            from = soft,
            to = new_soft,
            hard = new_hard,
            needed = need,
            "raised the open files limit for the simulated rack"
        );
    }
    Ok(())
}

/// A TCP port free on loopback now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A port for the rack's adb server, which binds it itself when first used (seconds later):
/// taken from below the kernel's ephemeral range, so that no socket bound to port 0 in the
/// meantime (a test's HTTP server, say) can be given it, and never one this process handed
/// out already.
fn adb_server_port() -> std::io::Result<u16> {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_100));
    let mut taken = crate::domain::lock(&TAKEN);
    for _ in 0..200 {
        let port = rand::random_range(low..high);
        if taken.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.push(port);
        return Ok(port);
    }
    // Nothing free down there: any free port, as before.
    free_port()
}

/// The simulated images' recipe: the files `start_rack` writes.
fn sim_steps() -> Vec<FlashStepConfig> {
    [("boot", "boot.img"), ("system", "system.img")]
        .into_iter()
        .map(|(partition, file)| FlashStepConfig {
            partition: Some(partition.into()),
            file: Some(file.into()),
            ..FlashStepConfig::default()
        })
        .collect()
}

/// A built-in name as a config value (names here are literals known to be valid).
fn name<T: std::str::FromStr>(s: &str) -> Option<toml::Spanned<T>> {
    s.parse().ok().map(|v| toml::Spanned::new(0..0, v))
}
