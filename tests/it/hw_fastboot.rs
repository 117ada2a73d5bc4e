//! The real `Flasher` running the fastboot stand-in (`mozpool sim-fastboot`) against
//! `SimDevice`s, plus shell fakes for output-parsing corner cases; hung children must be
//! killed with their whole process group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mozpool::hw::fastboot::{FastbootStep, FlashDeadlines, Flasher};
use mozpool::hw::sim::fastboot::hex_digest;
use mozpool::hw::sim::{SimFaults, SimPhase, SimRack, SimTimings};
use mozpool::hw::{Error, sut};

const EXE: &str = env!("CARGO_BIN_EXE_mozpool");

fn timings() -> SimTimings {
    SimTimings {
        bootloader_window: Duration::from_millis(400),
        boot_time: Duration::from_millis(50),
    }
}

fn deadlines() -> FlashDeadlines {
    FlashDeadlines {
        appear: Duration::from_millis(1500),
        per_step: Duration::from_secs(3),
        reboot: Duration::from_secs(3),
    }
}

fn write_exe(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write script");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}

fn images(dir: &Path) -> Vec<FastbootStep> {
    let boot = dir.join("boot.img");
    let system = dir.join("system.img");
    std::fs::write(&boot, b"boot image bytes").expect("write");
    std::fs::write(&system, vec![7u8; 5000]).expect("write");
    vec![
        FastbootStep::Flash {
            partition: "boot".into(),
            file: boot,
        },
        FastbootStep::Flash {
            partition: "system".into(),
            file: system,
        },
    ]
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn live_in_group(pgid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the ")" of the command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(") ").map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string() {
            v.push(pid);
        }
    }
    v
}

#[tokio::test]
async fn flash_records_images_and_device_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let dev = &rack.devices[0];
    // Power-cycle so the device is in its bootloader window when fastboot starts.
    dev.device.set_power(false);
    dev.device.set_power(true);
    let steps = images(dir.path());
    let flasher = Flasher::new(&rack.fastboot_path);
    let mut lines = Vec::new();
    flasher
        .flash(&dev.fastboot_serial, &steps, &deadlines(), |l| {
            lines.push(l.to_owned())
        })
        .await
        .expect("flash");
    let flashed = dev.device.flashed();
    assert_eq!(flashed.get("boot"), Some(&hex_digest(b"boot image bytes")));
    assert_eq!(flashed.get("system"), Some(&hex_digest(&[7u8; 5000])));
    assert!(lines.iter().any(|l| l == "product: sim-panda"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Sending 'system' (5 KB)   OKAY")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Writing 'boot'   OKAY")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Rebooting   OKAY")),
        "{lines:?}"
    );
    assert!(dev.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    sut::verify(dev.sut_addr, Duration::from_millis(500))
        .await
        .expect("agent up after flash");
}

#[tokio::test]
async fn device_that_never_enters_bootloader_is_absent_within_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let dev = &rack.devices[0];
    dev.device.set_power(false);
    let flasher = Flasher::new(&rack.fastboot_path);
    let mut d = deadlines();
    d.appear = Duration::from_millis(400);
    let t = Instant::now();
    let mut lines = Vec::new();
    let e = flasher
        .flash(&dev.fastboot_serial, &images(dir.path()), &d, |l| {
            lines.push(l.to_owned())
        })
        .await
        .expect_err("absent");
    assert!(matches!(e, Error::DeviceAbsent { .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        lines,
        vec![format!("< waiting for {} >", dev.fastboot_serial)]
    );
}

#[tokio::test]
async fn unknown_partition_fails_with_remote_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let dev = &rack.devices[0];
    dev.device.set_power(false);
    dev.device.set_power(true);
    let mut steps = images(dir.path());
    if let FastbootStep::Flash { partition, .. } = &mut steps[1] {
        *partition = "radio".into();
    }
    let e = Flasher::new(&rack.fastboot_path)
        .flash(&dev.fastboot_serial, &steps, &deadlines(), |_| {})
        .await
        .expect_err("unknown partition");
    match e {
        Error::FastbootFailed { msg } => assert!(msg.contains("Partition not found"), "{msg}"),
        other => panic!("unexpected {other}"),
    }
    // The first step went through before the failure.
    assert!(dev.device.flashed().contains_key("boot"));
    assert!(!dev.device.flashed().contains_key("radio"));
}

#[tokio::test]
async fn hung_fastboot_is_killed_with_its_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let dev = &rack.devices[0];
    dev.device.set_faults(SimFaults {
        fastboot_hangs: true,
        ..Default::default()
    });
    dev.device.set_power(false);
    dev.device.set_power(true);
    // A wrapper that leaves a grandchild in the group, then runs the stand-in.
    let pidfile = dir.path().join("pids");
    let wrapper = dir.path().join("fastboot-hang");
    write_exe(
        &wrapper,
        &format!(
            "#!/bin/sh\necho $$ >> '{}'\nsleep 30 &\nexec '{}' \"$@\"\n",
            pidfile.display(),
            rack.fastboot_path.display()
        ),
    );
    let mut d = deadlines();
    d.appear = Duration::from_millis(500);
    let t = Instant::now();
    let e = Flasher::new(&wrapper)
        .flash(&dev.fastboot_serial, &images(dir.path()), &d, |_| {})
        .await
        .expect_err("hang");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    // Give the kernel a moment to deliver SIGKILL to the grandchild.
    let t = Instant::now();
    while !live_in_group(pid).is_empty() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        live_in_group(pid),
        Vec::<i32>::new(),
        "orphans left in group {pid}"
    );
}

