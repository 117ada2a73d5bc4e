//! Publication: this controller's devices' pool view under its lease.
//!
//! Keys: `<prefix>devices/<controller>/<device>` (a [`PublishedDevice`] as JSON) and
//! `<prefix>controllers/<controller>` (a [`Member`]). Only changed devices are written;
//! devices gone from the local view are deleted. Under a new lease everything is written
//! again (the old lease's keys went with it). A failed write is retried after a pause; the
//! local view is never blocked by etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Cluster, DeviceMap, Member, lock};

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
) -> Result<(), super::ClusterError> {
    let inner = &cluster.inner;
    let base = format!("{}devices/{}/", inner.config.prefix, inner.name);
    let leased = || Some(PutOptions::new().with_lease(id));
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
        inner
            .etcd
            .call(inner.config.timeout(), |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        for (name, v) in chunk {
            match v {
                Some(v) => published.insert(name.clone(), v.clone()),
                None => published.remove(name),
            };
        }
    }
    let m = serde_json::to_vec(me).unwrap_or_default();
    if member.as_ref() != Some(&m) {
        let key = format!("{}controllers/{}", inner.config.prefix, inner.name);
        inner
            .etcd
            .call(inner.config.timeout(), |mut c| {
                let (key, m) = (key.clone(), m.clone());
                async move { c.put(key, m, leased()).await }
            })
            .await?;
        *member = Some(m);
    }
    Ok(())
}
