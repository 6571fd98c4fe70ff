//! weir destination `amplitude`: events to Amplitude's HTTP V2 API (`POST /2/httpapi`).
//!
//! What it guarantees:
//!
//! - every event of a batch is in exactly one request or one rejection: alias events, events
//!   without a user or device id, with an id shorter than `min_id_length`, without a
//!   `messageId`, and unnamed tracks are rejected with the reason; the others are sent;
//! - requests carry the sendable events in batch order, at most `batch_size` (≤ 2000, the
//!   API's limit) each, and the `events` array of the body follows `Request::events`;
//! - every Amplitude event has `insert_id` = `messageId`, so a retried or rebuilt request is
//!   deduplicated by Amplitude.
//!
//! The mapping is in `mapping.rs`, the reading of answers in `answer.rs`; README.md documents
//! both.

mod answer;
mod mapping;

use std::num::NonZeroUsize;

use serde::Deserialize;
use weir_plugin::serde_json::{self, Map, Value};
use weir_plugin::{
    BuildOutput, Destination, Event, InitError, Plugin, Rejection, Request, Response, Verdict,
};

pub use answer::THROTTLE_DELAY_MS;
pub use mapping::Mapping;

/// The US endpoint, Amplitude's default.
pub const US_ENDPOINT: &str = "https://api2.amplitude.com/2/httpapi";
/// The endpoint of projects with EU data residency.
pub const EU_ENDPOINT: &str = "https://api.eu.amplitude.com/2/httpapi";

const USER_AGENT: &str = "weir/0.1";
const DEFAULT_BATCH_SIZE: usize = 100;
/// The HTTP V2 API takes at most 2000 events per request.
const MAX_BATCH_SIZE: usize = 2000;
/// Amplitude's own minimum length of user and device ids.
const DEFAULT_MIN_ID_LENGTH: u32 = 5;

/// The plugin's config (its table in weir.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The project's API key.
    pub api_key: String,
    /// Where to POST; [`US_ENDPOINT`] by default, [`EU_ENDPOINT`] for EU data residency, any
    /// http(s) URL for tests.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Events per request, 1 to 2000; default 100.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Sent as `options.min_id_length` when set; ids shorter than it (5 when unset) are
    /// rejected.
    #[serde(default)]
    pub min_id_length: Option<u32>,
    /// The group type of `group` calls; default `"group"`.
    #[serde(default)]
    pub group_type: Option<String>,
}

/// The `amplitude` destination.
#[derive(Debug)]
pub struct Amplitude {
    api_key: String,
    endpoint: String,
    batch_size: NonZeroUsize,
    /// `options.min_id_length`, when configured.
    min_id_length: Option<u32>,
    mapping: Mapping,
}

impl Plugin for Amplitude {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        let api_key = config.api_key.trim();
        if api_key.is_empty() {
            return Err("`api_key` is empty: set the Amplitude project's API key".into());
        }
        let endpoint = config.endpoint.as_deref().unwrap_or(US_ENDPOINT).trim();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(format!(
                "`endpoint` must be an http:// or https:// URL, such as {US_ENDPOINT} or \
                 {EU_ENDPOINT}, not `{endpoint}`"
            )
            .into());
        }
        let batch_size = config.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        let batch_size = NonZeroUsize::new(batch_size)
            .filter(|size| size.get() <= MAX_BATCH_SIZE)
            .ok_or_else(|| {
                format!(
                    "`batch_size` must be between 1 and {MAX_BATCH_SIZE} (Amplitude's limit), \
                     not {batch_size}"
                )
            })?;
        if config.min_id_length == Some(0) {
            return Err("`min_id_length` must be at least 1".into());
        }
        let group_type = config.group_type.unwrap_or_else(|| "group".to_owned());
        if group_type.trim().is_empty() {
            return Err("`group_type` is empty: name the group type, such as \"company\"".into());
        }
        let min_id_length = config.min_id_length.unwrap_or(DEFAULT_MIN_ID_LENGTH);
        Ok(Amplitude {
            api_key: api_key.to_owned(),
            endpoint: endpoint.to_owned(),
            batch_size,
            min_id_length: config.min_id_length,
            mapping: Mapping {
                min_id_length: usize::try_from(min_id_length).unwrap_or(usize::MAX),
                group_type,
            },
        })
    }
}

impl Amplitude {
    fn request(&self, events: Vec<Value>, indexes: Vec<u32>) -> Request {
        let mut body = Map::new();
        body.insert("api_key".into(), self.api_key.clone().into());
        body.insert("events".into(), events.into());
        if let Some(min_id_length) = self.min_id_length {
            body.insert(
                "options".into(),
                serde_json::json!({ "min_id_length": min_id_length }),
            );
        }
        let mut request = Request::post_json(&self.endpoint, &Value::Object(body))
            .header("User-Agent", USER_AGENT);
        request.events = indexes;
        request
    }
}

impl Destination for Amplitude {
    fn build(&mut self, batch: Vec<Event>) -> BuildOutput {
        let mut output = BuildOutput::default();
        let mut sendable = Vec::with_capacity(batch.len());
        for (index, event) in (0u32..).zip(&batch) {
            match self.mapping.map(event) {
                Ok(mapped) => sendable.push((index, Value::Object(mapped))),
                Err(reason) => output.rejections.push(Rejection { index, reason }),
            }
        }
        let mut sendable = sendable.into_iter().peekable();
        while sendable.peek().is_some() {
            let (indexes, events) = sendable.by_ref().take(self.batch_size.get()).unzip();
            output.requests.push(self.request(events, indexes));
        }
        output
    }

    fn classify(&mut self, request: &Request, response: &Response) -> Verdict {
        answer::classify(request.events.len(), response)
    }
}

weir_plugin::export_destination!(Amplitude);

#[cfg(test)]
mod tests;
