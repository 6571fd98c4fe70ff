//! The file format of `weir.toml` and its translation into [`Config`].
//!
//! Each top-level section and each source is deserialized on its own, so a problem in one does
//! not hide problems in the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{
    AdminConfig, Config, DedupeConfig, DlqConfig, Limits, LogConfig, PipelineConfig, Problem,
    RateLimit, SourceConfig, env,
};
use crate::delivery::{DestinationSpec, RetryPolicy};
use crate::ids::{SourceId, WriteKey};
use crate::plugin::registry::{PluginSpec, RollbackPolicy};
use crate::plugin::{PluginKind, PluginLimits};
use crate::warehouse::{Engine, WarehouseSpec};

/// Name of the source the embedded defaults create.
pub const DEFAULT_SOURCE: &str = "default";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
const DEFAULT_DATA_DIR: &str = "./weir-data";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default = "default_max_request_bytes")]
    max_request_bytes: usize,
    #[serde(default = "default_max_event_bytes")]
    max_event_bytes: usize,
    #[serde(default = "default_max_batch_events")]
    max_batch_events: usize,
}

fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_event_bytes() -> usize {
    32 * 1024
}
fn default_max_batch_events() -> usize {
    2_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    #[serde(default = "default_segment_bytes")]
    segment_bytes: u64,
    #[serde(default)]
    flush_interval_ms: u64,
    #[serde(default = "default_flush_bytes")]
    flush_bytes: usize,
    #[serde(default = "default_max_log_bytes")]
    max_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqFile {
    max_bytes: Option<u64>,
    max_age_ms: Option<u64>,
}

/// The smallest DLQ size cap: a queue keeps eight segments of at least 8 KiB.
const MIN_DLQ_BYTES: u64 = 64 * 1024;

fn default_segment_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_flush_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_log_bytes() -> u64 {
    16 * 1024 * 1024 * 1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    #[serde(default = "default_admin_listen")]
    listen: String,
    token: Option<String>,
}

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    name: String,
    write_keys: Vec<String>,
    rate_limit: Option<RateLimitFile>,
    dedupe: Option<DedupeFile>,
    #[serde(default)]
    transforms: Vec<String>,
    #[serde(default)]
    filters: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginFile {
    name: String,
    path: PathBuf,
    kind: Option<PluginKind>,
    config: Option<toml::Table>,
    config_file: Option<PathBuf>,
    fixtures: Option<PathBuf>,
    timeout_ms: Option<u64>,
    memory_mb: Option<usize>,
    rollback: Option<RollbackFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackFile {
    window: Option<u64>,
    max_failure_ratio: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarehouseFile {
    name: String,
    engine: String,
    path: Option<PathBuf>,
    url: Option<String>,
    sources: Vec<String>,
    flush_interval_ms: Option<u64>,
    flush_events: Option<usize>,
    max_tables: Option<usize>,
    max_columns: Option<usize>,
    backfill: Option<bool>,
    #[serde(default)]
    filters: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationFile {
    name: String,
    plugin: String,
    sources: Vec<String>,
    #[serde(default)]
    chain: Vec<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    batch_size: Option<usize>,
    concurrency: Option<usize>,
    rate_limit: Option<DestinationRateFile>,
    retry: Option<RetryFile>,
    timeout_ms: Option<u64>,
    retry_store_capacity: Option<usize>,
    backfill: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationRateFile {
    requests_per_second: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    max_age_ms: Option<u64>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    batch_size: Option<usize>,
    watch_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    events_per_second: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupeFile {
    window_secs: Option<u64>,
    max_ids: Option<usize>,
}

/// The built-in defaults, with no sources.
pub fn defaults() -> Config {
    Config {
        listen: parse_addr(DEFAULT_LISTEN),
        data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        limits: Limits {
            max_request_bytes: default_max_request_bytes(),
            max_event_bytes: default_max_event_bytes(),
            max_batch_events: default_max_batch_events(),
        },
        log: LogConfig {
            segment_bytes: default_segment_bytes(),
            flush_interval: Duration::ZERO,
            flush_bytes: default_flush_bytes(),
            max_bytes: default_max_log_bytes(),
        },
        dlq: DlqConfig::default(),
        admin: AdminConfig {
            listen: parse_addr(DEFAULT_ADMIN_LISTEN),
            token: None,
        },
        sources: Vec::new(),
        plugins: Vec::new(),
        pipeline: PipelineConfig::default(),
        warehouses: Vec::new(),
        destinations: Vec::new(),
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| unreachable!("built-in address {s} parses"))
}

/// Collects problems while the sections are read.
struct Reader<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Reader<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes one section, recording its first problem with the full path.
    fn section<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match (path.is_empty(), inner == ".") {
                    (_, true) => path.to_owned(),
                    (true, false) => inner,
                    (false, false) => format!("{path}.{inner}"),
                };
                let message = e.into_inner().to_string();
                // toml's messages end with a newline and sometimes repeat the position; keep
                // the first line, which says what was wrong.
                let message = message.lines().next().unwrap_or_default().to_owned();
                self.problem(full, message);
                None
            }
        }
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    format!("`{s}` is not a socket address; write it like \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }
}

/// `base`: the directory of the config file; relative plugin paths are resolved against it.
pub fn parse(
    text: &str,
    base: &std::path::Path,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim_end()),
            }]);
        }
    };
    let mut root = toml::Value::Table(table);
    env::expand(&mut root, "", lookup_env, &mut problems);
    let toml::Value::Table(table) = root else {
        unreachable!("the root stays a table")
    };

    let mut config = defaults();
    let mut r = Reader {
        problems: &mut problems,
    };
    let mut saw_sources = false;
    // Index in the file of each source kept in `config.sources` (a broken one is skipped), so
    // later problems name the right `sources[i]`.
    let mut source_index = Vec::new();
    for (key, value) in table {
        match key.as_str() {
            "listen" => {
                if let Some(s) = r.section::<String>("listen", value)
                    && let Some(a) = r.addr("listen", &s)
                {
                    config.listen = a;
                }
            }
            "data_dir" => {
                if let Some(s) = r.section::<PathBuf>("data_dir", value) {
                    config.data_dir = s;
                }
            }
            "limits" => {
                if let Some(l) = r.section::<LimitsFile>("limits", value) {
                    config.limits = Limits {
                        max_request_bytes: l.max_request_bytes,
                        max_event_bytes: l.max_event_bytes,
                        max_batch_events: l.max_batch_events,
                    };
                }
            }
            "log" => {
                if let Some(l) = r.section::<LogFile>("log", value) {
                    config.log = LogConfig {
                        segment_bytes: l.segment_bytes,
                        flush_interval: Duration::from_millis(l.flush_interval_ms),
                        flush_bytes: l.flush_bytes,
                        max_bytes: l.max_bytes,
                    };
                }
            }
            "dlq" => {
                if let Some(d) = r.section::<DlqFile>("dlq", value) {
                    let defaults = DlqConfig::default();
                    config.dlq = DlqConfig {
                        max_bytes: d.max_bytes.unwrap_or(defaults.max_bytes),
                        max_age: d.max_age_ms.map_or(defaults.max_age, Duration::from_millis),
                    };
                    if config.dlq.max_bytes < MIN_DLQ_BYTES {
                        r.problem(
                            "dlq.max_bytes",
                            format!("must be at least {MIN_DLQ_BYTES} (64 KiB)"),
                        );
                    }
                    if config.dlq.max_age.is_zero() {
                        r.problem("dlq.max_age_ms", "must be greater than zero");
                    }
                }
            }
            "admin" => {
                if let Some(a) = r.section::<AdminFile>("admin", value)
                    && let Some(listen) = r.addr("admin.listen", &a.listen)
                {
                    config.admin = AdminConfig {
                        listen,
                        token: a.token,
                    };
                }
            }
            "sources" => {
                saw_sources = true;
                let toml::Value::Array(items) = value else {
                    r.problem(
                        "sources",
                        "must be an array of tables: write each source as [[sources]]",
                    );
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("sources[{i}]");
                    if let Some(s) = r.section::<SourceFile>(&path, item) {
                        config.sources.push(source(&mut r, &path, s));
                        source_index.push(i);
                    }
                }
            }
            "plugins" => {
                let toml::Value::Array(items) = value else {
                    r.problem(
                        "plugins",
                        "must be an array of tables: write each plugin as [[plugins]]",
                    );
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("plugins[{i}]");
                    if let Some(p) = r.section::<PluginFile>(&path, item) {
                        config.plugins.push(plugin(&mut r, &path, p, base));
                    }
                }
            }
            "warehouses" => {
                let toml::Value::Array(items) = value else {
                    r.problem(
                        "warehouses",
                        "must be an array of tables: write each warehouse as [[warehouses]]",
                    );
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("warehouses[{i}]");
                    if let Some(w) = r.section::<WarehouseFile>(&path, item)
                        && let Some(spec) = warehouse(&mut r, &path, w, base)
                    {
                        config.warehouses.push(spec);
                    }
                }
            }
            "destinations" => {
                let toml::Value::Array(items) = value else {
                    r.problem(
                        "destinations",
                        "must be an array of tables: write each destination as [[destinations]]",
                    );
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("destinations[{i}]");
                    if let Some(d) = r.section::<DestinationFile>(&path, item) {
                        config.destinations.push(destination(d));
                    }
                }
            }
            "pipeline" => {
                if let Some(p) = r.section::<PipelineFile>("pipeline", value) {
                    let d = PipelineConfig::default();
                    config.pipeline = PipelineConfig {
                        batch_size: p.batch_size.unwrap_or(d.batch_size),
                        watch_interval: p
                            .watch_interval_ms
                            .map_or(d.watch_interval, Duration::from_millis),
                    };
                }
            }
            other => r.problem(
                other,
                "unknown key; known top-level keys are listen, data_dir, limits, log, dlq, admin, \
                 pipeline, plugins, sources, warehouses, destinations",
            ),
        }
    }
    if !saw_sources {
        r.problem(
            "sources",
            "no source configured: add at least one [[sources]] with a name and write_keys",
        );
    }
    validate(&config, &source_index, &mut r);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn source(r: &mut Reader<'_>, path: &str, s: SourceFile) -> SourceConfig {
    let defaults = DedupeConfig::default();
    let dedupe = s.dedupe.map_or(defaults, |d| DedupeConfig {
        window: d.window_secs.map_or(defaults.window, Duration::from_secs),
        max_ids: d.max_ids.unwrap_or(defaults.max_ids),
    });
    let rate_limit = s.rate_limit.map(|rl| RateLimit {
        events_per_second: rl.events_per_second,
        burst: rl.burst.unwrap_or(rl.events_per_second),
    });
    if s.write_keys.is_empty() {
        r.problem(
            format!("{path}.write_keys"),
            "empty: give the source at least one write key",
        );
    }
    for (i, k) in s.write_keys.iter().enumerate() {
        if k.trim().is_empty() || k.contains(':') {
            r.problem(
                format!("{path}.write_keys[{i}]"),
                "a write key must be non-empty and contain no `:` (it is sent as a Basic-auth user name)",
            );
        }
    }
    SourceConfig {
        id: SourceId::new(&s.name),
        write_keys: s.write_keys.iter().map(|k| WriteKey::new(k)).collect(),
        rate_limit,
        dedupe,
        transforms: s.transforms,
        filters: s.filters,
    }
}

