//! Plugin versions and hot reload.
//!
//! Each configured plugin has a slot holding its live version behind an `ArcSwap`. A new version
//! (new component bytes, or a new config — a new tracking plan is a new version) comes from the
//! watched files or the admin API; it is compiled, `init`ed and run against the plugin's
//! fixtures off the hot path, and only then swapped in. The pipeline loads the live version once
//! per batch, so a batch runs entirely on one version: in-flight batches finish on the old one,
//! the next starts on the new one, and no event is processed twice or skipped by a swap.
//!
//! Versions are kept (in memory and under `<data_dir>/plugins/<name>/`), `rollback` returns to
//! the previous one, and a new version whose failure rate over its first events passes the
//! configured threshold is rolled back automatically. What is live survives a restart, unless
//! the watched files changed while weir was down (then the files win: they are newer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::config_file::{self, ConfigFileError};
use super::engine::content_hash;
use super::fixtures;
use super::{LoadedVersion, PluginEngine, PluginError, PluginKind, PluginLimits};
use crate::telemetry::{PluginEventLabels, PluginMetrics};
use crate::timestamp;

/// Versions kept in memory per plugin for `activate` and `rollback`.
const KEEP_VERSIONS: usize = 16;

/// When a new version is rolled back on its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RollbackPolicy {
    /// Events a new version is judged on.
    pub window: u64,
    /// Rolled back when more than this share of those events fail (0.0-1.0).
    pub max_failure_ratio: f64,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            window: 100,
            max_failure_ratio: 0.5,
        }
    }
}

/// A plugin as configured.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    pub name: String,
    /// What the config says it is; checked against the component.
    pub kind: Option<PluginKind>,
    /// The component file; watched for changes.
    pub path: PathBuf,
    /// The config table from weir.toml, as JSON.
    pub config: serde_json::Value,
    /// A JSON file that replaces `config` when present; watched for changes.
    pub config_file: Option<PathBuf>,
    /// Fixtures a new version must pass before it goes live.
    pub fixtures: Option<PathBuf>,
    pub limits: PluginLimits,
    pub rollback: RollbackPolicy,
}

/// Where a version came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Startup,
    File,
    Admin,
    Rollback,
    AutoRollback,
}

/// A version as listed by the admin API.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub component_hash: String,
    pub config_hash: String,
    pub origin: Origin,
    pub loaded_at: String,
    pub active: bool,
}

/// A plugin as listed by the admin API.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    pub active: String,
    pub versions: Vec<VersionInfo>,
}

struct Kept {
    version: Arc<LoadedVersion>,
    origin: Origin,
    loaded_at: String,
}

struct Probation {
    version: String,
    seen: u64,
    failed: u64,
}

#[derive(Default)]
struct SlotState {
    kept: Vec<Kept>,
    previous: Option<Arc<LoadedVersion>>,
    probation: Option<Probation>,
    /// Hashes of the watched files as last read, so each change deploys once.
    files_seen: Option<(String, String)>,
    files_stamp: Option<(Option<SystemTime>, Option<SystemTime>, u64)>,
}

#[derive(Serialize, Deserialize)]
struct ActiveFile {
    component: String,
    config: String,
    files_component: String,
    files_config: String,
}

/// One configured plugin.
pub struct PluginSlot {
    pub spec: PluginSpec,
    active: ArcSwap<LoadedVersion>,
    state: Mutex<SlotState>,
    engine: Arc<PluginEngine>,
    metrics: Arc<PluginMetrics>,
    state_dir: PathBuf,
}

