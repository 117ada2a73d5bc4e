//! SUTAgent command-port client (TCP 20701): prompt framing (`$>\0`, possibly split across
//! reads), `ver` verification, the storage check (`testroot`, `isdir`, `mkdr`, then a file
//! written with `push`, read back with `hash` and removed with `rm`), `rebt` and its
//! confirmation ([`confirm_rebooted`]), `info uptimemillis`, address resolution within a
//! deadline ([`resolve`]), and the pure reply parsers. Each call opens its own connection,
//! except that a [`Session`] can be kept open for a later exchange ([`check_storage_on`]).
//!
//! Every call has one overall deadline; a refused, silent, slow, garbage-spewing or
//! half-open peer is an error within it, and at most [`MAX_REPLY`] bytes are buffered.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::hw::{Error, Result};

/// The prompt that ends every response.
pub const PROMPT: &[u8] = b"$>\0";
/// Reply prefix of a failed command.
pub const WARNING: &str = "##AGENT-WARNING##";
/// Most bytes buffered while waiting for a prompt.
pub const MAX_REPLY: usize = 64 * 1024;
/// The agent's command port.
pub const COMMAND_PORT: u16 = 20701;
/// The file the storage check writes, reads back and removes, in `<test root>/tests`.
pub const CHECK_FILE: &str = "mozpool-storage-check";
/// How long [`reboot`] waits, after sending `rebt`, to see what the agent does with it (drop
/// the connection, answer, or nothing); any of these counts as sent.
pub const REBOOT_ACK_WAIT: Duration = Duration::from_secs(2);

/// What `ver` reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SutInfo {
    /// Agent name, e.g. `SUTAgentAndroid` or `SUTAgentNegatus`.
    pub agent: String,
    /// Version text, e.g. `1.16`.
    pub version: String,
}

/// Start index of the first prompt in `buf`.
#[must_use]
pub fn find_prompt(buf: &[u8]) -> Option<usize> {
    buf.windows(PROMPT.len()).position(|w| w == PROMPT)
}

/// Response text (the bytes before the prompt) with trailing CR/LF/NUL/space removed;
/// `##AGENT-WARNING##` replies become [`Error::AgentWarning`].
///
/// # Errors
/// [`Error::AgentWarning`].
pub fn reply_text(reply: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\r', '\n', '\0', ' ']);
    let text = text.trim_start_matches(['\r', '\n']);
    if let Some(rest) = text.strip_prefix(WARNING) {
        return Err(Error::AgentWarning(rest.trim().chars().take(200).collect()));
    }
    Ok(text.to_owned())
}

/// Parse a `ver` reply: `^(\S+) Version (\S+)` on its first line.
///
/// # Errors
/// [`Error::AgentWarning`] or [`Error::BadReply`].
pub fn parse_version(reply: &[u8]) -> Result<SutInfo> {
    let text = reply_text(reply)?;
    let bad = || Error::BadReply {
        op: "ver".into(),
        expected: "'<agent> Version <version>'".into(),
        got: format!("{:?}", text.chars().take(80).collect::<String>()),
    };
    let line = text.lines().next().ok_or_else(bad)?;
    let mut parts = line.splitn(3, ' ');
    let agent = parts
        .next()
        .filter(|a| !a.is_empty() && !a.contains(char::is_whitespace));
    let word = parts.next();
    let version = parts
        .next()
        .and_then(|v| v.split(char::is_whitespace).next())
        .filter(|v| !v.is_empty());
    match (agent, word, version) {
        (Some(agent), Some("Version"), Some(version)) => Ok(SutInfo {
            agent: agent.to_owned(),
            version: version.to_owned(),
        }),
        _ => Err(bad()),
    }
}

/// Parse an `info uptimemillis` reply.
///
/// # Errors
/// [`Error::AgentWarning`] or [`Error::BadReply`].
pub fn parse_uptime(reply: &[u8]) -> Result<u64> {
    let text = reply_text(reply)?;
    text.trim().parse().map_err(|_| Error::BadReply {
        op: "info uptimemillis".into(),
        expected: "decimal milliseconds".into(),
        got: format!("{:?}", text.chars().take(80).collect::<String>()),
    })
}

