//! Pure LCUS-1/2/4/8 (CH340 "LC USB switch") frame codec: `A0 <channel> <state> <sum>`.
//!
//! The board never answers, so there is no reply decoding: a complete write is the only
//! success signal the driver can honestly report.

/// Frame start byte.
pub const START: u8 = 0xA0;

/// Encode "set channel (1-based) energised/released".
#[must_use]
pub fn encode(channel: u8, energised: bool) -> [u8; 4] {
    let state = u8::from(energised);
    [
        START,
        channel,
        state,
        START.wrapping_add(channel).wrapping_add(state),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_examples() {
        assert_eq!(encode(1, true), [0xA0, 0x01, 0x01, 0xA2]);
        assert_eq!(encode(1, false), [0xA0, 0x01, 0x00, 0xA1]);
        assert_eq!(encode(2, true), [0xA0, 0x02, 0x01, 0xA3]);
        assert_eq!(encode(8, true), [0xA0, 0x08, 0x01, 0xA9]);
    }
}
