//! The single writer thread of a log: group commit.
//!
//! Appends from every connection queue on one bounded channel. The writer takes everything that
//! is queued (up to `flush_bytes`), writes it with one `write`, makes it durable with one
//! `fdatasync`, publishes the new durable head and only then completes the appends' acks. While
//! an fsync runs, new appends queue up and go into the next one, which starts as soon as the
//! previous returns: under load, one fsync covers many requests and no timer is waited on.
//!
//! A failed write (a full disk) is cut off the file and fails only the appends it carried. A
//! failed fsync leaves the state of the data unknown (the kernel may have dropped the dirty
//! pages), so the log stops accepting writes until restarted, when recovery re-reads the disk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::record::{self, EncodedRecord};
use super::segment::{self, SegmentInfo};
use super::storage::{AppendFile, Storage};
use super::{AppendError, Head, OffsetRange, Shared};
use crate::ids::Offset;

/// One caller's records, acknowledged together.
pub struct AppendRequest {
    pub records: Vec<EncodedRecord>,
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<OffsetRange, AppendError>>,
}

pub struct Writer {
    pub storage: Arc<dyn Storage>,
    pub shared: Arc<Shared>,
    pub file: Box<dyn AppendFile>,
    pub segment_base: Offset,
    pub next: Offset,
    pub segment_bytes: u64,
    pub flush_interval: Duration,
    pub flush_bytes: usize,
    pub max_bytes: u64,
    /// See [`super::LogOptions::preallocate_bytes`].
    pub preallocate_bytes: u64,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<AppendRequest>) {
        let mut buf = Vec::with_capacity(self.flush_bytes.min(16 << 20));
        let mut batch: Vec<AppendRequest> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut bytes = first.bytes;
            batch.push(first);
            let linger_until = Instant::now() + self.flush_interval;
            while bytes < self.flush_bytes {
                let next = match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= linger_until {
                            break;
                        }
                        match rx.recv_timeout(linger_until - now) {
                            Ok(r) => r,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                };
                bytes += next.bytes;
                batch.push(next);
            }
            self.commit(&mut batch, &mut buf);
            batch.clear();
            buf.clear();
        }
        // Closed: leave the active segment holding its records only.
        if let Err(e) = self.file.trim() {
            tracing::warn!(error = %e, "cannot trim the active log segment at close; the next start will");
        }
    }

    /// Writes and syncs the accepted part of `batch`, then answers every request in it.
    fn commit(&mut self, batch: &mut Vec<AppendRequest>, buf: &mut Vec<u8>) {
        if !self.shared.healthy.load(Ordering::Acquire) {
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(AppendError::Unavailable));
            }
            return;
        }
        // Size cap: refuse what does not fit, keep the order of what does.
        let mut accepted = Vec::with_capacity(batch.len());
        let mut size = self.shared.total_bytes.load(Ordering::Acquire);
        for req in batch.drain(..) {
            if size + req.bytes as u64 > self.max_bytes {
                let _ = req.reply.send(Err(AppendError::Full));
            } else {
                size += req.bytes as u64;
                accepted.push(req);
            }
        }
        if accepted.is_empty() {
            return;
        }
        if self.file.len() >= self.segment_bytes
            && let Err(e) = self.roll()
        {
            tracing::error!(error = %e, "cannot start a new log segment");
            for req in accepted {
                let _ = req.reply.send(Err(AppendError::from_io(&e)));
            }
            return;
        }

        let first = self.next;
        let mut ranges = Vec::with_capacity(accepted.len());
        let mut next = first;
        for req in &accepted {
            let start = next;
            for r in &req.records {
                record::seal_into(r, next, buf);
                next = next.next();
            }
            ranges.push(OffsetRange {
                first: start,
                count: next.0 - start.0,
            });
        }
        let before = self.file.len();
        if let Err(e) = self.file.append(buf) {
            // The file is back at `before` (AppendFile contract); nothing of this batch is in
            // the log, so offsets are not consumed.
            tracing::warn!(error = %e, bytes = buf.len(), "log write failed");
            if self.file.len() != before && self.file.truncate(before).is_err() {
                self.shared.healthy.store(false, Ordering::Release);
            }
            for req in accepted {
                let _ = req.reply.send(Err(AppendError::from_io(&e)));
            }
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.file.sync() {
            tracing::error!(error = %e, "log fsync failed; refusing writes until restart");
            self.shared.healthy.store(false, Ordering::Release);
            for req in accepted {
                let _ = req.reply.send(Err(AppendError::Unavailable));
            }
            return;
        }
        let m = &self.shared.metrics;
        m.fsync_seconds.observe(started.elapsed().as_secs_f64());
        m.appended_records.inc_by(next.0 - first.0);
        m.appended_bytes.inc_by(buf.len() as u64);
        self.next = next;
        let total = self
            .shared
            .total_bytes
            .fetch_add(buf.len() as u64, Ordering::AcqRel)
            + buf.len() as u64;
        m.size_bytes.set(total as i64);
        m.head.set(next.0 as i64);
        self.shared.publish(Head {
            next,
            segment_base: self.segment_base,
            segment_len: self.file.len(),
        });
        for (req, range) in accepted.into_iter().zip(ranges) {
            let _ = req.reply.send(Ok(range));
        }
    }

    /// Starts a new segment at the next offset. The current one is already synced (every
    /// commit syncs before acking); only its zeros written ahead are given back.
    fn roll(&mut self) -> std::io::Result<()> {
        let path = self.shared.dir.join(segment::file_name(self.next));
        let finished_len = self.file.len();
        // Durably, before the next segment exists: only the last segment may end in zeros
        // (readers take a finished segment's file size as its end).
        self.file.trim()?;
        let spare = self.shared.spares.lock().pop();
        let mut file = match spare {
            Some(spare) => self.storage.reuse(&spare, &path)?,
            None => self.storage.create(&path)?,
        };
        file.preallocate(self.preallocate_bytes);
        self.storage.sync_dir(&self.shared.dir)?;
        self.file = file;
        self.segment_base = self.next;
        let mut segments = self.shared.segments.lock();
        if let Some(last) = segments.last_mut() {
            last.len = finished_len;
        }
        segments.push(SegmentInfo {
            base: self.next,
            path,
            len: 0,
        });
        self.shared.metrics.segments.set(segments.len() as i64);
        drop(segments);
        self.shared.publish(Head {
            next: self.next,
            segment_base: self.segment_base,
            segment_len: 0,
        });
        Ok(())
    }
}
