//! [`Timings`]: every state timeout and retry limit of the Lifeguard machine, with defaults
//! taken from MozPool 4.2.1 where a matching state exists, and new, finite limits where the
//! original looped forever (its §9.12).
//!
//! Limits follow the original's rule: a counter is incremented on each failure or timeout and
//! the failure state is entered once it is *greater than* the limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DeviceState;

/// State timeouts (milliseconds) and retry limits. Deserialises from config with every field
/// optional (missing fields take the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timings {
    /// `new`: due at once (original: 0 s).
    pub new_ms: u64,
    /// `ready` without a request: interval between idle health checks (original: 600 s).
    pub ready_check_ms: u64,
    /// `powering_off`: one relay power-off (as the original's relay power cycle: 60 s).
    pub powering_off_ms: u64,
    /// `pc_sut_rebooting`: the SUTAgent reboot command must be acknowledged within this.
    pub pc_sut_rebooting_ms: u64,
    /// `pc_power_cycling` and the relay's board queue (original: 60 s, > 14 devices × ~3 s).
    pub pc_power_cycling_ms: u64,
    /// `pc_rebooting`: wait before probing, so the boot loader is not taken for the OS (120 s).
    pub pc_rebooting_ms: u64,
    /// `pc_pinging`: one reachability probe (original: 10 s).
    pub pc_pinging_ms: u64,
    /// `flashing`: the whole Flash action (bootloader + every partition + reboot). The
    /// original's download + extract budget was 180 s + 600 s; fastboot over USB gets 20 min.
    pub flashing_ms: u64,
    /// `flash_rebooting`: wait for the new image to boot (as `pc_rebooting`).
    pub flash_rebooting_ms: u64,
    /// `sut_verifying`: one SUT verification (original: 45 s; the driver must bound each
    /// attempt below this, unlike the original's 195 s wrapper, §9.10).
    pub sut_verifying_ms: u64,
    /// `sut_verify_power_cycle`: one power cycle (original: 60 s).
    pub sut_verify_power_cycle_ms: u64,
    /// `sut_sdcard_verifying`: one SD-card check (original: 200 s).
    pub sut_sdcard_verifying_ms: u64,

    /// Relay power-cycle failures before `failed_power_cycling` (original: 200).
    pub max_power_cycling: u32,
    /// Soft-reboot failures before `failed_power_cycling` on a device without relay wiring
    /// (with relay wiring the first failure falls back to the relay).
    pub max_sut_rebooting: u32,
    /// Ping timeouts before another power-cycle round (original: 12).
    pub max_pc_pinging: u32,
    /// Power-cycle rounds started by `pc_pinging` before `failed_pinging` (new: the original
    /// looped forever, §9.12).
    pub max_pc_rounds: u32,
    /// Flash failures/timeouts before `failed_flashing` (original download limit: 3).
    pub max_flashing: u32,
    /// SUT verification timeouts before `failed_sut_verifying` (original: 30).
    pub max_sut_verifying: u32,
    /// Every n-th SUT verification timeout power-cycles the device (original: 10; 0 = never).
    pub sut_verify_power_cycle_every: u32,
    /// `sut_verify_power_cycle` failures before `failed_sut_verifying` (original: 3).
    pub max_sut_verify_power_cycle: u32,
    /// SD-card check failures before `failed_sut_sdcard_verifying` (original: 2).
    pub max_sut_sdcard_verifying: u32,
    /// Power-off failures before `failed_powering_off`.
    pub max_powering_off: u32,
    /// Automatic self-tests after a self-testable failure before the device stays failed
    /// (new: the original retried forever).
    pub max_self_test_retries: u32,
    /// Failed idle health checks (each followed by a self-test) before `failed_health_check`
    /// (new: the original cycled `ready` ↔ self-test forever, §9.12).
    pub max_health_check_failures: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            new_ms: 0,
            ready_check_ms: 600_000,
            powering_off_ms: 60_000,
            pc_sut_rebooting_ms: 60_000,
            pc_power_cycling_ms: 60_000,
            pc_rebooting_ms: 120_000,
            pc_pinging_ms: 10_000,
            flashing_ms: 1_200_000,
            flash_rebooting_ms: 120_000,
            sut_verifying_ms: 45_000,
            sut_verify_power_cycle_ms: 60_000,
            sut_sdcard_verifying_ms: 200_000,
            max_power_cycling: 200,
            max_sut_rebooting: 3,
            max_pc_pinging: 12,
            max_pc_rounds: 3,
            max_flashing: 3,
            max_sut_verifying: 30,
            sut_verify_power_cycle_every: 10,
            max_sut_verify_power_cycle: 3,
            max_sut_sdcard_verifying: 2,
            max_powering_off: 3,
            max_self_test_retries: 3,
            max_health_check_failures: 3,
        }
    }
}

