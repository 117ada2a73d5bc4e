//! The cluster layer: several controllers, one pool, agreed through etcd (`docs/cluster.md`).
//!
//! Only this folder names the etcd client. It owns the connection to etcd and, while the
//! controller runs with a `[cluster]` section, three tasks:
//! - `lease`: this controller's etcd lease, kept alive; when keep-alives fail past the TTL
//!   the controller knows it lost its lease ([`Cluster::lease`] is a watch channel) and every
//!   key written under it is gone, so it must stop acting as owner or scheduler;
//! - `publish`: this controller's devices' pool view ([`PublishedDevice`]) under the lease,
//!   at `<prefix>devices/<controller>/<device>`, plus `<prefix>controllers/<controller>`,
//!   fed through a watch channel by the layers above (this layer never calls up);
//! - `election`: the scheduler election, a key `<prefix>scheduler` created under the
//!   candidate's lease only if absent; [`Cluster::leadership`] says whether this
//!   controller is the scheduler and with which election revision, so writes can be guarded
//!   by it ([`Cluster::put_as_leader`]).
//!
//! A fourth task, the probe, reads the members and the scheduler once a second through a
//! linearizable read, which fails fast when etcd has no quorum, and etcd's alarms every few
//! seconds: that is what [`Cluster::status`] (and `GET /api/cluster/`) reports. While this
//! controller is the scheduler, `compact` compacts etcd's history. Calls go through `endpoints`:
//! one client per etcd endpoint, with failover.
//!
//! `directory` reads who publishes which device and where each controller answers (cached
//! for half a second), for forwarding device calls and for the whole-pool lists.
//! A fifth, `queue`, keeps an in-memory copy of the shared queue (one read, then a watch
//! applying every event; read again when the watch fails or etcd compacted past it):
//! [`Cluster::queue_copy`] and [`Cluster::queue_changes`] feed the scheduler and owner
//! passes and the status long polls.
//!
//! `requests` holds the shared queue's etcd records and their guarded transactions
//! (requests, the id counter, idempotency keys, assignments); what to write is decided
//! above it (`pool::shared`, the HTTP handlers). This layer must not touch the store or the
//! hardware: ownership stays physical.

mod batch;
mod compact;
pub mod config;
pub mod directory;
mod election;
mod endpoints;
mod lease;
mod publish;
mod queue;
pub mod requests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ClusterConfig;

use crate::domain::lock;
use crate::domain::names::{DeviceName, EnvironmentName, HardwareType, ImageName};

/// Why a cluster call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// etcd cannot be reached, has no leader (lost quorum) or did not answer in time: the
    /// call may work later, without a restart (HTTP 503).
    #[error(
        "the cluster's etcd is unreachable or has lost quorum ({0}); cluster writes resume by themselves when it is back"
    )]
    Unavailable(String),
    /// This controller does not hold a live lease right now (it was cut off from etcd for
    /// longer than the lease TTL), so it may not write as owner or scheduler.
    #[error("this controller has no live etcd lease (cut off from etcd past the lease TTL)")]
    NoLease,
    /// etcd's database reached its quota (its `NOSPACE` alarm is raised): etcd refuses every
    /// write until an operator frees space and disarms the alarm. Reads still work, and
    /// another member or a retry does not help, so this is not [`ClusterError::Unavailable`].
    #[error(
        "the cluster's etcd is out of space ({0}): it refuses every write until an operator compacts and defragments its members and disarms the NOSPACE alarm (docs/cluster.md, \"etcd out of space\")"
    )]
    NoSpace(String),
    /// The write was guarded by an election this controller no longer holds.
    #[error("this controller is no longer the scheduler (election revision {0} is gone)")]
    NotLeader(i64),
    /// etcd refused the call for a reason a retry does not fix (permissions, bad request).
    #[error("etcd refused the call: {0}")]
    Refused(String),
    /// The `[cluster]` settings cannot be used (unreadable certificate files).
    #[error("cluster settings: {0}")]
    Setup(String),
}

impl ClusterError {
    /// Does this error mean "etcd is not available right now" (HTTP 503, retry later)?
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable(_) | ClusterError::NoLease)
    }
}

/// How etcd words a write refused because its database is at its quota.
const NO_SPACE: &str = "database space exceeded";

