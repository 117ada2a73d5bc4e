//! Relay boards: addressing ([`RelayAddr`]), board configuration ([`BoardConfig`]) and the
//! [`RelayBoards`] handle the Lifeguard driver calls.
//!
//! Each configured board gets one OS thread (see `actor.rs`) that owns its port and runs
//! one operation at a time, followed by a cool-down. The async methods here only queue a
//! job with an absolute deadline computed *before* queueing and await its reply, so a
//! wedged board can never hang a tokio task past its deadline.
//!
//! Vocabulary: "energised" is the coil state the wire protocol talks about; "power" is
//! the device's power. With the usual normally-closed wiring, energised ⇒ device off.

mod actor;
mod gpio;
pub mod lcus;
mod link;
pub mod proxr;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;
use crate::domain::names::BoardName;
use crate::hw::{Error, Result};

pub use crate::domain::wiring::{Channel, MAX_BCM_PIN, RelayAddr};
pub use gpio::{GpioBackend, RppalGpio, SimGpio};
pub use proxr::Framing;

/// How the device is wired to the relay contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contact {
    /// Normally closed (MozPool's wiring, fail-safe): energised ⇒ device unpowered.
    #[default]
    NormallyClosed,
    /// Normally open: energised ⇒ device powered.
    NormallyOpen,
}

impl Contact {
    /// Coil state that gives the wanted device power.
    #[must_use]
    pub fn energised_for(self, device_on: bool) -> bool {
        match self {
            Contact::NormallyClosed => !device_on,
            Contact::NormallyOpen => device_on,
        }
    }

    /// Device power given the coil state.
    #[must_use]
    pub fn device_on(self, energised: bool) -> bool {
        self.energised_for(energised)
    }
}

/// How a ProXR board is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transport {
    /// USB/RS-232 serial port (use a `/dev/serial/by-id/...` path), 8N1.
    Serial {
        /// Device path.
        path: PathBuf,
        /// Baud rate (NCD default 115200).
        #[serde(default = "default_proxr_baud")]
        baud: u32,
    },
    /// TCP, e.g. a Digi Connect module (one connection per operation, like MozPool).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (default 2101).
        #[serde(default = "default_proxr_port")]
        port: u16,
    },
}

fn default_proxr_baud() -> u32 {
    115_200
}
fn default_proxr_port() -> u16 {
    2101
}
fn default_lcus_baud() -> u32 {
    9600
}
fn default_op_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    1
}
fn default_cool_down() -> Duration {
    Duration::from_secs(1)
}
fn default_reopen_backoff() -> Duration {
    Duration::from_millis(500)
}

/// The kind of board and its kind-specific settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BoardKind {
    /// NCD ProXR controller (banks 1..=4 × relays 1..=8, read-back supported).
    Proxr {
        /// Serial or TCP.
        transport: Transport,
        /// Raw or API-mode framing.
        #[serde(default)]
        framing: Framing,
    },
    /// LCUS CH340 board: write-only, no acknowledgement, no read-back.
    Lcus {
        /// Serial device path (prefer `/dev/serial/by-path/...`: CH340 has no serial number).
        path: PathBuf,
        /// Number of channels (1, 2, 4 or 8).
        channels: u8,
        /// Baud rate (9600).
        #[serde(default = "default_lcus_baud")]
        baud: u32,
    },
    /// Raspberry Pi GPIO lines driving a relay HAT.
    Gpio {
        /// Low level energises the coil (opto-isolated modules, Waveshare).
        active_low: bool,
        /// BCM pins this board may drive (empty = any 0..=27).
        #[serde(default)]
        pins: Vec<u8>,
    },
}

/// One relay board of the rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// Name used in [`RelayAddr`]s.
    pub name: BoardName,
    /// Kind and transport.
    pub kind: BoardKind,
    /// Contact wiring of every device on this board (default normally closed).
    #[serde(default)]
    pub contact: Contact,
    /// Budget of one operation from queueing to reply, in ms (default 30 000). A power
    /// cycle gets this plus its off time.
    #[serde(
        default = "default_op_timeout",
        with = "crate::hw::millis",
        rename = "op_timeout_ms"
    )]
    pub op_timeout: Duration,
    /// Extra attempts per command after a fast failure (EOF, bad reply, refused).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause after every operation before the next one starts, in ms (default 1000).
    #[serde(
        default = "default_cool_down",
        with = "crate::hw::millis",
        rename = "cool_down_ms"
    )]
    pub cool_down: Duration,
    /// First delay before reopening a port that failed to open, in ms; doubles up to 30 s.
    #[serde(
        default = "default_reopen_backoff",
        with = "crate::hw::millis",
        rename = "reopen_backoff_ms"
    )]
    pub reopen_backoff: Duration,
}

