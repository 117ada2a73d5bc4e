//! Relay boards: addressing ([`RelayAddr`]), board configuration ([`BoardConfig`]) and the
//! [`RelayBoards`] handle the Lifeguard driver calls.
//!
//! Each configured board gets one OS thread (see `actor.rs`) that owns its port and runs
//! one operation at a time (followed by a cool-down on a single-connection TCP module). A
//! power cycle is two operations with the off time waited between them outside the queue,
//! so the board serves its other relays meanwhile. The async methods here only queue a
//! job with an absolute deadline computed *before* queueing and await its reply, so a
//! wedged board can never hang a tokio task past its deadline.
//!
//! A relay address names its board by the board's name or, for TCP boards, by `host:port`
//! or bare `host` (MozPool's `relay_info`); [`BoardIndex`] resolves it to exactly one board
//! or refuses it, at configuration time and again before every operation.
//!
//! Vocabulary: "energised" is the coil state the wire protocol talks about; "power" is
//! the device's power. With the usual normally-closed wiring, energised ⇒ device off.

mod actor;
mod gpio;
pub mod lcus;
mod link;
pub mod proxr;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::clock::Millis;
use crate::domain::names::BoardName;
use crate::hw::{Error, Result};

pub use crate::domain::wiring::{Channel, MAX_BANKS, MAX_BCM_PIN, RelayAddr};
pub use gpio::{GpioBackend, GpioChange, RppalGpio, SimGpio};
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
        /// The module serves one connection at a time and needs `cool_down_ms` of rest
        /// after each closes before it accepts the next (the Digi Connect module MozPool
        /// used; default true). `false` for modules that take connections back to back.
        #[serde(default = "default_true")]
        single_connection: bool,
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
fn default_true() -> bool {
    true
}
fn default_banks() -> u8 {
    4
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
    /// NCD ProXR controller (banks 1..=`banks` × relays 1..=8, read-back supported).
    Proxr {
        /// Serial or TCP.
        transport: Transport,
        /// Raw or API-mode framing.
        #[serde(default)]
        framing: Framing,
        /// Banks of 8 relays the controller has (1..=32). Default 4, MozPool's boards and
        /// the range every existing address was checked against; set it to the board's
        /// real count so a typo'd bank is refused at start-up instead of timing out.
        #[serde(default = "default_banks")]
        banks: u8,
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
        /// BCM pins wired to relays (required, non-empty): each is claimed at start-up as
        /// an output at its idle level (device powered), and only these may be driven.
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
    /// Rest after every operation before the next one starts, in ms (default 1000, what
    /// MozPool needed for the Digi module). Only a board behind a single-connection TCP
    /// module rests; see [`BoardConfig::effective_cool_down`].
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

    /// The rest after each operation: `cool_down` for a board behind a single-connection
    /// TCP module, none for serial, LCUS and GPIO boards (a port held open needs no
    /// recovery between commands).
    #[must_use]
    pub fn effective_cool_down(&self) -> Duration {
        match &self.kind {
            BoardKind::Proxr {
                transport:
                    Transport::Tcp {
                        single_connection: true,
                        ..
                    },
                ..
            } => self.cool_down,
            _ => Duration::ZERO,
        }
    }

    /// The texts besides its name that name this board in a relay address: `host:port`
    /// and `host` for a TCP board (MozPool's `relay_info`), none for the others.
    fn aliases(&self) -> Vec<String> {
        match &self.kind {
            BoardKind::Proxr {
                transport: Transport::Tcp { host, port, .. },
                ..
            } => vec![format!("{host}:{port}"), host.clone()],
            _ => Vec::new(),
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
            (BoardKind::Proxr { banks, .. }, Channel::Relay { bank, .. }) => {
                if bank <= *banks {
                    Ok(())
                } else {
                    Err(bad(format!(
                        "board {} has banks 1..={banks} (its `banks` setting)",
                        self.name
                    )))
                }
            }
            (BoardKind::Lcus { channels, .. }, Channel::Relay { bank, relay }) => {
                if bank == 1 && relay <= *channels {
                    Ok(())
                } else {
                    Err(bad(format!("LCUS board has bank 1, relays 1..={channels}")))
                }
            }
            (BoardKind::Gpio { pins, .. }, Channel::Pin(p)) => {
                if pins.contains(&p) {
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
    /// The last few failed operations, newest first (at most ten; kept in memory only).
    pub recent_failures: Vec<RelayFailure>,
}

/// One failed relay board operation, for the relay page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayFailure {
    /// When it failed.
    pub at: Millis,
    /// What was tried (`power cycle board:bank1:relay2 on board (power on)`).
    pub op: String,
    /// The relay it switched or read (`board:bank1:relay2`); `None` for a board-wide test.
    pub relay: Option<String>,
    /// The error, as the operation's caller saw it.
    pub error: String,
}

/// The configured boards and the texts that name each of them in a relay address, checked
/// so that every address resolves to exactly one board.
///
/// A board's name always means that board; no board's name may be another board's `host` or
/// `host:port`. Two TCP boards behind one terminal server (`ts1:2101`, `ts1:2102`) share
/// the bare alias `ts1`: an address using it is refused, naming both candidates.
#[derive(Debug, Clone, Default)]
pub struct BoardIndex {
    boards: BTreeMap<BoardName, BoardConfig>,
    /// Alias text to the boards it could mean (more than one only for a bare shared host).
    aliases: HashMap<String, Vec<BoardName>>,
}

impl BoardIndex {
    /// Check every board (settings, duplicate names, name/alias clashes) and index them.
    ///
    /// # Errors
    /// [`Error::BadConfig`] naming the board and the problem.
    pub fn new(configs: &[BoardConfig]) -> Result<Self> {
        let mut boards = BTreeMap::new();
        for cfg in configs {
            validate(cfg)?;
            if boards.insert(cfg.name.clone(), cfg.clone()).is_some() {
                return Err(Error::BadConfig(format!(
                    "duplicate relay board {}",
                    cfg.name
                )));
            }
        }
        let mut aliases: HashMap<String, Vec<BoardName>> = HashMap::new();
        for cfg in configs {
            for (i, alias) in cfg.aliases().into_iter().enumerate() {
                if let Some(other) = boards
                    .keys()
                    .find(|n| n.as_str() == alias && **n != cfg.name)
                {
                    return Err(Error::BadConfig(format!(
                        "board name {other} is also the TCP address of board {}: addresses naming {alias} would be ambiguous; rename one",
                        cfg.name
                    )));
                }
                let list = aliases.entry(alias.clone()).or_default();
                // The first alias is `host:port`: two boards on one socket cannot both exist.
                if i == 0
                    && let Some(first) = list.first()
                {
                    return Err(Error::BadConfig(format!(
                        "boards {first} and {} are both configured at tcp {alias}",
                        cfg.name
                    )));
                }
                list.push(cfg.name.clone());
            }
        }
        Ok(BoardIndex { boards, aliases })
    }

    /// The board a relay address's board part names: a board name, else the one TCP board
    /// at that `host:port` or `host`.
    ///
    /// # Errors
    /// [`Error::UnknownBoard`] when nothing matches; [`Error::BadAddress`] naming the
    /// candidates when a bare host matches more than one board.
    pub fn resolve(&self, board: &BoardName) -> Result<&BoardConfig> {
        if let Some(b) = self.boards.get(board) {
            return Ok(b);
        }
        match self.aliases.get(board.as_str()).map(Vec::as_slice) {
            Some([one]) => self
                .boards
                .get(one)
                .ok_or_else(|| Error::UnknownBoard(board.to_string())),
            Some(many) if !many.is_empty() => {
                let candidates: Vec<String> = many
                    .iter()
                    .filter_map(|n| self.boards.get(n))
                    .map(|b| format!("{} ({})", b.name, b.aliases()[0]))
                    .collect();
                Err(Error::BadAddress {
                    addr: board.to_string(),
                    reason: format!(
                        "ambiguous: host {board} has several boards: {}; name the board or write host:port",
                        candidates.join(", ")
                    ),
                })
            }
            _ => Err(Error::UnknownBoard(board.to_string())),
        }
    }

    /// Resolve `addr`'s board and check that the board has its channel.
    ///
    /// # Errors
    /// As [`BoardIndex::resolve`], or [`Error::BadAddress`] for a channel the board lacks.
    pub fn check(&self, addr: &RelayAddr) -> Result<&BoardConfig> {
        let b = self.resolve(&addr.board)?;
        b.check_channel(addr)?;
        Ok(b)
    }

    /// Number of boards.
    #[must_use]
    pub fn len(&self) -> usize {
        self.boards.len()
    }

    /// Whether no board is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.boards.is_empty()
    }
}

/// Cheap-`Clone` handle to every relay board of the rack (one actor thread per board).
///
/// Dropping the last clone stops the actor threads once their queues drain (and every
/// power cycle in progress has restored its device's power).
#[derive(Clone)]
pub struct RelayBoards {
    inner: Arc<Inner>,
}

struct Inner {
    index: BoardIndex,
    boards: HashMap<BoardName, actor::BoardHandle>,
    /// Bumped by every board thread when its health changes: the relay page's live feed.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
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
    /// A GPIO board's pins are claimed here, before this returns, at their idle level.
    ///
    /// # Errors
    /// [`Error::BadConfig`] for duplicate names or invalid settings.
    pub fn start_with_gpio(
        configs: Vec<BoardConfig>,
        mut gpio: impl FnMut(&BoardName) -> Box<dyn GpioBackend>,
    ) -> Result<Self> {
        let index = BoardIndex::new(&configs)?;
        let changes = Arc::new(tokio::sync::watch::Sender::new(0));
        let mut boards = HashMap::new();
        for cfg in configs {
            let backend = match cfg.kind {
                BoardKind::Gpio { .. } => Some(gpio(&cfg.name)),
                _ => None,
            };
            let handle = actor::BoardHandle::spawn(cfg.clone(), backend, changes.clone())?;
            boards.insert(cfg.name, handle);
        }
        Ok(RelayBoards {
            inner: Arc::new(Inner {
                index,
                boards,
                changes,
            }),
        })
    }

    /// The board `addr` names, after checking it has the channel.
    fn board_for(&self, addr: &RelayAddr) -> Result<&actor::BoardHandle> {
        let cfg = self.inner.index.check(addr)?;
        self.handle(&cfg.name)
    }

    fn handle(&self, name: &BoardName) -> Result<&actor::BoardHandle> {
        self.inner
            .boards
            .get(name)
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
        let b = self.board_for(addr)?;
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

    /// Device off and read back (one queued operation), then `off_time` waited outside the
    /// board's queue while it serves other relays, then device on and read back (a second
    /// queued operation). The deadline is `op_timeout + off_time` from now (queueing
    /// counts); power is restored even when the caller has stopped waiting.
    ///
    /// Per relay, the latest command wins: a power on/off of the same relay during the off
    /// time cancels the pending restore (this cycle then fails with
    /// [`Error::Superseded`]), and a second cycle during the off time absorbs this one
    /// (both return when the second has restored power, after its full off time).
    ///
    /// # Errors
    /// Any [`Error`]; [`Error::RelayStuck`] when a read-back disagrees.
    pub async fn power_cycle(&self, addr: &RelayAddr, off_time: Duration) -> Result<()> {
        let b = self.board_for(addr)?;
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
        let b = self.board_for(addr)?;
        b.call(actor::Op::Read { addr: addr.clone() }, b.config.op_timeout)
            .await
    }

    /// Two-way communications test (ProXR `FE 21` → `55`; LCUS: the port opens; GPIO: the
    /// GPIO peripheral is available).
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn test(&self, board: &BoardName) -> Result<()> {
        let cfg = self.inner.index.resolve(board)?;
        let b = self.handle(&cfg.name)?;
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

    /// A receiver of the boards' change counter: it moves whenever an operation on any
    /// board finishes (the relay page waits on it).
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
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
        BoardKind::Proxr { banks, .. } if !(1..=MAX_BANKS).contains(banks) => bad(format!(
            "ProXR banks must be 1..={MAX_BANKS}, not {banks}"
        )),
        BoardKind::Lcus { channels, .. } if !matches!(channels, 1 | 2 | 4 | 8) => bad(format!(
            "LCUS channels must be 1, 2, 4 or 8, not {channels}"
        )),
        BoardKind::Gpio { pins, .. } if pins.is_empty() => bad(
            "list the BCM pins wired to relays (pins = [26, 20, 21]): each is claimed at start-up at its idle level".into(),
        ),
        BoardKind::Gpio { pins, .. } if pins.iter().any(|p| *p > MAX_BCM_PIN) => {
            bad(format!("GPIO pins must be 0..={MAX_BCM_PIN}"))
        }
        BoardKind::Gpio { pins, .. }
            if pins.iter().enumerate().any(|(i, p)| pins[..i].contains(p)) =>
        {
            bad(format!("GPIO pins {pins:?} list a pin twice"))
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
            "r:bank33:relay1",
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
                    port: 2101,
                    single_connection: true,
                },
                framing: Framing::Raw,
                banks: 4,
            }
        );
        assert_eq!(c.effective_cool_down(), Duration::from_millis(10));
        for bad in [
            r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"h"}},"bogus":1}"#,
            r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"h","bogus":1}}}"#,
            r#"{"name":"r1","kind":{"type":"lcus","path":"/dev/x","channels":2,"bogus":1}}"#,
            r#"{"name":"r1","kind":{"type":"gpio","active_low":true,"pins":[1],"x":0}}"#,
            r#"{"name":"r1","kind":{"type":"proxr","transport":{"type":"tcp","host":"h"},"banks":300}}"#,
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

    fn board(name: &str, kind: BoardKind) -> Result<BoardConfig> {
        let n: BoardName = name.parse().map_err(|e| Error::BadConfig(format!("{e}")))?;
        Ok(BoardConfig::new(n, kind))
    }

    fn proxr(transport: Transport, banks: u8) -> BoardKind {
        BoardKind::Proxr {
            transport,
            framing: Framing::Raw,
            banks,
        }
    }

    fn tcp(host: &str, port: u16) -> Transport {
        Transport::Tcp {
            host: host.into(),
            port,
            single_connection: true,
        }
    }

    fn serial() -> Transport {
        Transport::Serial {
            path: "/dev/null".into(),
            baud: 115_200,
        }
    }

    #[test]
    fn banks_bound_the_addresses_and_are_range_checked() -> Result<()> {
        let one = BoardIndex::new(&[board("usb1", proxr(serial(), 1))?])?;
        one.check(&addr("usb1:bank1:relay8")?)?;
        let e = one
            .check(&addr("usb1:bank2:relay1")?)
            .expect_err("a 1-bank board has no bank 2");
        assert!(matches!(e, Error::BadAddress { .. }), "{e}");
        assert!(e.to_string().contains("banks 1..=1"), "{e}");
        let big = BoardIndex::new(&[board("big", proxr(serial(), 32))?])?;
        big.check(&addr("big:bank32:relay8")?)?;
        for banks in [0, 33] {
            let e =
                BoardIndex::new(&[board("x", proxr(serial(), banks))?]).expect_err("out of range");
            assert!(e.to_string().contains("banks must be 1..=32"), "{e}");
        }
        // The default keeps every address that was valid before the setting existed.
        let c: BoardConfig = serde_json::from_str(
            r#"{"name":"r","kind":{"type":"proxr","transport":{"type":"serial","path":"/dev/x"}}}"#,
        )
        .map_err(|e| Error::BadConfig(e.to_string()))?;
        BoardIndex::new(&[c])?.check(&addr("r:bank4:relay8")?)?;
        Ok(())
    }

    #[test]
    fn addresses_resolve_to_exactly_one_board() -> Result<()> {
        let index = BoardIndex::new(&[
            board("ts1-a", proxr(tcp("ts1", 2101), 4))?,
            board("ts1-b", proxr(tcp("ts1", 2102), 4))?,
            board("relay-2", proxr(tcp("relay-2.lab", 2101), 4))?,
            board("usb", proxr(serial(), 4))?,
        ])?;
        let name_of = |a: &str| -> Result<String> { Ok(index.check(&addr(a)?)?.name.to_string()) };
        assert_eq!(name_of("ts1:2101:bank1:relay1")?, "ts1-a");
        assert_eq!(name_of("ts1:2102:bank1:relay1")?, "ts1-b");
        assert_eq!(name_of("ts1-b:bank1:relay1")?, "ts1-b");
        assert_eq!(name_of("relay-2.lab:bank1:relay1")?, "relay-2");
        assert_eq!(name_of("usb:bank1:relay1")?, "usb");
        let e = index
            .check(&addr("ts1:bank1:relay1")?)
            .expect_err("two boards behind ts1");
        let msg = e.to_string();
        assert!(matches!(e, Error::BadAddress { .. }), "{msg}");
        assert!(msg.contains("ts1-a (ts1:2101)"), "{msg}");
        assert!(msg.contains("ts1-b (ts1:2102)"), "{msg}");
        let e = index
            .check(&addr("ts1:2103:bank1:relay1")?)
            .expect_err("no board there");
        assert!(matches!(e, Error::UnknownBoard(_)), "{e}");
        Ok(())
    }

    #[test]
    fn board_names_and_tcp_addresses_never_collide() -> Result<()> {
        // A board named like another board's host would make that host's addresses mean two
        // boards.
        let e = BoardIndex::new(&[
            board("ts1", proxr(serial(), 4))?,
            board("b", proxr(tcp("ts1", 2101), 4))?,
        ])
        .expect_err("name clashes with a host");
        assert!(e.to_string().contains("ambiguous"), "{e}");
        let e = BoardIndex::new(&[
            board("a", proxr(tcp("ts1", 2101), 4))?,
            board("b", proxr(tcp("ts1", 2101), 4))?,
        ])
        .expect_err("one socket, two boards");
        assert!(
            e.to_string().contains("both configured at tcp ts1:2101"),
            "{e}"
        );
        // A board named after its own host is MozPool's usual setup.
        BoardIndex::new(&[board("relay-1", proxr(tcp("relay-1", 2101), 4))?])?;
        Ok(())
    }

    #[test]
    fn only_single_connection_tcp_modules_cool_down() -> Result<()> {
        let t = board("t", proxr(tcp("h", 2101), 4))?;
        assert_eq!(t.effective_cool_down(), Duration::from_secs(1));
        let multi = board(
            "m",
            proxr(
                Transport::Tcp {
                    host: "h".into(),
                    port: 2102,
                    single_connection: false,
                },
                4,
            ),
        )?;
        assert_eq!(multi.effective_cool_down(), Duration::ZERO);
        let mut s = board("s", proxr(serial(), 4))?;
        s.cool_down = Duration::from_millis(700);
        assert_eq!(s.effective_cool_down(), Duration::ZERO);
        let g = board(
            "g",
            BoardKind::Gpio {
                active_low: true,
                pins: vec![26],
            },
        )?;
        assert_eq!(g.effective_cool_down(), Duration::ZERO);
        let c: BoardConfig = serde_json::from_str(
            r#"{"name":"r","kind":{"type":"proxr","transport":{"type":"tcp","host":"h","single_connection":false}}}"#,
        )
        .map_err(|e| Error::BadConfig(e.to_string()))?;
        assert_eq!(c.effective_cool_down(), Duration::ZERO);
        Ok(())
    }

    #[test]
    fn gpio_boards_must_list_their_pins() -> Result<()> {
        let e = BoardIndex::new(&[board(
            "hat",
            BoardKind::Gpio {
                active_low: true,
                pins: vec![],
            },
        )?])
        .expect_err("no pins");
        assert!(e.to_string().contains("list the BCM pins"), "{e}");
        let e = BoardIndex::new(&[board(
            "hat",
            BoardKind::Gpio {
                active_low: true,
                pins: vec![26, 26],
            },
        )?])
        .expect_err("twice");
        assert!(e.to_string().contains("twice"), "{e}");
        Ok(())
    }
}
