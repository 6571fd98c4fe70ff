//! Dead-letter queues: durable, listable and replayable.
//!
//! Each queue (`pipeline`, and one per destination) is a log of its own under
//! `<data_dir>/dlq/<name>/`, so entries are as durable as events: appended with group commit,
//! acknowledged after fsync. An entry keeps the event as it entered the stage (so a replay runs
//! it through the whole stage again), where and why it failed, and the raw-log offset it came
//! from. Listing shows the entries after the *cleared* mark; a replay hands them back, in order,
//! and then moves the mark past them.
//!
//! Each queue has a size and an age cap (`[dlq]`): a queue nobody replays must not fill the disk
//! and stop ingest. Entries past a cap are evicted oldest first by moving the mark past them;
//! whole segments below the mark are deleted. Evictions are counted in `weir_dlq_evicted_total`
//! and logged. The caps are checked after every append and by a periodic sweep
//! ([`Dlq::enforce_caps`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use parking_lot::Mutex;

use crate::config::DlqConfig;
use crate::event::{Header, RawObject};
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::storage::Storage;
use crate::log::{
    AppendError, Appender, EncodedRecord, Log, LogError, LogOptions, OffsetStore, Record,
    RecordKind, record,
};
use crate::telemetry::{DlqLabels, DlqMetrics, LogMetrics};

/// One dead-lettered event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `pipeline`, or `destination:<name>`.
    pub stage: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub error: String,
    /// When it failed (UTC).
    pub failed_at: String,
    /// Offset in the log the stage reads (raw log for the pipeline, processed log for
    /// destinations).
    pub log_offset: u64,
    /// The event as it entered the stage: what a replay sends through it again.
    pub event: Value,
}

/// An entry with its position in the queue.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub id: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

impl DeadLetter {
    /// An entry for `record` (as it entered `stage`) that failed with `error`, in `version` of a
    /// plugin when a plugin failed it.
    pub fn new(
        stage: &str,
        record: &Record,
        version: Option<&crate::plugin::LoadedVersion>,
        error: &str,
    ) -> DeadLetter {
        DeadLetter {
            stage: stage.to_owned(),
            source: record.meta.source.as_str().to_owned(),
            plugin: version.map(|v| v.plugin.clone()),
            version: version.map(|v| v.version.to_string()),
            error: error.to_owned(),
            failed_at: crate::timestamp::format(crate::timestamp::now()),
            log_offset: record.offset.0,
            event: serde_json::from_slice(&record.payload).unwrap_or(Value::Null),
        }
    }

    /// The record for this entry.
    pub fn encode(&self) -> EncodedRecord {
        let event_json = self.event.to_string();
        let header = RawObject::parse(&event_json)
            .map(|o| Header::of(&o))
            .unwrap_or(Header {
                event_type: crate::log::EventType::Unknown,
                event_name: String::new(),
                ordering_key: String::new(),
                message_id: None,
            });
        let mut meta = header.record_meta(
            RecordKind::DeadLetter,
            SourceId::new(&self.source),
            crate::timestamp::now_ms(),
            Some(Offset(self.log_offset)),
        );
        // Dead letters take no part in dedupe.
        meta.dedupe_key = 0;
        let payload = serde_json::to_vec(self).unwrap_or_default();
        record::encode(&meta, &payload)
    }

    fn decode(r: &Record) -> Option<DeadLetter> {
        (r.meta.kind == RecordKind::DeadLetter)
            .then(|| serde_json::from_slice(&r.payload).ok())
            .flatten()
    }
}

fn cleared() -> ConsumerId {
    ConsumerId::new("cleared")
}

/// Where queue `name` lives.
pub fn queue_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("dlq").join(ConsumerId::new(name).file_stem())
}

fn cursor_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join("offsets")
        .join("dlq")
        .join(ConsumerId::new(name).file_stem())
}

/// One dead-letter queue, open for writing.
pub struct Dlq {
    pub name: String,
    log: Log,
    cursor: OffsetStore,
    caps: DlqConfig,
    metrics: Arc<DlqMetrics>,
    labels: DlqLabels,
    /// Serializes moves of the cleared mark (replays and evictions), which only go forward.
    mark_lock: Mutex<()>,
}

