//! The application: the one place where the layers are wired together.
//!
//! [`App::open`] opens the store and brings the inventory in line with the configuration;
//! [`App::run`] starts the background tasks and the HTTP server and runs until the shutdown
//! token is cancelled, then stops in order: the listeners stop accepting and HTTP drains
//! (calls in flight finish, long polls end); then the drivers stop, and hardware work in
//! flight finishes or is abandoned with a line in the device's log
//! ([`crate::lifeguard::driver::SAFE_POINT_GRACE`]); the background tasks end within
//! `EXIT_DEADLINE`; the store closes when its last handle goes.

pub mod config;
pub mod seed;
pub mod shutdown;
pub mod simulate;
pub mod systemd;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::config::Config;
use crate::domain::clock::Clock;
use crate::domain::device_state::DeviceState;
use crate::http::auth::{Auth, OPEN_WARNING};
use crate::http::metrics::Metrics;
use crate::http::services::{Services, Settings};
use crate::hw::images::DownloadCache;
use crate::hw::ping::NetProber;
use crate::hw::sim::SimRack;
use crate::hw::{Adb, Flasher, ImageFiles, ImageStore, RelayBoards};
use crate::inventory::{DeviceFields, upsert_device};
use crate::lifeguard::{Hardware, Lifeguard};
use crate::pool::Pool;
use crate::storage::logs::{NewLog, append, prune};
use crate::storage::{Store, StoreError, inventory as inv};
use systemd::Heartbeats;

/// Longest time shutdown waits for background tasks.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// The running service's shared state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<AppInner>,
}

/// The app's own state besides what HTTP handlers reach.
#[derive(Debug)]
pub struct AppInner {
    /// What the HTTP handlers reach (store, Lifeguard, pool, auth, ...); the app's tasks use
    /// the same handles.
    pub services: Arc<Services>,
    /// The configuration the service started with.
    pub config: Config,
    /// Background tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Stops the drivers (Lifeguard, the pool), cancelled only after HTTP has drained, so a
    /// call in flight still sees them working.
    drivers: CancellationToken,
    /// The registration listener, bound by [`App::open`] (so a busy port stops start-up) and
    /// taken by [`App::run`].
    registration: std::sync::Mutex<Option<TcpListener>>,
    /// Heartbeats of critical loops, checked by the systemd watchdog
    /// (the Lifeguard and request timer loops are registered; add board actors the same way).
    pub heartbeats: Heartbeats,
}

impl std::ops::Deref for AppInner {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A hardware driver could not start (relay board config, image cache).
    #[error("hardware: {0}")]
    Hardware(#[from] crate::hw::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `[cluster]` is set but its client cannot be built (certificate files).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The registration listener is on but no network may register.
    #[error(
        "server.registration_listen is set but [registration] allow lists no network: list the networks devices register from (allow = [\"10.0.0.0/16\"])"
    )]
    RegistrationOpenToNone,
}

impl App {
    /// Open the store in the configured data directory and sync the configured inventory.
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartError> {
        App::open_with(config, clock, None).await
    }

    /// [`App::open`] on a simulated rack (kept alive as long as the app).
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn open_with(
        config: Config,
        clock: Arc<dyn Clock>,
        sim: Option<Arc<SimRack>>,
    ) -> Result<App, StartError> {
        App::open_inner(config, clock, sim, false, None).await
    }

    /// [`App::open`] on a store the caller opened (tests open it on a
    /// [`crate::storage::SimDisk`] to fill its disk), instead of the data directory's.
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn open_on_store(
        config: Config,
        clock: Arc<dyn Clock>,
        store: Store,
    ) -> Result<App, StartError> {
        App::open_inner(config, clock, None, false, Some(store)).await
    }

