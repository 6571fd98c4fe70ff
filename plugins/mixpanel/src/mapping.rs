//! One Segment-spec event → one Mixpanel record: an event for `/import`, or a profile update for
//! `/engage` (identify), or the reason it can be neither.
//!
//! The mapping is a pure function of the event and the config, so a rebuilt request carries
//! the same records, with the same `$insert_id` and `time`, and Mixpanel deduplicates them.

use sha2::{Digest, Sha256};
use weir_plugin::serde_json::{Map, Value};
use weir_plugin::spec::{id_text, viewed_event_name};
use weir_plugin::{Event, date};

/// A Mixpanel record, by the endpoint that takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `{"event": name, "properties": {...}}` for `/import`.
    Event(Value),
    /// `{"$token", "$distinct_id", "$ip", "$set"}` for `/engage`.
    ProfileSet(Value),
}

/// Context fields copied into event properties when they are strings or numbers: (Mixpanel
/// property, event path). The event's own `properties` override them.
const CONTEXT_PROPERTIES: [(&str, &str); 17] = [
    ("ip", "context.ip"),
    ("$os", "context.os.name"),
    ("$os_version", "context.os.version"),
    ("$app_version_string", "context.app.version"),
    ("$app_build_number", "context.app.build"),
    ("$manufacturer", "context.device.manufacturer"),
    ("$model", "context.device.model"),
    ("$carrier", "context.network.carrier"),
    ("$current_url", "context.page.url"),
    ("$referrer", "context.page.referrer"),
    ("$screen_width", "context.screen.width"),
    ("$screen_height", "context.screen.height"),
    ("utm_source", "context.campaign.source"),
    ("utm_medium", "context.campaign.medium"),
    ("utm_campaign", "context.campaign.name"),
    ("utm_term", "context.campaign.term"),
    ("utm_content", "context.campaign.content"),
];

/// Segment traits with a reserved Mixpanel profile property: (trait names, Mixpanel property).
const TRAIT_RENAMES: [(&[&str], &str); 7] = [
    (&["email"], "$email"),
    (&["phone"], "$phone"),
    (&["name"], "$name"),
    (&["firstName", "first_name"], "$first_name"),
    (&["lastName", "last_name"], "$last_name"),
    (&["avatar"], "$avatar"),
    (&["createdAt", "created_at"], "$created"),
];

/// The settings the mapping reads.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// The project token, which `/engage` needs; without it identify events are rejected.
    pub token: Option<String>,
}

impl Mapping {
    /// The Mixpanel record for `event`.
    pub fn map(&self, event: &Event) -> Result<Record, String> {
        let kind = event.event_type().unwrap_or_default();
        let name = match kind {
            "track" => event
                .get_str("event")
                .filter(|name| !name.trim().is_empty())
                .ok_or("a track event needs a non-empty `event` (its name)")?
                .to_owned(),
            "page" => viewed_event_name("Page", event.get_str("name")),
            "screen" => viewed_event_name("Screen", event.get_str("name")),
            "identify" => return self.profile_set(event),
            "group" => {
                return Err(
                    "group calls are not sent to Mixpanel: group profiles (/groups) \
                            need a group key set up in the project; send the group id as an \
                            event or user property instead"
                        .to_owned(),
                );
            }
            "alias" => {
                return Err(
                    "alias is not sent to Mixpanel: with Simplified ID Merge, events \
                            that carry both a userId and an anonymousId link the two"
                        .to_owned(),
                );
            }
            "" => return Err("the event has no `type`".to_owned()),
            other => return Err(format!("unknown event type `{other}`")),
        };

        let distinct_id = distinct_id(event)?;
        // `time` and `$insert_id` are what Mixpanel deduplicates on: neither may depend on
        // when the request is built, so an event without a readable timestamp is refused
        // rather than stamped with the clock.
        let time = event
            .get_str("timestamp")
            .and_then(date::rfc3339_ms)
            .ok_or(
                "the event has no readable `timestamp`, and Mixpanel's /import needs the \
                 event time",
            )?;
        let message_id = event.message_id().filter(|id| !id.is_empty()).ok_or(
            "the event has no `messageId`, which Mixpanel needs as `$insert_id` to \
                 deduplicate retries",
        )?;

        let mut properties = Map::new();
        properties.insert("time".into(), time.into());
        properties.insert("distinct_id".into(), distinct_id.into());
        properties.insert("$insert_id".into(), insert_id(message_id).into());
        if let Some(user_id) = id_text(event.get("userId")) {
            properties.insert("$user_id".into(), user_id.into());
        }
        if let Some(device_id) = id_text(event.get("anonymousId")) {
            properties.insert("$device_id".into(), device_id.into());
        }
        let mut others = Map::new();
        for (key, path) in CONTEXT_PROPERTIES {
            match event.get(path) {
                Some(Value::String(text)) if !text.is_empty() => {
                    others.insert(key.into(), text.clone().into());
                }
                Some(number @ Value::Number(_)) => {
                    others.insert(key.into(), number.clone());
                }
                _ => {}
            }
        }
        if let Some(own) = event.get("properties").and_then(Value::as_object) {
            others.extend(own.clone());
        }
        for (key, value) in others {
            properties.entry(key).or_insert(value);
        }
        let mut record = Map::new();
        record.insert("event".into(), name.into());
        record.insert("properties".into(), properties.into());
        Ok(Record::Event(record.into()))
    }

    fn profile_set(&self, event: &Event) -> Result<Record, String> {
        let token = self.token.as_deref().ok_or(
            "identify updates Mixpanel profiles through /engage, which needs the project's \
             `token` in the plugin config",
        )?;
        let traits = event
            .get("traits")
            .and_then(Value::as_object)
            .or_else(|| event.get("context.traits").and_then(Value::as_object))
            .filter(|traits| !traits.is_empty())
            .ok_or(
                "the identify event has no traits: there is nothing to set on the Mixpanel profile",
            )?;
        let mut set = Map::new();
        for (key, value) in traits {
            let renamed = TRAIT_RENAMES
                .iter()
                .find(|(names, _)| names.contains(&key.as_str()))
                .map_or(key.as_str(), |(_, property)| property);
            set.insert(renamed.to_owned(), value.clone());
        }
        let mut record = Map::new();
        record.insert("$token".into(), token.into());
        record.insert("$distinct_id".into(), distinct_id(event)?.into());
        // Without `$ip`, Mixpanel would locate the user at the router's address; "0" turns
        // geolocation off.
        let ip = event
            .get_str("context.ip")
            .filter(|ip| !ip.is_empty())
            .unwrap_or("0");
        record.insert("$ip".into(), ip.into());
        record.insert("$set".into(), set.into());
        Ok(Record::ProfileSet(record.into()))
    }
}

/// `userId`, else `anonymousId`.
fn distinct_id(event: &Event) -> Result<String, String> {
    id_text(event.get("userId"))
        .or_else(|| id_text(event.get("anonymousId")))
        .ok_or_else(|| {
            "the event has neither a `userId` nor an `anonymousId` to use as Mixpanel's \
             distinct_id"
                .to_owned()
        })
}

/// `$insert_id` for a `messageId`: the id itself when Mixpanel accepts it (1 to 36 characters,
/// letters, digits and `-`, which UUIDs are), else the first 32 hex digits of its SHA-256, the
/// same for every build of the same event.
pub fn insert_id(message_id: &str) -> String {
    let fits = (1..=36).contains(&message_id.len())
        && message_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if fits {
        return message_id.to_owned();
    }
    Sha256::digest(message_id.as_bytes())[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
