//! The simulator spoken to byte by byte, as a host would (the real `adb` client runs
//! against it in `tests/it/sim_adbd.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wire::*;
use super::*;

/// The host's banner as adb 29.0.6 sends it (feature list shortened).
const HOST_IDENTITY: &[u8] = b"host::features=shell_v2,cmd,stat_v2\0";

async fn start(config: AdbdConfig) -> (SimAdbd, Arc<MemoryAdbTarget>) {
    let target = Arc::new(MemoryAdbTarget::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let adbd = SimAdbd::spawn(listener, target.clone(), config).expect("spawn");
    (adbd, target)
}

/// A raw host side.
struct Host {
    s: TcpStream,
    checksum: bool,
}

impl Host {
    async fn connect(adbd: &SimAdbd) -> Host {
        Host {
            s: TcpStream::connect(adbd.addr()).await.expect("connect"),
            checksum: true,
        }
    }

    async fn send(&mut self, p: Packet) {
        self.s
            .write_all(&p.encode(self.checksum))
            .await
            .expect("send");
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("send");
    }

    async fn recv(&mut self) -> Packet {
        tokio::time::timeout(
            Duration::from_secs(5),
            read_packet(&mut self.s, MAX_PAYLOAD, false),
        )
        .await
        .expect("a message in time")
        .expect("a valid message")
    }

    /// The header's `data_check` of the next message, and the message.
    async fn recv_with_check(&mut self) -> (u32, Packet) {
        let mut h = [0u8; 24];
        self.s.read_exact(&mut h).await.expect("header");
        let check = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).await.expect("payload");
        let mut all = h.to_vec();
        all.extend_from_slice(&payload);
        let p = read_packet(&mut &all[..], MAX_PAYLOAD, false)
            .await
            .expect("valid");
        (check, p)
    }

    /// Nothing arrives for a while.
    async fn silent(&mut self) -> bool {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(200), self.s.read(&mut b))
            .await
            .is_err()
    }

    /// The simulator closed the connection.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    async fn handshake(&mut self) -> Packet {
        self.send(Packet::new(
            A_CNXN,
            A_VERSION_SKIP_CHECKSUM,
            MAX_PAYLOAD,
            HOST_IDENTITY.to_vec(),
        ))
        .await;
        let p = self.recv().await;
        assert_eq!(p.command, A_CNXN, "{p:?}");
        self.checksum = p.arg0 < A_VERSION_SKIP_CHECKSUM;
        p
    }

    /// Open a service and collect its output (acknowledging each write) until `CLSE`.
    async fn service(&mut self, id: u32, name: &str) -> Result<Vec<u8>, Packet> {
        let mut dest = name.as_bytes().to_vec();
        dest.push(0);
        self.send(Packet::new(A_OPEN, id, 0, dest)).await;
        let p = self.recv().await;
        if p.command != A_OKAY {
            return Err(p);
        }
        assert_eq!(p.arg1, id);
        let dev = p.arg0;
        let mut out = Vec::new();
        loop {
            let p = self.recv().await;
            assert_eq!((p.arg0, p.arg1), (dev, id), "{p:?}");
            match p.command {
                A_WRTE => {
                    out.extend_from_slice(&p.payload);
                    self.send(Packet::new(A_OKAY, id, dev, Vec::new())).await;
                }
                A_CLSE => return Ok(out),
                _ => panic!("unexpected {p:?}"),
            }
        }
    }
}

#[tokio::test]
async fn handshake_answers_with_the_device_banner() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(
        A_CNXN,
        A_VERSION_SKIP_CHECKSUM,
        MAX_PAYLOAD,
        HOST_IDENTITY.to_vec(),
    ))
    .await;
    let (check, p) = h.recv_with_check().await;
    assert_eq!(p.arg0, A_VERSION_SKIP_CHECKSUM);
    assert_eq!(p.arg1, DEFAULT_MAX_PAYLOAD);
    assert_eq!(check, 0, "no checksum at version 0x01000001");
    assert_eq!(
        String::from_utf8(p.payload).expect("utf-8"),
        "device::ro.product.name=sim_panda;ro.product.model=Sim Panda;ro.product.device=panda;features="
    );
}

