//! Reading the HTTP V2 API's answers.
//!
//! Amplitude ingests a request whole or not at all. A 400 may name the events at fault (by
//! their position in the request's `events` array, which is the order of `Request::events`);
//! those are dropped and the others retried, in a request the router rebuilds from them. Since
//! every event carries an `insert_id`, re-sending an event Amplitude did ingest is harmless:
//! it deduplicates on it for 7 days.

use std::collections::BTreeMap;

use weir_plugin::serde_json::{self, Map, Value};
use weir_plugin::{EventVerdict, Response, Verdict, classify_by_status};

/// Delay after a 429 without `Retry-After`: Amplitude throttles a user or device that sends
/// too fast and asks clients to pause it for 30 seconds.
pub const THROTTLE_DELAY_MS: u64 = 30_000;

/// The verdict on `response`, the answer to a request carrying `count` events.
pub fn classify(count: usize, response: &Response) -> Verdict {
    match response.status {
        400 => per_event(count, &response.body).unwrap_or_else(|| classify_by_status(response)),
        // Over 1 MB or 2000 events: the same request would fail the same way, but retrying
        // (rather than dropping) keeps the events while `batch_size` is lowered.
        413 => {
            weir_plugin::warn!(
                "Amplitude refused a request of {count} events as too large (HTTP 413); \
                 lower `batch_size`: the request is retried as it is"
            );
            Verdict::Retry(None)
        }
        429 => Verdict::Retry(Some(response.retry_after_ms().unwrap_or(THROTTLE_DELAY_MS))),
        _ => classify_by_status(response),
    }
}

/// Per-event verdicts from a 400 body that names events; `None` when it names none of this
/// request's events (a malformed request, a bad API key...), which fails the request whole.
fn per_event(count: usize, body: &[u8]) -> Option<Verdict> {
    let body: Map<String, Value> = serde_json::from_slice(body).ok()?;
    // Event position → what is wrong with it.
    let mut faults: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut note = |position: &Value, fault: String| {
        if let Some(position) = position.as_u64().and_then(|p| usize::try_from(p).ok())
            && position < count
        {
            faults.entry(position).or_default().push(fault);
        }
    };
    for (key, value) in &body {
        // `events_with_invalid_fields`, `events_with_missing_fields`,
        // `events_with_invalid_id_lengths`...: field → positions.
        if let (Some(kind), Some(fields)) = (key.strip_prefix("events_with_"), value.as_object()) {
            let kind = kind.replace('_', " ");
            for (field, positions) in fields {
                for position in positions.as_array().into_iter().flatten() {
                    note(position, format!("{kind}: `{field}`"));
                }
            }
        }
    }
    for position in body
        .get("silenced_events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        note(position, "its device is silenced by Amplitude".to_owned());
    }
    if faults.is_empty() {
        return None;
    }
    let error = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("invalid event");
    Some(Verdict::PerEvent(
        (0..count)
            .map(|position| match faults.get(&position) {
                Some(faults) => EventVerdict::Drop(format!(
                    "Amplitude refused the event (HTTP 400: {error}): {}",
                    faults.join("; ")
                )),
                None => EventVerdict::Retry,
            })
            .collect(),
    ))
}