fn fake(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    write_exe(&p, &format!("#!/bin/sh\n{body}\n"));
    p
}

#[tokio::test]
async fn failed_text_with_exit_zero_is_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fake(
        dir.path(),
        "fb",
        "echo \"getvar:product  FAILED (remote: 'GetVar Variable Not found')\" >&2\nexit 0",
    );
    let e = Flasher::new(&f)
        .flash("ser1", &images(dir.path()), &deadlines(), |_| {})
        .await
        .expect_err("FAILED in output");
    match e {
        Error::FastbootFailed { msg } => {
            assert!(msg.contains("GetVar Variable Not found"), "{msg}")
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn nonzero_exit_reports_fastboot_error_line_and_argv_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let argfile = dir.path().join("args");
    let f = fake(
        dir.path(),
        "fb",
        &format!(
            "printf '%s\\n' \"$@\" >> '{}'\ncase \"$3\" in getvar) echo 'product: x' >&2; exit 0;; esac\necho 'fastboot: error: boom' >&2\nexit 1",
            argfile.display()
        ),
    );
    let e = Flasher::new(&f)
        .flash("ser1", &images(dir.path()), &deadlines(), |_| {})
        .await
        .expect_err("exit 1");
    match e {
        Error::FastbootFailed { msg } => assert!(msg.contains("fastboot: error: boom"), "{msg}"),
        other => panic!("unexpected {other}"),
    }
    let args = std::fs::read_to_string(&argfile).expect("args");
    let boot = dir.path().join("boot.img");
    assert_eq!(
        args,
        format!(
            "-s\nser1\ngetvar\nproduct\n-s\nser1\nflash\nboot\n{}\n",
            boot.display()
        )
    );
}

#[tokio::test]
async fn bad_partition_names_and_missing_files_are_refused_before_spawning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let f = fake(dir.path(), "fb", &format!("touch '{}'", marker.display()));
    let mut steps = images(dir.path());
    if let FastbootStep::Flash { partition, .. } = &mut steps[0] {
        *partition = "-w".into();
    }
    let e = Flasher::new(&f)
        .flash("ser1", &steps, &deadlines(), |_| {})
        .await;
    assert!(matches!(e, Err(Error::BadConfig(_))), "{e:?}");
    let mut steps = images(dir.path());
    if let FastbootStep::Flash { file, .. } = &mut steps[0] {
        *file = dir.path().join("missing.img");
    }
    let e = Flasher::new(&f)
        .flash("ser1", &steps, &deadlines(), |_| {})
        .await;
    assert!(matches!(e, Err(Error::Io { .. })), "{e:?}");
    let e = Flasher::new(&f)
        .flash("-s", &images(dir.path()), &deadlines(), |_| {})
        .await;
    assert!(matches!(e, Err(Error::BadConfig(_))), "{e:?}");
    assert!(!marker.exists());
    let e = Flasher::new(dir.path().join("nope"))
        .flash("ser1", &images(dir.path()), &deadlines(), |_| {})
        .await;
    assert!(matches!(e, Err(Error::Io { .. })), "{e:?}");
}

#[tokio::test]
async fn stand_in_devices_lists_only_devices_in_their_bootloader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = SimTimings {
        bootloader_window: Duration::from_secs(5),
        boot_time: Duration::from_millis(50),
    };
    let rack = SimRack::start(2, slow, Path::new(EXE), dir.path()).expect("rack");
    rack.devices[1].device.set_power(false);
    let out = tokio::process::Command::new(&rack.fastboot_path)
        .arg("devices")
        .output()
        .await
        .expect("run stand-in");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sim0001\tfastboot\n");
    let out = tokio::process::Command::new(&rack.fastboot_path)
        .output()
        .await
        .expect("run stand-in");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "fastboot: usage: no command\n"
    );
}

#[tokio::test]
async fn leftover_grandchild_holding_the_pipes_does_not_turn_success_into_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Succeeds at once but leaves a background process with our stdout/stderr open.
    let f = fake(dir.path(), "fb", "sleep 3 &\necho 'product: x' >&2\nexit 0");
    let t = Instant::now();
    Flasher::new(&f)
        .flash("ser1", &[], &deadlines(), |_| {})
        .await
        .expect("exit 0 without FAILED is success");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

/// Runs only as a child of `android_serial_is_scrubbed_from_the_child_env`, which sets
/// `ANDROID_SERIAL` in this process's environment.
#[tokio::test]
#[ignore = "run by android_serial_is_scrubbed_from_the_child_env"]
async fn android_serial_probe_child() {
    assert_eq!(std::env::var("ANDROID_SERIAL").as_deref(), Ok("leak"));
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fake(
        dir.path(),
        "fb",
        "echo \"product: ${ANDROID_SERIAL:-unset}\" >&2",
    );
    let mut lines = Vec::new();
    Flasher::new(&f)
        .flash("ser1", &[], &deadlines(), |l| lines.push(l.to_owned()))
        .await
        .expect("flash");
    assert_eq!(lines[0], "product: unset");
}

#[test]
fn android_serial_is_scrubbed_from_the_child_env() {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--ignored",
            "--exact",
            "hw_fastboot::android_serial_probe_child",
        ])
        .env("ANDROID_SERIAL", "leak")
        .output()
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
