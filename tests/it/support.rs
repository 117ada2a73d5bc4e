//! Shared test harness: a real service on 127.0.0.1:0 with a temporary data directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::app::App;
use mozpool::app::config::Config;
use mozpool::domain::clock::SystemClock;
use serde_json::Value;

/// A running in-process service.
pub struct TestServer {
    pub app: App,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
    config: Option<Config>,
}

impl TestServer {
    /// Start a service with this config text (data dir and listen address are set here).
    pub async fn start(config_text: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config_text, dir).await
    }

    /// Start a service on an existing data directory.
    pub async fn start_in(config_text: &str, dir: tempfile::TempDir) -> TestServer {
        let mut config = Config::parse(Path::new("test.toml"), config_text).expect("test config");
        config.server.data_dir = dir.path().to_owned();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        Self::launch(config, dir, None).await
    }

    /// Start a service on a fresh simulated rack of `n` devices, with fast timings unless
    /// `config_text` sets its own `[simulate]` section.
    pub async fn start_rack(n: u32, config_text: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = if config_text.contains("[simulate]") {
            config_text.to_owned()
        } else {
            format!("{config_text}\n{FAST_RACK}")
        };
        let mut config = Config::parse(Path::new("test.toml"), &text).expect("test config");
        config.server.data_dir = dir.path().to_owned();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let exe = Path::new(env!("CARGO_BIN_EXE_mozpool"));
        let rack =
            mozpool::app::simulate::start_rack(&mut config, n, exe, dir.path()).expect("rack");
        let rack = Arc::new(rack);
        let server = Self::launch(config.clone(), dir, Some(rack)).await;
        TestServer {
            config: Some(config),
            ..server
        }
    }

    /// Stop the service (graceful) and start it again on the same data and rack, as after a
    /// controller restart.
    pub async fn restart(self) -> TestServer {
        let config = self.config.clone().expect("restart needs start_rack");
        let rack = self.app.sim.clone();
        let dir = self.stop().await;
        // Let the old store's writer thread release the file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let server = Self::launch(config.clone(), dir, rack).await;
        TestServer {
            config: Some(config),
            ..server
        }
    }

    /// Start a service on `store`, already open in `dir` (a test that controls the store's
    /// disk opens it on a `SimDisk`).
    pub async fn start_on_store(
        config_text: &str,
        dir: tempfile::TempDir,
        store: mozpool::storage::Store,
    ) -> TestServer {
        let mut config = Config::parse(Path::new("test.toml"), config_text).expect("test config");
        config.server.data_dir = dir.path().to_owned();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let app = App::open_on_store(config, Arc::new(SystemClock), store)
            .await
            .expect("app opens");
        Self::serve(app, dir).await
    }

    /// Start a service on `store` (open in `dir`, perhaps seeded) with its own `clock` (a
    /// `ManualClock` for answers at a fixed time).
    pub async fn start_with_clock(
        config_text: &str,
        dir: tempfile::TempDir,
        clock: Arc<dyn mozpool::domain::clock::Clock>,
        store: mozpool::storage::Store,
    ) -> TestServer {
        let mut config = Config::parse(Path::new("test.toml"), config_text).expect("test config");
        config.server.data_dir = dir.path().to_owned();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let app = App::open_on_store(config, clock, store)
            .await
            .expect("app opens");
        Self::serve(app, dir).await
    }

    async fn launch(
        config: Config,
        dir: tempfile::TempDir,
        rack: Option<Arc<mozpool::hw::sim::SimRack>>,
    ) -> TestServer {
        let app = App::open_with(config, Arc::new(SystemClock), rack)
            .await
            .expect("app opens");
        Self::serve(app, dir).await
    }

    async fn serve(app: App, dir: tempfile::TempDir) -> TestServer {
        let listener = app.bind().await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(app.clone().run(listener));
        TestServer {
            app,
            addr,
            dir,
            http: reqwest::Client::new(),
            task,
            config: None,
        }
    }

    /// Stop the service and wait for it; returns the data directory for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.app.shutdown.cancel();
        let _ = self.task.await;
        // The store's writer thread exits when the last handle drops.
        drop(self.app);
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        decode(r).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        decode(req.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// A device's Lifeguard state.
    pub async fn state(&self, device: &str) -> String {
        let (_, v) = self.get(&format!("/api/device/{device}/state/")).await;
        v["state"].as_str().unwrap_or_default().to_owned()
    }

    /// Wait until `device` is in a state accepted by `pred`, or panic after `secs`.
    pub async fn wait_state(&self, device: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let within = Duration::from_secs(secs);
        let every = Duration::from_millis(50);
        let probe = async || {
            let st = self.state(device).await;
            ok_if(pred(&st), st)
        };
        match poll(within, every, probe).await {
            Ok(st) => st,
            Err(st) => {
                // The log is fetched only now: it says why the device is stuck.
                let (_, log) = self
                    .get(&format!("/api/device/{device}/log/?limit=40"))
                    .await;
                panic!("{device} still in {st} after {secs} s; log: {log:#}");
            }
        }
    }

    /// Wait until every device of the rack is `ready`.
    pub async fn wait_all_ready(&self, secs: u64) {
        let names: Vec<String> = self
            .app
            .sim
            .as_ref()
            .map(|r| r.devices.iter().map(|d| d.name.to_string()).collect())
            .unwrap_or_default();
        for n in names {
            self.wait_state(&n, secs, |s| s == "ready").await;
        }
    }

    /// Device log messages, oldest first.
    pub async fn device_log(&self, device: &str) -> Vec<String> {
        let (_, log) = self.get(&format!("/api/device/{device}/log/")).await;
        log["log"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["message"].as_str().map(str::to_owned))
            .collect()
    }

    /// A simulated device.
    pub fn sim(&self, device: &str) -> mozpool::hw::sim::SimDevice {
        self.app
            .sim
            .as_ref()
            .and_then(|r| r.devices.iter().find(|d| d.name.as_str() == device))
            .map(|d| d.device.clone())
            .expect("simulated device")
    }
}

