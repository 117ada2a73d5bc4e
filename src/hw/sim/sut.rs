//! `SimSutAgent`: a SUTAgent command port on `127.0.0.1`, speaking the real protocol
//! (prompt, CR/LF/CRLF lines, `ver`, `info uptimemillis`, `info id`, `testroot`, `isdir`,
//! `mkdr`, `push`, `hash`, `rm`, `quit`, `rebt`, not-implemented warnings), with fault
//! knobs. Written from the protocol reference (hardware.md §1.2–1.3) and the Java agent's
//! replies; it shares no code with the client. Its storage is an in-memory tree under the
//! test root `/mnt/sdcard`. Its owner (a `SimDevice`) takes it up and down; while down the
//! port refuses connections.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{lock, runtime};

/// Fault knobs of a simulated agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSutFaults {
    /// Do not listen at all (connections are refused).
    pub refuse: bool,
    /// Accept connections but never send the prompt.
    pub silent: bool,
    /// Delay before every reply (and the greeting), in ms.
    pub reply_delay_ms: u64,
    /// Answer every command with garbage bytes followed by a prompt.
    pub garbage: bool,
    /// After the greeting, stream bytes without ever sending a prompt.
    pub flood: bool,
    /// Close the connection half-way through a reply.
    pub reset_mid_reply: bool,
    /// Probability (0..=1) of serving a connection at all; others are closed at once.
    pub answer_probability: Option<f64>,
    /// The card is mounted read-only: `push`, `mkdr` and `rm` fail with the Java agent's
    /// warnings, and a refused `push` leaves its bytes unread (the agent opens the file
    /// before reading them), so they arrive as the start of the next command line.
    pub storage_read_only: bool,
    /// The card corrupts what is written: a pushed file is stored with its first byte
    /// changed (and `push` answers the MD5 of what was stored, as the agent does).
    pub storage_corrupt: bool,
}

/// The test root `testroot` answers (external storage, as the Java agent 1.16 on a phone).
pub const SIM_TEST_ROOT: &str = "/mnt/sdcard";

/// The agent's file system: directories and files by absolute path.
#[derive(Debug, Clone)]
struct Storage {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Default for Storage {
    fn default() -> Self {
        let dirs = ["/", "/mnt", SIM_TEST_ROOT]
            .into_iter()
            .map(str::to_owned)
            .collect();
        Storage {
            dirs,
            files: BTreeMap::new(),
        }
    }
}

/// The parent directory of an absolute path (`/a/b` → `/a`, `/a` → `/`).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

/// Called when the agent receives `rebt` (after the connection is dropped).
pub type RebootHook = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    up: bool,
    /// Bound while up and not refusing; (un)bound synchronously by the owner's calls, so a
    /// down agent refuses connections the moment `set_up(false)` returns.
    listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    /// Cancelled every time the agent goes down (and when it is dropped): live connections
    /// of an older boot die with it.
    boot: CancellationToken,
    faults: SimSutFaults,
    split_prompt: bool,
    booted_at: Instant,
    id: String,
    on_reboot: Option<RebootHook>,
    commands: Vec<String>,
    storage: Storage,
}

/// A simulated SUTAgent: a task on the simulators' runtime accepts its connections and one
/// task serves each. Dropping it closes its port and ends its tasks.
pub struct SimSutAgent {
    shared: Arc<Mutex<Shared>>,
    addr: SocketAddr,
    /// Ends the accept task and every connection.
    stop: CancellationToken,
    /// Tells the accept task the listener changed.
    rebound: Arc<Notify>,
    connections: Arc<AtomicU64>,
}

