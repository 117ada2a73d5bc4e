//! Where a device is wired: its relay address ([`RelayAddr`]) and its SUTAgent address
//! ([`SutAddr`]), parsed once at the edge so the model, the drivers and the views hold
//! checked values.
//!
//! Pure addressing only: which boards exist and how to drive them is `hw::relay`'s business.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::names::{BoardName, NameError, check_name, valid_host_port};

/// Highest BCM GPIO number usable on the 40-pin header.
pub const MAX_BCM_PIN: u8 = 27;

/// Most banks a ProXR controller addresses (32 banks x 8 relays = 256 relays). A board's
/// own `banks` setting narrows this; bank 0 means "all banks" on the wire, never one relay.
pub const MAX_BANKS: u8 = 32;

/// Why a relay address was refused; the hardware layer turns it into its `BadAddress`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad relay address {addr}: {reason}")]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct AddrError {
    /// The address text (truncated to 100 chars).
    pub addr: String,
    pub reason: String,
}

/// What is out of range in `channel`, if anything.
fn channel_problem(channel: Channel) -> Option<&'static str> {
    match channel {
        Channel::Relay { bank, .. } if !(1..=MAX_BANKS).contains(&bank) => {
            Some("bank must be 1..=32")
        }
        Channel::Relay { relay, .. } if !(1..=8).contains(&relay) => Some("relay must be 1..=8"),
        Channel::Pin(p) if p > MAX_BCM_PIN => Some("BCM pin must be 0..=27"),
        Channel::Relay { .. } | Channel::Pin(_) => None,
    }
}

/// Which output of a board a device hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A relay on a ProXR or LCUS board: bank 1..=32 (the board's `banks` narrows it),
    /// relay 1..=8 (LCUS: bank 1, relay = channel).
    Relay {
        /// Bank 1..=32.
        bank: u8,
        /// Relay 1..=8.
        relay: u8,
    },
    /// A Raspberry Pi GPIO line, by BCM number (0..=27).
    Pin(u8),
}

/// Where a device's power relay is: board name plus channel.
///
/// Text forms: the original MozPool `relay_info` `host[:port]:bankB:relayR` (board =
/// `host[:port]`) and `board:pinN` for GPIO boards. Parsing range-checks and never panics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayAddr {
    /// The board (a configured board name, or the `host[:port]` of a TCP board).
    pub board: BoardName,
    /// The output on that board.
    pub channel: Channel,
}

impl RelayAddr {
    /// A ProXR/LCUS address, range-checked.
    ///
    /// # Errors
    /// [`AddrError`] when bank is outside 1..=32 or relay outside 1..=8.
    pub fn relay(board: BoardName, bank: u8, relay: u8) -> Result<Self, AddrError> {
        let a = RelayAddr {
            board,
            channel: Channel::Relay { bank, relay },
        };
        a.check()?;
        Ok(a)
    }

    /// A GPIO address, range-checked.
    ///
    /// # Errors
    /// [`AddrError`] when the pin is above [`MAX_BCM_PIN`].
    pub fn pin(board: BoardName, pin: u8) -> Result<Self, AddrError> {
        let a = RelayAddr {
            board,
            channel: Channel::Pin(pin),
        };
        a.check()?;
        Ok(a)
    }

    /// Range-check the channel (its fields are public, so a hand-built address may be out of
    /// range; the hardware layer checks again before it drives a board).
    ///
    /// # Errors
    /// [`AddrError`] naming the bad number.
    pub fn check(&self) -> Result<(), AddrError> {
        match channel_problem(self.channel) {
            Some(reason) => Err(AddrError {
                addr: self.to_string(),
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The channel of `s` and the length of its board prefix, before the board name is
    /// checked; shared by both parsers so the `String` one can reuse the text's buffer.
    fn split(s: &str) -> Result<(usize, Channel), AddrError> {
        let bad = |reason: &str| AddrError {
            addr: s.chars().take(100).collect(),
            reason: reason.to_owned(),
        };
        let num = |part: &str, prefix: &str| -> Result<u8, AddrError> {
            let digits = part
                .strip_prefix(prefix)
                .ok_or_else(|| bad(&format!("expected {prefix}<number>, got {part:?}")))?;
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad(&format!("bad number in {part:?}")));
            }
            digits
                .parse::<u8>()
                .map_err(|_| bad(&format!("number out of range in {part:?}")))
        };
        let (rest, last) = s.rsplit_once(':').ok_or_else(|| bad("missing ':'"))?;
        if last.starts_with("pin") {
            return Ok((rest.len(), Channel::Pin(num(last, "pin")?)));
        }
        let (board, bank) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host[:port]:bankB:relayR or board:pinN"))?;
        Ok((
            board.len(),
            Channel::Relay {
                bank: num(bank, "bank")?,
                relay: num(last, "relay")?,
            },
        ))
    }

    fn bad_board(s: &str, e: &NameError) -> AddrError {
        AddrError {
            addr: s.chars().take(100).collect(),
            reason: e.to_string(),
        }
    }
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.channel {
            Channel::Relay { bank, relay } => write!(f, "{}:bank{bank}:relay{relay}", self.board),
            Channel::Pin(p) => write!(f, "{}:pin{p}", self.board),
        }
    }
}

impl FromStr for RelayAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (len, channel) = RelayAddr::split(s)?;
        let board = s[..len]
            .parse::<BoardName>()
            .map_err(|e| RelayAddr::bad_board(s, &e))?;
        let a = RelayAddr { board, channel };
        a.check()?;
        Ok(a)
    }
}

