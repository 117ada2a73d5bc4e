//! Inventory queries and mutations: devices, images, environments, hardware types.
//!
//! Readers are generic over redb's `ReadableTable`, so the same function serves a read
//! [`super::Snapshot`] and a read-modify-write transaction. Code outside `storage` reaches
//! them only through typed entry points: `Snapshot`'s queries, and the `*_in_tx` functions
//! for write closures, which take the batch's [`Tx`] and open its cached table.

use std::ops::ControlFlow;

use redb::{ReadableTable, ReadableTableMetadata};

use super::history::{self, UsageKey};
use super::records::{DeviceRecord, EnvironmentRecord, HardwareTypeRecord, ImageRecord};
use super::{Encoded, StoreError, Tx, decode, encode};
use crate::domain::clock::Millis;
use crate::domain::model::{Device, Environment, HardwareTypeInfo, Image};

macro_rules! table_access {
    (
        $get:ident, $list:ident, $get_in_tx:ident, $list_in_tx:ident, $put:ident, $remove:ident,
        $table:ident, $name:literal, $record:ty, $domain:ty
    ) => {
        #[doc = concat!("One entry of `", $name, "` by name.")]
        ///
        /// # Errors
        /// Storage failure or a corrupt record.
        pub fn $get(
            table: &impl ReadableTable<&'static str, Encoded<$record>>,
            name: &str,
        ) -> Result<Option<$domain>, StoreError> {
            match table.get(name)? {
                None => Ok(None),
                Some(g) => Ok(Some(convert(
                    $name,
                    name,
                    decode::<$record>($name, name, &g.value())?,
                )?)),
            }
        }

        #[doc = concat!("Every entry of `", $name, "`, ordered by name.")]
        ///
        /// # Errors
        /// Storage failure or a corrupt record.
        pub fn $list(
            table: &impl ReadableTable<&'static str, Encoded<$record>>,
        ) -> Result<Vec<$domain>, StoreError> {
            let mut out = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
            for item in table.iter()? {
                let (k, v) = item?;
                out.push(convert(
                    $name,
                    k.value(),
                    decode::<$record>($name, k.value(), &v.value())?,
                )?);
            }
            Ok(out)
        }

        #[doc = concat!("One entry of `", $name, "` by name, read inside a write closure (to decide")]
        /// before writing).
        ///
        /// # Errors
        /// Storage failure or a corrupt record.
        pub fn $get_in_tx(tx: &Tx<'_>, name: &str) -> Result<Option<$domain>, StoreError> {
            $get(&*tx.$table()?, name)
        }

        #[doc = concat!("Every entry of `", $name, "`, ordered by name, read inside a write closure.")]
        ///
        /// # Errors
        /// Storage failure or a corrupt record.
        pub fn $list_in_tx(tx: &Tx<'_>) -> Result<Vec<$domain>, StoreError> {
            $list(&*tx.$table()?)
        }

        #[doc = concat!("Insert or replace an entry of `", $name, "`.")]
        ///
        /// # Errors
        /// Storage failure.
        pub fn $put(tx: &Tx<'_>, value: &$domain) -> Result<(), StoreError> {
            let record: $record = value.into();
            tx.mark_changed();
            tx.$table()?.insert(value.name.as_str(), encode(&record)?)?;
            Ok(())
        }

        #[doc = concat!("Remove an entry of `", $name, "`; returns whether it existed.")]
        ///
        /// # Errors
        /// Storage failure.
        pub fn $remove(tx: &Tx<'_>, name: &str) -> Result<bool, StoreError> {
            tx.mark_changed();
            Ok(tx.$table()?.remove(name)?.is_some())
        }
    };
}

