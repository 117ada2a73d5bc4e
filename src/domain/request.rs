//! A request's data: what it asks for ([`RequestSpec`]), the device it holds
//! ([`Assignment`]) and everything the request machine knows of it ([`RequestSnapshot`]).
//! Plain data shared by the pool (which decides) and the store (which keeps it).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;
use crate::domain::names::{DeviceName, EnvironmentName, HardwareType, ImageName};
use crate::domain::request_state::{Counters, RequestState};

/// The device part of `POST /api/device/{device}/request/`: a name or the literal `any`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceChoice {
    /// `any`: whichever matching device is free.
    Any,
    /// Exactly this device.
    Named(DeviceName),
}

impl DeviceChoice {
    /// Parse `any` or a device name.
    ///
    /// # Errors
    /// The name error for anything else that is not a valid device name.
    pub fn parse(s: &str) -> Result<DeviceChoice, crate::domain::names::NameError> {
        if s == "any" {
            Ok(DeviceChoice::Any)
        } else {
            Ok(DeviceChoice::Named(s.parse()?))
        }
    }

    /// `true` for `any`.
    #[must_use]
    pub fn is_any(&self) -> bool {
        matches!(self, DeviceChoice::Any)
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Any => f.write_str("any"),
            DeviceChoice::Named(n) => f.write_str(n.as_str()),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(c: DeviceChoice) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = crate::domain::names::NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeviceChoice::parse(&s)
    }
}

/// Everything a request asks for, fixed at creation (only `expires` changes later, and it
/// lives in the snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// `any` or one device.
    pub requested_device: DeviceChoice,
    /// Who asked (free text in 4.x: an e-mail or a CI worker name); the unit of fair share.
    pub assignee: String,
    /// Image to put on the device.
    pub image: ImageName,
    /// The image may be reused by a reboot when the device already runs it with a
    /// JSON-equal boot config.
    pub can_reuse: bool,
    /// Boot-config keys the image requires (copied from the image registry; the API checks
    /// presence, the pool only keeps it for the record).
    pub boot_config_keys: Vec<String>,
    /// Boot-config values; rendered as JSON text by [`RequestSpec::boot_config_json`].
    pub boot_config: BTreeMap<String, String>,
    /// Environment; `None` (or the name `any`) matches every device.
    pub environment: Option<EnvironmentName>,
    /// Required hardware type (new).
    pub hardware_type: Option<HardwareType>,
    /// Required processor, e.g. `armv7` (new).
    pub processor: Option<String>,
    /// Required pool, e.g. `b2g` (new).
    pub pool: Option<String>,
    /// Required OS version (new).
    pub os_version: Option<String>,
    /// Higher is served first; default 0.
    pub priority: i32,
    /// Seconds to queue for a matching device (new). `None`: 4.x's bounded retries.
    pub wait: Option<u64>,
    /// Creation time; the queue's arrival order.
    pub created: Millis,
    /// Cluster mode, a named device: the controller whose device of that name is meant
    /// (names are unique per rack only), so the scheduler offers only that rack's device.
    /// Always `None` on a single rack. Absent from older shared records.
    #[serde(default)]
    pub controller: Option<String>,
}

impl RequestSpec {
    /// A spec for `device` with `image` and defaults elsewhere (any environment, no new
    /// criteria, priority 0, no wait); handy for callers and tests.
    #[must_use]
    pub fn new(
        requested_device: DeviceChoice,
        assignee: &str,
        image: ImageName,
        created: Millis,
    ) -> RequestSpec {
        RequestSpec {
            requested_device,
            assignee: assignee.to_owned(),
            image,
            can_reuse: false,
            boot_config_keys: Vec::new(),
            boot_config: BTreeMap::new(),
            environment: None,
            hardware_type: None,
            processor: None,
            pool: None,
            os_version: None,
            priority: 0,
            wait: None,
            created,
            controller: None,
        }
    }

    /// The boot config as the API's JSON text (`{"b2gbase": "http://..."}`, keys sorted).
    #[must_use]
    pub fn boot_config_json(&self) -> String {
        serde_json::to_string(&self.boot_config).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The environment criterion, `None` when it is absent or `any`.
    #[must_use]
    pub fn environment_criterion(&self) -> Option<&EnvironmentName> {
        self.environment.as_ref().filter(|e| e.as_str() != "any")
    }
}

/// The device a request holds and how it must be prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The held device.
    pub device: DeviceName,
    /// `false` when the device already runs the (reusable) image with an equal boot config,
    /// so a power cycle suffices.
    pub needs_image: bool,
}

/// Everything `step` needs to know about one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct RequestSnapshot {
    pub id: u64,
    pub spec: RequestSpec,
    pub state: RequestState,
    /// Bumped on every state entry (including re-entry); a `Timeout` carrying an older
    /// generation is late and ignored (§9.9).
    pub generation: u64,
    /// When the current state times out, if it does.
    pub timeout: Option<Millis>,
    pub counters: Counters,
    /// The held device, if any.
    pub assigned: Option<Assignment>,
    /// Lease end (UTC ms); the device is reclaimed at `expires + grace`.
    pub expires: Millis,
}

impl RequestSnapshot {
    /// A request just created by the API (state `new`). The API then delivers
    /// `pool::Event::FindDevice` (or `pool::Event::Unsatisfiable`).
    #[must_use]
    pub fn new(id: u64, spec: RequestSpec, expires: Millis) -> RequestSnapshot {
        RequestSnapshot {
            id,
            spec,
            state: RequestState::New,
            generation: 0,
            timeout: None,
            counters: Counters::default(),
            assigned: None,
            expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_text() {
        assert_eq!(DeviceChoice::parse("any"), Ok(DeviceChoice::Any));
        let named = DeviceChoice::parse("panda-1").expect("valid");
        assert_eq!(named.to_string(), "panda-1");
        assert!(DeviceChoice::parse("../x").is_err());
        let json = serde_json::to_string(&DeviceChoice::Any).expect("ser");
        assert_eq!(json, "\"any\"");
        let back: DeviceChoice = serde_json::from_str("\"panda-2\"").expect("de");
        assert!(!back.is_any());
    }

    #[test]
    fn boot_config_json_is_sorted_object() {
        let mut s = RequestSpec::new(
            DeviceChoice::Any,
            "me",
            "b2g".parse().expect("image"),
            Millis(0),
        );
        assert_eq!(s.boot_config_json(), "{}");
        s.boot_config.insert("z".into(), "1".into());
        s.boot_config.insert("b2gbase".into(), "http://x/".into());
        assert_eq!(s.boot_config_json(), r#"{"b2gbase":"http://x/","z":"1"}"#);
        s.environment = Some("any".parse().expect("env"));
        assert_eq!(s.environment_criterion(), None);
    }
}
