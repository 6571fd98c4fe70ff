//! The pipeline: raw log → each source's transformer and filter chain → processed log.
//!
//! Guarantees:
//! - every raw event appears in the processed log exactly once: as its output event(s), or as a
//!   `dropped` record naming the plugin, version and reason; events a plugin failed on go to the
//!   `pipeline` dead-letter queue instead, with the event as it entered the chain;
//! - each processed record carries the raw offset it came from, and after a crash the pipeline
//!   resumes after the raw offset of the last durable processed record (or its committed offset,
//!   whichever is further), so nothing is processed twice;
//! - a batch runs entirely on one version of each plugin (loaded once per batch);
//! - `expand` gives the i-th output the message id `{messageId}:{i}`, so re-runs agree.
//!
//! With no plugins configured for a source, its events pass through unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dlq::{DeadLetter, Dlq};
use crate::event::{Header, RawObject, check_kept, json_string};
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::{
    Appender, EncodedRecord, Log, LogError, LogReader, OffsetStore, Record, RecordKind, record,
};
use crate::plugin::bindings::types::{Event, Outcome};
use crate::plugin::isolate::{EventResult, run_isolated};
use crate::plugin::registry::PluginSlot;
use crate::plugin::{LoadedVersion, PluginKind};
use crate::telemetry::{OutcomeLabels, PluginMetrics, StageLabels};

/// The raw-log consumer name of the pipeline.
pub fn consumer() -> ConsumerId {
    ConsumerId::new("pipeline")
}

/// The longest the pipeline's committed offset lags behind its work while busy.
const OFFSET_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// How long the pipeline waits for more raw records after a short batch.
const LINGER: Duration = Duration::from_millis(10);

/// The dead-letter queue of the pipeline.
pub const DLQ: &str = "pipeline";

/// Where to start reading the raw log: after the last raw offset that reached the processed
/// log, or the committed offset, whichever is further.
pub fn resume_offset(
    raw: &Log,
    processed: &Log,
    offsets: &OffsetStore,
) -> Result<Offset, LogError> {
    let committed = offsets.load(&consumer())?.unwrap_or(Offset(0));
    let head = processed.head().next;
    let last_origin = if head.0 > 0 {
        processed
            .reader(Offset(head.0 - 1))
            .read_batch(1)?
            .first()
            .and_then(|r| r.meta.origin)
            .map(Offset::next)
    } else {
        None
    };
    Ok(committed
        .max(last_origin.unwrap_or(Offset(0)))
        .max(raw.oldest()))
}

/// One event on its way through a chain.
struct Item {
    /// Index of the raw record it came from in the batch.
    raw: usize,
    payload: Vec<u8>,
}

/// What one raw record became.
#[derive(Default)]
struct Produced {
    records: Vec<EncodedRecord>,
    dead: Vec<DeadLetter>,
}

pub struct Pipeline {
    pub reader: LogReader,
    pub processed: Appender,
    pub offsets: Arc<OffsetStore>,
    pub dlq: Arc<Dlq>,
    pub chains: HashMap<SourceId, Vec<Arc<PluginSlot>>>,
    pub metrics: Arc<PluginMetrics>,
    pub batch_size: usize,
}