impl BoardConfig {
    /// A config with default timings.
    #[must_use]
    pub fn new(name: BoardName, kind: BoardKind) -> Self {
        BoardConfig {
            name,
            kind,
            contact: Contact::default(),
            op_timeout: default_op_timeout(),
            retries: default_retries(),
            cool_down: default_cool_down(),
            reopen_backoff: default_reopen_backoff(),
        }
    }

    /// Whether a relay address naming `board` means this board (its name, or for TCP boards
    /// its `host` or `host:port`, as MozPool's `relay_info` text does).
    #[must_use]
    pub fn serves(&self, board: &BoardName) -> bool {
        if &self.name == board {
            return true;
        }
        match &self.kind {
            BoardKind::Proxr {
                transport: Transport::Tcp { host, port },
                ..
            } => board.as_str() == host || board.as_str() == format!("{host}:{port}"),
            _ => false,
        }
    }

    /// Check that `addr` is a channel this board has.
    ///
    /// # Errors
    /// [`Error::BadAddress`] naming what is wrong.
    pub fn check_channel(&self, addr: &RelayAddr) -> Result<()> {
        let bad = |reason: String| Error::BadAddress {
            addr: addr.to_string(),
            reason,
        };
        addr.check()?;
        match (&self.kind, addr.channel) {
            (BoardKind::Proxr { .. }, Channel::Relay { .. }) => Ok(()),
            (BoardKind::Lcus { channels, .. }, Channel::Relay { bank, relay }) => {
                if bank == 1 && relay <= *channels {
                    Ok(())
                } else {
                    Err(bad(format!("LCUS board has bank 1, relays 1..={channels}")))
                }
            }
            (BoardKind::Gpio { pins, .. }, Channel::Pin(p)) => {
                if pins.is_empty() || pins.contains(&p) {
                    Ok(())
                } else {
                    Err(bad(format!("pin {p} is not in this board's pins {pins:?}")))
                }
            }
            (BoardKind::Gpio { .. }, Channel::Relay { .. }) => {
                Err(bad("GPIO boards are addressed as board:pinN".into()))
            }
            (_, Channel::Pin(_)) => Err(bad("only GPIO boards have pins".into())),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            BoardKind::Proxr { .. } => "proxr",
            BoardKind::Lcus { .. } => "lcus",
            BoardKind::Gpio { .. } => "gpio",
        }
    }
}

/// Health of one board, for the health endpoint and the UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct BoardStatus {
    pub name: BoardName,
    /// `proxr`, `lcus` or `gpio`.
    pub kind: &'static str,
    /// Result of the last operation; `None` before the first one.
    pub healthy: Option<bool>,
    /// When an operation last succeeded.
    pub last_ok: Option<Millis>,
    /// The last error message.
    pub last_error: Option<String>,
    pub ops_ok: u64,
    pub ops_failed: u64,
    /// Operations waiting in the queue now.
    pub queued: usize,
}

/// Cheap-`Clone` handle to every relay board of the rack (one actor thread per board).
///
/// Dropping the last clone stops the actor threads once their queues drain.
#[derive(Clone)]
pub struct RelayBoards {
    inner: Arc<Inner>,
}

struct Inner {
    boards: HashMap<BoardName, actor::BoardHandle>,
    /// `host` and `host:port` of TCP boards, so MozPool `relay_info` text resolves.
    aliases: HashMap<String, BoardName>,
}

