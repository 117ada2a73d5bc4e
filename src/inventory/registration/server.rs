//! The registration listener: raw TCP, one message per connection.
//!
//! Per connection: the peer must be inside an allowed network and within its share of
//! connections ([`Gate`]), else the connection is closed at once (counted, logged at a
//! bounded rate). Then: read until `\n`, EOF (the Negatus half-close) or the read deadline,
//! at most [`MAX_MESSAGE_BYTES`] + 1 bytes; parse; apply in one store write; reply `OK\n` or
//! `ERROR <reason>\n` (best effort: Negatus never reads it) and close. The accept loop never
//! waits: a connection waits for one of the [`MAX_CONNECTIONS`] slots while holding its
//! peer's share, so a silent or flooding host holds at most its share, each for at most the
//! read deadline, and cannot delay another host's registration.
//!
//! The Java agent takes any reply line containing `ok` (in any case) for success, so an error
//! reply must never contain those two letters: every one is built by [`error_reply`], whose
//! fixed texts avoid them and which percent-encodes the `o` of an `ok` in echoed values.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::apply::{Channel, apply, log_malformed};
use super::parse::{MAX_MESSAGE_BYTES, RegistrationError, parse};
use super::trust::{Gate, Refused};
use crate::domain::clock::Clock;
use crate::storage::Store;
use tokio_util::task::TaskTracker;

/// What the listener needs: the store it writes registrations to, this controller's name
/// (new devices are recorded as owned by it) and the gate. Cheap to clone.
#[derive(Clone)]
pub struct Listener {
    /// Where registrations are applied and logged.
    pub store: Store,
    /// This controller's name.
    pub server: Arc<str>,
    /// Connection tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Allowed networks, per-peer shares, rate limits and counters.
    pub gate: Arc<Gate>,
    /// Time for the gate's buckets outside a store write.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("server", &self.server)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

/// Most registration connections served at once; more wait (each holding its peer's share).
pub const MAX_CONNECTIONS: usize = 64;

/// Serve registrations on `listener` until `shutdown` is cancelled. `deadline` bounds each
/// connection from accept to close; the gate's `read_timeout_ms` bounds the read within it.
pub async fn serve(
    app: Listener,
    listener: TcpListener,
    deadline: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        let c = &app.gate.config;
        tracing::info!(
            %addr,
            allow = %c.allowed(),
            per_peer = c.per_peer_connections,
            read_timeout_ms = c.read_timeout_ms,
            new_devices_per_minute = c.new_devices_per_minute,
            "registration listener ready; it serves only the allowed networks"
        );
    }
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "registration accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let ip = peer.ip().to_canonical();
        if !app.gate.allows(ip) {
            turn_away(&app, stream, ip, Refused::NotAllowed);
            continue;
        }
        let Some(slot) = app.gate.enter(ip) else {
            turn_away(&app, stream, ip, Refused::PeerBusy);
            continue;
        };
        let app = app.clone();
        let stop = shutdown.clone();
        let permits = permits.clone();
        app.tasks.clone().spawn(async move {
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = async {
                    let Ok(Ok(permit)) =
                        tokio::time::timeout(deadline, permits.acquire_owned()).await
                    else {
                        return;
                    };
                    let rest = deadline.saturating_sub(started.elapsed());
                    handle(&app, stream, peer, rest).await;
                    drop(permit);
                } => {}
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Close a connection the gate refused: counted, and logged when the log rate allows (in a
/// task of its own, so the accept loop never waits for the store).
fn turn_away(app: &Listener, stream: TcpStream, ip: IpAddr, kind: Refused) {
    drop(stream);
    let Some(unlogged) = app.gate.refusal(kind, app.clock.now()) else {
        return;
    };
    let reason = match kind {
        Refused::NotAllowed => format!(
            "connection from {ip} closed: not in the allowed networks ({})",
            app.gate.config.allowed()
        ),
        _ => format!(
            "connection from {ip} closed: it already holds {} registration connections",
            app.gate.config.per_peer_connections
        ),
    };
    let app2 = app.clone();
    app.tasks
        .spawn(async move { write_log(&app2, ip, unlogged, reason).await });
}

/// Serve one connection within `deadline`.
async fn handle(app: &Listener, mut stream: TcpStream, peer: SocketAddr, deadline: Duration) {
    let started = tokio::time::Instant::now();
    let read_deadline = deadline.min(Duration::from_millis(app.gate.config.read_timeout_ms));
    let reply = match tokio::time::timeout(read_deadline, read_message(&mut stream)).await {
        Err(_) => Err(ReadError::TimedOut(read_deadline)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) => Ok(bytes),
    };
    let rest = deadline.saturating_sub(started.elapsed());
    let answer = match reply {
        // Connected and closed without a byte (a TCP probe, a port scan): nothing to record.
        Ok(bytes) if bytes.is_empty() => {
            tracing::debug!(%peer, "empty registration connection");
            app.gate.metrics.refused(Refused::Incomplete);
            error_reply(&RegistrationError::Empty)
        }
        Ok(bytes) => match tokio::time::timeout(rest, register(app, &bytes, peer.ip())).await {
            Ok(a) => a,
            Err(_) => error_reply(&STORE_TIMEOUT),
        },
        Err(reason) => {
            let kind = match reason {
                ReadError::TooLong => Refused::Malformed,
                ReadError::Io(_) | ReadError::TimedOut(_) => Refused::Incomplete,
            };
            log(app, peer.ip(), kind, reason.to_string()).await;
            error_reply(&reason)
        }
    };
    // Best effort and bounded: Negatus has half-closed and never reads the reply.
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// Why no complete message arrived. The text is logged and sent back to the agent.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The connection failed while reading.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// More than [`MAX_MESSAGE_BYTES`] arrived before the end of the message.
    #[error("registration message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// The deadline passed before the message was complete.
    #[error("no complete registration message within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

/// Read one message: up to `\n`, EOF, or one byte past the size cap.
async fn read_message(stream: &mut TcpStream) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        let got = &chunk[..n];
        if let Some(i) = got.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&got[..=i]);
        } else {
            buf.extend_from_slice(got);
        }
        if buf.len() > MAX_MESSAGE_BYTES {
            return Err(ReadError::TooLong);
        }
        if buf.last() == Some(&b'\n') {
            return Ok(buf);
        }
    }
}

/// Parse and apply one message; the reply line.
async fn register(app: &Listener, bytes: &[u8], peer: IpAddr) -> String {
    let msg = match parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            log(app, peer, Refused::Malformed, e.to_string()).await;
            return error_reply(&e);
        }
    };
    let server = app.server.to_string();
    let gate = app.gate.clone();
    let result = app
        .store
        .write(move |tx, now| apply(tx, now, &server, &msg, Some(peer), Channel::Tcp, &gate))
        .await;
    match result {
        Ok(Ok(a)) => {
            tracing::info!(%peer, device = %a.device.name, created = a.created, "device registered");
            "OK\n".to_owned()
        }
        // Counted and logged (at the gate's rate) by `apply`.
        Ok(Err(reason)) => error_reply(&reason),
        Err(e) => {
            tracing::error!(error = %e, "cannot store a registration");
            error_reply(&STORE_FAILED)
        }
    }
}

