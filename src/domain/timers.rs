//! The deadline loop both drivers (Lifeguard's devices and the pool's requests) run: handle
//! whatever is due, then sleep until the next stored deadline (at most a second), or until
//! woken because a transition set an earlier one, or until shutdown.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::clock::{Clock, Millis};
use crate::domain::heartbeat::Heartbeat;

/// Longest sleep between passes (also the heartbeat period).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Pause when something is due but a pass moved nothing, so a stuck deadline cannot spin.
const STUCK_PAUSE: Duration = Duration::from_millis(50);

/// A driver whose deadlines the loop serves.
pub trait Deadlines: Send + Sync {
    /// Handle everything due at `now`; whether anything moved.
    fn pass(&self, now: Millis) -> impl Future<Output = bool> + Send;
    /// The earliest pending deadline.
    fn next_deadline(&self) -> impl Future<Output = Option<Millis>> + Send;
}

/// What a timer loop needs besides its driver.
#[derive(Debug, Clone, Copy)]
pub struct TimerLoop<'a> {
    /// The clock deadlines are compared with.
    pub clock: &'a dyn Clock,
    /// Notified when a transition may have set an earlier deadline.
    pub wake: &'a Notify,
    /// Ends the loop.
    pub shutdown: &'a CancellationToken,
    /// Beaten on every pass, for the systemd watchdog.
    pub heartbeat: Option<&'a Heartbeat>,
}

impl TimerLoop<'_> {
    /// Run `driver`'s deadlines until shutdown.
    pub async fn run(self, driver: &impl Deadlines) {
        while !self.shutdown.is_cancelled() {
            if let Some(h) = self.heartbeat {
                h.beat();
            }
            let progressed = driver.pass(self.clock.now()).await;
            let next = driver.next_deadline().await;
            let now = self.clock.now();
            let mut wait = next.map_or(MAX_SLEEP, |d| d.since(now)).min(MAX_SLEEP);
            if !progressed && wait.is_zero() {
                wait = STUCK_PAUSE;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = self.shutdown.cancelled() => break,
            }
        }
    }
}
