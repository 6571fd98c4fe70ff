//! The durable log: append-only segment files that hold every accepted event before it is
//! acknowledged.
//!
//! Guarantees:
//! - an append is acknowledged only after the fsync that covers it returned;
//! - offsets are dense and never reused; a reader sees records in offset order and only records
//!   that are durable (it never reads past the durable head, so nothing it sees can vanish at a
//!   power cut);
//! - on open, a torn tail of the last segment (a crash inside a write) is cut off; every record
//!   before it is kept;
//! - segment creation and deletion are made durable with a directory fsync;
//! - the size cap turns into [`AppendError::Full`] (503 at the gateway), never into deletion of
//!   records some consumer has not read.
//!
//! "Durable" means: on this node's disk. Until a replicated backend exists, losing the disk
//! loses the log.

mod offsets;
mod reader;
pub mod record;
mod segment;
pub mod sim;
pub mod storage;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::config::LogConfig;
use crate::ids::Offset;
use crate::telemetry::LogMetrics;
pub use offsets::OffsetStore;
pub use reader::LogReader;
use record::FrameError;
pub use record::{EncodedRecord, EventType, Record, RecordKind, RecordMeta};
use segment::SegmentInfo;
use storage::Storage;

/// Tunables of one log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub segment_bytes: u64,
    pub flush_interval: Duration,
    pub flush_bytes: usize,
    pub max_bytes: u64,
    /// Appends that may wait for the writer; beyond, appends fail fast with `Busy`.
    pub queue_capacity: usize,
    /// Zeros written ahead of the appends, this many bytes at a time (0: none; see
    /// [`storage::AppendFile::preallocate`]). Worth it where acks wait for the fsync (the raw
    /// log: [`PREALLOCATE_BYTES`]); elsewhere it only costs copying zeros.
    pub preallocate_bytes: u64,
}

impl From<&LogConfig> for LogOptions {
    fn from(c: &LogConfig) -> Self {
        LogOptions {
            segment_bytes: c.segment_bytes,
            flush_interval: c.flush_interval,
            flush_bytes: c.flush_bytes,
            max_bytes: c.max_bytes,
            queue_capacity: 4096,
            preallocate_bytes: 0,
        }
    }
}

/// Where the durable part of the log ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Offset the next record will get; every record below it is durable.
    pub next: Offset,
    /// The active segment and how many of its bytes are durable.
    pub segment_base: Offset,
    pub segment_len: u64,
}

/// Offsets given to one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    pub first: Offset,
    pub count: u64,
}

/// Why an append was not acknowledged. Nothing of a failed append is in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the log is at its size cap (log.max_bytes); consumers must catch up first")]
    Full,
    #[error("the disk holding the log is full")]
    NoSpace,
    #[error("too many appends are waiting for the log writer")]
    Busy,
    #[error("the log is not accepting writes (shutting down, or an fsync failed)")]
    Unavailable,
    #[error("writing the log failed: {0}")]
    Io(String),
}

impl AppendError {
    fn from_io(e: &io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AppendError::NoSpace
        } else {
            AppendError::Io(e.to_string())
        }
    }
}

