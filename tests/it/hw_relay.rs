//! Real relay drivers (ProXR serial/TCP raw/API, LCUS, GPIO) against the simulators,
//! including every injected fault.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mozpool::domain::names::BoardName;
use mozpool::hw::Error;
use mozpool::hw::relay::{
    BoardConfig, BoardKind, Contact, Framing, RelayAddr, RelayBoards, SimGpio, Transport,
};
use mozpool::hw::sim::{SimAction, SimLcusBoard, SimProxrBoard, SimRelayFaults};

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
            },
            framing,
        },
    ))
}

fn addr(s: &str) -> RelayAddr {
    s.parse().expect("valid relay address")
}

#[tokio::test]
async fn proxr_pty_power_cycle_sequence_is_off_read_on_read() {
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty sim");
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
    let sim = SimProxrBoard::on_tcp(Framing::Api).expect("tcp sim");
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
    let sim = SimProxrBoard::on_pty(Framing::Api).expect("pty sim");
    let boards = RelayBoards::start(vec![pty_cfg("r1", &sim, Framing::Raw)]).expect("start");
    let t = Instant::now();
    let e = boards.test(&name("r1")).await.expect_err("must fail");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn silent_board_fails_within_timeout_while_other_board_works() {
    let dead = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
    dead.set_faults(SimRelayFaults {
        never_reply: true,
        ..Default::default()
    });
    let good = SimProxrBoard::on_tcp(Framing::Raw).expect("tcp");
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
}

#[tokio::test]
async fn stuck_relay_is_detected_by_read_back() {
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
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
    let sim = SimProxrBoard::on_tcp(Framing::Raw).expect("tcp");
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
    let sim = SimProxrBoard::on_tcp(Framing::Raw).expect("tcp");
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
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
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
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
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
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
    std::os::unix::fs::symlink(sim.pty_path().expect("pty"), &link).expect("symlink");
    tokio::time::sleep(Duration::from_millis(250)).await;
    boards.test(&name("r1")).await.expect("reopened");
}

#[tokio::test]
async fn bad_addresses_are_refused_before_queueing() {
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
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
    let sim = SimLcusBoard::start().expect("lcus sim");
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
            pins: vec![],
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
    assert_eq!(
        gpio.log(),
        vec![(26, false), (26, false), (26, true), (5, true)]
    );
    let e = boards
        .power_on(&addr("hat:pin21"))
        .await
        .expect_err("pin not listed");
    assert!(matches!(e, Error::BadAddress { .. }), "{e}");
    gpio.set_failure(Some("Pin 26 is already in use".into()));
    let e = boards.test(&name("hat")).await.expect_err("injected");
    assert_eq!(e.to_string(), "GPIO unavailable: Pin 26 is already in use");
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
            pins: vec![],
        },
    ));
    let boards = RelayBoards::start(vec![cfg]).expect("start");
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
    let sim = SimProxrBoard::on_pty(Framing::Raw).expect("pty");
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
