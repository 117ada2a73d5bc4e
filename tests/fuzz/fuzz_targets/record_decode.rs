//! `storage::decode_bytes` for every record type (a corrupt database must give an error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::storage::decode_bytes;
use mozpool::storage::records::{
    DeviceRecord, EnvironmentRecord, HardwareTypeRecord, ImageRecord, LogRecord,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_bytes::<LogRecord>(data);
    let _ = decode_bytes::<DeviceRecord>(data);
    let _ = decode_bytes::<ImageRecord>(data);
    let _ = decode_bytes::<EnvironmentRecord>(data);
    let _ = decode_bytes::<HardwareTypeRecord>(data);
});
