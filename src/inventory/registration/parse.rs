//! The pure registration-message parser: bytes (or JSON key/value pairs) in, a validated
//! [`RegistrationMessage`] or a [`RegistrationError`] saying why out. No I/O, no clock, no
//! panics (a proptest below feeds it arbitrary bytes).
//!
//! Wire forms accepted (hardware.md §1.7):
//! - Java SUTAgent: `register NAME=..&IPADDR=..&CMDPORT=..&...\n`, values percent-encoded;
//! - Negatus: `NAME=SUTAgent&IPADDR=..` with no prefix and no newline.
//!
//! Rules: strip an optional leading `register `, trim CR/LF/NUL/space at both ends, split on
//! `&`, split each pair at its first `=`, percent-decode keys and values (`+` stays a `+`;
//! a bad escape is refused), upper-case the keys, keep unknown keys. The Java agent leaves
//! `&` and `=` unencoded inside values (`Uri.encode(s, "=&")`), so after one of its free-text
//! fields (`OS`, `HARDWARE`, `POOL`) a segment that does not start a later field of its fixed
//! order (no `=`, an unknown key, a key already given) is the rest of that value:
//! `HARDWARE=x&y&POOL=a&b` is `HARDWARE` `x&y` and `POOL` `a&b`.
//!
//! `IPADDR` may carry a port (`10.0.0.5:20701`, `[fe80::1]:20701`), and may be a wildcard
//! (`0.0.0.0` or `::`, Negatus sends its listen address `0.0.0.0:20701`): a wildcard means
//! "the address this message came from", filled in by [`RegistrationMessage::at_peer`].
//!
//! Refused: missing or empty `NAME`/`IPADDR`, a non-numeric numeric field, an `IPADDR` port
//! that disagrees with `CMDPORT`, messages over [`MAX_MESSAGE_BYTES`], values over
//! [`MAX_VALUE_BYTES`], more than [`MAX_FIELDS`] fields, control characters, invalid UTF-8,
//! duplicate keys, keys that are not `[A-Za-z0-9_]{1,32}`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::domain::names::DeviceName;
use crate::domain::wiring::SutAddr;

/// Largest registration message accepted, in bytes (a real one is about 250).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Largest decoded value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Most fields accepted in one message.
pub const MAX_FIELDS: usize = 32;
/// SUTAgent's command port, used when a registration does not say (Negatus).
pub const DEFAULT_CMD_PORT: u16 = 20701;

/// Fields that must be unsigned integers when present and non-empty.
const NUMERIC: &[&str] = &[
    "CMDPORT",
    "DATAPORT",
    "SCRNWIDTH",
    "SCRNHEIGHT",
    "BPP",
    "MEMORY",
];

/// Agent names that are not identities: Negatus always sends `SUTAgent`, and the Java agent
/// falls back to `0011223344556677` when it finds no MAC or IMEI. Such a registration names
/// no device; it is matched to the inventory by its address instead (see `apply`).
const PLACEHOLDER_NAMES: &[&str] = &["sutagent", "0011223344556677"];

/// The Java agent's fields, in the fixed order it sends them (hardware.md §1.7).
const JAVA_ORDER: &[&str] = &[
    "NAME",
    "IPADDR",
    "CMDPORT",
    "DATAPORT",
    "OS",
    "SCRNWIDTH",
    "SCRNHEIGHT",
    "BPP",
    "MEMORY",
    "HARDWARE",
    "POOL",
];

/// The Java agent's fields whose values are free text and so may hold a raw `&` (`OS` is
/// `Build.DISPLAY`, `HARDWARE` and `POOL` come from `SUTAgent.ini`). The other fields are
/// numbers, addresses and MACs, which never do.
const FREE_TEXT: &[&str] = &["OS", "HARDWARE", "POOL"];

