//! Dead-letter queues: durable, listable and replayable.
//!
//! Each queue (`pipeline`, and one per destination) is a log of its own under
//! `<data_dir>/dlq/<name>/`, so entries are as durable as events: appended with group commit,
//! acknowledged after fsync. An entry keeps the event as it entered the stage (so a replay runs
//! it through the whole stage again), where and why it failed, and the raw-log offset it came
//! from. Listing shows the entries after the *cleared* mark; a replay hands them back, in order,
//! and then moves the mark past them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Header, RawObject};
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::storage::Storage;
use crate::log::{
    AppendError, Appender, EncodedRecord, Log, LogError, LogOptions, OffsetStore, Record,
    RecordKind, record,
};
use crate::telemetry::LogMetrics;

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
}

impl Dlq {
    pub fn open(
        data_dir: &Path,
        name: &str,
        storage: Arc<dyn Storage>,
        options: &LogOptions,
        metrics: LogMetrics,
    ) -> Result<Dlq, LogError> {
        let log = Log::open(
            &queue_dir(data_dir, name),
            storage.clone(),
            options,
            metrics,
        )?;
        let cursor = OffsetStore::open(storage, &cursor_dir(data_dir, name))?;
        Ok(Dlq {
            name: name.to_owned(),
            log,
            cursor,
        })
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
            .append_blocking(letters.iter().map(DeadLetter::encode).collect())
            .map(|_| ())
    }

    /// The entries not yet cleared, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, LogError> {
        let from = self.cursor.load(&cleared())?.unwrap_or(Offset(0));
        read_entries(&self.log, from)
    }

    /// Marks every entry below `next` as handled (replayed).
    pub fn clear_before(&self, next: Offset) -> Result<(), LogError> {
        self.cursor.commit(&cleared(), next)?;
        let deleted = self.log.delete_before(next)?;
        if deleted > 0 {
            tracing::debug!(queue = %self.name, segments = deleted, "deleted replayed dead letters");
        }
        Ok(())
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
