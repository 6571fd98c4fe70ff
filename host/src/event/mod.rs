//! Events as JSON: the one-level view the router works with, and what a record header says
//! about an event.

pub mod raw_object;

pub use raw_object::{RawObject, json_string};

use crate::dedupe;
use crate::ids::{Offset, SourceId};
use crate::log::{EventType, RecordKind, RecordMeta};

/// Checks that a plugin's output is a JSON object (UTF-8).
pub fn check_object(payload: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the event is not UTF-8".to_string())?;
    RawObject::parse(text)
        .map(|_| ())
        .map_err(|e| format!("the event is not a JSON object ({e})"))
}

/// Checks the payload a plugin kept, given the one it was handed: the same bytes back (an SDK
/// returns an event it did not change as it got it) are the input, a JSON object already, so
/// only a payload that differs is parsed.
pub fn check_kept(input: &[u8], output: &[u8]) -> Result<(), String> {
    if output == input {
        return Ok(());
    }
    check_object(output)
}

/// The routing facts of an event, as the log's record header carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub event_type: EventType,
    /// `event` of a track, `name` of a page or screen; empty otherwise.
    pub event_name: String,
    /// `anonymousId` when present, else `userId`: a device's stream keeps its order across
    /// `identify`.
    pub ordering_key: String,
    pub message_id: Option<String>,
}

impl Header {
    pub fn of(obj: &RawObject<'_>) -> Header {
        let event_type = obj
            .get_str("type")
            .ok()
            .flatten()
            .and_then(|t| EventType::parse(&t))
            .unwrap_or(EventType::Unknown);
        let name_field = match event_type {
            EventType::Track => Some("event"),
            EventType::Page | EventType::Screen => Some("name"),
            _ => None,
        };
        let event_name = name_field
            .and_then(|f| obj.get_str(f).ok().flatten())
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let ordering_key = obj
            .get_id("anonymousId")
            .or_else(|| obj.get_id("userId"))
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let message_id = obj
            .get_str("messageId")
            .ok()
            .flatten()
            .map(|s| s.into_owned());
        Header {
            event_type,
            event_name,
            ordering_key,
            message_id,
        }
    }

    /// The record metadata of an event with this header.
    pub fn record_meta(
        self,
        kind: RecordKind,
        source: SourceId,
        received_at_ms: i64,
        origin: Option<Offset>,
    ) -> RecordMeta {
        RecordMeta {
            kind,
            event_type: self.event_type,
            received_at_ms,
            source,
            event_name: self.event_name,
            ordering_key: self.ordering_key,
            dedupe_key: self.message_id.as_deref().map_or(0, dedupe::key_of),
            origin,
        }
    }
}
