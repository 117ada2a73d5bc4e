//! `Config::parse`: TOML text, including `[auth]`; errors, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mozpool::app::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(Path::new("fuzz.toml"), text);
    }
});