/// An open command-port connection, past the agent's greeting. One connection can serve
/// several exchanges ([`Session::ver`], then [`Session::check_storage`]); each runs within
/// the deadline last set by [`Session::open`] or [`Session::renew`].
pub struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    started: Instant,
    addr: SocketAddr,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connect and read the greeting prompt, all within `timeout`.
    ///
    /// # Errors
    /// Refused/unreachable ([`Error::Io`]), silent or slow ([`Error::Timeout`]), closed
    /// ([`Error::NoReply`]), garbage ([`Error::TooLarge`]).
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let started = Instant::now();
        let deadline = started + timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::io(format!("connect to SUTAgent {addr}"), e)),
            Err(_) => {
                return Err(Error::Timeout {
                    op: format!("connect to SUTAgent {addr}"),
                    after: started.elapsed(),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let mut s = Session {
            stream,
            buf: Vec::new(),
            deadline,
            started,
            addr,
        };
        s.read_to_prompt("greeting").await?;
        Ok(s)
    }

    /// The agent's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Give the exchanges that follow `timeout` from now.
    pub fn renew(&mut self, timeout: Duration) {
        self.started = Instant::now();
        self.deadline = self.started + timeout;
    }

    /// Ask `ver` and check `<agent> Version <v>`.
    ///
    /// # Errors
    /// As [`Session::open`]; [`Error::BadReply`] for anything but a version line.
    pub async fn ver(&mut self) -> Result<SutInfo> {
        let reply = self.command("ver").await?;
        parse_version(&reply)
    }

    /// Storage check, as the original's SD-card check: ask `testroot`, check with `isdir`
    /// that it exists, create `<root>/tests` with `mkdr` when it is missing, `push` a small
    /// file there (the agent answers the MD5 of what it wrote, compared with ours), read it
    /// back with `hash`, and remove it with `rm`. A read-only or full card fails the push.
    /// Returns the test root.
    ///
    /// # Errors
    /// As [`Session::open`]; [`Error::AgentWarning`] (with the command) when the agent
    /// refuses a step; [`Error::BadReply`] when the test root is not an absolute path, is not
    /// a directory, the tests directory cannot be made, or an MD5 does not match.
    pub async fn check_storage(&mut self) -> Result<String> {
        let root = reply_text(&self.command("testroot").await?)?;
        let root = root.trim().to_owned();
        if root.is_empty() || root.contains(char::is_whitespace) || !root.starts_with('/') {
            return Err(Error::BadReply {
                op: "testroot".into(),
                expected: "an absolute path".into(),
                got: format!("{root:?}"),
            });
        }
        let isdir = reply_text(&self.command(&format!("isdir {root}")).await?)?;
        if isdir.trim() != "TRUE" {
            return Err(Error::BadReply {
                op: format!("isdir {root}"),
                expected: "TRUE".into(),
                got: format!("{:?}", isdir.trim()),
            });
        }
        let dir = format!("{}/tests", root.trim_end_matches('/'));
        if !self.is_dir(&dir).await? {
            // The Java agent answers `<dir> successfully created`, Negatus `successfuly`:
            // only a warning is taken as a refusal, and `isdir` then says whether it worked.
            self.checked(&format!("mkdr {dir}")).await?;
            if !self.is_dir(&dir).await? {
                return Err(Error::BadReply {
                    op: format!("mkdr {dir}"),
                    expected: "the directory to exist afterwards".into(),
                    got: "isdir says it does not".into(),
                });
            }
        }
        let path = format!("{dir}/{CHECK_FILE}");
        let data = check_data();
        let want = md5_hex(&data);
        let op = format!("push {path} {}", data.len());
        let mut line = format!("{op}\r\n").into_bytes();
        line.extend_from_slice(&data);
        self.send_raw(&op, &line).await?;
        let reply = self.read_to_prompt(&op).await?;
        let got = reply_text(&reply).map_err(|e| in_op(&op, e))?;
        expect_md5(&op, &want, &got, "of the bytes pushed")?;
        let op = format!("hash {path}");
        let got = self.checked(&op).await?;
        expect_md5(&op, &want, &got, "of the file read back")?;
        self.checked(&format!("rm {path}")).await?;
        Ok(root)
    }

    /// `isdir <path>`: `TRUE` is a directory. Anything else (`FALSE`, an `ls` error, the Java
    /// agent's "does not exist" warning) is not.
    async fn is_dir(&mut self, path: &str) -> Result<bool> {
        let reply = self.command(&format!("isdir {path}")).await?;
        match reply_text(&reply) {
            Ok(text) => Ok(text.trim() == "TRUE"),
            Err(Error::AgentWarning(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send `cmd` and return its reply text; a warning names the command.
    async fn checked(&mut self, cmd: &str) -> Result<String> {
        let reply = self.command(cmd).await?;
        reply_text(&reply).map_err(|e| in_op(cmd, e))
    }

    fn timeout(&self, op: &str) -> Error {
        Error::Timeout {
            op: format!("SUTAgent {} {op}", self.addr),
            after: self.started.elapsed(),
        }
    }

    /// Read until the next prompt; return the bytes before it.
    async fn read_to_prompt(&mut self, op: &str) -> Result<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = find_prompt(&self.buf) {
                let reply = self.buf[..i].to_vec();
                self.buf.drain(..i + PROMPT.len());
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(Error::TooLarge {
                    op: format!("SUTAgent {op}"),
                    limit: MAX_REPLY as u64,
                });
            }
            let n = match tokio::time::timeout_at(self.deadline, self.stream.read(&mut chunk)).await
            {
                Err(_) => return Err(self.timeout(op)),
                Ok(Err(e)) => return Err(Error::io(format!("SUTAgent {} {op}", self.addr), e)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(Error::NoReply {
                    op: format!("SUTAgent {} {op}", self.addr),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, cmd: &str) -> Result<()> {
        let line = format!("{cmd}\r\n");
        self.send_raw(cmd, line.as_bytes()).await
    }

    /// Write `bytes` (a command line, and for `push` the file after it); `op` names it.
    async fn send_raw(&mut self, op: &str, bytes: &[u8]) -> Result<()> {
        match tokio::time::timeout_at(self.deadline, self.stream.write_all(bytes)).await {
            Err(_) => Err(self.timeout(op)),
            Ok(Err(e)) => Err(Error::io(format!("SUTAgent {} send {op}", self.addr), e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<Vec<u8>> {
        self.send(cmd).await?;
        self.read_to_prompt(cmd).await
    }

    /// Polite close: `quit`, without waiting for its reply.
    pub async fn quit(mut self) {
        let _ = self.send("quit").await;
        let _ = self.stream.shutdown().await;
    }
}

/// Connect, read the prompt, ask `ver`, check `<agent> Version <v>`, say `quit`.
///
/// # Errors
/// Refused/unreachable ([`Error::Io`]), silent or slow ([`Error::Timeout`]), closed
/// ([`Error::NoReply`]), garbage ([`Error::BadReply`], [`Error::TooLarge`]), warnings.
pub async fn verify(addr: SocketAddr, timeout: Duration) -> Result<SutInfo> {
    let mut s = Session::open(addr, timeout).await?;
    let info = s.ver().await?;
    s.quit().await;
    Ok(info)
}

/// [`Session::check_storage`] on a connection of its own.
///
/// # Errors
/// As [`verify`]; [`Error::BadReply`] when the test root is missing or not a directory.
pub async fn check_storage(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = Session::open(addr, timeout).await?;
    let result = s.check_storage().await;
    s.quit().await;
    result
}

/// [`Session::check_storage`] on `kept`, a connection left open by an earlier exchange,
/// when it is to `addr`; else, or when the agent has closed `kept` in the meantime (an I/O
/// error or no reply), on a new connection. Says `quit` either way.
///
/// # Errors
/// As [`check_storage`].
pub async fn check_storage_on(
    kept: Option<Session>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String> {
    if let Some(mut s) = kept.filter(|s| s.addr() == addr) {
        s.renew(timeout);
        match s.check_storage().await {
            Err(Error::Io { .. } | Error::NoReply { .. }) => {}
            other => {
                s.quit().await;
                return other;
            }
        }
    }
    check_storage(addr, timeout).await
}

/// `info uptimemillis`: milliseconds since the agent's device booted.
///
/// # Errors
/// As [`verify`].
pub async fn uptime_millis(addr: SocketAddr, timeout: Duration) -> Result<u64> {
    let mut s = Session::open(addr, timeout).await?;
    let reply = s.command("info uptimemillis").await?;
    let ms = parse_uptime(&reply)?;
    s.quit().await;
    Ok(ms)
}

/// What the agent did after `rebt` was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebootAck {
    /// It closed or reset the connection (the usual: the device is going down).
    Dropped,
    /// It answered (the text before the prompt); whether it reboots is for
    /// [`confirm_rebooted`] to find out.
    Answered(String),
    /// Nothing within [`REBOOT_ACK_WAIT`] (or the deadline).
    Silent,
}

/// A `rebt` that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebootSent {
    /// `info uptimemillis` just before `rebt`, when the agent answered it with a number: the
    /// reference [`confirm_rebooted`] compares against.
    pub uptime_before: Option<u64>,
    /// What the agent did with `rebt`.
    pub ack: RebootAck,
}

impl std::fmt::Display for RebootSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ack {
            RebootAck::Dropped => f.write_str("rebt sent, connection dropped")?,
            RebootAck::Answered(text) => write!(
                f,
                "rebt sent, agent answered {:?}",
                text.chars().take(80).collect::<String>()
            )?,
            RebootAck::Silent => f.write_str("rebt sent, no answer")?,
        }
        match self.uptime_before {
            Some(ms) => write!(f, "; uptime before: {ms} ms"),
            None => f.write_str("; uptime before: unknown"),
        }
    }
}

/// Read `info uptimemillis`, then send `rebt`, on one connection. Sent is done: the agent may
/// drop the connection (the usual: the device goes down, often with a reset), answer, or say
/// nothing; all count. Whether the device really rebooted is [`confirm_rebooted`]'s question,
/// with [`RebootSent::uptime_before`].
///
/// # Errors
/// Only a failure to reach the agent or to send: as [`Session::open`], or an error while
/// asking the uptime or writing `rebt`. An uptime the agent cannot give (a warning, no
/// number) is not an error: [`RebootSent::uptime_before`] is `None`.
pub async fn reboot(addr: SocketAddr, timeout: Duration) -> Result<RebootSent> {
    let mut s = Session::open(addr, timeout).await?;
    let reply = s.command("info uptimemillis").await?;
    let uptime_before = parse_uptime(&reply).ok();
    s.send("rebt").await?;
    // Only to tell what happened: a short look, within the deadline.
    s.deadline = s.deadline.min(Instant::now() + REBOOT_ACK_WAIT);
    let ack = match s.read_to_prompt("rebt").await {
        Ok(reply) => RebootAck::Answered(String::from_utf8_lossy(&reply).trim().to_owned()),
        Err(Error::NoReply { .. } | Error::Io { .. }) => RebootAck::Dropped,
        Err(Error::TooLarge { .. }) => RebootAck::Answered("(a reply too large to keep)".into()),
        Err(_) => RebootAck::Silent,
    };
    Ok(RebootSent { uptime_before, ack })
}

/// How [`confirm_rebooted`] saw the reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rebooted {
    /// `info uptimemillis` answered less than before `rebt`.
    UptimeDropped {
        /// Before `rebt`, in ms.
        before: u64,
        /// Now, in ms.
        now: u64,
    },
    /// The agent stopped answering, then answered again.
    CameBack {
        /// Its uptime when it came back, when it gave one.
        uptime: Option<u64>,
    },
}

/// Confirm that the device behind the agent at `addr` rebooted after [`reboot`]: poll
/// `info uptimemillis` (each attempt on a new connection) until the agent has gone away and
/// come back, or answers an uptime below `before_uptime` ([`RebootSent::uptime_before`]),
/// within `limit`. A device takes a while to boot: give this the boot time, not a command's.
///
/// # Errors
/// [`Error::Timeout`] when neither was seen within `limit`, saying which: the agent stayed up
/// (the device did not reboot) or went away and has not come back.
pub async fn confirm_rebooted(
    addr: SocketAddr,
    before_uptime: Option<u64>,
    limit: Duration,
) -> Result<Rebooted> {
    let started = Instant::now();
    let deadline = started + limit;
    let poll = (limit / 40).clamp(Duration::from_millis(20), Duration::from_secs(1));
    // A device going down stops answering: connections are refused, reset, or (a host gone
    // from the network) time out. One attempt gets enough time that a merely slow agent is
    // not taken for one that went away.
    let attempt = (limit / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut away = false;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let budget = attempt.min(left);
        match uptime_millis(addr, budget).await {
            Ok(now) => {
                if let Some(before) = before_uptime
                    && now < before
                {
                    return Ok(Rebooted::UptimeDropped { before, now });
                }
                if away {
                    return Ok(Rebooted::CameBack { uptime: Some(now) });
                }
                last = Some(now);
            }
            // Up and talking, just not with a number.
            Err(Error::AgentWarning(_) | Error::BadReply { .. }) if away => {
                return Ok(Rebooted::CameBack { uptime: None });
            }
            Err(Error::AgentWarning(_) | Error::BadReply { .. }) => {}
            // Cut short by the end of `limit`, not by the agent: that tells nothing.
            Err(Error::Timeout { .. }) if budget < attempt => {}
            Err(_) => away = true,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(poll.min(left)).await;
    }
    let seen = match (away, last, before_uptime) {
        (true, _, _) => "the agent went away and has not come back".to_owned(),
        (false, Some(now), Some(before)) => {
            format!("the agent stayed up: uptime {now} ms, {before} ms before rebt")
        }
        (false, _, _) => "the agent stayed up".to_owned(),
    };
    Err(Error::Timeout {
        op: format!("confirming the reboot of SUTAgent {addr} ({seen})"),
        after: started.elapsed(),
    })
}

/// Why a SUTAgent address did not resolve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolver failed (unknown host, no network, bad text).
    #[error("{0}")]
    Lookup(#[source] std::io::Error),
    /// The name resolved to no address.
    #[error("resolves to no address")]
    NoAddress,
    /// The resolver did not answer within the limit.
    #[error("no answer from the resolver within {0:?}")]
    TimedOut(Duration),
}

/// Resolve a SUTAgent address `host:port` within `limit`. An IP address is parsed on the
/// spot; a host name is looked up on tokio's blocking pool (`getaddrinfo` blocks), never on
/// an async worker, and a resolver that takes longer than `limit` is an error, not a hang.
///
/// # Errors
/// [`ResolveError`].
pub async fn resolve(addr: &str, limit: Duration) -> Result<SocketAddr, ResolveError> {
    resolve_with(tokio::net::lookup_host(addr.to_owned()), limit).await
}

/// [`resolve`] with the lookup given, so a resolver that never answers can be tested.
async fn resolve_with<I>(
    lookup: impl Future<Output = std::io::Result<I>>,
    limit: Duration,
) -> Result<SocketAddr, ResolveError>
where
    I: Iterator<Item = SocketAddr>,
{
    match tokio::time::timeout(limit, lookup).await {
        Err(_) => Err(ResolveError::TimedOut(limit)),
        Ok(Err(e)) => Err(ResolveError::Lookup(e)),
        Ok(Ok(mut addrs)) => addrs.next().ok_or(ResolveError::NoAddress),
    }
}

/// The bytes the storage check pushes: fresh each time, so a file left from an earlier check
/// cannot pass for this one. No CR or LF and a first word that is no command: an agent that
/// refuses the push without reading the bytes (the Java agent does) reads them as the start
/// of a command line, which can then only be an unknown command.
fn check_data() -> Vec<u8> {
    format!(
        "mozpool-storage-check {:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
    .into_bytes()
}

/// Lower-case hex MD5, as both agents print it.
fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Check an agent's MD5 reply against ours.
fn expect_md5(op: &str, want: &str, got: &str, what: &str) -> Result<()> {
    let got = got.trim();
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(Error::BadReply {
            op: op.to_owned(),
            expected: format!("MD5 {want} {what}"),
            got: format!("{:?}", got.chars().take(80).collect::<String>()),
        })
    }
}

/// An agent warning, prefixed with the command that drew it.
fn in_op(op: &str, e: Error) -> Error {
    match e {
        Error::AgentWarning(text) => Error::AgentWarning(format!("{op}: {text}")),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        let i = parse_version(b"SUTAgentAndroid Version 1.16\n").expect("ok");
        assert_eq!(i.agent, "SUTAgentAndroid");
        assert_eq!(i.version, "1.16");
        let i = parse_version(b"SUTAgentNegatus Version 0.9 extra\n").expect("ok");
        assert_eq!(i.version, "0.9");
        for bad in [
            &b""[..],
            b"\n",
            b"SUTAgentAndroid version 1.16",
            b"Version 1.16",
            b"SUTAgentAndroid Version ",
            b"\xff\xfe Version",
        ] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
        let w = parse_version(b"##AGENT-WARNING## [ver] command is currently not implemented.\n");
        assert!(matches!(w, Err(Error::AgentWarning(_))));
    }

    #[test]
    fn prompt_and_uptime() {
        assert_eq!(find_prompt(b"abc$>\0"), Some(3));
        assert_eq!(find_prompt(b"abc$>"), None);
        assert_eq!(find_prompt(b"$>\0"), Some(0));
        assert_eq!(parse_uptime(b"123456\n").expect("ok"), 123_456);
        assert!(parse_uptime(b"12a\n").is_err());
    }

    #[test]
    fn md5_matches_the_rfc_1321_vectors() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        let e = expect_md5(
            "push x 3",
            "900150983cd24fb0d6963f7d28e17f72",
            "\n900150983CD24FB0D6963F7D28E17F72\n",
            "w",
        );
        assert!(e.is_ok(), "case and blanks do not matter: {e:?}");
        let e = expect_md5(
            "push x 3",
            "900150983cd24fb0d6963f7d28e17f72",
            "d41d8cd98f00b204e9800998ecf8427e",
            "of the bytes pushed",
        )
        .expect_err("mismatch");
        assert!(
            e.to_string()
                .contains("expected MD5 900150983cd24fb0d6963f7d28e17f72 of the bytes pushed"),
            "{e}"
        );
    }

    #[test]
    fn check_data_is_fresh_and_never_a_command_line() {
        let (a, b) = (check_data(), check_data());
        assert_ne!(a, b);
        assert!(!a.contains(&b'\r') && !a.contains(&b'\n'));
        assert!(a.starts_with(b"mozpool-storage-check "));
    }

    #[tokio::test]
    async fn resolving_within_the_limit() {
        let a = resolve("127.0.0.1:20701", Duration::from_secs(5))
            .await
            .expect("an IP is parsed");
        assert_eq!(a, "127.0.0.1:20701".parse::<SocketAddr>().expect("addr"));
        let a = resolve("localhost:20701", Duration::from_secs(30))
            .await
            .expect("localhost resolves");
        assert!(a.ip().is_loopback() && a.port() == 20701, "{a}");
        let e = resolve_with(
            std::future::pending::<std::io::Result<std::vec::IntoIter<SocketAddr>>>(),
            Duration::from_millis(20),
        )
        .await
        .expect_err("a resolver that never answers");
        assert!(matches!(e, ResolveError::TimedOut(_)), "{e}");
        let e = resolve_with(
            async { Ok(Vec::<SocketAddr>::new().into_iter()) },
            Duration::from_secs(1),
        )
        .await
        .expect_err("no address");
        assert!(matches!(e, ResolveError::NoAddress), "{e}");
        assert!(matches!(
            resolve("no port", Duration::from_secs(1)).await,
            Err(ResolveError::Lookup(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_version(&bytes);
            let _ = parse_uptime(&bytes);
            let _ = find_prompt(&bytes);
        }
    }
}