/// The etcd client's error, sorted into what a caller can act on.
fn classify(e: etcd_client::Error) -> ClusterError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        // etcd answers both a full database and "too many requests" (a transient
        // overload) with `ResourceExhausted`; only the message tells them apart.
        E::GRpcStatus(s) if s.message().contains(NO_SPACE) => {
            ClusterError::NoSpace(s.message().to_owned())
        }
        E::GRpcStatus(s) => match s.code() {
            // `Cancelled` is what a client-side timeout looks like; "etcdserver: no leader"
            // (require-leader) and "request timed out" are `Unavailable`.
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal => ClusterError::Unavailable(s.message().to_owned()),
            _ => ClusterError::Refused(format!("{:?}: {}", s.code(), s.message())),
        },
        E::TransportError(_)
        | E::IoError(_)
        | E::LeaseKeepAliveError(_)
        | E::WatchError(_)
        | E::EndpointError(_) => ClusterError::Unavailable(e.to_string()),
        other => ClusterError::Refused(other.to_string()),
    }
}

/// Run one step of a stream (a keep-alive answer, a watch event) with a deadline; past it
/// etcd counts as unavailable.
async fn within<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(classify),
        Err(_) => Err(ClusterError::Unavailable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// One device's pool view as its owner publishes it: what another controller needs to
/// match a request against it (`pool::spec::DeviceView` without the holder's details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Fields are named for the device attributes they carry (docs/cluster.md, "Keys").
#[allow(missing_docs)]
pub struct PublishedDevice {
    pub name: DeviceName,
    /// May be handed out right now (`ready`, unheld, not retired).
    pub available: bool,
    /// Lifeguard state name.
    pub state: String,
    pub failed: bool,
    pub retired: bool,
    /// Held by a request of its owner (the request's id on the owner).
    pub held: bool,
    pub hardware_type: Option<HardwareType>,
    pub processor: Option<String>,
    pub pool: Option<String>,
    pub os_version: Option<String>,
    pub environment: Option<EnvironmentName>,
    pub current_image: Option<ImageName>,
}

/// A device published as available and `ready`, nothing else known: the tests' fixture.
#[cfg(test)]
pub(crate) fn ready_device(name: &str) -> PublishedDevice {
    PublishedDevice {
        name: name.parse().expect("name"),
        available: true,
        state: "ready".into(),
        failed: false,
        retired: false,
        held: false,
        hardware_type: None,
        processor: None,
        pool: None,
        os_version: None,
        environment: None,
        current_image: None,
    }
}

/// The devices this controller publishes, by name: what the layers above send into
/// [`Cluster::start`]'s channel whenever the local view changes.
pub type DeviceMap = Arc<BTreeMap<String, PublishedDevice>>;

/// `<prefix>controllers/<name>`: one controller's presence, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The controller's cluster name.
    pub name: String,
    /// Where its API answers (`server.public_url`, else its listen address), for
    /// forwarding.
    pub url: Option<String>,
    /// How many devices it publishes.
    pub devices: usize,
}

/// This controller's lease, as the lease task last knew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease: not granted yet, or lost (keep-alives failed past the TTL, or etcd said it
    /// expired). Nothing may be done as owner or scheduler.
    None,
    /// A lease etcd granted; valid until `deadline` unless kept alive again.
    Held {
        /// The etcd lease id.
        id: i64,
        /// The last keep-alive's send time plus the TTL etcd granted: etcd cannot have
        /// expired the lease before this instant.
        deadline: Instant,
    },
}

impl LeaseState {
    /// The lease id when one is held and its deadline is still ahead.
    #[must_use]
    pub fn live(&self) -> Option<i64> {
        match *self {
            LeaseState::Held { id, deadline } if Instant::now() < deadline => Some(id),
            _ => None,
        }
    }

    /// The lease id whatever its deadline.
    #[must_use]
    pub fn id(&self) -> Option<i64> {
        match *self {
            LeaseState::Held { id, .. } => Some(id),
            LeaseState::None => None,
        }
    }
}

/// This controller is the scheduler: it created the election key under `lease` at
/// `revision`. A write guarded by it compares `create_revision(<prefix>scheduler) ==
/// revision`, so it fails once the key is gone, whatever this controller believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The election key's create revision.
    pub revision: i64,
    /// The lease the election key lives under.
    pub lease: i64,
}

