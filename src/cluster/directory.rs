//! The directory: who publishes which device, and where each controller's API answers.
//!
//! Device calls on a device owned elsewhere are sent to its owner, and the device list and
//! the web page show the whole pool; both need `<prefix>controllers/` and
//! `<prefix>devices/` on nearly every call. While the queue copy's watch is live
//! (`queue`), the directory is taken from that copy: no etcd call, as fresh as the last
//! event. Otherwise (the watch is down or not started yet) it is read from etcd, and the
//! last read is kept for [`FRESH_FOR`] and shared by the calls that arrive meanwhile (one
//! read in flight at a time). When etcd cannot be read, the last good directory (a read, or
//! what the copy last knew) is used, so a stale owner still answers or fails clearly; a
//! failed read is not retried before [`FRESH_FOR`] has passed again, so a lost quorum does
//! not put an etcd timeout on every call.
//!
//! The directory also says who holds each assigned device (the pool page's and the device
//! list's holder and expiry for another rack's device). That comes from the copy's
//! assignments and requests only, never from a read of its own: a page load costs no etcd
//! call for it, and while the watch is down it is what the copy last knew.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use super::{Cluster, ClusterError, Member, PublishedDevice};

/// How long a directory read serves calls before the next one reads etcd again: short
/// enough that a new device or controller is found within a second, long enough that a
/// burst of calls costs one read.
pub const FRESH_FOR: Duration = Duration::from_millis(500);

/// What the controllers publish, as of one etcd read.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// The etcd revision of the read (grows with every cluster write: the pool page's feed
    /// adds it to its change version).
    pub revision: i64,
    /// Every present controller (its `controllers/` key), by name.
    pub members: BTreeMap<String, Member>,
    /// Every published device with its owner's name, by (device name, controller).
    pub devices: Vec<(String, PublishedDevice)>,
    /// Who holds each assigned device, by (controller, device): the open request its
    /// assignment names (empty before the queue copy was first read).
    pub holders: BTreeMap<(String, String), Holder>,
}

/// The shared request holding a device, as the queue copy knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The shared request's id.
    pub request: u64,
    /// Its assignee (`spec.assignee`, as single-rack mode shows a holder).
    pub assignee: String,
    /// When its lease ends.
    pub expires: crate::domain::clock::Millis,
}

/// One controller that publishes a device of a given name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The controller's cluster name.
    pub controller: String,
    /// Where its API answers (`None`: it published no URL, or its member key is gone).
    pub url: Option<String>,
}

impl Directory {
    /// The controllers other than `me` that publish a device named `device`, by name.
    #[must_use]
    pub fn owners(&self, device: &str, me: &str) -> Vec<Owner> {
        let mut owners: Vec<Owner> = self
            .devices
            .iter()
            .filter(|(c, d)| d.name.as_str() == device && c != me)
            .map(|(c, _)| Owner {
                controller: c.clone(),
                url: self.url_of(c),
            })
            .collect();
        owners.sort_by(|a, b| a.controller.cmp(&b.controller));
        owners.dedup();
        owners
    }

    /// Who holds `controller`'s device `device`, when an open request is assigned to it.
    #[must_use]
    pub fn holder(&self, controller: &str, device: &str) -> Option<&Holder> {
        self.holders
            .get(&(controller.to_owned(), device.to_owned()))
    }

    /// Controller `name`'s API base URL, without a trailing slash.
    #[must_use]
    pub fn url_of(&self, name: &str) -> Option<String> {
        self.members
            .get(name)
            .and_then(|m| m.url.as_deref())
            .map(|u| u.trim_end_matches('/').to_owned())
    }
}

/// The cached directory and when it was read (or last failed to be).
#[derive(Debug, Default)]
pub(super) struct Cache {
    last: Option<Arc<Directory>>,
    /// When `last` was read.
    read_at: Option<Instant>,
    /// When a read last failed (no retry before [`FRESH_FOR`] after it).
    failed_at: Option<Instant>,
    /// Why.
    error: Option<ClusterError>,
}

