//! One OS thread per relay board: owns the port, runs queued operations one at a time
//! with their absolute deadlines, retries fast failures a bounded number of times,
//! reopens an unplugged port with backoff, and rests a cool-down after every operation
//! (boards behind a single-connection TCP module only, by default).
//!
//! A power cycle is two operations: "device off" from the queue, then, once its off time
//! has passed, "device on" ahead of the next queued job. The thread keeps the pending
//! restores and serves other relays meanwhile, so a board cycles many devices in about one
//! off time. Per relay the latest command wins: a power on/off of a relay with a pending
//! restore cancels it, and a second cycle takes it over. The pending restores belong to the
//! thread, not to the callers, so power comes back even if a caller stops waiting.
//!
//! The board drivers ([`Board`] impls) know the wire protocol; the actor knows the
//! operation sequences (set + read-back, power cycle) and the wiring (contact).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::link::{self, Link};
use super::proxr::{self, Command, Framing, Reply};
use super::{
    BoardConfig, BoardKind, BoardStatus, Channel, Deadline, GpioBackend, RelayAddr, RelayFailure,
    Transport, lcus,
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
                format!("power {} {addr}", on_off(*device_on))
            }
            Op::Cycle { addr, .. } => format!("power cycle {addr}"),
            Op::Read { addr } => format!("read power state {addr}"),
            Op::Test => "two-way test".into(),
        }
    }
}

/// The relay an operation switches or reads, if any.
fn op_relay(op: &Op) -> Option<&RelayAddr> {
    match op {
        Op::Set { addr, .. } | Op::Cycle { addr, .. } | Op::Read { addr } => Some(addr),
        Op::Test => None,
    }
}

type ReplyTo = oneshot::Sender<Result<Option<bool>>>;

struct Job {
    op: Op,
    deadline: Deadline,
    reply: ReplyTo,
}

/// A power cycle whose device is unpowered, waiting for its off time to pass.
struct Pending {
    addr: RelayAddr,
    /// When the off time is over.
    due: Instant,
    /// The caller's deadline (the restore runs even past it; see [`Actor::restore`]).
    deadline: Deadline,
    /// The cycle's caller first, then the callers of earlier cycles of the same relay that
    /// this one took over; all get the restore's result.
    replies: Vec<ReplyTo>,
}

#[derive(Default)]
struct Health {
    healthy: Option<bool>,
    last_ok: Option<crate::domain::clock::Millis>,
    last_error: Option<String>,
    ops_ok: u64,
    ops_failed: u64,
    /// The last [`RECENT_FAILURES`] failed operations, oldest first. Kept here, beside the
    /// rest of the board's health, rather than in the durable log: a relay failure has no
    /// device subject when nothing is wired to the relay, and the page wants it at once.
    recent_failures: VecDeque<RelayFailure>,
}

/// Failed operations kept per board for the relay page.
pub(crate) const RECENT_FAILURES: usize = 10;

/// The async side of one board.
pub(crate) struct BoardHandle {
    pub(crate) config: BoardConfig,
    tx: mpsc::Sender<Job>,
    health: Arc<Mutex<Health>>,
    queued: Arc<AtomicUsize>,
}

