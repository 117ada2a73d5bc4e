//! A loop's liveness: the loop beats it, the systemd watchdog (app layer) reads it. It lives
//! here, at the bottom, so the drivers that beat it need not know who watches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One loop's heartbeat. The loop must call [`Heartbeat::beat`] at least once per watchdog
/// period (30 s in the unit) even when idle, e.g. on a timer in its `select!`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat whose beats count from `epoch` (the watchdog's own start), alive now.
    #[must_use]
    pub fn new(epoch: Instant) -> Heartbeat {
        let h = Heartbeat {
            epoch,
            last: Arc::new(AtomicU64::new(0)),
        };
        h.beat();
        h
    }

    /// How long since the last beat.
    #[must_use]
    pub fn age(&self) -> std::time::Duration {
        self.epoch
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(
                self.last.load(Ordering::Relaxed),
            ))
    }

    /// Record that the loop is alive now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}
