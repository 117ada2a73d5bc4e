//! The request layer ("MozPool" layer): the request machine, device matching with
//! explanations, the fair priority queue, and the driver that runs them over the store.
//!
//! Layout (the request's data and states are in `domain::request` and
//! `domain::request_state`, re-exported here):
//! - [`spec`]: what the caller reports about devices ([`DeviceView`], [`Holder`]).
//! - [`select`]: matching, preference for reusable images, [`Explanation`], [`satisfiable`].
//! - [`queue`]: [`assign`] (one pass: priority, aging, fair share) and [`position`].
//! - [`machine`]: [`step`], the pure request state machine.
//! - [`config`]: [`Timings`] and [`QueuePolicy`] with the original's defaults.
//!
//! Everything but [`driver`] is pure: no I/O, no clock (`now` is an argument). The driver
//! runs [`assign`] and [`step`] inside one store write so assignment cannot race, executes
//! the [`Action`]s and feeds results back as [`Event`]s. See
//! `docs/requests.md` for the request lifecycle.

pub mod config;
pub mod driver;
pub mod machine;
pub mod queue;
pub mod select;
pub mod shared;
pub mod spec;

#[cfg(test)]
mod model_tests;

pub use crate::domain::request::{Assignment, DeviceChoice, RequestSnapshot, RequestSpec};
pub use crate::domain::request_state::{Counters, ImagingResult, RequestState};
pub use config::{QueuePolicy, Timings};
pub use driver::{Pool, PoolError};
pub use machine::{Action, Event, LifeguardEvent, Transition, step};
pub use queue::{QueuedRequest, assign, effective_priority, fair_share_applies, position};
pub use select::{Explanation, Unsatisfiable, explain, matches, needs_image, satisfiable};
pub use spec::{DeviceView, Holder};
