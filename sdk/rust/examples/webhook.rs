//! A destination that POSTs each track event to a webhook URL from the config: the smallest
//! `destination`-world plugin, kept here so the destination export is built and linked.
//!
//! ```text
//! CARGO_TARGET_DIR=target/wasm cargo build --release --target wasm32-wasip2 -p weir-plugin --example webhook
//! ```

use weir_plugin::serde_json::Value;
use weir_plugin::{Destination, Event, InitError, Plugin, Request};

/// Config: `{"url": "https://hooks.example.com/weir", "token": "..."}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    url: String,
    #[serde(default)]
    token: Option<String>,
}

pub struct Webhook {
    config: Config,
}

impl Plugin for Webhook {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(format!("`url` must be an http(s) URL, not `{}`", config.url).into());
        }
        Ok(Webhook { config })
    }
}

impl Destination for Webhook {
    fn build_event(&mut self, event: Event) -> Result<Request, String> {
        if event.event_type() != Some("track") {
            return Err("this webhook only accepts track events".to_owned());
        }
        let request = Request::post_json(&self.config.url, &Value::Object(event.into_fields()));
        Ok(match &self.config.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        })
    }
}

weir_plugin::export_destination!(Webhook);
