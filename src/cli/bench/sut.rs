//! A light SUTAgent for benchmarks: one tokio listener per device, no simulated device behind it,
//! threads, answering `ver`, `info`, `rebt`, `quit` and the storage check's `testroot`, `isdir`,
//! `mkdr`, `push`, `hash` and `rm` after a set delay.

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
    // The storage check's file (the only one this agent keeps): its path and MD5.
    let mut file: Option<(String, String)> = None;
    // A `push` being received: its path, the bytes still due, and those received so far.
    let mut push: Option<(String, usize, Vec<u8>)> = None;
    let mut after_cr = false;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut at = 0;
        while at < n {
            if let Some((path, due, data)) = push.as_mut() {
                // The LF of the command's CRLF is not part of the file.
                if std::mem::take(&mut after_cr) && buf[at] == b'\n' {
                    at += 1;
                    continue;
                }
                let take = (*due).min(n - at);
                data.extend_from_slice(&buf[at..at + take]);
                *due -= take;
                at += take;
                if *due == 0 {
                    let md5 = md5_hex(data);
                    file = Some((std::mem::take(path), md5.clone()));
                    push = None;
                    reply(&mut s, &md5).await?;
                }
                continue;
            }
            let b = buf[at];
            at += 1;
            if b != b'\r' && b != b'\n' {
                if line.len() < 4096 {
                    line.push(b);
                }
                continue;
            }
            after_cr = b == b'\r';
            if line.is_empty() {
                continue;
            }
            let cmd = String::from_utf8_lossy(&line).trim().to_owned();
            line.clear();
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let name = words
                .first()
                .map(|w| w.to_ascii_lowercase())
                .unwrap_or_default();
            let text = match (name.as_str(), &words[1..]) {
                ("quit" | "exit", _) => return Ok(()),
                ("ver", _) => "SUTAgentAndroid Version 1.16".to_owned(),
                ("info", _) => "1000".to_owned(),
                ("testroot", _) => "/mnt/sdcard".to_owned(),
                ("isdir", _) => "TRUE".to_owned(),
                ("mkdr", [dir]) => format!("{dir} successfully created"),
                ("push", [path, size]) => match size.parse::<usize>() {
                    Ok(0) => {
                        file = Some(((*path).to_owned(), md5_hex(&[])));
                        md5_hex(&[])
                    }
                    Ok(due) => {
                        push = Some(((*path).to_owned(), due, Vec::with_capacity(due)));
                        continue;
                    }
                    Err(_) => "##AGENT-WARNING## bad size".to_owned(),
                },
                ("hash", [path]) => match &file {
                    Some((p, md5)) if p == path => md5.clone(),
                    _ => format!("##AGENT-WARNING## no such file {path}"),
                },
                ("rm", [path]) => match &file {
                    Some((p, _)) if p == path => {
                        file = None;
                        format!("deleted {path}")
                    }
                    _ => format!("##AGENT-WARNING## Couldn't delete file {path}"),
                },
                ("rebt", _) => String::new(),
                _ => "##AGENT-WARNING## not implemented".to_owned(),
            };
            reply(&mut s, &text).await?;
        }
    }
}

/// One answer: its text (if any) on a line, then the prompt.
async fn reply(s: &mut TcpStream, text: &str) -> std::io::Result<()> {
    let mut out = text.as_bytes().to_vec();
    if !out.is_empty() {
        out.push(b'\n');
    }
    out.extend_from_slice(crate::hw::sut::PROMPT);
    s.write_all(&out).await
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
