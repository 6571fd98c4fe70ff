use weir_plugin::serde_json::{Value, json};
use weir_plugin::testing::{self, json_body as body};
use weir_plugin::{
    BuildOutput, Destination, EventVerdict, Header, Request, Response, Verdict, init_from_json,
};

use super::{Mixpanel, insert_id};

fn plugin(config: Value) -> Mixpanel {
    testing::plugin(&config)
}

fn service_account() -> Value {
    json!({"project_id": 123456, "username": "weir.mp-service-account", "secret": "s3cret"})
}

fn with_token() -> Value {
    json!({"api_secret": "aabbcc", "token": "tok3n"})
}

fn build(plugin: &mut Mixpanel, events: &[Value]) -> BuildOutput {
    testing::build(plugin, "web", events)
}

/// The one record built for `event`.
fn mapped(config: Value, event: Value) -> Value {
    let output = build(&mut plugin(config), &[event]);
    assert_eq!(output.rejections, [], "rejected");
    body(&output.requests[0])[0].clone()
}

fn rejected(config: Value, event: Value) -> String {
    let output = build(&mut plugin(config), &[event]);
    assert!(output.requests.is_empty(), "not rejected");
    output.rejections[0].reason.clone()
}

fn track(n: u32) -> Value {
    json!({
        "type": "track",
        "event": "Song Played",
        "userId": "user-1",
        "messageId": format!("msg-{n}"),
        "timestamp": "2024-05-01T12:00:00.000Z"
    })
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

#[test]
fn builds_the_documented_import_request() {
    let output = build(&mut plugin(service_account()), &[track(1)]);
    let request = &output.requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        "https://api.mixpanel.com/import?strict=1&project_id=123456"
    );
    assert_eq!(
        request.headers,
        [
            header("Content-Type", "application/json"),
            // base64("weir.mp-service-account:s3cret")
            header(
                "Authorization",
                "Basic d2Vpci5tcC1zZXJ2aWNlLWFjY291bnQ6czNjcmV0"
            ),
            header("User-Agent", "weir/0.1"),
        ]
    );
    assert_eq!(request.events, [0]);
    assert_eq!(
        body(request),
        json!([{
            "event": "Song Played",
            "properties": {
                "time": 1_714_564_800_000i64,
                "distinct_id": "user-1",
                "$insert_id": "msg-1",
                "$user_id": "user-1"
            }
        }])
    );
}

#[test]
fn an_api_secret_authenticates_without_project_id() {
    let config = json!({"api_secret": "aabbcc", "project_id": "42", "region": "eu"});
    let output = build(&mut plugin(config), &[track(1)]);
    let request = &output.requests[0];
    assert_eq!(request.url, "https://api-eu.mixpanel.com/import?strict=1");
    // base64("aabbcc:")
    assert_eq!(
        request.headers[1],
        header("Authorization", "Basic YWFiYmNjOg==")
    );
}

#[test]
fn regions_and_endpoints() {
    let url = |config: Value| {
        build(&mut plugin(config), &[track(1)]).requests[0]
            .url
            .clone()
    };
    assert_eq!(
        url(json!({"api_secret": "x", "region": "in"})),
        "https://api-in.mixpanel.com/import?strict=1"
    );
    assert_eq!(
        url(json!({"api_secret": "x", "region": "us"})),
        "https://api.mixpanel.com/import?strict=1"
    );
    assert_eq!(
        url(json!({"api_secret": "x", "endpoint": "http://127.0.0.1:9999/mp/"})),
        "http://127.0.0.1:9999/mp/import?strict=1"
    );
}

