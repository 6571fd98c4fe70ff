use weir_plugin::raw::RawEvent;
use weir_plugin::serde_json::{Value, json};
use weir_plugin::testing::{self, json_body as body};
use weir_plugin::{BuildOutput, Destination, Header, Rejection, Response, Verdict, init_from_json};

use super::Webhook;

fn plugin(config: Value) -> Webhook {
    testing::plugin(&config)
}

fn init_error(config: Value) -> String {
    match init_from_json::<Webhook>(&config.to_string()) {
        Ok(_) => panic!("init accepted {config}"),
        Err(error) => error,
    }
}

fn build(plugin: &mut Webhook, events: &[Value]) -> BuildOutput {
    testing::build(plugin, "web", events)
}

fn track(n: u32) -> Value {
    json!({"type": "track", "event": "Clicked", "messageId": format!("m{n}"), "properties": {"n": n}})
}

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(name, value)| Header {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect()
}

#[test]
fn batches_events_in_order_under_a_batch_key() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in", "batch_size": 2}));
    let events: Vec<Value> = (0..5).map(track).collect();
    let output = build(&mut webhook, &events);
    assert!(output.rejections.is_empty());
    let expected_headers = headers(&[
        ("Content-Type", "application/json"),
        ("User-Agent", "weir/0.1"),
    ]);
    let expected = [
        (vec![0, 1], json!({"batch": [track(0), track(1)]})),
        (vec![2, 3], json!({"batch": [track(2), track(3)]})),
        (vec![4], json!({"batch": [track(4)]})),
    ];
    assert_eq!(output.requests.len(), expected.len());
    for (request, (indexes, expected_body)) in output.requests.iter().zip(expected) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://hooks.example.com/in");
        assert_eq!(request.headers, expected_headers);
        assert_eq!(request.events, indexes);
        assert_eq!(body(request), expected_body);
    }
}

#[test]
fn sends_events_unchanged_and_byte_for_byte() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in"}));
    // Key order and number spelling survive: the receiver gets what the gateway logged.
    let raw = br#"{"type":"track","event":"A","z":1,"a":2.50,"context":{"ip":"1.2.3.4"}}"#;
    let output = webhook.build_raw(vec![RawEvent {
        payload: raw.to_vec(),
        source: "web".into(),
        offset: 9,
    }]);
    assert_eq!(
        String::from_utf8_lossy(&output.requests[0].body),
        r#"{"batch":[{"type":"track","event":"A","z":1,"a":2.5,"context":{"ip":"1.2.3.4"}}]}"#
    );
}

#[test]
fn default_batch_size_is_100() {
    let mut webhook = plugin(json!({"url": "http://127.0.0.1:9000/hook"}));
    let events: Vec<Value> = (0..250).map(track).collect();
    let output = build(&mut webhook, &events);
    let sizes: Vec<usize> = output.requests.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(output.requests[2].events.first(), Some(&200));
    assert_eq!(output.requests[2].events.last(), Some(&249));
}

#[test]
fn event_payload_sends_one_event_per_request_as_the_body() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in", "payload": "event"}));
    let events = [
        track(0),
        json!({"type": "identify", "userId": "u1"}),
        track(2),
    ];
    let output = build(&mut webhook, &events);
    assert!(output.rejections.is_empty());
    assert_eq!(output.requests.len(), 3);
    for (i, (request, event)) in output.requests.iter().zip(&events).enumerate() {
        assert_eq!(request.events, vec![i as u32]);
        assert_eq!(&body(request), event);
    }
    // `batch_size = 1` is the same thing, said twice.
    let mut same =
        plugin(json!({"url": "https://h.example.com", "payload": "event", "batch_size": 1}));
    assert_eq!(build(&mut same, &events).requests.len(), 3);
}

#[test]
fn batch_size_one_keeps_the_batch_wrapper() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in", "batch_size": 1}));
    let output = build(&mut webhook, &[track(0), track(1)]);
    assert_eq!(body(&output.requests[1]), json!({"batch": [track(1)]}));
    assert_eq!(output.requests[1].events, vec![1]);
}

#[test]
fn configured_headers_replace_defaults_and_follow_them() {
    let mut webhook = plugin(json!({
        "url": "https://hooks.example.com/in",
        "headers": {
            "Authorization": "Bearer s3cret",
            "content-type": "application/vnd.acme+json",
            "X-Source": "weir"
        }
    }));
    let output = build(&mut webhook, &[track(0)]);
    assert_eq!(
        output.requests[0].headers,
        headers(&[
            ("Content-Type", "application/vnd.acme+json"),
            ("User-Agent", "weir/0.1"),
            ("Authorization", "Bearer s3cret"),
            ("X-Source", "weir"),
        ])
    );
}

