//! GPIO relay outputs: the [`GpioBackend`] trait, the real rppal backend (feature `rpi`)
//! and [`SimGpio`], which models each pin's mode and output latch and records every change
//! so the GPIO board logic is testable anywhere.
//!
//! Polarity lives in the board logic, not here: backends only claim, set and read levels.
//! Every pin is claimed once, at start-up, with its idle level latched *before* it becomes
//! an output (`into_output_high`/`into_output_low`: `into_output` would drive whatever the
//! latch holds after boot, which energises an active-low coil) and `set_reset_on_drop(false)`
//! (a restart must not flip device power). Reading never claims or reconfigures a pin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::hw::{Error, Result};

/// Drives BCM GPIO lines as outputs.
pub trait GpioBackend: Send {
    /// Check that GPIO can be used at all (for the board's two-way test).
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`].
    fn probe(&mut self) -> Result<()>;
    /// Take `pin` as an output driving `high`: the level is latched before the pin switches
    /// to output, so the line never shows another level, and it is not reset on release.
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`] (no GPIO, pin busy, no permission).
    fn claim(&mut self, pin: u8, high: bool) -> Result<()>;
    /// Drive a claimed pin high (`true`) or low.
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`], also for a pin that was never claimed.
    fn write(&mut self, pin: u8, high: bool) -> Result<()>;
    /// The level last driven on a claimed pin; never claims or reconfigures it.
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`], also for a pin that was never claimed.
    fn read(&mut self, pin: u8) -> Result<bool>;
}

fn unclaimed(pin: u8) -> Error {
    Error::GpioUnavailable(format!("pin {pin} is not claimed as an output"))
}

/// The real backend through rppal; fails cleanly with "GPIO unavailable: …" off a Pi or
/// when built without the `rpi` feature.
#[derive(Default)]
pub struct RppalGpio {
    #[cfg(feature = "rpi")]
    gpio: Option<rppal::gpio::Gpio>,
    #[cfg(feature = "rpi")]
    pins: HashMap<u8, rppal::gpio::OutputPin>,
}

impl std::fmt::Debug for RppalGpio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RppalGpio")
    }
}

impl RppalGpio {
    /// A backend that opens the GPIO peripheral on first use.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(feature = "rpi")]
impl RppalGpio {
    fn gpio(&mut self) -> Result<&rppal::gpio::Gpio> {
        if self.gpio.is_none() {
            let g = rppal::gpio::Gpio::new().map_err(|e| Error::GpioUnavailable(e.to_string()))?;
            self.gpio = Some(g);
        }
        self.gpio
            .as_ref()
            .ok_or_else(|| Error::GpioUnavailable("not initialised".into()))
    }

    fn pin(&mut self, pin: u8) -> Result<&mut rppal::gpio::OutputPin> {
        self.pins.get_mut(&pin).ok_or_else(|| unclaimed(pin))
    }
}

#[cfg(feature = "rpi")]
impl GpioBackend for RppalGpio {
    fn probe(&mut self) -> Result<()> {
        self.gpio().map(|_| ())
    }
    fn claim(&mut self, pin: u8, high: bool) -> Result<()> {
        if let Some(p) = self.pins.get_mut(&pin) {
            p.write(high.into());
            return Ok(());
        }
        let p = self
            .gpio()?
            .get(pin)
            .map_err(|e| Error::GpioUnavailable(format!("pin {pin}: {e}")))?;
        let mut out = if high {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        out.set_reset_on_drop(false);
        self.pins.insert(pin, out);
        Ok(())
    }
    fn write(&mut self, pin: u8, high: bool) -> Result<()> {
        let p = self.pin(pin)?;
        if high {
            p.set_high();
        } else {
            p.set_low();
        }
        Ok(())
    }
    fn read(&mut self, pin: u8) -> Result<bool> {
        Ok(self.pin(pin)?.is_set_high())
    }
}

#[cfg(not(feature = "rpi"))]
impl GpioBackend for RppalGpio {
    fn probe(&mut self) -> Result<()> {
        Err(Error::GpioUnavailable(
            "built without the rpi feature".into(),
        ))
    }
    fn claim(&mut self, _pin: u8, _high: bool) -> Result<()> {
        self.probe()
    }
    fn write(&mut self, pin: u8, _high: bool) -> Result<()> {
        self.probe().and(Err(unclaimed(pin)))
    }
    fn read(&mut self, pin: u8) -> Result<bool> {
        self.probe().and(Err(unclaimed(pin)))
    }
}

/// One change [`SimGpio`] saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpioChange {
    /// The pin's output latch was written (it drives this level once, or while, it is an
    /// output).
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Latch { pin: u8, high: bool },
    /// The pin switched from input to output, driving its latch from that instant.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Output { pin: u8 },
}

/// Simulated GPIO: every pin starts as an input with its latch low (the state a controller
/// boot leaves, which `into_output()` would drive); clone it to inspect from a test.
#[derive(Debug, Clone, Default)]
pub struct SimGpio {
    state: Arc<Mutex<SimGpioState>>,
}

#[derive(Debug, Default)]
struct SimGpioState {
    /// pin → (is an output, latch level).
    pins: HashMap<u8, (bool, bool)>,
    log: Vec<GpioChange>,
    fail: Option<String>,
}

impl SimGpio {
    /// All lines inputs with their latch low, no failure injected.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimGpioState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Level a line drives now (`None` while it is an input).
    #[must_use]
    pub fn level(&self, pin: u8) -> Option<bool> {
        match self.lock().pins.get(&pin) {
            Some(&(true, latch)) => Some(latch),
            _ => None,
        }
    }

