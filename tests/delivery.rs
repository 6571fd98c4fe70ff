//! Destination delivery end to end: real binary, real destination components, local HTTP
//! servers standing in for the SaaS APIs.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sink::{Mode, Sink};
use support::{Weir, dlq_list, eventually, metrics, send, weir_bin};

fn wasm(name: &str) -> String {
    weir::plugin::bundled::path(name).display().to_string()
}

/// A destination named `name` whose plugin POSTs each event to `url` (the fault-test
/// destination: it only misbehaves on events with `properties.poison == true`).
fn post_destination(name: &str, url: &str, allow: &str, extra: &str) -> String {
    format!(
        r#"
[[plugins]]
name = "{name}-plugin"
path = "{}"
kind = "destination"
config = {{ url = "{url}" }}

[[destinations]]
name = "{name}"
plugin = "{name}-plugin"
sources = ["web"]
allow_hosts = ["{allow}"]
timeout_ms = 1000
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 400, max_attempts = 1000 }}
{extra}
"#,
        wasm("fault-dest-panic")
    )
}

/// The test config (source `web`, key `test-key`) with `destinations` appended.
fn config(destinations: &str) -> String {
    support::config(&format!("\n{destinations}"))
}

fn event(key: usize, seq: usize) -> Value {
    json!({"type": "track", "event": "Step", "userId": format!("user-{key}"),
        "messageId": format!("k{key}-s{seq}"), "properties": {"seq": seq}})
}

