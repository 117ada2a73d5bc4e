//! Hostile input: oversized, malformed, slow and injected requests are answered with 4xx (or
//! the connection is cut) and change nothing. Timeouts are scaled down to one second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{ADMIN_TOKEN, config_with_auth};
use crate::support::{TWO_DEVICES, TestServer};

/// Short timeouts for the slow-client tests.
fn fast_config(extra: &str) -> String {
    format!("[server]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n{extra}\n{TWO_DEVICES}")
}

/// Send raw bytes, read until the server closes (at most 10 s).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    raw_bytes(addr, request.as_bytes()).await
}

async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let _ = sock.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// What must not have changed: the inventory as the config made it.
async fn assert_inventory_untouched(s: &TestServer) {
    let (_, list) = s.get("/api/device/list/?details=1&include_retired=1").await;
    let devices = list["devices"].as_array().expect("devices");
    let names: Vec<&str> = devices.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["panda-1", "panda-2"], "{list}");
    for d in devices {
        assert_eq!(d["comments"], Value::Null, "{d}");
        assert_eq!(d["retired"], false, "{d}");
    }
    assert_eq!(devices[0]["environment"], "prod");
    let (_, images) = s.get("/api/image/list/").await;
    assert_eq!(
        images["images"].as_array().map(Vec::len),
        Some(1),
        "{images}"
    );
    let (_, envs) = s.get("/api/environment/list/").await;
    assert_eq!(envs["environments"], json!(["prod"]), "{envs}");
}

