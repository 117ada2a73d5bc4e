//! GPIO relay outputs: the [`GpioBackend`] trait, the real rppal backend (feature `rpi`)
//! and [`SimGpio`], which records levels so the GPIO board logic is testable anywhere.
//!
//! Polarity lives in the board logic, not here: backends only set and read levels.
//! Pins are claimed with `into_output()` (keeps the current level, no glitch) and
//! `set_reset_on_drop(false)` (a restart must not flip device power).

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
    /// Set a line high (`true`) or low, claiming it as an output first if needed.
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`].
    fn write(&mut self, pin: u8, high: bool) -> Result<()>;
    /// The level last driven on a line (claiming it keeps its current level).
    ///
    /// # Errors
    /// [`Error::GpioUnavailable`].
    fn read(&mut self, pin: u8) -> Result<bool>;
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
        if !self.pins.contains_key(&pin) {
            let p = self
                .gpio()?
                .get(pin)
                .map_err(|e| Error::GpioUnavailable(format!("pin {pin}: {e}")))?;
            let mut out = p.into_output();
            out.set_reset_on_drop(false);
            self.pins.insert(pin, out);
        }
        self.pins
            .get_mut(&pin)
            .ok_or_else(|| Error::GpioUnavailable(format!("pin {pin} not claimed")))
    }
}

#[cfg(feature = "rpi")]
impl GpioBackend for RppalGpio {
    fn probe(&mut self) -> Result<()> {
        self.gpio().map(|_| ())
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
    fn write(&mut self, _pin: u8, _high: bool) -> Result<()> {
        self.probe()
    }
    fn read(&mut self, _pin: u8) -> Result<bool> {
        self.probe().map(|()| false)
    }
}

/// Simulated GPIO: a shared level map and a write log; clone it to inspect from a test.
#[derive(Debug, Clone, Default)]
pub struct SimGpio {
    state: Arc<Mutex<SimGpioState>>,
}

#[derive(Debug, Default)]
struct SimGpioState {
    levels: HashMap<u8, bool>,
    log: Vec<(u8, bool)>,
    fail: Option<String>,
}

impl SimGpio {
    /// All lines low, no failure injected.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimGpioState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Current level of a line (`None` if never driven).
    #[must_use]
    pub fn level(&self, pin: u8) -> Option<bool> {
        self.lock().levels.get(&pin).copied()
    }

    /// Every write so far: (pin, high).
    #[must_use]
    pub fn log(&self) -> Vec<(u8, bool)> {
        self.lock().log.clone()
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
    fn write(&mut self, pin: u8, high: bool) -> Result<()> {
        self.check()?;
        let mut s = self.lock();
        s.levels.insert(pin, high);
        s.log.push((pin, high));
        Ok(())
    }
    fn read(&mut self, pin: u8) -> Result<bool> {
        self.check()?;
        Ok(self.lock().levels.get(&pin).copied().unwrap_or(false))
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
        assert!(g.write(26, true).is_err());
    }
}
