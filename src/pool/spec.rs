//! What the caller tells the queue about each device ([`DeviceView`]) and who holds it
//! ([`Holder`]). Plain data; matching lives in [`super::select`].

use serde::{Deserialize, Serialize};

use crate::domain::names::{DeviceName, EnvironmentName, HardwareType, ImageName};

/// The request holding a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Holder {
    /// The holding request's id.
    pub request: u64,
    /// Its assignee (fair share counts devices per assignee).
    pub assignee: String,
}

/// One inventory device as the caller sees it inside its store transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct DeviceView {
    pub name: DeviceName,
    /// Lifeguard state name (`ready`, `pxe_booting`, `failed_power_cycling`, …).
    pub lifeguard_state: String,
    /// The device was [`available`](crate::domain::model::Device::available) when the view
    /// was built (`ready`, unheld, not retired): the only case in which it may be assigned.
    pub free: bool,
    /// The Lifeguard state starts with `failed_`.
    pub failed: bool,
    /// Taken out of service for good; ignored by matching, counts and satisfiability.
    pub retired: bool,
    /// The request currently holding it, if any.
    pub held_by: Option<Holder>,
    /// Environment; `None` matches only requests for `any`.
    pub environment: Option<EnvironmentName>,
    pub hardware_type: Option<HardwareType>,
    /// Processor (`armv6`, `armv7`, `arm64`, …).
    pub processor: Option<String>,
    /// Pool (`b2g`, `mobile`, …).
    pub pool: Option<String>,
    pub os_version: Option<String>,
    /// Image currently on the device.
    pub current_image: Option<ImageName>,
    /// Boot config (JSON text) it was imaged with.
    pub current_boot_config: Option<String>,
}

impl DeviceView {
    /// A free, unheld device with no attributes; handy for callers and tests.
    #[must_use]
    pub fn new(name: DeviceName) -> DeviceView {
        DeviceView {
            name,
            lifeguard_state: crate::domain::device_state::DeviceState::Ready
                .name()
                .to_owned(),
            free: true,
            failed: false,
            retired: false,
            held_by: None,
            environment: None,
            hardware_type: None,
            processor: None,
            pool: None,
            os_version: None,
            current_image: None,
            current_boot_config: None,
        }
    }

    /// Free, unheld and not retired: may be assigned right now (if it matches). For a view
    /// fresh from a device this is the device's `available()`; the parts stay separate because
    /// a queue pass marks the views it assigns as held.
    #[must_use]
    pub fn available(&self) -> bool {
        self.free && self.held_by.is_none() && !self.retired
    }
}
