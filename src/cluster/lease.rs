//! The lease task: grant this controller's lease, keep it alive, and say when it is lost.
//!
//! A keep-alive is sent every third of the TTL. Each answer moves the deadline to its send
//! time plus the TTL etcd granted: etcd cannot expire the lease before then. When no answer
//! comes before the deadline (etcd unreachable, no quorum, this process was stopped), or
//! etcd answers that the lease is gone, the lease is lost: [`LeaseState::None`] is
//! published at once, the old lease is revoked when etcd answers again (its keys, including
//! a scheduler key, go at once instead of at its expiry), and a new lease is granted.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError, LeaseState, within};

/// Pause between attempts to grant a lease while etcd does not answer.
const RETRY: Duration = Duration::from_millis(500);

/// How one lease ended.
enum End {
    Lost(String),
    Stopped,
}

pub(super) async fn run(cluster: Cluster, stop: CancellationToken) {
    let inner = &cluster.inner;
    let ttl = inner.config.lease_ttl();
    let timeout = inner.config.timeout();
    let mut stale: Option<i64> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        // The old lease goes once etcd answers (or says it is gone already).
        if let Some(id) = stale
            && !inner
                .etcd
                .call(timeout, |mut c| async move { c.lease_revoke(id).await })
                .await
                .is_err_and(|e| e.is_unavailable())
        {
            stale = None;
        }
        let sent = Instant::now();
        let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let granted = match inner
            .etcd
            .call(
                timeout,
                |mut c| async move { c.lease_grant(ttl_s, None).await },
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot grant a lease yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let id = granted.id();
        let granted_ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        inner.lease.send_replace(LeaseState::Held {
            id,
            deadline: sent + granted_ttl,
        });
        tracing::info!(
            lease = format!("{id:x}"),
            ttl_s = granted.ttl(),
            "cluster: lease granted"
        );
        match keep(&cluster, id, stop.clone()).await {
            End::Stopped => {
                inner.lease.send_replace(LeaseState::None);
                // Going away on purpose: the keys go now, not a TTL later.
                let _ = inner
                    .etcd
                    .call(timeout, |mut c| async move { c.lease_revoke(id).await })
                    .await;
                return;
            }
            End::Lost(why) => {
                inner.lease.send_replace(LeaseState::None);
                tracing::warn!(lease = format!("{id:x}"), why, "cluster: lease lost");
                stale = Some(id);
            }
        }
    }
}

/// Keep lease `id` alive until it is lost or `stop` is cancelled.
async fn keep(cluster: &Cluster, id: i64, stop: CancellationToken) -> End {
    let inner = &cluster.inner;
    let timeout = inner.config.timeout();
    let every = (inner.config.lease_ttl() / 3).max(Duration::from_millis(300));
    let mut stream = None;
    loop {
        let deadline = match *inner.lease.borrow() {
            LeaseState::Held { deadline, .. } => deadline,
            LeaseState::None => return End::Lost("lease cleared".into()),
        };
        let now = Instant::now();
        if now >= deadline {
            return End::Lost("no keep-alive answer within the lease TTL".into());
        }
        let sent = now;
        let answered = async {
            if stream.is_none() {
                stream = Some(
                    inner
                        .etcd
                        .call(timeout, |mut c| async move { c.lease_keep_alive(id).await })
                        .await?,
                );
            }
            let Some((keeper, answers)) = stream.as_mut() else {
                return Err(ClusterError::NoLease);
            };
            within(timeout, keeper.keep_alive()).await?;
            match within(timeout, answers.message()).await? {
                Some(a) => Ok(a.ttl()),
                None => Err(ClusterError::Unavailable("keep-alive stream closed".into())),
            }
        };
        // Never wait past the deadline for an answer: at the deadline the lease is lost.
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::select! {
            () = stop.cancelled() => return End::Stopped,
            r = tokio::time::timeout(left, answered) => r,
        };
        match result {
            Ok(Ok(ttl)) if ttl > 0 => {
                let new = sent + Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
                // The deadline moves quietly: watchers care about a lease coming or going.
                inner.lease.send_if_modified(|s| {
                    if let LeaseState::Held { deadline, .. } = s {
                        *deadline = new;
                    }
                    false
                });
            }
            Ok(Ok(_)) => return End::Lost("etcd says the lease expired".into()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster: keep-alive failed");
                stream = None;
                // Try again soon: the deadline, not one failure, decides the lease is lost.
                tokio::select! {
                    () = stop.cancelled() => return End::Stopped,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            Err(_) => {
                stream = None;
                continue;
            }
        }
        let next = sent + every;
        tokio::select! {
            () = stop.cancelled() => return End::Stopped,
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}
