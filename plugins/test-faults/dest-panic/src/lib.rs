//! Fault-test destination: POSTs each event as JSON to `url`, but panics (traps) while building
//! the request of a poison event (`properties.poison == true`). The host must rebuild the batch
//! one event at a time and dead-letter only the poison event.

use weir_plugin::serde_json::Value;
use weir_plugin::{Destination, Event, InitError, Plugin, Request};
use weir_plugin_fault_poison::is_poison;

/// Config: `{"url": "http://127.0.0.1:9000/hook"}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    url: String,
}

/// See the crate docs.
pub struct DestPanic {
    config: Config,
}

impl Plugin for DestPanic {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        Ok(DestPanic { config })
    }
}

impl Destination for DestPanic {
    fn build_event(&mut self, event: Event) -> Result<Request, String> {
        if is_poison(&event) {
            panic!(
                "poison event {} (the fault-test destination does this on purpose)",
                event.message_id().unwrap_or("without messageId")
            );
        }
        Ok(Request::post_json(
            &self.config.url,
            &Value::Object(event.into_fields()),
        ))
    }
}

weir_plugin::export_destination!(DestPanic);
