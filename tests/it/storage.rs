//! The store: log queries and retention, group commit, and reading older record layouts.

use std::sync::Arc;
use std::time::Duration;

use mozpool::domain::clock::{ManualClock, Millis};
use mozpool::domain::device_state::DeviceState;
use mozpool::domain::model::device_subject;
use mozpool::storage::inventory as inv;
use mozpool::storage::logs::{LogQuery, NewLog, Retention, append, prune};
use mozpool::storage::records::{DeviceRecord, LogRecord};
use mozpool::storage::{Encoded, Snapshot, Store, decode_bytes, tables};

const START: Millis = Millis(1_764_000_000_000);

fn store() -> (tempfile::TempDir, Store, ManualClock) {
    let dir = tempfile::tempdir().expect("dir");
    let clock = ManualClock::new(START);
    let store = Store::open(&dir.path().join("db.redb"), Arc::new(clock.clone())).expect("open");
    (dir, store, clock)
}

#[tokio::test]
async fn log_queries_by_subject_time_and_page() {
    let (_dir, store, clock) = store();
    for i in 0..300u32 {
        let subject = device_subject(if i % 3 == 0 { "a" } else { "b" });
        store
            .write(move |tx, now| append(tx, now, NewLog::new(subject, "test", format!("m{i}"))))
            .await
            .expect("append");
        clock.advance(Duration::from_secs(1));
    }
    let read = |q: LogQuery| {
        store
            .read_blocking(move |snap| snap.logs(&q))
            .expect("query")
    };
    // By subject, newest first, limited.
    let a = read(LogQuery {
        subject: Some(device_subject("a")),
        limit: 5,
        ..LogQuery::default()
    });
    let msgs: Vec<&str> = a.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, ["m297", "m294", "m291", "m288", "m285"]);
    // Paging continues where the last page ended.
    let next = read(LogQuery {
        subject: Some(device_subject("a")),
        limit: 2,
        before: Some(a[4].seq),
        ..LogQuery::default()
    });
    assert_eq!(
        next.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["m282", "m279"]
    );
    // By time: entries written in seconds [10, 19].
    let window = read(LogQuery {
        since: Some(START.plus(Duration::from_secs(10))),
        until: Some(START.plus(Duration::from_secs(19))),
        limit: 100,
        ..LogQuery::default()
    });
    assert_eq!(window.len(), 10);
    assert_eq!(window[0].message, "m19");
    assert_eq!(window[9].message, "m10");
    // Subject and time together.
    let aw = read(LogQuery {
        subject: Some(device_subject("a")),
        since: Some(START.plus(Duration::from_secs(290))),
        limit: 100,
        ..LogQuery::default()
    });
    assert_eq!(
        aw.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["m297", "m294", "m291"]
    );
}

#[tokio::test]
async fn retention_by_count_and_age_removes_index_too() {
    let (_dir, store, clock) = store();
    for i in 0..100u32 {
        store
            .write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new(device_subject("d"), "test", format!("m{i}")),
                )
            })
            .await
            .expect("append");
        clock.advance(Duration::from_secs(60));
    }
    // Count: keep 80.
    let r = Retention {
        max_age: Duration::from_secs(365 * 86_400),
        max_records: 80,
    };
    let removed = store
        .write(move |tx, now| prune(tx, now, r, 1000))
        .await
        .expect("prune");
    assert_eq!(removed, 20);
    assert_eq!(store.read_blocking(Snapshot::log_count).expect("count"), 80);
    let oldest = store
        .read_blocking(|snap| {
            snap.logs(&LogQuery {
                subject: Some(device_subject("d")),
                limit: 1000,
                ..LogQuery::default()
            })
        })
        .expect("q");
    assert_eq!(
        oldest.len(),
        80,
        "the subject index lost the pruned entries too"
    );
    assert_eq!(oldest.last().map(|e| e.message.as_str()), Some("m20"));
    // Age: now is START + 100 min; keep the last 30 minutes, in small batches.
    let r = Retention {
        max_age: Duration::from_secs(30 * 60),
        max_records: 1_000_000,
    };
    let mut total = 0;
    loop {
        let n = store
            .write(move |tx, now| prune(tx, now, r, 7))
            .await
            .expect("prune");
        total += n;
        if n < 7 {
            break;
        }
    }
    assert_eq!(total, 50);
    assert_eq!(store.read_blocking(Snapshot::log_count).expect("count"), 30);
}

