//! The queue's writes, sent together: every guarded write of the shared queue (creates,
//! assignments, progress reports, returns, freed assignments, deletions) goes through one
//! task per controller, which sends the writes queued while the previous batch was in flight as
//! one etcd transaction holding each as a nested transaction (etcd 3.3+). Each nested
//! transaction keeps its own compares and answer, so callers see exactly what a
//! transaction of their own would have given them; etcd spends one raft entry, one fsync
//! per member and one gRPC call on the lot. Measured on the bench machine, etcd's CPU per
//! write falls to about half with six writes a transaction and to a third with twelve.
//!
//! etcd evaluates every nested compare against the state before the whole transaction and
//! refuses a transaction that puts one key twice (or puts and deletes it). So a write joins
//! a batch only if no key it writes is compared, read or written by another write of the
//! batch, and no key it compares or reads is written by another: then the batch means the
//! same as its writes one after the other, in any order. A write that conflicts waits for
//! the next batch; a write that touches a range of keys always goes alone.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ClusterError;
use super::endpoints::Endpoints;

/// Most writes in one transaction. etcd refuses more than `--max-txn-ops` (128 by default)
/// operations at any level, and a nested transaction's own operations count against what
/// the outer level leaves, so the writes of a batch each keep at most 128 - 32.
const MAX_WRITES: usize = 32;
/// A write with more operations than this goes alone (see [`MAX_WRITES`]).
const MAX_OPS: usize = 128 - MAX_WRITES;
/// Most value bytes in one transaction, well under etcd's 1.5 MiB request limit.
const MAX_BYTES: usize = 512 * 1024;

/// One guarded write: compares, what to do when they hold and what to read when they do
/// not, with the keys it touches (for [`Batcher`]'s conflict check). Every compare is an
/// equality, as every guard of the queue is.
#[derive(Clone, Default)]
pub(super) struct Write {
    compares: Vec<Compare>,
    then: Vec<TxnOp>,
    otherwise: Vec<TxnOp>,
    /// Keys compared or read.
    reads: Vec<String>,
    /// Keys put or deleted.
    writes: Vec<String>,
    bytes: usize,
}

impl Write {
    pub(super) fn new() -> Write {
        Write::default()
    }

    /// Holds only if `key`'s mod revision is `revision` (unchanged since read).
    pub(super) fn if_mod_revision(mut self, key: &str, revision: i64) -> Write {
        self.compares
            .push(Compare::mod_revision(key, CompareOp::Equal, revision));
        self.reads.push(key.to_owned());
        self
    }

    /// Holds only if `key`'s create revision is `revision` (0: the key does not exist).
    pub(super) fn if_create_revision(mut self, key: &str, revision: i64) -> Write {
        self.compares
            .push(Compare::create_revision(key, CompareOp::Equal, revision));
        self.reads.push(key.to_owned());
        self
    }

    /// Holds only if `key` holds exactly `value`.
    pub(super) fn if_value(mut self, key: &str, value: Vec<u8>) -> Write {
        self.bytes += value.len();
        self.compares
            .push(Compare::value(key, CompareOp::Equal, value));
        self.reads.push(key.to_owned());
        self
    }

    /// Put `value` at `key` when the compares hold.
    pub(super) fn put(mut self, key: &str, value: Vec<u8>) -> Write {
        self.bytes += value.len();
        self.then.push(TxnOp::put(key, value, None));
        self.writes.push(key.to_owned());
        self
    }

    /// As [`Write::put`], answering with the key's previous value.
    pub(super) fn put_returning_previous(mut self, key: &str, value: Vec<u8>) -> Write {
        self.bytes += value.len();
        self.then.push(TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_prev_key()),
        ));
        self.writes.push(key.to_owned());
        self
    }

    /// Delete `key` when the compares hold.
    pub(super) fn delete(mut self, key: &str) -> Write {
        self.then.push(TxnOp::delete(key, None));
        self.writes.push(key.to_owned());
        self
    }

    /// Read `key` when a compare fails (to tell which one did).
    pub(super) fn else_get(mut self, key: &str) -> Write {
        self.otherwise.push(TxnOp::get(key, None));
        self.reads.push(key.to_owned());
        self
    }

    fn txn(&self) -> Txn {
        Txn::new()
            .when(self.compares.clone())
            .and_then(self.then.clone())
            .or_else(self.otherwise.clone())
    }

    fn ops(&self) -> usize {
        self.compares
            .len()
            .max(self.then.len())
            .max(self.otherwise.len())
    }

    /// Does `self` conflict with writes that read `reads` and write `writes`?
    fn conflicts(&self, reads: &HashSet<String>, writes: &HashSet<String>) -> bool {
        self.writes
            .iter()
            .any(|k| writes.contains(k) || reads.contains(k))
            || self.reads.iter().any(|k| writes.contains(k))
    }
}

