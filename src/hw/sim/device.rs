//! `SimDevice`: a simulated phone/board. Its power input follows a relay hook; on power-on
//! it sits in its bootloader for a window (fastboot can catch it there and keep it until
//! `fastboot reboot`), then boots the OS after `boot_time`; its `SimSutAgent` answers only
//! while the OS runs. Flashed images are recorded per partition. A loopback control port
//! (line protocol, one request per connection) lets the `fastboot` stand-in drive it.
//!
//! Control protocol: `state` → `off|bootloader|booting|os`; `catch` → `ok` (now held in
//! the bootloader) | `wait` | `hang`; `getvar NAME` → `ok VALUE` | `err MSG`;
//! `flash PART SHA256` → `ok` | `err MSG`; `reboot` → `ok` | `err MSG`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sut::{SimSutAgent, SimSutFaults};
use super::{lock, runtime};

/// What the simulated device's OS runs for the controller to talk to, and how the device is
/// wired for fastboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSpec {
    /// fastboot `product`.
    pub product: String,
    /// The OS runs adbd (a phone) rather than SUTAgent (a PandaBoard of the B2G era).
    pub adbd: bool,
    /// Serve fastboot's TCP transport on loopback (for Debian's real `fastboot -s tcp:…`),
    /// besides the control port the stand-in uses. Needs a tokio runtime.
    pub fastboot_tcp: bool,
    /// A/B slots (`boot_a`, `boot_b`, …; `set_active` switches them).
    pub slots: bool,
}

impl SimSpec {
    /// A PandaBoard: SUTAgent, no slots, fastboot through the stand-in only.
    #[must_use]
    pub fn panda(product: &str) -> Self {
        SimSpec {
            product: product.to_owned(),
            adbd: false,
            fastboot_tcp: false,
            slots: false,
        }
    }
}

/// Device fault knobs, settable at runtime and from config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimFaults {
    /// Never finishes booting the OS (SUTAgent never comes up).
    pub does_not_boot: bool,
    /// SUTAgent serves a connection only with this probability.
    pub sut_flaky: Option<f64>,
    /// fastboot catches the device and then hangs forever.
    pub fastboot_hangs: bool,
    /// SUTAgent answers garbage.
    pub sut_garbage: bool,
    /// Every reboot ends in fastboot: the bootloader never hands over to the OS.
    pub stuck_in_fastboot: bool,
    /// adbd refuses the controller's key (`adb` says "unauthorized").
    pub adb_unauthorized: bool,
    /// The OS boots but its storage is read-only (writes fail).
    pub storage_read_only: bool,
}

/// Boot timings (scale them down in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimTimings {
    /// How long the bootloader waits for fastboot after power-on, in ms.
    #[serde(with = "crate::hw::millis", rename = "bootloader_window_ms")]
    pub bootloader_window: Duration,
    /// OS boot time after the bootloader, in ms.
    #[serde(with = "crate::hw::millis", rename = "boot_time_ms")]
    pub boot_time: Duration,
}

impl Default for SimTimings {
    fn default() -> Self {
        SimTimings {
            bootloader_window: Duration::from_secs(3),
            boot_time: Duration::from_secs(5),
        }
    }
}

/// Where the device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimPhase {
    /// No power.
    Off,
    /// In the bootloader (fastboot can talk to it).
    Bootloader,
    /// Booting the OS.
    Booting,
    /// OS running, SUTAgent (or adbd) up.
    Os,
    /// Userspace fastboot (fastbootd), reached by `fastboot reboot fastboot`.
    Fastbootd,
}

impl SimPhase {
    fn name(self) -> &'static str {
        match self {
            SimPhase::Off => "off",
            SimPhase::Bootloader => "bootloader",
            SimPhase::Booting => "booting",
            SimPhase::Os => "os",
            SimPhase::Fastbootd => "fastbootd",
        }
    }
}

/// Called with (serial, SUTAgent address) every time the OS finishes booting.
pub type BootHook = Arc<dyn Fn(&str, SocketAddr) + Send + Sync>;

/// Partitions a simulated device has unless configured otherwise.
pub const DEFAULT_PARTITIONS: [&str; 5] = ["boot", "system", "userdata", "recovery", "cache"];

