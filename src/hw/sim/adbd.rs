//! `SimAdbd`: an adb daemon (adbd) on loopback TCP, as `adb connect HOST:PORT` reaches a
//! device with `service.adb.tcp.port` set, written from AOSP's `adb/protocol.txt`,
//! `adb/OVERVIEW.TXT`, `adb/SERVICES.TXT`, `adb/adb.h`, `adb/adb.cpp` and
//! `adb/transport.cpp` (android-10, the sources of Debian's adb 1.0.41 / 29.0.6).
//!
//! The transport: both sides exchange `CNXN(version, maxdata, identity)`; the device's
//! identity is `device::ro.product.name=..;ro.product.model=..;ro.product.device=..;features=..`.
//! With auth off (an authorized host) the device answers the host's `CNXN` with its own;
//! the "unauthorized" fault answers `AUTH(TOKEN)` instead and never accepts a signature, so
//! the host offers its public key and lists the device as `unauthorized`. Streams:
//! `OPEN(host-id, 0, service)` → `OKAY(dev-id, host-id)` then stop-and-wait `WRTE`/`OKAY`
//! and `CLSE`, or `CLSE(0, host-id)` for a service adbd does not offer.
//!
//! Services: `shell:CMD` (the plain, pre-`shell_v2` protocol: output only, no exit status;
//! `shell_v2` is not advertised so the real client uses it), run by the pure interpreter in
//! [`shell`]; `reboot:`, `reboot:bootloader`, `reboot:fastboot`, `reboot:recovery` (the
//! stream and the transport close, and the target is told). `get-state`, `devices` and
//! `features` are answered by the adb server from the `CNXN` banner and need nothing here.
//!
//! The device model stays behind [`AdbTarget`]; [`MemoryAdbTarget`] is a self-contained one
//! for tests. While [`AdbTarget::adbd_up`] is false the port is closed (connections are
//! refused) and live connections are dropped, as when the OS reboots. One task per
//! connection, a connection cap, payloads bounded by the advertised maxdata, and any
//! malformed header (bad magic, oversized length) drops the connection.

pub mod shell;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lock;
pub use shell::{EACCES, EISDIR, ENOENT, ENOSPC, EROFS, ShellRun};
use wire::{
    A_AUTH, A_CLSE, A_CNXN, A_OKAY, A_OPEN, A_VERSION_MIN, A_VERSION_SKIP_CHECKSUM, A_WRTE,
    ADB_AUTH_RSAPUBLICKEY, ADB_AUTH_SIGNATURE, ADB_AUTH_TOKEN, MAX_PAYLOAD_V1, Packet, TOKEN_SIZE,
};

/// The maxdata this simulator advertises by default. adbd of Android 9+ offers 1 MiB; a
/// quarter of that keeps each connection's buffer small and is still far above anything
/// the service's commands produce (the host uses the smaller of the two).
pub const DEFAULT_MAX_PAYLOAD: u32 = 256 * 1024;

/// Upper bound for a configured maxdata (adb.h `MAX_PAYLOAD`).
pub const MAX_PAYLOAD: u32 = 1024 * 1024;

/// Most connections served at once; the adb server holds one per device, the rest wait.
pub const MAX_CONNECTIONS: usize = 32;

/// Most streams open at once on one connection; further `OPEN`s are refused with `CLSE`.
pub const MAX_STREAMS: usize = 64;

/// How often the accept loop looks at [`AdbTarget::adbd_up`].
const POLL: Duration = Duration::from_millis(20);

/// Banner properties sent in the `CNXN` identity string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdbBanner {
    /// `ro.product.name`, shown as `product:` by `adb devices -l`.
    pub product_name: String,
    /// `ro.product.model`, shown as `model:`.
    pub model: String,
    /// `ro.product.device`, shown as `device:`.
    pub device: String,
}

/// Where `reboot:` sends the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdbReboot {
    /// `reboot:` (`adb reboot`): the OS again.
    Os,
    /// `reboot:bootloader` (`adb reboot bootloader`, `adb reboot-bootloader`).
    Bootloader,
    /// `reboot:fastboot` (userspace fastboot on dynamic-partition devices).
    Fastboot,
    /// `reboot:recovery`.
    Recovery,
}

