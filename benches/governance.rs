//! Per-event cost of the `tracking-plan` filter with a typical plan (50 track events, each with
//! a properties schema of 6-8 typed fields, required fields, enums, a pattern and ranges, plus
//! identify traits), as a WebAssembly component through `LoadedVersion::run` with the
//! production limits and the host's check of each kept payload, against the same crate compiled
//! natively and called through the same SDK entry point (`Filter::filter_raw`). Both must give
//! the same outcomes. Passes alternate between native and WASM; each figure is a median.
//!
//! The events: 1000 distinct, 90% planned and valid, 5% with a violation (forwarded with
//! `context.violationErrors`), 5% unplanned (dropped). Batches of 100 (the pipeline's batches are
//! up to 500).
//!
//! `cargo bench -p weir --bench governance`. `WEIR_BENCH_RUNS` (default 7).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::{Value, json};
use weir::event::check_kept;
use weir::plugin::bindings::types::{Event, Outcome};
use weir::plugin::{LoadedVersion, PluginEngine, PluginKind, PluginLimits, bundled};
use weir::telemetry::Metrics;
use weir_plugin::raw::{RawEvent, RawOutcome};
use weir_plugin::{Filter, init_from_json};
use weir_plugin_tracking_plan::TrackingPlan;

const EVENTS: usize = 1000;
const BATCH: usize = 100;
const PLANNED: usize = 50;

fn plan() -> Value {
    let mut track = serde_json::Map::new();
    for i in 0..PLANNED {
        track.insert(
            event_name(i),
            json!({"properties": {
                "type": "object",
                "required": ["product_id", "price", "currency"],
                "additionalProperties": false,
                "properties": {
                    "product_id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                    "price": {"type": "number", "minimum": 0},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                    "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
                    "coupon": {"type": ["string", "null"], "maxLength": 32},
                    "category": {"type": "string"},
                    "in_stock": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}}
                }
            }}),
        );
    }
    json!({
        "plan": "shop-v12",
        "events": {
            "track": track,
            "identify": {"traits": {"type": "object", "required": ["email"], "properties": {
                "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]},
                "age": {"type": "integer", "minimum": 0, "maximum": 150}
            }}}
        },
        "actions": {"default": {"unplanned": "drop", "violation": "forward"}}
    })
}

fn event_name(i: usize) -> String {
    format!("Product Event {i:02}")
}

fn events() -> Vec<Value> {
    (0..EVENTS)
        .map(|i| {
            let context = json!({"ip": "203.0.113.9", "library": {"name": "analytics.js", "version": "2.11.1"},
                "page": {"path": "/products", "url": "https://shop.example.com/products"}});
            let base = |name: String, properties: Value| {
                json!({"type": "track", "event": name, "userId": format!("user-{}", i % 97),
                    "messageId": format!("m-{i}"), "timestamp": "2026-11-27T10:00:00.000Z",
                    "properties": properties, "context": context})
            };
            let good = json!({"product_id": "ABC-1234", "price": 19.99, "quantity": 2,
                "currency": "EUR", "coupon": null, "category": "shoes", "in_stock": true,
                "tags": ["new", "sale"]});
            match i % 20 {
                0 => base(format!("Unplanned {i}"), good),
                1 => base(
                    event_name(i % PLANNED),
                    json!({"product_id": "abc", "price": -1, "currency": "JPY", "extra": 1}),
                ),
                _ => base(event_name(i % PLANNED), good),
            }
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governance bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let runs: usize = std::env::var("WEIR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let config = plan().to_string();
    let engine = PluginEngine::new(None)?;
    let version = LoadedVersion::load(
        &engine,
        "tracking-plan",
        Some(PluginKind::Filter),
        bundled::TRACKING_PLAN.into(),
        &config,
        PluginLimits::default(),
        Metrics::new().plugins.clone(),
    )?;
    let mut native: TrackingPlan = init_from_json(&config).map_err(anyhow::Error::msg)?;
    let pool: Vec<Event> = events()
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            payload: e.to_string().into_bytes(),
            source: "web".into(),
            offset: i as u64,
        })
        .collect();
    let raw = |batch: &[Event]| -> Vec<RawEvent> {
        batch
            .iter()
            .map(|e| RawEvent {
                payload: e.payload.clone(),
                source: e.source.clone(),
                offset: e.offset,
            })
            .collect()
    };

    // Same outcomes both ways.
    let wasm_out = version.run(&pool)?;
    let native_out = native.filter_raw(raw(&pool));
    let (mut kept, mut dropped, mut annotated) = (0, 0, 0);
    for (i, (w, n)) in wasm_out.iter().zip(&native_out).enumerate() {
        match (w, n) {
            (Outcome::Keep(a), RawOutcome::Keep(b)) => {
                let (a, b): (Value, Value) =
                    (serde_json::from_slice(a)?, serde_json::from_slice(b)?);
                ensure!(a == b, "event {i}: WASM and native kept different events");
                kept += 1;
                if a.pointer("/context/violationErrors").is_some() {
                    annotated += 1;
                }
            }
            (Outcome::Drop(a), RawOutcome::Drop(b)) => {
                ensure!(a == b, "event {i}: different drop reasons");
                dropped += 1;
            }
            (w, n) => anyhow::bail!("event {i}: WASM gave {w:?}, native {n:?}"),
        }
    }
    ensure!(wasm_out.len() == EVENTS && native_out.len() == EVENTS);
    println!(
        "governance bench: tracking plan of {PLANNED} track events + identify; {EVENTS} events \
         (~{} B each) in batches of {BATCH}: {kept} kept ({annotated} with violations), {dropped} dropped",
        pool[2].payload.len()
    );

    let wasm_pass = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        for batch in pool.chunks(BATCH) {
            for (input, o) in batch.iter().zip(version.run(batch)?) {
                if let Outcome::Keep(p) = o {
                    check_kept(&input.payload, &p).map_err(anyhow::Error::msg)?;
                }
            }
        }
        Ok(started.elapsed())
    };
    let mut native_pass = || -> Duration {
        let batches: Vec<Vec<RawEvent>> = pool.chunks(BATCH).map(raw).collect();
        let started = Instant::now();
        for batch in batches {
            std::hint::black_box(native.filter_raw(batch));
        }
        started.elapsed()
    };
    let (mut w, mut n, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs * 10 {
        let nd = native_pass().as_nanos() as f64 / EVENTS as f64;
        let wd = wasm_pass()?.as_nanos() as f64 / EVENTS as f64;
        n.push(nd);
        w.push(wd);
        ratios.push(wd / nd);
    }
    let ratio = median(ratios);
    println!(
        "per event at batch {BATCH}: native {:.0} ns, WASM (run + host check) {:.0} ns: {ratio:.2}x  target <= 1.5x: {}",
        median(n),
        median(w),
        if ratio <= 1.5 { "met" } else { "MISSED" }
    );
    Ok(())
}