fn ids(received: &[support::sink::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            r.json()["messageId"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// While one destination hangs and another answers 500, a healthy one still gets every event.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_destination_does_not_slow_the_healthy_one() {
    let healthy = Sink::start().await;
    let hanging = Sink::start().await;
    hanging.set(Mode::Hang);
    let failing = Sink::start().await;
    failing.set(Mode::Status(500, "{}".into()));
    let dests = [
        post_destination(
            "healthy",
            &healthy.url("/in"),
            &format!("127.0.0.1:{}", healthy.port),
            "",
        ),
        post_destination(
            "hanging",
            &hanging.url("/in"),
            &format!("127.0.0.1:{}", hanging.port),
            "",
        ),
        post_destination(
            "failing",
            &failing.url("/in"),
            &format!("127.0.0.1:{}", failing.port),
            "",
        ),
    ]
    .join("\n");
    let weir = Weir::start(&config(&dests));
    let started = Instant::now();
    for n in 0..5 {
        send(&weir, (0..20).map(|k| event(k, n)).collect()).await;
    }
    let got = healthy.wait_for(100, Duration::from_secs(20)).await;
    let elapsed = started.elapsed();
    let mut unique = ids(&got);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 100);
    assert!(
        elapsed < Duration::from_secs(10),
        "the healthy destination took {elapsed:?}"
    );
    // Its own thread gets to it in its own time (no ordering with the healthy one is promised).
    assert!(
        eventually(Duration::from_secs(10), || (!failing.received().is_empty())
            .then_some(()))
        .is_some(),
        "the failing one is being tried"
    );
    let delivered = r#"weir_delivery_delivered_total{destination="healthy"} 100"#;
    let metrics = support::metrics_containing(&weir, delivered, Duration::from_secs(10)).await;
    assert!(metrics.contains(delivered), "{metrics}");
    assert!(
        metrics.contains(r#"weir_delivery_held_events{destination="failing"}"#),
        "{metrics}"
    );
}

/// A destination down for a while, with a SIGKILL of weir in the middle of the outage: every
/// event is delivered in the end, in order per user (duplicates at most for what was in flight).
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_and_a_crash_lose_nothing_and_keep_per_key_order() {
    let sink = Sink::start().await;
    sink.set(Mode::Down);
    let mut weir = Weir::start(&config(&post_destination(
        "crm",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "concurrency = 3",
    )));
    for seq in 0..10 {
        send(&weir, (0..4).map(|k| event(k, seq)).collect()).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    weir.kill9();
    weir.respawn();
    for seq in 10..15 {
        send(&weir, (0..4).map(|k| event(k, seq)).collect()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.set(Mode::Ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut unique = ids(&sink.received());
        unique.sort();
        unique.dedup();
        if unique.len() == 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 60 delivered; log:\n{}",
            unique.len(),
            weir.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Per key, first deliveries come in sequence order.
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in sink.received() {
        let e = r.json();
        let seqs = per_key
            .entry(e["userId"].as_str().unwrap().to_owned())
            .or_default();
        let seq = e["properties"]["seq"].as_u64().unwrap();
        if !seqs.contains(&seq) {
            seqs.push(seq);
        }
    }
    for (key, seqs) in per_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "order of {key}");
        assert_eq!(seqs.len(), 15);
    }
    assert!(dlq_list(&weir).is_empty());
}

/// A destination that fails every request is paused (circuit breaker): instead of one attempt
/// per new event, it gets a few requests and then single probes; once it answers, everything is
/// delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_failing_every_request_is_paused_and_probed() {
    let sink = Sink::start().await;
    sink.set(Mode::Status(503, "{}".into()));
    let weir = Weir::start(&config(&post_destination(
        "crm",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "concurrency = 1",
    )));
    // 60 users: without the breaker, each would cost at least one request.
    send(&weir, (0..60).map(|k| event(k, 0)).collect()).await;
    let paused = r#"weir_delivery_paused{destination="crm"} 1"#;
    let mut seen = false;
    for _ in 0..100 {
        if metrics(&weir).await.contains(paused) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "paused: {}", metrics(&weir).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let attempts = sink.received().len();
    assert!(
        attempts < 30,
        "{attempts} requests while down: the breaker should hold them back"
    );

    sink.set(Mode::Ok);
    let back = Instant::now();
    let delivered = eventually(Duration::from_secs(20), || {
        let mut got: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|r| r.at >= back)
            .map(|r| {
                r.json()["messageId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        got.sort();
        got.dedup();
        (got.len() == 60).then_some(got)
    });
    assert!(
        delivered.is_some(),
        "every event after the outage; log:\n{}",
        weir.log_text()
    );
    let text = metrics(&weir).await;
    assert!(
        text.contains(r#"weir_delivery_paused{destination="crm"} 0"#),
        "{text}"
    );
    assert!(dlq_list(&weir).is_empty());
}

/// The bundled `consent` filter in one destination's chain: events whose consent (Segment's
/// categoryPreferences or RudderStack's deniedConsentIds) denies the destination's category are
/// not sent to it, and are counted; the others are.
#[tokio::test(flavor = "multi_thread")]
async fn the_consent_filter_keeps_denied_events_from_a_destination() {
    let sink = Sink::start().await;
    let consent = format!(
        "[[plugins]]\nname = \"consent\"\npath = \"{}\"\nkind = \"filter\"\nconfig = {{ categories = [\"Advertising\"] }}\n",
        wasm("consent")
    );
    let destination = post_destination(
        "ads",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "chain = [\"consent\"]",
    );
    let weir = Weir::start(&config(&format!("{consent}\n{destination}")));
    send(&weir, support::advertising_consent_events()).await;
    let filtered = r#"weir_delivery_filtered_total{destination="ads"} 2"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = metrics(&weir).await;
        if text.contains(filtered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(filtered), "{text}");
    assert!(
        text.contains("consent_dropped") && text.contains(r#"category="Advertising""#),
        "the plugin's counter: {text}"
    );
    sink.wait_for(2, Duration::from_secs(10)).await;
    // A moment more, so a denied event sent late would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = ids(&sink.received());
    got.sort();
    assert_eq!(got, ["granted", "no-consent-info"]);
    assert!(
        dlq_list(&weir).is_empty(),
        "a consent drop is not a failure"
    );
}

/// A request a plugin builds for a host that is not on the allow-list is refused (not sent),
/// and its events are dead-lettered with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_allow_list_refuses_unlisted_hosts() {
    let sink = Sink::start().await;
    let weir = Weir::start(&config(&post_destination(
        "sneaky",
        &sink.url("/in"),
        "api.example.com",
        "",
    )));
    send(&weir, vec![event(1, 1), event(2, 1)]).await;
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (d.len() == 2).then_some(d)
    })
    .expect("dead letters");
    let reason = dead[0]["entry"]["error"].as_str().unwrap();
    assert!(
        reason.contains("not on the destination's allow_hosts"),
        "{reason}"
    );
    assert!(
        reason.contains("listed explicitly"),
        "loopback must be listed: {reason}"
    );
    assert_eq!(dead[0]["entry"]["stage"], "destination:sneaky");
    assert!(sink.received().is_empty(), "nothing was sent");
}

/// The DLQ's age cap: entries nobody replays are evicted once older than `max_age_ms`, and the
/// metrics say so.
#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_queue_evicts_entries_past_its_age_cap() {
    let sink = Sink::start().await;
    let destination = post_destination("sneaky", &sink.url("/in"), "api.example.com", "");
    let weir = Weir::start(&config(&format!(
        "{destination}\n[dlq]\nmax_age_ms = 4000\n"
    )));
    send(&weir, vec![event(1, 1), event(2, 1)]).await;
    let queue = r#"queue="destination:sneaky""#;
    let listed = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (d.len() == 2).then_some(d)
    });
    assert!(listed.is_some(), "both refused events are dead-lettered");
    let text = metrics(&weir).await;
    assert!(
        text.contains(&format!("weir_dlq_max_age_seconds{{{queue}}} 4")),
        "{text}"
    );
    let mut evicted = false;
    for _ in 0..100 {
        let text = metrics(&weir).await;
        if text.contains(&format!("weir_dlq_evicted_total{{{queue}}} 2"))
            && text.contains(&format!("weir_dlq_entries{{{queue}}} 0"))
        {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(evicted, "evicted after 4 s: {}", metrics(&weir).await);
    assert!(dlq_list(&weir).is_empty(), "no longer listed");
}

/// A destination plugin that traps on one event: only that event is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_costs_only_itself() {
    let sink = Sink::start().await;
    let weir = Weir::start(&config(&post_destination(
        "d",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "concurrency = 1",
    )));
    let mut events: Vec<Value> = (0..6).map(|k| event(k, 0)).collect();
    events[3]["properties"]["poison"] = json!(true);
    send(&weir, events).await;
    let got = sink.wait_for(5, Duration::from_secs(10)).await;
    let mut got = ids(&got);
    got.sort();
    assert_eq!(got, ["k0-s0", "k1-s0", "k2-s0", "k4-s0", "k5-s0"]);
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (!d.is_empty()).then_some(d)
    })
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["entry"]["event"]["messageId"], "k3-s0");
    assert!(
        dead[0]["entry"]["error"]
            .as_str()
            .unwrap()
            .contains("poison"),
        "{}",
        dead[0]
    );
}