impl std::fmt::Debug for SimSutAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSutAgent")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimSutAgent {
    /// Start on an ephemeral port of its own loopback address, up (listening) or down.
    /// Its tasks run on the simulators' runtime, so no caller runtime is needed.
    ///
    /// # Errors
    /// When no port can be bound or the runtime cannot start.
    pub fn start(up: bool, id: &str) -> io::Result<Self> {
        let std_listener = TcpListener::bind((own_loopback_ip(), 0))?;
        let addr = std_listener.local_addr()?;
        let listener = runtime::listener(std_listener)?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Mutex::new(Shared {
            up,
            listener: if up { Some(listener) } else { None },
            addr,
            boot: stop.child_token(),
            faults: SimSutFaults::default(),
            split_prompt: true,
            booted_at: Instant::now(),
            id: id.to_owned(),
            on_reboot: None,
            commands: Vec::new(),
            storage: Storage::default(),
        }));
        let rebound = Arc::new(Notify::new());
        let connections: Arc<AtomicU64> = Arc::default();
        runtime::handle()?.spawn(accept_loop(
            shared.clone(),
            rebound.clone(),
            stop.clone(),
            connections.clone(),
        ));
        Ok(SimSutAgent {
            shared,
            addr,
            stop,
            rebound,
            connections,
        })
    }

    /// The command port address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Take the agent up (listening, uptime restarts) or down (refusing; live
    /// connections are dropped).
    pub fn set_up(&self, up: bool) {
        let mut s = lock(&self.shared);
        if up && !s.up {
            s.booted_at = Instant::now();
        }
        if !up && s.up {
            s.boot.cancel();
            s.boot = self.stop.child_token();
        }
        s.up = up;
        self.sync_listener(&mut s);
    }

    /// Whether the agent is meant to be listening.
    #[must_use]
    pub fn is_up(&self) -> bool {
        lock(&self.shared).up
    }

    /// Replace the fault knobs.
    pub fn set_faults(&self, f: SimSutFaults) {
        let mut s = lock(&self.shared);
        s.faults = f;
        self.sync_listener(&mut s);
    }

    /// Send the prompt in two writes (`$>` then `\0`) to exercise reassembly (default on).
    pub fn set_split_prompt(&self, split: bool) {
        lock(&self.shared).split_prompt = split;
    }

    /// Install the hook called on `rebt`.
    pub fn set_on_reboot(&self, hook: RebootHook) {
        lock(&self.shared).on_reboot = Some(hook);
    }

    /// Every command line received, in order.
    #[must_use]
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared).commands.clone()
    }

    /// The files on its storage, by path (what `push` wrote and `rm` left).
    #[must_use]
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        lock(&self.shared).storage.files.clone()
    }

    /// Whether `path` is a directory on its storage.
    #[must_use]
    pub fn is_dir(&self, path: &str) -> bool {
        lock(&self.shared).storage.dirs.contains(path)
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Bind or drop the listener to match `up && !refuse`, and tell the accept task. std
    /// sets SO_REUSEADDR, so the same port can be bound again after a "reboot".
    fn sync_listener(&self, s: &mut Shared) {
        let want = s.up && !s.faults.refuse;
        if want && s.listener.is_none() {
            match TcpListener::bind(s.addr).and_then(runtime::listener) {
                Ok(l) => s.listener = Some(l),
                Err(e) => tracing::warn!(addr = %s.addr, error = %e, "sim SUTAgent cannot rebind"),
            }
        } else if !want {
            s.listener = None;
        }
        self.rebound.notify_one();
    }
}

impl Drop for SimSutAgent {
    fn drop(&mut self) {
        self.stop.cancel();
        lock(&self.shared).listener = None;
    }
}

/// A loopback address of this agent's own. While an agent is down its port is free, and an
/// agent started meanwhile (another simulated rack, in another test) could take it on a
/// shared address, so the down agent's clients would reach a stranger. Each agent gets its
/// own address in 127.0.0.0/8 (the process id and a counter), which keeps its port its own.
pub(super) fn own_loopback_ip() -> std::net::Ipv4Addr {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    // 127.P.N.N: P from the process id (never 0, so never 127.0.0.x), N a 16-bit counter.
    let p = u8::try_from(pid % 254 + 1).unwrap_or(1);
    let [_, _, hi, lo] = u32::try_from(n % 65_534 + 1).unwrap_or(1).to_be_bytes();
    std::net::Ipv4Addr::new(127, p, hi, lo)
}