#[test]
fn maps_a_track_event_with_its_context() {
    let event = json!({
        "type": "track",
        "event": "Order Completed",
        "userId": 42,
        "anonymousId": "anon-1",
        "messageId": "ajs-next-1714564800123-0d4c5c1e-8f1a-4c38",
        "timestamp": "2024-05-01T14:00:00.123+02:00",
        "properties": {"revenue": 19.99, "$os": "Custom OS", "time": 1, "distinct_id": "spoofed"},
        "context": {
            "ip": "203.0.113.9",
            "os": {"name": "iOS", "version": "17.4"},
            "app": {"version": "3.2.1", "build": 321},
            "device": {"manufacturer": "Apple", "model": "iPhone15,2"},
            "network": {"carrier": "Vodafone"},
            "screen": {"width": 390, "height": 844},
            "page": {"url": "https://shop.example.com/cart", "referrer": ""},
            "campaign": {"source": "newsletter", "medium": "email", "name": "may", "term": "t", "content": "c"}
        }
    });
    assert_eq!(
        mapped(service_account(), event),
        json!({
            "event": "Order Completed",
            "properties": {
                "time": 1_714_564_800_123i64,
                "distinct_id": "42",
                "$insert_id": "b9856d57cf648b5bd80d624c50d71e6a",
                "$user_id": "42",
                "$device_id": "anon-1",
                "ip": "203.0.113.9",
                "$os": "Custom OS",
                "$os_version": "17.4",
                "$app_version_string": "3.2.1",
                "$app_build_number": 321,
                "$manufacturer": "Apple",
                "$model": "iPhone15,2",
                "$carrier": "Vodafone",
                "$current_url": "https://shop.example.com/cart",
                "$screen_width": 390,
                "$screen_height": 844,
                "utm_source": "newsletter",
                "utm_medium": "email",
                "utm_campaign": "may",
                "utm_term": "t",
                "utm_content": "c",
                "revenue": 19.99
            }
        })
    );
}

#[test]
fn anonymous_events_use_the_anonymous_id() {
    let event = json!({"type": "track", "event": "A", "anonymousId": "anon-1", "messageId": "m",
                       "timestamp": "2024-05-01T12:00:00Z"});
    let properties = &mapped(service_account(), event)["properties"];
    assert_eq!(properties["distinct_id"], "anon-1");
    assert_eq!(properties["$device_id"], "anon-1");
    assert_eq!(properties.get("$user_id"), None);
}

#[test]
fn insert_ids_fit_mixpanel() {
    let uuid = "0d4c5c1e-8f1a-4c38-9e0e-2a6c5c1f7f00";
    assert_eq!(insert_id(uuid), uuid);
    assert_eq!(insert_id("abc"), "abc");
    // SHA-256("abc:1") cut to 32 hex digits: `:` is not allowed (fan-out ids look like this).
    assert_eq!(insert_id("abc:1"), "bfcf0b9cbe9d8208b2cddd9a01c31a9a");
    assert_eq!(insert_id(&"a".repeat(37)).len(), 32);
    assert_eq!(insert_id(&"a".repeat(37)), insert_id(&"a".repeat(37)));
    assert_ne!(insert_id(&"a".repeat(37)), insert_id(&"a".repeat(38)));
    assert_eq!(insert_id(&"a".repeat(36)), "a".repeat(36));
}

#[test]
fn pages_and_screens_are_viewed_or_loaded() {
    let view = |kind: &str, name: Value| {
        let event = json!({"type": kind, "name": name, "userId": "u", "messageId": "m",
                           "timestamp": "2024-05-01T12:00:00Z", "properties": {"path": "/pricing"}});
        mapped(service_account(), event)
    };
    assert_eq!(
        view("page", json!("Pricing"))["event"],
        "Viewed Pricing Page"
    );
    assert_eq!(
        view("page", json!("Pricing"))["properties"]["path"],
        "/pricing"
    );
    assert_eq!(view("page", Value::Null)["event"], "Loaded a Page");
    assert_eq!(
        view("screen", json!("Settings"))["event"],
        "Viewed Settings Screen"
    );
    assert_eq!(view("screen", json!(""))["event"], "Loaded a Screen");
}

