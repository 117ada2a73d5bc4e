//! The web page in real headless Chromium (Debian's `chromium`), driven by
//! `tests/ui/browser.mjs` with playwright-core against `mozpool serve --simulate` (the built
//! binary): load the pool page and watch devices become ready live; request a device from the
//! requests page and watch it become ready without a reload; queue a request for that device
//! and see its position and reason; power-cycle a device from its page and see its log, and a
//! refusal's reason; renew and return the request; test a relay board; force a failure state
//! and see it stand out and filter; check every page fits a phone-sized screen, has labelled
//! controls and logs no browser errors. Before all that, the history pictures: the data
//! directory is seeded through the library's write paths ([`mozpool::app::seed`]) with past
//! times before the service starts on it (a device that failed twice yesterday, another once,
//! a busy afternoon, requests that waited), and the page checks that the device timeline has
//! the failed segments at the right times, the utilisation chart peaks in the busy hour, the
//! flaky table lists the failing device first, and the wait histogram marks p50 and p95.
//! Screenshots of every page go to `target/ui-screenshots/`.
//!
//! A test binary of its own (not a module of `tests/it`), so Chromium and the second service
//! do not run alongside the timing-sensitive integration tests: cargo runs test binaries one
//! after another.
//!
//! Needs `/usr/bin/chromium` (or `MOZPOOL_CHROMIUM`), `node`, and `npm ci` run in `tests/ui`
//! (`.ci/run` does all three). Without them the test says so and passes; set
//! `MOZPOOL_REQUIRE_BROWSER=1` (CI does) to make a missing browser a failure instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::app::seed;
use mozpool::domain::clock::{Clock, Millis, SystemClock};
use mozpool::domain::device_state::DeviceState;
use mozpool::domain::history::{HOUR_MS, Waited, hour_of};
use mozpool::storage::Store;
use serde_json::json;

/// Seed `dir`'s store with the history the browser checks, through the service's own write
/// paths at past times, and close it again. Returns what the page must show, for the script.
fn seed_history(dir: &Path) -> serde_json::Value {
    let now = SystemClock.now().0;
    let store = Store::open(
        &dir.join(mozpool::storage::backup::DB_FILE),
        Arc::new(SystemClock),
    )
    .expect("open the store to seed");
    // Yesterday's two failures of `flaky-1`, one of `flaky-2` (within the last 24 hours).
    let failures = [
        (now - 22 * HOUR_MS, now - 21 * HOUR_MS),
        (now - 18 * HOUR_MS, now - 17 * HOUR_MS - 30 * 60_000),
    ];
    // The busy hour: every busy device held by a request for the whole hour, 8 hours ago.
    let busy_hour = hour_of(now) - 8 * HOUR_MS;
    let busy = ["busy-1", "busy-2", "busy-3", "busy-4", "busy-5", "busy-6"];
    let since = Millis(now - 3 * 24 * HOUR_MS);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let f: Vec<(Millis, Millis)> = failures
            .iter()
            .map(|&(a, b)| (Millis(a), Millis(b)))
            .collect();
        seed::flaky_device(&store, "flaky-1", since, &f)
            .await
            .expect("flaky-1");
        seed::flaky_device(&store, "flaky-2", since, &f[..1])
            .await
            .expect("flaky-2");
        for name in busy {
            seed::device(&store, name, since)
                .await
                .expect("busy device");
        }
        seed::busy(
            &store,
            &busy,
            9001,
            Millis(busy_hour),
            Millis(busy_hour + HOUR_MS),
        )
        .await
        .expect("busy afternoon");
        // Requests: most ready within a second, a few after minutes in the queue.
        for i in 0..20u64 {
            let created = busy_hour + i * 60_000;
            let (wait, why) = match i {
                0..=15 => (400, None),
                16..=18 => (45_000, Some(Waited::AllHeld)),
                _ => (600_000, Some(Waited::Preparing)),
            };
            seed::request_wait(
                &store,
                9101 + i,
                Millis(created),
                Millis(created + wait),
                why,
            )
            .await
            .expect("request wait");
        }
        // Out of service now, so the live rack's requests never pick a seeded device (it
        // has no hardware behind it).
        for name in ["flaky-1", "flaky-2"].iter().chain(busy.iter()) {
            seed::state(
                &store,
                name,
                DeviceState::MaintenanceMode,
                Millis(now - 60_000),
            )
            .await
            .expect("maintenance");
        }
    });
    drop(store);
    drop(rt);
    // Let the writer thread close the file before the service opens it.
    std::thread::sleep(Duration::from_millis(500));
    json!({
        "flaky": "flaky-1",
        "failures": failures,
        "busy_hour": busy_hour,
        "busy_devices": busy.len(),
    })
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn missing() -> Option<String> {
    let chromium = std::env::var("MOZPOOL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/node_modules/playwright-core");
    if !ui.exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/ui)".into());
    }
    None
}

#[test]
fn pages_work_in_headless_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("MOZPOOL_REQUIRE_BROWSER").is_none(),
            "browser test required but cannot run: {why}"
        );
        eprintln!("SKIPPED ui_browser: {why}");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let data = tempfile::tempdir().expect("tempdir");
    let seeded = seed_history(data.path());
    let server = Kill(
        Command::new(env!("CARGO_BIN_EXE_mozpool"))
            .args(["serve", "--simulate", "4", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mozpool serve"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mozpool serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = root.join("target/ui-screenshots");
    let status = Command::new("node")
        .arg(root.join("tests/ui/browser.mjs"))
        .arg(&base)
        .arg(&shots)
        .arg(seeded.to_string())
        .status()
        .expect("run node");
    drop(server);
    assert!(
        status.success(),
        "the browser test failed (see its output above)"
    );
    for page in [
        "pool",
        "requests",
        "device",
        "relays",
        "pool-phone",
        "history-device",
        "history-pool",
        "history-requests",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
