//! `weir log dump`: every record as one JSON line, so people and tests see exactly what was
//! stored. Reads without changing anything, so it is safe while the router runs (segments the
//! router deletes meanwhile are skipped, with a note).

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
    let open = || {
        Log::open_read_only(&dir, Arc::new(FsStorage))
            .with_context(|| format!("cannot open the log at {}", dir.display()))
    };
    let mut log = open()?;
    let mut next = log.oldest();
    let mut reader = log.reader(next);
    let mut retries = 0;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        let batch = match reader.read_batch(1024) {
            Ok(batch) => batch,
            // A running router deletes the segments every consumer is past, and may reuse
            // their files: one can vanish, or change under the reader, between the listing and
            // the read. Open the log again and go on from where the dump is (or from the
            // oldest record kept, saying what went); a real fault fails again at the same place.
            Err(e) if retries < MAX_RETRIES => {
                tracing::debug!(error = %e, offset = next.0, "reading the log again");
                log = open()?;
                if log.oldest() > next {
                    eprintln!(
                        "note: records {} to {} were deleted by the router's retention while this dump ran",
                        next.0,
                        log.oldest().0 - 1
                    );
                    next = log.oldest();
                    retries = 0;
                } else {
                    retries += 1;
                }
                reader = log.reader(next);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = batch.last() else {
            break;
        };
        next = last.offset.next();
        retries = 0;
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

/// How many times the dump opens the log again after failing to read the same record.
const MAX_RETRIES: u32 = 5;

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