impl AdbReboot {
    /// The argument of the `reboot:` service: `""`, `bootloader`, `fastboot`, `recovery`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AdbReboot::Os => "",
            AdbReboot::Bootloader => "bootloader",
            AdbReboot::Fastboot => "fastboot",
            AdbReboot::Recovery => "recovery",
        }
    }

    /// Parse the argument of the `reboot:` service; `None` for targets not simulated.
    #[must_use]
    pub fn parse(arg: &str) -> Option<Self> {
        [
            AdbReboot::Os,
            AdbReboot::Bootloader,
            AdbReboot::Fastboot,
            AdbReboot::Recovery,
        ]
        .into_iter()
        .find(|r| r.as_str() == arg)
    }
}

/// What the adbd simulator asks of the simulated device behind it. Methods are called on
/// the runtime's threads: they must not block (take a short lock at most).
pub trait AdbTarget: Send + Sync + 'static {
    /// adbd is running (the OS has booted with adb over TCP on). While false the port is
    /// closed and live connections are dropped.
    fn adbd_up(&self) -> bool;
    /// The host's RSA key is accepted (auth off or key known). False is the
    /// "unauthorized" fault: the host is challenged and never accepted.
    fn authorized(&self) -> bool;
    /// Banner properties.
    fn banner(&self) -> AdbBanner;
    /// A system property (`getprop NAME`); `None` when unset.
    fn getprop(&self, name: &str) -> Option<String>;
    /// Create or replace a file (absolute path). `Err` carries the `strerror` text, e.g.
    /// [`EROFS`] outside `/data/local/tmp` or on read-only storage, [`ENOSPC`] when full.
    ///
    /// # Errors
    /// The reason, as `strerror` text.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<(), String>;
    /// A file's contents; `Err(ENOENT)` when missing.
    ///
    /// # Errors
    /// The reason, as `strerror` text.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, String>;
    /// Delete a file; `Err(ENOENT)` when missing, `Err(EROFS)` on read-only storage.
    ///
    /// # Errors
    /// The reason, as `strerror` text.
    fn remove_file(&self, path: &str) -> Result<(), String>;
    /// The `reboot:` service ran: the device reboots to `to`. The simulator closes the
    /// stream and the transport right after; taking adbd down is the target's business.
    fn reboot(&self, to: AdbReboot);
}

/// Test-only wire faults that make the simulator wrong on purpose, to show the real
/// client notices (they are not device faults; the device fault "unauthorized" is
/// [`AdbTarget::authorized`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdbdWireFaults {
    /// Send every message with a wrong `magic`.
    pub corrupt_magic: bool,
    /// Do not send the `OKAY` that accepts an `OPEN` (the stream never connects).
    pub drop_open_okay: bool,
}

/// How the simulated adbd speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdbdConfig {
    /// Protocol version advertised: [`A_VERSION_SKIP_CHECKSUM`] (Android 9+, the default:
    /// `data_check` is 0 and not checked) or [`A_VERSION_MIN`] (older devices: payload
    /// sums are sent and checked).
    pub version: u32,
    /// maxdata advertised, clamped to `MAX_PAYLOAD_V1..=MAX_PAYLOAD`.
    pub max_payload: u32,
    /// The `features=` list. Empty by default: the optional protocols (`shell_v2`, `cmd`,
    /// `stat_v2`, `abb`, ...) are not simulated, and without `shell_v2` the client uses
    /// the plain `shell:` service.
    pub features: Vec<String>,
    /// Deliberate protocol errors, for tests.
    pub faults: AdbdWireFaults,
}

impl Default for AdbdConfig {
    fn default() -> Self {
        AdbdConfig {
            version: A_VERSION_SKIP_CHECKSUM,
            max_payload: DEFAULT_MAX_PAYLOAD,
            features: Vec::new(),
            faults: AdbdWireFaults::default(),
        }
    }
}

