//! Sequential reading of a log from an offset, never past the durable head.

use std::sync::Arc;

use super::record::{self, Record};
use super::segment::FrameReader;
use super::{LogError, Shared, io_err};
use crate::ids::Offset;

/// Reads records in offset order. Blocking I/O: use it from a blocking thread.
pub struct LogReader {
    shared: Arc<Shared>,
    next: Offset,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    base: Offset,
    path: std::path::PathBuf,
    frames: FrameReader,
    /// True once the segment stopped being the active one: its length is final.
    complete: bool,
}

impl LogReader {
    pub(super) fn new(shared: Arc<Shared>, from: Offset) -> Self {
        LogReader {
            shared,
            next: from,
            open: None,
        }
    }

    /// Offset of the next record this reader returns.
    pub fn position(&self) -> Offset {
        self.next
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Up to `max` durable records from the current position; empty when the reader is at the
    /// head.
    pub fn read_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        while out.len() < max {
            let head = self.shared.head();
            let next = self.next;
            if next >= head.next {
                break;
            }
            let seg = open_segment(&mut self.open, &self.shared, next)?;
            // The active segment may hold bytes past the durable head (a write whose fsync has
            // not returned, or one that failed and will be cut): never read those. Once a
            // segment is no longer active its length is final.
            if seg.base == head.segment_base {
                seg.frames.set_limit(head.segment_len);
            } else if !seg.complete {
                let len = seg
                    .frames
                    .file_len()
                    .map_err(io_err("read segment", &seg.path))?;
                seg.frames.set_limit(len);
                seg.complete = true;
            }
            let frame = seg
                .frames
                .next_frame()
                .map_err(io_err("read segment", &seg.path))?;
            let record = match frame {
                None if seg.complete => {
                    // End of this segment: the next record starts the following one.
                    let path = seg.path.clone();
                    self.open = None;
                    let follows = self.shared.segments.lock().iter().any(|s| s.base == next);
                    if !follows {
                        return Err(LogError::Corrupt {
                            offset: next,
                            path,
                            reason: "no segment starts where this one ends".into(),
                        });
                    }
                    continue;
                }
                None => {
                    return Err(LogError::Corrupt {
                        offset: next,
                        path: seg.path.clone(),
                        reason: "the durable head is past the end of the active segment".into(),
                    });
                }
                Some(Err(e)) => {
                    return Err(LogError::Corrupt {
                        offset: next,
                        path: seg.path.clone(),
                        reason: e.to_string(),
                    });
                }
                Some(Ok(bytes)) => record::decode(bytes).map_err(|e| LogError::Corrupt {
                    offset: next,
                    path: seg.path.clone(),
                    reason: e.to_string(),
                })?,
            };
            seg.frames.advance();
            if record.offset < next {
                // Seeking forward inside the segment to the requested start.
                continue;
            }
            if record.offset != next {
                return Err(LogError::Corrupt {
                    offset: next,
                    path: seg.path.clone(),
                    reason: format!("found offset {} instead", record.offset),
                });
            }
            self.next = self.next.next();
            out.push(record);
        }
        Ok(out)
    }
}

/// The open segment that holds `next`, opening it if needed.
fn open_segment<'a>(
    open: &'a mut Option<OpenSegment>,
    shared: &Shared,
    next: Offset,
) -> Result<&'a mut OpenSegment, LogError> {
    if open.is_none() {
        let segments = shared.segments.lock();
        let Some(info) = segments.iter().rev().find(|s| s.base <= next) else {
            let oldest = segments.first().map_or(Offset(0), |s| s.base);
            return Err(LogError::Deleted {
                requested: next,
                oldest,
            });
        };
        let info = info.clone();
        drop(segments);
        let file = shared
            .storage
            .open_read(&info.path)
            .map_err(io_err("open segment", &info.path))?;
        // The limit is set before every read (see `read_batch`).
        *open = Some(OpenSegment {
            base: info.base,
            path: info.path,
            frames: FrameReader::new(file, 0, 0),
            complete: false,
        });
    }
    Ok(open
        .as_mut()
        .unwrap_or_else(|| unreachable!("opened above")))
}
