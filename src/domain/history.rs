//! What happened, in the shapes the history endpoints answer and the pages draw: a device's
//! state timeline, the pool's utilisation per hour with its flakiest devices, and how long
//! requests waited for a device.
//!
//! Pure data and arithmetic (no clock, no storage): the storage layer fills these from the
//! durable log and its roll-ups, the HTTP layer serialises them as JSON and draws them as SVG.
//! Times are [`Millis`] values (milliseconds since the Unix epoch, UTC).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::device_state::DeviceState;

/// How far back a picture looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Window {
    /// The last 24 hours (the default).
    #[default]
    #[serde(rename = "24h")]
    Day,
    /// The last 7 days.
    #[serde(rename = "7d")]
    Week,
    /// The last 30 days.
    #[serde(rename = "30d")]
    Month,
}

impl Window {
    /// Every window, shortest first (the page's switch).
    pub const ALL: [Window; 3] = [Window::Day, Window::Week, Window::Month];

    /// Its name in URLs and JSON (`24h`, `7d`, `30d`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    /// Its length in milliseconds.
    #[must_use]
    pub const fn millis(self) -> u64 {
        const HOUR: u64 = 3_600_000;
        match self {
            Window::Day => 24 * HOUR,
            Window::Week => 7 * 24 * HOUR,
            Window::Month => 30 * 24 * HOUR,
        }
    }

