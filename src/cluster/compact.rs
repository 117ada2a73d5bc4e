//! Compaction of etcd's history. etcd keeps every revision of every key until someone
//! compacts it: every request record is rewritten at each step and every device view at
//! each state change, so without compaction the members' database grows with every cycle
//! until it reaches its quota (2 GiB by default) and etcd refuses every write (`NOSPACE`).
//!
//! As Kubernetes' API server does, the scheduler compacts every
//! `cluster.compaction_interval_s` to the revision it saw one interval earlier: etcd keeps
//! one to two intervals of history, enough for every watch this layer runs (the queue
//! copy, a status long poll's own watch) to resume; a watch older than that is cancelled
//! and the copy read again, as after any cancellation. Compaction is cluster-wide, not
//! per prefix, so only one controller does it: the scheduler, whose role already makes it
//! one. Two doing it at once (a paused old scheduler) is harmless: compacting to a revision
//! already compacted is refused and changes nothing.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError, lock};

/// What the compaction task remembers between its rounds.
#[derive(Debug, Default)]
struct Rounds {
    /// The revision seen at the previous round, while this controller was scheduler.
    previous: Option<i64>,
}

impl Rounds {
    /// One round at etcd revision `now`: the revision to compact to, if any. A controller
    /// that is not the scheduler forgets what it saw, so a newly elected one waits a whole
    /// interval before its first compaction (its predecessor may have compacted just
    /// before).
    fn next(&mut self, leader: bool, now: Option<i64>) -> Option<i64> {
        if !leader {
            self.previous = None;
            return None;
        }
        let now = now?;
        let to = self.previous.filter(|&p| p < now);
        self.previous = Some(now);
        to
    }
}

/// Compact etcd's history every `interval` while this controller is the scheduler.
pub(super) async fn run(cluster: Cluster, interval: Duration, stop: CancellationToken) {
    let mut rounds = Rounds::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let leader = cluster.leadership().is_some();
        let now = if leader {
            match cluster.current_revision().await {
                // `i64::MAX` stands for an answer without a header: no revision to keep.
                Ok(r) => (r != i64::MAX).then_some(r),
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: cannot read etcd's revision to compact");
                    None
                }
            }
        } else {
            None
        };
        if let Some(to) = rounds.next(leader, now) {
            match cluster.compact(to).await {
                Ok(()) => {
                    tracing::debug!(revision = to, "cluster: compacted etcd's history");
                    lock(&cluster.inner.seen).compacted = Some((to, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(revision = to, error = %e, "cluster: cannot compact etcd's history");
                }
            }
        }
    }
}

impl Cluster {
    /// Compact etcd's history up to `revision`. A revision etcd already compacted past
    /// (another controller, or the members' own `--auto-compaction-*`) is not an error.
    async fn compact(&self, revision: i64) -> Result<(), ClusterError> {
        let result = self
            .inner
            .etcd
            .call(self.inner.config.timeout(), |mut c| async move {
                c.compact(revision, None).await
            })
            .await;
        match result {
            Err(ClusterError::Refused(why)) if why.contains("compacted") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rounds;

    #[test]
    fn compacts_to_the_revision_of_the_round_before_while_scheduler() {
        let mut r = Rounds::default();
        assert_eq!(r.next(true, Some(100)), None, "the first round only looks");
        assert_eq!(r.next(true, Some(250)), Some(100));
        assert_eq!(r.next(true, Some(250)), None, "nothing new to compact");
        assert_eq!(r.next(true, None), None, "etcd unreadable");
        assert_eq!(r.next(true, Some(300)), Some(250));
        assert_eq!(r.next(false, None), None);
        assert_eq!(
            r.next(true, Some(400)),
            None,
            "re-elected: a whole interval before the next compaction"
        );
        assert_eq!(r.next(true, Some(420)), Some(400));
    }
}
