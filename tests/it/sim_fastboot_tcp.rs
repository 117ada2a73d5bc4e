//! Debian's real `fastboot` (29.0.6) against the fastboot-over-TCP simulator
//! (`hw::sim::fastboot_tcp`) with a `MemoryTarget` behind it: the bytes flashed, the slot
//! set, the partitions erased and the reboots asked for arrive as the client meant them,
//! and the client's output is what a real device gets. Every run of the client is under a
//! deadline and killed when it expires: over TCP it retries an absent device forever.
//! The wire-fault runs show that the same checks fail against a broken simulator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mozpool::hw::sim::fastboot_tcp::{
    MemoryMode, MemoryTarget, RebootTarget, ServeOptions, SimFastbootTcp, WireFault,
};

use crate::support::require_tool;

const FASTBOOT: &str = "/usr/bin/fastboot";

/// Long enough for any command that succeeds on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// For runs that are expected never to finish on their own.
const SHORT: Duration = Duration::from_secs(3);

/// What one run of the client did.
#[derive(Debug)]
struct Run {
    /// Exit code; `None` if it was killed at the deadline.
    code: Option<i32>,
    /// stdout then stderr (fastboot writes nearly everything to stderr).
    out: String,
    took: Duration,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn has_line(&self, line: &str) -> bool {
        self.out.lines().any(|l| l.trim_end() == line)
    }

    /// A step line such as `Writing 'boot_a'    OKAY [  0.000s]`.
    fn step_okay(&self, label: &str) -> bool {
        self.out.lines().any(|l| {
            l.strip_prefix(label)
                .is_some_and(|rest| rest.trim_start().starts_with("OKAY ["))
        })
    }
}

struct Bench {
    fastboot: PathBuf,
    target: Arc<MemoryTarget>,
    server: SimFastbootTcp,
    home: tempfile::TempDir,
}

impl Bench {
    async fn start(test: &str, options: ServeOptions) -> Option<Bench> {
        let fastboot = require_tool(test, FASTBOOT)?;
        let target = Arc::new(MemoryTarget::new("simprod", "SIM0001"));
        let server = SimFastbootTcp::start(target.clone(), options)
            .await
            .expect("start server");
        Some(Bench {
            fastboot,
            target,
            server,
            home: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// Run `fastboot -s tcp:127.0.0.1:PORT ARGS...`, killed after `deadline`.
    async fn run(&self, args: &[&str], deadline: Duration) -> Run {
        run_fastboot(
            &self.fastboot,
            self.home.path(),
            &self.server.serial(),
            args,
            deadline,
        )
        .await
    }
}

async fn run_fastboot(
    fastboot: &Path,
    home: &Path,
    serial: &str,
    args: &[&str],
    deadline: Duration,
) -> Run {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(fastboot)
        .arg("-s")
        .arg(serial)
        .args(args)
        .env_remove("ANDROID_SERIAL")
        .env_remove("ANDROID_PRODUCT_OUT")
        .env("HOME", home)
        .env("TMPDIR", home)
        .current_dir(home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fastboot");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let readers = tokio::spawn(async move {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(so.read_to_end(&mut a), se.read_to_end(&mut b));
        a.extend_from_slice(&b);
        String::from_utf8_lossy(&a).into_owned()
    });
    let code = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(status) => status.expect("wait fastboot").code(),
        Err(_) => {
            child.kill().await.expect("kill fastboot");
            None
        }
    };
    let out = readers.await.expect("readers");
    let run = Run {
        code,
        out,
        took: started.elapsed(),
    };
    eprintln!(
        "fastboot {args:?} -> {:?} in {:?}:\n{}",
        run.code, run.took, run.out
    );
    run
}

/// Bytes that are not a sparse image and differ from offset to offset.
fn image(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn getvar_product_is_printed() {
    let Some(b) = Bench::start("getvar_product_is_printed", ServeOptions::default()).await else {
        return;
    };
    let r = b.run(&["getvar", "product"], DEADLINE).await;
    assert!(r.ok(), "{r:?}");
    assert!(r.has_line("product: simprod"), "{r:?}");
    assert_eq!(b.target.calls(), ["getvar:product"]);

    let r = b.run(&["getvar", "max-download-size"], DEADLINE).await;
    assert!(r.has_line("max-download-size: 0x10000000"), "{r:?}");

    // An unknown variable: FAILED on stderr, yet exit status 0.
    let r = b.run(&["getvar", "no-such-var"], DEADLINE).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.out.contains("getvar:no-such-var")
            && r.out
                .contains("FAILED (remote: 'GetVar Variable Not found')"),
        "{r:?}"
    );

    let r = b.run(&["getvar", "all"], DEADLINE).await;
    assert!(r.ok(), "{r:?}");
    for line in [
        "(bootloader) product:simprod",
        "(bootloader) serialno:SIM0001",
        "(bootloader) current-slot:a",
        "(bootloader) partition-type:boot_a:raw",
        "(bootloader) max-download-size:0x10000000",
    ] {
        assert!(r.has_line(line), "{line} missing: {r:?}");
    }
}

#[tokio::test]
async fn flash_delivers_the_exact_bytes_to_the_active_slot() {
    let Some(b) = Bench::start(
        "flash_delivers_the_exact_bytes_to_the_active_slot",
        ServeOptions::default(),
    )
    .await
    else {
        return;
    };
    // Several MiB, so the data crosses many socket reads.
    let bytes = image(5 * 1024 * 1024 + 123);
    let file = b.home.path().join("boot.img");
    std::fs::write(&file, &bytes).expect("write image");
    let r = b
        .run(&["flash", "boot", file.to_str().expect("utf8")], DEADLINE)
        .await;
    assert!(r.ok(), "{r:?}");
    assert!(r.out.contains("Sending 'boot_a' (5120 KB)"), "{r:?}");
    assert!(r.step_okay("Writing 'boot_a'"), "{r:?}");
    assert!(r.out.contains("Finished. Total time:"), "{r:?}");
    let got = b.target.partition("boot_a").expect("boot_a").data;
    assert!(
        got == bytes,
        "boot_a holds {} bytes, not the image",
        got.len()
    );
    assert!(
        b.target
            .partition("boot_b")
            .expect("boot_b")
            .data
            .is_empty()
    );
    assert_eq!(
        b.target.calls(),
        [
            "getvar:has-slot:boot",
            "getvar:current-slot",
            "getvar:is-logical:boot_a",
            "flash:boot_a",
        ]
    );

    // An unknown partition: the device's FAIL text, exit status 1.
    let r = b
        .run(&["flash", "nope", file.to_str().expect("utf8")], DEADLINE)
        .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.out.contains("FAILED (remote: 'Partition not found')"),
        "{r:?}"
    );
    assert!(r.has_line("fastboot: error: Command failed"), "{r:?}");
}

