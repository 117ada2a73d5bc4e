//! Seeding history at chosen times, for tests (the history endpoints' and the pages'
//! browser test): a device that failed twice yesterday, a busy afternoon, requests that
//! waited.
//!
//! Every function drives the write path the service itself uses, at an explicit time `at`:
//! devices are created by `inventory::upsert_device`, their states change through
//! [`lifeguard::store::apply`] with the machine's own transitions (a conditional state
//! change, as `POST /api/device/{id}/state-change/…` makes, or the pool's `hold`/`release`
//! events), so the log lines, the device records and the history roll-ups are written
//! exactly as in service. Request waits go through the storage functions the pool's ready
//! transition calls. Nothing here reads a clock, so a store opened on any clock can be
//! seeded with times in the past, closed, and opened by a service on the system clock.
//!
//! A service started on a seeded store resumes every device (`lifeguard::resume`): a state
//! whose deadline has passed times out at once (an idle `ready` device is health-checked,
//! and a seeded device has no hardware, so it fails). Make each device's last change less
//! than its state's timeout before the service's start (`ready`: `ready_check_ms`, 10
//! minutes by default), e.g. `state(store, name, DeviceState::Ready, now - 1 min)`, or leave
//! it in a state without a timeout (`maintenance_mode`, a `failed_*` state).
//!
//! No command line offers this: it writes made-up history.

use crate::domain::clock::Millis;
use crate::domain::device_state::DeviceState;
use crate::domain::history::Waited;
use crate::domain::names::DeviceName;
use crate::inventory::{DeviceFields, upsert_device};
use crate::lifeguard::store::{ApplyError, apply};
use crate::lifeguard::{Event, Timings, counter, force, step};
use crate::storage::{Store, StoreError, Tx, history};

/// Why a seeding step failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The machine refused the step (wrong state, unknown device).
    #[error(transparent)]
    Refused(#[from] ApplyError),
    /// Not a device name.
    #[error("{0}")]
    Name(String),
}

/// Create `name` at `at` (state `new`, as the inventory creates devices) and make it
/// `ready` at once.
///
/// # Errors
/// [`SeedError`].
pub async fn device(store: &Store, name: &str, at: Millis) -> Result<(), SeedError> {
    let device: DeviceName = name.parse().map_err(|e| SeedError::Name(format!("{e}")))?;
    let fields = DeviceFields::default();
    store
        .write(move |tx, _| {
            upsert_device(tx, at, "seed", &device, &fields, "seed", None).map(|_| ())
        })
        .await?;
    state(store, name, DeviceState::Ready, at).await
}

/// Move `name` from whatever state it is in to `to` at `at`: a conditional state change,
/// logged `from -> to: conditional state change from …`. Entering a `failed_*` state is a
/// failure; entering `ready` after one is a recovery.
///
/// # Errors
/// [`SeedError`].
pub async fn state(
    store: &Store,
    name: &str,
    to: DeviceState,
    at: Millis,
) -> Result<(), SeedError> {
    let n = name.to_owned();
    store.write(move |tx, _| state_in(tx, &n, to, at)).await??;
    Ok(())
}

/// [`state`] inside a write closure (many steps in one commit).
///
/// # Errors
/// Outer: storage failure. Inner: the machine's refusal.
pub fn state_in(
    tx: &Tx<'_>,
    name: &str,
    to: DeviceState,
    at: Millis,
) -> Result<Result<(), ApplyError>, StoreError> {
    let applied = apply(tx, at, name, None, |s| {
        force(s, s.state.name(), to.name(), at, &Timings::default()).map_err(ApplyError::from)
    })?;
    Ok(applied.map(|_| ()))
}

/// Request `request` takes the `ready` device `name` at `at` (the pool's `hold` event; the
/// device counts as rebooted and verified since its last use).
///
/// # Errors
/// [`SeedError`].
pub async fn hold(store: &Store, name: &str, request: u64, at: Millis) -> Result<(), SeedError> {
    let n = name.to_owned();
    store
        .write(move |tx, _| hold_in(tx, &n, request, at))
        .await??;
    Ok(())
}

/// [`hold`] inside a write closure.
///
/// # Errors
/// Outer: storage failure. Inner: the machine's refusal.
pub fn hold_in(
    tx: &Tx<'_>,
    name: &str,
    request: u64,
    at: Millis,
) -> Result<Result<(), ApplyError>, StoreError> {
    let applied = apply(tx, at, name, None, |s| {
        let mut clean = s.clone();
        clean.counters.set(counter::VERIFIED_CLEAN, 1);
        step(&clean, Event::Hold { request }, at, &Timings::default()).map_err(ApplyError::from)
    })?;
    Ok(applied.map(|_| ()))
}

/// Request `request` lets go of `name` at `at` (the pool's `release` event).
///
/// # Errors
/// [`SeedError`].
pub async fn release(store: &Store, name: &str, request: u64, at: Millis) -> Result<(), SeedError> {
    let n = name.to_owned();
    store
        .write(move |tx, _| release_in(tx, &n, request, at))
        .await??;
    Ok(())
}

/// [`release`] inside a write closure.
///
/// # Errors
/// Outer: storage failure. Inner: the machine's refusal.
pub fn release_in(
    tx: &Tx<'_>,
    name: &str,
    request: u64,
    at: Millis,
) -> Result<Result<(), ApplyError>, StoreError> {
    let applied = apply(tx, at, name, None, |s| {
        step(s, Event::Release { request }, at, &Timings::default()).map_err(ApplyError::from)
    })?;
    Ok(applied.map(|_| ()))
}

/// A device that failed: `name` (created `ready` at `since`) enters
/// `failed_health_check` at each of `failures`' first times and is back `ready` at the
/// second. (A failed state that Lifeguard retries with a self-test, such as
/// `failed_pinging`, would move on at once on a seeded device, which has no hardware.)
///
/// # Errors
/// [`SeedError`].
pub async fn flaky_device(
    store: &Store,
    name: &str,
    since: Millis,
    failures: &[(Millis, Millis)],
) -> Result<(), SeedError> {
    device(store, name, since).await?;
    for &(down, up) in failures {
        state(store, name, DeviceState::FailedHealthCheck, down).await?;
        state(store, name, DeviceState::Ready, up).await?;
    }
    Ok(())
}

/// A busy stretch: each of `names` (already `ready`) is held by a request of its own from
/// `from` to `until` (request ids from `first_request` on).
///
/// # Errors
/// [`SeedError`].
pub async fn busy(
    store: &Store,
    names: &[&str],
    first_request: u64,
    from: Millis,
    until: Millis,
) -> Result<(), SeedError> {
    for (i, name) in names.iter().enumerate() {
        let request = first_request + i as u64;
        hold(store, name, request, from).await?;
        release(store, name, request, until).await?;
    }
    Ok(())
}

/// A request created at `created` that became ready at `ready`, having waited in the queue
/// for `waited` if given: the roll-up the pool's ready transition writes.
///
/// # Errors
/// [`SeedError`].
pub async fn request_wait(
    store: &Store,
    request: u64,
    created: Millis,
    ready: Millis,
    waited: Option<Waited>,
) -> Result<(), SeedError> {
    store
        .write(move |tx, _| {
            if let Some(why) = waited {
                history::request_waited(tx, request, why)?;
            }
            history::request_served(tx, request, created, ready)
        })
        .await?;
    Ok(())
}
