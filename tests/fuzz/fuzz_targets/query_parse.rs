//! Query strings and percent-decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::http::body::{Query, decode_component};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let q = Query::parse(Some(&s));
    let _ = q.flag("details");
    let _ = q.number("limit");
    let _ = decode_component(&s);
});
