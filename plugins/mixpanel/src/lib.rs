//! weir destination `mixpanel`: events to Mixpanel's Ingestion API (`POST /import`), and
//! identify traits to user profiles (`POST /engage`, `$set`) when a project token is configured.
//!
//! What it guarantees:
//!
//! - every event of a batch is in exactly one request or one rejection: group and alias
//!   events, identify events without a token or traits, events without a user id, a readable
//!   `timestamp` or a `messageId`, and unnamed tracks are rejected with the reason;
//! - `/import` requests come first, then `/engage` requests; each carries its records in batch
//!   order, at most `batch_size` (≤ 2000, the API's limit), and the body's array follows
//!   `Request::events`;
//! - every event has `$insert_id` derived from its `messageId` alone and `time` from its
//!   `timestamp` alone, so a retried or rebuilt request is deduplicated by Mixpanel.
//!
//! The mapping is in `mapping.rs`, the reading of answers in `answer.rs`; README.md documents
//! both.

mod answer;
mod mapping;

use std::num::NonZeroUsize;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use weir_plugin::serde_json::Value;
use weir_plugin::{
    BuildOutput, Destination, Event, InitError, Plugin, Rejection, Request, Response, Verdict,
};

pub use mapping::{Mapping, Record, insert_id};

const USER_AGENT: &str = "weir/0.1";
const DEFAULT_BATCH_SIZE: usize = 1000;
/// `/import` and `/engage` take at most 2000 records per request.
const MAX_BATCH_SIZE: usize = 2000;

/// The plugin's config (its table in weir.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The project id; required with a service account.
    #[serde(default)]
    pub project_id: Option<ProjectId>,
    /// Service account user name (with `secret`).
    #[serde(default)]
    pub username: Option<String>,
    /// Service account secret (with `username`).
    #[serde(default)]
    pub secret: Option<String>,
    /// The project's API secret (legacy) or token, instead of a service account.
    #[serde(default)]
    pub api_secret: Option<String>,
    /// The project token, for identify → `/engage`.
    #[serde(default)]
    pub token: Option<String>,
    /// Base URL; overrides `region`. Any http(s) URL, for tests and proxies.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Data residency of the project; default `us`.
    #[serde(default)]
    pub region: Option<Region>,
    /// Records per request, 1 to 2000; default 1000.
    #[serde(default)]
    pub batch_size: Option<usize>,
}

/// A Mixpanel project id, written as a number or a string of digits.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ProjectId {
    /// `project_id = 123456`.
    Number(u64),
    /// `project_id = "123456"`.
    Text(String),
}

/// A Mixpanel data residency region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// `https://api.mixpanel.com`.
    Us,
    /// `https://api-eu.mixpanel.com`.
    Eu,
    /// `https://api-in.mixpanel.com`.
    In,
}

impl Region {
    fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.mixpanel.com",
            Region::Eu => "https://api-eu.mixpanel.com",
            Region::In => "https://api-in.mixpanel.com",
        }
    }
}

/// The `mixpanel` destination.
#[derive(Debug)]
pub struct Mixpanel {
    import_url: String,
    engage_url: String,
    /// `Basic …` for `/import`.
    authorization: String,
    batch_size: NonZeroUsize,
    mapping: Mapping,
}

