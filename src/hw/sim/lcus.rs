//! `SimLcusBoard`: an LCUS (CH340) relay board on a pseudo-terminal. It decodes
//! `A0 ch st sum` frames with its own decoder written from the reference (§2.3: sum =
//! A0 + ch + st mod 256), never replies (like the real board), ignores frames for channels
//! it does not have (§7.2), keeps a state map and a log, and calls the relay hook
//! (bank 1, relay = channel) on every change.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serialport::{SerialPort, TTYPort};

use super::{RelayHook, lock};

/// Frame start byte.
const START: u8 = 0xA0;

/// What the start of a received buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcusDecoded {
    /// Fewer than 4 bytes.
    Incomplete,
    /// A well-formed frame: channel (from 1) and state (energised).
    Frame(u8, bool),
    /// The first byte starts no valid frame: drop it and resynchronise.
    Junk,
}

/// Decode one `A0 ch st sum` frame from the start of `buf`.
#[must_use]
pub fn decode(buf: &[u8]) -> LcusDecoded {
    match buf {
        [s, ..] if *s != START => LcusDecoded::Junk,
        [s, ch, st, sum, ..] => {
            if *ch == 0 || *st > 1 || *sum != s.wrapping_add(*ch).wrapping_add(*st) {
                LcusDecoded::Junk
            } else {
                LcusDecoded::Frame(*ch, *st == 1)
            }
        }
        _ => LcusDecoded::Incomplete,
    }
}

#[derive(Default)]
struct Shared {
    channels: HashMap<u8, bool>,
    log: Vec<(u8, bool)>,
    invalid_bytes: usize,
    ignored_frames: usize,
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
    /// Start on a new pty, with `channels` relays (1, 2, 4 or 8 on real boards).
    ///
    /// # Errors
    /// When the pty cannot be created.
    pub fn start(channels: u8) -> io::Result<Self> {
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
                    loop {
                        match decode(&pending) {
                            LcusDecoded::Incomplete => break,
                            LcusDecoded::Junk => {
                                pending.remove(0);
                                lock(&sh).invalid_bytes += 1;
                            }
                            LcusDecoded::Frame(ch, _) if ch > channels => {
                                pending.drain(..4);
                                lock(&sh).ignored_frames += 1;
                            }
                            LcusDecoded::Frame(ch, on) => {
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

    /// Well-formed frames ignored because the board has no such channel.
    #[must_use]
    pub fn ignored_frames(&self) -> usize {
        lock(&self.shared).ignored_frames
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_examples() {
        // §2.3: ch1 on A0 01 01 A2, ch1 off A0 01 00 A1, ch2 on A0 02 01 A3.
        assert_eq!(
            decode(&[0xA0, 0x01, 0x01, 0xA2]),
            LcusDecoded::Frame(1, true)
        );
        assert_eq!(
            decode(&[0xA0, 0x01, 0x00, 0xA1]),
            LcusDecoded::Frame(1, false)
        );
        assert_eq!(
            decode(&[0xA0, 0x02, 0x01, 0xA3]),
            LcusDecoded::Frame(2, true)
        );
        assert_eq!(
            decode(&[0xA0, 0x08, 0x00, 0xA8]),
            LcusDecoded::Frame(8, false)
        );
        assert_eq!(decode(&[0xA0, 0x01, 0x01]), LcusDecoded::Incomplete);
        assert_eq!(decode(&[0xA0, 0x01, 0x01, 0xA3]), LcusDecoded::Junk);
        assert_eq!(decode(&[0xA0, 0x01, 0x02, 0xA3]), LcusDecoded::Junk);
        assert_eq!(decode(&[0xA0, 0x00, 0x01, 0xA1]), LcusDecoded::Junk);
        assert_eq!(decode(&[0xA1]), LcusDecoded::Junk);
    }
}
