//! The byte layout of the log, as specified in `FORMAT.md`: segment headers, batch frames
//! and records, each protected by a CRC32C. Encoding appends to a buffer; decoding borrows
//! from one and never trusts a length it has not checked.

use bytes::Bytes;
use cairn_core::{EventData, Metadata, Revision, StreamMetadata, Timestamp};
use std::borrow::Cow;
use std::time::Duration;
use uuid::Uuid;

/// The format version written by this build; files of another version are refused.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Magic bytes that open every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNSEG";
/// The length of a segment's header; the first batch starts right after it.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 64;

/// The magic number of a batch frame.
pub(crate) const BATCH_MAGIC: u32 = 0xCA1B_BA7C;
/// The length of a batch frame's header.
pub(crate) const BATCH_HEADER_LEN: usize = 32;
/// Batch flag: everything written before this batch was durable when it was written.
pub(crate) const PRIOR_DURABLE: u32 = 1;
/// Batch flag: everything written before the batch preceding this one was durable when this
/// one was written (the writer flushes one batch while it writes the next).
pub(crate) const PRIOR_BUT_ONE_DURABLE: u32 = 2;
/// Batch flag: a gap frame, which stands for `count` consecutive batches a scavenge removed
/// entirely; it holds one removed record.
pub(crate) const GAP: u32 = 4;

/// The length of every record's common header (crc, length, kind, flags, stream length).
const RECORD_PREFIX_LEN: usize = 12;
/// The fixed part of an event record, before its variable-length fields.
pub(crate) const EVENT_FIXED_LEN: usize = 56;
const METADATA_FIXED_LEN: usize = 40;
const DELETE_FIXED_LEN: usize = 24;
const TOMBSTONE_FIXED_LEN: usize = 16;

const KIND_EVENT: u8 = 1;
const KIND_METADATA: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_TOMBSTONE: u8 = 4;
const KIND_REMOVED: u8 = 5;
/// The fixed part of a removed record, before its summary.
const REMOVED_FIXED_LEN: usize = 16;

const HAS_MAX_COUNT: u8 = 1;
const HAS_MAX_AGE: u8 = 2;
const HAS_TRUNCATE_BEFORE: u8 = 4;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("the bytes end before the frame does")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("bad magic number")]
    Magic,
    #[error("impossible length field")]
    Length,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("text field is not valid UTF-8")]
    Utf8,
    #[error("unsupported format version {0}")]
    Version(u32),
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn put_u16(buf: &mut Vec<u8>, value: u16) {
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, FormatError> {
    let raw = bytes.get(at..at + 2).ok_or(FormatError::Truncated)?;
    let mut array = [0u8; 2];
    array.copy_from_slice(raw);
    Ok(u16::from_le_bytes(array))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, FormatError> {
    let raw = bytes.get(at..at + 4).ok_or(FormatError::Truncated)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(raw);
    Ok(u32::from_le_bytes(array))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, FormatError> {
    let raw = bytes.get(at..at + 8).ok_or(FormatError::Truncated)?;
    let mut array = [0u8; 8];
    array.copy_from_slice(raw);
    Ok(u64::from_le_bytes(array))
}

/// Encodes the 64-byte header of the segment that starts at global offset `base`.
pub(crate) fn encode_segment_header(base: u64, size: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    buf.extend_from_slice(&SEGMENT_MAGIC);
    put_u32(&mut buf, FORMAT_VERSION);
    put_u32(&mut buf, 0);
    put_u64(&mut buf, base);
    put_u64(&mut buf, size);
    let checksum = crc(&buf);
    put_u32(&mut buf, checksum);
    buf.resize(SEGMENT_HEADER_LEN as usize, 0);
    buf
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) base: u64,
    pub(crate) size: u64,
}

pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
    let fixed = bytes.get(..36).ok_or(FormatError::Truncated)?;
    if fixed.get(..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(FormatError::Magic);
    }
    if crc(fixed.get(..32).ok_or(FormatError::Truncated)?) != u32_at(fixed, 32)? {
        return Err(FormatError::Checksum);
    }
    let version = u32_at(fixed, 8)?;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    Ok(SegmentHeader {
        base: u64_at(fixed, 16)?,
        size: u64_at(fixed, 24)?,
    })
}

/// Starts a batch frame in `buf`; [`finish_batch`] fills in its header once the records
/// are in.
pub(crate) fn begin_batch(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.resize(start + BATCH_HEADER_LEN, 0);
    start
}

/// Completes the batch frame that begins at `start` of `buf` and ends at `end`, holding
/// `count` records.
pub(crate) fn finish_batch(
    buf: &mut [u8],
    start: usize,
    end: usize,
    count: u32,
    sequence: u64,
    flags: u32,
) {
    let len = u32::try_from(end - start).unwrap_or(u32::MAX);
    let mut header = Vec::with_capacity(BATCH_HEADER_LEN);
    put_u32(&mut header, 0);
    put_u32(&mut header, BATCH_MAGIC);
    put_u32(&mut header, len);
    put_u32(&mut header, count);
    put_u64(&mut header, sequence);
    put_u32(&mut header, flags);
    put_u32(&mut header, 0);
    let checksum = crc(header.get(4..).unwrap_or_default());
    header.splice(0..4, checksum.to_le_bytes());
    if let Some(slot) = buf.get_mut(start..start + BATCH_HEADER_LEN) {
        slot.copy_from_slice(&header);
    }
}

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    /// The whole frame's length, header included.
    pub(crate) len: u32,
    pub(crate) count: u32,
    pub(crate) sequence: u64,
    pub(crate) flags: u32,
}