/// Why a registration message was refused. The `Display` text is what the agent gets after
/// `ERROR ` and what the `registration` log records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// Nothing but whitespace.
    #[error("empty registration message")]
    Empty,
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("registration message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// More than [`MAX_FIELDS`] fields.
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
    /// A pair without `=` or with a bad key.
    #[error("bad field {0:?}: expected KEY=value with KEY made of letters, digits and '_'")]
    BadField(String),
    /// The same key twice.
    #[error("field {0} given twice")]
    Duplicate(String),
    /// A `%` not followed by two hex digits.
    #[error("field {0}: bad percent escape")]
    BadEscape(String),
    /// Decoded bytes are not UTF-8.
    #[error("field {0}: not valid UTF-8")]
    NotUtf8(String),
    /// A control character in a key or value.
    #[error("field {0}: control characters are not allowed")]
    ControlChar(String),
    /// A value over [`MAX_VALUE_BYTES`].
    #[error("field {0}: value longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(String),
    /// `NAME` or `IPADDR` missing or empty.
    #[error("required field {0} is missing or empty")]
    Missing(&'static str),
    /// A numeric field that is not a number (or a port that is not 1–65535).
    #[error("field {key} must be {what}, got {value:?}")]
    NotNumeric {
        /// The key.
        key: String,
        /// What was expected.
        what: &'static str,
        /// The value (already length-capped).
        value: String,
    },
    /// `IPADDR` is neither an IP address nor a host name (with an optional port).
    #[error("IPADDR {0:?} is not an IP address or host name")]
    BadAddress(String),
    /// `IPADDR` carries a port and `CMDPORT` names another.
    #[error("IPADDR port {ipaddr} disagrees with CMDPORT {cmdport}")]
    PortConflict {
        /// The port in `IPADDR`.
        ipaddr: u16,
        /// `CMDPORT`.
        cmdport: u16,
    },
    /// `NAME` cannot be a device name.
    #[error("NAME {name:?} cannot be used as a device name: {reason}")]
    BadName {
        /// The agent's NAME.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A validated registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationMessage {
    /// The agent's `NAME` as it sent it (decoded), usually its Wi-Fi MAC.
    pub agent_name: String,
    /// The device name it maps to; `None` for a generic NAME (`SUTAgent`,
    /// `0011223344556677`), which names no device (see [`RegistrationMessage::placeholder_name`]).
    pub device_name: Option<DeviceName>,
    /// The MAC address in the original's form (12 lowercase hex digits) when `NAME` is one.
    pub mac: Option<String>,
    /// `IPADDR` as the agent sent it (decoded), port included, for the log.
    pub ipaddr: String,
    /// The agent's host: `IPADDR` without its port, or, once [`RegistrationMessage::at_peer`]
    /// has filled in a wildcard, the address the message came from.
    pub ip: String,
    /// Whether `IPADDR` was a wildcard (`0.0.0.0`, `::`), meaning "where this came from".
    pub wildcard: bool,
    /// `CMDPORT`, else the port in `IPADDR`, else [`DEFAULT_CMD_PORT`].
    pub cmd_port: u16,
    /// The SUTAgent command address `ip:cmd_port` (IPv6 in brackets). For a wildcard it names
    /// the wildcard until [`RegistrationMessage::at_peer`] fills in the peer.
    pub sut: SutAddr,
    /// `HARDWARE` when present and non-empty.
    pub hardware: Option<String>,
    /// `POOL` when present and non-empty.
    pub pool: Option<String>,
    /// Every field except `NAME` and `IPADDR`, keys upper-cased, empty values kept.
    pub fields: BTreeMap<String, String>,
}

impl RegistrationMessage {
    /// The SUTAgent command address `IPADDR:CMDPORT` (IPv6 in brackets).
    #[must_use]
    pub fn sut_addr(&self) -> &SutAddr {
        &self.sut
    }

    /// Whether the agent's NAME is a shared placeholder rather than an identity.
    #[must_use]
    pub fn placeholder_name(&self) -> bool {
        is_placeholder(&self.agent_name)
    }

    /// This registration as it came from `peer`: a wildcard `IPADDR` becomes the peer's
    /// address (the port the agent gave is kept); any other message is returned unchanged.
    ///
    /// # Errors
    /// [`RegistrationError::BadAddress`] if the peer's address makes no SUTAgent address
    /// (it always does for an IP address; the error keeps the signature honest).
    pub fn at_peer(&self, peer: IpAddr) -> Result<RegistrationMessage, RegistrationError> {
        if !self.wildcard {
            return Ok(self.clone());
        }
        let ip = peer.to_canonical().to_string();
        let sut = sut_of(&ip, self.cmd_port)?;
        Ok(RegistrationMessage {
            ip,
            sut,
            ..self.clone()
        })
    }
}

/// Parse one registration message in either agent form.
///
/// # Errors
/// [`RegistrationError`] naming the first problem found.
pub fn parse(bytes: &[u8]) -> Result<RegistrationMessage, RegistrationError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(RegistrationError::TooLong);
    }
    let trim = |b: &u8| matches!(b, b'\r' | b'\n' | b'\0' | b' ' | b'\t');
    let start = bytes.iter().position(|b| !trim(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !trim(b))
        .map_or(start, |i| i + 1);
    let mut body = bytes.get(start..end).unwrap_or_default();
    if body.len() >= 9 && body[..9].eq_ignore_ascii_case(b"register ") {
        body = &body[9..];
        while let Some((b' ', rest)) = body.split_first() {
            body = rest;
        }
    }
    if body.is_empty() || body.eq_ignore_ascii_case(b"register") {
        return Err(RegistrationError::Empty);
    }
    // Raw (key, value) segments; a free-text value may absorb the segments that follow it.
    let mut raw: Vec<(&[u8], Vec<u8>)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for segment in body.split(|&b| b == b'&') {
        let eq = segment.iter().position(|&b| b == b'=');
        let key = eq.map(|e| String::from_utf8_lossy(&segment[..e]).to_ascii_uppercase());
        if let Some((prev, value)) = raw.last_mut() {
            let prev = String::from_utf8_lossy(prev).to_ascii_uppercase();
            if continues(&prev, key.as_deref(), &seen) {
                value.push(b'&');
                value.extend_from_slice(segment);
                continue;
            }
        }
        if raw.len() >= MAX_FIELDS {
            return Err(RegistrationError::TooManyFields);
        }
        let Some(eq) = eq else {
            return Err(RegistrationError::BadField(shown(segment)));
        };
        seen.extend(key);
        raw.push((&segment[..eq], segment[eq + 1..].to_vec()));
    }
    let mut pairs = Vec::with_capacity(raw.len());
    for (key, value) in raw {
        let key = decode(key, &shown(key))?;
        let value = decode(&value, &key)?;
        pairs.push((key, value));
    }
    from_pairs(pairs)
}

/// Whether a segment with key `key` (`None`: no `=`) that follows a field `prev` is the rest
/// of `prev`'s value: only after a free-text field of the Java agent, and only when the
/// segment does not start one of the fields the agent sends later, not yet seen.
fn continues(prev: &str, key: Option<&str>, seen: &[String]) -> bool {
    if !FREE_TEXT.contains(&prev) {
        return false;
    }
    let at = |k: &str| JAVA_ORDER.iter().position(|j| *j == k);
    let starts_next = key.is_some_and(|k| {
        !seen.iter().any(|s| s == k) && at(k).zip(at(prev)).is_some_and(|(k, p)| k > p)
    });
    !starts_next
}

/// Validate already-split fields (the JSON form over HTTP uses this directly). Keys are
/// matched case-insensitively.
///
/// # Errors
/// [`RegistrationError`].
pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<RegistrationMessage, RegistrationError> {
    if pairs.len() > MAX_FIELDS {
        return Err(RegistrationError::TooManyFields);
    }
    let mut fields = BTreeMap::new();
    for (key, value) in pairs {
        if key.is_empty()
            || key.len() > 32
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(RegistrationError::BadField(key.chars().take(40).collect()));
        }
        let key = key.to_ascii_uppercase();
        if value.len() > MAX_VALUE_BYTES {
            return Err(RegistrationError::ValueTooLong(key));
        }
        if value.chars().any(char::is_control) {
            return Err(RegistrationError::ControlChar(key));
        }
        if fields.contains_key(&key) {
            return Err(RegistrationError::Duplicate(key));
        }
        fields.insert(key, value);
    }
    let agent_name = fields
        .remove("NAME")
        .filter(|v| !v.trim().is_empty())
        .ok_or(RegistrationError::Missing("NAME"))?;
    let ipaddr = fields
        .remove("IPADDR")
        .filter(|v| !v.trim().is_empty())
        .ok_or(RegistrationError::Missing("IPADDR"))?;
    let (ip, ip_port) = split_host_port(ipaddr.trim())?;
    for key in NUMERIC {
        let Some(v) = fields.get(*key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let port = key.ends_with("PORT");
        let ok = if port {
            v.parse::<u16>().is_ok_and(|p| p > 0)
        } else {
            v.parse::<u64>().is_ok()
        };
        if !ok {
            return Err(RegistrationError::NotNumeric {
                key: (*key).to_owned(),
                what: if port {
                    "a port number (1-65535)"
                } else {
                    "a non-negative integer"
                },
                value: v.chars().take(40).collect(),
            });
        }
    }
    let cmdport = fields.get("CMDPORT").and_then(|v| v.parse::<u16>().ok());
    let cmd_port = match (ip_port, cmdport) {
        (Some(a), Some(b)) if a != b => {
            return Err(RegistrationError::PortConflict {
                ipaddr: a,
                cmdport: b,
            });
        }
        (a, b) => b.or(a).unwrap_or(DEFAULT_CMD_PORT),
    };
    let wildcard = ip.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified());
    let non_empty = |k: &str| fields.get(k).filter(|v| !v.trim().is_empty()).cloned();
    let hardware = non_empty("HARDWARE");
    let pool = non_empty("POOL");
    let mac = mac_of(&agent_name);
    let device_name = device_name(&agent_name, mac.as_deref())?;
    let sut = sut_of(&ip, cmd_port)?;
    Ok(RegistrationMessage {
        agent_name,
        device_name,
        mac,
        ipaddr,
        ip,
        wildcard,
        cmd_port,
        sut,
        hardware,
        pool,
        fields,
    })
}