struct State {
    powered: bool,
    phase: SimPhase,
    until: Option<Instant>,
    caught: bool,
    faults: SimFaults,
    timings: SimTimings,
    flashed: BTreeMap<String, String>,
    boots: u64,
    partitions: Vec<String>,
    /// Active slot of an A/B device.
    slot: Option<char>,
    /// Files adbd's shell wrote (under `/data/local/tmp`).
    files: BTreeMap<String, Vec<u8>>,
    on_boot: Option<BootHook>,
}

struct Inner {
    serial: String,
    spec: SimSpec,
    sut: SimSutAgent,
    control: ControlPort,
    /// fastboot's TCP transport, when the spec asks for it (dropped with the device).
    fastboot: Mutex<Option<super::fastboot_tcp::SimFastbootTcp>>,
    fastboot_addr: Option<SocketAddr>,
    /// adbd on its own loopback address, for a device whose OS runs it.
    adbd: Mutex<Option<super::adbd::SimAdbd>>,
    adbd_addr: Option<SocketAddr>,
    state: Mutex<State>,
    /// Wakes the phase task when power, a reboot or the faults change its deadline.
    wake: Arc<Notify>,
    /// Ends the phase task when the device goes.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(hub) = hub() {
            lock(&hub.devices).remove(&self.control.id);
        }
    }
}

/// Handle to a simulated device (cheap clone). Its tasks stop once every handle is gone.
#[derive(Clone)]
pub struct SimDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("serial", &self.inner.serial)
            .field("phase", &self.phase())
            .finish()
    }
}

impl SimDevice {
    /// Start an unpowered device with its control port and SUTAgent on loopback. Its
    /// [`SimDevice::control_addr`] is how the fastboot stand-in reaches it (the rack writes
    /// them all into its directory's index, [`write_rack_index`]).
    ///
    /// # Errors
    /// Socket errors.
    pub fn start(serial: &str, product: &str, timings: SimTimings) -> io::Result<Self> {
        SimDevice::start_with(serial, SimSpec::panda(product), timings)
    }

