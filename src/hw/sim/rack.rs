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

use super::device::{BootHook, SimDevice, SimSpec, SimTimings, write_rack_index};
use super::proxr::{SimProxrBoard, SimProxrConfig};
use crate::domain::names::{BoardName, DeviceName};
use crate::hw::relay::{BoardConfig, BoardKind, Contact, Framing, RelayAddr, Transport};

/// Relays per simulated ProXR board: the largest ProXR (32 banks × 8 relays), so that a
/// rack of 10,000 devices needs 40 boards (and 40 relay driver threads), not 313. A board
/// has as many banks as its devices need, at least the 4 of MozPool's boards.
pub const RELAYS_PER_BOARD: usize = 256;

/// One device of the rack and how the service reaches it.
#[derive(Debug, Clone)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct SimRackDevice {
    /// Device name (`sim-0001`).
    pub name: DeviceName,
    /// Its power relay.
    pub relay: RelayAddr,
    /// Its SUTAgent command port (a phone's: the address its host answers on).
    pub sut_addr: SocketAddr,
    /// The stand-in's serial for a panda, `tcp:127.0.0.1:PORT` for a phone.
    pub fastboot_serial: String,
    /// A phone's adbd (`host:port`, for `adb connect`); `None` for a panda.
    pub adb_serial: Option<String>,
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
        SimRack::start_with(n, 0, timings, mozpool_exe, dir, None)
    }

    /// [`SimRack::start`] where the last `phones` of the `n` devices are phones: adbd
    /// instead of SUTAgent, A/B slots, fastboot over TCP. The wrapper script hands `tcp:`
    /// serials to `real_fastboot` (Debian's), which phones need; the rest go to the
    /// stand-in. Phones need a tokio runtime.
    ///
    /// # Errors
    /// pty, socket or file errors; phones without `real_fastboot`.
    pub fn start_with(
        n: usize,
        phones: usize,
        timings: SimTimings,
        mozpool_exe: &Path,
        dir: &Path,
        real_fastboot: Option<&Path>,
    ) -> io::Result<Self> {
        if phones > 0 && real_fastboot.is_none() {
            return Err(io::Error::other(
                "simulated phones are flashed over fastboot's TCP transport: they need Debian's fastboot",
            ));
        }
        let rack_dir = dir.join("rack");
        std::fs::create_dir_all(&rack_dir)?;
        let fastboot_path = dir.join("fastboot");
        // `Flasher` always passes `-s SERIAL` first, so $2 is the serial.
        let tcp = real_fastboot.map_or_else(String::new, |f| {
            format!(
                "case \"$2\" in tcp:*) exec {} \"$@\";; esac\n",
                sh_quote(&f.to_string_lossy())
            )
        });
        let script = format!(
            "#!/bin/sh\n{tcp}exec {} sim-fastboot --rack {} \"$@\"\n",
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
            let spec = if i + phones > n {
                SimSpec {
                    product: "sim-phone".into(),
                    adbd: true,
                    fastboot_tcp: true,
                    slots: true,
                }
            } else {
                SimSpec::panda("sim-panda")
            };
            let device = SimDevice::start_with(&serial, spec, timings)?;
            devices.push(device);
        }
        let mut boards = Vec::new();
        let mut board_configs = Vec::new();
        let mut rack_devices = Vec::with_capacity(n);
        write_rack_index(&rack_dir, &devices)?;
        for (b, chunk) in devices.chunks(RELAYS_PER_BOARD).enumerate() {
            let banks = u8::try_from(chunk.len().div_ceil(8).max(4)).map_err(bad)?;
            let sim = SimProxrBoard::on_pty(SimProxrConfig::default().with_banks(banks))?;
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
                    fastboot_serial: d
                        .fastboot_tcp_serial()
                        .unwrap_or_else(|| d.serial().to_owned()),
                    adb_serial: d.adb_addr().map(|a| a.to_string()),
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
                    banks,
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

    /// Reachability as the rack's devices would answer it.
    #[must_use]
    pub fn prober(&self) -> SimProber {
        SimProber {
            by_addr: Arc::new(
                self.devices
                    .iter()
                    .map(|d| (d.sut_addr, d.device.clone()))
                    .chain(
                        self.devices
                            .iter()
                            .filter_map(|d| d.device.adb_addr().map(|a| (a, d.device.clone()))),
                    )
                    .collect(),
            ),
        }
    }

    /// Install a boot hook on every device (self-registration is wired here later).
    pub fn set_on_boot(&self, hook: BootHook) {
        for d in &self.devices {
            d.device.set_on_boot(hook.clone());
        }
    }
}

/// The rack's answer to reachability probes ([`crate::hw::ping::Prober`]): a device's
/// address answers while its OS runs and stays silent (until the probe's timeout) while it
/// is off or booting, as a real host would. Any other address gets the real probe.
#[derive(Debug, Clone)]
pub struct SimProber {
    by_addr: Arc<std::collections::HashMap<SocketAddr, SimDevice>>,
}

impl crate::hw::ping::Prober for SimProber {
    fn probe(
        &self,
        addr: SocketAddr,
        timeout: std::time::Duration,
    ) -> crate::hw::ping::ProbeFuture<'_> {
        let device = self.by_addr.get(&addr).cloned();
        Box::pin(async move {
            let Some(device) = device else {
                return crate::hw::ping::probe(addr, timeout).await;
            };
            if device.phase() == super::SimPhase::Os {
                Ok(crate::hw::ping::Reachability::Refused)
            } else {
                tokio::time::sleep(timeout).await;
                Err(crate::hw::Error::Timeout {
                    op: format!("probe {addr}"),
                    after: timeout,
                })
            }
        })
    }
}
