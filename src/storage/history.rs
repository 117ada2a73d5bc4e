//! History: what the device timeline, the pool chart and the request-wait chart read, and
//! the roll-ups written for them.
//!
//! **Device timeline** ([`device_history`]): a walk back along the device's log chain
//! (`log_heads` → `LogV2::prev`), reading only `statemachine` lines that
//! [`LogMark::parse`] recognises, undoing each change from the device's current state so
//! the state at the window's start is known without reading older entries. The walk stops
//! at the first entry older than the window, at a pruned entry, or after [`MAX_WALK`]
//! entries (then `complete` is false).
//!
//! **Roll-ups** (pool chart, flaky table, request waits): written in the transaction that
//! changes the device or request, so they are as durable as the change and agree with the
//! log. A device's band change closes its open interval (`device_usage`) into the hours it
//! spans (`usage_hours`) and opens the next; an entry into a failed state adds to
//! `failure_hours`; a request becoming ready adds its wait to `wait_hours`. Queries are
//! range scans of at most 30 × 24 + 1 hour rows, plus the open intervals (one per device)
//! and the window's failure rows.
//!
//! Nothing here reads a clock: writes take the time of the change, reads the caller's `now`.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableTable};

use super::records::{
    FailureHourRecord, FailureHourV1, LogRecord, UsageHourRecord, UsageHourV1, UsageOpenRecord,
    UsageOpenV1, WaitHourRecord, WaitHourV1,
};
use super::tables::{
    DEVICE_USAGE, DEVICES, FAILURE_HOURS, LOG_HEADS, LOGS, USAGE_HOURS, WAIT_HOURS,
};
use super::{StoreError, Tx, decode, encode, inventory as inv};
use crate::domain::clock::Millis;
use crate::domain::history::{
    Activity, DeviceHistory, FlakyDevice, HOUR_MS, LogMark, Mark, PoolHistory, RequestHistory,
    Usage, UsageBucket, WAIT_BOUNDS_MS, WaitBucket, WaitReason, Waited, Window, hour_of, quantile,
    split_hours, timeline,
};
use crate::domain::model::{Device, device_subject};

/// Most log entries one device timeline reads. A device changes state a few dozen times a
/// day, so this covers a month of a busy device; a flapping one shows its latest part with
/// `complete = false`.
pub const MAX_WALK: usize = 5000;

/// Most devices the flaky table lists.
pub const MAX_FLAKY: usize = 20;

/// Longest stretch of an open interval rolled into hours when it closes: older hours are
/// past every window (and would make one write touch thousands of rows).
const MAX_ROLLUP_MS: u64 = 31 * 24 * HOUR_MS;

/// The pool-chart band of a device as stored: what a device write compares to decide
/// whether the chart changes. `None` for a retired device (off the chart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageKey {
    band: Option<Usage>,
}

impl UsageKey {
    /// The key of `d`.
    #[must_use]
    pub fn of(d: &Device) -> UsageKey {
        UsageKey {
            band: (!d.retired).then(|| Activity::of(d.state, d.request.is_some()).usage()),
        }
    }
}

fn band_code(u: Usage) -> u8 {
    match u {
        Usage::InUse => 0,
        Usage::Ready => 1,
        Usage::Preparing => 2,
        Usage::OutOfService => 3,
    }
}

fn band_index(code: u8) -> usize {
    usize::from(code.min(3))
}

fn open_row(rec: UsageOpenRecord) -> UsageOpenV1 {
    match rec {
        UsageOpenRecord::V1(v) => v,
    }
}

