//! Relay-board replies (ProXR, both framings, every command) and the simulators' own
//! decoders (ProXR commands, LCUS frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mozpool::hw::relay::proxr::{Command, Framing, decode_reply};
use mozpool::hw::sim::{SimFraming, lcus, proxr as sim_proxr};

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
    let sim_framing = if selector & 1 == 0 {
        SimFraming::Raw
    } else {
        SimFraming::Api
    };
    let _ = sim_proxr::decode(sim_framing, bytes);
    let _ = lcus::decode(bytes);
});