    /// [`App::open`] with every GPIO relay board on an in-memory [`crate::hw::SimGpio`]
    /// (instant relays: `mozpool bench` measures the service, not the hardware).
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn open_sim_gpio(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartError> {
        App::open_inner(config, clock, None, true, None).await
    }

    async fn open_inner(
        config: Config,
        clock: Arc<dyn Clock>,
        sim: Option<Arc<SimRack>>,
        sim_gpio: bool,
        store: Option<Store>,
    ) -> Result<App, StartError> {
        let dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.clone(),
            source,
        })?;
        clean_scratch(&dir);
        let store = match store {
            Some(store) => store,
            None => Store::open(&dir.join(crate::storage::backup::DB_FILE), clock.clone())?,
        };
        let started = clock.now();
        let auth = Auth::new(config.auth.as_ref());
        if auth.is_open() {
            tracing::warn!("{OPEN_WARNING}");
        } else {
            tracing::info!(anonymous = %auth.anonymous_role(), "access control enabled");
        }
        let metrics = Arc::new(Metrics::default());
        let heartbeats = Heartbeats::default();
        let hw = &config.hardware;
        let hardware = Arc::new(Hardware {
            boards: if sim_gpio {
                RelayBoards::start_with_gpio(config.relay_boards.clone(), |_| {
                    Box::new(crate::hw::SimGpio::new())
                })?
            } else {
                RelayBoards::start(config.relay_boards.clone())?
            },
            flasher: Flasher::new(hw.fastboot.clone()),
            // adb keeps its keys in $HOME/.android: the data directory, which the unit makes
            // the service's own (docs/troubleshooting.md, "adb unauthorized").
            adb: Adb::new(hw.adb.clone(), hw.adb_server_port, dir.clone()),
            prober: match &sim {
                Some(rack) => Arc::new(rack.prober()),
                None => Arc::new(NetProber),
            },
            images: ImageFiles {
                store: ImageStore {
                    dir: hw.image_store.clone().unwrap_or_else(|| dir.join("images")),
                },
                cache: DownloadCache::new(
                    dir.join("cache"),
                    hw.download_cache_mib.saturating_mul(1 << 20),
                    hw.max_download_mib.saturating_mul(1 << 20),
                )?,
            },
            settings: hw.clone(),
            metrics: metrics.hw.clone(),
        });
        let shutdown = CancellationToken::new();
        let drivers = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The watchdog stops pinging when a driver's timer loop stops turning.
        let (lifeguard, reports) = Lifeguard::new(
            store.clone(),
            clock.clone(),
            config.lifeguard.clone(),
            hardware,
            Some(heartbeats.register("lifeguard timers")),
            drivers.clone(),
            tasks.clone(),
        );
        let pool = Pool::new(
            store.clone(),
            clock.clone(),
            config.requests.clone(),
            config.queue.clone(),
            (lifeguard.clone(), reports),
            config.server.name.to_string(),
            Some(heartbeats.register("request timers")),
            drivers.clone(),
            tasks.clone(),
        );
        if config.server.registration_listen.is_some() && config.registration.allow.is_empty() {
            return Err(StartError::RegistrationOpenToNone);
        }
        let gate = Arc::new(crate::inventory::registration::trust::Gate::new(
            config.registration.clone(),
            metrics.registration.clone(),
        ));
        let registration = match config.server.registration_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let registration_addr = registration.as_ref().and_then(|l| l.local_addr().ok());
        if let (Some(rack), Some(addr)) = (&sim, registration_addr) {
            register_on_boot(rack, addr);
        }
        let settings = Settings {
            name: config.server.name.clone(),
            listen: config.server.listen,
            public_url: config.server.public_url.clone(),
            scratch_dir: dir.join("tmp"),
            max_body_bytes: config.server.max_body_bytes,
            limits: crate::http::limits::LimitSettings {
                max_connections: config.server.max_connections,
                reserved_connections: config.server.reserved_connections,
                max_connections_per_client: config.server.max_connections_per_client,
                max_long_polls_per_client: config.server.max_long_polls_per_client,
            },
            names: crate::http::browser::Names::new(
                config.server.listen,
                config.server.name.as_str(),
                config.server.public_url.as_deref(),
                &config.server.host_aliases,
            ),
            header_timeout: Duration::from_secs(config.server.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(config.server.body_timeout_secs.max(1)),
        };
        // Cluster mode only with a [cluster] section: without one, no etcd code runs.
        let cluster = match &config.cluster {
            Some(c) => {
                let name = c
                    .name
                    .clone()
                    .unwrap_or_else(|| config.server.name.clone())
                    .to_string();
                Some(crate::cluster::Cluster::new(c, name)?)
            }
            None => None,
        };
        let limits = crate::http::limits::Limits::new(settings.limits);
        let services = Arc::new(Services {
            settings,
            limits,
            sessions: crate::http::session::Sessions::default(),
            auth,
            store,
            clock,
            started,
            shutdown,
            lifeguard,
            pool,
            sim,
            ui: crate::http::ui::Ui::new(),
            registration_addr,
            metrics,
            registration: gate,
            cluster,
        });
        let app = App {
            inner: Arc::new(AppInner {
                services,
                config,
                tasks,
                drivers,
                registration: std::sync::Mutex::new(registration),
                heartbeats,
            }),
        };
        app.sync_config().await?;
        Ok(app)
    }