    /// The window ending at `until`: `(from, until)`.
    #[must_use]
    pub fn span(self, until: Millis) -> (Millis, Millis) {
        (Millis(until.0.saturating_sub(self.millis())), until)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A window name that is not `24h`, `7d` or `30d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown window {0:?}: use 24h, 7d or 30d")]
pub struct UnknownWindow(pub String);

impl FromStr for Window {
    type Err = UnknownWindow;
    fn from_str(s: &str) -> Result<Self, UnknownWindow> {
        Window::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| UnknownWindow(s.chars().take(32).collect()))
    }
}

/// What a device was doing, coarsely: the colours (and patterns) of a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// `ready` and held by no request.
    Ready,
    /// `ready` and held by a request (a job has it).
    InUse,
    /// Power-cycling, rebooting, pinging, verifying: a self-test or a request's preparation.
    SelfTest,
    /// Being flashed (`start_flash`, `flashing`, `flash_rebooting`).
    Flashing,
    /// A `failed_*` state.
    Failed,
    /// Out of service on purpose: maintenance, troubleshooting, locked out, off, unknown.
    Maintenance,
}

impl Activity {
    /// Every activity, in the order legends list them.
    pub const ALL: [Activity; 6] = [
        Activity::Ready,
        Activity::InUse,
        Activity::SelfTest,
        Activity::Flashing,
        Activity::Failed,
        Activity::Maintenance,
    ];

    /// Its name in JSON (`in_use`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Activity::Ready => "ready",
            Activity::InUse => "in_use",
            Activity::SelfTest => "self_test",
            Activity::Flashing => "flashing",
            Activity::Failed => "failed",
            Activity::Maintenance => "maintenance",
        }
    }

    /// What a device in `state` is doing; `held` says whether a request holds it.
    #[must_use]
    pub const fn of(state: DeviceState, held: bool) -> Activity {
        use DeviceState as S;
        match state {
            S::Ready if held => Activity::InUse,
            S::Ready => Activity::Ready,
            S::StartFlash | S::Flashing | S::FlashRebooting => Activity::Flashing,
            S::FailedPowerCycling
            | S::FailedPoweringOff
            | S::FailedFlashing
            | S::FailedPinging
            | S::FailedSutVerifying
            | S::FailedSutSdcardVerifying
            | S::FailedSelfTest
            | S::FailedHealthCheck => Activity::Failed,
            S::Unknown
            | S::LockedOut
            | S::Troubleshooting
            | S::MaintenanceMode
            | S::StartMaintenance
            | S::Off
            | S::PoweringOff => Activity::Maintenance,
            S::New
            | S::StartSelfTest
            | S::PcSutRebooting
            | S::PcPowerCycling
            | S::PcRebooting
            | S::PcPinging
            | S::SutVerifying
            | S::SutVerifyPowerCycle
            | S::SutSdcardVerifying
            | S::OperationComplete => Activity::SelfTest,
        }
    }

    /// Its band on the pool's utilisation chart.
    #[must_use]
    pub const fn usage(self) -> Usage {
        match self {
            Activity::Ready => Usage::Ready,
            Activity::InUse => Usage::InUse,
            Activity::SelfTest | Activity::Flashing => Usage::Preparing,
            Activity::Failed | Activity::Maintenance => Usage::OutOfService,
        }
    }
}

/// The pool chart's four bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Usage {
    /// Held by a request.
    InUse,
    /// Free for the pool.
    Ready,
    /// Self-testing or being flashed.
    Preparing,
    /// Failed or out of service on purpose.
    OutOfService,
}

impl Usage {
    /// Every band, bottom of the stack first.
    pub const ALL: [Usage; 4] = [
        Usage::InUse,
        Usage::Ready,
        Usage::Preparing,
        Usage::OutOfService,
    ];

    /// Its name in JSON (`out_of_service`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Usage::InUse => "in_use",
            Usage::Ready => "ready",
            Usage::Preparing => "preparing",
            Usage::OutOfService => "out_of_service",
        }
    }
}

/// One stretch of a device's timeline: it was in `state` from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The colour.
    pub activity: Activity,
    /// The Lifeguard state name (`failed_pinging`).
    pub state: String,
    /// When it began (the window's start for the first segment when it began earlier).
    pub start: Millis,
    /// When it ended (the window's end for the current state).
    pub end: Millis,
    /// The log entry that began it, when it is in the window and still kept.
    pub log_seq: Option<u64>,
    /// That entry's message.
    pub log_line: Option<String>,
}

/// A device's state timeline over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHistory {
    /// The device's name.
    pub device: String,
    /// The window asked for.
    pub window: Window,
    /// Start of the window.
    pub from: Millis,
    /// End of the window (the time of the answer).
    pub until: Millis,
    /// Oldest first, contiguous, covering `[from, until]` where the log reaches.
    pub segments: Vec<Segment>,
    /// Entries into a `failed_*` state within the window.
    pub failures: u32,
    /// Returns from a failed state to `ready` within the window.
    pub recoveries: u32,
    /// The last entry into a failed state (may be before the window), if known.
    pub last_failure: Option<Millis>,
    /// False when the log does not reach back to `from` (pruned, or the walk's bound was
    /// hit): the first segment then starts later than `from`.
    pub complete: bool,
}

/// One hour (or other bucket) of the pool chart: the average number of devices in each band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageBucket {
    /// Start of the bucket.
    pub start: Millis,
    /// Average devices held by requests.
    pub in_use: f64,
    /// Average devices free for the pool.
    pub ready: f64,
    /// Average devices self-testing or being flashed.
    pub preparing: f64,
    /// Average devices failed or out of service.
    pub out_of_service: f64,
}

/// A device that failed often in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyDevice {
    /// The device's name.
    pub device: String,
    /// Entries into a failed state in the window.
    pub failures: u32,
    /// The last of them.
    pub last_failure: Millis,
}

/// The pool's utilisation over a window, and its flakiest devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHistory {
    /// The window asked for.
    pub window: Window,
    /// Start of the window.
    pub from: Millis,
    /// End of the window.
    pub until: Millis,
    /// Bucket length in milliseconds (an hour).
    pub bucket_ms: u64,
    /// Oldest first; a bucket with no data is absent (the service was not running).
    pub buckets: Vec<UsageBucket>,
    /// Most failures first (then most recent failure first), at most 20.
    pub flaky: Vec<FlakyDevice>,
}

/// One bar of the wait histogram: requests whose wait was at most `le_ms` (and more than the
/// previous bar's); `le_ms = None` is the overflow bar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitBucket {
    /// Upper bound in milliseconds, inclusive.
    pub le_ms: Option<u64>,
    /// Requests in this bar.
    pub count: u64,
}

/// Requests that waited, by why they waited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReason {
    /// A stable reason code (`all_held`, `preparing`, `out_of_service`, `queued_behind`, ...).
    pub reason: String,
    /// Requests that waited for this reason in the window.
    pub requests: u64,
}

/// How long requests waited for a device over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHistory {
    /// The window asked for.
    pub window: Window,
    /// Start of the window.
    pub from: Millis,
    /// End of the window.
    pub until: Millis,
    /// Requests that became ready in the window.
    pub served: u64,
    /// Their request-to-ready times.
    pub histogram: Vec<WaitBucket>,
    /// Median request-to-ready time (the bucket bound it falls in), if any were served.
    pub p50_ms: Option<u64>,
    /// 95th percentile, likewise.
    pub p95_ms: Option<u64>,
    /// Requests that had to wait in the queue (no device was free when they arrived).
    pub waited: u64,
    /// Of those, by reason; most first.
    pub reasons: Vec<WaitReason>,
}

/// The upper bound of the bucket holding the `q`-quantile (0 < q ≤ 1) of `histogram`: the
/// smallest `le_ms` whose cumulative count reaches `q` of the total. `None` when empty or
/// when the quantile falls in the overflow bar.
#[must_use]
pub fn quantile(histogram: &[WaitBucket], q: f64) -> Option<u64> {
    let total: u64 = histogram.iter().map(|b| b.count).sum();
    if total == 0 {
        return None;
    }
    // Rank of the quantile, 1-based; float-to-int is fine for counts below 2^52.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for b in histogram {
        seen += b.count;
        if seen >= rank {
            return b.le_ms;
        }
    }
    None
}

/// One hour, the pool chart's bucket and the roll-ups' unit, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// The start of the hour holding `t`.
#[must_use]
pub const fn hour_of(t: u64) -> u64 {
    t - t % HOUR_MS
}

/// `[start, end)` cut at hour boundaries: `(hour start, milliseconds of the interval in that
/// hour)` for every hour it touches, oldest first (nothing for an empty interval).
pub fn split_hours(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let hour = hour_of(at);
        let stop = end.min(hour + HOUR_MS);
        let piece = (hour, stop - at);
        at = stop;
        Some(piece)
    })
}

// --- The durable log's transition lines -------------------------------------------------
//
// The Lifeguard machine writes these lines and the timeline reads them back, so both sides
// use the functions below: a change of format breaks a unit test, not the picture.

/// The log line of a Lifeguard state change (`ready -> pc_power_cycling: why`), or of a
/// re-entry into the same state (`re-entering ready: why`).
#[must_use]
pub fn transition_line(from: DeviceState, to: DeviceState, why: &str) -> String {
    if from == to {
        format!("re-entering {to}: {why}")
    } else {
        format!("{from} -> {to}: {why}")
    }
}

/// The log line written when a request takes a device (`Some(id)`) or lets go of it
/// (`None`, with the request that held it), so the timeline can tell `in_use` from `ready`.
#[must_use]
pub fn held_line(holder: Option<u64>, previous: Option<u64>) -> String {
    match (holder, previous) {
        (Some(id), _) => format!("{HELD_PREFIX}{id}"),
        (None, Some(id)) => format!("{RELEASED_PREFIX}{id}"),
        (None, None) => RELEASED_PREFIX.trim_end().to_owned(),
    }
}

const HELD_PREFIX: &str = "now held by request ";
const RELEASED_PREFIX: &str = "no longer held by request ";

/// What a Lifeguard log line says about the device's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMark {
    /// The device went from one state to another (or re-entered one: `from == to`).
    State {
        /// The state it left.
        from: DeviceState,
        /// The state it entered.
        to: DeviceState,
    },
    /// A request took the device (`true`) or let go of it (`false`).
    Held(bool),
}

