//! The real SUTAgent client and TCP probe against `SimSutAgent` and raw loopback peers,
//! covering every fault: refused, silent, slow, garbage, flood, reset, flaky, half-open; the
//! storage check's writes (a read-only or corrupting card fails it); `rebt` counted as sent
//! whatever the agent does after it, and the reboot confirmed by the uptime or by the agent
//! going away and coming back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mozpool::hw::Error;
use mozpool::hw::ping::{self, Reachability};
use mozpool::hw::sim::{SimSutAgent, SimSutFaults};
use mozpool::hw::sut;

const T: Duration = Duration::from_millis(300);
/// For the storage check's nine exchanges.
const TS: Duration = Duration::from_secs(3);

/// Wait until the agent's listener reflects its up/down state.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[tokio::test]
async fn verify_reads_split_prompt_and_parses_version() {
    let a = SimSutAgent::start(true, "00:11:22:33:44:55").expect("sim");
    let info = sut::verify(a.addr(), T).await.expect("verify");
    assert_eq!(info.agent, "SUTAgentAndroid");
    assert_eq!(info.version, "1.16");
    a.set_split_prompt(false);
    sut::verify(a.addr(), T).await.expect("verify unsplit");
    settle().await;
    let cmds = a.commands();
    assert_eq!(cmds, vec!["ver", "quit", "ver", "quit"]);
}

const CHECK_PATH: &str = "/mnt/sdcard/tests/mozpool-storage-check";

#[tokio::test]
async fn storage_check_reuses_a_kept_session_or_opens_a_new_one() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    // On the connection a verify left open: no second connection.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    let root = sut::check_storage_on(Some(s), a.addr(), TS)
        .await
        .expect("storage on the kept session");
    assert_eq!(root, "/mnt/sdcard");
    settle().await;
    assert_eq!(a.connections(), 1);
    let cmds = a.commands();
    assert_eq!(
        cmds[..6],
        [
            "ver",
            "testroot",
            "isdir /mnt/sdcard",
            "isdir /mnt/sdcard/tests",
            "mkdr /mnt/sdcard/tests",
            "isdir /mnt/sdcard/tests",
        ]
    );
    assert!(
        cmds[6].starts_with(&format!("push {CHECK_PATH} ")),
        "{cmds:?}"
    );
    assert_eq!(
        cmds[7..],
        [
            format!("hash {CHECK_PATH}"),
            format!("rm {CHECK_PATH}"),
            "quit".to_owned()
        ]
    );
    assert!(a.is_dir("/mnt/sdcard/tests"));
    assert!(a.files().is_empty(), "the check file is removed");
    // The agent went down and up again, closing the kept connection: the check is asked
    // on a new one instead of failing. The tests directory exists now: no mkdr.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    a.set_up(false);
    a.set_up(true);
    settle().await;
    let before = a.commands().len();
    sut::check_storage_on(Some(s), a.addr(), TS)
        .await
        .expect("storage on a new connection");
    assert_eq!(a.connections(), 3);
    settle().await;
    assert!(
        !a.commands()[before..].iter().any(|c| c.starts_with("mkdr")),
        "{:?}",
        a.commands()
    );
    // A garbage answer on the kept connection is the agent's failure, not a closed
    // connection: no retry.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    a.set_faults(SimSutFaults {
        garbage: true,
        ..Default::default()
    });
    let e = sut::check_storage_on(Some(s), a.addr(), TS)
        .await
        .expect_err("garbage");
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert_eq!(a.connections(), 4);
}