fn destination(d: DestinationFile) -> DestinationSpec {
    let defaults = RetryPolicy::default();
    let retry = d.retry.map_or(defaults, |r| RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
        max_age: r.max_age_ms.map_or(defaults.max_age, Duration::from_millis),
        initial_backoff: r
            .initial_backoff_ms
            .map_or(defaults.initial_backoff, Duration::from_millis),
        max_backoff: r
            .max_backoff_ms
            .map_or(defaults.max_backoff, Duration::from_millis),
    });
    DestinationSpec {
        name: d.name,
        plugin: d.plugin,
        sources: d.sources.iter().map(|s| SourceId::new(s)).collect(),
        chain: d.chain,
        allow_hosts: d.allow_hosts,
        batch_size: d.batch_size.unwrap_or(100),
        concurrency: d.concurrency.unwrap_or(4),
        rate_limit: d.rate_limit.map(|r| {
            (
                r.requests_per_second,
                r.burst.unwrap_or(r.requests_per_second),
            )
        }),
        retry,
        timeout: Duration::from_millis(d.timeout_ms.unwrap_or(10_000)),
        retry_store_capacity: d.retry_store_capacity.unwrap_or(100_000),
        backfill: d.backfill.unwrap_or(false),
    }
}

fn warehouse(
    r: &mut Reader<'_>,
    path: &str,
    w: WarehouseFile,
    base: &std::path::Path,
) -> Option<WarehouseSpec> {
    let engine = match (w.engine.as_str(), w.url, w.path) {
        ("duckdb", None, file) => Engine::DuckDb {
            path: file.map(|p| if p.is_absolute() { p } else { base.join(p) }),
        },
        ("postgres", Some(url), None) => Engine::Postgres { url },
        ("duckdb", Some(_), _) => {
            r.problem(
                format!("{path}.url"),
                "a duckdb warehouse takes `path`, not `url`",
            );
            return None;
        }
        ("postgres", None, _) | ("postgres", _, Some(_)) => {
            r.problem(
                format!("{path}.url"),
                "a postgres warehouse needs `url` (postgres://user@host:5432/db) and no `path`",
            );
            return None;
        }
        (other, _, _) => {
            r.problem(
                format!("{path}.engine"),
                format!("`{other}` is not a warehouse engine; use \"duckdb\" or \"postgres\""),
            );
            return None;
        }
    };
    let spec = WarehouseSpec {
        name: w.name,
        engine,
        sources: w.sources.iter().map(|s| SourceId::new(s)).collect(),
        flush_interval: Duration::from_millis(w.flush_interval_ms.unwrap_or(5_000)),
        flush_events: w.flush_events.unwrap_or(10_000),
        max_tables: w.max_tables.unwrap_or(500),
        max_columns: w.max_columns.unwrap_or(1_000),
        backfill: w.backfill.unwrap_or(false),
        filters: w.filters,
    };
    if spec.flush_interval.is_zero()
        || spec.flush_events == 0
        || spec.max_tables == 0
        || spec.max_columns < 20
    {
        r.problem(
            path.to_owned(),
            "flush_interval_ms and flush_events must be > 0, max_tables > 0 and max_columns >= 20",
        );
    }
    // A source's rows go into the database schema named after it: PostgreSQL reserves `pg_*`
    // and `information_schema` (DuckDB has `pg_catalog` and `information_schema` as system
    // schemas too), and a load into one would fail every time.
    for (i, source) in spec.sources.iter().enumerate() {
        let schema = crate::warehouse::schema_name(source);
        if schema.starts_with("pg_") || schema == "information_schema" {
            r.problem(
                format!("{path}.sources[{i}]"),
                format!(
                    "source `{source}` would load into schema `{schema}`, a name reserved for \
                     system schemas (`pg_*`, `information_schema`); give the source another name"
                ),
            );
        }
    }
    if matches!(spec.engine, Engine::Postgres { .. }) && spec.max_columns > 1_600 {
        r.problem(
            format!("{path}.max_columns"),
            "PostgreSQL tables hold at most 1600 columns",
        );
    }
    Some(spec)
}

