//! The batch as it crosses the component boundary: JSON bytes in, JSON bytes out.
//!
//! [`run_batch`] is the one place that turns raw events into [`Event`]s and [`Outcome`]s back
//! into bytes, for the WebAssembly exports and for native callers (benches, fixture tests)
//! alike, so both measure and test the same work.

use crate::{Event, Outcome};

/// An event as the host hands it over: the JSON payload unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// UTF-8 JSON of one Segment/RudderStack-spec message.
    pub payload: Vec<u8>,
    /// Name of the source the event arrived on.
    pub source: String,
    /// Position of the event in the log.
    pub offset: u64,
}

/// An outcome as the host receives it: events serialized back to JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOutcome {
    /// See [`Outcome::Keep`].
    Keep(Vec<u8>),
    /// See [`Outcome::Drop`].
    Drop(String),
    /// See [`Outcome::Fail`].
    Fail(String),
    /// See [`Outcome::Expand`].
    Expand(Vec<Vec<u8>>),
}

impl RawEvent {
    /// Parses the payload into an [`Event`] carrying this event's source and offset.
    pub fn parse(&self) -> Result<Event, crate::EventError> {
        Ok(Event::from_json(&self.payload)?.with_origin(self.source.clone(), self.offset))
    }

    /// [`parse`](Self::parse), keeping the payload in the event: if the plugin does not change
    /// it, it goes back to the host as these bytes (see [`Event::into_json`]).
    pub fn into_event(self) -> Result<Event, crate::EventError> {
        Ok(Event::from_payload(self.payload)?.with_origin(self.source, self.offset))
    }
}

impl From<Outcome> for RawOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Keep(event) => Self::Keep(event.into_json()),
            Outcome::Drop(reason) => Self::Drop(reason),
            Outcome::Fail(error) => Self::Fail(error),
            Outcome::Expand(events) => {
                Self::Expand(events.into_iter().map(Event::into_json).collect())
            }
        }
    }
}

/// Parses every event of `batch`, hands the ones that parse to `process` in one call, and puts
/// the outcomes back in input order. An event that does not parse gets a `fail` outcome without
/// reaching `process`.
///
/// If `process` returns a different number of outcomes than it was given events, the outcomes
/// cannot be matched to events any more; `run_batch` then returns no outcome at all, a count the
/// host always recognises as malformed (it re-runs the batch one event at a time), and logs
/// why. Returning them as they are could line up by accident when some events failed to parse.
pub fn run_batch(
    batch: Vec<RawEvent>,
    process: impl FnOnce(Vec<Event>) -> Vec<Outcome>,
) -> Vec<RawOutcome> {
    let total = batch.len();
    let mut parse_errors: Vec<Option<String>> = Vec::with_capacity(total);
    let mut events = Vec::with_capacity(total);
    for raw in batch {
        match raw.into_event() {
            Ok(event) => {
                events.push(event);
                parse_errors.push(None);
            }
            Err(error) => parse_errors.push(Some(error.to_string())),
        }
    }
    let given = events.len();
    let outcomes = process(events);
    if outcomes.len() != given {
        crate::log(
            crate::Level::Error,
            &format!(
                "plugin returned {} outcomes for {given} events; a plugin must return exactly \
                 one outcome per event",
                outcomes.len()
            ),
        );
        return Vec::new();
    }
    let mut outcomes = outcomes.into_iter();
    parse_errors
        .into_iter()
        .map(|error| match error {
            Some(error) => RawOutcome::Fail(error),
            None => outcomes.next().map_or_else(
                || RawOutcome::Fail("missing outcome".to_owned()),
                RawOutcome::from,
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(payload: &str) -> RawEvent {
        RawEvent {
            payload: payload.as_bytes().to_vec(),
            source: "web".into(),
            offset: 7,
        }
    }

    #[test]
    fn unparseable_events_fail_in_place() {
        let batch = vec![
            raw(r#"{"a":1}"#),
            raw("{oops"),
            raw("[]"),
            raw(r#"{"b":2}"#),
        ];
        let outcomes = run_batch(batch, |events| {
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].source(), "web");
            assert_eq!(events[0].offset(), 7);
            events.into_iter().map(Outcome::Keep).collect()
        });
        assert_eq!(outcomes.len(), 4);
        assert_eq!(outcomes[0], RawOutcome::Keep(br#"{"a":1}"#.to_vec()));
        assert!(matches!(&outcomes[1], RawOutcome::Fail(e) if e.contains("not valid JSON")));
        assert!(matches!(&outcomes[2], RawOutcome::Fail(e) if e.contains("not an object")));
        assert_eq!(outcomes[3], RawOutcome::Keep(br#"{"b":2}"#.to_vec()));
    }

    #[test]
    fn a_wrong_count_becomes_an_empty_result() {
        let outcomes = run_batch(vec![raw("{}"), raw("{}")], |_| {
            vec![Outcome::Drop("only one".into())]
        });
        assert!(outcomes.is_empty());
    }
}
