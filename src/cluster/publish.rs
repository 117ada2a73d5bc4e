//! Publication: this controller's devices' pool view under its lease.
//!
//! Keys: `<prefix>devices/<controller>/<device>` (a [`PublishedDevice`] as JSON) and
//! `<prefix>controllers/<controller>` (a [`Member`]). Only changed devices are written;
//! devices gone from the local view are deleted. Under a new lease everything is written
//! again (the old lease's keys went with it). A failed write is retried after a pause; the
//! local view is never blocked by etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError, DeviceMap, Member, lock};

/// Operations per transaction: etcd's default `--max-txn-ops` is 128.
const BATCH: usize = 100;
/// Pause before retrying a failed publication.
const RETRY: Duration = Duration::from_millis(500);

pub(super) async fn run(
    cluster: Cluster,
    mut devices: watch::Receiver<DeviceMap>,
    url: Option<String>,
    stop: CancellationToken,
) {
    let inner = &cluster.inner;
    let mut lease_rx = inner.lease.subscribe();
    // What etcd holds under `lease`: device name → the JSON written.
    let mut published: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut member: Option<Vec<u8>> = None;
    let mut lease: Option<i64> = None;
    loop {
        let current = lease_rx.borrow_and_update().id();
        if current != lease {
            published.clear();
            member = None;
            lease = current;
            lock(&inner.seen).published = 0;
        }
        let mut ok = true;
        if let Some(id) = lease {
            let want = devices.borrow_and_update().clone();
            let m = Member {
                name: inner.name.clone(),
                url: url.clone(),
                devices: want.len(),
            };
            match sync(&cluster, id, &want, &m, &mut published, &mut member).await {
                Ok(()) => {
                    let mut seen = lock(&inner.seen);
                    seen.published = published.len();
                    seen.publish_error = None;
                }
                Err(e) => {
                    ok = false;
                    tracing::debug!(error = %e, "cluster: publication failed");
                    lock(&inner.seen).publish_error = Some(e.to_string());
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = devices.changed() => if r.is_err() { return },
            r = lease_rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RETRY), if !ok => {}
        }
    }
}

/// Bring etcd in line with `want` under lease `id`; `published` and `member` track what
/// etcd holds and are updated batch by batch as writes succeed.
async fn sync(
    cluster: &Cluster,
    id: i64,
    want: &DeviceMap,
    me: &Member,
    published: &mut BTreeMap<String, Vec<u8>>,
    member: &mut Option<Vec<u8>>,
) -> Result<(), ClusterError> {
    let inner = &cluster.inner;
    let base = format!("{}devices/{}/", inner.config.prefix, inner.name);
    let leased = || Some(PutOptions::new().with_lease(id));
    // The member key first: it must be absent or under this lease, so two live controllers
    // with the same name cannot overwrite each other's devices.
    let m = serde_json::to_vec(me).unwrap_or_default();
    if member.as_ref() != Some(&m) {
        claim(cluster, id, &m).await?;
        *member = Some(m);
    }
    // (device, new value or None for a delete)
    let mut changes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for (name, d) in want.iter() {
        let v = serde_json::to_vec(d).unwrap_or_default();
        if published.get(name) != Some(&v) {
            changes.push((name.clone(), Some(v)));
        }
    }
    for name in published.keys() {
        if !want.contains_key(name) {
            changes.push((name.clone(), None));
        }
    }
    for chunk in changes.chunks(BATCH) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(name, v)| match v {
                Some(v) => TxnOp::put(format!("{base}{name}"), v.clone(), leased()),
                None => TxnOp::delete(format!("{base}{name}"), None),
            })
            .collect();
        let txn = Txn::new().and_then(ops);
        inner.etcd.txn(inner.config.timeout(), txn).await?;
        for (name, v) in chunk {
            match v {
                Some(v) => published.insert(name.clone(), v.clone()),
                None => published.remove(name),
            };
        }
    }
    Ok(())
}

/// Write this controller's member key `value` under lease `id` if the key is absent or
/// already under `id`; otherwise another live controller uses this name.
async fn claim(cluster: &Cluster, id: i64, value: &[u8]) -> Result<(), ClusterError> {
    let inner = &cluster.inner;
    let key = format!("{}controllers/{}", inner.config.prefix, inner.name);
    let put = || TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id)));
    let ours = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, id)])
        .and_then([put()])
        .or_else([TxnOp::get(key.clone(), None)]);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::txn(ours)]);
    let resp = inner.etcd.txn(inner.config.timeout(), txn).await?;
    if resp.succeeded() {
        return Ok(());
    }
    let nested = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Txn(t) => Some(t),
        _ => None,
    });
    match nested {
        Some(t) if t.succeeded() => Ok(()),
        other => {
            let holder = other
                .and_then(|t| {
                    t.op_responses().into_iter().find_map(|r| match r {
                        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                        _ => None,
                    })
                })
                .unwrap_or(0);
            let e = ClusterError::Refused(format!(
                "controller name {:?} is in use by another live controller (lease {holder:x}); give each controller its own server.name or cluster.name (a restarted controller waits here until its old lease expires)",
                inner.name
            ));
            tracing::warn!(error = %e, "cluster: cannot publish");
            Err(e)
        }
    }
}
