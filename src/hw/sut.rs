//! SUTAgent command-port client (TCP 20701): prompt framing (`$>\0`, possibly split across
//! reads), `ver` verification, the storage check (`testroot`, `isdir`), `rebt`,
//! `info uptimemillis`, and the pure reply parsers. Each call opens its own connection,
//! except that a [`Session`] can be kept open for a later exchange ([`check_storage_on`]).
//!
//! Every call has one overall deadline; a refused, silent, slow, garbage-spewing or
//! half-open peer is an error within it, and at most [`MAX_REPLY`] bytes are buffered.

use std::net::SocketAddr;
use std::time::Duration;

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

    /// Storage check (the original's SD-card check, reduced to what the agent answers
    /// without writing): ask `testroot` and check with `isdir` that it exists. Returns the
    /// test root.
    ///
    /// # Errors
    /// As [`Session::open`]; [`Error::BadReply`] when the test root is not an absolute
    /// path or `isdir` answers anything but `TRUE`.
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
        if isdir.trim() == "TRUE" {
            Ok(root)
        } else {
            Err(Error::BadReply {
                op: format!("isdir {root}"),
                expected: "TRUE".into(),
                got: format!("{:?}", isdir.trim()),
            })
        }
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
        match tokio::time::timeout_at(self.deadline, self.stream.write_all(line.as_bytes())).await {
            Err(_) => Err(self.timeout(cmd)),
            Ok(Err(e)) => Err(Error::io(format!("SUTAgent {} send {cmd}", self.addr), e)),
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

/// Send `rebt` and expect the connection to drop without a prompt.
///
/// # Errors
/// As [`verify`]; [`Error::BadReply`] if the agent answered instead of rebooting,
/// [`Error::Timeout`] if the connection stayed up.
pub async fn reboot(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = Session::open(addr, timeout).await?;
    s.send("rebt").await?;
    match s.read_to_prompt("rebt").await {
        Ok(reply) => Err(Error::BadReply {
            op: "rebt".into(),
            expected: "connection to drop".into(),
            got: format!("{:?}", String::from_utf8_lossy(&reply)),
        }),
        Err(Error::NoReply { .. }) => Ok(()),
        Err(Error::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
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

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_version(&bytes);
            let _ = parse_uptime(&bytes);
            let _ = find_prompt(&bytes);
        }
    }
}
