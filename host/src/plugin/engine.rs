//! The one wasmtime `Engine` of the process: pooling allocator, epoch interruption, and an
//! on-disk cache of precompiled components keyed by content hash.
//!
//! Compiling a component (cranelift) takes tens of milliseconds for a Rust plugin and seconds for
//! a JavaScript one; loading a cached precompiled one takes a few. The cache file name is the
//! SHA-256 of the component, and wasmtime refuses to load an artifact produced by another
//! version or configuration, in which case it is compiled again and the file replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PluginError;
use super::host::State;

/// One epoch tick; per-call deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The engine, the linker with the host imports, and the compile cache.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<State>,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Release);
    }
}

/// Hex SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl PluginEngine {
    /// `cache_dir`: where precompiled components are kept (`None`: no disk cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<PluginEngine>, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Instances come from a pool of preallocated slots: instantiation is a few µs and memory
        // of a dropped (poisoned) instance is reset, not unmapped and mapped again.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1_000);
        pool.total_core_instances(2_000);
        pool.total_memories(2_000);
        pool.total_tables(2_000);
        pool.max_memory_size(1 << 30);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        super::bindings::add_host_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;

        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| PluginError::Io {
                what: format!("create the plugin cache {}", dir.display()),
                source: e,
            })?;
        }
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PluginError::Io {
                what: "start the epoch ticker".into(),
                source: e,
            })?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            cache_dir,
            stop_ticker,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<State> {
        &self.linker
    }

    /// Compiles `bytes`, or loads the precompiled artifact from the cache.
    pub fn component(&self, bytes: &[u8], hash: &str) -> Result<Component, PluginError> {
        let Some(dir) = &self.cache_dir else {
            return self.compile(bytes);
        };
        let path = dir.join(format!("{hash}.cwasm"));
        if path.exists() {
            // SAFETY: the file is one this engine wrote from the component whose hash names it
            // (into our own data directory), and wasmtime checks that it was produced by a
            // compatible engine before using it.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::info!(path = %path.display(), error = %e, "recompiling a stale precompiled plugin");
                }
            }
        }
        let serialized = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Err(e) = write_cache(&path, &serialized) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache a precompiled plugin");
        }
        // SAFETY: bytes we just produced with this engine's `precompile_component`.
        unsafe { Component::deserialize(&self.engine, &serialized) }
            .map_err(|e| PluginError::Compile(format!("{e:#}")))
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, PluginError> {
        Component::new(&self.engine, bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))
    }
}

fn write_cache(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("cwasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
