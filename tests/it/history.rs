//! History: the device timeline, the pool chart with its flaky table and the request-wait
//! chart, seeded through the service's own write paths at chosen past times
//! (`mozpool::app::seed`) on a manual clock, read back through the store's queries and the
//! `/api/…/history/` endpoints; and request waits rolled up by the real pool on the
//! simulated rack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::app::seed;
use mozpool::domain::clock::{ManualClock, Millis};
use mozpool::domain::device_state::DeviceState;
use mozpool::domain::history::{Activity, HOUR_MS, Waited, Window};
use mozpool::storage::Store;
use serde_json::json;

use crate::support::TestServer;

/// An hour boundary (2026-12-05T12:00:00Z); "now" is half an hour later.
const H: u64 = 1_796_472_000_000;
const NOW: Millis = Millis(H + HOUR_MS / 2);
const MIN: u64 = 60_000;

fn ago(ms: u64) -> Millis {
    Millis(NOW.0 - ms)
}

/// The seeded lab: `flaky-1` failed twice yesterday (20 h and 10 h ago, an hour and half an
/// hour each), `flaky-2` once 3 h ago; `busy-1..4` were all held from 6 h to 5 h before the
/// hour `H` (the busy hour); three requests waited 50 ms, 2 s and 20 min (the last queued
/// because every device was held). Every device's last change is a minute before `NOW`, so a
/// service started at `NOW` has no Lifeguard deadline due.
async fn seed_lab(store: &Store) {
    let created = ago(30 * HOUR_MS);
    seed::flaky_device(
        store,
        "flaky-1",
        created,
        &[
            (ago(20 * HOUR_MS), ago(19 * HOUR_MS)),
            (ago(10 * HOUR_MS), ago(10 * HOUR_MS - 30 * MIN)),
        ],
    )
    .await
    .expect("flaky-1");
    seed::flaky_device(
        store,
        "flaky-2",
        created,
        &[(ago(3 * HOUR_MS), ago(2 * HOUR_MS))],
    )
    .await
    .expect("flaky-2");
    let busy = ["busy-1", "busy-2", "busy-3", "busy-4"];
    for name in busy {
        seed::device(store, name, created).await.expect("busy");
    }
    seed::busy(
        store,
        &busy,
        100,
        Millis(H - 6 * HOUR_MS),
        Millis(H - 5 * HOUR_MS),
    )
    .await
    .expect("busy hour");
    for name in ["flaky-1", "flaky-2"].into_iter().chain(busy) {
        seed::state(store, name, DeviceState::Ready, ago(MIN))
            .await
            .expect("settle");
    }
    for (id, wait, why) in [
        (1, 50, None),
        (2, 2_000, None),
        (3, 20 * MIN, Some(Waited::AllHeld)),
    ] {
        let ready = ago(2 * HOUR_MS);
        seed::request_wait(store, id, Millis(ready.0 - wait), ready, why)
            .await
            .expect("request");
    }
}

fn seeded_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("dir");
    let clock = Arc::new(ManualClock::new(NOW));
    let store =
        Store::open(&dir.path().join(mozpool::storage::backup::DB_FILE), clock).expect("store");
    (dir, store)
}