/// The config JSON a spec's files say, and the component bytes.
fn read_files(spec: &PluginSpec) -> Result<(Arc<[u8]>, String), PluginError> {
    let bytes = std::fs::read(&spec.path).map_err(|e| PluginError::Io {
        what: format!(
            "cannot read plugin `{}` component {}",
            spec.name,
            spec.path.display()
        ),
        source: e,
    })?;
    let config = match &spec.config_file {
        Some(path) if path.exists() => match config_file::read(path) {
            Ok(value) => value.to_string(),
            Err(ConfigFileError::Read { source, .. }) => {
                return Err(PluginError::Io {
                    what: format!(
                        "cannot read plugin `{}` config {}",
                        spec.name,
                        path.display()
                    ),
                    source,
                });
            }
            Err(e @ ConfigFileError::Parse { .. }) => return Err(PluginError::Init(e.to_string())),
        },
        _ => spec.config.to_string(),
    };
    Ok((Arc::from(bytes), config))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl PluginSlot {
    /// Loads the plugin: the version that was live before a restart, or the files.
    pub fn open(
        spec: PluginSpec,
        engine: Arc<PluginEngine>,
        metrics: Arc<PluginMetrics>,
        state_dir: &Path,
    ) -> Result<Arc<PluginSlot>, PluginError> {
        let state_dir = state_dir.join(&spec.name);
        std::fs::create_dir_all(&state_dir).map_err(|e| PluginError::Io {
            what: format!("create {}", state_dir.display()),
            source: e,
        })?;
        let (file_bytes, file_config) = read_files(&spec)?;
        let files = (
            content_hash(&file_bytes),
            content_hash(file_config.as_bytes()),
        );
        // A version deployed through the admin API stays live across restarts, unless the files
        // changed since (they are then the newer intent).
        let restored = std::fs::read(state_dir.join("active.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ActiveFile>(&b).ok())
            .filter(|a| a.files_component == files.0 && a.files_config == files.1)
            .and_then(|a| {
                let bytes = std::fs::read(state_dir.join(format!("{}.wasm", a.component))).ok()?;
                let config =
                    std::fs::read_to_string(state_dir.join(format!("{}.json", a.config))).ok()?;
                Some((Arc::<[u8]>::from(bytes), config))
            });
        let (bytes, config) = restored.unwrap_or((file_bytes, file_config));
        let version = LoadedVersion::load(
            &engine,
            &spec.name,
            spec.kind,
            bytes,
            &config,
            spec.limits,
            metrics.clone(),
        )
        .map_err(|e| PluginError::Init(format!("plugin `{}`: {e}", spec.name)))?;
        let stamp = (
            modified(&spec.path),
            spec.config_file.as_deref().and_then(modified),
            file_len(&spec.path),
        );
        let files_for_persist = files.clone();
        let slot = Arc::new(PluginSlot {
            active: ArcSwap::new(version.clone()),
            state: Mutex::new(SlotState {
                kept: vec![Kept {
                    version: version.clone(),
                    origin: Origin::Startup,
                    loaded_at: timestamp::format(timestamp::now()),
                }],
                files_seen: Some(files),
                files_stamp: Some(stamp),
                ..SlotState::default()
            }),
            spec,
            engine,
            metrics,
            state_dir,
        });
        slot.persist(&version, Some(files_for_persist));
        slot.set_active_gauge(None, &version);
        tracing::info!(plugin = %slot.spec.name, version = %version.version, kind = %version.kind, "plugin loaded");
        Ok(slot)
    }

    /// The live version. Load it once per batch.
    pub fn active(&self) -> Arc<LoadedVersion> {
        self.active.load_full()
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Deploys a new version: `bytes` (default: the live component) with `config` (default:
    /// the live config). Compiled, `init`ed and fixture-tested before it goes live; a version
    /// that fails any of these is refused and the live one keeps serving.
    pub fn deploy(
        &self,
        bytes: Option<Arc<[u8]>>,
        config: Option<String>,
        origin: Origin,
    ) -> Result<Arc<LoadedVersion>, PluginError> {
        let mut state = self.state.lock();
        let current = self.active();
        let bytes = bytes.unwrap_or_else(|| current.component_bytes.clone());
        let config = config.unwrap_or_else(|| current.config_json.to_string());
        let component_hash = content_hash(&bytes);
        let config_hash = content_hash(config.as_bytes());
        if current.version.component_hash == component_hash
            && current.version.config_hash == config_hash
        {
            return Ok(current);
        }
        let kept = state.kept.iter().find(|k| {
            k.version.version.component_hash == component_hash
                && k.version.version.config_hash == config_hash
        });
        let version = match kept {
            Some(k) => k.version.clone(),
            None => match self.load_checked(bytes, &config) {
                Ok(v) => v,
                Err(e) => {
                    self.count("rejected");
                    tracing::warn!(plugin = %self.spec.name, error = %e, "new plugin version refused; the live version keeps serving");
                    return Err(e);
                }
            },
        };
        self.swap(&mut state, version.clone(), origin);
        state.probation = Some(Probation {
            version: version.version.to_string(),
            seen: 0,
            failed: 0,
        });
        Ok(version)
    }

    fn load_checked(
        &self,
        bytes: Arc<[u8]>,
        config: &str,
    ) -> Result<Arc<LoadedVersion>, PluginError> {
        let version = LoadedVersion::load(
            &self.engine,
            &self.spec.name,
            self.spec.kind.or(Some(self.active().kind)),
            bytes.clone(),
            config,
            self.spec.limits,
            self.metrics.clone(),
        )?;
        if let Some(dir) = &self.spec.fixtures {
            let results = fixtures::run_dir(
                &self.engine,
                &self.spec.name,
                Some(version.kind),
                &bytes,
                config,
                self.spec.limits,
                dir,
                &self.metrics,
            )?;
            if let Some(e) = fixtures::first_failure(&results) {
                return Err(e);
            }
        }
        Ok(version)
    }

    /// Makes a kept version live again by its short id.
    pub fn activate(&self, version: &str) -> Result<Arc<LoadedVersion>, PluginError> {
        let mut state = self.state.lock();
        let found = state
            .kept
            .iter()
            .find(|k| k.version.version.to_string() == version)
            .map(|k| k.version.clone())
            .ok_or_else(|| PluginError::UnknownVersion {
                plugin: self.spec.name.clone(),
                version: version.to_owned(),
            })?;
        if found.version != self.active().version {
            self.swap(&mut state, found.clone(), Origin::Admin);
            state.probation = None;
        }
        Ok(found)
    }

    /// Returns to the version that was live before the current one.
    pub fn rollback(&self) -> Result<Arc<LoadedVersion>, PluginError> {
        let mut state = self.state.lock();
        self.rollback_locked(&mut state, Origin::Rollback)
    }

    fn rollback_locked(
        &self,
        state: &mut SlotState,
        origin: Origin,
    ) -> Result<Arc<LoadedVersion>, PluginError> {
        let Some(previous) = state.previous.clone() else {
            return Err(PluginError::UnknownVersion {
                plugin: self.spec.name.clone(),
                version: "previous (there is none to roll back to)".into(),
            });
        };
        self.swap(state, previous.clone(), origin);
        state.probation = None;
        self.count(if origin == Origin::AutoRollback {
            "auto_rolled_back"
        } else {
            "rolled_back"
        });
        Ok(previous)
    }

    fn swap(&self, state: &mut SlotState, version: Arc<LoadedVersion>, origin: Origin) {
        let old = self.active.swap(version.clone());
        state.previous = Some(old.clone());
        if !state
            .kept
            .iter()
            .any(|k| k.version.version == version.version)
        {
            state.kept.push(Kept {
                version: version.clone(),
                origin,
                loaded_at: timestamp::format(timestamp::now()),
            });
            if state.kept.len() > KEEP_VERSIONS {
                state.kept.remove(0);
            }
        }
        self.persist(&version, state.files_seen.clone());
        self.set_active_gauge(Some(&old), &version);
        if matches!(origin, Origin::File | Origin::Admin) {
            self.count("deployed");
        }
        tracing::info!(
            plugin = %self.spec.name,
            from = %old.version,
            to = %version.version,
            ?origin,
            "plugin version swapped"
        );
    }

    fn set_active_gauge(&self, old: Option<&LoadedVersion>, new: &LoadedVersion) {
        if let Some(old) = old {
            self.metrics.active.get_or_create(old.labels()).set(0);
        }
        self.metrics.active.get_or_create(new.labels()).set(1);
    }

    fn count(&self, event: &'static str) {
        self.metrics
            .lifecycle
            .get_or_create(&PluginEventLabels {
                plugin: self.spec.name.clone(),
                event,
            })
            .inc();
    }

    /// Keeps the live version's component and config on disk, so it survives a restart.
    fn persist(&self, version: &LoadedVersion, files: Option<(String, String)>) {
        let write = || -> std::io::Result<()> {
            let wasm = self
                .state_dir
                .join(format!("{}.wasm", version.version.component_hash));
            if !wasm.exists() {
                write_atomic(&wasm, &version.component_bytes)?;
            }
            let config = self
                .state_dir
                .join(format!("{}.json", version.version.config_hash));
            if !config.exists() {
                write_atomic(&config, version.config_json.as_bytes())?;
            }
            if let Some((fc, fk)) = files {
                let active = ActiveFile {
                    component: version.version.component_hash.clone(),
                    config: version.version.config_hash.clone(),
                    files_component: fc,
                    files_config: fk,
                };
                write_atomic(
                    &self.state_dir.join("active.json"),
                    &serde_json::to_vec(&active).unwrap_or_default(),
                )?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(plugin = %self.spec.name, error = %e, "cannot persist the live plugin version; it will not survive a restart");
        }
    }

    /// Reports how a version did on a batch, for automatic rollback.
    pub fn report(&self, version: &LoadedVersion, events: u64, failed: u64) {
        let mut state = self.state.lock();
        let Some(p) = state.probation.as_mut() else {
            return;
        };
        if p.version != version.version.to_string() {
            return;
        }
        p.seen += events;
        p.failed += failed;
        if p.seen < self.spec.rollback.window {
            return;
        }
        let ratio = p.failed as f64 / p.seen as f64;
        let (seen, failed) = (p.seen, p.failed);
        state.probation = None;
        if ratio > self.spec.rollback.max_failure_ratio {
            tracing::warn!(
                plugin = %self.spec.name,
                version = %version.version,
                failed,
                seen,
                threshold = self.spec.rollback.max_failure_ratio,
                "new plugin version fails too many events; rolling back automatically"
            );
            if let Err(e) = self.rollback_locked(&mut state, Origin::AutoRollback) {
                tracing::error!(plugin = %self.spec.name, error = %e, "automatic rollback impossible");
            }
        }
    }

    /// Deploys the watched files if they changed since last seen.
    fn poll_files(&self) {
        let stamp = (
            modified(&self.spec.path),
            self.spec.config_file.as_deref().and_then(modified),
            file_len(&self.spec.path),
        );
        {
            let mut state = self.state.lock();
            if state.files_stamp == Some(stamp) {
                return;
            }
            state.files_stamp = Some(stamp);
        }
        let (bytes, config) = match read_files(&self.spec) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(plugin = %self.spec.name, error = %e, "cannot read the changed plugin files");
                return;
            }
        };
        let hashes = (content_hash(&bytes), content_hash(config.as_bytes()));
        {
            let mut state = self.state.lock();
            if state.files_seen.as_ref() == Some(&hashes) {
                return;
            }
            state.files_seen = Some(hashes);
        }
        tracing::info!(plugin = %self.spec.name, "plugin files changed; deploying");
        // Errors are logged and counted by `deploy`; the live version keeps serving.
        let _ = self.deploy(Some(bytes), Some(config), Origin::File);
    }

    pub fn info(&self) -> PluginInfo {
        let state = self.state.lock();
        let active = self.active();
        PluginInfo {
            name: self.spec.name.clone(),
            kind: active.kind,
            active: active.version.to_string(),
            versions: state
                .kept
                .iter()
                .map(|k| VersionInfo {
                    version: k.version.version.to_string(),
                    component_hash: k.version.version.component_hash.clone(),
                    config_hash: k.version.version.config_hash.clone(),
                    origin: k.origin,
                    loaded_at: k.loaded_at.clone(),
                    active: k.version.version == active.version,
                })
                .collect(),
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Every configured plugin.
pub struct Registry {
    slots: HashMap<String, Arc<PluginSlot>>,
}

impl Registry {
    pub fn open(
        specs: &[PluginSpec],
        engine: &Arc<PluginEngine>,
        metrics: &Arc<PluginMetrics>,
        state_dir: &Path,
    ) -> Result<Registry, PluginError> {
        let mut slots = HashMap::new();
        for spec in specs {
            let slot = PluginSlot::open(spec.clone(), engine.clone(), metrics.clone(), state_dir)?;
            slots.insert(spec.name.clone(), slot);
        }
        Ok(Registry { slots })
    }

    pub fn get(&self, name: &str) -> Result<&Arc<PluginSlot>, PluginError> {
        self.slots
            .get(name)
            .ok_or_else(|| PluginError::Unknown(name.to_owned()))
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        let mut v: Vec<PluginInfo> = self.slots.values().map(|s| s.info()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Watches every plugin's files, deploying changes, until `stop` is set.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let registry = self.clone();
        std::thread::Builder::new()
            .name("weir-plugin-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    for slot in registry.slots.values() {
                        slot.poll_files();
                    }
                }
            })
    }
}
