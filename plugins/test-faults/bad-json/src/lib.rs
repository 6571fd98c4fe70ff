//! Fault-test transformer: answers a poison event (`properties.poison == true`) with `keep` of
//! bytes that are not JSON, and keeps every other event byte for byte. The host must validate
//! what a plugin returns and dead-letter only the poison event.
//!
//! It works at the byte level ([`Transform::transform_raw`]) because the SDK only ever
//! serializes valid JSON.

use weir_plugin::raw::{RawEvent, RawOutcome};
use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};
use weir_plugin_fault_poison::is_poison_payload;

/// What a poison event is "rewritten" to: truncated JSON.
pub const NOT_JSON: &[u8] = br#"{"type": "track", "event": "#;

/// See the crate docs.
pub struct BadJson;

impl Plugin for BadJson {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Ok(BadJson)
    }
}

impl Transform for BadJson {
    fn transform(&mut self, event: Event) -> Outcome {
        Outcome::Keep(event)
    }

    fn transform_raw(&mut self, batch: Vec<RawEvent>) -> Vec<RawOutcome> {
        batch
            .into_iter()
            .map(|event| {
                if is_poison_payload(&event.payload) {
                    RawOutcome::Keep(NOT_JSON.to_vec())
                } else {
                    RawOutcome::Keep(event.payload)
                }
            })
            .collect()
    }
}

weir_plugin::export_transform!(BadJson);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_poison_events_get_broken_bytes() {
        let raw = |payload: &str| RawEvent {
            payload: payload.as_bytes().to_vec(),
            source: "web".into(),
            offset: 0,
        };
        let outcomes = BadJson.transform_raw(vec![
            raw(r#"{"a": 1}"#),
            raw(r#"{"properties":{"poison":true}}"#),
        ]);
        assert_eq!(
            outcomes,
            vec![
                RawOutcome::Keep(br#"{"a": 1}"#.to_vec()),
                RawOutcome::Keep(NOT_JSON.to_vec())
            ]
        );
        assert!(
            weir_plugin::serde_json::from_slice::<weir_plugin::serde_json::Value>(NOT_JSON)
                .is_err()
        );
    }
}
