//! Real relay drivers (ProXR serial/TCP raw/API, LCUS, GPIO) against the simulators,
//! including every injected fault; golden bytes from the protocol reference for both the
//! driver's encoder and the simulators' decoders; power-cycle ordering per relay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mozpool::domain::names::BoardName;
use mozpool::hw::Error;
use mozpool::hw::relay::{
    BoardConfig, BoardKind, Contact, Framing, GpioChange, RelayAddr, RelayBoards, SimGpio,
    Transport,
};
use mozpool::hw::sim::{
    SimAction, SimFraming, SimLcusBoard, SimProxrBoard, SimProxrConfig, SimRelayFaults,
};

fn name(s: &str) -> BoardName {
    s.parse().expect("valid board name")
}

fn fast(mut c: BoardConfig) -> BoardConfig {
    c.op_timeout = Duration::from_millis(400);
    c.cool_down = Duration::from_millis(5);
    c.reopen_backoff = Duration::from_millis(50);
    c
}

fn pty_cfg(board: &str, sim: &SimProxrBoard, framing: Framing) -> BoardConfig {
    fast(BoardConfig::new(
        name(board),
        BoardKind::Proxr {
            transport: Transport::Serial {
                path: sim.pty_path().expect("pty").to_path_buf(),
                baud: 115_200,
            },
            framing,
            banks: 4,
        },
    ))
}

fn tcp_cfg(board: &str, sim: &SimProxrBoard, framing: Framing) -> BoardConfig {
    let a = sim.tcp_addr().expect("tcp");
    fast(BoardConfig::new(
        name(board),
        BoardKind::Proxr {
            transport: Transport::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
                single_connection: true,
            },
            framing,
            banks: 4,
        },
    ))
}

fn addr(s: &str) -> RelayAddr {
    s.parse().expect("valid relay address")
}

/// The simulator's own framing for the driver's setting (the two are separate types so the
/// simulator shares no code with the driver).
fn sim_cfg(framing: Framing) -> SimProxrConfig {
    SimProxrConfig::framing(match framing {
        Framing::Raw => SimFraming::Raw,
        Framing::Api => SimFraming::Api,
    })
}

fn sim_pty(framing: Framing) -> SimProxrBoard {
    SimProxrBoard::on_pty(sim_cfg(framing)).expect("pty sim")
}

fn sim_tcp(framing: Framing) -> SimProxrBoard {
    SimProxrBoard::on_tcp(sim_cfg(framing)).expect("tcp sim")
}

#[tokio::test]
async fn proxr_pty_power_cycle_sequence_is_off_read_on_read() {
    let sim = sim_pty(Framing::Raw);
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c2 = changes.clone();
    sim.set_hook(Arc::new(move |b, r, e| {
        c2.lock().expect("lock").push((b, r, e))
    }));
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let a = addr("r1:bank2:relay7");

    boards
        .power_cycle(&a, Duration::from_millis(20))
        .await
        .expect("cycle");
    assert_eq!(
        sim.log(),
        vec![
            SimAction::Set {
                bank: 2,
                relay: 7,
                energised: true
            },
            SimAction::Get {
                bank: 2,
                relay: 7,
                energised: true
            },
            SimAction::Set {
                bank: 2,
                relay: 7,
                energised: false
            },
            SimAction::Get {
                bank: 2,
                relay: 7,
                energised: false
            },
        ]
    );
    // NC wiring: energised = device off, then released = device on.
    assert_eq!(
        *changes.lock().expect("lock"),
        vec![(2, 7, true), (2, 7, false)]
    );
    assert_eq!(boards.power_state(&a).await.expect("read"), Some(true));

    boards.power_off(&a).await.expect("off");
    assert!(sim.energised(2, 7));
    assert_eq!(boards.power_state(&a).await.expect("read"), Some(false));
    boards.power_on(&a).await.expect("on");
    assert!(!sim.energised(2, 7));
    boards.test(&name("r1")).await.expect("two-way test");
    let st = boards.status();
    assert_eq!(st[0].healthy, Some(true));
    assert_eq!(st[0].ops_failed, 0);
}

#[tokio::test]
async fn proxr_tcp_api_framing_and_host_port_alias() {
    let sim = sim_tcp(Framing::Api);
    let boards = RelayBoards::start(vec![tcp_cfg("r2", &sim, Framing::Api)]).expect("start");
    let port = sim.tcp_addr().expect("tcp").port();
    // The original relay_info text names the board by host:port.
    let a = addr(&format!("127.0.0.1:{port}:bank4:relay1"));
    boards.power_off(&a).await.expect("off");
    assert!(sim.energised(4, 1));
    assert_eq!(boards.power_state(&a).await.expect("read"), Some(false));
    boards
        .power_cycle(&a, Duration::from_millis(5))
        .await
        .expect("cycle");
    assert!(!sim.energised(4, 1));
    boards.test(&name("r2")).await.expect("test");
}

