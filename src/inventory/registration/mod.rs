//! Device self-registration: the SUTAgent registration protocol (raw TCP, both agent forms)
//! and its JSON form over HTTP, turned into inventory upserts.
//!
//! - [`parse`]: the pure message parser (fuzzable, no I/O);
//! - [`apply`]: the policy that applies a validated registration in one store write;
//! - [`server`]: the TCP listener (allowed networks, per-peer share, read deadline);
//! - [`trust`]: the `[registration]` settings and the gate both channels share (networks,
//!   rate limits, refusal counters);
//! - [`send_registration`]: the agent side, for the virtual rack and tests.
//!
//! This module must not touch hardware or decide Lifeguard transitions: a new device is
//! created in state `new` and Lifeguard takes it from there. Protocol and policy are
//! described in `docs/registration.md`.

pub mod apply;
pub mod parse;
pub mod server;
pub mod trust;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use apply::{Applied, Channel, Refusal};
pub use parse::{RegistrationError, RegistrationMessage};

/// Which agent's wire form to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentForm {
    /// The Java SUTAgent: `register ` prefix, `\n` terminator, reads the reply line.
    Java,
    /// Negatus: no prefix, no newline, half-closes and never reads a reply.
    Negatus,
}

/// How long [`send_registration`] waits for connect + reply (the Java agent uses 30 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Register like an agent would: connect to `addr`, send `fields` (percent-encoded as
/// Android's `Uri.encode` does, in the given order) in `form`, and return the reply line
/// (`OK` or `ERROR ...`, without the newline). For [`AgentForm::Negatus`] the reply is not
/// read and the result is an empty string.
///
/// # Errors
/// Connection failures, and a timeout after 10 s.
pub async fn send_registration(
    addr: SocketAddr,
    fields: &[(&str, &str)],
    form: AgentForm,
) -> std::io::Result<String> {
    send_registration_from(addr, None, fields, form).await
}

/// [`send_registration`] from the local address `from` (a device registers from its own
/// address, which the listener checks against `IPADDR`); `None` lets the system choose.
///
/// # Errors
/// Connection failures (including an address that cannot be bound), and a timeout after 10 s.
pub async fn send_registration_from(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    fields: &[(&str, &str)],
    form: AgentForm,
) -> std::io::Result<String> {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", parse::encode(k), parse::encode(v)))
        .collect();
    let body = body.join("&");
    let run = async {
        let mut stream = match from {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        match form {
            AgentForm::Java => {
                stream
                    .write_all(format!("register {body}\n").as_bytes())
                    .await?;
                let mut reply = Vec::new();
                let mut chunk = [0u8; 256];
                loop {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    reply.extend_from_slice(&chunk[..n]);
                    if reply.contains(&b'\n') || reply.len() > 4096 {
                        break;
                    }
                }
                let line = String::from_utf8_lossy(&reply);
                Ok(line.lines().next().unwrap_or_default().trim().to_owned())
            }
            AgentForm::Negatus => {
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await?;
                Ok(String::new())
            }
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "registration timed out"))?
}
