//! Simulators speaking the real protocols over the real transports (ptys, loopback TCP,
//! a `fastboot` stand-in executable, fastboot's own TCP transport), with fault knobs. Used by tests and by
//! `mozpool serve --simulate N`.
//!
//! They are test equipment, not drivers: they may block their own threads freely, but
//! they never touch real hardware.

pub mod adbd;
pub mod device;
pub mod fastboot;
pub mod fastboot_tcp;
pub mod lcus;
pub mod proxr;
pub mod rack;
pub mod sut;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use adbd::{AdbBanner, AdbReboot, AdbTarget, AdbdConfig, MemoryAdbTarget, SimAdbd};
pub use device::{Reboot, SimDevice, SimFaults, SimPhase, SimSpec, SimTimings};
pub use fastboot::sim_fastboot_main;
pub use fastboot_tcp::{FastbootTarget, MemoryTarget, RebootTarget, SimFastbootTcp};
pub use lcus::SimLcusBoard;
pub use proxr::{SimAction, SimFraming, SimProxrBoard, SimProxrConfig, SimRelayFaults};
pub use rack::{SimProber, SimRack, SimRackDevice};
pub use sut::{SimSutAgent, SimSutFaults};

/// Called with (bank, relay, energised) whenever a simulated relay changes state. The
/// simulated device's power follows it (normally closed: energised ⇒ unpowered).
pub type RelayHook = Arc<dyn Fn(u8, u8, bool) + Send + Sync>;

pub(crate) use crate::domain::lock;

/// Sleep up to `d`, waking early when `stop` is set; returns `false` if stopped.
pub(crate) fn sleep_unless(stop: &std::sync::atomic::AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}
