//! The application: the one place where the layers are wired together.
//!
//! [`App::open`] opens the store and brings the inventory in line with the configuration;
//! [`App::run`] starts the background tasks and the HTTP server and runs until the shutdown
//! token is cancelled, then stops them in order (HTTP first, so in-flight requests finish,
//! then the background tasks, with a hard deadline).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, OPEN_WARNING};
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::inventory::{DeviceFields, upsert_device};
use crate::storage::logs::{NewLog, append, prune};
use crate::storage::{Store, StoreError, inventory as inv, tables};

/// Longest time shutdown waits for background tasks.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// The running service's shared state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<AppInner>,
}

/// What every handler and task can reach.
#[derive(Debug)]
pub struct AppInner {
    /// The configuration the service started with.
    pub config: Config,
    /// The access-control policy, built from `config.auth`.
    pub auth: Auth,
    /// The store.
    pub store: Store,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// When the service started.
    pub started: Millis,
    /// Cancelled when the service stops.
    pub shutdown: CancellationToken,
    /// Background tasks, awaited at shutdown.
    pub tasks: TaskTracker,
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
    DataDir {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl App {
    /// Open the store in the configured data directory and sync the configured inventory.
    ///
    /// # Errors
    /// [`StartError`].
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartError> {
        let dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let store = Store::open(&dir.join("mozpool.redb"), clock.clone())?;
        let started = clock.now();
        let auth = Auth::new(config.auth.as_ref());
        if auth.is_open() {
            tracing::warn!("{OPEN_WARNING}");
        } else {
            tracing::info!(anonymous = %auth.anonymous_role(), "access control enabled");
        }
        let app = App {
            inner: Arc::new(AppInner {
                config,
                auth,
                store,
                clock,
                started,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        app.sync_config().await?;
        Ok(app)
    }

    /// Is access control off (no `[auth]` section)? The web page shows a banner when it is,
    /// as `/api/version/` and the start-up log do.
    #[must_use]
    pub fn auth_open(&self) -> bool {
        self.auth.is_open()
    }

    /// The controller's name.
    #[must_use]
    pub fn server_name(&self) -> &str {
        self.config.server.name.as_str()
    }

    /// Bring the store's inventory in line with the configuration: configured hardware types,
    /// environments and images are written; configured devices are created or updated
    /// (changes logged). Entries created through the API are left alone.
    async fn sync_config(&self) -> Result<(), StoreError> {
        let config = self.config.clone();
        let server = self.server_name().to_owned();
        self.store
            .write(move |tx, now| {
                for h in config.hardware_type_models() {
                    inv::put_hardware_type(tx, &h)?;
                }
                for e in config.environment_models() {
                    inv::put_environment(tx, &e)?;
                }
                for i in config.image_models() {
                    inv::put_image(tx, &i)?;
                }
                let types = inv::hardware_types(&tx.open_table(tables::HARDWARE_TYPES)?)?;
                for d in &config.devices {
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
                        comments: d.comments.clone(),
                    };
                    upsert_device(
                        tx,
                        now,
                        &server,
                        d.name.get_ref().as_str(),
                        &fields,
                        "config",
                        None,
                    )?;
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
                Ok(())
            })
            .await
    }

    /// Run until `shutdown` is cancelled: background tasks plus the HTTP server on
    /// `listener`. Returns after in-flight requests finished (or the deadline passed).
    pub async fn run(self, listener: TcpListener) {
        self.spawn_retention();
        let http = tokio::spawn(crate::http::serve(
            self.clone(),
            listener,
            self.shutdown.clone(),
        ));
        self.shutdown.cancelled().await;
        if let Err(e) = http.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
        self.tasks.close();
        if tokio::time::timeout(EXIT_DEADLINE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within {EXIT_DEADLINE:?}");
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
