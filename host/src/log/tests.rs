use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::record::{EventType, RecordKind, RecordMeta, encode};
use super::sim::SimStorage;
use super::storage::{FsStorage, Storage};
use super::*;
use crate::ids::{ConsumerId, SourceId};

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        flush_interval: Duration::ZERO,
        flush_bytes: 1 << 20,
        max_bytes: 1 << 30,
        queue_capacity: 64,
        preallocate_bytes: PREALLOCATE_BYTES,
    }
}

fn event(i: usize) -> EncodedRecord {
    let meta = RecordMeta {
        kind: RecordKind::Event,
        event_type: EventType::Track,
        received_at_ms: 1,
        source: SourceId::new("web"),
        event_name: "Signed Up".into(),
        ordering_key: format!("user-{i}"),
        dedupe_key: i as u128 + 1,
        origin: None,
    };
    encode(
        &meta,
        format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(200)).as_bytes(),
    )
}

fn read_all(log: &Log, from: Offset) -> Vec<Record> {
    let mut reader = log.reader(from);
    let mut out = Vec::new();
    loop {
        let batch = reader.read_batch(7).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn payload_n(r: &Record) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    v["n"].as_u64().unwrap()
}

/// A log at `dir` on the real file system, with the tests' options.
fn open_fs(dir: &Path) -> Log {
    Log::open(dir, Arc::new(FsStorage), &options(), LogMetrics::detached()).unwrap()
}

async fn append_n(log: &Log, range: std::ops::Range<usize>) {
    let appender = log.appender();
    for i in range {
        appender.append(vec![event(i)]).await.expect("append");
    }
}

#[tokio::test]
async fn appends_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_fs(dir.path());
    let appender = log.appender();
    let r = appender.append(vec![event(0), event(1)]).await.unwrap();
    assert_eq!(
        r,
        OffsetRange {
            first: Offset(0),
            count: 2
        }
    );
    append_n(&log, 2..100).await;
    assert!(log.shared.segments.lock().len() > 3, "small segments roll");
    // Finished segments hold their records only (the zeros written ahead are given back).
    let segments = log.shared.segments.lock().clone();
    for s in &segments[..segments.len() - 1] {
        assert_eq!(std::fs::metadata(&s.path).unwrap().len(), s.len);
    }
    let records = read_all(&log, Offset(0));
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, Offset(i as u64));
        assert_eq!(payload_n(r), i as u64);
    }
    // Start in the middle of a segment.
    let tail = read_all(&log, Offset(57));
    assert_eq!(tail.first().map(|r| r.offset), Some(Offset(57)));
    assert_eq!(tail.len(), 43);
    drop(appender);
    log.close();

    // Reopen: the same records, and appends continue at the next offset.
    let log = open_fs(dir.path());
    assert_eq!(log.head().next, Offset(100));
    append_n(&log, 100..101).await;
    assert_eq!(read_all(&log, Offset(0)).len(), 101);
}