/// Keep the pool chart in step with a device write (called by
/// `inventory::replace_device`): `old` is the stored device's key (`None` for a new
/// device), `at` the time of the change (the record's `updated`). Costs nothing when the
/// band stays; otherwise a read and a write of the device's open interval and of the
/// current hour's row (more rows only when the closed interval spans hours).
///
/// # Errors
/// Storage failure or a corrupt row.
pub(super) fn device_changed(
    tx: &Tx<'_>,
    name: &str,
    old: Option<UsageKey>,
    new: UsageKey,
    at: Millis,
) -> Result<(), StoreError> {
    if old.map(|o| o.band) == Some(new.band) {
        return Ok(());
    }
    let mut open = tx.device_usage()?;
    let row = match open.get(name)? {
        Some(g) => Some(open_row(decode("device_usage", name, &g.value())?)),
        None => None,
    };
    if let Some(r) = row {
        // The record's own time never goes back, but a caller could; nothing to add then.
        let start = r.since.max(at.0.saturating_sub(MAX_ROLLUP_MS));
        add_hours(tx, band_index(r.band), start, at.0)?;
    }
    match new.band {
        Some(band) => {
            let rec = UsageOpenRecord::V1(UsageOpenV1 {
                band: band_code(band),
                since: at.0,
                last_failure: row.map_or(0, |r| r.last_failure),
            });
            open.insert(name, encode(&rec)?)?;
        }
        None => {
            open.remove(name)?;
        }
    }
    Ok(())
}

/// A Lifeguard transition of `name` at `at` entered a failed state from a working one
/// (called by `lifeguard::store::apply` once per transition, however many states it passed
/// through): count it in the hour's flaky row and remember it as the device's last failure.
/// Call it after the device write of the same transition.
///
/// # Errors
/// Storage failure or a corrupt row.
pub fn device_failed(tx: &Tx<'_>, name: &str, at: Millis) -> Result<(), StoreError> {
    let key = (hour_of(at.0), name);
    let mut fails = tx.failure_hours()?;
    let before = match fails.get(key)? {
        Some(g) => match decode("failure_hours", name, &g.value())? {
            FailureHourRecord::V1(v) => v.failures,
        },
        None => 0,
    };
    let rec = FailureHourRecord::V1(FailureHourV1 {
        failures: before.saturating_add(1),
        last: at.0,
    });
    fails.insert(key, encode(&rec)?)?;
    drop(fails);
    let mut open = tx.device_usage()?;
    let row = match open.get(name)? {
        Some(g) => Some(open_row(decode("device_usage", name, &g.value())?)),
        None => None,
    };
    if let Some(mut r) = row {
        r.last_failure = at.0;
        open.insert(name, encode(&UsageOpenRecord::V1(r))?)?;
    }
    Ok(())
}

/// Open an interval for every device of a store upgraded to schema 4, in the band it is in
/// since its record last changed, so the chart shows the devices that sit idle from the
/// upgrade on (their time before it is not known).
///
/// # Errors
/// Storage failure or a corrupt record.
pub(super) fn open_intervals_on_upgrade(tx: &Tx<'_>) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    inv::for_each_device_in_tx(tx, |d| {
        rows.push((d.name.to_string(), UsageKey::of(d).band, d.updated));
        Ok(())
    })?;
    let mut open = tx.device_usage()?;
    for (name, band, since) in rows {
        if let Some(band) = band {
            let rec = UsageOpenRecord::V1(UsageOpenV1 {
                band: band_code(band),
                since: since.0,
                last_failure: 0,
            });
            open.insert(name.as_str(), encode(&rec)?)?;
        }
    }
    Ok(())
}

/// Add `[start, end)` spent in band `band` to the hours it spans.
fn add_hours(tx: &Tx<'_>, band: usize, start: u64, end: u64) -> Result<(), StoreError> {
    if start >= end {
        return Ok(());
    }
    let mut hours = tx.usage_hours()?;
    for (hour, ms) in split_hours(start, end) {
        let mut v = match hours.get(hour)? {
            Some(g) => match decode("usage_hours", hour, &g.value())? {
                UsageHourRecord::V1(v) => v,
            },
            None => UsageHourV1::default(),
        };
        v.ms[band] = v.ms[band].saturating_add(ms);
        hours.insert(hour, encode(&UsageHourRecord::V1(v))?)?;
    }
    Ok(())
}

/// A request found no device and waits in the queue: remember why, the first time only
/// (what it met when it arrived), until it is served or ends.
///
/// # Errors
/// Storage failure.
pub fn request_waited(tx: &Tx<'_>, id: u64, why: Waited) -> Result<(), StoreError> {
    let mut waits = tx.request_waits()?;
    if waits.get(id)?.is_none() {
        waits.insert(id, why.code())?;
    }
    Ok(())
}