#[tokio::test]
async fn shell_output_streams_back_then_the_stream_closes() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    let out = h
        .service(5, "shell:getprop sys.boot_completed")
        .await
        .expect("opened");
    assert_eq!(out, b"1\n");
    let out = h
        .service(
            6,
            "shell:echo a > /data/local/tmp/x && cat /data/local/tmp/x; echo rc=$?",
        )
        .await
        .expect("opened");
    assert_eq!(out, b"a\nrc=0\n");
    // No output: OKAY then CLSE at once.
    assert_eq!(h.service(7, "shell:true").await.expect("opened"), b"");
}

#[tokio::test]
async fn long_output_is_chunked_to_the_hosts_maxdata_and_waits_for_each_okay() {
    let (adbd, t) = start(AdbdConfig::default()).await;
    let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    t.write_file("/data/local/tmp/big", &big).expect("write");
    let mut h = Host::connect(&adbd).await;
    // An old host: maxdata 4096.
    h.send(Packet::new(
        A_CNXN,
        A_VERSION_MIN,
        MAX_PAYLOAD_V1,
        HOST_IDENTITY.to_vec(),
    ))
    .await;
    let (check, p) = h.recv_with_check().await;
    assert_eq!(p.command, A_CNXN);
    assert_eq!(check, sum(&p.payload), "checksummed at the old version");
    h.checksum = true;
    h.send(Packet::new(
        A_OPEN,
        9,
        0,
        b"shell:cat /data/local/tmp/big".to_vec(),
    ))
    .await;
    let okay = h.recv().await;
    assert_eq!(okay.command, A_OKAY);
    let mut got = Vec::new();
    loop {
        let p = h.recv().await;
        if p.command == A_CLSE {
            break;
        }
        assert_eq!(p.command, A_WRTE);
        assert!(p.payload.len() <= 4096, "{}", p.payload.len());
        got.extend_from_slice(&p.payload);
        // Stop-and-wait: nothing more until this write is acknowledged.
        assert!(h.silent().await, "a second WRTE before OKAY");
        h.send(Packet::new(A_OKAY, 9, okay.arg0, Vec::new())).await;
    }
    assert_eq!(got, big);
}

#[tokio::test]
async fn unknown_services_are_refused_with_clse() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    for (id, name) in [
        (3, "sync:"),
        (4, "shell,v2,raw:getprop"),
        (5, "shell:"),
        (6, "reboot:sideload"),
        (7, "framebuffer:"),
        (8, "tcpip:5555"),
    ] {
        let p = h.service(id, name).await.expect_err(name);
        assert_eq!((p.command, p.arg0, p.arg1), (A_CLSE, 0, id), "{name}");
    }
    // The transport is still fine.
    assert_eq!(h.service(9, "shell:echo ok").await.expect("open"), b"ok\n");
}

#[tokio::test]
async fn messages_before_cnxn_are_ignored() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(A_OPEN, 1, 0, b"shell:echo hi\0".to_vec()))
        .await;
    assert!(h.silent().await);
    h.handshake().await;
    assert!(h.silent().await);
}

#[tokio::test]
async fn host_writes_are_acknowledged() {
    let (adbd, t) = start(AdbdConfig::default()).await;
    t.write_file("/data/local/tmp/big", &vec![b'x'; 5000])
        .expect("write");
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    h.send(Packet::new(
        A_OPEN,
        2,
        0,
        b"shell:cat /data/local/tmp/big".to_vec(),
    ))
    .await;
    let okay = h.recv().await;
    let first = h.recv().await;
    assert_eq!(first.command, A_WRTE);
    h.send(Packet::new(A_WRTE, 2, okay.arg0, b"stdin".to_vec()))
        .await;
    let ack = h.recv().await;
    assert_eq!((ack.command, ack.arg0, ack.arg1), (A_OKAY, okay.arg0, 2));
    // The host closes early: the rest is dropped, nothing more comes.
    h.send(Packet::new(A_CLSE, 2, okay.arg0, Vec::new())).await;
    h.send(Packet::new(A_OKAY, 2, okay.arg0, Vec::new())).await;
    assert!(h.silent().await);
}

