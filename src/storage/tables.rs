//! Every redb table of the store, in one place.
//!
//! Keys are native redb types (strings, integers, tuples) so they sort; values are
//! [`Encoded`] postcard records (see `records.rs`).

use redb::TableDefinition;

use super::codec::Encoded;
use super::records::{
    DeviceRecord, EnvironmentRecord, FailureHourRecord, HardwareTypeRecord, ImageRecord, LogRecord,
    UsageHourRecord, UsageOpenRecord, WaitHourRecord,
};
use super::requests::RequestRecord;

/// Store-wide counters and markers: `schema_version`, `next_log_seq`, `next_request_id`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Devices by name.
pub const DEVICES: TableDefinition<&str, Encoded<DeviceRecord>> = TableDefinition::new("devices");

/// Images by name.
pub const IMAGES: TableDefinition<&str, Encoded<ImageRecord>> = TableDefinition::new("images");

/// Environments by name.
pub const ENVIRONMENTS: TableDefinition<&str, Encoded<EnvironmentRecord>> =
    TableDefinition::new("environments");

/// Hardware types by name.
pub const HARDWARE_TYPES: TableDefinition<&str, Encoded<HardwareTypeRecord>> =
    TableDefinition::new("hardware_types");

/// The durable log by sequence number (ascending = oldest first).
pub const LOGS: TableDefinition<u64, Encoded<LogRecord>> = TableDefinition::new("logs");

/// Log index: (subject, sequence number). Layout-1 records have a row per subject; since
/// schema 3 only every [`crate::storage::logs::CHECKPOINT_EVERY`]th entry of a subject's
/// chain has one (a checkpoint, so paging deep into a history walks a bounded part of the
/// chain instead of all of it from the newest entry).
pub const LOG_INDEX: TableDefinition<(&str, u64), ()> = TableDefinition::new("log_index");

/// Head of each subject's log chain (schema 3): subject → (sequence number of its newest
/// entry, entries in its chain). The chain links each entry to the subject's previous one
/// (`LogV2::prev`).
pub const LOG_HEADS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("log_heads");

/// Lifeguard timers: (deadline in ms, device name) for every device whose state times out,
/// so "which devices are due?" is one range scan. Kept in step with `DEVICES` by
/// `inventory::put_device`.
pub const DEVICE_DEADLINES: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("device_deadlines");

/// Devices the pool may hand out right now (`ready`, not held, not retired), keyed by
/// (image on the device, or "" when none; device name), so a request finds a free device
/// that already runs its image with one range scan instead of decoding the inventory.
/// Kept in step with `DEVICES` by `inventory::put_device` and `inventory::replace_device`.
pub const FREE_DEVICES: TableDefinition<(&str, &str), ()> = TableDefinition::new("free_devices");

/// Requests by id (ascending = oldest first).
pub const REQUESTS: TableDefinition<u64, Encoded<RequestRecord>> = TableDefinition::new("requests");

/// Ids of requests that are not terminal (not closed or failed), so the driver and the
/// queue never scan the whole history.
pub const OPEN_REQUESTS: TableDefinition<u64, ()> = TableDefinition::new("open_requests");

/// Ids of requests waiting for a device (`finding_device`, `queued`), so a queue pass reads
/// only those. Kept in step with `REQUESTS` by `requests::put` and `requests::replace`.
pub const WAITING_REQUESTS: TableDefinition<u64, ()> = TableDefinition::new("waiting_requests");

/// Request timers: (when the driver must look at it, id): the earlier of its state timeout
/// and its expiry plus grace.
pub const REQUEST_DEADLINES: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("request_deadlines");

/// History (schema 4): each device's open interval of the pool chart: device name → the
/// band it is in, since when, and its last failure. Kept in step with `DEVICES` by
/// `inventory::replace_device` (in the transaction that changes the device).
pub const DEVICE_USAGE: TableDefinition<&str, Encoded<UsageOpenRecord>> =
    TableDefinition::new("device_usage");

/// History: hour start (ms) → device-milliseconds spent in each band in that hour, for
/// intervals that have ended (open ones are in `DEVICE_USAGE`).
pub const USAGE_HOURS: TableDefinition<u64, Encoded<UsageHourRecord>> =
    TableDefinition::new("usage_hours");

/// History: (hour start, device name) → entries into a failed state in that hour, so the
/// flaky table is one range scan from the window's first hour.
pub const FAILURE_HOURS: TableDefinition<(u64, &str), Encoded<FailureHourRecord>> =
    TableDefinition::new("failure_hours");

/// History: hour start → the request-to-ready times of the requests that became ready in
/// that hour (histogram bars), and why those that waited in the queue waited.
pub const WAIT_HOURS: TableDefinition<u64, Encoded<WaitHourRecord>> =
    TableDefinition::new("wait_hours");

/// History: request id → why it first had to wait in the queue (`Waited::code`), for
/// requests not yet ready or ended; the row goes when the request is served or ends.
pub const REQUEST_WAITS: TableDefinition<u64, u8> = TableDefinition::new("request_waits");
