//! Persistence of the dedupe index.
//!
//! A consumer of the raw log (named `dedupe`) appends the key and receive time of every accepted
//! event to a journal per source (`<data>/dedupe/<source>.ids`, 24-byte entries), fsyncs it and
//! then commits its offset. At start-up the journals are loaded and the log is read from that
//! committed offset to the head, so every durable id is known again before the first request,
//! even ids whose journal entry was not yet written when the process died. Because this is a log
//! consumer, retention never deletes segments it has not journaled yet.
//!
//! A journal grows by appends; once it holds far more entries than the index can keep, it is
//! rewritten with only the live ones (atomically: temp file, fsync, rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::DedupeIndex;
use crate::config::DedupeConfig;
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::storage::{self, AppendFile, Storage};
use crate::log::{Log, LogError, LogReader, OffsetStore, RecordKind};

const ENTRY: usize = 24;

/// The log consumer name of the persister.
pub fn consumer() -> ConsumerId {
    ConsumerId::new("dedupe")
}

/// Every source's index and its limits.
pub type Indexes = HashMap<SourceId, (Arc<DedupeIndex>, DedupeConfig)>;

fn journal_path(dir: &Path, source: &SourceId) -> PathBuf {
    dir.join(format!("{source}.ids"))
}

fn entry(key: u128, at_ms: i64) -> [u8; ENTRY] {
    let mut e = [0; ENTRY];
    e[..16].copy_from_slice(&key.to_le_bytes());
    e[16..].copy_from_slice(&at_ms.to_le_bytes());
    e
}

fn parse_entries(bytes: &[u8]) -> impl Iterator<Item = (u128, i64)> + '_ {
    // A torn last entry (crash inside a write) is ignored by `chunks_exact`.
    bytes.chunks_exact(ENTRY).map(|c| {
        let key = u128::from_le_bytes(c[..16].try_into().unwrap_or([0; 16]));
        let at = i64::from_le_bytes(c[16..].try_into().unwrap_or([0; 8]));
        (key, at)
    })
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// Loads every journal and the log tail after the persister's offset into the indexes.
/// Returns the offset the persister resumes from.
pub fn restore(
    storage: &dyn Storage,
    dir: &Path,
    indexes: &Indexes,
    log: &Log,
    offsets: &OffsetStore,
) -> Result<Offset, LogError> {
    let now = now_ms();
    storage.create_dir_all(dir).map_err(|source| LogError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    for (source, (index, _)) in indexes {
        let path = journal_path(dir, source);
        if !storage.exists(&path) {
            continue;
        }
        let bytes = storage::read_all(storage, &path).map_err(|source| LogError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        for (key, at) in parse_entries(&bytes) {
            index.restore(key, at, now);
        }
    }
    let from = offsets
        .load(&consumer())?
        .unwrap_or(Offset(0))
        .max(log.oldest());
    let mut reader = log.reader(from);
    let mut tail = 0usize;
    loop {
        let batch = reader.read_batch(10_000)?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.meta.kind == RecordKind::Event
                && r.meta.dedupe_key != 0
                && let Some((index, _)) = indexes.get(&r.meta.source)
            {
                index.restore(r.meta.dedupe_key, r.meta.received_at_ms, now);
                tail += 1;
            }
        }
    }
    if tail > 0 {
        tracing::info!(
            ids = tail,
            "restored message ids from the log tail not yet journaled"
        );
    }
    Ok(from)
}

/// Journals ids from the log until `stop` is set, then journals what is left and returns.
pub fn spawn(
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    indexes: &Indexes,
    reader: LogReader,
    offsets: Arc<OffsetStore>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let limits: HashMap<SourceId, DedupeConfig> =
        indexes.iter().map(|(s, (_, c))| (s.clone(), *c)).collect();
    let mut p = Persister {
        storage,
        dir,
        limits,
        files: HashMap::new(),
        reader,
        offsets,
    };
    std::thread::Builder::new()
        .name("weir-dedupe".into())
        .spawn(move || p.run(&stop))
}

struct JournalFile {
    file: Box<dyn AppendFile>,
}

struct Persister {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    limits: HashMap<SourceId, DedupeConfig>,
    files: HashMap<SourceId, JournalFile>,
    reader: LogReader,
    offsets: Arc<OffsetStore>,
}

impl Persister {
    fn run(&mut self, stop: &AtomicBool) {
        let mut pending: HashMap<SourceId, Vec<u8>> = HashMap::new();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let batch = match self.reader.read_batch(50_000) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "dedupe journal cannot read the log");
                    if stopping {
                        // What is not journaled is read again from the log at the next start.
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if batch.is_empty() && pending.is_empty() {
                if stopping {
                    return;
                }
                let pos = self.reader.position();
                self.reader
                    .shared()
                    .wait_beyond(pos, Duration::from_millis(200));
                continue;
            }
            for r in &batch {
                if r.meta.kind == RecordKind::Event
                    && r.meta.dedupe_key != 0
                    && self.limits.contains_key(&r.meta.source)
                {
                    pending
                        .entry(r.meta.source.clone())
                        .or_default()
                        .extend_from_slice(&entry(r.meta.dedupe_key, r.meta.received_at_ms));
                }
            }
            match self.write(&pending) {
                Ok(()) => {
                    pending.clear();
                    let pos = self.reader.position();
                    if let Err(e) = self.offsets.commit(&consumer(), pos) {
                        tracing::error!(error = %e, "cannot commit the dedupe journal's offset");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the dedupe journal; retrying");
                    if stopping {
                        return;
                    }
                    // Keep `pending`: it is written again on the next round.
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // Journaling is not on the ack path: write in rounds, not per request.
            if !stopping {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn write(&mut self, pending: &HashMap<SourceId, Vec<u8>>) -> std::io::Result<()> {
        for (source, bytes) in pending {
            if bytes.is_empty() {
                continue;
            }
            let path = journal_path(&self.dir, source);
            if !self.files.contains_key(source) {
                let file = if self.storage.exists(&path) {
                    self.storage.open_append(&path)?
                } else {
                    let f = self.storage.create(&path)?;
                    self.storage.sync_dir(&self.dir)?;
                    f
                };
                self.files.insert(source.clone(), JournalFile { file });
            }
            let Some(j) = self.files.get_mut(source) else {
                continue;
            };
            j.file.append(bytes)?;
            j.file.sync()?;
            let limit = self.limits.get(source).map_or(usize::MAX, |l| l.max_ids);
            if j.file.len() as usize / ENTRY > limit.saturating_mul(2).max(100_000) {
                self.compact(source)?;
            }
        }
        Ok(())
    }

    /// Rewrites a journal with only the entries the index can still hold.
    fn compact(&mut self, source: &SourceId) -> std::io::Result<()> {
        let Some(limit) = self.limits.get(source).copied() else {
            return Ok(());
        };
        let path = journal_path(&self.dir, source);
        let bytes = storage::read_all(self.storage.as_ref(), &path)?;
        let oldest = now_ms() - i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX / 2);
        let live: Vec<(u128, i64)> = parse_entries(&bytes)
            .filter(|(_, at)| *at >= oldest)
            .collect();
        let keep = &live[live.len().saturating_sub(limit.max_ids)..];
        let mut out = Vec::with_capacity(keep.len() * ENTRY);
        for (k, at) in keep {
            out.extend_from_slice(&entry(*k, *at));
        }
        self.files.remove(source);
        storage::write_atomic(self.storage.as_ref(), &path, &out)?;
        tracing::info!(%source, before = bytes.len() / ENTRY, after = keep.len(), "compacted the dedupe journal");
        Ok(())
    }
}
