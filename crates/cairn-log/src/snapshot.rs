//! Index snapshots: the derived index written to one file when the store closes, so that
//! the next open replays only the log written after it instead of the whole log.
//!
//! A snapshot is an optimisation, never a source of truth: it is checked (checksum,
//! version, and that the log still holds the last batch it covers exactly where it says)
//! and ignored when anything is off, in which case the log is replayed from the start.
//! Its layout is in `FORMAT.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_core::{Position, Revision, StreamMetadata, StreamName, Uuid};

use crate::format::{BATCH_HEADER_LEN, FormatError, decode_batch_header};
use crate::ids::IdIndex;
use crate::index::{Index, Lifecycle, SegmentMap};
use crate::segments::Segments;
use crate::storage::{OpenMode, Storage};

const MAGIC: &[u8; 8] = b"CAIRNIDX";
const VERSION: u32 = 3;
const FILE: &str = "snapshot";
const TEMP: &str = "snapshot.tmp";

const HAS_DELETED_BEFORE: u8 = 1;
const HAS_MAX_COUNT: u8 = 2;
const HAS_MAX_AGE: u8 = 4;
const HAS_TRUNCATE_BEFORE: u8 = 8;

/// Where the snapshot of the store in `dir` lives.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("index").join(FILE)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Encodes the whole index.
pub(crate) fn encode(index: &Index) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + index.ids.len() * 10 + index.streams.len() * 32);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&index.end.to_le_bytes());
    buf.extend_from_slice(&index.next_sequence.to_le_bytes());
    put_option(&mut buf, index.head.map(|p| p.0));
    match index.last_batch {
        Some((start, sequence)) => {
            buf.push(1);
            buf.extend_from_slice(&start.to_le_bytes());
            buf.extend_from_slice(&sequence.to_le_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&(index.segments.len() as u64).to_le_bytes());
    for (base, map) in &index.segments {
        buf.extend_from_slice(&base.to_le_bytes());
        buf.extend_from_slice(&map.end.to_le_bytes());
        buf.extend_from_slice(&(map.blocks.len() as u64).to_le_bytes());
        for block in &map.blocks {
            buf.extend_from_slice(&block.to_le_bytes());
        }
    }
    buf.extend_from_slice(&(index.streams.len() as u64).to_le_bytes());
    for entry in &index.streams {
        let name = index.name_of(entry).as_bytes();
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name);
        buf.push(match entry.lifecycle {
            Lifecycle::Live => 0,
            Lifecycle::SoftDeleted => 1,
            Lifecycle::Tombstoned => 2,
        });
        let metadata = entry.metadata();
        let deleted_before = entry.deleted_before();
        let mut flags = 0;
        if deleted_before.is_some() {
            flags |= HAS_DELETED_BEFORE;
        }
        if metadata.max_count.is_some() {
            flags |= HAS_MAX_COUNT;
        }
        if metadata.max_age.is_some() {
            flags |= HAS_MAX_AGE;
        }
        if metadata.truncate_before.is_some() {
            flags |= HAS_TRUNCATE_BEFORE;
        }
        buf.push(flags);
        for value in [
            deleted_before.map(|r| r.0),
            metadata.max_count,
            metadata
                .max_age
                .map(|age| u64::try_from(age.as_micros()).unwrap_or(u64::MAX)),
            metadata.truncate_before.map(|r| r.0),
        ]
        .into_iter()
        .flatten()
        {
            buf.extend_from_slice(&value.to_le_bytes());
        }
        put_varint(&mut buf, entry.positions.len() as u64);
        let mut previous = 0u64;
        for &position in &entry.positions {
            put_varint(&mut buf, position.wrapping_sub(previous));
            previous = position;
        }
    }
    let (dir, tags, low, high) = index.ids.base_parts();
    buf.extend_from_slice(&(dir.len() as u64).to_le_bytes());
    for offset in dir {
        buf.extend_from_slice(&offset.to_le_bytes());
    }
    buf.extend_from_slice(&(tags.len() as u64).to_le_bytes());
    for tag in tags {
        buf.extend_from_slice(&tag.to_le_bytes());
    }
    for low in low {
        buf.extend_from_slice(&low.to_le_bytes());
    }
    for high in high {
        buf.extend_from_slice(&high.to_le_bytes());
    }
    let (recent, overflow) = index.ids.recent_parts();
    buf.extend_from_slice(&(recent.len() as u64).to_le_bytes());
    for (key, position) in recent {
        buf.extend_from_slice(&key.to_le_bytes());
        buf.extend_from_slice(&position.to_le_bytes());
    }
    buf.extend_from_slice(&(overflow.len() as u64).to_le_bytes());
    for (id, position) in overflow {
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(&position.to_le_bytes());
    }
    buf.extend_from_slice(index.ids.ceiling().as_bytes());
    for labels in [&index.categories, &index.event_types] {
        buf.extend_from_slice(&(labels.len() as u64).to_le_bytes());
        for (hash, regions) in labels {
            buf.extend_from_slice(&hash.to_le_bytes());
            put_varint(&mut buf, regions.len() as u64);
            let mut previous = 0u32;
            for &region in regions {
                put_varint(&mut buf, u64::from(region - previous));
                previous = region;
            }
        }
    }
    let checksum = crc32c::crc32c(&buf);
    buf.extend_from_slice(&checksum.to_le_bytes());
    buf
}

