//! Warehouse batch mode: events/s from the processed log to committed warehouse rows, next to
//! the baseline that bounds it, measured in the same run (STYLE.md):
//!
//! - **weir, end to end**: the production `WarehouseLoader` thread, started on a processed log
//!   that already holds the whole workload, timed from its start until the offset it commits
//!   after each load reaches the log's head. Everything production does is in it: reading and
//!   decoding the log, parsing each payload, flattening, type checks, staging, dedupe on `id`,
//!   the `users` rows, and the offset in `_weir.loads` in the load's transaction.
//! - **raw baseline**: the same events mapped by the same `Mapper` (not timed), and only their
//!   typed rows written, straight into tables created by the same DDL in a fresh database:
//!   PostgreSQL with one binary `COPY` per table (weir's own encoder,
//!   `warehouse::postgres::copy_rows`, so the baseline gains whatever weir's COPY does), DuckDB with one appender per table (into the
//!   `TIMESTAMPTZ` columns directly, as microseconds), one transaction per flush batch. No
//!   staging table, no dedupe, no offsets, no `users`; DuckDB's time includes a final
//!   `CHECKPOINT`, since weir closes (and so checkpoints) the file after every load.
//! - **weir by phase**: the loop of `WarehouseLoader::session` replayed here with a clock around
//!   each phase (read the log, parse, map, `Loader::load`) into a third fresh warehouse, to show
//!   where the time goes. Its total should be close to the end-to-end time.
//!
//! The workload: Segment-spec events as the gateway stores them (run through
//! `gateway::normalize`: `receivedAt`, `sentAt`, corrected `timestamp`, `context.ip`...),
//! ~70% track of five event names with ~8 properties, ~15% identify with 6 traits, ~10% page,
//! ~5% screen, group and alias; unique messageIds, ~20k users; ~3% of the events an hour late
//! (older `timestamp` than the ones around them). Flush batches of 10k events (the default
//! `flush_events`).
//!
//! `cargo bench -p weir --bench warehouse`. Needs PostgreSQL at 127.0.0.1:5432 (user postgres,
//! trust); each run creates its databases (`weir_bench_<random>_*`) and drops them. Environment:
//! - `WEIR_BENCH_EVENTS`: events per run (default 150000, rounded up to whole flush batches);
//! - `WEIR_BENCH_ONLY`: `postgres` or `duckdb`;
//! - `WEIR_BENCH_PG`: the PostgreSQL server (default `host=127.0.0.1 port=5432 user=postgres`);
//! - `WEIR_BENCH_DIR`: where the temp dirs go (default: cargo's target/tmp, on the project's
//!   disk; /tmp may be a tmpfs where fsync costs nothing).
//!
//! Timings are wall clock on a shared machine: the run prints the load average before and after;
//! compare the ratios of one run, and repeat a run whose figures look off.

#[path = "common/processed_log.rs"]
mod processed_log;
#[path = "common/rng.rs"]
mod rng;

// The allocator of the `weir` binary (host/src/main.rs), so the loader runs here as it runs in
// production; the raw baseline runs on it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use weir::warehouse::json::{Json, Object};

use weir::config::DlqConfig;
use weir::dlq::Dlq;
use weir::ids::{ConsumerId, Offset, SourceId};
use weir::log::storage::FsStorage;
use weir::log::{Log, LogOptions, LogReader, OffsetStore, Record, RecordKind};
use weir::telemetry::{Metrics, WarehouseLabels};
use weir::timestamp;
use weir::warehouse::schema::{Caps, Catalog, Mapper, SchemaLoad};
use weir::warehouse::{Engine, WarehouseLoader, WarehouseSpec, schema_name};

const DEFAULT_EVENTS: usize = 150_000;
/// The default `flush_events`: a load every 10k events when the log is ahead.
const FLUSH_EVENTS: usize = 10_000;
/// Records `WarehouseLoader::collect` asks the log for at a time.
const READ_CHUNK: usize = 2_000;
/// The default `flush_interval`; never reached here, since every batch is full at once.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// The default caps.
const MAX_TABLES: usize = 500;
const MAX_COLUMNS: usize = 1_000;
const SOURCE: &str = "web";
const WAREHOUSE: &str = "bench";
const DEFAULT_PG: &str = "host=127.0.0.1 port=5432 user=postgres";
/// An end-to-end run slower than this is reported as stuck.
const MAX_RUN: Duration = Duration::from_secs(600);

