//! Tunables of the request layer: [`Timings`] for the request machine and [`QueuePolicy`]
//! for the queue. Durations are written in configuration as seconds (fractions allowed).
//!
//! Defaults are MozPool 4.x's values where the original had one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;

/// Timeouts and retry limits of the request machine (§4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timings {
    /// Time between searches in `finding_device` (4.x: 10 s).
    #[serde(with = "secs")]
    pub finding_device: Duration,
    /// Searches without a device before an `any` request fails (4.x: 60, ≈10 min).
    pub finding_tries_any: u32,
    /// Searches without a device before a specific-device request fails as busy (4.x: 2).
    pub finding_tries_specific: u32,
    /// Time to wait for Lifeguard to accept a please event (4.x: 30 s).
    #[serde(with = "secs")]
    pub contacting_lifeguard: Duration,
    /// Contact attempts before `failed_device_not_found` (4.x: 5).
    pub contacting_tries: u32,
    /// Poll interval in `pending` (4.x: 60 s).
    #[serde(with = "secs")]
    pub pending: Duration,
    /// `pending` timeouts before giving the device up (4.x: 20 for `any`; a specific device
    /// waited forever in 4.x, here it fails as `failed_bad_device` after the same count).
    pub pending_tries: u32,
    /// `failed-bad-image` results that fail the request (4.x: 2).
    pub bad_image_tries: u32,
    /// Time after `expires` during which a request keeps its device (new; 4.x: none). The
    /// request still reads `ready`; `expire` only takes effect once the grace is over.
    #[serde(with = "secs")]
    pub grace: Duration,
    /// Longest lease a create or renew may ask for (new; longer asks are capped).
    #[serde(with = "secs")]
    pub max_duration: Duration,
    /// Power-cycle a device on every assignment even when it already runs the requested
    /// reusable image and was rebooted and verified since its last user (4.x: always). By
    /// default such a device is handed over at once: it was rebooted when it was returned.
    pub reboot_before_handover: bool,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            finding_device: Duration::from_secs(10),
            finding_tries_any: 60,
            finding_tries_specific: 2,
            contacting_lifeguard: Duration::from_secs(30),
            contacting_tries: 5,
            pending: Duration::from_secs(60),
            pending_tries: 20,
            bad_image_tries: 2,
            grace: Duration::from_secs(60),
            max_duration: Duration::from_secs(24 * 3600),
            reboot_before_handover: false,
        }
    }
}

impl Timings {
    /// Every duration multiplied by `factor` (e.g. `0.001` for fast tests); counts unchanged.
    #[must_use]
    pub fn scaled(&self, factor: f64) -> Timings {
        Timings {
            finding_device: scale(self.finding_device, factor),
            contacting_lifeguard: scale(self.contacting_lifeguard, factor),
            pending: scale(self.pending, factor),
            grace: scale(self.grace, factor),
            max_duration: scale(self.max_duration, factor),
            ..self.clone()
        }
    }

    /// The lease end for a create or renew at `now` asking for `duration_secs`, capped by
    /// [`Timings::max_duration`]. Returns the end and whether the ask was capped.
    #[must_use]
    pub fn lease_end(&self, now: Millis, duration_secs: u64) -> (Millis, bool) {
        let asked = Duration::from_secs(duration_secs);
        let capped = asked > self.max_duration;
        (now.plus(asked.min(self.max_duration)), capped)
    }

    /// When an `expire` takes effect for a lease ending at `expires`: after the grace.
    #[must_use]
    pub fn expire_due(&self, expires: Millis) -> Millis {
        expires.plus(self.grace)
    }
}

/// How the queue orders and shares (see [`super::queue`] for the exact rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueuePolicy {
    /// Waiting time worth one priority level: effective priority = priority +
    /// ⌊waited / aging_step⌋. Zero disables aging. Default 10 min.
    #[serde(with = "secs")]
    pub aging_step: Duration,
    /// Pass over assignees already holding their share (default on).
    pub fair_share: bool,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            aging_step: Duration::from_secs(600),
            fair_share: true,
        }
    }
}

impl QueuePolicy {
    /// The aging step multiplied by `factor`.
    #[must_use]
    pub fn scaled(&self, factor: f64) -> QueuePolicy {
        QueuePolicy {
            aging_step: scale(self.aging_step, factor),
            ..self.clone()
        }
    }
}

fn scale(d: Duration, factor: f64) -> Duration {
    if factor.is_finite() && factor >= 0.0 {
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    } else {
        d
    }
}

/// Serde for a [`Duration`] written as (possibly fractional) seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_originals() {
        let t = Timings::default();
        assert_eq!(t.finding_device, Duration::from_secs(10));
        assert_eq!(
            (
                t.finding_tries_any,
                t.finding_tries_specific,
                t.contacting_tries,
                t.pending_tries,
                t.bad_image_tries
            ),
            (60, 2, 5, 20, 2)
        );
        assert_eq!(t.contacting_lifeguard, Duration::from_secs(30));
        assert_eq!(t.pending, Duration::from_secs(60));
    }

    #[test]
    fn deserialize_partial_with_defaults() {
        let t: Timings =
            serde_json::from_str(r#"{"finding_device": 2.5, "grace": 0}"#).expect("parse");
        assert_eq!(t.finding_device, Duration::from_millis(2500));
        assert_eq!(t.grace, Duration::ZERO);
        assert_eq!(t.finding_tries_any, 60);
        assert!(serde_json::from_str::<Timings>(r#"{"finding_device": -1}"#).is_err());
        assert!(serde_json::from_str::<Timings>(r#"{"bogus": 1}"#).is_err());
        let q: QueuePolicy = serde_json::from_str(r#"{"fair_share": false}"#).expect("parse");
        assert_eq!(q.aging_step, Duration::from_secs(600));
        assert!(!q.fair_share);
    }

    #[test]
    fn scaled_divides_durations_only() {
        let t = Timings::default().scaled(0.001);
        assert_eq!(t.finding_device, Duration::from_millis(10));
        assert_eq!(t.pending, Duration::from_millis(60));
        assert_eq!(t.finding_tries_any, 60);
        let q = QueuePolicy::default().scaled(0.5);
        assert_eq!(q.aging_step, Duration::from_secs(300));
        assert_eq!(Timings::default().scaled(f64::NAN), Timings::default());
    }

    #[test]
    fn lease_end_caps() {
        let t = Timings::default();
        assert_eq!(t.lease_end(Millis(1000), 10), (Millis(11_000), false));
        let (end, capped) = t.lease_end(Millis(0), 10 * 24 * 3600);
        assert!(capped);
        assert_eq!(end, Millis(24 * 3600 * 1000));
        assert_eq!(t.expire_due(Millis(0)), Millis(60_000));
    }
}
