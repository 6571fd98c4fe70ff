//! What a WebAssembly plugin costs, each figure next to the baseline that bounds it (STYLE.md:
//! performance is a ratio to a baseline measured in the same run):
//!
//! 1. **per-event cost** of the bundled `normalize` transformer on Segment track events of
//!    ~525 bytes, as a component through `LoadedVersion::run` with the production limits
//!    (500 ms epoch deadline, 64 MiB memory cap) plus the host's check that every kept payload
//!    is a JSON object, against the same crate compiled natively and called through the same
//!    SDK entry point (`Transform::transform_raw`: parse, modify, serialize), at batch sizes 1,
//!    10, 100 and 1000; the outputs of both must be byte-identical;
//! 2. **start-up**: compiling the component vs loading it precompiled from the on-disk cache, a
//!    whole `LoadedVersion::load`, a fresh instance + `init` on the production engine, and the
//!    first batch on a fresh version vs a warm one;
//! 3. **hot swap**: from `PluginSlot::deploy` of a new config to the first batch processed by
//!    the new version;
//! 4. **pipeline**: ingest → processed throughput of the real `weir serve` with a normalize
//!    transform on its source, against the same binary with no transform.
//!
//! `cargo bench -p weir --bench plugins`. Environment:
//! - `WEIR_BENCH_ONLY`: comma-separated subset of `cost,startup,swap,pipeline`;
//! - `WEIR_BENCH_RUNS`: runs per figure, the median is reported (default 7);
//! - `WEIR_BENCH_SECS`: seconds of load per pipeline run (default 4);
//! - `WEIR_BENCH_COMPONENT`: a normalize component built some other way (say with other
//!   profile settings) to measure instead of the bundled one; the native side stays as built;
//! - `WEIR_BENCH_DIR`: where temp dirs go (default: cargo's target/tmp, on the project's disk;
//!   /tmp may be a tmpfs where the fsyncs of a swap and of the logs cost nothing).
//!
//! Timings are wall clock on a shared machine: compare the ratios of one run, and repeat a run
//! whose figures look off.

#[path = "common/serve.rs"]
mod serve;

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use weir::event::check_object;
use weir::plugin::bindings::transformer::TransformerPre;
use weir::plugin::bindings::types::{Event, Label, Level, Outcome};
use weir::plugin::engine::content_hash;
use weir::plugin::registry::{Origin, PluginSpec, Registry, RollbackPolicy};
use weir::plugin::{LoadedVersion, PluginEngine, PluginKind, PluginLimits};
use weir::telemetry::{Metrics, PluginMetrics};
use weir_plugin::Transform;
use weir_plugin::raw::{RawEvent, RawOutcome};
use weir_plugin_normalize::Normalize;

/// The transform measured: a case conversion of the name and one added property.
const CONFIG: &str = r#"{"case":"snake_case","add_properties":{"app":"shop"}}"#;
/// Size of one event as the plugin receives it (enriched by the gateway).
const EVENT_BYTES: usize = 525;
/// Distinct events; every timed pass processes all of them once.
const POOL_EVENTS: usize = 1000;
const BATCH_SIZES: [usize; 4] = [1, 10, 100, 1000];
/// Passes over the pool per run of the per-event cost; each pass is one sample.
const PASSES: usize = 10;
const DEFAULT_RUNS: usize = 7;
const DEFAULT_SECS: f64 = 4.0;
/// Samples of each start-up figure, and swaps.
const STARTUP_SAMPLES: usize = 7;
const SWAPS: usize = 15;
const SOURCE: &str = "web";
const WRITE_KEY: &str = "bench-key";
/// Events per HTTP request, and concurrent connections, of the pipeline load.
const REQUEST_EVENTS: usize = 100;
const CONNECTIONS: usize = 8;
/// Backlog at the end of the load below which the pipeline counts as having kept up.
const MIN_BACKLOG: u64 = 10_000;
/// Pipeline figures under load start this long after the load does.
const WARM_UP: Duration = Duration::from_millis(500);

