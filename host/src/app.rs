//! Wires the router together and owns its shutdown.
//!
//! Start: open the raw log (cutting a torn tail), restore the dedupe index, start the dedupe
//! journal and retention, then bind the listeners. Shutdown: stop accepting, let in-flight
//! requests finish (their acks complete once their fsync is done), stop the log writer after it
//! committed everything queued, then the background consumers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::Config;
use crate::dedupe::{DedupeIndex, journal};
use crate::delivery::{self, Delivery};
use crate::dlq::Dlq;
use crate::gateway::{Gateway, SourceState};
use crate::ids::{ConsumerId, Offset, SourceId, random_token};
use crate::log::storage::{self, Storage};
use crate::log::{Log, LogError, LogOptions, OffsetStore};
use crate::pipeline::{self, Pipeline};
use crate::plugin::registry::{PluginSlot, Registry};
use crate::plugin::{PluginEngine, PluginError};
use crate::server;
use crate::telemetry::Metrics;
use crate::warehouse::WarehouseLoader;

/// How often segments every consumer is past are looked for.
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("cannot listen on {addr}: {source} (is another weir, or something else, using it?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Directory layout inside the data dir.
pub struct Layout {
    pub raw_log: PathBuf,
    pub processed_log: PathBuf,
    pub raw_offsets: PathBuf,
    pub processed_offsets: PathBuf,
    pub dedupe: PathBuf,
    pub admin_token: PathBuf,
    pub plugin_cache: PathBuf,
    pub plugin_versions: PathBuf,
    pub data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Layout {
            raw_log: data_dir.join("log").join("raw"),
            processed_log: data_dir.join("log").join("processed"),
            raw_offsets: data_dir.join("offsets").join("raw"),
            processed_offsets: data_dir.join("offsets").join("processed"),
            dedupe: data_dir.join("dedupe"),
            admin_token: data_dir.join("admin.token"),
            plugin_cache: data_dir.join("plugin-cache"),
            plugin_versions: data_dir.join("plugins"),
            data_dir: data_dir.to_owned(),
        }
    }
}

/// A running router.
pub struct App {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    gateway: Arc<Gateway>,
    shutdown_tx: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    raw_log: Log,
    processed_log: Log,
    pipeline_dlq: Arc<Dlq>,
    /// Tells the background threads (dedupe journal, pipeline, plugin watcher) to stop.
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    retention: Vec<JoinHandle<()>>,
}

struct Opened {
    raw_log: Log,
    processed_log: Log,
    pipeline_dlq: Arc<Dlq>,
    offsets: Arc<OffsetStore>,
    processed_offsets: Arc<OffsetStore>,
    indexes: journal::Indexes,
    dedupe_from: Offset,
    pipeline_from: Offset,
    registry: Arc<Registry>,
    admin_token: String,
}