/// What `GET /api/cluster/` shows: the last probe's view of etcd plus this controller's
/// lease, election and publication.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This controller's cluster name.
    pub name: String,
    /// The etcd endpoints it talks to.
    pub endpoints: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// The last probe (a linearizable read) succeeded: etcd is reachable and has quorum.
    pub etcd_ok: bool,
    /// Why the last probe failed.
    pub etcd_error: Option<String>,
    /// When the last probe succeeded (ms ago), if ever.
    pub etcd_ok_ms_ago: Option<u64>,
    /// This controller's lease, if live: hex id and ms left before etcd may expire it.
    pub lease: Option<LeaseView>,
    /// The controllers present (their `controllers/` keys), as of the last good probe.
    pub members: Vec<Member>,
    /// The scheduler's name, as of the last good probe.
    pub scheduler: Option<String>,
    /// This controller is the scheduler right now.
    pub is_scheduler: bool,
    /// Its election revision, when it is.
    pub election_revision: Option<i64>,
    /// Devices whose view this controller has published under its current lease.
    pub published_devices: usize,
    /// Why the last publication failed, until one succeeds.
    pub publish_error: Option<String>,
    /// etcd's raised alarms (`NOSPACE`: its database reached its quota and it refuses
    /// writes; `CORRUPT`), as of the last maintenance read (every few probes).
    pub etcd_alarms: Vec<String>,
    /// The size of the database file of the member this controller talks to, in bytes.
    pub etcd_db_size: Option<i64>,
    /// The last compaction of etcd's history this controller made (it compacts while it is
    /// the scheduler, `cluster.compaction_interval_s`).
    pub compaction: Option<CompactionView>,
}

/// Which problem a [`ClusterWarning`] is about (JSON: `etcd_unreachable`,
/// `etcd_out_of_space`, `no_lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// etcd does not answer, or has no quorum.
    EtcdUnreachable = 1,
    /// etcd's NOSPACE alarm is raised.
    EtcdOutOfSpace = 2,
    /// This controller holds no live lease.
    NoLease = 3,
}

/// What is wrong with the cluster as this controller sees it, for the web pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterWarning {
    /// Which problem.
    pub kind: WarningKind,
    /// What it means for the pool, in one sentence.
    pub message: String,
}

impl ClusterStatus {
    /// The warning a page shows, the most severe first; `None` when etcd answers, has room
    /// and this controller holds its lease.
    #[must_use]
    pub fn warning(&self) -> Option<ClusterWarning> {
        if !self.etcd_ok {
            // The probe's error is a whole sentence already ("the cluster's etcd is
            // unreachable or has lost quorum (…)…").
            let why = self
                .etcd_error
                .as_deref()
                .unwrap_or("etcd has not answered yet");
            return Some(ClusterWarning {
                kind: WarningKind::EtcdUnreachable,
                message: format!(
                    "{why}. Until then other racks' devices are shown as last seen, and requests cannot be created, renewed or returned; this rack's devices are still watched."
                ),
            });
        }
        if self.etcd_alarms.iter().any(|a| a == "NOSPACE") {
            return Some(ClusterWarning {
                kind: WarningKind::EtcdOutOfSpace,
                message: "etcd is out of space (its NOSPACE alarm is raised): requests cannot be created, renewed or returned until an operator frees space (docs/cluster.md, \"etcd out of space\").".to_owned(),
            });
        }
        if self.lease.is_none() {
            return Some(ClusterWarning {
                kind: WarningKind::NoLease,
                message: format!(
                    "This controller ({}) holds no etcd lease right now: its devices are out of the shared pool until it has one again.",
                    self.name
                ),
            });
        }
        None
    }
}

/// This controller's last compaction in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct CompactionView {
    /// etcd's history before this revision is gone.
    pub revision: i64,
    /// How long ago.
    pub ms_ago: u64,
}

/// This controller's lease in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    /// The lease id in hex, as `etcdctl lease list` prints it.
    pub id: String,
    /// Time left before etcd may expire it without another keep-alive.
    pub remaining_ms: u64,
    /// The configured TTL.
    pub ttl_s: u64,
}

/// What the probe and the publisher last saw, for [`Cluster::status`].
#[derive(Debug, Default)]
struct Seen {
    ok: bool,
    error: Option<String>,
    last_ok: Option<Instant>,
    members: Vec<Member>,
    scheduler: Option<String>,
    published: usize,
    publish_error: Option<String>,
    alarms: Vec<String>,
    db_size: Option<i64>,
    /// The revision of this controller's last compaction, and when.
    compacted: Option<(i64, Instant)>,
}

