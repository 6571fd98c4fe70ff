//! Batch mode: loading the processed log into a warehouse in the Segment / RudderStack layout.
//!
//! Each warehouse is a consumer of the processed log with its own position, kept in the
//! warehouse itself (`_weir.loads`) and written in the same transaction as the rows: a crash
//! mid-load neither loses nor duplicates a row, and rows are deduplicated on `id` too. Loads
//! happen every `flush_interval` or `flush_events`, whichever comes first. A warehouse that is
//! down (PostgreSQL refusing connections, a DuckDB file held by another process) makes the
//! loader wait and retry with backoff; the events wait in the log.

pub mod duckdb;
pub mod json;
pub mod loaded_ids;
pub mod loader;
pub mod postgres;
pub mod schema;
pub mod sql;
pub mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loader::{Loader, WarehouseError};
use schema::{Caps, Catalog, Mapper, SchemaLoad};

use crate::dlq::{DeadLetter, Dlq};
use crate::event::check_kept;
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::{OffsetStore, Record, RecordKind, Shared};
use crate::plugin::bindings::types::{Event, Outcome};
use crate::plugin::isolate::{EventResult, run_isolated};
use crate::plugin::registry::PluginSlot;
use crate::telemetry::{OutcomeLabels, WarehouseLabels, WarehouseMetrics};
use crate::timestamp;

/// The engine of a warehouse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A DuckDB file (default: `<data_dir>/<name>.duckdb`).
    DuckDb { path: Option<PathBuf> },
    /// A PostgreSQL database, by connection URL (`postgres://user@host:5432/db`).
    Postgres { url: String },
}

/// A warehouse as configured.
#[derive(Clone, Debug)]
pub struct WarehouseSpec {
    pub name: String,
    pub engine: Engine,
    pub sources: Vec<SourceId>,
    pub flush_interval: Duration,
    pub flush_events: usize,
    pub max_tables: usize,
    pub max_columns: usize,
    /// A new warehouse loads the whole processed log still kept, instead of starting at its head.
    pub backfill: bool,
    /// Filter plugins run on this warehouse's events only (consent, say), in order.
    pub filters: Vec<String>,
}

impl WarehouseSpec {
    pub fn consumer(&self) -> ConsumerId {
        ConsumerId::new(&self.stage())
    }

    /// The stage name (`warehouse:<name>`): its consumer id and dead-letter queue.
    pub fn stage(&self) -> String {
        format!("warehouse:{}", self.name)
    }

    /// The database schema of each source: its name in snake_case.
    pub fn schemas(&self) -> Vec<String> {
        self.sources.iter().map(schema_name).collect()
    }

    /// The DuckDB file of this warehouse, if it is a DuckDB one.
    pub fn duckdb_path(&self, data_dir: &std::path::Path) -> Option<PathBuf> {
        match &self.engine {
            Engine::DuckDb { path } => Some(
                path.clone()
                    .unwrap_or_else(|| data_dir.join(format!("{}.duckdb", self.name))),
            ),
            Engine::Postgres { .. } => None,
        }
    }

    pub fn loader(&self, data_dir: &std::path::Path) -> Result<Box<dyn Loader>, WarehouseError> {
        Ok(match &self.engine {
            Engine::DuckDb { .. } => Box::new(duckdb::DuckDbLoader::new(
                self.duckdb_path(data_dir).unwrap_or_default(),
                &self.name,
            )),
            Engine::Postgres { url } => Box::new(postgres::PostgresLoader::new(url, &self.name)?),
        })
    }

    fn identifier_limit(&self) -> usize {
        match self.engine {
            Engine::Postgres { .. } => 63,
            Engine::DuckDb { .. } => 255,
        }
    }
}

pub fn schema_name(source: &SourceId) -> String {
    let s = schema::snake_case(source.as_str());
    if s.is_empty() { "source".into() } else { s }
}