impl BoardHandle {
    /// Build the board's driver (a GPIO board claims its pins here, at their idle level)
    /// and start its thread.
    /// `changes` is bumped whenever the board's health changes (the relay page's feed).
    pub(crate) fn spawn(
        config: BoardConfig,
        gpio: Option<Box<dyn GpioBackend>>,
        changes: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Result<Self> {
        let health = Arc::new(Mutex::new(Health::default()));
        let board: Box<dyn Board> = match (&config.kind, gpio) {
            (
                BoardKind::Proxr {
                    transport, framing, ..
                },
                _,
            ) => Box::new(ProxrBoard {
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
            (BoardKind::Gpio { active_low, pins }, Some(backend)) => {
                let idle_high = config.contact.energised_for(true) != *active_low;
                let mut b = GpioBoard {
                    active_low: *active_low,
                    idle_high,
                    backend,
                    claimed: HashSet::new(),
                    claim_error: None,
                };
                if let Err(e) = b.claim_all(pins) {
                    tracing::warn!(board = %config.name, error = %e, "cannot claim GPIO pins at start-up");
                    let mut h = health.lock().unwrap_or_else(PoisonError::into_inner);
                    h.healthy = Some(false);
                    h.last_error = Some(e.to_string());
                    h.push_failure(RelayFailure {
                        at: SystemClock.now(),
                        op: "claim GPIO pins".into(),
                        relay: None,
                        error: e.to_string(),
                    });
                }
                Box::new(b)
            }
            (BoardKind::Gpio { .. }, None) => {
                return Err(Error::BadConfig(format!(
                    "board {}: no GPIO backend",
                    config.name
                )));
            }
        };
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut actor = Actor {
            cool_down: config.effective_cool_down(),
            config: config.clone(),
            board,
            health: health.clone(),
            queued: queued.clone(),
            pending: HashMap::new(),
            changes,
        };
        std::thread::Builder::new()
            .name(format!("relay-{}", config.name))
            .spawn(move || actor.run(&rx))
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
            recent_failures: h.recent_failures.iter().rev().cloned().collect(),
        }
    }
}

struct Actor {
    config: BoardConfig,
    /// Rest after every operation that touched the board.
    cool_down: Duration,
    board: Box<dyn Board>,
    health: Arc<Mutex<Health>>,
    queued: Arc<AtomicUsize>,
    /// Power cycles waiting out their off time, at most one per relay.
    pending: HashMap<Channel, Pending>,
    /// Bumped after every recorded outcome, so the relay page's feed wakes up.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Health {
    fn push_failure(&mut self, f: RelayFailure) {
        if self.recent_failures.len() >= RECENT_FAILURES {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(f);
    }
}

impl Actor {
    fn run(&mut self, rx: &mpsc::Receiver<Job>) {
        loop {
            self.restore_due();
            let job = match self.next_due() {
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(j) => j,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.handle(job);
        }
        // Every handle is gone, but devices in their off time must get their power back.
        while let Some(at) = self.next_due() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            self.restore_due();
        }
        tracing::debug!(board = %self.config.name, "relay board thread stopping");
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    fn handle(&mut self, job: Job) {
        let what = format!("{} on {}", job.op.describe(), self.config.name);
        if Instant::now() >= job.deadline.at {
            // Expired while queued: no I/O was done, so no cool-down either.
            let _ = job
                .reply
                .send(Err(job.deadline.expired(&format!("{what} (queued)"))));
            return;
        }
        if let Op::Cycle { addr, off_time } = job.op {
            self.start_cycle(addr, off_time, job.deadline, job.reply, &what);
            return;
        }
        let result = self.execute(&job.op, &job.deadline);
        if let Op::Set { addr, device_on } = &job.op {
            // The latest command on a relay wins, whether or not it worked: restoring power
            // against a later "off" (or after a later "on") would undo it.
            self.supersede(
                addr.channel,
                if *device_on { "power on" } else { "power off" },
            );
        }
        self.finish(&what, op_relay(&job.op), result.as_ref().err());
        let _ = job.reply.send(result);
        self.rest();
    }

    /// The first half of a power cycle: device off and read back, then wait for the off
    /// time as a pending restore instead of holding the board.
    fn start_cycle(
        &mut self,
        addr: RelayAddr,
        off_time: Duration,
        deadline: Deadline,
        reply: ReplyTo,
        what: &str,
    ) {
        // Never switch a device off without the budget to wait its off time.
        let room = deadline.remaining(what).ok().filter(|r| *r > off_time);
        let Some(room) = room else {
            let _ = reply.send(Err(
                deadline.expired(&format!("{what} (no time left for the off time)"))
            ));
            return;
        };
        let off_phase = Deadline {
            at: Instant::now() + (room - off_time),
            started: deadline.started,
        };
        let result = self.set_verified(&addr, false, &off_phase);
        if let Err(e) = &result {
            self.finish(&format!("{what} (power off)"), Some(&addr), Some(e));
        } else {
            // A cycle counts as one operation in the board's health, when it completes.
            self.board.end_op();
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            h.healthy = Some(true);
            h.last_ok = Some(SystemClock.now());
            drop(h);
            self.changes.send_modify(|v| *v += 1);
        }
        match result {
            Err(e) => {
                // An earlier pending cycle of this relay keeps its restore: power on is
                // what this failed cycle wanted in the end too.
                let _ = reply.send(Err(e));
            }
            Ok(()) => {
                let mut replies = vec![reply];
                if let Some(earlier) = self.pending.remove(&addr.channel) {
                    tracing::info!(board = %self.config.name, relay = %addr, "a second power cycle takes over the pending one");
                    replies.extend(earlier.replies);
                }
                self.pending.insert(
                    addr.channel,
                    Pending {
                        addr,
                        due: Instant::now() + off_time,
                        deadline,
                        replies,
                    },
                );
            }
        }
        self.rest();
    }

    /// Restore power for every cycle whose off time is over, earliest first.
    fn restore_due(&mut self) {
        loop {
            let now = Instant::now();
            let due = self
                .pending
                .iter()
                .filter(|(_, p)| p.due <= now)
                .min_by_key(|(_, p)| p.due)
                .map(|(ch, _)| *ch);
            let Some(p) = due.and_then(|ch| self.pending.remove(&ch)) else {
                return;
            };
            self.restore(p);
        }
    }

    /// The second half of a power cycle. It gets at least a whole `op_timeout` even when its
    /// caller's deadline is nearer: a device must not stay unpowered because a queue was long
    /// (a late caller has stopped waiting and sees its own timeout).
    fn restore(&mut self, p: Pending) {
        let dl = Deadline {
            at: p.deadline.at.max(Instant::now() + self.config.op_timeout),
            started: p.deadline.started,
        };
        let what = format!("power cycle {} on {} (power on)", p.addr, self.config.name);
        let result = self.set_verified(&p.addr, true, &dl).map(|()| Some(true));
        self.finish(&what, Some(&p.addr), result.as_ref().err());
        let mut replies = p.replies.into_iter();
        if let Some(first) = replies.next() {
            for other in replies {
                let _ = other.send(result.as_ref().map(|v| *v).map_err(duplicate));
            }
            let _ = first.send(result);
        }
        self.rest();
    }

    /// Cancel `ch`'s pending restore (a later power on/off of the relay), failing its callers.
    fn supersede(&mut self, ch: Channel, by: &'static str) {
        if let Some(p) = self.pending.remove(&ch) {
            tracing::info!(board = %self.config.name, relay = %p.addr, by, "pending power cycle superseded");
            for r in p.replies {
                let _ = r.send(Err(Error::Superseded {
                    op: format!("power cycle {}", p.addr),
                    by,
                }));
            }
        }
    }

    /// Close the operation's connection (TCP) and record its outcome.
    fn finish(&mut self, what: &str, relay: Option<&RelayAddr>, error: Option<&Error>) {
        self.board.end_op();
        self.record(what, relay, error);
    }

    fn rest(&self) {
        if !self.cool_down.is_zero() {
            std::thread::sleep(self.cool_down);
        }
    }

    fn record(&self, what: &str, relay: Option<&RelayAddr>, error: Option<&Error>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match error {
            None => {
                h.healthy = Some(true);
                h.last_ok = Some(SystemClock.now());
                h.ops_ok += 1;
            }
            Some(e) => {
                tracing::warn!(board = %self.config.name, op = what, error = %e, "relay operation failed");
                h.healthy = Some(false);
                h.last_error = Some(e.to_string());
                h.ops_failed += 1;
                h.push_failure(RelayFailure {
                    at: SystemClock.now(),
                    op: what.to_owned(),
                    relay: relay.map(ToString::to_string),
                    error: e.to_string(),
                });
            }
        }
        drop(h);
        self.changes.send_modify(|v| *v += 1);
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
            // Handled by `start_cycle`; kept here so the match stays exhaustive.
            Op::Cycle { addr, .. } => Err(Error::BadAddress {
                addr: addr.to_string(),
                reason: "a power cycle is not a single operation".into(),
            }),
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

/// The same failure for a second caller (the errors a relay operation produces; an I/O
/// error keeps its kind and message).
fn duplicate(e: &Error) -> Error {
    match e {
        Error::Timeout { op, after } => Error::Timeout {
            op: op.clone(),
            after: *after,
        },
        Error::NoReply { op } => Error::NoReply { op: op.clone() },
        Error::BadReply { op, expected, got } => Error::BadReply {
            op: op.clone(),
            expected: expected.clone(),
            got: got.clone(),
        },
        Error::RelayStuck { addr, wanted, got } => Error::RelayStuck {
            addr: addr.clone(),
            wanted,
            got,
        },
        Error::Io { context, source } => Error::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::GpioUnavailable(m) => Error::GpioUnavailable(m.clone()),
        Error::BoardUnavailable { board, reason } => Error::BoardUnavailable {
            board: board.clone(),
            reason: reason.clone(),
        },
        other => Error::BoardUnavailable {
            board: String::new(),
            reason: other.to_string(),
        },
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
                Transport::Tcp { host, port, .. } => Box::new(link::connect_tcp(host, *port, dl)?),
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
    /// The level that leaves the device powered (coil released under NC wiring).
    idle_high: bool,
    backend: Box<dyn GpioBackend>,
    /// Pins claimed as outputs.
    claimed: HashSet<u8>,
    /// Why the last claim failed, for reads of a pin that is not claimed.
    claim_error: Option<String>,
}

impl GpioBoard {
    /// Claim every pin at its idle level (start-up); the first failure is returned, the
    /// other pins are still tried.
    fn claim_all(&mut self, pins: &[u8]) -> Result<()> {
        let mut first = Ok(());
        for &p in pins {
            if let Err(e) = self.claim(p)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    fn claim(&mut self, pin: u8) -> Result<()> {
        match self.backend.claim(pin, self.idle_high) {
            Ok(()) => {
                self.claimed.insert(pin);
                Ok(())
            }
            Err(e) => {
                self.claim_error = Some(e.to_string());
                Err(e)
            }
        }
    }
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
        if !self.claimed.contains(&pin) {
            // The start-up claim failed (GPIO busy or absent then): a command that drives
            // the pin anyway may retry it, still idle level first.
            self.claim(pin)?;
        }
        self.backend.write(pin, energised != self.active_low)
    }

    fn get(&mut self, ch: Channel, _dl: &Deadline) -> Result<Option<bool>> {
        let pin = pin_of(ch)?;
        if !self.claimed.contains(&pin) {
            // Reading never claims: that would make the pin an output at whatever level.
            return Err(Error::GpioUnavailable(format!(
                "pin {pin} was not claimed at start-up: {}",
                self.claim_error.as_deref().unwrap_or("unknown error")
            )));
        }
        Ok(Some(self.backend.read(pin)? != self.active_low))
    }

    fn test(&mut self, _dl: &Deadline) -> Result<()> {
        self.backend.probe()
    }
}
