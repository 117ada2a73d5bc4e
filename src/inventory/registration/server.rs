//! The registration listener: raw TCP, one message per connection.
//!
//! Per connection: read until `\n`, EOF (the Negatus half-close) or the deadline, at most
//! [`MAX_MESSAGE_BYTES`] + 1 bytes; parse; apply in one store write; reply `OK\n` or
//! `ERROR <reason>\n` (best effort: Negatus never reads it) and close. A connection cap and
//! the per-connection deadline (covering read, store write and reply) mean a slow or hostile
//! client holds one permit for at most the deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::apply::{Channel, apply, log_malformed};
use super::parse::{MAX_MESSAGE_BYTES, parse};
use crate::storage::Store;
use tokio_util::task::TaskTracker;

/// What the listener needs: the store it writes registrations to and this controller's name
/// (new devices are recorded as owned by it). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Where registrations are applied and logged.
    pub store: Store,
    /// This controller's name.
    pub server: Arc<str>,
    /// Connection tasks, awaited at shutdown.
    pub tasks: TaskTracker,
}

/// Most registration connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Serve registrations on `listener` until `shutdown` is cancelled. `deadline` bounds each
/// connection from accept to close.
pub async fn serve(
    app: Listener,
    listener: TcpListener,
    deadline: Duration,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "registration listener ready");
    }
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
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
        let app = app.clone();
        let stop = shutdown.clone();
        app.tasks.clone().spawn(async move {
            tokio::select! {
                () = handle(&app, stream, peer, deadline) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Serve one connection within `deadline`.
async fn handle(app: &Listener, mut stream: TcpStream, peer: SocketAddr, deadline: Duration) {
    let started = tokio::time::Instant::now();
    let reply = match tokio::time::timeout(deadline, read_message(&mut stream)).await {
        Err(_) => Err(ReadError::TimedOut(deadline)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) => Ok(bytes),
    };
    let rest = deadline.saturating_sub(started.elapsed());
    let answer = match reply {
        // Connected and closed without a byte (a TCP probe, a port scan): nothing to record.
        Ok(bytes) if bytes.is_empty() => {
            tracing::debug!(%peer, "empty registration connection");
            "ERROR empty registration message\n".to_owned()
        }
        Ok(bytes) => match tokio::time::timeout(rest, register(app, &bytes, peer.ip())).await {
            Ok(a) => a,
            Err(_) => "ERROR the registration could not be stored in time\n".to_owned(),
        },
        Err(reason) => {
            tracing::info!(%peer, %reason, "registration refused");
            log(app, peer.ip(), reason.to_string()).await;
            format!("ERROR {reason}\n")
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
            let reason = e.to_string();
            tracing::info!(%peer, %reason, "registration refused");
            log(app, peer, reason.clone()).await;
            return format!("ERROR {reason}\n");
        }
    };
    let server = app.server.to_string();
    let result = app
        .store
        .write(move |tx, now| apply(tx, now, &server, &msg, Some(peer), Channel::Tcp))
        .await;
    match result {
        Ok(Ok(a)) => {
            tracing::info!(%peer, device = %a.device.name, created = a.created, "device registered");
            "OK\n".to_owned()
        }
        Ok(Err(reason)) => {
            tracing::info!(%peer, %reason, "registration refused");
            format!("ERROR {reason}\n")
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store a registration");
            "ERROR the registration could not be stored\n".to_owned()
        }
    }
}

async fn log(app: &Listener, peer: IpAddr, reason: String) {
    let from = peer.to_string();
    if let Err(e) = app
        .store
        .write(move |tx, now| log_malformed(tx, now, &from, Channel::Tcp, &reason))
        .await
    {
        tracing::warn!(error = %e, "cannot log a refused registration");
    }
}