impl Dlq {
    /// Opens queue `name`. `options` are the main log's; the queue uses segments of at most an
    /// eighth of its size cap, so eviction frees space in steps of that size.
    pub fn open(
        data_dir: &Path,
        name: &str,
        storage: Arc<dyn Storage>,
        options: &LogOptions,
        caps: DlqConfig,
        log_metrics: LogMetrics,
        metrics: Arc<DlqMetrics>,
    ) -> Result<Dlq, LogError> {
        let segment_bytes = options.segment_bytes.min(caps.max_bytes / 8).max(8 * 1024);
        let options = LogOptions {
            segment_bytes,
            // The cap is enforced by eviction; the log's own limit (which refuses appends) only
            // stops a burst bigger than the cap itself.
            max_bytes: caps.max_bytes.saturating_mul(2),
            ..options.clone()
        };
        let log = Log::open(
            &queue_dir(data_dir, name),
            storage.clone(),
            &options,
            log_metrics,
        )?;
        let cursor = OffsetStore::open(storage, &cursor_dir(data_dir, name))?;
        let labels = DlqLabels {
            queue: name.to_owned(),
        };
        metrics
            .max_bytes
            .get_or_create(&labels)
            .set(caps.max_bytes as i64);
        metrics
            .max_age_seconds
            .get_or_create(&labels)
            .set(caps.max_age.as_secs() as i64);
        let dlq = Dlq {
            name: name.to_owned(),
            log,
            cursor,
            caps,
            metrics,
            labels,
            mark_lock: Mutex::new(()),
        };
        dlq.enforce_caps()?;
        Ok(dlq)
    }

    pub fn appender(&self) -> Appender {
        self.log.appender()
    }

    /// Appends entries durably, from a blocking thread.
    pub fn push_blocking(&self, letters: &[DeadLetter]) -> Result<(), AppendError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.log
            .appender()
            .append_blocking(letters.iter().map(DeadLetter::encode).collect())?;
        // The entries are durable whatever the caps say; a failed eviction is retried by the
        // next append or sweep.
        if let Err(e) = self.enforce_caps() {
            tracing::warn!(queue = %self.name, error = %e, "cannot apply the dead-letter caps");
        }
        Ok(())
    }

    /// The entries not yet cleared, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, LogError> {
        read_entries(&self.log, self.mark()?)
    }

    /// Marks every entry below `next` as handled (replayed).
    pub fn clear_before(&self, next: Offset) -> Result<(), LogError> {
        let _guard = self.mark_lock.lock();
        if next > self.mark()? {
            self.move_mark(next)?;
        }
        Ok(())
    }

    /// Evicts the entries beyond the size cap (whole oldest segments) and those older than the
    /// age cap. Returns how many were evicted.
    pub fn enforce_caps(&self) -> Result<u64, LogError> {
        let _guard = self.mark_lock.lock();
        let from = self.mark()?;
        let mut mark = from;
        let segments = self.log.segments();
        // The log's running total: the active segment's entry in the list may lag behind it.
        let mut total = self.log.size_bytes();
        for pair in segments.windows(2) {
            if total <= self.caps.max_bytes {
                break;
            }
            total -= pair[0].1;
            mark = mark.max(pair[1].0);
        }
        let cutoff =
            crate::timestamp::now_ms().saturating_sub(self.caps.max_age.as_millis() as i64);
        let mut reader = self.log.reader(mark);
        'age: loop {
            let batch = reader.read_batch(256)?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                if r.meta.received_at_ms >= cutoff {
                    break 'age;
                }
                mark = r.offset.next();
            }
        }
        let evicted = mark.0.saturating_sub(from.0);
        if evicted > 0 {
            self.move_mark(mark)?;
            self.metrics
                .evicted
                .get_or_create(&self.labels)
                .inc_by(evicted);
            tracing::warn!(
                queue = %self.name,
                evicted,
                max_bytes = self.caps.max_bytes,
                max_age_ms = self.caps.max_age.as_millis() as u64,
                "evicted dead letters beyond the queue's caps without a replay"
            );
        } else {
            self.gauge(from);
        }
        Ok(evicted)
    }

    /// Where the listed entries start.
    fn mark(&self) -> Result<Offset, LogError> {
        Ok(self
            .cursor
            .load(&cleared())?
            .unwrap_or(Offset(0))
            .max(self.log.oldest()))
    }

    /// Moves the mark to `next` and deletes the segments wholly below it.
    fn move_mark(&self, next: Offset) -> Result<(), LogError> {
        self.cursor.commit(&cleared(), next)?;
        let deleted = self.log.delete_before(next)?;
        if deleted > 0 {
            tracing::debug!(queue = %self.name, segments = deleted, "deleted handled dead letters");
        }
        self.gauge(next);
        Ok(())
    }

    fn gauge(&self, mark: Offset) {
        let entries = self.log.head().next.0.saturating_sub(mark.0);
        let m = &self.metrics;
        m.entries.get_or_create(&self.labels).set(entries as i64);
        m.bytes
            .get_or_create(&self.labels)
            .set(self.log.size_bytes() as i64);
    }

    pub fn close(self) {
        self.log.close();
    }
}