/// Run `probe` every `every` until it answers `Ok`, and give that value; once `within` has
/// passed since the first probe, `Err` with the last answer (what was seen instead), for the
/// caller's failure message. Each answer is looked at before the clock, so the probe runs at
/// least once and a success is never turned into a timeout; `every` zero polls back to back
/// (for probes that long-poll themselves).
pub async fn poll<T, E>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if start.elapsed() >= within {
            return Err(last);
        }
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
    }
}

/// A probe's answer for [`poll`]: `Ok(seen)` when `done`, else `Err(seen)`.
pub fn ok_if<T>(done: bool, seen: T) -> Result<T, T> {
    if done { Ok(seen) } else { Err(seen) }
}

/// `poll` itself: the first `Ok` ends it; otherwise it keeps probing until `within` and
/// then gives the last answer; a zero `within` still probes once.
#[tokio::test]
async fn poll_gives_the_first_ok_or_the_last_answer() {
    let mut n = 0;
    let three = async || {
        n += 1;
        ok_if(n == 3, n)
    };
    let got = poll(Duration::from_secs(5), Duration::from_millis(1), three).await;
    assert_eq!(got, Ok(3));

    let start = Instant::now();
    let mut n = 0;
    let never = async || -> Result<(), u32> {
        n += 1;
        Err(n)
    };
    let got = poll(Duration::from_millis(100), Duration::from_millis(10), never).await;
    let took = start.elapsed();
    assert_eq!(got, Err(n), "the last answer");
    assert!(n >= 3, "probed {n} times");
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "{took:?}"
    );

    let got = poll(Duration::ZERO, Duration::from_secs(60), async || {
        ok_if(true, 7)
    })
    .await;
    assert_eq!(got, Ok(7));
}

/// Whether the external tool at `path` (Debian's `adb`, `fastboot`, ...) is installed. Outside
/// CI a missing tool prints `SKIPPED <test>: <tool> not installed` and the test returns early
/// and passes; with `CI` set or `MOZPOOL_REQUIRE_TOOLS=1` it fails the test instead.
pub fn tool_installed(test: &str, tool: &str, path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    skip(test, &format!("{tool} not installed"));
    false
}

/// Whether a test must run here rather than skip: under CI (`CI` set) or with
/// `MOZPOOL_REQUIRE_TOOLS=1`.
fn required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("MOZPOOL_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Skip `test` because of `why`: print `SKIPPED <test>: <why>` (the caller returns and
/// passes), or fail it where it is [`required`].
pub fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: cannot run here (required under CI or MOZPOOL_REQUIRE_TOOLS=1): {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// A small tmpfs mounted on a fresh directory, unmounted (and the directory removed) on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount -o size=`, e.g. `3m`), or `None` when this machine does
    /// not allow it (not root, no `mount`, a container without the capability): then
    /// [`skip`] has printed `SKIPPED <test>: <why>` (CI runs as root, where it must work).
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let why: Vec<&str> = stderr.lines().map(str::trim).collect();
                let why = why.join(" ");
                skip(test, &format!("cannot mount a tmpfs: {why}"));
                None
            }
            Err(e) => {
                skip(test, &format!("cannot run mount: {e}"));
                None
            }
        }
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open (a store being dropped) must not leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

pub async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, v)
}

/// A config with two devices.
pub const TWO_DEVICES: &str = r#"
[[hardware_types]]
name = "panda"
processor = "armv7"

[[environments]]
name = "prod"

[[images]]
name = "b2g"
boot_config_keys = ["b2gbase"]
has_sut_agent = true
steps = [{ partition = "boot", file = "boot.img" }]

[[devices]]
name = "panda-1"
hardware_type = "panda"
environment = "prod"

[[devices]]
name = "panda-2"
hardware_type = "panda"
"#;

/// Fast timings for a simulated rack in tests: devices boot in well under a second and the
/// state machines run on a 1/100 time scale.
pub const FAST_RACK: &str = r#"
[simulate]
time_scale = 0.01
boot_time_ms = 300
bootloader_window_ms = 1500
"#;

/// The path of an external tool a test runs (`/usr/bin/fastboot`), or `None` when it is
/// missing outside CI: then `SKIPPED <test>: <tool> not installed` is printed and the test
/// should return (pass). Under CI (`CI` set) or `MOZPOOL_REQUIRE_TOOLS=1` a missing tool
/// fails the test instead.
pub fn require_tool(test: &str, path: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(path);
    let name = p
        .file_name()
        .map_or(path.into(), |n| n.to_string_lossy().into_owned());
    tool_installed(test, &name, &p).then_some(p)
}