impl LogMark {
    /// Read a `statemachine` log line written by [`transition_line`] or [`held_line`];
    /// `None` for any other line (or a state name this release does not know).
    #[must_use]
    pub fn parse(line: &str) -> Option<LogMark> {
        if let Some(id) = line.strip_prefix(HELD_PREFIX) {
            return id.parse::<u64>().ok().map(|_| LogMark::Held(true));
        }
        if let Some(rest) = line.strip_prefix(RELEASED_PREFIX.trim_end()) {
            let ok = rest.is_empty()
                || rest
                    .strip_prefix(' ')
                    .is_some_and(|id| id.parse::<u64>().is_ok());
            return ok.then_some(LogMark::Held(false));
        }
        if let Some(rest) = line.strip_prefix("re-entering ") {
            let (to, _) = rest.split_once(": ")?;
            let to = to.parse().ok()?;
            return Some(LogMark::State { from: to, to });
        }
        let (from, rest) = line.split_once(" -> ")?;
        let (to, _) = rest.split_once(": ")?;
        Some(LogMark::State {
            from: from.parse().ok()?,
            to: to.parse().ok()?,
        })
    }
}

/// A recognised log line of a device's chain, as the timeline builder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When it was written.
    pub at: Millis,
    /// Its sequence number in the durable log.
    pub seq: u64,
    /// Its message.
    pub line: String,
    /// What it says.
    pub mark: LogMark,
}