/// The active segment grows by zeros written ahead of the appends; a crash leaves them at its
/// end, and recovery takes them for what they are: no records, and no torn tail.
#[tokio::test]
async fn zeros_written_ahead_are_not_records_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let mut opts = options();
    opts.segment_bytes = 8 << 20;
    let log = Log::open(dir.path(), storage.clone(), &opts, LogMetrics::detached()).unwrap();
    append_n(&log, 0..10).await;
    let seg = dir.path().join(segment::file_name(Offset(0)));
    let records_len = log.head().segment_len;
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        PREALLOCATE_BYTES,
        "zeros written ahead"
    );
    assert!(segment::zeros_from(storage.as_ref(), &seg, records_len).unwrap());
    // A crash: the process ends without closing the log.
    std::mem::forget(log);

    let log = Log::open(dir.path(), storage.clone(), &opts, LogMetrics::detached()).unwrap();
    assert_eq!(log.head().next, Offset(10));
    assert_eq!(log.head().segment_len, records_len);
    append_n(&log, 10..20).await;
    let records = read_all(&log, Offset(0));
    assert_eq!(records.len(), 20);
    assert_eq!(payload_n(&records[19]), 19);
    let records_len = log.head().segment_len;
    log.close();
    // A clean close gives the zeros back.
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), records_len);

    // A record torn in the middle, with zeros after it, is a torn tail: cut, the rest kept.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0; 150], records_len - 150).unwrap();
    f.set_len(records_len + 4096).unwrap();
    drop(f);
    assert!(!segment::zeros_from(storage.as_ref(), &seg, records_len - 300).unwrap());
    let log = Log::open(dir.path(), storage, &opts, LogMetrics::detached()).unwrap();
    assert_eq!(log.head().next, Offset(19));
    assert_eq!(read_all(&log, Offset(0)).len(), 19);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let mut opts = options();
    opts.segment_bytes = 1 << 20;
    let log = Log::open(dir.path(), storage.clone(), &opts, LogMetrics::detached()).unwrap();
    append_n(&log, 0..10).await;
    log.close();
    let seg = dir.path().join(segment::file_name(Offset(0)));
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, as a crash inside its write would.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);

    let log = Log::open(dir.path(), storage.clone(), &opts, LogMetrics::detached()).unwrap();
    assert_eq!(log.head().next, Offset(9));
    let records = read_all(&log, Offset(0));
    assert_eq!(records.len(), 9);
    append_n(&log, 9..10).await;
    let records = read_all(&log, Offset(0));
    assert_eq!(records.len(), 10);
    assert_eq!(payload_n(&records[9]), 9);
    log.close();

    // Garbage after the last good record is cut too.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0xff; 37]).unwrap();
    drop(f);
    let log = Log::open(dir.path(), storage, &opts, LogMetrics::detached()).unwrap();
    assert_eq!(log.head().next, Offset(10));
}

#[tokio::test]
async fn a_power_cut_keeps_exactly_what_was_acknowledged() {
    let sim = SimStorage::new();
    let dir = Path::new("/data/log");
    let log = Log::open(
        dir,
        Arc::new(sim.clone()),
        &options(),
        LogMetrics::detached(),
    )
    .unwrap();
    append_n(&log, 0..40).await;
    let after = sim.power_cut();
    // The dead machine acknowledges nothing more.
    assert!(log.appender().append(vec![event(40)]).await.is_err());
    let log2 = Log::open(dir, Arc::new(after), &options(), LogMetrics::detached()).unwrap();
    let records = read_all(&log2, Offset(0));
    assert_eq!(records.len(), 40);
}

#[tokio::test]
async fn no_ack_before_the_fsync_that_covers_it() {
    let sim = SimStorage::new();
    let log = Log::open(
        Path::new("/data/log"),
        Arc::new(sim.clone()),
        &options(),
        LogMetrics::detached(),
    )
    .unwrap();
    sim.hold_syncs();
    let appender = log.appender();
    let pending = tokio::spawn(async move { appender.append(vec![event(0)]).await });
    while sim.syncs_waiting() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The write happened and its fsync is stuck: the ack must not be out.
    assert!(!pending.is_finished());
    assert_eq!(log.head().next, Offset(0), "readers must not see it either");
    sim.release_syncs();
    let range = pending.await.unwrap().unwrap();
    assert_eq!(range.first, Offset(0));
    assert_eq!(log.head().next, Offset(1));
}

