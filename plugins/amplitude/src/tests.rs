use weir_plugin::raw::RawEvent;
use weir_plugin::serde_json::{Value, json};
use weir_plugin::testing::{self, json_body as body};
use weir_plugin::{
    BuildOutput, Destination, EventVerdict, Header, Request, Response, Verdict, init_from_json,
};

use super::{Amplitude, EU_ENDPOINT, US_ENDPOINT};

fn plugin(config: Value) -> Amplitude {
    testing::plugin(&config)
}

fn build(plugin: &mut Amplitude, events: &[Value]) -> BuildOutput {
    testing::build(plugin, "web", events)
}

/// The one Amplitude event built for `event` (in a request of its own).
fn mapped(config: Value, event: Value) -> Value {
    let output = build(&mut plugin(config), &[event]);
    assert_eq!(output.rejections, [], "rejected");
    body(&output.requests[0])["events"][0].clone()
}

/// The reason `event` is rejected.
fn rejected(config: Value, event: Value) -> String {
    let output = build(&mut plugin(config), &[event]);
    assert!(output.requests.is_empty(), "not rejected");
    output.rejections[0].reason.clone()
}

fn key() -> Value {
    json!({"api_key": "k3y"})
}

fn track(n: u32) -> Value {
    json!({
        "type": "track",
        "event": "Song Played",
        "userId": "user-0001",
        "messageId": format!("msg-{n}"),
        "timestamp": "2024-05-01T12:00:00.000Z"
    })
}

#[test]
fn maps_a_track_event_with_its_context() {
    let event = json!({
        "type": "track",
        "event": "Order Completed",
        "userId": "user-0001",
        "anonymousId": "anon-0001",
        "messageId": "0d4c5c1e-8f1a-4c38-9e0e-2a6c5c1f7f00",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "properties": {"revenue": 19.99, "price": 9.995, "quantity": 2, "product_id": "sku-1", "coupon": "MAY"},
        "integrations": {"Amplitude": {"session_id": 1714564000000i64}},
        "context": {
            "ip": "203.0.113.9",
            "locale": "en-GB",
            "app": {"version": "3.2.1"},
            "device": {"type": "ios", "manufacturer": "Apple", "model": "iPhone15,2"},
            "os": {"name": "iOS", "version": "17.4"},
            "network": {"carrier": "Vodafone"},
            "location": {"country": "United Kingdom", "city": "London"},
            "library": {"name": "analytics-ios", "version": "4.1.8"}
        }
    });
    assert_eq!(
        mapped(key(), event),
        json!({
            "user_id": "user-0001",
            "device_id": "anon-0001",
            "event_type": "Order Completed",
            "time": 1_714_564_800_123i64,
            "insert_id": "0d4c5c1e-8f1a-4c38-9e0e-2a6c5c1f7f00",
            "event_properties": {"revenue": 19.99, "price": 9.995, "quantity": 2, "product_id": "sku-1", "coupon": "MAY"},
            "revenue": 19.99,
            "price": 9.995,
            "quantity": 2,
            "productId": "sku-1",
            "ip": "203.0.113.9",
            "platform": "ios",
            "os_name": "iOS",
            "os_version": "17.4",
            "device_manufacturer": "Apple",
            "device_model": "iPhone15,2",
            "app_version": "3.2.1",
            "carrier": "Vodafone",
            "language": "en-GB",
            "country": "United Kingdom",
            "city": "London",
            "library": "analytics-ios/4.1.8",
            "session_id": 1_714_564_000_000i64
        })
    );
}

#[test]
fn builds_the_documented_request() {
    let mut amplitude = plugin(key());
    let output = build(&mut amplitude, &[track(1)]);
    let request = &output.requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.url, US_ENDPOINT);
    assert_eq!(
        request.headers,
        [
            Header {
                name: "Content-Type".into(),
                value: "application/json".into()
            },
            Header {
                name: "User-Agent".into(),
                value: "weir/0.1".into()
            },
        ]
    );
    assert_eq!(request.events, [0]);
    assert_eq!(
        body(request),
        json!({
            "api_key": "k3y",
            "events": [{
                "user_id": "user-0001",
                "event_type": "Song Played",
                "time": 1_714_564_800_000i64,
                "insert_id": "msg-1"
            }]
        })
    );
}

