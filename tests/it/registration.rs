//! Device self-registration and inventory sync, against a running service:
//! - real TCP registration messages in both agent forms (Java: `register ...\n`, reads `ok`;
//!   Negatus: its exact bytes, wildcard IPADDR, no prefix, no newline, half-close, no read);
//! - generic agent NAMEs matched to the inventory by the sender's address, or flagged for a
//!   tech (nothing created or merged) with an error reply that never contains `ok`;
//! - raw `&` inside the Java agent's values;
//! - a new device is created in `new` and flagged as needing a tech (no relay wiring);
//! - re-registration with a new IP updates the SUT address and logs the change;
//! - malformed, oversized, silent and dribbling clients are refused or cut off within the
//!   deadline, logged under `registration`, and nothing is stored;
//! - registrations never re-point a wired device or revive a retired one;
//! - the JSON form over HTTP;
//! - inventory sync: twice (second changes nothing), dry run writes nothing, a vanished
//!   device is retired and its history stays readable, the safety valve, the CLI with a CSV
//!   file, and the start-up sync from an http:// source.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mozpool::inventory::registration::{AgentForm, send_registration};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestServer;

const REG: &str = "[server]\nregistration_listen = \"127.0.0.1:0\"\nregistration_timeout_secs = 1\n[registration]\nallow = [\"127.0.0.0/8\"]\n";

const JAVA_LINE: &str = "register NAME=00%3A11%3A22%3A33%3A44%3A55&IPADDR=127.0.0.1&CMDPORT=20701&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=panda&POOL=\n";

async fn start(extra: &str) -> (TestServer, SocketAddr) {
    let s = TestServer::start(&format!("{REG}{extra}")).await;
    let addr = s.app.registration_addr.expect("registration listener");
    (s, addr)
}

/// Write raw bytes, read the whole reply until the server closes.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(bytes).await.expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

async fn messages(s: &TestServer, path: &str) -> Vec<String> {
    let (status, body) = s.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["log"]
        .as_array()
        .expect("log")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn device_names(s: &TestServer) -> Vec<Value> {
    let (_, list) = s.get("/api/device/list/?include_retired=1").await;
    list["devices"].as_array().expect("list").clone()
}

#[tokio::test]
async fn java_agent_registers_a_new_device_that_needs_a_tech() {
    let (s, addr) = start("").await;
    let reply = raw(addr, JAVA_LINE.as_bytes()).await;
    assert!(reply.to_lowercase().contains("ok"), "{reply:?}");
    let (status, d) = s.get("/api/device/00:11:22:33:44:55/details/").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "new", "self-tested before it joins the pool");
    assert_eq!(d["origin"], "registration");
    assert_eq!(d["sut"], "127.0.0.1:20701");
    assert_eq!(d["fqdn"], "127.0.0.1");
    assert_eq!(d["hardware_type"], "panda");
    assert_eq!(d["pool"], Value::Null, "an empty POOL sets nothing");
    assert_eq!(
        d["relay_info"],
        Value::Null,
        "wiring never comes from a registration"
    );
    assert_eq!(d["needs_tech"], true);
    assert_eq!(d["mac_address"], "001122334455");
    assert_eq!(d["registration"]["agent_name"], "00:11:22:33:44:55");
    assert_eq!(d["registration"]["fields"]["OS"], "Android-IMM76D");
    let log = messages(&s, "/api/device/00:11:22:33:44:55/log/").await;
    assert!(
        log.iter()
            .any(|m| m.contains("device created (registration)")),
        "{log:?}"
    );
    assert!(log.iter().any(|m| m.contains("needs a tech")), "{log:?}");
    let reg = messages(&s, "/api/log/?subject=registration").await;
    assert!(
        reg.iter().any(|m| m.contains("registered via tcp")),
        "{reg:?}"
    );
    s.stop().await;
}

/// Connect to `addr` from the loopback address `from` (any of 127.0.0.0/8), so a test can
/// play a device on a host of its own.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("from"))
        .expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect")
}