/// Errors opening or reading a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("offset {requested} is no longer in the log (the oldest kept is {oldest})")]
    Deleted { requested: Offset, oldest: Offset },
    #[error("the log is corrupt at offset {offset} in {path}: {reason}")]
    Corrupt {
        offset: Offset,
        path: PathBuf,
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + use<'a> {
    move |source| LogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// State shared by the writer, the readers and the retention.
pub struct Shared {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    segments: Mutex<Vec<SegmentInfo>>,
    total_bytes: AtomicU64,
    healthy: AtomicBool,
    max_bytes: u64,
    head: Mutex<Head>,
    head_cv: Condvar,
    head_tx: watch::Sender<Head>,
    metrics: LogMetrics,
    /// Deleted segments kept to be written over by the next ones, when the log writes ahead of
    /// its appends ([`LogOptions::preallocate_bytes`]): reusing a file's blocks saves writing
    /// its zeros again, about a tenth of the CPU of batch ingest.
    spares: Mutex<Vec<PathBuf>>,
    recycle: bool,
}

/// Deleted segments kept for reuse, at most.
const MAX_SPARES: usize = 2;

impl Shared {
    fn publish(&self, head: Head) {
        *self.head.lock() = head;
        self.head_cv.notify_all();
        self.head_tx.send_replace(head);
    }

    pub fn head(&self) -> Head {
        *self.head.lock()
    }

    /// Blocks until the head passes `offset` or `timeout` elapses; true if it passed.
    pub fn wait_beyond(&self, offset: Offset, timeout: Duration) -> bool {
        let mut head = self.head.lock();
        if head.next > offset {
            return true;
        }
        self.head_cv.wait_for(&mut head, timeout);
        head.next > offset
    }

    /// Deletes every segment whose records all lie below `offset` (the active segment is
    /// always kept). Returns how many segments were deleted.
    pub fn delete_before(&self, offset: Offset) -> Result<usize, LogError> {
        let doomed: Vec<SegmentInfo> = {
            let mut segments = self.segments.lock();
            let mut n = 0;
            while n + 1 < segments.len() && segments[n + 1].base <= offset {
                n += 1;
            }
            segments.drain(..n).collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        for s in &doomed {
            let mut spares = self.spares.lock();
            if self.recycle && spares.len() < MAX_SPARES {
                let spare = self.dir.join(segment::spare_name(s.base));
                self.storage
                    .rename(&s.path, &spare)
                    .map_err(io_err("keep segment for reuse", &s.path))?;
                spares.push(spare);
            } else {
                self.storage
                    .remove(&s.path)
                    .map_err(io_err("delete segment", &s.path))?;
            }
            drop(spares);
            self.total_bytes.fetch_sub(s.len, Ordering::AcqRel);
            tracing::debug!(segment = %s.path.display(), "deleted a segment every consumer is past");
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(io_err("sync directory", &self.dir))?;
        let m = &self.metrics;
        m.size_bytes
            .set(self.total_bytes.load(Ordering::Acquire) as i64);
        m.segments.set(self.segments.lock().len() as i64);
        Ok(doomed.len())
    }

    /// A reader starting at `from`.
    pub fn reader(self: &Arc<Self>, from: Offset) -> LogReader {
        LogReader::new(self.clone(), from)
    }

    /// Offset of the oldest record still kept.
    pub fn oldest(&self) -> Offset {
        self.segments.lock().first().map_or(Offset(0), |s| s.base)
    }

    /// Waits until the head passes `offset`.
    pub async fn wait_beyond_async(&self, offset: Offset) {
        let mut rx = self.head_tx.subscribe();
        let _ = rx.wait_for(|h| h.next > offset).await;
    }
}

/// Sends appends to the writer. Cheap to clone; the writer stops once every appender is gone.
#[derive(Clone)]
pub struct Appender {
    tx: SyncSender<writer::AppendRequest>,
    shared: Arc<Shared>,
}

impl Appender {
    /// Appends `records` and resolves once they are durable, with their offsets.
    pub async fn append(&self, records: Vec<EncodedRecord>) -> Result<OffsetRange, AppendError> {
        let bytes: usize = records.iter().map(EncodedRecord::len).sum();
        self.accepting(bytes)?;
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(writer::AppendRequest {
            records,
            bytes,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AppendError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(AppendError::Unavailable),
        }
        rx.await.unwrap_or(Err(AppendError::Unavailable))
    }
}

impl Appender {
    /// Appends from a blocking thread (the pipeline, consumers): waits for room in the queue
    /// instead of failing with `Busy`, then for the fsync.
    pub fn append_blocking(&self, records: Vec<EncodedRecord>) -> Result<OffsetRange, AppendError> {
        let bytes: usize = records.iter().map(EncodedRecord::len).sum();
        self.accepting(bytes)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::AppendRequest {
                records,
                bytes,
                reply,
            })
            .map_err(|_| AppendError::Unavailable)?;
        rx.blocking_recv().unwrap_or(Err(AppendError::Unavailable))
    }

    /// Whether an append of `bytes` would be refused right now (unhealthy log, size cap).
    pub fn accepting(&self, bytes: usize) -> Result<(), AppendError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(AppendError::Unavailable);
        }
        if self.shared.total_bytes.load(Ordering::Acquire) + bytes as u64 > self.shared.max_bytes {
            return Err(AppendError::Full);
        }
        Ok(())
    }
}

/// One log directory (`raw` or `processed`).
pub struct Log {
    shared: Arc<Shared>,
    appender: Option<Appender>,
    writer: Option<JoinHandle<()>>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, cuts a torn tail, and starts its writer.
    pub fn open(
        dir: &Path,
        storage: Arc<dyn Storage>,
        options: &LogOptions,
        metrics: LogMetrics,
    ) -> Result<Log, LogError> {
        let (shared, file) = recover(dir, storage.clone(), options, metrics, true)?;
        let file = file.unwrap_or_else(|| unreachable!("a writable open returns the file"));
        let (tx, rx) = sync_channel(options.queue_capacity);
        let head = shared.head();
        let w = writer::Writer {
            storage,
            shared: shared.clone(),
            file,
            segment_base: head.segment_base,
            next: head.next,
            segment_bytes: options.segment_bytes,
            flush_interval: options.flush_interval,
            flush_bytes: options.flush_bytes,
            max_bytes: options.max_bytes,
            preallocate_bytes: options.preallocate_bytes.min(options.segment_bytes),
        };
        let writer = std::thread::Builder::new()
            .name("weir-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(io_err("start the writer for", dir))?;
        Ok(Log {
            appender: Some(Appender {
                tx,
                shared: shared.clone(),
            }),
            shared,
            writer: Some(writer),
        })
    }

    /// Opens a log for reading only: no writer, nothing on disk changed (a torn tail is just not
    /// read). Safe while a router is writing the same log.
    pub fn open_read_only(dir: &Path, storage: Arc<dyn Storage>) -> Result<Log, LogError> {
        let options = LogOptions {
            segment_bytes: u64::MAX,
            flush_interval: Duration::ZERO,
            flush_bytes: 0,
            max_bytes: u64::MAX,
            queue_capacity: 1,
            preallocate_bytes: 0,
        };
        let (shared, _) = recover(dir, storage, &options, LogMetrics::detached(), false)?;
        Ok(Log {
            shared,
            appender: None,
            writer: None,
        })
    }

    /// A handle to append with.
    ///
    /// # Panics
    /// On a read-only log (a programming error, not an input one).
    pub fn appender(&self) -> Appender {
        self.appender
            .clone()
            .expect("appender() called on a log opened read-only")
    }

    /// A reader starting at `from`.
    pub fn reader(&self, from: Offset) -> LogReader {
        self.shared.reader(from)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn head(&self) -> Head {
        self.shared.head()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Offset of the oldest record still kept.
    pub fn oldest(&self) -> Offset {
        self.shared.oldest()
    }

    pub fn size_bytes(&self) -> u64 {
        self.shared.total_bytes.load(Ordering::Acquire)
    }

    /// Base offset and length of each segment, oldest first (the last one is active).
    pub fn segments(&self) -> Vec<(Offset, u64)> {
        self.shared
            .segments
            .lock()
            .iter()
            .map(|s| (s.base, s.len))
            .collect()
    }

    /// False once an fsync failed: the log refuses writes until the router restarts.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    /// Deletes every segment whose records all lie below `offset`; see [`Shared::delete_before`].
    pub fn delete_before(&self, offset: Offset) -> Result<usize, LogError> {
        self.shared.delete_before(offset)
    }

    /// Stops the writer after it has committed everything queued. Every [`Appender`] clone
    /// must be dropped first, or this waits for them.
    pub fn close(mut self) {
        self.appender = None;
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }
}

/// How far ahead of its appends the raw log writes zeros (see
/// [`storage::AppendFile::preallocate`]); a finished segment is trimmed back to its records.
pub const PREALLOCATE_BYTES: u64 = 1 << 20;

/// The shared state of a recovered log and, when opened for writing, its active segment.
type Recovered = (Arc<Shared>, Option<Box<dyn storage::AppendFile>>);

/// Lists the segments, checks the last one and (when `repair`) cuts its torn tail.
fn recover(
    dir: &Path,
    storage: Arc<dyn Storage>,
    options: &LogOptions,
    metrics: LogMetrics,
    repair: bool,
) -> Result<Recovered, LogError> {
    if repair {
        storage
            .create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
    }
    let mut segments = segment::list(storage.as_ref(), dir).map_err(io_err("list", dir))?;
    if segments.is_empty() && repair {
        let path = dir.join(segment::file_name(Offset(0)));
        storage
            .create(&path)
            .map_err(io_err("create segment", &path))?;
        storage
            .sync_dir(dir)
            .map_err(io_err("sync directory", dir))?;
        segments.push(SegmentInfo {
            base: Offset(0),
            path,
            len: 0,
        });
    }
    let mut head = Head {
        next: Offset(0),
        segment_base: Offset(0),
        segment_len: 0,
    };
    let mut file = None;
    if let Some(last) = segments.last_mut() {
        let reader = storage
            .open_read(&last.path)
            .map_err(io_err("open segment", &last.path))?;
        let end = segment::scan(reader, last.base).map_err(io_err("read segment", &last.path))?;
        // Past the last record: zeros written ahead, or the older records of a reused
        // segment (their offsets are below this segment's first, so the scan stops at them):
        // neither is a torn write.
        let written_ahead = end.valid_len < last.len
            && (end.torn == Some(FrameError::Malformed(segment::STALE))
                || segment::zeros_from(storage.as_ref(), &last.path, end.valid_len)
                    .map_err(io_err("read segment", &last.path))?);
        if end.valid_len < last.len && !written_ahead {
            let reason = end
                .torn
                .as_ref()
                .map_or_else(|| "trailing bytes".to_string(), ToString::to_string);
            if repair {
                tracing::warn!(
                    segment = %last.path.display(),
                    kept_bytes = end.valid_len,
                    cut_bytes = last.len - end.valid_len,
                    next_offset = end.next.0,
                    %reason,
                    "cut a torn tail off the log (a crash interrupted a write); every record before it is intact"
                );
            }
        }
        if repair {
            let mut f = storage
                .open_append(&last.path)
                .map_err(io_err("open segment", &last.path))?;
            if f.len() != end.valid_len {
                // Zeros written ahead (the process stopped before the segment was finished)
                // or a torn tail: either way the file goes back to its records and grows
                // again from there.
                f.truncate(end.valid_len)
                    .and_then(|()| f.sync())
                    .map_err(io_err("truncate segment", &last.path))?;
            }
            f.preallocate(options.preallocate_bytes.min(options.segment_bytes));
            last.len = end.valid_len;
            file = Some(f);
        }
        head = Head {
            next: end.next,
            segment_base: last.base,
            segment_len: end.valid_len,
        };
    }
    // Spares of an earlier run: kept if this log reuses segments, else deleted.
    let mut spares = Vec::new();
    if repair {
        let recycle = options.preallocate_bytes > 0;
        for spare in segment::list_spares(storage.as_ref(), dir).map_err(io_err("list", dir))? {
            if recycle && spares.len() < MAX_SPARES {
                spares.push(spare);
            } else {
                storage
                    .remove(&spare)
                    .map_err(io_err("delete spare segment", &spare))?;
            }
        }
    }
    let total: u64 = segments.iter().map(|s| s.len).sum();
    metrics.size_bytes.set(total as i64);
    metrics.segments.set(segments.len() as i64);
    metrics.head.set(head.next.0 as i64);
    let (head_tx, _) = watch::channel(head);
    let shared = Arc::new(Shared {
        dir: dir.to_owned(),
        storage,
        segments: Mutex::new(segments),
        total_bytes: AtomicU64::new(total),
        healthy: AtomicBool::new(true),
        max_bytes: options.max_bytes,
        head: Mutex::new(head),
        head_cv: Condvar::new(),
        head_tx,
        metrics,
        spares: Mutex::new(spares),
        recycle: options.preallocate_bytes > 0,
    });
    Ok((shared, file))
}

#[cfg(test)]
mod tests;
