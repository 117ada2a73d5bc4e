//! Validated names built at the edge (HTTP paths, bodies, config, registrations), so the rest
//! of the crate never handles an unchecked string.
//!
//! Rule for every name: 1 to 64 characters from `[A-Za-z0-9._:-]`, not starting with `.` or
//! `-`, never `.` or `..`. That keeps names safe as URL path segments, log keys, file names
//! and child-process arguments (a name can never look like an option to `fastboot`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("{kind} must not be empty")]
    Empty {
        /// What kind of name it was.
        kind: &'static str,
    },
    /// Over [`MAX_NAME_LEN`] characters.
    #[error("{kind} is longer than {MAX_NAME_LEN} characters")]
    TooLong {
        /// What kind of name it was.
        kind: &'static str,
    },
    /// A character outside the allowed set, or a bad first character.
    #[error(
        "{kind} {value:?} may only contain letters, digits, '.', '_', ':' and '-', and must not start with '.' or '-'"
    )]
    BadChars {
        /// What kind of name it was.
        kind: &'static str,
        /// The refused value (truncated to 80 chars for messages).
        value: String,
    },
}

/// Longest accepted name.
pub const MAX_NAME_LEN: usize = 64;

/// Check a name against the common rule.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_name(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if s.chars().count() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind });
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok_chars || s.starts_with('.') || s.starts_with('-') {
        return Err(NameError::BadChars {
            kind,
            value: s.chars().take(80).collect(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// What the name is called in error messages.
            pub const KIND: &'static str = $kind;

            /// The name as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                check_name($kind, s)?;
                Ok($name(s.to_owned()))
            }
        }

        impl $name {
            /// As [`TryFrom<String>`], handing the text back untouched when it is not a
            /// name, for a caller that must keep it.
            ///
            /// # Errors
            /// The text itself, when it is not a valid name.
            pub fn parse_owned(s: String) -> Result<Self, String> {
                if check_name($kind, &s).is_ok() {
                    Ok($name(s))
                } else {
                    Err(s)
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                check_name($kind, &s)?;
                Ok($name(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        /// A checked name reads like any `&str` (only building one is guarded).
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        /// Maps keyed by a name can be searched with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A device's short name (`panda-0042`); unique across the pool.
    DeviceName,
    "device name"
);
name_type!(
    /// A relay board's short name (`relay-3`).
    BoardName,
    "relay board name"
);
name_type!(
    /// An image name from the image registry (`b2g`, `android`, `self-test`).
    ImageName,
    "image name"
);
name_type!(
    /// An environment (pool partition) name; `any` matches every environment in requests.
    EnvironmentName,
    "environment name"
);
name_type!(
    /// A hardware type (`panda`, `nexus-s`).
    HardwareType,
    "hardware type"
);
name_type!(
    /// A controller's (imaging server's) name, normally its FQDN.
    ServerName,
    "server name"
);

impl ServerName {
    /// `localhost`, the name of a controller that was not given one.
    #[must_use]
    pub fn localhost() -> ServerName {
        ServerName("localhost".to_owned())
    }
}

/// `host:port` with a non-empty host and a numeric port.
#[must_use]
pub fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "panda-0042",
            "relay-3.lab",
            "b2g",
            "00:11:22:33:44:55",
            "A_b.c-d",
        ] {
            assert!(n.parse::<DeviceName>().is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        for n in [
            "", ".", "..", "-s", "a/b", "a b", "a\0b", "x;rm", "é", "../etc",
        ] {
            assert!(n.parse::<DeviceName>().is_err(), "{n:?}");
        }
        assert!("a".repeat(65).parse::<DeviceName>().is_err());
        assert!("a".repeat(64).parse::<DeviceName>().is_ok());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<DeviceName, _> = serde_json::from_str("\"panda-1\"");
        assert!(ok.is_ok());
        let bad: Result<DeviceName, _> = serde_json::from_str("\"../x\"");
        assert!(bad.is_err());
    }
}