/// The configured rate limit holds: the measured request rate stays under it.
#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_is_respected() {
    let sink = Sink::start().await;
    let weir = Weir::start(&config(&post_destination(
        "slow",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "rate_limit = { requests_per_second = 10, burst = 1 }",
    )));
    send(&weir, (0..30).map(|k| event(k, 0)).collect()).await;
    let got = sink.wait_for(30, Duration::from_secs(20)).await;
    let span = got.last().unwrap().at - got.first().unwrap().at;
    let rate = 29.0 / span.as_secs_f64();
    assert!(
        rate <= 10.5,
        "measured {rate:.1} requests/s with a limit of 10"
    );
    assert!(
        rate >= 5.0,
        "the limit should not slow it far below: {rate:.1}/s"
    );
}

/// Events a destination refuses land in its DLQ, which survives a restart; a replay delivers
/// them and empties the DLQ.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_survive_a_restart_and_replay_delivers_them() {
    let sink = Sink::start().await;
    sink.set(Mode::Status(400, r#"{"error":"bad"}"#.into()));
    let mut weir = Weir::start(&config(&post_destination(
        "crm",
        &sink.url("/in"),
        &format!("127.0.0.1:{}", sink.port),
        "",
    )));
    send(&weir, (0..5).map(|k| event(k, 0)).collect()).await;
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (d.len() == 5).then_some(d)
    })
    .expect("5 dead letters");
    assert!(
        dead[0]["entry"]["error"].as_str().unwrap().contains("400"),
        "{}",
        dead[0]
    );

    weir.restart();
    assert_eq!(dlq_list(&weir).len(), 5, "the DLQ survives a restart");
    sink.set(Mode::Ok);
    let before = sink.received().len();
    let out = Command::new(weir_bin())
        .args([
            "dlq",
            "replay",
            "--queue",
            "destination:crm",
            "--admin",
            &weir.admin,
        ])
        .args(["--token", "test-admin-token-0123456789"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 5"), "{stdout}");
    let got = sink.wait_for(before + 5, Duration::from_secs(10)).await;
    let mut replayed = ids(&got[before..]);
    replayed.sort();
    assert_eq!(replayed, ["k0-s0", "k1-s0", "k2-s0", "k3-s0", "k4-s0"]);
    assert!(
        dlq_list(&weir).is_empty(),
        "the DLQ is empty after the replay"
    );
}

/// One event of every type with the context the SaaS mappings read.
fn saas_events() -> Vec<Value> {
    let ctx = json!({"ip": "203.0.113.9", "library": {"name": "analytics.js", "version": "2.1"},
        "os": {"name": "iOS", "version": "17.1"}});
    vec![
        json!({"type": "track", "event": "Order Completed", "userId": "user-1", "anonymousId": "anon-1",
            "messageId": "msg-track-1", "timestamp": "2024-05-01T12:00:00.000Z",
            "properties": {"revenue": 42.5, "currency": "EUR"}, "context": ctx}),
        json!({"type": "identify", "userId": "user-1", "anonymousId": "anon-1", "messageId": "msg-identify-1",
            "timestamp": "2024-05-01T12:00:01.000Z", "traits": {"email": "ann@example.com", "plan": "pro"},
            "context": ctx}),
        json!({"type": "page", "name": "Pricing", "anonymousId": "anon-2", "messageId": "msg-page-1",
            "timestamp": "2024-05-01T12:00:02.000Z", "context": ctx}),
        json!({"type": "alias", "userId": "user-1", "previousId": "anon-1", "messageId": "msg-alias-1",
            "timestamp": "2024-05-01T12:00:03.000Z"}),
    ]
}

/// A bundled destination on one lane (`concurrency = 1`), so one batch of events of several
/// users goes out as one request, as the assertions on request shapes expect.
fn saas_destination(name: &str, plugin: &str, config: &str, sink: &Sink) -> String {
    format!(
        r#"
[[plugins]]
name = "{name}"
path = "{}"
kind = "destination"
config = {config}

[[destinations]]
name = "{name}"
plugin = "{name}"
sources = ["web"]
allow_hosts = ["127.0.0.1:{}"]
batch_size = 50
concurrency = 1
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}
"#,
        wasm(plugin),
        sink.port
    )
}

