//! Opening a log: check the segment files, replay their batches into the index, and find
//! the durable end.
//!
//! Every batch is checked whole (its header and every record's checksum) before any of it
//! is applied, so a batch is either entirely in the index or not at all. At the first batch
//! that does not check, recovery decides between a torn tail and damage:
//!
//! - it looks for later batches (in the same segment, by their magic number, and at the
//!   start of each later segment);
//! - a later batch flagged [`PRIOR_DURABLE`], or one at least two batches later flagged
//!   [`PRIOR_BUT_ONE_DURABLE`], proves that the bad batch had been flushed before it was
//!   written, so the bad batch was durable once: that is damage, and opening stops with an
//!   error naming the file and offset, rather than dropping what follows;
//! - otherwise the bad bytes are the tail of a write that never completed its flush (or,
//!   in a weaker durability mode, was not flushed yet): they are zeroed, and the log ends
//!   there. Such a write was never acknowledged in the default mode.
//!
//! A region of zeros where a batch should start ends a segment normally when the next
//! segment continues the sequence of batches.

use std::collections::HashMap;
use std::path::PathBuf;

use cairn_core::{Position, StreamName};

use crate::format::{
    BATCH_HEADER_LEN, BATCH_MAGIC, FormatError, GAP, PRIOR_BUT_ONE_DURABLE, PRIOR_DURABLE, Record,
    SEGMENT_HEADER_LEN, checked_record_len, decode_batch_header, decode_record,
    decode_segment_header, is_unwritten, record_extent,
};
use crate::index::{Effect, Index, label_hash};
use crate::options::OpenError;
use crate::segments::Segments;
use crate::storage::{OpenMode, StorageFile};
use crate::writer::WriterStart;

/// How much recovery reads at once.
const READ_CHUNK: usize = 1 << 20;

/// What recovery found.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) start: WriterStart,
}

/// A segment being recovered.
struct SegmentFile {
    base: u64,
    file: std::sync::Arc<dyn StorageFile>,
}

/// Where the first batch that did not check is, and why.
#[derive(Debug)]
struct Damage {
    /// Global offset of the batch.
    at: u64,
    /// Global offset of the record (or batch header) that failed.
    detail_at: u64,
    reason: FormatError,
    /// The header was all zeros: nothing was ever written there.
    unwritten: bool,
}

/// A valid batch header found past the damage.
#[derive(Debug, Clone, Copy)]
struct Later {
    at: u64,
    sequence: u64,
    flags: u32,
}

/// Opens the segment files and replays them into the index: the snapshot's, when one
/// checks out, from where it ends; a fresh one from the start otherwise.
///
/// `clean` says the last owner closed the store cleanly: then, when a snapshot was loaded,
/// nothing was written after it, and the zeros where the next batch would start end the log
/// without searching the rest of the segment for a torn write.
pub(crate) fn recover(
    segments: &Segments,
    data_dir: &std::path::Path,
    clean: bool,
) -> Result<Recovered, OpenError> {
    let dir = segments.dir().to_path_buf();
    let (bases, leftovers) = segments.list().map_err(|e| OpenError::io(&dir, e))?;
    for leftover in leftovers {
        let path = dir.join(&leftover);
        segments
            .storage()
            .remove_file(&path)
            .map_err(|e| OpenError::io(&path, e))?;
    }
    let mut files = Vec::with_capacity(bases.len());
    for base in bases {
        files.push(open_segment(segments, base)?);
    }
    let (mut index, resume_at, from_snapshot) =
        match crate::snapshot::load(segments.storage().as_ref(), data_dir, segments) {
            Some(index) => {
                let end = index.end;
                (index, end, true)
            }
            None => (Index::new(), 0, false),
        };
    index.begin_replay();
    let mut write_at = resume_at.max(Segments::data_start(0));
    let mut number = files
        .iter()
        .position(|f| f.base + segments.size() > resume_at)
        .unwrap_or(files.len());
    while let Some(segment) = files.get(number) {
        let segment_end = segment.base + segments.size();
        let from = resume_at.max(Segments::data_start(segment.base));
        match replay_segment(segments, segment, from, &mut index)? {
            None => {
                // The segment's batches ran to its end.
                write_at = segment_end;
                number += 1;
            }
            Some(damage) if damage.unwritten && clean && from_snapshot => {
                // A clean close wrote the snapshot last: the log ends here.
                write_at = damage.at;
                break;
            }
            Some(damage) => {
                let expected = index.next_sequence;
                let later = find_later(segments, &files, number, &damage, expected)?;
                let end_of_segment = damage.unwritten
                    && later.first.is_some_and(|l| {
                        l.sequence == expected
                            && l.at >= segment_end
                            && l.at == Segments::data_start(segments.base_of(l.at))
                    });
                if end_of_segment {
                    number += 1;
                    write_at = segment_end;
                    continue;
                }
                if let Some(proof) = later.proof {
                    return Err(corrupt(segments, &damage, proof));
                }
                truncate(segments, &files, number, damage.at)?;
                write_at = damage.at;
                break;
            }
        }
    }
    if let Some(last) = index.segments.last_key_value() {
        write_at = write_at.max(last.0 + last.1.end);
    }
    index.compact();
    let sequence = index.next_sequence;
    Ok(Recovered {
        index,
        start: WriterStart { write_at, sequence },
    })
}

