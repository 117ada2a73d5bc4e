//! The `history` section: the three history queries (device timeline, pool chart, request
//! waits) on a store holding a month of history for a large rack.
//!
//! Setup, hour by hour over 30 days: the hour's share of the log (statemachine transition
//! lines and hold/release lines, round-robin over the devices, appended as the writer
//! appends any entry), then real Lifeguard transitions through `lifeguard::store::apply`
//! (`app::seed`): 20 devices held and released, 4 failing and recovering, and 50 requests'
//! waits rolled up as the pool's ready transition does. Each query is timed as its endpoint
//! runs it: a read on the blocking pool, answer serialised to JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Better, Figures, quantile};
use crate::app::seed;
use crate::domain::clock::{Clock, ManualClock, Millis, SystemClock};
use crate::domain::device_state::DeviceState;
use crate::domain::history::{HOUR_MS, Waited, Window, hour_of};
use crate::domain::model::device_subject;
use crate::domain::names::DeviceName;
use crate::inventory::{DeviceFields, upsert_device};
use crate::storage::logs::{NewLog, append};
use crate::storage::{Store, history as roll};

/// Days of history generated.
const DAYS: u64 = 30;

/// A device's log lines, in the order the generated log repeats them.
const LINES: [&str; 6] = [
    "ready -> pc_power_cycling: bench",
    "pc_power_cycling -> pc_rebooting: bench",
    "pc_rebooting -> pc_pinging: bench",
    "pc_pinging -> ready: bench",
    "now held by request 1",
    "no longer held by request 1",
];

/// Build the history and time the queries.
///
/// # Errors
/// A setup step that failed or a query that answered nothing.
pub(super) async fn history(
    devices: usize,
    records: u64,
    figs: &mut Figures,
) -> anyhow::Result<()> {
    let hours = DAYS * 24;
    let end = Millis(hour_of(SystemClock.now().0));
    let start = Millis(end.0 - hours * HOUR_MS);
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &dir.path().join(crate::storage::backup::DB_FILE),
        Arc::new(ManualClock::new(start)),
    )?;
    let names: Vec<DeviceName> = (0..devices)
        .map(|i| format!("bench-{i:05}").parse())
        .collect::<Result<_, _>>()?;
    let names = Arc::new(names);
    let t0 = Instant::now();
    for from in (0..devices).step_by(1000) {
        let names = names.clone();
        let refused = store
            .write(move |tx, _| {
                let mut refused = 0;
                for n in &names[from..(from + 1000).min(names.len())] {
                    let fields = DeviceFields::default();
                    upsert_device(tx, start, "bench", n, &fields, "bench", None)?;
                    refused += usize::from(
                        seed::state_in(tx, n.as_str(), DeviceState::Ready, start)?.is_err(),
                    );
                }
                Ok(refused)
            })
            .await?;
        if refused > 0 {
            bail!("{refused} devices did not become ready");
        }
    }
    let per_hour = records / hours;
    let mut written = 0u64;
    let mut request = 0u64;
    for h in 0..hours {
        let at = start.0 + h * HOUR_MS;
        let n = if h + 1 == hours {
            records - written
        } else {
            per_hour
        };
        let first = written;
        let names = names.clone();
        let base = request;
        let refused = store
            .write(move |tx, _| {
                let d = names.len() as u64;
                // The log's share of the hour, spread over its first 50 minutes.
                let step = (50 * 60_000 / n.max(1)).max(1);
                for j in 0..n {
                    let g = first + j;
                    let name = &names[usize::try_from(g % d).unwrap_or(0)];
                    let line = LINES[usize::try_from((g / d) % LINES.len() as u64).unwrap_or(0)];
                    append(
                        tx,
                        Millis(at + (j * step).min(50 * 60_000)),
                        NewLog::new(device_subject(name.as_str()), "statemachine", line),
                    )?;
                }
                // Real transitions after them: 20 devices held from :50 to :58, 4 failing
                // at :52 and back at :54 (a different set each hour).
                let pick = |k: u64| names[usize::try_from((h * 24 + k) % d).unwrap_or(0)].as_str();
                let mut refused = 0usize;
                let minute = |m: u64| Millis(at + m * 60_000);
                for k in 0..20 {
                    refused +=
                        usize::from(seed::hold_in(tx, pick(k), base + k, minute(50))?.is_err());
                }
                for k in 20..24 {
                    let failed =
                        seed::state_in(tx, pick(k), DeviceState::FailedHealthCheck, minute(52))?;
                    let back = seed::state_in(tx, pick(k), DeviceState::Ready, minute(54))?;
                    refused += usize::from(failed.is_err() || back.is_err());
                }
                for k in 0..20 {
                    refused +=
                        usize::from(seed::release_in(tx, pick(k), base + k, minute(58))?.is_err());
                }
                // 50 requests served at :59, waits from 0 to 10 minutes; every fifth queued.
                for k in 0..50u64 {
                    let id = base + k;
                    if k % 5 == 0 {
                        let why = Waited::ALL[usize::try_from(k / 5 % 5).unwrap_or(0)];
                        roll::request_waited(tx, id, why)?;
                    }
                    let wait = (id * 7919) % 600_000;
                    roll::request_served(tx, id, Millis(minute(59).0 - wait), minute(59))?;
                }
                Ok(refused)
            })
            .await?;
        if refused > 0 {
            bail!("{refused} seeded transitions were refused in hour {h}");
        }
        written += n;
        request += 50;
    }
    let label = if records >= 1_000_000 {
        format!("{}M", records / 1_000_000)
    } else {
        format!("{}k", records / 1000)
    };
    let size = format!("{}k devices, {label} log records", devices / 1000);
    eprintln!("  (history: built in {:.1} s)", t0.elapsed().as_secs_f64());

    let runs = 100usize;
    let mut timings: Vec<(String, Vec<Duration>)> = Vec::new();
    for window in [Window::Day, Window::Month] {
        let mut v = Vec::with_capacity(runs);
        for i in 0..runs {
            let name = names[(i * 7919) % names.len()].as_str().to_owned();
            let t = Instant::now();
            let h = store
                .read(move |snap| snap.device_history(&name, window, end))
                .await?;
            let json = serde_json::to_vec(&h)?;
            v.push(t.elapsed());
            if h.segments.is_empty() || json.is_empty() {
                bail!("the device history is empty");
            }
        }
        timings.push((format!("device timeline {window}"), v));
    }
    for window in [Window::Week, Window::Month] {
        let mut v = Vec::with_capacity(runs);
        for _ in 0..runs / 4 {
            let t = Instant::now();
            let p = store
                .read(move |snap| snap.pool_history(window, end))
                .await?;
            let json = serde_json::to_vec(&p)?;
            v.push(t.elapsed());
            if p.buckets.is_empty() || p.flaky.is_empty() || json.is_empty() {
                bail!("the pool history is empty");
            }
        }
        timings.push((format!("pool chart {window}"), v));
    }
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = store
            .read(move |snap| snap.request_history(Window::Month, end))
            .await
            .context("request history")?;
        let json = serde_json::to_vec(&r)?;
        v.push(t.elapsed());
        if r.served == 0 || json.is_empty() {
            bail!("the request history is empty");
        }
    }
    timings.push(("request waits 30d".to_owned(), v));
    for (what, mut v) in timings {
        figs.add(
            format!("history p50, {what}, {size}"),
            quantile(&mut v, 0.5),
            "ms",
            Better::Lower,
        );
        figs.target(
            format!("  history p99, {what}, {size}"),
            quantile(&mut v, 0.99),
            "ms",
            Better::Lower,
            Some(50.0),
        );
    }
    Ok(())
}