#[tokio::test]
async fn concurrent_writes_are_grouped_and_all_durable() {
    let (dir, store, _clock) = store();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new(device_subject("x"), "t", format!("{i}")),
                )
            })
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("write");
    }
    let stats = store.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits < 200,
        "200 concurrent writes should share commits, got {commits}"
    );
    drop(store);
    // Reopen: everything acknowledged is there.
    std::thread::sleep(Duration::from_millis(50));
    let store = Store::open(
        &dir.path().join("db.redb"),
        Arc::new(ManualClock::new(START)),
    )
    .expect("reopen");
    assert_eq!(
        store.read_blocking(Snapshot::log_count).expect("count"),
        200
    );
}

#[tokio::test]
async fn a_batch_writes_its_log_entries_in_order_and_an_aborted_batch_none() {
    let (_dir, store, _clock) = store();
    // Many writers, most of them in shared batches: every entry once, sequence numbers
    // consecutive, each writer's two entries in the order it appended them.
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.write(move |tx, now| {
                append(
                    tx,
                    now,
                    NewLog::new(device_subject("w"), "t", format!("{i}a")),
                )?;
                append(
                    tx,
                    now,
                    NewLog::new(device_subject("w"), "t", format!("{i}b")),
                )
            })
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("write");
    }
    let all = store
        .read_blocking(|snap| {
            snap.logs(&LogQuery {
                limit: 1000,
                ..LogQuery::default()
            })
        })
        .expect("query");
    assert_eq!(all.len(), 200);
    let mut seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    for i in 0..100u32 {
        let seq_of = |m: String| all.iter().find(|e| e.message == m).expect("entry").seq;
        assert_eq!(seq_of(format!("{i}b")), seq_of(format!("{i}a")) + 1);
    }
    // A write that fails after appending: its entry is not written, and the log goes on.
    let failed = store
        .write(|tx, now| {
            append(tx, now, NewLog::new(device_subject("w"), "t", "lost"))?;
            Err::<(), _>(mozpool::storage::StoreError::Backup("boom".into()))
        })
        .await;
    assert!(failed.is_err());
    store
        .write(|tx, now| append(tx, now, NewLog::new(device_subject("w"), "t", "after")))
        .await
        .expect("write");
    let newest = store
        .read_blocking(|snap| {
            snap.logs(&LogQuery {
                limit: 2,
                ..LogQuery::default()
            })
        })
        .expect("query");
    assert_eq!(newest[0].message, "after");
    assert_eq!(newest[0].seq, 201);
    assert_ne!(newest[1].message, "lost");
}

/// A walk over the inventory inside a write (what a queue pass does) sees every committed
/// change and nothing of an aborted write, however often it walks.
#[test]
fn a_walk_inside_a_write_sees_each_committed_device_and_no_aborted_one() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("walk.redb");
    old_store(&path, None);
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("opens");
    let walk = |store: &Store| {
        store
            .write_blocking(|tx, _| {
                let mut seen = Vec::new();
                inv::for_each_device_in_tx(tx, |d| {
                    seen.push((d.name.to_string(), d.comments.clone()));
                    Ok(())
                })?;
                Ok(seen)
            })
            .expect("walk")
    };
    let comment = |store: &Store, text: &'static str, abort: bool| {
        store.write_blocking(move |tx, _| {
            let mut d = inv::device_in_tx(tx, "panda-0042")?.expect("present");
            d.comments = Some(text.into());
            inv::put_device(tx, &d)?;
            if abort {
                return Err(mozpool::storage::StoreError::Backup("abort".into()));
            }
            Ok(())
        })
    };
    let before = walk(&store);
    assert_eq!(before.len(), 1);
    comment(&store, "first", false).expect("write");
    assert_eq!(walk(&store)[0].1.as_deref(), Some("first"));
    assert!(comment(&store, "never committed", true).is_err());
    assert_eq!(walk(&store)[0].1.as_deref(), Some("first"));
    comment(&store, "second", false).expect("write");
    assert_eq!(walk(&store)[0].1.as_deref(), Some("second"));
    assert_eq!(walk(&store)[0].1.as_deref(), Some("second"));
}

/// The golden bytes of a layout-1 device record, frozen when layout 1 was released.
const DEVICE_V1: &[u8] = include_bytes!("../fixtures/records/device_v1.bin");