/// A decoded record as its domain value; a record whose fields do not check (a device name
/// that is not one) is reported as [`StoreError::BadRecord`], like any corrupt record.
fn convert<R, D>(table: &'static str, key: &str, record: R) -> Result<D, StoreError>
where
    D: TryFrom<R>,
    D::Error: std::fmt::Display,
{
    D::try_from(record).map_err(|e| StoreError::BadRecord {
        table,
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// A decoded device record as a [`Device`].
///
/// # Errors
/// [`StoreError::BadRecord`] for a record whose name is not a device name.
pub fn device_of(key: &str, record: DeviceRecord) -> Result<Device, StoreError> {
    convert("devices", key, record)
}

table_access!(
    device,
    devices,
    device_in_tx,
    devices_in_tx,
    put_device_record,
    remove_device_record,
    devices,
    "devices",
    DeviceRecord,
    Device
);

/// Visit every device in name order, one at a time (no list of all devices is built: the
/// device list of a 10,000-device rack streams through this).
///
/// # Errors
/// Storage failure, a corrupt record, or `f`'s error.
pub fn for_each_device(
    table: &impl ReadableTable<&'static str, Encoded<DeviceRecord>>,
    f: impl FnMut(Device) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for_each_device_in(table, .., f)
}

/// [`for_each_device`] over the devices whose names fall in `names`.
///
/// # Errors
/// As [`for_each_device`].
pub fn for_each_device_in<'a, E: From<StoreError>>(
    table: &impl ReadableTable<&'static str, Encoded<DeviceRecord>>,
    names: impl std::ops::RangeBounds<&'a str> + 'a,
    mut f: impl FnMut(Device) -> Result<(), E>,
) -> Result<(), E> {
    for item in table.range(names).map_err(StoreError::from)? {
        let (k, v) = item.map_err(StoreError::from)?;
        f(device_of(
            k.value(),
            decode::<DeviceRecord>("devices", k.value(), &v.value())?,
        )?)?;
    }
    Ok(())
}

/// [`for_each_device`] inside a write transaction. The devices table stays lent out while
/// `f` runs, so `f` must not read or write devices itself (that is a
/// [`StoreError::TableInUse`]).
///
/// # Errors
/// As [`for_each_device`].
pub fn for_each_device_in_tx(
    tx: &Tx<'_>,
    mut f: impl FnMut(&Device) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let table = tx.devices()?;
    DECODED.with_borrow_mut(|memo| {
        if memo.len() > MEMO_MAX {
            memo.clear();
        }
        for item in table.iter()? {
            let (k, v) = item?;
            let (name, value) = (k.value(), v.value());
            let bytes = value.bytes();
            match memo.get(name) {
                Some((raw, d)) if raw.as_ref() == bytes => f(d)?,
                _ => {
                    let d = device_of(name, decode::<DeviceRecord>("devices", name, &value)?)?;
                    f(&d)?;
                    memo.insert(name.into(), (bytes.into(), d));
                }
            }
        }
        Ok(())
    })
}

/// Name → (the record's bytes, the device decoded from them).
type DecodedDevices = std::collections::HashMap<Box<str>, (Box<[u8]>, Device)>;

/// Most devices [`DECODED`] remembers before it starts again (a bound on its memory).
const MEMO_MAX: usize = 100_000;

thread_local! {
    /// The writer's decoded devices, by name, with the record bytes they were decoded from.
    /// A queue pass or a waiting request's explanation walks the whole inventory inside a
    /// write; most records are unchanged since the last walk, and comparing the bytes costs a
    /// fraction of decoding them (the walk was a quarter of the writer's time at saturation).
    /// Keyed by the stored bytes, an entry is right whatever the transaction does: an aborted
    /// write's record simply stops matching.
    static DECODED: std::cell::RefCell<DecodedDevices> =
        std::cell::RefCell::new(DecodedDevices::new());
}

/// How many devices the inventory holds, inside a write transaction (to size a list built
/// by [`for_each_device_in_tx`] without a second pass).
///
/// # Errors
/// Storage failure.
pub fn device_count_in_tx(tx: &Tx<'_>) -> Result<u64, StoreError> {
    Ok(tx.devices()?.len()?)
}

/// The name `n` places into the name order (`None` past the end): where to split the
/// inventory into parts. Walks keys only; no record is decoded.
///
/// # Errors
/// Storage failure.
pub fn nth_device_name(
    table: &impl ReadableTable<&'static str, Encoded<DeviceRecord>>,
    n: usize,
) -> Result<Option<String>, StoreError> {
    match table.iter()?.nth(n) {
        Some(item) => Ok(Some(item?.0.value().to_owned())),
        None => Ok(None),
    }
}

/// The device's key in `FREE_DEVICES` when the pool may hand it out right now
/// ([`Device::available`]): (image on it or "", name).
#[must_use]
pub fn free_key(d: &Device) -> Option<(&str, &str)> {
    d.available().then(|| {
        (
            d.lifeguard.current_image.as_deref().unwrap_or(""),
            d.name.as_str(),
        )
    })
}

/// Insert or replace a device, keeping the Lifeguard deadline index and the free-device
/// index in step.
///
/// # Errors
/// Storage failure or a corrupt previous record.
pub fn put_device(tx: &Tx<'_>, d: &Device) -> Result<(), StoreError> {
    let old = device_in_tx(tx, &d.name)?;
    replace_device(tx, old.as_ref().map(IndexKeys::of), d)
}

/// Where a stored device sits in the indexes `put_device` keeps in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKeys {
    deadline: Option<Millis>,
    free: Option<(String, String)>,
    usage: UsageKey,
}

impl IndexKeys {
    /// The index keys of `d` as stored.
    #[must_use]
    pub fn of(d: &Device) -> IndexKeys {
        IndexKeys {
            deadline: d.lifeguard.deadline,
            free: free_key(d).map(|(i, n)| (i.to_owned(), n.to_owned())),
            usage: UsageKey::of(d),
        }
    }
}

/// [`put_device`] for a caller that has just read the stored record in this transaction
/// and kept its [`IndexKeys`] (so it is not decoded twice).
///
/// # Errors
/// Storage failure.
pub fn replace_device(tx: &Tx<'_>, old: Option<IndexKeys>, d: &Device) -> Result<(), StoreError> {
    tx.mark_changed();
    let old_deadline = old.as_ref().and_then(|o| o.deadline);
    let new_deadline = if d.retired {
        None
    } else {
        d.lifeguard.deadline
    };
    if old_deadline != new_deadline {
        let mut idx = tx.device_deadlines()?;
        if let Some(o) = old_deadline {
            idx.remove((o.0, d.name.as_str()))?;
        }
        if let Some(n) = new_deadline {
            idx.insert((n.0, d.name.as_str()), ())?;
        }
    }
    let old_free = old
        .as_ref()
        .and_then(|o| o.free.as_ref())
        .map(|(i, n)| (i.as_str(), n.as_str()));
    let new_free = free_key(d);
    if old_free != new_free {
        let mut idx = tx.free_devices()?;
        if let Some(k) = old_free {
            idx.remove(k)?;
        }
        if let Some(k) = new_free {
            idx.insert(k, ())?;
        }
    }
    // The pool chart and the flaky table, at the record's own time of change.
    history::device_changed(
        tx,
        &d.name,
        old.as_ref().map(|o| o.usage),
        UsageKey::of(d),
        d.updated,
    )?;
    put_device_record(tx, d)
}

/// Names of devices the pool may hand out right now, in (image, name) order; with `image`,
/// only those already running it, in name order.
///
/// # Errors
/// Storage failure.
pub fn free_device_names(
    idx: &impl ReadableTable<(&'static str, &'static str), ()>,
    image: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    visit_free_devices(idx, image, |name| {
        out.push(name.to_owned());
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Visit the names [`free_device_names`] lists, in the same order, until `f` breaks.
///
/// # Errors
/// Storage failure or `f`'s error.
pub fn visit_free_devices(
    idx: &impl ReadableTable<(&'static str, &'static str), ()>,
    image: Option<&str>,
    mut f: impl FnMut(&str) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let range = match image {
        Some(i) => idx.range((i, "")..)?,
        None => idx.iter()?,
    };
    for item in range {
        let (k, _) = item?;
        let (on_device, name) = k.value();
        if image.is_some_and(|i| i != on_device) || f(name)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// [`visit_free_devices`] inside a write transaction, handing `f` each free device decoded
/// (a name whose record is missing is skipped). The index and the devices table stay open
/// for the whole visit, one lookup per name; `f` must not use them itself (that is a
/// [`StoreError::TableInUse`]).
///
/// # Errors
/// Storage failure, a corrupt record, or `f`'s error.
pub fn visit_free_devices_in_tx(
    tx: &Tx<'_>,
    image: Option<&str>,
    mut f: impl FnMut(Device) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let idx = tx.free_devices()?;
    let devices = tx.devices()?;
    visit_free_devices(&*idx, image, |name| match device(&*devices, name)? {
        Some(d) => f(d),
        None => Ok(ControlFlow::Continue(())),
    })
}

/// Rebuild `FREE_DEVICES` from `DEVICES` (schema upgrade). A record that does not decode
/// is left out with a warning: it is not free, and reading it elsewhere reports it.
///
/// # Errors
/// Storage failure.
pub fn rebuild_free_index(tx: &Tx<'_>) -> Result<(), StoreError> {
    let devices = tx.devices()?;
    let mut idx = tx.free_devices()?;
    idx.retain(|_, ()| false)?;
    for item in devices.iter()? {
        let (k, v) = item?;
        match decode::<DeviceRecord>("devices", k.value(), &v.value())
            .and_then(|r| device_of(k.value(), r))
        {
            Ok(d) => {
                if let Some(key) = free_key(&d) {
                    idx.insert(key, ())?;
                }
            }
            Err(e) => tracing::warn!(error = %e, "device left out of the free-device index"),
        }
    }
    Ok(())
}

/// Devices whose deadline is at or before `now`, earliest first, at most `limit`.
///
/// # Errors
/// Storage failure.
pub fn due_devices(
    idx: &impl ReadableTable<(u64, &'static str), ()>,
    now: Millis,
    limit: usize,
) -> Result<Vec<(Millis, String)>, StoreError> {
    let mut out = Vec::new();
    for item in idx.range((0, "")..(now.0.saturating_add(1), ""))? {
        let (k, _) = item?;
        let (ms, name) = k.value();
        out.push((Millis(ms), name.to_owned()));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The earliest pending deadline, if any (so a driver can sleep until then).
///
/// # Errors
/// Storage failure.
pub fn next_deadline(
    idx: &impl ReadableTable<(u64, &'static str), ()>,
) -> Result<Option<Millis>, StoreError> {
    Ok(idx.first()?.map(|(k, _)| Millis(k.value().0)))
}
table_access!(
    image,
    images,
    image_in_tx,
    images_in_tx,
    put_image,
    remove_image,
    images,
    "images",
    ImageRecord,
    Image
);
table_access!(
    environment,
    environments,
    environment_in_tx,
    environments_in_tx,
    put_environment,
    remove_environment,
    environments,
    "environments",
    EnvironmentRecord,
    Environment
);
table_access!(
    hardware_type,
    hardware_types,
    hardware_type_in_tx,
    hardware_types_in_tx,
    put_hardware_type,
    remove_hardware_type,
    hardware_types,
    "hardware_types",
    HardwareTypeRecord,
    HardwareTypeInfo
);
