//! A loaded plugin version: its compiled component, a pool of initialized instances, and calls
//! with limits.
//!
//! Every call runs under an epoch deadline (wall time) and a memory cap. A call that traps, times
//! out, runs out of memory or returns a malformed result *poisons* its instance: the instance is
//! dropped (never reused) and the error returned; the caller decides what to re-run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::InstancePre;
use wasmtime::{ResourceLimiter, Store, Trap};

use super::bindings::destination::{Destination, DestinationPre};
use super::bindings::filter::{Filter, FilterPre};
use super::bindings::transformer::{Transformer, TransformerPre};
use super::bindings::types::{BuildOutput, Event, Outcome, Request, Response, Verdict};
use super::engine::{EPOCH_TICK, PluginEngine, content_hash};
use super::host::{PluginContext, State};
use super::{PluginError, PluginKind, PluginLimits, PluginVersion};
use crate::telemetry::{PluginLabels, PluginMetrics};

/// Idle initialized instances kept per version.
const MAX_IDLE: usize = 8;
/// `init` may compile schemas and the like: it gets more time than a batch call.
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call failed. The instance that failed is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin ran past its time limit of {0:?}")]
    Timeout(Duration),
    #[error("the plugin exceeded its memory limit of {0} bytes")]
    OutOfMemory(usize),
    #[error("the plugin returned a malformed result: {0}")]
    Malformed(String),
    #[error("the plugin could not be instantiated: {0}")]
    Instantiate(String),
}

/// Caps a store's memory; remembers that the cap was hit so the trap can be named.
pub struct MemoryLimit {
    max: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            // Trap instead of failing the grow: a guest allocator that sees a failed grow
            // aborts anyway, and the trap names the cause.
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.max
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

enum Pre {
    Transformer(TransformerPre<State>),
    Filter(FilterPre<State>),
    Destination(DestinationPre<State>),
}

enum Bindings {
    Transformer(Transformer),
    Filter(Filter),
    Destination(Destination),
}

struct Instance {
    store: Store<State>,
    bindings: Bindings,
}

/// One version of one plugin, ready to run.
pub struct LoadedVersion {
    pub plugin: String,
    pub version: PluginVersion,
    pub kind: PluginKind,
    pub config_json: Arc<str>,
    pub limits: PluginLimits,
    pub component_bytes: Arc<[u8]>,
    engine: Arc<PluginEngine>,
    pre: Pre,
    ctx: Arc<PluginContext>,
    idle: Mutex<Vec<Instance>>,
    labels: PluginLabels,
}

impl LoadedVersion {
    /// Compiles (or loads from cache) `bytes`, checks which world it implements, and
    /// instantiates and `init`s it once with `config_json`, so a broken version is refused
    /// here, before it can go live.
    pub fn load(
        engine: &Arc<PluginEngine>,
        plugin: &str,
        expected: Option<PluginKind>,
        bytes: Arc<[u8]>,
        config_json: &str,
        limits: PluginLimits,
        metrics: Arc<PluginMetrics>,
    ) -> Result<Arc<LoadedVersion>, PluginError> {
        let component_hash = content_hash(&bytes);
        let version = PluginVersion::new(&component_hash, &content_hash(config_json.as_bytes()));
        let component = engine.component(&bytes, &component_hash)?;
        let instance_pre: InstancePre<State> = engine
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let pre = if let Ok(p) = TransformerPre::new(instance_pre.clone()) {
            Pre::Transformer(p)
        } else if let Ok(p) = FilterPre::new(instance_pre.clone()) {
            Pre::Filter(p)
        } else if let Ok(p) = DestinationPre::new(instance_pre) {
            Pre::Destination(p)
        } else {
            return Err(PluginError::Link(
                "the component implements none of the weir:plugin worlds (transformer, filter, \
                 destination); build it against wit/ with the weir-plugin SDK"
                    .into(),
            ));
        };
        let kind = match pre {
            Pre::Transformer(_) => PluginKind::Transformer,
            Pre::Filter(_) => PluginKind::Filter,
            Pre::Destination(_) => PluginKind::Destination,
        };
        if let Some(expected) = expected
            && expected != kind
        {
            return Err(PluginError::WrongKind {
                expected,
                found: kind,
            });
        }
        let ctx = Arc::new(PluginContext {
            plugin: plugin.to_owned(),
            version: version.to_string(),
            metrics: metrics.clone(),
        });
        let loaded = Arc::new(LoadedVersion {
            labels: PluginLabels {
                plugin: plugin.to_owned(),
                version: version.to_string(),
            },
            plugin: plugin.to_owned(),
            version,
            kind,
            config_json: Arc::from(config_json),
            limits,
            component_bytes: bytes,
            engine: engine.clone(),
            pre,
            ctx,
            idle: Mutex::new(Vec::new()),
        });
        let first = loaded.instantiate().map_err(|e| match e {
            InitError::Call(e) => PluginError::Init(e.to_string()),
            InitError::Refused(msg) => PluginError::Init(msg),
        })?;
        loaded.idle.lock().push(first);
        Ok(loaded)
    }

