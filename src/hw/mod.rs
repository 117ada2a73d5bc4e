//! Hardware layer: relay boards (ProXR over serial/TCP, LCUS, Raspberry Pi GPIO), the
//! SUTAgent client, `adb`, reachability probes, `fastboot` flashing and image files, plus
//! simulators that speak the same bytes over the same transports.
//!
//! Owns every byte that goes to a device or a relay board. It must not import upward
//! (lifeguard, pool, http): callers hand it typed addresses and deadlines and get
//! [`Error`] values back. Nothing here blocks a tokio worker: relay boards are served by
//! one OS thread each ([`relay::RelayBoards`]), everything else is async.

pub mod adb;
pub mod config;
pub mod fastboot;
pub mod images;
pub mod metrics;
pub mod ping;
pub mod relay;
pub mod sim;
pub mod sut;
pub mod tool;

use std::time::Duration;

pub use adb::{Adb, AdbProblem};
pub use fastboot::{FastbootStep, FlashDeadlines, Flasher};
pub use images::{ImageFiles, ImageRecipe, ImageSource, ImageStore, RecipeStep};
pub use relay::{
    BoardConfig, BoardIndex, BoardKind, BoardStatus, Channel, Contact, Framing, GpioBackend,
    RelayAddr, RelayBoards, RelayFailure, SimGpio, Transport,
};
pub use sut::SutInfo;

/// Result type of the hardware layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to hardware, one variant per cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation's deadline passed (while queued, or waiting for a reply).
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        op: String,
        /// How long it had been running (or queued) when it gave up.
        after: Duration,
    },
    /// The peer closed the connection (EOF) before answering.
    #[error("no reply to {op}: connection closed by peer")]
    NoReply {
        /// What was being done.
        op: String,
    },
    /// The peer answered something other than what the protocol requires.
    #[error("bad reply to {op}: expected {expected}, got {got}")]
    BadReply {
        /// What was being done.
        op: String,
        /// What the protocol requires.
        expected: String,
        /// What arrived (hex bytes or escaped text).
        got: String,
    },
    /// A relay acknowledged a command but reads back in the old state.
    #[error("relay {addr} did not change state: wanted {wanted}, reads {got}")]
    RelayStuck {
        /// The relay.
        addr: String,
        /// Device power we asked for.
        wanted: &'static str,
        /// Device power read back.
        got: &'static str,
    },
    /// A power cycle's pending restore of power was cancelled by a later power on/off of
    /// the same relay during its off time (the later command wins).
    #[error("{op} superseded by a later {by} of the same relay")]
    Superseded {
        /// The cycle that did not finish.
        op: String,
        /// The command that overtook it (`power on`, `power off`).
        by: &'static str,
    },
    /// An operating-system I/O error.
    #[error("{context}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Io {
        /// What was being done.
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The board is known but cannot be used now (port missing, reopen backoff, actor gone).
    #[error("relay board {board} unavailable: {reason}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    BoardUnavailable { board: String, reason: String },
    /// No board with that name is configured.
    #[error("unknown relay board {0}")]
    UnknownBoard(String),
    /// A relay address or channel that this board cannot serve.
    #[error("bad relay address {addr}: {reason}")]
    BadAddress {
        /// The address text.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// Invalid configuration.
    #[error("bad hardware configuration: {0}")]
    BadConfig(String),
    /// GPIO cannot be used on this host (not a Pi, no permission, pin busy, feature off).
    #[error("GPIO unavailable: {0}")]
    GpioUnavailable(String),
    /// The device never showed up (fastboot kept waiting for it).
    #[error("device {serial} absent: {detail}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    DeviceAbsent {
        serial: String,
        /// What was seen.
        detail: String,
    },
    /// adb could not use the device.
    #[error("adb {serial}: {kind}: {detail}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Adb {
        serial: String,
        kind: AdbProblem,
        /// What adb or the device said.
        detail: String,
    },
    /// fastboot reported a failure.
    #[error("fastboot failed: {msg}")]
    FastbootFailed {
        /// The `FAILED (remote: ...)` / `fastboot: error:` text, or the exit status.
        msg: String,
    },
    /// The SUTAgent answered with `##AGENT-WARNING##`.
    #[error("SUTAgent warning: {0}")]
    AgentWarning(String),
    /// The peer sent more than the client is willing to buffer.
    #[error("{op}: reply larger than {limit} bytes")]
    TooLarge {
        /// What was being done.
        op: String,
        /// The cap.
        limit: u64,
    },
    /// A file name in an image recipe that could name a path outside the store.
    #[error("refused image file name {0:?}: must be a plain file name")]
    BadFileName(String),
    /// HTTP download failure (status, connection, URL).
    #[error("download {url}: {msg}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Download {
        url: String,
        /// What went wrong.
        msg: String,
    },
    /// A downloaded file did not match the build's `.sha256`.
    #[error("checksum mismatch for {file}: expected {expected}, got {got}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    ChecksumMismatch {
        file: String,
        /// Published digest.
        expected: String,
        /// Digest of what arrived.
        got: String,
    },
}

impl From<crate::domain::wiring::AddrError> for Error {
    fn from(e: crate::domain::wiring::AddrError) -> Error {
        Error::BadAddress {
            addr: e.addr,
            reason: e.reason,
        }
    }
}

impl Error {
    /// An [`Error::Io`] with context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Bytes as space-separated hex for error messages and logs (`fe 21`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    if s.is_empty() {
        s.push_str("(nothing)");
    }
    s
}

/// Serde helper: durations in config are integer milliseconds.
pub(crate) mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Deserialize integer milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    /// Serialize as integer milliseconds.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
    }
}
