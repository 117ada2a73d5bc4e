//! `mozpool serve --simulate N`: the inventory of a simulated rack, so a newcomer sees a
//! working pool on any laptop.
//!
//! This adds the simulated hardware type, environment, images and N device records to the
//! configuration before the service starts.

use crate::config::{
    Config, DeviceConfig, EnvironmentConfig, FlashStepConfig, HardwareTypeConfig, ImageConfig,
};

/// Add the simulated rack's inventory (N devices `sim-000`…) to `config`.
pub fn add_simulated_inventory(config: &mut Config, n: u32) {
    if let Some(n) = name("sim-panda") {
        config.hardware_types.push(HardwareTypeConfig {
            name: n,
            processor: Some("armv7".into()),
            description: Some("simulated PandaBoard".into()),
        });
    }
    if let Some(n) = name("sim") {
        config.environments.push(EnvironmentConfig {
            name: n,
            description: Some("the simulated rack".into()),
        });
    }
    if let Some(n) = name("android") {
        config.images.push(ImageConfig {
            name: n,
            description: Some("Android with SUTAgent".into()),
            boot_config_keys: Vec::new(),
            can_reuse: true,
            hidden: false,
            has_sut_agent: true,
            steps: vec![
                FlashStepConfig {
                    partition: "boot".into(),
                    file: "boot.img".into(),
                },
                FlashStepConfig {
                    partition: "system".into(),
                    file: "system.img".into(),
                },
            ],
        });
    }
    for i in 0..n {
        let Some(dn) = name(&format!("sim-{i:03}")) else {
            continue;
        };
        config.devices.push(DeviceConfig {
            name: dn,
            hardware_type: "sim-panda".parse().ok(),
            processor: None,
            pool: Some("mobile".into()),
            os_version: Some("4.0.4".into()),
            environment: "sim".parse().ok(),
            relay: None,
            sut: None,
            fastboot_serial: None,
            comments: None,
        });
    }
}

/// A built-in name as a config value (names here are literals known to be valid).
fn name<T: std::str::FromStr>(s: &str) -> Option<toml::Spanned<T>> {
    s.parse().ok().map(|v| toml::Spanned::new(0..0, v))
}
