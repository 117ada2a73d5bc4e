//! Relay-board replies (ProXR, both framings, every command; LCUS frames) and, for the
//! simulator side, ProXR command parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::hw::relay::lcus;
use mozpool::hw::relay::proxr::{Command, Framing, decode_reply, parse_command};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let framing = if selector & 1 == 0 {
        Framing::Raw
    } else {
        Framing::Api
    };
    let bank = (selector >> 1) % 6;
    let relay = (selector >> 4) % 10;
    for cmd in [
        Command::Test,
        Command::On { bank, relay },
        Command::Off { bank, relay },
        Command::Read { bank, relay },
    ] {
        let _ = decode_reply(cmd, framing, bytes);
    }
    let _ = parse_command(framing, bytes);
    if let Ok(frame) = <[u8; 4]>::try_from(bytes) {
        let _ = lcus::decode(&frame);
    }
});
