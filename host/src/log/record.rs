//! The on-disk record format.
//!
//! ```text
//! frame  = body_len: u32 LE | crc32c(body): u32 LE | body
//! body   = version: u8 (= 1) | kind: u8 | event_type: u8 | flags: u8
//!        | offset: u64 | received_at_ms: i64 | dedupe_key: u128 | origin: u64
//!        | source_len: u16 | source | name_len: u16 | event_name | key_len: u16 | ordering_key
//!        | payload (the rest: JSON)
//! ```
//!
//! The header carries what consumers route on (kind, source, type, event name, ordering key) so
//! they never parse JSON to decide where a record goes. The record's own offset is inside the
//! checksummed body, so a reader can tell a stale or misplaced frame from the one it expects.

use bytes::Bytes;

use crate::ids::{Offset, SourceId};

pub const FORMAT_VERSION: u8 = 1;
pub const FRAME_HEADER: usize = 8;
const FIXED_BODY: usize = 44;
const OFFSET_AT: usize = FRAME_HEADER + 4;
/// No legitimate record comes near this; a larger length is a torn or corrupt frame.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

const FLAG_ORIGIN: u8 = 1;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// An accepted event; the payload is its enriched JSON.
    Event,
    /// An event the gateway refused inside an otherwise good batch; the payload is
    /// `{"reason": ..., "event": <what was sent>}`.
    Invalid,
    /// An event a plugin dropped on purpose; the payload is
    /// `{"plugin": ..., "version": ..., "reason": ..., "event": ...}`.
    Dropped,
    /// An entry of a dead-letter queue; the payload is `{"stage", "error", "event", ...}`.
    DeadLetter,
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Event => 0,
            RecordKind::Invalid => 1,
            RecordKind::Dropped => 2,
            RecordKind::DeadLetter => 3,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => RecordKind::Event,
            1 => RecordKind::Invalid,
            2 => RecordKind::Dropped,
            3 => RecordKind::DeadLetter,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Invalid => "invalid",
            RecordKind::Dropped => "dropped",
            RecordKind::DeadLetter => "dead_letter",
        }
    }
}

/// The Segment-spec message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
    /// Not known (invalid records).
    Unknown,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Track,
        EventType::Identify,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
            EventType::Unknown => "unknown",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            EventType::Unknown => 0,
            EventType::Track => 1,
            EventType::Identify => 2,
            EventType::Page => 3,
            EventType::Screen => 4,
            EventType::Group => 5,
            EventType::Alias => 6,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => EventType::Unknown,
            1 => EventType::Track,
            2 => EventType::Identify,
            3 => EventType::Page,
            4 => EventType::Screen,
            5 => EventType::Group,
            6 => EventType::Alias,
            _ => return None,
        })
    }
}

/// Everything about a record except its offset and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub kind: RecordKind,
    pub event_type: EventType,
    pub received_at_ms: i64,
    pub source: SourceId,
    /// `event` of a track, `name` of a page or screen; empty otherwise.
    pub event_name: String,
    /// `anonymousId` when present, else `userId`: events with the same key are delivered in
    /// order.
    pub ordering_key: String,
    /// 128-bit hash of the message id, 0 when the record takes no part in dedupe.
    pub dedupe_key: u128,
    /// For records of the processed log: the offset of the raw-log record they came from.
    pub origin: Option<Offset>,
}

/// A record read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub meta: RecordMeta,
    pub payload: Bytes,
}

/// A frame ready for the writer, which fills in the offset and checksum.
#[derive(Debug, Clone)]
pub struct EncodedRecord(Vec<u8>);

