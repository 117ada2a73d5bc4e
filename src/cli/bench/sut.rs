//! A light SUTAgent for benchmarks: one tokio listener per device instead of the simulator's
//! threads, answering `ver`, `info`, `testroot`, `isdir`, `rebt` and `quit` after a set delay.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Start `n` agents on loopback; each waits `delay` before its greeting prompt. Returns their
/// addresses; they stop when `stop` is cancelled.
///
/// # Errors
/// A socket that cannot be bound.
pub async fn start(
    n: usize,
    delay: Duration,
    stop: &CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    () = stop.cancelled() => return,
                };
                if let Ok((s, _)) = conn {
                    tokio::spawn(serve(s, delay));
                }
            }
        });
    }
    Ok(addrs)
}

async fn serve(mut s: TcpStream, delay: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    s.write_all(crate::hw::sut::PROMPT).await?;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for &b in &buf[..n] {
            if b != b'\r' && b != b'\n' {
                if line.len() < 4096 {
                    line.push(b);
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let cmd = String::from_utf8_lossy(&line).trim().to_ascii_lowercase();
            line.clear();
            let text = match cmd.split_whitespace().next().unwrap_or("") {
                "quit" | "exit" => return Ok(()),
                "ver" => "SUTAgentAndroid Version 1.16",
                "info" => "1000",
                "testroot" => "/mnt/sdcard",
                "isdir" => "TRUE",
                "rebt" => "",
                _ => "##AGENT-WARNING## not implemented",
            };
            let mut out = text.as_bytes().to_vec();
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(crate::hw::sut::PROMPT);
            s.write_all(&out).await?;
        }
    }
}
