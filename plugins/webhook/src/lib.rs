//! weir destination `webhook`: POSTs events, as they are, to one configured URL.
//!
//! What it guarantees:
//!
//! - every event of a batch is in exactly one request, and no event is ever rejected (anything
//!   the SDK could parse as a JSON object is sent unchanged);
//! - requests carry consecutive events of the batch, in batch order, at most `batch_size` each
//!   (exactly one with `payload = "event"`);
//! - a retried request is byte-for-byte the request first sent, so a receiver can deduplicate on
//!   the events' `messageId`.
//!
//! Answers are read by the SDK's [`classify_by_status`](weir_plugin::classify_by_status): 2xx
//! done; 408, 429 and 5xx retried after `Retry-After` (seconds or an HTTP date) when present;
//! anything else dropped with the status and the start of the body. See README.md.

use std::num::NonZeroUsize;

use serde::Deserialize;
use weir_plugin::serde_json::{self, Map, Value, json};
use weir_plugin::{BuildOutput, Destination, Event, Header, InitError, Plugin, Request};

/// Sent unless the config's `headers` name a `User-Agent` of their own.
const USER_AGENT: &str = "weir/0.1";

const DEFAULT_BATCH_SIZE: usize = 100;

/// Headers the router sets itself when it sends the request; a config may not override them.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

/// The plugin's config (its table in weir.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to POST, `http://` or `https://`.
    pub url: String,
    /// Extra headers (for example `Authorization`); a `Content-Type` or `User-Agent` here
    /// replaces the default one.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// Events per request; default 100. Must be 1 (or unset) with `payload = "event"`.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// The shape of the body.
    #[serde(default)]
    pub payload: Payload,
}

/// The shape of a request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// `{"batch": [event, ...]}`, up to `batch_size` events.
    #[default]
    Batch,
    /// The event itself: one event per request.
    Event,
}

/// The `webhook` destination.
#[derive(Debug)]
pub struct Webhook {
    url: String,
    /// Defaults merged with the config's headers, in the order they are sent.
    headers: Vec<Header>,
    batch_size: NonZeroUsize,
    payload: Payload,
}

impl Plugin for Webhook {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        let url = config.url.trim();
        let has_host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !has_host || url.chars().any(char::is_whitespace) {
            return Err(format!(
                "`url` must be an absolute http:// or https:// URL, not `{}`",
                config.url
            )
            .into());
        }
        let batch_size = match (config.payload, config.batch_size) {
            (Payload::Event, None | Some(1)) => 1,
            (Payload::Event, Some(n)) => {
                return Err(format!(
                    "`payload = \"event\"` sends one event per request; remove `batch_size` \
                     (it is {n}) or use `payload = \"batch\"`"
                )
                .into());
            }
            (Payload::Batch, size) => size.unwrap_or(DEFAULT_BATCH_SIZE),
        };
        let batch_size = NonZeroUsize::new(batch_size)
            .ok_or("`batch_size` must be at least 1 (1 sends one event per request)")?;
        Ok(Webhook {
            url: url.to_owned(),
            headers: merge_headers(config.headers)?,
            batch_size,
            payload: config.payload,
        })
    }
}

/// The default headers with the configured ones applied: a configured header replaces a default
/// of the same name (ignoring case), the others follow in config order.
fn merge_headers(configured: Map<String, Value>) -> Result<Vec<Header>, String> {
    let mut headers = vec![
        header("Content-Type", "application/json"),
        header("User-Agent", USER_AGENT),
    ];
    for (name, value) in configured {
        let Value::String(value) = value else {
            return Err(format!("`headers.{name}` must be a string"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!(
                "`headers`: `{name}` is not a valid header name (letters, digits and \
                 !#$%&'*+-.^_`|~ only)"
            ));
        }
        if RESERVED_HEADERS
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r))
        {
            return Err(format!(
                "`headers.{name}` is set by the router when it sends the request; remove it"
            ));
        }
        // CR or LF would let a value start a new header; other controls are refused by HTTP.
        if value
            .bytes()
            .any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
        {
            return Err(format!(
                "`headers.{name}` contains a control character (a line break?)"
            ));
        }
        match headers
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(&name))
        {
            Some(existing) => existing.value = value,
            None => headers.push(header(&name, &value)),
        }
    }
    Ok(headers)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

impl Webhook {
    fn request(&self, body: &Value, events: Vec<u32>) -> Request {
        Request {
            method: "POST".to_owned(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            // Serializing a `Value` has no failure case (keys are strings, numbers finite).
            body: serde_json::to_vec(body).unwrap_or_default(),
            events,
        }
    }
}

impl Destination for Webhook {
    fn build(&mut self, batch: Vec<Event>) -> BuildOutput {
        let mut events = (0u32..)
            .zip(batch)
            .map(|(index, event)| (index, Value::Object(event.into_fields())))
            .peekable();
        let mut output = BuildOutput::default();
        while events.peek().is_some() {
            let (indexes, chunk): (Vec<u32>, Vec<Value>) =
                events.by_ref().take(self.batch_size.get()).unzip();
            let body = match self.payload {
                // `batch_size` is 1 here: the chunk is exactly one event.
                Payload::Event => chunk.into_iter().next().unwrap_or_default(),
                Payload::Batch => json!({ "batch": chunk }),
            };
            output.requests.push(self.request(&body, indexes));
        }
        output
    }
}

weir_plugin::export_destination!(Webhook);

#[cfg(test)]
mod tests;