#[test]
fn pages_and_screens_are_viewed_or_loaded() {
    let view = |kind: &str, name: Value| {
        let event = json!({"type": kind, "name": name, "anonymousId": "anon-0001", "messageId": "m",
                           "properties": {"path": "/pricing"}});
        mapped(key(), event)
    };
    assert_eq!(
        view("page", json!("Pricing"))["event_type"],
        "Viewed Pricing Page"
    );
    assert_eq!(
        view("page", json!("Pricing"))["event_properties"],
        json!({"path": "/pricing"})
    );
    assert_eq!(view("page", Value::Null)["event_type"], "Loaded a Page");
    assert_eq!(view("page", json!("  "))["event_type"], "Loaded a Page");
    assert_eq!(
        view("screen", json!("Settings"))["event_type"],
        "Viewed Settings Screen"
    );
    assert_eq!(view("screen", Value::Null)["event_type"], "Loaded a Screen");
}

#[test]
fn identify_sets_user_properties() {
    let identify = json!({"type": "identify", "userId": "user-0001", "messageId": "m1",
                          "traits": {"email": "a@example.com", "plan": "pro"}});
    assert_eq!(
        mapped(key(), identify),
        json!({"user_id": "user-0001", "event_type": "$identify", "insert_id": "m1",
               "user_properties": {"$set": {"email": "a@example.com", "plan": "pro"}}})
    );
    // Traits in the context (as some SDKs send them), and no traits at all.
    let in_context = json!({"type": "identify", "userId": "user-0001", "messageId": "m2",
                            "context": {"traits": {"plan": "free"}}});
    assert_eq!(
        mapped(key(), in_context)["user_properties"],
        json!({"$set": {"plan": "free"}})
    );
    let bare = json!({"type": "identify", "userId": "user-0001", "anonymousId": "anon-0001", "messageId": "m3"});
    assert_eq!(mapped(key(), bare)["user_properties"], json!({"$set": {}}));
}

#[test]
fn group_puts_the_user_in_a_group_of_the_configured_type() {
    let group = json!({"type": "group", "userId": "user-0001", "groupId": "acme", "messageId": "g1",
                       "traits": {"employees": 12}});
    assert_eq!(
        mapped(
            json!({"api_key": "k", "group_type": "company"}),
            group.clone()
        ),
        json!({"user_id": "user-0001", "event_type": "$identify", "insert_id": "g1",
               "user_properties": {"$set": {"company": "acme"}}, "groups": {"company": "acme"}})
    );
    assert_eq!(mapped(key(), group)["groups"], json!({"group": "acme"}));
    let numeric = json!({"type": "group", "userId": "user-0001", "groupId": 42, "messageId": "g2"});
    assert_eq!(mapped(key(), numeric)["groups"], json!({"group": "42"}));
    let missing = json!({"type": "group", "userId": "user-0001", "messageId": "g3"});
    assert!(rejected(key(), missing).contains("needs a `groupId`"));
}

#[test]
fn what_amplitude_cannot_take_is_rejected_with_the_reason() {
    let cases = [
        (
            json!({"type": "alias", "userId": "user-0001", "previousId": "anon-0001", "messageId": "a"}),
            "no alias",
        ),
        (
            json!({"type": "track", "userId": "user-0001", "messageId": "a"}),
            "non-empty `event`",
        ),
        (
            json!({"type": "track", "event": "", "userId": "user-0001", "messageId": "a"}),
            "non-empty `event`",
        ),
        (
            json!({"type": "track", "event": "A", "messageId": "a"}),
            "neither a `userId` nor an `anonymousId`",
        ),
        (
            json!({"type": "track", "event": "A", "userId": "", "messageId": "a"}),
            "neither",
        ),
        (
            json!({"type": "track", "event": "A", "userId": "u1"}),
            "shorter than 5",
        ),
        (
            json!({"type": "track", "event": "A", "userId": "user-0001"}),
            "no `messageId`",
        ),
        (
            json!({"type": "track", "event": "A", "userId": "user-0001", "messageId": ""}),
            "no `messageId`",
        ),
        (
            json!({"type": "flush", "userId": "user-0001", "messageId": "a"}),
            "unknown event type `flush`",
        ),
        (
            json!({"event": "A", "userId": "user-0001", "messageId": "a"}),
            "no `type`",
        ),
        (
            json!({"type": 3, "event": "A", "userId": "user-0001", "messageId": "a"}),
            "no `type`",
        ),
    ];
    for (event, expected) in cases {
        let reason = rejected(key(), event.clone());
        assert!(reason.contains(expected), "{event}: {reason}");
    }
}