#[tokio::test]
async fn erase_set_active_and_wipe() {
    let Some(b) = Bench::start("erase_set_active_and_wipe", ServeOptions::default()).await else {
        return;
    };
    let r = b.run(&["erase", "cache"], DEADLINE).await;
    assert!(r.ok() && r.step_okay("Erasing 'cache'"), "{r:?}");
    assert_eq!(b.target.partition("cache").expect("cache").erased, 1);

    let r = b.run(&["set_active", "b"], DEADLINE).await;
    assert!(
        r.ok() && r.step_okay("Setting current slot to 'b'"),
        "{r:?}"
    );
    assert_eq!(b.target.current_slot(), Some('b'));

    let r = b.run(&["-w"], DEADLINE).await;
    assert!(r.ok(), "{r:?}");
    for p in ["userdata", "cache", "metadata"] {
        assert!(r.step_okay(&format!("Erasing '{p}'")), "{p}: {r:?}");
    }
    // `raw` is no file system the client formats: it says so and carries on.
    assert!(
        r.has_line("Erase successful, but not automatically formatting."),
        "{r:?}"
    );
    assert_eq!(b.target.partition("cache").expect("cache").erased, 2);
    assert_eq!(b.target.partition("userdata").expect("userdata").erased, 1);
    assert_eq!(b.target.partition("metadata").expect("metadata").erased, 1);

    // Unknown command: the FAIL text and exit status 1.
    let r = b.run(&["oem", "frobnicate"], DEADLINE).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.out.contains("FAILED (remote: 'unknown command')"),
        "{r:?}"
    );
}

