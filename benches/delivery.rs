//! Destination delivery: events/s from the processed log to a local HTTP sink, next to the
//! baseline that bounds it, measured in the same run (STYLE.md):
//!
//! 1. **bare hyper (baseline)**: hyper_util's legacy client (HTTP/1.1, keep-alive, `TCP_NODELAY`
//!    as the router sets it), 4 requests in flight (the default `concurrency`), POSTing the
//!    requests the bundled `webhook` plugin builds for the workload, `{"batch": [100 events]}`,
//!    built before the clock starts;
//! 2. **weir `Sender`, no plugin**: the same requests through `delivery::http::Sender`, the
//!    router's HTTP path (URL parse, allow-list check, header checks, per-request timeout, the
//!    answer's body read up to its cap), 4 in flight;
//! 3. **weir `Delivery` + webhook**: the production engine on its own thread, started as `app`
//!    starts it, with the bundled `webhook` plugin, `batch_size = 100`, `concurrency = 4`, on a
//!    processed log that already holds the workload, timed from spawn until the sink has
//!    counted every event. Everything production does is in it: reading the log, lanes by
//!    ordering key, `build` and `classify` in the component, the HTTP path of 2, settling each
//!    read (retry store, DLQ) and the offset commit after each read of `batch_size ×
//!    concurrency` records;
//! 4. **isolation**: 3 again, with two more destinations on the same log in the same process,
//!    started at the same time: one whose sink accepts connections and never answers
//!    (`timeout_ms = 1000`), one whose sink answers 500 to everything; both retry with backoffs
//!    of 50-400 ms. The figure is the healthy destination's events/s, as a ratio to 3 (issue
//!    target: it drops by less than 10%).
//!
//! Next to the figures: where 3's time goes, from the engine's own metrics (the `build` calls
//! and the requests, summed over lanes), the webhook `build` timed one call at a time while the
//! requests of 1 and 2 are prebuilt, and one offset commit timed on the same disk.
//!
//! Each sink is a hyper 1 server on 127.0.0.1:0 on a thread and tokio runtime of its own. The
//! healthy one reads each body, parses it as `{"batch": [...]}`, counts the events and adds up a
//! hash of their `messageId`s, and answers 200 `{}`. A run fails, and the bench exits non-zero,
//! unless that sink got every event of the workload exactly once; the bench checks correctness,
//! never speed.
//!
//! The workload: Segment track events as the gateway stores them (run through
//! `gateway::normalize`), ~500 bytes each, from ~20k users (`anonymousId` fixed per user, so
//! ~20k ordering keys).
//!
//! `cargo bench -p weir --bench delivery`. Environment:
//! - `WEIR_BENCH_EVENTS`: events per run (default 100000, rounded up to whole batches of 100);
//! - `WEIR_BENCH_RUNS`: repetitions of the four measurements, interleaved; medians are reported
//!   (default 3);
//! - `WEIR_BENCH_NEIGHBOURS`: the other destinations of run 4, comma-separated: `hanging`,
//!   `failing`, and `working` (a second destination whose sink accepts everything, the control
//!   that tells the cost of a neighbour that fails from that of any neighbour); default
//!   `hanging,failing`;
//! - `WEIR_BENCH_DIR`: where the temp dirs go (default: cargo's target/tmp, on the project's
//!   disk; /tmp may be a tmpfs where the offset commits' fsyncs cost nothing).
//!
//! Timings are wall clock on a shared machine: the run prints the load average before and after,
//! and the CPU each run used on the router's side (the process minus the sinks' threads);
//! compare the ratios of one run, and repeat a run whose figures look off.

#[path = "common/processed_log.rs"]
mod processed_log;
#[path = "common/rng.rs"]
mod rng;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use weir::config::DlqConfig;
use weir::delivery::http::{AllowList, Sender};
use weir::delivery::{Delivery, DestinationSpec, RetryPolicy};
use weir::dlq::Dlq;
use weir::ids::{ConsumerId, Offset, SourceId};
use weir::log::storage::{FsStorage, Storage};
use weir::log::{Log, LogOptions, OffsetStore};
use weir::plugin::bindings::types::{Event, Request};
use weir::plugin::registry::{PluginSpec, Registry, RollbackPolicy};
use weir::plugin::{PluginEngine, PluginKind, PluginLimits};
use weir::telemetry::{DeliveryLabels, Metrics};

use sink::{Mode, Sink};

const DEFAULT_EVENTS: usize = 100_000;
const DEFAULT_RUNS: usize = 3;
/// The defaults of a destination: events per `build` call (and per request of the webhook
/// plugin), lanes sending in parallel, and the per-request timeout.
const BATCH_SIZE: usize = 100;
const CONCURRENCY: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_STORE_CAPACITY: usize = 100_000;
/// The other destinations of the isolation run: what `tests/delivery.rs` gives its broken ones.
const BROKEN_TIMEOUT: Duration = Duration::from_millis(1_000);
const BROKEN_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 1_000,
    max_age: Duration::from_secs(24 * 3600),
    initial_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(400),
};
const SOURCE: &str = "web";
const HEALTHY: &str = "healthy";
/// A run slower than this is reported as stuck.
const MAX_RUN: Duration = Duration::from_secs(300);