impl fmt::Debug for RelayBoards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBoards")
            .field("boards", &self.inner.boards.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RelayBoards {
    /// Start one actor thread per board; GPIO boards use the real rppal backend (which
    /// reports "GPIO unavailable" on each operation off a Pi).
    ///
    /// # Errors
    /// [`Error::BadConfig`] for duplicate names or invalid settings.
    pub fn start(configs: Vec<BoardConfig>) -> Result<Self> {
        Self::start_with_gpio(configs, |_| Box::new(RppalGpio::new()))
    }

    /// Like [`RelayBoards::start`], with a GPIO backend chosen per board (tests, simulation).
    ///
    /// # Errors
    /// [`Error::BadConfig`] for duplicate names or invalid settings.
    pub fn start_with_gpio(
        configs: Vec<BoardConfig>,
        mut gpio: impl FnMut(&BoardName) -> Box<dyn GpioBackend>,
    ) -> Result<Self> {
        let mut boards = HashMap::new();
        let mut aliases = HashMap::new();
        for cfg in configs {
            validate(&cfg)?;
            if boards.contains_key(&cfg.name) {
                return Err(Error::BadConfig(format!(
                    "duplicate relay board {}",
                    cfg.name
                )));
            }
            if let BoardKind::Proxr {
                transport: Transport::Tcp { host, port },
                ..
            } = &cfg.kind
            {
                aliases.insert(host.clone(), cfg.name.clone());
                aliases.insert(format!("{host}:{port}"), cfg.name.clone());
            }
            let backend = match cfg.kind {
                BoardKind::Gpio { .. } => Some(gpio(&cfg.name)),
                _ => None,
            };
            let handle = actor::BoardHandle::spawn(cfg.clone(), backend)?;
            boards.insert(cfg.name, handle);
        }
        Ok(RelayBoards {
            inner: Arc::new(Inner { boards, aliases }),
        })
    }

    fn board(&self, name: &BoardName) -> Result<&actor::BoardHandle> {
        if let Some(b) = self.inner.boards.get(name) {
            return Ok(b);
        }
        self.inner
            .aliases
            .get(name.as_str())
            .and_then(|n| self.inner.boards.get(n))
            .ok_or_else(|| Error::UnknownBoard(name.to_string()))
    }

    /// Power the device on (NC wiring: release the relay), verifying by read-back where
    /// the board supports it.
    ///
    /// # Errors
    /// Any [`Error`]; always within the board's `op_timeout` (plus a small grace).
    pub async fn power_on(&self, addr: &RelayAddr) -> Result<()> {
        self.set(addr, true).await
    }

    /// Power the device off (NC wiring: energise the relay), verifying by read-back.
    ///
    /// # Errors
    /// Any [`Error`]; always within the board's `op_timeout`.
    pub async fn power_off(&self, addr: &RelayAddr) -> Result<()> {
        self.set(addr, false).await
    }

    async fn set(&self, addr: &RelayAddr, device_on: bool) -> Result<()> {
        let b = self.board(&addr.board)?;
        b.config.check_channel(addr)?;
        let budget = b.config.op_timeout;
        b.call(
            actor::Op::Set {
                addr: addr.clone(),
                device_on,
            },
            budget,
        )
        .await
        .map(|_| ())
    }

    /// Device off, read back, wait `off_time`, device on, read back — one board operation.
    /// The deadline is `op_timeout + off_time` from now (queueing counts).
    ///
    /// # Errors
    /// Any [`Error`]; [`Error::RelayStuck`] when a read-back disagrees.
    pub async fn power_cycle(&self, addr: &RelayAddr, off_time: Duration) -> Result<()> {
        let b = self.board(&addr.board)?;
        b.config.check_channel(addr)?;
        let budget = b.config.op_timeout.saturating_add(off_time);
        b.call(
            actor::Op::Cycle {
                addr: addr.clone(),
                off_time,
            },
            budget,
        )
        .await
        .map(|_| ())
    }

    /// Device power as read back from the board: `Some(true)` powered, `None` when the
    /// board cannot read back (LCUS).
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn power_state(&self, addr: &RelayAddr) -> Result<Option<bool>> {
        let b = self.board(&addr.board)?;
        b.config.check_channel(addr)?;
        b.call(actor::Op::Read { addr: addr.clone() }, b.config.op_timeout)
            .await
    }

    /// Two-way communications test (ProXR `FE 21` → `55`; LCUS: the port opens; GPIO: the
    /// GPIO peripheral is available).
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn test(&self, board: &BoardName) -> Result<()> {
        let b = self.board(board)?;
        b.call(actor::Op::Test, b.config.op_timeout)
            .await
            .map(|_| ())
    }

    /// Health of every board, sorted by name.
    #[must_use]
    pub fn status(&self) -> Vec<BoardStatus> {
        let mut v: Vec<BoardStatus> = self.inner.boards.values().map(|b| b.status()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Configured board names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<BoardName> {
        let mut v: Vec<BoardName> = self.inner.boards.keys().cloned().collect();
        v.sort();
        v
    }
}

fn validate(cfg: &BoardConfig) -> Result<()> {
    let bad = |m: String| Err(Error::BadConfig(format!("board {}: {m}", cfg.name)));
    if cfg.op_timeout.is_zero() {
        return bad("op_timeout_ms must be > 0".into());
    }
    match &cfg.kind {
        BoardKind::Lcus { channels, .. } if !matches!(channels, 1 | 2 | 4 | 8) => bad(format!(
            "LCUS channels must be 1, 2, 4 or 8, not {channels}"
        )),
        BoardKind::Gpio { pins, .. } if pins.iter().any(|p| *p > MAX_BCM_PIN) => {
            bad(format!("GPIO pins must be 0..={MAX_BCM_PIN}"))
        }
        _ => Ok(()),
    }
}

/// Time left before `at`, or a timeout error naming `op`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) started: Instant,
}

impl Deadline {
    pub(crate) fn remaining(&self, op: &str) -> Result<Duration> {
        let now = Instant::now();
        if now >= self.at {
            Err(self.expired(op))
        } else {
            Ok((self.at - now).max(Duration::from_millis(1)))
        }
    }

    pub(crate) fn expired(&self, op: &str) -> Error {
        Error::Timeout {
            op: op.to_owned(),
            after: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Result<RelayAddr> {
        Ok(s.parse()?)
    }

    #[test]
    fn parses_mozpool_relay_info() -> Result<()> {
        let a = addr("relay-3.example:bank2:relay6")?;
        assert_eq!(a.board.as_str(), "relay-3.example");
        assert_eq!(a.channel, Channel::Relay { bank: 2, relay: 6 });
        let b = addr("localhost:2999:bank1:relay3")?;
        assert_eq!(b.board.as_str(), "localhost:2999");
        assert_eq!(b.to_string(), "localhost:2999:bank1:relay3");
        let g = addr("hat1:pin26")?;
        assert_eq!(g.channel, Channel::Pin(26));
        assert_eq!(g.to_string(), "hat1:pin26");
        Ok(())
    }

    #[test]
    fn refuses_out_of_range_and_garbage() {
        for s in [
            "r:bank0:relay1",
            "r:bank5:relay1",
            "r:bank1:relay0",
            "r:bank1:relay9",
            "r:bank1:relay300",
            "r:bank1:relay-1",
            "r:bank1:relay+1",
            "r:bank:relay1",
            "r:pin28",
            "r:pin",
            "bank1:relay1",
            ":bank1:relay1",
            "r",
            "",
            "r:relay1:bank1",
            "../x:bank1:relay1",
        ] {
            assert!(addr(s).is_err(), "{s}");
        }
    }

    #[test]
    fn contact_inversion() {
        assert!(Contact::NormallyClosed.energised_for(false));
        assert!(!Contact::NormallyClosed.energised_for(true));
        assert!(Contact::NormallyOpen.energised_for(true));
        assert!(!Contact::NormallyClosed.device_on(true));
    }

    #[test]
    fn config_deserializes_and_denies_unknown_fields() {
        let ok = r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"relay-1"}},
                     "op_timeout_ms": 500, "cool_down_ms": 10}"#;
        let c: BoardConfig = serde_json::from_str(ok).expect("valid config");
        assert_eq!(c.op_timeout, Duration::from_millis(500));
        assert_eq!(c.contact, Contact::NormallyClosed);
        assert_eq!(
            c.kind,
            BoardKind::Proxr {
                transport: Transport::Tcp {
                    host: "relay-1".into(),
                    port: 2101
                },
                framing: Framing::Raw
            }
        );
        for bad in [
            r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"h"}},"bogus":1}"#,
            r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"h","bogus":1}}}"#,
            r#"{"name":"r1","kind":{"type":"lcus","path":"/dev/x","channels":2,"bogus":1}}"#,
            r#"{"name":"r1","kind":{"type":"gpio","active_low":true,"pins":[1],"x":0}}"#,
            r#"{"name":"../r","kind":{"type":"gpio","active_low":true}}"#,
        ] {
            assert!(serde_json::from_str::<BoardConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_checks_per_kind() -> Result<()> {
        let name: BoardName = "b".parse().map_err(|e| Error::BadConfig(format!("{e}")))?;
        let lcus = BoardConfig::new(
            name.clone(),
            BoardKind::Lcus {
                path: "/dev/null".into(),
                channels: 2,
                baud: 9600,
            },
        );
        assert!(
            lcus.check_channel(&RelayAddr::relay(name.clone(), 1, 2)?)
                .is_ok()
        );
        assert!(
            lcus.check_channel(&RelayAddr::relay(name.clone(), 1, 3)?)
                .is_err()
        );
        assert!(
            lcus.check_channel(&RelayAddr::relay(name.clone(), 2, 1)?)
                .is_err()
        );
        assert!(
            lcus.check_channel(&RelayAddr::pin(name.clone(), 2)?)
                .is_err()
        );
        let gpio = BoardConfig::new(
            name.clone(),
            BoardKind::Gpio {
                active_low: true,
                pins: vec![26, 20],
            },
        );
        assert!(
            gpio.check_channel(&RelayAddr::pin(name.clone(), 26)?)
                .is_ok()
        );
        assert!(
            gpio.check_channel(&RelayAddr::pin(name.clone(), 21)?)
                .is_err()
        );
        assert!(gpio.check_channel(&RelayAddr::relay(name, 1, 1)?).is_err());
        Ok(())
    }
}
