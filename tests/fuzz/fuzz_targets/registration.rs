//! SUTAgent registration messages (the TCP protocol's bytes) and MAC parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::inventory::registration::parse::{from_pairs, mac_of, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = parse(data) {
        let _ = m.sut_addr();
        let _ = m.placeholder_name();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = mac_of(s);
    }
    // The JSON form (`POST /api/device/register/`), as its handler builds the pairs.
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        let pairs = map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                serde_json::Value::Number(n) if n.is_u64() => Some((k, n.to_string())),
                _ => None,
            })
            .collect();
        let _ = from_pairs(pairs);
    }
});
