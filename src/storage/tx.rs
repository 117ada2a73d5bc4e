//! [`Tx`]: the writer's transaction as write closures see it, with every table opened at
//! most once per batch.
//!
//! Opening a redb table looks it up in the transaction's table tree, and closing it writes
//! its new root back; a batch of a hundred closures that each open four or five tables paid
//! that several hundred times per commit. `Tx` opens a table the first time a closure asks
//! for it and keeps it open until the batch ends ([`Tx::finish`]), so the later closures of
//! the batch find it open.
//!
//! A table is lent out one borrower at a time, as redb itself allows only one open handle
//! per table: asking for a table that is already lent out (a caller still holds the
//! handle) is a [`StoreError::TableInUse`], never a panic. The table accessors are private to
//! `storage`: a write closure reads and writes through storage's typed operations that take
//! the `Tx` (`inventory::device_in_tx`, `inventory::replace_device`, `requests::get_in_tx`,
//! `requests::replace`, `next_counter`, `logs::append`, ...), so code above storage never
//! names a table or redb, and the underlying `WriteTransaction` is not reachable at all, so
//! nothing can open a table behind the cache's back.
//!
//! Log entries appended during the batch ([`super::logs::append`]) are held here and
//! written together by [`Tx::finish`], just before the commit.

use std::cell::{RefCell, RefMut};

use redb::{Key, Table, TableDefinition, TableHandle, Value, WriteTransaction};

use super::StoreError;
use super::codec::Encoded;
use super::logs::{self, NewLog};
use super::records::{
    DeviceRecord, EnvironmentRecord, FailureHourRecord, HardwareTypeRecord, ImageRecord, LogRecord,
    UsageHourRecord, UsageOpenRecord, WaitHourRecord,
};
use super::requests::RequestRecord;
use super::tables;
use crate::domain::clock::Millis;

/// A table lent out by [`Tx`]; give it back (drop it) before asking for the same table again.
pub(super) type TableMut<'a, 't, K, V> = RefMut<'a, Table<'t, K, V>>;

type Slot<'t, K, V> = RefCell<Option<Table<'t, K, V>>>;

macro_rules! tx_tables {
    ($( $(#[$doc:meta])* $field:ident: $def:ident <$k:ty, $v:ty>; )+) => {
        /// The writer's transaction, handed to every write closure of a batch.
        pub struct Tx<'t> {
            tx: &'t WriteTransaction,
            held_logs: RefCell<Vec<(Millis, NewLog)>>,
            /// A closure wrote a record (device, request, inventory entry): the store tells
            /// its subscribers after the commit. Log entries and counters do not count.
            touched: std::cell::Cell<bool>,
            $( $field: Slot<'t, $k, $v>, )+
        }

        impl<'t> Tx<'t> {
            /// Wrap a write transaction; call [`Tx::finish`] before committing it. Only the
            /// store makes one, for its writer and its schema check.
            #[must_use]
            pub(super) fn new(tx: &'t WriteTransaction) -> Tx<'t> {
                Tx {
                    tx,
                    held_logs: RefCell::new(Vec::new()),
                    touched: std::cell::Cell::new(false),
                    $( $field: RefCell::new(None), )+
                }
            }

            $(
                $(#[$doc])*
                ///
                /// # Errors
                /// Storage failure, or [`StoreError::TableInUse`] while a caller still
                /// holds the table.
                pub(super) fn $field(&self) -> Result<TableMut<'_, 't, $k, $v>, StoreError> {
                    lend(self.tx, &self.$field, tables::$def)
                }
            )+
        }
    };
}

tx_tables! {
    /// [`tables::META`]: counters and markers.
    meta: META<&'static str, u64>;
    /// [`tables::DEVICES`].
    devices: DEVICES<&'static str, Encoded<DeviceRecord>>;
    /// [`tables::IMAGES`].
    images: IMAGES<&'static str, Encoded<ImageRecord>>;
    /// [`tables::ENVIRONMENTS`].
    environments: ENVIRONMENTS<&'static str, Encoded<EnvironmentRecord>>;
    /// [`tables::HARDWARE_TYPES`].
    hardware_types: HARDWARE_TYPES<&'static str, Encoded<HardwareTypeRecord>>;
    /// [`tables::LOGS`].
    logs: LOGS<u64, Encoded<LogRecord>>;
    /// [`tables::LOG_INDEX`].
    log_index: LOG_INDEX<(&'static str, u64), ()>;
    /// [`tables::LOG_HEADS`].
    log_heads: LOG_HEADS<&'static str, (u64, u64)>;
    /// [`tables::DEVICE_DEADLINES`].
    device_deadlines: DEVICE_DEADLINES<(u64, &'static str), ()>;
    /// [`tables::FREE_DEVICES`].
    free_devices: FREE_DEVICES<(&'static str, &'static str), ()>;
    /// [`tables::REQUESTS`].
    requests: REQUESTS<u64, Encoded<RequestRecord>>;
    /// [`tables::OPEN_REQUESTS`].
    open_requests: OPEN_REQUESTS<u64, ()>;
    /// [`tables::WAITING_REQUESTS`].
    waiting_requests: WAITING_REQUESTS<u64, ()>;
    /// [`tables::REQUEST_DEADLINES`].
    request_deadlines: REQUEST_DEADLINES<(u64, u64), ()>;
    /// [`tables::DEVICE_USAGE`].
    device_usage: DEVICE_USAGE<&'static str, Encoded<UsageOpenRecord>>;
    /// [`tables::USAGE_HOURS`].
    usage_hours: USAGE_HOURS<u64, Encoded<UsageHourRecord>>;
    /// [`tables::FAILURE_HOURS`].
    failure_hours: FAILURE_HOURS<(u64, &'static str), Encoded<FailureHourRecord>>;
    /// [`tables::WAIT_HOURS`].
    wait_hours: WAIT_HOURS<u64, Encoded<WaitHourRecord>>;
    /// [`tables::REQUEST_WAITS`].
    request_waits: REQUEST_WAITS<u64, u8>;
}

impl Tx<'_> {
    /// Whether a closure of this batch wrote a record.
    pub(super) fn touched(&self) -> bool {
        self.touched.get()
    }

    /// Note that a record was written (every storage function that writes one calls this).
    pub(super) fn mark_changed(&self) {
        self.touched.set(true);
    }

    /// Hold a log entry until [`Tx::finish`].
    pub(super) fn hold_log(&self, now: Millis, entry: NewLog) {
        self.held_logs.borrow_mut().push((now, entry));
    }

    /// End the batch's use of the transaction: write the held log entries, in the order
    /// they were appended, then close every table (their roots go into the transaction).
    /// Commit the transaction afterwards; to abort instead, just drop the `Tx`. Returns the
    /// number of log entries written.
    ///
    /// # Errors
    /// Storage failure.
    pub fn finish(self) -> Result<usize, StoreError> {
        let held = self.held_logs.take();
        let n = held.len();
        logs::write_entries(&self, held)?;
        Ok(n)
    }
}

/// Lend `slot`'s table, opening it on first use.
fn lend<'s, 't, K: Key + 'static, V: Value + 'static>(
    tx: &'t WriteTransaction,
    slot: &'s Slot<'t, K, V>,
    def: TableDefinition<K, V>,
) -> Result<TableMut<'s, 't, K, V>, StoreError> {
    let in_use = || StoreError::TableInUse(def.name().to_owned());
    let mut held = slot.try_borrow_mut().map_err(|_| in_use())?;
    if held.is_none() {
        *held = Some(tx.open_table(def)?);
    }
    RefMut::filter_map(held, Option::as_mut).map_err(|_| in_use())
}