/// Handle to the cluster layer. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// One client per endpoint, with failover (`endpoints`). They connect lazily, so a
    /// controller starts while etcd is down and catches up.
    etcd: Arc<endpoints::Endpoints>,
    /// Sends the queue's guarded writes, batched.
    writes: batch::Batcher,
    /// Request ids reserved by this controller and not used yet (`requests::ID_BLOCK`).
    ids: Mutex<std::collections::VecDeque<u64>>,
    /// Held while a block of ids is being reserved.
    reserving: tokio::sync::Mutex<()>,
    config: ClusterConfig,
    /// This controller's cluster name.
    name: String,
    /// Written by the lease task only.
    lease: watch::Sender<LeaseState>,
    /// Written by the election task only; read through [`Cluster::leadership`], which also
    /// checks the lease is live.
    leader: watch::Sender<Option<Leadership>>,
    /// What the probe and publisher saw (a std mutex: short sections, never across await).
    seen: Mutex<Seen>,
    /// The last directory read (`directory`): a tokio mutex, held across the read so
    /// concurrent calls share one.
    directory: tokio::sync::Mutex<directory::Cache>,
    /// The in-memory copy of the queue, kept by the `queue` task.
    queue: queue::Shared,
    /// The revision of the last successful queue transaction this controller made.
    written: std::sync::atomic::AtomicI64,
}