/// A request became ready at `at`, `created` being when it was made: add its wait (and
/// why it waited in the queue, if it did) to the hour's roll-up.
///
/// # Errors
/// Storage failure or a corrupt row.
pub fn request_served(tx: &Tx<'_>, id: u64, created: Millis, at: Millis) -> Result<(), StoreError> {
    let why = tx
        .request_waits()?
        .remove(id)?
        .and_then(|g| Waited::from_code(g.value()));
    let hour = hour_of(at.0);
    let mut hours = tx.wait_hours()?;
    let mut v = match hours.get(hour)? {
        Some(g) => match decode("wait_hours", hour, &g.value())? {
            WaitHourRecord::V1(v) => v,
        },
        None => WaitHourV1::default(),
    };
    bump(
        &mut v.bars,
        crate::domain::history::wait_bar(at.0.saturating_sub(created.0)),
    );
    if let Some(w) = why {
        bump(&mut v.waited, usize::from(w.code()));
    }
    hours.insert(hour, encode(&WaitHourRecord::V1(v))?)?;
    Ok(())
}

/// A request ended without (again) becoming ready: drop its remembered wait reason.
///
/// # Errors
/// Storage failure.
pub fn request_ended(tx: &Tx<'_>, id: u64) -> Result<(), StoreError> {
    tx.request_waits()?.remove(id)?;
    Ok(())
}

fn bump(v: &mut Vec<u64>, i: usize) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = v[i].saturating_add(1);
}

/// Hours of a window: the first hour start (the hour holding `from`) and the count of hours
/// up to the one holding `until`.
fn hours_of(from: Millis, until: Millis) -> (u64, usize) {
    let first = hour_of(from.0);
    let last = hour_of(until.0.max(from.0));
    (
        first,
        usize::try_from((last - first) / HOUR_MS).unwrap_or(0) + 1,
    )
}

/// A device's timeline over `window` ending at `now` (see the module doc). An unknown
/// device has no segments and `complete = false`; callers answering "not found" check
/// [`super::Snapshot::device`] in the same snapshot.
///
/// # Errors
/// Storage failure or a corrupt record.
pub(super) fn device_history(
    rtx: &ReadTransaction,
    name: &str,
    window: Window,
    now: Millis,
) -> Result<DeviceHistory, StoreError> {
    let (from, until) = window.span(now);
    let mut out = DeviceHistory {
        device: name.to_owned(),
        window,
        from,
        until,
        segments: Vec::new(),
        failures: 0,
        recoveries: 0,
        last_failure: None,
        complete: false,
    };
    let Some(device) = inv::device(&rtx.open_table(DEVICES)?, name)? else {
        return Ok(out);
    };
    let subject = device_subject(name);
    let logs = rtx.open_table(LOGS)?;
    let mut state = device.state;
    let mut held = device.request.is_some();
    let mut marks = Vec::new();
    // Where the walk ended: the window's start when it got there, else the oldest entry read.
    let mut start = None;
    let mut oldest = until;
    let mut cursor = rtx
        .open_table(LOG_HEADS)?
        .get(subject.as_str())?
        .map(|g| g.value().0);
    let mut walked = 0usize;
    let mut complete = false;
    while let Some(seq) = cursor {
        if seq == 0 {
            // The chain begins here: nothing older was ever written about the device.
            complete = true;
            break;
        }
        if walked >= MAX_WALK {
            break;
        }
        let Some(guard) = logs.get(seq)? else {
            break; // pruned
        };
        walked += 1;
        let record: LogRecord = decode("logs", seq, &guard.value())?;
        let ts = record.ts();
        if ts < from {
            start = Some(from);
            complete = true;
            break;
        }
        // A layout-1 entry links nothing: older entries are not on the chain.
        let Some(prev) = record.prev_for(&subject) else {
            break;
        };
        oldest = oldest.min(ts);
        if let LogRecord::V2(v) = record
            && v.source == "statemachine"
            && let Some(mark) = LogMark::parse(&v.message)
        {
            match mark {
                LogMark::State { from: before, .. } => state = before,
                LogMark::Held(h) => held = !h,
            }
            if ts <= until {
                marks.push(Mark {
                    at: ts,
                    seq,
                    line: v.message,
                    mark,
                });
            }
        }
        // A link must point back; anything else ends the walk instead of looping.
        cursor = Some(prev).filter(|&p| p < seq);
    }
    if walked == 0 && start.is_none() {
        // No log about the device at all: what it is doing now, since it was created,
        // without claiming the window is complete.
        complete = false;
        oldest = device.created;
    }
    marks.reverse();
    let begin = start.unwrap_or(oldest).max(from).min(until);
    let t = timeline((begin, state, held), &marks, until);
    let open = rtx.open_table(DEVICE_USAGE)?;
    let remembered = match open.get(name)? {
        Some(g) => Some(open_row(decode("device_usage", name, &g.value())?).last_failure)
            .filter(|&f| f != 0)
            .map(Millis),
        None => None,
    };
    out.segments = t.segments;
    out.failures = t.failures;
    out.recoveries = t.recoveries;
    out.last_failure = t.last_failure.max(remembered).filter(|f| *f <= until);
    out.complete = complete;
    Ok(out)
}