    fn deadline_ticks(timeout: Duration) -> u64 {
        (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
    }

    /// A fresh instance with `init` done.
    fn instantiate(&self) -> Result<Instance, InitError> {
        let limiter = MemoryLimit {
            max: self.limits.memory_bytes,
            hit: false,
        };
        let mut store = Store::new(self.engine.engine(), State::new(self.ctx.clone(), limiter));
        store.limiter(|s| &mut s.limits);
        let init_timeout = self.limits.timeout.max(MIN_INIT_TIMEOUT);
        store.set_epoch_deadline(Self::deadline_ticks(init_timeout));
        let fail = |store: &Store<State>, e: wasmtime::Error| {
            InitError::Call(classify(store, e, init_timeout, self.limits.memory_bytes))
        };
        let config = &*self.config_json;
        let (bindings, init) = match &self.pre {
            Pre::Transformer(p) => {
                let b = p.instantiate(&mut store).map_err(|e| fail(&store, e))?;
                let r = b
                    .weir_plugin_transform_plugin()
                    .call_init(&mut store, config);
                (Bindings::Transformer(b), r)
            }
            Pre::Filter(p) => {
                let b = p.instantiate(&mut store).map_err(|e| fail(&store, e))?;
                let r = b.weir_plugin_filter_plugin().call_init(&mut store, config);
                (Bindings::Filter(b), r)
            }
            Pre::Destination(p) => {
                let b = p.instantiate(&mut store).map_err(|e| fail(&store, e))?;
                let r = b
                    .weir_plugin_destination_plugin()
                    .call_init(&mut store, config);
                (Bindings::Destination(b), r)
            }
        };
        match init {
            Ok(Ok(())) => Ok(Instance { store, bindings }),
            Ok(Err(msg)) => Err(InitError::Refused(msg)),
            Err(e) => Err(fail(&store, e)),
        }
    }

    fn take(&self) -> Result<Instance, CallError> {
        if let Some(i) = self.idle.lock().pop() {
            return Ok(i);
        }
        self.instantiate().map_err(|e| match e {
            InitError::Call(e) => e,
            InitError::Refused(msg) => CallError::Instantiate(format!("init refused: {msg}")),
        })
    }

    fn give_back(&self, instance: Instance) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(instance);
        }
    }

    /// Runs a transformer or filter over `batch`: one outcome per event, in order.
    pub fn run(&self, batch: &[Event]) -> Result<Vec<Outcome>, CallError> {
        let started = Instant::now();
        let result = self.call(|inst| {
            let store = &mut inst.store;
            match &inst.bindings {
                Bindings::Transformer(b) => b
                    .weir_plugin_transform_plugin()
                    .call_transform(store, batch),
                Bindings::Filter(b) => b.weir_plugin_filter_plugin().call_filter(store, batch),
                Bindings::Destination(_) => Err(wasmtime::format_err!(
                    "a destination plugin cannot run as a transformer or filter"
                )),
            }
        });
        let outcomes = match result {
            Ok(o) if o.len() == batch.len() => Ok(o),
            Ok(o) => Err(CallError::Malformed(format!(
                "{} outcomes for {} events; a plugin must return exactly one outcome per event",
                o.len(),
                batch.len()
            ))),
            Err(e) => Err(e),
        };
        self.observe(started, &outcomes);
        outcomes
    }

    /// Destination `build`.
    pub fn build(&self, batch: &[Event]) -> Result<BuildOutput, CallError> {
        let started = Instant::now();
        let result = self.call(|inst| match &inst.bindings {
            Bindings::Destination(b) => b
                .weir_plugin_destination_plugin()
                .call_build(&mut inst.store, batch),
            _ => Err(wasmtime::format_err!("not a destination plugin")),
        });
        self.observe(started, &result);
        result
    }

    /// Destination `classify`.
    pub fn classify(&self, request: &Request, response: &Response) -> Result<Verdict, CallError> {
        self.call(|inst| match &inst.bindings {
            Bindings::Destination(b) => {
                b.weir_plugin_destination_plugin()
                    .call_classify(&mut inst.store, request, response)
            }
            _ => Err(wasmtime::format_err!("not a destination plugin")),
        })
    }

    /// Runs `f` on an instance under the call limits; a failed call drops the instance.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut inst = self.take()?;
        inst.store.data().take_stderr();
        inst.store
            .set_epoch_deadline(Self::deadline_ticks(self.limits.timeout));
        match f(&mut inst) {
            Ok(r) => {
                self.give_back(inst);
                Ok(r)
            }
            Err(e) => Err(classify(
                &inst.store,
                e,
                self.limits.timeout,
                self.limits.memory_bytes,
            )),
        }
    }

    fn observe<T>(&self, started: Instant, result: &Result<T, CallError>) {
        let m = &self.ctx.metrics;
        m.calls.get_or_create(&self.labels).inc();
        m.call_seconds
            .get_or_create(&self.labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            m.faults.get_or_create(&self.labels).inc();
        }
    }

    pub fn labels(&self) -> &PluginLabels {
        &self.labels
    }

    pub fn metrics(&self) -> &Arc<PluginMetrics> {
        &self.ctx.metrics
    }
}

enum InitError {
    Call(CallError),
    Refused(String),
}

fn classify(
    store: &Store<State>,
    e: wasmtime::Error,
    timeout: Duration,
    memory: usize,
) -> CallError {
    if store.data().limits.hit {
        return CallError::OutOfMemory(memory);
    }
    let trap = e.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return CallError::Timeout(timeout);
    }
    // The trap kind, not wasmtime's multi-line backtrace; plus what the guest said on stderr
    // (a Rust panic message) when it said anything.
    let what = match trap {
        Some(t) => t.to_string(),
        None => format!("{e:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    match store.data().take_stderr() {
        Some(stderr) => CallError::Trap(format!("{what} (stderr: {stderr})")),
        None => CallError::Trap(what),
    }
}
