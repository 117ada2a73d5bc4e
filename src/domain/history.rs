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
}
