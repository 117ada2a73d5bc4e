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
mod runtime;
pub mod sut;

use std::sync::Arc;

pub use adbd::{AdbBanner, AdbReboot, AdbTarget, AdbdConfig, MemoryAdbTarget, SimAdbd};
pub use device::{
    ControlPort, Reboot, SimDevice, SimFaults, SimPhase, SimSpec, SimTimings, read_rack_index,
    write_rack_index,
};
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