/// Loads one warehouse from the processed log.
pub struct WarehouseLoader {
    pub spec: WarehouseSpec,
    pub log: Arc<Shared>,
    /// The processed log's consumer offsets: committed after each load so retention knows.
    pub offsets: Arc<OffsetStore>,
    pub metrics: Arc<WarehouseMetrics>,
    pub data_dir: PathBuf,
    /// The warehouse's own filter chain.
    pub filters: Vec<Arc<PluginSlot>>,
    /// Events a filter fails, and events the warehouse refuses a value of.
    pub dlq: Arc<Dlq>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A batch ready to load: its rows per schema and the log offset after its last record.
struct Prepared {
    loads: Vec<SchemaLoad>,
    next: Offset,
    /// When its preparation started (the `load_seconds` metric covers both stages).
    started: Instant,
}

impl WarehouseLoader {
    pub fn spawn(self, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("weir-warehouse-{}", self.spec.name))
            .spawn(move || self.run(&stop))
    }

    fn labels(&self) -> WarehouseLabels {
        WarehouseLabels {
            warehouse: self.spec.name.clone(),
        }
    }

    fn run(self, stop: &AtomicBool) {
        let mut loader = match self.spec.loader(&self.data_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(warehouse = %self.spec.name, error = %e, "cannot set up the warehouse loader");
                return;
            }
        };
        let mut backoff = Duration::from_millis(200);
        while !stop.load(Ordering::Acquire) {
            let result = match self.session(loader.as_mut(), stop) {
                Err(WarehouseError::Refused(reason)) => {
                    tracing::warn!(warehouse = %self.spec.name, %reason, "the warehouse refused a value; finding the events at fault");
                    self.isolate(loader.as_mut()).map(|()| false)
                }
                other => other.map(|()| true),
            };
            match result {
                Ok(true) => return,
                Ok(false) => backoff = Duration::from_millis(200),
                Err(e) => {
                    self.metrics.failures.get_or_create(&self.labels()).inc();
                    tracing::warn!(
                        warehouse = %self.spec.name,
                        error = %e,
                        retry_in = ?backoff,
                        "warehouse load failed; the events stay in the log and the load is retried"
                    );
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Opens the warehouse and loads until stopped (`Ok`) or a load fails (`Err`: the caller
    /// retries, from the warehouse's recorded offset).
    fn session(&self, loader: &mut dyn Loader, stop: &AtomicBool) -> Result<(), WarehouseError> {
        let (mut catalog, committed) = loader.open(&self.spec.schemas())?;
        let consumer = self.spec.consumer();
        let mut reader = self.log.reader(self.start(committed));
        // Two stages on two threads, so that mapping the next batch overlaps loading this one
        // (on 2 cores, the warehouse's own work and ours): a batch is prepared (read, filtered,
        // mapped) while the one before it loads. Loads stay one at a time and in log order, each
        // committing its offset, so a failed load restarts the session from what is committed
        // and the batch prepared meanwhile is thrown away.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, WarehouseError>>(1);
        // Loaded batches go back to the preparer to be freed there: freeing a batch's cells
        // (a string per text value) was ~40% of the loading thread's own CPU in a profile (the
        // loading stage is the slower of the two), and the allocator frees fastest on the
        // thread that allocated.
        let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Vec<SchemaLoad>>(1);
        let abort = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let preparer = std::thread::Builder::new()
                .name(format!("weir-warehouse-{}-map", self.spec.name))
                .spawn_scoped(scope, || {
                    // Owned here, so the channel closes when this stage ends.
                    let (tx, spent_rx) = (tx, spent_rx);
                    while !stop.load(Ordering::Acquire) && !abort.load(Ordering::Acquire) {
                        while let Ok(spent) = spent_rx.try_recv() {
                            drop(spent);
                        }
                        let prepared = match self.prepare(&mut reader, &mut catalog, stop) {
                            Ok(Some(p)) => Ok(p),
                            Ok(None) => continue,
                            Err(e) => Err(e),
                        };
                        let failed = prepared.is_err();
                        if tx.send(prepared).is_err() || failed {
                            return;
                        }
                    }
                });
            if let Err(e) = preparer {
                return Err(WarehouseError::Load(format!(
                    "cannot start the mapping thread: {e}"
                )));
            }
            let result = self.load_prepared(loader, &consumer, &rx, &spent_tx);
            abort.store(true, Ordering::Release);
            // Unblocks a preparer waiting to hand over its batch.
            drop(rx);
            result
        })
    }

    /// The loading stage: loads the prepared batches in order until the preparer stops.
    fn load_prepared(
        &self,
        loader: &mut dyn Loader,
        consumer: &ConsumerId,
        rx: &std::sync::mpsc::Receiver<Result<Prepared, WarehouseError>>,
        spent: &std::sync::mpsc::SyncSender<Vec<SchemaLoad>>,
    ) -> Result<(), WarehouseError> {
        // The preparer stops (and the channel closes) when the router stops.
        while let Some(prepared) = next_prepared(rx, loader) {
            let Prepared {
                loads,
                next,
                started,
            } = prepared?;
            let stats = loader.load(&loads, next)?;
            // Freed here only when the preparer has not taken the last one yet.
            let _ = spent.try_send(loads);
            if let Err(e) = self.offsets.commit(consumer, next) {
                tracing::warn!(error = %e, "cannot record the warehouse's offset for retention");
            }
            let l = self.labels();
            self.metrics.rows.get_or_create(&l).inc_by(stats.rows);
            self.metrics
                .discards
                .get_or_create(&l)
                .inc_by(stats.discards);
            self.metrics
                .load_seconds
                .get_or_create(&l)
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .lag
                .get_or_create(&l)
                .set(self.log.head().next.0.saturating_sub(next.0) as i64);
            tracing::debug!(warehouse = %self.spec.name, rows = stats.rows, discards = stats.discards, next = next.0, "loaded");
        }
        Ok(())
    }

    /// The preparing stage for one batch: reads it, runs the filters (dead letters are durable
    /// before the load that skips their events commits) and maps it. `None` when nothing came.
    fn prepare(
        &self,
        reader: &mut crate::log::LogReader,
        catalog: &mut Catalog,
        stop: &AtomicBool,
    ) -> Result<Option<Prepared>, WarehouseError> {
        let (records, next) = self.collect(reader, stop)?;
        let Some(next) = next else { return Ok(None) };
        let started = Instant::now();
        let mine = self.mine(&records);
        let (events, dead) = self.filter(mine);
        self.dead_letter(&dead)?;
        let loads = self.map(catalog, &events);
        Ok(Some(Prepared {
            loads,
            next,
            started,
        }))
    }

    /// The events of `records` from the sources this warehouse takes.
    fn mine<'r>(&self, records: &'r [Record]) -> Vec<&'r Record> {
        // A warehouse takes a handful of sources: a scan of the list is all it needs.
        records
            .iter()
            .filter(|r| {
                r.meta.kind == RecordKind::Event && self.spec.sources.contains(&r.meta.source)
            })
            .collect()
    }