/// The device name for an agent NAME:
/// - a MAC (`00:11:22:33:44:55`, `00-11-…` or `001122334455`, any case) becomes the
///   lower-case colon form `00:11:22:33:44:55`;
/// - a placeholder NAME shared by many devices (`SUTAgent`, `0011223344556677`) names no
///   device (`None`): only the inventory can say which device sent it;
/// - anything else is used as it is and must be a valid device name.
fn device_name(agent: &str, mac: Option<&str>) -> Result<Option<DeviceName>, RegistrationError> {
    let name = if let Some(mac) = mac {
        mac.as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    } else if is_placeholder(agent) {
        return Ok(None);
    } else {
        agent.to_owned()
    };
    DeviceName::try_from(name)
        .map(Some)
        .map_err(|e| RegistrationError::BadName {
            name: agent.chars().take(80).collect(),
            reason: e.to_string(),
        })
}

/// The SUTAgent address `host:port` (an IPv6 host in brackets).
fn sut_of(host: &str, port: u16) -> Result<SutAddr, RegistrationError> {
    let text = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    SutAddr::parse_owned(text).map_err(RegistrationError::BadAddress)
}

/// Split `IPADDR` into a checked host and an optional port: `10.0.0.5`, `10.0.0.5:20701`,
/// `fe80::1`, `[fe80::1]:20701`, `host.lab`, `host.lab:20701`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), RegistrationError> {
    let bad = || RegistrationError::BadAddress(s.chars().take(80).collect());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if s.parse::<IpAddr>().is_ok() {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad()),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
    };
    let host = check_address(host).map_err(|_| bad())?;
    Ok((host, port))
}