fn open_segment(segments: &Segments, base: u64) -> Result<SegmentFile, OpenError> {
    let path = segments.path(base);
    let file = segments
        .storage()
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| OpenError::io(&path, e))?;
    let len = file.len().map_err(|e| OpenError::io(&path, e))?;
    let corrupt = |reason: String| OpenError::Corrupt {
        file: path.clone(),
        offset: 0,
        reason,
    };
    if len != segments.size() {
        return Err(corrupt(format!(
            "segment is {len} bytes long; segments of this log are {} bytes",
            segments.size()
        )));
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| OpenError::io(&path, e))?;
    match decode_segment_header(&header) {
        Ok(decoded) if decoded.base == base && decoded.size == segments.size() => {}
        Ok(decoded) => {
            return Err(corrupt(format!(
                "segment header says base {} and size {}",
                decoded.base, decoded.size
            )));
        }
        Err(FormatError::Version(found)) => {
            return Err(OpenError::UnsupportedFormat {
                file: path.clone(),
                found: found.to_string(),
                supported: crate::format::FORMAT_VERSION,
            });
        }
        Err(reason) => return Err(corrupt(format!("bad segment header: {reason}"))),
    }
    segments.insert(base, std::sync::Arc::clone(&file));
    Ok(SegmentFile { base, file })
}

/// Reads global `[at, at + len)` of a segment (clamped to its end).
fn read(
    segments: &Segments,
    segment: &SegmentFile,
    at: u64,
    len: usize,
) -> Result<Vec<u8>, OpenError> {
    let end = (at + len as u64).min(segment.base + segments.size());
    let mut buf = vec![0u8; end.saturating_sub(at) as usize];
    segment
        .file
        .read_exact_at(&mut buf, at - segment.base)
        .map_err(|e| OpenError::io(segments.path(segment.base), e))?;
    Ok(buf)
}

