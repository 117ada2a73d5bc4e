//! The scheduler election: a key `<prefix>scheduler` created under the candidate's lease in
//! a transaction that succeeds only when the key does not exist (`create_revision == 0`).
//! Its create revision is the leadership's fencing token ([`Leadership::revision`]).
//!
//! The leader watches its key and stops being leader when the key is deleted or its lease
//! is lost; the others watch it and campaign again when it is deleted (its holder's lease
//! expired or was revoked). Every candidate also campaigns again once per TTL whatever the
//! watch says, so a watch stuck on a dead member delays a takeover by at most a TTL. etcd's
//! lock and election APIs are not used: a lock alone does not fence a paused holder, and
//! the compare on the key's create revision does.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError, Leadership, LeaseState};

/// The value of the election key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Candidate {
    /// The scheduler's cluster name.
    pub name: String,
    /// Its lease, in hex.
    pub lease: String,
}

/// The outcome of one campaign.
enum Campaign {
    /// This controller holds the key (created now, or earlier under the same lease).
    Won(Leadership, i64),
    /// Another controller holds it; watch from this revision.
    Lost(i64),
}

pub(super) async fn run(cluster: Cluster, stop: CancellationToken) {
    let inner = &cluster.inner;
    let mut lease_rx = inner.lease.subscribe();
    let every = inner.config.lease_ttl();
    loop {
        // Wait for a live lease.
        let id = loop {
            if let Some(id) = lease_rx.borrow_and_update().id() {
                break id;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = lease_rx.changed() => if r.is_err() { return },
            }
        };
        let won = match campaign(&cluster, id).await {
            Ok(c) => c,
            Err(e) => {
                inner.leader.send_replace(None);
                tracing::debug!(error = %e, "cluster: campaign failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(300)) => continue,
                }
            }
        };
        let from = match won {
            Campaign::Won(l, from) => {
                let was = inner.leader.send_replace(Some(l));
                if was != Some(l) {
                    tracing::info!(
                        revision = l.revision,
                        "cluster: this controller is the scheduler"
                    );
                }
                from
            }
            Campaign::Lost(from) => {
                if inner.leader.send_replace(None).is_some() {
                    tracing::warn!("cluster: this controller is no longer the scheduler");
                }
                from
            }
        };
        // Watch the key until it is deleted, the lease changes, or a TTL passes.
        let opts = WatchOptions::new().with_start_revision(from);
        let key = cluster.scheduler_key();
        let watched = inner
            .etcd
            .call(inner.config.timeout(), |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.watch(key, Some(opts)).await }
            })
            .await;
        let mut stream = match watched {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot watch the election key");
                None
            }
        };
        let recheck = tokio::time::sleep(every);
        tokio::pin!(recheck);
        loop {
            let deleted = async {
                let Some(s) = stream.as_mut() else {
                    return std::future::pending().await;
                };
                match s.message().await {
                    Ok(Some(resp)) if !resp.canceled() => resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete),
                    // Cancelled (compacted), closed or failed: campaign again to learn.
                    _ => true,
                }
            };
            tokio::select! {
                () = stop.cancelled() => {
                    inner.leader.send_replace(None);
                    return;
                }
                d = deleted => if d { break },
                r = lease_rx.changed() => {
                    if r.is_err() { return }
                    if lease_rx.borrow_and_update().id() != Some(id) {
                        // The lease is gone, and the election key with it.
                        if inner.leader.send_replace(None).is_some() {
                            tracing::warn!("cluster: lease lost; no longer the scheduler");
                        }
                        break;
                    }
                }
                () = &mut recheck => break,
            }
        }
        if matches!(*lease_rx.borrow(), LeaseState::None) {
            inner.leader.send_replace(None);
        }
    }
}

/// Create the election key under lease `id` if it does not exist; otherwise read who holds
/// it.
async fn campaign(cluster: &Cluster, id: i64) -> Result<Campaign, ClusterError> {
    let inner = &cluster.inner;
    let key = cluster.scheduler_key();
    let value = serde_json::to_vec(&Candidate {
        name: inner.name.clone(),
        lease: format!("{id:x}"),
    })
    .unwrap_or_default();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(id)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = inner.etcd.txn(inner.config.timeout(), txn).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    if resp.succeeded() {
        return Ok(Campaign::Won(
            Leadership {
                revision,
                lease: id,
            },
            revision + 1,
        ));
    }
    let holder = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    Ok(match holder {
        // Ours from an earlier campaign under the same lease (a watch hiccup).
        Some(kv) if kv.lease() == id => Campaign::Won(
            Leadership {
                revision: kv.create_revision(),
                lease: id,
            },
            revision + 1,
        ),
        _ => Campaign::Lost(revision + 1),
    })
}
