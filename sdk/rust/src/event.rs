//! [`Event`]: one Segment/RudderStack-spec message, parsed, with where it came from.

use serde_json::{Map, Value};

use crate::path::{self, PathError};

/// Why a payload is not an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The payload is not JSON at all.
    #[error("event payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The payload is JSON but not an object (`[]`, `"text"`, `42`...).
    #[error("event payload is JSON but not an object")]
    NotAnObject,
}

/// One event: the JSON object of a Segment/RudderStack-spec message plus the name of the source
/// it arrived on and its position in the log.
///
/// The object is a [`serde_json::Map`] that keeps key order, so an event a plugin changed
/// serializes with its keys where they were. An event built by the SDK from the host's bytes
/// remembers them until something could change it (any `&mut` access): a plugin that keeps it
/// untouched hands back the very bytes it got, without writing the JSON again. Read and write
/// nested fields with dotted paths:
///
/// ```
/// # use weir_plugin::Event;
/// # use serde_json::json;
/// let mut event = Event::from_value(json!({
///     "type": "track",
///     "event": "Order Completed",
///     "context": {"traits": {"email": "a@example.com"}}
/// }))?;
/// assert_eq!(event.event_name(), Some("Order Completed"));
/// assert_eq!(event.get_str("context.traits.email"), Some("a@example.com"));
/// event.set("properties.revenue", 12.5)?;
/// event.remove("context.traits.email");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    fields: Map<String, Value>,
    source: String,
    offset: u64,
    /// The payload `fields` was parsed from, while nothing could have changed them: what
    /// [`into_json`](Self::into_json) returns instead of serializing `fields` again (the larger
    /// half of a filter's per-event cost when it keeps the event as it is).
    original: Option<Vec<u8>>,
}

/// Two events are equal when their fields, source and offset are; whether one still holds the
/// bytes it was parsed from does not matter.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields && self.source == other.source && self.offset == other.offset
    }
}

impl Event {
    /// An event with the given fields, no source (`""`) and offset 0. Handy in tests; plugins
    /// receive their events from the host already built.
    pub fn new(fields: Map<String, Value>) -> Self {
        Self {
            fields,
            source: String::new(),
            offset: 0,
            original: None,
        }
    }

    /// An event from a JSON value, which must be an object.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        match value {
            Value::Object(fields) => Ok(Self::new(fields)),
            _ => Err(EventError::NotAnObject),
        }
    }

    /// Parses a payload as the host sends it: UTF-8 JSON holding one object.
    pub fn from_json(payload: &[u8]) -> Result<Self, EventError> {
        Self::from_value(serde_json::from_slice(payload)?)
    }

    /// Like [`from_json`](Self::from_json), keeping `payload` so that an event nobody changes
    /// goes back as these bytes.
    pub fn from_payload(payload: Vec<u8>) -> Result<Self, EventError> {
        let mut event = Self::from_json(&payload)?;
        event.original = Some(payload);
        Ok(event)
    }

    /// The same event, attributed to `source` at log position `offset`.
    pub fn with_origin(mut self, source: impl Into<String>, offset: u64) -> Self {
        self.source = source.into();
        self.offset = offset;
        self
    }

    /// A new event with `fields` and the same source and offset as `self`: how a fan-out plugin
    /// builds the events it expands into.
    pub fn derive(&self, fields: Map<String, Value>) -> Self {
        Self {
            fields,
            source: self.source.clone(),
            offset: self.offset,
            original: None,
        }
    }

    /// The event as UTF-8 JSON, in the form the host expects back.
    pub fn to_json(&self) -> Vec<u8> {
        if let Some(original) = &self.original {
            return original.clone();
        }
        Self::serialize(&self.fields)
    }

    /// [`to_json`](Self::to_json), consuming the event: an unchanged event's bytes are moved
    /// out, not copied.
    pub fn into_json(self) -> Vec<u8> {
        self.original
            .unwrap_or_else(|| Self::serialize(&self.fields))
    }

    fn serialize(fields: &Map<String, Value>) -> Vec<u8> {
        // Writing a `Map<String, Value>` into a `Vec` has no failure case: keys are strings,
        // numbers are finite by construction and a `Vec` never returns an I/O error.
        serde_json::to_vec(fields).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Name of the source (from weir.toml) the event arrived on.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Position of the event in the log. Stable across retries and replays, but use
    /// [`message_id`](Self::message_id) as an idempotency key, not this.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The whole JSON object.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The whole JSON object, to change it freely.
    pub fn fields_mut(&mut self) -> &mut Map<String, Value> {
        self.touch()
    }

    /// The fields, for a change: the original bytes no longer describe the event.
    fn touch(&mut self) -> &mut Map<String, Value> {
        self.original = None;
        &mut self.fields
    }

    /// The JSON object, dropping source and offset.
    pub fn into_fields(self) -> Map<String, Value> {
        self.fields
    }

    /// `type`: `track`, `identify`, `page`, `screen`, `group` or `alias`.
    pub fn event_type(&self) -> Option<&str> {
        self.fields.get("type").and_then(Value::as_str)
    }

    /// Which field names this kind of event: `event` for a track, `name` for a page or a screen.
    fn name_key(&self) -> Option<&'static str> {
        match self.event_type()? {
            "track" => Some("event"),
            "page" | "screen" => Some("name"),
            _ => None,
        }
    }

    /// The event's name: `event` of a track, `name` of a page or a screen; `None` for other
    /// types or when the field is missing or not a string.
    pub fn event_name(&self) -> Option<&str> {
        self.fields.get(self.name_key()?).and_then(Value::as_str)
    }

    /// Sets the event's name (see [`event_name`](Self::event_name)). Returns `false`, changing
    /// nothing, when the event's type has no name (identify, group, alias, unknown).
    pub fn set_event_name(&mut self, name: impl Into<String>) -> bool {
        match self.name_key() {
            Some(key) => {
                self.touch()
                    .insert(key.to_owned(), Value::String(name.into()));
                true
            }
            None => false,
        }
    }

    /// `messageId`, the idempotency key the SDK that sent the event chose.
    pub fn message_id(&self) -> Option<&str> {
        self.get_str("messageId")
    }

    /// `userId`.
    pub fn user_id(&self) -> Option<&str> {
        self.get_str("userId")
    }

    /// `anonymousId`.
    pub fn anonymous_id(&self) -> Option<&str> {
        self.get_str("anonymousId")
    }

    /// The value at a dotted path: keys separated by dots, a numeric segment indexing an array
    /// (`context.traits.email`, `properties.products.0.sku`). There is no escaping; reach keys
    /// that contain a dot through [`fields`](Self::fields).
    pub fn get(&self, path: &str) -> Option<&Value> {
        path::get(&self.fields, path)
    }

    /// The string at a dotted path; `None` when missing or not a string.
    pub fn get_str(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(Value::as_str)
    }

    /// The value at a dotted path, to change it in place.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Value> {
        path::get_mut(self.touch(), path)
    }

    /// Writes `value` at a dotted path, creating missing objects on the way (a `null` on the
    /// way counts as missing), and returns the value it replaced. Fails, changing nothing, when
    /// a string, number or boolean is in the way or an array index does not exist.
    pub fn set(&mut self, path: &str, value: impl Into<Value>) -> Result<Option<Value>, PathError> {
        path::set(self.touch(), path, value.into())
    }

    /// Removes and returns the value at a dotted path. The keys after it keep their order.
    pub fn remove(&mut self, path: &str) -> Option<Value> {
        path::remove(self.touch(), path)
    }
}

