//! The index: everything derived from the log that reads and writes need at once.
//!
//! - streams: name → revisions → positions, lifecycle and retention;
//! - event ids → positions, for idempotency;
//! - per segment, where its batches lie (a boundary every [`BLOCK`] bytes), so that a read
//!   can start at any position or walk backwards;
//! - the durable end of the log and the last event's position.
//!
//! The writer thread is the only one that changes it, and only with what is already on
//! stable storage ([`Index::apply`]); recovery rebuilds it by applying the same
//! [`Effect`]s decoded from the log. It never holds anything the log does not.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use hashbrown::HashTable;

use crate::ids::IdIndex;
pub(crate) use crate::ids::id_key;
use crate::segments::Segments;
use cairn_core::{
    Position, Revision, StreamMetadata, StreamName, StreamState, Timestamp, Uuid, Visibility,
};

/// The granularity of the batch boundary index, in bytes.
pub(crate) const BLOCK: u64 = 4096;

/// The granularity of the category and event type indexes, in bytes of log: they record
/// which regions of this size hold events of each category and type.
pub(crate) const REGION: u64 = 64 << 10;

/// A stable 64-bit hash of a category or event type (FNV-1a), the key of their indexes. A
/// collision only makes a filtered read look at a region it could have skipped.
pub(crate) fn label_hash(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The regions, in increasing order, that hold events of one category or type.
pub(crate) type Regions = Vec<u32>;

fn region_of(position: u64) -> u32 {
    u32::try_from(position / REGION).unwrap_or(u32::MAX)
}

fn note_region(regions: &mut Regions, region: u32) {
    if regions.last() != Some(&region) {
        regions.push(region);
    }
}

/// A change to the index that a committed record makes.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    Event {
        stream: StreamName,
        revision: Revision,
        position: Position,
        id: Uuid,
        /// [`label_hash`] of the event type.
        event_type: u64,
    },
    Metadata {
        stream: StreamName,
        metadata: StreamMetadata,
    },
    Delete {
        stream: StreamName,
        deleted_before: Revision,
    },
    Tombstone {
        stream: StreamName,
    },
    /// A scavenge removed events of `stream` up to `last_removed`; revisions continue
    /// after it.
    Removed {
        stream: StreamName,
        last_removed: Revision,
    },
}

/// The position recorded for a revision a scavenge removed.
pub(crate) const REMOVED: u64 = u64::MAX;

/// A stream's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Lifecycle {
    #[default]
    Live,
    SoftDeleted,
    Tombstoned,
}

/// What the index knows about one stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    /// The position of each revision: revision `r` is `positions[r]`, hidden or not.
    pub(crate) positions: Vec<u64>,
    /// Where the stream's name lies in the index's name arena ([`Index::name_of`]).
    name_at: u64,
    name_len: u16,
    pub(crate) lifecycle: Lifecycle,
    /// What may hide events of this stream, for the few streams that have any: kept out of
    /// line so that an ordinary stream costs as little memory as possible.
    restrictions: Option<Box<Restrictions>>,
}

/// A stream's retention metadata and soft-delete boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Restrictions {
    /// The first revision after the events of the latest soft delete.
    deleted_before: Option<Revision>,
    metadata: StreamMetadata,
}

impl StreamEntry {
    /// A stream entry as a snapshot recorded it, its name already in the arena.
    fn restored(
        (name_at, name_len): (u64, u16),
        positions: Vec<u64>,
        lifecycle: Lifecycle,
        deleted_before: Option<Revision>,
        metadata: StreamMetadata,
    ) -> Self {
        let mut entry = Self {
            positions,
            name_at,
            name_len,
            lifecycle,
            restrictions: None,
        };
        entry.set_restrictions(deleted_before, metadata);
        entry
    }

    /// The stream's retention metadata.
    pub(crate) fn metadata(&self) -> StreamMetadata {
        self.restrictions
            .as_ref()
            .map(|r| r.metadata)
            .unwrap_or_default()
    }

    /// The first revision after the events of the latest soft delete.
    pub(crate) fn deleted_before(&self) -> Option<Revision> {
        self.restrictions.as_ref().and_then(|r| r.deleted_before)
    }

