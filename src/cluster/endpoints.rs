//! One etcd client per endpoint, used one at a time, with failover: calls go to the current
//! endpoint; when it is unreachable, has no leader (a member cut off from the others) or
//! does not answer, the call moves to the next endpoint and is retried there while its
//! deadline allows, and later calls start there. One client balanced over all endpoints
//! was tried first: it kept handing calls to a dead member ("tcp connect error"), so with
//! one member down a share of the calls failed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Txn, TxnResponse};
use tokio::time::Instant;

use super::{ClusterError, classify, lock};

/// The pause before trying every endpoint again: short against an etcd leader election
/// (1 s by default), long enough not to hammer members that are down.
const ROUND_PAUSE: Duration = Duration::from_millis(50);

pub(super) struct Endpoints {
    urls: Vec<String>,
    options: ConnectOptions,
    /// Built on first use (connecting with a user authenticates, which needs the member
    /// up); the client reconnects by itself afterwards.
    clients: Vec<Mutex<Option<Client>>>,
    /// The endpoint calls go to first.
    current: AtomicUsize,
}

impl Endpoints {
    pub(super) fn new(urls: Vec<String>, options: ConnectOptions) -> Endpoints {
        Endpoints {
            clients: urls.iter().map(|_| Mutex::new(None)).collect(),
            urls,
            options,
            current: AtomicUsize::new(0),
        }
    }

    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        if let Some(c) = lock(&self.clients[i]).clone() {
            return Ok(c);
        }
        let c = Client::connect([&self.urls[i]], Some(self.options.clone())).await?;
        *lock(&self.clients[i]) = Some(c.clone());
        Ok(c)
    }

    /// Move on from endpoint `i` (unless another call already did).
    fn fail(&self, i: usize) {
        let next = (i + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One transaction, within `timeout` in all (see [`Endpoints::call`]).
    pub(super) async fn txn(
        &self,
        timeout: Duration,
        txn: Txn,
    ) -> Result<TxnResponse, ClusterError> {
        self.call(timeout, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Run `f` on a client, within `timeout` in all. An "unavailable" failure, or no answer
    /// within half of `timeout` at the first endpoint, moves the call to the next endpoint;
    /// after every endpoint failed in a row it starts again after a short pause, until the
    /// deadline. When etcd's raft leader dies, a call sent to a follower may wait for an
    /// answer that never comes, and the others answer "no leader" until they elect a new one
    /// (about an election timeout): a call that rides that out is one a client never sees
    /// fail. Every call here is safe to repeat (guarded transactions, puts of the same
    /// value, reads; a repeated lease grant leaves an unused lease that expires by itself;
    /// a repeated id reservation skips an id).
    pub(super) async fn call<T, F, Fut>(
        &self,
        timeout: Duration,
        mut f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + timeout;
        let mut attempt_deadline = (Instant::now() + timeout / 2).min(deadline);
        let mut last = None;
        let mut failed_in_a_row = 0;
        loop {
            if failed_in_a_row >= self.urls.len() {
                failed_in_a_row = 0;
                if Instant::now() + ROUND_PAUSE >= deadline {
                    break;
                }
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            let i = self.current.load(Ordering::Relaxed) % self.urls.len();
            let attempt = async {
                let c = self.client(i).await?;
                f(c).await
            };
            let this_deadline = attempt_deadline;
            attempt_deadline = deadline;
            match tokio::time::timeout_at(this_deadline, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let e = classify(e);
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    tracing::debug!(endpoint = %self.urls[i], error = %e, "cluster: endpoint failed");
                    self.fail(i);
                    last = Some(e);
                    failed_in_a_row += 1;
                }
                Err(_) if this_deadline < deadline => {
                    tracing::debug!(endpoint = %self.urls[i], "cluster: endpoint silent; trying the next");
                    self.fail(i);
                    failed_in_a_row += 1;
                }
                Err(_) => {
                    // Past the deadline: the reason an earlier endpoint gave, if any, says more.
                    self.fail(i);
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ClusterError::Unavailable(format!("no answer within {} ms", timeout.as_millis()))
        }))
    }
}
