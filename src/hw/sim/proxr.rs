//! `SimProxrBoard`: an NCD ProXR emulator served on a pseudo-terminal and/or loopback TCP
//! (one client at a time, like the Digi module), with a relay state map, a change hook,
//! an action log, a log of the frames received and fault knobs per board or per relay.
//!
//! Its decoder ([`decode`]) is written from the protocol reference (§2.1 command table,
//! §2.2 API framing, §7.1 behaviour), not from the driver's codec, so a test of the driver
//! against it checks the driver's bytes against the reference rather than against itself.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{RelayHook, lock, runtime};

/// Entries kept in the action log and in the frame log: enough for any test to read what
/// it caused, bounded so that a rack left running for days does not grow.
const LOG_KEEP: usize = 4096;

/// Every ProXR command starts with this byte (254).
const CMD: u8 = 0xFE;
/// API-mode frame start (§2.2).
const API: u8 = 0xAA;
/// The acknowledgement byte (85).
const OK: u8 = 0x55;
/// Relays per bank.
const RELAYS: u8 = 8;

/// How the simulated board frames commands and replies (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimFraming {
    /// Bare command bytes, one reply byte.
    #[default]
    Raw,
    /// `AA <len> <payload> <checksum>` both ways.
    Api,
}

/// What the simulated controller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimProxrConfig {
    /// Framing it speaks.
    pub framing: SimFraming,
    /// Banks it has (1..=32); commands for other banks get no reply (§7.1).
    pub banks: u8,
}

impl Default for SimProxrConfig {
    /// Raw framing, 4 banks (MozPool's boards).
    fn default() -> Self {
        SimProxrConfig {
            framing: SimFraming::Raw,
            banks: 4,
        }
    }
}

impl SimProxrConfig {
    /// 4 banks with this framing.
    #[must_use]
    pub fn framing(framing: SimFraming) -> Self {
        SimProxrConfig {
            framing,
            ..Self::default()
        }
    }

    /// The same with `banks` banks.
    #[must_use]
    pub fn with_banks(self, banks: u8) -> Self {
        SimProxrConfig { banks, ..self }
    }
}

/// A command as the board understands it (reference §2.1). `bank` 0 means every bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub enum SimCommand {
    /// `FE 21`: two-way communications test, reply `55`.
    Test,
    /// `FE 6C..73 B`: energise relay 1..8 of bank B, reply `55`.
    On { bank: u8, relay: u8 },
    /// `FE 64..6B B`: release relay 1..8 of bank B, reply `55`.
    Off { bank: u8, relay: u8 },
    /// `FE 74..7B B`: read relay 1..8 of bank B, reply `00` released / `01` energised.
    Read { bank: u8, relay: u8 },
    /// `FE 7C B`: one status byte for the bank, bit 0 = relay 1.
    BankStatus { bank: u8 },
    /// `FE 81 B`: release every relay of the bank, reply `55`.
    AllOff { bank: u8 },
    /// `FE 82 B`: energise every relay of the bank, reply `55`.
    AllOn { bank: u8 },
    /// `FE 8C P B`: set the bank to bit pattern P (bit 0 = relay 1), reply `55`.
    SetPattern { pattern: u8, bank: u8 },
}

/// What the start of a received buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole command yet.
    Incomplete,
    /// A command and the number of bytes it took (API frame included).
    Command(SimCommand, usize),
    /// Bytes that are no command (unknown code, bad frame or checksum); how many to drop.
    Unknown(usize),
}

/// Decode one command from the start of `buf`.
#[must_use]
pub fn decode(framing: SimFraming, buf: &[u8]) -> Decoded {
    match framing {
        SimFraming::Raw => decode_payload(buf),
        SimFraming::Api => {
            let (Some(&start), Some(&len)) = (buf.first(), buf.get(1)) else {
                return if buf.first().is_some_and(|b| *b != API) {
                    Decoded::Unknown(1)
                } else {
                    Decoded::Incomplete
                };
            };
            if start != API {
                return Decoded::Unknown(1);
            }
            let total = usize::from(len) + 3;
            let Some(frame) = buf.get(..total) else {
                return Decoded::Incomplete;
            };
            let (body, ck) = frame.split_at(total - 1);
            if ck[0] != sum(body) {
                return Decoded::Unknown(total);
            }
            match decode_payload(&body[2..]) {
                Decoded::Command(c, n) if n == usize::from(len) => Decoded::Command(c, total),
                _ => Decoded::Unknown(total),
            }
        }
    }
}

