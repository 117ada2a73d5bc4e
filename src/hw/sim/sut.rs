//! `SimSutAgent`: a SUTAgent command port on `127.0.0.1`, speaking the real protocol
//! (prompt, CR/LF/CRLF lines, `ver`, `info uptimemillis`, `info id`, `testroot`, `quit`,
//! `rebt`, not-implemented warnings), with fault knobs. Its owner (a `SimDevice`) takes
//! it up and down; while down the port refuses connections.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{lock, sleep_unless};

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
}

/// Called when the agent receives `rebt` (after the connection is dropped).
pub type RebootHook = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    up: bool,
    /// Bound while up and not refusing; (un)bound synchronously by the owner's calls.
    listener: Option<TcpListener>,
    addr: SocketAddr,
    /// Bumped every time the agent goes down: live connections of an older epoch die.
    epoch: u64,
    faults: SimSutFaults,
    split_prompt: bool,
    booted_at: Instant,
    id: String,
    on_reboot: Option<RebootHook>,
    commands: Vec<String>,
}

/// A simulated SUTAgent. Dropping it stops its threads.
pub struct SimSutAgent {
    shared: Arc<Mutex<Shared>>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimSutAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSutAgent")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimSutAgent {
    /// Start on an ephemeral loopback port, up (listening) or down.
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(up: bool, id: &str) -> io::Result<Self> {
        let listener = TcpListener::bind((own_loopback_ip(), 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            up,
            listener: if up { Some(listener) } else { None },
            addr,
            epoch: 0,
            faults: SimSutFaults::default(),
            split_prompt: true,
            booted_at: Instant::now(),
            id: id.to_owned(),
            on_reboot: None,
            commands: Vec::new(),
        }));
        let stop: Arc<AtomicBool> = Arc::default();
        let connections: Arc<AtomicU64> = Arc::default();
        let (sh, st, conns) = (shared.clone(), stop.clone(), connections.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sim-sut-{}", addr.port()))
            .spawn(move || listen_loop(&sh, &st, &conns))?;
        Ok(SimSutAgent {
            shared,
            addr,
            stop,
            connections,
            thread: Some(thread),
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
            s.epoch += 1;
        }
        s.up = up;
        sync_listener(&mut s);
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
        sync_listener(&mut s);
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

    /// Connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SimSutAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// Bind or drop the listener to match `up && !refuse`. std sets SO_REUSEADDR, so the
/// same port can be bound again after a "reboot".
fn sync_listener(s: &mut Shared) {
    let want = s.up && !s.faults.refuse;
    if want && s.listener.is_none() {
        match TcpListener::bind(s.addr) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                s.listener = Some(l);
            }
            Err(e) => tracing::warn!(addr = %s.addr, error = %e, "sim SUTAgent cannot rebind"),
        }
    } else if !want {
        s.listener = None;
    }
}

fn listen_loop(shared: &Arc<Mutex<Shared>>, stop: &Arc<AtomicBool>, conns: &AtomicU64) {
    while !stop.load(Ordering::SeqCst) {
        let accepted = lock(shared).listener.as_ref().and_then(|l| l.accept().ok());
        match accepted {
            Some((s, _)) => {
                conns.fetch_add(1, Ordering::SeqCst);
                let (sh, st) = (shared.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name("sim-sut-conn".into())
                    .spawn(move || {
                        let _ = serve(s, &sh, &st);
                    });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut s: TcpStream, shared: &Mutex<Shared>, stop: &AtomicBool) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    let (epoch, faults) = {
        let st = lock(shared);
        (st.epoch, st.faults.clone())
    };
    let alive = || !stop.load(Ordering::SeqCst) && lock(shared).epoch == epoch;
    if let Some(p) = faults.answer_probability
        && rand::random::<f64>() >= p
    {
        return Ok(());
    }
    if faults.silent {
        while alive() {
            std::thread::sleep(Duration::from_millis(10));
        }
        return Ok(());
    }
    if !sleep_unless(stop, Duration::from_millis(faults.reply_delay_ms)) {
        return Ok(());
    }
    prompt(&mut s, shared)?;
    if faults.flood {
        let junk = [b'x'; 1024];
        while alive() {
            s.write_all(&junk)?;
        }
        return Ok(());
    }
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    let mut last_cr = false;
    while alive() {
        let n = match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            if b == b'\n' && last_cr {
                last_cr = false;
                continue;
            }
            last_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                let cmd = String::from_utf8_lossy(&line).trim().to_owned();
                line.clear();
                if !answer(&mut s, shared, stop, &cmd)? {
                    return Ok(());
                }
            } else if line.len() < 4096 {
                line.push(b);
            }
        }
    }
    Ok(())
}

fn prompt(s: &mut TcpStream, shared: &Mutex<Shared>) -> io::Result<()> {
    if lock(shared).split_prompt {
        s.write_all(b"$>")?;
        s.flush()?;
        std::thread::sleep(Duration::from_millis(2));
        s.write_all(b"\0")
    } else {
        s.write_all(b"$>\0")
    }
}

/// Answer one command; `false` ends the connection.
fn answer(
    s: &mut TcpStream,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    cmd: &str,
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
    if !sleep_unless(stop, Duration::from_millis(faults.reply_delay_ms)) {
        return Ok(false);
    }
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
            let _ = s.shutdown(Shutdown::Both);
            return Ok(false);
        }
        ("quit" | "exit", _) => {
            s.write_all(b"quit\n$>\0")?;
            return Ok(false);
        }
        ("ver", []) => "SUTAgentAndroid Version 1.16".into(),
        ("info", ["uptimemillis"]) => uptime.to_string(),
        ("info", ["id"]) => id,
        ("testroot", []) => "/mnt/sdcard".into(),
        ("isdir", [_]) => "TRUE".into(),
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
        s.write_all(&out[..half.max(1).min(out.len())])?;
        let _ = s.shutdown(Shutdown::Both);
        return Ok(false);
    }
    s.write_all(&out)?;
    prompt(s, shared)?;
    Ok(true)
}