/// Accept connections while the agent has a listener; each gets its own task, which ends
/// when the peer leaves, the agent goes down, or the agent is dropped.
async fn accept_loop(
    shared: Arc<Mutex<Shared>>,
    rebound: Arc<Notify>,
    stop: CancellationToken,
    conns: Arc<AtomicU64>,
) {
    loop {
        // Polled under the lock, never held across an await: the owner may drop the
        // listener from any thread at any time, and then `rebound` wakes us.
        let accept = std::future::poll_fn(|cx| {
            let s = lock(&shared);
            match &s.listener {
                Some(l) => l
                    .poll_accept(cx)
                    .map(|r| r.map(|(stream, _)| (stream, s.boot.clone()))),
                None => Poll::Pending,
            }
        });
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = rebound.notified() => continue,
            r = accept => r,
        };
        match accepted {
            Ok((stream, boot)) => {
                conns.fetch_add(1, Ordering::SeqCst);
                let sh = shared.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = boot.cancelled() => {}
                        _ = serve(stream, &sh) => {}
                    }
                });
            }
            // Out of file descriptors, typically: try again shortly rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve(mut s: TcpStream, shared: &Mutex<Shared>) -> io::Result<()> {
    // Each reply is several small writes (text, `$>`, `\0`): without this, Nagle holds each
    // one back for the client's delayed ACK, tens of ms per command, which the protocol
    // does not need and a check of nine commands would feel.
    s.set_nodelay(true)?;
    let faults = lock(shared).faults.clone();
    if let Some(p) = faults.answer_probability
        && rand::random::<f64>() >= p
    {
        return Ok(());
    }
    if faults.silent {
        // Until the peer gives up or the agent goes away (the caller's select).
        let mut sink = [0u8; 256];
        while s.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(faults.reply_delay_ms)).await;
    prompt(&mut s, shared).await?;
    if faults.flood {
        let junk = [b'x'; 1024];
        loop {
            s.write_all(&junk).await?;
        }
    }
    let mut input = Input::default();
    let mut line = Vec::new();
    let mut last_cr = false;
    while let Some(b) = input.next(&mut s).await? {
        if b == b'\n' && last_cr {
            last_cr = false;
            continue;
        }
        last_cr = b == b'\r';
        if b == b'\r' || b == b'\n' {
            let cmd = String::from_utf8_lossy(&line).trim().to_owned();
            line.clear();
            if !answer(&mut s, &mut input, shared, &cmd, &mut last_cr).await? {
                return Ok(());
            }
        } else if line.len() < 4096 {
            line.push(b);
        }
    }
    Ok(())
}

/// The bytes a connection has sent, read a chunk at a time: command lines, and the raw file
/// bytes that follow a `push` line.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    at: usize,
}

impl Input {
    /// The next byte, waiting for one; `None` when the peer closed.
    async fn next(&mut self, s: &mut TcpStream) -> io::Result<Option<u8>> {
        if self.at == self.buf.len() {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.clear();
            self.buf.extend_from_slice(&chunk[..n]);
            self.at = 0;
        }
        let b = self.buf[self.at];
        self.at += 1;
        Ok(Some(b))
    }

    /// The next byte without taking it, waiting for one; `None` if the peer closed.
    async fn peek(&mut self, s: &mut TcpStream) -> io::Result<Option<u8>> {
        let b = self.next(s).await?;
        if b.is_some() {
            self.at -= 1;
        }
        Ok(b)
    }

