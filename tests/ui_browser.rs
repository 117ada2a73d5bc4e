//! The web page in real headless Chromium (Debian's `chromium`), driven by
//! `tests/ui/browser.mjs` with playwright-core against `mozpool serve --simulate` (the built
//! binary): load the pool page and watch devices become ready live; request a device from the
//! requests page and watch it become ready without a reload; queue a request for that device
//! and see its position and reason; power-cycle a device from its page and see its log, and a
//! refusal's reason; renew and return the request; test a relay board; force a failure state
//! and see it stand out and filter; check every page fits a phone-sized screen, has labelled
//! controls and logs no browser errors. Screenshots of every page go to
//! `target/ui-screenshots/`.
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
use std::time::{Duration, Instant};

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
        .status()
        .expect("run node");
    drop(server);
    assert!(
        status.success(),
        "the browser test failed (see its output above)"
    );
    for page in ["pool", "requests", "device", "relays", "pool-phone"] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