/// What a write's transaction answered.
#[derive(Debug)]
pub(super) struct Written {
    /// The compares held (the `then` operations ran).
    pub(super) succeeded: bool,
    /// The answers of the operations that ran, in order.
    pub(super) responses: Vec<TxnOpResponse>,
    /// etcd's revision after the transaction that carried the write.
    pub(super) revision: i64,
}

struct Job {
    write: Write,
    deadline: Instant,
    reply: oneshot::Sender<Result<Written, ClusterError>>,
}

/// Sends [`Write`]s through one task (started on first use, in the runtime of that use)
/// that batches them.
pub(super) struct Batcher {
    etcd: Arc<Endpoints>,
    timeout: Duration,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Batcher {
    pub(super) fn new(etcd: Arc<Endpoints>, timeout: Duration) -> Batcher {
        Batcher {
            etcd,
            timeout,
            queue: OnceLock::new(),
        }
    }

    /// Send `write`, alone or with others, within the call timeout.
    pub(super) async fn write(&self, write: Write) -> Result<Written, ClusterError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(rx, self.etcd.clone()));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let job = Job {
            write,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = queue.send(job) {
            // The task is gone with the runtime that started it: send this one directly.
            return send_alone(&self.etcd, job.write, job.deadline).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(ClusterError::Unavailable(
                "the write was dropped before etcd answered".into(),
            ))
        })
    }
}

/// One batch in flight at a time: while it waits for etcd's commit the next one gathers.
/// (Two or four in flight were tried: smaller batches, more etcd CPU per cycle, no gain
/// in throughput or latency.)
async fn run(mut rx: mpsc::UnboundedReceiver<Job>, etcd: Arc<Endpoints>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            waiting.push_back(job);
        }
        let batch = take_batch(&mut waiting);
        send(&etcd, batch).await;
    }
}

/// The next batch: writes from the front of `waiting` that do not conflict, in order,
/// within the limits. The first write always goes (alone if it is too big to share).
fn take_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let mut batch = Vec::new();
    let (mut reads, mut writes) = (HashSet::new(), HashSet::new());
    let mut bytes = 0;
    let mut i = 0;
    while i < waiting.len() && batch.len() < MAX_WRITES {
        let w = &waiting[i].write;
        let shareable = w.ops() <= MAX_OPS && w.bytes < MAX_BYTES;
        let fits = batch.is_empty()
            || (shareable && bytes + w.bytes <= MAX_BYTES && !w.conflicts(&reads, &writes));
        if !fits {
            i += 1;
            continue;
        }
        let job = waiting.remove(i).expect("index within the queue");
        bytes += job.write.bytes;
        reads.extend(job.write.reads.iter().cloned());
        writes.extend(job.write.writes.iter().cloned());
        let alone = !shareable;
        batch.push(job);
        if alone {
            break;
        }
    }
    batch
}