pub(crate) fn decode_batch_header(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = bytes
        .get(..BATCH_HEADER_LEN)
        .ok_or(FormatError::Truncated)?;
    if u32_at(header, 4)? != BATCH_MAGIC {
        return Err(FormatError::Magic);
    }
    if crc(header.get(4..).unwrap_or_default()) != u32_at(header, 0)? {
        return Err(FormatError::Checksum);
    }
    let len = u32_at(header, 8)?;
    if (len as usize) < BATCH_HEADER_LEN {
        return Err(FormatError::Length);
    }
    Ok(BatchHeader {
        len,
        count: u32_at(header, 12)?,
        sequence: u64_at(header, 16)?,
        flags: u32_at(header, 24)?,
    })
}

/// Whether `bytes` look like the place where a batch header would be written but none
/// was: all zeros.
pub(crate) fn is_unwritten(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn text_len(text: &str) -> u16 {
    u16::try_from(text.len()).unwrap_or(u16::MAX)
}

/// Appends an event record for `data` at `revision` of `stream` to `buf`.
pub(crate) fn encode_event(
    buf: &mut Vec<u8>,
    stream: &str,
    revision: Revision,
    recorded: Timestamp,
    data: &EventData,
) {
    let start = buf.len();
    let metadata_len: usize = data
        .metadata
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum();
    buf.reserve(
        EVENT_FIXED_LEN
            + stream.len()
            + data.event_type.len()
            + data.content_type.len()
            + metadata_len
            + data.payload.len(),
    );
    // The fixed part is assembled on the stack and copied once; the crc and the length
    // are filled in by `seal_record`.
    let mut fixed = [0u8; EVENT_FIXED_LEN];
    fixed[8] = KIND_EVENT;
    fixed[10..12].copy_from_slice(&text_len(stream).to_le_bytes());
    fixed[12..14].copy_from_slice(&text_len(&data.event_type).to_le_bytes());
    fixed[14..16].copy_from_slice(&text_len(&data.content_type).to_le_bytes());
    fixed[16..24].copy_from_slice(&revision.0.to_le_bytes());
    fixed[24..32].copy_from_slice(&recorded.as_micros().to_le_bytes());
    fixed[32..48].copy_from_slice(data.id.as_bytes());
    fixed[48..52].copy_from_slice(
        &u32::try_from(metadata_len)
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    fixed[52..56].copy_from_slice(
        &u32::try_from(data.payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    buf.extend_from_slice(&fixed);
    buf.extend_from_slice(stream.as_bytes());
    buf.extend_from_slice(data.event_type.as_bytes());
    buf.extend_from_slice(data.content_type.as_bytes());
    for (key, value) in data.metadata.iter() {
        put_u16(buf, text_len(key));
        buf.extend_from_slice(key.as_bytes());
        put_u32(buf, u32::try_from(value.len()).unwrap_or(u32::MAX));
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(&data.payload);
    seal_record(buf, start);
}

/// The encoded size of an event record for `data` in `stream`.
pub(crate) fn event_record_len(stream: &str, data: &EventData) -> usize {
    EVENT_FIXED_LEN
        + stream.len()
        + data.event_type.len()
        + data.content_type.len()
        + data
            .metadata
            .iter()
            .map(|(k, v)| 6 + k.len() + v.len())
            .sum::<usize>()
        + data.payload.len()
}

/// Appends a record replacing `stream`'s retention metadata.
pub(crate) fn encode_metadata(buf: &mut Vec<u8>, stream: &str, metadata: &StreamMetadata) {
    let start = buf.len();
    put_u32(buf, 0);
    put_u32(buf, 0);
    buf.push(KIND_METADATA);
    buf.push(0);
    put_u16(buf, text_len(stream));
    let mut present = 0u8;
    if metadata.max_count.is_some() {
        present |= HAS_MAX_COUNT;
    }
    if metadata.max_age.is_some() {
        present |= HAS_MAX_AGE;
    }
    if metadata.truncate_before.is_some() {
        present |= HAS_TRUNCATE_BEFORE;
    }
    buf.extend_from_slice(&[present, 0, 0, 0]);
    put_u64(buf, metadata.max_count.unwrap_or(0));
    let age = metadata
        .max_age
        .map_or(0, |age| u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
    put_u64(buf, age);
    put_u64(buf, metadata.truncate_before.map_or(0, |r| r.0));
    buf.extend_from_slice(stream.as_bytes());
    seal_record(buf, start);
}

/// Appends a record soft-deleting `stream`'s revisions below `deleted_before`.
pub(crate) fn encode_delete(buf: &mut Vec<u8>, stream: &str, deleted_before: Revision) {
    let start = buf.len();
    put_u32(buf, 0);
    put_u32(buf, 0);
    buf.push(KIND_DELETE);
    buf.push(0);
    put_u16(buf, text_len(stream));
    put_u32(buf, 0);
    put_u64(buf, deleted_before.0);
    buf.extend_from_slice(stream.as_bytes());
    seal_record(buf, start);
}

/// Appends a record tombstoning `stream`.
pub(crate) fn encode_tombstone(buf: &mut Vec<u8>, stream: &str) {
    let start = buf.len();
    put_u32(buf, 0);
    put_u32(buf, 0);
    buf.push(KIND_TOMBSTONE);
    buf.push(0);
    put_u16(buf, text_len(stream));
    put_u32(buf, 0);
    buf.extend_from_slice(stream.as_bytes());
    seal_record(buf, start);
}

/// Fills in the length and checksum of the record that starts at `start` and ends at the
/// end of `buf`.
fn seal_record(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    if let Some(slot) = buf.get_mut(start + 4..start + 8) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
    let checksum = crc(buf.get(start + 4..).unwrap_or_default());
    if let Some(slot) = buf.get_mut(start..start + 4) {
        slot.copy_from_slice(&checksum.to_le_bytes());
    }
}

/// The length of the record at the start of `bytes`, checked against its checksum.
pub(crate) fn checked_record_len(bytes: &[u8]) -> Result<usize, FormatError> {
    let (len, checked) = record_extent(bytes)?;
    let record = bytes.get(..checked).ok_or(FormatError::Truncated)?;
    if crc(record.get(4..).unwrap_or_default()) != u32_at(record, 0)? {
        return Err(FormatError::Checksum);
    }
    Ok(len)
}

/// The length of the record at the start of `bytes`, and how many of its bytes its checksum
/// covers (all of them, except for a removed record: only its header and summary, the rest
/// being a hole). Needs the first 16 bytes of the record.
pub(crate) fn record_extent(bytes: &[u8]) -> Result<(usize, usize), FormatError> {
    let len = u32_at(bytes, 4)? as usize;
    if len < RECORD_PREFIX_LEN {
        return Err(FormatError::Length);
    }
    if bytes.get(8) == Some(&KIND_REMOVED) {
        let summary = u32_at(bytes, 12)? as usize;
        let checked = REMOVED_FIXED_LEN
            .checked_add(summary)
            .filter(|&c| c <= len)
            .ok_or(FormatError::Length)?;
        return Ok((len, checked));
    }
    Ok((len, len))
}

/// Appends a removed record: it stands for `len` bytes of records a scavenge removed, and
/// says, for each stream they belonged to, the last revision removed.
pub(crate) fn encode_removed(buf: &mut Vec<u8>, len: u32, summary: &[(&str, Revision)]) {
    let start = buf.len();
    put_u32(buf, 0);
    put_u32(buf, len);
    buf.push(KIND_REMOVED);
    buf.push(0);
    put_u16(buf, 0);
    put_u32(buf, 0); // summary length, filled in below
    for (stream, revision) in summary {
        put_u16(buf, text_len(stream));
        buf.extend_from_slice(stream.as_bytes());
        put_u64(buf, revision.0);
    }
    let summary_len = u32::try_from(buf.len() - start - REMOVED_FIXED_LEN).unwrap_or(u32::MAX);
    if let Some(slot) = buf.get_mut(start + 12..start + 16) {
        slot.copy_from_slice(&summary_len.to_le_bytes());
    }
    let checksum = crc(buf.get(start + 4..).unwrap_or_default());
    if let Some(slot) = buf.get_mut(start..start + 4) {
        slot.copy_from_slice(&checksum.to_le_bytes());
    }
}

/// The batch header `header` with its record count replaced by `count` (and its checksum
/// recomputed).
pub(crate) fn reencode_batch_header(header: &[u8], count: u32) -> Vec<u8> {
    let mut bytes = header.get(..BATCH_HEADER_LEN).unwrap_or_default().to_vec();
    if let Some(slot) = bytes.get_mut(12..16) {
        slot.copy_from_slice(&count.to_le_bytes());
    }
    let checksum = crc(bytes.get(4..).unwrap_or_default());
    if let Some(slot) = bytes.get_mut(0..4) {
        slot.copy_from_slice(&checksum.to_le_bytes());
    }
    bytes
}

/// Encodes the header of a gap frame of `len` bytes standing for `count` batches from
/// `sequence` on.
pub(crate) fn encode_gap_header(len: u32, count: u32, sequence: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(BATCH_HEADER_LEN);
    put_u32(&mut header, 0);
    put_u32(&mut header, BATCH_MAGIC);
    put_u32(&mut header, len);
    put_u32(&mut header, count);
    put_u64(&mut header, sequence);
    put_u32(&mut header, GAP | PRIOR_DURABLE | PRIOR_BUT_ONE_DURABLE);
    put_u32(&mut header, 0);
    let checksum = crc(header.get(4..).unwrap_or_default());
    header.splice(0..4, checksum.to_le_bytes());
    header
}

/// A record decoded in place: text borrowed from the buffer, the payload as a range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Event(EventView<'a>),
    Metadata {
        stream: &'a str,
        metadata: StreamMetadata,
    },
    Delete {
        stream: &'a str,
        deleted_before: Revision,
    },
    Tombstone {
        stream: &'a str,
    },
    /// Records a scavenge removed: for each stream, the last revision removed.
    Removed {
        summary: Vec<(&'a str, Revision)>,
    },
}

/// An event record, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventView<'a> {
    pub(crate) stream: &'a str,
    pub(crate) revision: Revision,
    pub(crate) recorded: Timestamp,
    pub(crate) id: Uuid,
    pub(crate) event_type: &'a str,
    pub(crate) content_type: &'a str,
    metadata: &'a [u8],
    /// Where the payload lies in the buffer the record was decoded from.
    pub(crate) payload: std::ops::Range<usize>,
}

fn text(bytes: &[u8], range: std::ops::Range<usize>) -> Result<&str, FormatError> {
    let raw = bytes.get(range).ok_or(FormatError::Truncated)?;
    std::str::from_utf8(raw).map_err(|_| FormatError::Utf8)
}

/// Decodes the record at `offset` of `buf`, whose checksum the caller verified with
/// [`checked_record_len`]; `len` is that length.
pub(crate) fn decode_record(
    buf: &[u8],
    offset: usize,
    len: usize,
) -> Result<Record<'_>, FormatError> {
    if buf.get(offset + 8) == Some(&KIND_REMOVED) {
        let (_, checked) = record_extent(buf.get(offset..).unwrap_or_default())?;
        let record = buf
            .get(offset..offset + checked)
            .ok_or(FormatError::Truncated)?;
        return decode_removed(record);
    }
    let record = buf
        .get(offset..offset + len)
        .ok_or(FormatError::Truncated)?;
    let kind = *record.get(8).ok_or(FormatError::Truncated)?;
    let stream_len = usize::from(u16_at(record, 10)?);
    let fixed = match kind {
        KIND_EVENT => EVENT_FIXED_LEN,
        KIND_METADATA => METADATA_FIXED_LEN,
        KIND_DELETE => DELETE_FIXED_LEN,
        KIND_TOMBSTONE => TOMBSTONE_FIXED_LEN,
        other => return Err(FormatError::Kind(other)),
    };
    if kind == KIND_EVENT {
        return decode_event(record, offset, len, stream_len);
    }
    let stream = text(record, fixed..fixed + stream_len)?;
    if fixed + stream_len != len {
        return Err(FormatError::Length);
    }
    match kind {
        KIND_METADATA => {
            let present = *record.get(12).ok_or(FormatError::Truncated)?;
            let max_count = u64_at(record, 16)?;
            let max_age = u64_at(record, 24)?;
            let truncate_before = u64_at(record, 32)?;
            let metadata = StreamMetadata {
                max_count: (present & HAS_MAX_COUNT != 0).then_some(max_count),
                max_age: (present & HAS_MAX_AGE != 0).then(|| Duration::from_micros(max_age)),
                truncate_before: (present & HAS_TRUNCATE_BEFORE != 0)
                    .then_some(Revision(truncate_before)),
            };
            Ok(Record::Metadata { stream, metadata })
        }
        KIND_DELETE => Ok(Record::Delete {
            stream,
            deleted_before: Revision(u64_at(record, 16)?),
        }),
        _ => Ok(Record::Tombstone { stream }),
    }
}

/// Decodes the event record `record`, found at `offset` of its buffer.
///
/// The stream name, type and content type lie side by side: they are checked as UTF-8 in
/// one pass and then split at their lengths (a split that falls inside a character is
/// refused), which costs a fraction of three separate checks on these short strings.
fn decode_event(
    record: &[u8],
    offset: usize,
    len: usize,
    stream_len: usize,
) -> Result<Record<'_>, FormatError> {
    let type_len = usize::from(u16_at(record, 12)?);
    let content_len = usize::from(u16_at(record, 14)?);
    let metadata_len = u32_at(record, 48)? as usize;
    let payload_len = u32_at(record, 52)? as usize;
    let type_at = EVENT_FIXED_LEN + stream_len;
    let content_at = type_at + type_len;
    let metadata_at = content_at + content_len;
    let payload_at = metadata_at + metadata_len;
    if payload_at.checked_add(payload_len) != Some(len) {
        return Err(FormatError::Length);
    }
    let texts = text(record, EVENT_FIXED_LEN..metadata_at)?;
    // Each part by its offsets in the record, which start `texts` at EVENT_FIXED_LEN.
    let part = |range: std::ops::Range<usize>| {
        texts
            .get(range.start - EVENT_FIXED_LEN..range.end - EVENT_FIXED_LEN)
            .ok_or(FormatError::Utf8)
    };
    let id_bytes: [u8; 16] = record
        .get(32..48)
        .and_then(|raw| raw.try_into().ok())
        .ok_or(FormatError::Truncated)?;
    Ok(Record::Event(EventView {
        stream: part(EVENT_FIXED_LEN..type_at)?,
        revision: Revision(u64_at(record, 16)?),
        recorded: Timestamp(u64_at(record, 24)?),
        id: Uuid::from_bytes(id_bytes),
        event_type: part(type_at..content_at)?,
        content_type: part(content_at..metadata_at)?,
        metadata: record
            .get(metadata_at..payload_at)
            .ok_or(FormatError::Truncated)?,
        payload: offset + payload_at..offset + len,
    }))
}

fn decode_removed(record: &[u8]) -> Result<Record<'_>, FormatError> {
    let mut summary = Vec::new();
    let mut at = REMOVED_FIXED_LEN;
    while at < record.len() {
        let len = usize::from(u16_at(record, at)?);
        let stream = text(record, at + 2..at + 2 + len)?;
        let revision = Revision(u64_at(record, at + 2 + len)?);
        summary.push((stream, revision));
        at += 10 + len;
    }
    if at != record.len() {
        return Err(FormatError::Length);
    }
    Ok(Record::Removed { summary })
}

/// A metadata key read from the log: one of the well-known keys without a copy, any other
/// copied.
fn known_key(key: &str) -> Cow<'static, str> {
    [
        Metadata::CORRELATION_ID,
        Metadata::CAUSATION_ID,
        Metadata::TRACEPARENT,
        Metadata::TENANT,
    ]
    .into_iter()
    .find(|known| *known == key)
    .map_or_else(|| Cow::Owned(key.to_owned()), Cow::Borrowed)
}

impl EventView<'_> {
    /// Decodes the metadata entries.
    pub(crate) fn metadata(&self) -> Result<Metadata, FormatError> {
        let mut metadata = Metadata::new();
        let bytes = self.metadata;
        let mut at = 0;
        while at < bytes.len() {
            let key_len = usize::from(u16_at(bytes, at)?);
            let key = text(bytes, at + 2..at + 2 + key_len)?;
            at += 2 + key_len;
            let value_len = u32_at(bytes, at)? as usize;
            let value = text(bytes, at + 4..at + 4 + value_len)?;
            at += 4 + value_len;
            metadata.insert(known_key(key), value);
        }
        Ok(metadata)
    }

    /// The payload as a shared slice of `chunk`, the buffer the record was decoded from.
    pub(crate) fn payload_of(&self, chunk: &Bytes) -> Bytes {
        chunk.slice(self.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn an_event_record_round_trips() {
        let data = EventData::new("OrderPlaced", &b"{\"a\":1}"[..])
            .with_metadata("correlationid", "c-1")
            .with_metadata("tenant", "acme");
        let mut buf = Vec::new();
        encode_event(&mut buf, "order-1", Revision(7), Timestamp(42), &data);
        assert_eq!(buf.len(), event_record_len("order-1", &data));
        let len = checked_record_len(&buf).unwrap();
        assert_eq!(len, buf.len());
        let Record::Event(view) = decode_record(&buf, 0, len).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(view.stream, "order-1");
        assert_eq!(view.revision, Revision(7));
        assert_eq!(view.recorded, Timestamp(42));
        assert_eq!(view.id, data.id);
        assert_eq!(view.event_type, "OrderPlaced");
        assert_eq!(view.content_type, "application/json");
        assert_eq!(view.metadata().unwrap(), data.metadata);
        assert_eq!(&buf[view.payload.clone()], &data.payload[..]);
    }

    #[test]
    fn every_flipped_bit_of_a_record_is_detected() {
        let data = EventData::new("T", &b"payload"[..]);
        let mut buf = Vec::new();
        encode_event(&mut buf, "s", Revision(0), Timestamp(1), &data);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    checked_record_len(&damaged).is_err(),
                    "flip of bit {bit} of byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn lifecycle_records_round_trip() {
        let metadata = StreamMetadata {
            max_count: Some(5),
            max_age: Some(Duration::from_secs(3)),
            truncate_before: None,
        };
        let mut buf = Vec::new();
        encode_metadata(&mut buf, "a", &metadata);
        let first = checked_record_len(&buf).unwrap();
        encode_delete(&mut buf, "b", Revision(9));
        let second = checked_record_len(&buf[first..]).unwrap();
        encode_tombstone(&mut buf, "c");
        let third = checked_record_len(&buf[first + second..]).unwrap();
        assert_eq!(
            decode_record(&buf, 0, first).unwrap(),
            Record::Metadata {
                stream: "a",
                metadata
            }
        );
        assert_eq!(
            decode_record(&buf, first, second).unwrap(),
            Record::Delete {
                stream: "b",
                deleted_before: Revision(9)
            }
        );
        assert_eq!(
            decode_record(&buf, first + second, third).unwrap(),
            Record::Tombstone { stream: "c" }
        );
    }

    #[test]
    fn batch_and_segment_headers_round_trip_and_reject_damage() {
        let mut buf = Vec::new();
        let start = begin_batch(&mut buf);
        encode_tombstone(&mut buf, "x");
        let end = buf.len();
        finish_batch(&mut buf, start, end, 1, 77, PRIOR_DURABLE);
        let header = decode_batch_header(&buf).unwrap();
        assert_eq!(header.len as usize, buf.len());
        assert_eq!(
            (header.count, header.sequence, header.flags),
            (1, 77, PRIOR_DURABLE)
        );
        buf[17] ^= 1;
        assert_eq!(decode_batch_header(&buf), Err(FormatError::Checksum));
        assert!(is_unwritten(&[0; BATCH_HEADER_LEN]));

        let segment = encode_segment_header(1 << 28, 1 << 28);
        assert_eq!(segment.len() as u64, SEGMENT_HEADER_LEN);
        assert_eq!(
            decode_segment_header(&segment).unwrap(),
            SegmentHeader {
                base: 1 << 28,
                size: 1 << 28
            }
        );
    }
}