    /// [`SimDevice::start`] for any kind of device.
    ///
    /// # Errors
    /// Socket or file errors; fastboot over TCP outside a tokio runtime.
    pub fn start_with(serial: &str, spec: SimSpec, timings: SimTimings) -> io::Result<Self> {
        crate::domain::names::check_name("serial", serial)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let sut = SimSutAgent::start(false, &format!("sim:{serial}"))?;
        let hub = hub()?;
        let control = ControlPort {
            addr: hub.addr,
            id: hub.next.fetch_add(1, Ordering::Relaxed),
        };
        let (fastboot_listener, fastboot_addr) = if spec.fastboot_tcp {
            let (l, a) = tokio_listener(std::net::Ipv4Addr::LOCALHOST, "fastboot over TCP")?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        // adbd gets its own address: its port is free while the device is down, and on a
        // shared address another simulator could take it meanwhile.
        let (adbd_listener, adbd_addr) = if spec.adbd {
            let (l, a) = tokio_listener(super::sut::own_loopback_ip(), "a simulated adbd")?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let slot = spec.slots.then_some('a');
        let inner = Arc::new(Inner {
            serial: serial.to_owned(),
            spec,
            sut,
            control,
            fastboot: Mutex::new(None),
            fastboot_addr,
            adbd: Mutex::new(None),
            adbd_addr,
            state: Mutex::new(State {
                powered: false,
                phase: SimPhase::Off,
                until: None,
                caught: false,
                faults: SimFaults::default(),
                timings,
                flashed: BTreeMap::new(),
                boots: 0,
                partitions: DEFAULT_PARTITIONS.iter().map(|s| (*s).to_owned()).collect(),
                slot,
                files: BTreeMap::new(),
                on_boot: None,
            }),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        });
        // The device's servers live on the simulators' runtime, like its clock.
        let _guard = runtime::handle()?.enter();
        if let Some(l) = fastboot_listener {
            let target = Arc::new(FastbootSide(Arc::downgrade(&inner)));
            let server = super::fastboot_tcp::SimFastbootTcp::serve_on(
                l,
                target,
                super::fastboot_tcp::ServeOptions::default(),
            )?;
            *lock(&inner.fastboot) = Some(server);
        }
        if let Some(l) = adbd_listener {
            let target = Arc::new(AdbSide(Arc::downgrade(&inner)));
            let server =
                super::adbd::SimAdbd::spawn(l, target, super::adbd::AdbdConfig::default())?;
            *lock(&inner.adbd) = Some(server);
        }
        let weak = Arc::downgrade(&inner);
        inner.sut.set_on_reboot(Arc::new(move || {
            if let Some(i) = weak.upgrade() {
                SimDevice { inner: i }.reboot();
            }
        }));
        runtime::handle()?.spawn(phase_task(
            Arc::downgrade(&inner),
            inner.wake.clone(),
            inner.stop.clone(),
        ));
        lock(&hub.devices).insert(control.id, Arc::downgrade(&inner));
        Ok(SimDevice { inner })
    }

    /// Its fastboot serial.
    #[must_use]
    pub fn serial(&self) -> &str {
        &self.inner.serial
    }

    /// Its SUTAgent command port.
    #[must_use]
    pub fn sut_addr(&self) -> SocketAddr {
        self.inner.sut.addr()
    }

    /// Its fastboot serial for Debian's real `fastboot` over TCP (`tcp:127.0.0.1:PORT`), when
    /// it serves that transport.
    #[must_use]
    pub fn fastboot_tcp_serial(&self) -> Option<String> {
        self.inner.fastboot_addr.map(|a| format!("tcp:{a}"))
    }

    /// adbd's address (`adb connect` it), when its OS runs adbd.
    #[must_use]
    pub fn adb_addr(&self) -> Option<SocketAddr> {
        self.inner.adbd_addr
    }

    /// What kind of device it is.
    #[must_use]
    pub fn spec(&self) -> &SimSpec {
        &self.inner.spec
    }

    /// Its control port (what the rack directory file contains).
    #[must_use]
    pub fn control_addr(&self) -> ControlPort {
        self.inner.control
    }

    /// Current phase.
    #[must_use]
    pub fn phase(&self) -> SimPhase {
        lock(&self.inner.state).phase
    }

    /// Whether the power input is on.
    #[must_use]
    pub fn powered(&self) -> bool {
        lock(&self.inner.state).powered
    }

    /// OS boots completed so far.
    #[must_use]
    pub fn boots(&self) -> u64 {
        lock(&self.inner.state).boots
    }

    /// Connections its SUTAgent has accepted so far.
    #[must_use]
    pub fn sut_connections(&self) -> u64 {
        self.inner.sut.connections()
    }

    /// Commands its SUTAgent has received so far, oldest first.
    #[must_use]
    pub fn sut_commands(&self) -> Vec<String> {
        self.inner.sut.commands()
    }

    /// sha256 of the image flashed per partition.
    #[must_use]
    pub fn flashed(&self) -> BTreeMap<String, String> {
        lock(&self.inner.state).flashed.clone()
    }

    /// Replace the partition table.
    pub fn set_partitions(&self, parts: Vec<String>) {
        lock(&self.inner.state).partitions = parts;
    }

    /// Replace the fault knobs (takes effect at once, including on the SUTAgent).
    pub fn set_faults(&self, f: SimFaults) {
        self.inner.sut.set_faults(SimSutFaults {
            answer_probability: f.sut_flaky,
            garbage: f.sut_garbage,
            storage_read_only: f.storage_read_only,
            ..SimSutFaults::default()
        });
        lock(&self.inner.state).faults = f;
        self.inner.wake.notify_one();
    }

    /// Current fault knobs.
    #[must_use]
    pub fn faults(&self) -> SimFaults {
        lock(&self.inner.state).faults.clone()
    }

    /// Install the hook called when the OS has booted (for self-registration).
    pub fn set_on_boot(&self, hook: BootHook) {
        lock(&self.inner.state).on_boot = Some(hook);
    }

    /// Power input: on starts the bootloader window, off kills everything at once.
    pub fn set_power(&self, on: bool) {
        let mut st = lock(&self.inner.state);
        if on == st.powered {
            return;
        }
        st.powered = on;
        if on {
            enter_bootloader(&mut st);
        } else {
            st.phase = SimPhase::Off;
            st.until = None;
            st.caught = false;
        }
        self.inner.sut.set_up(false);
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Warm reboot (SUTAgent `rebt`, `fastboot reboot`): back through the bootloader.
    pub fn reboot(&self) {
        self.reboot_to(Reboot::Os);
    }

    /// Warm reboot into the OS (through the bootloader's window), into the bootloader (held
    /// there for fastboot, as `adb reboot bootloader`), or into fastbootd.
    pub fn reboot_to(&self, to: Reboot) {
        let mut st = lock(&self.inner.state);
        if st.powered {
            enter_bootloader(&mut st);
            match to {
                Reboot::Os => {}
                Reboot::Bootloader => {
                    st.caught = true;
                    st.until = None;
                }
                Reboot::Fastbootd => {
                    st.phase = SimPhase::Fastbootd;
                    st.until = None;
                }
            }
        }
        self.inner.sut.set_up(false);
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Wait until the device reaches `phase` (polling), up to `limit`.
    #[must_use]
    pub fn wait_for(&self, phase: SimPhase, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.phase() == phase {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.phase() == phase
    }

    fn control(&self, line: &str) -> String {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let mut st = lock(&self.inner.state);
        let in_bl = st.phase == SimPhase::Bootloader && st.caught;
        match (cmd, args.as_slice()) {
            ("state", []) => st.phase.name().into(),
            ("catch", []) => {
                if st.phase == SimPhase::Bootloader {
                    st.caught = true;
                    st.until = None;
                    if st.faults.fastboot_hangs {
                        "hang"
                    } else {
                        "ok"
                    }
                    .into()
                } else {
                    "wait".into()
                }
            }
            (_, _) if !in_bl => "err device not in bootloader".into(),
            ("getvar", ["product"]) => format!("ok {}", self.inner.spec.product),
            ("getvar", ["serialno"]) => format!("ok {}", self.inner.serial),
            ("getvar", [_]) => "err GetVar Variable Not found".into(),
            ("flash", [part, sha]) => {
                if st.partitions.iter().any(|p| p == part) {
                    st.flashed.insert((*part).to_owned(), (*sha).to_owned());
                    "ok".into()
                } else {
                    "err Partition not found".into()
                }
            }
            ("reboot", []) => {
                drop(st);
                self.reboot();
                "ok".into()
            }
            _ => "err unknown command".into(),
        }
    }
}

fn enter_bootloader(st: &mut State) {
    st.phase = SimPhase::Bootloader;
    st.until = Some(Instant::now() + st.timings.bootloader_window);
    st.caught = st.faults.stuck_in_fastboot;
}

/// A tokio listener on `ip`, port 0, for `what` (which needs a tokio runtime).
fn tokio_listener(
    ip: std::net::Ipv4Addr,
    what: &str,
) -> io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = runtime::listener(std::net::TcpListener::bind((ip, 0))?)
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// `Ok` when the device has `partition` (a slot suffix `_a`/`_b` names the same
/// partition); fastboot's "Partition not found" otherwise.
fn has_partition(st: &State, partition: &str) -> Result<(), String> {
    let base = partition
        .strip_suffix("_a")
        .or_else(|| partition.strip_suffix("_b"))
        .unwrap_or(partition);
    if st.partitions.iter().any(|p| p == base) {
        Ok(())
    } else {
        Err("Partition not found".into())
    }
}

/// Where a warm reboot goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reboot {
    /// The OS (past the bootloader's window).
    Os,
    /// The bootloader, staying there in fastboot.
    Bootloader,
    /// Userspace fastboot.
    Fastbootd,
}

/// The device as its fastboot TCP server sees it. Weak: the server must not keep the
/// device alive.
struct FastbootSide(Weak<Inner>);

impl FastbootSide {
    fn device(&self) -> Option<SimDevice> {
        self.0.upgrade().map(|inner| SimDevice { inner })
    }
}

impl super::fastboot_tcp::FastbootTarget for FastbootSide {
    fn connect(&self) -> bool {
        let Some(d) = self.device() else { return false };
        let mut st = lock(&d.inner.state);
        match st.phase {
            SimPhase::Bootloader => {
                // Caught in the window: held in the bootloader until told to reboot.
                st.caught = true;
                st.until = None;
                true
            }
            SimPhase::Fastbootd => true,
            _ => false,
        }
    }

    fn present(&self) -> bool {
        self.device()
            .is_some_and(|d| matches!(d.phase(), SimPhase::Bootloader | SimPhase::Fastbootd))
    }

    fn getvar(&self, name: &str) -> Result<String, String> {
        let d = self.device().ok_or("device gone")?;
        let st = lock(&d.inner.state);
        let part = |p: &str| -> Option<String> {
            let base = p
                .strip_suffix("_a")
                .or_else(|| p.strip_suffix("_b"))
                .unwrap_or(p);
            st.partitions
                .iter()
                .any(|x| x == base)
                .then(|| base.to_owned())
        };
        let userspace = st.phase == SimPhase::Fastbootd;
        match name.split_once(':') {
            None => match name {
                "product" => Ok(d.inner.spec.product.clone()),
                "serialno" => Ok(d.inner.serial.clone()),
                "version-bootloader" => Ok("sim-1.0".into()),
                "is-userspace" => Ok(if userspace { "yes" } else { "no" }.into()),
                "current-slot" => st.slot.map(String::from).ok_or_else(not_found),
                "slot-count" => Ok(if st.slot.is_some() { "2" } else { "0" }.into()),
                _ => Err(not_found()),
            },
            Some(("has-slot", p)) => part(p)
                .map(|_| if st.slot.is_some() { "yes" } else { "no" }.to_owned())
                .ok_or_else(not_found),
            Some(("partition-type", p)) => part(p).map(|_| "raw".to_owned()).ok_or_else(not_found),
            Some(("partition-size", p)) => part(p)
                .map(|_| "0x10000000".to_owned())
                .ok_or_else(not_found),
            Some(("is-logical", p)) => part(p).map(|_| "no".to_owned()).ok_or_else(not_found),
            Some(_) => Err(not_found()),
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        [
            "product",
            "serialno",
            "version-bootloader",
            "is-userspace",
            "slot-count",
        ]
        .iter()
        .filter_map(|n| self.getvar(n).ok().map(|v| ((*n).to_owned(), v)))
        .collect()
    }

    fn flash(&self, partition: &str, data: Vec<u8>) -> Result<(), String> {
        let d = self.device().ok_or("device gone")?;
        let mut st = lock(&d.inner.state);
        has_partition(&st, partition)?;
        let sha = sha2::Sha256::digest(&data);
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        st.flashed.insert(partition.to_owned(), hex);
        Ok(())
    }

    fn erase(&self, partition: &str) -> Result<(), String> {
        let d = self.device().ok_or("device gone")?;
        let mut st = lock(&d.inner.state);
        has_partition(&st, partition)?;
        st.flashed.remove(partition);
        Ok(())
    }

    fn set_active(&self, slot: &str) -> Result<(), String> {
        let d = self.device().ok_or("device gone")?;
        let mut st = lock(&d.inner.state);
        match (st.slot, slot) {
            (None, _) => Err("device has no slots".into()),
            (Some(_), "a" | "b") => {
                st.slot = slot.chars().next();
                Ok(())
            }
            _ => Err(format!("invalid slot {slot}")),
        }
    }

    fn reboot(&self, to: super::fastboot_tcp::RebootTarget) {
        use super::fastboot_tcp::RebootTarget as T;
        let Some(d) = self.device() else { return };
        match to {
            T::System | T::Continue | T::Recovery => d.reboot_to(Reboot::Os),
            T::Bootloader => d.reboot_to(Reboot::Bootloader),
            T::Fastbootd => d.reboot_to(Reboot::Fastbootd),
        }
    }

    fn hangs(&self) -> bool {
        self.device()
            .is_some_and(|d| lock(&d.inner.state).faults.fastboot_hangs)
    }
}

/// The device as its adbd simulator sees it. Weak, as [`FastbootSide`].
struct AdbSide(Weak<Inner>);

impl AdbSide {
    fn device(&self) -> Option<SimDevice> {
        self.0.upgrade().map(|inner| SimDevice { inner })
    }

    /// Check a path the shell wants to change: only `/data/local/tmp` is writable, and not
    /// at all with the read-only storage fault.
    fn writable(st: &State, path: &str) -> Result<(), String> {
        use super::adbd::{EACCES, EROFS, TMP_DIR};
        if st.faults.storage_read_only {
            return Err(EROFS.into());
        }
        match path.strip_prefix(TMP_DIR) {
            Some(rest) if rest.starts_with('/') && rest.len() > 1 => Ok(()),
            _ if path.starts_with("/data/") => Err(EACCES.into()),
            _ => Err(EROFS.into()),
        }
    }
}

impl super::adbd::AdbTarget for AdbSide {
    fn adbd_up(&self) -> bool {
        self.device()
            .is_some_and(|d| d.inner.spec.adbd && d.phase() == SimPhase::Os)
    }

    fn authorized(&self) -> bool {
        self.device()
            .is_some_and(|d| !lock(&d.inner.state).faults.adb_unauthorized)
    }

    fn banner(&self) -> super::adbd::AdbBanner {
        let (product, serial) = self.device().map_or_else(Default::default, |d| {
            (d.inner.spec.product.clone(), d.inner.serial.clone())
        });
        super::adbd::AdbBanner {
            product_name: product.clone(),
            model: format!("Sim_{product}"),
            device: serial,
        }
    }

    fn getprop(&self, name: &str) -> Option<String> {
        let d = self.device()?;
        match name {
            "sys.boot_completed" => (d.phase() == SimPhase::Os).then(|| "1".to_owned()),
            "ro.serialno" => Some(d.inner.serial.clone()),
            "ro.product.name" | "ro.product.device" => Some(d.inner.spec.product.clone()),
            "ro.build.version.sdk" => Some("29".into()),
            _ => None,
        }
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<(), String> {
        let d = self.device().ok_or("device gone")?;
        let mut st = lock(&d.inner.state);
        Self::writable(&st, path)?;
        st.files.insert(path.to_owned(), data.to_vec());
        Ok(())
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        let d = self.device().ok_or("device gone")?;
        let st = lock(&d.inner.state);
        st.files
            .get(path)
            .cloned()
            .ok_or_else(|| super::adbd::ENOENT.into())
    }

    fn remove_file(&self, path: &str) -> Result<(), String> {
        let d = self.device().ok_or("device gone")?;
        let mut st = lock(&d.inner.state);
        Self::writable(&st, path)?;
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| super::adbd::ENOENT.into())
    }

    fn reboot(&self, to: super::adbd::AdbReboot) {
        use super::adbd::AdbReboot as R;
        let Some(d) = self.device() else { return };
        d.reboot_to(match to {
            R::Os | R::Recovery => Reboot::Os,
            R::Bootloader => Reboot::Bootloader,
            R::Fastboot => Reboot::Fastbootd,
        });
    }
}

fn not_found() -> String {
    "GetVar Variable Not found".into()
}

/// Move the device along its timed phases (bootloader window, OS boot) as far as `now`
/// allows; returns when the next one is due.
fn advance(inner: &Inner) -> Option<Instant> {
    loop {
        let mut st = lock(&inner.state);
        let now = Instant::now();
        let mut booted = None;
        if let Some(until) = st.until
            && now >= until
        {
            match st.phase {
                SimPhase::Bootloader if !st.caught => {
                    st.phase = SimPhase::Booting;
                    st.until = if st.faults.does_not_boot {
                        None
                    } else {
                        Some(until + st.timings.boot_time)
                    };
                }
                SimPhase::Booting => {
                    // Lock order is always device state, then agent. A phone's OS runs adbd
                    // (which follows the phase by itself), not SUTAgent.
                    if !inner.spec.adbd {
                        inner.sut.set_up(true);
                    }
                    st.phase = SimPhase::Os;
                    st.until = None;
                    st.boots += 1;
                    // Only SUTAgent registers itself; adbd does not.
                    if !inner.spec.adbd {
                        booted = Some(st.on_boot.clone());
                    }
                }
                _ => st.until = None,
            }
            if let Some(hook) = booted {
                drop(st);
                if let Some(h) = hook {
                    h(&inner.serial, inner.sut.addr());
                }
            }
            continue;
        }
        return st.until;
    }
}

/// The device's clock: sleeps until its next phase deadline, or until a power, reboot or
/// fault change wakes it. Holds the device only while advancing it.
async fn phase_task(weak: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next = match weak.upgrade() {
            Some(inner) => advance(&inner),
            None => return,
        };
        let due = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = due => {}
        }
    }
}

/// Where a device's control requests go: the process's control port and the device's
/// number there. The rack directory file holds it as `ADDR ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPort {
    /// The shared control listener.
    pub addr: SocketAddr,
    /// The device's number on it.
    pub id: u64,
}

impl std::fmt::Display for ControlPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.addr, self.id)
    }
}

