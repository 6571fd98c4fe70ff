//! Every metric the router exports, defined in one place (Vector's "internal events" idea): each
//! component gets a typed handle to its own metrics and never names a metric itself.
//!
//! Exported in Prometheus text format on the admin listener's `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: String,
    /// `accepted`, `invalid` or `duplicate`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    pub log: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub plugin: String,
    pub version: String,
    /// `keep`, `drop`, `fail`, `expand`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginEventLabels {
    pub plugin: String,
    /// `deployed`, `rejected`, `rolled_back`, `auto_rolled_back`.
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

/// Metrics of the plugin runtime and the pipeline, labelled with plugin and version.
pub struct PluginMetrics {
    pub calls: Family<PluginLabels, Counter>,
    pub call_seconds: Family<PluginLabels, Histogram>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Calls that trapped, timed out, ran out of memory or returned a malformed result.
    pub faults: Family<PluginLabels, Counter>,
    pub lifecycle: Family<PluginEventLabels, Counter>,
    pub active: Family<PluginLabels, Gauge>,
    /// Events the pipeline stage wrote to the processed log / dead-letter queue.
    pub pipeline_events: Family<StageLabels, Counter>,
    pub dead_lettered: Family<StageLabels, Counter>,
    counters: Family<Vec<(String, String)>, Counter>,
    label_sets: Mutex<HashMap<String, HashSet<LabelSet>>>,
}

/// A plugin counter's labels, as name/value pairs.
pub type LabelSet = Vec<(String, String)>;

/// Distinct label sets a plugin may create for its own counters; beyond, values fold into
/// `other` so a plugin labelling by a client-chosen value cannot blow up `/metrics`.
pub const MAX_PLUGIN_LABEL_SETS: usize = 500;

fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if matches!(out.as_str(), "plugin" | "version" | "counter") {
        out.insert_str(0, "label_");
    }
    out
}