impl Pipeline {
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("weir-pipeline".into())
            .spawn(move || self.run(&stop))
    }

    fn run(&mut self, stop: &AtomicBool) {
        // The offset to commit, and when it last was. Committing costs two fsyncs (temp file,
        // directory) on the disk the raw log's acks wait on, so it is skipped while the
        // processed log itself says where to resume (`resume_offset`): whenever the last raw
        // record of a batch left a processed record. It is committed when that is not so (the
        // batch ended in dead letters), at least every `OFFSET_COMMIT_EVERY` for retention, and
        // when the pipeline goes idle or stops.
        let mut pending: Option<Offset> = None;
        let mut committed_at = Instant::now();
        let commit = |next: Offset| {
            if let Err(e) = self.offsets.commit(&consumer(), next) {
                tracing::warn!(error = %e, "cannot commit the pipeline's offset; it resumes from the processed log");
            }
        };
        // On stop the current batch is finished; what is left is read at the next start.
        while !stop.load(Ordering::Acquire) {
            let batch = match self.reader.read_batch(self.batch_size) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "the pipeline cannot read the raw log");
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let mut batch = batch;
            if !batch.is_empty() && batch.len() < self.batch_size {
                // A short batch means the pipeline keeps up with ingest: linger a moment so one
                // processed-log fsync covers several raw-log fsyncs. The two logs share a disk,
                // and every fsync here delays the acks waiting on the raw log's.
                std::thread::sleep(LINGER);
                match self.reader.read_batch(self.batch_size - batch.len()) {
                    Ok(more) => batch.extend(more),
                    Err(e) => tracing::warn!(error = %e, "the pipeline cannot read the raw log"),
                }
            }
            let Some(last) = batch.last().map(|r| r.offset) else {
                if let Some(next) = pending.take() {
                    commit(next);
                    committed_at = Instant::now();
                }
                let pos = self.reader.position();
                self.reader
                    .shared()
                    .wait_beyond(pos, Duration::from_millis(100));
                continue;
            };
            let produced = self.process(&batch);
            let tail_in_processed_log = produced.last().is_some_and(|p| !p.records.is_empty());
            if !self.write(produced, stop) {
                break;
            }
            pending = Some(last.next());
            if !tail_in_processed_log || committed_at.elapsed() >= OFFSET_COMMIT_EVERY {
                commit(last.next());
                pending = None;
                committed_at = Instant::now();
            }
        }
        if let Some(next) = pending {
            commit(next);
        }
    }

    /// Writes dead letters, then processed records, retrying until both are durable. False if
    /// told to stop first (the batch is redone at the next start).
    fn write(&self, produced: Vec<Produced>, stop: &AtomicBool) -> bool {
        let mut dead = Vec::new();
        let mut records = Vec::new();
        for p in produced {
            dead.extend(p.dead);
            records.extend(p.records);
        }
        let n_dead = dead.len() as u64;
        let n_records = records.len() as u64;
        let mut dead = Some(dead);
        let mut records = Some(records);
        loop {
            if let Some(d) = &dead {
                match self.dlq.push_blocking(d) {
                    Ok(()) => dead = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the pipeline's dead-letter queue; retrying")
                    }
                }
            }
            if dead.is_none()
                && let Some(r) = records.take()
            {
                if r.is_empty() {
                    break;
                }
                // Keep a copy for a retry: encoded records are consumed by the append.
                let copy = r.clone();
                match self.processed.append_blocking(r) {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the processed log; retrying");
                        records = Some(copy);
                    }
                }
            }
            if stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let stage = |s: &str| StageLabels {
            stage: s.to_owned(),
        };
        self.metrics
            .pipeline_events
            .get_or_create(&stage("processed"))
            .inc_by(n_records);
        if n_dead > 0 {
            self.metrics
                .dead_lettered
                .get_or_create(&stage(DLQ))
                .inc_by(n_dead);
        }
        true
    }

    /// Runs each source's chain over its events; returns what each raw record became, in
    /// raw order.
    fn process(&self, batch: &[Record]) -> Vec<Produced> {
        let mut produced: Vec<Produced> = (0..batch.len()).map(|_| Produced::default()).collect();
        let mut by_source: HashMap<&SourceId, Vec<usize>> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            // Invalid records stay in the raw log for inspection; they are not events.
            if r.meta.kind == RecordKind::Event {
                by_source.entry(&r.meta.source).or_default().push(i);
            }
        }
        for (source, indexes) in by_source {
            let mut items: Vec<Item> = indexes
                .iter()
                .map(|&i| Item {
                    raw: i,
                    payload: batch[i].payload.to_vec(),
                })
                .collect();
            for slot in self
                .chains
                .get(source)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                items = self.run_stage(slot, items, batch, &mut produced);
            }
            for item in items {
                let r = &batch[item.raw];
                match event_record(&item.payload, r, RecordKind::Event) {
                    Ok(rec) => produced[item.raw].records.push(rec),
                    Err(e) => produced[item.raw].dead.push(dead_letter(r, None, &e)),
                }
            }
        }
        produced
    }

    /// One plugin over the items; returns the items that go on.
    fn run_stage(
        &self,
        slot: &PluginSlot,
        items: Vec<Item>,
        batch: &[Record],
        produced: &mut [Produced],
    ) -> Vec<Item> {
        if items.is_empty() {
            return items;
        }
        // One version for the whole batch: a swap takes effect at the next batch.
        let version = slot.active();
        let events: Vec<Event> = items
            .iter()
            .map(|item| Event {
                payload: item.payload.clone(),
                source: batch[item.raw].meta.source.as_str().to_owned(),
                offset: batch[item.raw].offset.0,
            })
            .collect();
        let results = run_isolated(&version, &events);
        let mut next = Vec::with_capacity(items.len());
        let mut failed = 0u64;
        for (item, result) in items.into_iter().zip(results) {
            let raw = &batch[item.raw];
            let fail = |error: String, produced: &mut [Produced]| {
                produced[item.raw]
                    .dead
                    .push(dead_letter(raw, Some(&version), &error));
            };
            let outcome_label = |o: &'static str| OutcomeLabels {
                plugin: version.plugin.clone(),
                version: version.version.to_string(),
                outcome: o,
            };
            match result {
                EventResult::Outcome(Outcome::Keep(payload)) => {
                    self.metrics
                        .outcomes
                        .get_or_create(&outcome_label("keep"))
                        .inc();
                    match check_kept(&item.payload, &payload) {
                        Ok(()) => next.push(Item {
                            raw: item.raw,
                            payload,
                        }),
                        Err(e) => {
                            failed += 1;
                            fail(format!("{}: keep: {e}", version.plugin), produced);
                        }
                    }
                }
                EventResult::Outcome(Outcome::Drop(reason)) => {
                    self.metrics
                        .outcomes
                        .get_or_create(&outcome_label("drop"))
                        .inc();
                    match dropped_record(raw, &version, &reason, &item.payload) {
                        Ok(rec) => produced[item.raw].records.push(rec),
                        Err(e) => fail(e, produced),
                    }
                }
                EventResult::Outcome(Outcome::Fail(error)) => {
                    self.metrics
                        .outcomes
                        .get_or_create(&outcome_label("fail"))
                        .inc();
                    failed += 1;
                    fail(error, produced);
                }
                EventResult::Outcome(Outcome::Expand(payloads)) => {
                    self.metrics
                        .outcomes
                        .get_or_create(&outcome_label("expand"))
                        .inc();
                    if version.kind == PluginKind::Filter {
                        failed += 1;
                        fail(
                            format!(
                                "{}: a filter may keep, drop or fail events, not expand them",
                                version.plugin
                            ),
                            produced,
                        );
                        continue;
                    }
                    match expand(&item.payload, payloads, raw.offset) {
                        Ok(outputs) if outputs.is_empty() => {
                            match dropped_record(
                                raw,
                                &version,
                                "expanded into no events",
                                &item.payload,
                            ) {
                                Ok(rec) => produced[item.raw].records.push(rec),
                                Err(e) => fail(e, produced),
                            }
                        }
                        Ok(outputs) => next.extend(outputs.into_iter().map(|payload| Item {
                            raw: item.raw,
                            payload,
                        })),
                        Err(e) => {
                            failed += 1;
                            fail(format!("{}: expand: {e}", version.plugin), produced);
                        }
                    }
                }
                EventResult::Failed(error) => {
                    failed += 1;
                    fail(error, produced);
                }
            }
        }
        slot.report(&version, events.len() as u64, failed);
        next
    }
}