#[tokio::test]
async fn huge_header_is_refused() {
    let s = TestServer::start(TWO_DEVICES).await;
    let big = "a".repeat(100 * 1024);
    let reply = raw(
        s.addr,
        &format!("GET /api/version/ HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    // Many small headers add up the same way.
    let many: String = (0..5000).map(|i| format!("X-H{i}: {i:020}\r\n")).collect();
    let reply = raw(
        s.addr,
        &format!("GET /api/version/ HTTP/1.1\r\nHost: localhost\r\n{many}\r\n"),
    )
    .await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    // The server is still fine.
    assert_eq!(s.get("/api/version/").await.0, 200);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let s = TestServer::start(&fast_config("")).await;
    let started = Instant::now();
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(b"GET /api/version/ HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("partial head");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // An idle keep-alive connection after a request does not stay open forever either.
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(b"GET /api/version/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "idle keep-alive connection still open after 5 s"
    );
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn slow_body_is_cut_off_and_nothing_stored() {
    let s = TestServer::start(&fast_config("")).await;
    let started = Instant::now();
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(
        b"POST /api/device/panda-1/set-comments/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 200\r\n\r\n{\"comments\": \"dribb",
    )
    .await
    .expect("head");
    // Dribble a byte every 300 ms: never finishes within the 1 s body deadline.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..30 {
        let _ = sock.write_all(b"l").await;
        match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_inventory_untouched(&s).await;
}

#[tokio::test]
async fn unauthorised_callers_cannot_make_the_server_wait_for_a_body() {
    let s = TestServer::start(&config_with_auth("read")).await;
    // Declares a body it never sends: refused at once, before any body is read.
    let mut sock = TcpStream::connect(s.addr).await.expect("connect");
    sock.write_all(
        b"PUT /api/device/evil/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 60000\r\n\r\n",
    )
    .await
    .expect("head");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // An over-limit body from an admin is refused on its declared length alone.
    let reply = raw(
        s.addr,
        &format!(
            "PUT /api/device/evil/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 999999999\r\n\r\n"
        ),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_inventory_untouched(&s).await;
}

#[tokio::test]
async fn connection_cap_queues_and_frees() {
    let s = TestServer::start(&format!(
        "[server]\nmax_connections = 2\nreserved_connections = 0\nheader_timeout_secs = 30\n{TWO_DEVICES}"
    ))
    .await;
    // Two idle connections hold both slots.
    let idle1 = TcpStream::connect(s.addr).await.expect("idle 1");
    let idle2 = TcpStream::connect(s.addr).await.expect("idle 2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(s.addr)
        .await
        .expect("third connects (backlog)");
    third
        .write_all(b"GET /api/version/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "connection 3 was served while 2 slots were held"
    );
    // Freeing a slot (here the client goes away; the header timeout does the same to idle
    // clients) lets the waiting connection through.
    drop(idle1);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("served once a slot freed")
        .expect("read");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    drop(idle2);
}

#[tokio::test]
async fn hostile_json_is_400_and_nothing_stored() {
    let s = TestServer::start(TWO_DEVICES).await;
    let deep = format!(
        "{{\"comments\": {}\"x\"{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        format!("{}{}", "{\"a\":".repeat(5000), "}".repeat(5000)).into_bytes(),
        br#"{"comments": 1e999999}"#.to_vec(),
        br#"{"comments": 123456789012345678901234567890123456789}"#.to_vec(),
        br#"{"comments": "a", "comments": "b"}"#.to_vec(),
        br#"{"comments": "a"} trailing"#.to_vec(),
        br#"null"#.to_vec(),
        br#"[]"#.to_vec(),
        b"{\"comments\": \"\xff\xfe\"}".to_vec(),
        b"{\"comments\": \"\\ud800\"}".to_vec(),
        b"\0\0\0".to_vec(),
    ];
    for body in bodies {
        let r = s
            .http
            .post(s.url("/api/device/panda-1/set-comments/"))
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.status(),
            400,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    for body in [
        json!({"hardware_type": "-s"}),
        json!({"environment": "../prod"}),
        json!({"fastboot_serial": "x;rm -rf /"}),
        json!({"relay": "$(reboot)"}),
        json!({"sut": "a b:1"}),
        json!({"pool": "a\u{0}b"}),
    ] {
        let (status, b) = s.put("/api/device/panda-1/", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {b}");
    }
    for body in [
        json!({"steps": [{"partition": "boot", "file": "../../etc/shadow"}]}),
        json!({"steps": [{"partition": "-w", "file": "boot.img"}]}),
        json!({"boot_config_keys": ["a;b"]}),
    ] {
        let (status, b) = s.put("/api/image/b2g/", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {b}");
    }
    let (status, _) = s
        .post(
            "/api/device/panda-1/set-environment/",
            json!({"environment": "../x"}),
        )
        .await;
    assert!((400..500).contains(&status), "{status}");
    assert_inventory_untouched(&s).await;
}

#[tokio::test]
async fn injection_in_names_and_queries_is_4xx() {
    let s = TestServer::start(TWO_DEVICES).await;
    let paths = [
        ("GET", "/api/device/..%2f..%2fetc%2fpasswd/status/"),
        ("GET", "/api/device/../../etc/passwd/status/"),
        ("GET", "/api/device/%3Brm%20-rf%20%2F/status/"),
        ("GET", "/api/device/;rm/status/"),
        ("GET", "/api/device/a%00b/status/"),
        ("GET", "/api/device/-s/status/"),
        ("GET", "/api/device/--help/log/"),
        ("PUT", "/api/device/-s/"),
        ("PUT", "/api/device/..%2F/"),
        ("PUT", "/api/device/%2e%2e/"),
        ("PUT", "/api/image/..%2Fboot/"),
        ("PUT", "/api/image/-w/"),
        ("PUT", "/api/environment/$(id)/"),
        ("PUT", "/api/hardware-type/`id`/"),
        ("DELETE", "/api/device/*/"),
        ("POST", "/api/device/panda-1%00/set-comments/"),
        ("GET", "/api/log/?device=../panda-1"),
        ("GET", "/api/log/?device=-s"),
        ("GET", "/api/log/?subject=%3Brm"),
        ("GET", "/api/log/?subject=a%00b"),
        ("GET", "/api/log/?request=1;rm"),
        ("GET", "/api/log/?limit=-1"),
        ("GET", "/api/log/?since=99999999999999999999999"),
        ("GET", "/api/device/panda-1/log/?timeperiod=-s"),
    ];
    for (method, path) in paths {
        let body = if method == "GET" {
            ""
        } else {
            "{\"comments\":\"x\"}"
        };
        let reply = raw(
            s.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        let status: u16 = reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(
            (400..500).contains(&status),
            "{method} {path} -> {}",
            reply.lines().next().unwrap_or("")
        );
    }
    // Requests hyper itself refuses (bad request line bytes) do not reach us at all.
    for bad in [
        &b"GET /api/device/a b/status/ HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"GET /api/version/\0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let reply = raw_bytes(s.addr, bad).await;
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "{reply}"
        );
    }
    let (status, _) = s.send(Method::GET, "/api/version/", None).await;
    assert_eq!(status, 200);
    assert_inventory_untouched(&s).await;
}

// Robustness properties over the same entry points as the fuzz targets in tests/fuzz (which
// run longer, in CI): whatever the input, an error and never a panic.
mod never_panics {
    use std::path::Path;

    use mozpool::app::config::Config;
    use mozpool::http::api::decode_bodies;
    use mozpool::storage::decode_bytes;
    use mozpool::storage::records::{
        DeviceRecord, EnvironmentRecord, HardwareTypeRecord, ImageRecord, LogRecord,
    };
    use proptest::collection::vec;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn json_bodies(data in vec(any::<u8>(), 0..512)) {
            decode_bodies(&data);
        }

        #[test]
        fn json_like_bodies(s in r#"[{}\[\]":,0-9a-z_ .eE+\\-]{0,300}"#) {
            decode_bodies(s.as_bytes());
        }

        #[test]
        fn config_text(s in "\\PC{0,400}") {
            let _ = Config::parse(Path::new("p.toml"), &s);
        }

        #[test]
        fn config_like(lines in vec(
            "\\[auth\\]|\\[\\[auth\\.tokens\\]\\]|\\[server\\]|name = \"[a-z.-]{0,5}\"|role = \"(read|request|admin|none|x)\"|sha256 = \"[0-9a-fA-F]{0,65}\"|anonymous = \"[a-z]{0,7}\"|body_timeout_secs = [0-9]{1,21}|max_body_bytes = -?[0-9]{1,21}",
            0..12,
        )) {
            let _ = Config::parse(Path::new("p.toml"), &lines.join("\n"));
        }

        #[test]
        fn hardware_and_registration_replies(data in vec(any::<u8>(), 0..256), sel in any::<u8>()) {
            use mozpool::hw::relay::proxr::{Command, Framing, decode_reply};
            use mozpool::hw::sim::{SimFraming, proxr as sim_proxr};
            let _ = mozpool::hw::sut::parse_version(&data);
            let _ = mozpool::hw::sut::parse_uptime(&data);
            let _ = mozpool::hw::sut::find_prompt(&data);
            let framing = if sel & 1 == 0 { Framing::Raw } else { Framing::Api };
            let (bank, relay) = ((sel >> 1) % 6, (sel >> 4) % 10);
            for cmd in [Command::Test, Command::On { bank, relay }, Command::Read { bank, relay }] {
                let _ = decode_reply(cmd, framing, &data);
            }
            let sim_framing = if sel & 1 == 0 { SimFraming::Raw } else { SimFraming::Api };
            let _ = sim_proxr::decode(sim_framing, &data);
            let _ = mozpool::inventory::registration::parse::parse(&data);
        }

        #[test]
        fn registration_like(s in "(register )?([A-Za-z]{1,8}=[A-Za-z0-9%:.&+-]{0,12}&?){0,8}\n?") {
            let _ = mozpool::inventory::registration::parse::parse(s.as_bytes());
        }

        #[test]
        fn records(data in vec(any::<u8>(), 0..256)) {
            let _ = decode_bytes::<LogRecord>(&data);
            let _ = decode_bytes::<DeviceRecord>(&data);
            let _ = decode_bytes::<ImageRecord>(&data);
            let _ = decode_bytes::<EnvironmentRecord>(&data);
            let _ = decode_bytes::<HardwareTypeRecord>(&data);
        }
    }
}