#[test]
fn golden_device_v1_still_decodes() {
    let record: DeviceRecord = decode_bytes(DEVICE_V1).expect("layout 1 decodes");
    let device = mozpool::domain::model::Device::try_from(record).expect("a valid device");
    assert_eq!(device.name, "panda-0042");
    assert_eq!(device.facts.hardware_type.as_deref(), Some("panda"));
    assert_eq!(
        device
            .wiring
            .relay
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("relay-1:bank2:relay6")
    );
    assert_eq!(device.state, DeviceState::Ready);
}

/// Golden bytes of a layout-2 device record.
const DEVICE_V2: &[u8] = include_bytes!("../fixtures/records/device_v2.bin");

#[test]
fn golden_device_v2_still_decodes() {
    let device = mozpool::domain::model::Device::try_from(
        decode_bytes::<DeviceRecord>(DEVICE_V2).expect("layout 2 decodes"),
    )
    .expect("a valid device");
    // Written back, it is the newest layout with nothing lost.
    let again = Encoded::encode(&DeviceRecord::from(&device)).expect("encodes");
    let back = mozpool::domain::model::Device::try_from(
        decode_bytes::<DeviceRecord>(again.bytes()).expect("decodes"),
    )
    .expect("valid");
    assert_eq!(back, device);
    assert_eq!(device.name, "panda-0043");
    assert_eq!(device.state, DeviceState::SutVerifying);
    assert_eq!(device.lifeguard.generation, 17);
    assert_eq!(device.lifeguard.counters.get("sut_verifying"), Some(&3));
    assert_eq!(device.lifeguard.deadline, Some(Millis(1_764_000_135_000)));
    assert_eq!(device.request, Some(7));
    assert!(
        device.lifeguard.current_has_agent
            && device.lifeguard.self_test
            && !device.lifeguard.next_has_agent
    );
    let reg = device.registration.expect("registration");
    assert_eq!(reg.agent_name, "00:11:22:33:44:55");
    assert_eq!(
        reg.fields.get("OS").map(String::as_str),
        Some("Android-IMM76D")
    );
}

/// Golden bytes of a layout-3 device record (layout 2 plus the adb serial).
const DEVICE_V3: &[u8] = include_bytes!("../fixtures/records/device_v3.bin");

#[test]
fn golden_device_v3_still_decodes() {
    let device = mozpool::domain::model::Device::try_from(
        decode_bytes::<DeviceRecord>(DEVICE_V3).expect("layout 3 decodes"),
    )
    .expect("a valid device");
    assert_eq!(device.name, "panda-0043");
    assert_eq!(device.wiring.adb_serial.as_deref(), Some("127.0.0.1:5555"));
    assert_eq!(device.wiring.adb_serial(), Some("127.0.0.1:5555"));
    assert_eq!(device.lifeguard.generation, 17);
    // Before layout 4: the safe registration defaults, nothing held.
    assert!(!device.allow_registration && !device.follow_address);
    assert!(device.address_change.is_none());
    // Written back, it is layout 4 with nothing lost.
    let again = Encoded::encode(&DeviceRecord::from(&device)).expect("encodes");
    let back = mozpool::domain::model::Device::try_from(
        decode_bytes::<DeviceRecord>(again.bytes()).expect("decodes"),
    )
    .expect("valid");
    assert_eq!(back, device);
}

/// Golden bytes of a layout-4 device record (layout 3 plus the registration trust settings
/// and a held address change).
const DEVICE_V4: &[u8] = include_bytes!("../fixtures/records/device_v4.bin");

#[test]
fn golden_device_v4_still_decodes() {
    let device = mozpool::domain::model::Device::try_from(
        decode_bytes::<DeviceRecord>(DEVICE_V4).expect("layout 4 decodes"),
    )
    .expect("a valid device");
    // The typed fields write back the very bytes they were read from.
    let again = Encoded::encode(&DeviceRecord::from(&device)).expect("encodes");
    assert_eq!(again.bytes(), DEVICE_V4);
    assert_eq!(device.name, "panda-0043");
    assert_eq!(device.wiring.adb_serial.as_deref(), Some("127.0.0.1:5555"));
    assert!(device.allow_registration && !device.follow_address);
    let change = device.address_change.as_ref().expect("held change");
    assert_eq!(change.sut.as_str(), "10.0.0.77:20701");
    assert_eq!(change.agent_name, "00:11:22:33:44:55");
    assert_eq!(change.at, Millis(1_764_000_200_000));
    assert!(!device.available(), "held out of the pool");
    assert!(
        device
            .needs_tech()
            .is_some_and(|r| r.contains("10.0.0.77:20701"))
    );
}