#[tokio::test]
async fn size_cap_and_full_disk_refuse_appends_without_losing_earlier_ones() {
    let sim = SimStorage::new();
    let dir = Path::new("/data/log");
    let mut opts = options();
    opts.max_bytes = 10_000;
    let log = Log::open(dir, Arc::new(sim.clone()), &opts, LogMetrics::detached()).unwrap();
    let appender = log.appender();
    let mut ok = 0;
    loop {
        match appender.append(vec![event(ok)]).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e, AppendError::Full);
                break;
            }
        }
    }
    assert!(ok > 10);
    assert_eq!(read_all(&log, Offset(0)).len(), ok);
    drop(appender);
    log.close();

    let sim = SimStorage::new();
    let log = Log::open(
        dir,
        Arc::new(sim.clone()),
        &options(),
        LogMetrics::detached(),
    )
    .unwrap();
    append_n(&log, 0..3).await;
    sim.set_capacity(Some(1000));
    let err = log.appender().append(vec![event(3)]).await.unwrap_err();
    assert_eq!(err, AppendError::NoSpace);
    sim.set_capacity(None);
    append_n(&log, 3..4).await;
    let records = read_all(&log, Offset(0));
    assert_eq!(
        records.iter().map(payload_n).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[tokio::test]
async fn segments_are_deleted_only_below_the_low_water_mark() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let log = open_fs(&dir.path().join("log"));
    append_n(&log, 0..60).await;
    let offsets = OffsetStore::open(storage, &dir.path().join("offsets")).unwrap();
    let a = ConsumerId::new("a");
    let b = ConsumerId::new("destination:b");
    offsets.commit(&a, Offset(50)).unwrap();
    offsets.commit(&b, Offset(20)).unwrap();
    let low = offsets.low_water_mark(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(low, Offset(20));
    let before = log.size_bytes();
    let deleted = log.delete_before(low).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() < before);
    assert!(log.oldest() <= Offset(20));
    assert_eq!(read_all(&log, Offset(20)).len(), 40);
    match log.reader(Offset(0)).read_batch(1) {
        Err(LogError::Deleted { requested, .. }) => assert_eq!(requested, Offset(0)),
        other => panic!("expected Deleted, got {other:?}"),
    }
    // Committed offsets survive a reopen of the store.
    let offsets = OffsetStore::open(Arc::new(FsStorage), &dir.path().join("offsets")).unwrap();
    assert_eq!(offsets.load(&b).unwrap(), Some(Offset(20)));
    let mut names = offsets.consumers().unwrap();
    names.sort();
    assert_eq!(names, [a, b]);
}

/// Deleted segments are kept (at most two) and written over as the next segments: the records
/// read back are the new ones, and after a crash in a reused segment its older records are
/// not taken for new ones.
#[tokio::test]
async fn reused_segments_hold_only_their_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let log = open_fs(dir.path());
    append_n(&log, 0..100).await;
    let deleted = log.delete_before(Offset(80)).unwrap();
    assert!(deleted > 2, "{deleted}");
    let spares = segment::list_spares(storage.as_ref(), dir.path()).unwrap();
    assert_eq!(spares.len(), MAX_SPARES);
    // The next segments are the spares, renamed: no new file is created for them.
    append_n(&log, 100..140).await;
    assert!(
        segment::list_spares(storage.as_ref(), dir.path())
            .unwrap()
            .is_empty()
    );
    let records = read_all(&log, Offset(80));
    assert_eq!(
        records.iter().map(payload_n).collect::<Vec<_>>(),
        (80..140).collect::<Vec<u64>>()
    );
    // Finished reused segments are trimmed to their records like any other.
    let segments = log.shared.segments.lock().clone();
    for s in &segments[..segments.len() - 1] {
        assert_eq!(std::fs::metadata(&s.path).unwrap().len(), s.len);
    }

    // Crash while the active segment is a reused file that still holds older records past
    // the new ones.
    log.delete_before(Offset(139)).unwrap();
    let before_crash = log.head().next;
    let mut n = before_crash.0 as usize;
    while log.head().segment_len == 0
        || segment::list_spares(storage.as_ref(), dir.path())
            .unwrap()
            .len()
            == MAX_SPARES
    {
        append_n(&log, n..n + 1).await;
        n += 1;
    }
    let active = log.shared.segments.lock().last().cloned().unwrap();
    let file_len = std::fs::metadata(&active.path).unwrap().len();
    assert!(
        file_len > active.len,
        "the reused file is longer than its new records ({file_len} vs {})",
        active.len
    );
    let head = log.head();
    std::mem::forget(log);
    let log = open_fs(dir.path());
    assert_eq!(log.head().next, head.next);
    assert_eq!(log.head().segment_len, head.segment_len);
    let records = read_all(&log, Offset(139));
    assert_eq!(
        records.iter().map(payload_n).collect::<Vec<_>>(),
        (139..n as u64).collect::<Vec<u64>>()
    );
}
