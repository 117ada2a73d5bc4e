//! [`Snapshot`]: a read transaction as callers outside the store see it.
//!
//! Readers get typed answers (domain types and storage's own request and log types), never
//! redb tables or records, so the on-disk layout can change without touching a caller. Each
//! query opens the tables it needs from the one MVCC snapshot, so every answer from the same
//! `Snapshot` agrees with the others however many writes commit meanwhile. It must not
//! write, and it must not be held across `.await` (it pins the file's pages until dropped).

use redb::{ReadTransaction, ReadableTableMetadata};

use super::StoreError;
use super::history;
use super::inventory as inv;
use super::logs::{self, LogQuery};
use super::requests::{self, StoredRequest};
use super::tables;
use crate::domain::clock::Millis;
use crate::domain::history::{DeviceHistory, PoolHistory, RequestHistory, Window};
use crate::domain::model::{Device, Environment, HardwareTypeInfo, Image, LogEntry};

/// One consistent read view of the store, handed to [`super::Store::read`] closures.
pub struct Snapshot {
    tx: ReadTransaction,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    pub(super) fn new(tx: ReadTransaction) -> Snapshot {
        Snapshot { tx }
    }

    /// A META counter (tests of the store's own bookkeeping read it).
    #[cfg(test)]
    pub(super) fn meta_value(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tx
            .open_table(tables::META)?
            .get(name)?
            .map(|v| v.value()))
    }

    /// One device by name, `None` when there is none.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn device(&self, name: &str) -> Result<Option<Device>, StoreError> {
        inv::device(&self.tx.open_table(tables::DEVICES)?, name)
    }

    /// Every device (retired ones too), in name order. Builds the whole list: for a scan
    /// that needs one device at a time use [`Snapshot::for_each_device`].
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        inv::devices(&self.tx.open_table(tables::DEVICES)?)
    }

    /// Number of devices stored (retired ones too), without decoding any: sizes buffers and
    /// decides whether a list is long enough to split.
    ///
    /// # Errors
    /// Storage failure.
    pub fn device_count(&self) -> Result<usize, StoreError> {
        let n = self.tx.open_table(tables::DEVICES)?.len()?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Visit every device in name order, one decoded device at a time, so a scan of a
    /// 10,000-device rack never holds the whole inventory.
    ///
    /// # Errors
    /// Storage failure, a corrupt record, or `f`'s error.
    pub fn for_each_device(
        &self,
        f: impl FnMut(Device) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        inv::for_each_device(&self.tx.open_table(tables::DEVICES)?, f)
    }

    /// [`Snapshot::for_each_device`] over the devices whose names fall in `names`: with
    /// [`Snapshot::nth_device_name`] it lets two threads share one long scan.
    ///
    /// `f` may fail with its own error type (a caller writing JSON fails with an encoding
    /// error, not a storage one), as long as a storage error converts into it.
    ///
    /// # Errors
    /// As [`Snapshot::for_each_device`].
    pub fn for_each_device_in<'a, E: From<StoreError>>(
        &self,
        names: impl std::ops::RangeBounds<&'a str> + 'a,
        f: impl FnMut(Device) -> Result<(), E>,
    ) -> Result<(), E> {
        inv::for_each_device_in(
            &self
                .tx
                .open_table(tables::DEVICES)
                .map_err(StoreError::from)?,
            names,
            f,
        )
    }

    /// The name `n` places into the name order (`None` past the end): where to split the
    /// inventory into parts. Walks keys only; no record is decoded.
    ///
    /// # Errors
    /// Storage failure.
    pub fn nth_device_name(&self, n: usize) -> Result<Option<String>, StoreError> {
        inv::nth_device_name(&self.tx.open_table(tables::DEVICES)?, n)
    }

    /// Devices whose Lifeguard deadline is at or before `now`, earliest first, at most
    /// `limit` (one range scan of the deadline index; no device is decoded).
    ///
    /// # Errors
    /// Storage failure.
    pub fn due_devices(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, StoreError> {
        inv::due_devices(&self.tx.open_table(tables::DEVICE_DEADLINES)?, now, limit)
    }

    /// The earliest Lifeguard deadline, if any, so the driver can sleep until then.
    ///
    /// # Errors
    /// Storage failure.
    pub fn next_device_deadline(&self) -> Result<Option<Millis>, StoreError> {
        inv::next_deadline(&self.tx.open_table(tables::DEVICE_DEADLINES)?)
    }

    /// One image by name, `None` when there is none.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn image(&self, name: &str) -> Result<Option<Image>, StoreError> {
        inv::image(&self.tx.open_table(tables::IMAGES)?, name)
    }

    /// Every image, in name order.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        inv::images(&self.tx.open_table(tables::IMAGES)?)
    }

    /// Every environment, in name order.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn environments(&self) -> Result<Vec<Environment>, StoreError> {
        inv::environments(&self.tx.open_table(tables::ENVIRONMENTS)?)
    }

    /// Every hardware type, in name order.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn hardware_types(&self) -> Result<Vec<HardwareTypeInfo>, StoreError> {
        inv::hardware_types(&self.tx.open_table(tables::HARDWARE_TYPES)?)
    }

    /// One request by id, `None` when there is none.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn request(&self, id: u64) -> Result<Option<StoredRequest>, StoreError> {
        requests::get(&self.tx.open_table(tables::REQUESTS)?, id)
    }

    /// Every request, oldest first; `open_only` reads just the open ones through their
    /// index, so it costs the same after years of history.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn requests(&self, open_only: bool) -> Result<Vec<StoredRequest>, StoreError> {
        requests::list(&self.tx, open_only)
    }

    /// Number of requests stored, open or not, without decoding any (for `/metrics`).
    ///
    /// # Errors
    /// Storage failure.
    pub fn request_count(&self) -> Result<u64, StoreError> {
        Ok(self.tx.open_table(tables::REQUESTS)?.len()?)
    }

    /// Ids of requests due at or before `now`, earliest first, at most `limit` (one range
    /// scan of the deadline index; no request is decoded).
    ///
    /// # Errors
    /// Storage failure.
    pub fn due_requests(&self, now: Millis, limit: usize) -> Result<Vec<u64>, StoreError> {
        requests::due(&self.tx.open_table(tables::REQUEST_DEADLINES)?, now, limit)
    }

    /// The earliest request deadline, if any, so the pool's timer can sleep until then.
    ///
    /// # Errors
    /// Storage failure.
    pub fn next_request_deadline(&self) -> Result<Option<Millis>, StoreError> {
        requests::next_due(&self.tx.open_table(tables::REQUEST_DEADLINES)?)
    }

    /// Log entries matching `q`, newest first.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn logs(&self, q: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        logs::query(&self.tx, q)
    }

    /// A device's state timeline over `window` ending at `now`, from its log chain (see
    /// [`super::history`]). An unknown device gets an empty, incomplete history: check
    /// [`Snapshot::device`] in the same snapshot to answer "not found".
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub fn device_history(
        &self,
        name: &str,
        window: Window,
        now: Millis,
    ) -> Result<DeviceHistory, StoreError> {
        history::device_history(&self.tx, name, window, now)
    }

    /// The pool's utilisation per hour over `window` ending at `now`, and its flakiest
    /// devices (from the roll-ups; see [`super::history`]).
    ///
    /// # Errors
    /// Storage failure or a corrupt row.
    pub fn pool_history(&self, window: Window, now: Millis) -> Result<PoolHistory, StoreError> {
        history::pool_history(&self.tx, window, now)
    }

    /// How long requests that became ready over `window` ending at `now` waited, and why
    /// those that queued did.
    ///
    /// # Errors
    /// Storage failure or a corrupt row.
    pub fn request_history(
        &self,
        window: Window,
        now: Millis,
    ) -> Result<RequestHistory, StoreError> {
        history::request_history(&self.tx, window, now)
    }

    /// Number of entries in the durable log (for `/metrics` and the health check).
    ///
    /// # Errors
    /// Storage failure.
    pub fn log_count(&self) -> Result<u64, StoreError> {
        logs::count(&self.tx)
    }

    /// The redb transaction underneath, only for the store's white-box tests in `tests/it/`,
    /// which check raw index rows and record bytes that no typed query shows. Nothing in
    /// `src/` outside `storage` may call it: the `redb` in its name makes `tests/it/layers.rs`
    /// refuse such a call.
    #[doc(hidden)]
    #[must_use]
    pub fn redb_for_tests(&self) -> &ReadTransaction {
        &self.tx
    }
}