#[tokio::test]
async fn framing_mismatch_is_a_clear_error() {
    // Board speaks API mode, driver raw: the board ignores the bytes, the op times out.
    let sim = sim_pty(Framing::Api);
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let t = Instant::now();
    let e = boards.test(&name("r1")).await.expect_err("must fail");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn silent_board_fails_within_timeout_while_other_board_works() {
    let dead = sim_pty(Framing::Raw);
    dead.set_faults(SimRelayFaults {
        never_reply: true,
        ..Default::default()
    });
    let good = sim_tcp(Framing::Raw);
    let boards = RelayBoards::start(vec![
        pty_cfg("dead", &dead, Framing::Raw),
        tcp_cfg("good", &good, Framing::Raw),
    ])
    .expect("start");
    let (da, ga) = (addr("dead:bank1:relay1"), addr("good:bank1:relay1"));
    let t = Instant::now();
    let (d, g) = tokio::join!(
        boards.power_cycle(&da, Duration::from_millis(10)),
        boards.power_cycle(&ga, Duration::from_millis(10)),
    );
    let e = d.expect_err("dead board must fail");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    g.expect("good board unaffected");
    // 400 ms budget + 10 ms off time + grace; never hangs.
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let st = boards.status();
    let dead_st = st.iter().find(|s| s.name.as_str() == "dead").expect("dead");
    assert_eq!(dead_st.healthy, Some(false));
    assert!(
        dead_st
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out")
    );
    // The relay page lists the failure: when, which relay, what, and the error.
    let f = dead_st.recent_failures.first().expect("a recent failure");
    assert_eq!(f.relay.as_deref(), Some("dead:bank1:relay1"));
    assert!(f.op.contains("power cycle"), "{}", f.op);
    assert!(f.error.contains("timed out"), "{}", f.error);
    let good_st = st.iter().find(|s| s.name.as_str() == "good").expect("good");
    assert!(good_st.recent_failures.is_empty());
}

#[tokio::test]
async fn stuck_relay_is_detected_by_read_back() {
    let sim = sim_pty(Framing::Raw);
    sim.set_relay_faults(
        1,
        3,
        Some(SimRelayFaults {
            stuck: true,
            ..Default::default()
        }),
    );
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let e = boards
        .power_cycle(&addr("r1:bank1:relay3"), Duration::from_millis(1))
        .await
        .expect_err("stuck");
    assert!(
        matches!(
            e,
            Error::RelayStuck {
                wanted: "off",
                got: "on",
                ..
            }
        ),
        "{e}"
    );
    // Other relays on the same board still work.
    boards
        .power_off(&addr("r1:bank1:relay4"))
        .await
        .expect("relay 4");
    assert!(sim.energised(1, 4));
}

#[tokio::test]
async fn wrong_reply_byte_is_bad_reply_after_bounded_retries() {
    let sim = sim_tcp(Framing::Raw);
    sim.set_faults(SimRelayFaults {
        wrong_reply: Some(0x42),
        ..Default::default()
    });
    let boards = RelayBoards::start(vec![tcp_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let e = boards.test(&name("r1")).await.expect_err("bad reply");
    match &e {
        Error::BadReply { expected, got, .. } => {
            assert_eq!(expected, "55");
            assert_eq!(got, "42");
        }
        other => panic!("unexpected {other}"),
    }
    // retries = 1: exactly two attempts reached the board.
    assert_eq!(sim.log(), vec![SimAction::Test, SimAction::Test]);
}

#[tokio::test]
async fn close_mid_command_is_no_reply() {
    let sim = sim_tcp(Framing::Raw);
    sim.set_faults(SimRelayFaults {
        close_mid_command: true,
        ..Default::default()
    });
    let boards = RelayBoards::start(vec![tcp_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let t = Instant::now();
    let e = boards
        .power_off(&addr("r1:bank1:relay1"))
        .await
        .expect_err("closed");
    assert!(matches!(e, Error::NoReply { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn slow_reply_within_budget_succeeds_and_past_budget_times_out() {
    let sim = sim_pty(Framing::Raw);
    sim.set_faults(SimRelayFaults {
        reply_delay_ms: 50,
        ..Default::default()
    });
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    boards
        .test(&name("r1"))
        .await
        .expect("50 ms reply within 400 ms");
    sim.set_faults(SimRelayFaults {
        reply_delay_ms: 1000,
        ..Default::default()
    });
    let t = Instant::now();
    let e = boards.test(&name("r1")).await.expect_err("too slow");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(800));
}

#[tokio::test]
async fn queueing_consumes_the_deadline() {
    // One board, slow replies: a second op queued behind the first runs out of budget.
    let sim = sim_pty(Framing::Raw);
    sim.set_faults(SimRelayFaults {
        reply_delay_ms: 150,
        ..Default::default()
    });
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let a = addr("r1:bank1:relay1");
    let b = addr("r1:bank1:relay2");
    // First op: set + read-back = 2 × 150 ms of its 400 ms budget; the second has
    // ~100 ms left after queueing, less than one reply.
    let (r1, r2) = tokio::join!(boards.power_off(&a), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        boards.power_off(&b).await
    });
    r1.expect("first op fits");
    let e = r2.expect_err("second op starved by the queue");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn unplugged_port_reports_unavailable_then_reopens_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyRELAY");
    let mut cfg = BoardConfig::new(
        name("r1"),
        BoardKind::Proxr {
            transport: Transport::Serial {
                path: link.clone(),
                baud: 115_200,
            },
            framing: Framing::Raw,
            banks: 4,
        },
    );
    cfg = fast(cfg);
    let boards = RelayBoards::start(vec![cfg]).expect("start");
    let e = boards.test(&name("r1")).await.expect_err("absent");
    assert!(matches!(e, Error::BoardUnavailable { .. }), "{e}");
    // Within the backoff window the board is not even tried.
    let e = boards.test(&name("r1")).await.expect_err("backoff");
    assert!(e.to_string().contains("next reopen attempt"), "{e}");
    // "Plug it in": the by-id style symlink appears.
    let sim = sim_pty(Framing::Raw);
    std::os::unix::fs::symlink(sim.pty_path().expect("pty"), &link).expect("symlink");
    tokio::time::sleep(Duration::from_millis(250)).await;
    boards.test(&name("r1")).await.expect("reopened");
}

#[tokio::test]
async fn bad_addresses_are_refused_before_queueing() {
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let e = boards
        .power_off(&addr("nosuch:bank1:relay1"))
        .await
        .expect_err("unknown");
    assert!(matches!(e, Error::UnknownBoard(_)), "{e}");
    let e = boards
        .power_off(&addr("r1:pin4"))
        .await
        .expect_err("pin on proxr");
    assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    assert!(sim.log().is_empty());
}

#[tokio::test]
async fn lcus_writes_frames_and_cannot_read_back() {
    let sim = SimLcusBoard::start(2).expect("lcus sim");
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c2 = changes.clone();
    sim.set_hook(Arc::new(move |b, r, e| {
        c2.lock().expect("lock").push((b, r, e))
    }));
    let cfg = fast(BoardConfig::new(
        name("usb1"),
        BoardKind::Lcus {
            path: sim.path().to_path_buf(),
            channels: 2,
            baud: 9600,
        },
    ));
    let boards = RelayBoards::start(vec![cfg]).expect("start");
    let a = addr("usb1:bank1:relay2");
    boards.power_off(&a).await.expect("off");
    boards
        .power_cycle(&a, Duration::from_millis(5))
        .await
        .expect("cycle");
    assert_eq!(boards.power_state(&a).await.expect("state"), None);
    boards.test(&name("usb1")).await.expect("port opens");
    // Frames are written asynchronously to the sim thread; wait briefly for them.
    let t = Instant::now();
    while sim.log().len() < 3 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.log(), vec![(2, true), (2, true), (2, false)]);
    assert_eq!(
        *changes.lock().expect("lock"),
        vec![(1, 2, true), (1, 2, false)]
    );
    assert_eq!(sim.invalid_bytes(), 0);
    let e = boards
        .power_off(&addr("usb1:bank1:relay3"))
        .await
        .expect_err("only 2 channels");
    assert!(matches!(e, Error::BadAddress { .. }), "{e}");
}

#[tokio::test]
async fn gpio_board_applies_polarity_and_contact() {
    let gpio = SimGpio::new();
    let g2 = gpio.clone();
    let mut active_low = BoardConfig::new(
        name("hat"),
        BoardKind::Gpio {
            active_low: true,
            pins: vec![26, 20],
        },
    );
    active_low = fast(active_low);
    let mut no_high = BoardConfig::new(
        name("hat2"),
        BoardKind::Gpio {
            active_low: false,
            pins: vec![5],
        },
    );
    no_high.contact = Contact::NormallyOpen;
    no_high = fast(no_high);
    let boards =
        RelayBoards::start_with_gpio(vec![active_low, no_high], move |_| Box::new(g2.clone()))
            .expect("start");
    // Active-low, NC: device off = energised = pin LOW.
    boards.power_off(&addr("hat:pin26")).await.expect("off");
    assert_eq!(gpio.level(26), Some(false));
    assert_eq!(
        boards.power_state(&addr("hat:pin26")).await.expect("state"),
        Some(false)
    );
    boards
        .power_cycle(&addr("hat:pin26"), Duration::from_millis(1))
        .await
        .expect("cycle");
    assert_eq!(gpio.level(26), Some(true));
    // Active-high, NO: device on = energised = pin HIGH.
    boards.power_on(&addr("hat2:pin5")).await.expect("on");
    assert_eq!(gpio.level(5), Some(true));
    // Idle (device powered) at start-up, off, then on again after the cycle.
    assert_eq!(gpio.driven(26), vec![true, false, true]);
    assert_eq!(gpio.driven(20), vec![true]);
    assert_eq!(gpio.driven(5), vec![true]);
    let e = boards
        .power_on(&addr("hat:pin21"))
        .await
        .expect_err("pin not listed");
    assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    gpio.set_failure(Some("Pin 26 is already in use".into()));
    let e = boards.test(&name("hat")).await.expect_err("injected");
    assert_eq!(e.to_string(), "GPIO unavailable: Pin 26 is already in use");
}

/// After a controller boot every pin is an input whose latch may hold anything (here: low,
/// which energises an active-low coil if the pin became an output as it is). Start-up must
/// latch the idle level first and then switch to output, and no read may change a pin.
#[tokio::test]
async fn gpio_pins_are_claimed_at_idle_level_at_start_and_reads_change_nothing() {
    let gpio = SimGpio::new();
    let g2 = gpio.clone();
    let cfg = fast(BoardConfig::new(
        name("hat"),
        BoardKind::Gpio {
            active_low: true,
            pins: vec![26, 20, 21],
        },
    ));
    let boards =
        RelayBoards::start_with_gpio(vec![cfg], move |_| Box::new(g2.clone())).expect("start");
    // Active-low, NC: idle (coil released, device powered) is HIGH.
    let mut expected = Vec::new();
    for pin in [26, 20, 21] {
        expected.push(GpioChange::Latch { pin, high: true });
        expected.push(GpioChange::Output { pin });
    }
    assert_eq!(
        gpio.log(),
        expected,
        "idle level latched before output, once per pin"
    );
    for pin in [26, 20, 21] {
        assert_eq!(
            boards
                .power_state(&addr(&format!("hat:pin{pin}")))
                .await
                .expect("read"),
            Some(true),
            "device powered"
        );
    }
    boards.test(&name("hat")).await.expect("probe");
    assert_eq!(gpio.log(), expected, "reads and tests change nothing");
    for pin in [26, 20, 21] {
        assert_eq!(
            gpio.driven(pin),
            vec![true],
            "pin {pin} never left its idle level"
        );
    }
}

/// A board whose pins could not be claimed at start-up (GPIO busy) reports it on reads
/// without claiming anything; a later command that drives the pin claims it, idle first.
#[tokio::test]
async fn gpio_read_of_an_unclaimed_pin_is_an_error_not_a_claim() {
    let gpio = SimGpio::new();
    gpio.set_failure(Some("Pin 26 is already in use".into()));
    let g2 = gpio.clone();
    let cfg = fast(BoardConfig::new(
        name("hat"),
        BoardKind::Gpio {
            active_low: true,
            pins: vec![26],
        },
    ));
    let boards =
        RelayBoards::start_with_gpio(vec![cfg], move |_| Box::new(g2.clone())).expect("start");
    assert_eq!(boards.status()[0].healthy, Some(false));
    gpio.set_failure(None);
    let e = boards
        .power_state(&addr("hat:pin26"))
        .await
        .expect_err("not claimed");
    assert!(e.to_string().contains("not claimed at start-up"), "{e}");
    assert!(gpio.log().is_empty(), "a read claimed nothing");
    boards.power_off(&addr("hat:pin26")).await.expect("off");
    assert_eq!(
        gpio.log(),
        vec![
            GpioChange::Latch {
                pin: 26,
                high: true
            },
            GpioChange::Output { pin: 26 },
            GpioChange::Latch {
                pin: 26,
                high: false
            },
        ]
    );
}

#[tokio::test]
async fn real_gpio_backend_off_a_pi_fails_cleanly() {
    if std::path::Path::new("/proc/device-tree/model").exists() {
        return; // running on a board with GPIO
    }
    let cfg = fast(BoardConfig::new(
        name("hat"),
        BoardKind::Gpio {
            active_low: true,
            pins: vec![26],
        },
    ));
    // Start-up survives the missing GPIO: the board reports it.
    let boards = RelayBoards::start(vec![cfg]).expect("start");
    let st = boards.status();
    assert_eq!(st[0].healthy, Some(false));
    assert!(
        st[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("GPIO unavailable: "),
        "{st:?}"
    );
    let e = boards
        .power_off(&addr("hat:pin26"))
        .await
        .expect_err("no GPIO here");
    assert!(e.to_string().starts_with("GPIO unavailable: "), "{e}");
}

#[tokio::test]
async fn board_recovers_after_a_fault_by_reopening_its_port() {
    // After an error the driver drops and reopens the port (serialport clears TIOCEXCL
    // on close, so this also works for non-root users while the sim holds the tty).
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    boards.test(&name("r1")).await.expect("healthy");
    sim.set_faults(SimRelayFaults {
        never_reply: true,
        ..Default::default()
    });
    assert!(boards.test(&name("r1")).await.is_err());
    sim.set_faults(SimRelayFaults::default());
    boards.test(&name("r1")).await.expect("recovered");
    assert_eq!(boards.status()[0].healthy, Some(true));
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// Every ProXR command the driver uses, as literal bytes worked out by hand from the
/// reference (§2.1 table: on `FE 6B+R B`, off `FE 63+R B`, read `FE 73+R B`; §2.2 API frame
/// `AA len payload checksum`, checksum = low byte of the sum of the preceding bytes):
/// `op bank relay | raw | api`.
const PROXR_GOLDEN: &str = "
test  0 0 | FE 21    | AA 02 FE 21 CB
on    1 1 | FE 6C 01 | AA 03 FE 6C 01 18
off   1 1 | FE 64 01 | AA 03 FE 64 01 10
read  1 1 | FE 74 01 | AA 03 FE 74 01 20
on    1 2 | FE 6D 01 | AA 03 FE 6D 01 19
off   1 2 | FE 65 01 | AA 03 FE 65 01 11
read  1 2 | FE 75 01 | AA 03 FE 75 01 21
on    1 3 | FE 6E 01 | AA 03 FE 6E 01 1A
off   1 3 | FE 66 01 | AA 03 FE 66 01 12
read  1 3 | FE 76 01 | AA 03 FE 76 01 22
on    1 4 | FE 6F 01 | AA 03 FE 6F 01 1B
off   1 4 | FE 67 01 | AA 03 FE 67 01 13
read  1 4 | FE 77 01 | AA 03 FE 77 01 23
on    1 5 | FE 70 01 | AA 03 FE 70 01 1C
off   1 5 | FE 68 01 | AA 03 FE 68 01 14
read  1 5 | FE 78 01 | AA 03 FE 78 01 24
on    1 6 | FE 71 01 | AA 03 FE 71 01 1D
off   1 6 | FE 69 01 | AA 03 FE 69 01 15
read  1 6 | FE 79 01 | AA 03 FE 79 01 25
on    1 7 | FE 72 01 | AA 03 FE 72 01 1E
off   1 7 | FE 6A 01 | AA 03 FE 6A 01 16
read  1 7 | FE 7A 01 | AA 03 FE 7A 01 26
on    1 8 | FE 73 01 | AA 03 FE 73 01 1F
off   1 8 | FE 6B 01 | AA 03 FE 6B 01 17
read  1 8 | FE 7B 01 | AA 03 FE 7B 01 27
on    4 8 | FE 73 04 | AA 03 FE 73 04 22
off   4 8 | FE 6B 04 | AA 03 FE 6B 04 1A
read  4 8 | FE 7B 04 | AA 03 FE 7B 04 2A
on   32 1 | FE 6C 20 | AA 03 FE 6C 20 37
off  32 1 | FE 64 20 | AA 03 FE 64 20 2F
read 32 1 | FE 74 20 | AA 03 FE 74 20 3F
";

/// The driver encodes each command of the table to exactly its literal bytes, and the
/// simulator decodes exactly those literal bytes to the same command: a wrong byte on
/// either side fails here, independently of the other side.
#[test]
fn proxr_golden_bytes_for_driver_and_simulator() {
    use mozpool::hw::relay::proxr::{Command, Reply, decode_reply};
    use mozpool::hw::sim::proxr::{Decoded, SimCommand, decode, reply_frame};
    let mut rows = 0;
    for line in PROXR_GOLDEN.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let head: Vec<&str> = cols[0].split_whitespace().collect();
        let (bank, relay): (u8, u8) = (
            head[1].parse().expect("bank"),
            head[2].parse().expect("relay"),
        );
        let (cmd, sim) = match head[0] {
            "test" => (Command::Test, SimCommand::Test),
            "on" => (Command::On { bank, relay }, SimCommand::On { bank, relay }),
            "off" => (
                Command::Off { bank, relay },
                SimCommand::Off { bank, relay },
            ),
            "read" => (
                Command::Read { bank, relay },
                SimCommand::Read { bank, relay },
            ),
            other => panic!("unknown op {other}"),
        };
        let (raw, api) = (hex(cols[1]), hex(cols[2]));
        assert_eq!(cmd.encode(Framing::Raw), raw, "driver raw: {line}");
        assert_eq!(cmd.encode(Framing::Api), api, "driver api: {line}");
        assert_eq!(
            decode(SimFraming::Raw, &raw),
            Decoded::Command(sim, raw.len()),
            "sim raw: {line}"
        );
        assert_eq!(
            decode(SimFraming::Api, &api),
            Decoded::Command(sim, api.len()),
            "sim api: {line}"
        );
        rows += 1;
    }
    assert_eq!(rows, 31);
    // Replies (§2.1 `55`, `00`/`01`; §2.2 `AA 01 55 00`, `AA 01 00 AB`).
    let on = Command::On { bank: 1, relay: 1 };
    let rd = Command::Read { bank: 1, relay: 1 };
    for (framing, sim_framing, ack, off, energised) in [
        (Framing::Raw, SimFraming::Raw, "55", "00", "01"),
        (
            Framing::Api,
            SimFraming::Api,
            "AA 01 55 00",
            "AA 01 00 AB",
            "AA 01 01 AC",
        ),
    ] {
        assert_eq!(reply_frame(sim_framing, 0x55), hex(ack));
        assert_eq!(reply_frame(sim_framing, 0x00), hex(off));
        assert_eq!(reply_frame(sim_framing, 0x01), hex(energised));
        assert_eq!(decode_reply(on, framing, &hex(ack)), Ok(Reply::Ack));
        assert_eq!(
            decode_reply(rd, framing, &hex(off)),
            Ok(Reply::State(false))
        );
        assert_eq!(
            decode_reply(rd, framing, &hex(energised)),
            Ok(Reply::State(true))
        );
    }
}

/// LCUS (§2.3): `A0 ch state sum`, for channels 1..=8, on and off.
#[test]
fn lcus_golden_bytes_for_driver_and_simulator() {
    use mozpool::hw::relay::lcus::encode;
    use mozpool::hw::sim::lcus::{LcusDecoded, decode};
    let table = [
        (1, "A0 01 01 A2", "A0 01 00 A1"),
        (2, "A0 02 01 A3", "A0 02 00 A2"),
        (3, "A0 03 01 A4", "A0 03 00 A3"),
        (4, "A0 04 01 A5", "A0 04 00 A4"),
        (5, "A0 05 01 A6", "A0 05 00 A5"),
        (6, "A0 06 01 A7", "A0 06 00 A6"),
        (7, "A0 07 01 A8", "A0 07 00 A7"),
        (8, "A0 08 01 A9", "A0 08 00 A8"),
    ];
    for (ch, on, off) in table {
        assert_eq!(encode(ch, true).to_vec(), hex(on), "driver on {ch}");
        assert_eq!(encode(ch, false).to_vec(), hex(off), "driver off {ch}");
        assert_eq!(
            decode(&hex(on)),
            LcusDecoded::Frame(ch, true),
            "sim on {ch}"
        );
        assert_eq!(
            decode(&hex(off)),
            LcusDecoded::Frame(ch, false),
            "sim off {ch}"
        );
    }
}

/// What the real driver puts on the wire for each operation, byte for byte, as the
/// simulator received it.
#[tokio::test]
async fn proxr_driver_wire_bytes_per_operation() {
    for framing in [Framing::Raw, Framing::Api] {
        let sim = sim_pty(framing);
        let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, framing)]).expect("start");
        let a = addr("r1:bank2:relay3");
        let frames = |raw: &[&str], api: &[&str]| -> Vec<Vec<u8>> {
            let pick = if framing == Framing::Raw { raw } else { api };
            pick.iter().map(|s| hex(s)).collect()
        };
        boards.power_off(&a).await.expect("off");
        assert_eq!(
            sim.frames(),
            frames(
                &["FE 6E 02", "FE 76 02"],
                &["AA 03 FE 6E 02 1B", "AA 03 FE 76 02 23"]
            ),
            "{framing:?} power off = energise + read"
        );
        sim.clear_log();
        boards.power_on(&a).await.expect("on");
        assert_eq!(
            sim.frames(),
            frames(
                &["FE 66 02", "FE 76 02"],
                &["AA 03 FE 66 02 13", "AA 03 FE 76 02 23"]
            ),
            "{framing:?} power on = release + read"
        );
        sim.clear_log();
        assert_eq!(boards.power_state(&a).await.expect("state"), Some(true));
        boards.test(&name("r1")).await.expect("test");
        assert_eq!(
            sim.frames(),
            frames(
                &["FE 76 02", "FE 21"],
                &["AA 03 FE 76 02 23", "AA 02 FE 21 CB"]
            ),
            "{framing:?} read, test"
        );
    }
}

fn banks_cfg(board: &str, sim: &SimProxrBoard, banks: u8) -> BoardConfig {
    let mut c = pty_cfg(board, sim, Framing::Raw);
    if let BoardKind::Proxr { banks: b, .. } = &mut c.kind {
        *b = banks;
    }
    c
}

#[tokio::test]
async fn bank_count_is_honoured_by_driver_and_simulator() {
    let sim = SimProxrBoard::on_pty(SimProxrConfig::default().with_banks(1)).expect("pty");
    // The driver knows the board has one bank: bank 2 is refused before anything is sent.
    let boards = RelayBoards::start(vec![banks_cfg("one", &sim, 1)]).expect("start");
    boards
        .power_off(&addr("one:bank1:relay8"))
        .await
        .expect("bank 1");
    sim.clear_log();
    let e = boards
        .power_off(&addr("one:bank2:relay1"))
        .await
        .expect_err("no bank 2");
    assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    assert!(e.to_string().contains("banks 1..=1"), "{e}");
    assert!(sim.frames().is_empty());
    // Misconfigured as 4 banks: the simulated 1-bank board ignores the command (§7.1), so
    // the driver times out instead of believing a relay moved.
    let sim = SimProxrBoard::on_pty(SimProxrConfig::default().with_banks(1)).expect("pty");
    let wrong = RelayBoards::start(vec![banks_cfg("wrong", &sim, 4)]).expect("start");
    let e = wrong
        .power_off(&addr("wrong:bank2:relay1"))
        .await
        .expect_err("unconfigured bank");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(!sim.energised(2, 1));
    assert_eq!(sim.frames(), vec![hex("FE 6C 02")], "sent, never answered");
}

#[tokio::test]
async fn tcp_simulator_closes_on_an_unconfigured_bank() {
    let sim = SimProxrBoard::on_tcp(SimProxrConfig::default().with_banks(1)).expect("tcp");
    let a = sim.tcp_addr().expect("tcp");
    let mut c = tcp_cfg("t", &sim, Framing::Raw);
    c.retries = 0;
    let boards = RelayBoards::start(vec![c]).expect("start");
    let e = boards
        .power_off(&addr(&format!("127.0.0.1:{}:bank3:relay1", a.port())))
        .await
        .expect_err("closed without reply");
    assert!(matches!(e, Error::NoReply { .. }), "{e}");
}

#[tokio::test]
async fn two_boards_behind_one_host_need_a_port_or_a_name() {
    let a = sim_tcp(Framing::Raw);
    let b = sim_tcp(Framing::Raw);
    let boards = RelayBoards::start(vec![
        tcp_cfg("ts-a", &a, Framing::Raw),
        tcp_cfg("ts-b", &b, Framing::Raw),
    ])
    .expect("start");
    let e = boards
        .power_off(&addr("127.0.0.1:bank1:relay1"))
        .await
        .expect_err("ambiguous");
    let msg = e.to_string();
    assert!(matches!(e, Error::BadAddress { .. }), "{msg}");
    assert!(
        msg.contains("ts-a (127.0.0.1:") && msg.contains("ts-b (127.0.0.1:"),
        "{msg}"
    );
    assert!(a.log().is_empty() && b.log().is_empty());
    let port_b = b.tcp_addr().expect("tcp").port();
    boards
        .power_off(&addr(&format!("127.0.0.1:{port_b}:bank1:relay1")))
        .await
        .expect("host:port is one board");
    assert!(b.energised(1, 1) && !a.energised(1, 1));
    boards
        .power_off(&addr("ts-a:bank1:relay2"))
        .await
        .expect("by name");
    assert!(a.energised(1, 2));
}

#[tokio::test]
async fn lcus_simulator_ignores_channels_it_does_not_have() {
    let sim = SimLcusBoard::start(2).expect("lcus sim");
    // Configured with more channels than the board has: the frame goes out, nothing moves.
    let cfg = fast(BoardConfig::new(
        name("usb1"),
        BoardKind::Lcus {
            path: sim.path().to_path_buf(),
            channels: 4,
            baud: 9600,
        },
    ));
    let boards = RelayBoards::start(vec![cfg]).expect("start");
    boards
        .power_off(&addr("usb1:bank1:relay4"))
        .await
        .expect("written");
    let t = Instant::now();
    while sim.ignored_frames() == 0 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.ignored_frames(), 1);
    assert!(sim.log().is_empty());
}

/// Board for the power-cycle ordering tests: a serial board (no cool-down), 4 s budget.
fn cycling(board: &str, sim: &SimProxrBoard) -> BoardConfig {
    let mut c = pty_cfg(board, sim, Framing::Raw);
    c.op_timeout = Duration::from_secs(4);
    c
}

fn sets(log: &[SimAction]) -> Vec<(u8, u8, bool)> {
    log.iter()
        .filter_map(|a| match *a {
            SimAction::Set {
                bank,
                relay,
                energised,
            } => Some((bank, relay, energised)),
            _ => None,
        })
        .collect()
}

/// The off time is waited outside the board's queue: every relay of a board is switched
/// off before the first one is switched back on.
#[tokio::test]
async fn concurrent_cycles_on_one_board_overlap_their_off_times() {
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![cycling("r1", &sim)]).expect("start");
    let addrs: Vec<RelayAddr> = (1..=8)
        .map(|r| addr(&format!("r1:bank1:relay{r}")))
        .chain((1..=8).map(|r| addr(&format!("r1:bank2:relay{r}"))))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for a in addrs.clone() {
        let boards = boards.clone();
        tasks.spawn(async move { boards.power_cycle(&a, Duration::from_millis(500)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("cycle");
    }
    let s = sets(&sim.log());
    assert_eq!(s.len(), 32);
    assert!(
        s[..16].iter().all(|x| x.2) && s[16..].iter().all(|x| !x.2),
        "all 16 off before any on: {s:?}"
    );
    for a in &addrs {
        let mozpool::hw::relay::Channel::Relay { bank, relay } = a.channel else {
            panic!("relay");
        };
        assert!(!sim.energised(bank, relay));
    }
}

/// A power-off arriving during a cycle's off time wins: the pending restore is cancelled
/// and the cycle reports it.
#[tokio::test]
async fn power_off_during_the_off_time_is_not_undone() {
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![cycling("r1", &sim)]).expect("start");
    let a = addr("r1:bank1:relay5");
    let (cycle, off) = tokio::join!(boards.power_cycle(&a, Duration::from_millis(400)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        boards.power_off(&a).await
    });
    off.expect("power off");
    let e = cycle.expect_err("superseded");
    assert!(
        matches!(
            e,
            Error::Superseded {
                by: "power off",
                ..
            }
        ),
        "{e}"
    );
    // Well past the cycle's off time: the relay is still energised (device off).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(sim.energised(1, 5));
    assert_eq!(sets(&sim.log()), vec![(1, 5, true), (1, 5, true)]);
    assert_eq!(boards.power_state(&a).await.expect("state"), Some(false));
}

/// A power-on during the off time also cancels the pending restore (it already restored
/// power); the cycle reports that its off time was cut short.
#[tokio::test]
async fn power_on_during_the_off_time_cancels_the_restore() {
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![cycling("r1", &sim)]).expect("start");
    let a = addr("r1:bank1:relay6");
    let (cycle, on) = tokio::join!(boards.power_cycle(&a, Duration::from_millis(400)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        boards.power_on(&a).await
    });
    on.expect("power on");
    let e = cycle.expect_err("superseded");
    assert!(matches!(e, Error::Superseded { by: "power on", .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sets(&sim.log()), vec![(1, 6, true), (1, 6, false)]);
}

/// A second cycle during the first one's off time takes it over: the relay is released once,
/// a full off time after the second cycle switched it off, and both callers succeed then.
#[tokio::test]
async fn a_second_cycle_during_the_off_time_extends_it() {
    let sim = sim_pty(Framing::Raw);
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c2 = changes.clone();
    sim.set_hook(Arc::new(move |b, r, e| {
        c2.lock().expect("lock").push((b, r, e, Instant::now()))
    }));
    let boards = RelayBoards::start(vec![cycling("r1", &sim)]).expect("start");
    let a = addr("r1:bank1:relay7");
    let off = Duration::from_millis(400);
    let second_sent = Arc::new(Mutex::new(None));
    let s2 = second_sent.clone();
    let (first, second) = tokio::join!(boards.power_cycle(&a, off), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        *s2.lock().expect("lock") = Some(Instant::now());
        boards.power_cycle(&a, off).await
    });
    first.expect("first cycle");
    second.expect("second cycle");
    assert_eq!(
        sets(&sim.log()),
        vec![(1, 7, true), (1, 7, true), (1, 7, false)],
        "one release only"
    );
    let changes = changes.lock().expect("lock");
    assert_eq!(changes.len(), 2);
    let sent = second_sent.lock().expect("lock").expect("sent");
    // Ordering, not speed: power came back no sooner than the second cycle's off time.
    assert!(
        changes[1].3 >= sent + off,
        "released before the second off time ended"
    );
}

/// The restore belongs to the board thread: a caller that stops waiting (an HTTP client
/// hanging up) or dropping every handle does not leave the device unpowered.
#[tokio::test]
async fn power_comes_back_when_the_caller_stops_waiting() {
    let sim = sim_pty(Framing::Raw);
    let boards = RelayBoards::start(vec![cycling("r1", &sim)]).expect("start");
    let a = addr("r1:bank3:relay1");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        boards.power_cycle(&a, Duration::from_millis(300)),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the caller stopped waiting during the off time"
    );
    assert!(sim.energised(3, 1), "device off during its off time");
    drop(boards);
    let t = Instant::now();
    while sim.energised(3, 1) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sim.energised(3, 1), "power restored");
}

/// A cycle with too little budget left for its off time never switches the device off.
#[tokio::test]
async fn a_cycle_without_time_for_its_off_time_leaves_the_device_alone() {
    let sim = sim_tcp(Framing::Raw);
    let mut c = tcp_cfg("r1", &sim, Framing::Raw);
    // The module rests 700 ms after the first operation; a cycle queued behind it has
    // 400 + 1000 ms of budget, so 700 ms of waiting leaves less than its 1 s off time.
    c.cool_down = Duration::from_millis(700);
    let boards = RelayBoards::start(vec![c]).expect("start");
    let port = sim.tcp_addr().expect("tcp").port();
    let a = addr(&format!("127.0.0.1:{port}:bank1:relay1"));
    let b = addr(&format!("127.0.0.1:{port}:bank1:relay2"));
    let (r1, r2) = tokio::join!(boards.power_off(&a), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        boards.power_cycle(&b, Duration::from_secs(1)).await
    });
    r1.expect("first op");
    let e = r2.expect_err("no time for the off time");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        e.to_string().contains("no time left for the off time"),
        "{e}"
    );
    assert!(!sim.energised(1, 2), "never switched off");
    assert_eq!(sets(&sim.log()), vec![(1, 1, true)]);
}