/// The target: the healthy destination keeps at least this share of its throughput
/// while the two others are broken.
const TARGET_ISOLATION: f64 = 0.9;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delivery bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    events: usize,
    runs: usize,
    /// The other destinations of the isolation run, by how their sinks answer.
    neighbours: Vec<Mode>,
    base_dir: PathBuf,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let positive = |var: &str, default: usize| match std::env::var(var) {
            Ok(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{var}={s}: expected a positive integer")),
            Err(_) => Ok(default),
        };
        let events = positive("WEIR_BENCH_EVENTS", DEFAULT_EVENTS)?;
        let runs = positive("WEIR_BENCH_RUNS", DEFAULT_RUNS)?;
        let neighbours = match std::env::var("WEIR_BENCH_NEIGHBOURS") {
            Err(_) => vec![Mode::Hang, Mode::Fail],
            Ok(s) => s
                .split(',')
                .map(|m| match m.trim() {
                    "hanging" => Ok(Mode::Hang),
                    "failing" => Ok(Mode::Fail),
                    "working" => Ok(Mode::Count),
                    other => bail!(
                        "WEIR_BENCH_NEIGHBOURS: `{other}`; expected hanging, failing or working"
                    ),
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let base_dir = std::env::var_os("WEIR_BENCH_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
        std::fs::create_dir_all(&base_dir)
            .with_context(|| format!("cannot create {}", base_dir.display()))?;
        Ok(Settings {
            // Whole requests only, so the baseline sends exactly what the plugin would.
            events: events.div_ceil(BATCH_SIZE) * BATCH_SIZE,
            runs,
            neighbours,
            base_dir,
        })
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = load_average();
    let dir = tempfile::Builder::new()
        .prefix("weir-delivery-bench-")
        .tempdir_in(&settings.base_dir)
        .context("cannot create the bench's temp dir")?;

    let workload = workload::generate(settings.events)?;
    let log = workload.write_log(&dir.path().join("processed"))?;
    let engine = PluginEngine::new(Some(dir.path().join("plugin-cache")))?;
    let sink = Sink::start(Mode::Count)?;
    let (requests, building) = prebuilt(&engine, &log, &sink.url(), dir.path())?;
    ensure!(
        requests.len() == settings.events / BATCH_SIZE,
        "the webhook plugin built {} requests for {} events, {} expected",
        requests.len(),
        settings.events,
        settings.events / BATCH_SIZE
    );
    let bare = requests
        .iter()
        .map(BareRequest::of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "weir delivery bench: {} Segment track events, {:.0} B each as the processed log holds \
         them, {} ordering keys; requests of {BATCH_SIZE} events ({:.0} KB), {CONCURRENCY} in \
         flight; medians of {} runs",
        settings.events,
        workload.payload_bytes as f64 / settings.events as f64,
        workload.keys,
        requests.iter().map(|r| r.body.len()).sum::<usize>() as f64 / requests.len() as f64 / 1e3,
        settings.runs
    );
    println!("machine: {cores} cores, load average {load_before} at start");
    let build_us = 1e6 * building.as_secs_f64() / settings.events as f64;
    println!(
        "webhook build of those requests, one call at a time on one thread: {build_us:.1} µs/event"
    );
    let commit = commit_cost(dir.path())?;

    let bench = Bench {
        events: settings.events,
        fingerprint: workload.fingerprint,
        log,
        engine,
        sink,
        requests,
        bare,
        dir: dir.path().to_owned(),
    };
    drop(workload);
    let mut reps = Vec::new();
    for rep in 1..=settings.runs {
        let r = Rep {
            bare: bench.bare_hyper().context("bare hyper run")?,
            sender: bench.sender().context("Sender run")?,
            engine: bench.delivery(&[]).context("Delivery run")?,
            isolated: bench
                .delivery(&settings.neighbours)
                .context("isolation run")?,
        };
        r.print(rep, settings.runs, bench.events);
        reps.push(r);
    }
    let load_after = load_average();
    let costs = Costs { build_us, commit };
    print_summary(&reps, bench.events, &costs, &load_before, &load_after);
    Ok(())
}

/// What one offset commit costs on this disk (`OffsetStore::commit`: a temp file, fsync,
/// rename, directory fsync); the engine commits after each read of `batch_size × concurrency`
/// records.
fn commit_cost(dir: &Path) -> anyhow::Result<Duration> {
    let store = OffsetStore::open(Arc::new(FsStorage), &dir.join("commit-probe"))?;
    let consumer = ConsumerId::new("destination:probe");
    let mut samples = Vec::new();
    for i in 0..21 {
        let started = Instant::now();
        store.commit(&consumer, Offset(i))?;
        samples.push(started.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(samples)))
}

/// What every run shares: the log, the plugin engine (its cache makes a run's plugin load
/// cheap), the healthy sink and the prebuilt requests.
struct Bench {
    events: usize,
    /// Of the workload's `messageId`s, as the sink adds them up.
    fingerprint: u64,
    log: Log,
    engine: Arc<PluginEngine>,
    sink: Sink,
    requests: Vec<Request>,
    bare: Vec<BareRequest>,
    dir: PathBuf,
}

/// One timed run.
#[derive(Clone, Copy)]
struct Sample {
    elapsed: Duration,
    /// CPU seconds of this process minus the sinks' threads: the client's or the router's.
    cpu: f64,
    /// CPU seconds of the healthy sink's thread.
    sink_cpu: f64,
}

impl Sample {
    fn per_s(&self, events: usize) -> f64 {
        events as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_event(&self, events: usize) -> f64 {
        1e6 * self.cpu / events as f64
    }

    fn sink_us_per_event(&self, events: usize) -> f64 {
        1e6 * self.sink_cpu / events as f64
    }
}

/// A run of the `Delivery` engine.
struct EngineRun {
    sample: Sample,
    /// The healthy destination's `build` calls and requests, summed over its lanes.
    build_seconds: f64,
    request_seconds: f64,
    requests: u64,
    /// The other destinations, with the requests their sinks got.
    neighbours: Vec<(Mode, u64)>,
    /// Events in the other destinations' retry stores when the healthy one was done.
    held: i64,
}

/// The clock and the CPU counters around a run.
struct Meter<'a> {
    /// The healthy sink first.
    sinks: Vec<&'a Sink>,
    cpu: f64,
    sinks_cpu: Vec<f64>,
    started: Instant,
}

impl<'a> Meter<'a> {
    fn start(sinks: Vec<&'a Sink>) -> Meter<'a> {
        let sinks_cpu = sinks.iter().map(|s| s.cpu_seconds()).collect();
        Meter {
            sinks,
            cpu: own_cpu_seconds(),
            sinks_cpu,
            started: Instant::now(),
        }
    }

    fn stop(&self) -> Sample {
        let elapsed = self.started.elapsed();
        let sinks: Vec<f64> = self
            .sinks
            .iter()
            .zip(&self.sinks_cpu)
            .map(|(s, before)| s.cpu_seconds() - before)
            .collect();
        Sample {
            elapsed,
            cpu: own_cpu_seconds() - self.cpu - sinks.iter().sum::<f64>(),
            sink_cpu: sinks.first().copied().unwrap_or(0.0),
        }
    }
}

/// A prebuilt request as a plain hyper client holds it.
struct BareRequest {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl BareRequest {
    fn of(r: &Request) -> anyhow::Result<BareRequest> {
        ensure!(
            r.method == "POST",
            "the webhook plugin built a {} request",
            r.method
        );
        let mut headers = HeaderMap::new();
        for h in &r.headers {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes())?,
                HeaderValue::from_str(&h.value)?,
            );
        }
        Ok(BareRequest {
            uri: r.url.parse()?,
            headers,
            body: Bytes::from(r.body.clone()),
        })
    }
}

impl Bench {
    /// Run 1: the prebuilt requests through a plain hyper client, `CONCURRENCY` in flight, on a
    /// runtime on this thread (as a destination has one on its own).
    fn bare_hyper(&self) -> anyhow::Result<Sample> {
        let runtime = runtime()?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(http);
        self.sink.reset();
        let (next, client, requests) = (&AtomicUsize::new(0), &client, &self.bare);
        let meter = Meter::start(vec![&self.sink]);
        runtime.block_on(async {
            let lanes = (0..CONCURRENCY).map(|_| async move {
                while let Some(r) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut request = http::Request::new(Full::new(r.body.clone()));
                    *request.method_mut() = Method::POST;
                    *request.uri_mut() = r.uri.clone();
                    *request.headers_mut() = r.headers.clone();
                    let response = client.request(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    ensure!(status == 200, "the sink answered {status}");
                }
                Ok::<(), anyhow::Error>(())
            });
            futures_util::future::try_join_all(lanes).await
        })?;
        let sample = meter.stop();
        self.check_sink()?;
        Ok(sample)
    }

    /// Run 2: the same requests through the router's `Sender`.
    fn sender(&self) -> anyhow::Result<Sample> {
        let runtime = runtime()?;
        let allow = AllowList::new(&[format!("127.0.0.1:{}", self.sink.port)]);
        let sender = Sender::new(allow, TIMEOUT);
        self.sink.reset();
        let (next, sender, requests) = (&AtomicUsize::new(0), &sender, &self.requests);
        let meter = Meter::start(vec![&self.sink]);
        runtime.block_on(async {
            let lanes = (0..CONCURRENCY).map(|_| async move {
                while let Some(r) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let response = sender.send(r).await.map_err(|e| anyhow!("{e}"))?;
                    ensure!(
                        response.status == 200,
                        "the sink answered {}",
                        response.status
                    );
                }
                Ok::<(), anyhow::Error>(())
            });
            futures_util::future::try_join_all(lanes).await
        })?;
        let sample = meter.stop();
        self.check_sink()?;
        Ok(sample)
    }

    /// Runs 3 and 4: the production engine on the whole log, alone or next to other
    /// destinations (one per mode in `others`); timed until the healthy sink has counted every
    /// event.
    fn delivery(&self, others: &[Mode]) -> anyhow::Result<EngineRun> {
        let run_dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.dir)
            .context("cannot create a run's data dir")?;
        let data_dir = run_dir.path();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        let metrics = Metrics::new();
        let offsets = Arc::new(OffsetStore::open(
            storage.clone(),
            &data_dir.join("offsets"),
        )?);
        let neighbours = others
            .iter()
            .map(|mode| Ok((*mode, Sink::start(*mode)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut destinations = vec![destination(
            HEALTHY,
            &self.sink,
            TIMEOUT,
            RetryPolicy::default(),
        )];
        for (mode, sink) in &neighbours {
            destinations.push(destination(
                neighbour_name(*mode),
                sink,
                BROKEN_TIMEOUT,
                BROKEN_RETRY,
            ));
        }
        let plugins: Vec<PluginSpec> = destinations
            .iter()
            .map(|(spec, url)| webhook(&spec.plugin, url))
            .collect();
        let registry = Registry::open(
            &plugins,
            &self.engine,
            &metrics.plugins,
            &data_dir.join("plugins"),
        )?;
        // As `app` starts a destination, each with its own DLQ and retry store. The replay
        // senders stay alive for the run: a closed channel would end the engines' idle waits.
        let mut engines = Vec::new();
        let mut replays = Vec::new();
        for (spec, _) in &destinations {
            let dlq = Dlq::open(
                data_dir,
                &spec.stage(),
                storage.clone(),
                &log_options(),
                DlqConfig::default(),
                metrics.log("dlq"),
                metrics.dlq.clone(),
            )?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            replays.push(tx);
            engines.push(Delivery {
                spec: spec.clone(),
                log: self.log.shared().clone(),
                offsets: offsets.clone(),
                plugin: registry.get(&spec.plugin)?.clone(),
                chain: Vec::new(),
                dlq: Arc::new(dlq),
                metrics: metrics.delivery.clone(),
                store_dir: data_dir.join("delivery").join(spec.consumer().file_stem()),
                replays: rx,
            });
        }

        self.sink.reset();
        let mut sinks = vec![&self.sink];
        sinks.extend(neighbours.iter().map(|(_, sink)| sink));
        let stop = Arc::new(AtomicBool::new(false));
        let meter = Meter::start(sinks);
        let threads = engines
            .into_iter()
            .map(|d| d.spawn(stop.clone()))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot start a destination")?;
        let outcome = self.wait_for_sink(meter.started);
        let sample = meter.stop();
        let label = |name: &str| DeliveryLabels {
            destination: name.to_owned(),
        };
        let held: i64 = neighbours
            .iter()
            .map(|(mode, _)| {
                metrics
                    .delivery
                    .held
                    .get_or_create(&label(neighbour_name(*mode)))
                    .get()
            })
            .sum();
        stop.store(true, Ordering::Release);
        for t in threads {
            if t.join().is_err() {
                bail!("a destination thread panicked");
            }
        }
        drop(replays);
        outcome?;
        self.check_sink()?;
        let healthy = label(HEALTHY);
        let delivered = metrics.delivery.delivered.get_or_create(&healthy).get();
        let dead = metrics.delivery.dead_lettered.get_or_create(&healthy).get();
        let retried = metrics.delivery.retried.get_or_create(&healthy).get();
        ensure!(
            delivered == self.events as u64 && dead == 0 && retried == 0,
            "the healthy destination counted {delivered} delivered, {dead} dead-lettered and \
             {retried} retried events; {} delivered and nothing else expected",
            self.events
        );
        // Where the healthy destination's time went, from its own metrics (summed over lanes).
        let text = metrics.encode();
        let plugin = format!("plugin=\"webhook-{HEALTHY}\"");
        let dest = format!("destination=\"{HEALTHY}\"");
        Ok(EngineRun {
            sample,
            build_seconds: metric(&text, "weir_plugin_call_seconds_sum", &plugin),
            request_seconds: metric(&text, "weir_delivery_request_seconds_sum", &dest),
            requests: metric(&text, "weir_delivery_request_seconds_count", &dest) as u64,
            neighbours: neighbours
                .iter()
                .map(|(mode, sink)| (*mode, sink.requests()))
                .collect(),
            held,
        })
    }

    fn wait_for_sink(&self, started: Instant) -> anyhow::Result<()> {
        let n = self.events as u64;
        while self.sink.events() < n {
            if started.elapsed() > MAX_RUN {
                bail!(
                    "the sink counted {} of {n} events in {MAX_RUN:?}",
                    self.sink.events()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The healthy sink got every event of the workload exactly once.
    fn check_sink(&self) -> anyhow::Result<()> {
        let (events, malformed) = (self.sink.events(), self.sink.malformed());
        ensure!(
            malformed == 0,
            "the sink got {malformed} bodies that are not {{\"batch\": [...]}}"
        );
        ensure!(
            events == self.events as u64,
            "the sink counted {events} events; {} were sent",
            self.events
        );
        ensure!(
            self.sink.fingerprint() == self.fingerprint,
            "the sink counted {events} events, but not each event of the workload once (the \
             checksum of their messageIds differs)"
        );
        Ok(())
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// A destination sending to `sink` with the webhook plugin, as weir.toml's defaults have it
/// apart from the timeout and retries; and the URL its plugin posts to.
fn destination(
    name: &str,
    sink: &Sink,
    timeout: Duration,
    retry: RetryPolicy,
) -> (DestinationSpec, String) {
    let spec = DestinationSpec {
        name: name.to_owned(),
        plugin: format!("webhook-{name}"),
        sources: vec![SourceId::new(SOURCE)],
        chain: Vec::new(),
        allow_hosts: vec![format!("127.0.0.1:{}", sink.port)],
        batch_size: BATCH_SIZE,
        concurrency: CONCURRENCY,
        rate_limit: None,
        retry,
        timeout,
        retry_store_capacity: RETRY_STORE_CAPACITY,
        backfill: true,
    };
    (spec, sink.url())
}

/// The bundled webhook plugin posting `{"batch": [...]}` to `url`.
fn webhook(name: &str, url: &str) -> PluginSpec {
    PluginSpec {
        name: name.to_owned(),
        kind: Some(PluginKind::Destination),
        path: weir::plugin::bundled::path("webhook"),
        config: serde_json::json!({ "url": url }),
        config_file: None,
        fixtures: None,
        limits: PluginLimits::default(),
        rollback: RollbackPolicy::default(),
    }
}

/// weir.toml's `[log]` defaults, for the DLQs.
fn log_options() -> LogOptions {
    LogOptions {
        segment_bytes: 128 << 20,
        flush_interval: Duration::ZERO,
        flush_bytes: 8 << 20,
        max_bytes: 16 << 30,
        queue_capacity: 4096,
        preallocate_bytes: 0,
    }
}

/// The requests the webhook plugin builds for the whole log, `BATCH_SIZE` events each, in log
/// order: what runs 1 and 2 send; and the time the `build` calls took (one at a time, on this
/// thread, before any run).
fn prebuilt(
    engine: &Arc<PluginEngine>,
    log: &Log,
    url: &str,
    dir: &Path,
) -> anyhow::Result<(Vec<Request>, Duration)> {
    let metrics = Metrics::new();
    let registry = Registry::open(
        &[webhook("webhook", url)],
        engine,
        &metrics.plugins,
        &dir.join("prebuilt-plugins"),
    )?;
    let version = registry.get("webhook")?.active();
    let mut reader = log.reader(Offset(0));
    let mut requests = Vec::new();
    let mut building = Duration::ZERO;
    loop {
        let mut events = Vec::with_capacity(BATCH_SIZE);
        while events.len() < BATCH_SIZE {
            let records = reader.read_batch(BATCH_SIZE - events.len())?;
            if records.is_empty() {
                break;
            }
            events.extend(records.into_iter().map(|r| Event {
                payload: r.payload.to_vec(),
                source: r.meta.source.as_str().to_owned(),
                offset: r.offset.0,
            }));
        }
        if events.is_empty() {
            break;
        }
        let started = Instant::now();
        let out = version
            .build(&events)
            .map_err(|e| anyhow!("the webhook plugin's build failed: {e}"))?;
        building += started.elapsed();
        ensure!(
            out.rejections.is_empty()
                && out.requests.len() == 1
                && out.requests[0].events.len() == events.len(),
            "the webhook plugin built {} requests ({} rejections) for {} events, one expected",
            out.requests.len(),
            out.rejections.len(),
            events.len()
        );
        requests.extend(out.requests);
    }
    Ok((requests, building))
}

/// One repetition of the four measurements.
struct Rep {
    bare: Sample,
    sender: Sample,
    engine: EngineRun,
    isolated: EngineRun,
}

impl Rep {
    fn sender_ratio(&self, n: usize) -> f64 {
        self.sender.per_s(n) / self.bare.per_s(n)
    }

    fn engine_ratio(&self, n: usize) -> f64 {
        self.engine.sample.per_s(n) / self.bare.per_s(n)
    }

    fn isolation_ratio(&self, n: usize) -> f64 {
        self.isolated.sample.per_s(n) / self.engine.sample.per_s(n)
    }

    fn print(&self, rep: usize, reps: usize, n: usize) {
        println!(
            "run {rep}/{reps}: bare hyper {:.0} ev/s | Sender {:.0} ev/s ({:.2}x) | Delivery {:.0} \
             ev/s ({:.2}x) | Delivery next to {} {:.0} ev/s ({:.2}x of Delivery)",
            self.bare.per_s(n),
            self.sender.per_s(n),
            self.sender_ratio(n),
            self.engine.sample.per_s(n),
            self.engine_ratio(n),
            neighbours(&self.isolated),
            self.isolated.sample.per_s(n),
            self.isolation_ratio(n),
        );
        for (what, run) in [("alone", &self.engine), ("next to them", &self.isolated)] {
            println!(
                "    Delivery {what}: build {:.1} µs/event, {} requests of {:.2} ms (summed over \
                 lanes), CPU {:.1} µs/event",
                run.build_us_per_event(n),
                run.requests,
                run.request_ms(),
                run.sample.cpu_us_per_event(n),
            );
        }
        let sinks: Vec<String> = self
            .isolated
            .neighbours
            .iter()
            .map(|(mode, requests)| {
                format!("{} sink got {requests} requests", neighbour_name(*mode))
            })
            .collect();
        println!(
            "    {}; {} events held in their retry stores",
            sinks.join(", "),
            self.isolated.held
        );
    }
}

impl EngineRun {
    fn build_us_per_event(&self, n: usize) -> f64 {
        1e6 * self.build_seconds / n as f64
    }

    fn request_ms(&self) -> f64 {
        1e3 * self.request_seconds / self.requests.max(1) as f64
    }

    /// Requests in flight on average over the run (at most `CONCURRENCY`).
    fn in_flight(&self) -> f64 {
        self.request_seconds / self.sample.elapsed.as_secs_f64()
    }
}

/// The name of a destination next to the healthy one in run 4.
fn neighbour_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Count => "working",
        Mode::Hang => "hanging",
        Mode::Fail => "failing",
    }
}

fn neighbours(run: &EngineRun) -> String {
    run.neighbours
        .iter()
        .map(|(mode, _)| neighbour_name(*mode))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Costs measured on their own, outside the runs.
struct Costs {
    /// The webhook plugin's `build`, per event, one call at a time.
    build_us: f64,
    /// One offset commit.
    commit: Duration,
}

fn print_summary(reps: &[Rep], n: usize, costs: &Costs, load_before: &str, load_after: &str) {
    let med = |f: &dyn Fn(&Rep) -> f64| median(reps.iter().map(f).collect());
    let ratio = |f: fn(&Rep, usize) -> f64| {
        let xs: Vec<f64> = reps.iter().map(|r| f(r, n)).collect();
        let (lo, hi) = (min(&xs), max(&xs));
        (median(xs), lo, hi)
    };
    let show =
        |(m, lo, hi): (f64, f64, f64), of: &str| format!("{m:.2}x of {of} ({lo:.2}-{hi:.2})");
    println!(
        "\n== summary (medians of {} runs of {n} events; log → events counted by the sink)",
        reps.len()
    );
    println!(
        "  {:<44} {:>9} {:>22} {:>13} {:>10}",
        "", "events/s", "ratio (min-max)", "CPU µs/event", "sink's"
    );
    let row = |what: &str, per_s: f64, ratio: &str, f: fn(&Rep) -> Sample| {
        let cpu = med(&|r| f(r).cpu_us_per_event(n));
        let sink = med(&|r| f(r).sink_us_per_event(n));
        println!("  {what:<44} {per_s:>9.0} {ratio:>22} {cpu:>13.1} {sink:>10.1}");
    };
    row(
        "1 bare hyper client (baseline)",
        med(&|r| r.bare.per_s(n)),
        "1",
        |r| r.bare,
    );
    row(
        "2 weir Sender, prebuilt requests",
        med(&|r| r.sender.per_s(n)),
        &show(ratio(Rep::sender_ratio), "1"),
        |r| r.sender,
    );
    row(
        "3 weir Delivery + webhook plugin",
        med(&|r| r.engine.sample.per_s(n)),
        &show(ratio(Rep::engine_ratio), "1"),
        |r| r.engine.sample,
    );
    let isolation = ratio(Rep::isolation_ratio);
    row(
        &format!("4 = 3 next to {}", neighbours(&reps[0].isolated)),
        med(&|r| r.isolated.sample.per_s(n)),
        &show(isolation, "3"),
        |r| r.isolated.sample,
    );
    println!(
        "  (CPU: this process minus the sinks' threads, in 4 with the other destinations; \
         sink's: the healthy sink's thread)"
    );
    let reads = n.div_ceil(BATCH_SIZE * CONCURRENCY);
    let commit = costs.commit.as_secs_f64();
    println!(
        "  where 3's time goes: webhook build {:.1} µs/event summed over lanes (4: {:.1}; one \
         call at a time before the runs: {:.1}); {:.0} requests of {:.2} ms (1 and 2: {}), \
         {:.2} in flight on average (of {CONCURRENCY}); {reads} offset commits of {:.2} ms = \
         {:.2} s on the destination's thread",
        med(&|r| r.engine.build_us_per_event(n)),
        med(&|r| r.isolated.build_us_per_event(n)),
        costs.build_us,
        med(&|r| r.engine.requests as f64),
        med(&|r| r.engine.request_ms()),
        n / BATCH_SIZE,
        med(&|r| r.engine.in_flight()),
        commit * 1e3,
        commit * reads as f64,
    );
    println!(
        "  isolation target ≥ {TARGET_ISOLATION:.2}x of 3: {}",
        if isolation.0 >= TARGET_ISOLATION {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("  load average: {load_before} at start, {load_after} at end");
}

/// The sum of a metric's samples whose labels contain `label`, from the text exposition.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NAN, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NAN, f64::max)
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU seconds this process used so far (all its threads), to the nanosecond: the runs are
/// short, and getrusage and /proc's stat count in ticks.
fn own_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds one thread of this process used so far: the first field of its schedstat, in ns.
fn thread_cpu_seconds(tid: libc::pid_t) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

mod sink {
    //! A local HTTP destination on a thread and tokio runtime of its own, so its work does not
    //! share a thread with what is measured.

    use std::borrow::Cow;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread::JoinHandle;

    use anyhow::Context;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde::Deserialize;
    use tokio::sync::oneshot;

    /// How the sink answers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// Parses `{"batch": [...]}`, counts the events, answers 200 `{}`.
        Count,
        /// Reads the request and never answers.
        Hang,
        /// Answers 500 `{}` to everything.
        Fail,
    }

    #[derive(Default)]
    struct Counters {
        requests: AtomicU64,
        events: AtomicU64,
        /// Wrapping sum of the events' `messageId` hashes: equal to the workload's only when
        /// each event arrived once (for any practical purpose).
        fingerprint: AtomicU64,
        malformed: AtomicU64,
    }

    pub struct Sink {
        pub port: u16,
        counters: Arc<Counters>,
        tid: libc::pid_t,
        shutdown: Option<oneshot::Sender<()>>,
        thread: Option<JoinHandle<()>>,
    }

    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<Message<'a>>,
    }

    /// An event as the sink reads it: its `messageId`; the rest is parsed and skipped.
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(rename = "messageId", borrow)]
        message_id: Cow<'a, str>,
    }

    pub fn fingerprint(message_id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(message_id.as_bytes())
    }

    impl Sink {
        pub fn start(mode: Mode) -> anyhow::Result<Sink> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .context("cannot bind the sink to 127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let port = listener.local_addr()?.port();
            let counters = Arc::new(Counters::default());
            let (ready, started) = std::sync::mpsc::channel();
            let (shutdown, stopped) = oneshot::channel::<()>();
            let c = counters.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bench-sink-{port}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    // Dropping the runtime at the end drops the connections it still serves
                    // (the hanging sink's).
                    runtime.block_on(async move {
                        let listener = match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        };
                        // SAFETY: gettid has no preconditions.
                        let _ = ready.send(Ok(unsafe { libc::gettid() }));
                        tokio::select! {
                            _ = stopped => {}
                            () = serve(listener, mode, c) => {}
                        }
                    });
                })
                .context("cannot start the sink's thread")?;
            let tid = started
                .recv()
                .context("the sink's thread ended at start")?
                .context("cannot start the sink's runtime")?;
            Ok(Sink {
                port,
                counters,
                tid,
                shutdown: Some(shutdown),
                thread: Some(thread),
            })
        }

        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}/in", self.port)
        }

        pub fn reset(&self) {
            let c = &self.counters;
            for n in [&c.requests, &c.events, &c.fingerprint, &c.malformed] {
                n.store(0, Ordering::SeqCst);
            }
        }

        pub fn requests(&self) -> u64 {
            self.counters.requests.load(Ordering::SeqCst)
        }

        pub fn events(&self) -> u64 {
            self.counters.events.load(Ordering::SeqCst)
        }

        pub fn fingerprint(&self) -> u64 {
            self.counters.fingerprint.load(Ordering::SeqCst)
        }

        pub fn malformed(&self) -> u64 {
            self.counters.malformed.load(Ordering::SeqCst)
        }

        /// CPU seconds the sink's thread used so far.
        pub fn cpu_seconds(&self) -> f64 {
            super::thread_cpu_seconds(self.tid)
        }
    }

    impl Drop for Sink {
        fn drop(&mut self) {
            if let Some(shutdown) = self.shutdown.take() {
                let _ = shutdown.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    async fn serve(listener: tokio::net::TcpListener, mode: Mode, counters: Arc<Counters>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let counters = counters.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let counters = counters.clone();
                    async move { Ok::<_, Infallible>(answer(req, mode, &counters).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn answer(
        req: http::Request<Incoming>,
        mode: Mode,
        counters: &Counters,
    ) -> http::Response<Full<Bytes>> {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(400),
        };
        match mode {
            Mode::Hang => std::future::pending().await,
            Mode::Fail => respond(500),
            Mode::Count => match serde_json::from_slice::<Batch>(&body) {
                Ok(b) => {
                    let sum = b
                        .batch
                        .iter()
                        .fold(0u64, |s, m| s.wrapping_add(fingerprint(&m.message_id)));
                    // Counted before the answer: a client that has its 200 sees the count.
                    counters.fingerprint.fetch_add(sum, Ordering::SeqCst);
                    counters
                        .events
                        .fetch_add(b.batch.len() as u64, Ordering::SeqCst);
                    respond(200)
                }
                Err(_) => {
                    counters.malformed.fetch_add(1, Ordering::SeqCst);
                    respond(400)
                }
            },
        }
    }

    fn respond(status: u16) -> http::Response<Full<Bytes>> {
        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
        *resp.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

mod workload {
    //! Segment track events as the gateway stores them, the same every run.

    use std::collections::HashSet;
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
    /// Size of an event as the processed log holds it (enriched by the gateway).
    const EVENT_BYTES: usize = 500;

    pub struct Workload {
        records: Vec<EncodedRecord>,
        /// Of every `messageId`, as the sink adds them up.
        pub fingerprint: u64,
        pub payload_bytes: usize,
        /// Distinct ordering keys.
        pub keys: usize,
    }

    use crate::rng::Rng;

    const NAMES: &[&str] = &[
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Search Performed",
    ];
    const CATEGORIES: &[&str] = &["coffee", "tea", "machines", "accessories", "gifts"];
    const PRODUCTS: &[&str] = &[
        "Espresso beans 1 kg",
        "Milk frother",
        "Moka pot 6 cups",
        "Pour-over kettle",
        "Green tea 100 g",
    ];
    const PATHS: &[&str] = &["/", "/shop", "/shop/coffee", "/cart", "/checkout"];

    /// A track event as analytics.js sends it (`properties.notes` pads it later, if need be).
    fn client_event(rng: &mut Rng, i: usize, run: &str) -> Value {
        let user = rng.below(USERS);
        json!({
            "type": "track",
            "event": rng.pick(NAMES),
            "userId": format!("user-{user:05}"),
            // One per user, so the ordering keys are the users.
            "anonymousId": format!("anon-{:012x}", user.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16),
            "messageId": format!("{run}-{i:09}"),
            "originalTimestamp": timestamp::format(
                OffsetDateTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_000 + i as u64 * 37)
            ),
            "properties": {
                "category": rng.pick(CATEGORIES),
                "name": rng.pick(PRODUCTS),
                "price": rng.below(90) as f64 + 0.99,
                "currency": "EUR",
            },
            "context": {
                "library": {"name": "analytics.js", "version": "4.1.0"},
                "page": {"path": rng.pick(PATHS)},
            },
        })
    }

    pub fn generate(n: usize) -> anyhow::Result<Workload> {
        let mut rng = Rng(0x5eed);
        let run = format!("bench-{}", weir::ids::random_token(6));
        let source = SourceId::new(super::SOURCE);
        let mut records = Vec::with_capacity(n);
        let mut keys = HashSet::new();
        let (mut fingerprint, mut payload_bytes) = (0u64, 0);
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
            let prepare = |event: &Value| {
                normalize(&ctx, &event.to_string(), None, "")
                    .map_err(|e| anyhow::anyhow!("the gateway refused a bench event: {e}"))
            };
            for i in request * PER_REQUEST..((request + 1) * PER_REQUEST).min(n) {
                let mut event = client_event(&mut rng, i, &run);
                let mut prepared = prepare(&event)?;
                // `,"notes":""` is 11 bytes before any padding.
                let short = EVENT_BYTES.saturating_sub(prepared.payload.len() + 11);
                if short > 0 {
                    event["properties"]["notes"] = Value::String("n".repeat(short));
                    prepared = prepare(&event)?;
                }
                let mut meta = prepared.meta;
                // The processed log points back at the raw record (one per event here).
                meta.origin = Some(Offset(i as u64));
                keys.insert(meta.ordering_key.clone());
                let id = event["messageId"].as_str().unwrap_or_default();
                fingerprint = fingerprint.wrapping_add(super::sink::fingerprint(id));
                payload_bytes += prepared.payload.len();
                records.push(record::encode(&meta, &prepared.payload));
            }
        }
        Ok(Workload {
            records,
            fingerprint,
            payload_bytes,
            keys: keys.len(),
        })
    }

    impl Workload {
        /// A processed log holding the workload, durable before any destination reads it.
        pub fn write_log(&self, dir: &Path) -> anyhow::Result<Log> {
            super::processed_log::write(dir, &self.records)
        }
    }
}