fn put_option(buf: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => {
            buf.push(1);
            buf.extend_from_slice(&value.to_le_bytes());
        }
        None => buf.push(0),
    }
}

/// A bounds-checked cursor over snapshot bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], FormatError> {
        let slice = self
            .bytes
            .get(self.at..self.at + len)
            .ok_or(FormatError::Truncated)?;
        self.at += len;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        self.take(1)?.first().copied().ok_or(FormatError::Truncated)
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        let raw: [u8; 2] = self
            .take(2)?
            .try_into()
            .map_err(|_| FormatError::Truncated)?;
        Ok(u16::from_le_bytes(raw))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let raw: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| FormatError::Truncated)?;
        Ok(u32::from_le_bytes(raw))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let raw: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| FormatError::Truncated)?;
        Ok(u64::from_le_bytes(raw))
    }

    fn option(&mut self) -> Result<Option<u64>, FormatError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.u64().map(Some),
            _ => Err(FormatError::Length),
        }
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(FormatError::Length)
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left.
    fn count(&mut self, min_size: usize) -> Result<usize, FormatError> {
        let count = usize::try_from(self.u64()?).map_err(|_| FormatError::Length)?;
        if count.saturating_mul(min_size) > self.bytes.len() - self.at {
            return Err(FormatError::Length);
        }
        Ok(count)
    }
}

