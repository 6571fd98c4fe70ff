//! The WebAssembly plugin runtime: user components that transform, filter and deliver events.
//!
//! Guarantees:
//! - plugins get no filesystem, network, environment or clock beyond the host's `now-ms`;
//! - every call has a wall-time deadline (epoch interruption) and a memory cap; a plugin that
//!   loops, allocates without end, traps or answers malformed results loses only its instance
//!   and, after a one-event-at-a-time re-run, only the events that really fail;
//! - a new version is compiled, `init`ed and checked against its fixtures before it can go
//!   live, and the swap is atomic (`ArcSwap`): a batch runs entirely on one version.
//!
//! Plugin work is CPU-bound and synchronous: it runs on dedicated threads, never on tokio
//! workers.

pub mod bindings;
pub mod config_file;
pub mod engine;
pub mod fixtures;
pub mod host;
pub mod instance;
pub mod isolate;
pub mod registry;

use std::fmt;
use std::time::Duration;

pub use engine::PluginEngine;
pub use instance::{CallError, LoadedVersion};

/// Which world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Transformer,
    Filter,
    Destination,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Transformer => "transformer",
            PluginKind::Filter => "filter",
            PluginKind::Destination => "destination",
        })
    }
}

/// A plugin version: the component and the config it runs with. Changing either makes a new
/// version (a new tracking plan reloads like new code).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PluginVersion {
    pub component_hash: String,
    pub config_hash: String,
}

impl PluginVersion {
    pub fn new(component_hash: &str, config_hash: &str) -> Self {
        PluginVersion {
            component_hash: component_hash.to_owned(),
            config_hash: config_hash.to_owned(),
        }
    }

    /// `3fa9c2d1-77b0e4aa`: the first 8 hex digits of the component's and the config's SHA-256.
    pub fn short(&self) -> String {
        format!(
            "{}-{}",
            &self.component_hash[..8.min(self.component_hash.len())],
            &self.config_hash[..8.min(self.config_hash.len())]
        )
    }
}

impl fmt::Display for PluginVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// Per-call limits of a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall time a batch call may take.
    pub timeout: Duration,
    /// Linear memory an instance may grow to.
    pub memory_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            timeout: Duration::from_millis(500),
            memory_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("the component cannot be linked: {0}")]
    Link(String),
    #[error("the plugin is a {found}, but it is configured as a {expected}")]
    WrongKind {
        expected: PluginKind,
        found: PluginKind,
    },
    #[error("init failed: {0}")]
    Init(String),
    #[error("fixtures failed: {0}")]
    Fixtures(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no plugin named `{0}`")]
    Unknown(String),
    #[error("plugin `{plugin}` has no version {version}")]
    UnknownVersion { plugin: String, version: String },
}

/// The bundled plugins' components, built from `plugins/` by `build.rs`.
pub mod bundled {
    use std::path::PathBuf;

    /// The `normalize` transformer, embedded for the demo that `weir serve` runs without a
    /// config file.
    pub const NORMALIZE: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/plugins/normalize.wasm"));

    /// The `tracking-plan` filter, embedded for `weir plan check`.
    pub const TRACKING_PLAN: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/plugins/tracking-plan.wasm"));

    /// Path of a bundled component built for this binary (`normalize`, `fanout`, `pii-mask`,
    /// `fault-loop`, ...). Exists only on the machine that built weir: for tests and benches.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("OUT_DIR"), "/plugins")).join(format!("{name}.wasm"))
    }
}

#[cfg(test)]
mod tests;
