//! The durable log: device and request histories, registrations and the API audit trail.
//!
//! Records live in [`LOGS`] under a store-wide sequence number (so newer = larger) and are
//! indexed once per subject in [`LOG_INDEX`]. The writer stamps records with the batch time,
//! which never goes backwards, so sequence order is time order and a time-bounded query can
//! stop at the first record that is too old.

use std::time::Duration;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::records::{LogRecord, LogV1};
use super::tables::{LOG_INDEX, LOGS};
use super::{StoreError, Tx, decode, encode};
use crate::clock::Millis;
use crate::model::LogEntry;

/// Longest message kept; longer ones are cut (a device's output cannot fill the disk).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A log entry to write.
#[derive(Debug, Clone)]
pub struct NewLog {
    /// Subjects (`device:<name>`, `request:<id>`, `api`, ...).
    pub subjects: Vec<String>,
    /// Which part wrote it.
    pub source: String,
    /// Who caused it, when known.
    pub actor: Option<String>,
    /// The text.
    pub message: String,
}

impl NewLog {
    /// An entry about one subject.
    #[must_use]
    pub fn new(subject: String, source: &str, message: impl Into<String>) -> NewLog {
        NewLog {
            subjects: vec![subject],
            source: source.to_owned(),
            actor: None,
            message: message.into(),
        }
    }

    /// Set who caused it.
    #[must_use]
    pub fn by(mut self, actor: Option<String>) -> NewLog {
        self.actor = actor;
        self
    }
}

/// Append an entry. It is held by the batch's [`Tx`] and written with the batch's other
/// entries just before the commit (same transaction, so it is durable exactly when the
/// caller's other writes are; an aborted batch drops it with everything else).
///
/// # Errors
/// None today; the signature keeps callers ready for a failing log.
pub fn append(tx: &Tx<'_>, now: Millis, entry: NewLog) -> Result<(), StoreError> {
    tx.hold_log(now, entry);
    Ok(())
}

/// Write entries under consecutive sequence numbers.
pub(super) fn write_entries(tx: &Tx<'_>, entries: Vec<(Millis, NewLog)>) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut meta = tx.meta()?;
    let mut logs = tx.logs()?;
    let mut index = tx.log_index()?;
    let mut seq = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
    for (now, entry) in entries {
        seq += 1;
        let record = LogRecord::V1(LogV1 {
            ts: now.0,
            subjects: entry.subjects,
            source: entry.source,
            actor: entry.actor,
            message: bounded(entry.message),
        });
        for s in record.subjects() {
            index.insert((s.as_str(), seq), ())?;
        }
        logs.insert(seq, encode(&record)?)?;
    }
    meta.insert(NEXT_SEQ, seq)?;
    Ok(())
}

/// META counter holding the last sequence number used.
const NEXT_SEQ: &str = "next_log_seq";

/// `message`, cut at [`MAX_MESSAGE_LEN`] bytes (on a character boundary).
fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [truncated]");
    }
    message
}

/// What to read from the log.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only entries about this subject.
    pub subject: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Millis>,
    /// Only entries at or before this time.
    pub until: Option<Millis>,
    /// Only entries older than this sequence number (paging: pass the last `seq` seen).
    pub before: Option<u64>,
    /// At most this many entries.
    pub limit: usize,
}

/// Read entries, newest first.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn query(tx: &ReadTransaction, q: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
    let logs = tx.open_table(LOGS)?;
    let upper = q.before.map_or(u64::MAX, |b| b.saturating_sub(1));
    let mut out = Vec::new();
    if q.limit == 0 || q.before == Some(0) {
        return Ok(out);
    }
    // Returns false when the scan should stop.
    let mut take = |seq: u64, record: LogRecord| -> bool {
        let ts = record.ts();
        if q.since.is_some_and(|s| ts < s) {
            return false;
        }
        if q.until.is_none_or(|u| ts <= u) {
            out.push(record.into_entry(seq));
        }
        out.len() < q.limit
    };
    if let Some(subject) = &q.subject {
        let index = tx.open_table(LOG_INDEX)?;
        for item in index
            .range((subject.as_str(), 0)..=(subject.as_str(), upper))?
            .rev()
        {
            let (key, _) = item?;
            let seq = key.value().1;
            let Some(guard) = logs.get(seq)? else {
                continue;
            };
            if !take(seq, decode("logs", seq, &guard.value())?) {
                break;
            }
        }
    } else {
        for item in logs.range(..=upper)?.rev() {
            let (key, value) = item?;
            let seq = key.value();
            if !take(seq, decode("logs", seq, &value.value())?) {
                break;
            }
        }
    }
    Ok(out)
}

/// How long and how much of the log to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this are removed.
    pub max_age: Duration,
    /// At most this many entries are kept (oldest removed first).
    pub max_records: u64,
}

/// Number of log records stored.
///
/// # Errors
/// Storage failure.
pub fn count(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx.open_table(LOGS)?.len()?)
}

/// Remove up to `batch` of the oldest entries that are past retention. Returns how many were
/// removed; call again while it returns `batch`.
///
/// # Errors
/// Storage failure or a corrupt record.
pub fn prune(
    tx: &Tx<'_>,
    now: Millis,
    retention: Retention,
    batch: usize,
) -> Result<usize, StoreError> {
    let mut logs = tx.logs()?;
    let mut index = tx.log_index()?;
    let total = logs.len()?;
    let over_count = total.saturating_sub(retention.max_records);
    let cutoff = Millis(
        now.0
            .saturating_sub(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX)),
    );
    let mut victims = Vec::new();
    for item in logs.iter()? {
        if victims.len() >= batch {
            break;
        }
        let (key, value) = item?;
        let seq = key.value();
        let record: LogRecord = decode("logs", seq, &value.value())?;
        if (victims.len() as u64) < over_count || record.ts() < cutoff {
            victims.push((seq, record.subjects().to_vec()));
        } else {
            break;
        }
    }
    for (seq, subjects) in &victims {
        logs.remove(*seq)?;
        for s in subjects {
            index.remove((s.as_str(), *seq))?;
        }
    }
    Ok(victims.len())
}
