//! The durable log: device and request histories, registrations and the API audit trail.
//!
//! Records live in [`LOGS`] under a store-wide sequence number (so newer = larger). Each
//! record links, for each of its subjects, the subject's previous entry; [`LOG_HEADS`] holds
//! each subject's newest entry, so one device's or request's history is a walk back along
//! its chain. Every [`CHECKPOINT_EVERY`]th entry of a chain also has a [`LOG_INDEX`] row, so
//! paging deep into a history starts near the page instead of at the newest entry. Records
//! written before schema 3 (layout 1) have a `LOG_INDEX` row per subject instead and are
//! read through it where a chain ends. The writer stamps records with the batch time, which
//! never goes backwards, so sequence order is time order and a time-bounded query can stop
//! at the first record that is too old.

use std::collections::BTreeMap;
use std::time::Duration;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use super::records::{LogRecord, LogV2};
use super::tables::{LOG_HEADS, LOG_INDEX, LOGS};
use super::{StoreError, Tx, decode, encode};
use crate::domain::clock::Millis;
use crate::domain::model::LogEntry;

/// Longest message kept; longer ones are cut (a device's output cannot fill the disk).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A log entry to write.
#[derive(Debug, Clone)]
// Fields are named for what they hold.
#[allow(missing_docs)]
pub struct NewLog {
    /// Subjects (`device:<name>`, `request:<id>`, `api`, ...).
    pub subjects: Vec<String>,
    /// Which part wrote it.
    pub source: String,
    /// Who caused it, when known.
    pub actor: Option<String>,
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

/// Every this many entries of a subject's chain, the entry also gets a `log_index` row (a
/// checkpoint): a query that pages back to entry N starts at the first checkpoint above N
/// and walks fewer than this many entries of the chain to reach it.
pub const CHECKPOINT_EVERY: u64 = 64;

/// Write entries under consecutive sequence numbers, each linked to the previous entry of
/// each of its subjects. A batch reads and writes each subject's chain head once, and adds
/// a `log_index` row only for every [`CHECKPOINT_EVERY`]th entry of a subject: one row per
/// subject and entry would scatter the writes over as many index pages as the batch has
/// subjects, and each page is copied, checksummed and written at the commit.
pub(super) fn write_entries(tx: &Tx<'_>, entries: Vec<(Millis, NewLog)>) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut meta = tx.meta()?;
    let mut logs = tx.logs()?;
    let mut index = tx.log_index()?;
    let mut stored_heads = tx.log_heads()?;
    // Subject → (newest sequence number, entries in the chain), for the subjects of this batch.
    let mut heads: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut seq = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
    for (now, entry) in entries {
        seq += 1;
        let mut subjects = entry.subjects;
        // A subject listed twice would link an entry to itself (lists are one to three long).
        let mut i = 0;
        while i < subjects.len() {
            if subjects[..i].contains(&subjects[i]) {
                subjects.remove(i);
            } else {
                i += 1;
            }
        }
        let mut prev = Vec::with_capacity(subjects.len());
        for s in &subjects {
            let head = match heads.get_mut(s) {
                Some(h) => h,
                None => {
                    let stored = stored_heads.get(s.as_str())?.map_or((0, 0), |g| g.value());
                    heads.entry(s.clone()).or_insert(stored)
                }
            };
            prev.push(head.0);
            *head = (seq, head.1 + 1);
            if head.1 % CHECKPOINT_EVERY == 0 {
                index.insert((s.as_str(), seq), ())?;
            }
        }
        let record = LogRecord::V2(LogV2 {
            ts: now.0,
            subjects,
            prev,
            source: entry.source,
            actor: entry.actor,
            message: bounded(entry.message),
        });
        logs.insert(seq, encode(&record)?)?;
    }
    for (s, head) in &heads {
        stored_heads.insert(s.as_str(), *head)?;
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
pub(super) fn query(tx: &ReadTransaction, q: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
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
        let s = subject.as_str();
        let index = tx.open_table(LOG_INDEX)?;
        let heads = tx.open_table(LOG_HEADS)?;
        // Start from the first checkpoint above `upper` (fewer than CHECKPOINT_EVERY chain
        // steps from it), else from the subject's newest entry.
        let above = match upper.checked_add(1) {
            Some(a) => index
                .range((s, a)..=(s, u64::MAX))?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().1),
            None => None,
        };
        let mut cursor = match above {
            Some(seq) => Some(seq),
            None => heads.get(s)?.map(|g| g.value().0),
        };
        // Where the rows of layout-1 entries (one per entry) take over, inclusive.
        let mut rows_upto = Some(upper);
        while let Some(seq) = cursor.filter(|&c| c != 0) {
            let Some(guard) = logs.get(seq)? else {
                // Pruned: retention removes the oldest first, so nothing older is left.
                rows_upto = None;
                break;
            };
            let record: LogRecord = decode("logs", seq, &guard.value())?;
            match record.prev_for(s) {
                Some(prev) => {
                    rows_upto = seq.checked_sub(1).map(|below| below.min(upper));
                    // A link must point back; anything else ends the walk instead of looping.
                    cursor = Some(prev).filter(|&p| p < seq);
                    if seq <= upper && !take(seq, record) {
                        return Ok(out);
                    }
                }
                None => {
                    // A layout-1 entry (only layout-1 entries are older): its rows follow.
                    rows_upto = Some(seq.min(upper));
                    break;
                }
            }
        }
        if let Some(upto) = rows_upto {
            for item in index.range((s, 0)..=(s, upto))?.rev() {
                let (key, _) = item?;
                let seq = key.value().1;
                let Some(guard) = logs.get(seq)? else {
                    continue;
                };
                if !take(seq, decode("logs", seq, &guard.value())?) {
                    break;
                }
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
pub(super) fn count(tx: &ReadTransaction) -> Result<u64, StoreError> {
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
    let mut heads = tx.log_heads()?;
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
            // A subject whose newest entry goes has no entries left.
            if heads.get(s.as_str())?.is_some_and(|h| h.value().0 == *seq) {
                heads.remove(s.as_str())?;
            }
        }
    }
    Ok(victims.len())
}