impl Timings {
    /// These timings with every timeout multiplied by `factor` (rounded, at least 1 ms unless
    /// it is 0); limits unchanged. For fast tests: `Timings::default().scaled(0.001)`.
    #[must_use]
    pub fn scaled(&self, factor: f64) -> Self {
        let d = self.clone();
        let f = |ms: u64| -> u64 {
            if ms == 0 {
                return 0;
            }
            let v = (ms as f64 * factor).round();
            if v.is_finite() && v >= 1.0 {
                // Saturating float-to-int cast: huge factors clamp to u64::MAX.
                v as u64
            } else {
                1
            }
        };
        Timings {
            new_ms: f(d.new_ms),
            ready_check_ms: f(d.ready_check_ms),
            powering_off_ms: f(d.powering_off_ms),
            pc_sut_rebooting_ms: f(d.pc_sut_rebooting_ms),
            pc_power_cycling_ms: f(d.pc_power_cycling_ms),
            pc_rebooting_ms: f(d.pc_rebooting_ms),
            pc_pinging_ms: f(d.pc_pinging_ms),
            flashing_ms: f(d.flashing_ms),
            flash_rebooting_ms: f(d.flash_rebooting_ms),
            sut_verifying_ms: f(d.sut_verifying_ms),
            sut_verify_power_cycle_ms: f(d.sut_verify_power_cycle_ms),
            sut_sdcard_verifying_ms: f(d.sut_sdcard_verifying_ms),
            ..d
        }
    }

    /// How long a device may rest in `state` before a `Timeout` event is due; `None` = never.
    /// (`ready` has a timeout only while no request holds the device; the machine applies that.)
    #[must_use]
    pub fn timeout(&self, state: DeviceState) -> Option<Duration> {
        use DeviceState as S;
        let ms = match state {
            S::New => self.new_ms,
            S::Ready => self.ready_check_ms,
            S::PoweringOff => self.powering_off_ms,
            S::PcSutRebooting => self.pc_sut_rebooting_ms,
            S::PcPowerCycling => self.pc_power_cycling_ms,
            S::PcRebooting => self.pc_rebooting_ms,
            S::PcPinging => self.pc_pinging_ms,
            S::Flashing => self.flashing_ms,
            S::FlashRebooting => self.flash_rebooting_ms,
            S::SutVerifying => self.sut_verifying_ms,
            S::SutVerifyPowerCycle => self.sut_verify_power_cycle_ms,
            S::SutSdcardVerifying => self.sut_sdcard_verifying_ms,
            S::Unknown
            | S::LockedOut
            | S::Troubleshooting
            | S::Off
            | S::MaintenanceMode
            | S::StartSelfTest
            | S::StartMaintenance
            | S::StartFlash
            | S::OperationComplete
            | S::FailedPowerCycling
            | S::FailedPoweringOff
            | S::FailedFlashing
            | S::FailedPinging
            | S::FailedSutVerifying
            | S::FailedSutSdcardVerifying
            | S::FailedSelfTest
            | S::FailedHealthCheck => return None,
        };
        Some(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_deserialise_from_empty_and_partial_config() {
        let t: Timings =
            serde_json::from_str("{}").unwrap_or_else(|_| Timings::default().scaled(2.0));
        assert_eq!(t, Timings::default());
        let t: Timings = serde_json::from_str(r#"{"ready_check_ms": 1000, "max_pc_rounds": 5}"#)
            .unwrap_or_default();
        assert_eq!(t.ready_check_ms, 1000);
        assert_eq!(t.max_pc_rounds, 5);
        assert_eq!(t.max_power_cycling, 200);
        assert!(serde_json::from_str::<Timings>(r#"{"bogus": 1}"#).is_err());
    }

    #[test]
    fn scaled_keeps_limits_and_zero() {
        let t = Timings::default().scaled(0.001);
        assert_eq!(t.new_ms, 0);
        assert_eq!(t.ready_check_ms, 600);
        assert_eq!(t.pc_pinging_ms, 10);
        assert_eq!(t.max_power_cycling, 200);
        let tiny = Timings::default().scaled(1e-9);
        assert_eq!(tiny.pc_pinging_ms, 1);
    }

    #[test]
    fn timeouts_exist_exactly_for_resting_timed_states() {
        let t = Timings::default();
        for &s in DeviceState::ALL {
            let has = t.timeout(s).is_some();
            let expected = s.has_hardware_in_flight()
                || matches!(
                    s,
                    DeviceState::New
                        | DeviceState::Ready
                        | DeviceState::PcRebooting
                        | DeviceState::FlashRebooting
                );
            assert_eq!(has, expected, "{s}");
        }
    }
}