/// The blocking part of start-up: recovery and restore.
fn open(
    config: &Config,
    storage: &Arc<dyn Storage>,
    metrics: &Metrics,
) -> Result<Opened, AppError> {
    let layout = Layout::new(&config.data_dir);
    let options = LogOptions::from(&config.log);
    // Only the raw log's fsyncs hold up acks: it writes zeros ahead of its appends so they
    // do not change its size (ARCHITECTURE *Durable log*).
    let raw_options = LogOptions {
        preallocate_bytes: crate::log::PREALLOCATE_BYTES,
        ..options.clone()
    };
    let raw_log = Log::open(
        &layout.raw_log,
        storage.clone(),
        &raw_options,
        metrics.log("raw"),
    )?;
    let processed_log = Log::open(
        &layout.processed_log,
        storage.clone(),
        &options,
        metrics.log("processed"),
    )?;
    let pipeline_dlq = open_dlq(config, storage, metrics, pipeline::DLQ)?;
    let offsets = Arc::new(OffsetStore::open(storage.clone(), &layout.raw_offsets)?);
    let processed_offsets = Arc::new(OffsetStore::open(
        storage.clone(),
        &layout.processed_offsets,
    )?);
    let indexes: journal::Indexes = config
        .sources
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                (Arc::new(DedupeIndex::new(&s.dedupe)), s.dedupe),
            )
        })
        .collect();
    let dedupe_from = journal::restore(
        storage.as_ref(),
        &layout.dedupe,
        &indexes,
        &raw_log,
        &offsets,
    )?;
    let pipeline_from = pipeline::resume_offset(&raw_log, &processed_log, &offsets)?;
    // A new warehouse or destination starts where the processed log is now (or at its oldest
    // record with `backfill`); fixed before any traffic is accepted, so no event slips past it.
    let consumers = config
        .warehouses
        .iter()
        .map(|w| (w.consumer(), w.backfill))
        .chain(
            config
                .destinations
                .iter()
                .map(|d| (d.consumer(), d.backfill)),
        );
    for (consumer, backfill) in consumers {
        if processed_offsets.load(&consumer)?.is_none() {
            let start = if backfill {
                processed_log.oldest()
            } else {
                processed_log.head().next
            };
            processed_offsets.commit(&consumer, start)?;
        }
    }
    let admin_token = match &config.admin.token {
        Some(t) => t.clone(),
        None => load_or_create_secret(storage.as_ref(), &layout.admin_token)?,
    };
    // Compiling plugins takes a moment; a broken one stops the start with its error.
    let engine = PluginEngine::new(Some(layout.plugin_cache.clone()))?;
    let registry = Arc::new(Registry::open(
        &config.plugins,
        &engine,
        &metrics.plugins,
        &layout.plugin_versions,
    )?);
    Ok(Opened {
        raw_log,
        processed_log,
        pipeline_dlq,
        offsets,
        processed_offsets,
        indexes,
        dedupe_from,
        pipeline_from,
        registry,
        admin_token,
    })
}