/// Decodes a snapshot, checking its checksum and version.
pub(crate) fn decode(bytes: &[u8]) -> Result<Index, FormatError> {
    let body_len = bytes.len().checked_sub(4).ok_or(FormatError::Truncated)?;
    let (body, checksum) = bytes.split_at(body_len);
    let checksum: [u8; 4] = checksum.try_into().map_err(|_| FormatError::Truncated)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(checksum) {
        return Err(FormatError::Checksum);
    }
    let mut cursor = Cursor { bytes: body, at: 0 };
    if cursor.take(8)? != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = cursor.u32()?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let mut index = Index::new();
    index.end = cursor.u64()?;
    index.next_sequence = cursor.u64()?;
    index.head = cursor.option()?.map(Position);
    index.last_batch = match cursor.u8()? {
        0 => None,
        1 => Some((cursor.u64()?, cursor.u64()?)),
        _ => return Err(FormatError::Length),
    };
    for _ in 0..cursor.count(24)? {
        let base = cursor.u64()?;
        let end = cursor.u64()?;
        let blocks = (0..cursor.count(4)?)
            .map(|_| cursor.u32())
            .collect::<Result<Vec<u32>, _>>()?;
        index.segments.insert(base, SegmentMap { end, blocks });
    }
    let streams = cursor.count(5)?;
    index.reserve_streams(streams);
    for _ in 0..streams {
        let len = usize::from(cursor.u16()?);
        let name = std::str::from_utf8(cursor.take(len)?).map_err(|_| FormatError::Utf8)?;
        StreamName::new(name).map_err(|_| FormatError::Utf8)?;
        let lifecycle = match cursor.u8()? {
            0 => Lifecycle::Live,
            1 => Lifecycle::SoftDeleted,
            2 => Lifecycle::Tombstoned,
            other => return Err(FormatError::Kind(other)),
        };
        let flags = cursor.u8()?;
        let mut field = |flag: u8| -> Result<Option<u64>, FormatError> {
            if flags & flag != 0 {
                cursor.u64().map(Some)
            } else {
                Ok(None)
            }
        };
        let deleted_before = field(HAS_DELETED_BEFORE)?.map(Revision);
        let metadata = StreamMetadata {
            max_count: field(HAS_MAX_COUNT)?,
            max_age: field(HAS_MAX_AGE)?.map(Duration::from_micros),
            truncate_before: field(HAS_TRUNCATE_BEFORE)?.map(Revision),
        };
        let count = usize::try_from(cursor.varint()?).map_err(|_| FormatError::Length)?;
        if count > body.len() - cursor.at {
            return Err(FormatError::Length);
        }
        let mut positions = Vec::with_capacity(count);
        let mut previous = 0u64;
        for _ in 0..count {
            previous = previous.wrapping_add(cursor.varint()?);
            positions.push(previous);
        }
        if index.stream(name).is_some() {
            return Err(FormatError::Length);
        }
        index.add_restored(name, positions, lifecycle, deleted_before, metadata);
    }
    let dir = (0..cursor.count(4)?)
        .map(|_| cursor.u32())
        .collect::<Result<Vec<u32>, _>>()?;
    let ids = cursor.count(10)?;
    let tags = (0..ids)
        .map(|_| cursor.u32())
        .collect::<Result<Vec<u32>, _>>()?;
    let low = (0..ids)
        .map(|_| cursor.u32())
        .collect::<Result<Vec<u32>, _>>()?;
    let high = (0..ids)
        .map(|_| cursor.u16())
        .collect::<Result<Vec<u16>, _>>()?;
    let recent = (0..cursor.count(16)?)
        .map(|_| Ok((cursor.u64()?, cursor.u64()?)))
        .collect::<Result<Vec<(u64, u64)>, FormatError>>()?;
    let overflow = (0..cursor.count(24)?)
        .map(|_| {
            let id: [u8; 16] = cursor
                .take(16)?
                .try_into()
                .map_err(|_| FormatError::Truncated)?;
            Ok((Uuid::from_bytes(id), cursor.u64()?))
        })
        .collect::<Result<Vec<(Uuid, u64)>, FormatError>>()?;
    let ceiling: [u8; 16] = cursor
        .take(16)?
        .try_into()
        .map_err(|_| FormatError::Truncated)?;
    index.ids = IdIndex::from_parts(
        dir,
        tags,
        low,
        high,
        recent,
        overflow,
        Uuid::from_bytes(ceiling),
    )
    .ok_or(FormatError::Length)?;
    for labels in [&mut index.categories, &mut index.event_types] {
        for _ in 0..cursor.count(9)? {
            let hash = cursor.u64()?;
            let count = usize::try_from(cursor.varint()?).map_err(|_| FormatError::Length)?;
            if count > body.len() - cursor.at {
                return Err(FormatError::Length);
            }
            let mut regions = Vec::with_capacity(count);
            let mut previous = 0u32;
            for _ in 0..count {
                let delta = u32::try_from(cursor.varint()?).map_err(|_| FormatError::Length)?;
                previous = previous.checked_add(delta).ok_or(FormatError::Length)?;
                regions.push(previous);
            }
            labels.insert(hash, regions);
        }
    }
    if cursor.at != body.len() {
        return Err(FormatError::Length);
    }
    Ok(index)
}

