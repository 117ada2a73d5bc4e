//! The appliance's operations surface: `/metrics`, and backup/restore through the real CLI
//! code paths (`mozpool backup` against a live service, `mozpool restore` offline).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use crate::support::{TWO_DEVICES, TestServer};

async fn cli(args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["mozpool"];
    argv.extend_from_slice(args);
    mozpool::cli::run(mozpool::cli::Cli::parse_from(argv)).await
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The in-process service releases the store's lock when its writer thread notices the last
/// handle is gone, a moment after `stop` returns.
async fn wait_released(data: &std::path::Path) {
    let store = data.join("mozpool.redb");
    for _ in 0..100 {
        if redb::ReadOnlyDatabase::open(&store).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store stayed locked after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_in_prometheus_text_format() {
    let s = TestServer::start(TWO_DEVICES).await;
    let _ = s.get("/api/device/list/").await;
    let r = s.http.get(s.url("/metrics")).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.expect("text");
    // Devices per state: both configured devices, every known state listed.
    let devices: f64 = text
        .lines()
        .filter(|l| l.starts_with("mozpool_devices{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(devices, 2.0, "{text}");
    assert!(metric(&text, "mozpool_devices{state=\"ready\"}").is_some());
    // Open requests per state: every open state listed; none yet.
    let open: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mozpool_requests{"))
        .collect();
    assert!(open.len() >= 3, "{text}");
    assert!(open.iter().all(|l| l.ends_with(" 0")), "{open:?}");
    assert_eq!(metric(&text, "mozpool_requests_stored"), Some(0.0));
    // API latency: at least the device list call.
    assert!(metric(&text, "mozpool_api_request_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "mozpool_api_responses_total{code=\"2xx\"}").unwrap_or(0.0) >= 1.0);
    // Store commits and the durable log.
    assert!(metric(&text, "mozpool_store_commits_total").unwrap_or(0.0) >= 1.0);
    assert!(
        metric(
            &text,
            "mozpool_store_commit_duration_seconds_bucket{le=\"+Inf\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(metric(&text, "mozpool_log_records").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "mozpool_store_file_bytes").unwrap_or(0.0) > 0.0);
    assert_eq!(metric(&text, "mozpool_store_healthy"), Some(1.0));
    // Hardware operations recorded by the hardware layer show up per kind.
    s.app
        .metrics
        .hw
        .record("relay_power_cycle", false, Duration::from_millis(800));
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(
            &text,
            "mozpool_hw_operations_total{kind=\"relay_power_cycle\",result=\"failed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "mozpool_hw_operation_duration_seconds_bucket{kind=\"relay_power_cycle\",le=\"1\"}"
        ),
        Some(1.0)
    );
    // Every sample line is `name{labels} value` or `name value`; every family has a TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("sample");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let family = name.split('{').next().unwrap_or_default();
        let base = family
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {family} "))
                || text.contains(&format!("# TYPE {base} ")),
            "no TYPE for {line}"
        );
    }
    s.stop().await;
}

/// `mozpool serve` as a child process, as systemd runs it: the store's lock is held by
/// another process, as on the appliance.
struct Child {
    child: std::process::Child,
    url: String,
}

impl Child {
    async fn start(dir: &std::path::Path) -> Child {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let config = dir.join("mozpool.toml");
        std::fs::write(&config, format!("{TWO_DEVICES}\n[log]\nlevel = \"warn\"\n"))
            .expect("config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mozpool"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mozpool serve");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http
                .get(format!("{url}/api/health/"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Child { child, url };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("service did not come up at {url}");
    }

    /// SIGTERM, as systemd stops it; must exit 0.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exit status {status}");
    }
}

impl Drop for Child {
    /// A failed test must not leave a service running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_then_restore_keeps_every_acknowledged_write() {
    let work = tempfile::tempdir().expect("dir");
    let mut s = Child::start(work.path()).await;
    let url = s.url.clone();
    let http = reqwest::Client::new();
    // Writers create devices continuously; each records (ack time, name).
    let acked = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (http, url, acked, stop) = (http.clone(), url.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("load-{w}-{i}");
                let r = http
                    .put(format!("{url}/api/device/{name}/"))
                    .body(json!({"comments": "x"}).to_string())
                    .send()
                    .await
                    .expect("PUT");
                assert!(r.status().is_success(), "{}", r.status());
                acked.lock().expect("lock").push((Instant::now(), name));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tempfile::tempdir().expect("out");
    let file = out.path().join("snap.redb");
    let started = Instant::now();
    cli(&["backup", file.to_str().expect("path"), "--url", &url])
        .await
        .expect("backup");
    // Keep writing a little after the snapshot, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let before: Vec<String> = acked
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, _)| *t < started)
        .map(|(_, n)| n.clone())
        .collect();
    assert!(
        before.len() > 5,
        "too few writes before the backup: {}",
        before.len()
    );
    assert!(!out.path().read_dir().expect("ls").any(|e| {
        e.expect("entry")
            .file_name()
            .to_string_lossy()
            .contains("partial")
    }));

    // The service is still running: an offline restore must refuse (the store is locked).
    let data = work.path().join("data");
    let data_arg = data.to_str().expect("path");
    let refused = cli(&[
        "restore",
        file.to_str().expect("path"),
        "--data-dir",
        data_arg,
    ])
    .await;
    let msg = format!("{:#}", refused.expect_err("restore while running"));
    assert!(msg.contains("in use"), "{msg}");

    s.stop();
    cli(&[
        "restore",
        file.to_str().expect("path"),
        "--data-dir",
        data_arg,
    ])
    .await
    .expect("restore");
    let baks = std::fs::read_dir(&data)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("mozpool.redb.bak-")
        })
        .count();
    assert_eq!(baks, 1, "previous store kept");

    let mut s = Child::start(work.path()).await;
    let list: serde_json::Value = http
        .get(format!("{}/api/device/list/", s.url))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let names: Vec<&str> = list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for n in &before {
        assert!(
            names.contains(&n.as_str()),
            "{n} acknowledged before the backup is missing"
        );
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backups_are_refused_and_leave_the_store_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let out = tempfile::tempdir().expect("out");
    let store = dir.path().join("mozpool.redb");
    let good = out.path().join("good.redb");
    {
        let s =
            mozpool::storage::Store::open(&store, Arc::new(mozpool::domain::clock::SystemClock))
                .expect("store");
        s.write(|tx, now| {
            mozpool::storage::logs::append(
                tx,
                now,
                mozpool::storage::logs::NewLog::new("system".into(), "test", "hello"),
            )
        })
        .await
        .expect("write");
        let info = mozpool::storage::backup::snapshot(&s, &good).expect("snapshot");
        assert_eq!(info.rows("logs"), 1);
    }
    wait_released(dir.path()).await;
    let data = dir.path().to_str().expect("path").to_owned();
    let original = std::fs::read(&store).expect("store");
    // Garbage.
    let garbage = out.path().join("garbage.redb");
    std::fs::write(&garbage, b"this is not a database at all").expect("write");
    // A truncated copy of a real backup.
    let bytes = std::fs::read(&good).expect("read");
    let truncated = out.path().join("truncated.redb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    // A real backup with a corrupt record.
    let corrupt = out.path().join("corrupt.redb");
    std::fs::copy(&good, &corrupt).expect("copy");
    {
        let db = redb::Database::open(&corrupt).expect("open");
        let tx = db.begin_write().expect("tx");
        {
            let mut t = tx
                .open_table(mozpool::storage::tables::DEVICES)
                .expect("table");
            t.insert(
                "panda-1",
                mozpool::storage::Encoded::from_raw(vec![0xff, 0xff, 0xff]),
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    // A backup from a newer release.
    let newer = out.path().join("newer.redb");
    std::fs::copy(&good, &newer).expect("copy");
    {
        let db = redb::Database::open(&newer).expect("open");
        let tx = db.begin_write().expect("tx");
        tx.open_table(mozpool::storage::tables::META)
            .expect("meta")
            .insert("schema_version", 999u64)
            .expect("insert");
        tx.commit().expect("commit");
    }
    for (bad, expect) in [
        (&garbage, "not a readable mozpool store"),
        (&truncated, ""),
        (&corrupt, "corrupt record in devices"),
        (&newer, "schema version 999"),
    ] {
        let err = cli(&["restore", bad.to_str().expect("path"), "--data-dir", &data])
            .await
            .expect_err("refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("restore refused") && msg.contains(expect),
            "{}: {msg}",
            bad.display()
        );
    }
    assert!(
        std::fs::read(&store).expect("store") == original,
        "store untouched"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("bak") || n.contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The good one restores.
    cli(&["restore", good.to_str().expect("path"), "--data-dir", &data])
        .await
        .expect("restore");
}

/// The packaged `/etc/mozpool/mozpool.toml` parses as shipped, and so do its commented
/// examples once uncommented (so the examples cannot rot).
#[test]
fn packaged_config_and_its_examples_parse() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mozpool.toml");
    let text = std::fs::read_to_string(&path).expect("packaged config");
    let config = mozpool::app::config::Config::parse(&path, &text).expect("packaged config parses");
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        config.server.data_dir,
        std::path::Path::new("/var/lib/mozpool")
    );
    assert_eq!(config.log.level, "info");
    // Uncomment `#[table]`, `#[[table]]` and `#key = value` lines; prose comments stay
    // comments.
    let examples: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let full = mozpool::app::config::Config::parse(&path, &examples)
        .unwrap_or_else(|e| panic!("examples do not parse: {e}\n{examples}"));
    assert_eq!(full.devices.len(), 1);
    assert_eq!(full.images.len(), 2);
    assert!(full.cluster.is_some_and(|c| c.endpoints.len() == 3));
}
