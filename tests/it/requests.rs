//! The request layer end to end on the virtual rack: the exact call sequence a buildbot job
//! makes, errors, the queue, expiry, and a concurrency test that no device is ever held twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestServer;

async fn wait_request(s: &TestServer, id: u64, secs: u64, pred: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, st) = s.get(&format!("/api/request/{id}/status/?wait=2")).await;
        assert_eq!(status, 200, "{st}");
        if pred(st["state"].as_str().unwrap_or_default()) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} still {} after {secs} s: {st:#}",
            st["state"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buildbot_call_sequence() {
    let s = TestServer::start_rack(2, "").await;
    s.wait_all_ready(30).await;
    // 1. request any
    let (status, body) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "buildbot-slave-7", "duration": "3600", "image": "android", "environment": "sim"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = &body["request"];
    let id = r["id"].as_u64().expect("integer id");
    assert_eq!(r["requested_device"], "any");
    assert_eq!(r["assignee"], "buildbot-slave-7");
    assert_eq!(r["environment"], "sim");
    assert_eq!(r["image"], "android");
    assert_eq!(
        r["boot_config"], "{}",
        "boot_config is JSON text, as the original"
    );
    assert_eq!(
        r["url"],
        format!("http://{}/api/request/{id}/", s.addr),
        "absolute URL from Host"
    );
    let device = r["assigned_device"]
        .as_str()
        .expect("assigned_device")
        .to_owned();
    assert!(
        device.starts_with("sim-"),
        "a free device is assigned at once: {r}"
    );
    assert!(
        r["expires"]
            .as_str()
            .is_some_and(|e| e.len() >= 19 && !e.ends_with('Z')),
        "naive ISO time: {r}"
    );
    // 2. poll status until ready
    let st = wait_request(&s, id, 60, |st| st == "ready").await;
    let log = st["log"].as_array().expect("log");
    for key in ["id", "timestamp", "source", "message"] {
        assert!(log[0].get(key).is_some(), "log rows have {key}: {}", log[0]);
    }
    assert!(log.iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("Assigning device"))
    }));
    assert_eq!(s.state(&device).await, "ready");
    // The device really was flashed with the image.
    assert!(s.sim(&device).flashed().contains_key("system"));
    // 3. details
    let (status, d) = s.get(&format!("/api/request/{id}/details/")).await;
    assert_eq!(status, 200);
    for key in [
        "id",
        "requested_device",
        "assignee",
        "expires",
        "environment",
        "image",
        "boot_config",
        "assigned_device",
        "url",
    ] {
        assert!(d.get(key).is_some(), "details has {key}: {d}");
    }
    assert_eq!(d["assigned_device"], device.as_str());
    assert_eq!(d["state"], "ready");
    let (_, dd) = s.get(&format!("/api/device/{device}/details/")).await;
    assert_eq!(dd["request_id"], id, "{dd}");
    assert_eq!(dd["image"], "android", "{dd}");
    // The list shows it with the device's state.
    let (_, list) = s.get("/api/request/list/").await;
    let row = list["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .expect("listed");
    assert_eq!(row["device_state"], "ready");
    assert_eq!(row["imaging_server"], "localhost");
    // 4. renew: replaces the remaining time
    let before = d["expires"].as_str().expect("expires").to_owned();
    let r = s
        .http
        .post(s.url(&format!("/api/request/{id}/renew/")))
        .body(r#"{"duration": 60}"#)
        .send()
        .await
        .expect("renew");
    assert_eq!(r.status(), 204);
    let (_, d2) = s.get(&format!("/api/request/{id}/details/")).await;
    assert!(
        d2["expires"].as_str().expect("expires") < before.as_str(),
        "renewed to 60 s from now: {d2}"
    );
    // 5. return
    let r = s
        .http
        .post(s.url(&format!("/api/request/{id}/return/")))
        .send()
        .await
        .expect("return");
    assert_eq!(r.status(), 204);
    let (_, st) = s.get(&format!("/api/request/{id}/status/")).await;
    assert_eq!(st["state"], "closed");
    // A returned device is rebooted and verified before anyone else gets it.
    s.wait_state(&device, 10, |st| st != "ready").await;
    s.wait_state(&device, 30, |st| st == "ready").await;
    let (_, dd) = s.get(&format!("/api/device/{device}/details/")).await;
    assert_eq!(dd["request_id"], Value::Null);
    // Closed requests are listed only on demand.
    let (_, list) = s.get("/api/request/list/").await;
    assert!(
        !list["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|r| r["id"] == id)
    );
    let (_, list) = s.get("/api/request/list/?include_closed=1").await;
    assert!(
        list["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|r| r["id"] == id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_are_clear() {
    let s = TestServer::start_rack(2, "").await;
    s.wait_all_ready(30).await;
    let cases = [
        (json!({"duration": 60, "image": "android"}), 400, "assignee"),
        (
            json!({"assignee": "a", "image": "android"}),
            400,
            "duration",
        ),
        (
            json!({"assignee": "a", "duration": "soon", "image": "android"}),
            400,
            "duration",
        ),
        (json!({"assignee": "a", "duration": 60}), 400, "image"),
        (
            json!({"assignee": "a", "duration": 60, "image": "nope"}),
            404,
            "nope",
        ),
        (
            json!({"assignee": "a", "duration": 60, "image": "android", "hardware_type": "../x"}),
            400,
            "hardware_type",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, b) = s.post("/api/device/any/request/", body.clone()).await;
        assert_eq!(got, status, "{body} -> {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body} -> {b}"
        );
    }
    let (status, _) = s
        .post(
            "/api/device/nosuch/request/",
            json!({"assignee": "a", "duration": 60, "image": "android"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/api/request/abc/details/").await;
    assert_eq!(status, 400);
    let (status, _) = s.get("/api/request/999/status/").await;
    assert_eq!(status, 404);
    // A named device that is busy: 409, nothing created.
    let (status, b) = s
        .post(
            "/api/device/sim-0001/request/",
            json!({"assignee": "a", "duration": 60, "image": "android"}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let (status, b) = s
        .post(
            "/api/device/sim-0001/request/",
            json!({"assignee": "b", "duration": 60, "image": "android"}),
        )
        .await;
    assert_eq!(status, 409, "{b}");
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("busy")),
        "{b}"
    );
    // Unsatisfiable criteria fail at once, with the reason.
    let (status, b) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "a", "duration": 60, "image": "android", "hardware_type": "nexus"}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let id = b["request"]["id"].as_u64().expect("id");
    let (_, st) = s.get(&format!("/api/request/{id}/status/")).await;
    assert_eq!(st["state"], "failed_device_not_found", "{st}");
    let text = st["log"].to_string();
    assert!(
        text.contains("nexus"),
        "the reason names the criterion: {text}"
    );
    // Internal events are refused; ignored ones are 409.
    let (status, _) = s
        .post(&format!("/api/request/{id}/event/find_device/"), json!({}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_queues_and_explains_why() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let (_, a) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "a", "duration": 600, "image": "android"}),
        )
        .await;
    let a = a["request"]["id"].as_u64().expect("id");
    let (status, b) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "b", "duration": 600, "image": "android", "wait": 120}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let b = b["request"]["id"].as_u64().expect("id");
    let (_, st) = s.get(&format!("/api/request/{b}/status/")).await;
    assert_eq!(st["state"], "queued", "{st}");
    assert_eq!(st["queue_position"], 1, "{st}");
    let why = st["waiting_because"]
        .as_str()
        .expect("explanation")
        .to_owned();
    assert!(why.contains("held"), "{why}");
    assert_request_indexes_match_records(&s);
    wait_request(&s, a, 60, |st| st == "ready").await;
    assert_request_indexes_match_records(&s);
    // A long poll on the queued request: it follows that request only.
    let poll = {
        let http = s.http.clone();
        let url = s.url(&format!("/api/request/{b}/status/?wait=50"));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http.get(url).send().await.expect("long poll");
            let v: Value = r.json().await.expect("json");
            (started.elapsed(), v)
        })
    };
    let long_polls = |s: &TestServer| {
        let http = s.http.clone();
        let url = s.url("/metrics");
        async move {
            let text = http
                .get(url)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            text.lines()
                .find_map(|l| l.strip_prefix("mozpool_status_long_polls "))
                .expect("gauge")
                .to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while long_polls(&s).await != "1" {
        assert!(Instant::now() < deadline, "the long poll never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another request changing does not end it.
    let (status, _) = s
        .post(
            &format!("/api/request/{a}/renew/"),
            json!({"duration": 900}),
        )
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the poll returned on another request's change"
    );
    // When the holder returns, the device is verified and then goes to the queued request.
    let r = s
        .http
        .post(s.url(&format!("/api/request/{a}/return/")))
        .send()
        .await
        .expect("return");
    assert_eq!(r.status(), 204);
    let (took, st) = poll.await.expect("poll task");
    assert_ne!(st["state"], "queued", "{st}");
    assert!(
        took < Duration::from_secs(45),
        "returned at its change, not its timeout"
    );
    assert_eq!(long_polls(&s).await, "0", "no waiter left behind");
    let st = wait_request(&s, b, 60, |st| st == "ready").await;
    assert_eq!(st["assigned_device"], "sim-0001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_reclaimed_after_the_grace() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let (_, r) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "a", "duration": 2, "image": "android"}),
        )
        .await;
    let id = r["request"]["id"].as_u64().expect("id");
    let st = wait_request(&s, id, 60, |st| st == "closed" || st == "ready").await;
    let _ = st;
    wait_request(&s, id, 30, |st| st == "closed").await;
    let (_, log) = s.get(&format!("/api/request/{id}/log/")).await;
    assert!(log.to_string().contains("expired"), "{log}");
    s.wait_state("sim-0001", 30, |st| st == "ready").await;
    let (_, d) = s.get("/api/device/sim-0001/details/").await;
    assert_eq!(d["request_id"], Value::Null);
}

/// 64 clients ask for `any` against 20 devices, hold briefly and return. At no moment is a
/// device held by two open requests; every request ends ready-then-closed or failed; every
/// device comes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_twenty_devices_no_double_booking() {
    // The 64 clients would be 64 machines; here they all come from 127.0.0.1, so the
    // per-client caps (fair connections) are raised to let one address be all of them.
    let s = std::sync::Arc::new(
        TestServer::start_rack(
            20,
            "[server]\nmax_connections_per_client = 256\nmax_long_polls_per_client = 128\n",
        )
        .await,
    );
    s.wait_all_ready(90).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The watcher samples the store continuously for double holds.
    let watcher = {
        let s = s.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, list) = s.get("/api/request/list/").await;
                let mut held: HashMap<String, u64> = HashMap::new();
                for r in list["requests"].as_array().into_iter().flatten() {
                    let state = r["state"].as_str().unwrap_or_default();
                    let dev = r["assigned_device"].as_str().unwrap_or_default();
                    if dev.is_empty() || state == "closed" || state.starts_with("failed_") {
                        continue;
                    }
                    if let Some(other) = held.insert(dev.to_owned(), r["id"].as_u64().unwrap_or(0))
                    {
                        panic!("device {dev} held by requests {other} and {}", r["id"]);
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    let mut clients = Vec::new();
    for c in 0..64 {
        let s = s.clone();
        clients.push(tokio::spawn(async move {
            let (status, body) = s
                .post(
                    "/api/device/any/request/",
                    json!({"assignee": format!("client-{}", c % 8), "duration": 600, "image": "android", "wait": 120}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let id = body["request"]["id"].as_u64().expect("id");
            let st = wait_request(&s, id, 180, |st| st == "ready" || st.starts_with("failed_")).await;
            let state = st["state"].as_str().unwrap_or_default().to_owned();
            let device = st["assigned_device"].as_str().unwrap_or_default().to_owned();
            if state == "ready" {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let r = s.http.post(s.url(&format!("/api/request/{id}/return/"))).send().await.expect("return");
                assert_eq!(r.status(), 204);
            }
            (id, state, device)
        }));
    }
    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.push(c.await.expect("client"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.await.expect("no double booking");
    assert!(samples > 10, "the watcher sampled {samples} times");
    let ready = outcomes.iter().filter(|(_, st, _)| st == "ready").count();
    let failed: Vec<_> = outcomes.iter().filter(|(_, st, _)| st != "ready").collect();
    // With a 120 s wait and devices coming back, every request gets a device.
    assert_eq!(ready, 64, "failed: {failed:?}");
    let used: HashSet<&str> = outcomes.iter().map(|(_, _, d)| d.as_str()).collect();
    assert!(used.len() > 1, "devices were shared out: {used:?}");
    // Every device comes back to the pool (after its post-return verification).
    for i in 1..=20 {
        s.wait_state(&format!("sim-{i:04}"), 120, |st| st == "ready")
            .await;
    }
    let (_, list) = s.get("/api/request/list/").await;
    assert!(
        list["requests"].as_array().expect("list").is_empty(),
        "all closed: {list}"
    );
    assert_request_indexes_match_records(&s);
}

/// The request indexes (open, waiting, deadlines) hold exactly what the request records
/// say: the driver writes each request once per event, however many steps it took.
fn assert_request_indexes_match_records(s: &TestServer) {
    use mozpool::storage::{requests, tables};
    use redb::ReadableTable;
    let grace = s.app.pool.timings().grace;
    s.app
        .store
        .read_blocking(|snap| {
            let all = snap.requests(false)?;
            let tx = snap.redb_for_tests();
            let keys = |t| -> Result<Vec<u64>, mozpool::storage::StoreError> {
                let mut out = Vec::new();
                for item in tx.open_table(t)?.iter()? {
                    out.push(item?.0.value());
                }
                Ok(out)
            };
            let open: Vec<u64> = all
                .iter()
                .filter(|r| !r.snap.state.is_terminal())
                .map(|r| r.snap.id)
                .collect();
            let waiting: Vec<u64> = all
                .iter()
                .filter(|r| r.snap.state.is_waiting())
                .map(|r| r.snap.id)
                .collect();
            assert_eq!(keys(tables::OPEN_REQUESTS)?, open, "open_requests");
            assert_eq!(keys(tables::WAITING_REQUESTS)?, waiting, "waiting_requests");
            let mut due: Vec<(u64, u64)> = all
                .iter()
                .filter_map(|r| requests::due_at(&r.snap, grace).map(|d| (d.0, r.snap.id)))
                .collect();
            due.sort_unstable();
            let mut stored = Vec::new();
            for item in tx.open_table(tables::REQUEST_DEADLINES)?.iter()? {
                stored.push(item?.0.value());
            }
            assert_eq!(stored, due, "request_deadlines");
            assert!(!all.is_empty());
            Ok(())
        })
        .expect("read");
}

/// `POST /api/device/any/request/` for "android" as `ci`, one 600 s lease; the reply, which
/// must be 200.
async fn request_android(s: &TestServer) -> Value {
    let (status, body) = s
        .post(
            "/api/device/any/request/",
            json!({"assignee": "ci", "duration": 600, "image": "android"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Request "android" on a one-device rack, wait until ready, return it, and wait until the
/// device has been self-tested back to `ready`. Returns the device name.
async fn use_and_return(s: &TestServer) -> String {
    let body = request_android(s).await;
    let id = body["request"]["id"].as_u64().expect("id");
    let st = wait_request(s, id, 60, |st| st == "ready").await;
    let device = st["assigned_device"].as_str().expect("device").to_owned();
    let (status, _) = s
        .post(&format!("/api/request/{id}/return/"), json!({}))
        .await;
    assert_eq!(status, 204);
    s.wait_state(&device, 60, |st| st == "ready").await;
    // Self-tested after the return before anyone else can have it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s
        .device_log(&device)
        .await
        .iter()
        .any(|l| l.contains("self-test passed"))
    {
        assert!(Instant::now() < deadline, "no self-test after the return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_verified_since_its_last_use_is_handed_over_at_once() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let device = use_and_return(&s).await;
    let body = request_android(&s).await;
    assert_eq!(
        body["request"]["state"], "ready",
        "ready in the reply: {body}"
    );
    assert_eq!(body["request"]["assigned_device"], device.as_str());
    let log = s.device_log(&device).await;
    assert!(
        log.iter()
            .any(|l| l.contains("as it is: rebooted and verified since its last use")),
        "{log:#?}"
    );
    assert_eq!(s.state(&device).await, "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_before_handover_power_cycles_every_assignment() {
    let s = TestServer::start_rack(1, "[requests]\nreboot_before_handover = true\n").await;
    s.wait_all_ready(30).await;
    use_and_return(&s).await;
    let body = request_android(&s).await;
    assert_ne!(body["request"]["state"], "ready", "{body}");
    let id = body["request"]["id"].as_u64().expect("id");
    let st = wait_request(&s, id, 60, |st| st == "ready").await;
    let device = st["assigned_device"].as_str().expect("device");
    let log = s.device_log(device).await;
    assert!(
        log.iter()
            .any(|l| l.contains("accepted please_power_cycle")),
        "{log:#?}"
    );
}
