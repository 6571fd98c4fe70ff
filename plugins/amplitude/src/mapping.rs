//! One Segment-spec event → one Amplitude HTTP V2 event object, or the reason it cannot be one.
//!
//! The mapping is a pure function of the event and the config: a request rebuilt for a retry
//! carries the same objects, with the same `insert_id`, so Amplitude deduplicates it.

use weir_plugin::serde_json::{Map, Value, json};
use weir_plugin::spec::{id_text, viewed_event_name};
use weir_plugin::{Event, date};

/// The settings the mapping reads.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Ids shorter than this are refused here rather than by Amplitude (which would fail the
    /// whole request with a 400).
    pub min_id_length: usize,
    /// The group type a `group` call assigns the user to.
    pub group_type: String,
}

/// Context fields copied to the Amplitude event when they are strings: (Amplitude key, event
/// path).
const CONTEXT_STRINGS: [(&str, &str); 12] = [
    ("ip", "context.ip"),
    ("platform", "context.device.type"),
    ("os_name", "context.os.name"),
    ("os_version", "context.os.version"),
    ("device_manufacturer", "context.device.manufacturer"),
    ("device_model", "context.device.model"),
    ("app_version", "context.app.version"),
    ("carrier", "context.network.carrier"),
    ("language", "context.locale"),
    ("country", "context.location.country"),
    ("region", "context.location.region"),
    ("city", "context.location.city"),
];

impl Mapping {
    /// The Amplitude event for `event`.
    pub fn map(&self, event: &Event) -> Result<Map<String, Value>, String> {
        let kind = event.event_type().unwrap_or_default();
        // Refuse what cannot be sent before looking at anything else, so the reason is the one
        // that matters.
        let event_type = match kind {
            "track" => event
                .get_str("event")
                .filter(|name| !name.trim().is_empty())
                .ok_or("a track event needs a non-empty `event` (its name)")?
                .to_owned(),
            "page" => viewed_event_name("Page", event.get_str("name")),
            "screen" => viewed_event_name("Screen", event.get_str("name")),
            "identify" | "group" => "$identify".to_owned(),
            "alias" => {
                return Err("Amplitude's HTTP V2 API has no alias: link user ids with \
                            Amplitude's User Mapping (alias) API instead"
                    .to_owned());
            }
            "" => return Err("the event has no `type`".to_owned()),
            other => return Err(format!("unknown event type `{other}`")),
        };

        let mut out = Map::new();
        let user_id = self.id(event, "userId")?;
        let device_id = self.id(event, "anonymousId")?;
        if user_id.is_none() && device_id.is_none() {
            return Err(
                "Amplitude needs a user or a device: the event has neither a \
                        `userId` nor an `anonymousId`"
                    .to_owned(),
            );
        }
        if let Some(user_id) = user_id {
            out.insert("user_id".into(), user_id.into());
        }
        if let Some(device_id) = device_id {
            out.insert("device_id".into(), device_id.into());
        }
        out.insert("event_type".into(), event_type.into());
        if let Some(time) = event.get_str("timestamp").and_then(date::rfc3339_ms) {
            out.insert("time".into(), time.into());
        }
        let insert_id = event.message_id().filter(|id| !id.is_empty()).ok_or(
            "the event has no `messageId`, which Amplitude needs as `insert_id` to \
                 deduplicate retries",
        )?;
        out.insert("insert_id".into(), insert_id.into());

        match kind {
            "track" | "page" | "screen" => {
                if let Some(properties) = object(event, "properties") {
                    out.insert("event_properties".into(), properties.clone().into());
                }
                if kind == "track" {
                    revenue(event, &mut out);
                }
            }
            "identify" => {
                let traits = object(event, "traits")
                    .or_else(|| object(event, "context.traits"))
                    .cloned()
                    .unwrap_or_default();
                out.insert("user_properties".into(), json!({ "$set": traits }));
            }
            _ => {
                // group: the user joins the group, as an account-level group (`groups`, with
                // Amplitude's Accounts add-on) and as a user property (without it).
                let group_id =
                    id_text(event.get("groupId")).ok_or("a group event needs a `groupId`")?;
                out.insert(
                    "user_properties".into(),
                    json!({ "$set": { self.group_type.as_str(): group_id.as_str() } }),
                );
                out.insert(
                    "groups".into(),
                    json!({ self.group_type.as_str(): group_id.as_str() }),
                );
            }
        }

        for (key, path) in CONTEXT_STRINGS {
            if let Some(value) = event.get_str(path).filter(|v| !v.is_empty()) {
                out.insert(key.into(), value.into());
            }
        }
        if let Some(library) = library(event) {
            out.insert("library".into(), library.into());
        }
        if let Some(session_id) = event
            .get("integrations.Amplitude.session_id")
            .or_else(|| event.get("context.sessionId"))
            .and_then(Value::as_i64)
        {
            out.insert("session_id".into(), session_id.into());
        }
        Ok(out)
    }

    /// The id at `key` as a string (numbers are written out), checked against the minimum
    /// length. `None` when absent or empty.
    fn id(&self, event: &Event, key: &str) -> Result<Option<String>, String> {
        let Some(id) = id_text(event.get(key)) else {
            return Ok(None);
        };
        let length = id.chars().count();
        if length < self.min_id_length {
            return Err(format!(
                "`{key}` has {length} characters and Amplitude refuses ids shorter than {}; \
                 lower `min_id_length` in the plugin config to accept it",
                self.min_id_length
            ));
        }
        Ok(Some(id))
    }
}

fn object<'e>(event: &'e Event, path: &str) -> Option<&'e Map<String, Value>> {
    event.get(path).and_then(Value::as_object)
}

/// `name/version` of `context.library`, or the name alone.
fn library(event: &Event) -> Option<String> {
    let name = event
        .get_str("context.library.name")
        .filter(|n| !n.is_empty())?;
    Some(match event.get_str("context.library.version") {
        Some(version) if !version.is_empty() => format!("{name}/{version}"),
        _ => name.to_owned(),
    })
}

/// Amplitude's revenue fields, from the Segment e-commerce properties of a track event. They
/// stay in `event_properties` too.
fn revenue(event: &Event, out: &mut Map<String, Value>) {
    let number = |path: &str| event.get(path).filter(|v| v.is_number()).cloned();
    let text = |paths: [&str; 2]| {
        paths
            .into_iter()
            .find_map(|path| event.get_str(path))
            .map(Value::from)
    };
    let fields = [
        ("revenue", number("properties.revenue")),
        ("price", number("properties.price")),
        (
            "quantity",
            event
                .get("properties.quantity")
                .filter(|v| v.is_i64() || v.is_u64())
                .cloned(),
        ),
        (
            "productId",
            text(["properties.productId", "properties.product_id"]),
        ),
        (
            "revenueType",
            text(["properties.revenueType", "properties.revenue_type"]),
        ),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            out.insert(key.into(), value);
        }
    }
}
