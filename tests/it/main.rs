//! The integration-test binary: every module below runs the real service (in-process, or as
//! a child process where a crash is the point) against simulated hardware.

mod support;

mod api_errors;
mod api_inventory;
mod auth;
mod crash;
mod hostile;
mod storage;
