//! `SimProxrBoard`: an NCD ProXR emulator served on a pseudo-terminal and/or loopback TCP
//! (one client at a time, like the Digi module), with a relay state map, a change hook,
//! an action log and fault knobs per board or per relay.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serialport::{SerialPort, TTYPort};

use super::{RelayHook, lock, sleep_unless};
use crate::hw::relay::proxr::{self, ACK, Command, Framing, Parsed};

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
    /// Set command received (`energised` requested; state may be stuck).
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
}

#[derive(Default)]
struct Shared {
    relays: HashMap<(u8, u8), bool>,
    log: Vec<SimAction>,
    board_faults: SimRelayFaults,
    relay_faults: HashMap<(u8, u8), SimRelayFaults>,
    hook: Option<RelayHook>,
}

/// A simulated ProXR board. Dropping it stops its threads.
pub struct SimProxrBoard {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    pty_path: Option<PathBuf>,
    tcp_addr: Option<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    /// The pty's own slave handle, kept open so the driver can reopen the path.
    _slave: Option<TTYPort>,
}

impl std::fmt::Debug for SimProxrBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProxrBoard")
            .field("pty_path", &self.pty_path)
            .field("tcp_addr", &self.tcp_addr)
            .finish()
    }
}

enum After {
    Continue,
    Close,
}

impl SimProxrBoard {
    /// Serve on a new pseudo-terminal; the driver opens [`SimProxrBoard::pty_path`].
    ///
    /// # Errors
    /// When the pty cannot be created.
    pub fn on_pty(framing: Framing) -> io::Result<Self> {
        let (mut master, slave) = TTYPort::pair().map_err(io::Error::from)?;
        let path = slave
            .name()
            .ok_or_else(|| io::Error::other("pty slave has no name"))?;
        let mut me = Self::empty();
        SerialPort::set_timeout(&mut master, Duration::from_millis(20)).map_err(io::Error::from)?;
        let (shared, stop) = (me.shared.clone(), me.stop.clone());
        me.threads.push(
            std::thread::Builder::new()
                .name("sim-proxr-pty".into())
                .spawn(move || {
                    let _ = serve(&mut master, &shared, framing, &stop, false);
                })?,
        );
        me.pty_path = Some(PathBuf::from(path));
        me._slave = Some(slave);
        Ok(me)
    }

    /// Serve on `127.0.0.1:0`, one client at a time; see [`SimProxrBoard::tcp_addr`].
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn on_tcp(framing: Framing) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let mut me = Self::empty();
        me.tcp_addr = Some(listener.local_addr()?);
        let (shared, stop) = (me.shared.clone(), me.stop.clone());
        me.threads.push(
            std::thread::Builder::new()
                .name("sim-proxr-tcp".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((mut s, _)) => {
                                let ok = s.set_nonblocking(false).is_ok()
                                    && s.set_read_timeout(Some(Duration::from_millis(20))).is_ok();
                                if ok {
                                    let _ = serve(&mut s, &shared, framing, &stop, true);
                                }
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })?,
        );
        Ok(me)
    }

    fn empty() -> Self {
        SimProxrBoard {
            shared: Arc::default(),
            stop: Arc::default(),
            pty_path: None,
            tcp_addr: None,
            threads: Vec::new(),
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

    /// Action log so far.
    #[must_use]
    pub fn log(&self) -> Vec<SimAction> {
        lock(&self.shared).log.clone()
    }

    /// Clear the action log.
    pub fn clear_log(&self) {
        lock(&self.shared).log.clear();
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
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

trait Stream: Read + Write {}
impl Stream for TTYPort {}
impl Stream for TcpStream {}

fn serve(
    s: &mut dyn Stream,
    shared: &Mutex<Shared>,
    framing: Framing,
    stop: &AtomicBool,
    tcp: bool,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            // A pty master reads EIO while no slave is open; keep serving.
            Err(_) if !tcp => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        }
        loop {
            match proxr::parse_command(framing, &pending) {
                Parsed::Incomplete => break,
                Parsed::Invalid(n) => {
                    tracing::debug!(bytes = ?&pending[..n], "sim proxr: invalid command");
                    pending.drain(..n);
                    if tcp {
                        return Ok(());
                    }
                }
                Parsed::Command(cmd, n) => {
                    pending.drain(..n);
                    if let After::Close = handle(s, shared, framing, stop, cmd, tcp)? {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

fn handle(
    s: &mut dyn Stream,
    shared: &Mutex<Shared>,
    framing: Framing,
    stop: &AtomicBool,
    cmd: Command,
    tcp: bool,
) -> io::Result<After> {
    let key = match cmd {
        Command::On { bank, relay }
        | Command::Off { bank, relay }
        | Command::Read { bank, relay } => {
            if !(1..=4).contains(&bank) || !(1..=8).contains(&relay) {
                // Unconfigured bank/relay: like the Python fake, answer nothing.
                return Ok(if tcp { After::Close } else { After::Continue });
            }
            Some((bank, relay))
        }
        Command::Test => None,
    };
    let faults = {
        let st = lock(shared);
        key.and_then(|k| st.relay_faults.get(&k).cloned())
            .unwrap_or_else(|| st.board_faults.clone())
    };
    if faults.close_mid_command {
        return Ok(if tcp { After::Close } else { After::Continue });
    }
    if faults.never_reply {
        return Ok(After::Continue);
    }
    if faults.reply_delay_ms > 0
        && !sleep_unless(stop, Duration::from_millis(faults.reply_delay_ms))
    {
        return Ok(After::Close);
    }
    let mut hook_call = None;
    let byte = {
        let mut st = lock(shared);
        match cmd {
            Command::Test => {
                st.log.push(super::SimAction::Test);
                ACK
            }
            Command::On { bank, relay } | Command::Off { bank, relay } => {
                let energised = matches!(cmd, Command::On { .. });
                st.log.push(super::SimAction::Set {
                    bank,
                    relay,
                    energised,
                });
                let old = st.relays.get(&(bank, relay)).copied().unwrap_or(false);
                if !faults.stuck && old != energised {
                    st.relays.insert((bank, relay), energised);
                    hook_call = st.hook.clone().map(|h| (h, bank, relay, energised));
                }
                ACK
            }
            Command::Read { bank, relay } => {
                let energised = st.relays.get(&(bank, relay)).copied().unwrap_or(false);
                st.log.push(super::SimAction::Get {
                    bank,
                    relay,
                    energised,
                });
                u8::from(energised)
            }
        }
    };
    if let Some((h, bank, relay, energised)) = hook_call {
        h(bank, relay, energised);
    }
    let byte = faults.wrong_reply.unwrap_or(byte);
    s.write_all(&proxr::encode_reply(framing, byte))?;
    s.flush()?;
    Ok(After::Continue)
}
