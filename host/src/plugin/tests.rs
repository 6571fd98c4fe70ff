use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::types::{Event, Outcome};
use super::isolate::{EventResult, run_isolated};
use super::*;
use crate::telemetry::Metrics;

fn load(name: &str, config: &str, limits: PluginLimits) -> Result<Arc<LoadedVersion>, PluginError> {
    let engine = PluginEngine::new(None).unwrap();
    let bytes: Arc<[u8]> = std::fs::read(bundled::path(name)).unwrap().into();
    LoadedVersion::load(
        &engine,
        name,
        None,
        bytes,
        config,
        limits,
        Metrics::new().plugins.clone(),
    )
}

fn event(i: usize, poison: bool) -> Event {
    let json = serde_json::json!({"type": "track", "event": "Order Done", "userId": "u",
        "messageId": format!("m{i}"), "properties": {"poison": poison}});
    Event {
        payload: json.to_string().into_bytes(),
        source: "web".into(),
        offset: i as u64,
    }
}

fn short_limits() -> PluginLimits {
    PluginLimits {
        timeout: Duration::from_millis(200),
        memory_bytes: 32 << 20,
    }
}

#[test]
fn a_transformer_runs_a_batch() {
    let v = load(
        "normalize",
        r#"{"case": "snake_case"}"#,
        PluginLimits::default(),
    )
    .unwrap();
    assert_eq!(v.kind, PluginKind::Transformer);
    let out = v.run(&[event(0, false), event(1, false)]).unwrap();
    assert_eq!(out.len(), 2);
    let Outcome::Keep(bytes) = &out[0] else {
        panic!("{out:?}")
    };
    let e: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(e["event"], "order_done");
}

#[test]
fn every_fault_is_contained_to_its_event() {
    type Expect = fn(&CallError) -> bool;
    let cases: [(&str, Expect); 4] = [
        ("fault-loop", |e| matches!(e, CallError::Timeout(_))),
        ("fault-oom", |e| matches!(e, CallError::OutOfMemory(_))),
        (
            "fault-panic",
            |e| matches!(e, CallError::Trap(m) if m.contains("poison")),
        ),
        ("fault-wrong-count", |e| {
            matches!(e, CallError::Malformed(_))
        }),
    ];
    for (name, expected) in cases {
        let v = load(name, "{}", short_limits()).unwrap();
        let started = Instant::now();
        let err = v.run(&[event(0, true)]).unwrap_err();
        assert!(expected(&err), "{name}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        // A batch with one poison event: only that one fails, the others keep going, and the
        // version keeps working afterwards.
        let batch: Vec<Event> = (0..5).map(|i| event(i, i == 2)).collect();
        let results = run_isolated(&v, &batch);
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (2, EventResult::Failed(_)) => {}
                (2, other) => panic!("{name}: poison event got {other:?}"),
                (_, EventResult::Outcome(Outcome::Keep(_))) => {}
                (_, other) => panic!("{name}: event {i} got {other:?}"),
            }
        }
        assert!(v.run(&[event(9, false)]).is_ok(), "{name} recovers");
    }
}

#[test]
fn a_refused_init_rejects_the_version() {
    let err = load("fault-init-fail", "{}", PluginLimits::default())
        .err()
        .unwrap();
    assert!(
        matches!(&err, PluginError::Init(m) if m.contains("refuses every config")),
        "{err}"
    );
    let err = load(
        "normalize",
        r#"{"case": "SCREAMING"}"#,
        PluginLimits::default(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, PluginError::Init(m) if m.contains("case")),
        "{err}"
    );
    let err = load("pii-mask", "{}", PluginLimits::default()).map(|v| v.kind);
    assert!(
        matches!(err, Ok(PluginKind::Filter) | Err(PluginError::Init(_))),
        "{err:?}"
    );
}