impl std::str::FromStr for ControlPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, id) = s
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("control port {s:?}: want ADDR ID"))?;
        Ok(ControlPort {
            addr: addr
                .parse()
                .map_err(|e| format!("control port {s:?}: {e}"))?,
            id: id.parse().map_err(|e| format!("control port {s:?}: {e}"))?,
        })
    }
}

/// The rack directory's index: one line `SERIAL ADDR ID` per device, written at once (a
/// file per device would cost 10,000 file creations for a large rack).
const RACK_INDEX: &str = "devices";

/// Write the index of `devices` into `dir`, replacing any earlier one atomically.
///
/// # Errors
/// File errors.
pub fn write_rack_index(dir: &Path, devices: &[SimDevice]) -> io::Result<()> {
    let mut text = String::with_capacity(devices.len() * 40);
    for d in devices {
        text.push_str(&format!("{} {}\n", d.serial(), d.control_addr()));
    }
    let tmp = dir.join(format!(".{RACK_INDEX}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(RACK_INDEX))
}

/// Every device of the rack in `dir`, by serial, in the index's order.
#[must_use]
pub fn read_rack_index(dir: &Path) -> Vec<(String, ControlPort)> {
    let Ok(text) = std::fs::read_to_string(dir.join(RACK_INDEX)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (serial, port) = l.split_once(' ')?;
            Some((serial.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The process's control port: one loopback listener for every simulated device (a
/// listener per device would cost a file descriptor each, and a rack of 10,000 devices
/// needs its descriptors for SUTAgent ports and connections).
struct Hub {
    addr: SocketAddr,
    next: AtomicU64,
    devices: Mutex<HashMap<u64, Weak<Inner>>>,
}

fn hub() -> io::Result<Arc<Hub>> {
    static HUB: OnceLock<Result<Arc<Hub>, String>> = OnceLock::new();
    HUB.get_or_init(|| start_hub().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| io::Error::other(format!("simulated devices' control port: {e}")))
}

fn start_hub() -> io::Result<Arc<Hub>> {
    let listener = runtime::listener(std::net::TcpListener::bind("127.0.0.1:0")?)?;
    let hub = Arc::new(Hub {
        addr: listener.local_addr()?,
        next: AtomicU64::new(1),
        devices: Mutex::new(HashMap::new()),
    });
    let h = hub.clone();
    runtime::handle()?.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let h = h.clone();
                    tokio::spawn(async move {
                        let limit = Duration::from_secs(2);
                        let _ = tokio::time::timeout(limit, serve_control(s, &h)).await;
                    });
                }
                // Out of file descriptors, typically: try again shortly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(hub)
}

async fn serve_control(mut s: tokio::net::TcpStream, hub: &Hub) -> io::Result<()> {
    let mut line = String::new();
    tokio::io::BufReader::new((&mut s).take(1024))
        .read_line(&mut line)
        .await?;
    let (id, request) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let device = id
        .parse::<u64>()
        .ok()
        .and_then(|id| lock(&hub.devices).get(&id).and_then(Weak::upgrade));
    let reply = match device {
        Some(inner) => SimDevice { inner }.control(request),
        None => "err no such device".to_owned(),
    };
    s.write_all(reply.as_bytes()).await?;
    s.write_all(b"\n").await
}

/// Send one control request to a device (used by the fastboot stand-in and tests).
///
/// # Errors
/// Socket errors.
pub fn control_request(port: ControlPort, line: &str) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&port.addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{} {line}", port.id).as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    BufReader::new(io::Read::take(s, 4096)).read_line(&mut reply)?;
    Ok(reply.trim().to_owned())
}
