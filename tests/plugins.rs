//! End-to-end tests of the plugin runtime: real components built from `plugins/`, the real
//! binary, real HTTP. Transform and filter chains, fault isolation, the dead-letter queue, hot
//! reload under load, automatic rollback and the `weir plugin` workflow.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Weir, client, dlq_list, eventually, send, weir_bin};

const TOKEN: &str = "test-admin-token-0123456789";

fn wasm(name: &str) -> String {
    weir::plugin::bundled::path(name).display().to_string()
}

fn auth() -> String {
    support::basic("test-key")
}

/// A config with source `web` (write key `test-key`) running `chain`, plus `plugins`.
fn config_with(source_extra: &str, plugins: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[pipeline]
batch_size = 50
watch_interval_ms = 100

[[sources]]
name = "web"
write_keys = ["test-key"]
{source_extra}

{plugins}
"#
    )
}

fn processed(weir: &Weir) -> Vec<Value> {
    weir.dump("processed")
}

/// Waits until the processed log holds `n` records.
fn wait_processed(weir: &Weir, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(30), || {
        let p = processed(weir);
        (p.len() >= n).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "processed log has {} of {n} records; log:\n{}",
            processed(weir).len(),
            weir.log_text()
        )
    })
}

async fn admin(weir: &Weir, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let req = match body {
        Some(b) => c.post(weir.admin_url(path)).json(&b),
        None if path.ends_with("plugins")
            || path.contains("/dlq/") && !path.ends_with("replay") =>
        {
            c.get(weir.admin_url(path))
        }
        None => c.post(weir.admin_url(path)),
    };
    let r = req.bearer_auth(TOKEN).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn track(id: &str, event: &str, properties: Value) -> Value {
    json!({"type": "track", "event": event, "userId": "u1", "messageId": id, "properties": properties,
        "context": {"traits": {"email": "ann@example.com"}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn transform_and_filter_chains_shape_the_processed_log() {
    let plugins = format!(
        r#"
[[plugins]]
name = "normalize"
path = "{}"
kind = "transformer"
config = {{ case = "snake_case", add_properties = {{ app = "shop" }} }}

[[plugins]]
name = "fanout"
path = "{}"
config = {{ rules = [{{ event = "order_completed", array = "properties.products", emit = "product_purchased" }}] }}

[[plugins]]
name = "pii"
path = "{}"
kind = "filter"
config = {{ paths = ["context.traits.email"], mode = "redact" }}
"#,
        wasm("normalize"),
        wasm("fanout"),
        wasm("pii-mask")
    );
    let weir = Weir::start(&config_with(
        r#"transforms = ["normalize", "fanout"]
filters = ["pii"]"#,
        &plugins,
    ));
    send(
        &weir,
        vec![
            track("a", "Signed Up", json!({})),
            track(
                "b",
                "Order Completed",
                json!({"products": [{"sku": "A"}, {"sku": "B"}]}),
            ),
        ],
    )
    .await;
    let records = wait_processed(&weir, 3);
    assert_eq!(records.len(), 3, "{records:#?}");
    let events: Vec<&Value> = records.iter().map(|r| &r["event"]).collect();
    assert_eq!(events[0]["event"], "signed_up");
    assert_eq!(events[0]["properties"]["app"], "shop");
    assert_eq!(events[0]["context"]["traits"]["email"], "[redacted]");
    assert_eq!(events[1]["event"], "product_purchased");
    assert_eq!(events[1]["messageId"], "b:0", "expanded ids are derived");
    assert_eq!(events[1]["properties"]["sku"], "A");
    assert_eq!(events[2]["messageId"], "b:1");
    assert_eq!(events[2]["properties"]["sku"], "B");
    // Each processed record names the raw record it came from.
    assert_eq!(records[0]["rawOffset"], 0);
    assert_eq!(records[1]["rawOffset"], 1);
    assert_eq!(records[2]["rawOffset"], 1);
    assert!(records.iter().all(|r| r["kind"] == "event"));
}

/// A tracking plan as a source filter, over HTTP: planned events pass, an unplanned one is
/// dropped with its reason in the processed log, a violating one is forwarded with
/// `context.violationErrors`, and the violations are counted in `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn a_tracking_plan_drops_unplanned_and_annotates_violations() {
    let plugins = format!(
        r#"
[[plugins]]
name = "plan"
path = "{}"
kind = "filter"

[plugins.config]
plan = "web-v1"
actions = {{ default = {{ unplanned = "drop", violation = "forward" }} }}

[plugins.config.events.track."Order Completed".properties]
type = "object"
required = ["revenue"]
properties = {{ revenue = {{ type = "number" }}, currency = {{ type = "string", enum = ["EUR", "USD"] }} }}
"#,
        wasm("tracking-plan")
    );
    let weir = Weir::start(&config_with(r#"filters = ["plan"]"#, &plugins));
    send(
        &weir,
        vec![
            track(
                "ok",
                "Order Completed",
                json!({"revenue": 10, "currency": "EUR"}),
            ),
            track("unplanned", "Coupon Applied", json!({})),
            track(
                "bad",
                "Order Completed",
                json!({"revenue": "ten", "currency": "GBP"}),
            ),
        ],
    )
    .await;
    let records = wait_processed(&weir, 3);
    assert_eq!(records[0]["kind"], "event");
    assert_eq!(records[0]["event"]["messageId"], "ok");
    assert!(records[0]["event"]["context"]["violationErrors"].is_null());

    assert_eq!(records[1]["kind"], "dropped", "{:#}", records[1]);
    let reason = records[1]["reason"].as_str().unwrap();
    assert!(reason.contains("Unplanned-Event"), "{reason}");
    assert_eq!(records[1]["plugin"], "plan");
    assert_eq!(
        records[1]["event"]["messageId"], "unplanned",
        "the dropped event is kept whole"
    );

    assert_eq!(records[2]["kind"], "event");
    let kinds: Vec<&str> = records[2]["event"]["context"]["violationErrors"]
        .as_array()
        .expect("violationErrors")
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["Datatype-Mismatch", "Unknown-Violation"],
        "{:#}",
        records[2]
    );

    let text = support::metrics(&weir).await;
    let counted = |kind: &str, event: &str| {
        text.lines().any(|l| {
            l.contains("tracking_plan_violations")
                && l.contains(&format!("\"{kind}\""))
                && l.contains(&format!("\"{event}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(counted("Unplanned-Event", "(unplanned)"), "{text}");
    assert!(counted("Datatype-Mismatch", "Order Completed"), "{text}");
}

/// `weir plan check`: a plan over a file of sample events, no router; exit 1 on violations,
/// 2 on an invalid plan (naming where it is wrong).
#[test]
fn plan_check_reports_violations_without_a_router() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({"plan": "web-v1",
            "actions": {"default": {"unplanned": "drop", "violation": "forward"}},
            "events": {"track": {"Order Completed": {"properties": {"type": "object",
                "required": ["revenue"], "properties": {"revenue": {"type": "number"}}}}}}})
        .to_string(),
    )
    .unwrap();
    let events = dir.path().join("events.json");
    std::fs::write(
        &events,
        json!({"batch": [
            track("ok", "Order Completed", json!({"revenue": 3})),
            track("bad", "Order Completed", json!({"revenue": "x"})),
            track("other", "Nope", json!({})),
        ]})
        .to_string(),
    )
    .unwrap();
    let run = |plan: &std::path::Path| {
        Command::new(weir_bin())
            .args(["plan", "check"])
            .arg(plan)
            .arg("--events")
            .arg(&events)
            .output()
            .unwrap()
    };
    let out = run(&plan);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ok    #0"), "{stdout}");
    assert!(lines[1].starts_with("WARN  #1"), "{stdout}");
    assert!(
        lines[2].contains("Datatype-Mismatch at /properties/revenue"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("DROP  #2") && lines[3].contains("Unplanned-Event"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 pass, 1 forwarded with violations, 1 dropped"),
        "{stdout}"
    );

    // The same plan in YAML says the same.
    let yaml = dir.path().join("plan.yaml");
    std::fs::write(
        &yaml,
        "plan: web-v1\n\
         actions:\n  default: {unplanned: drop, violation: forward}\n\
         events:\n  track:\n    Order Completed:\n      properties:\n        type: object\n\
         \x20       required: [revenue]\n        properties:\n          revenue: {type: number}\n",
    )
    .unwrap();
    let out = run(&yaml);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
    std::fs::write(&yaml, "plan: web-v1\nevents: [oops\n").unwrap();
    let out = run(&yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("plan.yaml is not valid YAML"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"plan":"x","events":{"track":{"A":{"properties":{"type":"strng"}}}}}"#,
    )
    .unwrap();
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"events.track["A"].properties.type: unknown type "strng""#),
        "{stderr}"
    );
}

/// A tracking plan changed in its watched (YAML) file while events flow: the new plan takes
/// effect between two batches, every event is judged exactly once (kept or dropped with its
/// reason), and none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_hot_reloaded_under_load_takes_effect_without_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("plan.yaml");
    let plan = |events: &[&str]| {
        let track: String = events
            .iter()
            .map(|e| format!("    {e}:\n      properties: {{type: object}}\n"))
            .collect();
        format!("plan: web\nevents:\n  track:\n{track}actions:\n  default: {{unplanned: drop}}\n")
    };
    std::fs::write(&plan_file, plan(&["Tick"])).unwrap();
    let plugins = format!(
        "[[plugins]]\nname = \"plan\"\npath = \"{}\"\nkind = \"filter\"\nconfig_file = {:?}\n",
        wasm("tracking-plan"),
        plan_file.display().to_string(),
    );
    let weir = Weir::start_in(dir.path(), &config_with(r#"filters = ["plan"]"#, &plugins));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = weir.url("/v1/batch");
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let c = client();
            for n in 0..100 {
                // Each batch: a planned event and one the first plan does not know.
                let batch = vec![
                    track(&format!("t-{n}"), "Tick", json!({})),
                    track(&format!("b-{n}"), "Beta Feature Used", json!({})),
                ];
                let r = c
                    .post(&url)
                    .header("authorization", auth())
                    .json(&json!({"batch": batch}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sent.lock().extend([format!("t-{n}"), format!("b-{n}")]);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&plan_file, plan(&["Tick", "Beta Feature Used"])).unwrap();
    sender.await.unwrap();
    let sent = sent.lock().clone();
    let records = wait_processed(&weir, sent.len());
    assert_eq!(records.len(), sent.len(), "one record per event");
    let mut seen = HashSet::new();
    // In log order, beta events are dropped up to the swap and kept after it, never mixed.
    let mut beta: Vec<bool> = Vec::new();
    for r in &records {
        let id = r["event"]["messageId"].as_str().unwrap().to_owned();
        assert!(seen.insert(id.clone()), "{id} judged twice");
        let kept = r["kind"] == "event";
        if id.starts_with("t-") {
            assert!(kept, "a planned event is kept: {r}");
        } else {
            if !kept {
                assert_eq!(r["kind"], "dropped");
                assert!(
                    r["reason"].as_str().unwrap().contains("Unplanned-Event"),
                    "{r}"
                );
            }
            beta.push(kept);
        }
    }
    for id in &sent {
        assert!(seen.contains(id), "{id} lost");
    }
    let swap = beta
        .iter()
        .position(|k| *k)
        .expect("the new plan went live");
    assert!(swap > 0, "the first plan judged the first events");
    assert!(
        beta[swap..].iter().all(|k| *k),
        "after the swap every beta event is kept: {beta:?}"
    );
}

/// Misbehaving plugins: only the bad events reach the DLQ; the router stays up; other events
/// and other sources are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn faulty_plugins_cost_only_their_poison_events() {
    let faults = [
        "fault-loop",
        "fault-oom",
        "fault-panic",
        "fault-wrong-count",
        "fault-bad-json",
    ];
    let mut text = format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[pipeline]
batch_size = 20

[[sources]]
name = "web"
write_keys = ["test-key"]
transforms = ["normalize"]

[[plugins]]
name = "normalize"
path = "{}"
config = {{ case = "snake_case" }}
"#,
        wasm("normalize")
    );
    for f in faults {
        text.push_str(&format!(
            "\n[[sources]]\nname = \"{f}\"\nwrite_keys = [\"key-{f}\"]\ntransforms = [\"{f}\"]\n\n[[plugins]]\nname = \"{f}\"\npath = \"{}\"\ntimeout_ms = 200\nmemory_mb = 32\n",
            wasm(f)
        ));
    }
    let weir = Weir::start(&text);
    let c = client();
    for f in faults {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                json!({"type": "track", "event": "E", "userId": "u", "messageId": format!("{f}-{i}"),
                    "properties": {"poison": i == 4}})
            })
            .collect();
        let r = c
            .post(weir.url("/v1/batch"))
            .basic_auth(format!("key-{f}"), Some(""))
            .json(&json!({"batch": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    send(&weir, vec![track("healthy", "Still Flowing", json!({}))]).await;

    let records = wait_processed(&weir, faults.len() * 9 + 1);
    let ids: HashSet<String> = records
        .iter()
        .map(|r| r["event"]["messageId"].as_str().unwrap().to_owned())
        .collect();
    for f in faults {
        for i in 0..10 {
            let id = format!("{f}-{i}");
            assert_eq!(ids.contains(&id), i != 4, "{id}");
        }
    }
    let healthy = records
        .iter()
        .find(|r| r["event"]["messageId"] == "healthy")
        .unwrap();
    assert_eq!(healthy["event"]["event"], "still_flowing");

    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        (d.len() >= faults.len()).then_some(d)
    })
    .expect("dead letters");
    assert_eq!(dead.len(), faults.len(), "{dead:#?}");
    let mut by_plugin: HashMap<String, Value> = HashMap::new();
    for d in dead {
        let e = &d["entry"];
        assert_eq!(e["event"]["properties"]["poison"], true);
        by_plugin.insert(e["plugin"].as_str().unwrap().to_owned(), e.clone());
    }
    let error = |p: &str| by_plugin[p]["error"].as_str().unwrap().to_owned();
    assert!(
        error("fault-loop").contains("time limit"),
        "{}",
        error("fault-loop")
    );
    assert!(
        error("fault-oom").contains("memory limit"),
        "{}",
        error("fault-oom")
    );
    assert!(
        error("fault-panic").contains("poison"),
        "the panic message is kept: {}",
        error("fault-panic")
    );
    assert!(
        error("fault-wrong-count").contains("outcomes for"),
        "{}",
        error("fault-wrong-count")
    );
    assert!(
        error("fault-bad-json").contains("not a JSON object"),
        "{}",
        error("fault-bad-json")
    );
    assert_eq!(by_plugin["fault-panic"]["source"], "fault-panic");

    // Still up and serving.
    let r = c.get(weir.url("/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let dead_lettered = r#"weir_dead_lettered_total{stage="pipeline"} 5"#;
    let metrics = support::metrics_containing(&weir, dead_lettered, Duration::from_secs(10)).await;
    assert!(metrics.contains(dead_lettered), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_fails_init_stops_the_start_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n{}",
        dir.path().join("data").display().to_string(),
        config_with(
            r#"transforms = ["broken"]"#,
            &format!(
                "[[plugins]]\nname = \"broken\"\npath = \"{}\"\n",
                wasm("fault-init-fail")
            ),
        )
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(weir_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugin `broken`") && err.contains("refuses every config"),
        "{err}"
    );
}

/// The plugin's config as `tag = VERSION` goes into every event, so each event says which
/// version processed it.
fn tagger(version: &str) -> Value {
    json!({"add_properties": {"processed_by": version}})
}

/// N events sent while versions are swapped several times (admin deploys, a config-file
/// change, a broken version that must be refused): each event processed exactly once, by
/// exactly one version, none lost.
#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("tagger.json");
    std::fs::write(&config_file, tagger("v1").to_string()).unwrap();
    let plugins = format!(
        "[[plugins]]\nname = \"tagger\"\npath = \"{}\"\nconfig_file = {:?}\nfixtures = {:?}\n",
        wasm("normalize"),
        config_file.display().to_string(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/normalize/fixtures")
            .display()
            .to_string()
    );
    let weir = Weir::start_in(
        dir.path(),
        &config_with(r#"transforms = ["tagger"]"#, &plugins),
    );
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = weir.url("/v1/batch");
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let c = client();
            for n in 0..150 {
                let ids: Vec<String> = (0..10).map(|k| format!("hr-{n}-{k}")).collect();
                let batch: Vec<Value> = ids.iter().map(|id| track(id, "Tick", json!({}))).collect();
                let r = c
                    .post(&url)
                    .header("authorization", auth())
                    .json(&json!({"batch": batch}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sent.lock().extend(ids);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut versions = vec!["v1".to_owned()];
    let broken = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(wasm("fault-init-fail")).unwrap());
    for round in 2..=5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = format!("v{round}");
        if round == 4 {
            // A change of the watched config file is a new version too.
            std::fs::write(&config_file, tagger(&v).to_string()).unwrap();
            let live = eventually(Duration::from_secs(10), || {
                let p = processed(&weir);
                p.iter()
                    .any(|r| r["event"]["properties"]["processed_by"] == v.as_str())
                    .then_some(())
            });
            assert!(live.is_some(), "the file change went live");
        } else {
            let (status, body) = admin(
                &weir,
                "/admin/plugins/tagger/deploy",
                Some(json!({ "config": tagger(&v) })),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        versions.push(v);
        // A broken version is refused with a clear error; the live one keeps serving.
        let (status, body) = admin(
            &weir,
            "/admin/plugins/tagger/deploy",
            Some(json!({ "component_base64": broken })),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("init failed"),
            "{body}"
        );
    }
    sender.await.unwrap();
    let sent = sent.lock().clone();
    let records = wait_processed(&weir, sent.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    for r in &records {
        let id = r["event"]["messageId"].as_str().unwrap().to_owned();
        let by = r["event"]["properties"]["processed_by"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(versions.contains(&by), "{by}");
        assert!(
            seen.insert(id.clone(), by).is_none(),
            "{id} processed twice"
        );
    }
    for id in &sent {
        assert!(seen.contains_key(id), "{id} lost");
    }
    let used: HashSet<&String> = seen.values().collect();
    assert!(
        used.len() >= 3,
        "several versions processed events: {used:?}"
    );
    // Versions are listed; the last one is live.
    let (_, list) = admin(&weir, "/admin/plugins", None).await;
    let tagger = &list["plugins"][0];
    assert!(
        tagger["versions"].as_array().unwrap().len() >= 5,
        "{tagger}"
    );
    let metrics = support::metrics(&weir).await;
    assert!(
        metrics.contains(r#"weir_plugin_lifecycle_total{plugin="tagger",event="rejected"} 4"#),
        "{metrics}"
    );
}

/// A version that fails most events under load is rolled back automatically; the events it
/// failed are in the DLQ, and replaying them sends them through the good version.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_version_is_rolled_back_and_its_events_replayed() {
    let plugins = format!(
        "[[plugins]]\nname = \"money\"\npath = \"{}\"\nconfig = {{ add_properties = {{ checked = true }} }}\nrollback = {{ window = 20, max_failure_ratio = 0.5 }}\n",
        wasm("normalize")
    );
    let mut weir = Weir::start(&config_with(r#"transforms = ["money"]"#, &plugins));
    let order = |i: usize| {
        track(
            &format!("o{i}"),
            "Order",
            json!({"revenue": 10, "currency": "CHF"}),
        )
    };
    send(&weir, (0..10).map(order).collect()).await;
    wait_processed(&weir, 10);

    // v2 converts currencies strictly and has no rate for CHF: every order fails.
    let strict = json!({"currency": {"rates": {"USD": 1.0}, "fields": {"revenue": "revenue_usd"}, "unconvertible": "fail"}});
    let (status, body) = admin(
        &weir,
        "/admin/plugins/money/deploy",
        Some(json!({"config": strict})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v2 = body["active"].as_str().unwrap().to_owned();
    for n in 0..4 {
        send(&weir, (10 + n * 10..20 + n * 10).map(order).collect()).await;
    }
    let rolled_back = eventually(Duration::from_secs(20), || {
        weir.log_text()
            .contains("rolling back automatically")
            .then_some(())
    });
    assert!(rolled_back.is_some(), "{}", weir.log_text());
    let (_, list) = admin(&weir, "/admin/plugins", None).await;
    assert_ne!(list["plugins"][0]["active"].as_str().unwrap(), v2);

    // Everything is accounted for: processed, or dead-lettered by v2.
    let dead = eventually(Duration::from_secs(10), || {
        let d = dlq_list(&weir);
        let p = processed(&weir);
        (d.len() + p.len() == 50).then_some(d)
    })
    .expect("every event processed or dead-lettered");
    assert!(dead.len() >= 20, "{}", dead.len());
    assert!(dead.iter().all(|d| d["entry"]["version"] == v2.as_str()));
    assert!(
        dead[0]["entry"]["error"]
            .as_str()
            .unwrap()
            .contains("no rate for currency CHF")
    );

    // The DLQ survives a restart, then replay sends the events through the good version.
    weir.restart();
    assert_eq!(dlq_list(&weir).len(), dead.len());
    let out = Command::new(weir_bin())
        .args(["dlq", "replay", "--admin", &weir.admin, "--token", TOKEN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("replayed {}", dead.len())));
    let records = wait_processed(&weir, 50);
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r["event"]["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 50, "every order processed once in the end");
    assert!(
        records
            .iter()
            .all(|r| r["event"]["properties"]["checked"] == true)
    );
    assert!(
        dlq_list(&weir).is_empty(),
        "the DLQ is empty after the replay"
    );
    let metrics = support::metrics(&weir).await;
    // The restart reset counters; the log line and the version list are the durable record.
    assert!(metrics.contains("weir_plugin_active"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_rollback_activate_and_restart_keep_the_chosen_version() {
    let plugins = format!(
        "[[plugins]]\nname = \"tagger\"\npath = \"{}\"\nconfig = {}\n",
        wasm("normalize"),
        "{ add_properties = { processed_by = \"v1\" } }"
    );
    let mut weir = Weir::start(&config_with(r#"transforms = ["tagger"]"#, &plugins));
    let (_, list) = admin(&weir, "/admin/plugins", None).await;
    let v1 = list["plugins"][0]["active"].as_str().unwrap().to_owned();
    // `weir plugin deploy` talks to the admin API of the running router.
    let config_file = weir.dir.join("v2.json");
    std::fs::write(&config_file, tagger("v2").to_string()).unwrap();
    let out = Command::new(weir_bin())
        .args(["plugin", "deploy", "tagger", "--config"])
        .arg(&config_file)
        .args(["--admin", &weir.admin, "--token", TOKEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, list) = admin(&weir, "/admin/plugins", None).await;
    let v2 = list["plugins"][0]["active"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert!(stdout.contains(&v2), "{stdout}");
    // A file that is not a component is refused with the reason; the live version stays.
    let junk = weir.dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let out = Command::new(weir_bin())
        .args(["plugin", "deploy", "tagger", "--wasm"])
        .arg(&junk)
        .args(["--admin", &weir.admin, "--token", TOKEN])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(stderr.contains("422"), "{stderr}");
    let (status, body) = admin(&weir, "/admin/plugins/tagger/rollback", None).await;
    assert_eq!(
        (status, body["active"].as_str().unwrap()),
        (200, v1.as_str())
    );
    let (status, body) = admin(
        &weir,
        "/admin/plugins/tagger/activate",
        Some(json!({"version": v2})),
    )
    .await;
    assert_eq!(
        (status, body["active"].as_str().unwrap()),
        (200, v2.as_str())
    );
    let (status, _) = admin(
        &weir,
        "/admin/plugins/tagger/activate",
        Some(json!({"version": "nope"})),
    )
    .await;
    assert_eq!(status, 404);

    // The deployed version survives a restart.
    weir.restart();
    let (_, list) = admin(&weir, "/admin/plugins", None).await;
    assert_eq!(list["plugins"][0]["active"].as_str().unwrap(), v2);
    send(&weir, vec![track("after-restart", "E", json!({}))]).await;
    let records = wait_processed(&weir, 1);
    assert_eq!(records[0]["event"]["properties"]["processed_by"], "v2");
    // Without the token: refused.
    let r = client()
        .get(weir.admin_url("/admin/plugins"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn bundled_fixtures_pass_and_a_wrong_one_fails_with_a_diff() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in ["normalize", "fanout", "pii-mask"] {
        let started = Instant::now();
        let out = Command::new(weir_bin())
            .args(["plugin", "test", &wasm(name), "--fixtures"])
            .arg(root.join("plugins").join(name).join("fixtures"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("0 failed"), "{stdout}");
        eprintln!("{name}: fixtures in {:?}", started.elapsed());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.json"),
        r#"{"name": "wrong on purpose", "config": {"case": "snake_case"},
            "input": [{"type": "track", "event": "Order Done"}],
            "expect": [{"keep": {"type": "track", "event": "Order Done"}}]}"#,
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["plugin", "test", &wasm("normalize"), "--fixtures"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL  wrong on purpose"), "{stdout}");
    assert!(
        stdout.contains("order_done"),
        "the diff shows what came back: {stdout}"
    );
}

/// `weir plugin new` makes a crate that builds and passes its own fixtures.
#[test]
fn a_new_plugin_builds_and_passes_its_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kind) in [("my-tagger", "transformer"), ("my-gate", "filter")] {
        let crate_dir = dir.path().join(name);
        let out = Command::new(weir_bin())
            .args(["plugin", "new", name, "--kind", kind, "--dir"])
            .arg(&crate_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Share compiled dependencies between runs of this test.
        let target = support::target_dir().join("scaffold");
        let out = Command::new(weir_bin())
            .args(["plugin", "test"])
            .arg(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 fixture, 0 failed"), "{stdout}");
    }
}