async fn send(etcd: &Endpoints, batch: Vec<Job>) {
    let now = Instant::now();
    // Writes whose caller's deadline passed while they queued are not sent at all.
    let (batch, late): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.deadline > now);
    for job in late {
        let _ = job.reply.send(Err(ClusterError::Unavailable(
            "no answer from etcd in time (the write queued behind others)".into(),
        )));
    }
    if batch.len() <= 1 {
        for job in batch {
            let r = send_alone(etcd, job.write, job.deadline).await;
            let _ = job.reply.send(r);
        }
        return;
    }
    let deadline = batch.iter().map(|j| j.deadline).min().unwrap_or(now);
    let outer = Txn::new().and_then(
        batch
            .iter()
            .map(|j| TxnOp::txn(j.write.txn()))
            .collect::<Vec<_>>(),
    );
    match etcd.txn(deadline - now, outer).await {
        Ok(resp) => {
            let revision = resp.header().map_or(0, |h| h.revision());
            for (job, answer) in batch.into_iter().zip(resp.op_responses()) {
                let r = match answer {
                    TxnOpResponse::Txn(t) => Ok(Written {
                        succeeded: t.succeeded(),
                        responses: t.op_responses(),
                        revision,
                    }),
                    other => Err(ClusterError::Refused(format!(
                        "etcd answered a nested transaction with {other:?}"
                    ))),
                };
                let _ = job.reply.send(r);
            }
        }
        // A full etcd refuses each write as it refuses the batch.
        Err(e) if e.is_unavailable() || matches!(e, ClusterError::NoSpace(_)) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            // etcd refused the batch as a whole (a limit this side did not know): each
            // write on its own gets its own answer.
            tracing::warn!(error = %e, writes = batch.len(), "cluster: etcd refused a batch of writes; sending them one by one");
            for job in batch {
                let r = send_alone(etcd, job.write, job.deadline).await;
                let _ = job.reply.send(r);
            }
        }
    }
}

async fn send_alone(
    etcd: &Endpoints,
    write: Write,
    deadline: Instant,
) -> Result<Written, ClusterError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let resp = etcd.txn(left, write.txn()).await?;
    Ok(Written {
        succeeded: resp.succeeded(),
        responses: resp.op_responses(),
        revision: resp.header().map_or(0, |h| h.revision()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(write: Write) -> Job {
        Job {
            write,
            deadline: Instant::now() + Duration::from_secs(1),
            reply: oneshot::channel().0,
        }
    }

    fn keys(batch: &[Job]) -> Vec<Vec<String>> {
        batch.iter().map(|j| j.write.writes.clone()).collect()
    }

    #[test]
    fn writes_to_other_keys_go_together_and_a_conflict_waits() {
        let mut waiting: VecDeque<Job> = [
            Write::new()
                .if_mod_revision("r/1", 5)
                .put("r/1", b"a".to_vec()),
            Write::new()
                .if_create_revision("a/x", 0)
                .put("a/x", b"1".to_vec()),
            // Compares a key the first write puts: next batch.
            Write::new()
                .if_mod_revision("r/1", 5)
                .put("r/9", b"b".to_vec()),
            // Puts a key the second write compares: next batch.
            Write::new().put("a/x", b"2".to_vec()),
            // Shares only a compared key (the election key) with others: fine.
            Write::new()
                .if_create_revision("s", 3)
                .put("r/2", b"c".to_vec()),
            Write::new().if_create_revision("s", 3).delete("r/3"),
        ]
        .into_iter()
        .map(job)
        .collect();
        let first = take_batch(&mut waiting);
        assert_eq!(
            keys(&first),
            [vec!["r/1"], vec!["a/x"], vec!["r/2"], vec!["r/3"]]
        );
        let second = take_batch(&mut waiting);
        assert_eq!(keys(&second), [vec!["r/9"], vec!["a/x"]]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_big_write_goes_alone_and_batches_stop_at_the_limits() {
        let mut big = Write::new();
        for i in 0..=MAX_OPS {
            big = big.put(&format!("d/{i}"), b"v".to_vec());
        }
        let mut waiting: VecDeque<Job> = std::iter::once(Write::new().put("x", b"1".to_vec()))
            .chain(std::iter::once(big))
            .chain((0..MAX_WRITES + 3).map(|i| Write::new().put(&format!("k/{i}"), vec![1])))
            .map(job)
            .collect();
        let first = take_batch(&mut waiting);
        assert_eq!(
            first.len(),
            MAX_WRITES,
            "the big one is skipped, the limit holds"
        );
        let second = take_batch(&mut waiting);
        assert_eq!(second.len(), 1, "the big one, alone");
        assert_eq!(second[0].write.writes.len(), MAX_OPS + 1);
        let third = take_batch(&mut waiting);
        assert_eq!(third.len(), 4);
        let mut heavy: VecDeque<Job> = (0..4)
            .map(|i| job(Write::new().put(&format!("h/{i}"), vec![0; MAX_BYTES / 3])))
            .collect();
        assert_eq!(take_batch(&mut heavy).len(), 3, "bytes bound a batch");
    }
}