impl EncodedRecord {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn clamp_str(s: &str) -> &[u8] {
    // Header strings are length-prefixed with a u16; event names and keys this long are cut at
    // a char boundary (the full value stays in the payload).
    let max = u16::MAX as usize;
    if s.len() <= max {
        return s.as_bytes();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Encodes a record without its offset and checksum.
pub fn encode(meta: &RecordMeta, payload: &[u8]) -> EncodedRecord {
    let source = clamp_str(meta.source.as_str());
    let name = clamp_str(&meta.event_name);
    let key = clamp_str(&meta.ordering_key);
    let body_len = FIXED_BODY + 6 + source.len() + name.len() + key.len() + payload.len();
    let mut buf = Vec::with_capacity(FRAME_HEADER + body_len);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(FORMAT_VERSION);
    buf.push(meta.kind.to_u8());
    buf.push(meta.event_type.to_u8());
    buf.push(if meta.origin.is_some() {
        FLAG_ORIGIN
    } else {
        0
    });
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&meta.received_at_ms.to_le_bytes());
    buf.extend_from_slice(&meta.dedupe_key.to_le_bytes());
    buf.extend_from_slice(&meta.origin.map_or(0, |o| o.0).to_le_bytes());
    for s in [source, name, key] {
        buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
        buf.extend_from_slice(s);
    }
    buf.extend_from_slice(payload);
    EncodedRecord(buf)
}

/// Writes the offset and checksum into `record` and appends the frame to `out`.
pub fn seal_into(record: &EncodedRecord, offset: Offset, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&record.0);
    let frame = &mut out[start..];
    frame[OFFSET_AT..OFFSET_AT + 8].copy_from_slice(&offset.0.to_le_bytes());
    let crc = crc32c::crc32c(&frame[FRAME_HEADER..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes at a position are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is incomplete (the log ends inside it)")]
    Incomplete,
    #[error("the frame's checksum does not match its contents")]
    Checksum,
    #[error("the frame is malformed: {0}")]
    Malformed(&'static str),
}

/// Length of the frame starting at `buf[0]`, if its header is readable.
pub fn frame_len(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Incomplete);
    }
    let body = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(FIXED_BODY + 6..=MAX_BODY).contains(&body) {
        return Err(FrameError::Malformed("implausible length"));
    }
    Ok(FRAME_HEADER + body)
}

/// Decodes the frame at the start of `buf` (which must hold at least `frame_len` bytes).
pub fn decode(buf: &[u8]) -> Result<Record, FrameError> {
    let len = frame_len(buf)?;
    if buf.len() < len {
        return Err(FrameError::Incomplete);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME_HEADER..len];
    if crc32c::crc32c(body) != crc {
        return Err(FrameError::Checksum);
    }
    if body[0] != FORMAT_VERSION {
        return Err(FrameError::Malformed("unknown format version"));
    }
    let kind = RecordKind::from_u8(body[1]).ok_or(FrameError::Malformed("unknown kind"))?;
    let event_type =
        EventType::from_u8(body[2]).ok_or(FrameError::Malformed("unknown event type"))?;
    let flags = body[3];
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
    let offset = Offset(u64_at(4));
    let received_at_ms = u64_at(12) as i64;
    let dedupe_key = u128::from_le_bytes(body[20..36].try_into().unwrap_or([0; 16]));
    let origin = (flags & FLAG_ORIGIN != 0).then(|| Offset(u64_at(36)));
    let mut pos = FIXED_BODY;
    let mut take_str = || -> Result<String, FrameError> {
        let n = body
            .get(pos..pos + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or(FrameError::Malformed("header string length"))?;
        let s = body
            .get(pos + 2..pos + 2 + n)
            .ok_or(FrameError::Malformed("header string"))?;
        pos += 2 + n;
        String::from_utf8(s.to_vec()).map_err(|_| FrameError::Malformed("header string UTF-8"))
    };
    let source = take_str()?;
    let event_name = take_str()?;
    let ordering_key = take_str()?;
    Ok(Record {
        offset,
        meta: RecordMeta {
            kind,
            event_type,
            received_at_ms,
            source: SourceId::new(&source),
            event_name,
            ordering_key,
            dedupe_key,
            origin,
        },
        payload: Bytes::copy_from_slice(&body[pos..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn meta() -> RecordMeta {
        RecordMeta {
            kind: RecordKind::Event,
            event_type: EventType::Track,
            received_at_ms: 1_700_000_000_123,
            source: SourceId::new("web"),
            event_name: "Order Completed".into(),
            ordering_key: "anon-1".into(),
            dedupe_key: 0xdead_beef_u128 << 64 | 7,
            origin: Some(Offset(99)),
        }
    }

    #[test]
    fn round_trip() {
        let payload = br#"{"type":"track"}"#;
        let mut out = Vec::new();
        seal_into(&encode(&meta(), payload), Offset(42), &mut out);
        assert_eq!(frame_len(&out).unwrap(), out.len());
        let r = decode(&out).unwrap();
        assert_eq!(r.offset, Offset(42));
        assert_eq!(r.meta, meta());
        assert_eq!(&r.payload[..], payload);
    }

    #[test]
    fn corruption_is_detected() {
        let mut out = Vec::new();
        seal_into(&encode(&meta(), b"{}"), Offset(1), &mut out);
        let last = out.len() - 1;
        out[last] ^= 1;
        assert_eq!(decode(&out), Err(FrameError::Checksum));
        assert_eq!(decode(&out[..10]), Err(FrameError::Incomplete));
    }
}
