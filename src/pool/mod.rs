//! The request layer ("MozPool" layer) as pure logic: request states, the request machine,
//! device matching with explanations, and the fair priority queue.
//!
//! Layout:
//! - [`state`]: [`RequestState`] (MozPool 4.x names plus `queued`), counters, imaging results.
//! - [`spec`]: what a request asks for ([`RequestSpec`]) and what the caller reports about
//!   devices ([`DeviceView`]).
//! - [`select`]: matching, preference for reusable images, [`Explanation`], [`satisfiable`].
//! - [`queue`]: [`assign`] (one pass: priority, aging, fair share) and [`position`].
//! - [`machine`]: [`step`], the pure request state machine.
//! - [`config`]: [`Timings`] and [`QueuePolicy`] with the original's defaults.
//!
//! Nothing here does I/O or reads a clock: `now` is an argument. The storage layer runs
//! [`assign`] and [`step`] inside one store transaction so assignment cannot race; the
//! driver executes the [`Action`]s and feeds results back as [`Event`]s. See
//! `docs/requests.md` for the request lifecycle.

pub mod config;
pub mod driver;
pub mod machine;
pub mod queue;
pub mod select;
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
