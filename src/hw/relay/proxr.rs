//! Pure NCD ProXR frame codec of the driver: command encoding, reply decoding and API-mode
//! framing (`AA len payload checksum`).
//!
//! No I/O here. The simulator (`hw::sim::proxr`) has its own decoder written from the
//! protocol reference, so tests of one against the other are not circular. "On" means the
//! relay coil is energised.

use serde::{Deserialize, Serialize};

/// Command mode prefix byte of every ProXR command.
pub const PREFIX: u8 = 0xFE;
/// Acknowledgement byte for set and test commands.
pub const ACK: u8 = 0x55;
/// API-mode frame start byte.
pub const API_START: u8 = 0xAA;

/// How commands are wrapped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Bare command bytes (MozPool's setup, NCD default).
    #[default]
    Raw,
    /// `AA <len> <payload> <checksum>` (newer NCD firmware).
    Api,
}

/// A ProXR command the service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Two-way communications test (`FE 21`, reply `55`).
    Test,
    /// Energise relay `relay` (1..=8) of bank `bank` (1..=32).
    On {
        /// Bank 1..=32.
        bank: u8,
        /// Relay 1..=8.
        relay: u8,
    },
    /// De-energise a relay.
    Off {
        /// Bank 1..=32.
        bank: u8,
        /// Relay 1..=8.
        relay: u8,
    },
    /// Read one relay (reply `00` off / `01` on).
    Read {
        /// Bank 1..=32.
        bank: u8,
        /// Relay 1..=8.
        relay: u8,
    },
}

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `55`.
    Ack,
    /// Relay state read back: `true` = energised.
    State(bool),
}

/// Why a reply was refused; carries the offending bytes for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// What the protocol requires here.
    pub expected: String,
    /// The bytes that arrived.
    pub got: Vec<u8>,
}

impl Command {
    /// The unframed payload bytes.
    #[must_use]
    pub fn payload(self) -> Vec<u8> {
        match self {
            Command::Test => vec![PREFIX, 0x21],
            Command::On { bank, relay } => vec![PREFIX, 0x6B + relay, bank],
            Command::Off { bank, relay } => vec![PREFIX, 0x63 + relay, bank],
            Command::Read { bank, relay } => vec![PREFIX, 0x73 + relay, bank],
        }
    }

    /// The bytes to send with this framing.
    #[must_use]
    pub fn encode(self, framing: Framing) -> Vec<u8> {
        let p = self.payload();
        match framing {
            Framing::Raw => p,
            Framing::Api => api_frame(&p),
        }
    }

    /// Human name for logs and errors.
    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Command::Test => "two-way test".into(),
            Command::On { bank, relay } => format!("energise bank{bank}:relay{relay}"),
            Command::Off { bank, relay } => format!("release bank{bank}:relay{relay}"),
            Command::Read { bank, relay } => format!("read bank{bank}:relay{relay}"),
        }
    }
}

/// Low byte of the sum of `bytes`.
#[must_use]
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Wrap a payload as an API-mode frame.
#[must_use]
pub fn api_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 3);
    f.push(API_START);
    f.push(u8::try_from(payload.len()).unwrap_or(u8::MAX));
    f.extend_from_slice(payload);
    f.push(checksum(&f));
    f
}

/// Exact number of reply bytes to read (every reply carries one data byte).
#[must_use]
pub fn reply_len(framing: Framing) -> usize {
    match framing {
        Framing::Raw => 1,
        Framing::Api => 4,
    }
}

