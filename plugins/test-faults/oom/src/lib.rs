//! Fault-test transformer: allocates without end on a poison event (`properties.poison ==
//! true`) and keeps every other event unchanged. The host's memory limit must stop it (the
//! allocation failure aborts the instance) and dead-letter only the poison event.

use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};
use weir_plugin_fault_poison::is_poison;

/// See the crate docs.
pub struct Oom;

impl Plugin for Oom {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Ok(Oom)
    }
}

impl Transform for Oom {
    fn transform(&mut self, event: Event) -> Outcome {
        if is_poison(&event) {
            hoard();
        }
        Outcome::Keep(event)
    }
}

/// Never returns: keeps 1 MiB blocks, touched so the memory is really committed, until the
/// allocator gives up and the process aborts.
fn hoard() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&mut blocks);
    }
}

weir_plugin::export_transform!(Oom);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    #[test]
    fn keeps_events_that_are_not_poison() {
        let event = Event::from_value(json!({"type": "track", "properties": {}})).unwrap();
        assert_eq!(Oom.transform(event.clone()), Outcome::Keep(event));
    }
}
