//! The log's per-subject chains (schema 3): a subject's history read through its chain,
//! checkpoints and the rows of older entries must be exactly what a scan of the whole log
//! filtered by subject gives, for every page size, paging point, time window and after
//! retention, and entries written by an older release must read on with the new ones.

use std::sync::Arc;
use std::time::Duration;

use mozpool::domain::clock::{ManualClock, Millis};
use mozpool::domain::model::LogEntry;
use mozpool::storage::logs::{LogQuery, NewLog, Retention, append, prune};
use mozpool::storage::records::{LogRecord, LogV1};
use mozpool::storage::{Encoded, Snapshot, Store, tables};
use redb::ReadableTableMetadata;

const START: Millis = Millis(1_764_000_000_000);

/// A small deterministic generator (the test must fail the same way every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn read(store: &Store, q: LogQuery) -> Vec<LogEntry> {
    store
        .read_blocking(move |snap| snap.logs(&q))
        .expect("query")
}

/// Every entry, newest first, by a scan of the whole log.
fn everything(store: &Store) -> Vec<LogEntry> {
    read(
        store,
        LogQuery {
            limit: usize::MAX,
            ..LogQuery::default()
        },
    )
}

fn seqs(entries: &[LogEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// Check every way of reading `subject` against the filtered scan.
fn check_subject(store: &Store, all: &[LogEntry], subject: &str, rng: &mut Lcg) {
    let expected: Vec<&LogEntry> = all
        .iter()
        .filter(|e| e.subjects.iter().any(|s| s == subject))
        .collect();
    let want = |f: &dyn Fn(&LogEntry) -> bool, limit: usize| -> Vec<u64> {
        expected
            .iter()
            .filter(|e| f(e))
            .take(limit)
            .map(|e| e.seq)
            .collect()
    };
    let q = |before: Option<u64>, since: Option<Millis>, until: Option<Millis>, limit: usize| {
        LogQuery {
            subject: Some(subject.to_owned()),
            before,
            since,
            until,
            limit,
        }
    };
    // The whole history at once.
    let got = read(store, q(None, None, None, usize::MAX));
    assert_eq!(
        seqs(&got),
        want(&|_| true, usize::MAX),
        "{subject}: whole history"
    );
    for e in &got {
        assert!(
            e.subjects.iter().any(|s| s == subject),
            "{subject}: foreign entry"
        );
    }
    // Paged with a random page size, each page starting below the last one's oldest entry.
    let page = usize::try_from(1 + rng.below(40)).expect("small");
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let got = read(store, q(before, None, None, page));
        assert!(got.len() <= page);
        paged.extend(seqs(&got));
        match got.last() {
            Some(last) if got.len() == page => before = Some(last.seq),
            _ => break,
        }
    }
    assert_eq!(
        paged,
        want(&|_| true, usize::MAX),
        "{subject}: paged by {page}"
    );
    // Arbitrary paging points (not entries of this subject) and time windows.
    let top = all.first().map_or(1, |e| e.seq + 2);
    for _ in 0..25 {
        let before = 1 + rng.below(top);
        let limit = usize::try_from(1 + rng.below(150)).expect("small");
        let got = read(store, q(Some(before), None, None, limit));
        assert_eq!(
            seqs(&got),
            want(&|e| e.seq < before, limit),
            "{subject}: before {before}, limit {limit}"
        );
        let since = Millis(START.0 + rng.below(120) * 1000);
        let until = Millis(since.0 + rng.below(60) * 1000);
        let got = read(store, q(Some(before), Some(since), Some(until), limit));
        assert_eq!(
            seqs(&got),
            want(&|e| e.seq < before && e.ts >= since && e.ts <= until, limit),
            "{subject}: before {before}, {since:?}..={until:?}, limit {limit}"
        );
    }
}

/// Count retention: keep the newest `max_records` entries. Returns how many were removed.
async fn keep_newest(store: &Store, max_records: u64) -> usize {
    let keep = Retention {
        max_age: Duration::from_secs(365 * 86_400),
        max_records,
    };
    store
        .write(move |tx, now| prune(tx, now, keep, 100_000))
        .await
        .expect("prune")
}

fn subjects() -> Vec<String> {
    let mut s: Vec<String> = (0..6).map(|i| format!("device:d{i}")).collect();
    s.extend((0..25).map(|i| format!("request:{i}")));
    s.push("api".into());
    s
}

/// Write `n` entries in batches of random sizes (several writers at once, several entries
/// per writer), about random subjects (one to three, sometimes the same one twice).
async fn write_random(store: &Store, clock: &ManualClock, rng: &mut Lcg, n: usize) -> usize {
    let names = subjects();
    let mut written = 0;
    while written < n {
        let writers = 1 + rng.below(8);
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let per = 1 + rng.below(5);
            let mut batch = Vec::new();
            for _ in 0..per {
                let k = 1 + rng.below(3);
                let mut subj: Vec<String> = (0..k)
                    .map(|_| {
                        names[usize::try_from(rng.below(names.len() as u64)).expect("i")].clone()
                    })
                    .collect();
                if rng.below(10) == 0 {
                    subj.push(subj[0].clone());
                }
                batch.push(NewLog {
                    subjects: subj,
                    source: "test".into(),
                    actor: None,
                    message: format!("m{written}"),
                });
                written += 1;
            }
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(move |tx, now| {
                    for e in batch {
                        append(tx, now, e)?;
                    }
                    Ok(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        clock.advance(Duration::from_millis(100 * rng.below(20)));
    }
    written
}

#[tokio::test]
async fn a_subjects_history_is_exactly_its_entries_however_it_is_read() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = ManualClock::new(START);
    let store = Store::open(&dir.path().join("db.redb"), Arc::new(clock.clone())).expect("open");
    let mut rng = Lcg(7);
    let written = write_random(&store, &clock, &mut rng, 3000).await;
    let all = everything(&store);
    assert_eq!(all.len(), written);
    for s in subjects() {
        check_subject(&store, &all, &s, &mut rng);
    }
    // Retention removes the oldest entries; every history loses exactly those.
    assert_eq!(keep_newest(&store, 1200).await, written - 1200);
    let all = everything(&store);
    assert_eq!(all.len(), 1200);
    for s in subjects() {
        check_subject(&store, &all, &s, &mut rng);
    }
    // A subject whose every entry is pruned has no chain head left behind.
    let heads_before = store
        .read_blocking(|snap| Ok(snap.redb_for_tests().open_table(tables::LOG_HEADS)?.len()?))
        .expect("heads");
    write_random(&store, &clock, &mut rng, 500).await;
    store
        .write(|tx, now| {
            append(
                tx,
                now,
                NewLog::new("request:gone".into(), "test", "only entry"),
            )
        })
        .await
        .expect("write");
    keep_newest(&store, 0).await;
    assert_eq!(store.read_blocking(Snapshot::log_count).expect("count"), 0);
    let heads_after = store
        .read_blocking(|snap| Ok(snap.redb_for_tests().open_table(tables::LOG_HEADS)?.len()?))
        .expect("heads");
    assert!(heads_before > 0);
    assert_eq!(heads_after, 0, "heads of pruned subjects are removed");
    // The chains start again after everything was pruned.
    write_random(&store, &clock, &mut rng, 300).await;
    let all = everything(&store);
    for s in subjects() {
        check_subject(&store, &all, &s, &mut rng);
    }
}

#[tokio::test]
async fn entries_from_before_the_chains_read_on_with_the_new_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("old.redb");
    // A schema-2 store: 200 layout-1 entries with an index row per subject.
    {
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let mut logs = tx.open_table(tables::LOGS).expect("logs");
            let mut index = tx.open_table(tables::LOG_INDEX).expect("index");
            for seq in 1..=200u64 {
                let subjects = if seq % 2 == 0 {
                    vec!["device:old".to_owned(), "api".to_owned()]
                } else {
                    vec!["device:other".to_owned()]
                };
                for s in &subjects {
                    index.insert((s.as_str(), seq), ()).expect("row");
                }
                let record = LogRecord::V1(LogV1 {
                    ts: START.0 + seq,
                    subjects,
                    source: "old".into(),
                    actor: None,
                    message: format!("old{seq}"),
                });
                logs.insert(seq, Encoded::encode(&record).expect("encode"))
                    .expect("insert");
            }
            let mut meta = tx.open_table(tables::META).expect("meta");
            meta.insert("schema_version", 2).expect("version");
            meta.insert("next_log_seq", 200).expect("seq");
        }
        tx.commit().expect("commit");
    }
    let clock = ManualClock::new(Millis(START.0 + 1000));
    let store = Store::open(&path, Arc::new(clock.clone())).expect("opens");
    let mut rng = Lcg(11);
    for i in 0..300u32 {
        let subject = if i % 3 == 0 {
            "device:old"
        } else {
            "device:new"
        };
        store
            .write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new(subject.into(), "new", format!("new{i}")),
                )
            })
            .await
            .expect("append");
    }
    let all = everything(&store);
    assert_eq!(all.len(), 500);
    // device:old: 100 old entries then 100 new ones, read as one history.
    let old = read(
        &store,
        LogQuery {
            subject: Some("device:old".into()),
            limit: usize::MAX,
            ..LogQuery::default()
        },
    );
    assert_eq!(old.len(), 200);
    assert_eq!(old[0].message, "new297");
    assert_eq!(old[99].message, "new0");
    assert_eq!(old[100].message, "old200");
    assert_eq!(old[199].message, "old2");
    for s in ["device:old", "device:other", "device:new", "api"] {
        check_subject(&store, &all, s, &mut rng);
    }
    // Retention across the boundary.
    assert_eq!(keep_newest(&store, 350).await, 150);
    let all = everything(&store);
    assert_eq!(all.len(), 350);
    for s in ["device:old", "device:other", "device:new", "api"] {
        check_subject(&store, &all, s, &mut rng);
    }
}