fn plugin(r: &mut Reader<'_>, path: &str, p: PluginFile, base: &std::path::Path) -> PluginSpec {
    let defaults = PluginLimits::default();
    let limits = PluginLimits {
        timeout: p.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: p.memory_mb.map_or(defaults.memory_bytes, |mb| mb << 20),
    };
    if limits.timeout.is_zero() || limits.memory_bytes == 0 {
        r.problem(
            path.to_owned(),
            "timeout_ms and memory_mb must be greater than zero",
        );
    }
    let rollback_default = RollbackPolicy::default();
    let rollback = p.rollback.map_or(rollback_default, |rb| RollbackPolicy {
        window: rb.window.unwrap_or(rollback_default.window),
        max_failure_ratio: rb
            .max_failure_ratio
            .unwrap_or(rollback_default.max_failure_ratio),
    });
    if !(0.0..=1.0).contains(&rollback.max_failure_ratio) || rollback.window == 0 {
        r.problem(
            format!("{path}.rollback"),
            "window must be > 0 and max_failure_ratio between 0.0 and 1.0",
        );
    }
    let config = match p.config.map(serde_json::to_value) {
        None => serde_json::Value::Object(Default::default()),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            r.problem(
                format!("{path}.config"),
                format!("cannot be turned into JSON: {e}"),
            );
            serde_json::Value::Null
        }
    };
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    PluginSpec {
        name: p.name,
        kind: p.kind,
        path: resolve(p.path),
        config,
        config_file: p.config_file.map(resolve),
        fixtures: p.fixtures.map(resolve),
        limits,
        rollback,
    }
}