impl PluginMetrics {
    /// Adds `delta` to a plugin's own counter `name` with `labels`.
    pub fn count(
        &self,
        plugin: &str,
        version: &str,
        name: &str,
        labels: Vec<(String, String)>,
        delta: u64,
    ) {
        let mut labels: Vec<(String, String)> = labels
            .into_iter()
            .map(|(k, v)| (label_name(&k), v))
            .collect();
        labels.sort();
        let key: Vec<(String, String)> = std::iter::once(("counter".to_owned(), name.to_owned()))
            .chain(labels.iter().cloned())
            .collect();
        {
            let mut sets = self.label_sets.lock();
            let seen = sets.entry(plugin.to_owned()).or_default();
            if !seen.contains(&key) {
                if seen.len() >= MAX_PLUGIN_LABEL_SETS {
                    for (_, v) in &mut labels {
                        *v = "other".into();
                    }
                } else {
                    seen.insert(key);
                }
            }
        }
        let mut full = vec![
            ("plugin".to_owned(), plugin.to_owned()),
            ("version".to_owned(), version.to_owned()),
            ("counter".to_owned(), name.to_owned()),
        ];
        full.extend(labels);
        self.counters.get_or_create(&full).inc_by(delta);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarehouseLabels {
    pub warehouse: String,
}

/// Metrics of the warehouse loaders.
pub struct WarehouseMetrics {
    pub rows: Family<WarehouseLabels, Counter>,
    pub discards: Family<WarehouseLabels, Counter>,
    pub failures: Family<WarehouseLabels, Counter>,
    pub load_seconds: Family<WarehouseLabels, Histogram>,
    /// Processed-log records not yet loaded.
    pub lag: Family<WarehouseLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DlqLabels {
    pub queue: String,
}

/// Metrics of the dead-letter queues, per queue.
pub struct DlqMetrics {
    /// Entries listed and replayable (not replayed, not evicted).
    pub entries: Family<DlqLabels, Gauge>,
    /// Bytes on disk.
    pub bytes: Family<DlqLabels, Gauge>,
    /// Entries removed by the size or age cap before anyone replayed them.
    pub evicted: Family<DlqLabels, Counter>,
    /// The caps, so alerts can compare against them.
    pub max_bytes: Family<DlqLabels, Gauge>,
    pub max_age_seconds: Family<DlqLabels, Gauge>,
}

/// Metrics of destination delivery.
pub struct DeliveryMetrics {
    pub delivered: Family<DeliveryLabels, Counter>,
    /// Events sent again from the retry store.
    pub retried: Family<DeliveryLabels, Counter>,
    /// Events the destination refused for good (drop verdicts, rejections, refused hosts).
    pub dropped: Family<DeliveryLabels, Counter>,
    pub dead_lettered: Family<DeliveryLabels, Counter>,
    /// Events a filter in the destination's own chain dropped on purpose (consent, say).
    pub filtered: Family<DeliveryLabels, Counter>,
    pub in_flight: Family<DeliveryLabels, Gauge>,
    /// Processed-log records not yet read by the destination.
    pub lag: Family<DeliveryLabels, Gauge>,
    /// Events waiting in the retry store.
    pub held: Family<DeliveryLabels, Gauge>,
    /// 1 while the destination's circuit breaker is open (every request failing).
    pub paused: Family<DeliveryLabels, Gauge>,
    pub latency: Family<DeliveryLabels, Histogram>,
}

/// Metrics of the ingest gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RouteLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub bytes: Family<SourceLabels, Counter>,
    pub dedupe_hits: Family<SourceLabels, Counter>,
    pub ack_seconds: Histogram,
}

/// Metrics of one log (`raw` or `processed`).
#[derive(Clone)]
pub struct LogMetrics {
    pub fsync_seconds: Histogram,
    pub appended_records: Counter,
    pub appended_bytes: Counter,
    pub size_bytes: Gauge,
    pub segments: Gauge,
    pub head: Gauge,
}

struct LogFamilies {
    fsync_seconds: Family<LogLabels, Histogram>,
    appended_records: Family<LogLabels, Counter>,
    appended_bytes: Family<LogLabels, Counter>,
    size_bytes: Family<LogLabels, Gauge>,
    segments: Family<LogLabels, Gauge>,
    head: Family<LogLabels, Gauge>,
}

/// The registry and every metric family in it.
pub struct Metrics {
    registry: Registry,
    pub gateway: GatewayMetrics,
    pub plugins: Arc<PluginMetrics>,
    pub warehouses: Arc<WarehouseMetrics>,
    pub delivery: Arc<DeliveryMetrics>,
    pub dlq: Arc<DlqMetrics>,
    log: LogFamilies,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("weir");
        let gateway = GatewayMetrics {
            requests: Family::default(),
            errors: Family::default(),
            events: Family::default(),
            bytes: Family::default(),
            dedupe_hits: Family::default(),
            ack_seconds: latency_histogram(),
        };
        registry.register(
            "http_requests",
            "HTTP requests on the ingest listener, by route and status",
            gateway.requests.clone(),
        );
        registry.register(
            "http_errors",
            "Error answers on the ingest listener, by error code",
            gateway.errors.clone(),
        );
        registry.register(
            "ingest_events",
            "Events received, by source and result (accepted, invalid, duplicate)",
            gateway.events.clone(),
        );
        registry.register(
            "ingest_bytes",
            "Request body bytes received (after gzip decoding), by source",
            gateway.bytes.clone(),
        );
        registry.register(
            "dedupe_hits",
            "Events dropped as duplicates of an earlier messageId, by source",
            gateway.dedupe_hits.clone(),
        );
        registry.register(
            "ingest_ack_seconds",
            "Time from a request's arrival to its durable acknowledgement",
            gateway.ack_seconds.clone(),
        );

        let log = LogFamilies {
            fsync_seconds: Family::new_with_constructor(latency_histogram),
            appended_records: Family::default(),
            appended_bytes: Family::default(),
            size_bytes: Family::default(),
            segments: Family::default(),
            head: Family::default(),
        };
        registry.register(
            "log_fsync_seconds",
            "Latency of the log writer's fsync (one per group commit)",
            log.fsync_seconds.clone(),
        );
        registry.register(
            "log_appended_records",
            "Records made durable in the log",
            log.appended_records.clone(),
        );
        registry.register(
            "log_appended_bytes",
            "Bytes made durable in the log",
            log.appended_bytes.clone(),
        );
        registry.register(
            "log_size_bytes",
            "Bytes in the log's segments (the size cap applies to this)",
            log.size_bytes.clone(),
        );
        registry.register(
            "log_segments",
            "Segment files in the log",
            log.segments.clone(),
        );
        registry.register(
            "log_head_offset",
            "Offset the next durable record will get",
            log.head.clone(),
        );
        let plugins = PluginMetrics {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency_histogram),
            outcomes: Family::default(),
            faults: Family::default(),
            lifecycle: Family::default(),
            active: Family::default(),
            pipeline_events: Family::default(),
            dead_lettered: Family::default(),
            counters: Family::default(),
            label_sets: Mutex::new(HashMap::new()),
        };
        registry.register(
            "plugin_calls",
            "Batch calls into plugins",
            plugins.calls.clone(),
        );
        registry.register(
            "plugin_call_seconds",
            "Duration of a batch call into a plugin",
            plugins.call_seconds.clone(),
        );
        registry.register(
            "plugin_outcomes",
            "Outcomes plugins returned, by kind (keep, drop, fail, expand)",
            plugins.outcomes.clone(),
        );
        registry.register(
            "plugin_faults",
            "Plugin calls that trapped, timed out, ran out of memory or returned a malformed result",
            plugins.faults.clone(),
        );
        registry.register(
            "plugin_lifecycle",
            "Plugin versions deployed, rejected, rolled back and automatically rolled back",
            plugins.lifecycle.clone(),
        );
        registry.register(
            "plugin_active",
            "1 for the version of each plugin that is live",
            plugins.active.clone(),
        );
        registry.register(
            "pipeline_events",
            "Records the pipeline wrote to the processed log, by stage",
            plugins.pipeline_events.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events sent to a dead-letter queue, by stage",
            plugins.dead_lettered.clone(),
        );
        registry.register(
            "plugin_counter",
            "Counters plugins keep themselves (host `count`), labelled by plugin, version, counter and the plugin's labels",
            plugins.counters.clone(),
        );
        let warehouses = WarehouseMetrics {
            rows: Family::default(),
            discards: Family::default(),
            failures: Family::default(),
            load_seconds: Family::new_with_constructor(latency_histogram),
            lag: Family::default(),
        };
        registry.register(
            "warehouse_rows_loaded",
            "Rows inserted into warehouse tables (duplicates not counted)",
            warehouses.rows.clone(),
        );
        registry.register(
            "warehouse_discards",
            "Values that did not fit their column (type, caps) and went to discards",
            warehouses.discards.clone(),
        );
        registry.register(
            "warehouse_load_failures",
            "Loads that failed and were retried (warehouse down, lock held, refused)",
            warehouses.failures.clone(),
        );
        registry.register(
            "warehouse_load_seconds",
            "Duration of a load (mapping, transaction, commit)",
            warehouses.load_seconds.clone(),
        );
        registry.register(
            "warehouse_lag_events",
            "Processed-log records not yet loaded into the warehouse",
            warehouses.lag.clone(),
        );
        let delivery = DeliveryMetrics {
            delivered: Family::default(),
            retried: Family::default(),
            dropped: Family::default(),
            dead_lettered: Family::default(),
            filtered: Family::default(),
            in_flight: Family::default(),
            lag: Family::default(),
            held: Family::default(),
            paused: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        for (name, help, family) in [
            (
                "delivery_delivered",
                "Events a destination accepted",
                &delivery.delivered,
            ),
            (
                "delivery_retried",
                "Events sent again from the retry store",
                &delivery.retried,
            ),
            (
                "delivery_dropped",
                "Events a destination refused for good (drop verdicts, rejections, hosts off the allow-list)",
                &delivery.dropped,
            ),
            (
                "delivery_dead_lettered",
                "Events sent to a destination's dead-letter queue",
                &delivery.dead_lettered,
            ),
            (
                "delivery_filtered",
                "Events a filter in the destination's chain dropped on purpose (e.g. consent)",
                &delivery.filtered,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "delivery_in_flight",
            "Requests in flight",
            delivery.in_flight.clone(),
        );
        registry.register(
            "delivery_lag_events",
            "Processed-log records the destination has not read yet",
            delivery.lag.clone(),
        );
        registry.register(
            "delivery_held_events",
            "Events waiting in the destination's retry store",
            delivery.held.clone(),
        );
        registry.register(
            "delivery_paused",
            "1 while the destination fails every request and only probes (circuit breaker open)",
            delivery.paused.clone(),
        );
        registry.register(
            "delivery_request_seconds",
            "Time from sending a request to its answer",
            delivery.latency.clone(),
        );
        let dlq = DlqMetrics {
            entries: Family::default(),
            bytes: Family::default(),
            evicted: Family::default(),
            max_bytes: Family::default(),
            max_age_seconds: Family::default(),
        };
        registry.register(
            "dlq_entries",
            "Dead letters waiting to be replayed",
            dlq.entries.clone(),
        );
        registry.register(
            "dlq_bytes",
            "Size of the dead-letter queue on disk",
            dlq.bytes.clone(),
        );
        registry.register(
            "dlq_evicted",
            "Dead letters removed by the size or age cap without a replay",
            dlq.evicted.clone(),
        );
        registry.register(
            "dlq_max_bytes",
            "Size cap of the dead-letter queue ([dlq] max_bytes)",
            dlq.max_bytes.clone(),
        );
        registry.register(
            "dlq_max_age_seconds",
            "Age cap of the dead-letter queue ([dlq] max_age_ms)",
            dlq.max_age_seconds.clone(),
        );
        Arc::new(Metrics {
            registry,
            gateway,
            plugins: Arc::new(plugins),
            warehouses: Arc::new(warehouses),
            delivery: Arc::new(delivery),
            dlq: Arc::new(dlq),
            log,
        })
    }

    /// Handles for the log named `name`.
    pub fn log(&self, name: &'static str) -> LogMetrics {
        let l = LogLabels { log: name };
        LogMetrics {
            fsync_seconds: self.log.fsync_seconds.get_or_create(&l).clone(),
            appended_records: self.log.appended_records.get_or_create(&l).clone(),
            appended_bytes: self.log.appended_bytes.get_or_create(&l).clone(),
            size_bytes: self.log.size_bytes.get_or_create(&l).clone(),
            segments: self.log.segments.get_or_create(&l).clone(),
            head: self.log.head.get_or_create(&l).clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl LogMetrics {
    /// Handles that go nowhere, for tools (`weir log dump`) and tests that export nothing.
    pub fn detached() -> LogMetrics {
        LogMetrics {
            fsync_seconds: latency_histogram(),
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            size_bytes: Gauge::default(),
            segments: Gauge::default(),
            head: Gauge::default(),
        }
    }
}