/// A non-empty, trimmed config string.
fn given(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Plugin for Mixpanel {
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {
        let project_id = match config.project_id {
            None => None,
            Some(ProjectId::Number(id)) => Some(id.to_string()),
            Some(ProjectId::Text(id))
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(id)
            }
            Some(ProjectId::Text(id)) => {
                return Err(
                    format!("`project_id` must be the project's number, not `{id}`").into(),
                );
            }
        };
        // Mixpanel authenticates a request that names a `project_id` as a service account, and
        // one that does not by the secret (or token) alone: the URL follows the credentials.
        let (credentials, project_query) = match (
            given(config.username),
            given(config.secret),
            given(config.api_secret),
        ) {
            (Some(username), Some(secret), None) => {
                let project_id = project_id.ok_or(
                    "`project_id` is required with a service account (`username` and `secret`)",
                )?;
                (
                    format!("{username}:{secret}"),
                    format!("&project_id={project_id}"),
                )
            }
            (None, None, Some(api_secret)) => (format!("{api_secret}:"), String::new()),
            _ => {
                return Err("set exactly one kind of credentials: a service account \
                            (`username` and `secret`, with `project_id`) or the project's \
                            `api_secret`"
                    .into());
            }
        };
        let base = match (config.endpoint, config.region) {
            (Some(_), Some(_)) => {
                return Err("set `endpoint` or `region`, not both".into());
            }
            (Some(endpoint), None) => endpoint.trim().trim_end_matches('/').to_owned(),
            (None, region) => region.unwrap_or(Region::Us).base_url().to_owned(),
        };
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "`endpoint` must be an http:// or https:// base URL such as \
                 https://api.mixpanel.com, not `{base}`"
            )
            .into());
        }
        let batch_size = config.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        let batch_size = NonZeroUsize::new(batch_size)
            .filter(|size| size.get() <= MAX_BATCH_SIZE)
            .ok_or_else(|| {
                format!(
                    "`batch_size` must be between 1 and {MAX_BATCH_SIZE} (Mixpanel's limit), \
                     not {batch_size}"
                )
            })?;
        Ok(Mixpanel {
            import_url: format!("{base}/import?strict=1{project_query}"),
            engage_url: format!("{base}/engage?verbose=1"),
            authorization: format!("Basic {}", BASE64.encode(credentials)),
            batch_size,
            mapping: Mapping {
                token: given(config.token),
            },
        })
    }
}

impl Mixpanel {
    fn request(
        &self,
        endpoint: answer::Endpoint,
        records: Vec<Value>,
        indexes: Vec<u32>,
    ) -> Request {
        let mut request = match endpoint {
            answer::Endpoint::Import => {
                Request::post_json(&self.import_url, &Value::Array(records))
                    .header("Authorization", &self.authorization)
            }
            // `/engage` authenticates by the `$token` in each record.
            answer::Endpoint::Engage => {
                Request::post_json(&self.engage_url, &Value::Array(records))
            }
        }
        .header("User-Agent", USER_AGENT);
        request.events = indexes;
        request
    }

    fn push_requests(
        &self,
        output: &mut BuildOutput,
        endpoint: answer::Endpoint,
        records: Vec<(u32, Value)>,
    ) {
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let (indexes, chunk) = records.by_ref().take(self.batch_size.get()).unzip();
            output.requests.push(self.request(endpoint, chunk, indexes));
        }
    }
}

impl Destination for Mixpanel {
    fn build(&mut self, batch: Vec<Event>) -> BuildOutput {
        let mut output = BuildOutput::default();
        let (mut events, mut profiles) = (Vec::new(), Vec::new());
        for (index, event) in (0u32..).zip(&batch) {
            match self.mapping.map(event) {
                Ok(Record::Event(record)) => events.push((index, record)),
                Ok(Record::ProfileSet(record)) => profiles.push((index, record)),
                Err(reason) => output.rejections.push(Rejection { index, reason }),
            }
        }
        self.push_requests(&mut output, answer::Endpoint::Import, events);
        self.push_requests(&mut output, answer::Endpoint::Engage, profiles);
        output
    }

    fn classify(&mut self, request: &Request, response: &Response) -> Verdict {
        // Told apart by path, so an answer is read right even if the config (and so the base
        // URL) changed while the request was in flight.
        let path = request.url.split(['?', '#']).next().unwrap_or_default();
        let endpoint = if path.ends_with("/engage") {
            answer::Endpoint::Engage
        } else {
            answer::Endpoint::Import
        };
        answer::classify(endpoint, request.events.len(), response)
    }
}

weir_plugin::export_destination!(Mixpanel);

#[cfg(test)]
mod tests;
