//! One OS thread per relay board: owns the port, runs queued operations one at a time
//! with their absolute deadlines, retries fast failures a bounded number of times,
//! reopens an unplugged port with backoff, and sleeps a cool-down after every operation.
//!
//! The board drivers ([`Board`] impls) know the wire protocol; the actor knows the
//! operation sequences (set + read-back, power cycle) and the wiring (contact).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::link::{self, Link};
use super::proxr::{self, Command, Framing, Reply};
use super::{
    BoardConfig, BoardKind, BoardStatus, Channel, Deadline, GpioBackend, RelayAddr, Transport, lcus,
};
use crate::domain::clock::{Clock, SystemClock};
use crate::hw::{Error, Result, hex};

/// Extra wait on the async side past the deadline before giving up on the actor.
const GRACE: Duration = Duration::from_millis(250);
/// Longest reopen backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An operation on one board.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Set { addr: RelayAddr, device_on: bool },
    Cycle { addr: RelayAddr, off_time: Duration },
    Read { addr: RelayAddr },
    Test,
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::Set { addr, device_on } => {
                format!("power {} {addr}", if *device_on { "on" } else { "off" })
            }
            Op::Cycle { addr, .. } => format!("power cycle {addr}"),
            Op::Read { addr } => format!("read power state {addr}"),
            Op::Test => "two-way test".into(),
        }
    }
}

struct Job {
    op: Op,
    deadline: Deadline,
    reply: oneshot::Sender<Result<Option<bool>>>,
}

#[derive(Default)]
struct Health {
    healthy: Option<bool>,
    last_ok: Option<crate::domain::clock::Millis>,
    last_error: Option<String>,
    ops_ok: u64,
    ops_failed: u64,
}

/// The async side of one board.
pub(crate) struct BoardHandle {
    pub(crate) config: BoardConfig,
    tx: mpsc::Sender<Job>,
    health: Arc<Mutex<Health>>,
    queued: Arc<AtomicUsize>,
}

impl BoardHandle {
    pub(crate) fn spawn(config: BoardConfig, gpio: Option<Box<dyn GpioBackend>>) -> Result<Self> {
        let board: Box<dyn Board> = match (&config.kind, gpio) {
            (BoardKind::Proxr { transport, framing }, _) => Box::new(ProxrBoard {
                transport: transport.clone(),
                framing: *framing,
                link: None,
                backoff: Backoff::new(config.reopen_backoff),
            }),
            (BoardKind::Lcus { path, baud, .. }, _) => Box::new(LcusBoard {
                path: path.clone(),
                baud: *baud,
                link: None,
                backoff: Backoff::new(config.reopen_backoff),
            }),
            (BoardKind::Gpio { active_low, .. }, Some(backend)) => Box::new(GpioBoard {
                active_low: *active_low,
                backend,
            }),
            (BoardKind::Gpio { .. }, None) => {
                return Err(Error::BadConfig(format!(
                    "board {}: no GPIO backend",
                    config.name
                )));
            }
        };
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(Health::default()));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut actor = Actor {
            config: config.clone(),
            board,
            health: health.clone(),
            queued: queued.clone(),
        };
        std::thread::Builder::new()
            .name(format!("relay-{}", config.name))
            .spawn(move || actor.run(rx))
            .map_err(|e| Error::io("spawn relay board thread", e))?;
        Ok(BoardHandle {
            config,
            tx,
            health,
            queued,
        })
    }

    /// Queue `op` with a deadline of now + `budget` and await its result.
    pub(crate) async fn call(&self, op: Op, budget: Duration) -> Result<Option<bool>> {
        let started = Instant::now();
        let deadline = Deadline {
            at: started + budget,
            started,
        };
        let what = op.describe();
        let (reply, rx) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self
            .tx
            .send(Job {
                op,
                deadline,
                reply,
            })
            .is_err()
        {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(self.gone());
        }
        match tokio::time::timeout_at((deadline.at + GRACE).into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => Err(Error::Timeout {
                op: format!("{what} on {}", self.config.name),
                after: started.elapsed(),
            }),
        }
    }

    fn gone(&self) -> Error {
        Error::BoardUnavailable {
            board: self.config.name.to_string(),
            reason: "board thread stopped".into(),
        }
    }

    pub(crate) fn status(&self) -> BoardStatus {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        BoardStatus {
            name: self.config.name.clone(),
            kind: self.config.kind_name(),
            healthy: h.healthy,
            last_ok: h.last_ok,
            last_error: h.last_error.clone(),
            ops_ok: h.ops_ok,
            ops_failed: h.ops_failed,
            queued: self.queued.load(Ordering::SeqCst),
        }
    }
}

