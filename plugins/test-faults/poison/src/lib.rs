//! What the fault-test plugins share: which events are poison.
//!
//! Every plugin under `plugins/test-faults/` passes events through unchanged, except the ones
//! with `properties.poison == true`, on which it misbehaves in its own way. A host test can so
//! aim a fault at one event of a batch and check that the others are unaffected.

use weir_plugin::Event;

/// The path that marks a poison event when it holds `true`.
pub const POISON_PATH: &str = "properties.poison";

/// Whether `event` has `properties.poison == true`.
pub fn is_poison(event: &Event) -> bool {
    event.get(POISON_PATH) == Some(&weir_plugin::serde_json::Value::Bool(true))
}

/// Whether the raw payload is a poison event; a payload that does not parse is not poison.
pub fn is_poison_payload(payload: &[u8]) -> bool {
    Event::from_json(payload).is_ok_and(|event| is_poison(&event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_literal_true_is_poison() {
        assert!(is_poison_payload(br#"{"properties":{"poison":true}}"#));
        assert!(!is_poison_payload(br#"{"properties":{"poison":"true"}}"#));
        assert!(!is_poison_payload(br#"{"properties":{}}"#));
        assert!(!is_poison_payload(b"not json"));
    }
}
