//! Reachability probe by TCP connect with a timeout. No fping/ICMP: those need
//! capabilities a sandboxed systemd service does not have. A refused connection still
//! proves the host is up (its stack answered with a RST).

use std::net::SocketAddr;
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