#[tokio::test]
async fn bad_headers_drop_the_connection_and_the_server_lives_on() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    // Bad magic.
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    let mut b = Packet::new(A_OPEN, 1, 0, b"shell:true\0".to_vec()).encode(false);
    b[20] ^= 1;
    h.send_raw(&b).await;
    assert!(h.closed().await);
    // A length above maxdata.
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    let mut b = Packet::new(A_WRTE, 1, 1, Vec::new()).encode(false);
    b[12..16].copy_from_slice(&(DEFAULT_MAX_PAYLOAD + 1).to_le_bytes());
    h.send_raw(&b).await;
    assert!(h.closed().await);
    // A big CNXN before the handshake (CNXN is limited to 4096 bytes).
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(
        A_CNXN,
        A_VERSION_MIN,
        MAX_PAYLOAD,
        vec![b'h'; 5000],
    ))
    .await;
    assert!(h.closed().await);
    // An unrecognized command, even with a good magic.
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    h.send(Packet::new(A_STLS, 1, 0, Vec::new())).await;
    assert!(h.closed().await);
    // An unknown protocol version.
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(
        A_CNXN,
        0x0200,
        MAX_PAYLOAD,
        HOST_IDENTITY.to_vec(),
    ))
    .await;
    assert!(h.closed().await);
    // Garbage.
    let mut h = Host::connect(&adbd).await;
    h.send_raw(&[0xffu8; 100]).await;
    assert!(h.closed().await);
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    assert_eq!(h.service(1, "shell:echo ok").await.expect("open"), b"ok\n");
}

#[tokio::test]
async fn old_protocol_checks_payload_sums() {
    let (adbd, _t) = start(AdbdConfig::legacy()).await;
    let mut h = Host::connect(&adbd).await;
    let p = h.handshake().await;
    assert_eq!((p.arg0, p.arg1), (A_VERSION_MIN, MAX_PAYLOAD_V1));
    assert!(h.checksum);
    assert_eq!(h.service(1, "shell:echo ok").await.expect("open"), b"ok\n");
    // A payload whose sum does not match its header.
    let mut b = Packet::new(A_OPEN, 2, 0, b"shell:true\0".to_vec()).encode(true);
    b[24] = b'S';
    h.send_raw(&b).await;
    assert!(h.closed().await);
}

#[tokio::test]
async fn unauthorized_challenges_and_never_accepts() {
    let (adbd, t) = start(AdbdConfig::default()).await;
    t.set_authorized(false);
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(
        A_CNXN,
        A_VERSION_SKIP_CHECKSUM,
        MAX_PAYLOAD,
        HOST_IDENTITY.to_vec(),
    ))
    .await;
    let token = h.recv().await;
    assert_eq!((token.command, token.arg0), (A_AUTH, ADB_AUTH_TOKEN));
    assert_eq!(token.payload.len(), TOKEN_SIZE);
    h.checksum = false;
    // Streams cannot open meanwhile.
    h.send(Packet::new(A_OPEN, 1, 0, b"shell:true\0".to_vec()))
        .await;
    assert!(h.silent().await);
    h.send(Packet::new(A_AUTH, ADB_AUTH_SIGNATURE, 0, vec![7u8; 256]))
        .await;
    let again = h.recv().await;
    assert_eq!((again.command, again.arg0), (A_AUTH, ADB_AUTH_TOKEN));
    assert_ne!(again.payload, token.payload, "a fresh token");
    h.send(Packet::new(
        A_AUTH,
        ADB_AUTH_RSAPUBLICKEY,
        0,
        b"QAAAAB... user@host\0".to_vec(),
    ))
    .await;
    assert!(h.silent().await, "the confirmation dialog never answers");
    // Once the key is accepted, the next signature gets the CNXN.
    t.set_authorized(true);
    h.send(Packet::new(A_AUTH, ADB_AUTH_SIGNATURE, 0, vec![7u8; 256]))
        .await;
    assert_eq!(h.recv().await.command, A_CNXN);
    assert_eq!(h.service(2, "shell:echo ok").await.expect("open"), b"ok\n");
}

