//! systemd integration: `READY=1`, `STATUS=`, `STOPPING=1` and the watchdog.
//!
//! Every call is a no-op when the service does not run under systemd (`NOTIFY_SOCKET` unset),
//! so tests and `mozpool serve` on a laptop are unaffected.
//!
//! **The watchdog** (`WatchdogSec=` in the unit): [`spawn_watchdog`] starts a task that pings
//! only while the service is really alive, so a stuck service is killed (SIGABRT) and
//! restarted by `Restart=on-failure`:
//! - the **event loop** is alive: the pinger is itself a task on the runtime, and skips a ping
//!   when its tick came later than half the watchdog period (a starved runtime);
//! - the **store's writer** commits: a commit within the last half period proves it; if there
//!   was none (an idle service), the pinger submits an empty write and waits for its commit
//!   (bounded), so a stuck writer thread or a hung `fsync` stops the pings. A writer that
//!   answers "the store is down" (a full disk; see `storage::disk`) is alive: it reopens the
//!   store by itself once the disk takes writes, which is all a restart would do (and a
//!   restart on a full disk could not even open the store), so the pings go on;
//! - every registered [`Heartbeat`] (drivers, board actors) beat within the period.
//!
//! Any failed check skips the ping and logs why; a later successful check resumes pinging.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::domain::heartbeat::Heartbeat;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::storage::Store;

/// True when systemd supervises this process (`NOTIFY_SOCKET` set).
#[must_use]
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn notify(states: &[NotifyState<'_>]) {
    if !under_systemd() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Tell systemd the service is up (after the store opened and the listener is bound).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Update the one-line status `systemctl status mozpool` shows.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Tell systemd the service is stopping (so a slow drain is not mistaken for a hang).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Heartbeats of the service's critical loops, checked by the watchdog. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    inner: Arc<HeartbeatsInner>,
}

#[derive(Debug, Default)]
struct HeartbeatsInner {
    epoch: OnceInstant,
    beats: Mutex<Vec<(String, Heartbeat)>>,
}

#[derive(Debug)]
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

impl Heartbeats {
    /// Register a loop by name; it counts as alive from now.
    #[must_use]
    pub fn register(&self, name: &str) -> Heartbeat {
        let h = Heartbeat::new(self.inner.epoch.0);
        crate::domain::lock(&self.inner.beats).push((name.to_owned(), h.clone()));
        h
    }

    /// Names of loops that did not beat within `max_age`.
    #[must_use]
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        crate::domain::lock(&self.inner.beats)
            .iter()
            .filter(|(_, h)| h.age() > max_age)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Why the watchdog skipped a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// The pinger's own tick was late by this much: the runtime is starved or blocked.
    EventLoopLate(Duration),
    /// The store's writer did not commit a probe write in time.
    WriterStalled,
    /// The last commit failed and the probe failed too.
    StoreFailing(String),
    /// These loops missed their heartbeats.
    Loops(Vec<String>),
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::EventLoopLate(d) => write!(f, "event loop late by {d:?}"),
            Unhealthy::WriterStalled => write!(f, "store writer did not commit in time"),
            Unhealthy::StoreFailing(e) => write!(f, "store failing: {e}"),
            Unhealthy::Loops(l) => write!(f, "loops missed heartbeats: {}", l.join(", ")),
        }
    }
}

/// One health check of the watchdog. `period` is the watchdog period; `lateness` how late
/// the pinger's tick fired.
///
/// # Errors
/// The first check that failed.
pub async fn check(
    store: &Store,
    heartbeats: &Heartbeats,
    period: Duration,
    lateness: Duration,
) -> Result<(), Unhealthy> {
    let half = period / 2;
    if lateness > half {
        return Err(Unhealthy::EventLoopLate(lateness));
    }
    let recent = store.stats().since_last_commit().is_some_and(|d| d < half);
    if !(recent && store.healthy()) {
        // Idle (or failing): prove the writer is alive with an empty commit.
        match tokio::time::timeout(half, store.write(|_, _| Ok(()))).await {
            Err(_) => return Err(Unhealthy::WriterStalled),
            // Alive and healing by itself (health and /metrics report the outage).
            Ok(Err(e)) if e.fault().is_some() => {
                tracing::debug!(error = %e, "watchdog: the store is down and reopening itself");
            }
            Ok(Err(e)) => return Err(Unhealthy::StoreFailing(e.to_string())),
            Ok(Ok(())) => {}
        }
    }
    let stale = heartbeats.stale(period);
    if !stale.is_empty() {
        return Err(Unhealthy::Loops(stale));
    }
    Ok(())
}

