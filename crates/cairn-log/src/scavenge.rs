//! Scavenging: reclaiming the space of events that retention, soft deletes and tombstones
//! hide, while the store keeps running.
//!
//! A sealed segment (one the writer has moved past) that holds enough hidden events is
//! rewritten into a new sparse file in which every live byte stays at its offset (so no
//! position changes and the index stays valid), runs of hidden records become one removed
//! record, and runs of batches that hold nothing live become one gap frame. The removed
//! bytes are never written, so the file system stores them as holes. Removed and gap records
//! keep what replay needs: the batch sequence numbers and, per stream, the last revision
//! removed, so revisions continue after a restart.
//!
//! The new file is flushed, then swapped in under the index's write lock after checking
//! again that every event it drops is still hidden (retention may have been loosened
//! meanwhile); readers that opened the old file keep reading it. Appends never wait for a
//! scavenge beyond that swap.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, PoisonError};

use cairn_core::{Revision, StorageError, StreamName, Timestamp, Uuid, Visibility};

use crate::format::{
    BATCH_HEADER_LEN, GAP, Record, encode_gap_header, encode_removed, encode_segment_header,
    reencode_batch_header,
};
use crate::index::{Index, SegmentMap};
use crate::scan::{LogReader, ScanError};
use crate::segments::Segments;
use crate::storage::{OpenMode, StorageFile};
use crate::writer::Shared;

/// A segment is rewritten once at least this share of its bytes is hidden...
const MIN_DEAD_SHARE: f64 = 0.1;
/// ...and at least this many bytes.
const MIN_DEAD_BYTES: u64 = 64 << 10;

/// What a scavenge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScavengeReport {
    /// Sealed segments examined.
    pub segments_scanned: u64,
    /// Segments rewritten.
    pub segments_rewritten: u64,
    /// Events removed.
    pub events_removed: u64,
    /// Bytes of removed records turned into holes.
    pub bytes_removed: u64,
}

/// One record of a frame, as the scavenge sees it.
#[derive(Debug)]
struct Item {
    at: u64,
    len: u64,
    fate: Fate,
}

#[derive(Debug)]
enum Fate {
    /// Kept, byte for byte.
    Live,
    /// A hidden event, to remove.
    Dead {
        stream: StreamName,
        revision: Revision,
        recorded: Timestamp,
        id: Uuid,
    },
    /// Removed by an earlier scavenge; its summary carries over.
    Removed(Vec<(StreamName, Revision)>),
}

/// One batch frame of the old segment.
#[derive(Debug)]
struct Frame {
    start: u64,
    end: u64,
    sequence: u64,
    /// How many batches it stands for (more than one for a gap frame).
    sequences: u32,
    items: Vec<Item>,
}

impl Frame {
    fn all_dead(&self) -> bool {
        self.items.iter().all(|i| !matches!(i.fate, Fate::Live))
    }
}

/// Runs a scavenge over every sealed segment.
pub(crate) fn scavenge(shared: &Shared, dir: &Path) -> Result<ScavengeReport, StorageError> {
    let segments = &shared.segments;
    let sealed: Vec<(u64, u64)> = {
        let index = read_index(shared);
        let last = index.segments.keys().next_back().copied();
        index
            .segments
            .iter()
            .filter(|(base, _)| Some(**base) != last)
            .map(|(&base, map)| (base, base + map.end))
            .collect()
    };
    let mut report = ScavengeReport::default();
    let mut visibility: HashMap<String, Option<Visibility>> = HashMap::new();
    let now = Timestamp::now();
    let mut snapshot_removed = false;
    for (base, end) in sealed {
        report.segments_scanned += 1;
        let frames = scan_segment(shared, base, end, now, &mut visibility)?;
        let dead: u64 = frames
            .iter()
            .flat_map(|f| &f.items)
            .filter(|i| matches!(i.fate, Fate::Dead { .. }))
            .map(|i| i.len)
            .sum();
        let used = end - Segments::data_start(base);
        if dead < MIN_DEAD_BYTES || (dead as f64) < used as f64 * MIN_DEAD_SHARE {
            continue;
        }
        if !snapshot_removed {
            // The snapshot describes the old layout; the next open must replay instead.
            crate::snapshot::remove(segments.storage().as_ref(), dir)
                .map_err(|e| StorageError::io("removing the index snapshot failed", e))?;
            snapshot_removed = true;
        }
        let temp = segments.dir().join(format!("{base:020}.seg.scavenge"));
        let layout = write_rewritten(segments, base, &frames, &temp)?;
        if swap(shared, base, &frames, &temp, layout, now)? {
            report.segments_rewritten += 1;
            for item in frames.iter().flat_map(|f| &f.items) {
                if matches!(item.fate, Fate::Dead { .. }) {
                    report.events_removed += 1;
                    report.bytes_removed += item.len;
                }
            }
        }
    }
    Ok(report)
}