/// Checks that need the whole config.
fn validate(config: &Config, source_index: &[usize], r: &mut Reader<'_>) {
    let l = &config.limits;
    if l.max_request_bytes == 0 || l.max_event_bytes == 0 || l.max_batch_events == 0 {
        r.problem("limits", "limits must be greater than zero");
    }
    if l.max_event_bytes > l.max_request_bytes {
        r.problem(
            "limits.max_event_bytes",
            format!(
                "{} is larger than limits.max_request_bytes ({})",
                l.max_event_bytes, l.max_request_bytes
            ),
        );
    }
    if config.log.segment_bytes < 4096 {
        r.problem("log.segment_bytes", "must be at least 4096");
    }
    if config.log.max_bytes < config.log.segment_bytes {
        r.problem(
            "log.max_bytes",
            format!(
                "the size cap ({}) must be at least one segment (log.segment_bytes = {})",
                config.log.max_bytes, config.log.segment_bytes
            ),
        );
    }
    // Port 0 asks the OS for a free port, so two zeros never collide.
    if config.admin.listen == config.listen && config.listen.port() != 0 {
        r.problem(
            "admin.listen",
            "the admin listener must not share the ingest address",
        );
    }
    if let Some(token) = &config.admin.token
        && token.len() < 16
    {
        r.problem("admin.token", "too short: use at least 16 characters");
    }

    let mut plugin_kinds: HashMap<&str, Option<PluginKind>> = HashMap::new();
    for (i, p) in config.plugins.iter().enumerate() {
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(
                format!("plugins[{i}].name"),
                format!(
                    "`{}` is not a valid plugin name: use letters, digits, `_` and `-`",
                    p.name
                ),
            );
        }
        if plugin_kinds.insert(&p.name, p.kind).is_some() {
            r.problem(
                format!("plugins[{i}].name"),
                format!("plugin `{}` is defined twice", p.name),
            );
        }
    }
    let source_names: std::collections::HashSet<&str> =
        config.sources.iter().map(|s| s.id.as_str()).collect();
    let mut warehouse_names = std::collections::HashSet::new();
    for (i, w) in config.warehouses.iter().enumerate() {
        if w.name.is_empty()
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(
                format!("warehouses[{i}].name"),
                format!(
                    "`{}` is not a valid name: use letters, digits, `_` and `-`",
                    w.name
                ),
            );
        }
        if !warehouse_names.insert(w.name.as_str()) {
            r.problem(
                format!("warehouses[{i}].name"),
                format!("warehouse `{}` is defined twice", w.name),
            );
        }
        if w.sources.is_empty() {
            r.problem(
                format!("warehouses[{i}].sources"),
                "empty: name the sources this warehouse loads",
            );
        }
        for (k, s) in w.sources.iter().enumerate() {
            if !source_names.contains(s.as_str()) {
                r.problem(
                    format!("warehouses[{i}].sources[{k}]"),
                    format!("no source named `{s}`"),
                );
            }
        }
    }
    let mut destination_names = std::collections::HashSet::new();
    for (i, d) in config.destinations.iter().enumerate() {
        let at = |f: &str| format!("destinations[{i}].{f}");
        if d.name.is_empty()
            || !d
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(
                at("name"),
                format!(
                    "`{}` is not a valid name: use letters, digits, `_` and `-`",
                    d.name
                ),
            );
        }
        if !destination_names.insert(d.name.as_str()) {
            r.problem(
                at("name"),
                format!("destination `{}` is defined twice", d.name),
            );
        }
        match plugin_kinds.get(d.plugin.as_str()) {
            None => r.problem(
                at("plugin"),
                format!(
                    "no plugin named `{}`; define it in a [[plugins]] table",
                    d.plugin
                ),
            ),
            Some(Some(kind)) if *kind != PluginKind::Destination => r.problem(
                at("plugin"),
                format!(
                    "plugin `{}` is a {kind}; a destination needs a destination plugin",
                    d.plugin
                ),
            ),
            Some(_) => {}
        }
        for (k, name) in d.chain.iter().enumerate() {
            match plugin_kinds.get(name.as_str()) {
                None => r.problem(
                    format!("destinations[{i}].chain[{k}]"),
                    format!("no plugin named `{name}`"),
                ),
                Some(Some(PluginKind::Destination)) => r.problem(
                    format!("destinations[{i}].chain[{k}]"),
                    format!(
                        "plugin `{name}` is a destination; a chain takes transformers and filters"
                    ),
                ),
                Some(_) => {}
            }
        }
        if d.sources.is_empty() {
            r.problem(
                at("sources"),
                "empty: name the sources this destination takes",
            );
        }
        for (k, s) in d.sources.iter().enumerate() {
            if !source_names.contains(s.as_str()) {
                r.problem(
                    format!("destinations[{i}].sources[{k}]"),
                    format!("no source named `{s}`"),
                );
            }
        }
        if d.allow_hosts.is_empty() {
            r.problem(
                at("allow_hosts"),
                "empty: list the hosts (host or host:port) this destination may send to",
            );
        }
        if d.batch_size == 0
            || d.concurrency == 0
            || d.timeout.is_zero()
            || d.retry_store_capacity == 0
        {
            r.problem(
                format!("destinations[{i}]"),
                "batch_size, concurrency, timeout_ms and retry_store_capacity must be > 0",
            );
        }
        if d.retry.max_attempts == 0 {
            r.problem(at("retry.max_attempts"), "must be at least 1");
        }
        if d.rate_limit.is_some_and(|(rps, _)| rps == 0) {
            r.problem(
                at("rate_limit.requests_per_second"),
                "must be > 0 (omit rate_limit for none)",
            );
        }
    }
    let mut names: HashMap<&SourceId, usize> = HashMap::new();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for (s, &i) in config.sources.iter().zip(source_index) {
        let name = s.id.as_str();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(
                format!("sources[{i}].name"),
                format!("`{name}` is not a valid source name: use letters, digits, `_` and `-`"),
            );
        }
        if let Some(first) = names.insert(&s.id, i) {
            r.problem(
                format!("sources[{i}].name"),
                format!("source `{name}` is already defined by sources[{first}]"),
            );
        }
        for (k, key) in s.write_keys.iter().enumerate() {
            if let Some(other) = keys.insert(key.as_str(), i)
                && other != i
            {
                r.problem(
                    format!("sources[{i}].write_keys[{k}]"),
                    format!("this write key is also used by sources[{other}]; keys must be unique"),
                );
            }
        }
        if let Some(rl) = s.rate_limit {
            if rl.events_per_second == 0 {
                r.problem(
                    format!("sources[{i}].rate_limit.events_per_second"),
                    "must be greater than zero (omit rate_limit for no limit)",
                );
            }
            if (rl.burst as usize) < l.max_batch_events {
                r.problem(
                    format!("sources[{i}].rate_limit.burst"),
                    format!(
                        "burst {} is smaller than the largest accepted batch \
                         (limits.max_batch_events = {}): such a batch could never pass; \
                         raise burst or lower max_batch_events",
                        rl.burst, l.max_batch_events
                    ),
                );
            }
        }
        for (field, list, want) in [
            ("transforms", &s.transforms, PluginKind::Transformer),
            ("filters", &s.filters, PluginKind::Filter),
        ] {
            for (k, name) in list.iter().enumerate() {
                match plugin_kinds.get(name.as_str()) {
                    None => r.problem(
                        format!("sources[{i}].{field}[{k}]"),
                        format!("no plugin named `{name}`; define it in a [[plugins]] table"),
                    ),
                    Some(Some(kind)) if *kind != want => r.problem(
                        format!("sources[{i}].{field}[{k}]"),
                        format!("plugin `{name}` is a {kind}; {field} takes {want}s"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if s.dedupe.max_ids == 0 {
            r.problem(
                format!("sources[{i}].dedupe.max_ids"),
                "must be greater than zero",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(text, std::path::Path::new("/etc/weir"), &|_| None)
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, std::path::Path::new("/etc/weir"), &|_| None)
            .expect_err("config should be refused")
    }

    #[test]
    fn plugins_and_chains() {
        let text = r#"
            [[plugins]]
            name = "norm"
            path = "plugins/norm.wasm"
            kind = "transformer"
            config = { case = "snake_case", rename = { "A" = "b" } }
            timeout_ms = 50
            [[sources]]
            name = "web"
            write_keys = ["k"]
            transforms = ["norm"]
        "#;
        let c = parse_ok(text);
        let p = &c.plugins[0];
        assert_eq!(p.path, std::path::Path::new("/etc/weir/plugins/norm.wasm"));
        assert_eq!(p.config["rename"]["A"], "b");
        assert_eq!(p.limits.timeout, Duration::from_millis(50));
        assert_eq!(c.sources[0].transforms, ["norm"]);

        let bad = format!("{text}filters = [\"norm\", \"nope\"]\n");
        let paths: Vec<String> = problems(&bad).into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["sources[0].filters[0]", "sources[0].filters[1]"]);
    }

    const MINIMAL: &str = "[[sources]]\nname = \"web\"\nwrite_keys = [\"k1\"]\n";

    #[test]
    fn a_source_whose_schema_postgresql_reserves_is_refused() {
        let text = "[[sources]]\nname = \"PG Catalog\"\nwrite_keys = [\"k1\"]\n\
            [[warehouses]]\nname = \"wh\"\nengine = \"duckdb\"\nsources = [\"PG Catalog\"]\n";
        let p = problems(text);
        assert_eq!(p[0].path, "warehouses[0].sources[0]", "{p:?}");
        assert!(p[0].message.contains("`pg_catalog`"), "{p:?}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.sources[0].id.as_str(), "web");
        assert_eq!(c.limits.max_event_bytes, 32 * 1024);
        assert_eq!(c.sources[0].dedupe.window, Duration::from_secs(3600));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            listen = "nope"
            colour = "blue"
            [log]
            segment_bytes = "big"
            [[sources]]
            name = "web"
            write_keys = ["k1"]
            rate_limit = { events_per_second = 10, burst = 5 }
            [[sources]]
            name = "app"
            write_keys = ["k1"]
            extra = 1
            [[sources]]
            name = "web"
            write_keys = ["k2"]
        "#;
        let p = problems(text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"listen"), "{p:?}");
        assert!(paths.contains(&"colour"), "{p:?}");
        assert!(paths.contains(&"log.segment_bytes"), "{p:?}");
        assert!(paths.contains(&"sources[0].rate_limit.burst"), "{p:?}");
        assert!(paths.iter().any(|p| p.starts_with("sources[1]")), "{p:?}");
        assert!(paths.contains(&"sources[2].name"), "{p:?}");
    }

    #[test]
    fn dead_letter_caps() {
        let c = parse_ok(&format!(
            "{MINIMAL}[dlq]\nmax_bytes = 1048576\nmax_age_ms = 60000\n"
        ));
        assert_eq!(c.dlq.max_bytes, 1 << 20);
        assert_eq!(c.dlq.max_age, Duration::from_secs(60));
        assert_eq!(parse_ok(MINIMAL).dlq, DlqConfig::default());
        let p = problems(&format!("{MINIMAL}[dlq]\nmax_bytes = 10\nmax_age_ms = 0\n"));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["dlq.max_bytes", "dlq.max_age_ms"]);
    }

    #[test]
    fn burst_must_cover_the_largest_batch() {
        let text = format!(
            "[limits]\nmax_batch_events = 100\n{MINIMAL}rate_limit = {{ events_per_second = 50, burst = 99 }}\n"
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("largest accepted batch"));
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let text = "[[sources]]\nname = \"web\"\nwrite_keys = [\"${WEB_KEY}\"]\n";
        let c = parse(text, std::path::Path::new("."), &|n| {
            (n == "WEB_KEY").then(|| "s3cret".into())
        })
        .unwrap();
        assert_eq!(c.sources[0].write_keys[0].as_str(), "s3cret");
        let p = problems(text);
        assert_eq!(p[0].path, "sources[0].write_keys[0]");
    }
}
