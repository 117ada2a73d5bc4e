//! [`DeviceState`]: every Lifeguard state, its stable snake_case name (MozPool 4.x's name
//! wherever the meaning carried over) and the classifications the pool and the UI need.
//!
//! This module owns names and classification only; what happens in each state lives in
//! `lifeguard/machine.rs`, how long each state may last in `lifeguard/timings.rs`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! states {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),+ $(,)?) => {
        /// A device's Lifeguard state.
        ///
        /// Serialised (serde, `Display`, `FromStr`) as its snake_case name; the names are part
        /// of the on-disk format and the HTTP API, so they never change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum DeviceState {
            $( $(#[$doc])* $variant, )+
        }

        impl DeviceState {
            /// Every state, in declaration order.
            pub const ALL: &'static [DeviceState] = &[ $( DeviceState::$variant, )+ ];

            /// The state's stable name (`pc_power_cycling`).
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $( DeviceState::$variant => $name, )+ }
            }
        }

        impl FromStr for DeviceState {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $( $name => Ok(DeviceState::$variant), )+
                    _ => Err(UnknownState(s.chars().take(64).collect())),
                }
            }
        }
    };
}

states! {
    /// Just added by inventory; times out at once into a self-test.
    New = "new",
    /// State not known (a human's parking state); waits for a please event.
    Unknown = "unknown",
    /// Managed outside mozpool: nothing touches it, only a conditional state change gets it out.
    LockedOut = "locked_out",
    /// A human is looking at it; waits for a please event.
    Troubleshooting = "troubleshooting",
    /// Verified and idle; the only state the pool may hand out (or keeps, when a request holds it).
    Ready = "ready",
    /// Powered off by `please_power_off`; out of service until powered on or self-tested.
    Off = "off",
    /// Relay switching the power off (one `PowerOff` action in flight).
    PoweringOff = "powering_off",
    /// The humans' switch: out of the pool, nothing touches it, no timeout.
    MaintenanceMode = "maintenance_mode",
    /// Transient: clear counters and the next image, then power-cycle and verify.
    StartSelfTest = "start_self_test",
    /// Transient: clear counters, then `maintenance_mode`.
    StartMaintenance = "start_maintenance",
    /// Transient: clear counters, check the device can be flashed, then `flashing`.
    StartFlash = "start_flash",
    /// Soft reboot through the running image's SUTAgent (one `SutReboot` action in flight).
    PcSutRebooting = "pc_sut_rebooting",
    /// Relay power cycle (one `PowerCycle` action in flight).
    PcPowerCycling = "pc_power_cycling",
    /// Waiting for the OS to boot (the boot loader also answers ping, so no probe yet).
    PcRebooting = "pc_rebooting",
    /// Probing TCP reachability (one `Ping` action in flight).
    PcPinging = "pc_pinging",
    /// One `Flash` action in flight: bootloader, fastboot every partition, `fastboot reboot`.
    Flashing = "flashing",
    /// Waiting for the freshly flashed image to boot.
    FlashRebooting = "flash_rebooting",
    /// Checking the SUTAgent answers (one `SutVerify` action in flight).
    SutVerifying = "sut_verifying",
    /// Power-cycling because SUT verification keeps failing (`PowerCycle`, or `SutReboot` without relay).
    SutVerifyPowerCycle = "sut_verify_power_cycle",
    /// Checking the SD card through the SUTAgent (one `SutSdcardCheck` action in flight).
    SutSdcardVerifying = "sut_sdcard_verifying",
    /// Transient: promote the next image, report `complete`, then `ready`.
    OperationComplete = "operation_complete",
    /// No relay wiring, or too many relay/soft-reboot failures.
    FailedPowerCycling = "failed_power_cycling",
    /// Too many failed attempts to switch the power off.
    FailedPoweringOff = "failed_powering_off",
    /// Flashing failed too often, timed out, or the image was refused by the device.
    FailedFlashing = "failed_flashing",
    /// Never became reachable after bounded ping retries and power-cycle rounds.
    FailedPinging = "failed_pinging",
    /// SUTAgent never answered after bounded retries and power cycles.
    FailedSutVerifying = "failed_sut_verifying",
    /// SD-card check failed too often.
    FailedSutSdcardVerifying = "failed_sut_sdcard_verifying",
    /// Automatic self-tests kept failing; waits for a human.
    FailedSelfTest = "failed_self_test",
    /// Passed self-tests but kept failing idle health checks; waits for a human.
    FailedHealthCheck = "failed_health_check",
}

/// A state name that is not one of [`DeviceState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device state {0:?}")]
pub struct UnknownState(pub String);

/// The coarse classes the pool and the UI sort devices into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateClass {
    /// `ready`: verified and idle (held or free).
    Idle,
    /// Lifeguard is working on it (hardware in flight, waiting for a boot, or about to).
    InProgress,
    /// A `failed_*` state: needs a human (or a bounded automatic self-test).
    Failed,
    /// Deliberately out of service: `unknown`, `locked_out`, `troubleshooting`,
    /// `maintenance_mode`, `off`.
    OutOfService,
}