/// Targets on this machine kind (2 cores), from the issue.
const TARGET_PG_EVENTS: f64 = 50_000.0;
const TARGET_DUCKDB_EVENTS: f64 = 100_000.0;
const TARGET_RAW_SHARE: f64 = 0.5;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warehouse bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    events: usize,
    only: Option<Kind>,
    pg: String,
    base_dir: PathBuf,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let events = match std::env::var("WEIR_BENCH_EVENTS") {
            Ok(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("WEIR_BENCH_EVENTS={s}: expected a positive integer"))?,
            Err(_) => DEFAULT_EVENTS,
        };
        let only = match std::env::var("WEIR_BENCH_ONLY").as_deref() {
            Err(_) | Ok("") => None,
            Ok("postgres") => Some(Kind::Postgres),
            Ok("duckdb") => Some(Kind::DuckDb),
            Ok(other) => bail!("WEIR_BENCH_ONLY={other}: expected postgres or duckdb"),
        };
        let base_dir = std::env::var_os("WEIR_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        std::fs::create_dir_all(&base_dir)
            .with_context(|| format!("cannot create {}", base_dir.display()))?;
        Ok(Settings {
            // Whole batches only: a partial last batch would wait `flush_interval` in production.
            events: events.div_ceil(FLUSH_EVENTS) * FLUSH_EVENTS,
            only,
            pg: std::env::var("WEIR_BENCH_PG").unwrap_or_else(|_| DEFAULT_PG.to_owned()),
            base_dir,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Postgres,
    DuckDb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::DuckDb => "DuckDB",
        }
    }

    fn baseline(self) -> &'static str {
        match self {
            Kind::Postgres => "raw binary COPY",
            Kind::DuckDb => "raw appender",
        }
    }

    fn target(self) -> f64 {
        match self {
            Kind::Postgres => TARGET_PG_EVENTS,
            Kind::DuckDb => TARGET_DUCKDB_EVENTS,
        }
    }

    /// As `WarehouseSpec::identifier_limit` (private) has it.
    fn identifier_limit(self) -> usize {
        match self {
            Kind::Postgres => 63,
            Kind::DuckDb => 255,
        }
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = load_average();
    let dir = tempfile::Builder::new()
        .prefix("weir-warehouse-bench-")
        .tempdir_in(&settings.base_dir)
        .context("cannot create the bench's temp dir")?;

    let workload = workload::generate(settings.events)?;
    let log = workload.write_log(&dir.path().join("processed"))?;
    let head = log.shared().head().next;
    println!(
        "weir warehouse bench: {} events ({}), ~{:.0} B each as sent, {:.0} B as the processed \
         log holds them; flush batches of {FLUSH_EVENTS}",
        settings.events,
        workload.tally.describe(),
        workload.sent_bytes as f64 / settings.events as f64,
        workload.payload_bytes as f64 / settings.events as f64,
    );
    println!("machine: {cores} cores, load average {load_before} at start");

    let mut results = Vec::new();
    for kind in [Kind::Postgres, Kind::DuckDb] {
        if settings.only.is_some_and(|only| only != kind) {
            continue;
        }
        let mut warehouse: Box<dyn Warehouse> = match kind {
            Kind::Postgres => Box::new(pg::Server::connect(&settings.pg)?),
            Kind::DuckDb => Box::new(duck::Files::new(dir.path().join("duckdb"))),
        };
        let result = measure(
            kind,
            warehouse.as_mut(),
            &log,
            head,
            &workload.tally,
            dir.path(),
        );
        // Databases go whether the measurement worked or not.
        let cleanup = warehouse.cleanup();
        let result = result?;
        cleanup?;
        result.print();
        results.push(result);
    }
    let load_after = load_average();
    print_summary(&results, &load_before, &load_after);
    drop(log);
    Ok(())
}

/// The three runs of one engine.
fn measure(
    kind: Kind,
    warehouse: &mut dyn Warehouse,
    log: &Log,
    head: Offset,
    tally: &workload::Tally,
    dir: &Path,
) -> anyhow::Result<EngineResult> {
    println!("\n--- {} ---", kind.name());
    let raw = raw_run(kind, warehouse, log)?;
    println!(
        "  {:<16} {:>7.2} s  (rows {})",
        kind.baseline(),
        raw.elapsed.as_secs_f64(),
        raw.rows
    );
    tally
        .check(&raw.counts)
        .context("the raw baseline's rows do not match the workload")?;

    let e2e = end_to_end(kind, warehouse, log, head, dir)?;
    println!(
        "  {:<16} {:>7.2} s  (rows {})",
        "weir end to end",
        e2e.elapsed.as_secs_f64(),
        e2e.counts.values().sum::<u64>()
    );
    ensure!(
        e2e.next_offset == Some(head.0),
        "_weir.loads.next_offset is {:?}, the log's head {}",
        e2e.next_offset,
        head.0
    );
    for (table, n) in &raw.counts {
        let got = e2e.counts.get(table).copied().unwrap_or(0);
        ensure!(
            got == *n,
            "weir loaded {got} rows into {table}, the raw baseline {n}"
        );
    }
    ensure!(
        e2e.counts.get("users").copied().unwrap_or(0) == tally.users,
        "users has {:?} rows, {} users identified themselves",
        e2e.counts.get("users"),
        tally.users
    );

    let phases = phase_run(kind, warehouse, log)?;
    println!(
        "  {:<16} {:>7.2} s  (rows {})",
        "weir by phase",
        phases.total().as_secs_f64(),
        phases.rows
    );
    Ok(EngineResult {
        kind,
        events: head.0,
        raw,
        e2e,
        phases,
    })
}

/// CPU seconds, to tell the router's work from the database server's.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// This process (the loader, or the bench's baseline writer).
    own: f64,
    /// The PostgreSQL server's processes; 0 for DuckDB (embedded, so in `own`).
    server: f64,
}

impl Cpu {
    fn now(warehouse: &dyn Warehouse) -> Cpu {
        Cpu {
            own: own_cpu_seconds(),
            server: warehouse.server_cpu_seconds(),
        }
    }

    fn since(self, warehouse: &dyn Warehouse) -> Cpu {
        let now = Cpu::now(warehouse);
        Cpu {
            own: now.own - self.own,
            server: now.server - self.server,
        }
    }
}

struct RawResult {
    elapsed: Duration,
    rows: u64,
    cpu: Cpu,
    counts: BTreeMap<String, u64>,
}

/// The raw baseline: map every batch (not timed), create or widen its tables (not timed), then
/// time writing its rows.
fn raw_run(kind: Kind, warehouse: &mut dyn Warehouse, log: &Log) -> anyhow::Result<RawResult> {
    let target = warehouse.create("raw")?;
    let mut sink = warehouse.raw(&target)?;
    let mut catalog = Catalog::default();
    let mut reader = log.reader(Offset(0));
    let mut elapsed = Duration::ZERO;
    let mut rows = 0;
    let mut cpu = Cpu::default();
    loop {
        let (records, _) = next_batch(&mut reader)?;
        if records.is_empty() {
            break;
        }
        let loads = map(kind, &mut catalog, parse(&records));
        sink.ddl(&loads)?;
        let cpu_started = Cpu::now(warehouse);
        let started = Instant::now();
        rows += sink.load(&loads)?;
        elapsed += started.elapsed();
        let used = cpu_started.since(warehouse);
        cpu.own += used.own;
        cpu.server += used.server;
    }
    let cpu_started = Cpu::now(warehouse);
    let started = Instant::now();
    sink.finish()?;
    elapsed += started.elapsed();
    let used = cpu_started.since(warehouse);
    cpu.own += used.own;
    cpu.server += used.server;
    drop(sink);
    let (counts, _) = warehouse.counts(&target)?;
    Ok(RawResult {
        elapsed,
        rows,
        cpu,
        counts,
    })
}

