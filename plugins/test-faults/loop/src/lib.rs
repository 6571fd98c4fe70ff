//! Fault-test transformer: spins forever on a poison event (`properties.poison == true`) and
//! keeps every other event unchanged. The host must interrupt it (epoch deadline or fuel) and
//! dead-letter only the poison event.

use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};
use weir_plugin_fault_poison::is_poison;

/// See the crate docs.
pub struct Loop;

impl Plugin for Loop {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Ok(Loop)
    }
}

impl Transform for Loop {
    fn transform(&mut self, event: Event) -> Outcome {
        if is_poison(&event) {
            spin();
        }
        Outcome::Keep(event)
    }
}

/// Never returns. `black_box` keeps the optimiser from proving the loop useless.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

weir_plugin::export_transform!(Loop);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    #[test]
    fn keeps_events_that_are_not_poison() {
        let mut plugin = Loop;
        let event =
            Event::from_value(json!({"type": "track", "properties": {"poison": false}})).unwrap();
        assert_eq!(plugin.transform(event.clone()), Outcome::Keep(event));
    }
}