impl DeviceState {
    /// The state's class.
    #[must_use]
    pub const fn class(self) -> StateClass {
        use DeviceState as S;
        match self {
            S::Ready => StateClass::Idle,
            S::Unknown | S::LockedOut | S::Troubleshooting | S::MaintenanceMode | S::Off => {
                StateClass::OutOfService
            }
            S::FailedPowerCycling
            | S::FailedPoweringOff
            | S::FailedFlashing
            | S::FailedPinging
            | S::FailedSutVerifying
            | S::FailedSutSdcardVerifying
            | S::FailedSelfTest
            | S::FailedHealthCheck => StateClass::Failed,
            S::New
            | S::PoweringOff
            | S::StartSelfTest
            | S::StartMaintenance
            | S::StartFlash
            | S::PcSutRebooting
            | S::PcPowerCycling
            | S::PcRebooting
            | S::PcPinging
            | S::Flashing
            | S::FlashRebooting
            | S::SutVerifying
            | S::SutVerifyPowerCycle
            | S::SutSdcardVerifying
            | S::OperationComplete => StateClass::InProgress,
        }
    }

    /// A `failed_*` state (MozPool's rule: the name starts with `failed_`).
    #[must_use]
    pub fn is_failed(self) -> bool {
        self.name().starts_with("failed_")
    }

    /// Only `ready` devices may be handed out by the pool (and only when no request holds them,
    /// which the snapshot knows, not the state).
    #[must_use]
    pub const fn is_free_for_pool(self) -> bool {
        matches!(self, DeviceState::Ready)
    }

    /// Lifeguard is working on the device; every please event is refused.
    #[must_use]
    pub const fn is_in_progress(self) -> bool {
        matches!(self.class(), StateClass::InProgress)
    }

    /// Deliberately out of service (not failed, not in progress, not ready).
    #[must_use]
    pub const fn is_out_of_service(self) -> bool {
        matches!(self.class(), StateClass::OutOfService)
    }

    /// Resolved inside one `step`: a snapshot never rests in it.
    #[must_use]
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            DeviceState::StartSelfTest
                | DeviceState::StartMaintenance
                | DeviceState::StartFlash
                | DeviceState::OperationComplete
        )
    }

    /// A hardware action is in flight while the device rests in this state (so it always has
    /// a deadline). `ready` may also have a health check in flight; see the machine.
    #[must_use]
    pub const fn has_hardware_in_flight(self) -> bool {
        matches!(
            self,
            DeviceState::PoweringOff
                | DeviceState::PcSutRebooting
                | DeviceState::PcPowerCycling
                | DeviceState::PcPinging
                | DeviceState::Flashing
                | DeviceState::SutVerifying
                | DeviceState::SutVerifyPowerCycle
                | DeviceState::SutSdcardVerifying
        )
    }

    /// The "full" please family (power cycle, reboot, image) is accepted here.
    #[must_use]
    pub const fn accepts_full_please(self) -> bool {
        matches!(
            self,
            DeviceState::New
                | DeviceState::Unknown
                | DeviceState::Troubleshooting
                | DeviceState::Ready
        )
    }

    /// The "basic" please family (self-test, start maintenance) is accepted here: the full
    /// family's states plus `maintenance_mode`, `off` and every failed state.
    #[must_use]
    pub fn accepts_basic_please(self) -> bool {
        self.accepts_full_please()
            || matches!(self, DeviceState::MaintenanceMode | DeviceState::Off)
            || self.is_failed()
    }

    /// A failure state that MozPool 4.x retried with a self-test (its §3.4 "yes" rows, adapted):
    /// verification failures, where a fresh power cycle may well help. Retried a bounded
    /// number of times (`lifeguard::Timings::max_self_test_retries`).
    #[must_use]
    pub const fn retried_by_self_test(self) -> bool {
        matches!(
            self,
            DeviceState::FailedFlashing
                | DeviceState::FailedPinging
                | DeviceState::FailedSutVerifying
                | DeviceState::FailedSutSdcardVerifying
        )
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for DeviceState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DeviceState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for &s in DeviceState::ALL {
            assert!(seen.insert(s.name()), "duplicate {s}");
            assert_eq!(s.name().parse::<DeviceState>(), Ok(s));
            assert_eq!(s.to_string(), s.name());
            assert!(s.name().len() <= 32, "{s} longer than MozPool's column");
            let json = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.name()));
            let back: DeviceState = serde_json::from_str(&json).unwrap_or(DeviceState::Unknown);
            assert_eq!(back, s);
            let bytes = postcard::to_allocvec(&s).unwrap_or_default();
            assert_eq!(postcard::from_bytes::<DeviceState>(&bytes).ok(), Some(s));
        }
        assert!("pxe_booting".parse::<DeviceState>().is_err());
        assert!(serde_json::from_str::<DeviceState>("\"bogus\"").is_err());
    }

    #[test]
    fn classification_is_consistent() {
        for &s in DeviceState::ALL {
            assert_eq!(s.is_failed(), s.class() == StateClass::Failed, "{s}");
            assert_eq!(s.is_free_for_pool(), s == DeviceState::Ready, "{s}");
            if s.is_transient() || s.has_hardware_in_flight() {
                assert!(s.is_in_progress(), "{s}");
            }
            if s.retried_by_self_test() {
                assert!(s.is_failed(), "{s}");
            }
            if s.accepts_full_please() {
                assert!(s.accepts_basic_please(), "{s}");
                assert!(!s.is_in_progress() || s == DeviceState::New, "{s}");
            }
            if s.is_in_progress() && s != DeviceState::New {
                assert!(!s.accepts_basic_please(), "{s}");
            }
        }
        assert!(!DeviceState::LockedOut.accepts_basic_please());
    }
}
