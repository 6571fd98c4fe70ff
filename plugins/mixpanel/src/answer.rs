//! Reading Mixpanel's answers.
//!
//! `/import?strict=1` validates each event: a 400 lists the failed ones (`failed_records`, by
//! position in the request's array, which is the order of `Request::events`) and Mixpanel
//! ingests the others, so those are done. `/engage?verbose=1` answers 200 with `status` 1 when
//! it accepted the updates and 0 when it accepted none; it reports nothing per update.

use std::collections::BTreeMap;

use weir_plugin::serde_json::{self, Map, Value};
use weir_plugin::{EventVerdict, Response, Verdict, classify_by_status};

/// The endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/import`: events.
    Import,
    /// `/engage`: profile updates.
    Engage,
}

/// The verdict on `response`, the answer to a request of `count` records sent to `endpoint`.
pub fn classify(endpoint: Endpoint, count: usize, response: &Response) -> Verdict {
    match (response.status, endpoint) {
        (200..=299, Endpoint::Import) => Verdict::Done,
        (200..=299, Endpoint::Engage) => engage_result(&response.body),
        (400, Endpoint::Import) => {
            failed_records(count, &response.body).unwrap_or_else(|| classify_by_status(response))
        }
        (401 | 403, _) => {
            let check = match endpoint {
                Endpoint::Import => {
                    "`username` and `secret` (a service account with access to `project_id`) \
                     or `api_secret`"
                }
                Endpoint::Engage => "`token` (the project token)",
            };
            Verdict::Drop(format!(
                "Mixpanel refused the credentials (HTTP {}): check {check} in the plugin \
                 config, then replay the dead letters; answer: {}",
                response.status,
                excerpt(&response.body)
            ))
        }
        // Over 2000 records or 10 MB: the same request would fail the same way, but retrying
        // (rather than dropping) keeps the events while `batch_size` is lowered.
        (413, _) => {
            weir_plugin::warn!(
                "Mixpanel refused a request of {count} records as too large (HTTP 413); \
                 lower `batch_size`: the request is retried as it is"
            );
            Verdict::Retry(None)
        }
        // 429 (after `Retry-After` if any), 408 and 5xx are retried, the rest dropped.
        _ => classify_by_status(response),
    }
}

/// Per-event verdicts from a strict-mode 400; `None` when it names none of this request's
/// events, which fails the request whole.
fn failed_records(count: usize, body: &[u8]) -> Option<Verdict> {
    let body: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let mut failures: BTreeMap<usize, String> = BTreeMap::new();
    for record in body.get("failed_records")?.as_array()? {
        let Some(position) = record
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|p| usize::try_from(p).ok())
            .filter(|&p| p < count)
        else {
            continue;
        };
        let text = |key| record.get(key).and_then(Value::as_str);
        let why = match (text("message"), text("field")) {
            (Some(message), _) => message.to_owned(),
            (None, Some(field)) => format!("`{field}` is invalid"),
            (None, None) => "failed validation".to_owned(),
        };
        failures.insert(position, why);
    }
    if failures.is_empty() {
        return None;
    }
    Some(Verdict::PerEvent(
        (0..count)
            .map(|position| match failures.remove(&position) {
                Some(why) => {
                    EventVerdict::Drop(format!("Mixpanel refused the event (HTTP 400): {why}"))
                }
                None => EventVerdict::Done,
            })
            .collect(),
    ))
}

/// The 2xx body of `/engage`: `1` / `{"status": 1}` accepted, `0` / `{"status": 0, "error"}`
/// refused. Anything else is taken as accepted: the status said so.
fn engage_result(body: &[u8]) -> Verdict {
    let refused = |why: &str| Verdict::Drop(format!("Mixpanel refused the profile updates: {why}"));
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Number(n)) if n.as_u64() == Some(0) => refused("it accepted none (answer `0`)"),
        Ok(Value::Object(answer)) if answer.get("status").and_then(Value::as_u64) == Some(0) => {
            refused(
                answer
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("it accepted none (status 0)"),
            )
        }
        _ => Verdict::Done,
    }
}

/// The start of a body, for a reason a person reads.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}