/// Low byte of the sum of `bytes` (the API checksum).
fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn decode_payload(buf: &[u8]) -> Decoded {
    let Some(&first) = buf.first() else {
        return Decoded::Incomplete;
    };
    if first != CMD {
        return Decoded::Unknown(1);
    }
    let Some(&code) = buf.get(1) else {
        return Decoded::Incomplete;
    };
    let need = match code {
        0x21 => return Decoded::Command(SimCommand::Test, 2),
        0x64..=0x7C | 0x81 | 0x82 => 3,
        0x8C => 4,
        _ => return Decoded::Unknown(2),
    };
    let Some(args) = buf.get(2..need) else {
        return Decoded::Incomplete;
    };
    let bank = args[args.len() - 1];
    let cmd = match code {
        0x64..=0x6B => SimCommand::Off {
            bank,
            relay: code - 0x63,
        },
        0x6C..=0x73 => SimCommand::On {
            bank,
            relay: code - 0x6B,
        },
        0x74..=0x7B => SimCommand::Read {
            bank,
            relay: code - 0x73,
        },
        0x7C => SimCommand::BankStatus { bank },
        0x81 => SimCommand::AllOff { bank },
        0x82 => SimCommand::AllOn { bank },
        _ => SimCommand::SetPattern {
            pattern: args[0],
            bank,
        },
    };
    Decoded::Command(cmd, need)
}

/// The bytes of a one-byte reply: the byte, or `AA 01 <byte> <checksum>` in API mode.
#[must_use]
pub fn reply_frame(framing: SimFraming, byte: u8) -> Vec<u8> {
    match framing {
        SimFraming::Raw => vec![byte],
        SimFraming::Api => {
            let mut f = vec![API, 1, byte];
            f.push(sum(&f));
            f
        }
    }
}

/// Fault knobs; set per board or per relay (a relay's knobs replace the board's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimRelayFaults {
    /// Delay before every reply, in ms.
    pub reply_delay_ms: u64,
    /// Swallow commands: no state change, no reply.
    pub never_reply: bool,
    /// Reply with this byte instead of the right one.
    pub wrong_reply: Option<u8>,
    /// Acknowledge set commands but keep the old state.
    pub stuck: bool,
    /// Drop the connection (TCP) or the command (pty) after receiving it, without reply.
    pub close_mid_command: bool,
}

/// One entry of the action log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimAction {
    /// Two-way test.
    Test,
    /// Set command received for one relay (`energised` requested; state may be stuck). A
    /// bank-wide command logs one entry per relay it addresses.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Set {
        bank: u8,
        relay: u8,
        /// Requested coil state.
        energised: bool,
    },
    /// Read command answered with this state.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Get {
        bank: u8,
        relay: u8,
        /// State reported.
        energised: bool,
    },
    /// Bank status read answered with this byte.
    // Fields are named for what they hold.
    #[allow(missing_docs)]
    Status { bank: u8, byte: u8 },
}

#[derive(Default)]
struct Shared {
    relays: HashMap<(u8, u8), bool>,
    /// The last [`LOG_KEEP`] actions.
    log: VecDeque<SimAction>,
    /// The last [`LOG_KEEP`] frames received (whole API frames included), decoded or not.
    frames: VecDeque<Vec<u8>>,
    board_faults: SimRelayFaults,
    relay_faults: HashMap<(u8, u8), SimRelayFaults>,
    hook: Option<RelayHook>,
}

impl Shared {
    fn record(&mut self, action: SimAction) {
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        self.log.push_back(action);
    }

    fn received(&mut self, frame: Vec<u8>) {
        if self.frames.len() == LOG_KEEP {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }
}

/// A simulated ProXR board: a task on the simulators' runtime serves its pty or its TCP
/// port (no thread per board, so a rack of hundreds of boards costs tasks). Dropping it
/// ends the task.
pub struct SimProxrBoard {
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    pty_path: Option<PathBuf>,
    tcp_addr: Option<SocketAddr>,
    /// The pty's own slave handle, kept open so the driver can reopen the path.
    _slave: Option<OwnedFd>,
}

impl std::fmt::Debug for SimProxrBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProxrBoard")
            .field("pty_path", &self.pty_path)
            .field("tcp_addr", &self.tcp_addr)
            .finish()
    }
}