impl AdbdConfig {
    /// An adbd from before Android 9: version `0x01000000`, maxdata 4096, checksums.
    #[must_use]
    pub fn legacy() -> Self {
        AdbdConfig {
            version: A_VERSION_MIN,
            max_payload: MAX_PAYLOAD_V1,
            ..AdbdConfig::default()
        }
    }

    /// The `CNXN` identity string for `banner`. Values lose the `:`, `;` and `=` the
    /// host's parser splits on and are cut to 91 bytes (`PROP_VALUE_MAX` - 1).
    #[must_use]
    pub fn identity(&self, banner: &AdbBanner) -> String {
        let clean = |v: &str| -> String {
            v.chars()
                .map(|c| if matches!(c, ':' | ';' | '=') { '_' } else { c })
                .scan(0usize, |n, c| {
                    *n += c.len_utf8();
                    (*n <= 91).then_some(c)
                })
                .collect()
        };
        let features: Vec<String> = self.features.iter().map(|f| clean(f)).collect();
        format!(
            "device::ro.product.name={};ro.product.model={};ro.product.device={};features={}",
            clean(&banner.product_name),
            clean(&banner.model),
            clean(&banner.device),
            features.join(",")
        )
    }
}

/// Serve adbd on `listener` until `shutdown` is cancelled, with the default
/// [`AdbdConfig`]. The listener's address is re-bound whenever adbd comes back up.
pub async fn serve(listener: TcpListener, target: Arc<dyn AdbTarget>, shutdown: CancellationToken) {
    serve_with(listener, target, AdbdConfig::default(), shutdown).await;
}

