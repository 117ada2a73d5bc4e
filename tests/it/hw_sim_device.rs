//! End to end on a simulated rack: the real relay driver power-cycles `SimDevice`s over
//! a pty, the device boots through its bootloader, its SUTAgent comes and goes, faults
//! are applied at runtime and from config.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mozpool::hw::relay::RelayBoards;
use mozpool::hw::sim::{SimFaults, SimPhase, SimRack, SimTimings};
use mozpool::hw::{Error, ping, sut};

const EXE: &str = env!("CARGO_BIN_EXE_mozpool");
const T: Duration = Duration::from_millis(300);

fn timings() -> SimTimings {
    SimTimings {
        bootloader_window: Duration::from_millis(30),
        boot_time: Duration::from_millis(30),
    }
}

fn boards(rack: &SimRack) -> RelayBoards {
    let cfgs = rack
        .board_configs
        .iter()
        .cloned()
        .map(|mut c| {
            c.op_timeout = Duration::from_millis(500);
            c.cool_down = Duration::from_millis(5);
            c
        })
        .collect();
    RelayBoards::start(cfgs).expect("boards")
}

#[tokio::test]
async fn relay_power_cycle_reboots_only_that_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(2, timings(), Path::new(EXE), dir.path()).expect("rack");
    let boots = Arc::new(AtomicUsize::new(0));
    let b2 = boots.clone();
    rack.set_on_boot(Arc::new(move |_serial, _addr| {
        b2.fetch_add(1, Ordering::SeqCst);
    }));
    let (d1, d2) = (&rack.devices[0], &rack.devices[1]);
    assert!(d1.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    assert!(d2.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    sut::verify(d1.sut_addr, T).await.expect("d1 up");
    let relays = boards(&rack);
    relays.power_off(&d1.relay).await.expect("off");
    assert_eq!(d1.device.phase(), SimPhase::Off);
    assert_eq!(
        relays.power_state(&d1.relay).await.expect("state"),
        Some(false)
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        sut::verify(d1.sut_addr, T).await.is_err(),
        "agent must be down while off"
    );
    relays.power_on(&d1.relay).await.expect("on");
    assert!(d1.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    sut::verify(d1.sut_addr, T).await.expect("d1 back");
    relays
        .power_cycle(&d1.relay, Duration::from_millis(10))
        .await
        .expect("cycle");
    assert!(d1.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    assert_eq!(d1.device.boots(), 3);
    assert_eq!(d2.device.boots(), 1);
    assert_eq!(
        boots.load(Ordering::SeqCst),
        4,
        "every OS boot calls the hook"
    );
}

#[tokio::test]
async fn sut_reboot_goes_through_the_bootloader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let d = &rack.devices[0];
    assert!(d.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    sut::reboot(d.sut_addr, T).await.expect("rebt");
    assert_ne!(d.device.phase(), SimPhase::Os);
    assert!(d.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    assert_eq!(d.device.boots(), 2);
}

#[tokio::test]
async fn device_faults_at_runtime_and_from_config() {
    let f: SimFaults = serde_json::from_str(r#"{"does_not_boot": true}"#).expect("faults");
    assert!(serde_json::from_str::<SimFaults>(r#"{"no_such_fault": true}"#).is_err());
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(1, timings(), Path::new(EXE), dir.path()).expect("rack");
    let d = &rack.devices[0];
    assert!(d.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    d.device.set_faults(f);
    d.device.set_power(false);
    d.device.set_power(true);
    assert!(!d.device.wait_for(SimPhase::Os, Duration::from_millis(300)));
    assert_eq!(d.device.phase(), SimPhase::Booting);
    let e = ping::probe(d.sut_addr, T).await.expect("host answers");
    assert_eq!(e, ping::Reachability::Refused);

    d.device.set_faults(SimFaults {
        sut_garbage: true,
        ..Default::default()
    });
    d.device.reboot();
    assert!(d.device.wait_for(SimPhase::Os, Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let e = sut::verify(d.sut_addr, T).await.expect_err("garbage");
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    d.device.set_faults(SimFaults {
        sut_flaky: Some(0.0),
        ..Default::default()
    });
    assert!(sut::verify(d.sut_addr, T).await.is_err());
    d.device.set_faults(SimFaults::default());
    sut::verify(d.sut_addr, T).await.expect("healthy again");
}

#[tokio::test]
async fn rack_of_257_uses_two_boards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(257, timings(), Path::new(EXE), dir.path()).expect("rack");
    assert_eq!(rack.board_configs.len(), 2);
    assert_eq!(
        rack.devices[255].relay.to_string(),
        "sim-relay-1:bank32:relay8"
    );
    assert_eq!(
        rack.devices[256].relay.to_string(),
        "sim-relay-2:bank1:relay1"
    );
    assert_eq!(rack.devices[256].name.as_str(), "sim-0257");
    let relays = boards(&rack);
    relays
        .power_off(&rack.devices[256].relay)
        .await
        .expect("off");
    assert_eq!(rack.devices[256].device.phase(), SimPhase::Off);
    assert!(rack.devices[255].device.powered());
    assert!(rack.fastboot_path.exists());
    assert!(
        mozpool::hw::sim::read_rack_index(&rack.rack_dir)
            .iter()
            .any(|(serial, _)| serial == "sim0257")
    );
}

/// Threads of this process whose name starts with `prefix` (the test binary runs other
/// tests beside this one, so only the simulators' own threads are counted).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// A rack costs tasks, not threads: 600 booted devices (SUTAgents listening, phases timed,
/// boards on their ptys) run on the simulators' few runtime threads. Before, each device
/// had two threads of its own and each board one.
#[tokio::test]
async fn a_rack_runs_on_a_few_threads_whatever_its_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rack = SimRack::start(600, timings(), Path::new(EXE), dir.path()).expect("rack");
    assert!(
        rack.devices
            .iter()
            .all(|d| d.device.wait_for(SimPhase::Os, Duration::from_secs(10))),
        "every device boots"
    );
    sut::verify(rack.devices[599].sut_addr, T)
        .await
        .expect("the last device's SUTAgent answers");
    let sim = threads_named("sim");
    assert!(
        sim <= 16,
        "{sim} simulator threads for 600 devices: a device or a board has a thread of its own"
    );
}
