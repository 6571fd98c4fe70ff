//! `weir plan check PLAN --events FILE`: what a tracking plan does to sample events, with the
//! same `tracking-plan` component and runtime the router uses, and no router.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::plugin::bindings::types::{Event, Outcome};
use crate::plugin::{LoadedVersion, PluginError, PluginKind, PluginLimits, bundled, config_file};
use crate::telemetry::Metrics;

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Run PLAN over sample events and print, per event, what the router would do: pass,
    /// forward with `context.violationErrors`, or drop with the reason. Exit code 0 when no event
    /// has a violation, 1 when some do, 2 when the plan itself is invalid.
    Check {
        /// The plan: the tracking-plan plugin's config (`plan`, `events`, `actions`; see
        /// plugins/tracking-plan/README.md), JSON or, for a `.yaml` / `.yml` file, YAML.
        plan: PathBuf,
        /// Sample events: a JSON array, a `{"batch": [...]}` body, or one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// A tracking-plan component to use instead of the one built into weir.
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
}

pub fn run(command: PlanCommand) -> anyhow::Result<ExitCode> {
    let PlanCommand::Check {
        plan,
        events,
        plugin,
    } = command;
    let config = config_file::read(&plan)
        .context("a plan is the tracking-plan plugin's config, in JSON or (.yaml / .yml) YAML")?;
    let bytes: Arc<[u8]> = match &plugin {
        Some(p) => std::fs::read(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .into(),
        None => bundled::TRACKING_PLAN.into(),
    };
    let samples = read_events(&events)?;
    let version = match LoadedVersion::load(
        &super::plugin::local_engine()?,
        "tracking-plan",
        Some(PluginKind::Filter),
        bytes,
        &config.to_string(),
        PluginLimits::default(),
        Metrics::new().plugins.clone(),
    ) {
        Ok(v) => v,
        Err(PluginError::Init(message)) => {
            eprintln!("{}: the plan is invalid: {message}", plan.display());
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let batch: Vec<Event> = samples
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            payload: e.to_string().into_bytes(),
            source: "plan-check".into(),
            offset: i as u64,
        })
        .collect();
    let outcomes = version
        .run(&batch)
        .map_err(|e| anyhow::anyhow!("the tracking-plan plugin failed: {e}"))?;
    let (mut passed, mut forwarded, mut dropped) = (0, 0, 0);
    for (i, (event, outcome)) in samples.iter().zip(outcomes).enumerate() {
        let label = label(i, event);
        match outcome {
            Outcome::Keep(payload) => {
                let kept: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                match kept
                    .pointer("/context/violationErrors")
                    .and_then(Value::as_array)
                {
                    Some(violations) if !violations.is_empty() => {
                        forwarded += 1;
                        println!(
                            "WARN  {label}: forwarded with {} violation(s)",
                            violations.len()
                        );
                        for v in violations {
                            println!(
                                "        {} at {}: {}",
                                v["type"].as_str().unwrap_or("?"),
                                v.pointer("/meta/instancePath")
                                    .and_then(Value::as_str)
                                    .unwrap_or(""),
                                v["message"].as_str().unwrap_or("")
                            );
                        }
                    }
                    _ => {
                        passed += 1;
                        println!("ok    {label}");
                    }
                }
            }
            Outcome::Drop(reason) => {
                dropped += 1;
                println!("DROP  {label}: {reason}");
            }
            Outcome::Fail(error) => bail!("{label}: the plugin failed the event: {error}"),
            Outcome::Expand(_) => bail!("{label}: a filter may not expand events"),
        }
    }
    println!(
        "{} event(s): {passed} pass, {forwarded} forwarded with violations, {dropped} dropped \
         (events under `forward_silently` pass without a report)",
        samples.len()
    );
    Ok(if forwarded + dropped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `#3 track "Order Completed"`.
fn label(i: usize, event: &Value) -> String {
    let ty = event["type"].as_str().unwrap_or("?");
    match event["event"].as_str().or(event["name"].as_str()) {
        Some(name) => format!("#{i} {ty} {name:?}"),
        None => format!("#{i} {ty}"),
    }
}

/// Events from a JSON array, a `{"batch": [...]}` body, or JSON lines.
fn read_events(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the events {}", path.display()))?;
    let events = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(events)) => events,
        Ok(Value::Object(mut body)) if body.get("batch").is_some_and(Value::is_array) => {
            match body.remove("batch") {
                Some(Value::Array(events)) => events,
                _ => Vec::new(),
            }
        }
        Ok(single @ Value::Object(_)) => vec![single],
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l).with_context(|| {
                    format!(
                        "{} line {}: not JSON; give a JSON array, {{\"batch\": [...]}} or one event per line",
                        path.display(),
                        n + 1
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if let Some(i) = events.iter().position(|e| !e.is_object()) {
        bail!("{}: event #{i} is not a JSON object", path.display());
    }
    Ok(events)
}