#[tokio::test]
async fn a_read_only_card_fails_the_storage_check() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    // A fresh read-only card: the tests directory cannot even be made.
    a.set_faults(SimSutFaults {
        storage_read_only: true,
        ..Default::default()
    });
    let e = sut::check_storage(a.addr(), TS)
        .await
        .expect_err("read-only card");
    assert!(
        matches!(&e, Error::AgentWarning(w) if w.contains("mkdr /mnt/sdcard/tests")
            && w.contains("Could not create the directory")),
        "{e}"
    );
    // The directory exists (made while writable) and the card then turns read-only: the
    // reads still pass, the push is refused with the agent's warning.
    a.set_faults(SimSutFaults::default());
    sut::check_storage(a.addr(), TS)
        .await
        .expect("writable card");
    a.set_faults(SimSutFaults {
        storage_read_only: true,
        ..Default::default()
    });
    let e = sut::check_storage(a.addr(), TS)
        .await
        .expect_err("read-only card");
    assert!(
        matches!(&e, Error::AgentWarning(w) if w.starts_with(&format!("push {CHECK_PATH} "))
            && w.ends_with("Push failed!")),
        "{e}"
    );
    assert!(e.to_string().starts_with("SUTAgent warning: push "), "{e}");
    assert!(a.files().is_empty());
    settle().await;
    // The agent refused the push without reading the file's bytes, so it read them as the
    // start of a command line: harmless, an unknown command.
    assert!(
        a.commands()
            .iter()
            .any(|c| c.starts_with("mozpool-storage-check ")),
        "{:?}",
        a.commands()
    );
    a.set_faults(SimSutFaults::default());
    sut::check_storage(a.addr(), TS)
        .await
        .expect("writable again");
}

#[tokio::test]
async fn a_card_that_corrupts_writes_fails_the_storage_check() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    a.set_faults(SimSutFaults {
        storage_corrupt: true,
        ..Default::default()
    });
    let e = sut::check_storage(a.addr(), TS)
        .await
        .expect_err("corrupt card");
    assert!(
        matches!(&e, Error::BadReply { op, expected, .. }
            if op.starts_with("push ") && expected.contains("of the bytes pushed")),
        "{e}"
    );
    assert_eq!(a.files().len(), 1, "left for a tech to look at");
}

#[tokio::test]
async fn uptime_and_reboot_hook() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let up = sut::uptime_millis(a.addr(), T).await.expect("uptime");
    assert!(up >= 50, "{up}");
    let rebooted = Arc::new(AtomicUsize::new(0));
    let r2 = rebooted.clone();
    a.set_on_reboot(Arc::new(move || {
        r2.fetch_add(1, Ordering::SeqCst);
    }));
    let sent = sut::reboot(a.addr(), T)
        .await
        .expect("rebt drops the connection");
    assert_eq!(sent.ack, sut::RebootAck::Dropped);
    assert!(sent.uptime_before.is_some_and(|u| u >= up), "{sent}");
    assert_eq!(rebooted.load(Ordering::SeqCst), 1);
    settle().await;
    let cmds = a.commands();
    assert_eq!(cmds[cmds.len() - 2..], ["info uptimemillis", "rebt"]);
}

#[tokio::test]
async fn reboot_is_confirmed_by_the_uptime_dropping() {
    // Without a hook the simulated device restarts its uptime and stays reachable.
    let a = SimSutAgent::start(true, "id").expect("sim");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = sut::reboot(a.addr(), T).await.expect("rebt");
    let before = sent.uptime_before.expect("uptime before");
    let seen = sut::confirm_rebooted(a.addr(), Some(before), Duration::from_secs(10))
        .await
        .expect("confirmed");
    assert!(
        matches!(seen, sut::Rebooted::UptimeDropped { before: b, now } if b == before && now < before),
        "{seen:?}"
    );
}

#[tokio::test]
async fn reboot_is_confirmed_by_the_agent_going_away_and_coming_back() {
    let a = Arc::new(SimSutAgent::start(true, "id").expect("sim"));
    a.set_on_reboot(Arc::new(|| {}));
    let sent = sut::reboot(a.addr(), T).await.expect("rebt");
    a.set_up(false);
    let back = a.clone();
    let comes_back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        back.set_up(true);
    });
    // No uptime to compare with: only the agent's absence and return tell.
    let seen = sut::confirm_rebooted(a.addr(), None, Duration::from_secs(10))
        .await
        .expect("confirmed");
    assert!(
        matches!(seen, sut::Rebooted::CameBack { uptime: Some(_) }),
        "{seen:?}"
    );
    comes_back.await.expect("task");
    assert!(sent.uptime_before.is_some());
}

