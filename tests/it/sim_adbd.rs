//! Debian's real `adb` (1.0.41 / 29.0.6, /usr/bin/adb) against the adbd simulator: connect,
//! `devices`, `get-state`, the plain `shell:` service (getprop and the storage check),
//! `reboot bootloader`, the unauthorized fault, and wire faults the real client must notice.
//!
//! Every test runs its own adb server on a private port with a private HOME and TMPDIR (so
//! no key lands in the real `~/.android`) and a scrubbed environment, kills it at the end,
//! and runs each `adb` child under a deadline.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::hw::sim::adbd::{
    AdbReboot, AdbTarget, AdbdConfig, AdbdWireFaults, MemoryAdbTarget, MemoryStorage, SimAdbd,
};

use crate::support::tool_installed;

/// Debian's adb; `MOZPOOL_ADB` points elsewhere (another build, or a missing path to see
/// the skip).
fn adb_path() -> PathBuf {
    std::env::var_os("MOZPOOL_ADB").map_or_else(|| PathBuf::from("/usr/bin/adb"), PathBuf::from)
}

/// Deadline for one `adb` command (they take milliseconds when all is well).
const DEADLINE: Duration = Duration::from_secs(30);

/// What one `adb` run did.
#[derive(Debug)]
struct Run {
    /// Exit code; `None` when it was killed at the deadline.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// A private adb server, killed on drop.
struct Adb {
    home: tempfile::TempDir,
    port: u16,
}

impl Adb {
    /// `None` (after printing `SKIPPED`) when adb is not installed outside CI.
    fn new(test: &str) -> Option<Adb> {
        if !tool_installed(test, "adb", &adb_path()) {
            return None;
        }
        Some(Adb {
            home: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
        })
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(adb_path());
        // Nothing from the test's environment: no ANDROID_SERIAL, no vendor keys, no
        // trace settings, no real HOME.
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("TMPDIR", self.home.path())
            .env("ANDROID_ADB_SERVER_PORT", self.port.to_string())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run `adb ARGS` under `deadline`; a child still running then is killed.
    async fn run_for(&self, args: &[&str], deadline: Duration) -> Run {
        let started = Instant::now();
        let child = tokio::process::Command::from(self.command(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn adb");
        match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Ok(out) => {
                let out = out.expect("adb output");
                Run {
                    code: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    took: started.elapsed(),
                }
            }
            Err(_) => Run {
                code: None,
                stdout: String::new(),
                stderr: String::new(),
                took: started.elapsed(),
            },
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let r = self.run_for(args, DEADLINE).await;
        // Timings for the report on the real client's behaviour (not asserted).
        eprintln!(
            "adb {} -> code {:?} in {} ms; stdout {:?}; stderr {:?}",
            args.join(" "),
            r.code,
            r.took.as_millis(),
            r.stdout.chars().take(200).collect::<String>(),
            r.stderr
        );
        r
    }

    /// Start the server (so later commands' timings are the commands' own).
    async fn start(&self) {
        let r = self.run(&["start-server"]).await;
        assert!(r.ok(), "{r:?}");
    }

    /// `adb devices` lines after the header.
    async fn devices(&self) -> Vec<String> {
        let r = self.run(&["devices"]).await;
        assert!(r.ok(), "{r:?}");
        let mut lines = r.stdout.lines();
        assert_eq!(lines.next(), Some("List of devices attached"), "{r:?}");
        lines.filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// Poll `adb devices` until `serial` shows `state`.
    async fn wait_state(&self, serial: &str, state: &str) {
        let want = format!("{serial}\t{state}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let devices = self.devices().await;
            if devices.contains(&want) {
                return;
            }
            assert!(Instant::now() < deadline, "never {want:?}: {devices:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Adb {
    fn drop(&mut self) {
        // Synchronous on purpose: it must run even when the test panicked.
        let Ok(mut child) = self
            .command(&["kill-server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn sim(config: AdbdConfig) -> (SimAdbd, Arc<MemoryAdbTarget>, String) {
    let target = Arc::new(MemoryAdbTarget::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let adbd = SimAdbd::spawn(listener, target.clone(), config).expect("spawn");
    let serial = adbd.addr().to_string();
    (adbd, target, serial)
}

/// The storage check the service sends.
fn storage_check(nonce: &str) -> String {
    format!(
        "echo mozpool-check-{nonce} > /data/local/tmp/.mozpool-check && cat /data/local/tmp/.mozpool-check && rm /data/local/tmp/.mozpool-check; echo rc=$?"
    )
}

async fn connect(adb: &Adb, serial: &str) {
    let r = adb.run(&["connect", serial]).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stdout, format!("connected to {serial}\n"), "{r:?}");
}

#[tokio::test]
async fn real_adb_connects_gets_state_and_reads_a_property() {
    let Some(adb) = Adb::new("real_adb_connects_gets_state_and_reads_a_property") else {
        return;
    };
    let (_adbd, _t, serial) = sim(AdbdConfig::default()).await;
    adb.start().await;
    connect(&adb, &serial).await;
    assert_eq!(adb.devices().await, vec![format!("{serial}\tdevice")]);
    let r = adb.run(&["devices", "-l"]).await;
    assert!(
        r.stdout
            .contains("device product:sim_panda model:Sim_Panda device:panda"),
        "{r:?}"
    );
    let r = adb.run(&["-s", &serial, "get-state"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "device\n"), "{r:?}");
    let r = adb
        .run(&["-s", &serial, "shell", "getprop", "sys.boot_completed"])
        .await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "1\n"), "{r:?}");
    // The plain shell service carries no exit status: a failing command still exits 0.
    let r = adb.run(&["-s", &serial, "shell", "ls", "/"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "/system/bin/sh: ls: inaccessible or not found\n"),
        "{r:?}"
    );
    let r = adb.run(&["connect", &serial]).await;
    assert_eq!(
        r.stdout,
        format!("already connected to {serial}\n"),
        "{r:?}"
    );
}

#[tokio::test]
async fn real_adb_runs_the_storage_check() {
    let Some(adb) = Adb::new("real_adb_runs_the_storage_check") else {
        return;
    };
    let (_adbd, t, serial) = sim(AdbdConfig::default()).await;
    connect(&adb, &serial).await;
    let r = adb
        .run(&["-s", &serial, "shell", &storage_check("5eed")])
        .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "mozpool-check-5eed\nrc=0\n"),
        "{r:?}"
    );
    assert!(t.files().is_empty(), "{:?}", t.files());

    t.set_storage(MemoryStorage::ReadOnly);
    let r = adb
        .run(&["-s", &serial, "shell", &storage_check("5eed")])
        .await;
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.ends_with("rc=1\n"), "{r:?}");
    assert!(!r.stdout.contains("mozpool-check-5eed\n"), "{r:?}");
    assert!(t.files().is_empty(), "{:?}", t.files());
}

#[tokio::test]
async fn real_adb_with_an_old_protocol_adbd_checksums_and_chunks() {
    let Some(adb) = Adb::new("real_adb_with_an_old_protocol_adbd_checksums_and_chunks") else {
        return;
    };
    let (_adbd, t, serial) = sim(AdbdConfig::legacy()).await;
    // Several 4096-byte writes, each waiting for the client's OKAY.
    let big: String = (0..20_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    t.write_file("/data/local/tmp/big", big.as_bytes())
        .expect("write");
    connect(&adb, &serial).await;
    let r = adb
        .run(&["-s", &serial, "shell", "cat /data/local/tmp/big"])
        .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout == big, "{} bytes back", r.stdout.len());
    let r = adb
        .run(&["-s", &serial, "shell", &storage_check("01d")])
        .await;
    assert_eq!(r.stdout, "mozpool-check-01d\nrc=0\n", "{r:?}");
}

#[tokio::test]
async fn real_adb_reboot_bootloader_reaches_the_device() {
    let Some(adb) = Adb::new("real_adb_reboot_bootloader_reaches_the_device") else {
        return;
    };
    let (_adbd, t, serial) = sim(AdbdConfig::default()).await;
    connect(&adb, &serial).await;
    let r = adb.run(&["-s", &serial, "reboot", "bootloader"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""), "{r:?}");
    assert_eq!(t.reboots(), vec![AdbReboot::Bootloader]);
    // The transport dropped; adbd is down, so the server's reconnect attempts fail and
    // it lists the device offline.
    adb.wait_state(&serial, "offline").await;
    let r = adb.run(&["-s", &serial, "get-state"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (Some(1), "error: device offline\n"),
        "{r:?}"
    );
    t.set_up(true);
    // The simulator binds its port again within its poll interval; wait for that, or a
    // connection adb tries at once is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&serial).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sim adbd not listening again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // adb answers from the offline transport it kept ("already connected"); when its own
    // retries have already given that transport up (their timing, under load), it
    // connects anew. Either way one disconnect and connect bring the device back.
    let r = adb.run(&["connect", &serial]).await;
    assert!(
        [
            format!("already connected to {serial}\n"),
            format!("connected to {serial}\n")
        ]
        .contains(&r.stdout),
        "{r:?}"
    );
    let r = adb.run(&["disconnect", &serial]).await;
    assert_eq!(r.stdout, format!("disconnected {serial}\n"), "{r:?}");
    connect(&adb, &serial).await;
    let r = adb.run(&["-s", &serial, "get-state"]).await;
    assert_eq!(r.stdout, "device\n", "{r:?}");
}

#[tokio::test]
async fn real_adb_server_reconnects_by_itself_when_adbd_stays_up() {
    let Some(adb) = Adb::new("real_adb_server_reconnects_by_itself_when_adbd_stays_up") else {
        return;
    };
    let (_adbd, t, serial) = sim(AdbdConfig::default()).await;
    t.set_down_on_reboot(false);
    connect(&adb, &serial).await;
    let r = adb.run(&["-s", &serial, "reboot"]).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(t.reboots(), vec![AdbReboot::Os]);
    // The server retries a kicked TCP transport after 250 ms (then every 10 s, 6 times).
    adb.wait_state(&serial, "device").await;
    let r = adb
        .run(&["-s", &serial, "shell", "getprop", "sys.boot_completed"])
        .await;
    assert_eq!(r.stdout, "1\n", "{r:?}");
}

#[tokio::test]
async fn real_adb_sees_an_unauthorized_device() {
    let Some(adb) = Adb::new("real_adb_sees_an_unauthorized_device") else {
        return;
    };
    let (_adbd, t, serial) = sim(AdbdConfig::default()).await;
    t.set_authorized(false);
    let r = adb.run(&["connect", &serial]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            Some(0),
            format!("failed to authenticate to {serial}\n").as_str()
        ),
        "{r:?}"
    );
    assert_eq!(adb.devices().await, vec![format!("{serial}\tunauthorized")]);
    for args in [
        vec!["-s", serial.as_str(), "get-state"],
        vec![
            "-s",
            serial.as_str(),
            "shell",
            "getprop",
            "sys.boot_completed",
        ],
        vec!["-s", serial.as_str(), "reboot", "bootloader"],
    ] {
        let r = adb.run(&args).await;
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert_eq!(r.stdout, "", "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("error: device unauthorized.\n"),
            "{args:?}: {r:?}"
        );
    }
    assert!(t.reboots().is_empty());
    // The host keys were made in the private HOME, not the real one.
    assert!(adb.home.path().join(".android/adbkey").exists());
}

#[tokio::test]
async fn real_adb_reports_refused_and_unknown_devices() {
    let Some(adb) = Adb::new("real_adb_reports_refused_and_unknown_devices") else {
        return;
    };
    let target = Arc::new(MemoryAdbTarget::new());
    target.set_up(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let adbd = SimAdbd::spawn(listener, target.clone(), AdbdConfig::default()).expect("spawn");
    let serial = adbd.addr().to_string();
    // Wait until the simulator has closed its port (adbd down).
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(adbd.addr()).is_ok() {
        assert!(Instant::now() < deadline, "port never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = adb.run(&["connect", &serial]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            Some(0),
            format!("failed to connect to '{serial}': Connection refused\n").as_str()
        ),
        "{r:?}"
    );
    assert_eq!(adb.devices().await, Vec::<String>::new());
    let r = adb.run(&["-s", &serial, "get-state"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            Some(1),
            format!("error: device '{serial}' not found\n").as_str()
        ),
        "{r:?}"
    );
    let r = adb.run(&["-s", &serial, "shell", "true"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    // adbd comes up: the same port now connects.
    target.set_up(true);
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(adbd.addr()).is_err() {
        assert!(Instant::now() < deadline, "port never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connect(&adb, &serial).await;
}

/// The tests above can fail: a simulator that breaks the protocol is caught by the real
/// client.
#[tokio::test]
async fn real_adb_rejects_a_broken_simulator() {
    let Some(adb) = Adb::new("real_adb_rejects_a_broken_simulator") else {
        return;
    };
    // Corrupt magic: the client drops every message, so it never connects.
    let (_adbd, _t, serial) = sim(AdbdConfig {
        faults: AdbdWireFaults {
            corrupt_magic: true,
            ..AdbdWireFaults::default()
        },
        ..AdbdConfig::default()
    })
    .await;
    let r = adb.run(&["connect", &serial]).await;
    assert_ne!(r.stdout, format!("connected to {serial}\n"), "{r:?}");
    assert!(
        !adb.devices().await.contains(&format!("{serial}\tdevice")),
        "corrupt magic accepted"
    );

    // No OKAY for OPEN: the shell stream never connects and the output never arrives.
    let (_adbd2, _t2, serial2) = sim(AdbdConfig {
        faults: AdbdWireFaults {
            drop_open_okay: true,
            ..AdbdWireFaults::default()
        },
        ..AdbdConfig::default()
    })
    .await;
    connect(&adb, &serial2).await;
    let r = adb
        .run_for(
            &["-s", &serial2, "shell", "getprop", "sys.boot_completed"],
            Duration::from_secs(5),
        )
        .await;
    eprintln!("no OKAY: {r:?} after {} ms", r.took.as_millis());
    assert!(
        !(r.ok() && r.stdout == "1\n"),
        "a stream without OKAY worked: {r:?}"
    );
}
