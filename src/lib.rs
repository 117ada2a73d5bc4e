//! mozpool: a device-lab appliance that powers, checks, flashes and hands out mobile test
//! devices; a successor of Mozilla's MozPool.

pub mod clock;
pub mod hw;
pub mod types;
