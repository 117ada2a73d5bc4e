//! The `Authorization` header (Bearer / Basic with a hand-written base64 decoder).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mozpool::http::auth::{Auth, base64_decode, credential};
use mozpool::app::config::Config;

static AUTH: LazyLock<Auth> = LazyLock::new(|| {
    let text = format!(
        "[auth]\nanonymous = \"none\"\n[[auth.tokens]]\nname = \"ci\"\nrole = \"request\"\nsha256 = \"{}\"\n",
        mozpool::http::auth::token_digest_hex("s3cret")
    );
    let config = Config::parse(std::path::Path::new("fuzz.toml"), &text).expect("fuzz config");
    Auth::new(config.auth.as_ref())
});

fuzz_target!(|data: &[u8]| {
    let _ = credential(data);
    let _ = AUTH.authenticate(Some(data));
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = base64_decode(s);
    }
});
