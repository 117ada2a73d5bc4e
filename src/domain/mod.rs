//! The vocabulary every layer shares: checked names and addresses, the inventory's types,
//! time, and a few primitives the drivers run on (deadline loops, heartbeats, histograms).
//! It imports nothing else from the crate, so any layer may use it.

pub mod clock;
pub mod device_state;
pub mod heartbeat;
pub mod histogram;
pub mod history;
pub mod model;
pub mod names;
pub mod request;
pub mod request_state;
pub mod timers;
pub mod wiring;

/// Lock a mutex, ignoring poisoning: the maps and lists guarded this way stay consistent
/// even if a holder panicked, and one panicked task must not take the others down.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
