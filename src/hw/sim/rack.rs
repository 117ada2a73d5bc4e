//! `SimRack`: N simulated devices wired like a real rack: ceil(N/32) ProXR boards on
//! ptys (bank 1..=4 × relay 1..=8, normally-closed wiring), one `SimSutAgent` per device,
//! a rack directory for the fastboot stand-in and a `fastboot` wrapper script. It hands
//! back the config pieces the service loads (board configs, per-device relay address,
//! SUTAgent address, fastboot serial).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::device::{BootHook, SimDevice, SimTimings};
use super::proxr::{SimProxrBoard, SimProxrConfig};
use crate::domain::names::{BoardName, DeviceName};
use crate::hw::relay::{BoardConfig, BoardKind, Contact, Framing, RelayAddr, Transport};

/// Relays per ProXR board (4 banks × 8 relays).
pub const RELAYS_PER_BOARD: usize = 32;

/// One device of the rack and how the service reaches it.
#[derive(Debug, Clone)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct SimRackDevice {
    /// Device name (`sim-0001`).
    pub name: DeviceName,
    /// Its power relay.
    pub relay: RelayAddr,
    /// Its SUTAgent command port.
    pub sut_addr: SocketAddr,
    pub fastboot_serial: String,
    /// The simulated device itself (faults, inspection).
    pub device: SimDevice,
}

/// A running simulated rack. Dropping it stops the boards.
#[derive(Debug)]
pub struct SimRack {
    /// The ProXR board simulators (keep them alive).
    pub boards: Vec<SimProxrBoard>,
    /// Board configs to hand to `RelayBoards::start` (timings may be adjusted).
    pub board_configs: Vec<BoardConfig>,
    /// The devices, in order.
    pub devices: Vec<SimRackDevice>,
    /// Directory the fastboot stand-in resolves serials in.
    pub rack_dir: PathBuf,
    /// The `fastboot` wrapper script to use as `Flasher::fastboot_path`.
    pub fastboot_path: PathBuf,
}

/// Single-quote a string for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl SimRack {
    /// Build a rack of `n` devices under `dir` (created if missing). `mozpool_exe` is the
    /// binary providing the hidden `sim-fastboot` subcommand. All devices start powered
    /// (relays released, NC wiring).
    ///
    /// # Errors
    /// pty, socket or file errors.
    pub fn start(
        n: usize,
        timings: SimTimings,
        mozpool_exe: &Path,
        dir: &Path,
    ) -> io::Result<Self> {
        let rack_dir = dir.join("rack");
        std::fs::create_dir_all(&rack_dir)?;
        let fastboot_path = dir.join("fastboot");
        let script = format!(
            "#!/bin/sh\nexec {} sim-fastboot --rack {} \"$@\"\n",
            sh_quote(&mozpool_exe.to_string_lossy()),
            sh_quote(&rack_dir.to_string_lossy())
        );
        let tmp = dir.join(".fastboot.tmp");
        std::fs::write(&tmp, script)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &fastboot_path)?;

        let mut devices = Vec::with_capacity(n);
        for i in 1..=n {
            let serial = format!("sim{i:04}");
            let device = SimDevice::start(&serial, "sim-panda", timings, Some(&rack_dir))?;
            devices.push(device);
        }
        let mut boards = Vec::new();
        let mut board_configs = Vec::new();
        let mut rack_devices = Vec::with_capacity(n);
        for (b, chunk) in devices.chunks(RELAYS_PER_BOARD).enumerate() {
            let sim = SimProxrBoard::on_pty(SimProxrConfig::default())?;
            let name: BoardName = format!("sim-relay-{}", b + 1).parse().map_err(bad)?;
            let path = sim
                .pty_path()
                .ok_or_else(|| io::Error::other("pty without path"))?
                .to_path_buf();
            let wired: Vec<SimDevice> = chunk.to_vec();
            sim.set_hook(Arc::new(move |bank, relay, energised| {
                let idx = usize::from(bank - 1) * 8 + usize::from(relay - 1);
                if let Some(d) = wired.get(idx) {
                    d.set_power(Contact::NormallyClosed.device_on(energised));
                }
            }));
            for (k, d) in chunk.iter().enumerate() {
                let bank = u8::try_from(k / 8 + 1).map_err(bad)?;
                let relay = u8::try_from(k % 8 + 1).map_err(bad)?;
                let idx = b * RELAYS_PER_BOARD + k + 1;
                rack_devices.push(SimRackDevice {
                    name: format!("sim-{idx:04}").parse().map_err(bad)?,
                    relay: RelayAddr::relay(name.clone(), bank, relay).map_err(bad)?,
                    sut_addr: d.sut_addr(),
                    fastboot_serial: d.serial().to_owned(),
                    device: d.clone(),
                });
                d.set_power(true);
            }
            board_configs.push(BoardConfig::new(
                name,
                BoardKind::Proxr {
                    transport: Transport::Serial {
                        path,
                        baud: 115_200,
                    },
                    framing: Framing::Raw,
                    banks: 4,
                },
            ));
            boards.push(sim);
        }
        Ok(SimRack {
            boards,
            board_configs,
            devices: rack_devices,
            rack_dir,
            fastboot_path,
        })
    }

    /// Install a boot hook on every device (self-registration is wired here later).
    pub fn set_on_boot(&self, hook: BootHook) {
        for d in &self.devices {
            d.device.set_on_boot(hook.clone());
        }
    }
}
