//! Device agents and boot modes end to end on the virtual rack: a phone that is checked over
//! adb and reaches fastboot by `adb reboot bootloader` (Debian's real `adb` and `fastboot`
//! against the simulated adbd and fastboot-over-TCP), an image without any agent, and the
//! adb driver against the adbd simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use mozpool::hw::adb::{Adb, AdbProblem};
use mozpool::hw::sim::adbd::{MemoryAdbTarget, SimAdbd};

use crate::support::{TestServer, require_tool};

const FASTBOOT: &str = "/usr/bin/fastboot";
const ADB: &str = "/usr/bin/adb";

async fn wait_request(s: &TestServer, id: u64, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, st) = s.get(&format!("/api/request/{id}/status/?wait=2")).await;
        assert_eq!(status, 200, "{st}");
        match st["state"].as_str().unwrap_or_default() {
            "ready" => return st,
            "failed" | "closed" | "expired" => panic!("request {id} ended: {st:#}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "request {id} not ready: {st:#}");
    }
}

async fn request(s: &TestServer, device: &str, image: &str) -> u64 {
    let (status, body) = s
        .post(
            &format!("/api/device/{device}/request/"),
            json!({"assignee": "ci", "duration": "600", "image": image}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["request"]["id"].as_u64().expect("request id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_is_flashed_via_adb_reboot_bootloader_checked_over_adb_and_handed_out() {
    let test = "a_phone_is_flashed_via_adb_reboot_bootloader_checked_over_adb_and_handed_out";
    if require_tool(test, FASTBOOT).is_none() || require_tool(test, ADB).is_none() {
        return;
    }
    let s = TestServer::start_rack(
        2,
        "[simulate]\nphones = 1\ntime_scale = 0.01\nboot_time_ms = 300\nbootloader_window_ms = 1500\n",
    )
    .await;
    s.wait_all_ready(60).await;
    let (_, d) = s.get("/api/device/sim-0002/details/").await;
    let adb_serial = d["adb_serial"]
        .as_str()
        .expect("the phone's adb serial")
        .to_owned();
    assert!(
        d["fastboot_serial"]
            .as_str()
            .is_some_and(|f| f.starts_with("tcp:127.")),
        "{d}"
    );
    let id = request(&s, "sim-0002", "android-adb").await;
    wait_request(&s, id, 90).await;
    let phone = s.sim("sim-0002");
    // Flashed over TCP by the real fastboot, into slot a (the client adds the suffix).
    let flashed = phone.flashed();
    assert!(
        flashed.contains_key("boot_a") && flashed.contains_key("system_a"),
        "{flashed:?}"
    );
    let log = s.device_log("sim-0002").await.join("\n");
    assert!(
        log.contains("getting into fastboot: adb"),
        "the phone reached fastboot through adb: {log}"
    );
    assert!(
        log.contains("Setting current slot to 'a'"),
        "set_active ran: {log}"
    );
    // Verified over adb: the storage check left nothing behind, and the device is handed out.
    let (_, d) = s.get("/api/device/sim-0002/details/").await;
    assert_eq!(d["image"], "android-adb", "{d}");
    assert_eq!(d["state"], "ready", "{d}");
    assert_eq!(d["request_id"], id, "{d}");
    assert_eq!(d["adb_serial"], adb_serial.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_with_read_only_storage_fails_its_adb_storage_check() {
    let test = "a_phone_with_read_only_storage_fails_its_adb_storage_check";
    if require_tool(test, FASTBOOT).is_none() || require_tool(test, ADB).is_none() {
        return;
    }
    let s = TestServer::start_rack(
        1,
        "[simulate]\nphones = 1\ntime_scale = 0.01\nboot_time_ms = 300\nbootloader_window_ms = 1500\n[simulate.faults]\n\"sim-0001\" = { storage_read_only = true }\n",
    )
    .await;
    s.wait_all_ready(60).await;
    let id = request(&s, "sim-0001", "android-adb").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = s.device_log("sim-0001").await.join("\n");
        if log.contains("Read-only file system") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no storage failure logged for request {id}: {log}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_an_agent_reaches_ready() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let id = request(&s, "sim-0001", "android-bare").await;
    wait_request(&s, id, 60).await;
    let log = s.device_log("sim-0001").await.join("\n");
    assert!(log.contains("pc_pinging"), "checked by reachability: {log}");
    assert!(!log.contains("sut_verifying"), "no agent was asked: {log}");
    let (_, d) = s.get("/api/device/sim-0001/details/").await;
    assert_eq!(d["image"], "android-bare", "{d}");
    s.stop().await;
}

/// The service's adb driver against the adbd simulator, with Debian's adb in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adb_driver_checks_reboots_and_names_what_went_wrong() {
    let test = "the_adb_driver_checks_reboots_and_names_what_went_wrong";
    let Some(adb_path) = require_tool(test, ADB) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let adb = Adb::new(adb_path, port, home.path());
    let target = Arc::new(MemoryAdbTarget::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sim = SimAdbd::spawn(listener, target.clone(), Default::default()).expect("adbd");
    let serial = sim.addr().to_string();
    let t = Duration::from_secs(20);

    adb.verify(&serial, t).await.expect("booted");
    adb.check_storage(&serial, t).await.expect("storage works");
    assert!(
        target.files().is_empty(),
        "the check file was removed: {:?}",
        target.files()
    );
    target.set_storage(mozpool::hw::sim::adbd::MemoryStorage::ReadOnly);
    let e = adb.check_storage(&serial, t).await.expect_err("read-only");
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    target.set_storage(mozpool::hw::sim::adbd::MemoryStorage::Writable);

    adb.reboot(&serial, true, t)
        .await
        .expect("reboot bootloader");
    assert_eq!(
        target.reboots(),
        vec![mozpool::hw::sim::adbd::AdbReboot::Bootloader]
    );

    target.set_authorized(false);
    target.set_up(true);
    let e = adb.verify(&serial, t).await.expect_err("unauthorized");
    assert!(
        matches!(
            e,
            mozpool::hw::Error::Adb {
                kind: AdbProblem::Unauthorized,
                ..
            }
        ),
        "{e}"
    );
    drop(sim);
    let e = adb
        .verify("127.0.0.1:1", t)
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            e,
            mozpool::hw::Error::Adb {
                kind: AdbProblem::NotFound,
                ..
            }
        ),
        "{e}"
    );
    adb.kill_server().await;
}