/// Is a move from `from` to `to` an entry into a failed state (a failure)?
#[must_use]
pub fn is_failure(from: DeviceState, to: DeviceState) -> bool {
    to.is_failed() && !from.is_failed()
}

/// A timeline built by [`timeline`]: its segments and counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeline {
    /// Oldest first, contiguous from the first one's start to the window's end.
    pub segments: Vec<Segment>,
    /// Entries into a failed state (see [`is_failure`]).
    pub failures: u32,
    /// First entries into `ready` after a failure.
    pub recoveries: u32,
    /// The last failure among the marks.
    pub last_failure: Option<Millis>,
}

/// Build a timeline over `[from, until]` from `marks` (oldest first, all inside the window)
/// and what the device was doing when the first segment starts: `start` is
/// `(when, state, held)`, with `when` = `from` when the log reaches back that far, else the
/// time of the first mark. Segments of zero length are left out and a mark that changes
/// nothing visible (a re-entry) extends the segment it falls in.
///
/// Failures are counted per Lifeguard transition, as the flaky table counts them: marks
/// written at the same time (one transition's lines) that enter a failed state count once,
/// so a failure followed at once by an automatic self-test that fails again is one.
#[must_use]
pub fn timeline(start: (Millis, DeviceState, bool), marks: &[Mark], until: Millis) -> Timeline {
    let (begin, mut state, mut held) = start;
    let mut t = Timeline::default();
    // A failure that had not recovered when the window began still counts its recovery.
    let mut down = state.is_failed();
    // The time of the last counted failure: a transition's lines share it.
    let mut counted_at = None;
    let mut open = Segment {
        activity: Activity::of(state, held),
        state: state.name().to_owned(),
        start: begin,
        end: until,
        log_seq: None,
        log_line: None,
    };
    for m in marks {
        match m.mark {
            LogMark::State { from, to } => {
                if is_failure(from, to) {
                    if counted_at != Some(m.at) {
                        t.failures += 1;
                        counted_at = Some(m.at);
                    }
                    t.last_failure = Some(m.at);
                    down = true;
                } else if to == DeviceState::Ready && down {
                    t.recoveries += 1;
                    down = false;
                }
                state = to;
            }
            LogMark::Held(h) => held = h,
        }
        let activity = Activity::of(state, held);
        if activity == open.activity && state.name() == open.state {
            continue;
        }
        let at = m.at.max(open.start).min(until);
        let next = Segment {
            activity,
            state: state.name().to_owned(),
            start: at,
            end: until,
            log_seq: Some(m.seq),
            log_line: Some(m.line.clone()),
        };
        let done = std::mem::replace(&mut open, next);
        if done.start < at {
            t.segments.push(Segment { end: at, ..done });
        }
    }
    if open.start < until || t.segments.is_empty() {
        t.segments.push(open);
    }
    t
}

/// Why a request had to wait in the queue: the stable reason codes of
/// [`WaitReason::reason`], derived from what the queue saw when it found no device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Waited {
    /// Every matching device that could serve was held by other requests.
    AllHeld,
    /// Matching devices were self-testing or being flashed.
    Preparing,
    /// Matching devices were failed or out of service.
    OutOfService,
    /// A matching device was free, but other requests were ahead (queue order, fair share).
    QueuedBehind,
    /// No device matched the request (yet).
    NoMatch,
}

impl Waited {
    /// Every reason, in code order.
    pub const ALL: [Waited; 5] = [
        Waited::AllHeld,
        Waited::Preparing,
        Waited::OutOfService,
        Waited::QueuedBehind,
        Waited::NoMatch,
    ];

