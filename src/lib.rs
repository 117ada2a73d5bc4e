//! mozpool: a device-lab appliance that powers, checks, flashes and hands out mobile test
//! devices; a successor of Mozilla's MozPool.

pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod http;
pub mod inventory;
pub mod model;
pub mod shutdown;
pub mod simulate;
pub mod storage;
pub mod telemetry;
pub mod types;