    /// Bring the store's inventory in line with the configuration: configured hardware types,
    /// environments and images are written; configured devices are created or updated
    /// (changes logged). Entries created through the API are left alone.
    async fn sync_config(&self) -> Result<(), StoreError> {
        /// Devices per transaction: one transaction holds all its dirty pages in memory,
        /// which for a rack of 10,000 devices would be hundreds of MiB. Each device's
        /// upsert stands on its own, so a crash between two chunks loses nothing: the next
        /// start writes the rest.
        const DEVICES_PER_WRITE: usize = 500;
        let server = self.server_name().to_owned();
        let (hardware_types, environments, images) = (
            self.config.hardware_type_models(),
            self.config.environment_models(),
            self.config.image_models(),
        );
        let types = self
            .store
            .write(move |tx, now| {
                for h in &hardware_types {
                    inv::put_hardware_type(tx, h)?;
                }
                for e in &environments {
                    inv::put_environment(tx, e)?;
                }
                for i in &images {
                    inv::put_image(tx, i)?;
                }
                append(
                    tx,
                    now,
                    NewLog::new(
                        "system".into(),
                        "service",
                        format!("mozpool {} starting", env!("CARGO_PKG_VERSION")),
                    ),
                )?;
                inv::hardware_types_in_tx(tx)
            })
            .await?;
        let types = Arc::new(types);
        let devices: Arc<[_]> = self.config.devices.clone().into();
        for first in (0..devices.len()).step_by(DEVICES_PER_WRITE) {
            let (devices, server, types) = (devices.clone(), server.clone(), types.clone());
            self.store
                .write(move |tx, now| {
                    let last = (first + DEVICES_PER_WRITE).min(devices.len());
                    for d in &devices[first..last] {
                        let processor = d.processor.clone().or_else(|| {
                            d.hardware_type.as_ref().and_then(|t| {
                                types
                                    .iter()
                                    .find(|h| h.name == t.as_str())
                                    .and_then(|h| h.processor.clone())
                            })
                        });
                        let fields = DeviceFields {
                            hardware_type: d.hardware_type.as_ref().map(ToString::to_string),
                            processor,
                            pool: d.pool.clone(),
                            os_version: d.os_version.clone(),
                            environment: d.environment.as_ref().map(ToString::to_string),
                            relay: d.relay.clone(),
                            sut: d.sut.clone(),
                            fastboot_serial: d.fastboot_serial.clone(),
                            adb_serial: d.adb_serial.clone(),
                            comments: d.comments.clone(),
                            allow_registration: d.allow_registration,
                            follow_address: d.follow_address,
                        };
                        upsert_device(tx, now, &server, d.name.get_ref(), &fields, "config", None)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// Run until `shutdown` is cancelled: background tasks plus the HTTP server on
    /// `listener`. Returns after in-flight requests finished (or the deadline passed).
    ///
    /// Under systemd: `READY=1` once the listener is bound and the tasks run, the watchdog
    /// pinger, a periodic `STATUS=` line, and `STOPPING=1` when shutdown begins.
    pub async fn run(self, listener: TcpListener) {
        self.spawn_retention();
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        // The API answers (from the stored states) while the Lifeguard resumes the devices,
        // which takes a while on a rack of thousands; the pool starts handing out after it.
        // What to resume is read first: a device created through the API meanwhile is new,
        // not one to resume.
        let to_resume = self.lifeguard.to_resume().await;
        let http = tokio::spawn(crate::http::serve(
            Arc::clone(&self.services),
            listener,
            self.shutdown.clone(),
        ));
        if let Err(e) = match to_resume {
            Ok(devices) => self.lifeguard.resume_and_run(devices).await,
            Err(e) => Err(e),
        } {
            tracing::error!(error = %e, "cannot resume the devices");
        }
        self.pool.start();
        self.spawn_registration();
        self.spawn_inventory_sync();
        self.spawn_cluster(&addr);
        systemd::spawn_watchdog(
            &self.tasks,
            self.store.clone(),
            self.heartbeats.clone(),
            self.shutdown.clone(),
        );
        systemd::ready(&format!("serving on {addr}"));
        self.spawn_status(addr);
        self.shutdown.cancelled().await;
        systemd::stopping();
        if let Err(e) = http.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
        // HTTP has drained; now the drivers stop and hardware work in flight reaches a safe
        // point (finished, or abandoned with a log line). The store closes when the last
        // task holding it ends.
        self.drivers.cancel();
        self.tasks.close();
        if tokio::time::timeout(EXIT_DEADLINE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within {EXIT_DEADLINE:?}");
        }
        // The last calls' audit lines may still wait in the writer for company.
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "the last log lines could not be committed");
        }
        // The service's own adb server (started by the first adb check) must not outlive it.
        let adb = &self.lifeguard.hardware().adb;
        if adb.path().is_file() {
            adb.kill_server().await;
        }
    }

    /// Bind the configured listen address.
    ///
    /// # Errors
    /// [`StartError::Listen`].
    pub async fn bind(&self) -> Result<TcpListener, StartError> {
        let addr = self.config.server.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })
    }

    /// Cluster mode: publish this controller's devices' pool view whenever a commit
    /// changes it (the store's change channel, as the live page follows it), and start the
    /// cluster's lease, publication and election tasks. They stop with the drivers, after
    /// HTTP has drained; the lease is revoked then, so the devices leave the pool at once.
    fn spawn_cluster(&self, addr: &str) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        /// Coalesces bursts of commits (a rack of devices booting) into one read.
        const SETTLE: Duration = Duration::from_millis(250);
        let (tx, rx) = tokio::sync::watch::channel(crate::cluster::DeviceMap::default());
        let pool = self.pool.clone();
        let mut changes = self.store.subscribe();
        let stop = self.drivers.clone();
        self.tasks.spawn(async move {
            loop {
                changes.borrow_and_update();
                match pool.device_views().await {
                    Ok(views) => {
                        let map: std::collections::BTreeMap<_, _> = views
                            .iter()
                            .map(|v| (v.name.to_string(), crate::pool::shared::published(v)))
                            .collect();
                        tx.send_if_modified(|cur| {
                            let changed = **cur != map;
                            if changed {
                                *cur = Arc::new(map);
                            }
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: cannot read the devices"),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => {}
                }
            }
        });
        let url = self
            .config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        cluster.start(rx, Some(url), &self.tasks, self.drivers.clone());
        // The shared queue: scheduler passes (when elected) and this rack's side of the
        // assignments of its devices.
        self.tasks.spawn(crate::pool::shared::run(
            cluster,
            self.pool.clone(),
            self.clock.clone(),
            self.config.queue.clone(),
            self.drivers.clone(),
        ));
    }

    /// The registration listener, when configured.
    fn spawn_registration(&self) {
        let listener = match self.registration.lock() {
            Ok(mut l) => l.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(listener) = listener else { return };
        let deadline = Duration::from_secs(self.config.server.registration_timeout_secs.max(1));
        let registration = crate::inventory::registration::server::Listener {
            store: self.store.clone(),
            server: self.server_name().into(),
            tasks: self.tasks.clone(),
            gate: self.services.registration.clone(),
            clock: self.services.clock.clone(),
        };
        self.tasks
            .spawn(crate::inventory::registration::server::serve(
                registration,
                listener,
                deadline,
                self.shutdown.clone(),
            ));
    }

    /// Inventory sync from `[inventory] source`: once at start-up, then every
    /// `interval_secs` (0 = start-up only). A failed or refused sync is logged and retried
    /// at the next interval; it never stops the service.
    fn spawn_inventory_sync(&self) {
        let Some(source) = self.config.inventory.source.clone() else {
            return;
        };
        let app = self.clone();
        let interval = self.config.inventory.interval_secs;
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = app.sync_inventory(&source) => {}
                    () = app.shutdown.cancelled() => break,
                }
                if interval == 0 {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(interval)) => {}
                    () = app.shutdown.cancelled() => break,
                }
            }
        });
    }

    /// Under systemd, keep `systemctl status`'s status line current: device counts, once a
    /// minute.
    fn spawn_status(&self, addr: String) {
        if !systemd::under_systemd() {
            return;
        }
        let app = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = app.shutdown.cancelled() => break,
                }
                match app.store.read(crate::http::metrics::store_counts).await {
                    Ok(c) => {
                        let total: u64 = c.devices.values().sum();
                        let ready = c
                            .devices
                            .get(DeviceState::Ready.name())
                            .copied()
                            .unwrap_or(0);
                        let failed: u64 = c
                            .devices
                            .iter()
                            .filter(|(s, _)| s.parse().is_ok_and(DeviceState::is_failed))
                            .map(|(_, n)| n)
                            .sum();
                        systemd::status(&format!(
                            "serving on {addr}; {total} devices, {ready} ready, {failed} failed"
                        ));
                    }
                    Err(e) => systemd::status(&format!("serving on {addr}; store error: {e}")),
                }
            }
        });
    }

    /// One automatic inventory sync; failures are logged under the `inventory` subject.
    async fn sync_inventory(&self, source: &str) {
        use crate::inventory::sync::{load_source, parse_source, sync};
        let rows = match load_source(source).await.and_then(|b| parse_source(&b)) {
            Ok(rows) => rows,
            Err(e) => return self.log_inventory_failure(source, e).await,
        };
        match sync(
            &self.store,
            self.server_name(),
            rows,
            false,
            false,
            Some("inventory-sync".to_owned()),
        )
        .await
        {
            Ok(report) => {
                tracing::info!(
                    %source,
                    added = report.added.len(),
                    updated = report.updated.len(),
                    retired = report.retired.len(),
                    "inventory sync done"
                );
            }
            Err(e) => self.log_inventory_failure(source, e.to_string()).await,
        }
    }

    async fn log_inventory_failure(&self, source: &str, error: String) {
        tracing::warn!(%source, %error, "inventory sync failed");
        let message = format!("inventory sync from {source} failed: {error}");
        if let Err(e) = self
            .store
            .write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new("inventory".into(), "inventory", message),
                )
                .map(|_| ())
            })
            .await
        {
            tracing::warn!(error = %e, "cannot log the inventory sync failure");
        }
    }

    /// The durable log's retention, run in the background so the disk never fills.
    fn spawn_retention(&self) {
        let app = self.clone();
        let interval = Duration::from_secs(self.config.log.prune_interval_secs.max(1));
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = app.shutdown.cancelled() => break,
                }
                if let Err(e) = app.enforce_retention().await {
                    tracing::warn!(error = %e, "log retention failed");
                }
            }
        });
    }

    /// Remove log entries past retention, in bounded batches. Returns how many went.
    ///
    /// # Errors
    /// Storage failure.
    pub async fn enforce_retention(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 5000;
        let retention = self.config.log.retention();
        let mut total = 0;
        loop {
            let n = self
                .store
                .write(move |tx, now| prune(tx, now, retention, BATCH))
                .await?;
            total += n;
            if n < BATCH || self.shutdown.is_cancelled() {
                break;
            }
        }
        if total > 0 {
            tracing::info!(removed = total, "log retention removed old entries");
        }
        Ok(total)
    }
}