struct Actor {
    config: BoardConfig,
    board: Box<dyn Board>,
    health: Arc<Mutex<Health>>,
    queued: Arc<AtomicUsize>,
}

impl Actor {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let what = format!("{} on {}", job.op.describe(), self.config.name);
            if Instant::now() >= job.deadline.at {
                // Expired while queued: no I/O was done, so no cool-down either.
                let _ = job
                    .reply
                    .send(Err(job.deadline.expired(&format!("{what} (queued)"))));
                continue;
            }
            let result = self.execute(&job.op, &job.deadline);
            self.board.end_op();
            self.record(&what, &result);
            let _ = job.reply.send(result);
            std::thread::sleep(self.config.cool_down);
        }
        tracing::debug!(board = %self.config.name, "relay board thread stopping");
    }

    fn record(&self, what: &str, result: &Result<Option<bool>>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => {
                h.healthy = Some(true);
                h.last_ok = Some(SystemClock.now());
                h.ops_ok += 1;
            }
            Err(e) => {
                tracing::warn!(board = %self.config.name, op = what, error = %e, "relay operation failed");
                h.healthy = Some(false);
                h.last_error = Some(e.to_string());
                h.ops_failed += 1;
            }
        }
    }

    fn execute(&mut self, op: &Op, dl: &Deadline) -> Result<Option<bool>> {
        match op {
            Op::Test => self.attempt(dl, |b, dl| b.test(dl)).map(|()| None),
            Op::Read { addr } => {
                let ch = addr.channel;
                let energised = self.attempt(dl, |b, dl| b.get(ch, dl))?;
                Ok(energised.map(|e| self.config.contact.device_on(e)))
            }
            Op::Set { addr, device_on } => {
                self.set_verified(addr, *device_on, dl)?;
                Ok(Some(*device_on))
            }
            Op::Cycle { addr, off_time } => {
                self.set_verified(addr, false, dl)?;
                let rest = dl.remaining("power cycle off time")?;
                if rest <= *off_time {
                    std::thread::sleep(rest);
                    return Err(dl.expired(&format!("power cycle {addr} (off time)")));
                }
                std::thread::sleep(*off_time);
                self.set_verified(addr, true, dl)?;
                Ok(Some(true))
            }
        }
    }

    /// Set the device power, then read back where the board can.
    fn set_verified(&mut self, addr: &RelayAddr, device_on: bool, dl: &Deadline) -> Result<()> {
        let ch = addr.channel;
        let want = self.config.contact.energised_for(device_on);
        self.attempt(dl, |b, dl| b.set(ch, want, dl))?;
        match self.attempt(dl, |b, dl| b.get(ch, dl))? {
            Some(got) if got != want => Err(Error::RelayStuck {
                addr: addr.to_string(),
                wanted: on_off(device_on),
                got: on_off(self.config.contact.device_on(got)),
            }),
            _ => Ok(()),
        }
    }

    /// Run one command with bounded retries on fast failures.
    fn attempt<T>(
        &mut self,
        dl: &Deadline,
        mut f: impl FnMut(&mut dyn Board, &Deadline) -> Result<T>,
    ) -> Result<T> {
        let mut tries = 0;
        loop {
            match f(self.board.as_mut(), dl) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.board.reset();
                    let retryable = matches!(
                        e,
                        Error::NoReply { .. } | Error::BadReply { .. } | Error::Io { .. }
                    );
                    if !retryable || tries >= self.config.retries || Instant::now() >= dl.at {
                        return Err(e);
                    }
                    tries += 1;
                    tracing::info!(board = %self.config.name, error = %e, attempt = tries, "retrying relay command");
                }
            }
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// One board's wire protocol (energised = coil state).
trait Board: Send {
    fn set(&mut self, ch: Channel, energised: bool, dl: &Deadline) -> Result<()>;
    /// `None` when the board cannot read back.
    fn get(&mut self, ch: Channel, dl: &Deadline) -> Result<Option<bool>>;
    fn test(&mut self, dl: &Deadline) -> Result<()>;
    /// End of an operation (TCP boards close their connection).
    fn end_op(&mut self) {}
    /// After an error: forget the link so it is reopened.
    fn reset(&mut self) {}
}

