//! The integration-test binary: every module below runs the real service (in-process, or as
//! a child process where a crash is the point) or a real driver against its simulator over
//! real sockets, ptys and child processes.

mod support;

mod agents;
mod api_errors;
mod api_golden;
mod api_inventory;
mod appliance;
mod auth;
mod browser_safety;
mod check;
mod cli;
mod cluster;
mod crash;
mod disk_full;
mod docs;
mod fair_connections;
mod history;
mod hostile;
mod hw_fastboot;
mod hw_images;
mod hw_relay;
mod hw_sim_device;
mod hw_sut;
mod layers;
mod lifeguard;
mod log_chain;
mod packaging;
mod registration;
mod requests;
mod sim_adbd;
mod sim_fastboot_tcp;
mod storage;
mod ui;