/// Targets (ARCHITECTURE's performance goals).
const TARGET_RATIO_AT_100: f64 = 1.5;
const TARGET_SWAP: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plugins bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    only: Option<Vec<String>>,
    runs: usize,
    load: Duration,
    base_dir: PathBuf,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let only = std::env::var("WEIR_BENCH_ONLY")
            .ok()
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
        let runs = match std::env::var("WEIR_BENCH_RUNS") {
            Ok(s) => s
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("WEIR_BENCH_RUNS={s}: expected a positive integer"))?,
            Err(_) => DEFAULT_RUNS,
        };
        let secs = match std::env::var("WEIR_BENCH_SECS") {
            Ok(s) => s
                .parse::<f64>()
                .ok()
                .filter(|&x| x > 0.0)
                .with_context(|| format!("WEIR_BENCH_SECS={s}: expected a positive number"))?,
            Err(_) => DEFAULT_SECS,
        };
        let base_dir = std::env::var_os("WEIR_BENCH_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        std::fs::create_dir_all(&base_dir)
            .with_context(|| format!("cannot create {}", base_dir.display()))?;
        Ok(Settings {
            only,
            runs,
            load: Duration::from_secs_f64(secs),
            base_dir,
        })
    }

    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }

    fn temp_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.base_dir)
            .with_context(|| format!("cannot create a temp dir in {}", self.base_dir.display()))
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let wasm_path = std::env::var_os("WEIR_BENCH_COMPONENT")
        .map_or_else(|| weir::plugin::bundled::path("normalize"), PathBuf::from);
    let wasm: Arc<[u8]> = std::fs::read(&wasm_path)
        .with_context(|| format!("cannot read {}", wasm_path.display()))?
        .into();
    println!(
        "plugins bench: normalize component {} KB, config {CONFIG}, {} cores, medians of {} runs",
        wasm.len() / 1024,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        settings.runs
    );
    let mut summary = Summary::default();
    if settings.wants("cost") {
        summary.cost = Some(cost::measure(&wasm, settings.runs)?);
    }
    if settings.wants("startup") {
        summary.startup = Some(startup::measure(&settings, &wasm)?);
    }
    if settings.wants("swap") {
        summary.swap = Some(swap::measure(&settings, &wasm_path)?);
    }
    if settings.wants("pipeline") {
        summary.pipeline = Some(pipeline::measure(&settings, &wasm_path)?);
    }
    summary.print();
    Ok(())
}

/// A Segment track event of [`EVENT_BYTES`] bytes, shaped like what analytics.js sends once the
/// gateway has enriched it. Names vary in spelling so the case conversion has work to do.
fn event_json(i: usize) -> String {
    const NAMES: [&str; 6] = [
        "Order Completed",
        "Product Viewed",
        "checkout step-Viewed",
        "cartUpdated",
        "  Signed   Up ",
        "Product Added To Cart",
    ];
    let mut event = serde_json::json!({
        "type": "track",
        "event": NAMES[i % NAMES.len()],
        "userId": format!("user-{:05}", i * 7919 % 100_000),
        "anonymousId": format!("anon-{:08x}", i.wrapping_mul(2_654_435_761) & 0xffff_ffff),
        "messageId": format!("bench-{i:012}"),
        "timestamp": "2024-05-01T12:00:00.000Z",
        "receivedAt": "2024-05-01T12:00:00.120Z",
        "properties": {
            "orderId": format!("order-{i:06}"),
            "revenue": 42.5,
            "currency": "EUR",
            "products": [
                {"sku": "SKU-1042", "name": "Espresso beans 1 kg", "price": 24.0, "quantity": 1},
                {"sku": "SKU-2210", "name": "Milk frother", "price": 18.5, "quantity": 1}
            ],
            "notes": ""
        },
        "context": {
            "library": {"name": "analytics.js", "version": "5.2.1"},
            "locale": "de-DE",
            "ip": "203.0.113.7"
        }
    });
    let len = event.to_string().len();
    event["properties"]["notes"] =
        serde_json::Value::String("n".repeat(EVENT_BYTES - len.min(EVENT_BYTES)));
    event.to_string()
}

fn pool() -> Vec<Event> {
    (0..POOL_EVENTS)
        .map(|i| Event {
            payload: event_json(i).into_bytes(),
            source: SOURCE.to_owned(),
            offset: i as u64,
        })
        .collect()
}

fn raw_event(e: &Event) -> RawEvent {
    RawEvent {
        payload: e.payload.clone(),
        source: e.source.clone(),
        offset: e.offset,
    }
}

fn metrics() -> Arc<PluginMetrics> {
    Metrics::new().plugins.clone()
}

/// A version of normalize with [`CONFIG`] and the production limits.
fn load_version(
    engine: &Arc<PluginEngine>,
    wasm: &Arc<[u8]>,
) -> anyhow::Result<Arc<LoadedVersion>> {
    Ok(LoadedVersion::load(
        engine,
        "normalize",
        Some(PluginKind::Transformer),
        wasm.clone(),
        CONFIG,
        PluginLimits::default(),
        metrics(),
    )?)
}