fn read_entries(log: &Log, from: Offset) -> Result<Vec<Entry>, LogError> {
    let mut reader = log.reader(from.max(log.oldest()));
    let mut out = Vec::new();
    loop {
        let batch = reader.read_batch(1024)?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch.iter().filter_map(|r| {
            DeadLetter::decode(r).map(|letter| Entry {
                id: r.offset.0,
                letter,
            })
        }));
    }
}

/// Lists a queue without opening it for writing (`weir dlq list`, safe while weir runs).
pub fn list(
    data_dir: &Path,
    name: &str,
    storage: Arc<dyn Storage>,
) -> Result<Vec<Entry>, LogError> {
    let dir = queue_dir(data_dir, name);
    if !storage.exists(&dir) && storage.list(&dir).map_or(true, |l| l.is_empty()) {
        return Ok(Vec::new());
    }
    let log = Log::open_read_only(&dir, storage.clone())?;
    let cursor = OffsetStore::open_read_only(storage, &cursor_dir(data_dir, name));
    let from = cursor.load(&cleared())?.unwrap_or(Offset(0));
    read_entries(&log, from)
}

/// Names of the queues under a data dir.
pub fn queues(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("dlq"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::log::storage::FsStorage;
    use crate::telemetry::Metrics;

    fn letter(i: usize) -> DeadLetter {
        DeadLetter {
            stage: "destination:d".into(),
            source: "web".into(),
            plugin: None,
            version: None,
            error: "refused".into(),
            failed_at: "2026-11-27T00:00:00.000Z".into(),
            log_offset: i as u64,
            event: serde_json::json!({"type": "track", "messageId": format!("m-{i}"),
                "properties": {"pad": "x".repeat(400)}}),
        }
    }

    fn open(dir: &Path, caps: DlqConfig, metrics: &Metrics) -> Dlq {
        let options = LogOptions {
            segment_bytes: 1 << 30,
            flush_interval: Duration::ZERO,
            flush_bytes: 1 << 20,
            max_bytes: 1 << 40,
            queue_capacity: 64,
            preallocate_bytes: 0,
        };
        Dlq::open(
            dir,
            "destination:d",
            Arc::new(FsStorage),
            &options,
            caps,
            metrics.log("dlq"),
            metrics.dlq.clone(),
        )
        .unwrap()
    }

    fn ids(dlq: &Dlq) -> Vec<String> {
        dlq.entries()
            .unwrap()
            .iter()
            .map(|e| e.letter.event["messageId"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_size_cap_evicts_the_oldest_entries_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let caps = DlqConfig {
            max_bytes: 64 * 1024,
            max_age: Duration::from_secs(3600),
        };
        let dlq = open(dir.path(), caps, &metrics);
        // ~500 bytes each: 1000 entries are ~8x the cap.
        for i in 0..1000 {
            dlq.push_blocking(&[letter(i)]).unwrap();
        }
        let size = dlq.log.size_bytes();
        assert!(size <= caps.max_bytes, "{size} bytes kept");
        let kept = ids(&dlq);
        assert!(kept.len() > 50 && kept.len() < 1000, "{} kept", kept.len());
        assert_eq!(kept.last().unwrap(), "m-999", "the newest entries stay");
        let first: usize = kept[0].strip_prefix("m-").unwrap().parse().unwrap();
        assert_eq!(kept.len(), 1000 - first, "what stays is contiguous");
        let labels = DlqLabels {
            queue: "destination:d".into(),
        };
        let evicted = metrics.dlq.evicted.get_or_create(&labels).get();
        assert_eq!(evicted as usize, first);
        let entries = metrics.dlq.entries.get_or_create(&labels).get();
        assert_eq!(entries as usize, kept.len());
        // Across a reopen, the eviction holds.
        dlq.close();
        let dlq = open(dir.path(), caps, &metrics);
        assert_eq!(ids(&dlq), kept);
    }

    #[test]
    fn the_age_cap_evicts_old_entries_and_a_replay_mark_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let caps = DlqConfig {
            max_bytes: 1 << 30,
            max_age: Duration::from_millis(300),
        };
        let dlq = open(dir.path(), caps, &metrics);
        dlq.push_blocking(&[letter(0), letter(1)]).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        dlq.push_blocking(&[letter(2)]).unwrap();
        assert_eq!(ids(&dlq), ["m-2"], "the two old entries are evicted");
        // A replay that read the queue before the eviction clears up to its own end only.
        dlq.clear_before(Offset(1)).unwrap();
        assert_eq!(ids(&dlq), ["m-2"]);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(dlq.enforce_caps().unwrap(), 1);
        assert!(ids(&dlq).is_empty());
    }
}
