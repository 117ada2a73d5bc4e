//! The real SUTAgent client and TCP probe against `SimSutAgent` and raw loopback peers,
//! covering every fault: refused, silent, slow, garbage, flood, reset, flaky, half-open.

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

#[tokio::test]
async fn storage_check_reuses_a_kept_session_or_opens_a_new_one() {
    let a = SimSutAgent::start(true, "id").expect("sim");
    // On the connection a verify left open: no second connection.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    let root = sut::check_storage_on(Some(s), a.addr(), T)
        .await
        .expect("storage on the kept session");
    assert_eq!(root, "/mnt/sdcard");
    settle().await;
    assert_eq!(a.connections(), 1);
    assert_eq!(
        a.commands(),
        ["ver", "testroot", "isdir /mnt/sdcard", "quit"]
    );
    // The agent went down and up again, closing the kept connection: the check is asked
    // on a new one instead of failing.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    a.set_up(false);
    a.set_up(true);
    settle().await;
    sut::check_storage_on(Some(s), a.addr(), T)
        .await
        .expect("storage on a new connection");
    assert_eq!(a.connections(), 3);
    // A garbage answer on the kept connection is the agent's failure, not a closed
    // connection: no retry.
    let mut s = sut::Session::open(a.addr(), T).await.expect("open");
    s.ver().await.expect("ver");
    a.set_faults(SimSutFaults {
        garbage: true,
        ..Default::default()
    });
    let e = sut::check_storage_on(Some(s), a.addr(), T)
        .await
        .expect_err("garbage");
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert_eq!(a.connections(), 4);
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
    sut::reboot(a.addr(), T)
        .await
        .expect("rebt drops the connection");
    assert_eq!(rebooted.load(Ordering::SeqCst), 1);
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

#[tokio::test]
async fn reboot_answered_with_prompt_is_an_error() {
    let addr = raw_peer(|mut s| {
        let _ = s.write_all(b"$>\0");
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"$>\0");
        std::thread::sleep(Duration::from_millis(100));
    });
    let e = sut::reboot(addr, T)
        .await
        .expect_err("agent did not reboot");
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
}
