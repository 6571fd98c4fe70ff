//! Validation and enrichment of one event, as ARCHITECTURE *Semantics* decides them.
//!
//! - Required: a known `type` (or the endpoint's), `userId` or `anonymousId`, `event` for a
//!   track, `groupId` for a group, `previousId` for an alias; `context`, `properties` and
//!   `traits` are objects when present; timestamps parse as ISO-8601.
//! - Added: `messageId` (a UUID) when absent, `receivedAt`, `sentAt` from the batch when the
//!   event has none, `context.ip` from the peer when absent, `context.sourceId`.
//! - Time: the client's event time is `originalTimestamp`, else `timestamp`, and is kept as
//!   `originalTimestamp`. With a `sentAt` (and not for `/v1/import`),
//!   `timestamp = receivedAt - (sentAt - originalTimestamp)`, correcting the device clock;
//!   otherwise `timestamp = originalTimestamp` (or `receivedAt` when the client sent no time).
//! - The write key is removed: it is a secret and has no business in the warehouse.

use time::OffsetDateTime;

#[cfg(test)]
use crate::dedupe;
use crate::event::{Header, RawObject, json_string};
use crate::ids::SourceId;
use crate::log::{EventType, RecordKind, RecordMeta};
use crate::timestamp;

/// What every event of one request shares.
pub struct RequestContext<'r> {
    pub source: &'r SourceId,
    pub received_at: OffsetDateTime,
    /// `received_at` formatted, as a JSON string literal.
    pub received_at_json: String,
    /// The batch's `sentAt`, raw JSON, if any.
    pub batch_sent_at: Option<String>,
    /// The peer's IP address as a JSON string literal.
    pub peer_ip_json: String,
    /// `/v1/import`: historical data, no clock-skew correction.
    pub import: bool,
    pub max_event_bytes: usize,
}

/// An event ready for the log.
pub struct Prepared {
    pub meta: RecordMeta,
    pub payload: Vec<u8>,
}

/// `at.field`, `at`, or `field`, for messages that point at the offending value.
fn path(at: &str, field: &str) -> String {
    match (at.is_empty(), field.is_empty()) {
        (true, true) => "event".into(),
        (true, false) => field.into(),
        (false, true) => at.into(),
        (false, false) => format!("{at}.{field}"),
    }
}

fn parse_time(
    obj: &RawObject<'_>,
    field: &str,
    at: &str,
) -> Result<Option<OffsetDateTime>, String> {
    match obj.get_str(field) {
        Ok(None) => Ok(None),
        Ok(Some(s)) => timestamp::parse(&s).map(Some).ok_or_else(|| {
            format!(
                "{}: `{s}` is not an ISO-8601 date-time (like 2024-01-02T03:04:05.678Z)",
                path(at, field)
            )
        }),
        Err(_) => Err(format!(
            "{}: must be an ISO-8601 date-time string",
            path(at, field)
        )),
    }
}

fn require_object(obj: &RawObject<'_>, field: &str, at: &str) -> Result<(), String> {
    match obj.get(field) {
        None | Some("null") => Ok(()),
        Some(raw) if raw.starts_with('{') => Ok(()),
        Some(_) => Err(format!("{}: must be a JSON object", path(at, field))),
    }
}

/// Validates and enriches `raw` (one event's JSON). `forced` is the type an endpoint implies
/// (`/v1/track`...); `at` names the event in messages (`batch[3]`, or empty for a single one).
pub fn normalize(
    ctx: &RequestContext<'_>,
    raw: &str,
    forced: Option<EventType>,
    at: &str,
) -> Result<Prepared, String> {
    check_size(ctx, raw, at)?;
    let obj =
        RawObject::parse(raw).map_err(|_| format!("{}: must be a JSON object", path(at, "")))?;
    normalize_parsed(ctx, raw, obj, forced, at)
}

/// The event size limit, checked before the event is parsed.
pub fn check_size(ctx: &RequestContext<'_>, raw: &str, at: &str) -> Result<(), String> {
    if raw.len() > ctx.max_event_bytes {
        return Err(format!(
            "{}: the event is {} bytes, over the limit of {} bytes per event",
            path(at, ""),
            raw.len(),
            ctx.max_event_bytes
        ));
    }
    Ok(())
}

