//! End-to-end tests of the ingest gateway: the real binary, real HTTP, the SDKs' quirks and the
//! bad inputs.

mod support;

use std::io::Write;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Weir, basic, client, config, track};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn error_body(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.expect("error answers are JSON");
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert!(body["code"].is_string(), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_stores_enriched_events() {
    let weir = Weir::start(&config(""));
    let c = client();
    let auth = basic("test-key");

    // Server SDKs: /v1/batch with Basic auth.
    let batch = json!({
        "batch": [track("m-batch-1", "u1"), {"type": "identify", "userId": "u1", "messageId": "m-batch-2", "traits": {"email": "a@b.c"}}],
        "sentAt": "2024-05-01T12:00:01.000Z"
    });
    let r = c
        .post(weir.url("/v1/batch"))
        .header("authorization", &auth)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"success": true}));

    // Single-type endpoints, long and browser short forms, write key in the body.
    let singles = [
        (
            "/v1/track",
            json!({"event": "Signed Up", "userId": "u2"}),
            "track",
        ),
        (
            "/v1/identify",
            json!({"userId": "u2", "traits": {"plan": "pro"}}),
            "identify",
        ),
        (
            "/v1/page",
            json!({"anonymousId": "a3", "name": "Home"}),
            "page",
        ),
        (
            "/v1/screen",
            json!({"userId": "u2", "name": "Settings"}),
            "screen",
        ),
        (
            "/v1/group",
            json!({"userId": "u2", "groupId": "g1"}),
            "group",
        ),
        (
            "/v1/alias",
            json!({"userId": "u2", "previousId": "a3"}),
            "alias",
        ),
        (
            "/v1/t",
            json!({"event": "Clicked", "anonymousId": "a4"}),
            "track",
        ),
        ("/v1/i", json!({"anonymousId": "a4"}), "identify"),
        ("/v1/p", json!({"anonymousId": "a4"}), "page"),
        ("/v1/s", json!({"anonymousId": "a4"}), "screen"),
        (
            "/v1/g",
            json!({"anonymousId": "a4", "groupId": "g2"}),
            "group",
        ),
        (
            "/v1/a",
            json!({"userId": "u4", "previousId": "a4"}),
            "alias",
        ),
    ];
    for (i, (path, mut event, _)) in singles.clone().into_iter().enumerate() {
        event["writeKey"] = json!("test-key");
        event["messageId"] = json!(format!("m-single-{i}"));
        let r = c.post(weir.url(path)).json(&event).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // Historical import: no clock-skew correction.
    let import = json!({"batch": [{"type": "track", "event": "Old", "userId": "u5", "messageId": "m-import",
        "timestamp": "2019-01-01T00:00:00.000Z", "sentAt": "2024-05-01T00:00:00.000Z"}]});
    let r = c
        .post(weir.url("/v1/import"))
        .header("authorization", &auth)
        .json(&import)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // analytics.js self-metrics: accepted, not stored.
    let r = c
        .post(weir.url("/v1/m"))
        .body(r#"{"series":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let events = weir.events();
    assert_eq!(events.len(), 2 + singles.len() + 1, "{events:#?}");
    let by_id = |id: &str| -> Value {
        events
            .iter()
            .find(|e| e["messageId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not stored"))
    };
    let t = by_id("m-batch-1");
    assert_eq!(t["type"], "track");
    assert_eq!(t["properties"]["revenue"], 12.5);
    assert_eq!(t["context"]["ip"], "127.0.0.1");
    assert_eq!(t["context"]["sourceId"], "web");
    assert_eq!(t["sentAt"], "2024-05-01T12:00:01.000Z");
    assert_eq!(t["originalTimestamp"], "2024-05-01T12:00:00.000Z");
    assert!(t["receivedAt"].is_string());
    // sentAt - originalTimestamp = 1 s, so timestamp = receivedAt - 1 s.
    let received = t["receivedAt"].as_str().unwrap();
    let ts = t["timestamp"].as_str().unwrap();
    let parse = |s: &str| weir::timestamp::unix_ms(weir::timestamp::parse(s).unwrap());
    assert_eq!(parse(received) - parse(ts), 1000);
    for (i, (path, _, ty)) in singles.iter().enumerate() {
        let e = by_id(&format!("m-single-{i}"));
        assert_eq!(e["type"], *ty, "{path}");
        assert!(e.get("writeKey").is_none(), "the write key is not stored");
    }
    assert_eq!(by_id("m-import")["timestamp"], "2019-01-01T00:00:00.000Z");

    // The dump also names source, offset and receive time.
    let raw = weir.dump("raw");
    assert!(
        raw.iter()
            .all(|r| r["source"] == "web" && r["offset"].is_u64())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_quirks_are_accepted() {
    let weir = Weir::start(&config(""));
    let c = client();

    // analytics.js: JSON as text/plain, write key in the body and in Basic auth, after a CORS
    // preflight.
    let pre = c
        .request(reqwest::Method::OPTIONS, weir.url("/v1/t"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-retry-count",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    let h = pre.headers();
    assert_eq!(
        h["access-control-allow-origin"].to_str().unwrap(),
        "https://shop.example"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for needed in [
        "authorization",
        "content-type",
        "content-encoding",
        "x-retry-count",
    ] {
        assert!(allowed.contains(needed), "{allowed}");
    }
    let r = c
        .post(weir.url("/v1/t"))
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain")
        .header("authorization", basic("test-key"))
        .header("x-retry-count", "1")
        .body(r#"{"event":"Viewed","anonymousId":"a1","writeKey":"test-key","messageId":"js-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap(),
        "Retry-After"
    );

    // @rudderstack/rudder-sdk-node: gzip labelled form-urlencoded, Basic auth, events with
    // originalTimestamp.
    let body = json!({"batch": [{"type": "track", "event": "Rudder", "anonymousId": "a2", "messageId": "rs-1",
        "originalTimestamp": "2024-05-01T10:00:00.000Z"}], "sentAt": "2024-05-01T10:00:05.000Z"});
    let r = c
        .post(weir.url("/v1/batch"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-encoding", "gzip")
        .header("authorization", basic("test-key"))
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // analytics-node: write key only in the body of a batch.
    let r = c
        .post(weir.url("/v1/batch"))
        .json(&json!({"batch": [track("node-1", "u")], "writeKey": "test-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let events = weir.events();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["js-1", "rs-1", "node-1"]);
    let rs = &events[1];
    assert_eq!(rs["originalTimestamp"], "2024-05-01T10:00:00.000Z");
    let parse =
        |s: &Value| weir::timestamp::unix_ms(weir::timestamp::parse(s.as_str().unwrap()).unwrap());
    assert_eq!(parse(&rs["receivedAt"]) - parse(&rs["timestamp"]), 5000);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors() {
    let weir = Weir::start(&config(
        "[limits]\nmax_request_bytes = 65536\nmax_event_bytes = 4096\nmax_batch_events = 100\n",
    ));
    let c = client();
    let auth = basic("test-key");
    let post = |path: &str| c.post(weir.url(path)).header("authorization", &auth);

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (post("/v1/batch").body("{not json"), StatusCode::BAD_REQUEST, "invalid_json"),
        (post("/v1/batch").body("[1,2]"), StatusCode::BAD_REQUEST, "invalid_json"),
        (post("/v1/batch").body(r#"{"events":[]}"#), StatusCode::BAD_REQUEST, "invalid_batch"),
        (post("/v1/batch").body(r#"{"batch":{}}"#), StatusCode::BAD_REQUEST, "invalid_batch"),
        (post("/v1/track").body(r#"{"userId":"u"}"#), StatusCode::BAD_REQUEST, "invalid_event"),
        (
            c.post(weir.url("/v1/batch")).json(&json!({"batch": [track("x", "u")]})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            c.post(weir.url("/v1/batch"))
                .header("authorization", basic("wrong"))
                .json(&json!({"batch": [track("x", "u")]})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            c.post(weir.url("/v1/batch"))
                .json(&json!({"batch": [track("x", "u")], "writeKey": "wrong"})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (post("/v1/batch").body(vec![b' '; 70_000]), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            post("/v1/batch")
                .header("content-encoding", "gzip")
                .body(gzip(&vec![b' '; 10 << 20])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post("/v1/batch").header("content-encoding", "gzip").body("not gzip"),
            StatusCode::BAD_REQUEST,
            "invalid_gzip",
        ),
        (
            post("/v1/batch").header("content-encoding", "br").body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        ),
        (
            post("/v1/batch").json(&json!({"batch": (0..101).map(|i| track(&format!("b{i}"), "u")).collect::<Vec<_>>()})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (c.get(weir.url("/v1/batch")), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (post("/v2/everything"), StatusCode::NOT_FOUND, "not_found"),
        (c.get(weir.url("/metrics")), StatusCode::NOT_FOUND, "not_found"),
        (post("/health/live"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = error_body(req.send().await.unwrap()).await;
        assert_eq!(
            (got, body["code"].as_str().unwrap()),
            (status, code),
            "case {i}: {body}"
        );
    }

    // A body over the limit without Content-Length (chunked) is cut off too.
    let stream = futures_stream(vec![vec![b' '; 40_000], vec![b' '; 40_000]]);
    let (got, body) = error_body(
        post("/v1/batch")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    assert!(weir.events().is_empty(), "nothing was stored");
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(chunks.into_iter().map(Ok))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_event_never_costs_the_others() {
    let weir = Weir::start(&config("[limits]\nmax_event_bytes = 2048\n"));
    let c = client();
    let big = json!({"type": "track", "event": "Big", "userId": "u", "messageId": "big",
        "properties": {"blob": "x".repeat(5000)}});
    let batch = json!({"batch": [
        track("good-1", "u"),
        {"type": "track", "userId": "u", "messageId": "no-name"},
        big,
        "not an object",
        {"type": "teleport", "userId": "u"},
        track("good-2", "u"),
    ]});
    let r = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let records = weir.dump("raw");
    assert_eq!(records.len(), 6);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["event", "invalid", "invalid", "invalid", "invalid", "event"]
    );
    assert!(
        records[1]["reason"]
            .as_str()
            .unwrap()
            .contains("batch[1].event: missing"),
        "{}",
        records[1]
    );
    assert!(
        records[2]["reason"]
            .as_str()
            .unwrap()
            .contains("over the limit of 2048 bytes")
    );
    assert_eq!(
        records[2]["event"]["messageId"], "big",
        "the invalid event is kept whole"
    );
    assert!(
        records[3]["reason"]
            .as_str()
            .unwrap()
            .contains("batch[3]: must be a JSON object")
    );
    assert!(
        records[4]["reason"]
            .as_str()
            .unwrap()
            .contains("`teleport` is not a known type")
    );
    assert_eq!(records[5]["event"]["messageId"], "good-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_acknowledged_and_stored_once_even_across_restarts() {
    let mut weir = Weir::start(&config(""));
    let c = client();
    let send = |ids: Vec<&str>| {
        let batch = json!({"batch": ids.iter().map(|id| track(id, "u")).collect::<Vec<_>>()});
        c.post(weir.url("/v1/batch"))
            .header("authorization", basic("test-key"))
            .json(&batch)
            .send()
    };
    assert_eq!(send(vec!["d1", "d2", "d1"]).await.unwrap().status(), 200);
    assert_eq!(send(vec!["d2", "d3"]).await.unwrap().status(), 200);
    // Concurrent copies of the same batch, as an SDK that timed out resends it.
    let copies: Vec<_> = (0..8).map(|_| send(vec!["d4", "d5"])).collect();
    for r in futures_util::future::join_all(copies).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let ids = |w: &Weir| {
        w.events()
            .iter()
            .map(|e| e["messageId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&weir), ["d1", "d2", "d3", "d4", "d5"]);

    weir.restart();
    let c = client();
    let batch = json!({"batch": [track("d1", "u"), track("d6", "u")]});
    let r = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ids(&weir), ["d1", "d2", "d3", "d4", "d5", "d6"]);

    let metrics = support::metrics(&weir).await;
    assert!(
        metrics.contains(r#"weir_dedupe_hits_total{source="web"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_retry_after() {
    let weir = Weir::start(&config(
        "rate_limit = { events_per_second = 5, burst = 20 }\n[limits]\nmax_batch_events = 20\n",
    ));
    let c = client();
    let batch = |n: usize, tag: &str| json!({"batch": (0..n).map(|i| track(&format!("{tag}-{i}"), "u")).collect::<Vec<_>>()});
    let first = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&batch(20, "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&batch(10, "b"))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = error_body(second).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let third = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&batch(5, "c"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(weir.events().len(), 25, "the refused batch was not stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics() {
    let weir = Weir::start(&config(""));
    let c = client();
    assert_eq!(
        c.get(weir.url("/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(weir.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(weir.url("/v1/batch"))
        .header("authorization", basic("test-key"))
        .json(&json!({"batch": [track("h1", "u")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = c
        .post(weir.url("/v1/batch"))
        .body("{")
        .send()
        .await
        .unwrap();
    let metrics = support::metrics(&weir).await;
    for needle in [
        r#"weir_http_requests_total{route="batch",status="200"} 1"#,
        r#"weir_http_errors_total{code="invalid_json"} 1"#,
        r#"weir_ingest_events_total{source="web",result="accepted"} 1"#,
        r#"weir_ingest_bytes_total{source="web"}"#,
        r#"weir_log_fsync_seconds_count{log="raw"}"#,
        r#"weir_log_size_bytes{log="raw"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // Admin routes need the token.
    let r = c
        .get(weir.admin_url("/admin/plugins"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        "listen = \"nowhere\"\nbogus = 1\n[[sources]]\nname = \"web\"\nwrite_keys = [\"${WEIR_TEST_UNSET_VAR}\"]\nrate_limit = { events_per_second = 1, burst = 1 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::weir_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listen: `nowhere` is not a socket address",
        "bogus: unknown key",
        "sources[0].write_keys[0]: environment variable WEIR_TEST_UNSET_VAR is not set",
        "sources[0].rate_limit.burst: burst 1 is smaller than the largest accepted batch",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    std::fs::write(&path, support::config("")).unwrap();
    let out = std::process::Command::new(support::weir_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_defaults_start_with_a_default_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(support::weir_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .take_while(|l| !l.contains("admin token"))
        .collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix} line in {lines:?}"))
    };
    let ingest = find("ingest").split_whitespace().nth(1).unwrap().to_owned();
    let key = find("source").rsplit(' ').next().unwrap().to_owned();
    assert!(find("source").contains("default"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("weir-data/default.writekey")).unwrap(),
        key
    );
    let r = client()
        .post(format!("{ingest}/v1/track"))
        .header("authorization", basic(&key))
        .json(&json!({"event": "Hello", "userId": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let events = support::dump(&dir.path().join("weir-data"), "raw");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["source"], "default");
}

/// `weir log dump` while the router writes and its retention deletes (and reuses) the raw log's
/// small segments: every dump succeeds, in offset order, whatever vanished under it.
#[tokio::test(flavor = "multi_thread")]
async fn log_dump_reads_a_live_log_whose_segments_come_and_go() {
    let weir = Weir::start(&config("[log]\nsegment_bytes = 65536\n"));
    let sender = {
        let url = weir.url("/v1/batch");
        tokio::spawn(async move {
            for n in 0..400 {
                let batch: Vec<Value> = (0..50)
                    .map(|k| {
                        let mut e = track(&format!("m{n}-{k}"), "u1");
                        e["properties"] = json!({"pad": "x".repeat(200)});
                        e
                    })
                    .collect();
                support::send_to(&url, batch).await;
            }
        })
    };
    let mut dumps = 0;
    while !sender.is_finished() {
        let dir = weir.data_dir();
        // `support::dump` fails the test on a failed dump.
        let records = tokio::task::spawn_blocking(move || support::dump(&dir, "raw"))
            .await
            .unwrap();
        let offsets: Vec<u64> = records
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert!(offsets.is_sorted(), "{offsets:?}");
        dumps += 1;
    }
    sender.await.unwrap();
    assert!(dumps > 1, "the dumps ran while the router wrote");
}