/// Decode exactly [`reply_len`] bytes answering `cmd`.
///
/// # Errors
/// [`ReplyError`] for a wrong length, bad API frame, or a byte the command does not allow.
pub fn decode_reply(cmd: Command, framing: Framing, bytes: &[u8]) -> Result<Reply, ReplyError> {
    let err = |expected: &str| ReplyError {
        expected: expected.to_owned(),
        got: bytes.to_vec(),
    };
    let data = match framing {
        Framing::Raw => match bytes {
            [b] => *b,
            _ => return Err(err("exactly one byte")),
        },
        Framing::Api => match bytes {
            [API_START, 1, b, ck] if *ck == checksum(&bytes[..3]) => *b,
            _ => return Err(err("API frame aa 01 <byte> <checksum>")),
        },
    };
    match cmd {
        Command::Test | Command::On { .. } | Command::Off { .. } => {
            if data == ACK {
                Ok(Reply::Ack)
            } else {
                Err(err("55"))
            }
        }
        Command::Read { .. } => match data {
            0 => Ok(Reply::State(false)),
            1 => Ok(Reply::State(true)),
            _ => Err(err("00 or 01")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_match_mozpool_table() {
        assert_eq!(Command::Test.encode(Framing::Raw), vec![0xFE, 0x21]);
        assert_eq!(
            Command::On { bank: 2, relay: 1 }.encode(Framing::Raw),
            vec![0xFE, 0x6C, 2]
        );
        assert_eq!(
            Command::On { bank: 1, relay: 8 }.encode(Framing::Raw),
            vec![0xFE, 0x73, 1]
        );
        assert_eq!(
            Command::Off { bank: 4, relay: 1 }.encode(Framing::Raw),
            vec![0xFE, 0x64, 4]
        );
        assert_eq!(
            Command::Off { bank: 1, relay: 8 }.encode(Framing::Raw),
            vec![0xFE, 0x6B, 1]
        );
        assert_eq!(
            Command::Read { bank: 3, relay: 1 }.encode(Framing::Raw),
            vec![0xFE, 0x74, 3]
        );
        assert_eq!(
            Command::Read { bank: 3, relay: 8 }.encode(Framing::Raw),
            vec![0xFE, 0x7B, 3]
        );
    }

    #[test]
    fn api_frame_matches_ncd_example() {
        assert_eq!(
            Command::On { bank: 1, relay: 1 }.encode(Framing::Api),
            vec![0xAA, 0x03, 0xFE, 0x6C, 0x01, 0x18]
        );
        assert_eq!(
            decode_reply(Command::Test, Framing::Api, &[0xAA, 0x01, 0x55, 0x00]),
            Ok(Reply::Ack)
        );
        assert_eq!(
            decode_reply(
                Command::Read { bank: 1, relay: 1 },
                Framing::Api,
                &[0xAA, 0x01, 0x00, 0xAB]
            ),
            Ok(Reply::State(false))
        );
    }

    #[test]
    fn decode_accepts_only_exact_replies() {
        let on = Command::On { bank: 1, relay: 1 };
        let rd = Command::Read { bank: 1, relay: 1 };
        assert_eq!(decode_reply(on, Framing::Raw, &[0x55]), Ok(Reply::Ack));
        assert!(decode_reply(on, Framing::Raw, &[0x54]).is_err());
        assert!(decode_reply(on, Framing::Raw, &[]).is_err());
        assert!(decode_reply(on, Framing::Raw, &[0x55, 0x55]).is_err());
        assert_eq!(decode_reply(rd, Framing::Raw, &[1]), Ok(Reply::State(true)));
        assert_eq!(
            decode_reply(rd, Framing::Raw, &[0]),
            Ok(Reply::State(false))
        );
        assert!(decode_reply(rd, Framing::Raw, &[0x55]).is_err());
        assert_eq!(
            decode_reply(on, Framing::Api, &[0xAA, 1, 0x55, 0]),
            Ok(Reply::Ack)
        );
        assert!(decode_reply(on, Framing::Api, &[0xAA, 1, 0x55, 1]).is_err());
        assert_eq!(
            decode_reply(rd, Framing::Api, &[0xAA, 1, 1, 0xAC]),
            Ok(Reply::State(true))
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_and_parse_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            for framing in [Framing::Raw, Framing::Api] {
                let _ = decode_reply(Command::Read { bank: 1, relay: 1 }, framing, &bytes);
            }
        }
    }
}