/// The pool's utilisation per hour over `window` ending at `now`, and its flakiest devices.
///
/// # Errors
/// Storage failure or a corrupt row.
pub(super) fn pool_history(
    rtx: &ReadTransaction,
    window: Window,
    now: Millis,
) -> Result<PoolHistory, StoreError> {
    let (from, until) = window.span(now);
    let (first, n) = hours_of(from, until);
    let last = first + (n as u64 - 1) * HOUR_MS;
    let mut ms = vec![[0u64; 4]; n];
    let mut seen = vec![false; n];
    let idx = |hour: u64| usize::try_from((hour - first) / HOUR_MS).unwrap_or(0);
    for item in rtx.open_table(USAGE_HOURS)?.range(first..=last)? {
        let (k, v) = item?;
        let hour = k.value();
        let UsageHourRecord::V1(v) = decode("usage_hours", hour, &v.value())?;
        let i = idx(hour);
        for (sum, add) in ms[i].iter_mut().zip(v.ms) {
            *sum = sum.saturating_add(add);
        }
        seen[i] = true;
    }
    // Open intervals: the partial first hour directly, the whole hours after it through a
    // difference array (one pass per device, not one per device and hour).
    let mut whole = vec![[0i64; 4]; n + 1];
    for item in rtx.open_table(DEVICE_USAGE)?.iter()? {
        let (k, v) = item?;
        let r = open_row(decode("device_usage", k.value(), &v.value())?);
        let b = band_index(r.band);
        let s = r.since.max(first);
        if s >= until.0 {
            continue;
        }
        let hs = idx(hour_of(s));
        let head_end = (hour_of(s) + HOUR_MS).min(until.0);
        ms[hs][b] += head_end - s;
        seen[hs] = true;
        if hs + 1 < n {
            whole[hs + 1][b] += 1;
        }
    }
    let mut running = [0i64; 4];
    for i in 0..n {
        let hour = first + i as u64 * HOUR_MS;
        let span = (hour + HOUR_MS).min(until.0).saturating_sub(hour);
        for b in 0..4 {
            running[b] += whole[i][b];
            let count = u64::try_from(running[b]).unwrap_or(0);
            if count > 0 {
                ms[i][b] += count * span;
                seen[i] = true;
            }
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let buckets = (0..n)
        .filter(|&i| seen[i])
        .map(|i| {
            let hour = first + i as u64 * HOUR_MS;
            // The current hour is averaged over its part so far.
            let span = (hour + HOUR_MS).min(until.0).saturating_sub(hour).max(1) as f64;
            let avg = |b: usize| ms[i][b] as f64 / span;
            UsageBucket {
                start: Millis(hour),
                in_use: avg(0),
                ready: avg(1),
                preparing: avg(2),
                out_of_service: avg(3),
            }
        })
        .collect();
    let mut flaky: HashMap<String, (u32, u64)> = HashMap::new();
    for item in rtx
        .open_table(FAILURE_HOURS)?
        .range((first, "")..=(last, "\u{10ffff}"))?
    {
        let (k, v) = item?;
        let (hour, device) = k.value();
        let FailureHourRecord::V1(v) = decode("failure_hours", hour, &v.value())?;
        if v.last > until.0 {
            continue;
        }
        let e = flaky.entry(device.to_owned()).or_insert((0, 0));
        e.0 = e.0.saturating_add(v.failures);
        e.1 = e.1.max(v.last);
    }
    let mut flaky: Vec<FlakyDevice> = flaky
        .into_iter()
        .map(|(device, (failures, last))| FlakyDevice {
            device,
            failures,
            last_failure: Millis(last),
        })
        .collect();
    flaky.sort_by(|a, b| {
        (b.failures, b.last_failure, &a.device).cmp(&(a.failures, a.last_failure, &b.device))
    });
    flaky.truncate(MAX_FLAKY);
    Ok(PoolHistory {
        window,
        from,
        until,
        bucket_ms: HOUR_MS,
        buckets,
        flaky,
    })
}

/// How long requests that became ready in `window` (ending at `now`) waited, by whole
/// hours (the hour holding the window's start counts whole).
///
/// # Errors
/// Storage failure or a corrupt row.
pub(super) fn request_history(
    rtx: &ReadTransaction,
    window: Window,
    now: Millis,
) -> Result<RequestHistory, StoreError> {
    let (from, until) = window.span(now);
    let (first, n) = hours_of(from, until);
    let last = first + (n as u64 - 1) * HOUR_MS;
    let mut bars = vec![0u64; WAIT_BOUNDS_MS.len() + 1];
    let mut waited = vec![0u64; Waited::ALL.len()];
    for item in rtx.open_table(WAIT_HOURS)?.range(first..=last)? {
        let (k, v) = item?;
        let WaitHourRecord::V1(v) = decode("wait_hours", k.value(), &v.value())?;
        for (i, c) in v.bars.iter().enumerate() {
            if let Some(b) = bars.get_mut(i) {
                *b += c;
            }
        }
        for (i, c) in v.waited.iter().enumerate() {
            if let Some(w) = waited.get_mut(i) {
                *w += c;
            }
        }
    }
    let histogram: Vec<WaitBucket> = bars
        .iter()
        .enumerate()
        .map(|(i, &count)| WaitBucket {
            le_ms: WAIT_BOUNDS_MS.get(i).copied(),
            count,
        })
        .collect();
    let mut reasons: Vec<WaitReason> = Waited::ALL
        .iter()
        .zip(&waited)
        .filter(|(_, n)| **n > 0)
        .map(|(w, &requests)| WaitReason {
            reason: w.name().to_owned(),
            requests,
        })
        .collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.requests));
    Ok(RequestHistory {
        window,
        from,
        until,
        served: bars.iter().sum(),
        p50_ms: quantile(&histogram, 0.5),
        p95_ms: quantile(&histogram, 0.95),
        histogram,
        waited: waited.iter().sum(),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_covers_the_hours_it_touches() {
        let (first, n) = hours_of(Millis(HOUR_MS + 5), Millis(3 * HOUR_MS + 1));
        assert_eq!((first, n), (HOUR_MS, 3));
        let (first, n) = hours_of(Millis(0), Millis(0));
        assert_eq!((first, n), (0, 1));
    }

    #[test]
    fn bands_have_stable_codes() {
        for (i, u) in Usage::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(band_code(u)), i, "{u:?}");
        }
    }

    #[test]
    fn retired_devices_are_off_the_chart() {
        let mut d = Device::for_test("panda-1", "ready");
        assert_eq!(UsageKey::of(&d).band, Some(Usage::Ready));
        d.request = Some(3);
        assert_eq!(UsageKey::of(&d).band, Some(Usage::InUse));
        d.retired = true;
        assert_eq!(UsageKey::of(&d).band, None);
    }
}