#[tokio::test]
async fn a_reboot_that_does_not_happen_is_not_confirmed() {
    // The agent takes `rebt` and nothing happens: it stays up, its uptime keeps growing.
    let a = SimSutAgent::start(true, "id").expect("sim");
    a.set_on_reboot(Arc::new(|| {}));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let sent = sut::reboot(a.addr(), T).await.expect("rebt was sent");
    let e = sut::confirm_rebooted(a.addr(), sent.uptime_before, Duration::from_secs(1))
        .await
        .expect_err("no reboot");
    assert!(
        matches!(&e, Error::Timeout { op, .. } if op.contains("the agent stayed up")),
        "{e}"
    );
    // It goes away and never comes back within the limit.
    a.set_up(false);
    settle().await;
    let e = sut::confirm_rebooted(a.addr(), sent.uptime_before, Duration::from_secs(1))
        .await
        .expect_err("not back");
    assert!(
        matches!(&e, Error::Timeout { op, .. } if op.contains("went away and has not come back")),
        "{e}"
    );
}

#[tokio::test]
async fn refused_when_down_and_probe_tells_open_from_refused() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    assert_eq!(
        ping::probe(a.addr(), T).await.expect("open"),
        Reachability::Open
    );
    a.set_up(false);
    settle().await;
    let t = Instant::now();
    let e = sut::verify(a.addr(), T).await.expect_err("down");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(t.elapsed() < T);
    assert_eq!(
        ping::probe(a.addr(), T).await.expect("refused"),
        Reachability::Refused
    );
    a.set_up(true);
    settle().await;
    sut::verify(a.addr(), T)
        .await
        .expect("back up on the same port");
    a.set_faults(SimSutFaults {
        refuse: true,
        ..Default::default()
    });
    settle().await;
    assert!(sut::verify(a.addr(), T).await.is_err());
}

async fn expect_fault(f: SimSutFaults, check: impl Fn(&Error) -> bool) {
    let a = SimSutAgent::start(true, "id").expect("sim");
    a.set_faults(f.clone());
    let t = Instant::now();
    let e = sut::verify(a.addr(), T).await.expect_err("fault must fail");
    assert!(check(&e), "{f:?}: {e}");
    assert!(
        t.elapsed() < T + Duration::from_millis(100),
        "{f:?} took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn silent_agent_times_out() {
    expect_fault(
        SimSutFaults {
            silent: true,
            ..Default::default()
        },
        |e| matches!(e, Error::Timeout { .. }),
    )
    .await;
}

#[tokio::test]
async fn slow_agent_times_out() {
    expect_fault(
        SimSutFaults {
            reply_delay_ms: 200,
            ..Default::default()
        },
        |e| matches!(e, Error::Timeout { .. }),
    )
    .await;
}

#[tokio::test]
async fn garbage_reply_is_bad_reply() {
    expect_fault(
        SimSutFaults {
            garbage: true,
            ..Default::default()
        },
        |e| matches!(e, Error::BadReply { .. }),
    )
    .await;
}

#[tokio::test]
async fn flood_is_capped() {
    expect_fault(
        SimSutFaults {
            flood: true,
            ..Default::default()
        },
        |e| matches!(e, Error::TooLarge { .. }),
    )
    .await;
}

#[tokio::test]
async fn reset_mid_reply_is_no_reply() {
    expect_fault(
        SimSutFaults {
            reset_mid_reply: true,
            ..Default::default()
        },
        |e| matches!(e, Error::NoReply { .. } | Error::Io { .. }),
    )
    .await;
}

#[tokio::test]
async fn flaky_agent_follows_its_probability() {
    expect_fault(
        SimSutFaults {
            answer_probability: Some(0.0),
            ..Default::default()
        },
        |e| matches!(e, Error::NoReply { .. } | Error::Io { .. }),
    )
    .await;
    let a = SimSutAgent::start(true, "id").expect("sim");
    a.set_faults(SimSutFaults {
        answer_probability: Some(1.0),
        ..Default::default()
    });
    sut::verify(a.addr(), T)
        .await
        .expect("p = 1 always answers");
}

/// A one-shot raw peer: accepts one connection and runs `f` on it.
fn raw_peer(f: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            f(s);
        }
    });
    addr
}