/// [`serve`] with a chosen protocol version, maxdata, features and faults.
pub async fn serve_with(
    listener: TcpListener,
    target: Arc<dyn AdbTarget>,
    config: AdbdConfig,
    shutdown: CancellationToken,
) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "sim adbd: listener has no address");
            return;
        }
    };
    let mut config = config;
    config.max_payload = config.max_payload.clamp(MAX_PAYLOAD_V1, MAX_PAYLOAD);
    let config = Arc::new(config);
    let mut listener = Some(listener);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    // Bumped each time adbd goes down: live connections watch it and drop.
    let (down_tx, _) = watch::channel(0u64);
    let mut rebind_warned = false;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !target.adbd_up() {
            if listener.take().is_some() {
                tracing::debug!(%addr, "sim adbd down");
                down_tx.send_modify(|e| *e += 1);
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => continue,
                () = shutdown.cancelled() => break,
            }
        }
        let Some(l) = &listener else {
            // std and tokio set SO_REUSEADDR, so the port can be bound again at once.
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::debug!(%addr, "sim adbd up");
                    listener = Some(l);
                    rebind_warned = false;
                }
                Err(e) => {
                    if !rebind_warned {
                        tracing::warn!(%addr, error = %e, "sim adbd cannot rebind its port");
                        rebind_warned = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            continue;
        };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = l.accept() => r,
            // Look at `adbd_up` again now and then.
            () = tokio::time::sleep(POLL) => continue,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sim adbd accept failed");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (target, config, stop) = (target.clone(), config.clone(), shutdown.clone());
        let mut down = down_tx.subscribe();
        tasks.spawn(async move {
            let mut conn = Connection::new(stream, target, config);
            tokio::select! {
                r = conn.run() => match r {
                    Ok(()) => tracing::debug!(%peer, "sim adbd connection closed"),
                    Err(e) => tracing::debug!(%peer, error = %e, "sim adbd connection dropped"),
                },
                _ = down.changed() => tracing::debug!(%peer, "sim adbd went down"),
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// A running simulated adbd: [`serve_with`] on its own task. Dropping it stops the task.
#[derive(Debug)]
pub struct SimAdbd {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimAdbd {
    /// Serve on `listener` (bind it to a loopback address). Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn spawn(
        listener: TcpListener,
        target: Arc<dyn AdbTarget>,
        config: AdbdConfig,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, target, config, stop.clone()));
        Ok(SimAdbd {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address `adb connect` takes (`127.0.0.1:PORT`).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait until every connection is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimAdbd {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until the host's `CNXN` everything else is ignored (protocol.txt).
    Connecting,
    /// `AUTH(TOKEN)` sent; waiting for a signature the target accepts.
    Authorizing,
    /// `CNXN` sent; streams may open.
    Online,
}

/// One stream opened by the host: output waiting to be written, stop-and-wait.
#[derive(Debug)]
struct Stream {
    /// The host's id for it.
    remote: u32,
    /// Everything the service produced.
    output: Vec<u8>,
    /// Bytes of `output` already acknowledged or in flight.
    sent: usize,
    /// Length of the `WRTE` in flight, waiting for the host's `OKAY`.
    in_flight: Option<usize>,
}

/// Why a connection ends without an I/O error.
#[derive(Debug)]
enum End {
    /// Keep going.
    Continue,
    /// Close the transport (a reboot, a refused handshake, an unknown command).
    Close(&'static str),
}

/// One host connection: the transport's state and its streams.
struct Connection {
    io: BufReader<TcpStream>,
    target: Arc<dyn AdbTarget>,
    config: Arc<AdbdConfig>,
    phase: Phase,
    /// The protocol version in force: min(ours, the host's) once `CNXN` arrived.
    version: Option<u32>,
    /// The largest payload the host accepts (min of both maxdata).
    send_max: usize,
    streams: HashMap<u32, Stream>,
    next_id: u32,
}

impl Connection {
    fn new(stream: TcpStream, target: Arc<dyn AdbTarget>, config: Arc<AdbdConfig>) -> Self {
        Connection {
            io: BufReader::new(stream),
            target,
            config,
            phase: Phase::Connecting,
            version: None,
            send_max: MAX_PAYLOAD_V1 as usize,
            streams: HashMap::new(),
            next_id: 1,
        }
    }

    /// Serve until the host closes, a bad message arrives or the transport must close.
    async fn run(&mut self) -> Result<(), wire::WireError> {
        loop {
            // Before CNXN only the host's (small) CNXN and AUTH are legal.
            let max = if self.phase == Phase::Online {
                self.config.max_payload
            } else {
                MAX_PAYLOAD_V1
            };
            let verify = self.version.is_some_and(|v| v < A_VERSION_SKIP_CHECKSUM);
            let p = match wire::read_packet(&mut self.io, max, verify).await {
                Ok(p) => p,
                Err(wire::WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            match self.handle(p).await? {
                End::Continue => {}
                End::Close(why) => {
                    tracing::debug!(why, "sim adbd closes the transport");
                    let _ = self.io.get_mut().shutdown().await;
                    return Ok(());
                }
            }
        }
    }

    async fn send(&mut self, p: Packet) -> io::Result<()> {
        let checksum = self.version.is_some_and(|v| v < A_VERSION_SKIP_CHECKSUM);
        let mut bytes = p.encode(checksum);
        if self.config.faults.corrupt_magic {
            bytes[20] ^= 0x5a;
        }
        self.io.get_mut().write_all(&bytes).await
    }

    async fn handle(&mut self, p: Packet) -> io::Result<End> {
        match (p.command, self.phase) {
            (A_CNXN, _) => self.connect(&p).await,
            (A_AUTH, Phase::Authorizing) => self.auth(&p).await,
            (A_OPEN, Phase::Online) => self.open(&p).await,
            (A_OKAY, Phase::Online) => self.okay(&p).await,
            (A_WRTE, Phase::Online) => {
                // Input for a stream (nothing here reads stdin): acknowledge and drop.
                if p.arg0 != 0
                    && self
                        .streams
                        .get(&p.arg1)
                        .is_some_and(|s| s.remote == p.arg0)
                {
                    self.send(Packet::new(A_OKAY, p.arg1, p.arg0, Vec::new()))
                        .await?;
                }
                Ok(End::Continue)
            }
            (A_CLSE, Phase::Online) => {
                // The host closed its end; never answered (protocol.txt).
                if self
                    .streams
                    .get(&p.arg1)
                    .is_some_and(|s| p.arg0 == 0 || s.remote == p.arg0)
                {
                    self.streams.remove(&p.arg1);
                }
                Ok(End::Continue)
            }
            // Known messages out of phase are ignored, like adbd does before CNXN.
            (A_AUTH | A_OPEN | A_OKAY | A_WRTE | A_CLSE, _) => Ok(End::Continue),
            _ => Ok(End::Close("unrecognized command")),
        }
    }

    /// The host's `CNXN`: negotiate, then accept (auth off) or challenge.
    async fn connect(&mut self, p: &Packet) -> io::Result<End> {
        if p.arg0 < A_VERSION_MIN || p.arg1 < MAX_PAYLOAD_V1 {
            return Ok(End::Close(
                "CNXN with an unknown version or too small maxdata",
            ));
        }
        // A new CNXN restarts the session (adb.cpp `handle_new_connection`).
        self.streams.clear();
        self.version = Some(p.arg0.min(self.config.version));
        self.send_max = p.arg1.min(self.config.max_payload) as usize;
        if self.target.authorized() {
            self.go_online().await?;
        } else {
            self.phase = Phase::Authorizing;
            self.send_token().await?;
        }
        Ok(End::Continue)
    }

    async fn go_online(&mut self) -> io::Result<()> {
        self.phase = Phase::Online;
        let identity = self.config.identity(&self.target.banner());
        let (version, max) = (self.config.version, self.config.max_payload);
        self.send(Packet::new(A_CNXN, version, max, identity.into_bytes()))
            .await
    }

    async fn send_token(&mut self) -> io::Result<()> {
        let token: [u8; TOKEN_SIZE] = rand::random();
        self.send(Packet::new(A_AUTH, ADB_AUTH_TOKEN, 0, token.to_vec()))
            .await
    }

    /// `AUTH` from the host while challenged. A signature is accepted only if the target
    /// authorizes now (the simulator checks no cryptography); otherwise a new token goes
    /// out, as adbd does, and the host ends up offering its public key, which waits for a
    /// user who never comes.
    async fn auth(&mut self, p: &Packet) -> io::Result<End> {
        match p.arg0 {
            ADB_AUTH_SIGNATURE => {
                if self.target.authorized() {
                    self.go_online().await?;
                } else {
                    self.send_token().await?;
                }
                Ok(End::Continue)
            }
            ADB_AUTH_RSAPUBLICKEY => {
                if self.target.authorized() {
                    self.go_online().await?;
                }
                Ok(End::Continue)
            }
            _ => Ok(End::Close("AUTH of unknown type")),
        }
    }

    /// `OPEN(host-id, 0, destination)`.
    async fn open(&mut self, p: &Packet) -> io::Result<End> {
        let remote = p.arg0;
        if remote == 0 || p.arg1 != 0 {
            return Ok(End::Continue);
        }
        // Clients historically send the name NUL-terminated.
        let mut name = &p.payload[..];
        while let [rest @ .., 0] = name {
            name = rest;
        }
        let service = std::str::from_utf8(name).ok().and_then(Service::parse);
        let Some(service) = service.filter(|_| self.streams.len() < MAX_STREAMS) else {
            tracing::debug!(service = %String::from_utf8_lossy(name), "sim adbd refuses OPEN");
            self.send(Packet::new(A_CLSE, 0, remote, Vec::new()))
                .await?;
            return Ok(End::Continue);
        };
        let id = self.next_id;
        // Ids are never 0 and never reused within a connection's life.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        if !self.config.faults.drop_open_okay {
            self.send(Packet::new(A_OKAY, id, remote, Vec::new()))
                .await?;
        }
        match service {
            Service::Shell(script) => {
                let run = shell::run(&script, self.target.as_ref());
                tracing::debug!(%script, status = run.status, "sim adbd shell");
                self.streams.insert(
                    id,
                    Stream {
                        remote,
                        output: run.output,
                        sent: 0,
                        in_flight: None,
                    },
                );
                // OPEN implies READY (protocol.txt): the first WRTE may go at once.
                self.pump(id).await?;
                Ok(End::Continue)
            }
            Service::Reboot(to) => {
                // CLSE goes out before the target hears of it: a target that takes adbd
                // down at once would otherwise race this connection's last message.
                self.send(Packet::new(A_CLSE, id, remote, Vec::new()))
                    .await?;
                self.target.reboot(to);
                Ok(End::Close("reboot"))
            }
        }
    }

    /// The host's `OKAY(host-id, dev-id)`: the `WRTE` in flight arrived.
    async fn okay(&mut self, p: &Packet) -> io::Result<End> {
        if let Some(s) = self.streams.get_mut(&p.arg1)
            && s.remote == p.arg0
            && let Some(n) = s.in_flight.take()
        {
            s.sent += n;
            self.pump(p.arg1).await?;
        }
        Ok(End::Continue)
    }

    /// Send the next chunk of stream `id`, or `CLSE` when all of it was acknowledged.
    async fn pump(&mut self, id: u32) -> io::Result<()> {
        let max = self.send_max;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.in_flight.is_some() {
            return Ok(());
        }
        let remote = s.remote;
        if s.sent >= s.output.len() {
            self.streams.remove(&id);
            return self.send(Packet::new(A_CLSE, id, remote, Vec::new())).await;
        }
        let end = s.output.len().min(s.sent + max);
        let chunk = s.output[s.sent..end].to_vec();
        s.in_flight = Some(chunk.len());
        self.send(Packet::new(A_WRTE, id, remote, chunk)).await
    }
}

/// A service this adbd offers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Service {
    /// `shell:CMD` or `shell,ARGS:CMD` without `v2`.
    Shell(String),
    /// `reboot:TARGET`.
    Reboot(AdbReboot),
}

impl Service {
    /// `None` for services not offered: adbd answers those with `CLSE`.
    fn parse(name: &str) -> Option<Self> {
        if let Some(arg) = name.strip_prefix("reboot:") {
            return AdbReboot::parse(arg).map(Service::Reboot);
        }
        let rest = name.strip_prefix("shell")?;
        let (args, script) = rest.split_once(':')?;
        // `shell,v2,...` needs the shell protocol, and an empty command an interactive
        // pty: neither is simulated.
        let args_ok = args.is_empty()
            || args
                .strip_prefix(',')
                .is_some_and(|a| a.split(',').all(|a| a == "raw" || a.starts_with("TERM=")));
        (args_ok && !script.is_empty()).then(|| Service::Shell(script.to_owned()))
    }
}

/// Storage state of a [`MemoryAdbTarget`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryStorage {
    /// `/data/local/tmp` takes writes.
    #[default]
    Writable,
    /// Every write and removal fails with [`EROFS`].
    ReadOnly,
    /// Files can be created empty, but writing data fails with [`ENOSPC`].
    Full,
}

/// The writable directory of the shell user on an Android device.
pub const TMP_DIR: &str = "/data/local/tmp";

#[derive(Debug)]
struct MemoryState {
    up: bool,
    authorized: bool,
    storage: MemoryStorage,
    banner: AdbBanner,
    props: BTreeMap<String, String>,
    files: BTreeMap<String, Vec<u8>>,
    reboots: Vec<AdbReboot>,
    down_on_reboot: bool,
}

/// An [`AdbTarget`] held in memory for tests: properties, files under `/data/local/tmp`,
/// up/authorized flags, a storage state and a log of reboots.
#[derive(Debug)]
pub struct MemoryAdbTarget {
    state: Mutex<MemoryState>,
}

impl Default for MemoryAdbTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryAdbTarget {
    /// A booted device (`sys.boot_completed=1`), adbd up, authorized, writable storage,
    /// banner `sim_panda` / `Sim Panda` / `panda`, adbd going down on reboot.
    #[must_use]
    pub fn new() -> Self {
        let banner = AdbBanner {
            product_name: "sim_panda".into(),
            model: "Sim Panda".into(),
            device: "panda".into(),
        };
        let props = [
            ("sys.boot_completed", "1"),
            ("ro.product.name", banner.product_name.as_str()),
            ("ro.product.model", banner.model.as_str()),
            ("ro.product.device", banner.device.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        MemoryAdbTarget {
            state: Mutex::new(MemoryState {
                up: true,
                authorized: true,
                storage: MemoryStorage::Writable,
                banner,
                props,
                files: BTreeMap::new(),
                reboots: Vec::new(),
                down_on_reboot: true,
            }),
        }
    }

    /// Take adbd up or down.
    pub fn set_up(&self, up: bool) {
        lock(&self.state).up = up;
    }

    /// Accept the host's key, or not (the "unauthorized" fault).
    pub fn set_authorized(&self, authorized: bool) {
        lock(&self.state).authorized = authorized;
    }

    /// Make storage writable, read-only or full.
    pub fn set_storage(&self, storage: MemoryStorage) {
        lock(&self.state).storage = storage;
    }

    /// Whether a reboot takes adbd down (default true, as on a device; set it up again to
    /// finish the "boot").
    pub fn set_down_on_reboot(&self, down: bool) {
        lock(&self.state).down_on_reboot = down;
    }

    /// Set or clear (`None`) a property.
    pub fn set_prop(&self, name: &str, value: Option<&str>) {
        let mut s = lock(&self.state);
        match value {
            Some(v) => s.props.insert(name.to_owned(), v.to_owned()),
            None => s.props.remove(name),
        };
    }

    /// Replace the banner.
    pub fn set_banner(&self, banner: AdbBanner) {
        lock(&self.state).banner = banner;
    }

    /// The files, by absolute path.
    #[must_use]
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        lock(&self.state).files.clone()
    }

    /// Every reboot asked for, oldest first.
    #[must_use]
    pub fn reboots(&self) -> Vec<AdbReboot> {
        lock(&self.state).reboots.clone()
    }
}

/// Whether `path` names a file directly or deeper under `/data/local/tmp` (no `..`).
fn in_tmp(path: &str) -> bool {
    path.strip_prefix(TMP_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| !rest.is_empty() && !rest.split('/').any(|c| c == ".." || c == "."))
}

impl AdbTarget for MemoryAdbTarget {
    fn adbd_up(&self) -> bool {
        lock(&self.state).up
    }

    fn authorized(&self) -> bool {
        lock(&self.state).authorized
    }

    fn banner(&self) -> AdbBanner {
        lock(&self.state).banner.clone()
    }

    fn getprop(&self, name: &str) -> Option<String> {
        lock(&self.state).props.get(name).cloned()
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<(), String> {
        let mut s = lock(&self.state);
        if path.trim_end_matches('/') == TMP_DIR {
            return Err(EISDIR.into());
        }
        if !in_tmp(path) {
            // The shell user may write nowhere else: /data is private, the rest read-only.
            return Err(if path.starts_with("/data/") {
                EACCES
            } else {
                EROFS
            }
            .into());
        }
        match s.storage {
            MemoryStorage::ReadOnly => Err(EROFS.into()),
            MemoryStorage::Full if !data.is_empty() => Err(ENOSPC.into()),
            _ => {
                s.files.insert(path.to_owned(), data.to_vec());
                Ok(())
            }
        }
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        if path.trim_end_matches('/') == TMP_DIR {
            return Err(EISDIR.into());
        }
        lock(&self.state)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| ENOENT.to_owned())
    }

    fn remove_file(&self, path: &str) -> Result<(), String> {
        let mut s = lock(&self.state);
        if !s.files.contains_key(path) {
            return Err(ENOENT.into());
        }
        if s.storage == MemoryStorage::ReadOnly {
            return Err(EROFS.into());
        }
        s.files.remove(path);
        Ok(())
    }

    fn reboot(&self, to: AdbReboot) {
        let mut s = lock(&self.state);
        s.reboots.push(to);
        if s.down_on_reboot {
            s.up = false;
        }
    }
}

#[cfg(test)]
mod tests;