/// [`normalize`] of an event already parsed (`obj` is `raw` parsed), its size checked.
pub fn normalize_parsed(
    ctx: &RequestContext<'_>,
    raw: &str,
    mut obj: RawObject<'_>,
    forced: Option<EventType>,
    at: &str,
) -> Result<Prepared, String> {
    let event_type = match forced {
        Some(t) => {
            obj.set_str("type", t.as_str());
            t
        }
        None => match obj.get_str("type") {
            Ok(Some(t)) => EventType::parse(&t).ok_or_else(|| {
                format!(
                    "{}: `{t}` is not a known type; use track, identify, page, screen, group or alias",
                    path(at, "type")
                )
            })?,
            Ok(None) => {
                return Err(format!(
                    "{}: missing; each event needs one of track, identify, page, screen, group, alias",
                    path(at, "type")
                ));
            }
            Err(_) => return Err(format!("{}: must be a string", path(at, "type"))),
        },
    };

    if obj.get_id("userId").is_none() && obj.get_id("anonymousId").is_none() {
        return Err(format!(
            "{}: needs a userId or an anonymousId (a non-empty string)",
            path(at, "")
        ));
    }
    match event_type {
        EventType::Track => match obj.get_str("event") {
            Ok(Some(e)) if !e.trim().is_empty() => {}
            Ok(_) => {
                return Err(format!(
                    "{}: missing; a track needs an event name",
                    path(at, "event")
                ));
            }
            Err(_) => return Err(format!("{}: must be a string", path(at, "event"))),
        },
        EventType::Group if obj.get_id("groupId").is_none() => {
            return Err(format!(
                "{}: missing; a group needs a groupId",
                path(at, "groupId")
            ));
        }
        EventType::Alias if obj.get_id("previousId").is_none() => {
            return Err(format!(
                "{}: missing; an alias needs the previousId it merges",
                path(at, "previousId")
            ));
        }
        _ => {}
    }
    for field in ["context", "properties", "traits"] {
        require_object(&obj, field, at)?;
    }

    match obj.get_str("messageId") {
        Ok(Some(m)) if !m.is_empty() => {}
        Ok(_) => obj.set_str("messageId", &uuid::Uuid::new_v4().to_string()),
        Err(_) => return Err(format!("{}: must be a string", path(at, "messageId"))),
    }

    // Time.
    let original = parse_time(&obj, "originalTimestamp", at)?;
    let client_timestamp = parse_time(&obj, "timestamp", at)?;
    let event_sent_at = parse_time(&obj, "sentAt", at)?;
    let sent_at = match (event_sent_at, &ctx.batch_sent_at) {
        (Some(t), _) => Some(t),
        (None, Some(batch)) => {
            let t = serde_json::from_str::<String>(batch)
                .ok()
                .and_then(|s| timestamp::parse(&s))
                .ok_or_else(|| "sentAt: must be an ISO-8601 date-time string".to_string())?;
            obj.set("sentAt", batch.clone());
            Some(t)
        }
        (None, None) => None,
    };
    let event_time = match (original, client_timestamp) {
        (Some(o), _) => Some(o),
        (None, Some(t)) => {
            if let Some(raw) = obj.get("timestamp") {
                obj.set("originalTimestamp", raw.to_owned());
            }
            Some(t)
        }
        (None, None) => None,
    };
    let corrected = match (event_time, sent_at) {
        (Some(t), Some(sent)) if !ctx.import => ctx.received_at - (sent - t),
        (Some(t), _) => t,
        (None, _) => ctx.received_at,
    };
    obj.set("timestamp", json_string(&timestamp::format(corrected)));
    obj.set("receivedAt", ctx.received_at_json.clone());

    // Context.
    let context_json = {
        let raw_context = obj.get("context").filter(|c| *c != "null").unwrap_or("{}");
        let mut context = RawObject::parse(raw_context)
            .map_err(|_| format!("{}: must be a JSON object", path(at, "context")))?;
        if !context.has("ip") {
            context.set("ip", ctx.peer_ip_json.clone());
        }
        context.set_str("sourceId", ctx.source.as_str());
        context.to_json()
    };
    obj.set("context", context_json);
    obj.remove("writeKey");

    let mut payload = Vec::with_capacity(raw.len() + 160);
    obj.write_to(&mut payload);
    let meta = Header::of(&obj).record_meta(
        RecordKind::Event,
        ctx.source.clone(),
        timestamp::unix_ms(ctx.received_at),
        None,
    );
    Ok(Prepared { meta, payload })
}

