//! SUTAgent replies: prompt framing and the `ver`/`uptime` reply parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::hw::sut::{find_prompt, parse_uptime, parse_version, reply_text};

fuzz_target!(|data: &[u8]| {
    if let Some(end) = find_prompt(data) {
        let _ = data.get(..end);
    }
    let _ = reply_text(data);
    let _ = parse_version(data);
    let _ = parse_uptime(data);
});