#[test]
fn unparseable_events_are_rejected_in_place() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in", "batch_size": 2}));
    let raw = |payload: &[u8], offset| RawEvent {
        payload: payload.to_vec(),
        source: "web".into(),
        offset,
    };
    let output = webhook.build_raw(vec![
        raw(br#"{"type":"track","event":"A"}"#, 0),
        raw(b"not json", 1),
        raw(br#"{"type":"track","event":"B"}"#, 2),
        raw(b"[1,2]", 3),
        raw(br#"{"type":"track","event":"C"}"#, 4),
    ]);
    let covered: Vec<Vec<u32>> = output.requests.iter().map(|r| r.events.clone()).collect();
    assert_eq!(covered, [vec![0, 2], vec![4]]);
    let rejected: Vec<u32> = output.rejections.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [1, 3]);
    assert!(
        matches!(&output.rejections[0], Rejection { reason, .. } if reason.contains("not valid JSON"))
    );
    assert_eq!(
        body(&output.requests[0]),
        json!({"batch": [{"type": "track", "event": "A"}, {"type": "track", "event": "B"}]})
    );
}

#[test]
fn an_empty_batch_builds_nothing() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in"}));
    assert_eq!(build(&mut webhook, &[]), BuildOutput::default());
}

#[test]
fn config_mistakes_are_explained() {
    let cases = [
        (json!({}), "missing field `url`"),
        (
            json!({"url": "hooks.example.com"}),
            "absolute http:// or https:// URL",
        ),
        (
            json!({"url": "https://"}),
            "absolute http:// or https:// URL",
        ),
        (
            json!({"url": "https://a b.com"}),
            "absolute http:// or https:// URL",
        ),
        (
            json!({"url": "https://h.com", "batch_size": 0}),
            "at least 1",
        ),
        (
            json!({"url": "https://h.com", "batch_size": -1}),
            "batch_size",
        ),
        (
            json!({"url": "https://h.com", "payload": "event", "batch_size": 10}),
            "one event per request",
        ),
        (
            json!({"url": "https://h.com", "payload": "template"}),
            "unknown variant `template`",
        ),
        (
            json!({"url": "https://h.com", "headers": {"Host": "x"}}),
            "set by the router",
        ),
        (
            json!({"url": "https://h.com", "headers": {"X-A": "a\r\nX-B: b"}}),
            "control character",
        ),
        (
            json!({"url": "https://h.com", "headers": {"X A": "a"}}),
            "not a valid header name",
        ),
        (
            json!({"url": "https://h.com", "headers": {"X-A": 1}}),
            "must be a string",
        ),
        (
            json!({"url": "https://h.com", "token": "t"}),
            "unknown field `token`",
        ),
    ];
    for (config, expected) in cases {
        let error = init_error(config.clone());
        assert!(error.contains(expected), "{config}: {error}");
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    Response {
        status,
        headers: self::headers(headers),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn answers_are_read_by_status() {
    let mut webhook = plugin(json!({"url": "https://hooks.example.com/in"}));
    let request = build(&mut webhook, &[track(0)]).requests.remove(0);
    let mut classify = |response: Response| webhook.classify(&request, &response);

    assert_eq!(classify(response(200, &[], "ok")), Verdict::Done);
    assert_eq!(classify(response(204, &[], "")), Verdict::Done);
    assert_eq!(
        classify(response(429, &[("Retry-After", "7")], "")),
        Verdict::Retry(Some(7000))
    );
    // An HTTP date already past means "now".
    assert_eq!(
        classify(response(
            429,
            &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
            ""
        )),
        Verdict::Retry(Some(0))
    );
    // A date in the future is counted from the clock.
    match classify(response(
        429,
        &[("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT")],
        "",
    )) {
        Verdict::Retry(Some(ms)) => assert!(ms > 86_400_000, "{ms}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(classify(response(429, &[], "")), Verdict::Retry(None));
    assert_eq!(classify(response(408, &[], "")), Verdict::Retry(None));
    assert_eq!(
        classify(response(503, &[("Retry-After", "2")], "")),
        Verdict::Retry(Some(2000))
    );
    assert_eq!(
        classify(response(404, &[], "no such hook")),
        Verdict::Drop("HTTP 404: no such hook".into())
    );
    let long = "x".repeat(5000);
    match classify(response(400, &[], &long)) {
        Verdict::Drop(reason) => assert!(reason.starts_with("HTTP 400: xxx") && reason.len() < 300),
        other => panic!("{other:?}"),
    }
}