    fn oldest(&self) -> Offset {
        self.log.oldest()
    }

    /// Makes `dead` durable in the warehouse's dead-letter queue.
    fn dead_letter(&self, dead: &[DeadLetter]) -> Result<(), WarehouseError> {
        if dead.is_empty() {
            return Ok(());
        }
        self.dlq
            .push_blocking(dead)
            .map_err(|e| WarehouseError::Load(format!("cannot write the dead-letter queue: {e}")))
    }

    /// Where loading resumes: the warehouse's own record wins; a warehouse that never loaded
    /// starts where the router placed it when it was added (see `app`).
    fn start(&self, committed: Option<Offset>) -> Offset {
        match committed {
            Some(o) => o,
            None => self
                .offsets
                .load(&self.spec.consumer())
                .ok()
                .flatten()
                .unwrap_or(self.oldest()),
        }
        .max(self.oldest())
    }

    /// After the warehouse refused a load for a value in it (`WarehouseError::Refused`):
    /// loads the next batch in halves, down to single events, dead-letters each event refused
    /// on its own (with the warehouse's reason), and records the offset after the batch. Every
    /// part is a load of its own that leaves the recorded offset where it was, so a crash
    /// in between loads the batch again from the start (rows dedupe on `id`); the dead letters
    /// are durable before the offset moves past them.
    fn isolate(&self, loader: &mut dyn Loader) -> Result<(), WarehouseError> {
        let (_, committed) = loader.open(&self.spec.schemas())?;
        let start = self.start(committed);
        let mut reader = self.log.reader(start);
        let records = reader
            .read_batch(self.spec.flush_events)
            .map_err(|e| WarehouseError::Load(format!("reading the processed log: {e}")))?;
        if records.is_empty() {
            return Ok(());
        }
        let next = reader.position();
        let mine = self.mine(&records);
        // The filters run again: an event a filter failed in the refused batch may be
        // dead-lettered a second time (at least once, like every dead letter).
        let (events, mut dead) = self.filter(mine);
        let filtered = dead.len();
        let rows = self.bisect(loader, &events, start, &mut dead)?;
        self.dead_letter(&dead)?;
        loader.load(&[], next)?;
        if let Err(e) = self.offsets.commit(&self.spec.consumer(), next) {
            tracing::warn!(error = %e, "cannot record the warehouse's offset for retention");
        }
        self.metrics.rows.get_or_create(&self.labels()).inc_by(rows);
        tracing::warn!(
            warehouse = %self.spec.name,
            refused = dead.len() - filtered,
            rows,
            "events the warehouse refused on their own are in its dead-letter queue; the rest of the batch is loaded"
        );
        Ok(())
    }

