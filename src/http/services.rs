//! What the HTTP layer's handlers reach: the layers below (store, Lifeguard, pool), the
//! access policy and the server's own settings. The app layer builds one [`Services`] at
//! start-up and hands it to [`super::serve`]; nothing here knows how it was wired.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::clock::{Clock, Millis};
use crate::domain::names::ServerName;
use crate::http::auth::Auth;
use crate::http::metrics::Metrics;
use crate::http::ui::Ui;
use crate::hw::sim::SimRack;
use crate::lifeguard::Lifeguard;
use crate::pool::Pool;
use crate::storage::Store;

/// The HTTP server's settings (from `[server]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This controller's name, shown in responses and recorded on new devices.
    pub name: ServerName,
    /// The listen address, used for absolute URLs when there is no `public_url` and no usable
    /// `Host` header.
    pub listen: SocketAddr,
    /// Base URL for absolute links (`http://rack1.lab:8080`), when configured.
    pub public_url: Option<String>,
    /// Scratch space for uploads and backups (`<data_dir>/tmp`).
    pub scratch_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Connection and long-poll caps (`docs/config.md`, `[server]`).
    pub limits: crate::http::limits::LimitSettings,
    /// The names this service answers to (`Host` checks against DNS rebinding).
    pub names: crate::http::browser::Names,
    /// Time a client has to send its request head.
    pub header_timeout: Duration,
    /// Time a client has to send its body once the head is in.
    pub body_timeout: Duration,
}

/// Everything a handler can reach. Shared by `Arc`.
#[derive(Debug)]
// Fields named after their types need no more words.
#[allow(missing_docs)]
pub struct Services {
    pub settings: Settings,
    pub auth: Auth,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// When the service started (`/api/version/`).
    pub started: Millis,
    /// Cancelled when the service stops; long polls end early on it.
    pub shutdown: CancellationToken,
    pub lifeguard: Lifeguard,
    pub pool: Pool,
    /// The simulated rack, when running with `--simulate` (its fault knobs are an API).
    pub sim: Option<Arc<SimRack>>,
    /// The web page's templates.
    pub ui: Ui,
    /// Where devices register, when the registration listener is on (shown on the page).
    pub registration_addr: Option<SocketAddr>,
    /// Numbers for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Registration rate limits and counters, shared with the TCP listener (the JSON form
    /// goes through the same gate).
    pub registration: Arc<crate::inventory::registration::trust::Gate>,
    /// Connection and long-poll accounting (fair connections), built from `settings.limits`.
    pub limits: Arc<crate::http::limits::Limits>,
    /// Web sign-in sessions (in memory).
    pub sessions: crate::http::session::Sessions,
    /// The etcd cluster, when `[cluster]` is configured (`None`: this controller runs
    /// alone, and nothing talks to etcd).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl Services {
    /// Is access control off (no `[auth]` section)? The web page shows a banner when it is,
    /// as `/api/version/` and the start-up log do.
    #[must_use]
    pub fn auth_open(&self) -> bool {
        self.auth.is_open()
    }

    /// The controller's name.
    #[must_use]
    pub fn server_name(&self) -> &str {
        self.settings.name.as_str()
    }
}