/// Writes the snapshot of `index` for the store in `dir`, atomically (temporary file,
/// flush, rename, flush of the directory).
pub(crate) fn write(storage: &dyn Storage, dir: &Path, index: &Index) -> std::io::Result<()> {
    let index_dir = dir.join("index");
    storage.create_dir_all(&index_dir)?;
    let temp = index_dir.join(TEMP);
    let file = storage.open(&temp, OpenMode::CreateTruncate)?;
    file.write_all_at(&encode(index), 0)?;
    file.sync_data()?;
    storage.rename(&temp, &index_dir.join(FILE))?;
    storage.sync_dir(&index_dir)
}

/// Deletes the snapshot, if any (for example once the log it describes was rewritten), and
/// makes the deletion durable.
pub(crate) fn remove(storage: &dyn Storage, dir: &Path) -> std::io::Result<()> {
    match storage.remove_file(&path(dir)) {
        Ok(()) => storage.sync_dir(&dir.join("index")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Loads the snapshot of the store in `dir`, if there is one that checks out against the
/// log in `segments` (whose files must be registered already). `None` means: replay the
/// whole log.
pub(crate) fn load(storage: &dyn Storage, dir: &Path, segments: &Segments) -> Option<Index> {
    let path = path(dir);
    let file = storage.open(&path, OpenMode::Read).ok()?;
    let len = usize::try_from(file.len().ok()?).ok()?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0).ok()?;
    let index = match decode(&bytes) {
        Ok(index) => index,
        Err(reason) => {
            tracing::warn!(file = %path.display(), %reason, "ignoring an unreadable index snapshot");
            return None;
        }
    };
    // The log must still hold the last batch the snapshot covers, where it says.
    if let Some((start, sequence)) = index.last_batch {
        let mut header = [0u8; BATCH_HEADER_LEN];
        segments.read_exact_at(&mut header, start).ok()?;
        let found = decode_batch_header(&header).ok()?;
        if found.sequence != sequence || start + u64::from(found.len) != index.end {
            tracing::warn!(file = %path.display(), "ignoring an index snapshot the log does not match");
            return None;
        }
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::index::{Effect, StreamEntry};

    #[test]
    fn a_snapshot_round_trips_the_whole_index() {
        let mut index = Index::new();
        let name = |s: &str| StreamName::new(s).unwrap();
        index.add_batch(0, 64, 5000, 1);
        let mut ids = Vec::new();
        for (n, stream) in ["a", "b", "a", "c"].iter().enumerate() {
            let revision = index
                .stream(stream)
                .map_or(Revision(0), StreamEntry::next_revision);
            let (id, position) = (Uuid::now_v7(), 100 + n as u64 * 300);
            index.apply(&Effect::Event {
                stream: name(stream),
                revision,
                position: Position(position),
                id,
                event_type: n as u64 % 2,
            });
            ids.push((id, position));
            if n == 1 {
                // Some ids in the compact part, some recent.
                index.ids.merge();
            }
        }
        index.apply(&Effect::Metadata {
            stream: name("b"),
            metadata: StreamMetadata::default()
                .with_max_count(3)
                .with_max_age(Duration::from_secs(9)),
        });
        index.apply(&Effect::Delete {
            stream: name("c"),
            deleted_before: Revision(1),
        });
        index.apply(&Effect::Tombstone { stream: name("d") });
        let bytes = encode(&index);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.end, index.end);
        assert_eq!(decoded.head, index.head);
        assert_eq!(decoded.last_batch, index.last_batch);
        assert_eq!(decoded.ids.len(), index.ids.len());
        for (id, position) in ids {
            assert_eq!(
                decoded.id_candidates(id).collect::<Vec<_>>(),
                vec![position]
            );
        }
        assert_eq!(decoded.categories, index.categories);
        assert_eq!(decoded.event_types, index.event_types);
        for stream in ["a", "b", "c", "d"] {
            let (before, after) = (
                index.stream(stream).unwrap(),
                decoded.stream(stream).unwrap(),
            );
            assert_eq!(before.positions, after.positions);
            assert_eq!(before.state(), after.state());
            assert_eq!(before.metadata(), after.metadata());
            assert_eq!(before.deleted_before(), after.deleted_before());
        }
        assert_eq!(decoded.all_visible(), index.all_visible());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(decode(&damaged).is_err(), "damage at {at} went unnoticed");
        }
    }
}