    fn set_restrictions(&mut self, deleted_before: Option<Revision>, metadata: StreamMetadata) {
        let restrictions = Restrictions {
            deleted_before,
            metadata,
        };
        self.restrictions =
            (restrictions != Restrictions::default()).then(|| Box::new(restrictions));
    }

    pub(crate) fn last_revision(&self) -> Option<Revision> {
        self.positions
            .len()
            .checked_sub(1)
            .map(|r| Revision(r as u64))
    }

    pub(crate) fn next_revision(&self) -> Revision {
        Revision(self.positions.len() as u64)
    }

    pub(crate) fn state(&self) -> StreamState {
        match (self.lifecycle, self.last_revision()) {
            (Lifecycle::Tombstoned, _) => StreamState::Tombstoned,
            (_, None) => StreamState::NoStream,
            (Lifecycle::Live, Some(last_revision)) => StreamState::Active { last_revision },
            (Lifecycle::SoftDeleted, Some(last_revision)) => StreamState::Deleted { last_revision },
        }
    }

    /// Which events are visible at `now`; `None` when the stream is tombstoned.
    pub(crate) fn visibility(&self, now: Timestamp) -> Option<Visibility> {
        (self.lifecycle != Lifecycle::Tombstoned).then(|| {
            Visibility::new(
                &self.metadata(),
                self.deleted_before(),
                self.last_revision().unwrap_or_default(),
                now,
            )
        })
    }

    /// Whether anything of this stream may be hidden.
    fn is_restricted(&self) -> bool {
        self.lifecycle != Lifecycle::Live || self.restrictions.is_some()
    }
}

/// Where one segment's batches lie.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentMap {
    /// The offset in the segment right after its last batch.
    pub(crate) end: u64,
    /// For each block, the offset of the batch that covers its first byte.
    pub(crate) blocks: Vec<u32>,
}

impl SegmentMap {
    pub(crate) fn new(data_start: u64) -> Self {
        Self {
            end: data_start,
            blocks: Vec::new(),
        }
    }

    /// Records a batch at `[start, end)` of the segment.
    pub(crate) fn add_batch(&mut self, start: u64, end: u64) {
        let start32 = u32::try_from(start).unwrap_or(u32::MAX);
        while (self.blocks.len() as u64) * BLOCK < end {
            self.blocks.push(start32);
        }
        self.end = end;
    }

    /// The start of a batch at or before `offset` from which a forward walk reaches it, or
    /// `None` when `offset` lies past the segment's batches.
    pub(crate) fn batch_before(&self, offset: u64) -> Option<u64> {
        if offset >= self.end {
            return None;
        }
        let block = usize::try_from(offset / BLOCK).ok()?;
        self.blocks.get(block).map(|&start| u64::from(start))
    }
}

/// A hasher for keys that are already well mixed (see [`id_key`]).
#[derive(Default)]
pub(crate) struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// A map keyed by premixed 64-bit keys.
pub(crate) type PremixedMap<V> = HashMap<u64, V, BuildHasherDefault<PremixedHasher>>;

/// The name of `entry` in `arena`.
fn name_in<'a>(arena: &'a str, entry: &StreamEntry) -> &'a str {
    usize::try_from(entry.name_at)
        .ok()
        .and_then(|at| arena.get(at..at + usize::from(entry.name_len)))
        .unwrap_or_default()
}

/// Positions gathered while the log is replayed, placed into the streams' revision lists
/// in one go when it ends ([`Index::compact`]): each list is then allocated once at its
/// final size, instead of growing one event at a time and leaving the freed smaller copies
/// behind as heap the process keeps.
#[derive(Debug, Default)]
struct Replay {
    /// (stream number, position) in log order.
    events: Vec<(u32, u64)>,
    /// How many of `events` each stream number has.
    pending: Vec<u64>,
    /// (event id key, position) of the events replayed, merged into the id index in one
    /// go at the end rather than through many growing hash maps and merges.
    ids: Vec<(u64, u64)>,
}

