//! `SimLcusBoard`: an LCUS (CH340) relay board on a pseudo-terminal. It decodes
//! `A0 ch st sum` frames, never replies (like the real board), keeps a state map and a
//! log, and calls the relay hook (bank 1, relay = channel) on every change.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serialport::{SerialPort, TTYPort};

use super::{RelayHook, lock};
use crate::hw::relay::lcus;

#[derive(Default)]
struct Shared {
    channels: HashMap<u8, bool>,
    log: Vec<(u8, bool)>,
    invalid_bytes: usize,
    hook: Option<RelayHook>,
}

/// A simulated LCUS board. Dropping it stops its thread.
pub struct SimLcusBoard {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    _slave: TTYPort,
}

impl std::fmt::Debug for SimLcusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLcusBoard")
            .field("path", &self.path)
            .finish()
    }
}

impl SimLcusBoard {
    /// Start on a new pty.
    ///
    /// # Errors
    /// When the pty cannot be created.
    pub fn start() -> io::Result<Self> {
        let (mut master, slave) = TTYPort::pair().map_err(io::Error::from)?;
        let path = PathBuf::from(
            slave
                .name()
                .ok_or_else(|| io::Error::other("pty slave has no name"))?,
        );
        SerialPort::set_timeout(&mut master, Duration::from_millis(20)).map_err(io::Error::from)?;
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sim-lcus".into())
            .spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 64];
                while !st.load(Ordering::SeqCst) {
                    match master.read(&mut buf) {
                        Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                    while pending.len() >= 4 {
                        let frame = [pending[0], pending[1], pending[2], pending[3]];
                        match lcus::decode(&frame) {
                            Some((ch, on)) => {
                                pending.drain(..4);
                                let hook = {
                                    let mut s = lock(&sh);
                                    s.log.push((ch, on));
                                    let old = s.channels.insert(ch, on).unwrap_or(false);
                                    if old == on { None } else { s.hook.clone() }
                                };
                                if let Some(h) = hook {
                                    h(1, ch, on);
                                }
                            }
                            None => {
                                pending.remove(0);
                                lock(&sh).invalid_bytes += 1;
                            }
                        }
                    }
                }
            })?;
        Ok(SimLcusBoard {
            shared,
            stop,
            path,
            thread: Some(thread),
            _slave: slave,
        })
    }

    /// The pty path to configure as the board's serial port.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Install the relay-change hook.
    pub fn set_hook(&self, hook: RelayHook) {
        lock(&self.shared).hook = Some(hook);
    }

    /// State of a channel (all start released).
    #[must_use]
    pub fn energised(&self, channel: u8) -> bool {
        lock(&self.shared)
            .channels
            .get(&channel)
            .copied()
            .unwrap_or(false)
    }

    /// Every valid frame received: (channel, energised).
    #[must_use]
    pub fn log(&self) -> Vec<(u8, bool)> {
        lock(&self.shared).log.clone()
    }

    /// Bytes dropped while resynchronising on invalid frames.
    #[must_use]
    pub fn invalid_bytes(&self) -> usize {
        lock(&self.shared).invalid_bytes
    }
}

impl Drop for SimLcusBoard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
