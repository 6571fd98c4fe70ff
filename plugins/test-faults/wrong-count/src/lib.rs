//! Fault-test transformer: when any event of a batch is poison (`properties.poison == true`),
//! returns one outcome too many (the poison event's `keep` twice); otherwise keeps every event
//! unchanged. The host must treat the call as malformed, re-run the batch one event at a time
//! and dead-letter only the poison event.
//!
//! It works at the byte level ([`Transform::transform_raw`]) because the SDK's batch driver
//! refuses to pass a wrong count through as it is.

use weir_plugin::raw::{RawEvent, RawOutcome};
use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};
use weir_plugin_fault_poison::is_poison_payload;

/// See the crate docs.
pub struct WrongCount;

impl Plugin for WrongCount {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Ok(WrongCount)
    }
}

impl Transform for WrongCount {
    fn transform(&mut self, event: Event) -> Outcome {
        Outcome::Keep(event)
    }

    fn transform_raw(&mut self, batch: Vec<RawEvent>) -> Vec<RawOutcome> {
        let mut outcomes = Vec::with_capacity(batch.len() + 1);
        for event in batch {
            if is_poison_payload(&event.payload) {
                outcomes.push(RawOutcome::Keep(event.payload.clone()));
            }
            outcomes.push(RawOutcome::Keep(event.payload));
        }
        outcomes
    }
}

weir_plugin::export_transform!(WrongCount);

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(payload: &str) -> RawEvent {
        RawEvent {
            payload: payload.as_bytes().to_vec(),
            source: "web".into(),
            offset: 0,
        }
    }

    #[test]
    fn one_outcome_too_many_only_with_poison() {
        let clean = vec![raw(r#"{"a":1}"#), raw("not json")];
        assert_eq!(WrongCount.transform_raw(clean).len(), 2);
        let poisoned = vec![raw(r#"{"a":1}"#), raw(r#"{"properties":{"poison":true}}"#)];
        assert_eq!(WrongCount.transform_raw(poisoned).len(), 3);
    }
}