/// Replays the segment's batches from global offset `from` into the index, stopping at the
/// first that does not check. `None` when every batch up to the end of the segment checked.
fn replay_segment(
    segments: &Segments,
    segment: &SegmentFile,
    from: u64,
    index: &mut Index,
) -> Result<Option<Damage>, OpenError> {
    let segment_end = segment.base + segments.size();
    let mut at = from;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = at;
    while at + BATCH_HEADER_LEN as u64 <= segment_end {
        // Keep the batch header in the buffer.
        if at + BATCH_HEADER_LEN as u64 > buf_start + buf.len() as u64 {
            buf = read(segments, segment, at, READ_CHUNK)?;
            buf_start = at;
        }
        let header_bytes = slice(&buf, buf_start, at, BATCH_HEADER_LEN);
        if is_unwritten(header_bytes) {
            return Ok(Some(Damage {
                at,
                detail_at: at,
                reason: FormatError::Truncated,
                unwritten: true,
            }));
        }
        let damaged = |detail_at: u64, reason: FormatError| {
            Ok(Some(Damage {
                at,
                detail_at,
                reason,
                unwritten: false,
            }))
        };
        let header = match decode_batch_header(header_bytes) {
            Ok(header) if header.sequence == index.next_sequence => header,
            Ok(_) => return damaged(at, FormatError::Magic),
            Err(reason) => return damaged(at, reason),
        };
        let batch_end = at + u64::from(header.len);
        if batch_end > segment_end {
            return damaged(at, FormatError::Length);
        }
        // A gap frame is mostly a hole: read only its header and its one removed record's
        // header and summary.
        let wanted = if header.flags & GAP != 0 {
            let first = read(segments, segment, at, BATCH_HEADER_LEN + 16)?;
            match first.get(BATCH_HEADER_LEN..).map(record_extent) {
                Some(Ok((_, checked))) => BATCH_HEADER_LEN + checked,
                Some(Err(reason)) => return damaged(at + BATCH_HEADER_LEN as u64, reason),
                None => return damaged(at, FormatError::Truncated),
            }
        } else {
            header.len as usize
        };
        if at + wanted as u64 > buf_start + buf.len() as u64 {
            buf = read(segments, segment, at, wanted.max(READ_CHUNK))?;
            buf_start = at;
        }
        let batch = slice(&buf, buf_start, at, wanted);
        let mut effects = Vec::with_capacity(header.count as usize);
        let mut records = 0u64;
        let mut next_revisions = HashMap::new();
        let mut offset = BATCH_HEADER_LEN;
        while offset < batch.len() {
            let record_at = at + offset as u64;
            let len = match batch
                .get(offset..)
                .ok_or(FormatError::Truncated)
                .and_then(checked_record_len)
            {
                Ok(len) => len,
                Err(reason) => return damaged(record_at, reason),
            };
            let decoded = match decode_record(batch, offset, len) {
                Ok(record) => effects_of(index, &mut next_revisions, record_at, &record),
                Err(reason) => Err(reason),
            };
            match decoded {
                Ok(more) => effects.extend(more),
                Err(reason) => return damaged(record_at, reason),
            }
            records += 1;
            offset += len;
        }
        let (expected_records, sequences) = if header.flags & GAP != 0 {
            (1, u64::from(header.count))
        } else {
            (u64::from(header.count), 1)
        };
        if records != expected_records || at + offset as u64 != batch_end {
            return damaged(at, FormatError::Length);
        }
        index.add_batch(segment.base, at, batch_end, sequences);
        for effect in &effects {
            index.apply(effect);
        }
        at = batch_end;
    }
    Ok(None)
}

fn slice(buf: &[u8], buf_start: u64, at: u64, len: usize) -> &[u8] {
    let from = (at - buf_start) as usize;
    buf.get(from..from + len)
        .or_else(|| buf.get(from..))
        .unwrap_or_default()
}

/// The index changes a record at global offset `at` makes, checked for consistency with
/// the index and with the earlier records of its batch (`next`: each stream's next revision
/// as those records leave it).
fn effects_of(
    index: &Index,
    next: &mut HashMap<StreamName, u64>,
    at: u64,
    record: &Record<'_>,
) -> Result<Vec<Effect>, FormatError> {
    let stream_name = |name: &str| match index.recent_name(name) {
        Some(name) => Ok(name),
        None => StreamName::new(name).map_err(|_| FormatError::Utf8),
    };
    fn next_of<'n>(
        next: &'n mut HashMap<StreamName, u64>,
        index: &Index,
        stream: &StreamName,
    ) -> &'n mut u64 {
        next.entry(stream.clone())
            .or_insert_with(|| index.next_revision(stream.as_str()).0)
    }
    Ok(match record {
        Record::Event(view) => {
            let stream = stream_name(view.stream)?;
            let expected = next_of(next, index, &stream);
            if view.revision.0 != *expected {
                return Err(FormatError::Length);
            }
            *expected += 1;
            vec![Effect::Event {
                stream,
                revision: view.revision,
                position: Position(at),
                id: view.id,
                event_type: label_hash(view.event_type),
            }]
        }
        Record::Metadata { stream, metadata } => vec![Effect::Metadata {
            stream: stream_name(stream)?,
            metadata: *metadata,
        }],
        Record::Delete {
            stream,
            deleted_before,
        } => vec![Effect::Delete {
            stream: stream_name(stream)?,
            deleted_before: *deleted_before,
        }],
        Record::Tombstone { stream } => vec![Effect::Tombstone {
            stream: stream_name(stream)?,
        }],
        Record::Removed { summary } => {
            let mut effects = Vec::with_capacity(summary.len());
            for (stream, last_removed) in summary {
                let stream = stream_name(stream)?;
                let expected = next_of(next, index, &stream);
                *expected = (*expected).max(last_removed.0.saturating_add(1));
                effects.push(Effect::Removed {
                    stream,
                    last_removed: *last_removed,
                });
            }
            effects
        }
    })
}

/// What lies after the damage: the first valid batch header, and the first one that proves
/// the damaged batch had been durable.
#[derive(Debug, Default)]
struct LaterBatches {
    first: Option<Later>,
    proof: Option<Later>,
}