impl SimProxrBoard {
    /// Serve on a new pseudo-terminal; the driver opens [`SimProxrBoard::pty_path`].
    ///
    /// # Errors
    /// When the pty cannot be created.
    pub fn on_pty(cfg: SimProxrConfig) -> io::Result<Self> {
        let mut me = Self::empty();
        let rt = runtime::handle()?;
        let (master, slave, path) = {
            let _guard = rt.enter();
            open_pty()?
        };
        let (shared, stop) = (me.shared.clone(), me.stop.clone());
        rt.spawn(async move {
            let mut master = master;
            tokio::select! {
                () = stop.cancelled() => {}
                _ = serve(&mut master, &shared, cfg, false) => {}
            }
        });
        me.pty_path = Some(path);
        me._slave = Some(slave);
        Ok(me)
    }

    /// Serve on `127.0.0.1:0`, one client at a time; see [`SimProxrBoard::tcp_addr`].
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn on_tcp(cfg: SimProxrConfig) -> io::Result<Self> {
        let listener = runtime::listener(TcpListener::bind("127.0.0.1:0")?)?;
        let mut me = Self::empty();
        me.tcp_addr = Some(listener.local_addr()?);
        let (shared, stop) = (me.shared.clone(), me.stop.clone());
        runtime::handle()?.spawn(async move {
            // One client at a time, like the Digi module: the next is accepted only when
            // this one has gone.
            let serving = async {
                loop {
                    match listener.accept().await {
                        Ok((mut s, _)) => {
                            let _ = serve(&mut s, &shared, cfg, true).await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = serving => {}
            }
        });
        Ok(me)
    }

    fn empty() -> Self {
        SimProxrBoard {
            shared: Arc::default(),
            stop: CancellationToken::new(),
            pty_path: None,
            tcp_addr: None,
            _slave: None,
        }
    }

    /// The pty path to configure as the board's serial port.
    #[must_use]
    pub fn pty_path(&self) -> Option<&std::path::Path> {
        self.pty_path.as_deref()
    }

    /// The loopback address to configure as the board's TCP host/port.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Install the relay-change hook.
    pub fn set_hook(&self, hook: RelayHook) {
        lock(&self.shared).hook = Some(hook);
    }

    /// Coil state of one relay (all start released).
    #[must_use]
    pub fn energised(&self, bank: u8, relay: u8) -> bool {
        lock(&self.shared)
            .relays
            .get(&(bank, relay))
            .copied()
            .unwrap_or(false)
    }

    /// Force a relay state without a command (initial conditions); calls no hook.
    pub fn preset(&self, bank: u8, relay: u8, energised: bool) {
        lock(&self.shared).relays.insert((bank, relay), energised);
    }

    /// Action log so far (the last 4,096 actions).
    #[must_use]
    pub fn log(&self) -> Vec<SimAction> {
        lock(&self.shared).log.iter().copied().collect()
    }

    /// Every frame received so far, as bytes (a whole `AA ..` frame in API mode; the last
    /// 4,096).
    #[must_use]
    pub fn frames(&self) -> Vec<Vec<u8>> {
        lock(&self.shared).frames.iter().cloned().collect()
    }

    /// Clear the action log and the frame log.
    pub fn clear_log(&self) {
        let mut s = lock(&self.shared);
        s.log.clear();
        s.frames.clear();
    }

    /// Set the board-wide fault knobs.
    pub fn set_faults(&self, f: SimRelayFaults) {
        lock(&self.shared).board_faults = f;
    }

    /// Set one relay's fault knobs (`None` reverts it to the board's).
    pub fn set_relay_faults(&self, bank: u8, relay: u8, f: Option<SimRelayFaults>) {
        let mut s = lock(&self.shared);
        match f {
            Some(f) => s.relay_faults.insert((bank, relay), f),
            None => s.relay_faults.remove(&(bank, relay)),
        };
    }
}

impl Drop for SimProxrBoard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The master side of the board's pty, non-blocking and driven by the runtime's reactor:
/// tokio's pipe halves are plain non-blocking `read`/`write` on a descriptor, which is what
/// a pty master needs.
type PtyMaster = tokio::io::Join<tokio::net::unix::pipe::Receiver, tokio::net::unix::pipe::Sender>;

/// A new pty in raw mode: its master as a [`PtyMaster`] (call inside the simulators'
/// runtime), its slave and the slave's path.
fn open_pty() -> io::Result<(PtyMaster, OwnedFd, PathBuf)> {
    use nix::sys::termios;
    let pty = nix::pty::openpty(None, None)?;
    let mut t = termios::tcgetattr(&pty.slave)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &t)?;
    let path = nix::unistd::ttyname(&pty.slave)?;
    let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    let writer = pty.master.try_clone()?;
    let master = tokio::io::join(
        tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(pty.master)?,
        tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(writer)?,
    );
    Ok((master, pty.slave, path))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    shared: &Mutex<Shared>,
    cfg: SimProxrConfig,
    tcp: bool,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) if tcp => return Ok(()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO (or 0) while no slave is open; keep serving.
            Err(e) if tcp => return Err(e),
            Err(_) => {}
        }
        if pending.is_empty() && !tcp {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        loop {
            match decode(cfg.framing, &pending) {
                Decoded::Incomplete => break,
                Decoded::Unknown(n) => {
                    tracing::debug!(bytes = ?&pending[..n], "sim proxr: unknown command");
                    lock(shared).received(pending.drain(..n).collect());
                    // §7.1: close the connection without replying (a pty just drops it).
                    if tcp {
                        return Ok(());
                    }
                }
                Decoded::Command(cmd, n) => {
                    lock(shared).received(pending.drain(..n).collect());
                    match handle(shared, cfg, cmd, tcp) {
                        Answer::Close => return Ok(()),
                        Answer::Nothing => {}
                        Answer::Byte { after, byte } => {
                            tokio::time::sleep(after).await;
                            s.write_all(&reply_frame(cfg.framing, byte)).await?;
                            s.flush().await?;
                        }
                    }
                }
            }
        }
    }
}

/// The banks a command addresses: its own, or every configured bank for bank 0 (only
/// commands that change relays take bank 0; reading "all banks" is not one byte). `None`
/// when the bank is not configured.
fn banks_of(cmd: SimCommand, banks: u8) -> Option<Vec<u8>> {
    let (bank, all_ok) = match cmd {
        SimCommand::Test => return Some(Vec::new()),
        SimCommand::On { bank, .. }
        | SimCommand::Off { bank, .. }
        | SimCommand::AllOff { bank }
        | SimCommand::AllOn { bank }
        | SimCommand::SetPattern { bank, .. } => (bank, true),
        SimCommand::Read { bank, .. } | SimCommand::BankStatus { bank } => (bank, false),
    };
    match bank {
        0 if all_ok => Some((1..=banks).collect()),
        b if (1..=banks).contains(&b) => Some(vec![b]),
        _ => None,
    }
}

/// The coil states a set command asks for in one bank: (relay, energised).
fn wanted(cmd: SimCommand) -> Vec<(u8, bool)> {
    match cmd {
        SimCommand::On { relay, .. } => vec![(relay, true)],
        SimCommand::Off { relay, .. } => vec![(relay, false)],
        SimCommand::AllOn { .. } => (1..=RELAYS).map(|r| (r, true)).collect(),
        SimCommand::AllOff { .. } => (1..=RELAYS).map(|r| (r, false)).collect(),
        SimCommand::SetPattern { pattern, .. } => (1..=RELAYS)
            .map(|r| (r, pattern & (1 << (r - 1)) != 0))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the board does after a command: its state changes are made (and hooked) at once,
/// the reply goes out after the fault's delay.
enum Answer {
    /// Drop the connection (TCP) without a reply.
    Close,
    /// No reply.
    Nothing,
    /// Reply `byte` after `after`.
    Byte { after: Duration, byte: u8 },
}

fn handle(shared: &Mutex<Shared>, cfg: SimProxrConfig, cmd: SimCommand, tcp: bool) -> Answer {
    let Some(banks) = banks_of(cmd, cfg.banks) else {
        // Unconfigured bank: like the Python fake, answer nothing (§7.1).
        return if tcp { Answer::Close } else { Answer::Nothing };
    };
    let key = match cmd {
        SimCommand::On { relay, .. }
        | SimCommand::Off { relay, .. }
        | SimCommand::Read { relay, .. } => banks.first().map(|b| (*b, relay)),
        _ => None,
    };
    let faults = {
        let st = lock(shared);
        key.and_then(|k| st.relay_faults.get(&k).cloned())
            .unwrap_or_else(|| st.board_faults.clone())
    };
    if faults.close_mid_command {
        return if tcp { Answer::Close } else { Answer::Nothing };
    }
    if faults.never_reply {
        return Answer::Nothing;
    }
    let mut changes = Vec::new();
    let hook;
    let byte = {
        let mut st = lock(shared);
        hook = st.hook.clone();
        match cmd {
            SimCommand::Test => {
                st.record(SimAction::Test);
                OK
            }
            SimCommand::Read { relay, .. } => {
                let bank = banks[0];
                let energised = st.relays.get(&(bank, relay)).copied().unwrap_or(false);
                st.record(SimAction::Get {
                    bank,
                    relay,
                    energised,
                });
                u8::from(energised)
            }
            SimCommand::BankStatus { .. } => {
                let bank = banks[0];
                let byte = (1..=RELAYS)
                    .filter(|r| st.relays.get(&(bank, *r)).copied().unwrap_or(false))
                    .fold(0u8, |acc, r| acc | (1 << (r - 1)));
                st.record(SimAction::Status { bank, byte });
                byte
            }
            _ => {
                for &bank in &banks {
                    for (relay, energised) in wanted(cmd) {
                        st.record(SimAction::Set {
                            bank,
                            relay,
                            energised,
                        });
                        let old = st.relays.get(&(bank, relay)).copied().unwrap_or(false);
                        if !faults.stuck && old != energised {
                            st.relays.insert((bank, relay), energised);
                            changes.push((bank, relay, energised));
                        }
                    }
                }
                OK
            }
        }
    };
    if let Some(h) = hook {
        for (bank, relay, energised) in changes {
            h(bank, relay, energised);
        }
    }
    Answer::Byte {
        after: Duration::from_millis(faults.reply_delay_ms),
        byte: faults.wrong_reply.unwrap_or(byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    /// The reference's table (§2.1) and API examples (§2.2), as literal bytes.
    #[test]
    fn decodes_the_reference_table() {
        use SimCommand as C;
        let raw = [
            ("FE 21", C::Test),
            ("FE 6C 01", C::On { bank: 1, relay: 1 }),
            ("FE 73 04", C::On { bank: 4, relay: 8 }),
            ("FE 64 02", C::Off { bank: 2, relay: 1 }),
            ("FE 6B 20", C::Off { bank: 32, relay: 8 }),
            ("FE 74 03", C::Read { bank: 3, relay: 1 }),
            ("FE 7B 01", C::Read { bank: 1, relay: 8 }),
            ("FE 7C 01", C::BankStatus { bank: 1 }),
            ("FE 81 00", C::AllOff { bank: 0 }),
            ("FE 82 02", C::AllOn { bank: 2 }),
            (
                "FE 8C A5 01",
                C::SetPattern {
                    pattern: 0xA5,
                    bank: 1,
                },
            ),
        ];
        for (bytes, cmd) in raw {
            let b = hex(bytes);
            assert_eq!(
                decode(SimFraming::Raw, &b),
                Decoded::Command(cmd, b.len()),
                "{bytes}"
            );
            for cut in 0..b.len() {
                assert_eq!(decode(SimFraming::Raw, &b[..cut]), Decoded::Incomplete);
            }
        }
        let api = [
            ("AA 03 FE 6C 01 18", C::On { bank: 1, relay: 1 }),
            ("AA 02 FE 21 CB", C::Test),
        ];
        for (bytes, cmd) in api {
            let b = hex(bytes);
            assert_eq!(
                decode(SimFraming::Api, &b),
                Decoded::Command(cmd, b.len()),
                "{bytes}"
            );
        }
        assert_eq!(reply_frame(SimFraming::Api, 0x55), hex("AA 01 55 00"));
        assert_eq!(reply_frame(SimFraming::Api, 0x00), hex("AA 01 00 AB"));
        assert_eq!(reply_frame(SimFraming::Raw, 0x01), hex("01"));
    }

    #[test]
    fn refuses_what_the_table_does_not_have() {
        assert_eq!(decode(SimFraming::Raw, &hex("00")), Decoded::Unknown(1));
        assert_eq!(
            decode(SimFraming::Raw, &hex("FE 99 01")),
            Decoded::Unknown(2)
        );
        assert_eq!(
            decode(SimFraming::Raw, &hex("FE 63 01")),
            Decoded::Unknown(2)
        );
        // Bad checksum, and a frame whose length does not match its command.
        assert_eq!(
            decode(SimFraming::Api, &hex("AA 03 FE 6C 01 19")),
            Decoded::Unknown(6)
        );
        assert_eq!(
            decode(SimFraming::Api, &hex("AA 02 FE 6C 16")),
            Decoded::Unknown(5)
        );
        assert_eq!(decode(SimFraming::Api, &hex("FE 21")), Decoded::Unknown(1));
        assert_eq!(banks_of(SimCommand::On { bank: 5, relay: 1 }, 4), None);
        assert_eq!(
            banks_of(SimCommand::On { bank: 0, relay: 1 }, 2),
            Some(vec![1, 2])
        );
        assert_eq!(banks_of(SimCommand::Read { bank: 0, relay: 1 }, 4), None);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            for framing in [SimFraming::Raw, SimFraming::Api] {
                if let Decoded::Command(_, n) | Decoded::Unknown(n) = decode(framing, &bytes) {
                    proptest::prop_assert!(n >= 1 && n <= bytes.len());
                }
            }
        }
    }
}