impl Cluster {
    /// The directory: from the queue copy while its watch is live, else read from etcd at
    /// most every [`FRESH_FOR`].
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when etcd cannot be read and no directory was ever
    /// read.
    pub async fn directory(&self) -> Result<Arc<Directory>, ClusterError> {
        if let Some(d) = self.directory_from_copy(false) {
            return Ok(Arc::new(d));
        }
        // A tokio mutex held across the read: calls arriving meanwhile wait for its
        // result instead of sending their own.
        let mut cache = self.inner.directory.lock().await;
        let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < FRESH_FOR);
        if let Some(d) = &cache.last
            && (fresh(cache.read_at) || fresh(cache.failed_at))
        {
            return Ok(Arc::clone(d));
        }
        if cache.last.is_none()
            && fresh(cache.failed_at)
            && let Some(e) = &cache.error
        {
            return Err(e.clone());
        }
        match self.read_directory().await {
            Ok(d) => {
                let d = Arc::new(d);
                cache.last = Some(Arc::clone(&d));
                cache.read_at = Some(Instant::now());
                cache.failed_at = None;
                cache.error = None;
                Ok(d)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster: directory read failed");
                cache.failed_at = Some(Instant::now());
                cache.error = Some(e.clone());
                if cache.last.is_none()
                    && let Some(d) = self.directory_from_copy(true)
                {
                    cache.last = Some(Arc::new(d));
                }
                cache.last.clone().ok_or(e)
            }
        }
    }

    /// One read of `controllers/` and `devices/` at one revision.
    async fn read_directory(&self) -> Result<Directory, ClusterError> {
        let prefix = &self.inner.config.prefix;
        let get = |what: &str| {
            TxnOp::get(
                format!("{prefix}{what}"),
                Some(GetOptions::new().with_prefix()),
            )
        };
        let txn = Txn::new().and_then([get("controllers/"), get("devices/")]);
        let resp = self
            .inner
            .etcd
            .txn(self.inner.config.timeout(), txn)
            .await?;
        let mut dir = Directory {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Directory::default()
        };
        let ops = resp.op_responses();
        let kvs = |i: usize| match ops.get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
            _ => Vec::new(),
        };
        for kv in kvs(0) {
            // A key another version wrote in a shape this one cannot read is skipped, not
            // fatal: the rest of the pool stays usable.
            if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                dir.members.insert(m.name.clone(), m);
            }
        }
        let devices = format!("{prefix}devices/");
        for kv in kvs(1) {
            let key = String::from_utf8_lossy(kv.key());
            let Some((controller, _)) = key
                .strip_prefix(&devices)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if let Ok(d) = serde_json::from_slice::<PublishedDevice>(kv.value()) {
                dir.devices.push((controller.to_owned(), d));
            }
        }
        dir.devices
            .sort_by(|a, b| a.1.name.as_str().cmp(b.1.name.as_str()).then(a.0.cmp(&b.0)));
        // Holders are not read here (that would mean every request): what the copy last
        // knew, which is at most as old as its watch has been down.
        dir.holders = self.holders_from_copy();
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::cluster::directory::{Directory, Owner};
    use crate::cluster::{Member, PublishedDevice};

    fn device(name: &str) -> PublishedDevice {
        crate::cluster::ready_device(name)
    }

    #[test]
    fn owners_leave_out_this_controller_and_carry_urls() {
        let member = |n: &str, url: Option<&str>| Member {
            name: n.into(),
            url: url.map(str::to_owned),
            devices: 1,
        };
        let dir = Directory {
            revision: 1,
            members: BTreeMap::from([
                ("a".to_owned(), member("a", Some("http://127.0.0.1:1/"))),
                ("b".to_owned(), member("b", Some("http://127.0.0.1:2"))),
            ]),
            devices: vec![
                ("a".into(), device("d1")),
                ("b".into(), device("d1")),
                ("c".into(), device("d1")),
                ("b".into(), device("d2")),
            ],
            holders: BTreeMap::new(),
        };
        assert_eq!(
            dir.owners("d1", "a"),
            vec![
                Owner {
                    controller: "b".into(),
                    url: Some("http://127.0.0.1:2".into())
                },
                Owner {
                    controller: "c".into(),
                    url: None
                }
            ]
        );
        assert_eq!(dir.owners("d2", "b"), Vec::new());
        assert_eq!(dir.url_of("a").as_deref(), Some("http://127.0.0.1:1"));
    }
}
