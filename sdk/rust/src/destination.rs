//! [`Destination`]: turning events into the HTTP requests of one API, and reading its answers.
//!
//! The plugin never talks to the network: it returns [`Request`]s, the host sends them (to hosts
//! on the destination's allow-list only) and hands each [`Response`] back to
//! [`Destination::classify`].

use crate::plugin::Plugin;
use crate::raw::RawEvent;
use crate::{Event, date};

/// An HTTP header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, as sent.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// An HTTP request the destination wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Headers to send.
    pub headers: Vec<Header>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Indexes, into the batch given to [`Destination::build`], of the events this request
    /// carries.
    pub events: Vec<u32>,
}

impl Request {
    /// A `POST` of `body` as JSON (with `Content-Type: application/json`), carrying no events
    /// yet: fill [`events`](Self::events) in `build`, or let the default `build` do it.
    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> Self {
        Self {
            method: "POST".to_owned(),
            url: url.into(),
            headers: vec![Header {
                name: "Content-Type".to_owned(),
                value: "application/json".to_owned(),
            }],
            body: body.to_string().into_bytes(),
            events: Vec::new(),
        }
    }

    /// The same request with one more header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }
}

/// An event the destination refuses to build a request for; it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the event in the batch given to `build`.
    pub index: u32,
    /// Why the destination cannot express it.
    pub reason: String,
}

/// What `build` returns: every event of the batch is in exactly one request or one rejection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOutput {
    /// Requests, sent in this order.
    pub requests: Vec<Request>,
    /// Events that cannot be sent.
    pub rejections: Vec<Rejection>,
}

/// The destination's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<Header>,
    /// Response body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name`, ignoring ASCII case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The delay `Retry-After` asks for, in milliseconds: delta-seconds (`120`) or an HTTP date
    /// (`Wed, 21 Oct 2015 07:28:00 GMT`, counted from the host's clock; a date already past is
    /// 0). `None` when the header is missing or reads as neither.
    pub fn retry_after_ms(&self) -> Option<u64> {
        retry_after_ms(self.header("retry-after")?, crate::now_ms())
    }
}

fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = u64::try_from(date::http_date_ms(value)?).unwrap_or(0);
    Some(at.saturating_sub(now_ms))
}

/// The verdict on one event of a request, for APIs that report failures per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventVerdict {
    /// Delivered.
    Done,
    /// Failed for a reason that may pass: the host re-sends the event later.
    Retry,
    /// Will never be accepted: the event goes to the dead-letter queue with this reason.
    Drop(String),
}

/// How the host should treat a destination's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every event of the request was delivered.
    Done,
    /// Send the request again later, after this many milliseconds if given (for example from
    /// `Retry-After`); otherwise the host backs off exponentially with jitter.
    Retry(Option<u64>),
    /// The request will never be accepted: its events go to the dead-letter queue.
    Drop(String),
    /// One verdict per event of the request, in the order of [`Request::events`].
    PerEvent(Vec<EventVerdict>),
}

/// A destination: builds the HTTP requests of one API and tells the host how to read the
/// answers.
///
/// Implement [`build_event`](Self::build_event) for APIs that take one event per request, or
/// override [`build`](Self::build) for batch APIs. [`classify`](Self::classify) has a default
/// that fits most REST APIs.
pub trait Destination: Plugin {
    /// The request for one event, or why the event cannot be sent (it is then dead-lettered).
    /// The default refuses every event: a destination implements this or overrides `build`.
    fn build_event(&mut self, event: Event) -> Result<Request, String> {
        let _ = event;
        Err("this destination implements neither `build_event` nor `build`".to_owned())
    }

    /// Requests (and rejections) covering every event of the batch exactly once. By default
    /// one request per event, from [`build_event`](Self::build_event).
    fn build(&mut self, batch: Vec<Event>) -> BuildOutput {
        let mut output = BuildOutput::default();
        for (index, event) in (0u32..).zip(batch) {
            match self.build_event(event) {
                Ok(mut request) => {
                    request.events = vec![index];
                    output.requests.push(request);
                }
                Err(reason) => output.rejections.push(Rejection { index, reason }),
            }
        }
        output
    }