    /// Every change so far, in order.
    #[must_use]
    pub fn log(&self) -> Vec<GpioChange> {
        self.lock().log.clone()
    }

    /// Every level `pin` has driven, in order: the latch when it became an output, then each
    /// latch write that changed the level while it was one.
    #[must_use]
    pub fn driven(&self, pin: u8) -> Vec<bool> {
        let mut out = Vec::new();
        let (mut output, mut latch) = (false, false);
        for c in self.lock().log.iter() {
            match *c {
                GpioChange::Latch { pin: p, high } if p == pin => {
                    if output && high != latch {
                        out.push(high);
                    }
                    latch = high;
                }
                GpioChange::Output { pin: p } if p == pin => {
                    output = true;
                    out.push(latch);
                }
                _ => {}
            }
        }
        out
    }

    /// Make every call fail with this message (e.g. "Pin 26 is already in use"), or clear.
    pub fn set_failure(&self, msg: Option<String>) {
        self.lock().fail = msg;
    }

    fn check(&self) -> Result<()> {
        match &self.lock().fail {
            Some(m) => Err(Error::GpioUnavailable(m.clone())),
            None => Ok(()),
        }
    }
}

impl GpioBackend for SimGpio {
    fn probe(&mut self) -> Result<()> {
        self.check()
    }
    fn claim(&mut self, pin: u8, high: bool) -> Result<()> {
        self.check()?;
        let mut s = self.lock();
        let entry = s.pins.entry(pin).or_insert((false, false));
        if entry.0 {
            // rppal hands a pin to one owner at a time.
            return Err(Error::GpioUnavailable(format!(
                "Pin {pin} is already in use"
            )));
        }
        *entry = (true, high);
        s.log.push(GpioChange::Latch { pin, high });
        s.log.push(GpioChange::Output { pin });
        Ok(())
    }
    fn write(&mut self, pin: u8, high: bool) -> Result<()> {
        self.check()?;
        let mut s = self.lock();
        match s.pins.get_mut(&pin) {
            Some(p) if p.0 => p.1 = high,
            _ => return Err(unclaimed(pin)),
        }
        s.log.push(GpioChange::Latch { pin, high });
        Ok(())
    }
    fn read(&mut self, pin: u8) -> Result<bool> {
        self.check()?;
        match self.lock().pins.get(&pin) {
            Some(&(true, latch)) => Ok(latch),
            _ => Err(unclaimed(pin)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_backend_fails_cleanly_off_a_pi() {
        // This test host is not a Raspberry Pi: the error must be a clean message.
        if std::path::Path::new("/proc/device-tree/model").exists() {
            return;
        }
        let mut g = RppalGpio::new();
        let e = g.probe().expect_err("no GPIO on this host");
        assert!(e.to_string().starts_with("GPIO unavailable: "), "{e}");
        let e = g.claim(26, true).expect_err("no GPIO to claim");
        assert!(e.to_string().starts_with("GPIO unavailable: "), "{e}");
        assert!(g.write(26, true).is_err());
        assert!(g.read(26).is_err());
    }

    #[test]
    fn sim_claims_latch_first_and_refuses_unclaimed_pins() {
        let mut g = SimGpio::new();
        assert!(g.read(5).is_err(), "reading never claims");
        assert!(g.write(5, true).is_err(), "writing never claims");
        assert_eq!(g.level(5), None);
        g.claim(5, true).expect("claim");
        assert_eq!(
            g.log(),
            vec![
                GpioChange::Latch { pin: 5, high: true },
                GpioChange::Output { pin: 5 }
            ]
        );
        assert!(g.claim(5, true).is_err(), "one owner per pin");
        g.write(5, false).expect("write");
        g.write(5, false).expect("write again");
        assert!(!g.read(5).expect("read"));
        assert_eq!(g.driven(5), vec![true, false]);
    }
}