/// Start the watchdog pinger on `tasks` when systemd asked for one (`WATCHDOG_USEC`). Pings
/// every quarter period after a successful [`check`]; stops at `shutdown`.
pub fn spawn_watchdog(
    tasks: &TaskTracker,
    store: Store,
    heartbeats: Heartbeats,
    shutdown: CancellationToken,
) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::info!(?period, "systemd watchdog enabled");
    tasks.spawn(async move {
        let every = period / 4;
        let mut next = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            next += every;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = shutdown.cancelled() => break,
            }
            let lateness = tokio::time::Instant::now().saturating_duration_since(next);
            if lateness > every {
                // Do not try to catch up on missed ticks.
                next = tokio::time::Instant::now();
            }
            match check(&store, &heartbeats, period, lateness).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("health checks pass again; resuming watchdog pings");
                        failing = false;
                    }
                    notify(&[NotifyState::Watchdog]);
                }
                Err(why) => {
                    tracing::error!(reason = %why, "not pinging the systemd watchdog");
                    failing = true;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::SystemClock;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(
            &dir.path().join(crate::storage::backup::DB_FILE),
            Arc::new(SystemClock),
        )
        .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn healthy_store_passes_and_stuck_writer_fails() {
        let (_dir, store) = temp_store();
        let hb = Heartbeats::default();
        let period = Duration::from_millis(400);
        assert_eq!(check(&store, &hb, period, Duration::ZERO).await, Ok(()));
        // Late tick.
        assert!(matches!(
            check(&store, &hb, period, Duration::from_millis(300)).await,
            Err(Unhealthy::EventLoopLate(_))
        ));
        // Block the writer thread for longer than half a period.
        let stuck = block_writer(&store);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            check(&store, &hb, period, Duration::ZERO).await,
            Err(Unhealthy::WriterStalled)
        );
        stuck.await.expect("join").expect("write");
        assert_eq!(check(&store, &hb, period, Duration::ZERO).await, Ok(()));
    }

    /// Occupy the store's writer thread for 1.2 s (longer than half the tests' period).
    fn block_writer(
        store: &Store,
    ) -> tokio::task::JoinHandle<Result<(), crate::storage::StoreError>> {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|_, _| {
                    std::thread::sleep(Duration::from_millis(1200));
                    Ok(())
                })
                .await
        })
    }

    /// A writer that refuses writes because the disk is full is alive and reopens the store
    /// by itself: the watchdog keeps pinging (a restart could not do more). A writer stuck
    /// in a write still stops the pings.
    #[tokio::test]
    async fn a_store_down_on_a_full_disk_passes_and_a_stuck_one_does_not() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(crate::storage::backup::DB_FILE);
        let disk = crate::storage::SimDisk::new(&path);
        let store = Store::open_on(disk.clone(), &path, Arc::new(SystemClock)).expect("open");
        let hb = Heartbeats::default();
        let period = Duration::from_millis(400);
        disk.set_full(true);
        let e = store.write(|_, _| Ok(())).await.expect_err("full");
        assert!(e.fault().is_some(), "{e}");
        assert!(store.outage().is_some());
        assert_eq!(check(&store, &hb, period, Duration::ZERO).await, Ok(()));
        disk.set_full(false);
        // Wait for the reopen, then block the writer for longer than half a period.
        while store.outage().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stuck = block_writer(&store);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            check(&store, &hb, period, Duration::ZERO).await,
            Err(Unhealthy::WriterStalled)
        );
        stuck.await.expect("join").expect("write");
    }

    #[tokio::test]
    async fn stale_heartbeat_fails() {
        let (_dir, store) = temp_store();
        let hb = Heartbeats::default();
        let driver = hb.register("lifeguard");
        let period = Duration::from_millis(200);
        assert_eq!(check(&store, &hb, period, Duration::ZERO).await, Ok(()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            check(&store, &hb, period, Duration::ZERO).await,
            Err(Unhealthy::Loops(vec!["lifeguard".into()]))
        );
        driver.beat();
        assert_eq!(check(&store, &hb, period, Duration::ZERO).await, Ok(()));
    }
}