/// The golden bytes of log layouts 1 and 2, frozen when each was released.
const LOG_V1: &[u8] = include_bytes!("../fixtures/records/log_v1.bin");
const LOG_V2: &[u8] = include_bytes!("../fixtures/records/log_v2.bin");

#[test]
fn golden_log_records_still_decode() {
    let v1 = decode_bytes::<LogRecord>(LOG_V1).expect("layout 1 decodes");
    assert_eq!(v1.prev_for("api"), None, "layout 1 has no chain");
    let e = v1.into_entry(5);
    assert_eq!(e.seq, 5);
    assert_eq!(e.ts, Millis(1_764_000_123_456));
    assert_eq!(e.subjects, ["device:panda-0042", "api"]);
    assert_eq!(e.actor.as_deref(), Some("ci-token"));
    assert!(e.message.starts_with("POST /api/device/panda-0042/"));
    let v2 = decode_bytes::<LogRecord>(LOG_V2).expect("layout 2 decodes");
    assert_eq!(v2.prev_for("device:panda-0042"), Some(41));
    assert_eq!(v2.prev_for("request:7"), Some(0), "the chain starts here");
    assert_eq!(v2.prev_for("api"), None, "not about api");
    let e = v2.into_entry(42);
    assert_eq!(e.source, "statemachine");
    assert_eq!(e.actor, None);
    assert_eq!(e.message, "ready -> start_self_test: please_self_test");
    // Written today, layout 2 encodes to the same bytes.
    let again =
        Encoded::encode(&decode_bytes::<LogRecord>(LOG_V2).expect("decodes")).expect("encodes");
    assert_eq!(again.bytes(), LOG_V2);
}

/// Write a store as an older release did: the device `panda-0042` in layout 1 and, with
/// `schema`, that schema version (no indexes of later versions).
fn old_store(path: &std::path::Path, schema: Option<u64>) {
    let db = redb::Database::create(path).expect("create");
    let tx = db.begin_write().expect("tx");
    {
        let mut t = tx.open_table(tables::DEVICES).expect("table");
        t.insert(
            "panda-0042",
            Encoded::<DeviceRecord>::from_raw(DEVICE_V1.to_vec()),
        )
        .expect("insert");
        if let Some(v) = schema {
            tx.open_table(tables::META)
                .expect("meta")
                .insert("schema_version", v)
                .expect("version");
        }
    }
    tx.commit().expect("commit");
}

#[test]
fn a_database_written_with_layout_1_opens_and_upgrades() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("old.redb");
    old_store(&path, None);
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("opens");
    let d = store
        .read_blocking(|snap| snap.device("panda-0042"))
        .expect("read")
        .expect("present");
    assert_eq!(d.state, DeviceState::Ready);
    assert_eq!(d.facts.environment.as_deref(), Some("prod"));
    // Upgraded to layout 2: Lifeguard details start empty, the state is kept.
    assert_eq!(d.lifeguard.generation, 0);
    assert_eq!(d.lifeguard.entered_at, Millis(1_764_000_100_000));
    assert!(d.request.is_none() && d.registration.is_none());
    assert_eq!(
        free_names(&store, None),
        ["panda-0042"],
        "indexed on upgrade"
    );
    // Writing it back stores layout 2, which reads back the same.
    let again = d.clone();
    store
        .write_blocking(move |tx, _| inv::put_device(tx, &again))
        .expect("write");
    let d2 = store
        .read_blocking(|snap| snap.device("panda-0042"))
        .expect("read")
        .expect("present");
    assert_eq!(d, d2);
    let raw = store
        .read_blocking(|snap| {
            Ok(snap
                .redb_for_tests()
                .open_table(tables::DEVICES)?
                .get("panda-0042")?
                .map(|g| g.value().bytes().to_vec()))
        })
        .expect("raw")
        .expect("present");
    assert_eq!(raw[0], 3, "written as variant 3 (layout 4)");
}

