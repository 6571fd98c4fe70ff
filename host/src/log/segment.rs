//! Segment files: naming, listing and the recovery scan that cuts a torn tail.
//!
//! A segment is named after the offset of its first record (`00000000000000001234.seg`), so the
//! segment holding an offset is found from the directory listing alone.

use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, FrameError};
use super::storage::{ReadFile, Storage};
use crate::ids::Offset;

const SUFFIX: &str = ".seg";
/// A deleted segment kept to be written over as a later one (see `Shared::delete_before`).
const SPARE_SUFFIX: &str = ".spare";

/// A segment file of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base: Offset,
    pub path: PathBuf,
    /// Bytes in the file (for the active segment: as of the last durable write).
    pub len: u64,
}

pub fn file_name(base: Offset) -> String {
    format!("{:020}{SUFFIX}", base.0)
}

/// The name a deleted segment is kept under until it is reused.
pub fn spare_name(base: Offset) -> String {
    format!("{:020}{SPARE_SUFFIX}", base.0)
}

/// The spare segments in `dir`.
pub fn list_spares(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut spares: Vec<PathBuf> = storage
        .list(dir)?
        .into_iter()
        .filter(|name| name.ends_with(SPARE_SUFFIX))
        .map(|name| dir.join(name))
        .collect();
    spares.sort();
    Ok(spares)
}

fn parse_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The segments in `dir`, oldest first, with their current lengths.
pub fn list(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<SegmentInfo>> {
    let mut segments = Vec::new();
    for name in storage.list(dir)? {
        if let Some(base) = parse_name(&name) {
            let path = dir.join(&name);
            let len = match storage.open_read(&path).and_then(|f| f.size()) {
                Ok(len) => len,
                // Deleted since the listing: a running router's retention, seen by a
                // read-only open (`weir log dump`). It is no longer part of the log.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            segments.push(SegmentInfo { base, path, len });
        }
    }
    segments.sort_by_key(|s| s.base);
    Ok(segments)
}

/// Whether `path` holds only zero bytes from `pos` to its end: zeros written ahead of the
/// appends (see [`super::storage::AppendFile::preallocate`]), not a torn write.
pub fn zeros_from(storage: &dyn Storage, path: &Path, pos: u64) -> io::Result<bool> {
    let file = storage.open_read(path)?;
    let end = file.size()?;
    let mut buf = vec![0; CHUNK];
    let mut at = pos;
    while at < end {
        let want = ((end - at) as usize).min(CHUNK);
        let got = file.read_at(&mut buf[..want], at)?;
        if got == 0 {
            break;
        }
        if buf[..got].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += got as u64;
    }
    Ok(true)
}

/// Why a scan stopped at a record of an earlier segment (in a reused file).
pub const STALE: &str = "a record older than the segment (the file is reused)";

/// Where a scan of a segment stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset the next record would get.
    pub next: Offset,
    /// Bytes of whole, valid frames from the start of the file.
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub torn: Option<FrameError>,
}

/// Walks the frames of a segment, checking each checksum and offset, and reports where the
/// valid prefix ends.
pub fn scan(file: Box<dyn ReadFile>, base: Offset) -> io::Result<ScanEnd> {
    let len = file.size()?;
    let mut reader = FrameReader::new(file, 0, len);
    let mut next = base;
    loop {
        match reader.next_frame()? {
            None => {
                return Ok(ScanEnd {
                    next,
                    valid_len: reader.pos(),
                    torn: None,
                });
            }
            Some(Err(e)) => {
                return Ok(ScanEnd {
                    next,
                    valid_len: reader.pos(),
                    torn: Some(e),
                });
            }
            Some(Ok(frame)) => match record::decode(frame) {
                Ok(r) if r.offset == next => {
                    reader.advance();
                    next = next.next();
                }
                Ok(r) => {
                    // A record from before this segment's first offset: the file is a reused
                    // one and this is where its new records end.
                    let why = if r.offset < base {
                        STALE
                    } else {
                        "unexpected offset"
                    };
                    return Ok(ScanEnd {
                        next,
                        valid_len: reader.pos(),
                        torn: Some(FrameError::Malformed(why)),
                    });
                }
                Err(e) => {
                    return Ok(ScanEnd {
                        next,
                        valid_len: reader.pos(),
                        torn: Some(e),
                    });
                }
            },
        }
    }
}

/// Buffered, frame-at-a-time reading of a segment up to a byte limit.
pub struct FrameReader {
    file: Box<dyn ReadFile>,
    limit: u64,
    buf: Vec<u8>,
    /// File position of `buf[start]`.
    pos: u64,
    start: usize,
    pending: usize,
}

const CHUNK: usize = 1 << 20;

impl FrameReader {
    pub fn new(file: Box<dyn ReadFile>, pos: u64, limit: u64) -> Self {
        FrameReader {
            file,
            limit,
            buf: Vec::new(),
            pos,
            start: 0,
            pending: 0,
        }
    }

    /// File position of the next frame.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub fn file_len(&self) -> io::Result<u64> {
        self.file.size()
    }

    /// Ensures `n` bytes from the current position are buffered; false if the limit comes first.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.buf.len() - self.start >= n {
            return Ok(true);
        }
        if self.pos + n as u64 > self.limit {
            return Ok(false);
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let want = (n.max(CHUNK) as u64).min(self.limit - self.pos) as usize;
        while self.buf.len() < want {
            let have = self.buf.len();
            self.buf.resize(want, 0);
            let got = self
                .file
                .read_at(&mut self.buf[have..], self.pos + have as u64)?;
            self.buf.truncate(have + got);
            if got == 0 {
                break;
            }
        }
        Ok(self.buf.len() >= n)
    }

    /// The next whole frame's bytes, `None` at the limit, or why the bytes there are no frame.
    /// Call [`advance`](Self::advance) to move past a frame once it is used.
    pub fn next_frame(&mut self) -> io::Result<Option<Result<&[u8], FrameError>>> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        if !self.fill(record::FRAME_HEADER)? {
            return Ok(Some(Err(FrameError::Incomplete)));
        }
        let len = match record::frame_len(&self.buf[self.start..]) {
            Ok(l) => l,
            Err(e) => return Ok(Some(Err(e))),
        };
        if !self.fill(len)? {
            return Ok(Some(Err(FrameError::Incomplete)));
        }
        self.pending = len;
        Ok(Some(Ok(&self.buf[self.start..self.start + len])))
    }

    pub fn advance(&mut self) {
        self.start += self.pending;
        self.pos += self.pending as u64;
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_offset() {
        assert_eq!(file_name(Offset(42)), "00000000000000000042.seg");
        assert_eq!(parse_name("00000000000000000042.seg"), Some(Offset(42)));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("00000000000000000042.seg.tmp"), None);
    }
}