/// Send `bytes` from `from` as the Java agent does and return the reply line.
async fn java_from(from: &str, addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = connect_from(from, addr).await;
    c.write_all(bytes).await.expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// The exact bytes Negatus sends (its `Registration.cpp`/`SUTAgent.cpp`): its listen address,
/// the wildcard `0.0.0.0:20701`, through its own encoder (`:` as `%3A`), keys in `std::map`
/// order (IPADDR before NAME), no `register ` prefix, no newline; then it shuts the socket
/// down without reading. The hardware reference writes the same fields NAME first; both
/// orders are sent here.
const NEGATUS_BYTES: &[u8] = b"IPADDR=0.0.0.0%3A20701&NAME=SUTAgent";
const NEGATUS_BYTES_REF_ORDER: &[u8] = b"NAME=SUTAgent&IPADDR=0.0.0.0%3A20701";

#[tokio::test]
async fn negatus_registers_at_its_peer_address() {
    let config = r#"
[[devices]]
name = "b2g-1"
sut = "127.0.0.1:20701"
allow_registration = true

[[devices]]
name = "b2g-2"
sut = "127.0.0.4:20701"
allow_registration = true
"#;
    let (s, addr) = start(config).await;
    for (from, bytes, device) in [
        ("127.0.0.1", NEGATUS_BYTES, "b2g-1"),
        ("127.0.0.4", NEGATUS_BYTES_REF_ORDER, "b2g-2"),
    ] {
        let mut c = connect_from(from, addr).await;
        c.write_all(bytes).await.expect("write");
        c.shutdown().await.expect("half-close");
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = format!("{from}:20701");
        loop {
            let (_, d) = s.get(&format!("/api/device/{device}/details/")).await;
            if d["registration"]["agent_name"] == "SUTAgent" {
                assert_eq!(d["sut"], want.as_str());
                assert_eq!(d["registration"]["ip"], from, "{d}");
                break;
            }
            assert!(Instant::now() < deadline, "{device} not registered: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(c);
    }
    assert_eq!(device_names(&s).await.len(), 2, "nothing created");
    let reg = messages(&s, "/api/log/?subject=registration").await;
    assert!(
        reg.iter().any(|m| m.contains("IPADDR=0.0.0.0:20701")
            && m.contains("sut=127.0.0.1:20701")
            && m.contains("wildcard")),
        "{reg:?}"
    );
    // Through the public client the virtual rack uses: same outcome.
    let reply = send_registration(
        addr,
        &[("NAME", "SUTAgent"), ("IPADDR", "0.0.0.0")],
        AgentForm::Negatus,
    )
    .await
    .expect("negatus client");
    assert_eq!(reply, "");
    s.stop().await;
}

#[tokio::test]
async fn generic_names_are_matched_by_address_or_flagged_for_a_tech() {
    let config = r#"
[[devices]]
name = "panda-7"
sut = "127.0.0.7:20701"
allow_registration = true

[[devices]]
name = "twin-a"
sut = "127.0.0.8:20701"

[[devices]]
name = "twin-b"
sut = "127.0.0.8:20702"
"#;
    let (s, addr) = start(config).await;
    let line = |ip: &str| {
        format!(
            "register NAME=0011223344556677&IPADDR={ip}&CMDPORT=20701&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=panda&POOL=\n"
        )
    };
    // One device on the sender's host: that is the device.
    let reply = java_from("127.0.0.7", addr, line("127.0.0.7").as_bytes()).await;
    assert!(reply.to_lowercase().contains("ok"), "{reply:?}");
    let (_, d) = s.get("/api/device/panda-7/details/").await;
    assert_eq!(d["registration"]["agent_name"], "0011223344556677");
    assert_eq!(d["registration"]["fields"]["OS"], "Android-IMM76D");

    // No device, or two devices, on the sender's host: nothing created or merged, a tech is
    // told, and the agent gets an error it cannot take for an `ok`.
    for (from, matched) in [("127.0.0.9", "0 devices"), ("127.0.0.8", "2 devices")] {
        let reply = java_from(from, addr, line(from).as_bytes()).await;
        assert!(reply.starts_with("ERROR "), "{reply:?}");
        assert!(!reply.to_lowercase().contains("ok"), "{reply:?}");
        assert!(reply.contains(matched), "{reply:?}");
        // Negatus too (it reads nothing; the outcome is in the log).
        let mut c = connect_from(from, addr).await;
        c.write_all(NEGATUS_BYTES).await.expect("write");
        c.shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    }
    assert_eq!(device_names(&s).await.len(), 3, "nothing created");
    for twin in ["twin-a", "twin-b"] {
        let (_, d) = s.get(&format!("/api/device/{twin}/details/")).await;
        assert_eq!(d["registration"], Value::Null, "{twin} merged: {d}");
    }
    let reg = messages(&s, "/api/log/?subject=registration").await;
    let flagged: Vec<&String> = reg
        .iter()
        .filter(|m| m.starts_with("needs a tech:") && m.contains("a tech must give the device"))
        .collect();
    assert_eq!(flagged.len(), 4, "{reg:?}");
    assert!(
        flagged
            .iter()
            .any(|m| m.contains("from 127.0.0.9") && m.contains("NAME=SUTAgent")),
        "{flagged:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn ampersands_in_java_values_survive() {
    let (s, addr) = start("").await;
    let line = b"register NAME=00%3A11%3A22%3A33%3A44%3A66&IPADDR=127.0.0.1&CMDPORT=20701&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=x&y&POOL=a&b\n";
    let reply = raw(addr, line).await;
    assert_eq!(reply, "OK\n");
    let (_, d) = s.get("/api/device/00:11:22:33:44:66/details/").await;
    assert_eq!(d["registration"]["fields"]["HARDWARE"], "x&y");
    assert_eq!(d["registration"]["fields"]["POOL"], "a&b");
    assert_eq!(d["registration"]["fields"]["MEMORY"], "415232000");
    s.stop().await;
}

/// A Java registration line for `name` at `ip` (and `port`).
fn java_line(name: &str, ip: &str, port: u16) -> String {
    format!(
        "register NAME={name}&IPADDR={ip}&CMDPORT={port}&DATAPORT=20700&OS=Android-IMM76D&SCRNWIDTH=1024&SCRNHEIGHT=768&BPP=8&MEMORY=415232000&HARDWARE=panda&POOL=mobile\n"
    )
}

#[tokio::test]
async fn java_client_and_reregistration_from_a_new_address_is_held_for_a_tech() {
    let (s, addr) = start("").await;
    let name = "aa:bb:cc:dd:ee:01";
    let reply = java_from(
        "127.0.0.21",
        addr,
        java_line(name, "127.0.0.21", 20701).as_bytes(),
    )
    .await;
    assert_eq!(reply, "OK\n");
    // After a reboot, from its own address: accepted.
    let reply = java_from(
        "127.0.0.21",
        addr,
        java_line(name, "127.0.0.21", 20701).as_bytes(),
    )
    .await;
    assert_eq!(reply, "OK\n");
    // From a new address (DHCP, or someone else using its name): held, not followed.
    let reply = java_from(
        "127.0.0.22",
        addr,
        java_line(name, "127.0.0.22", 20701).as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("ERROR ") && reply.contains("held"),
        "{reply:?}"
    );
    assert!(!reply.to_lowercase().contains("ok"), "{reply:?}");
    let path = format!("/api/device/{name}/details/");
    let (_, d) = s.get(&path).await;
    assert_eq!(d["sut"], "127.0.0.21:20701", "kept: {d}");
    assert_eq!(d["address_change"]["sut"], "127.0.0.22:20701", "{d}");
    assert_eq!(d["needs_tech"], true);
    assert!(
        d["needs_tech_reason"]
            .as_str()
            .is_some_and(|r| r.contains("127.0.0.22:20701") && r.contains("accepts")),
        "{d}"
    );
    let log = messages(&s, &format!("/api/device/{name}/log/")).await;
    assert!(
        log.iter()
            .any(|m| m.starts_with("needs a tech:") && m.contains("127.0.0.22:20701")),
        "{log:?}"
    );
    // The page offers the tech the decision.
    let page = s
        .http
        .get(s.url(&format!("/ui/device/{name}/")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("address-accept") && page.contains("127.0.0.22:20701"));
    // A tech accepts it: the device moves.
    let (status, d) = s
        .post(
            &format!("/api/device/{name}/address-change/accept/"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["sut"], "127.0.0.22:20701");
    assert_eq!(d["address_change"], Value::Null);
    assert_eq!(d["registration"]["ip"], "127.0.0.22");
    let (status, e) = s
        .post(
            &format!("/api/device/{name}/address-change/accept/"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "nothing held any more: {e}");
    // And from there it registers as before.
    let reply = java_from(
        "127.0.0.22",
        addr,
        java_line(name, "127.0.0.22", 20701).as_bytes(),
    )
    .await;
    assert_eq!(reply, "OK\n");
    // A device set to follow DHCP moves at once, and says so in its log.
    let (status, _) = s
        .put(
            &format!("/api/device/{name}/"),
            json!({"follow_address": true}),
        )
        .await;
    assert_eq!(status, 200);
    let reply = send_registration(
        addr,
        &[
            ("NAME", name),
            ("IPADDR", "127.0.0.1"),
            ("CMDPORT", "20701"),
        ],
        AgentForm::Java,
    )
    .await
    .expect("register");
    assert_eq!(reply, "OK");
    let (_, d) = s.get(&path).await;
    assert_eq!(d["sut"], "127.0.0.1:20701");
    assert_eq!(d["follow_address"], true);
    let log = messages(&s, &format!("/api/device/{name}/log/")).await;
    assert!(
        log.iter()
            .any(|m| m.contains("IP address changed: 127.0.0.22 -> 127.0.0.1")),
        "{log:?}"
    );
    assert_eq!(device_names(&s).await.len(), 1);
    s.stop().await;
}

/// Attack (a) of issue 21: `register NAME=wired-1&IPADDR=<its address>` from elsewhere, then
/// `IPADDR=<attacker>&CMDPORT=<port>`. The first is refused (IPADDR is not the sender), the
/// second is held for a tech; the device's own registration after a reboot still works.
#[tokio::test]
async fn a_wired_device_cannot_be_repointed_in_two_steps() {
    let config = r#"
[[devices]]
name = "wired-1"
relay = "relay-1:bank1:relay1"
sut = "127.0.0.9:20701"
allow_registration = true
"#;
    let (s, addr) = start(config).await;
    let step1 = java_from(
        "127.0.0.5",
        addr,
        b"register NAME=wired-1&IPADDR=127.0.0.9\n",
    )
    .await;
    assert!(
        step1.starts_with("ERROR ") && step1.contains("not the address"),
        "{step1:?}"
    );
    let step2 = java_from(
        "127.0.0.5",
        addr,
        b"register NAME=wired-1&IPADDR=127.0.0.5&CMDPORT=18777\n",
    )
    .await;
    assert!(
        step2.starts_with("ERROR ") && step2.contains("held"),
        "{step2:?}"
    );
    let (_, d) = s.get("/api/device/wired-1/details/").await;
    assert_eq!(d["sut"], "127.0.0.9:20701", "not re-pointed: {d}");
    assert_eq!(d["needs_tech"], true);
    assert_eq!(d["address_change"]["sut"], "127.0.0.5:18777");
    // The real device reboots and registers from its own address: accepted, the held change
    // stays for the tech to see.
    let own = java_from(
        "127.0.0.9",
        addr,
        b"register NAME=wired-1&IPADDR=127.0.0.9&CMDPORT=20701\n",
    )
    .await;
    assert_eq!(own, "OK\n");
    let (_, d) = s.get("/api/device/wired-1/details/").await;
    assert_eq!(d["sut"], "127.0.0.9:20701");
    assert_eq!(d["registration"]["ip"], "127.0.0.9");
    // The tech dismisses the change (with the client): nothing moves, the flag is gone.
    let url = format!("http://{}", s.addr);
    let out = cli(&[
        "device",
        "address-change",
        "wired-1",
        "dismiss",
        "--url",
        &url,
    ])
    .await;
    let d: Value = serde_json::from_str(&out).expect("device JSON");
    assert_eq!(d["sut"], "127.0.0.9:20701");
    assert_eq!(d["needs_tech"], false, "{d}");
    let log = messages(&s, "/api/device/wired-1/log/").await;
    assert!(
        log.iter().any(|m| m.contains("address change dismissed")),
        "{log:?}"
    );
    s.stop().await;
}

/// Run the `mozpool` client; its stdout (the call must succeed).
async fn cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mozpool"))
        .args(args)
        .env_remove("MOZPOOL_URL")
        .env_remove("MOZPOOL_TOKEN")
        .output()
        .await
        .expect("run mozpool");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Attack (b) of issue 21, second half: a device an admin created is not claimed by the
/// first registration that names it, unless the admin allowed it.
#[tokio::test]
async fn admin_devices_are_claimed_only_when_allowed() {
    let (s, addr) = start("").await;
    let (status, _) = s
        .put(
            "/api/device/api-1/",
            json!({"relay": "relay-1:bank1:relay2"}),
        )
        .await;
    assert_eq!(status, 201);
    let reply = java_from(
        "127.0.0.31",
        addr,
        b"register NAME=api-1&IPADDR=127.0.0.31\n",
    )
    .await;
    assert!(
        reply.starts_with("ERROR ") && reply.contains("allow_registration"),
        "{reply:?}"
    );
    let (_, d) = s.get("/api/device/api-1/details/").await;
    assert_eq!(d["registration"], Value::Null);
    assert_eq!(d["sut"], Value::Null);
    assert_eq!(d["allow_registration"], false);
    // The admin allows it, with the client.
    let url = format!("http://{}", s.addr);
    let out = cli(&[
        "device",
        "set",
        "api-1",
        "--allow-registration",
        "true",
        "--url",
        &url,
    ])
    .await;
    assert!(out.contains("\"allow_registration\": true"), "{out}");
    let reply = java_from(
        "127.0.0.31",
        addr,
        b"register NAME=api-1&IPADDR=127.0.0.31\n",
    )
    .await;
    assert_eq!(reply, "OK\n");
    let (_, d) = s.get("/api/device/api-1/details/").await;
    assert_eq!(d["sut"], "127.0.0.31:20701");
    assert_eq!(d["registration"]["agent_name"], "api-1");
    s.stop().await;
}

/// The Prometheus sample `name` from `/metrics`.
async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Attack (c) of issue 21: 200 silent connections from one host do not delay another host's
/// registration; refusals are counted, and logged at a bounded rate; a flood of new names
/// creates only as many devices as the rate allows; other networks are turned away.
#[tokio::test]
async fn floods_are_shared_out_counted_and_rate_limited() {
    let config = "[server]\nregistration_listen = \"127.0.0.1:0\"\nregistration_timeout_secs = 10\n[registration]\nallow = [\"127.0.0.0/29\"]\n";
    let s = TestServer::start(config).await;
    let addr = s.app.registration_addr.expect("listener");
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect_from("127.0.0.2", addr).await);
    }
    let started = Instant::now();
    let reply = java_from(
        "127.0.0.3",
        addr,
        java_line("real-1", "127.0.0.3", 20701).as_bytes(),
    )
    .await;
    assert_eq!(reply, "OK\n");
    assert!(
        // Below the 2 s read deadline a silent connection holds a slot for.
        started.elapsed() < Duration::from_millis(1500),
        "a real registration waited {:?}",
        started.elapsed()
    );
    let busy = metric(
        &s,
        "mozpool_registrations_refused_total{reason=\"peer_busy\"}",
    )
    .await;
    assert!(busy >= 190.0, "{busy}");
    drop(silent);
    // Outside the allowed networks: closed at once, counted.
    let mut c = connect_from("127.0.0.66", addr).await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    assert!(
        metric(
            &s,
            "mozpool_registrations_refused_total{reason=\"not_allowed\"}"
        )
        .await
            >= 1.0
    );
    // 50 new names in a burst: the rate (10 a minute) allows 9 more after real-1.
    for i in 0..50 {
        let line = java_line(&format!("flood-{i}"), "127.0.0.4", 20701);
        let _ = java_from("127.0.0.4", addr, line.as_bytes()).await;
    }
    // One more token is earned every 6 s: a slow machine may see it during the flood.
    let created = device_names(&s).await.len();
    assert!((10..=11).contains(&created), "{created} devices");
    assert!(
        metric(
            &s,
            "mozpool_registrations_refused_total{reason=\"rate_limited\"}"
        )
        .await
            >= 39.0
    );
    // The durable log got a bounded number of refusal records, not one per refusal.
    let reg = messages(&s, "/api/log/?subject=registration&limit=1000").await;
    let refused = reg
        .iter()
        .filter(|m| m.contains("refused") || m.contains("closed"))
        .count();
    // 10 a minute, plus one per 6 s the test took: far below the ~240 refusals.
    assert!(refused <= 15, "{refused} refusal records: {reg:?}");
    assert!(metric(&s, "mozpool_registrations_refused_unlogged_total").await >= 200.0);
    s.stop().await;
}

#[tokio::test]
async fn bad_messages_are_refused_logged_and_store_nothing() {
    let (s, addr) = start("").await;
    let garbage = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(garbage.starts_with("ERROR "), "{garbage:?}");
    let missing = raw(addr, b"register NAME=dev-1&CMDPORT=20701\n").await;
    assert!(
        missing.starts_with("ERROR ") && missing.contains("IPADDR"),
        "{missing:?}"
    );
    let non_numeric = raw(addr, b"register NAME=dev-1&IPADDR=10.0.0.1&MEMORY=lots\n").await;
    assert!(non_numeric.contains("MEMORY"), "{non_numeric:?}");
    let control = raw(addr, b"register NAME=dev%0A1&IPADDR=10.0.0.1\n").await;
    assert!(control.contains("control"), "{control:?}");
    let mut big = b"register NAME=dev-1&IPADDR=10.0.0.1&OS=".to_vec();
    big.extend(std::iter::repeat_n(b'x', 8000));
    big.push(b'\n');
    let oversized = raw(addr, &big).await;
    assert!(oversized.contains("longer than"), "{oversized:?}");

    // A client that sends nothing is cut off within the deadline (1 s here).
    let started = Instant::now();
    let silent = raw(addr, b"").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(silent.starts_with("ERROR "), "{silent:?}");

    // So is one that dribbles a byte every 100 ms without ever finishing.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut cut_off = false;
    for b in b"register NAME=dribble&IPADDR=10.0.0.9&OS=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if c.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        cut_off || reply.starts_with("ERROR "),
        "dribbler not cut off: {reply:?}"
    );
    assert!(reply.is_empty() || reply.contains("within"), "{reply:?}");

    assert!(device_names(&s).await.is_empty(), "nothing stored");
    let reg = messages(&s, "/api/log/?subject=registration").await;
    let refused = reg
        .iter()
        .filter(|m| m.contains("registration refused"))
        .count();
    assert!(refused >= 7, "{reg:?}");
    // The service still works after all that.
    let ok = send_registration(
        addr,
        &[("NAME", "after-1"), ("IPADDR", "127.0.0.1")],
        AgentForm::Java,
    )
    .await
    .expect("register");
    assert_eq!(ok, "OK");
    s.stop().await;
}

#[tokio::test]
async fn registrations_never_overwrite_good_data() {
    let config = r#"
[[devices]]
name = "panda-1"
relay = "relay-1:bank1:relay1"
sut = "127.0.0.1:20701"
allow_registration = true
"#;
    let (s, addr) = start(config).await;
    // IPADDR is not the sender's address: refused, nothing changes.
    let reply = send_registration(
        addr,
        &[("NAME", "panda-1"), ("IPADDR", "10.0.0.66")],
        AgentForm::Java,
    )
    .await
    .expect("register");
    assert!(
        reply.starts_with("ERROR IPADDR 10.0.0.66 is not the address"),
        "{reply}"
    );
    let (_, d) = s.get("/api/device/panda-1/details/").await;
    assert_eq!(d["sut"], "127.0.0.1:20701", "unchanged");
    assert_eq!(d["needs_tech"], false);
    // The same host may re-register (details only).
    let reply = send_registration(
        addr,
        &[("NAME", "panda-1"), ("IPADDR", "127.0.0.1"), ("OS", "x")],
        AgentForm::Java,
    )
    .await
    .expect("register");
    assert_eq!(reply, "OK");
    // A retired device is not revived by a registration.
    let (status, _) = s
        .put("/api/device/old-1/", json!({"allow_registration": true}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = s.send(Method::DELETE, "/api/device/old-1/", None).await;
    assert_eq!(status, 200);
    let reply = send_registration(
        addr,
        &[("NAME", "old-1"), ("IPADDR", "127.0.0.1")],
        AgentForm::Java,
    )
    .await
    .expect("register");
    assert!(reply.contains("retired"), "{reply}");
    let (_, d) = s.get("/api/device/old-1/details/").await;
    assert_eq!(d["retired"], true);
    assert_eq!(d["sut"], Value::Null);
    let log = messages(&s, "/api/log/?subject=registration").await;
    assert!(
        log.iter()
            .any(|m| m.contains("registration refused") && m.contains("not the address")),
        "{log:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn json_registration_over_http() {
    let s = TestServer::start("").await;
    assert!(s.app.registration_addr.is_none(), "off unless configured");
    let body = json!({"name": "nexus-7", "ipaddr": "10.0.0.8", "cmdport": 20701, "pool": "mobile", "SCRNWIDTH": 800});
    let (status, d) = s.post("/api/device/register/", body.clone()).await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["name"], "nexus-7");
    assert_eq!(d["state"], "new");
    assert_eq!(d["needs_tech"], true);
    assert_eq!(d["sut"], "10.0.0.8:20701");
    assert_eq!(d["registration"]["fields"]["SCRNWIDTH"], "800");
    let (status, d) = s.post("/api/device/register/", body).await;
    assert_eq!(status, 200, "{d}");
    for (bad, want) in [
        (json!({"NAME": "x"}), "IPADDR"),
        (
            json!({"NAME": "x", "IPADDR": "10.0.0.1", "CMDPORT": "abc"}),
            "CMDPORT",
        ),
        (
            json!({"NAME": "x", "name": "y", "IPADDR": "10.0.0.1"}),
            "twice",
        ),
        (
            json!({"NAME": "x", "IPADDR": "10.0.0.1", "OS": ["a"]}),
            "OS",
        ),
        (json!({"NAME": "a b", "IPADDR": "10.0.0.1"}), "device name"),
    ] {
        let (status, e) = s.post("/api/device/register/", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {e}");
        assert!(
            e["error"].as_str().unwrap_or_default().contains(want),
            "{bad} -> {e}"
        );
    }
    let (status, e) = s.post("/api/device/register/", json!([1])).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(device_names(&s).await, vec![json!("nexus-7")]);
    let reg = messages(&s, "/api/log/?subject=registration").await;
    assert!(reg.iter().any(|m| m.contains("via http")), "{reg:?}");
    s.stop().await;
}

fn rows(names: &[&str]) -> Value {
    let devices: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"name": n, "hardware_type": "panda", "relay": format!("relay-1:bank1:relay{}", i + 1), "sut": format!("10.0.1.{}:20701", i + 1)}))
        .collect();
    json!({ "devices": devices })
}

#[tokio::test]
async fn inventory_sync_is_idempotent_dry_runs_and_retires() {
    let s = TestServer::start(crate::support::TWO_DEVICES).await;
    // A registered device gets adopted by the inventory; a config device is left alone.
    let (status, _) = s
        .post(
            "/api/device/register/",
            json!({"NAME": "inv-3", "IPADDR": "10.0.1.3"}),
        )
        .await;
    assert_eq!(status, 201);
    let mut body = rows(&["inv-1", "inv-2", "inv-3"]);
    body["devices"]
        .as_array_mut()
        .expect("rows")
        .push(json!({"name": "panda-1", "pool": "x"}));
    let (status, r) = s.post("/api/inventory/sync/", body.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["added"], json!(["inv-1", "inv-2"]));
    assert_eq!(r["updated"][0]["name"], "inv-3");
    assert_eq!(r["skipped"][0]["name"], "panda-1");
    assert_eq!(r["dry_run"], false);
    let (_, d) = s.get("/api/device/inv-3/details/").await;
    assert_eq!(d["origin"], "inventory");
    assert_eq!(d["relay_info"], "relay-1:bank1:relay3");
    assert_eq!(d["needs_tech"], false, "wired by the inventory");
    let (_, d) = s.get("/api/device/inv-1/details/").await;
    assert_eq!(d["state"], "new");

    // Second run: nothing changes.
    let (status, r) = s.post("/api/inventory/sync/", body).await;
    assert_eq!(status, 200);
    assert_eq!(r["added"], json!([]));
    assert_eq!(r["updated"], json!([]));
    assert_eq!(r["retired"], json!([]));
    assert_eq!(r["unchanged"], 3);

    // Dry run of a change: reported, not written.
    let mut next = rows(&["inv-1", "inv-3", "inv-4"]);
    next["devices"][1]["pool"] = json!("b2g");
    let before = messages(&s, "/api/log/?subject=inventory").await.len();
    let (status, r) = s.post("/api/inventory/sync/?dry_run=1", next.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["added"], json!(["inv-4"]));
    assert_eq!(r["retired"], json!(["inv-2"]));
    assert_eq!(r["updated"][0]["name"], "inv-3");
    let (status, _) = s.get("/api/device/inv-4/details/").await;
    assert_eq!(status, 404, "dry run wrote nothing");
    let (_, d) = s.get("/api/device/inv-2/details/").await;
    assert_eq!(d["retired"], false);
    assert_eq!(
        messages(&s, "/api/log/?subject=inventory").await.len(),
        before
    );
    let (_, d) = s.get("/api/device/inv-3/details/").await;
    assert_eq!(d["pool"], Value::Null, "dry run updated nothing");

    // For real: inv-2 retired, its history still readable.
    let (status, r) = s.post("/api/inventory/sync/", next).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["retired"], json!(["inv-2"]));
    let (_, d) = s.get("/api/device/inv-2/details/").await;
    assert_eq!(d["retired"], true);
    let log = messages(&s, "/api/device/inv-2/log/").await;
    assert!(
        log.iter().any(|m| m.contains("device created (inventory)")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|m| m.contains("retired: no longer in the inventory source")),
        "{log:?}"
    );
    // Config and API devices were never retired.
    let (_, d) = s.get("/api/device/panda-2/details/").await;
    assert_eq!(d["retired"], false);
    // Bringing it back un-retires it.
    let (_, r) = s
        .post(
            "/api/inventory/sync/",
            rows(&["inv-1", "inv-2", "inv-3", "inv-4"]),
        )
        .await;
    assert!(
        r["updated"]
            .as_array()
            .expect("updated")
            .iter()
            .any(|u| u["name"] == "inv-2"),
        "{r}"
    );
    s.stop().await;
}

#[tokio::test]
async fn inventory_sync_safety_valve_and_bad_rows() {
    let s = TestServer::start("").await;
    let names: Vec<String> = (0..8).map(|i| format!("d-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (status, _) = s.post("/api/inventory/sync/", rows(&refs)).await;
    assert_eq!(status, 200);
    let (status, e) = s.post("/api/inventory/sync/", json!({"devices": []})).await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["code"], "safety_valve");
    assert_eq!(device_names(&s).await.len(), 8);
    let (_, d) = s.get("/api/device/d-0/details/").await;
    assert_eq!(d["retired"], false);
    let (status, r) = s
        .post("/api/inventory/sync/?force=1", json!({"devices": []}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["retired"].as_array().map(Vec::len), Some(8));
    for bad in [
        json!({"devices": [{"name": "a"}, {"name": "a"}]}),
        json!({"devices": [{"name": "../x"}]}),
        json!({"devices": [{"name": "a", "sut": "nohost"}]}),
        json!({"devices": [{"name": "a", "colour": "red"}]}),
    ] {
        let (status, e) = s.post("/api/inventory/sync/", bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {e}");
    }
    s.stop().await;
}

#[tokio::test]
async fn cli_syncs_a_csv_file() {
    use clap::Parser;
    let s = TestServer::start("").await;
    let file = s.dir.path().join("inventory.csv");
    std::fs::write(
        &file,
        "# the lab\nname,hardware_type,relay,sut,comments\npanda-10,panda,relay-2:bank1:relay1,10.0.2.1:20701,\"top shelf, left\"\npanda-11,panda,relay-2:bank1:relay2,10.0.2.2:20701,\n",
    )
    .expect("write csv");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "mozpool".to_owned(),
            "inventory".into(),
            "sync".into(),
            file.display().to_string(),
            "--url".into(),
            s.url(""),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        mozpool::cli::run(mozpool::cli::Cli::try_parse_from(args).expect("args"))
    };
    run(&["--dry-run"]).await.expect("dry run");
    assert!(device_names(&s).await.is_empty());
    run(&[]).await.expect("sync");
    let (_, d) = s.get("/api/device/panda-10/details/").await;
    assert_eq!(d["comments"], "top shelf, left");
    assert_eq!(d["relay_info"], "relay-2:bank1:relay1");
    run(&[]).await.expect("sync again");
    assert_eq!(device_names(&s).await.len(), 2);
    s.stop().await;
}

/// A one-shot HTTP server answering every request with `body`.
async fn serve_static(body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn configured_source_syncs_at_start_up() {
    let addr =
        serve_static(r#"{"devices": [{"name": "remote-1", "relay": "relay-9:bank1:relay1"}]}"#)
            .await;
    let s = TestServer::start(&format!(
        "[inventory]\nsource = \"http://{addr}/export.json\"\ninterval_secs = 0\n"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, d) = s.get("/api/device/remote-1/details/").await;
        if status == 200 {
            assert_eq!(d["origin"], "inventory");
            assert_eq!(d["relay_info"], "relay-9:bank1:relay1");
            break;
        }
        assert!(Instant::now() < deadline, "start-up sync did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn wired_device_holds_address_changes_from_registrations_over_http() {
    let s = TestServer::start("").await;
    let reg = |ip: &str, mem: &str| json!({"NAME": "inv-9", "IPADDR": ip, "MEMORY": mem});
    let (status, _) = s
        .post("/api/device/register/", reg("10.0.3.1", "100"))
        .await;
    assert_eq!(status, 201);
    // The inventory wires it (no SUT address in the row) and adopts it.
    let (status, r) = s
        .post(
            "/api/inventory/sync/",
            json!({"devices": [{"name": "inv-9", "relay": "relay-3:bank1:relay1"}]}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    // Its own address again: details refreshed.
    let (status, d) = s
        .post("/api/device/register/", reg("10.0.3.1", "200"))
        .await;
    assert_eq!(status, 200, "{d}");
    assert!(
        d["changes"].to_string().contains("details changed: MEMORY"),
        "{d}"
    );
    // DHCP moved it: held for a tech, not followed.
    let (status, e) = s
        .post("/api/device/register/", reg("10.0.3.2", "300"))
        .await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["code"], "address_change_held");
    let (_, d) = s.get("/api/device/inv-9/details/").await;
    assert_eq!(d["sut"], "10.0.3.1:20701");
    assert_eq!(d["relay_info"], "relay-3:bank1:relay1", "wiring untouched");
    assert_eq!(d["needs_tech"], true);
    // A tech who sets the address settles it too.
    let (status, _) = s
        .put("/api/device/inv-9/", json!({"sut": "10.0.3.2:20701"}))
        .await;
    assert_eq!(status, 200);
    let (_, d) = s.get("/api/device/inv-9/details/").await;
    assert_eq!(d["address_change"], Value::Null);
    assert_eq!(d["needs_tech"], false, "{d}");
    s.stop().await;
}

/// The simulated rack's devices register when they boot (the loopback allow-list the rack
/// adds), and attack (b) of issue 21 — one registration re-pointing `sim-0002` at a fake
/// agent on another port — is held: the device keeps its agent and the pool does not hand
/// it out until a tech settles the change.
#[tokio::test]
async fn sim_rack_registers_and_a_takeover_is_held_out_of_the_pool() {
    let s = TestServer::start_rack(2, "[server]\nregistration_listen = \"127.0.0.1:0\"\n").await;
    let addr = s.app.registration_addr.expect("listener");
    s.wait_all_ready(60).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in ["sim-0001", "sim-0002"] {
        loop {
            let (_, d) = s.get(&format!("/api/device/{name}/details/")).await;
            if d["registration"]["agent_name"] == name {
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not register: {d}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, before) = s.get("/api/device/sim-0002/details/").await;
    let reply = raw(
        addr,
        b"register NAME=sim-0002&IPADDR=127.0.0.1&CMDPORT=18777\n",
    )
    .await;
    assert!(
        reply.starts_with("ERROR ") && reply.contains("held"),
        "{reply:?}"
    );
    let (_, d) = s.get("/api/device/sim-0002/details/").await;
    assert_eq!(d["sut"], before["sut"], "kept its agent");
    assert_eq!(d["needs_tech"], true);
    // Two requests, two ready devices: only sim-0001 is handed out.
    let body = json!({"assignee": "ci", "duration": 600, "image": "android"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, r) = s.post("/api/device/any/request/", body.clone()).await;
        assert!(status == 200 || status == 201, "{status} {r}");
        ids.push(r["request"]["id"].as_u64().expect("id"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, d) = s.get("/api/device/sim-0002/details/").await;
    assert_eq!(d["request_id"], Value::Null, "held device handed out: {d}");
    let (_, d) = s.get("/api/device/sim-0001/details/").await;
    assert!(d["request_id"].is_u64(), "{d}");
    // The tech dismisses the change: sim-0002 goes to the waiting request.
    let (status, _) = s
        .post("/api/device/sim-0002/address-change/dismiss/", json!({}))
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = s.get("/api/device/sim-0002/details/").await;
        if d["request_id"].is_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not handed out after the dismissal: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