#[tokio::test]
async fn reboot_closes_stream_and_transport_and_adbd_goes_down() {
    let (adbd, t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    assert_eq!(
        h.service(4, "reboot:bootloader").await.expect("open"),
        b"",
        "CLSE right after OKAY"
    );
    assert!(h.closed().await);
    assert_eq!(t.reboots(), vec![AdbReboot::Bootloader]);
    // The target took adbd down: the port refuses connections.
    let refused = async {
        loop {
            if TcpStream::connect(adbd.addr()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("port closed");
    // Booted again: the same port answers.
    t.set_up(true);
    let back = async {
        loop {
            if let Ok(s) = TcpStream::connect(adbd.addr()).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let s = tokio::time::timeout(Duration::from_secs(5), back)
        .await
        .expect("port open again");
    let mut h = Host { s, checksum: true };
    h.handshake().await;
    for (id, (name, to)) in [
        ("reboot:", AdbReboot::Os),
        ("reboot:recovery", AdbReboot::Recovery),
        ("reboot:fastboot", AdbReboot::Fastboot),
    ]
    .into_iter()
    .enumerate()
    {
        t.set_down_on_reboot(false);
        let mut h = Host::connect(&adbd).await;
        h.handshake().await;
        let id = u32::try_from(id).expect("small") + 1;
        assert_eq!(h.service(id, name).await.expect("open"), b"");
        assert!(h.closed().await);
        assert_eq!(t.reboots().last(), Some(&to));
    }
}

#[tokio::test]
async fn adbd_going_down_drops_live_connections() {
    let (adbd, t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    t.set_up(false);
    assert!(h.closed().await);
}

#[tokio::test]
async fn stop_ends_open_connections() {
    let (adbd, _t) = start(AdbdConfig::default()).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    tokio::time::timeout(Duration::from_secs(5), adbd.stop())
        .await
        .expect("stops");
    assert!(h.closed().await);
}

#[tokio::test]
async fn wire_faults_break_the_protocol_on_purpose() {
    let config = AdbdConfig {
        faults: AdbdWireFaults {
            corrupt_magic: true,
            ..AdbdWireFaults::default()
        },
        ..AdbdConfig::default()
    };
    let (adbd, _t) = start(config).await;
    let mut h = Host::connect(&adbd).await;
    h.send(Packet::new(
        A_CNXN,
        A_VERSION_SKIP_CHECKSUM,
        MAX_PAYLOAD,
        HOST_IDENTITY.to_vec(),
    ))
    .await;
    let r = read_packet(&mut h.s, MAX_PAYLOAD, false).await;
    assert!(matches!(r, Err(WireError::BadMagic { .. })), "{r:?}");

    let config = AdbdConfig {
        faults: AdbdWireFaults {
            drop_open_okay: true,
            ..AdbdWireFaults::default()
        },
        ..AdbdConfig::default()
    };
    let (adbd, _t) = start(config).await;
    let mut h = Host::connect(&adbd).await;
    h.handshake().await;
    h.send(Packet::new(A_OPEN, 1, 0, b"shell:echo hi\0".to_vec()))
        .await;
    assert_eq!(h.recv().await.command, A_WRTE, "no OKAY first");
}

#[test]
fn identity_strips_separators_and_bounds_values() {
    let c = AdbdConfig {
        features: vec!["a".into(), "b;c".into()],
        ..AdbdConfig::default()
    };
    let banner = AdbBanner {
        product_name: "p:q".into(),
        model: "m=n;o".into(),
        device: "d".repeat(200),
    };
    let id = c.identity(&banner);
    assert_eq!(
        id,
        format!(
            "device::ro.product.name=p_q;ro.product.model=m_n_o;ro.product.device={};features=a,b_c",
            "d".repeat(91)
        )
    );
}

#[test]
fn services_parse() {
    assert_eq!(
        Service::parse("shell:ls -l"),
        Some(Service::Shell("ls -l".into()))
    );
    assert_eq!(
        Service::parse("shell,raw,TERM=xterm:ls"),
        Some(Service::Shell("ls".into()))
    );
    assert_eq!(Service::parse("shell,v2:ls"), None);
    assert_eq!(Service::parse("shell:"), None);
    assert_eq!(Service::parse("shellx:ls"), None);
    assert_eq!(
        Service::parse("reboot:"),
        Some(Service::Reboot(AdbReboot::Os))
    );
    assert_eq!(
        Service::parse("reboot:bootloader"),
        Some(Service::Reboot(AdbReboot::Bootloader))
    );
    assert_eq!(Service::parse("reboot:bogus"), None);
    assert_eq!(Service::parse("reboot"), None);
}
