//! A full disk heals: a write that meets it answers 503 `disk_full` with `Retry-After`,
//! `/api/health/` and `/metrics` say the disk is full, and once there is room again the
//! store reopens itself and writes resume without a restart; every acknowledged write is
//! still there, in the running service and after a restart from the file.
//!
//! Once on a simulated full disk (`storage::SimDisk`: redb's file backend whose writes fail
//! with ENOSPC while it is "full"), once on a real 3 MiB tmpfs where the machine allows a
//! mount (CI runs as root).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::domain::clock::SystemClock;
use mozpool::storage::{SimDisk, Store};
use serde_json::{Value, json};

use crate::support::{TWO_DEVICES, TestServer, Tmpfs, decode};

/// `PUT /api/environment/{name}/`: the status, the `Retry-After` header and the body.
async fn put_env(s: &TestServer, name: &str, description: &str) -> (u16, Option<u64>, Value) {
    let r = s
        .http
        .put(s.url(&format!("/api/environment/{name}/")))
        .json(&json!({ "description": description }))
        .send()
        .await
        .expect("PUT");
    let retry = retry_after(&r);
    let (status, body) = decode(r).await;
    (status, retry, body)
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").parse().expect("seconds"))
}

/// A write refused for lack of space: 503, `disk_full`, a message saying so, `Retry-After`
/// within the store's probe interval (at most 10 s).
fn assert_disk_full(what: &str, status: u16, retry: Option<u64>, body: &Value) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(body["code"], "disk_full", "{what}: {body}");
    let message = body["error"].as_str().expect("message");
    assert!(message.starts_with("the disk is full"), "{what}: {message}");
    assert!(message.contains("not saved"), "{what}: {message}");
    let retry = retry.expect("Retry-After");
    assert!((1..=10).contains(&retry), "{what}: Retry-After {retry}");
}

async fn health(s: &TestServer) -> (u16, Option<u64>, Value) {
    let r = s.http.get(s.url("/api/health/")).send().await.expect("GET");
    let retry = retry_after(&r);
    let (status, body) = decode(r).await;
    (status, retry, body)
}