fn is_placeholder(agent: &str) -> bool {
    PLACEHOLDER_NAMES
        .iter()
        .any(|p| p.eq_ignore_ascii_case(agent))
}

/// The 12-lowercase-hex form of a MAC address written with `:`/`-` separators or none.
#[must_use]
pub fn mac_of(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    let separated = s.len() == 17
        && s.as_bytes()
            .iter()
            .skip(2)
            .step_by(3)
            .all(|&b| b == s.as_bytes()[2])
        && matches!(s.as_bytes()[2], b':' | b'-');
    if hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) && (s.len() == 12 || separated)
    {
        Some(hex.to_ascii_lowercase())
    } else {
        None
    }
}

fn check_address(ip: &str) -> Result<String, RegistrationError> {
    let ip = ip.trim();
    if ip.parse::<IpAddr>().is_ok() {
        return Ok(ip.to_owned());
    }
    let hostname = ip.len() <= 253
        && ip.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if hostname {
        Ok(ip.to_owned())
    } else {
        Err(RegistrationError::BadAddress(ip.chars().take(80).collect()))
    }
}

/// Percent-decode one key or value (no `+` to space); `what` names it in errors.
fn decode(raw: &[u8], what: &str) -> Result<String, RegistrationError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(RegistrationError::BadEscape(what.to_owned()));
            };
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| RegistrationError::NotUtf8(what.to_owned()))?;
    if s.chars().any(char::is_control) {
        return Err(RegistrationError::ControlChar(what.to_owned()));
    }
    Ok(s)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A short printable rendering of raw bytes for error messages.
fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Percent-encode a value the way Android's `Uri.encode(s)` does: letters, digits and
/// `_-!.~'()*` stay, everything else becomes `%XX` (upper-case hex) of its UTF-8 bytes.
#[must_use]
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_-!.~'()*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAVA: &[u8] = b"register NAME=00%3A11%3A22%3A33%3A44%3A55&IPADDR=127.0.0.1&CMDPORT=20701&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=panda&POOL=\n";

    #[test]
    fn java_form() {
        let m = parse(JAVA).expect("parses");
        assert_eq!(m.agent_name, "00:11:22:33:44:55");
        assert_eq!(
            m.device_name.as_ref().map(DeviceName::as_str),
            Some("00:11:22:33:44:55")
        );
        assert_eq!(m.mac.as_deref(), Some("001122334455"));
        assert_eq!(m.ip, "127.0.0.1");
        assert_eq!(m.sut_addr().as_str(), "127.0.0.1:20701");
        assert_eq!(m.hardware.as_deref(), Some("panda"));
        assert_eq!(m.pool, None);
        assert_eq!(m.fields["OS"], "Android-IMM76D");
        assert_eq!(m.fields["POOL"], "");
        assert!(!m.fields.contains_key("NAME"));
    }

    #[test]
    fn negatus_form_and_placeholder_name() {
        let m = parse(b"NAME=SUTAgent&IPADDR=10.0.0.5").expect("parses");
        assert_eq!(m.device_name, None, "a generic NAME names no device");
        assert_eq!(m.cmd_port, DEFAULT_CMD_PORT);
        assert!(m.placeholder_name());
        assert!(!m.wildcard);
        assert_eq!(m.mac, None);
        let m = parse(b"NAME=0011223344556677&IPADDR=10.0.0.5").expect("parses");
        assert_eq!(m.device_name, None);
    }

    /// What Negatus really sends: its listen address, the wildcard, with the port, encoded by
    /// its own encoder (`:` as `%3A`), keys in `std::map` order, no prefix, no newline.
    #[test]
    fn negatus_wildcard_means_the_peer() {
        for bytes in [
            &b"IPADDR=0.0.0.0%3A20701&NAME=SUTAgent"[..],
            b"NAME=SUTAgent&IPADDR=0.0.0.0%3A20701",
        ] {
            let m = parse(bytes).expect("parses");
            assert!(m.wildcard);
            assert_eq!(m.ipaddr, "0.0.0.0:20701");
            assert_eq!(m.cmd_port, 20701);
            let peer: IpAddr = "127.0.0.1".parse().expect("ip");
            let at = m.at_peer(peer).expect("peer");
            assert_eq!(at.ip, "127.0.0.1");
            assert_eq!(at.sut_addr().as_str(), "127.0.0.1:20701");
            assert_eq!(at.ipaddr, "0.0.0.0:20701", "what it sent stays for the log");
        }
        // Without a port, the default command port; IPv6 wildcard; v4-mapped peers.
        let m = parse(b"NAME=SUTAgent&IPADDR=0.0.0.0").expect("parses");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(
            m.at_peer(mapped).expect("peer").sut_addr().as_str(),
            "10.0.0.7:20701"
        );
        let m = parse(b"NAME=SUTAgent&IPADDR=%5B%3A%3A%5D%3A20702").expect("parses");
        assert!(m.wildcard);
        let v6: IpAddr = "fe80::1".parse().expect("ip");
        assert_eq!(
            m.at_peer(v6).expect("peer").sut_addr().as_str(),
            "[fe80::1]:20702"
        );
        // A real address is kept whatever the peer.
        let m = parse(b"NAME=dev-1&IPADDR=10.0.0.5%3A20705").expect("parses");
        assert_eq!(m.sut_addr().as_str(), "10.0.0.5:20705");
        let at = m.at_peer(mapped).expect("peer");
        assert_eq!(at, m);
    }

    #[test]
    fn ipaddr_ports() {
        let m = parse(b"NAME=d&IPADDR=10.0.0.5:20701&CMDPORT=20701").expect("same port");
        assert_eq!(m.cmd_port, 20701);
        assert_eq!(
            parse(b"NAME=d&IPADDR=10.0.0.5:20701&CMDPORT=20702"),
            Err(RegistrationError::PortConflict {
                ipaddr: 20701,
                cmdport: 20702
            })
        );
        let m = parse(b"NAME=d&IPADDR=host.lab:20709").expect("host with port");
        assert_eq!(m.sut_addr().as_str(), "host.lab:20709");
        let m = parse(b"NAME=d&IPADDR=fe80::1").expect("bare IPv6");
        assert_eq!(m.sut_addr().as_str(), "[fe80::1]:20701");
        for bad in [
            &b"NAME=d&IPADDR=10.0.0.5:0"[..],
            b"NAME=d&IPADDR=10.0.0.5:x",
            b"NAME=d&IPADDR=10.0.0.5:",
            b"NAME=d&IPADDR=[fe80::1",
            b"NAME=d&IPADDR=[nothost]:1",
            b"NAME=d&IPADDR=[fe80::1]x",
            b"NAME=d&IPADDR=a:b:c",
        ] {
            assert!(
                matches!(parse(bad), Err(RegistrationError::BadAddress(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The Java agent's `Uri.encode(s, "=&")` leaves `&` and `=` raw inside values.
    #[test]
    fn ampersands_inside_free_text_values() {
        let m = parse(b"register NAME=00%3A11%3A22%3A33%3A44%3A55&IPADDR=10.0.0.5&CMDPORT=20701&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=panda&POOL=a&b\n")
            .expect("POOL=a&b");
        assert_eq!(m.pool.as_deref(), Some("a&b"));
        assert_eq!(m.hardware.as_deref(), Some("panda"));
        let m = parse(b"NAME=n1&IPADDR=10.0.0.5&HARDWARE=x&y&POOL=").expect("HARDWARE=x&y");
        assert_eq!(m.hardware.as_deref(), Some("x&y"));
        assert_eq!(m.pool, None);
        assert_eq!(m.fields["POOL"], "");
        let m =
            parse(b"NAME=n1&IPADDR=10.0.0.5&HARDWARE=x&y=z&&POOL=p&q=r&NAME=s&k").expect("mixed");
        assert_eq!(m.hardware.as_deref(), Some("x&y=z&"));
        assert_eq!(m.pool.as_deref(), Some("p&q=r&NAME=s&k"));
        assert_eq!(m.agent_name, "n1");
        let m = parse(b"NAME=n1&IPADDR=10.0.0.5&OS=A&B%20C&SCRNWIDTH=800").expect("OS");
        assert_eq!(m.fields["OS"], "A&B C");
        assert_eq!(m.fields["SCRNWIDTH"], "800");
        // Numbers, addresses and NAME never hold a raw `&`: a stray segment there is refused
        // (no `=`) or kept as an unknown key, as before.
        assert!(matches!(
            parse(b"NAME=n1&IPADDR=10.0.0.5&junk"),
            Err(RegistrationError::BadField(_))
        ));
        let m = parse(b"NAME=n1&IPADDR=10.0.0.5&X_EXTRA=1").expect("unknown key");
        assert_eq!(m.fields["X_EXTRA"], "1");
    }

    #[test]
    fn trims_and_keeps_plus_and_unknown_keys() {
        let m = parse(b"\0\r\nregister NAME=dev-1&IPADDR=10.0.0.1&x_extra=a+b%20c\r\n\0")
            .expect("parses");
        assert_eq!(
            m.device_name.as_ref().map(DeviceName::as_str),
            Some("dev-1")
        );
        assert_eq!(m.fields["X_EXTRA"], "a+b c");
    }

    #[test]
    fn mac_forms_are_normalised() {
        for s in ["00:1A:22:33:44:55", "00-1a-22-33-44-55", "001A22334455"] {
            let m = from_pairs(vec![
                ("NAME".into(), s.into()),
                ("IPADDR".into(), "10.0.0.1".into()),
            ])
            .expect(s);
            assert_eq!(
                m.device_name.as_ref().map(DeviceName::as_str),
                Some("00:1a:22:33:44:55"),
                "{s}"
            );
            assert_eq!(m.mac.as_deref(), Some("001a22334455"));
        }
        assert_eq!(mac_of("00:1a:22-33:44:55"), None);
        assert_eq!(mac_of("panda-1"), None);
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"register \n", "empty"),
            (b"IPADDR=1.2.3.4", "NAME"),
            (b"NAME=a", "IPADDR"),
            (b"NAME=&IPADDR=1.2.3.4", "NAME"),
            (b"NAME=a&IPADDR=1.2.3.4&CMDPORT=x", "CMDPORT"),
            (b"NAME=a&IPADDR=1.2.3.4&CMDPORT=70000", "CMDPORT"),
            (b"NAME=a&IPADDR=1.2.3.4&MEMORY=-1", "MEMORY"),
            (b"NAME=a&IPADDR=1.2.3.4&NAME=b", "twice"),
            (b"NAME=a&ipaddr=1.2.3.4&IPADDR=1.2.3.5", "twice"),
            (b"NAME=a%0Ab&IPADDR=1.2.3.4", "control"),
            (b"NAME=a\x01b&IPADDR=1.2.3.4", "control"),
            (b"NAME=a%zz&IPADDR=1.2.3.4", "escape"),
            (b"NAME=a%4&IPADDR=1.2.3.4", "escape"),
            (b"NAME=a%FF&IPADDR=1.2.3.4", "UTF-8"),
            (b"NAME=a&IPADDR=1.2.3.4&junk", "bad field"),
            (b"NAME=a&IPADDR=not an address", "IPADDR"),
            (b"NAME=../etc&IPADDR=1.2.3.4", "device name"),
            (b"GET / HTTP/1.1\r\n", "bad field"),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(&String::from_utf8_lossy(input));
            assert!(
                err.to_string().contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
        let long = format!("NAME=a&IPADDR=1.2.3.4&OS={}", "x".repeat(300));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(RegistrationError::ValueTooLong(_))
        ));
        let huge = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(parse(&huge), Err(RegistrationError::TooLong));
        let many: Vec<String> = (0..40).map(|i| format!("K{i}=1")).collect();
        assert_eq!(
            parse(many.join("&").as_bytes()),
            Err(RegistrationError::TooManyFields)
        );
    }

    #[test]
    fn encode_round_trips() {
        let v = "Android 4.0 (IMM76D)+x:y/é";
        let line = format!("NAME=n1&IPADDR=10.0.0.1&OS={}", encode(v));
        assert_eq!(parse(line.as_bytes()).expect("parses").fields["OS"], v);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_near_valid(s in "(register )?NAME=[A-Za-z0-9%:=&.-]{0,40}&IPADDR=[0-9.%a-z:]{0,20}(&[A-Z]{1,6}=[0-9a-z%+]{0,10}){0,5}[\r\n\0]{0,2}") {
            let _ = parse(s.as_bytes());
        }
    }
}