/// Open `path` again once the previous `Store`'s writer thread has let go of the file.
fn reopen(path: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(path, Arc::new(ManualClock::new(START))) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("already open"), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// Open the store's file with redb itself, once the closed store's writer thread has let
/// go of it.
fn open_raw(path: &std::path::Path) -> redb::Database {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match redb::Database::create(path) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("already open"), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn free_names(store: &Store, image: Option<&'static str>) -> Vec<String> {
    store
        .read_blocking(|snap| {
            inv::free_device_names(
                &snap.redb_for_tests().open_table(tables::FREE_DEVICES)?,
                image,
            )
        })
        .expect("free index")
}

#[test]
fn a_version_1_store_gets_its_indexes_built_and_they_follow_every_device_write() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("v1.redb");
    // A version-1 store: devices, but no free-device index.
    old_store(&path, Some(1));
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("opens");
    // The ready, unheld device is indexed under "" (no image on it).
    assert_eq!(free_names(&store, None), ["panda-0042"]);
    assert_eq!(free_names(&store, Some("")), ["panda-0042"]);
    let get = |store: &Store| {
        store
            .read_blocking(|snap| snap.device("panda-0042"))
            .expect("read")
            .expect("present")
    };
    let put = |store: &Store, d: mozpool::domain::model::Device| {
        store
            .write_blocking(move |tx, _| inv::put_device(tx, &d))
            .expect("write");
    };
    // Imaged: indexed under its image.
    let mut d = get(&store);
    d.lifeguard.current_image = Some("android".into());
    put(&store, d.clone());
    assert_eq!(free_names(&store, Some("android")), ["panda-0042"]);
    assert!(free_names(&store, Some("")).is_empty());
    // Held, busy, or retired: not free.
    for change in [
        |d: &mut mozpool::domain::model::Device| d.request = Some(7),
        |d: &mut mozpool::domain::model::Device| d.state = DeviceState::PcPowerCycling,
        |d: &mut mozpool::domain::model::Device| d.retired = true,
    ] {
        let mut busy = d.clone();
        change(&mut busy);
        put(&store, busy);
        assert!(free_names(&store, None).is_empty());
        put(&store, d.clone());
        assert_eq!(free_names(&store, None), ["panda-0042"]);
    }
    // A second device: the index is in (image, name) order.
    let mut other = d.clone();
    other.name = "panda-0001".parse().expect("a device name");
    other.lifeguard.current_image = Some("b2g".into());
    put(&store, other);
    assert_eq!(free_names(&store, None), ["panda-0042", "panda-0001"]);
    assert_eq!(free_names(&store, Some("android")), ["panda-0042"]);
    drop(store);
    // Reopening a version-2 store keeps the index as it is.
    let store = reopen(&path);
    assert_eq!(free_names(&store, None), ["panda-0042", "panda-0001"]);
}

#[test]
fn corrupt_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let mut t = tx.open_table(tables::DEVICES).expect("table");
            t.insert("x", Encoded::<DeviceRecord>::from_raw(vec![0, 9, 9]))
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("opens");
    let err = store.read_blocking(Snapshot::devices).expect_err("corrupt");
    assert!(
        err.to_string().contains("corrupt record in devices"),
        "{err}"
    );
}

#[test]
fn a_newer_database_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("new.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        tx.open_table(tables::META)
            .expect("meta")
            .insert("schema_version", 999)
            .expect("insert");
        tx.commit().expect("commit");
    }
    let err = Store::open(&path, Arc::new(ManualClock::new(START))).expect_err("too new");
    assert!(err.to_string().contains("newer than this release"), "{err}");
}

#[test]
fn the_waiting_request_index_follows_request_writes_and_is_rebuilt_on_upgrade() {
    use mozpool::pool::{DeviceChoice, RequestSnapshot, RequestSpec, RequestState};
    use mozpool::storage::requests::{self, StoredRequest};
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("w.redb");
    let waiting_ids = |store: &Store| -> Vec<u64> {
        store
            .write_blocking(|tx, _| {
                Ok(requests::waiting_in_tx(tx)?
                    .iter()
                    .map(|r| r.snap.id)
                    .collect())
            })
            .expect("waiting")
    };
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("open");
    let put = |store: &Store, id: u64, state: RequestState| {
        let spec = RequestSpec::new(
            DeviceChoice::Any,
            "ci",
            "android".parse().expect("image"),
            START,
        );
        let mut snap = RequestSnapshot::new(id, spec, START.plus(Duration::from_secs(60)));
        snap.state = state;
        let r = StoredRequest {
            snap,
            server: "rack1".into(),
            owner_token: None,
            explanation: None,
        };
        store
            .write_blocking(move |tx, _| requests::put(tx, &r, Duration::from_secs(5)))
            .expect("put");
    };
    put(&store, 1, RequestState::Queued);
    put(&store, 2, RequestState::FindingDevice);
    put(&store, 3, RequestState::Pending);
    assert_eq!(waiting_ids(&store), [1, 2]);
    put(&store, 1, RequestState::ContactingLifeguard);
    put(&store, 3, RequestState::Closed);
    assert_eq!(waiting_ids(&store), [2]);
    put(&store, 4, RequestState::Queued);
    drop(store);
    // Pretend this is a version-1 store: no waiting index yet. Write closures cannot reach
    // the tables, so the file is edited directly, as an older release left it.
    {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let db = open_raw(&path);
        let tx = db.begin_write().expect("tx");
        tx.open_table(tables::WAITING_REQUESTS)
            .expect("waiting")
            .retain(|_, ()| false)
            .expect("clear");
        tx.open_table(tables::META)
            .expect("meta")
            .insert("schema_version", 1)
            .expect("version");
        tx.commit().expect("commit");
        let rtx = db.begin_read().expect("read");
        let waiting = rtx.open_table(tables::WAITING_REQUESTS).expect("waiting");
        assert!(waiting.is_empty().expect("len"));
    }
    let store = reopen(&path);
    assert_eq!(waiting_ids(&store), [2, 4]);
}

