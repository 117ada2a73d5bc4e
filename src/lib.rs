//! mozpool: a device-lab appliance that powers, checks, flashes and hands out mobile test
//! devices; a successor of Mozilla's MozPool.
//!
//! # Layout
//! One folder per layer, bottom first; a layer uses only the layers below it
//! (`tests/it/layers.rs` checks every `crate::` path), and only [`app`] wires them together:
//! - [`domain`]: the vocabulary every layer shares: checked names and addresses, the
//!   inventory's types, device and request states, time, and the primitives the drivers run
//!   on (deadline loop, heartbeat, histogram);
//! - [`storage`]: the embedded store (the only layer that names the database), its versioned
//!   records, indexes, the durable log and backups;
//! - [`cluster`]: several controllers, one pool, through etcd (the only layer that names
//!   the etcd client): this controller's lease, its devices' published pool view, and the
//!   scheduler election; runs only with a `[cluster]` section;
//! - [`hw`]: relay boards, SUTAgent, reachability, fastboot, image files, their settings and
//!   counters, and simulators;
//! - [`lifeguard`]: device health, a pure state machine plus the driver that runs the hardware;
//! - [`pool`]: requests (who gets which device), a pure state machine, selection and queue,
//!   plus their driver;
//! - [`inventory`]: inventory operations shared by the API, config, inventory sync and
//!   self-registration;
//! - [`http`]: the server, the request pipeline, auth, the JSON API, `/metrics` and the web
//!   page;
//! - [`app`]: wiring, configuration, shutdown, systemd, telemetry, the simulated rack;
//! - [`cli`]: the command line: `serve`, the API client and its subcommands, `check`, `bench`.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod domain;
pub mod http;
pub mod hw;
pub mod inventory;
pub mod lifeguard;
pub mod pool;
pub mod storage;