/// Gives the i-th expanded event the id `{messageId}:{i}`.
fn expand(input: &[u8], outputs: Vec<Vec<u8>>, raw_offset: Offset) -> Result<Vec<Vec<u8>>, String> {
    let base = std::str::from_utf8(input)
        .ok()
        .and_then(|t| RawObject::parse(t).ok())
        .and_then(|o| {
            o.get_str("messageId")
                .ok()
                .flatten()
                .map(|s| s.into_owned())
        })
        .unwrap_or_else(|| format!("offset-{}", raw_offset.0));
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let text =
                std::str::from_utf8(&bytes).map_err(|_| format!("event {i} is not UTF-8"))?;
            let mut obj = RawObject::parse(text)
                .map_err(|e| format!("event {i} is not a JSON object ({e})"))?;
            obj.set("messageId", json_string(&format!("{base}:{i}")));
            let mut out = Vec::with_capacity(bytes.len() + 8);
            obj.write_to(&mut out);
            Ok(out)
        })
        .collect()
}

fn event_record(payload: &[u8], raw: &Record, kind: RecordKind) -> Result<EncodedRecord, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the event is not UTF-8".to_string())?;
    let obj =
        RawObject::parse(text).map_err(|e| format!("the event is not a JSON object ({e})"))?;
    let meta = Header::of(&obj).record_meta(
        kind,
        raw.meta.source.clone(),
        raw.meta.received_at_ms,
        Some(raw.offset),
    );
    Ok(record::encode(&meta, payload))
}

fn dropped_record(
    raw: &Record,
    version: &LoadedVersion,
    reason: &str,
    event: &[u8],
) -> Result<EncodedRecord, String> {
    let text = std::str::from_utf8(event).map_err(|_| "the event is not UTF-8".to_string())?;
    let obj =
        RawObject::parse(text).map_err(|e| format!("the event is not a JSON object ({e})"))?;
    let mut meta = Header::of(&obj).record_meta(
        RecordKind::Dropped,
        raw.meta.source.clone(),
        raw.meta.received_at_ms,
        Some(raw.offset),
    );
    meta.dedupe_key = 0;
    let payload = format!(
        r#"{{"plugin":{},"version":{},"reason":{},"event":{text}}}"#,
        json_string(&version.plugin),
        json_string(&version.version.to_string()),
        json_string(reason)
    );
    Ok(record::encode(&meta, payload.as_bytes()))
}

fn dead_letter(raw: &Record, version: Option<&LoadedVersion>, error: &str) -> DeadLetter {
    DeadLetter::new(DLQ, raw, version, error)
}
