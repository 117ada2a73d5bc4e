//! Request states (MozPool 4.x names), per-request retry counters and Lifeguard's imaging
//! results.
//!
//! This module owns names and their text forms only; what each state does lives in
//! `pool::machine`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The state of one request, serialised as MozPool 4.x's snake_case names.
///
/// Clients of the original poll `/status/` until `ready` or a `failed_*` state, so every
/// intermediate state, including the new [`RequestState::Queued`], simply reads as "still
/// working" to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestState {
    /// Created by the API; the API immediately delivers `find_device`.
    New,
    /// Searching with a bounded number of tries (a request without `wait`, as in 4.x).
    FindingDevice,
    /// New: waiting in the fair queue until a matching device frees up or `wait` runs out.
    /// Separate from `finding_device` because it has no try counter, only a deadline, and
    /// because the status API shows a queue position for it.
    Queued,
    /// Legacy (4.x set it right after assignment so the HTTP call could return); only
    /// reached from stored rows. Its timeout moves on to `contacting_lifeguard`.
    ContactLifeguard,
    /// A device is assigned and Lifeguard is being asked to image or power-cycle it.
    ContactingLifeguard,
    /// Lifeguard accepted; waiting for its imaging result.
    Pending,
    /// The device is prepared; the client may use it until it returns or the lease ends.
    Ready,
    /// Returned, expired, or closed after a failure. Terminal.
    Closed,
    /// Legacy (pre-4.0 rows); holds no device, goes to `closed` on `close`/`expire`.
    Expired,
    /// No device became available in time (or none could ever match). Terminal.
    FailedDeviceNotFound,
    /// The image failed on two devices. Terminal.
    FailedBadImage,
    /// The specifically requested device is broken. Terminal.
    FailedBadDevice,
    /// The specifically requested device stayed busy. Terminal.
    FailedDeviceBusy,
    /// A stored state name this version does not know (§9.14: the original crashed). The
    /// machine treats it as "lost its place": a timeout sends it back to searching, `close`
    /// and `expire` close it. Storage should keep the raw string for display.
    Unknown,
}

/// Every state, for exhaustive tests and UI legends.
pub const ALL_STATES: [RequestState; 14] = [
    RequestState::New,
    RequestState::FindingDevice,
    RequestState::Queued,
    RequestState::ContactLifeguard,
    RequestState::ContactingLifeguard,
    RequestState::Pending,
    RequestState::Ready,
    RequestState::Closed,
    RequestState::Expired,
    RequestState::FailedDeviceNotFound,
    RequestState::FailedBadImage,
    RequestState::FailedBadDevice,
    RequestState::FailedDeviceBusy,
    RequestState::Unknown,
];