/// Simulated devices announce themselves like SUTAgent does when they boot, so the
/// registration path is exercised on every simulated rack.
fn register_on_boot(rack: &SimRack, registration: SocketAddr) {
    let names: std::collections::HashMap<String, String> = rack
        .devices
        .iter()
        .map(|d| (d.fastboot_serial.clone(), d.name.to_string()))
        .collect();
    let runtime = tokio::runtime::Handle::current();
    // A whole rack boots at once: registrations wait their turn here, as many at a time as
    // the listener serves, rather than in its backlog, where they would time out (and each
    // would hold two file descriptors meanwhile).
    let turns = Arc::new(tokio::sync::Semaphore::new(
        crate::inventory::registration::server::MAX_CONNECTIONS,
    ));
    rack.set_on_boot(Arc::new(move |serial: &str, sut: SocketAddr| {
        let Some(name) = names.get(serial).cloned() else {
            return;
        };
        let turns = turns.clone();
        runtime.spawn(async move {
            let Ok(_turn) = turns.acquire_owned().await else {
                return;
            };
            let port = sut.port().to_string();
            let ip = sut.ip().to_string();
            let fields = [
                ("NAME", name.as_str()),
                ("IPADDR", ip.as_str()),
                ("CMDPORT", port.as_str()),
                ("DATAPORT", "20700"),
                ("OS", "Android-IMM76D"),
                ("SCRNWIDTH", "1024"),
                ("SCRNHEIGHT", "768"),
                ("BPP", "8"),
                ("MEMORY", "415232000"),
                ("HARDWARE", "sim-panda"),
                ("POOL", "mobile"),
            ];
            // From the agent's own address, as a device does: the listener checks it.
            let sent = crate::inventory::registration::send_registration_from(
                registration,
                Some(sut.ip()),
                &fields,
                crate::inventory::registration::AgentForm::Java,
            )
            .await;
            if let Err(e) = sent {
                tracing::warn!(device = %name, error = %e, "simulated device could not register");
            }
        });
    }));
}

/// Remove scratch files a crash left behind (half-written backup snapshots in `tmp/`).
fn clean_scratch(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("tmp")) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("backup-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