/// The golden bytes of the history roll-ups' layout 1 (schema 4), frozen when released.
const USAGE_OPEN_V1: &[u8] = include_bytes!("../fixtures/records/usage_open_v1.bin");
const USAGE_HOUR_V1: &[u8] = include_bytes!("../fixtures/records/usage_hour_v1.bin");
const FAILURE_HOUR_V1: &[u8] = include_bytes!("../fixtures/records/failure_hour_v1.bin");
const WAIT_HOUR_V1: &[u8] = include_bytes!("../fixtures/records/wait_hour_v1.bin");

#[test]
fn golden_history_records_still_decode() {
    use mozpool::storage::records::{
        FailureHourRecord, FailureHourV1, UsageHourRecord, UsageHourV1, UsageOpenRecord,
        UsageOpenV1, WaitHourRecord, WaitHourV1,
    };
    let open = decode_bytes::<UsageOpenRecord>(USAGE_OPEN_V1).expect("decodes");
    assert_eq!(
        open,
        UsageOpenRecord::V1(UsageOpenV1 {
            band: 1,
            since: 1_764_000_000_000,
            last_failure: 1_763_990_000_000,
        })
    );
    let hour = decode_bytes::<UsageHourRecord>(USAGE_HOUR_V1).expect("decodes");
    assert_eq!(
        hour,
        UsageHourRecord::V1(UsageHourV1 {
            ms: [3_600_000, 7_200_000, 0, 1_800_000]
        })
    );
    let fail = decode_bytes::<FailureHourRecord>(FAILURE_HOUR_V1).expect("decodes");
    assert_eq!(
        fail,
        FailureHourRecord::V1(FailureHourV1 {
            failures: 2,
            last: 1_764_000_123_456,
        })
    );
    let wait = decode_bytes::<WaitHourRecord>(WAIT_HOUR_V1).expect("decodes");
    assert_eq!(
        wait,
        WaitHourRecord::V1(WaitHourV1 {
            bars: vec![5, 0, 1],
            waited: vec![2],
        })
    );
    // Written today, layout 1 encodes to the same bytes.
    assert_eq!(
        Encoded::encode(&open).expect("encodes").bytes(),
        USAGE_OPEN_V1
    );
    assert_eq!(
        Encoded::encode(&hour).expect("encodes").bytes(),
        USAGE_HOUR_V1
    );
    assert_eq!(
        Encoded::encode(&fail).expect("encodes").bytes(),
        FAILURE_HOUR_V1
    );
    assert_eq!(
        Encoded::encode(&wait).expect("encodes").bytes(),
        WAIT_HOUR_V1
    );
}

/// A store upgraded to schema 4 charts the devices that sit idle from the upgrade on: each
/// gets an open interval in its band since its record last changed.
#[test]
fn an_upgraded_store_charts_its_idle_devices() {
    use mozpool::domain::history::{HOUR_MS, Window};
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("db.redb");
    old_store(&path, Some(3));
    let store = Store::open(&path, Arc::new(ManualClock::new(START))).expect("opens");
    let d = store
        .read_blocking(|snap| snap.device("panda-0042"))
        .expect("read")
        .expect("present");
    let now = Millis(d.updated.0 + 3 * HOUR_MS);
    let p = store
        .read_blocking(|snap| snap.pool_history(Window::Day, now))
        .expect("pool history");
    let last = p.buckets.last().expect("a bucket");
    assert!((last.ready - 1.0).abs() < 1e-9, "{p:#?}");
    assert!(p.flaky.is_empty());
}