#[tokio::test]
async fn reboots_leave_fastboot_mode() {
    let Some(b) = Bench::start("reboots_leave_fastboot_mode", ServeOptions::default()).await else {
        return;
    };
    let r = b.run(&["reboot-bootloader"], DEADLINE).await;
    assert!(r.ok() && r.step_okay("Rebooting into bootloader"), "{r:?}");
    assert_eq!(b.target.mode(), MemoryMode::Bootloader);

    // `reboot fastboot`: the client reconnects after a second and needs is-userspace=yes.
    let r = b.run(&["reboot", "fastboot"], DEADLINE).await;
    assert!(r.ok() && r.step_okay("Rebooting into fastboot"), "{r:?}");
    assert_eq!(b.target.mode(), MemoryMode::Fastbootd);
    assert_eq!(
        b.target.calls().last().map(String::as_str),
        Some("getvar:is-userspace")
    );

    let r = b.run(&["reboot"], DEADLINE).await;
    assert!(r.ok() && r.step_okay("Rebooting"), "{r:?}");
    assert_eq!(b.target.mode(), MemoryMode::Os);
    assert_eq!(
        b.target.reboots(),
        [
            RebootTarget::Bootloader,
            RebootTarget::Fastbootd,
            RebootTarget::System
        ]
    );

    // Booted to the OS: the device no longer answers and the client waits.
    let r = b.run(&["getvar", "product"], SHORT).await;
    assert_eq!(r.code, None, "{r:?}");
    assert!(!r.out.contains("product:"), "{r:?}");
}

#[tokio::test]
async fn device_not_in_fastboot_makes_the_client_wait_until_it_appears() {
    let Some(b) = Bench::start(
        "device_not_in_fastboot_makes_the_client_wait_until_it_appears",
        ServeOptions::default(),
    )
    .await
    else {
        return;
    };
    b.target.set_mode(MemoryMode::Off);
    let r = b.run(&["getvar", "product"], SHORT).await;
    let port = b.server.addr().port();
    assert_eq!(r.code, None, "the client should still be waiting: {r:?}");
    assert!(
        r.has_line(&format!("< waiting for tcp:127.0.0.1:{port} >")),
        "{r:?}"
    );
    assert!(
        r.out
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("error: ")),
        "{r:?}"
    );
    assert!(!r.out.contains("product:"), "{r:?}");
    let connects = b.target.connects();
    eprintln!("{connects} connection attempts in {:?}", r.took);
    assert!(connects > 1, "the client retries: {connects}");

    // The device enters its bootloader while a client waits: the client gets through.
    let target = b.target.clone();
    let appear = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        target.set_mode(MemoryMode::Bootloader);
    });
    let r = b.run(&["getvar", "product"], DEADLINE).await;
    appear.await.expect("appear");
    assert!(r.ok() && r.has_line("product: simprod"), "{r:?}");
    assert!(r.out.contains("< waiting for tcp:"), "{r:?}");
}

#[tokio::test]
async fn hung_device_never_answers() {
    let Some(b) = Bench::start("hung_device_never_answers", ServeOptions::default()).await else {
        return;
    };
    b.target.set_hangs(true);
    let r = b.run(&["getvar", "product"], SHORT).await;
    assert_eq!(r.code, None, "{r:?}");
    assert!(
        r.out.trim().is_empty(),
        "a hung device prints nothing: {r:?}"
    );
}

/// The checks above fail against a simulator that gets the wire format wrong.
#[tokio::test]
async fn the_real_client_notices_a_broken_simulator() {
    let options = |fault| ServeOptions {
        fault,
        ..ServeOptions::default()
    };
    let test = "the_real_client_notices_a_broken_simulator";
    let Some(b) = Bench::start(test, options(WireFault::ShortLengthPrefix)).await else {
        return;
    };
    let r = b.run(&["getvar", "product"], SHORT).await;
    assert!(!r.has_line("product: simprod"), "{r:?}");

    let Some(b) = Bench::start(test, options(WireFault::NoOkayAfterDownload)).await else {
        return;
    };
    let file = b.home.path().join("boot.img");
    std::fs::write(&file, image(4096)).expect("write image");
    let r = b
        .run(&["flash", "boot", file.to_str().expect("utf8")], SHORT)
        .await;
    assert!(!r.ok() && !r.step_okay("Writing 'boot_a'"), "{r:?}");
    assert!(
        b.target
            .partition("boot_a")
            .expect("boot_a")
            .data
            .is_empty()
    );

    let Some(b) = Bench::start(test, options(WireFault::HandshakeVersionZero)).await else {
        return;
    };
    let r = b.run(&["getvar", "product"], SHORT).await;
    assert!(!r.ok() && !r.has_line("product: simprod"), "{r:?}");
    assert!(
        r.out
            .contains("error: Unknown TCP protocol version 00 (host version 01)"),
        "{r:?}"
    );
}