/// Reopen backoff for ports that failed to open.
struct Backoff {
    first: Duration,
    delay: Duration,
    next_at: Option<Instant>,
    last_error: String,
}

impl Backoff {
    fn new(first: Duration) -> Self {
        Backoff {
            first,
            delay: first,
            next_at: None,
            last_error: String::new(),
        }
    }

    fn check(&self, board: &str) -> Result<()> {
        match self.next_at {
            Some(t) if Instant::now() < t => Err(Error::BoardUnavailable {
                board: board.to_owned(),
                reason: format!(
                    "{}; next reopen attempt in {:?}",
                    self.last_error,
                    t - Instant::now()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, e: &Error) {
        self.last_error = e.to_string();
        self.next_at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    fn ok(&mut self) {
        self.delay = self.first;
        self.next_at = None;
    }
}

fn relay_of(ch: Channel) -> Result<(u8, u8)> {
    match ch {
        Channel::Relay { bank, relay } => Ok((bank, relay)),
        Channel::Pin(p) => Err(Error::BadAddress {
            addr: format!("pin{p}"),
            reason: "not a relay channel".into(),
        }),
    }
}

struct ProxrBoard {
    transport: Transport,
    framing: Framing,
    link: Option<Box<dyn Link>>,
    backoff: Backoff,
}

impl ProxrBoard {
    fn link(&mut self, dl: &Deadline) -> Result<&mut Box<dyn Link>> {
        if self.link.is_none() {
            let l: Box<dyn Link> = match &self.transport {
                Transport::Tcp { host, port } => Box::new(link::connect_tcp(host, *port, dl)?),
                Transport::Serial { path, baud } => {
                    let name = path.display().to_string();
                    self.backoff.check(&name)?;
                    match link::open_serial(path, *baud, dl) {
                        Ok(p) => {
                            self.backoff.ok();
                            Box::new(p)
                        }
                        Err(e) => {
                            self.backoff.failed(&e);
                            return Err(Error::BoardUnavailable {
                                board: name,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            };
            self.link = Some(l);
        }
        self.link.as_mut().ok_or_else(|| Error::BoardUnavailable {
            board: String::new(),
            reason: "link not open".into(),
        })
    }

    fn transact(&mut self, cmd: Command, dl: &Deadline) -> Result<Reply> {
        let framing = self.framing;
        let op = cmd.describe();
        let link = self.link(dl)?;
        link::write_frame(link.as_mut(), &cmd.encode(framing), &op, dl)?;
        let bytes = link::read_exact(link.as_mut(), proxr::reply_len(framing), &op, dl)?;
        proxr::decode_reply(cmd, framing, &bytes).map_err(|e| {
            tracing::warn!(op, got = %hex(&e.got), "bad ProXR reply");
            Error::BadReply {
                op,
                expected: e.expected,
                got: hex(&e.got),
            }
        })
    }
}

impl Board for ProxrBoard {
    fn set(&mut self, ch: Channel, energised: bool, dl: &Deadline) -> Result<()> {
        let (bank, relay) = relay_of(ch)?;
        let cmd = if energised {
            Command::On { bank, relay }
        } else {
            Command::Off { bank, relay }
        };
        self.transact(cmd, dl).map(|_| ())
    }

    fn get(&mut self, ch: Channel, dl: &Deadline) -> Result<Option<bool>> {
        let (bank, relay) = relay_of(ch)?;
        match self.transact(Command::Read { bank, relay }, dl)? {
            Reply::State(s) => Ok(Some(s)),
            Reply::Ack => Err(Error::BadReply {
                op: "read relay".into(),
                expected: "00 or 01".into(),
                got: "55".into(),
            }),
        }
    }

    fn test(&mut self, dl: &Deadline) -> Result<()> {
        self.transact(Command::Test, dl).map(|_| ())
    }

    fn end_op(&mut self) {
        if matches!(self.transport, Transport::Tcp { .. }) {
            self.link = None;
        }
    }

    fn reset(&mut self) {
        self.link = None;
    }
}

struct LcusBoard {
    path: std::path::PathBuf,
    baud: u32,
    link: Option<Box<dyn Link>>,
    backoff: Backoff,
}

impl LcusBoard {
    fn link(&mut self, dl: &Deadline) -> Result<&mut Box<dyn Link>> {
        if self.link.is_none() {
            let name = self.path.display().to_string();
            self.backoff.check(&name)?;
            match link::open_serial(&self.path, self.baud, dl) {
                Ok(p) => {
                    self.backoff.ok();
                    self.link = Some(Box::new(p));
                }
                Err(e) => {
                    self.backoff.failed(&e);
                    return Err(Error::BoardUnavailable {
                        board: name,
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.link.as_mut().ok_or_else(|| Error::BoardUnavailable {
            board: String::new(),
            reason: "link not open".into(),
        })
    }
}

impl Board for LcusBoard {
    fn set(&mut self, ch: Channel, energised: bool, dl: &Deadline) -> Result<()> {
        let (_, relay) = relay_of(ch)?;
        let frame = lcus::encode(relay, energised);
        let link = self.link(dl)?;
        link::write_frame(
            link.as_mut(),
            &frame,
            &format!("LCUS set channel {relay}"),
            dl,
        )
    }

    fn get(&mut self, _ch: Channel, _dl: &Deadline) -> Result<Option<bool>> {
        Ok(None)
    }

    fn test(&mut self, dl: &Deadline) -> Result<()> {
        // LCUS never answers: the only honest check is that the port opens.
        self.link(dl).map(|_| ())
    }

    fn reset(&mut self) {
        self.link = None;
    }
}

struct GpioBoard {
    active_low: bool,
    backend: Box<dyn GpioBackend>,
}

fn pin_of(ch: Channel) -> Result<u8> {
    match ch {
        Channel::Pin(p) => Ok(p),
        Channel::Relay { bank, relay } => Err(Error::BadAddress {
            addr: format!("bank{bank}:relay{relay}"),
            reason: "GPIO boards are addressed by pin".into(),
        }),
    }
}

impl Board for GpioBoard {
    fn set(&mut self, ch: Channel, energised: bool, _dl: &Deadline) -> Result<()> {
        let pin = pin_of(ch)?;
        self.backend.write(pin, energised != self.active_low)
    }

    fn get(&mut self, ch: Channel, _dl: &Deadline) -> Result<Option<bool>> {
        let pin = pin_of(ch)?;
        Ok(Some(self.backend.read(pin)? != self.active_low))
    }

    fn test(&mut self, _dl: &Deadline) -> Result<()> {
        self.backend.probe()
    }
}