impl Replay {
    fn pending(&self, number: u32) -> u64 {
        self.pending.get(number as usize).copied().unwrap_or(0)
    }

    fn push(&mut self, number: u32, position: u64) {
        let at = number as usize;
        if self.pending.len() <= at {
            self.pending.resize(at + 1, 0);
        }
        if let Some(pending) = self.pending.get_mut(at) {
            *pending += 1;
        }
        self.events.push((number, position));
    }
}

/// The derived state of the log.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Stream name → its number, an index into `streams` (the table holds only numbers and
    /// hashes names through `streams`, so a name is stored once).
    names: HashTable<u32>,
    /// Every stream's name, one after the other (see [`StreamEntry`]): one allocation
    /// instead of one per stream.
    name_arena: String,
    /// Hashes stream names for `names`. Set when the index is made and never replaced,
    /// so a hash from [`Index::name_hash`] stays good for the index's life (the writer's
    /// overlay keys streams by it).
    name_hasher: cairn_core::KeyedHash,
    pub(crate) streams: Vec<StreamEntry>,
    /// Event id → candidate positions (the caller checks the id recorded there).
    pub(crate) ids: IdIndex,
    /// How many streams may hide some of their events.
    restricted: usize,
    /// The stream the last effect touched, to skip the name lookup for runs of events of
    /// one stream.
    last_touched: Option<(StreamName, u32, u64)>,
    /// While the log is replayed on open: the positions gathered, not yet in the streams.
    replay: Option<Replay>,
    /// Category hash → the regions holding events of that category.
    pub(crate) categories: PremixedMap<Regions>,
    /// Event type hash → the regions holding events of that type.
    pub(crate) event_types: PremixedMap<Regions>,
    /// The category, event type and region of the last event noted in `categories` and
    /// `event_types`: an event like it is already there (regions only grow, in log order),
    /// which spares most events of a batch both lookups.
    last_noted: Option<(u64, u64, u32)>,
    /// Segment base → where its batches lie.
    pub(crate) segments: BTreeMap<u64, SegmentMap>,
    /// The global offset right after the last durable batch.
    pub(crate) end: u64,
    /// The position of the last event.
    pub(crate) head: Option<Position>,
    /// The sequence number the next batch gets.
    pub(crate) next_sequence: u64,
    /// The global start and the sequence number of the last batch.
    pub(crate) last_batch: Option<(u64, u64)>,
}

impl Index {
    pub(crate) fn new() -> Self {
        Self {
            next_sequence: 1,
            ..Self::default()
        }
    }

    /// The hash of stream name `name` (see [`Index::stream_state_hashed`]).
    pub(crate) fn name_hash(&self, name: &str) -> u64 {
        self.name_hasher.hash_one(name)
    }

    /// The hasher behind [`Index::name_hash`], for hashing names without the index.
    pub(crate) fn name_hasher(&self) -> cairn_core::KeyedHash {
        self.name_hasher
    }

    fn stream_number(&self, name: &str) -> Option<u32> {
        self.stream_number_hashed(name, self.name_hash(name))
    }

    fn stream_number_hashed(&self, name: &str, hash: u64) -> Option<u32> {
        let (streams, arena) = (&self.streams, self.name_arena.as_str());
        self.names
            .find(hash, |&number| {
                streams
                    .get(number as usize)
                    .is_some_and(|entry| name_in(arena, entry) == name)
            })
            .copied()
    }

    /// The name of a stream of this index.
    pub(crate) fn name_of(&self, entry: &StreamEntry) -> &str {
        name_in(&self.name_arena, entry)
    }

    /// The last stream an effect touched, when it is `name`: a copy of its name that costs
    /// no allocation.
    pub(crate) fn recent_name(&self, name: &str) -> Option<StreamName> {
        match &self.last_touched {
            Some((last, _, _)) if last.as_str() == name => Some(last.clone()),
            _ => None,
        }
    }