#[test]
fn identify_sets_profile_properties_through_engage() {
    let identify = json!({
        "type": "identify",
        "userId": "user-1",
        "anonymousId": "anon-1",
        "messageId": "m1",
        "traits": {"email": "a@example.com", "firstName": "Ada", "last_name": "L", "createdAt": "2024-01-01", "plan": "pro"},
        "context": {"ip": "203.0.113.9"}
    });
    let output = build(&mut plugin(with_token()), &[identify]);
    let request = &output.requests[0];
    assert_eq!(request.url, "https://api.mixpanel.com/engage?verbose=1");
    assert_eq!(
        request.headers,
        [
            header("Content-Type", "application/json"),
            header("User-Agent", "weir/0.1")
        ]
    );
    assert_eq!(
        body(request),
        json!([{
            "$token": "tok3n",
            "$distinct_id": "user-1",
            "$ip": "203.0.113.9",
            "$set": {"$email": "a@example.com", "$first_name": "Ada", "$last_name": "L", "$created": "2024-01-01", "plan": "pro"}
        }])
    );
    // No IP: geolocation off rather than the router's address; traits from the context.
    let bare = json!({"type": "identify", "anonymousId": "anon-1", "context": {"traits": {"plan": "free"}}});
    assert_eq!(
        mapped(with_token(), bare),
        json!({"$token": "tok3n", "$distinct_id": "anon-1", "$ip": "0", "$set": {"plan": "free"}})
    );
}

#[test]
fn what_mixpanel_cannot_take_is_rejected_with_the_reason() {
    let at = "2024-05-01T12:00:00Z";
    let cases = [
        (
            service_account(),
            json!({"type": "identify", "userId": "u", "traits": {"a": 1}}),
            "needs the project's `token`",
        ),
        (
            with_token(),
            json!({"type": "identify", "userId": "u"}),
            "no traits",
        ),
        (
            with_token(),
            json!({"type": "identify", "userId": "u", "traits": {}}),
            "no traits",
        ),
        (
            with_token(),
            json!({"type": "identify", "traits": {"a": 1}}),
            "neither a `userId` nor an `anonymousId`",
        ),
        (
            service_account(),
            json!({"type": "group", "userId": "u", "groupId": "g"}),
            "group calls are not sent",
        ),
        (
            service_account(),
            json!({"type": "alias", "userId": "u", "previousId": "a"}),
            "alias is not sent",
        ),
        (
            service_account(),
            json!({"type": "track", "userId": "u", "messageId": "m", "timestamp": at}),
            "non-empty `event`",
        ),
        (
            service_account(),
            json!({"type": "track", "event": "A", "messageId": "m", "timestamp": at}),
            "neither a `userId`",
        ),
        (
            service_account(),
            json!({"type": "track", "event": "A", "userId": "u", "messageId": "m"}),
            "readable `timestamp`",
        ),
        (
            service_account(),
            json!({"type": "track", "event": "A", "userId": "u", "messageId": "m", "timestamp": "now"}),
            "readable `timestamp`",
        ),
        (
            service_account(),
            json!({"type": "track", "event": "A", "userId": "u", "timestamp": at}),
            "no `messageId`",
        ),
        (
            service_account(),
            json!({"type": "flush", "userId": "u"}),
            "unknown event type `flush`",
        ),
        (service_account(), json!({"userId": "u"}), "no `type`"),
    ];
    for (config, event, expected) in cases {
        let reason = rejected(config, event.clone());
        assert!(reason.contains(expected), "{event}: {reason}");
    }
}