/// SDK request → transform → each bundled destination's local server receives the documented
/// request: Amplitude HTTP API v2, Mixpanel /import, and a generic webhook.
#[tokio::test(flavor = "multi_thread")]
async fn bundled_destinations_send_the_documented_requests() {
    let amplitude = Sink::start().await;
    amplitude.set_ok_body(r#"{"code":200,"events_ingested":3}"#);
    let mixpanel = Sink::start().await;
    mixpanel.set_ok_body(r#"{"code":200,"num_records_imported":2,"status":"OK"}"#);
    let webhook = Sink::start().await;
    let plugins = [
        saas_destination(
            "amplitude",
            "amplitude",
            &format!(r#"{{ api_key = "amp-key", endpoint = "{}" }}"#, amplitude.url("/2/httpapi")),
            &amplitude,
        ),
        saas_destination(
            "mixpanel",
            "mixpanel",
            &format!(
                r#"{{ username = "svc", secret = "s3cret", project_id = 123, endpoint = "http://127.0.0.1:{}" }}"#,
                mixpanel.port
            ),
            &mixpanel,
        ),
        saas_destination(
            "webhook",
            "webhook",
            &format!(r#"{{ url = "{}", headers = {{ Authorization = "Bearer hook" }} }}"#, webhook.url("/hook")),
            &webhook,
        ),
    ]
    .join("\n");
    let normalize = format!(
        "[[plugins]]\nname = \"normalize\"\npath = \"{}\"\nconfig = {{ case = \"snake_case\" }}\n",
        wasm("normalize")
    );
    let text = config(&format!("{plugins}\n{normalize}")).replace(
        "write_keys = [\"test-key\"]",
        "write_keys = [\"test-key\"]\ntransforms = [\"normalize\"]",
    );
    let weir = Weir::start(&text);
    send(&weir, saas_events()).await;

    // Amplitude: one POST with the api key and the events; insert_id is the messageId.
    let got = amplitude.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/2/httpapi");
    assert_eq!(got[0].headers["content-type"], "application/json");
    let body = got[0].json();
    assert_eq!(body["api_key"], "amp-key");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "alias has no Amplitude equivalent: {body}");
    let track = &events[0];
    assert_eq!(
        track["event_type"], "order_completed",
        "after the transform"
    );
    assert_eq!(track["user_id"], "user-1");
    assert_eq!(track["device_id"], "anon-1");
    assert_eq!(track["insert_id"], "msg-track-1");
    assert_eq!(track["time"], 1_714_564_800_000u64);
    assert_eq!(track["event_properties"]["revenue"], 42.5);
    assert_eq!(track["ip"], "203.0.113.9");
    assert_eq!(events[1]["event_type"], "$identify");
    assert_eq!(
        events[1]["user_properties"]["$set"]["email"],
        "ann@example.com"
    );
    assert_eq!(
        events[2]["event_type"], "Viewed pricing Page",
        "page name snake_cased"
    );

    // Mixpanel: /import with Basic auth and the project id; $insert_id is the messageId.
    let got = mixpanel.wait_for(1, Duration::from_secs(15)).await;
    let import = got
        .iter()
        .find(|r| r.path.starts_with("/import"))
        .expect("an /import request");
    assert!(import.path.contains("project_id=123"), "{}", import.path);
    let auth = import.headers["authorization"].to_str().unwrap();
    assert_eq!(auth, "Basic c3ZjOnMzY3JldA==", "svc:s3cret");
    let records = import.json();
    let records = records.as_array().unwrap();
    assert_eq!(
        records.len(),
        2,
        "track and page; identify needs a token, alias is refused"
    );
    assert_eq!(records[0]["event"], "order_completed");
    assert_eq!(records[0]["properties"]["$insert_id"], "msg-track-1");
    assert_eq!(records[0]["properties"]["distinct_id"], "user-1");
    assert_eq!(records[0]["properties"]["time"], 1_714_564_800_000u64);
    assert_eq!(records[0]["properties"]["revenue"], 42.5);
    assert_eq!(records[1]["event"], "Viewed pricing Page");

    // Webhook: the events as sent (after the transform), batched, with the configured header.
    let got = webhook.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].path, "/hook");
    assert_eq!(got[0].headers["authorization"], "Bearer hook");
    let batch = got[0].json();
    let batch = batch["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 4);
    assert_eq!(batch[0]["messageId"], "msg-track-1");
    assert_eq!(batch[0]["event"], "order_completed");

    // What a destination cannot take is dead-lettered with the plugin's reason.
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (d.len() >= 3).then_some(d)
    })
    .expect("dead letters");
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                d["entry"]["stage"].as_str().unwrap().to_owned(),
                d["entry"]["event"]["messageId"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("destination:amplitude".into(), "msg-alias-1".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("destination:mixpanel".into(), "msg-alias-1".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("destination:mixpanel".into(), "msg-identify-1".into())),
        "{reasons:?}"
    );
}

/// An API that reports failures per event (Amplitude's 400 with events_with_invalid_fields):
/// only those events are dropped; the others are sent again, rebuilt from them alone.
#[tokio::test(flavor = "multi_thread")]
async fn per_event_failures_drop_only_those_events() {
    let amplitude = Sink::start().await;
    amplitude.set(Mode::Status(
        400,
        r#"{"code":400,"error":"Request missing required field","events_with_invalid_fields":{"time":[1]}}"#.into(),
    ));
    let weir = Weir::start(&config(&saas_destination(
        "amplitude",
        "amplitude",
        &format!(
            r#"{{ api_key = "amp-key", endpoint = "{}" }}"#,
            amplitude.url("/2/httpapi")
        ),
        &amplitude,
    )));
    let events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"type": "track", "event": "E", "userId": format!("user-{i}0000"),
                "messageId": format!("pe-{i}"), "timestamp": "2024-05-01T12:00:00.000Z"})
        })
        .collect();
    send(&weir, events).await;
    amplitude.wait_for(1, Duration::from_secs(15)).await;
    amplitude.set(Mode::Ok);
    // Each held event has its own backoff (with jitter), so the retries may come as one request
    // or several; together they carry pe-0 and pe-2, and pe-1 is never sent again.
    let ids_after_first = || -> Vec<String> {
        let mut ids: Vec<String> = amplitude.received()[1..]
            .iter()
            .flat_map(|r| {
                r.json()["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["insert_id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids
    };
    let retried = eventually(Duration::from_secs(15), || {
        let ids = ids_after_first();
        (ids.len() >= 2).then_some(ids)
    })
    .expect("the retries");
    assert_eq!(
        retried,
        ["pe-0", "pe-2"],
        "the retry carries only the events that may pass"
    );
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (!d.is_empty()).then_some(d)
    })
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["entry"]["event"]["messageId"], "pe-1");
}
