//! mozpool: a device-lab appliance that powers, checks, flashes and hands out mobile test
//! devices; a successor of Mozilla's MozPool.
//!
//! # Layout
//! Layers, dependencies pointing down; only [`app`] wires them together:
//! - [`http`] (the JSON API), [`ui`] (the on-box web page over that API) and the CLI in
//!   [`cli`] / [`client`], with the live canary `mozpool check` in [`check`];
//! - [`pool`]: the request layer (who gets which device), pure logic;
//! - [`lifeguard`]: the device health state machine, pure logic;
//! - [`inventory`]: inventory operations shared by the API, config and registrations;
//! - [`hw`]: relay boards, SUTAgent, reachability, fastboot, image files, and simulators;
//! - [`registration`]: devices registering themselves (SUTAgent protocol over TCP, JSON over
//!   HTTP); [`inventory_sync`]: syncing devices from an inventory file or URL;
//! - [`storage`]: the redb store, its versioned records and the durable log;
//! - [`auth`]: roles, tokens and the `Authorization` header (no I/O);
//! - [`bench`]: `mozpool bench`, the performance figures of docs/performance.md;
//! - [`systemd`] (readiness, status, watchdog) and [`metrics`] (`/metrics`): operations;
//! - [`config`], [`model`], [`types`], [`clock`]: shared vocabulary.

pub mod app;
pub mod cli;
pub mod domain;
pub mod http;
pub mod hw;
pub mod inventory;
pub mod lifeguard;
pub mod pool;
pub mod storage;