impl Cluster {
    /// Build the clients for `config` (certificates read here, so a bad path stops
    /// start-up). Nothing is sent yet: etcd may be down; the clients connect on first use
    /// and the tasks of [`Cluster::start`] keep trying.
    ///
    /// # Errors
    /// [`ClusterError::Setup`] for unreadable TLS files.
    pub fn new(config: &ClusterConfig, name: String) -> Result<Cluster, ClusterError> {
        let timeout = config.timeout();
        // require_leader: a member cut off from the others answers "no leader" at once
        // instead of letting the call hang until the deadline.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(1), timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if config.ca.is_some() || config.cert.is_some() {
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| ClusterError::Setup(format!("cannot read {}: {e}", p.display())))
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_owned())
            .collect();
        let etcd = Arc::new(endpoints::Endpoints::new(endpoints, options));
        Ok(Cluster {
            inner: Arc::new(Inner {
                writes: batch::Batcher::new(etcd.clone(), timeout),
                ids: Mutex::new(std::collections::VecDeque::new()),
                reserving: tokio::sync::Mutex::new(()),
                etcd,
                config: config.clone(),
                name,
                lease: watch::channel(LeaseState::None).0,
                leader: watch::channel(None).0,
                seen: Mutex::new(Seen::default()),
                directory: tokio::sync::Mutex::new(directory::Cache::default()),
                queue: queue::Shared::default(),
                written: std::sync::atomic::AtomicI64::new(0),
            }),
        })
    }

    /// Start the lease, publication, election, queue-copy, compaction and probe tasks on
    /// `tasks` until `stop` is cancelled (then the lease is revoked, so this controller's
    /// keys go at once). `devices` carries this controller's devices whenever their view changes; `url` is
    /// where its API answers (published in its member key, for forwarding).
    pub fn start(
        &self,
        devices: watch::Receiver<DeviceMap>,
        url: Option<String>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) {
        tasks.spawn(lease::run(self.clone(), stop.clone()));
        tasks.spawn(publish::run(self.clone(), devices, url, stop.clone()));
        tasks.spawn(election::run(self.clone(), stop.clone()));
        tasks.spawn(queue::run(self.clone(), stop.clone()));
        if let Some(every) = self.inner.config.compaction_interval() {
            tasks.spawn(compact::run(self.clone(), every, stop.clone()));
        }
        tasks.spawn(self.clone().probe(stop));
    }

    /// This controller's cluster name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Follow this controller's lease: the value changes when a lease is granted or lost.
    #[must_use]
    pub fn lease(&self) -> watch::Receiver<LeaseState> {
        self.inner.lease.subscribe()
    }

    /// Is this controller the scheduler right now (elected, and its lease still live)?
    #[must_use]
    pub fn leadership(&self) -> Option<Leadership> {
        let l = (*self.inner.leader.borrow())?;
        (self.inner.lease.borrow().live() == Some(l.lease)).then_some(l)
    }

    /// Follow the election: the value changes when this controller becomes or stops being
    /// the scheduler (check [`Cluster::leadership`] too: it also requires a live lease).
    #[must_use]
    pub fn leader_changes(&self) -> watch::Receiver<Option<Leadership>> {
        self.inner.leader.subscribe()
    }

    /// Key of the scheduler election.
    fn scheduler_key(&self) -> String {
        format!("{}scheduler", self.inner.config.prefix)
    }

    /// Write `value` at `<prefix><key>` only if `leadership`'s election key still exists
    /// with its revision: the guard every scheduler write (assignments) will carry, so a
    /// paused or cut-off old scheduler cannot write after another took over.
    ///
    /// # Errors
    /// [`ClusterError::NotLeader`] when the guard fails; [`ClusterError::Unavailable`]
    /// when etcd cannot be reached or has no quorum.
    pub async fn put_as_leader(
        &self,
        leadership: &Leadership,
        key: &str,
        value: &[u8],
    ) -> Result<i64, ClusterError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.scheduler_key(),
                CompareOp::Equal,
                leadership.revision,
            )])
            .and_then([TxnOp::put(
                format!("{}{key}", self.inner.config.prefix),
                value,
                None,
            )]);
        let resp = self
            .inner
            .etcd
            .txn(self.inner.config.timeout(), txn)
            .await?;
        if resp.succeeded() {
            Ok(resp.header().map_or(0, |h| h.revision()))
        } else {
            Err(ClusterError::NotLeader(leadership.revision))
        }
    }

    /// The status shown by `GET /api/cluster/`.
    #[must_use]
    pub fn status(&self) -> ClusterStatus {
        let seen = lock(&self.inner.seen);
        let lease = *self.inner.lease.borrow();
        let leadership = self.leadership();
        ClusterStatus {
            name: self.inner.name.clone(),
            endpoints: self.inner.config.endpoints.clone(),
            prefix: self.inner.config.prefix.clone(),
            etcd_ok: seen.ok,
            etcd_error: seen.error.clone(),
            etcd_ok_ms_ago: seen
                .last_ok
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            lease: match lease {
                LeaseState::Held { id, deadline } if lease.live().is_some() => Some(LeaseView {
                    id: format!("{id:x}"),
                    remaining_ms: u64::try_from(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                    ttl_s: self.inner.config.lease_ttl_s,
                }),
                _ => None,
            },
            members: seen.members.clone(),
            scheduler: seen.scheduler.clone(),
            is_scheduler: leadership.is_some(),
            election_revision: leadership.map(|l| l.revision),
            published_devices: seen.published,
            publish_error: seen.publish_error.clone(),
            etcd_alarms: seen.alarms.clone(),
            etcd_db_size: seen.db_size,
            compaction: seen.compacted.map(|(revision, at)| CompactionView {
                revision,
                ms_ago: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Read the members and the scheduler key once per probe interval. The read is
    /// linearizable (it needs a quorum) and sent with require-leader, so a cut-off member or
    /// a lost quorum shows up as a failed probe within about a second.
    async fn probe(self, stop: CancellationToken) {
        let prefix = &self.inner.config.prefix;
        let every = (self.inner.config.lease_ttl() / 3).min(Duration::from_secs(1));
        // A probe waits at most one interval (plus a little), so quorum loss shows quickly.
        let timeout = self
            .inner
            .config
            .timeout()
            .min(every + Duration::from_millis(500));
        let mut probes: u64 = 0;
        loop {
            let txn = Txn::new().and_then([
                TxnOp::get(
                    format!("{prefix}controllers/"),
                    Some(GetOptions::new().with_prefix()),
                ),
                TxnOp::get(self.scheduler_key(), None),
            ]);
            let result = self.inner.etcd.txn(timeout, txn).await;
            {
                let mut seen = lock(&self.inner.seen);
                match result {
                    Ok(resp) => {
                        let ops = resp.op_responses();
                        let kvs = |i: usize| match ops.get(i) {
                            Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
                            _ => Vec::new(),
                        };
                        seen.members = kvs(0)
                            .iter()
                            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                            .collect();
                        seen.scheduler = kvs(1).first().and_then(|kv| {
                            serde_json::from_slice::<election::Candidate>(kv.value())
                                .ok()
                                .map(|c| c.name)
                        });
                        seen.ok = true;
                        seen.error = None;
                        seen.last_ok = Some(Instant::now());
                    }
                    Err(e) => {
                        if seen.ok {
                            tracing::warn!(error = %e, "cluster: etcd probe failed");
                        }
                        seen.ok = false;
                        seen.error = Some(e.to_string());
                    }
                }
            }
            // Only after a good probe: without quorum the alarm read (a raft request) would
            // wait out its timeout and delay the next probe.
            probes += 1;
            if probes % MAINTENANCE_EVERY == 1 && lock(&self.inner.seen).ok {
                self.read_maintenance(timeout).await;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Read etcd's alarms and the database size of the member this controller talks to,
    /// for [`Cluster::status`]. A failure keeps what was last seen: the probe already says
    /// whether etcd answers.
    async fn read_maintenance(&self, timeout: Duration) {
        let alarms = self
            .inner
            .etcd
            .call(timeout, |mut c| async move {
                c.alarm(AlarmAction::Get, AlarmType::None, None).await
            })
            .await;
        let status = self
            .inner
            .etcd
            .call(timeout, |mut c| async move { c.status().await })
            .await;
        let mut seen = lock(&self.inner.seen);
        if let Ok(a) = alarms {
            let was_full = seen.alarms.iter().any(|a| a == "NOSPACE");
            seen.alarms = a
                .alarms()
                .iter()
                .map(|m| m.alarm().as_str_name().to_owned())
                .collect();
            seen.alarms.sort();
            seen.alarms.dedup();
            if !was_full && seen.alarms.iter().any(|a| a == "NOSPACE") {
                tracing::error!(
                    "cluster: etcd is out of space (NOSPACE alarm) and refuses every write; see docs/cluster.md, \"etcd out of space\""
                );
            }
        }
        if let Ok(s) = status {
            seen.db_size = Some(s.db_size());
        }
    }
}

/// The probe reads etcd's alarms and database size once every this many probes (about
/// every 5 s): they change slowly, and a write refused for want of space says so at once.
const MAINTENANCE_EVERY: u64 = 5;

#[cfg(test)]
mod tests {
    // `crate::cluster`, not `super`: at a layer's root `super` is the crate root.
    use std::time::{Duration, Instant};

    use crate::cluster::{ClusterError, LeaseState, classify};

    #[test]
    fn errors_sort_into_unavailable_and_refused() {
        let s = |code| etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x"));
        assert!(classify(s(tonic::Code::Unavailable)).is_unavailable());
        assert!(classify(s(tonic::Code::DeadlineExceeded)).is_unavailable());
        assert!(!classify(s(tonic::Code::PermissionDenied)).is_unavailable());
        assert!(ClusterError::NoLease.is_unavailable());
        assert!(!ClusterError::NotLeader(3).is_unavailable());
        let full = classify(etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        )));
        assert!(matches!(full, ClusterError::NoSpace(_)), "{full:?}");
        assert!(!full.is_unavailable(), "another member is just as full");
        assert!(
            classify(s(tonic::Code::ResourceExhausted)).is_unavailable(),
            "too many requests passes"
        );
    }

    #[test]
    fn a_lease_past_its_deadline_is_not_live() {
        let past = LeaseState::Held {
            id: 7,
            deadline: Instant::now()
                .checked_sub(Duration::from_millis(1))
                .unwrap_or_else(Instant::now),
        };
        assert_eq!(past.live(), None);
        assert_eq!(past.id(), Some(7));
        let ahead = LeaseState::Held {
            id: 7,
            deadline: Instant::now() + Duration::from_secs(5),
        };
        assert_eq!(ahead.live(), Some(7));
    }

    #[test]
    fn the_pages_warning_names_the_worst_problem_first() {
        let healthy = crate::cluster::ClusterStatus {
            name: "rack-a".into(),
            endpoints: Vec::new(),
            prefix: "/mozpool/".into(),
            etcd_ok: true,
            etcd_error: None,
            etcd_ok_ms_ago: Some(10),
            lease: Some(crate::cluster::LeaseView {
                id: "7".into(),
                remaining_ms: 9_000,
                ttl_s: 10,
            }),
            members: Vec::new(),
            scheduler: None,
            is_scheduler: false,
            election_revision: None,
            published_devices: 0,
            publish_error: None,
            etcd_alarms: Vec::new(),
            etcd_db_size: None,
            compaction: None,
        };
        assert_eq!(healthy.warning(), None);
        let mut s = healthy.clone();
        s.lease = None;
        let w = s.warning().expect("no lease");
        assert_eq!(w.kind, crate::cluster::WarningKind::NoLease);
        assert!(w.message.contains("rack-a"), "{}", w.message);
        s.etcd_alarms = vec!["NOSPACE".into()];
        assert_eq!(
            s.warning().expect("full").kind,
            crate::cluster::WarningKind::EtcdOutOfSpace
        );
        s.etcd_ok = false;
        s.etcd_error = Some("etcdserver: no leader".into());
        let w = s.warning().expect("down");
        assert_eq!(w.kind, crate::cluster::WarningKind::EtcdUnreachable);
        assert!(w.message.contains("no leader"), "{}", w.message);
    }
}