/// The host's check of a plugin's output, the pipeline's own: every kept event a JSON object.
fn check_outcomes(outcomes: &[Outcome]) -> anyhow::Result<()> {
    for o in outcomes {
        match o {
            Outcome::Keep(payload) => check_object(payload).map_err(anyhow::Error::msg)?,
            other => bail!("normalize did not keep an event: {other:?}"),
        }
    }
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-event cost, WASM vs native.
mod cost {
    use super::*;

    /// One way of processing events: ns/event (median over passes) and its ratio to native
    /// (median over passes of the ratio to the native pass next to it).
    #[derive(Clone, Copy)]
    pub struct Figure {
        pub ns: f64,
        pub ratio: f64,
    }

    pub struct Row {
        pub batch: usize,
        pub native_ns: f64,
        /// `LoadedVersion::run` plus the host's output check, as production.
        pub wasm: Figure,
        /// The host's output check alone (part of `wasm`).
        pub check_ns: f64,
    }

    /// A batch size split into its parts.
    pub struct Breakdown {
        pub batch: usize,
        pub native_ns: f64,
        pub native_parse_ns: f64,
        pub native_serialize_ns: f64,
        /// `LoadedVersion::run` alone.
        pub run: Figure,
        /// The export called on a store of our own, production engine (epochs on).
        pub direct: Figure,
        /// The same on an engine like the production one but without epoch interruption.
        pub direct_no_epochs: Figure,
    }

    pub struct Costs {
        pub rows: Vec<Row>,
        pub breakdowns: Vec<Breakdown>,
    }

    pub fn measure(wasm: &Arc<[u8]>, runs: usize) -> anyhow::Result<Costs> {
        println!("\n== per-event cost: normalize, WASM vs native");
        let engine = PluginEngine::new(None)?;
        let version = load_version(&engine, wasm)?;
        let mut native: Normalize = weir_plugin::init_from_json(CONFIG)
            .map_err(|e| anyhow::anyhow!("native normalize refused the config: {e}"))?;
        let pool = pool();

        // Both must do the same work: byte-identical outputs.
        let wasm_out = version.run(&pool)?;
        let native_out = native.transform_raw(pool.iter().map(raw_event).collect());
        ensure!(wasm_out.len() == native_out.len(), "outcome counts differ");
        for (i, (w, n)) in wasm_out.iter().zip(&native_out).enumerate() {
            let same = matches!((w, n), (Outcome::Keep(a), RawOutcome::Keep(b)) if a == b);
            ensure!(same, "event {i}: WASM gave {w:?}, native {n:?}");
        }
        check_outcomes(&wasm_out)?;

        let mut rows = Vec::new();
        for batch in BATCH_SIZES {
            let samples = interleaved(
                runs,
                &mut [
                    &mut || Ok(native_pass(&mut native, &pool, batch)),
                    &mut || timed(|| production_pass(&version, &pool, batch)),
                    &mut || timed(|| check_outcomes(black_box(&wasm_out))),
                ],
            )?;
            let row = Row {
                batch,
                native_ns: median(samples[0].clone()),
                wasm: figure(&samples, 1),
                check_ns: median(samples[2].clone()),
            };
            println!(
                "batch {:>4}: native {:>6.0} ns/event, WASM {:>6.0} ns/event (host check {:>4.0}), {:.2}x",
                row.batch, row.native_ns, row.wasm.ns, row.check_ns, row.wasm.ratio
            );
            rows.push(row);
        }

        let hash = content_hash(wasm);
        let mut with_epochs =
            direct::Direct::new(engine.engine(), &engine.component(wasm, &hash)?)?;
        let plain = direct::engine_without_epochs()?;
        let component = direct::wt(wasmtime::component::Component::new(&plain, wasm))?;
        let mut without_epochs = direct::Direct::new(&plain, &component)?;
        let mut breakdowns = Vec::new();
        for batch in [1, 100] {
            let samples = interleaved(
                runs,
                &mut [
                    &mut || Ok(native_pass(&mut native, &pool, batch)),
                    &mut || {
                        timed(|| {
                            for b in pool.chunks(batch) {
                                black_box(version.run(black_box(b))?);
                            }
                            Ok(())
                        })
                    },
                    &mut || timed(|| with_epochs.pass(&pool, batch)),
                    &mut || timed(|| without_epochs.pass(&pool, batch)),
                    &mut || Ok(native_parse_serialize(&pool).0),
                    &mut || Ok(native_parse_serialize(&pool).1),
                ],
            )?;
            let b = Breakdown {
                batch,
                native_ns: median(samples[0].clone()),
                run: figure(&samples, 1),
                direct: figure(&samples, 2),
                direct_no_epochs: figure(&samples, 3),
                native_parse_ns: median(samples[4].clone()),
                native_serialize_ns: median(samples[5].clone()),
            };
            println!(
                "batch {batch}, where the time goes (ns/event, ratio to native in the same passes):"
            );
            println!(
                "  native transform_raw               {:>6.0}        (parse alone {:.0}, serialize alone {:.0})",
                b.native_ns, b.native_parse_ns, b.native_serialize_ns
            );
            for (what, f) in [
                ("LoadedVersion::run, no host check", b.run),
                ("export called directly", b.direct),
                ("export called directly, no epochs", b.direct_no_epochs),
            ] {
                println!("  {what:<34} {:>6.0}  {:.2}x", f.ns, f.ratio);
            }
            breakdowns.push(b);
        }
        Ok(Costs { rows, breakdowns })
    }

    /// Passes over the pool, each way of processing it in turn so all see the same machine:
    /// `runs` × [`PASSES`] samples of ns/event per way.
    fn interleaved(
        runs: usize,
        ways: &mut [&mut dyn FnMut() -> anyhow::Result<Duration>],
    ) -> anyhow::Result<Vec<Vec<f64>>> {
        let mut samples = vec![Vec::new(); ways.len()];
        for _ in 0..runs * PASSES {
            for (way, out) in ways.iter_mut().zip(&mut samples) {
                out.push(way()?.as_nanos() as f64 / POOL_EVENTS as f64);
            }
        }
        Ok(samples)
    }

    /// Way `i` against way 0 (native), pass by pass: a pass slowed by the machine moves one
    /// ratio, not the median.
    fn figure(samples: &[Vec<f64>], i: usize) -> Figure {
        Figure {
            ns: median(samples[i].clone()),
            ratio: median(
                samples[i]
                    .iter()
                    .zip(&samples[0])
                    .map(|(w, n)| w / n)
                    .collect(),
            ),
        }
    }

    fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        f()?;
        Ok(started.elapsed())
    }

    /// One pass of `transform_raw` natively over the pool. The batches are cloned outside the
    /// timed region: the pipeline hands the plugin payloads it already owns.
    fn native_pass(plugin: &mut Normalize, pool: &[Event], batch: usize) -> Duration {
        let batches: Vec<Vec<RawEvent>> = pool
            .chunks(batch)
            .map(|c| c.iter().map(raw_event).collect())
            .collect();
        let started = Instant::now();
        for b in batches {
            black_box(plugin.transform_raw(black_box(b)));
        }
        started.elapsed()
    }

    /// One pass as production runs it: `LoadedVersion::run` and the output check.
    fn production_pass(
        version: &LoadedVersion,
        pool: &[Event],
        batch: usize,
    ) -> anyhow::Result<()> {
        for b in pool.chunks(batch) {
            let outcomes = version.run(black_box(b))?;
            check_outcomes(&outcomes)?;
            black_box(outcomes);
        }
        Ok(())
    }

    /// Native parse alone and serialize alone, to see what the transform's cost is made of.
    fn native_parse_serialize(pool: &[Event]) -> (Duration, Duration) {
        let started = Instant::now();
        let events: Vec<weir_plugin::Event> = pool
            .iter()
            .filter_map(|e| weir_plugin::Event::from_json(black_box(&e.payload)).ok())
            .collect();
        let parse = started.elapsed();
        let started = Instant::now();
        for e in &events {
            black_box(e.to_json());
        }
        (parse, started.elapsed())
    }
}

