//! `weir.toml`: parsed once at start-up into typed, validated structs.
//!
//! Loading never stops at the first problem: every unknown key, wrong type, missing environment
//! variable and inconsistent setting is collected with its path (`sources[1].rate_limit.burst`)
//! so `weir check-config` can report them all at once.

mod env;
mod file;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::delivery::DestinationSpec;
use crate::ids::{SourceId, WriteKey};
use crate::plugin::registry::PluginSpec;
use crate::warehouse::{Engine, WarehouseSpec};

pub use file::DEFAULT_SOURCE;

/// Name of the demo transformer of the embedded defaults.
pub const DEMO_PLUGIN: &str = "demo-normalize";

/// The whole router configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the ingest listener (SDK traffic and health checks).
    pub listen: SocketAddr,
    /// Where the log, offsets, dedupe state and plugin cache live.
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub log: LogConfig,
    /// Caps of every dead-letter queue.
    pub dlq: DlqConfig,
    pub admin: AdminConfig,
    pub sources: Vec<SourceConfig>,
    /// Plugins, referenced by name from sources' chains.
    pub plugins: Vec<PluginSpec>,
    pub pipeline: PipelineConfig,
    /// Batch loading into warehouses.
    pub warehouses: Vec<WarehouseSpec>,
    /// Real-time delivery to HTTP destinations.
    pub destinations: Vec<DestinationSpec>,
}

/// The pipeline from the raw to the processed log.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Raw records read and sent through the plugins per batch.
    pub batch_size: usize,
    /// How often watched plugin files are checked for changes.
    pub watch_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 500,
            watch_interval: Duration::from_millis(500),
        }
    }
}

/// Request and event size limits of the gateway.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, after gzip decoding. Bigger requests get 413.
    pub max_request_bytes: usize,
    /// Largest single event; a bigger one inside a batch is stored as an invalid record.
    pub max_event_bytes: usize,
    /// Most events accepted in one request; more gets 413.
    pub max_batch_events: usize,
}

/// Settings of the durable log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A segment file is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// How long the writer may wait for more appends before an fsync when it is idle. The
    /// default, zero, syncs as soon as there is work: group commit then comes from the appends
    /// that arrive while the previous fsync runs.
    pub flush_interval: Duration,
    /// The writer syncs at the latest once this many bytes are waiting.
    pub flush_bytes: usize,
    /// Size cap of all segments together; beyond it ingest answers 503 until consumers catch up
    /// and segments are deleted. Never silent deletion.
    pub max_bytes: u64,
}

/// Caps of each dead-letter queue. Entries beyond a cap are evicted, oldest first, counted in
/// `weir_dlq_evicted_total` and logged: a DLQ that nobody replays must not fill the disk and
/// stop ingest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DlqConfig {
    /// Size cap of one queue on disk.
    pub max_bytes: u64,
    /// Entries older than this (since they were dead-lettered) are evicted.
    pub max_age: Duration,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            max_bytes: 1024 * 1024 * 1024,
            max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// The admin listener: `/metrics` and the admin API.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for admin routes (not for `/metrics`). `None`: generated at start-up and
    /// stored in the data directory.
    pub token: Option<String>,
}

/// One source: an app or site that sends events with its own write key(s).
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub id: SourceId,
    pub write_keys: Vec<WriteKey>,
    pub rate_limit: Option<RateLimit>,
    pub dedupe: DedupeConfig,
    /// Transformer plugins, in order, then filter plugins, in order.
    pub transforms: Vec<String>,
    pub filters: Vec<String>,
}

/// Events per second with a burst, counted per event (not per request).
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub events_per_second: u32,
    pub burst: u32,
}

/// How long and how many message ids a source remembers to drop duplicates.
#[derive(Clone, Copy, Debug)]
pub struct DedupeConfig {
    pub window: Duration,
    pub max_ids: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: Duration::from_secs(3600),
            max_ids: 10_000_000,
        }
    }
}

/// Every problem found in a config, each with the path of the offending value.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a dotted path (`sources[0].write_keys`); empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} has {} problem{}:",
            self.file.display(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates `path`, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_owned(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `lookup_env` resolves `${VAR}` references. Relative `data_dir`s are
    /// kept relative to the working directory, like the CLI's `--data-dir`.
    pub fn parse(
        text: &str,
        file: &Path,
        lookup_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let base = file.parent().unwrap_or(Path::new("."));
        file::parse(text, base, lookup_env).map_err(|problems| ConfigErrors {
            file: file.to_owned(),
            problems,
        })
    }

    /// The configuration `weir serve` runs with when given no file: one source named `default`
    /// with `write_key`, data in `data_dir`, the bundled `normalize` transformer (whose
    /// component the caller writes to `demo_plugin`) turning event names into snake_case, and a
    /// DuckDB warehouse in `<data_dir>/warehouse.duckdb` loaded every second.
    pub fn embedded(data_dir: PathBuf, write_key: WriteKey, demo_plugin: PathBuf) -> Config {
        let mut config = file::defaults();
        config.data_dir = data_dir;
        config.plugins = vec![PluginSpec {
            name: DEMO_PLUGIN.into(),
            kind: Some(crate::plugin::PluginKind::Transformer),
            path: demo_plugin,
            config: serde_json::json!({
                "case": "snake_case",
                "add_properties": {"processed_by": "weir-demo"}
            }),
            config_file: None,
            fixtures: None,
            limits: crate::plugin::PluginLimits::default(),
            rollback: crate::plugin::registry::RollbackPolicy::default(),
        }];
        config.sources = vec![SourceConfig {
            id: SourceId::new(DEFAULT_SOURCE),
            write_keys: vec![write_key],
            rate_limit: None,
            dedupe: DedupeConfig::default(),
            transforms: vec![DEMO_PLUGIN.into()],
            filters: Vec::new(),
        }];
        config.warehouses = vec![WarehouseSpec {
            name: "warehouse".into(),
            engine: Engine::DuckDb { path: None },
            sources: vec![SourceId::new(DEFAULT_SOURCE)],
            flush_interval: Duration::from_secs(1),
            flush_events: 10_000,
            max_tables: 500,
            max_columns: 1_000,
            backfill: true,
            filters: Vec::new(),
        }];
        config
    }

    /// Map from every write key to its source.
    pub fn write_key_index(&self) -> HashMap<WriteKey, SourceId> {
        self.sources
            .iter()
            .flat_map(|s| s.write_keys.iter().map(|k| (k.clone(), s.id.clone())))
            .collect()
    }
}
