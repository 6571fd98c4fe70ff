//! `weir log dump`: every record as one JSON line, so people and tests see exactly what was
//! stored. Reads without changing anything, so it is safe while the router runs.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::Stage;
use crate::app::Layout;
use crate::log::storage::FsStorage;
use crate::log::{Log, Record, RecordKind};
use crate::timestamp;

pub fn run(data_dir: &Path, stage: Stage) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(data_dir);
    let dir = match stage {
        Stage::Raw => layout.raw_log,
        Stage::Processed => layout.processed_log,
    };
    if !dir.exists() {
        anyhow::bail!(
            "no log at {}: is {} the router's data dir (--data-dir)?",
            dir.display(),
            data_dir.display()
        );
    }
    let log = Log::open_read_only(&dir, Arc::new(FsStorage))
        .with_context(|| format!("cannot open the log at {}", dir.display()))?;
    let mut reader = log.reader(log.oldest());
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        let batch = reader.read_batch(1024)?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            let line = render(r);
            if writeln!(out, "{line}").is_err() {
                // The reader went away (`| head`): not an error.
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// One record as a JSON object.
pub fn render(r: &Record) -> Value {
    let received_at = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(r.meta.received_at_ms) * 1_000_000,
    )
    .map(timestamp::format)
    .unwrap_or_default();
    let mut line = Map::new();
    line.insert("offset".into(), json!(r.offset.0));
    line.insert("kind".into(), json!(r.meta.kind.as_str()));
    line.insert("source".into(), json!(r.meta.source.as_str()));
    line.insert("receivedAt".into(), json!(received_at));
    line.insert("type".into(), json!(r.meta.event_type.as_str()));
    if let Some(origin) = r.meta.origin {
        line.insert("rawOffset".into(), json!(origin.0));
    }
    let payload: Value = serde_json::from_slice(&r.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.payload).into_owned()));
    match (r.meta.kind, payload) {
        (RecordKind::Event, p) => {
            line.insert("event".into(), p);
        }
        // Invalid and dropped records carry {reason, event, ...}: lift those fields up.
        (_, Value::Object(fields)) => line.extend(fields),
        (_, p) => {
            line.insert("event".into(), p);
        }
    }
    Value::Object(line)
}