/// The component called on a store of our own, bypassing `LoadedVersion` (which keeps its
/// instances private): to measure instantiation, and what `LoadedVersion` and epochs add.
mod direct {
    use super::*;
    use weir::plugin::bindings::transformer::Transformer;

    /// wasmtime has an error type of its own.
    pub fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
        r.map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// What a store holds: WASI with nothing granted, and no-op host functions.
    pub struct BenchState {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for BenchState {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl weir::plugin::bindings::Host for BenchState {
        fn log(&mut self, _: Level, _: String) {}
        fn now_ms(&mut self) -> u64 {
            0
        }
        fn count(&mut self, _: String, _: Vec<Label>, _: u64) {}
    }

    /// The production engine's configuration (plugin/engine.rs) without epoch interruption.
    pub fn engine_without_epochs() -> anyhow::Result<wasmtime::Engine> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(false);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(100);
        pool.total_core_instances(200);
        pool.total_memories(200);
        pool.total_tables(200);
        pool.max_memory_size(1 << 30);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        wt(wasmtime::Engine::new(&config))
    }

    pub fn pre(
        engine: &wasmtime::Engine,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<TransformerPre<BenchState>> {
        let mut linker: Linker<BenchState> = Linker::new(engine);
        wt(wasmtime_wasi::p2::add_to_linker_sync(&mut linker))?;
        wt(weir::plugin::bindings::add_host_to_linker::<
            BenchState,
            HasSelf<BenchState>,
        >(&mut linker, |s| s))?;
        wt(TransformerPre::new(wt(linker.instantiate_pre(component))?))
    }

    pub fn store(engine: &wasmtime::Engine) -> Store<BenchState> {
        let mut store = Store::new(
            engine,
            BenchState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        // Ignored by an engine without epochs; far enough for one with.
        store.set_epoch_deadline(1_000_000);
        store
    }

    pub fn init(store: &mut Store<BenchState>, bindings: &Transformer) -> anyhow::Result<()> {
        wt(bindings
            .weir_plugin_transform_plugin()
            .call_init(&mut *store, CONFIG))?
        .map_err(|e| anyhow::anyhow!("init refused the config: {e}"))
    }

    /// One initialized instance, called directly.
    pub struct Direct {
        store: Store<BenchState>,
        bindings: Transformer,
    }

    impl Direct {
        pub fn new(
            engine: &wasmtime::Engine,
            component: &wasmtime::component::Component,
        ) -> anyhow::Result<Direct> {
            let mut store = store(engine);
            let bindings = wt(pre(engine, component)?.instantiate(&mut store))?;
            init(&mut store, &bindings)?;
            Ok(Direct { store, bindings })
        }

        pub fn pass(&mut self, pool: &[Event], batch: usize) -> anyhow::Result<()> {
            for b in pool.chunks(batch) {
                let outcomes = wt(self
                    .bindings
                    .weir_plugin_transform_plugin()
                    .call_transform(&mut self.store, black_box(b)))?;
                black_box(outcomes);
            }
            Ok(())
        }
    }
}

/// Compile, cache, load and instantiation times.
mod startup {
    use super::*;

    pub struct Startup {
        pub compile_ms: f64,
        pub cached_ms: f64,
        pub load_ms: f64,
        pub instantiate_us: f64,
        pub init_us: f64,
        pub first_batch_us: f64,
        pub warm_batch_us: f64,
    }

    pub fn measure(settings: &Settings, wasm: &Arc<[u8]>) -> anyhow::Result<Startup> {
        println!("\n== start-up: compile, cache, load, instantiate");
        let hash = content_hash(wasm);

        // Without a cache every `component` compiles with cranelift.
        let uncached = PluginEngine::new(None)?;
        let mut compile = Vec::new();
        for _ in 0..STARTUP_SAMPLES {
            let started = Instant::now();
            black_box(uncached.component(wasm, &hash)?);
            compile.push(ms(started.elapsed()));
        }

        // One engine fills the cache; a second one, as after a restart, loads from it.
        let cache = settings.temp_dir("weir-bench-cache-")?;
        PluginEngine::new(Some(cache.path().to_owned()))?.component(wasm, &hash)?;
        let engine = PluginEngine::new(Some(cache.path().to_owned()))?;
        let mut cached = Vec::new();
        for _ in 0..STARTUP_SAMPLES {
            let started = Instant::now();
            black_box(engine.component(wasm, &hash)?);
            cached.push(ms(started.elapsed()));
        }

        // A whole version: precompiled component from the cache, linking, instance, `init`;
        // then its first batch (fresh memory) and warm batches.
        let pool = pool();
        let batch = &pool[..100];
        let (mut load, mut first, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STARTUP_SAMPLES {
            let started = Instant::now();
            let version = load_version(&engine, wasm)?;
            load.push(ms(started.elapsed()));
            let started = Instant::now();
            check_outcomes(&version.run(batch)?)?;
            first.push(started.elapsed().as_secs_f64() * 1e6);
            for _ in 0..10 {
                let started = Instant::now();
                check_outcomes(&version.run(batch)?)?;
                warm.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }

        let (instantiate, init) = instantiate_us(&engine, wasm, &hash)?;
        let s = Startup {
            compile_ms: median(compile),
            cached_ms: median(cached),
            load_ms: median(load),
            instantiate_us: median(instantiate),
            init_us: median(init),
            first_batch_us: median(first),
            warm_batch_us: median(warm),
        };
        println!(
            "compile {:.1} ms; from the cache {:.2} ms; LoadedVersion::load (cached) {:.2} ms",
            s.compile_ms, s.cached_ms, s.load_ms
        );
        println!(
            "fresh instance {:.1} µs + init {:.1} µs; first batch of 100 on a new version {:.0} µs, warm {:.0} µs",
            s.instantiate_us, s.init_us, s.first_batch_us, s.warm_batch_us
        );
        Ok(s)
    }

    /// Median µs of a fresh instance (on the production engine: pooling allocator, epochs) and
    /// of its `init`.
    fn instantiate_us(
        engine: &PluginEngine,
        wasm: &[u8],
        hash: &str,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let pre = direct::pre(engine.engine(), &engine.component(wasm, hash)?)?;
        let (mut instantiate, mut init) = (Vec::new(), Vec::new());
        for _ in 0..STARTUP_SAMPLES * 10 {
            let started = Instant::now();
            let mut store = direct::store(engine.engine());
            let bindings = direct::wt(pre.instantiate(&mut store))?;
            instantiate.push(started.elapsed().as_secs_f64() * 1e6);
            let started = Instant::now();
            direct::init(&mut store, &bindings)?;
            init.push(started.elapsed().as_secs_f64() * 1e6);
        }
        Ok((instantiate, init))
    }
}

/// Hot swap: deploy of a new config to the first batch done by the new version.
mod swap {
    use super::*;

    pub struct Swap {
        pub total_ms: Vec<f64>,
        pub deploy_ms: Vec<f64>,
    }

    pub fn measure(settings: &Settings, wasm_path: &Path) -> anyhow::Result<Swap> {
        println!("\n== hot swap: deploy(new config) → first batch on the new version");
        let dir = settings.temp_dir("weir-bench-swap-")?;
        let engine = PluginEngine::new(Some(dir.path().join("cache")))?;
        let metrics = metrics();
        let spec = PluginSpec {
            name: "normalize".into(),
            kind: Some(PluginKind::Transformer),
            path: wasm_path.to_owned(),
            config: serde_json::from_str(CONFIG)?,
            config_file: None,
            fixtures: None,
            limits: PluginLimits::default(),
            rollback: RollbackPolicy::default(),
        };
        let registry = Registry::open(&[spec], &engine, &metrics, &dir.path().join("plugins"))?;
        let slot = registry.get("normalize")?;
        let pool = pool();
        let batch = &pool[..100];
        check_outcomes(&slot.active().run(batch)?)?;

        let (mut total, mut deploy) = (Vec::new(), Vec::new());
        for k in 0..SWAPS {
            let config = format!(
                r#"{{"case":"snake_case","add_properties":{{"app":"shop","deploy":{k}}}}}"#
            );
            let started = Instant::now();
            let deployed = slot.deploy(None, Some(config), Origin::Admin)?;
            deploy.push(ms(started.elapsed()));
            // What the pipeline does at its next batch.
            let version = slot.active();
            ensure!(
                version.version == deployed.version,
                "the deployed version is not the active one"
            );
            let outcomes = version.run(batch)?;
            let elapsed = started.elapsed();
            check_outcomes(&outcomes)?;
            let marker = format!(r#""deploy":{k}"#);
            ensure!(
                matches!(&outcomes[0], Outcome::Keep(p) if String::from_utf8_lossy(p).contains(&marker)),
                "the first batch after deploy {k} did not run the new config"
            );
            total.push(ms(elapsed));
        }
        println!(
            "deploy → first batch done: median {:.2} ms, max {:.2} ms (deploy alone: median {:.2} ms) over {SWAPS} swaps",
            median(total.clone()),
            max(&total),
            median(deploy.clone())
        );
        Ok(Swap {
            total_ms: total,
            deploy_ms: deploy,
        })
    }
}

/// Ingest → processed throughput of the real binary, with and without the transform.
mod pipeline {
    use super::*;

    pub struct Run {
        pub ingested_per_s: f64,
        /// Processed events per second while the load ran (after a warm-up): the pipeline
        /// shares the cores with ingest and the load generator.
        pub processed_under_load_per_s: f64,
        /// Processed events per second after the load stopped, while the pipeline caught up:
        /// what the pipeline does with the machine to itself.
        pub drain_per_s: f64,
        /// Processed log behind the raw log when the load stopped.
        pub lag_at_end: u64,
        pub drain: Duration,
        pub events: u64,
        pub dead_lettered: u64,
    }

    pub struct Pipeline {
        pub with_transform: Run,
        pub without: Run,
    }

    pub fn measure(settings: &Settings, wasm_path: &Path) -> anyhow::Result<Pipeline> {
        println!(
            "\n== pipeline: ingest → processed, {} connections × {REQUEST_EVENTS}-event batches for {:.0} s",
            CONNECTIONS,
            settings.load.as_secs_f64()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the load generator's runtime")?;
        let plugin = format!(
            "transforms = [\"normalize\"]\n\n[[plugins]]\nname = \"normalize\"\npath = {:?}\nconfig = {{ case = \"snake_case\", add_properties = {{ app = \"shop\" }} }}\n",
            wasm_path.display().to_string()
        );
        let without = rt.block_on(one_run(settings, "", "without transform"))?;
        let with_transform = rt.block_on(one_run(settings, &plugin, "with normalize"))?;
        Ok(Pipeline {
            with_transform,
            without,
        })
    }

    async fn one_run(settings: &Settings, source_extra: &str, label: &str) -> anyhow::Result<Run> {
        let weir = Weir::start(settings, source_extra)?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONNECTIONS)
            .build()?;
        let heads = |client: reqwest::Client, admin: SocketAddr| async move {
            let text = client
                .get(format!("http://{admin}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            anyhow::Ok(Heads::parse(&text))
        };

        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for conn in 0..CONNECTIONS {
            let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
            let url = format!("http://{}/v1/batch", weir.ingest);
            tasks.push(tokio::spawn(async move {
                load(client, url, conn, stop, sent).await
            }));
        }
        let started = Instant::now();
        let mut samples: Vec<(Duration, Heads)> = Vec::new();
        while started.elapsed() < settings.load {
            tokio::time::sleep(Duration::from_millis(100)).await;
            samples.push((started.elapsed(), heads(client.clone(), weir.admin).await?));
        }
        stop.store(true, Ordering::Release);
        for t in tasks {
            t.await.context("a load connection panicked")??;
        }
        let load_end = started.elapsed();
        let at_end = heads(client.clone(), weir.admin).await?;
        let events = sent.load(Ordering::Acquire);
        // Drain: wait until every acknowledged event is processed.
        let deadline = Instant::now() + Duration::from_secs(120);
        let last = loop {
            let h = heads(client.clone(), weir.admin).await?;
            if h.processed + h.dead_lettered >= events {
                break h;
            }
            ensure!(
                Instant::now() < deadline,
                "{label}: the pipeline did not catch up: {} of {events} events processed",
                h.processed
            );
            samples.push((started.elapsed(), h));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let drained_at = started.elapsed();
        samples.push((drained_at, last));
        ensure!(
            at_end.raw >= events,
            "{label}: {events} events acknowledged but the raw log holds {}",
            at_end.raw
        );
        let warm = samples
            .iter()
            .find(|(t, _)| *t >= WARM_UP)
            .map_or((Duration::ZERO, Heads::default()), |s| *s);
        let drain = drained_at.saturating_sub(load_end);
        let run = Run {
            ingested_per_s: events as f64 / load_end.as_secs_f64(),
            processed_under_load_per_s: at_end.processed.saturating_sub(warm.1.processed) as f64
                / load_end.saturating_sub(warm.0).as_secs_f64(),
            // A pipeline that kept up has no backlog to measure its own speed on.
            drain_per_s: if at_end.raw.saturating_sub(at_end.processed) >= MIN_BACKLOG {
                last.processed.saturating_sub(at_end.processed) as f64 / drain.as_secs_f64()
            } else {
                f64::NAN
            },
            lag_at_end: at_end.raw.saturating_sub(at_end.processed),
            drain,
            events,
            dead_lettered: last.dead_lettered,
        };
        println!(
            "{label:>18}: ingested {:>6.0} ev/s; processed {:>6.0} ev/s under load, {:>6.0} ev/s \
             alone (lag {} events drained in {:.2} s); {} events, {} dead-lettered",
            run.ingested_per_s,
            run.processed_under_load_per_s,
            run.drain_per_s,
            run.lag_at_end,
            run.drain.as_secs_f64(),
            run.events,
            run.dead_lettered
        );
        weir.stop()?;
        Ok(run)
    }

    /// The pool's events with where the 12 digits of their messageId are, so a request body
    /// can be built with fresh ids by copying bytes.
    fn templates() -> Vec<(String, usize)> {
        (0..POOL_EVENTS)
            .map(|i| {
                let e = event_json(i);
                let digits = e.find(&format!("bench-{i:012}")).map_or(0, |at| at + 6);
                (e, digits)
            })
            .collect()
    }

    /// One connection sending batches back to back; counts acknowledged events.
    async fn load(
        client: reqwest::Client,
        url: String,
        conn: usize,
        stop: Arc<AtomicBool>,
        sent: Arc<AtomicU64>,
    ) -> anyhow::Result<()> {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
        );
        let templates = templates();
        let mut next_id = conn * 1_000_000_000;
        while !stop.load(Ordering::Acquire) {
            // Ids never used before in the run, so deduplication keeps every event.
            let mut body = Vec::with_capacity(REQUEST_EVENTS * (EVENT_BYTES + 1) + 16);
            body.extend_from_slice(br#"{"batch":["#);
            for i in 0..REQUEST_EVENTS {
                let (event, digits) = &templates[next_id % POOL_EVENTS];
                if i > 0 {
                    body.push(b',');
                }
                let start = body.len();
                body.extend_from_slice(event.as_bytes());
                let id = format!("{next_id:012}");
                body[start + digits..start + digits + 12].copy_from_slice(id.as_bytes());
                next_id += 1;
            }
            body.extend_from_slice(b"]}");
            let resp = client
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                bail!("weir answered {status}: {text}");
            }
            sent.fetch_add(REQUEST_EVENTS as u64, Ordering::AcqRel);
        }
        Ok(())
    }

    #[derive(Clone, Copy, Debug, Default)]
    struct Heads {
        raw: u64,
        processed: u64,
        dead_lettered: u64,
    }

    impl Heads {
        fn parse(metrics: &str) -> Heads {
            let mut h = Heads::default();
            for line in metrics.lines() {
                let Some((name, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let value = value.parse::<f64>().unwrap_or(0.0) as u64;
                match name {
                    r#"weir_log_head_offset{log="raw"}"# => h.raw = value,
                    r#"weir_log_head_offset{log="processed"}"# => h.processed = value,
                    n if n.starts_with("weir_dead_lettered_total") => h.dead_lettered += value,
                    _ => {}
                }
            }
            h
        }
    }

    /// `weir serve` in a temp dir, on 127.0.0.1:0.
    struct Weir {
        child: Child,
        ingest: SocketAddr,
        admin: SocketAddr,
        dir: tempfile::TempDir,
    }

    impl Weir {
        fn start(settings: &Settings, source_extra: &str) -> anyhow::Result<Weir> {
            let dir = settings.temp_dir("weir-bench-pipeline-")?;
            let config = format!(
                r#"data_dir = {data:?}
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[sources]]
name = "{SOURCE}"
write_keys = ["{WRITE_KEY}"]
{source_extra}
"#,
                data = dir.path().join("data").display().to_string()
            );
            let super::serve::Started {
                child,
                ingest,
                admin,
            } = super::serve::start(dir.path(), &config)?;
            Ok(Weir {
                child,
                ingest,
                admin,
                dir,
            })
        }

        /// SIGTERM and wait, so the temp dir goes away with nothing writing into it.
        fn stop(mut self) -> anyhow::Result<()> {
            // SAFETY: a signal to our own child process.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let log = std::fs::read_to_string(self.dir.path().join("weir.log"))
                        .unwrap_or_default();
                    bail!("weir did not stop after SIGTERM; log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }
    }

    impl Drop for Weir {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

#[derive(Default)]
struct Summary {
    cost: Option<cost::Costs>,
    startup: Option<startup::Startup>,
    swap: Option<swap::Swap>,
    pipeline: Option<pipeline::Pipeline>,
}

impl Summary {
    fn print(&self) {
        println!("\n== summary");
        if let Some(c) = &self.cost {
            println!("per-event cost, normalize ({CONFIG}), {EVENT_BYTES}-byte track events:");
            println!(
                "  {:>5}  {:>12}  {:>12}  {:>11}  {:>6}  target",
                "batch", "native ns/ev", "WASM ns/ev", "(host check)", "ratio"
            );
            for r in &c.rows {
                let target = if r.batch == 100 {
                    verdict(
                        r.wasm.ratio <= TARGET_RATIO_AT_100,
                        &format!("≤ {TARGET_RATIO_AT_100}x"),
                    )
                } else {
                    String::new()
                };
                println!(
                    "  {:>5}  {:>12.0}  {:>12.0}  {:>11.0}  {:>5.2}x  {target}",
                    r.batch, r.native_ns, r.wasm.ns, r.check_ns, r.wasm.ratio
                );
            }
            for b in &c.breakdowns {
                println!(
                    "  batch {} parts: native parse alone {:.0} ns/ev, serialize alone {:.0}; \
                     LoadedVersion::run without the check {:.2}x, export called directly {:.2}x, \
                     directly without epochs {:.2}x",
                    b.batch,
                    b.native_parse_ns,
                    b.native_serialize_ns,
                    b.run.ratio,
                    b.direct.ratio,
                    b.direct_no_epochs.ratio
                );
            }
        }
        if let Some(s) = &self.startup {
            println!("start-up:");
            println!(
                "  compile (no cache)                {:>8.1} ms",
                s.compile_ms
            );
            println!(
                "  precompiled, from the disk cache  {:>8.2} ms",
                s.cached_ms
            );
            println!("  LoadedVersion::load (cached)      {:>8.2} ms", s.load_ms);
            println!(
                "  fresh instance (pooling)          {:>8.1} µs",
                s.instantiate_us
            );
            println!("  init                              {:>8.1} µs", s.init_us);
            println!(
                "  batch of 100: first on a new version {:.0} µs, warm {:.0} µs",
                s.first_batch_us, s.warm_batch_us
            );
        }
        if let Some(s) = &self.swap {
            let m = median(s.total_ms.clone());
            println!(
                "hot swap, deploy → first batch done: median {m:.2} ms, max {:.2} ms (deploy {:.2} ms)  {}",
                max(&s.total_ms),
                median(s.deploy_ms.clone()),
                verdict(
                    m < ms(TARGET_SWAP),
                    &format!("< {} ms", TARGET_SWAP.as_millis())
                )
            );
        }
        if let Some(p) = &self.pipeline {
            let (w, wo) = (&p.with_transform, &p.without);
            println!("pipeline, ingest → processed (ev/s):");
            println!(
                "  {:<18} {:>9} {:>12} {:>13}",
                "", "ingested", "under load", "pipeline alone"
            );
            for (label, r) in [("with normalize", w), ("without transform", wo)] {
                println!(
                    "  {label:<18} {:>9.0} {:>12.0} {:>13.0}",
                    r.ingested_per_s, r.processed_under_load_per_s, r.drain_per_s
                );
            }
            println!(
                "  pipeline alone with normalize: {:.2}x of without",
                w.drain_per_s / wo.drain_per_s
            );
        }
    }
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{target}: {}", if ok { "met" } else { "MISSED" })
}
