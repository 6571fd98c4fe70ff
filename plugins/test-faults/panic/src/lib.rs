//! Fault-test transformer: panics on a poison event (`properties.poison == true`), which traps
//! the component, and keeps every other event unchanged. The host must survive the trap, throw
//! the instance away and dead-letter only the poison event.

use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};
use weir_plugin_fault_poison::is_poison;

/// See the crate docs.
pub struct Panic;

impl Plugin for Panic {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Ok(Panic)
    }
}

impl Transform for Panic {
    fn transform(&mut self, event: Event) -> Outcome {
        if is_poison(&event) {
            panic!(
                "poison event {} (the fault-test plugin `panic` does this on purpose)",
                event.message_id().unwrap_or("without messageId")
            );
        }
        Outcome::Keep(event)
    }
}

weir_plugin::export_transform!(Panic);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    #[test]
    fn keeps_events_that_are_not_poison() {
        let event = Event::from_value(json!({"type": "track"})).unwrap();
        assert_eq!(Panic.transform(event.clone()), Outcome::Keep(event));
    }

    #[test]
    #[should_panic(expected = "poison event m1")]
    fn panics_on_poison() {
        let event =
            Event::from_value(json!({"messageId": "m1", "properties": {"poison": true}})).unwrap();
        Panic.transform(event);
    }
}