#[test]
fn every_event_is_in_one_request_or_one_rejection_in_order() {
    let mut config = with_token();
    config["batch_size"] = json!(2);
    let mut mixpanel = plugin(config);
    let identify =
        |n: u32| json!({"type": "identify", "userId": format!("user-{n}"), "traits": {"n": n}});
    let group = json!({"type": "group", "userId": "u", "groupId": "g"});
    let events = [
        track(0),
        identify(1),
        group.clone(),
        track(3),
        track(4),
        identify(5),
        track(6),
        group,
        identify(8),
    ];
    let output = build(&mut mixpanel, &events);
    let requests: Vec<(String, Vec<u32>, usize)> = output
        .requests
        .iter()
        .map(|r| {
            let path = r.url.split('?').next().unwrap_or_default().to_owned();
            let records = body(r).as_array().map_or(0, Vec::len);
            (path, r.events.clone(), records)
        })
        .collect();
    let import = "https://api.mixpanel.com/import".to_owned();
    let engage = "https://api.mixpanel.com/engage".to_owned();
    assert_eq!(
        requests,
        [
            (import.clone(), vec![0, 3], 2),
            (import, vec![4, 6], 2),
            (engage.clone(), vec![1, 5], 2),
            (engage, vec![8], 1),
        ]
    );
    let rejected: Vec<u32> = output.rejections.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [2, 7]);
    // The body's order is the order of `events`.
    let ids: Vec<Value> = body(&output.requests[1])
        .as_array()
        .into_iter()
        .flatten()
        .map(|record| record["properties"]["$insert_id"].clone())
        .collect();
    assert_eq!(ids, [json!("msg-4"), json!("msg-6")]);
}

#[test]
fn default_batch_size_is_1000_and_2000_is_the_most() {
    let events: Vec<Value> = (0..2001).map(track).collect();
    let output = build(&mut plugin(service_account()), &events);
    let sizes: Vec<usize> = output.requests.iter().map(|r| r.events.len()).collect();
    assert_eq!(sizes, [1000, 1000, 1]);
    let mut config = service_account();
    config["batch_size"] = json!(2000);
    let sizes: Vec<usize> = build(&mut plugin(config), &events)
        .requests
        .iter()
        .map(|r| r.events.len())
        .collect();
    assert_eq!(sizes, [2000, 1]);
}

