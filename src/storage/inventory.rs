//! Inventory queries and mutations: devices, images, environments, hardware types.
//!
//! Readers are generic over redb's `ReadableTable`, so the same function works in a read
//! snapshot and inside a read-modify-write transaction.

use redb::{ReadableTable, WriteTransaction};

use super::records::{DeviceRecord, EnvironmentRecord, HardwareTypeRecord, ImageRecord};
use super::tables::{DEVICES, ENVIRONMENTS, HARDWARE_TYPES, IMAGES};
use super::{Encoded, StoreError, decode, encode};
use crate::model::{Device, Environment, HardwareTypeInfo, Image};

macro_rules! table_access {
    ($get:ident, $list:ident, $put:ident, $remove:ident, $table:ident, $name:literal, $record:ty, $domain:ty) => {
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
                Some(g) => Ok(Some(decode::<$record>($name, name, &g.value())?.into())),
            }
        }

        #[doc = concat!("Every entry of `", $name, "`, ordered by name.")]
        ///
        /// # Errors
        /// Storage failure or a corrupt record.
        pub fn $list(
            table: &impl ReadableTable<&'static str, Encoded<$record>>,
        ) -> Result<Vec<$domain>, StoreError> {
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push(decode::<$record>($name, k.value(), &v.value())?.into());
            }
            Ok(out)
        }

        #[doc = concat!("Insert or replace an entry of `", $name, "`.")]
        ///
        /// # Errors
        /// Storage failure.
        pub fn $put(tx: &WriteTransaction, value: &$domain) -> Result<(), StoreError> {
            let record: $record = value.into();
            tx.open_table($table)?
                .insert(value.name.as_str(), encode(&record)?)?;
            Ok(())
        }

        #[doc = concat!("Remove an entry of `", $name, "`; returns whether it existed.")]
        ///
        /// # Errors
        /// Storage failure.
        pub fn $remove(tx: &WriteTransaction, name: &str) -> Result<bool, StoreError> {
            Ok(tx.open_table($table)?.remove(name)?.is_some())
        }
    };
}

table_access!(
    device,
    devices,
    put_device,
    remove_device,
    DEVICES,
    "devices",
    DeviceRecord,
    Device
);
table_access!(
    image,
    images,
    put_image,
    remove_image,
    IMAGES,
    "images",
    ImageRecord,
    Image
);
table_access!(
    environment,
    environments,
    put_environment,
    remove_environment,
    ENVIRONMENTS,
    "environments",
    EnvironmentRecord,
    Environment
);
table_access!(
    hardware_type,
    hardware_types,
    put_hardware_type,
    remove_hardware_type,
    HARDWARE_TYPES,
    "hardware_types",
    HardwareTypeRecord,
    HardwareTypeInfo
);