impl RelayAddr {
    /// As [`FromStr`], but keeping the text's buffer for the board name (decoding a stored
    /// device allocates nothing more for its relay), and handing the text back untouched
    /// when it does not parse, for a caller that must keep it.
    ///
    /// # Errors
    /// The text itself, when it is not a relay address.
    pub fn parse_owned(mut s: String) -> Result<Self, String> {
        let Ok((len, channel)) = RelayAddr::split(&s) else {
            return Err(s);
        };
        if channel_problem(channel).is_some() || check_name(BoardName::KIND, &s[..len]).is_err() {
            return Err(s);
        }
        // Everything is checked: only the board name is left, and it passed above.
        s.truncate(len);
        let board = BoardName::parse_owned(s)?;
        Ok(RelayAddr { board, channel })
    }
}

impl Serialize for RelayAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RelayAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a SUTAgent address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sut {0:?} must be host:port")]
pub struct SutAddrError(pub String);

/// A SUTAgent command address `host:port` (an IPv6 host in brackets), as
/// [`valid_host_port`] accepts it. Kept as the text it was given, so it shows and stores
/// byte for byte as before; resolving it is the only work left to the drivers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SutAddr(String);

impl SutAddr {
    /// The address as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part as written (an IPv6 host keeps its brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map_or(self.0.as_str(), |(h, _)| h)
    }
}

impl FromStr for SutAddr {
    type Err = SutAddrError;

    fn from_str(s: &str) -> Result<Self, SutAddrError> {
        if valid_host_port(s) {
            Ok(SutAddr(s.to_owned()))
        } else {
            Err(SutAddrError(s.chars().take(100).collect()))
        }
    }
}

impl SutAddr {
    /// As [`FromStr`] without copying the text, handing it back untouched when it is not
    /// `host:port`, for a caller that must keep it.
    ///
    /// # Errors
    /// The text itself, when it is not `host:port`.
    pub fn parse_owned(s: String) -> Result<Self, String> {
        if valid_host_port(&s) {
            Ok(SutAddr(s))
        } else {
            Err(s)
        }
    }
}

impl From<SutAddr> for String {
    fn from(a: SutAddr) -> String {
        a.0
    }
}

impl fmt::Display for SutAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ToSocketAddrs for SutAddr {
    type Iter = std::vec::IntoIter<SocketAddr>;

    /// Resolves the host (a literal address needs no lookup), as `str` does.
    fn to_socket_addrs(&self) -> std::io::Result<Self::Iter> {
        self.0.as_str().to_socket_addrs()
    }
}

impl Serialize for SutAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SutAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SutAddr::parse_owned(String::deserialize(d)?)
            .map_err(|s| serde::de::Error::custom(SutAddrError(s.chars().take(100).collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_text_and_string_parsers_agree() {
        for s in [
            "relay-3.example:bank2:relay6",
            "localhost:2999:bank1:relay3",
            "hat1:pin26",
            "r:bank33:relay1",
            "../x:bank1:relay1",
            "r:pin28",
            "",
        ] {
            let a = s.parse::<RelayAddr>();
            let b = RelayAddr::parse_owned(s.to_owned());
            assert_eq!(a.clone().ok(), b.clone().ok(), "{s}");
            if let Err(back) = b {
                assert_eq!(back, s);
            }
            if let Ok(a) = a {
                assert_eq!(a.to_string(), s);
            }
        }
    }

    #[test]
    fn sut_addresses() {
        let a: SutAddr = "panda-1.lab:20701".parse().expect("valid");
        assert_eq!(a.host(), "panda-1.lab");
        assert_eq!(a.to_string(), "panda-1.lab:20701");
        let v6: SutAddr = "[::1]:20701".parse().expect("valid");
        assert_eq!(v6.host(), "[::1]");
        assert!(v6.to_socket_addrs().is_ok_and(|mut i| i.next().is_some()));
        for bad in ["panda-1", ":20701", "a:0", "a b:1"] {
            assert!(bad.parse::<SutAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&a).unwrap_or_default(),
            "\"panda-1.lab:20701\""
        );
    }
}