    /// Hashes the name of stream `number`, for the name table.
    fn rehasher<'a>(
        streams: &'a [StreamEntry],
        arena: &'a str,
        hasher: &'a cairn_core::KeyedHash,
    ) -> impl Fn(&u32) -> u64 + 'a {
        move |&number| {
            streams
                .get(number as usize)
                .map_or(0, |entry| hasher.hash_one(name_in(arena, entry)))
        }
    }

    pub(crate) fn stream(&self, name: &str) -> Option<&StreamEntry> {
        let number = self.stream_number(name)?;
        self.streams.get(number as usize)
    }

    /// The state of the stream whose name is `name` and its [`Index::name_hash`] `hash`
    /// (a stream never seen is [`StreamState::NoStream`]).
    pub(crate) fn stream_state_hashed(&self, name: &str, hash: u64) -> StreamState {
        self.stream_number_hashed(name, hash)
            .and_then(|number| self.streams.get(number as usize))
            .map_or(StreamState::NoStream, StreamEntry::state)
    }

    /// Whether no stream hides anything, so every event in the log is visible.
    pub(crate) fn all_visible(&self) -> bool {
        self.restricted == 0
    }

    /// The positions where event `id` may be recorded (see [`Index::ids`]).
    pub(crate) fn id_candidates(&self, id: Uuid) -> impl Iterator<Item = u64> + '_ {
        self.ids.candidates(id)
    }

    /// Starts a replay of the log (see [`Replay`]); [`Index::compact`] ends it.
    pub(crate) fn begin_replay(&mut self) {
        self.replay = Some(Replay::default());
    }

    /// The next revision of stream `name` (also while the log is replayed).
    pub(crate) fn next_revision(&self, name: &str) -> Revision {
        let Some(number) = self.stream_number(name) else {
            return Revision(0);
        };
        let pending = self.replay.as_ref().map_or(0, |r| r.pending(number));
        self.streams
            .get(number as usize)
            .map_or(Revision(0), |entry| {
                Revision(entry.next_revision().0 + pending)
            })
    }

    /// Makes the index as compact as it can be: ends a replay, merges recent ids into the
    /// compact id index and gives back the spare capacity that growing the stream table
    /// and the revision lists left behind.
    pub(crate) fn compact(&mut self) {
        if let Some(replay) = self.replay.take() {
            for (number, &count) in replay.pending.iter().enumerate() {
                if let Some(entry) = self.streams.get_mut(number)
                    && count > 0
                {
                    entry
                        .positions
                        .reserve_exact(usize::try_from(count).unwrap_or(usize::MAX));
                }
            }
            for (number, position) in replay.events {
                if let Some(entry) = self.streams.get_mut(number as usize) {
                    entry.positions.push(position);
                }
            }
            self.ids.merge_with(replay.ids);
        } else {
            self.ids.merge();
        }
        for entry in &mut self.streams {
            if entry.positions.capacity() > entry.positions.len() + entry.positions.len() / 8 {
                entry.positions.shrink_to_fit();
            }
        }
        self.streams.shrink_to_fit();
        self.name_arena.shrink_to_fit();
        self.names.shrink_to_fit(Self::rehasher(
            &self.streams,
            &self.name_arena,
            &self.name_hasher,
        ));
    }

    /// Forgets the event at `revision` of `stream`, whose id is `id` and which was recorded
    /// at `position`: a scavenge removed it.
    pub(crate) fn forget_event(
        &mut self,
        stream: &str,
        revision: Revision,
        id: Uuid,
        position: u64,
    ) {
        if let Some(number) = self.stream_number(stream)
            && let Some(entry) = self.streams.get_mut(number as usize)
            && let Some(slot) = usize::try_from(revision.0)
                .ok()
                .and_then(|r| entry.positions.get_mut(r))
            && *slot == position
        {
            *slot = REMOVED;
        }
        self.ids.forget(id, position);
    }

    /// The regions, from `first` on, that may hold events passing a filter on `category`
    /// and `event_types` (any of them); `None` when the filter names neither, so only a full
    /// scan can tell.
    pub(crate) fn candidate_regions(
        &self,
        category: Option<&str>,
        event_types: &[String],
        first: u32,
    ) -> Option<Vec<u32>> {
        let by_category = category.map(|c| {
            self.categories
                .get(&label_hash(c))
                .map(|r| r.as_slice())
                .unwrap_or_default()
        });
        let by_type = (!event_types.is_empty()).then(|| {
            let mut union: Vec<u32> = event_types
                .iter()
                .filter_map(|t| self.event_types.get(&label_hash(t)))
                .flat_map(|r| r.iter().copied().skip_while(|&x| x < first))
                .collect();
            union.sort_unstable();
            union.dedup();
            union
        });
        let from = |regions: &[u32]| -> Vec<u32> {
            let start = regions.partition_point(|&r| r < first);
            regions.get(start..).unwrap_or_default().to_vec()
        };
        match (by_category, by_type) {
            (None, None) => None,
            (Some(category), None) => Some(from(category)),
            (None, Some(types)) => Some(types),
            (Some(category), Some(types)) => Some(
                from(category)
                    .into_iter()
                    .filter(|r| types.binary_search(r).is_ok())
                    .collect(),
            ),
        }
    }

    /// Streams and their names in name order after `after`, at most `limit`.
    pub(crate) fn list(&self, after: Option<&str>, limit: usize) -> Vec<(&str, &StreamEntry)> {
        let mut entries: Vec<(&str, &StreamEntry)> = self
            .streams
            .iter()
            .map(|e| (self.name_of(e), e))
            .filter(|(name, _)| after.is_none_or(|after| *name > after))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries.truncate(limit);
        entries
    }

    /// The number of stream `name`, added to the table when new, and the [`label_hash`] of
    /// its category.
    fn number_for(&mut self, name: &StreamName) -> (u32, u64) {
        match &self.last_touched {
            Some((last, number, category)) if last == name => (*number, *category),
            _ => {
                let number = match self.stream_number(name.as_str()) {
                    Some(number) => number,
                    None => self.add_stream(name.clone()),
                };
                let category = label_hash(name.category());
                self.last_touched = Some((name.clone(), number, category));
                (number, category)
            }
        }
    }

    /// Adds a stream the table does not hold yet and returns its number.
    fn add_stream(&mut self, name: StreamName) -> u32 {
        self.push_stream(name.as_str(), |at| {
            StreamEntry::restored(
                at,
                Vec::new(),
                Lifecycle::Live,
                None,
                StreamMetadata::default(),
            )
        })
    }

    /// Adds the stream a snapshot recorded (its name unchecked against the table: a
    /// snapshot holds each once) and returns its number.
    pub(crate) fn add_restored(
        &mut self,
        name: &str,
        positions: Vec<u64>,
        lifecycle: Lifecycle,
        deleted_before: Option<Revision>,
        metadata: StreamMetadata,
    ) -> u32 {
        self.push_stream(name, |at| {
            StreamEntry::restored(at, positions, lifecycle, deleted_before, metadata)
        })
    }

    fn push_stream(&mut self, name: &str, entry: impl FnOnce((u64, u16)) -> StreamEntry) -> u32 {
        let number = u32::try_from(self.streams.len()).unwrap_or(u32::MAX);
        let hash = self.name_hasher.hash_one(name);
        let at = (
            self.name_arena.len() as u64,
            u16::try_from(name.len()).unwrap_or(u16::MAX),
        );
        self.name_arena.push_str(name);
        let entry = entry(at);
        if entry.is_restricted() {
            self.restricted += 1;
        }
        self.streams.push(entry);
        self.names.insert_unique(
            hash,
            number,
            Self::rehasher(&self.streams, &self.name_arena, &self.name_hasher),
        );
        number
    }

    /// Applies the effect of one committed record.
    pub(crate) fn apply(&mut self, effect: &Effect) {
        if let Some((id, position)) = self.apply_but_id(effect) {
            self.insert_id(id, position);
        }
    }

    /// Records that event `id` is at `position` (see [`Index::apply_but_id`]).
    pub(crate) fn insert_id(&mut self, id: Uuid, position: u64) {
        match &mut self.replay {
            Some(replay) => {
                replay.ids.push((id_key(id), position));
                self.ids.raise_ceiling(id);
            }
            None => self.ids.insert(id, position),
        }
    }

    /// Applies the effect of one committed record except for the event id it records,
    /// which it returns with the event's position for [`Index::insert_id`]. Only appends
    /// look ids up, and the writer's overlay holds them until the id is in: the syncer
    /// answers a batch's appends first and adds their ids after.
    pub(crate) fn apply_but_id(&mut self, effect: &Effect) -> Option<(Uuid, u64)> {
        let name = match effect {
            Effect::Event { stream, .. }
            | Effect::Metadata { stream, .. }
            | Effect::Delete { stream, .. }
            | Effect::Tombstone { stream }
            | Effect::Removed { stream, .. } => stream,
        };
        let (number, category) = self.number_for(name);
        let entry = self
            .streams
            .get_mut(number as usize)
            .expect("every name maps to an entry of the stream table");
        let replay = self.replay.as_mut();
        let was_restricted = entry.is_restricted();
        let mut new_id = None;
        match effect {
            Effect::Event {
                revision,
                position,
                id,
                event_type,
                ..
            } => {
                match replay {
                    Some(replay) => {
                        debug_assert_eq!(
                            revision.0,
                            entry.positions.len() as u64 + replay.pending(number),
                            "revisions are gapless"
                        );
                        replay.push(number, position.0);
                    }
                    None => {
                        debug_assert_eq!(*revision, entry.next_revision(), "revisions are gapless");
                        entry.positions.push(position.0);
                    }
                }
                if entry.lifecycle == Lifecycle::SoftDeleted {
                    entry.lifecycle = Lifecycle::Live;
                }
                new_id = Some((*id, *position, *event_type));
            }
            Effect::Metadata { metadata, .. } => {
                entry.set_restrictions(entry.deleted_before(), *metadata);
            }
            Effect::Delete { deleted_before, .. } => {
                entry.lifecycle = Lifecycle::SoftDeleted;
                entry.set_restrictions(Some(*deleted_before), entry.metadata());
            }
            Effect::Tombstone { .. } => entry.lifecycle = Lifecycle::Tombstoned,
            Effect::Removed { last_removed, .. } => {
                let count = last_removed.0.saturating_add(1);
                match replay {
                    Some(replay) => {
                        let have = entry.positions.len() as u64 + replay.pending(number);
                        for _ in have..count {
                            replay.push(number, REMOVED);
                        }
                    }
                    None => {
                        let count = usize::try_from(count).unwrap_or(usize::MAX);
                        if entry.positions.len() < count {
                            entry.positions.resize(count, REMOVED);
                        }
                    }
                }
            }
        }
        let is_restricted = entry.is_restricted();
        if is_restricted && !was_restricted {
            self.restricted += 1;
        } else if was_restricted && !is_restricted {
            self.restricted -= 1;
        }
        let (id, position, event_type) = new_id?;
        let region = region_of(position.0);
        if self.last_noted != Some((category, event_type, region)) {
            note_region(self.categories.entry(category).or_default(), region);
            note_region(self.event_types.entry(event_type).or_default(), region);
            self.last_noted = Some((category, event_type, region));
        }
        self.head = Some(position);
        Some((id, position.0))
    }

    /// Records a durable batch frame at global `[start, end)` of the segment based at
    /// `base`, standing for `sequences` batches (more than one for a gap frame).
    pub(crate) fn add_batch(&mut self, base: u64, start: u64, end: u64, sequences: u64) {
        self.segments
            .entry(base)
            .or_insert_with(|| SegmentMap::new(Segments::data_start(base)))
            .add_batch(start - base, end - base);
        self.end = end;
        self.last_batch = Some((start, self.next_sequence));
        self.next_sequence += sequences;
    }

    /// Makes room for `streams` more streams (a snapshot being loaded).
    pub(crate) fn reserve_streams(&mut self, streams: usize) {
        self.streams.reserve_exact(streams);
        self.names.reserve(
            streams,
            Self::rehasher(&self.streams, &self.name_arena, &self.name_hasher),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    #[test]
    fn events_build_revisions_and_ids() {
        let mut index = Index::new();
        let first = Uuid::now_v7();
        let second = Uuid::now_v7();
        index.apply(&Effect::Event {
            stream: name("a"),
            revision: Revision(0),
            position: Position(100),
            id: first,
            event_type: 1,
        });
        index.apply(&Effect::Event {
            stream: name("a"),
            revision: Revision(1),
            position: Position(200),
            id: second,
            event_type: 1,
        });
        let entry = index.stream("a").unwrap();
        assert_eq!(entry.positions, vec![100, 200]);
        assert_eq!(
            entry.state(),
            StreamState::Active {
                last_revision: Revision(1)
            }
        );
        assert_eq!(index.id_candidates(first).collect::<Vec<_>>(), vec![100]);
        assert_eq!(index.id_candidates(second).collect::<Vec<_>>(), vec![200]);
        assert_eq!(index.head, Some(Position(200)));
        assert!(index.all_visible());
    }

    #[test]
    fn categories_and_event_types_learn_every_region_they_appear_in() {
        let mut index = Index::new();
        let mut revisions = HashMap::new();
        let (x, y) = (label_hash("X"), label_hash("Y"));
        // (stream, event type, position): runs of alike events, and changes of category,
        // type or region alone.
        let events = [
            ("a-1", x, 100),
            ("a-1", x, 200),
            ("a-1", y, 300),
            ("a-1", x, 400),
            ("b-1", x, 500),
            ("a-1", x, REGION + 100),
            ("a-1", x, REGION + 200),
            ("b-1", y, 3 * REGION),
            ("a-1", y, 3 * REGION + 100),
        ];
        for (stream, event_type, position) in events {
            let revision = revisions.entry(stream).or_insert(0u64);
            index.apply(&Effect::Event {
                stream: name(stream),
                revision: Revision(*revision),
                position: Position(position),
                id: Uuid::now_v7(),
                event_type,
            });
            *revision += 1;
        }
        let regions = |category: Option<&str>, event_type: &str| {
            index.candidate_regions(category, &[event_type.to_owned()], 0)
        };
        assert_eq!(regions(Some("a"), "X"), Some(vec![0, 1]));
        assert_eq!(regions(Some("a"), "Y"), Some(vec![0, 3]));
        assert_eq!(regions(Some("b"), "X"), Some(vec![0]));
        // Categories and types are kept apart: a region with a `b` and a `Y` is offered.
        assert_eq!(regions(Some("b"), "Y"), Some(vec![0, 3]));
        assert_eq!(index.candidate_regions(Some("b"), &[], 0), Some(vec![0, 3]));
        assert_eq!(
            index.candidate_regions(None, &["X".to_owned()], 0),
            Some(vec![0, 1])
        );
        assert_eq!(
            index.candidate_regions(None, &["Y".to_owned()], 0),
            Some(vec![0, 3])
        );
    }

    #[test]
    fn lifecycle_changes_mark_streams_restricted() {
        let mut index = Index::new();
        index.apply(&Effect::Metadata {
            stream: name("a"),
            metadata: StreamMetadata::default().with_max_count(1),
        });
        assert!(!index.all_visible());
        index.apply(&Effect::Metadata {
            stream: name("a"),
            metadata: StreamMetadata::default(),
        });
        assert!(index.all_visible());
        index.apply(&Effect::Tombstone { stream: name("b") });
        assert_eq!(
            index.stream_state_hashed("b", index.name_hash("b")),
            StreamState::Tombstoned
        );
        assert!(!index.all_visible());
    }

    #[test]
    fn the_block_map_finds_the_batch_covering_any_offset() {
        let mut map = SegmentMap::new(64);
        map.add_batch(64, 5000);
        map.add_batch(5000, 5100);
        map.add_batch(5100, 20_000);
        assert_eq!(map.batch_before(64), Some(64));
        assert_eq!(map.batch_before(4095), Some(64));
        assert_eq!(map.batch_before(4096), Some(64));
        assert_eq!(map.batch_before(8192), Some(5100));
        assert_eq!(map.batch_before(19_999), Some(5100));
        assert_eq!(map.batch_before(20_000), None);
    }
}