#[test]
fn min_id_length_is_sent_and_applied() {
    let config = json!({"api_key": "k", "min_id_length": 1});
    let event =
        json!({"type": "track", "event": "A", "userId": 7, "anonymousId": "d", "messageId": "m"});
    let output = build(&mut plugin(config), &[event]);
    let body = body(&output.requests[0]);
    assert_eq!(body["options"], json!({"min_id_length": 1}));
    assert_eq!(body["events"][0]["user_id"], "7");
    assert_eq!(body["events"][0]["device_id"], "d");
    // Without the option there is no `options` object (Amplitude's default, 5, applies).
    let output = build(&mut plugin(key()), &[track(0)]);
    assert_eq!(self::body(&output.requests[0]).get("options"), None);
}

#[test]
fn a_missing_or_unreadable_timestamp_leaves_the_time_to_amplitude() {
    let mut event = track(0);
    event["timestamp"] = json!("yesterday");
    assert_eq!(mapped(key(), event.clone()).get("time"), None);
    event.as_object_mut().map(|e| e.remove("timestamp"));
    assert_eq!(mapped(key(), event).get("time"), None);
}

#[test]
fn session_id_comes_from_the_context_when_the_integration_has_none() {
    let mut event = track(0);
    event["context"] = json!({"sessionId": 1_714_564_000_000i64});
    assert_eq!(
        mapped(key(), event.clone())["session_id"],
        1_714_564_000_000i64
    );
    event["context"] = json!({"sessionId": "not a number"});
    assert_eq!(mapped(key(), event).get("session_id"), None);
}

#[test]
fn every_event_is_in_one_request_or_one_rejection_in_order() {
    let mut amplitude = plugin(json!({"api_key": "k", "batch_size": 2, "endpoint": EU_ENDPOINT}));
    let alias = json!({"type": "alias", "userId": "user-0001", "messageId": "a"});
    let events = [
        track(0),
        alias.clone(),
        track(2),
        track(3),
        alias,
        track(5),
        track(6),
    ];
    let mut raw: Vec<RawEvent> = (0u64..)
        .zip(&events)
        .map(|(offset, e)| RawEvent {
            payload: e.to_string().into_bytes(),
            source: "web".into(),
            offset,
        })
        .collect();
    raw.insert(
        3,
        RawEvent {
            payload: b"{oops".to_vec(),
            source: "web".into(),
            offset: 99,
        },
    );
    // Batch positions now: 0 t0, 1 alias, 2 t2, 3 bad JSON, 4 t3, 5 alias, 6 t5, 7 t6.
    let output = amplitude.build_raw(raw);
    let requests: Vec<(Vec<u32>, Vec<String>)> = output
        .requests
        .iter()
        .map(|r| {
            let ids = body(r)["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["insert_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            (r.events.clone(), ids)
        })
        .collect();
    assert_eq!(
        requests,
        [
            (vec![0, 2], vec!["msg-0".to_owned(), "msg-2".to_owned()]),
            (vec![4, 6], vec!["msg-3".to_owned(), "msg-5".to_owned()]),
            (vec![7], vec!["msg-6".to_owned()]),
        ]
    );
    assert!(output.requests.iter().all(|r| r.url == EU_ENDPOINT));
    let mut rejected: Vec<u32> = output.rejections.iter().map(|r| r.index).collect();
    rejected.sort_unstable();
    assert_eq!(rejected, [1, 3, 5]);
}

#[test]
fn default_batch_size_is_100_and_2000_is_the_most() {
    let events: Vec<Value> = (0..201).map(track).collect();
    let output = build(&mut plugin(key()), &events);
    let sizes: Vec<usize> = output.requests.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [100, 100, 1]);
    let output = build(
        &mut plugin(json!({"api_key": "k", "batch_size": 2000})),
        &events,
    );
    assert_eq!(output.requests.len(), 1);
}

