//! Running a plugin's fixtures (input events and expected outcomes) against the real component:
//! for `weir plugin test`, and as the gate a new version passes before it goes live.
//!
//! The fixture format and its comparison rules are the SDK's (`weir_plugin::testing`), so a
//! fixture means the same natively, in `weir plugin test`, and at deploy time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_plugin::raw::{RawEvent, RawOutcome};
use weir_plugin::testing::Fixture;

use super::bindings::types::{Event, Outcome};
use super::{LoadedVersion, PluginEngine, PluginError, PluginKind, PluginLimits};
use crate::telemetry::PluginMetrics;

/// The result of one fixture file.
#[derive(Debug)]
pub struct FixtureResult {
    pub name: String,
    pub file: PathBuf,
    /// `Err` holds the diff: what was expected and what came back.
    pub result: Result<(), String>,
    pub elapsed: Duration,
}

fn to_raw(o: Outcome) -> RawOutcome {
    match o {
        Outcome::Keep(b) => RawOutcome::Keep(b),
        Outcome::Drop(r) => RawOutcome::Drop(r),
        Outcome::Fail(e) => RawOutcome::Fail(e),
        Outcome::Expand(v) => RawOutcome::Expand(v),
    }
}

fn to_event(e: RawEvent) -> Event {
    Event {
        payload: e.payload,
        source: e.source,
        offset: e.offset,
    }
}

/// Runs every fixture in `dir` against `bytes`. A fixture without its own `config` uses
/// `default_config` (the plugin's config in weir.toml, or `{}`).
#[allow(clippy::too_many_arguments)]
pub fn run_dir(
    engine: &Arc<PluginEngine>,
    plugin: &str,
    kind: Option<PluginKind>,
    bytes: &Arc<[u8]>,
    default_config: &str,
    limits: PluginLimits,
    dir: &Path,
    metrics: &Arc<PluginMetrics>,
) -> Result<Vec<FixtureResult>, PluginError> {
    let fixtures = Fixture::load_dir(dir).map_err(|e| PluginError::Fixtures(e.to_string()))?;
    // One loaded version per distinct config.
    let mut loaded: HashMap<String, Result<Arc<LoadedVersion>, String>> = HashMap::new();
    let mut results = Vec::with_capacity(fixtures.len());
    for f in fixtures {
        let started = Instant::now();
        let config = f
            .config
            .as_ref()
            .map_or_else(|| default_config.to_owned(), ToString::to_string);
        let version = loaded
            .entry(config.clone())
            .or_insert_with(|| {
                LoadedVersion::load(
                    engine,
                    plugin,
                    kind,
                    bytes.clone(),
                    &config,
                    limits,
                    metrics.clone(),
                )
                .map_err(|e| match e {
                    PluginError::Init(msg) => msg,
                    other => format!("cannot load: {other}"),
                })
            })
            .clone();
        let result = match version {
            Ok(v) => f.check_init(Ok(())).and_then(|()| {
                let batch: Vec<Event> = f.raw_batch().into_iter().map(to_event).collect();
                match v.run(&batch) {
                    Ok(outcomes) => {
                        let raw: Vec<RawOutcome> = outcomes.into_iter().map(to_raw).collect();
                        f.check(&raw)
                    }
                    Err(e) => Err(format!("the call failed: {e}")),
                }
            }),
            Err(msg) if f.init_error.is_some() => f.check_init(Err(&msg)),
            Err(msg) => Err(msg),
        };
        results.push(FixtureResult {
            name: f.name.clone(),
            file: f.file.clone(),
            result,
            elapsed: started.elapsed(),
        });
    }
    Ok(results)
}

/// The first failure of a fixture run, as one error.
pub fn first_failure(results: &[FixtureResult]) -> Option<PluginError> {
    results.iter().find_map(|r| {
        r.result
            .as_ref()
            .err()
            .map(|diff| PluginError::Fixtures(format!("{} ({}): {diff}", r.name, r.file.display())))
    })
}