    /// Loads `events` (recording offset `at`, unchanged), in halves when the warehouse refuses
    /// a value; an event refused on its own goes to `dead`. Returns the rows loaded.
    fn bisect(
        &self,
        loader: &mut dyn Loader,
        events: &[(&Record, Bytes)],
        at: Offset,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, WarehouseError> {
        if events.is_empty() {
            return Ok(0);
        }
        // Opened again for every part: the catalog must not hold the tables and columns of a
        // part the warehouse rolled back.
        let (mut catalog, _) = loader.open(&self.spec.schemas())?;
        let loads = self.map(&mut catalog, events);
        match loader.load(&loads, at) {
            Ok(stats) => Ok(stats.rows),
            Err(WarehouseError::Refused(reason)) if events.len() == 1 => {
                let (record, _) = &events[0];
                dead.push(DeadLetter::new(
                    &self.spec.stage(),
                    record,
                    None,
                    &format!("the warehouse refused it: {reason}"),
                ));
                Ok(0)
            }
            Err(WarehouseError::Refused(_)) => {
                let (a, b) = events.split_at(events.len() / 2);
                Ok(self.bisect(loader, a, at, dead)? + self.bisect(loader, b, at, dead)?)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads until `flush_events` records or `flush_interval` after the first; returns the
    /// records and the offset after the last one (`None` when nothing came).
    fn collect(
        &self,
        reader: &mut crate::log::LogReader,
        stop: &AtomicBool,
    ) -> Result<(Vec<crate::log::Record>, Option<Offset>), WarehouseError> {
        let mut records = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let room = self.spec.flush_events.saturating_sub(records.len()).max(1);
            let batch = reader
                .read_batch(room.min(2_000))
                .map_err(|e| WarehouseError::Load(format!("reading the processed log: {e}")))?;
            if !batch.is_empty() {
                first_at.get_or_insert_with(Instant::now);
                records.extend(batch);
            }
            let due = first_at.is_some_and(|t| t.elapsed() >= self.spec.flush_interval);
            if records.len() >= self.spec.flush_events || due || stop.load(Ordering::Acquire) {
                break;
            }
            let wait = match first_at {
                Some(t) => self.spec.flush_interval.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            };
            self.log
                .wait_beyond(reader.position(), wait.min(Duration::from_millis(200)));
            if first_at.is_none() {
                return Ok((records, None));
            }
        }
        let next = (!records.is_empty()).then(|| reader.position());
        Ok((records, next))
    }

    /// Runs the warehouse's filters; returns the events to load (as the filters left them) and
    /// the dead letters of the events a filter failed on.
    fn filter<'r>(&self, records: Vec<&'r Record>) -> (Vec<(&'r Record, Bytes)>, Vec<DeadLetter>) {
        // Shared, not copied: with no filter (the usual case) the payloads go to the mapper as
        // the log read them.
        let mut items: Vec<(&Record, Bytes)> = records
            .into_iter()
            .map(|r| (r, r.payload.clone()))
            .collect();
        let mut dead = Vec::new();
        let stage = self.spec.stage();
        for slot in &self.filters {
            if items.is_empty() {
                break;
            }
            let version = slot.active();
            let events: Vec<Event> = items
                .iter()
                .map(|(r, payload)| Event {
                    payload: payload.to_vec(),
                    source: r.meta.source.as_str().to_owned(),
                    offset: r.offset.0,
                })
                .collect();
            let results = run_isolated(&version, &events);
            let mut next = Vec::with_capacity(items.len());
            let mut failed = 0;
            let count = |outcome: &'static str| {
                version
                    .metrics()
                    .outcomes
                    .get_or_create(&OutcomeLabels {
                        plugin: version.plugin.clone(),
                        version: version.version.to_string(),
                        outcome,
                    })
                    .inc();
            };
            for ((r, input), result) in items.into_iter().zip(results) {
                let error = match result {
                    EventResult::Outcome(Outcome::Keep(payload)) => {
                        count("keep");
                        match check_kept(&input, &payload) {
                            Ok(()) => {
                                next.push((r, Bytes::from(payload)));
                                continue;
                            }
                            Err(e) => format!("{}: keep: {e}", version.plugin),
                        }
                    }
                    EventResult::Outcome(Outcome::Drop(reason)) => {
                        count("drop");
                        tracing::debug!(warehouse = %self.spec.name, plugin = %version.plugin, %reason, offset = r.offset.0, "event not loaded");
                        continue;
                    }
                    EventResult::Outcome(Outcome::Fail(e)) => {
                        count("fail");
                        e
                    }
                    EventResult::Outcome(Outcome::Expand(_)) => format!(
                        "{}: a filter may keep, drop or fail events, not expand them",
                        version.plugin
                    ),
                    EventResult::Failed(e) => e,
                };
                failed += 1;
                dead.push(DeadLetter::new(&stage, r, Some(&version), &error));
            }
            slot.report(&version, events.len() as u64, failed);
            items = next;
        }
        (items, dead)
    }

    fn map(&self, catalog: &mut Catalog, events: &[(&Record, Bytes)]) -> Vec<SchemaLoad> {
        let mut loads: BTreeMap<String, SchemaLoad> = BTreeMap::new();
        let mut mapper = Mapper::new(
            catalog,
            Caps {
                max_tables: self.spec.max_tables,
                max_columns: self.spec.max_columns,
                identifier_limit: self.spec.identifier_limit(),
            },
            timestamp::now(),
        );
        for (r, payload) in events {
            let Ok(json::Json::Object(event)) = json::Json::parse(payload) else {
                continue;
            };
            let schema = schema_name(&r.meta.source);
            let load = loads.entry(schema.clone()).or_insert_with(|| SchemaLoad {
                schema,
                ..SchemaLoad::default()
            });
            mapper.add(load, event);
        }
        for load in loads.values_mut() {
            mapper.prepare_users(load);
        }
        loads.into_values().collect()
    }
}

/// The next prepared batch, `None` once the preparer has stopped. When none is waiting, the
/// loader idles first (DuckDB lets go of its file until the batch comes).
fn next_prepared(
    rx: &std::sync::mpsc::Receiver<Result<Prepared, WarehouseError>>,
    loader: &mut dyn Loader,
) -> Option<Result<Prepared, WarehouseError>> {
    match rx.try_recv() {
        Ok(prepared) => Some(prepared),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
        Err(std::sync::mpsc::TryRecvError::Empty) => {
            loader.idle();
            rx.recv().ok()
        }
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}