    /// Exactly `n` raw bytes (a pushed file), or `None` if the peer closed first.
    async fn take(&mut self, s: &mut TcpStream, n: usize) -> io::Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(n.min(1 << 20));
        while out.len() < n {
            match self.next(s).await? {
                Some(b) => out.push(b),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// Lower-case hex MD5 of `data`, as the agent's `hash` and `push` print it.
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn prompt(s: &mut TcpStream, shared: &Mutex<Shared>) -> io::Result<()> {
    let split = lock(shared).split_prompt;
    if split {
        s.write_all(b"$>").await?;
        s.flush().await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.write_all(b"\0").await
    } else {
        s.write_all(b"$>\0").await
    }
}

/// Answer one command; `false` ends the connection.
async fn answer(
    s: &mut TcpStream,
    input: &mut Input,
    shared: &Mutex<Shared>,
    cmd: &str,
    last_cr: &mut bool,
) -> io::Result<bool> {
    let (faults, uptime, id) = {
        let mut st = lock(shared);
        st.commands.push(cmd.to_owned());
        (
            st.faults.clone(),
            st.booted_at.elapsed().as_millis(),
            st.id.clone(),
        )
    };
    tokio::time::sleep(Duration::from_millis(faults.reply_delay_ms)).await;
    let mut words = cmd.split(' ').filter(|w| !w.is_empty());
    let name = words.next().unwrap_or("").to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    let text = match (name.as_str(), args.as_slice()) {
        ("", _) => String::new(),
        ("rebt", _) => {
            // The device starts rebooting, then the socket dies (no prompt).
            let hook = lock(shared).on_reboot.clone();
            match hook {
                Some(h) => h(),
                None => lock(shared).booted_at = Instant::now(),
            }
            let _ = s.shutdown().await;
            return Ok(false);
        }
        ("quit" | "exit", _) => {
            s.write_all(b"quit\n$>\0").await?;
            return Ok(false);
        }
        ("ver", []) => "SUTAgentAndroid Version 1.16".into(),
        ("info", ["uptimemillis"]) => uptime.to_string(),
        ("info", ["id"]) => id,
        ("testroot", []) => SIM_TEST_ROOT.into(),
        ("isdir", [path]) => {
            let st = lock(shared);
            if st.storage.dirs.contains(*path) {
                "TRUE".into()
            } else if st.storage.files.contains_key(*path) {
                "FALSE".into()
            } else {
                // The Java agent asks `su -c ls -l` about a missing path and answers that.
                format!("{path}: No such file or directory")
            }
        }
        ("mkdr", [dir]) => {
            let mut st = lock(shared);
            // `File.mkdirs()`: parents too; false (a warning) if it exists or cannot be made.
            let absent = !st.storage.dirs.contains(*dir) && !st.storage.files.contains_key(*dir);
            if dir.starts_with('/') && absent && !faults.storage_read_only {
                let mut d = (*dir).to_owned();
                while d != "/" && !d.is_empty() {
                    let up = parent(&d).to_owned();
                    st.storage.dirs.insert(d);
                    d = up;
                }
                format!("{dir} successfully created")
            } else {
                format!("##AGENT-WARNING## Could not create the directory {dir}")
            }
        }
        ("push", [path, size]) => {
            // The agent opens the file before it reads a byte: if that fails, the bytes
            // stay in the stream for the command reader.
            let writable = !faults.storage_read_only
                && lock(shared).storage.dirs.contains(parent(path))
                && !lock(shared).storage.dirs.contains(*path);
            match size.trim().parse::<usize>() {
                Ok(n) if writable => {
                    // The line reader swallows the LF of a CRLF: the file starts after it.
                    if std::mem::take(last_cr) {
                        match input.peek(s).await? {
                            Some(b'\n') => {
                                input.at += 1;
                            }
                            Some(_) => {}
                            None => return Ok(false),
                        }
                    }
                    let Some(mut data) = input.take(s, n).await? else {
                        return Ok(false);
                    };
                    if faults.storage_corrupt
                        && let Some(b) = data.first_mut()
                    {
                        *b ^= 0x20;
                    }
                    let sum = md5_hex(&data);
                    lock(shared).storage.files.insert((*path).to_owned(), data);
                    sum
                }
                _ => "##AGENT-WARNING## Push failed!".into(),
            }
        }
        ("hash", [path]) => match lock(shared).storage.files.get(*path) {
            Some(data) => md5_hex(data),
            None => {
                format!("##AGENT-WARNING## Couldn't calculate hash for file {path} file not found")
            }
        },
        ("rm", [path]) => {
            let mut st = lock(shared);
            if !faults.storage_read_only && st.storage.files.remove(*path).is_some() {
                format!("deleted {path}")
            } else {
                format!("##AGENT-WARNING## Couldn't delete file {path}")
            }
        }
        _ => {
            let mut w = format!("##AGENT-WARNING## [{name}] command");
            if !args.is_empty() {
                w.push_str(" with arg(s) =");
                for a in &args {
                    w.push_str(&format!(" [{a}]"));
                }
            }
            w.push_str(" is currently not implemented.");
            w
        }
    };
    let mut out = if faults.garbage {
        b"\x07\xff\x00garbage\x1b[0m".to_vec()
    } else {
        text.into_bytes()
    };
    if !out.is_empty() {
        out.push(b'\n');
    }
    if faults.reset_mid_reply {
        let half = out.len() / 2;
        s.write_all(&out[..half.max(1).min(out.len())]).await?;
        let _ = s.shutdown().await;
        return Ok(false);
    }
    s.write_all(&out).await?;
    prompt(s, shared).await?;
    Ok(true)
}
