//! `mozpool check` (the live canary), run as the real binary against a real
//! `mozpool serve --simulate N` child process on a fast virtual rack:
//! - it passes against a healthy rack, and leaves no request open;
//! - it exits 3 naming the `reachable` step when the service is down;
//! - it exits 1 naming the `ready` step when its device never boots, and still returns its
//!   request;
//! - `--any` refuses (exit 1) instead of queueing when no device is free.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mozpool");

/// A rack whose devices boot in a fraction of a second, with timeouts scaled to match.
const FAST_RACK: &str =
    "[simulate]\ntime_scale = 0.01\nboot_time_ms = 300\nbootloader_window_ms = 1000\n";

/// A `mozpool serve --simulate N` child, killed on drop.
struct Service {
    child: Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Service {
    /// Start a simulated rack of `n` devices and wait until every device is `ready`.
    async fn start(n: u32) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("fast.toml");
        std::fs::write(&config, FAST_RACK).expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
        let child = Command::new(BIN)
            .args(["serve", "--simulate", &n.to_string(), "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mozpool serve");
        let s = Service {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        s.wait_all_ready(n as usize, Duration::from_secs(60)).await;
        s
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        r.json().await.unwrap_or(Value::Null)
    }

    async fn wait_all_ready(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.get("/api/device/list/?details=1").await {
                let ready = v["devices"]
                    .as_array()
                    .map_or(0, |d| d.iter().filter(|d| d["state"] == "ready").count());
                if ready == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the simulated rack did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ids of requests that are still open.
    async fn open_requests(&self) -> Vec<(u64, String)> {
        let v = self.get("/api/request/list/").await.expect("request list");
        v["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] != "closed")
            .map(|r| {
                (
                    r["id"].as_u64().unwrap_or(0),
                    r["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// Run `mozpool check ARGS` and return (exit code, stdout, stderr).
async fn check(args: &[&str]) -> (i32, String, String) {
    let out: Output = tokio::process::Command::new(BIN)
        .arg("check")
        .args(args)
        .env_remove("MOZPOOL_URL")
        .env_remove("MOZPOOL_TOKEN")
        .output()
        .await
        .expect("run mozpool check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_the_virtual_rack() {
    let s = Service::start(4).await;
    let started = Instant::now();
    let (code, out, err) = check(&["--url", &s.url, "--any", "--timeout", "30"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for step in [
        "reachable: mozpool",
        "health:",
        "inventory:",
        "request:",
        "ready:",
        "details:",
        "ping:",
        "log:",
        "return:",
        "back to ready:",
        "all checks passed",
    ] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
    assert!(!out.contains("[FAIL]"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(s.open_requests().await.is_empty(), "left a request open");

    // A named device and an explicit image work too.
    let (code, out, err) = check(&[
        "--url",
        &s.url,
        "--device",
        "sim-0003",
        "--image",
        "android",
        "--timeout",
        "30",
    ])
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("ready on sim-0003"), "{out}");
    assert!(s.open_requests().await.is_empty(), "left a request open");
}

#[tokio::test]
async fn check_fails_clearly_when_the_service_is_down() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = check(&["--url", &url, "--timeout", "5"]).await;
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("[FAIL]") && out.contains("reachable"), "{out}");
    assert!(
        err.contains("check failed at step reachable") && err.contains("cannot reach"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_clearly_when_the_device_never_becomes_ready() {
    let s = Service::start(2).await;
    let v = s
        .send(
            reqwest::Method::PUT,
            "/api/sim/device/sim-0002/faults/",
            json!({ "does_not_boot": true }),
        )
        .await;
    assert_eq!(v["faults"]["does_not_boot"], true, "{v}");
    let started = Instant::now();
    let (code, out, err) =
        check(&["--url", &s.url, "--device", "sim-0002", "--timeout", "3"]).await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("[FAIL]") && out.contains("ready: request"),
        "{out}"
    );
    assert!(
        out.contains("not ready after 3s") || out.contains("ended in state"),
        "{out}"
    );
    assert!(err.contains("check failed at step ready"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // Cleanup: the request was returned on the failure path, and the other device was
    // never touched.
    assert!(s.open_requests().await.is_empty(), "left a request open");
    let other = s.get("/api/device/sim-0001/log/").await.expect("log");
    let touched = other["log"].as_array().into_iter().flatten().any(|r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("mozpool-check"))
    });
    assert!(!touched, "the check touched sim-0001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_any_refuses_when_no_device_is_free() {
    let s = Service::start(1).await;
    let v = s
        .send(
            reqwest::Method::POST,
            "/api/device/any/request/",
            json!({ "assignee": "someone-else", "duration": 600, "image": "android" }),
        )
        .await;
    let id = v["request"]["id"].as_u64().expect("request id");
    let (code, out, err) = check(&["--url", &s.url, "--any", "--timeout", "5"]).await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("no device is ready"), "{out}");
    assert!(err.contains("check failed at step request"), "{err}");
    // Only the other user's request exists; the check created none.
    let open = s.open_requests().await;
    assert_eq!(
        open.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![id],
        "{open:?}"
    );
}