/// The payload of an invalid record: the reason and what was sent.
pub fn invalid_payload(reason: &str, raw: &str) -> Vec<u8> {
    let event = if serde_json::from_str::<&serde_json::value::RawValue>(raw).is_ok() {
        raw.to_owned()
    } else {
        json_string(raw)
    };
    format!(r#"{{"reason":{},"event":{event}}}"#, json_string(reason)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ctx<'a>(
        source: &'a SourceId,
        import: bool,
        batch_sent_at: Option<&str>,
    ) -> RequestContext<'a> {
        let received_at = timestamp::parse("2024-05-01T12:00:10.000Z").unwrap();
        RequestContext {
            source,
            received_at,
            received_at_json: json_string(&timestamp::format(received_at)),
            batch_sent_at: batch_sent_at.map(json_string),
            peer_ip_json: json_string("10.1.2.3"),
            import,
            max_event_bytes: 1000,
        }
    }

    fn ok(ctx: &RequestContext<'_>, raw: &str, forced: Option<EventType>) -> (RecordMeta, Value) {
        let p = normalize(ctx, raw, forced, "batch[0]").unwrap_or_else(|e| panic!("{e}"));
        (p.meta, serde_json::from_slice(&p.payload).unwrap())
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        let s = SourceId::new("web");
        // The device clock is 1 h behind: it sent at 11:00:09 an event made at 11:00:00.
        let raw = r#"{"type":"track","event":"A","userId":"u","originalTimestamp":"2024-05-01T11:00:00.000Z","sentAt":"2024-05-01T11:00:09.000Z"}"#;
        let (meta, v) = ok(&ctx(&s, false, None), raw, None);
        assert_eq!(v["timestamp"], "2024-05-01T12:00:01.000Z");
        assert_eq!(v["originalTimestamp"], "2024-05-01T11:00:00.000Z");
        assert_eq!(v["receivedAt"], "2024-05-01T12:00:10.000Z");
        assert_eq!(meta.event_name, "A");
        assert_eq!(meta.ordering_key, "u");
    }

    #[test]
    fn batch_sent_at_applies_and_timestamp_becomes_original() {
        let s = SourceId::new("web");
        let raw = r#"{"type":"page","name":"Home","anonymousId":"a","userId":"u","timestamp":"2024-05-01T11:59:00.000Z"}"#;
        let (meta, v) = ok(&ctx(&s, false, Some("2024-05-01T11:59:05.000Z")), raw, None);
        assert_eq!(v["originalTimestamp"], "2024-05-01T11:59:00.000Z");
        assert_eq!(v["sentAt"], "2024-05-01T11:59:05.000Z");
        assert_eq!(v["timestamp"], "2024-05-01T12:00:05.000Z");
        assert_eq!(
            meta.ordering_key, "a",
            "anonymousId orders a device's stream"
        );
        assert_eq!(meta.event_name, "Home");
    }

    #[test]
    fn import_keeps_the_client_time() {
        let s = SourceId::new("web");
        let raw = r#"{"type":"identify","userId":"u","timestamp":"2020-01-01T00:00:00Z","sentAt":"2024-05-01T11:59:05Z"}"#;
        let (_, v) = ok(&ctx(&s, true, None), raw, None);
        assert_eq!(v["timestamp"], "2020-01-01T00:00:00.000Z");
    }

    #[test]
    fn enrichment_adds_ids_ip_and_drops_the_write_key() {
        let s = SourceId::new("web");
        let raw =
            r#"{"userId":"u","event":"E","writeKey":"secret","context":{"library":{"name":"x"}}}"#;
        let (meta, v) = ok(&ctx(&s, false, None), raw, Some(EventType::Track));
        assert_eq!(v["type"], "track");
        assert_eq!(v["context"]["ip"], "10.1.2.3");
        assert_eq!(v["context"]["sourceId"], "web");
        assert_eq!(v["context"]["library"]["name"], "x");
        assert!(v.get("writeKey").is_none());
        let id = v["messageId"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(meta.dedupe_key, dedupe::key_of(id));
        assert_eq!(v["timestamp"], v["receivedAt"]);

        let with_ip = r#"{"userId":"u","event":"E","context":{"ip":"1.1.1.1"}}"#;
        let (_, v) = ok(&ctx(&s, false, None), with_ip, Some(EventType::Track));
        assert_eq!(v["context"]["ip"], "1.1.1.1");
    }

    #[test]
    fn invalid_events_say_which_field() {
        let s = SourceId::new("web");
        let c = ctx(&s, false, None);
        let cases = [
            (r#"[1]"#, "batch[0]: must be a JSON object"),
            (r#"{"userId":"u"}"#, "batch[0].type: missing"),
            (
                r#"{"type":"click","userId":"u"}"#,
                "batch[0].type: `click` is not a known type",
            ),
            (
                r#"{"type":"track","event":"E"}"#,
                "needs a userId or an anonymousId",
            ),
            (
                r#"{"type":"track","userId":"u"}"#,
                "batch[0].event: missing",
            ),
            (
                r#"{"type":"group","userId":"u"}"#,
                "batch[0].groupId: missing",
            ),
            (
                r#"{"type":"alias","userId":"u"}"#,
                "batch[0].previousId: missing",
            ),
            (
                r#"{"type":"identify","userId":"u","traits":[1]}"#,
                "batch[0].traits: must be a JSON object",
            ),
            (
                r#"{"type":"identify","userId":"u","timestamp":"soon"}"#,
                "batch[0].timestamp: `soon` is not an ISO-8601",
            ),
            (
                r#"{"type":"identify","userId":"u","messageId":7}"#,
                "batch[0].messageId: must be a string",
            ),
        ];
        for (raw, want) in cases {
            let err = normalize(&c, raw, None, "batch[0]")
                .err()
                .unwrap_or_default();
            assert!(err.contains(want), "{raw}: got {err:?}, want {want:?}");
        }
        let big = format!(
            r#"{{"type":"track","userId":"u","event":"{}"}}"#,
            "x".repeat(2000)
        );
        let err = normalize(&c, &big, None, "batch[0]")
            .err()
            .unwrap_or_default();
        assert!(err.contains("over the limit of 1000 bytes"), "{err}");
    }
}