impl LaterBatches {
    /// Takes note of a valid header found later in the log; true once a proof is found.
    fn note(&mut self, later: Later, expected: u64) -> bool {
        if later.sequence < expected {
            // A stale or foreign header: it says nothing about the damaged batch.
            return false;
        }
        self.first.get_or_insert(later);
        let proves = (later.flags & PRIOR_DURABLE != 0 && later.sequence > expected)
            || (later.flags & PRIOR_BUT_ONE_DURABLE != 0 && later.sequence > expected + 1);
        if proves {
            self.proof = Some(later);
        }
        proves
    }
}

/// Looks for valid batch headers after the damage, whose sequence number is at least
/// `expected` (the damaged batch's): in the rest of its segment, then at the start of each
/// later segment. Stops at the first that proves the damaged batch had been durable.
fn find_later(
    segments: &Segments,
    files: &[SegmentFile],
    number: usize,
    damage: &Damage,
    expected: u64,
) -> Result<LaterBatches, OpenError> {
    let mut found = LaterBatches::default();
    let Some(segment) = files.get(number) else {
        return Ok(found);
    };
    let segment_end = segment.base + segments.size();
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut at = damage.at + 1;
    while at < segment_end {
        let buf = read(segments, segment, at, READ_CHUNK + BATCH_HEADER_LEN)?;
        for (i, window) in buf.windows(4).enumerate() {
            if window != magic || i < 4 {
                continue;
            }
            let start = i - 4;
            let Some(header) = buf.get(start..start + BATCH_HEADER_LEN) else {
                continue;
            };
            if let Ok(header) = decode_batch_header(header) {
                let later = Later {
                    at: at + start as u64,
                    sequence: header.sequence,
                    flags: header.flags,
                };
                if found.note(later, expected) {
                    return Ok(found);
                }
            }
        }
        at += READ_CHUNK as u64;
    }
    for later in files.iter().skip(number + 1) {
        let start = Segments::data_start(later.base);
        let header = read(segments, later, start, BATCH_HEADER_LEN)?;
        if let Ok(header) = decode_batch_header(&header) {
            let later = Later {
                at: start,
                sequence: header.sequence,
                flags: header.flags,
            };
            if found.note(later, expected) {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

fn corrupt(segments: &Segments, damage: &Damage, later: Later) -> OpenError {
    let base = segments.base_of(damage.detail_at);
    OpenError::Corrupt {
        file: segments.path(base),
        offset: damage.detail_at - base,
        reason: format!(
            "{} (a flushed batch follows at global offset {}, so this is not a torn tail)",
            if damage.unwritten {
                "a batch is missing".to_owned()
            } else {
                damage.reason.to_string()
            },
            later.at
        ),
    }
}

/// Ends the log at global offset `at`: zeroes what follows in its segment and removes the
/// later segments, then makes that durable.
fn truncate(
    segments: &Segments,
    files: &[SegmentFile],
    number: usize,
    at: u64,
) -> Result<(), OpenError> {
    let Some(segment) = files.get(number) else {
        return Ok(());
    };
    let path: PathBuf = segments.path(segment.base);
    let segment_end = segment.base + segments.size();
    let zeros = vec![0u8; READ_CHUNK];
    let mut offset = at;
    let mut wrote = false;
    while offset < segment_end {
        let buf = read(segments, segment, offset, READ_CHUNK)?;
        if !is_unwritten(&buf) {
            let bytes = zeros.get(..buf.len()).unwrap_or_default();
            segment
                .file
                .write_all_at(bytes, offset - segment.base)
                .map_err(|e| OpenError::io(&path, e))?;
            wrote = true;
        }
        offset += buf.len().max(1) as u64;
    }
    if wrote {
        tracing::warn!(file = %path.display(), offset = at - segment.base, "truncated a torn tail");
        segment
            .file
            .sync_data()
            .map_err(|e| OpenError::io(&path, e))?;
    }
    // Later segments hold nothing acknowledged: remove those that hold anything at all,
    // keep the ones only preallocated.
    for later in files.iter().skip(number + 1) {
        let start = Segments::data_start(later.base);
        if !is_unwritten(&read(segments, later, start, BATCH_HEADER_LEN)?) {
            segments
                .remove(later.base)
                .map_err(|e| OpenError::io(segments.path(later.base), e))?;
        }
    }
    Ok(())
}