#[tokio::test]
async fn a_device_that_failed_twice_yesterday() {
    let (_dir, store) = seeded_store();
    seed_lab(&store).await;
    let h = store
        .read(|snap| snap.device_history("flaky-1", Window::Day, NOW))
        .await
        .expect("history");
    let got: Vec<(Activity, &str, Millis, Millis)> = h
        .segments
        .iter()
        .map(|s| (s.activity, s.state.as_str(), s.start, s.end))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Activity::Ready,
                "ready",
                ago(24 * HOUR_MS),
                ago(20 * HOUR_MS)
            ),
            (
                Activity::Failed,
                "failed_health_check",
                ago(20 * HOUR_MS),
                ago(19 * HOUR_MS)
            ),
            (
                Activity::Ready,
                "ready",
                ago(19 * HOUR_MS),
                ago(10 * HOUR_MS)
            ),
            (
                Activity::Failed,
                "failed_health_check",
                ago(10 * HOUR_MS),
                ago(10 * HOUR_MS - 30 * MIN)
            ),
            (Activity::Ready, "ready", ago(10 * HOUR_MS - 30 * MIN), NOW),
        ],
        "{h:#?}"
    );
    assert_eq!((h.failures, h.recoveries), (2, 2));
    assert_eq!(h.last_failure, Some(ago(10 * HOUR_MS)));
    assert!(h.complete, "the log reaches back past the window");
    assert_eq!(h.segments[0].log_seq, None, "began before the window");
    let line = h.segments[1]
        .log_line
        .as_deref()
        .expect("the line that began it");
    assert!(line.starts_with("ready -> failed_health_check: "), "{line}");

    // Seen a week back, the device's history begins inside the window, when it was created.
    let week = store
        .read(|snap| snap.device_history("flaky-1", Window::Week, NOW))
        .await
        .expect("history");
    assert!(week.complete);
    assert_eq!(week.segments[0].start, ago(30 * HOUR_MS));
    assert_eq!(week.failures, 2);

    // The in-use band comes from the lines written when a request takes and lets go.
    let b = store
        .read(|snap| snap.device_history("busy-1", Window::Day, NOW))
        .await
        .expect("history");
    let in_use: Vec<(Millis, Millis)> = b
        .segments
        .iter()
        .filter(|s| s.activity == Activity::InUse)
        .map(|s| (s.start, s.end))
        .collect();
    assert_eq!(
        in_use,
        vec![(Millis(H - 6 * HOUR_MS), Millis(H - 5 * HOUR_MS))]
    );
    assert_eq!((b.failures, b.recoveries), (0, 0));
}

#[tokio::test]
async fn the_busy_hour_peaks_and_the_flakiest_device_comes_first() {
    let (_dir, store) = seeded_store();
    seed_lab(&store).await;
    let p = store
        .read(|snap| snap.pool_history(Window::Day, NOW))
        .await
        .expect("pool history");
    assert_eq!(p.bucket_ms, HOUR_MS);
    let peak = p
        .buckets
        .iter()
        .max_by(|a, b| a.in_use.total_cmp(&b.in_use))
        .expect("buckets");
    assert_eq!(peak.start, Millis(H - 6 * HOUR_MS), "{p:#?}");
    assert!((peak.in_use - 4.0).abs() < 1e-9, "{peak:?}");
    assert!((peak.ready - 2.0).abs() < 1e-9, "{peak:?}");
    for b in p.buckets.iter().filter(|b| b.start != peak.start) {
        assert!(b.in_use.abs() < 1e-9, "{b:?}");
        // Six devices in every hour of the window, whatever their band.
        let total = b.in_use + b.ready + b.preparing + b.out_of_service;
        assert!((total - 6.0).abs() < 1e-9, "{b:?}");
    }
    // The hour flaky-1 spent failed (20 h to 19 h ago = 19.5 h to 18.5 h before H).
    let failed_hour = p
        .buckets
        .iter()
        .find(|b| b.start == Millis(H - 20 * HOUR_MS))
        .expect("bucket");
    assert!(
        (failed_hour.out_of_service - 0.5).abs() < 1e-9,
        "{failed_hour:?}"
    );
    let flaky: Vec<(&str, u32)> = p
        .flaky
        .iter()
        .map(|f| (f.device.as_str(), f.failures))
        .collect();
    assert_eq!(flaky, vec![("flaky-1", 2), ("flaky-2", 1)]);
    assert_eq!(p.flaky[0].last_failure, ago(10 * HOUR_MS));
}

