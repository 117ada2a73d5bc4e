//! Reachability of a device's address, for images without an agent: is the host up?
//!
//! [`NetProber`] connects to the device's address with a timeout. A listening port and a
//! refused one both prove the host is up (its network stack answered, with a SYN-ACK or a
//! RST); only silence or an unreachable network counts as down. No fping and no raw ICMP:
//! those need capabilities a sandboxed systemd service does not have.
//!
//! Tests cannot tell a powered-off simulated device from a live one by connecting (every
//! loopback address answers), so the probe sits behind [`Prober`] and the simulated rack
//! answers it from its devices' power and boot state (`hw::sim::SimRack::prober`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::hw::{Error, Result};

/// How the host answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Something listens on the port.
    Open,
    /// The host refused the port: up, but nothing listens there.
    Refused,
}

/// A probe's future.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<Reachability>> + Send + 'a>>;

/// Answers "is the host at this address up?".
pub trait Prober: Send + Sync + std::fmt::Debug {
    /// Probe `addr` within `timeout`. `Ok` (either way) means the host answered.
    fn probe(&self, addr: SocketAddr, timeout: Duration) -> ProbeFuture<'_>;
}

/// The real probe: a TCP connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetProber;

impl Prober for NetProber {
    fn probe(&self, addr: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(probe(addr, timeout))
    }
}

/// Probe `addr` with a TCP connect.
///
/// # Errors
/// [`Error::Timeout`] when nothing answered in time, [`Error::Io`] for unreachable
/// networks and other errors.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<Reachability> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(Reachability::Open),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Ok(Reachability::Refused)
        }
        Ok(Err(e)) => Err(Error::io(format!("probe {addr}"), e)),
        Err(_) => Err(Error::Timeout {
            op: format!("probe {addr}"),
            after: started.elapsed(),
        }),
    }
}
