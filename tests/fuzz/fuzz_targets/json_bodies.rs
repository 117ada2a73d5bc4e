//! Every JSON request body type the API decodes, with the handlers' checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mozpool::http::api::decode_bodies(data);
});