#[tokio::test]
async fn half_open_peer_times_out() {
    // Accepts, reads our bytes, never writes, never closes.
    let addr = raw_peer(|mut s| {
        let mut b = [0u8; 64];
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.read(&mut b);
        std::thread::sleep(Duration::from_secs(1));
    });
    let t = Instant::now();
    let e = sut::verify(addr, T).await.expect_err("half-open");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < T + Duration::from_millis(100));
}

#[tokio::test]
async fn prompt_then_close_is_no_reply_and_warning_is_an_error() {
    let addr = raw_peer(|mut s| {
        let _ = s.write_all(b"$>\0");
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    let e = sut::verify(addr, T).await.expect_err("closed");
    assert!(matches!(e, Error::NoReply { .. }), "{e}");

    let addr = raw_peer(|mut s| {
        let _ = s.write_all(b"$>\0");
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"##AGENT-WARNING## [ver] command is currently not implemented.\n$>\0");
        std::thread::sleep(Duration::from_millis(100));
    });
    let e = sut::verify(addr, T).await.expect_err("warning");
    assert!(matches!(e, Error::AgentWarning(_)), "{e}");
}

/// A raw agent: greets, answers `info uptimemillis` with `uptime`, then does `after_rebt`
/// with the connection once `rebt` arrives.
fn raw_agent(after_rebt: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    raw_peer(move |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"$>\0");
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        let mut answered = false;
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                return;
            }
            got.extend_from_slice(&b[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if !answered && text.contains("info uptimemillis\r\n") {
                let _ = s.write_all(b"123456\n$>\0");
                answered = true;
            }
            if text.contains("rebt\r\n") {
                after_rebt(s);
                return;
            }
        }
    })
}

#[tokio::test]
async fn rebt_is_sent_whatever_the_agent_does_next() {
    // Answers with a prompt (and does not reboot, maybe): sent; confirming is another step.
    let addr = raw_agent(|mut s| {
        let _ = s.write_all(b"$>\0");
        std::thread::sleep(Duration::from_millis(100));
    });
    let sent = sut::reboot(addr, T).await.expect("answered");
    assert_eq!(sent.ack, sut::RebootAck::Answered(String::new()));
    assert_eq!(sent.uptime_before, Some(123_456));
    // Closes the connection (the device going down under it).
    let addr = raw_agent(|s| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let sent = sut::reboot(addr, T).await.expect("closed");
    assert_eq!(sent.ack, sut::RebootAck::Dropped);
    // Resets it: closed with `rebt` still unread, so the kernel answers with a reset.
    let addr = raw_peer(|mut s| {
        let _ = s.write_all(b"$>\0");
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"99\n$>\0");
        std::thread::sleep(Duration::from_millis(100));
    });
    let sent = sut::reboot(addr, T).await.expect("reset");
    assert_eq!(sent.ack, sut::RebootAck::Dropped);
    assert_eq!(sent.uptime_before, Some(99));
    // Says nothing and keeps the connection open.
    let addr = raw_agent(|_s| std::thread::sleep(Duration::from_secs(1)));
    let sent = sut::reboot(addr, T).await.expect("silent");
    assert_eq!(sent.ack, sut::RebootAck::Silent);
    assert!(
        sent.to_string().contains("uptime before: 123456 ms"),
        "{sent}"
    );
    // Only failing to reach it is a failure.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let e = sut::reboot(gone, T).await.expect_err("refused");
    assert!(matches!(e, Error::Io { .. }), "{e}");
}