fn read_index(shared: &Shared) -> std::sync::RwLockReadGuard<'_, Index> {
    shared.index.read().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the frames of the segment based at `base`, up to global offset `end`, deciding
/// each event's fate by its stream's visibility at `now`.
fn scan_segment(
    shared: &Shared,
    base: u64,
    end: u64,
    now: Timestamp,
    visibility: &mut HashMap<String, Option<Visibility>>,
) -> Result<Vec<Frame>, StorageError> {
    let segments = &shared.segments;
    let file = segments
        .file(base)
        .ok_or_else(|| StorageError::io("segment missing", std::io::ErrorKind::NotFound.into()))?;
    let mut frames: Vec<Frame> = Vec::new();
    let mut reader = LogReader::new(segments);
    let mut header = [0u8; BATCH_HEADER_LEN];
    let mut at = Segments::data_start(base);
    while at < end {
        file.read_exact_at(&mut header, at - base)
            .map_err(|e| StorageError::io("reading a batch header failed", e))?;
        let decoded = crate::format::decode_batch_header(&header).map_err(|reason| {
            StorageError::from(ScanError::Corrupt {
                path: segments.path(base),
                offset: at - base,
                reason,
            })
        })?;
        let frame_end = at + u64::from(decoded.len);
        let mut items = Vec::new();
        reader
            .walk(at, frame_end, |position, record, _| {
                let fate = match record {
                    Record::Event(view) => {
                        let shown =
                            *visibility.entry(view.stream.to_owned()).or_insert_with(|| {
                                let index = read_index(shared);
                                index
                                    .stream(view.stream)
                                    .map_or(Some(Visibility::everything()), |e| e.visibility(now))
                            });
                        if shown.is_some_and(|v| v.shows(view.revision, view.recorded)) {
                            Fate::Live
                        } else {
                            Fate::Dead {
                                stream: StreamName::new(view.stream).map_err(|_| {
                                    ScanError::Corrupt {
                                        path: segments.path(base),
                                        offset: position - base,
                                        reason: crate::format::FormatError::Utf8,
                                    }
                                })?,
                                revision: view.revision,
                                recorded: view.recorded,
                                id: view.id,
                            }
                        }
                    }
                    Record::Removed { summary } => Fate::Removed(
                        summary
                            .iter()
                            .filter_map(|(s, r)| StreamName::new(s).ok().map(|s| (s, *r)))
                            .collect(),
                    ),
                    _ => Fate::Live,
                };
                if let Some(last) = items.last_mut() {
                    let last: &mut Item = last;
                    last.len = position - last.at;
                }
                items.push(Item {
                    at: position,
                    len: 0,
                    fate,
                });
                Ok(ControlFlow::Continue(()))
            })
            .map_err(StorageError::from)?;
        if let Some(last) = items.last_mut() {
            last.len = frame_end - last.at;
        }
        frames.push(Frame {
            start: at,
            end: frame_end,
            sequence: decoded.sequence,
            sequences: if decoded.flags & GAP != 0 {
                decoded.count
            } else {
                1
            },
            items,
        });
        at = frame_end;
    }
    Ok(frames)
}

/// The last revision removed per stream, over `items`.
fn summary_of<'a>(items: impl Iterator<Item = &'a Item>) -> Vec<(StreamName, Revision)> {
    let mut last: Vec<(StreamName, Revision)> = Vec::new();
    let mut note = |stream: &StreamName, revision: Revision| match last
        .iter_mut()
        .find(|(s, _)| s == stream)
    {
        Some((_, r)) => *r = (*r).max(revision),
        None => last.push((stream.clone(), revision)),
    };
    for item in items {
        match &item.fate {
            Fate::Dead {
                stream, revision, ..
            } => note(stream, *revision),
            Fate::Removed(summary) => {
                for (stream, revision) in summary {
                    note(stream, *revision);
                }
            }
            Fate::Live => {}
        }
    }
    last
}

fn removed_bytes(len: u64, summary: &[(StreamName, Revision)]) -> Vec<u8> {
    let pairs: Vec<(&str, Revision)> = summary.iter().map(|(s, r)| (s.as_str(), *r)).collect();
    let mut buf = Vec::new();
    encode_removed(&mut buf, u32::try_from(len).unwrap_or(u32::MAX), &pairs);
    buf
}