    /// The whole `build` call at the byte level: events that do not parse are rejected, the
    /// others go to [`build`](Self::build), and its indexes are mapped back to the batch the
    /// host sent.
    fn build_raw(&mut self, batch: Vec<RawEvent>) -> BuildOutput {
        let mut rejections = Vec::new();
        let mut events = Vec::with_capacity(batch.len());
        // Position in the host's batch of each event handed to `build`.
        let mut positions = Vec::with_capacity(batch.len());
        for (index, raw) in (0u32..).zip(&batch) {
            match raw.parse() {
                Ok(event) => {
                    events.push(event);
                    positions.push(index);
                }
                Err(error) => rejections.push(Rejection {
                    index,
                    reason: error.to_string(),
                }),
            }
        }
        drop(batch);
        let mut output = self.build(events);
        // An index past the events `build` was given is a plugin bug; map it past the host's
        // batch too, so the host sees it as the malformed result it is.
        let position = |i: u32| positions.get(i as usize).copied().unwrap_or(u32::MAX);
        for request in &mut output.requests {
            for index in &mut request.events {
                *index = position(*index);
            }
        }
        for rejection in &mut output.rejections {
            rejection.index = position(rejection.index);
        }
        rejections.append(&mut output.rejections);
        output.rejections = rejections;
        output
    }

    /// How to treat `response`, the answer to `request`. Called for every answer, 2xx included.
    /// The default is [`classify_by_status`].
    fn classify(&mut self, request: &Request, response: &Response) -> Verdict {
        let _ = request;
        classify_by_status(response)
    }
}

/// The usual reading of an HTTP status: 2xx is done; 408, 429 and 5xx are retried (after the
/// delay of `Retry-After`, seconds or an HTTP date, when the API sent one); any other status
/// drops the request with the status and the start of the body as the reason.
pub fn classify_by_status(response: &Response) -> Verdict {
    match response.status {
        200..=299 => Verdict::Done,
        408 | 429 | 500..=599 => Verdict::Retry(response.retry_after_ms()),
        status => {
            let body = String::from_utf8_lossy(&response.body);
            let excerpt: String = body.chars().take(200).collect();
            Verdict::Drop(format!("HTTP {status}: {excerpt}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InitError, NoConfig};
    use serde_json::json;

    struct Webhook;

    impl Plugin for Webhook {
        type Config = NoConfig;
        fn init(_: NoConfig) -> Result<Self, InitError> {
            Ok(Webhook)
        }
    }

    impl Destination for Webhook {
        fn build_event(&mut self, event: Event) -> Result<Request, String> {
            match event.event_type() {
                Some("track") => Ok(Request::post_json(
                    "https://hooks.example.com/in",
                    &serde_json::Value::Object(event.into_fields()),
                )),
                _ => Err("only track events".to_owned()),
            }
        }
    }

    fn raw(payload: serde_json::Value) -> RawEvent {
        RawEvent {
            payload: payload.to_string().into_bytes(),
            source: "web".into(),
            offset: 0,
        }
    }

    #[test]
    fn indexes_refer_to_the_batch_the_host_sent() {
        let batch = vec![
            RawEvent {
                payload: b"not json".to_vec(),
                source: "web".into(),
                offset: 0,
            },
            raw(json!({"type": "identify"})),
            raw(json!({"type": "track", "event": "A"})),
        ];
        let output = Webhook.build_raw(batch);
        assert_eq!(output.requests.len(), 1);
        assert_eq!(output.requests[0].events, vec![2]);
        assert_eq!(output.requests[0].body, br#"{"type":"track","event":"A"}"#);
        let rejected: Vec<u32> = output.rejections.iter().map(|r| r.index).collect();
        assert_eq!(rejected, vec![0, 1]);
    }

    #[test]
    fn statuses_map_to_verdicts() {
        let response = |status, headers: Vec<Header>| Response {
            status,
            headers,
            body: b"bad field".to_vec(),
        };
        assert_eq!(classify_by_status(&response(204, vec![])), Verdict::Done);
        let retry_after = vec![Header {
            name: "Retry-After".into(),
            value: "3".into(),
        }];
        assert_eq!(
            classify_by_status(&response(429, retry_after)),
            Verdict::Retry(Some(3000))
        );
        assert_eq!(
            classify_by_status(&response(503, vec![])),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify_by_status(&response(400, vec![])),
            Verdict::Drop("HTTP 400: bad field".into())
        );
        let long_past = vec![Header {
            name: "retry-after".into(),
            value: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
        }];
        assert_eq!(
            classify_by_status(&response(503, long_past)),
            Verdict::Retry(Some(0))
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = 784_111_777_000;
        assert_eq!(retry_after_ms(" 30 ", now), Some(30_000));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("-5", now), None);
    }
}