    /// Its stable name (`all_held`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Waited::AllHeld => "all_held",
            Waited::Preparing => "preparing",
            Waited::OutOfService => "out_of_service",
            Waited::QueuedBehind => "queued_behind",
            Waited::NoMatch => "no_match",
        }
    }

    /// Its stable code on disk (its index in [`Waited::ALL`]).
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The reason with this code, if any.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Waited> {
        Waited::ALL.get(usize::from(code)).copied()
    }

    /// The reason from what the queue saw: devices matching every criterion (`matching`),
    /// of them free, held, and the states of the others (neither free nor held). A free
    /// match means others were ahead; otherwise the largest group wins, ties going to
    /// held, then preparing.
    #[must_use]
    pub fn of(
        matching: usize,
        free: usize,
        held: usize,
        others: impl IntoIterator<Item = (DeviceState, usize)>,
    ) -> Waited {
        if matching == 0 {
            return Waited::NoMatch;
        }
        if free > 0 {
            return Waited::QueuedBehind;
        }
        let (mut preparing, mut out) = (0usize, 0usize);
        for (state, n) in others {
            match Activity::of(state, false).usage() {
                Usage::OutOfService => out += n,
                _ => preparing += n,
            }
        }
        if held >= preparing && held >= out && held > 0 {
            Waited::AllHeld
        } else if preparing >= out && preparing > 0 {
            Waited::Preparing
        } else if out > 0 {
            Waited::OutOfService
        } else {
            Waited::AllHeld
        }
    }
}

/// Upper bounds (inclusive, ms) of the request-wait histogram's bars; one overflow bar
/// follows. Fixed, so hours rolled up by different releases add up.
pub const WAIT_BOUNDS_MS: [u64; 11] = [
    100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000,
];