/// Reply text when the store write did not finish within the connection's deadline.
const STORE_TIMEOUT: &str = "the registration could not be stored in time";
/// Reply text when the store write failed.
const STORE_FAILED: &str = "the registration could not be stored";

/// The reply line to a refused registration: `ERROR <reason>\n`, never containing `ok` in any
/// case. The Java agent lower-cases each reply line and takes one containing `ok` for success
/// (hardware.md §1.7), and a reason may echo what the agent sent (`NAME=brokenname`), so
/// every `o` followed by a `k` is written as its percent-escape (`%6F`, `%4F`), the encoding
/// the agent's own message uses.
pub fn error_reply(reason: &dyn std::fmt::Display) -> String {
    let text = reason.to_string();
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str("ERROR ");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // U+212A KELVIN SIGN lower-cases to `k` too.
        let k_next = matches!(chars.peek(), Some('k' | 'K' | '\u{212A}'));
        match c {
            'o' if k_next => out.push_str("%6F"),
            'O' if k_next => out.push_str("%4F"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Count a refusal that names no device and, when the gate's log rate allows, log it (at
/// INFO and under `registration` in the store).
async fn log(app: &Listener, peer: IpAddr, kind: Refused, reason: String) {
    if let Some(unlogged) = app.gate.refusal(kind, app.clock.now()) {
        write_log(app, peer, unlogged, reason).await;
    }
}

/// Write one refusal the gate let through to the logs.
async fn write_log(app: &Listener, peer: IpAddr, unlogged: u64, reason: String) {
    tracing::info!(%peer, %reason, unlogged, "registration refused");
    let from = peer.to_canonical().to_string();
    if let Err(e) = app
        .store
        .write(move |tx, now| log_malformed(tx, now, &from, Channel::Tcp, &reason, unlogged))
        .await
    {
        tracing::warn!(error = %e, "cannot log a refused registration");
    }
}

#[cfg(test)]
mod tests {
    use super::super::apply::Refusal;
    use super::*;

    fn has_ok(s: &str) -> bool {
        s.to_lowercase().contains("ok")
    }

    /// Every error reply the listener can send, with neutral sample values: the fixed texts
    /// must not contain `ok` at all (so the escaping only ever touches echoed values).
    /// The `match`es fail to compile when a variant is added without being listed here.
    fn every_reason() -> Vec<String> {
        use RegistrationError as E;
        let parse = [
            E::Empty,
            E::TooLong,
            E::TooManyFields,
            E::BadField("x".into()),
            E::Duplicate("NAME".into()),
            E::BadEscape("NAME".into()),
            E::NotUtf8("NAME".into()),
            E::ControlChar("NAME".into()),
            E::ValueTooLong("OS".into()),
            E::Missing("NAME"),
            E::Missing("IPADDR"),
            E::NotNumeric {
                key: "CMDPORT".into(),
                what: "a port number (1-65535)",
                value: "x".into(),
            },
            E::NotNumeric {
                key: "MEMORY".into(),
                what: "a non-negative integer",
                value: "x".into(),
            },
            E::BadAddress("x".into()),
            E::PortConflict {
                ipaddr: 1,
                cmdport: 2,
            },
            E::BadName {
                name: "x".into(),
                reason: "device name \"x y\" may only contain letters".into(),
            },
        ];
        for e in &parse {
            match e {
                E::Empty
                | E::TooLong
                | E::TooManyFields
                | E::BadField(_)
                | E::Duplicate(_)
                | E::BadEscape(_)
                | E::NotUtf8(_)
                | E::ControlChar(_)
                | E::ValueTooLong(_)
                | E::Missing(_)
                | E::NotNumeric { .. }
                | E::BadAddress(_)
                | E::PortConflict { .. }
                | E::BadName { .. } => {}
            }
        }
        let refusals = [
            Refusal::Retired { device: "d".into() },
            Refusal::OtherController {
                device: "d".into(),
                owner: "a".into(),
                server: "b".into(),
            },
            Refusal::OtherAgent {
                device: "d".into(),
                registered_by: "a".into(),
                agent: "b".into(),
            },
            Refusal::NotPeer {
                ipaddr: "10.0.0.2".into(),
                peer: "10.0.0.1".into(),
            },
            Refusal::NotOpen {
                device: "d".into(),
                origin: "config".into(),
            },
            Refusal::AddressHeld {
                device: "d".into(),
                sut: "10.0.0.1:20701".into(),
                new: "10.0.0.2:20701".into(),
            },
            Refusal::TooManyNew { per_minute: 10 },
            Refusal::Unmatched {
                agent: "SUTAgent".into(),
                peer: "10.0.0.3".into(),
                matched: 0,
            },
            Refusal::NoPeer {
                ipaddr: "0.0.0.0:20701".into(),
            },
        ];
        for r in &refusals {
            match r {
                Refusal::Retired { .. }
                | Refusal::OtherController { .. }
                | Refusal::OtherAgent { .. }
                | Refusal::NotPeer { .. }
                | Refusal::NotOpen { .. }
                | Refusal::AddressHeld { .. }
                | Refusal::TooManyNew { .. }
                | Refusal::Unmatched { .. }
                | Refusal::NoPeer { .. } => {}
            }
        }
        let read = [
            ReadError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            ReadError::TooLong,
            ReadError::TimedOut(Duration::from_secs(10)),
        ];
        for r in &read {
            match r {
                ReadError::Io(_) | ReadError::TooLong | ReadError::TimedOut(_) => {}
            }
        }
        let mut all: Vec<String> = parse.iter().map(ToString::to_string).collect();
        all.extend(refusals.iter().map(ToString::to_string));
        all.extend(read.iter().map(ToString::to_string));
        all.push(STORE_TIMEOUT.to_owned());
        all.push(STORE_FAILED.to_owned());
        all
    }

    #[test]
    fn no_error_reply_contains_ok() {
        let all = every_reason();
        assert!(all.len() >= 25, "{}", all.len());
        for reason in &all {
            assert!(!has_ok(reason), "fixed text contains ok: {reason}");
            let reply = error_reply(reason);
            assert!(
                reply.starts_with("ERROR ") && reply.ends_with('\n'),
                "{reply:?}"
            );
            assert!(!has_ok(&reply), "{reply}");
            assert_eq!(reply, format!("ERROR {reason}\n"), "nothing to escape");
        }
    }

    #[test]
    fn echoed_values_never_make_an_ok() {
        for value in [
            "ok",
            "OK",
            "oK",
            "Ok",
            "o\u{212A}",
            "brokenname",
            "token",
            "lookup",
            "ook",
            "okok",
            "b\u{f6}k",
            "%6Fk",
        ] {
            let reasons = [
                RegistrationError::BadName {
                    name: value.into(),
                    reason: "x".into(),
                }
                .to_string(),
                RegistrationError::BadField(value.into()).to_string(),
                Refusal::Retired {
                    device: value.into(),
                }
                .to_string(),
            ];
            for r in reasons {
                let reply = error_reply(&r);
                assert!(!has_ok(&reply), "{value:?}: {reply}");
                assert!(!reply.trim_end().contains('\n'), "{reply:?}");
            }
        }
        assert_eq!(error_reply(&"a booking"), "ERROR a bo%6Fking\n");
        assert_eq!(error_reply(&"OK"), "ERROR %4FK\n");
    }
}
