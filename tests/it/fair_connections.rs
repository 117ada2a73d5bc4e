//! Fair connections: a crowd of anonymous long polls (or silent connections) cannot keep an
//! admin or the monitoring out. Clients come from several loopback addresses (127.0.0.x),
//! as a lab's machines would from theirs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::auth::{ADMIN_TOKEN, config_with_auth};
use crate::support::TestServer;

/// A connection to `addr` from the loopback address `127.0.0.{last}`.
async fn connect_from(last: u8, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from(([127, 0, 0, last], 0)))
        .expect("bind a loopback source address");
    sock.connect(addr).await.expect("connect")
}

/// A request head (no body) to `s`, with `extra` header lines.
fn head(s: &TestServer, method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        s.addr
    )
}

/// What came back on `stream` within `within`: `None` when nothing did.
async fn answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                // A whole answer: head plus the body its Content-Length announces.
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

fn status(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body(reply: &str) -> Value {
    reply
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// One call on a fresh connection from `127.0.0.{last}`: the reply and how long it took.
async fn call_from(
    s: &TestServer,
    last: u8,
    method: &str,
    path: &str,
    extra: &str,
) -> (String, Duration) {
    let started = Instant::now();
    let mut c = connect_from(last, s.addr).await;
    c.write_all(head(s, method, path, extra).as_bytes())
        .await
        .expect("write");
    let reply = answer(&mut c, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    (reply, started.elapsed())
}

/// A request that stays `finding_device` (nothing is ready on this rack-less config), so
/// long polls on its status wait.
async fn waiting_request(s: &TestServer) -> u64 {
    let r = s
        .http
        .post(s.url("/api/device/any/request/"))
        .bearer_auth(ADMIN_TOKEN)
        .body(
            json!({"assignee": "ci", "duration": 600, "image": "b2g", "b2gbase": "http://x/"})
                .to_string(),
        )
        .send()
        .await
        .expect("create");
    let (code, v) = crate::support::decode(r).await;
    assert_eq!(code, 200, "{v}");
    v["request"]["id"].as_u64().expect("id")
}

/// Health and an admin's call, each on a new connection, each answered within a second.
async fn health_and_admin_answer_fast(s: &TestServer, from: u8) {
    let (reply, took) = call_from(s, from, "GET", "/api/health/", "").await;
    assert_eq!(status(&reply), 200, "{reply}");
    assert!(took < Duration::from_secs(1), "health took {took:?}");
    let (reply, took) = call_from(
        s,
        from,
        "GET",
        "/api/device/panda-1/details/",
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status(&reply), 200, "{reply}");
    assert!(
        took < Duration::from_secs(1),
        "the admin call took {took:?}"
    );
}

/// 600 anonymous long polls from 60 loopback addresses (10 each, within every per-client
/// cap): they may hold half of the unreserved slots and no more (the rest are told 503 with
/// `Retry-After`); health and an admin's call are answered within a second. Then silent
/// connections fill every unreserved slot: an anonymous caller is told 503 `busy`, and
/// health and the admin are still answered within a second, through the reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_long_polls_do_not_lock_out_health_and_admins() {
    let s = TestServer::start(&format!(
        "[server]\nheader_timeout_secs = 30\n{}",
        config_with_auth("read")
    ))
    .await;
    let id = waiting_request(&s).await;
    let limits = std::sync::Arc::clone(&s.app.limits);
    let settings = limits.settings();
    assert_eq!(
        (settings.max_connections, settings.reserved_connections),
        (512, 32)
    );
    let poll = head(
        &s,
        "GET",
        &format!("/api/request/{id}/status/?wait=300"),
        "",
    );
    let mut polls = Vec::new();
    for n in 0..600u32 {
        let last = 2 + u8::try_from(n % 60).expect("small");
        let mut c = connect_from(last, s.addr).await;
        c.write_all(poll.as_bytes()).await.expect("write");
        polls.push(c);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in polls {
        tasks.spawn(async move {
            let reply = answer(&mut c, Duration::from_secs(4)).await;
            (reply, c)
        });
    }
    let mut held = Vec::new();
    let mut busy = 0;
    while let Some(r) = tasks.join_next().await {
        let (reply, c) = r.expect("task");
        match reply {
            None => held.push(c),
            Some(reply) => {
                assert_eq!(status(&reply), 503, "{reply}");
                assert!(
                    reply.to_ascii_lowercase().contains("retry-after: 5"),
                    "{reply}"
                );
                assert_eq!(body(&reply)["code"], "busy", "{reply}");
                busy += 1;
            }
        }
    }
    assert_eq!(held.len(), settings.long_polls(), "long polls held");
    assert_eq!(busy, 600 - settings.long_polls());
    assert_eq!(limits.long_polls_open(), settings.long_polls());
    health_and_admin_answer_fast(&s, 1).await;
    // An anonymous short call still finds room.
    let (reply, _) = call_from(&s, 1, "GET", "/api/device/list/", "").await;
    assert_eq!(status(&reply), 200, "{reply}");

    // Silent connections (never a request head) from a few more addresses take every
    // unreserved slot that is left.
    // (Connections of the calls above may still be closing: add until none is left.)
    let mut silent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let free = limits.general_free();
        if free == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if limits.general_free() == 0 {
                break;
            }
            continue;
        }
        for _ in 0..free {
            let last = 100 + u8::try_from(silent.len() / 60).expect("small");
            silent.push(connect_from(last, s.addr).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        limits.general_free(),
        0,
        "the unreserved slots are all taken"
    );
    let (reply, _) = call_from(&s, 1, "GET", "/api/device/list/", "").await;
    assert_eq!(status(&reply), 503, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after:"),
        "{reply}"
    );
    assert_eq!(body(&reply)["code"], "busy");
    health_and_admin_answer_fast(&s, 1).await;
    drop(silent);
    drop(held);
}

/// One address over its own caps: long polls past `max_long_polls_per_client` and
/// connections past `max_connections_per_client` are told 429 with `Retry-After` and a JSON
/// body; the same address's admin (a token) is still served, and other addresses are not
/// affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_caps_gets_429() {
    let s = TestServer::start(&format!(
        "[server]\nheader_timeout_secs = 30\nmax_connections_per_client = 6\nmax_long_polls_per_client = 3\n{}",
        config_with_auth("read")
    ))
    .await;
    let id = waiting_request(&s).await;
    let poll = head(
        &s,
        "GET",
        &format!("/api/request/{id}/status/?wait=300"),
        "",
    );
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..5 {
        let mut c = connect_from(7, s.addr).await;
        c.write_all(poll.as_bytes()).await.expect("write");
        match answer(&mut c, Duration::from_millis(700)).await {
            None => held.push(c),
            Some(reply) => refused.push(reply),
        }
    }
    assert_eq!(held.len(), 3, "{refused:?}");
    assert_eq!(refused.len(), 2);
    for reply in &refused {
        assert_eq!(status(reply), 429, "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("retry-after: 5"),
            "{reply}"
        );
        let b = body(reply);
        assert_eq!(b["code"], "too_many_requests", "{reply}");
        assert!(
            b["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_long_polls_per_client")),
            "{b}"
        );
    }
    // Another address may long-poll as before.
    let mut other = connect_from(8, s.addr).await;
    other.write_all(poll.as_bytes()).await.expect("write");
    assert!(
        answer(&mut other, Duration::from_millis(700))
            .await
            .is_none(),
        "another address's long poll waits"
    );
    // Three more silent connections fill the address's quota of 6 ...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(7, s.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... so its next anonymous call is refused, while its admin call is served.
    let (reply, _) = call_from(&s, 7, "GET", "/api/device/list/", "").await;
    assert_eq!(status(&reply), 429, "{reply}");
    assert!(
        body(&reply)["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_connections_per_client")),
        "{reply}"
    );
    let (reply, took) = call_from(
        &s,
        7,
        "PUT",
        "/api/environment/staging/",
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    )
    .await;
    assert!(matches!(status(&reply), 200 | 201), "{reply}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (reply, _) = call_from(&s, 7, "GET", "/api/health/", "").await;
    assert_eq!(status(&reply), 200, "{reply}");
    let (reply, _) = call_from(&s, 9, "GET", "/api/device/list/", "").await;
    assert_eq!(status(&reply), 200, "another address is served: {reply}");
    // Once the address lets go, it is served again.
    drop(silent);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (reply, _) = call_from(&s, 7, "GET", "/api/device/list/", "").await;
        if status(&reply) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(other);
}