#[test]
fn config_mistakes_are_explained() {
    let cases = [
        (json!({}), "exactly one kind of credentials"),
        (
            json!({"username": "u", "project_id": 1}),
            "exactly one kind of credentials",
        ),
        (
            json!({"username": "u", "secret": "s", "api_secret": "a", "project_id": 1}),
            "exactly one kind",
        ),
        (
            json!({"username": "u", "secret": "s"}),
            "`project_id` is required",
        ),
        (
            json!({"username": "u", "secret": "s", "project_id": "abc"}),
            "project's number",
        ),
        (
            json!({"username": "u", "secret": "s", "project_id": -1}),
            "project_id",
        ),
        (
            json!({"api_secret": "a", "region": "apac"}),
            "unknown variant `apac`",
        ),
        (
            json!({"api_secret": "a", "region": "eu", "endpoint": "https://x"}),
            "not both",
        ),
        (
            json!({"api_secret": "a", "endpoint": "api.mixpanel.com"}),
            "http:// or https://",
        ),
        (
            json!({"api_secret": "a", "batch_size": 0}),
            "between 1 and 2000",
        ),
        (
            json!({"api_secret": "a", "batch_size": 2001}),
            "between 1 and 2000",
        ),
        (
            json!({"api_secret": "a", "api_key": "k"}),
            "unknown field `api_key`",
        ),
    ];
    for (config, expected) in cases {
        match init_from_json::<Mixpanel>(&config.to_string()) {
            Ok(_) => panic!("init accepted {config}"),
            Err(error) => assert!(error.contains(expected), "{config}: {error}"),
        }
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: Value) -> Response {
    Response {
        status,
        headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
        body: match body {
            Value::String(text) => text.into_bytes(),
            other => other.to_string().into_bytes(),
        },
    }
}

fn import_request(n: u32) -> (Mixpanel, Request) {
    let mut mixpanel = plugin(service_account());
    let events: Vec<Value> = (0..n).map(track).collect();
    let request = build(&mut mixpanel, &events).requests.remove(0);
    (mixpanel, request)
}

#[test]
fn a_strict_400_drops_the_failed_events_and_the_others_are_done() {
    let (mut mixpanel, request) = import_request(4);
    let response = answer(
        400,
        &[],
        json!({
            "code": 400,
            "error": "some data points in the request failed validation",
            "failed_records": [
                {"index": 1, "insert_id": "msg-1", "field": "properties.time",
                 "message": "'properties.time' is invalid: must be specified as seconds since epoch"},
                {"index": 3, "$insert_id": "msg-3", "field": "properties.distinct_id"},
                {"index": 9, "message": "not in this request"}
            ],
            "num_records_imported": 2,
            "status": "Bad Request"
        }),
    );
    assert_eq!(
        mixpanel.classify(&request, &response),
        Verdict::PerEvent(vec![
            EventVerdict::Done,
            EventVerdict::Drop(
                "Mixpanel refused the event (HTTP 400): 'properties.time' is invalid: must be \
                 specified as seconds since epoch"
                    .into()
            ),
            EventVerdict::Done,
            EventVerdict::Drop(
                "Mixpanel refused the event (HTTP 400): `properties.distinct_id` is invalid".into()
            ),
        ])
    );
    let whole = answer(
        400,
        &[],
        json!({"code": 400, "error": "unable to parse body"}),
    );
    assert!(
        matches!(mixpanel.classify(&request, &whole), Verdict::Drop(r) if r.contains("unable to parse body"))
    );
}

#[test]
fn import_answers() {
    let (mut mixpanel, request) = import_request(2);
    let mut classify = |response: Response| mixpanel.classify(&request, &response);
    let ok = json!({"code": 200, "num_records_imported": 2, "status": "OK"});
    assert_eq!(classify(answer(200, &[], ok)), Verdict::Done);
    for status in [401, 403] {
        match classify(answer(status, &[], json!({"error": "Invalid credentials"}))) {
            Verdict::Drop(reason) => {
                assert!(reason.contains("refused the credentials"), "{reason}");
                assert!(reason.contains("`username` and `secret`"), "{reason}");
                assert!(reason.contains("Invalid credentials"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(classify(answer(413, &[], json!(""))), Verdict::Retry(None));
    assert_eq!(
        classify(answer(429, &[("Retry-After", "3")], json!({"code": 429}))),
        Verdict::Retry(Some(3000))
    );
    assert_eq!(
        classify(answer(429, &[], json!({"code": 429}))),
        Verdict::Retry(None)
    );
    assert_eq!(
        classify(answer(502, &[], json!("bad gateway"))),
        Verdict::Retry(None)
    );
    assert_eq!(
        classify(answer(404, &[], json!("nope"))),
        Verdict::Drop("HTTP 404: nope".into())
    );
}

#[test]
fn engage_answers() {
    let mut mixpanel = plugin(with_token());
    let identify = json!({"type": "identify", "userId": "user-1", "traits": {"a": 1}});
    let request = build(&mut mixpanel, &[identify]).requests.remove(0);
    let mut classify = |response: Response| mixpanel.classify(&request, &response);
    assert_eq!(classify(answer(200, &[], json!("1"))), Verdict::Done);
    assert_eq!(
        classify(answer(200, &[], json!({"status": 1, "error": null}))),
        Verdict::Done
    );
    assert_eq!(
        classify(answer(200, &[], json!("0"))),
        Verdict::Drop("Mixpanel refused the profile updates: it accepted none (answer `0`)".into())
    );
    assert_eq!(
        classify(answer(
            200,
            &[],
            json!({"status": 0, "error": "Invalid token"})
        )),
        Verdict::Drop("Mixpanel refused the profile updates: Invalid token".into())
    );
    match classify(answer(401, &[], json!(""))) {
        Verdict::Drop(reason) => assert!(reason.contains("`token`"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(classify(answer(503, &[], json!(""))), Verdict::Retry(None));
}