struct EndToEnd {
    elapsed: Duration,
    cpu: Cpu,
    counts: BTreeMap<String, u64>,
    next_offset: Option<u64>,
    loads_seconds: f64,
}

fn spec(engine: Engine) -> WarehouseSpec {
    WarehouseSpec {
        name: WAREHOUSE.into(),
        engine,
        sources: vec![SourceId::new(SOURCE)],
        flush_interval: FLUSH_INTERVAL,
        flush_events: FLUSH_EVENTS,
        max_tables: MAX_TABLES,
        max_columns: MAX_COLUMNS,
        backfill: true,
        filters: Vec::new(),
    }
}

/// The production loader thread on the whole log, until its committed offset reaches the head.
fn end_to_end(
    kind: Kind,
    warehouse: &mut dyn Warehouse,
    log: &Log,
    head: Offset,
    dir: &Path,
) -> anyhow::Result<EndToEnd> {
    let engine = warehouse.create("e2e")?;
    let spec = spec(engine.clone());
    let consumer: ConsumerId = spec.consumer();
    let offsets = Arc::new(
        OffsetStore::open(
            Arc::new(FsStorage),
            &dir.join(format!("offsets-{}", kind.name())),
        )
        .context("cannot open the offset store")?,
    );
    // What `app` does for a new warehouse with `backfill`: start at the oldest record.
    offsets.commit(&consumer, log.shared().oldest())?;
    let metrics = Metrics::new();
    let labels = WarehouseLabels {
        warehouse: WAREHOUSE.into(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = Cpu::now(warehouse);
    let started = Instant::now();
    let thread = WarehouseLoader {
        spec,
        log: log.shared().clone(),
        offsets: offsets.clone(),
        metrics: metrics.warehouses.clone(),
        data_dir: dir.to_owned(),
        filters: Vec::new(),
        dlq: Arc::new(
            Dlq::open(
                dir,
                "warehouse:bench",
                Arc::new(FsStorage),
                &LogOptions {
                    segment_bytes: 8 << 20,
                    flush_interval: Duration::ZERO,
                    flush_bytes: 1 << 20,
                    max_bytes: 1 << 30,
                    queue_capacity: 64,
                    preallocate_bytes: 0,
                },
                DlqConfig::default(),
                metrics.log("dlq"),
                metrics.dlq.clone(),
            )
            .context("cannot open the dead-letter queue")?,
        ),
    }
    .spawn(stop.clone())
    .context("cannot start the warehouse loader")?;
    let outcome = loop {
        if offsets.load(&consumer)?.is_some_and(|o| o >= head) {
            break Ok(());
        }
        if metrics.warehouses.failures.get_or_create(&labels).get() > 0 {
            break Err(anyhow::anyhow!(
                "a load failed (its warning is above); the loader would retry"
            ));
        }
        if started.elapsed() > MAX_RUN {
            break Err(anyhow::anyhow!(
                "the loader did not reach the log's head in {MAX_RUN:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let elapsed = started.elapsed();
    let cpu = cpu.since(warehouse);
    stop.store(true, Ordering::Release);
    if thread.join().is_err() {
        bail!("the warehouse loader thread panicked");
    }
    outcome?;
    let (counts, next_offset) = warehouse.counts(&engine)?;
    // The loader's own clock (filter + map + load of every batch), from its histogram's sum.
    let loads_seconds = metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("weir_warehouse_load_seconds_sum"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    Ok(EndToEnd {
        elapsed,
        cpu,
        counts,
        next_offset,
        loads_seconds,
    })
}

/// Wall time of each phase of the loader's loop.
#[derive(Default)]
struct Phases {
    open: Duration,
    read: Duration,
    parse: Duration,
    map: Duration,
    load: Duration,
    rows: u64,
    /// CPU during `Loader::load` only.
    load_cpu: Cpu,
}

impl Phases {
    fn total(&self) -> Duration {
        self.open + self.read + self.parse + self.map + self.load
    }
}

/// `WarehouseLoader::session` with a clock around each phase.
fn phase_run(kind: Kind, warehouse: &mut dyn Warehouse, log: &Log) -> anyhow::Result<Phases> {
    let spec = spec(warehouse.create("phases")?);
    let mut loader = spec
        .loader(Path::new("."))
        .context("cannot set up the loader")?;
    let mut p = Phases::default();
    let t = Instant::now();
    let (mut catalog, _) = loader.open(&spec.schemas())?;
    p.open = t.elapsed();
    let mut reader = log.reader(Offset(0));
    loop {
        let t = Instant::now();
        let (records, next) = next_batch(&mut reader)?;
        p.read += t.elapsed();
        if records.is_empty() {
            break;
        }
        let t = Instant::now();
        let events = parse(&records);
        p.parse += t.elapsed();
        let t = Instant::now();
        let loads = map(kind, &mut catalog, events);
        p.map += t.elapsed();
        let cpu = Cpu::now(warehouse);
        let t = Instant::now();
        p.rows += loader.load(&loads, next)?.rows;
        p.load += t.elapsed();
        let used = cpu.since(warehouse);
        p.load_cpu.own += used.own;
        p.load_cpu.server += used.server;
    }
    Ok(p)
}

/// One flush batch as `WarehouseLoader::collect` reads it when the log is ahead of it.
fn next_batch(reader: &mut LogReader) -> anyhow::Result<(Vec<Record>, Offset)> {
    let mut records = Vec::new();
    while records.len() < FLUSH_EVENTS {
        let batch = reader.read_batch((FLUSH_EVENTS - records.len()).min(READ_CHUNK))?;
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    Ok((records, reader.position()))
}

/// The events of the source as `WarehouseLoader::map` parses them (objects only).
fn parse(records: &[Record]) -> Vec<(&Record, Object<'_>)> {
    let source = SourceId::new(SOURCE);
    records
        .iter()
        .filter(|r| r.meta.kind == RecordKind::Event && r.meta.source == source)
        .filter_map(|r| match Json::parse(&r.payload) {
            Ok(Json::Object(event)) => Some((r, event)),
            _ => None,
        })
        .collect()
}

/// `WarehouseLoader::map` after the parse.
fn map(kind: Kind, catalog: &mut Catalog, events: Vec<(&Record, Object<'_>)>) -> Vec<SchemaLoad> {
    let mut loads: BTreeMap<String, SchemaLoad> = BTreeMap::new();
    let mut mapper = Mapper::new(
        catalog,
        Caps {
            max_tables: MAX_TABLES,
            max_columns: MAX_COLUMNS,
            identifier_limit: kind.identifier_limit(),
        },
        timestamp::now(),
    );
    for (r, event) in events {
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

/// An engine as this bench drives it.
trait Warehouse {
    /// A new, empty warehouse (database or file) for one run.
    fn create(&mut self, tag: &str) -> anyhow::Result<Engine>;
    /// A writer of raw rows into `engine`.
    fn raw(&mut self, engine: &Engine) -> anyhow::Result<Box<dyn RawSink>>;
    /// Rows per table of the source schema, and `_weir.loads.next_offset` if there is one.
    fn counts(&mut self, engine: &Engine) -> anyhow::Result<(BTreeMap<String, u64>, Option<u64>)>;
    /// CPU seconds the database server used so far (0 for an embedded engine).
    fn server_cpu_seconds(&self) -> f64;
    /// Removes every warehouse `create` made.
    fn cleanup(&mut self) -> anyhow::Result<()>;
}

/// The raw baseline's writer.
trait RawSink {
    /// Creates the tables of `loads`, or adds their new columns, with the loaders' DDL.
    fn ddl(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<()>;
    /// Writes the rows of `loads` in one transaction; returns how many.
    fn load(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<u64>;
    /// Whatever makes the rows as durable as a weir load leaves them.
    fn finish(&mut self) -> anyhow::Result<()>;
}

/// The tables of a load that hold rows of their own (`users` is derived from `identifies`).
fn row_tables(
    load: &SchemaLoad,
) -> impl Iterator<Item = (&String, &weir::warehouse::schema::TableLoad)> {
    load.tables
        .iter()
        .filter(|(name, t)| name.as_str() != "users" && !t.rows.is_empty())
}

mod pg {
    //! PostgreSQL: one database per run, binary COPY for the baseline.

    use std::collections::BTreeMap;

    use anyhow::Context;
    use tokio_postgres::{Client, NoTls};

    use weir::warehouse::Engine;
    use weir::warehouse::loader::discards_table;
    use weir::warehouse::postgres::{Postgres, copy_rows};
    use weir::warehouse::schema::SchemaLoad;
    use weir::warehouse::sql::{self, ident, qualified};

    use super::{RawSink, Warehouse, row_tables};

    pub struct Server {
        runtime: tokio::runtime::Runtime,
        admin: Client,
        conninfo: String,
        prefix: String,
        databases: Vec<String>,
    }

    impl Server {
        pub fn connect(conninfo: &str) -> anyhow::Result<Server> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let admin = runtime
                .block_on(connect(&format!("{conninfo} dbname=postgres")))
                .with_context(|| format!("PostgreSQL is required at `{conninfo}`"))?;
            Ok(Server {
                runtime,
                admin,
                conninfo: conninfo.to_owned(),
                prefix: format!("weir_bench_{}", weir::ids::random_token(8).to_lowercase()),
                databases: Vec::new(),
            })
        }

        fn conninfo(&self, engine: &Engine) -> anyhow::Result<String> {
            match engine {
                Engine::Postgres { url } => Ok(url.clone()),
                Engine::DuckDb { .. } => anyhow::bail!("not a PostgreSQL warehouse"),
            }
        }
    }

    async fn connect(conninfo: &str) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("PostgreSQL connection ended: {e}");
            }
        });
        Ok(client)
    }

    impl Warehouse for Server {
        fn create(&mut self, tag: &str) -> anyhow::Result<Engine> {
            let name = format!("{}_{tag}", self.prefix);
            self.runtime
                .block_on(self.admin.batch_execute(&format!("CREATE DATABASE {name}")))
                .with_context(|| format!("cannot create database {name}"))?;
            self.databases.push(name.clone());
            Ok(Engine::Postgres {
                url: format!("{} dbname={name}", self.conninfo),
            })
        }

        fn raw(&mut self, engine: &Engine) -> anyhow::Result<Box<dyn RawSink>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = runtime.block_on(connect(&self.conninfo(engine)?))?;
            Ok(Box::new(Raw { runtime, client }))
        }

        fn counts(
            &mut self,
            engine: &Engine,
        ) -> anyhow::Result<(BTreeMap<String, u64>, Option<u64>)> {
            let conninfo = self.conninfo(engine)?;
            self.runtime.block_on(async {
                let client = connect(&conninfo).await?;
                let tables = client
                    .query(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                        &[&super::SOURCE],
                    )
                    .await?;
                let mut counts = BTreeMap::new();
                for t in tables {
                    let table: String = t.get(0);
                    let n: i64 = client
                        .query_one(
                            &format!("SELECT count(*) FROM {}", qualified(super::SOURCE, &table)),
                            &[],
                        )
                        .await?
                        .get(0);
                    counts.insert(table, n as u64);
                }
                let has_loads = client
                    .query_opt("SELECT to_regclass('_weir.loads')::text", &[])
                    .await?
                    .and_then(|r| r.get::<_, Option<String>>(0))
                    .is_some();
                let next = if has_loads {
                    client
                        .query_opt(
                            "SELECT next_offset FROM _weir.loads WHERE warehouse = $1",
                            &[&super::WAREHOUSE],
                        )
                        .await?
                        .map(|r| r.get::<_, i64>(0) as u64)
                } else {
                    None
                };
                Ok((counts, next))
            })
        }

        fn server_cpu_seconds(&self) -> f64 {
            super::cpu_seconds_of("postgres")
        }

        fn cleanup(&mut self) -> anyhow::Result<()> {
            let mut failed = Vec::new();
            for name in self.databases.drain(..) {
                let r =
                    self.runtime
                        .block_on(self.admin.batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )));
                if let Err(e) = r {
                    failed.push(format!("{name}: {e}"));
                }
            }
            anyhow::ensure!(
                failed.is_empty(),
                "cannot drop the bench's databases (drop them by hand): {}",
                failed.join("; ")
            );
            Ok(())
        }
    }

    struct Raw {
        runtime: tokio::runtime::Runtime,
        client: Client,
    }

    impl RawSink for Raw {
        fn ddl(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<()> {
            let client = &self.client;
            self.runtime.block_on(async {
                for load in loads {
                    client
                        .batch_execute(&format!(
                            "CREATE SCHEMA IF NOT EXISTS {}",
                            ident(&load.schema)
                        ))
                        .await?;
                    for (table, t) in row_tables(load) {
                        for stmt in sql::ddl(&Postgres, &load.schema, table, t) {
                            client.batch_execute(&stmt).await?;
                        }
                    }
                    if !load.discards.is_empty() {
                        let d = discards_table(load);
                        for stmt in sql::ddl(&Postgres, &load.schema, "discards", &d) {
                            client.batch_execute(&stmt).await?;
                        }
                    }
                }
                Ok(())
            })
        }

        fn load(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<u64> {
            let client = &mut self.client;
            self.runtime.block_on(async {
                let tx = client.transaction().await?;
                let mut rows = 0;
                for load in loads {
                    for (table, t) in row_tables(load) {
                        rows +=
                            copy_rows(&tx, &qualified(&load.schema, table), &t.columns, &t.rows)
                                .await?;
                    }
                    if !load.discards.is_empty() {
                        let d = discards_table(load);
                        rows += copy_rows(
                            &tx,
                            &qualified(&load.schema, "discards"),
                            &d.columns,
                            &d.rows,
                        )
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(rows)
            })
        }

        fn finish(&mut self) -> anyhow::Result<()> {
            // Every transaction was committed (and so flushed to the WAL) already.
            Ok(())
        }
    }
}

mod duck {
    //! DuckDB: one file per run, the Arrow appender for the baseline.

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use ::duckdb::Connection;
    use anyhow::Context;

    use weir::warehouse::Engine;
    use weir::warehouse::duckdb::{self, DuckDb};
    use weir::warehouse::loader::discards_table;
    use weir::warehouse::schema::{Cell, SchemaLoad, TableLoad};
    use weir::warehouse::sql::{self, ident, qualified};

    use super::{RawSink, Warehouse, row_tables};

    pub struct Files {
        dir: PathBuf,
    }

    impl Files {
        pub fn new(dir: PathBuf) -> Files {
            Files { dir }
        }

        fn path(engine: &Engine) -> anyhow::Result<PathBuf> {
            match engine {
                Engine::DuckDb { path: Some(p) } => Ok(p.clone()),
                _ => anyhow::bail!("not a DuckDB warehouse with a path"),
            }
        }
    }

    impl Warehouse for Files {
        fn create(&mut self, tag: &str) -> anyhow::Result<Engine> {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
            Ok(Engine::DuckDb {
                path: Some(self.dir.join(format!("{tag}.duckdb"))),
            })
        }

        fn raw(&mut self, engine: &Engine) -> anyhow::Result<Box<dyn RawSink>> {
            let conn = Connection::open(Files::path(engine)?)?;
            Ok(Box::new(Raw { conn }))
        }

        fn counts(
            &mut self,
            engine: &Engine,
        ) -> anyhow::Result<(BTreeMap<String, u64>, Option<u64>)> {
            let conn = Connection::open(Files::path(engine)?)?;
            let tables: Vec<String> = conn
                .prepare("SELECT table_name FROM information_schema.tables WHERE table_schema = ?")?
                .query_map([super::SOURCE], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut counts = BTreeMap::new();
            for table in tables {
                let n: i64 = conn.query_row(
                    &format!("SELECT count(*) FROM {}", qualified(super::SOURCE, &table)),
                    [],
                    |r| r.get(0),
                )?;
                counts.insert(table, n as u64);
            }
            let has_loads: i64 = conn.query_row(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = '_weir' AND table_name = 'loads'",
                [],
                |r| r.get(0),
            )?;
            let next = if has_loads > 0 {
                conn.query_row(
                    "SELECT max(next_offset) FROM _weir.loads WHERE warehouse = ?",
                    [super::WAREHOUSE],
                    |r| r.get::<_, Option<i64>>(0),
                )?
                .map(|o| o as u64)
            } else {
                None
            };
            Ok((counts, next))
        }

        fn server_cpu_seconds(&self) -> f64 {
            0.0
        }

        fn cleanup(&mut self) -> anyhow::Result<()> {
            // The files go with the bench's temp dir.
            Ok(())
        }
    }

    struct Raw {
        conn: Connection,
    }

    /// All rows of `t` through weir's Arrow appender path: the fastest way into DuckDB's own
    /// tables this crate offers, with no dedupe.
    fn append(conn: &Connection, schema: &str, table: &str, t: &TableLoad) -> anyhow::Result<u64> {
        let rows: Vec<&Vec<Cell>> = t.rows.iter().collect();
        Ok(duckdb::append(
            conn, None, schema, table, &t.columns, &rows,
        )?)
    }

    impl RawSink for Raw {
        fn ddl(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<()> {
            for load in loads {
                self.conn.execute_batch(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    ident(&load.schema)
                ))?;
                for (table, t) in row_tables(load) {
                    for stmt in sql::ddl(&DuckDb, &load.schema, table, t) {
                        self.conn.execute_batch(&stmt)?;
                    }
                }
                if !load.discards.is_empty() {
                    let d = discards_table(load);
                    for stmt in sql::ddl(&DuckDb, &load.schema, "discards", &d) {
                        self.conn.execute_batch(&stmt)?;
                    }
                }
            }
            Ok(())
        }

        fn load(&mut self, loads: &[SchemaLoad]) -> anyhow::Result<u64> {
            let tx = self.conn.transaction()?;
            let mut rows = 0;
            for load in loads {
                for (table, t) in row_tables(load) {
                    rows += append(&tx, &load.schema, table, t)?;
                }
                if !load.discards.is_empty() {
                    rows += append(&tx, &load.schema, "discards", &discards_table(load))?;
                }
            }
            tx.commit()?;
            Ok(rows)
        }

        fn finish(&mut self) -> anyhow::Result<()> {
            // weir closes the file after every load, which checkpoints it; the baseline keeps it
            // open and checkpoints once, at the end.
            self.conn.execute_batch("CHECKPOINT")?;
            Ok(())
        }
    }
}

mod workload {
    //! Segment-spec events, enriched by the gateway's own `normalize`, in a processed log.

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use serde_json::{Value, json};
    use time::OffsetDateTime;

    use weir::event::json_string;
    use weir::gateway::normalize::{RequestContext, normalize};
    use weir::ids::{Offset, SourceId};
    use weir::log::{EncodedRecord, Log, record};
    use weir::timestamp;

    /// Events per request, as an SDK batches them (they share `receivedAt` and `sentAt`).
    const PER_REQUEST: usize = 100;
    const USERS: u64 = 20_000;

    /// How many events of each kind were generated, to check what the warehouse holds.
    #[derive(Default)]
    pub struct Tally {
        pub by_table: BTreeMap<String, u64>,
        /// Distinct users that sent an identify.
        pub users: u64,
        pub total: u64,
    }

    impl Tally {
        fn add(&mut self, table: &str) {
            *self.by_table.entry(table.to_owned()).or_default() += 1;
        }

        pub fn describe(&self) -> String {
            let share = |t: &str| {
                100.0 * self.by_table.get(t).copied().unwrap_or(0) as f64 / self.total as f64
            };
            let other = share("screens") + share("groups") + share("aliases");
            format!(
                "{:.0}% track, {:.0}% identify, {:.0}% page, {other:.0}% screen/group/alias",
                share("tracks"),
                share("identifies"),
                share("pages")
            )
        }

        /// Every generated event is a row of its table.
        pub fn check(&self, counts: &BTreeMap<String, u64>) -> anyhow::Result<()> {
            for (table, n) in &self.by_table {
                let got = counts.get(table).copied().unwrap_or(0);
                anyhow::ensure!(got == *n, "{table} has {got} rows, {n} expected");
            }
            Ok(())
        }
    }

    pub struct Workload {
        records: Vec<EncodedRecord>,
        pub tally: Tally,
        /// The events as the SDK sent them, and as the processed log holds them (enriched).
        pub sent_bytes: usize,
        pub payload_bytes: usize,
    }

    use crate::rng::Rng;

    /// A price-like number that is never whole (so its column is a double from the start).
    fn money(rng: &mut Rng, max: u64) -> f64 {
        rng.below(max) as f64 + 0.99
    }

    const PATHS: &[&str] = &[
        "/",
        "/shop",
        "/shop/coffee",
        "/product/espresso-beans",
        "/cart",
        "/checkout",
        "/search",
        "/account",
    ];
    const TITLES: &[&str] = &[
        "Home",
        "Shop",
        "Coffee",
        "Espresso beans 1 kg",
        "Cart",
        "Checkout",
        "Search",
        "Account",
    ];
    const CATEGORIES: &[&str] = &["coffee", "tea", "machines", "accessories", "gifts"];
    const BRANDS: &[&str] = &["Lavazza", "Illy", "Bialetti", "De'Longhi", "Hario"];
    const PRODUCTS: &[&str] = &[
        "Espresso beans 1 kg",
        "Milk frother",
        "Moka pot 6 cups",
        "Pour-over kettle",
        "Green tea 100 g",
    ];
    const AGENTS: &[&str] = &[
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    ];

    fn context(rng: &mut Rng, path: &str, title: &str) -> Value {
        json!({
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "page": {"path": path, "title": title},
            "userAgent": rng.pick(AGENTS),
        })
    }

    fn track(rng: &mut Rng) -> (String, Value) {
        let n = rng.below(100);
        let product = rng.below(5) as usize;
        let (name, properties) = match n {
            0..43 => (
                "Product Viewed",
                json!({
                    "product_id": format!("prod-{:05}", rng.below(5_000)),
                    "sku": format!("SKU-{}", 1000 + rng.below(9000)),
                    "category": rng.pick(CATEGORIES),
                    "name": PRODUCTS[product],
                    "brand": rng.pick(BRANDS),
                    "price": money(rng, 90),
                    "currency": "EUR",
                    "position": rng.below(24) as i64,
                }),
            ),
            43..65 => (
                "Product Added",
                json!({
                    "product_id": format!("prod-{:05}", rng.below(5_000)),
                    "sku": format!("SKU-{}", 1000 + rng.below(9000)),
                    "name": PRODUCTS[product],
                    "variant": rng.pick(&["250 g", "500 g", "1 kg"]),
                    "price": money(rng, 90),
                    "quantity": 1 + rng.below(3) as i64,
                    "cart_id": format!("cart-{:07}", rng.below(1_000_000)),
                    "currency": "EUR",
                }),
            ),
            65..76 => (
                "Order Completed",
                json!({
                    "order_id": format!("order-{:08}", rng.below(100_000_000)),
                    "total": money(rng, 300),
                    "revenue": money(rng, 250),
                    "shipping": 4.99,
                    "tax": money(rng, 40),
                    "coupon": rng.pick(&["", "SPRING", "WELCOME10"]),
                    "currency": "EUR",
                    "products": [{"sku": "SKU-1042", "quantity": 1}, {"sku": "SKU-2210", "quantity": 2}],
                }),
            ),
            76..90 => (
                "Signed In",
                json!({
                    "method": rng.pick(&["password", "magic_link", "oauth"]),
                    "provider": rng.pick(&["email", "google", "apple"]),
                    "remember_me": rng.chance(50),
                    "mfa": rng.chance(20),
                    "attempts": 1 + rng.below(3) as i64,
                    "plan": rng.pick(&["free", "plus", "pro"]),
                    "locale": "de-DE",
                    "first_login": rng.chance(5),
                }),
            ),
            _ => (
                "Search Performed",
                json!({
                    "query": rng.pick(&["espresso", "decaf beans", "moka", "grinder", "green tea"]),
                    "results": rng.below(200) as i64,
                    "page": 1 + rng.below(5) as i64,
                    "sort": rng.pick(&["relevance", "price_asc", "newest"]),
                    "category": rng.pick(CATEGORIES),
                    "latency_ms": 5 + rng.below(400) as i64,
                    "voice": rng.chance(3),
                    "filters_applied": rng.below(4) as i64,
                }),
            ),
        };
        (
            name.to_owned(),
            json!({"type": "track", "event": name, "properties": properties}),
        )
    }

    /// A client event (before the gateway) and the warehouse tables it lands in.
    fn client_event(
        rng: &mut Rng,
        i: usize,
        run: &str,
        user_seen: &mut [bool],
    ) -> (Value, Vec<String>) {
        let user = rng.below(USERS);
        let page = rng.below(PATHS.len() as u64) as usize;
        let r = rng.below(100);
        let (mut event, tables) = match r {
            0..70 => {
                let (name, e) = track(rng);
                let table = weir::warehouse::schema::snake_case(&name);
                (e, vec!["tracks".to_owned(), table])
            }
            70..85 => {
                user_seen[user as usize] = true;
                (
                    json!({"type": "identify", "traits": {
                        "email": format!("user{user}@example.com"),
                        "name": format!("User {user}"),
                        "plan": rng.pick(&["free", "plus", "pro"]),
                        "age": 18 + rng.below(60) as i64,
                        "created_at": format!("2023-{:02}-{:02}T10:00:00.000Z", 1 + rng.below(12), 1 + rng.below(28)),
                        "company": rng.pick(&["Acme", "Globex", "Initech", "Umbrella"]),
                    }}),
                    vec!["identifies".to_owned()],
                )
            }
            85..95 => (
                json!({"type": "page", "name": TITLES[page], "properties": {
                    "path": PATHS[page],
                    "url": format!("https://shop.example.com{}", PATHS[page]),
                    "title": TITLES[page],
                    "referrer": "https://www.google.com/",
                    "search": "",
                }}),
                vec!["pages".to_owned()],
            ),
            95..97 => (
                json!({"type": "screen", "name": rng.pick(&["Home", "Cart", "Settings"]), "properties": {
                    "orientation": rng.pick(&["portrait", "landscape"]),
                    "dark_mode": rng.chance(30),
                }}),
                vec!["screens".to_owned()],
            ),
            97..99 => (
                json!({"type": "group", "groupId": format!("org-{}", rng.below(500)), "traits": {
                    "name": rng.pick(&["Acme", "Globex", "Initech"]),
                    "employees": 1 + rng.below(5_000) as i64,
                    "industry": rng.pick(&["retail", "software", "food"]),
                    "plan": rng.pick(&["team", "business"]),
                }}),
                vec!["groups".to_owned()],
            ),
            _ => (
                json!({"type": "alias", "previousId": format!("anon-{:012x}", rng.next() & 0xffff_ffff_ffff)}),
                vec!["aliases".to_owned()],
            ),
        };
        event["messageId"] = json!(format!("{run}-{i:09}"));
        event["anonymousId"] = json!(format!("anon-{:012x}", rng.next() & 0xffff_ffff_ffff));
        // Identifies always carry a userId (they are how `users` gets its rows).
        if r < 70 || (70..85).contains(&r) || rng.chance(60) {
            event["userId"] = json!(format!("user-{user:05}"));
        }
        // Events happen in order, but ~3% arrive an hour late (an app flushing what it queued
        // offline): a late identify makes its user's `users` row a recompute.
        let late_ms = if rng.chance(3) { 3_600_000 } else { 0 };
        event["originalTimestamp"] = json!(timestamp::format(
            OffsetDateTime::UNIX_EPOCH
                + Duration::from_millis(1_714_564_800_000 + i as u64 * 37 - late_ms)
        ));
        event["context"] = context(rng, PATHS[page], TITLES[page]);
        (event, tables)
    }

    pub fn generate(n: usize) -> anyhow::Result<Workload> {
        let mut rng = Rng(0x5eed);
        let run = format!("bench-{}", weir::ids::random_token(6));
        let source = SourceId::new(super::SOURCE);
        let mut user_seen = vec![false; USERS as usize];
        let mut tally = Tally::default();
        let mut records = Vec::with_capacity(n);
        let (mut sent_bytes, mut payload_bytes) = (0, 0);
        let start = OffsetDateTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_000);
        for request in 0..n.div_ceil(PER_REQUEST) {
            let received_at = start + Duration::from_millis(request as u64 * 50 + 1_000);
            let sent_at = start + Duration::from_millis(request as u64 * 50 + 400);
            let ctx = RequestContext {
                source: &source,
                received_at,
                received_at_json: json_string(&timestamp::format(received_at)),
                batch_sent_at: Some(json_string(&timestamp::format(sent_at))),
                peer_ip_json: json_string(&format!("203.0.113.{}", request % 250)),
                import: false,
                max_event_bytes: 32 * 1024,
            };
            for i in request * PER_REQUEST..((request + 1) * PER_REQUEST).min(n) {
                let (event, tables) = client_event(&mut rng, i, &run, &mut user_seen);
                let sent = event.to_string();
                sent_bytes += sent.len();
                let prepared = normalize(&ctx, &sent, None, "")
                    .map_err(|e| anyhow::anyhow!("the gateway refused a bench event: {e}"))?;
                let mut meta = prepared.meta;
                // The processed log points back at the raw record (one per event here).
                meta.origin = Some(Offset(i as u64));
                payload_bytes += prepared.payload.len();
                records.push(record::encode(&meta, &prepared.payload));
                for t in tables {
                    tally.add(&t);
                }
                tally.total += 1;
            }
        }
        tally.users = user_seen.iter().filter(|s| **s).count() as u64;
        Ok(Workload {
            records,
            tally,
            sent_bytes,
            payload_bytes,
        })
    }

    impl Workload {
        /// A processed log holding the workload, durable before any loader reads it.
        pub fn write_log(&self, dir: &Path) -> anyhow::Result<Log> {
            super::processed_log::write(dir, &self.records)
        }
    }
}

struct EngineResult {
    kind: Kind,
    events: u64,
    raw: RawResult,
    e2e: EndToEnd,
    phases: Phases,
}

impl EngineResult {
    fn per_s(&self, d: Duration) -> f64 {
        self.events as f64 / d.as_secs_f64()
    }

    fn weir_per_s(&self) -> f64 {
        self.per_s(self.e2e.elapsed)
    }

    fn raw_per_s(&self) -> f64 {
        self.per_s(self.raw.elapsed)
    }

    fn print(&self) {
        let cpu = |c: &Cpu| {
            if self.kind == Kind::Postgres {
                format!(
                    "CPU: this process {:.2} s, postgres {:.2} s",
                    c.own, c.server
                )
            } else {
                format!("CPU: {:.2} s", c.own)
            }
        };
        println!(
            "  {:<16} {:>9.0} ev/s  {}",
            self.kind.baseline(),
            self.raw_per_s(),
            cpu(&self.raw.cpu)
        );
        println!(
            "  {:<16} {:>9.0} ev/s  {}; {:.2} s inside its loads (filter + map + load, per weir_warehouse_load_seconds)",
            "weir end to end",
            self.weir_per_s(),
            cpu(&self.e2e.cpu),
            self.e2e.loads_seconds
        );
        let p = &self.phases;
        let total = p.total().as_secs_f64();
        let part = |d: Duration| {
            format!(
                "{:.2} s ({:.0}%)",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / total
            )
        };
        println!(
            "  weir by phase:   open {} | read log {} | parse {} | map {} | load {}  = {total:.2} s",
            part(p.open),
            part(p.read),
            part(p.parse),
            part(p.map),
            part(p.load)
        );
        println!(
            "                   per event: parse {:.1} µs, map {:.1} µs, load {:.1} µs; load {}",
            1e6 * p.parse.as_secs_f64() / self.events as f64,
            1e6 * p.map.as_secs_f64() / self.events as f64,
            1e6 * p.load.as_secs_f64() / self.events as f64,
            cpu(&p.load_cpu)
        );
    }
}

fn print_summary(results: &[EngineResult], load_before: &str, load_after: &str) {
    println!("\n== summary (events/s, processed log → committed rows)");
    println!(
        "  {:<11} {:>10} {:>18} {:>9} {:>12} {:>11}  {:<26} verdict",
        "engine", "weir", "raw baseline", "weir/raw", "parse+map", "load", "target"
    );
    for r in results {
        let p = &r.phases;
        let prep = (p.read + p.parse + p.map).as_secs_f64();
        let load = (p.open + p.load).as_secs_f64();
        let total = prep + load;
        let ratio = r.weir_per_s() / r.raw_per_s();
        let ok = r.weir_per_s() >= r.kind.target() && ratio >= TARGET_RAW_SHARE;
        println!(
            "  {:<11} {:>10.0} {:>10.0} ({:<6}) {:>8.2}x {:>11.0}% {:>10.0}%  {:<26} {}",
            r.kind.name(),
            r.weir_per_s(),
            r.raw_per_s(),
            if r.kind == Kind::Postgres {
                "COPY"
            } else {
                "append"
            },
            ratio,
            100.0 * prep / total,
            100.0 * load / total,
            format!(
                "≥{:.0}k ev/s, ≥{:.2}x raw",
                r.kind.target() / 1000.0,
                TARGET_RAW_SHARE
            ),
            if ok { "met" } else { "MISSED" }
        );
    }
    println!(
        "  (parse+map and load: shares of the by-phase run; load includes dedupe, users, offset, commit)"
    );
    println!("  load average: {load_before} at start, {load_after} at end");
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds used so far by every process named `comm` (its server processes), from /proc.
fn cpu_seconds_of(comm: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so split after its `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != comm {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 11 and 12 counting from 0 after the comm.
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total += (tick(11) + tick(12)) / ticks;
    }
    total
}