#[tokio::test]
async fn request_waits_land_in_their_bars() {
    let (_dir, store) = seeded_store();
    seed_lab(&store).await;
    let r = store
        .read(|snap| snap.request_history(Window::Day, NOW))
        .await
        .expect("request history");
    assert_eq!(r.served, 3);
    let bars: Vec<(Option<u64>, u64)> = r
        .histogram
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.le_ms, b.count))
        .collect();
    assert_eq!(
        bars,
        vec![(Some(100), 1), (Some(5_000), 1), (Some(1_800_000), 1)]
    );
    assert_eq!(
        r.histogram.last().map(|b| b.le_ms),
        Some(None),
        "overflow bar last"
    );
    assert_eq!((r.p50_ms, r.p95_ms), (Some(5_000), Some(1_800_000)));
    assert_eq!(r.waited, 1);
    assert_eq!(r.reasons.len(), 1);
    assert_eq!(
        (r.reasons[0].reason.as_str(), r.reasons[0].requests),
        ("all_held", 1)
    );
    // Outside the window, nothing.
    let later = store
        .read(|snap| snap.request_history(Window::Day, Millis(NOW.0 + 3 * 24 * HOUR_MS)))
        .await
        .expect("request history");
    assert_eq!((later.served, later.p50_ms), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_endpoints_answer_with_the_seeded_history() {
    let (dir, store) = seeded_store();
    seed_lab(&store).await;
    drop(store);
    // Open it again once the seeding store's writer has let go of the file, as a service
    // on the seeded data directory would.
    let deadline = Instant::now() + Duration::from_secs(5);
    let clock = Arc::new(ManualClock::new(NOW));
    let path = dir.path().join(mozpool::storage::backup::DB_FILE);
    let store = loop {
        match Store::open(&path, clock.clone()) {
            Ok(store) => break store,
            Err(e) => assert!(Instant::now() < deadline, "the store stays locked: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let s = TestServer::start_with_clock("", dir, clock, store).await;

    let (status, h) = s.get("/api/device/flaky-1/history/").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["window"], "24h");
    assert_eq!(h["failures"], 2);
    assert_eq!(h["until"], NOW.0);
    let failed: Vec<u64> = h["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|s| s["activity"] == "failed")
        .map(|s| s["start"].as_u64().expect("ms"))
        .collect();
    assert_eq!(failed, vec![ago(20 * HOUR_MS).0, ago(10 * HOUR_MS).0]);

    let (status, p) = s.get("/api/pool/history/?window=7d").await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["window"], "7d");
    assert_eq!(p["flaky"][0]["device"], "flaky-1");

    let (status, r) = s.get("/api/request/history/?window=30d").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["served"], 3);
    assert_eq!(r["reasons"], json!([{"reason": "all_held", "requests": 1}]));

    for path in [
        "/api/device/flaky-1/history/?window=1y",
        "/api/pool/history/?window=",
        "/api/request/history/?window=24",
    ] {
        let (status, e) = s.get(path).await;
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(e["code"], "bad_request", "{e}");
        assert!(
            e["error"]
                .as_str()
                .is_some_and(|m| m.contains("24h, 7d or 30d")),
            "{e}"
        );
    }
    let (status, e) = s.get("/api/device/nosuch/history/").await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["code"], "not_found");
    // `history` is not a request id: the request routes with ids stay as they were.
    let (status, _) = s.get("/api/request/history/details/").await;
    assert_eq!(status, 400);
}

/// The real pool rolls request waits up: on a one-device rack a second request queues
/// while the first holds the device, and is served when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_records_how_long_requests_waited_and_why() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let ask = json!({"assignee": "t", "duration": "600", "image": "android", "environment": "sim"});
    let (status, a) = s.post("/api/device/any/request/", ask.clone()).await;
    assert_eq!(status, 200, "{a}");
    let a = a["request"]["id"].as_u64().expect("id");
    wait_for(&s, a, "ready").await;
    let mut ask_b = ask;
    ask_b["wait"] = json!(60);
    let (status, b) = s.post("/api/device/any/request/", ask_b).await;
    assert_eq!(status, 200, "{b}");
    let b = b["request"]["id"].as_u64().expect("id");
    let (status, _) = s
        .post(&format!("/api/request/{a}/return/"), json!({}))
        .await;
    assert_eq!(status, 204);
    wait_for(&s, b, "ready").await;
    let (status, r) = s.get("/api/request/history/").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["served"], 2, "{r}");
    let counted: u64 = r["histogram"]
        .as_array()
        .expect("bars")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(counted, 2, "{r}");
    assert_eq!(r["waited"], 1, "{r}");
    assert_eq!(
        r["reasons"],
        json!([{"reason": "all_held", "requests": 1}]),
        "{r}"
    );
    // The device's own timeline shows both requests' use.
    let (status, h) = s.get("/api/device/sim-0001/history/").await;
    assert_eq!(status, 200, "{h}");
    let in_use = h["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|s| s["activity"] == "in_use")
        .count();
    assert!(in_use >= 1, "{h:#}");
}

async fn wait_for(s: &TestServer, id: u64, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, st) = s.get(&format!("/api/request/{id}/status/?wait=2")).await;
        assert_eq!(status, 200, "{st}");
        if st["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "request {id} is {st}");
    }
}