/// Writes the rewritten segment to `temp` (sparse, flushed) and returns its frames'
/// extents, for the index.
fn write_rewritten(
    segments: &Segments,
    base: u64,
    frames: &[Frame],
    temp: &Path,
) -> Result<Vec<(u64, u64)>, StorageError> {
    let io = |what: &str| {
        let what = format!("{what} {}", temp.display());
        move |e| StorageError::io(what, e)
    };
    let old = segments
        .file(base)
        .ok_or_else(|| StorageError::io("segment missing", std::io::ErrorKind::NotFound.into()))?;
    let new = segments
        .storage()
        .open(temp, OpenMode::CreateTruncate)
        .map_err(io("creating"))?;
    new.set_len(segments.size()).map_err(io("sizing"))?;
    new.write_all_at(&encode_segment_header(base, segments.size()), 0)
        .map_err(io("writing"))?;
    let write = |bytes: &[u8], at: u64| new.write_all_at(bytes, at - base).map_err(io("writing"));
    let copy = |from: u64, to: u64| -> Result<(), StorageError> {
        let mut buf = vec![0u8; (to - from) as usize];
        old.read_exact_at(&mut buf, from - base)
            .map_err(|e| StorageError::io("reading the old segment failed", e))?;
        new.write_all_at(&buf, from - base).map_err(io("writing"))
    };
    let mut layout = Vec::new();
    let mut index = 0;
    while let Some(frame) = frames.get(index) {
        if frame.all_dead() {
            // This frame and every following one with nothing live become one gap frame.
            let run_end = frames
                .iter()
                .skip(index)
                .take_while(|f| f.all_dead())
                .count()
                + index;
            let run = frames.get(index..run_end).unwrap_or_default();
            let start = frame.start;
            let end = run.last().map_or(frame.end, |f| f.end);
            let sequences: u32 = run.iter().map(|f| f.sequences).sum();
            let summary = summary_of(run.iter().flat_map(|f| &f.items));
            let len = u32::try_from(end - start).unwrap_or(u32::MAX);
            let mut bytes = encode_gap_header(len, sequences, frame.sequence);
            bytes.extend(removed_bytes(
                end - start - BATCH_HEADER_LEN as u64,
                &summary,
            ));
            write(&bytes, start)?;
            layout.push((start, end));
            index = run_end;
            continue;
        }
        // A frame with live records: same header but for the record count, live records
        // copied, each run of dead ones replaced by one removed record.
        let mut records = 0u32;
        let mut item = 0;
        while let Some(current) = frame.items.get(item) {
            if matches!(current.fate, Fate::Live) {
                let run_end = frame
                    .items
                    .iter()
                    .skip(item)
                    .take_while(|i| matches!(i.fate, Fate::Live))
                    .count()
                    + item;
                let last = frame.items.get(run_end - 1).unwrap_or(current);
                copy(current.at, last.at + last.len)?;
                records += u32::try_from(run_end - item).unwrap_or(u32::MAX);
                item = run_end;
            } else {
                let run_end = frame
                    .items
                    .iter()
                    .skip(item)
                    .take_while(|i| !matches!(i.fate, Fate::Live))
                    .count()
                    + item;
                let run = frame.items.get(item..run_end).unwrap_or_default();
                let last = run.last().unwrap_or(current);
                let len = last.at + last.len - current.at;
                write(&removed_bytes(len, &summary_of(run.iter())), current.at)?;
                records += 1;
                item = run_end;
            }
        }
        let mut header = [0u8; BATCH_HEADER_LEN];
        old.read_exact_at(&mut header, frame.start - base)
            .map_err(|e| StorageError::io("reading the old segment failed", e))?;
        write(&reencode_batch_header(&header, records), frame.start)?;
        layout.push((frame.start, frame.end));
        index += 1;
    }
    new.sync_data().map_err(io("flushing"))?;
    Ok(layout)
}

/// Swaps the rewritten segment in, if every event it drops is still hidden; updates the
/// index. Returns whether it swapped.
fn swap(
    shared: &Shared,
    base: u64,
    frames: &[Frame],
    temp: &Path,
    layout: Vec<(u64, u64)>,
    since: Timestamp,
) -> Result<bool, StorageError> {
    let segments = &shared.segments;
    let storage = segments.storage();
    let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
    let now = Timestamp::now().max(since);
    let still_hidden = frames
        .iter()
        .flat_map(|f| &f.items)
        .all(|item| match &item.fate {
            Fate::Dead {
                stream,
                revision,
                recorded,
                ..
            } => index
                .stream(stream.as_str())
                .and_then(|e| e.visibility(now))
                .is_none_or(|v| !v.shows(*revision, *recorded)),
            _ => true,
        });
    if !still_hidden {
        drop(index);
        let _ = storage.remove_file(temp);
        return Ok(false);
    }
    let path = segments.path(base);
    storage
        .rename(temp, &path)
        .and_then(|()| storage.sync_dir(segments.dir()))
        .map_err(|e| StorageError::io(format!("replacing {} failed", path.display()), e))?;
    let file: Arc<dyn StorageFile> = storage
        .open(&path, OpenMode::ReadWrite)
        .map_err(|e| StorageError::io(format!("reopening {} failed", path.display()), e))?;
    segments.insert(base, file);
    let mut map = SegmentMap::new(Segments::data_start(base));
    for (start, end) in layout {
        map.add_batch(start - base, end - base);
    }
    index.segments.insert(base, map);
    for item in frames.iter().flat_map(|f| &f.items) {
        if let Fate::Dead {
            stream,
            revision,
            id,
            ..
        } = &item.fate
        {
            index.forget_event(stream.as_str(), *revision, *id, item.at);
        }
    }
    Ok(true)
}