impl From<Map<String, Value>> for Event {
    fn from(fields: Map<String, Value>) -> Self {
        Self::new(fields)
    }
}

/// JSON equality where `2` and `2.0` are the same number (key order never matters).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Event {
        Event::from_value(value).unwrap()
    }

    #[test]
    fn names_follow_the_spec_per_type() {
        let mut track = event(json!({"type": "track", "event": "Signed Up", "name": "x"}));
        assert_eq!(track.event_name(), Some("Signed Up"));
        assert!(track.set_event_name("signed_up"));
        assert_eq!(track.get("event"), Some(&json!("signed_up")));

        let page = event(json!({"type": "page", "name": "Home", "event": "x"}));
        assert_eq!(page.event_name(), Some("Home"));

        let mut identify = event(json!({"type": "identify", "name": "Ann"}));
        assert_eq!(identify.event_name(), None);
        assert!(!identify.set_event_name("x"));
        assert_eq!(identify.get("name"), Some(&json!("Ann")));
    }

    #[test]
    fn parses_only_objects() {
        assert!(matches!(
            Event::from_json(b"[1]"),
            Err(EventError::NotAnObject)
        ));
        assert!(matches!(Event::from_json(b"{"), Err(EventError::Json(_))));
        let parsed = Event::from_json(br#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(parsed.to_json(), br#"{"b":1,"a":2}"#);
    }

    #[test]
    fn an_untouched_event_goes_back_as_its_bytes_a_changed_one_is_written_again() {
        let payload = br#"{ "type": "track",  "event": "A" }"#.to_vec();
        let kept = Event::from_payload(payload.clone()).unwrap();
        assert_eq!(kept.get_str("event"), Some("A"));
        assert_eq!(kept.clone().into_json(), payload);

        let mut renamed = kept.clone();
        assert!(renamed.set_event_name("B"));
        assert_eq!(renamed.into_json(), br#"{"type":"track","event":"B"}"#);
        let mut set = kept.clone();
        set.set("properties.x", 1).unwrap();
        assert_eq!(
            set.to_json(),
            br#"{"type":"track","event":"A","properties":{"x":1}}"#
        );
        let mut removed = kept.clone();
        removed.remove("event");
        assert_eq!(removed.into_json(), br#"{"type":"track"}"#);
        // Any mutable access counts as a change, whether or not it wrote anything.
        let mut borrowed = kept.clone();
        let _ = borrowed.get_mut("event");
        assert_eq!(borrowed.into_json(), br#"{"type":"track","event":"A"}"#);
        let mut fields = kept;
        fields.fields_mut();
        assert_eq!(fields.to_json(), br#"{"type":"track","event":"A"}"#);
    }

    #[test]
    fn derived_events_keep_their_origin() {
        let original = event(json!({"type": "track"})).with_origin("web", 42);
        let child = original.derive(Map::new());
        assert_eq!((child.source(), child.offset()), ("web", 42));
    }
}