impl RequestState {
    /// The snake_case name used in JSON and storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::New => "new",
            RequestState::FindingDevice => "finding_device",
            RequestState::Queued => "queued",
            RequestState::ContactLifeguard => "contact_lifeguard",
            RequestState::ContactingLifeguard => "contacting_lifeguard",
            RequestState::Pending => "pending",
            RequestState::Ready => "ready",
            RequestState::Closed => "closed",
            RequestState::Expired => "expired",
            RequestState::FailedDeviceNotFound => "failed_device_not_found",
            RequestState::FailedBadImage => "failed_bad_image",
            RequestState::FailedBadDevice => "failed_bad_device",
            RequestState::FailedDeviceBusy => "failed_device_busy",
            RequestState::Unknown => "unknown",
        }
    }

    /// Parse a stored name, mapping names this version does not know to
    /// [`RequestState::Unknown`] instead of failing (§9.14).
    #[must_use]
    pub fn from_stored(s: &str) -> RequestState {
        s.parse().unwrap_or(RequestState::Unknown)
    }

    /// `closed` or any `failed_*`: the request is over and holds no device. `close` on a
    /// `failed_*` request still moves it to `closed` (idempotent for `closed`).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, RequestState::Closed) || self.is_failed()
    }

    /// One of the four `failed_*` states.
    #[must_use]
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            RequestState::FailedDeviceNotFound
                | RequestState::FailedBadImage
                | RequestState::FailedBadDevice
                | RequestState::FailedDeviceBusy
        )
    }

    /// The request holds, or may still come to hold, a device: everything except the
    /// terminal states and the legacy `expired`.
    #[must_use]
    pub fn is_open(self) -> bool {
        !self.is_terminal() && self != RequestState::Expired
    }

    /// Waiting for a device from the queue (`finding_device` or `queued`); these are the
    /// requests `pool::queue::assign` considers.
    #[must_use]
    pub fn is_waiting(self) -> bool {
        matches!(self, RequestState::FindingDevice | RequestState::Queued)
    }

    /// A device is assigned in this state (from assignment until the request ends or goes
    /// back to searching).
    #[must_use]
    pub fn holds_device(self) -> bool {
        matches!(
            self,
            RequestState::ContactLifeguard
                | RequestState::ContactingLifeguard
                | RequestState::Pending
                | RequestState::Ready
        )
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`ALL_STATES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown request state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for RequestState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        ALL_STATES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.chars().take(64).collect()))
    }
}

impl Serialize for RequestState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RequestState {
    /// Lenient, like [`RequestState::from_stored`]: an unknown name never fails a decode.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RequestState::from_stored(&s))
    }
}

/// Per-request retry counters. Unlike 4.x (§9.12) the search counters are reset whenever
/// the request goes back to searching; only `bad_images` lives for the whole request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Searches answered with "no device" since the request last started searching.
    pub finding_device: u32,
    /// Lifeguard contact attempts that timed out on the current device.
    pub contacting_lifeguard: u32,
    /// `pending` timeouts without an imaging result on the current device.
    pub pending: u32,
    /// `failed-bad-image` results over the request's whole life.
    pub bad_images: u32,
}

impl Counters {
    /// Clear the search/contact/pending counters (going back to searching), keeping
    /// `bad_images`.
    #[must_use]
    pub fn reset_search(self) -> Counters {
        Counters {
            bad_images: self.bad_images,
            ..Counters::default()
        }
    }
}

/// Lifeguard's imaging result (`device_requests.imaging_result` in 4.x).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImagingResult {
    /// `complete`: the device is ready with the requested image.
    Complete,
    /// `failed-bad-device`: the device failed.
    FailedBadDevice,
    /// `failed-bad-image`: the image failed on the device.
    FailedBadImage,
    /// Anything else (kept for the log).
    Other(String),
}

impl ImagingResult {
    /// The wire text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            ImagingResult::Complete => "complete",
            ImagingResult::FailedBadDevice => "failed-bad-device",
            ImagingResult::FailedBadImage => "failed-bad-image",
            ImagingResult::Other(s) => s,
        }
    }

    /// Parse the wire text; never fails (unknown text becomes [`ImagingResult::Other`]).
    #[must_use]
    pub fn parse(s: &str) -> ImagingResult {
        match s {
            "complete" => ImagingResult::Complete,
            "failed-bad-device" => ImagingResult::FailedBadDevice,
            "failed-bad-image" => ImagingResult::FailedBadImage,
            other => ImagingResult::Other(other.chars().take(64).collect()),
        }
    }
}

impl fmt::Display for ImagingResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ImagingResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ImagingResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ImagingResult::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in ALL_STATES {
            assert_eq!(st.as_str().parse::<RequestState>(), Ok(st));
            assert_eq!(st.to_string(), st.as_str());
            let json = serde_json::to_string(&st).expect("serialise");
            assert_eq!(json, format!("\"{st}\""));
            let back: RequestState = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, st);
        }
    }

    #[test]
    fn original_names_are_exact() {
        let names: Vec<&str> = ALL_STATES.iter().map(|s| s.as_str()).collect();
        for n in [
            "new",
            "finding_device",
            "contact_lifeguard",
            "contacting_lifeguard",
            "pending",
            "ready",
            "closed",
            "expired",
            "failed_device_not_found",
            "failed_bad_image",
            "failed_bad_device",
            "failed_device_busy",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }

    #[test]
    fn unknown_names_are_lenient_when_stored() {
        assert!("bogus".parse::<RequestState>().is_err());
        assert_eq!(RequestState::from_stored("bogus"), RequestState::Unknown);
        let st: RequestState = serde_json::from_str("\"legacy_thing\"").expect("lenient");
        assert_eq!(st, RequestState::Unknown);
    }

    #[test]
    fn classification() {
        use RequestState as S;
        for st in ALL_STATES {
            // Terminal and open are exclusive; expired is neither.
            assert!(!(st.is_terminal() && st.is_open()), "{st}");
            if st.holds_device() || st.is_waiting() {
                assert!(st.is_open(), "{st}");
            }
            assert_eq!(st.is_failed(), st.as_str().starts_with("failed_"), "{st}");
        }
        assert!(S::Closed.is_terminal());
        assert!(!S::Expired.is_terminal() && !S::Expired.is_open());
        assert!(S::Unknown.is_open());
        assert!(S::Ready.holds_device() && !S::Queued.holds_device());
    }

    #[test]
    fn counters_reset_keeps_bad_images() {
        let c = Counters {
            finding_device: 3,
            contacting_lifeguard: 2,
            pending: 5,
            bad_images: 1,
        };
        assert_eq!(
            c.reset_search(),
            Counters {
                bad_images: 1,
                ..Counters::default()
            }
        );
    }

    #[test]
    fn imaging_results_parse() {
        for r in ["complete", "failed-bad-device", "failed-bad-image", "weird"] {
            assert_eq!(ImagingResult::parse(r).as_str(), r);
        }
        assert_eq!(
            ImagingResult::parse("weird"),
            ImagingResult::Other("weird".into())
        );
    }
}
