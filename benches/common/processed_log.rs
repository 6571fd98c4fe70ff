//! A processed log written ahead of a bench, durable before any consumer reads it. Shared by
//! the benches that start from a full processed log (`#[path]`-included, as benches are
//! separate crates).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use weir::log::storage::FsStorage;
use weir::log::{EncodedRecord, Log, LogOptions};
use weir::telemetry::LogMetrics;

/// A log in `dir` holding `records`, in order.
pub fn write(dir: &Path, records: &[EncodedRecord]) -> anyhow::Result<Log> {
    let options = LogOptions {
        segment_bytes: 64 << 20,
        flush_interval: Duration::ZERO,
        flush_bytes: 8 << 20,
        max_bytes: u64::MAX,
        queue_capacity: 1024,
        preallocate_bytes: 0,
    };
    let log = Log::open(dir, Arc::new(FsStorage), &options, LogMetrics::detached())
        .with_context(|| format!("cannot open a log in {}", dir.display()))?;
    let appender = log.appender();
    for chunk in records.chunks(1_000) {
        appender
            .append_blocking(chunk.to_vec())
            .context("cannot append to the bench's log")?;
    }
    Ok(log)
}