#[test]
fn config_mistakes_are_explained() {
    let cases = [
        (json!({}), "missing field `api_key`"),
        (json!({"api_key": " "}), "`api_key` is empty"),
        (
            json!({"api_key": "k", "endpoint": "api2.amplitude.com"}),
            "http:// or https://",
        ),
        (
            json!({"api_key": "k", "batch_size": 0}),
            "between 1 and 2000",
        ),
        (
            json!({"api_key": "k", "batch_size": 2001}),
            "between 1 and 2000",
        ),
        (json!({"api_key": "k", "min_id_length": 0}), "at least 1"),
        (
            json!({"api_key": "k", "group_type": ""}),
            "`group_type` is empty",
        ),
        (
            json!({"api_key": "k", "secret": "s"}),
            "unknown field `secret`",
        ),
    ];
    for (config, expected) in cases {
        match init_from_json::<Amplitude>(&config.to_string()) {
            Ok(_) => panic!("init accepted {config}"),
            Err(error) => assert!(error.contains(expected), "{config}: {error}"),
        }
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: Value) -> Response {
    Response {
        status,
        headers: headers
            .iter()
            .map(|(name, value)| Header {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect(),
        body: match body {
            Value::String(text) => text.into_bytes(),
            other => other.to_string().into_bytes(),
        },
    }
}

/// A request of `n` events, as `build` makes it.
fn request_of(n: u32) -> (Amplitude, Request) {
    let mut amplitude = plugin(key());
    let events: Vec<Value> = (0..n).map(track).collect();
    let request = build(&mut amplitude, &events).requests.remove(0);
    (amplitude, request)
}

#[test]
fn a_400_naming_events_drops_them_and_retries_the_others() {
    let (mut amplitude, request) = request_of(5);
    let response = answer(
        400,
        &[],
        json!({
            "code": 400,
            "error": "Request missing required field",
            "events_with_invalid_fields": {"time": [1, 3]},
            "events_with_missing_fields": {"event_type": [3]},
            "silenced_events": [4],
            "events_with_invalid_id_lengths": {"user_id": [17]}
        }),
    );
    let drop = |faults: &str| {
        EventVerdict::Drop(format!(
            "Amplitude refused the event (HTTP 400: Request missing required field): {faults}"
        ))
    };
    assert_eq!(
        amplitude.classify(&request, &response),
        Verdict::PerEvent(vec![
            EventVerdict::Retry,
            drop("invalid fields: `time`"),
            EventVerdict::Retry,
            drop("invalid fields: `time`; missing fields: `event_type`"),
            drop("its device is silenced by Amplitude"),
        ])
    );
}

#[test]
fn a_400_naming_no_event_of_the_request_drops_it_whole() {
    let (mut amplitude, request) = request_of(2);
    let invalid_key = answer(
        400,
        &[],
        json!({"code": 400, "error": "Invalid API key: k3y"}),
    );
    assert_eq!(
        amplitude.classify(&request, &invalid_key),
        Verdict::Drop(r#"HTTP 400: {"code":400,"error":"Invalid API key: k3y"}"#.into())
    );
    let out_of_range = answer(
        400,
        &[],
        json!({"error": "x", "events_with_invalid_fields": {"time": [2]}}),
    );
    assert!(matches!(
        amplitude.classify(&request, &out_of_range),
        Verdict::Drop(_)
    ));
    let not_json = answer(400, &[], json!("<html>bad request</html>"));
    assert_eq!(
        amplitude.classify(&request, &not_json),
        Verdict::Drop("HTTP 400: <html>bad request</html>".into())
    );
}

#[test]
fn other_answers() {
    let (mut amplitude, request) = request_of(2);
    let mut classify = |response: Response| amplitude.classify(&request, &response);
    let ok = json!({"code": 200, "events_ingested": 2, "payload_size_bytes": 300, "server_upload_time": 1});
    assert_eq!(classify(answer(200, &[], ok)), Verdict::Done);
    assert_eq!(
        classify(answer(413, &[], json!({"code": 413}))),
        Verdict::Retry(None)
    );
    let throttled = json!({"code": 429, "error": "Too many requests for some devices and users",
                           "throttled_events": [0]});
    assert_eq!(
        classify(answer(429, &[], throttled.clone())),
        Verdict::Retry(Some(30_000))
    );
    assert_eq!(
        classify(answer(429, &[("Retry-After", "5")], throttled)),
        Verdict::Retry(Some(5_000))
    );
    assert_eq!(
        classify(answer(503, &[], json!("unavailable"))),
        Verdict::Retry(None)
    );
    assert_eq!(
        classify(answer(500, &[("Retry-After", "1")], json!(""))),
        Verdict::Retry(Some(1000))
    );
    assert_eq!(classify(answer(408, &[], json!(""))), Verdict::Retry(None));
    assert_eq!(
        classify(answer(404, &[], json!("no such route"))),
        Verdict::Drop("HTTP 404: no such route".into())
    );
}
