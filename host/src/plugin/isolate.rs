//! Fault isolation: a failed batch call is re-run one event at a time, so only the events that
//! really fail are lost to the dead-letter queue and the rest keep flowing.

use super::bindings::types::{Event, Outcome};
use super::instance::LoadedVersion;

/// What became of one event of a batch.
#[derive(Debug, Clone)]
pub enum EventResult {
    /// The plugin answered for this event.
    Outcome(Outcome),
    /// The plugin failed on this event alone (trap, timeout, memory, malformed result).
    Failed(String),
}

/// Runs `batch` through a transformer or filter; never fails as a whole.
pub fn run_isolated(version: &LoadedVersion, batch: &[Event]) -> Vec<EventResult> {
    match version.run(batch) {
        Ok(outcomes) => outcomes.into_iter().map(EventResult::Outcome).collect(),
        Err(e) if batch.len() == 1 => vec![EventResult::Failed(e.to_string())],
        Err(e) => {
            tracing::warn!(
                plugin = %version.plugin,
                version = %version.version,
                error = %e,
                events = batch.len(),
                "plugin call failed; re-running its batch one event at a time"
            );
            batch
                .iter()
                .map(|event| match version.run(std::slice::from_ref(event)) {
                    Ok(mut o) => EventResult::Outcome(o.remove(0)),
                    Err(e) => EventResult::Failed(e.to_string()),
                })
                .collect()
        }
    }
}