/// The bar a wait of `ms` falls in (`WAIT_BOUNDS_MS.len()` is the overflow bar).
#[must_use]
pub fn wait_bar(ms: u64) -> usize {
    WAIT_BOUNDS_MS
        .iter()
        .position(|&le| ms <= le)
        .unwrap_or(WAIT_BOUNDS_MS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_name() {
        for w in Window::ALL {
            assert_eq!(w.name().parse::<Window>(), Ok(w));
        }
        assert!("1y".parse::<Window>().is_err());
        assert_eq!(Window::Day.span(Millis(100_000_000)).0, Millis(13_600_000));
    }

    #[test]
    fn every_state_has_an_activity_and_ready_splits_on_held() {
        assert_eq!(Activity::of(DeviceState::Ready, false), Activity::Ready);
        assert_eq!(Activity::of(DeviceState::Ready, true), Activity::InUse);
        for &s in DeviceState::ALL {
            let a = Activity::of(s, false);
            assert_eq!(a == Activity::Failed, s.is_failed(), "{s}");
        }
    }

    #[test]
    fn quantiles_come_from_cumulative_counts() {
        let h = [
            WaitBucket {
                le_ms: Some(10),
                count: 50,
            },
            WaitBucket {
                le_ms: Some(100),
                count: 45,
            },
            WaitBucket {
                le_ms: None,
                count: 5,
            },
        ];
        assert_eq!(quantile(&h, 0.5), Some(10));
        assert_eq!(quantile(&h, 0.95), Some(100));
        assert_eq!(quantile(&h, 0.99), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn hours_split_at_their_boundaries() {
        let h = HOUR_MS;
        assert_eq!(split_hours(10, 10).count(), 0);
        assert_eq!(split_hours(10, 20).collect::<Vec<_>>(), vec![(0, 10)]);
        assert_eq!(
            split_hours(h - 5, 2 * h + 7).collect::<Vec<_>>(),
            vec![(0, 5), (h, h), (2 * h, 7)]
        );
        assert_eq!(hour_of(2 * h + 7), 2 * h);
    }

    #[test]
    fn log_lines_round_trip() {
        use DeviceState as S;
        let line = transition_line(S::PcPinging, S::FailedPinging, "no answer: 3 tries");
        assert_eq!(
            LogMark::parse(&line),
            Some(LogMark::State {
                from: S::PcPinging,
                to: S::FailedPinging
            })
        );
        let line = transition_line(S::Ready, S::Ready, "held by request 4 -> x: y");
        assert_eq!(
            LogMark::parse(&line),
            Some(LogMark::State {
                from: S::Ready,
                to: S::Ready
            })
        );
        assert_eq!(
            LogMark::parse(&held_line(Some(7), None)),
            Some(LogMark::Held(true))
        );
        assert_eq!(
            LogMark::parse(&held_line(None, Some(7))),
            Some(LogMark::Held(false))
        );
        for other in [
            "accepted please_self_test",
            "bogus -> ready: x",
            "ready -> bogus: x",
            "now held by request x",
            "ignored late result ping_ok (generation 3, current 4) in ready",
        ] {
            assert_eq!(LogMark::parse(other), None, "{other}");
        }
    }

    fn mark(at: u64, seq: u64, mark: LogMark) -> Mark {
        Mark {
            at: Millis(at),
            seq,
            line: format!("line {seq}"),
            mark,
        }
    }

    #[test]
    fn a_timeline_has_contiguous_segments_and_counts_failures() {
        use DeviceState as S;
        let st = |from, to| LogMark::State { from, to };
        let marks = [
            mark(100, 1, LogMark::Held(true)),
            mark(200, 2, LogMark::Held(false)),
            // A re-entry changes nothing visible.
            mark(250, 3, st(S::Ready, S::Ready)),
            mark(300, 4, st(S::Ready, S::PcPowerCycling)),
            mark(300, 5, st(S::PcPowerCycling, S::FailedPowerCycling)),
            mark(400, 6, st(S::FailedPowerCycling, S::StartSelfTest)),
            mark(400, 7, st(S::StartSelfTest, S::PcPowerCycling)),
            mark(500, 8, st(S::PcPowerCycling, S::Ready)),
        ];
        let t = timeline((Millis(50), S::Ready, false), &marks, Millis(600));
        let got: Vec<(Activity, &str, u64, u64, Option<u64>)> = t
            .segments
            .iter()
            .map(|s| (s.activity, s.state.as_str(), s.start.0, s.end.0, s.log_seq))
            .collect();
        assert_eq!(
            got,
            vec![
                (Activity::Ready, "ready", 50, 100, None),
                (Activity::InUse, "ready", 100, 200, Some(1)),
                (Activity::Ready, "ready", 200, 300, Some(2)),
                (Activity::Failed, "failed_power_cycling", 300, 400, Some(5)),
                (Activity::SelfTest, "pc_power_cycling", 400, 500, Some(7)),
                (Activity::Ready, "ready", 500, 600, Some(8)),
            ]
        );
        assert_eq!((t.failures, t.recoveries), (1, 1));
        assert_eq!(t.last_failure, Some(Millis(300)));
        // A window that starts failed counts the recovery, not a failure.
        let t = timeline(
            (Millis(0), S::FailedPinging, false),
            &marks[7..],
            Millis(600),
        );
        assert_eq!((t.failures, t.recoveries), (0, 1));
        assert_eq!(t.segments[0].activity, Activity::Failed);
        // No marks: one segment, the state at the start.
        let t = timeline((Millis(0), S::MaintenanceMode, false), &[], Millis(10));
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[0].activity, Activity::Maintenance);
    }

    #[test]
    fn wait_reasons_and_bars() {
        use DeviceState as S;
        assert_eq!(Waited::of(0, 0, 0, []), Waited::NoMatch);
        assert_eq!(Waited::of(3, 1, 2, []), Waited::QueuedBehind);
        assert_eq!(Waited::of(3, 0, 3, []), Waited::AllHeld);
        assert_eq!(
            Waited::of(3, 0, 1, [(S::PcRebooting, 1), (S::Flashing, 1)]),
            Waited::Preparing
        );
        assert_eq!(
            Waited::of(3, 0, 0, [(S::FailedPinging, 2), (S::Flashing, 1)]),
            Waited::OutOfService
        );
        for w in Waited::ALL {
            assert_eq!(Waited::from_code(w.code()), Some(w));
        }
        assert_eq!(Waited::from_code(99), None);
        assert_eq!(wait_bar(0), 0);
        assert_eq!(wait_bar(100), 0);
        assert_eq!(wait_bar(101), 1);
        assert_eq!(wait_bar(3_600_000), WAIT_BOUNDS_MS.len() - 1);
        assert_eq!(wait_bar(3_600_001), WAIT_BOUNDS_MS.len());
    }
}