async fn metrics(s: &TestServer) -> String {
    let r = s.http.get(s.url("/metrics")).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    r.text().await.expect("text")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The health answer while the disk is full.
async fn assert_reported_full(s: &TestServer) {
    let (status, retry, body) = health(s).await;
    assert_eq!(status, 503, "{body}");
    let storage = &body["storage"];
    assert_eq!(storage["disk_full"], true, "{body}");
    assert_eq!(storage["writable"], false, "{body}");
    assert_eq!(storage["fault"], "disk_full", "{body}");
    let reason = storage["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("the disk holding the store is full"),
        "{reason}"
    );
    assert!(storage["since"].is_string(), "{body}");
    assert!(retry.is_some_and(|r| (1..=10).contains(&r)), "{retry:?}");
    let text = metrics(s).await;
    assert_eq!(metric(&text, "mozpool_store_disk_full"), Some(1.0));
    assert_eq!(metric(&text, "mozpool_store_writable"), Some(0.0));
}

/// Wait until health is 200 again, without a restart; returns how long it took.
async fn wait_healed(s: &TestServer, secs: u64) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, body) = health(s).await;
        if status == 200 {
            assert_eq!(body["storage"]["disk_full"], false, "{body}");
            assert_eq!(body["storage"]["writable"], true, "{body}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "not healed after {secs} s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environments the service lists.
async fn envs(s: &TestServer) -> Vec<String> {
    let (status, body) = s.get("/api/environment/list/").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["environments"].clone()).expect("names")
}

/// Every acknowledged name is listed, and no refused one.
fn assert_kept(listed: &[String], acked: &[String], refused: &[String]) {
    for name in acked {
        assert!(
            listed.contains(name),
            "acknowledged {name} lost: {listed:?}"
        );
    }
    for name in refused {
        assert!(
            !listed.contains(name),
            "refused {name} was saved: {listed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_heals_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("mozpool.redb");
    let disk = SimDisk::new(&path);
    let store = Store::open_on(disk.clone(), &path, Arc::new(SystemClock)).expect("store");
    let s = TestServer::start_on_store(TWO_DEVICES, dir, store).await;

    let mut acked = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        let (status, _, body) = put_env(&s, &name, "a rack").await;
        assert_eq!(status, 201, "{body}");
        acked.push(name);
    }

    disk.set_full(true);
    let mut refused = Vec::new();
    for i in 0..3 {
        let name = format!("during-{i}");
        let (status, retry, body) = put_env(&s, &name, "a rack").await;
        assert_disk_full(&name, status, retry, &body);
        refused.push(name);
    }
    assert_reported_full(&s).await;
    // Reads go on from the store's cache while the disk is full.
    assert_kept(&envs(&s).await, &acked, &refused);
    // Still full after several probes: still refused, never a 500.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, retry, body) = put_env(&s, "during-late", "a rack").await;
    assert_disk_full("late", status, retry, &body);
    refused.push("during-late".into());

    disk.set_full(false);
    let took = wait_healed(&s, 15).await;
    eprintln!("healed {took:?} after space was freed");
    for i in 0..3 {
        let name = format!("after-{i}");
        let (status, _, body) = put_env(&s, &name, "a rack").await;
        assert_eq!(status, 201, "writes resume without a restart: {body}");
        acked.push(name);
    }
    let text = metrics(&s).await;
    assert_eq!(metric(&text, "mozpool_store_disk_full"), Some(0.0));
    assert_eq!(metric(&text, "mozpool_store_writable"), Some(1.0));
    assert_eq!(metric(&text, "mozpool_store_reopens_total"), Some(1.0));
    assert_kept(&envs(&s).await, &acked, &refused);

    // And from the file, in a service opened on it afresh.
    let dir = s.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = TestServer::start_in(TWO_DEVICES, dir).await;
    assert_kept(&envs(&s).await, &acked, &refused);
    s.stop().await;
}

/// The same on a real 3 MiB filesystem filled by a file: the store meets ENOSPC from the
/// kernel, and heals once the file is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_small_filesystem_fills_and_heals() {
    let test = "a_real_small_filesystem_fills_and_heals";
    let Some(fs) = Tmpfs::mount(test, "3m") else {
        return;
    };
    let dir = tempfile::tempdir_in(fs.path()).expect("data dir on the tmpfs");
    let s = TestServer::start_in(TWO_DEVICES, dir).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        let (status, _, body) = put_env(&s, &name, "a rack").await;
        assert_eq!(status, 201, "{body}");
        acked.push(name);
    }

    // Take every free block.
    let filler = fs.path().join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
    }
    // redb reuses pages it freed, so a few writes may still fit; each takes new pages.
    let description = "x".repeat(1000);
    let mut refused = Vec::new();
    let mut hit = None;
    for i in 0..200 {
        let name = format!("during-{i}");
        let (status, retry, body) = put_env(&s, &name, &description).await;
        if status == 201 {
            acked.push(name);
            continue;
        }
        refused.push(name.clone());
        hit = Some((name, status, retry, body));
        break;
    }
    let (name, status, retry, body) = hit.expect("a write met the full filesystem");
    eprintln!("{} writes fitted after the fill", acked.len() - 5);
    assert_disk_full(&name, status, retry, &body);
    assert_reported_full(&s).await;

    std::fs::remove_file(&filler).expect("free the space");
    let took = wait_healed(&s, 15).await;
    eprintln!("healed {took:?} after space was freed");
    let (status, _, body) = put_env(&s, "after", "a rack").await;
    assert_eq!(status, 201, "writes resume without a restart: {body}");
    acked.push("after".into());
    assert_kept(&envs(&s).await, &acked, &refused);

    let dir = s.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = TestServer::start_in(TWO_DEVICES, dir).await;
    assert_kept(&envs(&s).await, &acked, &refused);
    s.stop().await;
}
