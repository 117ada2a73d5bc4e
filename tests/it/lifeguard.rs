//! Lifeguard end to end on the virtual rack: the real relay, SUTAgent and fastboot drivers
//! against simulated devices, through the state machine and the store.

use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_devices_self_test_to_free() {
    let s = TestServer::start_rack(3, "").await;
    s.wait_all_ready(30).await;
    let log = s.device_log("sim-0002").await;
    let joined = log.join("\n");
    for step in [
        "new -> start_self_test",
        "pc_power_cycling -> pc_rebooting",
        "-> ready",
    ] {
        assert!(joined.contains(step), "missing {step:?} in\n{joined}");
    }
    // The relay really was cycled: the simulated device booted again.
    assert!(s.sim("sim-0002").boots() >= 1);
    // Every transition is in the log with its reason.
    assert!(
        log.iter().any(|l| l.contains("self-test passed")),
        "{joined}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_test_verifies_and_checks_storage_on_one_sutagent_connection() {
    let s = TestServer::start_rack(1, "[lifeguard]\nready_check_ms = 3600000\n").await;
    s.wait_all_ready(30).await;
    // An image with a SUTAgent, so the self-test goes through sut_verifying and
    // sut_sdcard_verifying.
    let (status, body) = s
        .post("/api/device/sim-0001/flash/", json!({"image": "android"}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.wait_state("sim-0001", 60, |st| st == "ready").await;
    let sim = s.sim("sim-0001");
    let (conns, commands) = (sim.sut_connections(), sim.sut_commands().len());
    let (status, body) = s
        .post("/api/device/sim-0001/event/please_self_test/", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.wait_state("sim-0001", 60, |st| st != "ready").await;
    s.wait_state("sim-0001", 60, |st| st == "ready").await;
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(
        log.ends_with("sut_sdcard_verifying -> ready: self-test passed (SD card verified)"),
        "{log}"
    );
    // The storage check writes: the tests directory exists since the check after the flash,
    // so a file is pushed, read back and removed.
    let check = "/mnt/sdcard/tests/mozpool-storage-check";
    let mut seen = sim.sut_commands()[commands..].to_vec();
    assert!(
        seen.get(4)
            .is_some_and(|c| c.starts_with(&format!("push {check} "))),
        "{seen:?}"
    );
    seen[4] = "push".into();
    assert_eq!(
        seen,
        [
            "ver",
            "testroot",
            "isdir /mnt/sdcard",
            "isdir /mnt/sdcard/tests",
            "push",
            &format!("hash {check}"),
            &format!("rm {check}"),
            "quit"
        ],
        "{log}"
    );
    assert_eq!(sim.sut_connections() - conns, 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_boots_fails_after_the_configured_retries() {
    let config = r#"
[lifeguard]
max_pc_pinging = 8
max_pc_rounds = 2
max_self_test_retries = 1

[simulate]
time_scale = 0.01
boot_time_ms = 300
bootloader_window_ms = 1500

[simulate.faults]
"sim-0001" = { does_not_boot = true }
"#;
    let s = TestServer::start_rack(2, config).await;
    let st = s
        .wait_state("sim-0001", 60, |st| st.starts_with("failed_"))
        .await;
    // It was failing its self-test (new devices are self-tested), so that is the failure.
    assert_eq!(st, "failed_self_test");
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(log.contains("pc_pinging"), "{log}");
    // Bounded: each self-test power-cycles once plus max_pc_rounds (2) more rounds, and
    // failed_pinging is retried by max_self_test_retries (1) automatic self-test:
    // (1 + 1) * (1 + 2) = 6.
    let cycles = log.matches("-> pc_power_cycling").count();
    assert_eq!(cycles, 6, "power cycles:\n{log}");
    // The rest of the rack is unaffected.
    s.wait_state("sim-0002", 30, |st| st == "ready").await;
    // A failed device waits for a human; it is not handed out.
    let (status, body) = s
        .post(
            "/api/device/sim-0001/request/",
            json!({"assignee": "t", "duration": 60, "image": "android"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["request"]["id"].as_u64().expect("id");
    let (_, st) = s.get(&format!("/api/request/{id}/status/")).await;
    assert_eq!(st["state"], "failed_bad_device", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_device_recovers() {
    // Enough retries that a coin-flipping agent passes (p = 0.5^11 of failing the SD check).
    let s = TestServer::start_rack(1, "[lifeguard]\nmax_sut_sdcard_verifying = 10\n").await;
    s.wait_all_ready(30).await;
    // Half the SUTAgent connections fail: verification retries until one passes.
    let (status, _) = s
        .put(
            "/api/sim/device/sim-0001/faults/",
            json!({"sut_flaky": 0.5}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post("/api/device/sim-0001/flash/", json!({"image": "android"}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.wait_state("sim-0001", 60, |st| st == "ready").await;
    let (_, d) = s.get("/api/device/sim-0001/details/").await;
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(log.contains("operation_complete -> ready"), "{log}");
    assert_eq!(d["state"], "ready");
    // The image really was written to the device's partitions.
    let flashed = s.sim("sim-0001").flashed();
    assert!(
        flashed.contains_key("boot") && flashed.contains_key("system"),
        "{flashed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_caught_mid_flash_is_reflashed_after_a_restart() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    // fastboot hangs on this device, so the flash is in progress when the controller goes down.
    let (status, _) = s
        .put(
            "/api/sim/device/sim-0001/faults/",
            json!({"fastboot_hangs": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post("/api/device/sim-0001/flash/", json!({"image": "android"}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.wait_state("sim-0001", 10, |st| st == "flashing").await;
    // Let fastboot catch the device in its bootloader (and hang there).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(s.state("sim-0001").await, "flashing");
    // While it is being worked on, other hardware actions are refused with the reason.
    let (status, body) = s.post("/api/device/sim-0001/power-cycle/", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("flashing")),
        "{body}"
    );
    s.sim("sim-0001")
        .set_faults(mozpool::hw::sim::SimFaults::default());
    let s = s.restart().await;
    let st = s.wait_state("sim-0001", 60, |st| st == "ready").await;
    assert_eq!(st, "ready");
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(log.contains("mid-flash"), "{log}");
    assert!(s.sim("sim-0001").flashed().contains_key("system"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_switch_and_conditional_state_change() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let (status, body) = s
        .post(
            "/api/device/sim-0001/event/please_start_maintenance/",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.state("sim-0001").await, "maintenance_mode");
    // In maintenance nothing touches it: power actions are refused.
    let (status, _) = s.post("/api/device/sim-0001/reboot/", json!({})).await;
    assert_eq!(status, 409);
    // Back online: a self-test returns it to the pool.
    let (status, _) = s
        .post(
            "/api/device/sim-0001/event/please_end_maintenance/",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    s.wait_state("sim-0001", 30, |st| st == "ready").await;
    // Conditional state change: 409 when not in `from`, 200 when it is.
    let (status, _) = s
        .post(
            "/api/device/sim-0001/state-change/maintenance_mode/to/locked_out/",
            json!({}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = s
        .post(
            "/api/device/sim-0001/state-change/ready/to/locked_out/",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.state("sim-0001").await, "locked_out");
    let (status, _) = s
        .post(
            "/api/device/sim-0001/state-change/locked_out/to/no_such_state/",
            json!({}),
        )
        .await;
    assert_eq!(status, 400);
    // Internal events are not accepted from outside.
    let (status, body) = s
        .post("/api/device/sim-0001/event/power_cycle_ok/", json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s
        .send(Method::GET, "/api/device/sim-0001/event/bogus/", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_and_on_through_the_state_machine() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let (status, body) = s.post("/api/device/sim-0001/power-off/", json!({})).await;
    assert_eq!(status, 200, "{body}");
    s.wait_state("sim-0001", 10, |st| st == "off").await;
    assert!(
        !s.sim("sim-0001").powered(),
        "the relay really cut the power"
    );
    let (_, relay) = s.get("/api/relay/sim-relay-1/bank1:relay1/status/").await;
    assert_eq!(relay["powered"], false, "{relay}");
    let (status, _) = s.post("/api/device/sim-0001/power-on/", json!({})).await;
    assert_eq!(status, 200);
    s.wait_state("sim-0001", 30, |st| st == "ready").await;
    assert!(s.sim("sim-0001").powered());
    let (_, ping) = s.get("/api/device/sim-0001/ping/").await;
    assert_eq!(ping["success"], true, "{ping}");
    let (_, test) = s.get("/api/relay/sim-relay-1/test/").await;
    assert_eq!(test["success"], true, "{test}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_device_that_stops_answering_is_recovered() {
    let s = TestServer::start_rack(2, "").await;
    s.wait_all_ready(30).await;
    // Someone cuts its power behind Lifeguard's back (a raw relay call, as a tech at the rack).
    let (status, body) = s
        .post("/api/relay/sim-relay-1/bank1:relay1/off/", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!s.sim("sim-0001").powered());
    // The next idle health check notices, takes it out of the pool and recovers it.
    s.wait_state("sim-0001", 30, |st| st != "ready").await;
    s.wait_state("sim-0001", 60, |st| st == "ready").await;
    assert!(
        s.sim("sim-0001").powered(),
        "the self-test powered it back on"
    );
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(log.contains("health check"), "{log}");
    assert!(
        log.contains("raw power off"),
        "the tech's action is in the device log: {log}"
    );
    // The other device was never disturbed.
    assert_eq!(s.state("sim-0002").await, "ready");
}

/// A child service that a failed test must not leave running.
struct Served(Option<std::process::Child>);

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mozpool serve --simulate 1` as systemd runs it, on `data`; returns the child and its URL.
async fn serve_child(data: &std::path::Path) -> (Served, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = data.join("rack.toml");
    std::fs::write(
        &config,
        format!("{}\n[log]\nlevel = \"warn\"\n", crate::support::FAST_RACK),
    )
    .expect("config");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mozpool"))
        .args(["serve", "--simulate", "1", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mozpool serve");
    (Served(Some(child)), format!("http://127.0.0.1:{port}"))
}

/// Poll `url`'s device until `pred` holds for its state (or panic after `secs`).
async fn child_state(http: &reqwest::Client, url: &str, secs: u64, pred: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("{url}/api/device/sim-0001/state/"))
            .send()
            .await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            last = v["state"].as_str().unwrap_or_default().to_owned();
            if pred(&last) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("device never reached the state wanted; last {last:?}");
}

/// Shutdown order: SIGTERM while fastboot hangs mid-flash. The service drains HTTP, then
/// gives the flash its grace, abandons it with a line in the device's log, exits 0, and the
/// restart resumes the device (reflashed, ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_flash_abandons_it_with_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();
    let (mut child, url) = serve_child(dir.path()).await;
    child_state(&http, &url, 60, |s| s == "ready").await;
    let r = http
        .put(format!("{url}/api/sim/device/sim-0001/faults/"))
        .json(&json!({"fastboot_hangs": true}))
        .send()
        .await
        .expect("faults");
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{url}/api/device/sim-0001/flash/"))
        .json(&json!({"image": "android"}))
        .send()
        .await
        .expect("flash");
    assert_eq!(r.status(), 200);
    child_state(&http, &url, 10, |s| s == "flashing").await;
    // Let fastboot catch the device in its bootloader and hang there.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut child = child.0.take().expect("running");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let stopping = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    let took = stopping.elapsed();
    assert!(
        took >= mozpool::lifeguard::driver::SAFE_POINT_GRACE,
        "the flash was given its grace before being abandoned ({took:?})"
    );

    // Start again on the same data: the log has the abandonment, and the device recovers.
    let (child, url) = serve_child(dir.path()).await;
    child_state(&http, &url, 60, |s| s == "ready").await;
    let log: serde_json::Value = http
        .get(format!("{url}/api/device/sim-0001/log/"))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    drop(child);
    let lines: Vec<String> = log["log"]
        .as_array()
        .expect("log array")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    let joined = lines.join("\n");
    assert!(
        joined.contains("service stopping: flash of android abandoned"),
        "{joined}"
    );
    assert!(joined.contains("mid-flash"), "{joined}");
}