/// Reads a generated secret from `path`, creating it on first use so it survives restarts.
pub fn load_or_create_secret(storage: &dyn Storage, path: &Path) -> Result<String, AppError> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| AppError::Io { what, source }
    };
    if storage.exists(path) {
        let bytes = storage::read_all(storage, path).map_err(io("read"))?;
        let s = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    if let Some(dir) = path.parent() {
        storage
            .create_dir_all(dir)
            .map_err(io("create the directory of"))?;
    }
    let secret = random_token(32);
    storage::write_atomic(storage, path, secret.as_bytes()).map_err(io("write"))?;
    Ok(secret)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

impl App {
    /// Starts the router; returns once it is listening.
    pub async fn start(config: Config, storage: Arc<dyn Storage>) -> Result<App, AppError> {
        let metrics = Metrics::new();
        let opened = {
            let (config, storage, metrics) = (config.clone(), storage.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || open(&config, &storage, &metrics))
                .await
                .map_err(|e| AppError::Io {
                    what: "start-up".into(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        let Opened {
            raw_log,
            processed_log,
            pipeline_dlq,
            offsets,
            processed_offsets,
            indexes,
            dedupe_from,
            pipeline_from,
            registry,
            admin_token,
        } = opened;
        let layout = Layout::new(&config.data_dir);
        let thread_err = |what: &str| {
            let what = what.to_owned();
            move |source| AppError::Io { what, source }
        };

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        threads.push(
            journal::spawn(
                storage.clone(),
                layout.dedupe.clone(),
                &indexes,
                raw_log.reader(dedupe_from),
                offsets.clone(),
                stop.clone(),
            )
            .map_err(thread_err("start the dedupe journal"))?,
        );
        let mut chains: HashMap<SourceId, Vec<Arc<PluginSlot>>> = HashMap::new();
        for s in &config.sources {
            let mut chain = Vec::new();
            for name in s.transforms.iter().chain(&s.filters) {
                chain.push(registry.get(name)?.clone());
            }
            chains.insert(s.id.clone(), chain);
        }
        threads.push(
            Pipeline {
                reader: raw_log.reader(pipeline_from),
                processed: processed_log.appender(),
                offsets: offsets.clone(),
                dlq: pipeline_dlq.clone(),
                chains,
                metrics: metrics.plugins.clone(),
                batch_size: config.pipeline.batch_size,
            }
            .spawn(stop.clone())
            .map_err(thread_err("start the pipeline"))?,
        );
        threads.push(
            registry
                .spawn_watcher(config.pipeline.watch_interval, stop.clone())
                .map_err(thread_err("start the plugin watcher"))?,
        );

        let mut dlqs = HashMap::from([(pipeline::DLQ.to_owned(), pipeline_dlq.clone())]);
        for spec in &config.warehouses {
            let filters = spec
                .filters
                .iter()
                .map(|name| registry.get(name).cloned())
                .collect::<Result<Vec<_>, _>>()?;
            // Events a filter fails, and events the warehouse refuses a value of.
            let dlq = open_dlq(&config, &storage, &metrics, &spec.stage())?;
            dlqs.insert(spec.stage(), dlq.clone());
            threads.push(
                WarehouseLoader {
                    spec: spec.clone(),
                    log: processed_log.shared().clone(),
                    offsets: processed_offsets.clone(),
                    metrics: metrics.warehouses.clone(),
                    data_dir: config.data_dir.clone(),
                    filters,
                    dlq,
                }
                .spawn(stop.clone())
                .map_err(thread_err("start a warehouse loader"))?,
            );
        }

        let mut deliveries = HashMap::new();
        for spec in &config.destinations {
            let plugin = registry.get(&spec.plugin)?.clone();
            delivery::check_plugin(&plugin).map_err(|e| AppError::Plugin(PluginError::Init(e)))?;
            let chain = spec
                .chain
                .iter()
                .map(|name| registry.get(name).cloned())
                .collect::<Result<Vec<_>, _>>()?;
            let dlq = open_dlq(&config, &storage, &metrics, &spec.stage())?;
            dlqs.insert(spec.stage(), dlq.clone());
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            deliveries.insert(spec.stage(), tx);
            threads.push(
                Delivery {
                    spec: spec.clone(),
                    log: processed_log.shared().clone(),
                    offsets: processed_offsets.clone(),
                    plugin,
                    chain,
                    dlq,
                    metrics: metrics.delivery.clone(),
                    store_dir: layout
                        .data_dir
                        .join("delivery")
                        .join(spec.consumer().file_stem()),
                    replays: rx,
                }
                .spawn(stop.clone())
                .map_err(thread_err("start a destination"))?,
            );
        }

        // Raw segments go once the pipeline and the dedupe journal are past them; processed
        // segments once every warehouse and destination is (never while nothing reads them).
        let consumers: Vec<ConsumerId> = vec![pipeline::consumer(), journal::consumer()];
        let mut retention = vec![spawn_retention(
            raw_log.shared().clone(),
            offsets.clone(),
            consumers,
        )];
        let downstream: Vec<ConsumerId> = config
            .warehouses
            .iter()
            .map(|w| w.consumer())
            .chain(config.destinations.iter().map(|d| d.consumer()))
            .collect();
        if !downstream.is_empty() {
            retention.push(spawn_retention(
                processed_log.shared().clone(),
                processed_offsets.clone(),
                downstream,
            ));
        }

        retention.push(spawn_dlq_caps(
            dlqs.values().cloned().collect(),
            config.dlq.max_age,
        ));

        let sources: HashMap<SourceId, Arc<SourceState>> = config
            .sources
            .iter()
            .map(|s| {
                let index = indexes
                    .get(&s.id)
                    .map(|(i, _)| i.clone())
                    .unwrap_or_else(|| Arc::new(DedupeIndex::new(&s.dedupe)));
                (s.id.clone(), Arc::new(SourceState::new(s, index)))
            })
            .collect();
        let gateway = Arc::new(Gateway::new(
            &config,
            &sources,
            raw_log.appender(),
            metrics.gateway.clone(),
        ));
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            token: admin_token.clone(),
            registry: registry.clone(),
            dlqs,
            raw: raw_log.appender(),
            deliveries,
        });

        let ingest_listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin.listen).await?;
        let ingest_addr = ingest_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| AppError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let g = gateway.clone();
        let ingest = server::spawn(
            "ingest",
            ingest_listener,
            move |req, peer| {
                let g = g.clone();
                async move { g.handle(req, peer).await }
            },
            shutdown_rx.clone(),
        );
        let a = admin.clone();
        let admin_server = server::spawn(
            "admin",
            admin_listener,
            move |req, peer| {
                let a = a.clone();
                async move { a.handle(req, peer).await }
            },
            shutdown_rx,
        );
        tracing::info!(%ingest_addr, %admin_addr, "weir is serving");
        Ok(App {
            ingest_addr,
            admin_addr,
            admin_token,
            metrics,
            registry,
            gateway,
            shutdown_tx,
            servers: vec![ingest, admin_server],
            raw_log,
            processed_log,
            pipeline_dlq,
            stop,
            threads,
            retention,
        })
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests and their acks, stop the
    /// writer after its last fsync, then the background consumers.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        self.shutdown_tx.send_replace(true);
        for s in self.servers {
            let _ = s.await;
        }
        // The servers held the last references to the gateway's appender.
        drop(self.gateway);
        for r in self.retention {
            r.abort();
        }
        let (raw_log, processed_log, dlq) = (self.raw_log, self.processed_log, self.pipeline_dlq);
        let (stop, threads) = (self.stop, self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            stop.store(true, Ordering::Release);
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a background thread panicked");
                }
            }
            raw_log.close();
            processed_log.close();
            if let Some(dlq) = Arc::into_inner(dlq) {
                dlq.close();
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("shutdown did not complete cleanly");
        }
        tracing::info!("weir stopped");
    }
}

/// Opens the dead-letter queue `name` with the configured caps.
fn open_dlq(
    config: &Config,
    storage: &Arc<dyn Storage>,
    metrics: &Metrics,
    name: &str,
) -> Result<Arc<Dlq>, LogError> {
    Dlq::open(
        &config.data_dir,
        name,
        storage.clone(),
        &LogOptions::from(&config.log),
        config.dlq,
        metrics.log("dlq"),
        metrics.dlq.clone(),
    )
    .map(Arc::new)
}

/// Applies the dead-letter queues' age cap as time passes (appends apply both caps already).
fn spawn_dlq_caps(dlqs: Vec<Arc<Dlq>>, max_age: Duration) -> JoinHandle<()> {
    // A quarter of the age cap, so entries live at most 25% longer than it; at most a minute.
    let every = (max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dlqs = dlqs.clone();
            let swept = tokio::task::spawn_blocking(move || {
                for dlq in &dlqs {
                    if let Err(e) = dlq.enforce_caps() {
                        tracing::warn!(queue = %dlq.name, error = %e, "cannot apply the dead-letter caps");
                    }
                }
            })
            .await;
            if let Err(e) = swept {
                tracing::warn!(error = %e, "dead-letter cap task failed");
            }
        }
    })
}

/// Deletes log segments every configured consumer is past.
fn spawn_retention(
    log: Arc<crate::log::Shared>,
    offsets: Arc<OffsetStore>,
    consumers: Vec<ConsumerId>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (log, offsets, consumers) = (log.clone(), offsets.clone(), consumers.clone());
            let result = tokio::task::spawn_blocking(move || {
                let low = offsets.low_water_mark(&consumers)?;
                log.delete_before(low)
            })
            .await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "log retention failed"),
                Err(e) => tracing::warn!(error = %e, "log retention task failed"),
            }
        }
    })
}
