//! The event id index: event id → position of the event recorded under it, for idempotent
//! appends, in about ten bytes per event.
//!
//! An id is 128 bits; the index keeps only part of a well-mixed 64-bit key of it
//! ([`id_key`]) beside the position, so what it returns are *candidates*: the caller reads
//! the record at each candidate position and compares the ids. A false candidate costs one
//! read; a missing one would break idempotency, so every id recorded is always among the
//! candidates of a lookup for it.
//!
//! It has two parts:
//!
//! - **recent**: a hash map from the full 64-bit key to the position, where new ids go (and
//!   an overflow map by whole id for the rare key two ids share);
//! - **base**: every older id in three arrays sorted by a 48-bit *short key*: its top 16
//!   bits pick one of 65,536 buckets through a directory of offsets, the other 32 are kept
//!   as a tag; the position is kept in 48 bits (low 32 + high 16). Ten bytes per id, no
//!   empty slots.
//!
//! When recent holds a quarter as many ids as the base (and at least [`MIN_MERGE`]), it is
//! merged into the base: one sort of recent and one linear pass, so each id is copied a
//! bounded number of times on average. Opening a store and closing it merge everything,
//! so a store at rest holds only the compact base.
//!
//! It is not a set of ids: it never answers "absent" for an id it holds, but it may offer
//! positions of other ids, and a scavenge's forgotten ids simply stop being offered.

use std::collections::HashMap;

use cairn_core::Uuid;

use crate::index::PremixedMap;

/// A 64-bit key for an event id, well mixed whatever the id's version.
pub(crate) fn id_key(id: Uuid) -> u64 {
    let (high, low) = id.as_u64_pair();
    let mut key = high ^ low.rotate_left(29);
    key ^= key >> 33;
    key = key.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    key ^= key >> 33;
    key = key.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    key ^ (key >> 33)
}

/// The fewest recent ids that make a merge worth its pass over the base.
pub(crate) const MIN_MERGE: usize = 1 << 16;

/// Buckets of the base's directory.
const BUCKETS: usize = 1 << 16;

/// The largest position the base can hold (48 bits); the all-ones value marks an id a
/// scavenge forgot. Positions beyond it (a log past 256 TiB) stay in recent.
const POSITION_LIMIT: u64 = (1 << 48) - 1;

/// The 48 bits of a key the base keeps: bucket (16 bits) then tag (32 bits).
fn short_key(key: u64) -> u64 {
    ((key >> 48) << 32) | (key & 0xFFFF_FFFF)
}

type RecentMap = PremixedMap<u64>;

/// Sorts `entries` (short key, position) by short key, then position. Large sets are
/// first put in bucket order (the key's top 16 bits) in place, each entry moved once
/// straight to its bucket, which leaves each bucket a handful of entries to sort: linear
/// work and no second copy, where a comparison sort of the whole set costs a few dozen
/// comparisons per entry.
fn sort_by_short_key(mut entries: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if entries.len() < BUCKETS {
        entries.sort_unstable();
        return entries;
    }
    let bucket_of = |key: u64| ((key >> 32) as usize).min(BUCKETS - 1);
    // starts[b] is where bucket b begins once sorted.
    let mut starts = vec![0usize; BUCKETS + 1];
    for &(key, _) in &entries {
        if let Some(count) = starts.get_mut(bucket_of(key) + 1) {
            *count += 1;
        }
    }
    for bucket in 1..=BUCKETS {
        let before = starts.get(bucket - 1).copied().unwrap_or(0);
        if let Some(start) = starts.get_mut(bucket) {
            *start += before;
        }
    }
    // next[b]: the first place of bucket b not yet holding one of its entries. Every
    // place before it in the bucket does; swapping the entry found there to its own
    // bucket's next place settles one entry per step.
    let mut next = starts.clone();
    for bucket in 0..BUCKETS {
        let end = starts.get(bucket + 1).copied().unwrap_or(0);
        while let Some(&at) = next.get(bucket).filter(|&&at| at < end) {
            let Some(&(key, _)) = entries.get(at) else {
                break;
            };
            let target = bucket_of(key);
            let Some(slot) = next.get_mut(target) else {
                break;
            };
            if target != bucket {
                entries.swap(at, *slot);
            }
            *slot += 1;
        }
    }
    for bucket in starts.windows(2) {
        if let [start, end] = *bucket
            && let Some(run) = entries.get_mut(start..end)
        {
            run.sort_unstable();
        }
    }
    entries
}

/// Event id → candidate positions. See the module documentation.
#[derive(Debug, Default, Clone)]
pub(crate) struct IdIndex {
    /// `BUCKETS + 1` offsets into the base arrays (bucket `b` is `dir[b]..dir[b + 1]`), or
    /// empty while the base is.
    dir: Vec<u32>,
    /// The low 32 bits of each base entry's short key, sorted within each bucket.
    tags: Vec<u32>,
    /// The low 32 bits of each base entry's position.
    low: Vec<u32>,
    /// The high 16 bits of each base entry's position.
    high: Vec<u16>,
    /// Ids since the last merge: full key → position.
    recent: RecentMap,
    /// Ids whose full key another recent id already took: id → position.
    overflow: HashMap<Uuid, u64>,
}

impl IdIndex {
    /// How many ids it holds (forgotten base entries included until the next merge).
    pub(crate) fn len(&self) -> usize {
        self.tags.len() + self.recent.len() + self.overflow.len()
    }

    /// Records that event `id` is at `position`. The log never holds an id twice, so the
    /// caller never inserts one that is already here.
    pub(crate) fn insert(&mut self, id: Uuid, position: u64) {
        match self.recent.entry(id_key(id)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(id, position);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
        if self.recent.len() + self.overflow.len() >= MIN_MERGE.max(self.tags.len() / 4) {
            self.merge();
        }
    }

    /// Every position where `id` may be recorded: the caller checks each.
    pub(crate) fn candidates(&self, id: Uuid) -> impl Iterator<Item = u64> + '_ {
        let key = id_key(id);
        let overflow = if self.overflow.is_empty() {
            None
        } else {
            self.overflow.get(&id).copied()
        };
        overflow
            .into_iter()
            .chain(self.recent.get(&key).copied())
            .chain(self.base_candidates(short_key(key)))
    }

    fn bucket(&self, bucket: usize) -> std::ops::Range<usize> {
        match (self.dir.get(bucket), self.dir.get(bucket + 1)) {
            (Some(&start), Some(&end)) => start as usize..end as usize,
            _ => 0..0,
        }
    }

    fn base_position(&self, at: usize) -> Option<u64> {
        let low = u64::from(*self.low.get(at)?);
        let high = u64::from(*self.high.get(at)?);
        let position = (high << 32) | low;
        (position != POSITION_LIMIT).then_some(position)
    }

    /// The base entries whose short key is `short`.
    fn base_matches(&self, short: u64) -> std::ops::Range<usize> {
        let range = self.bucket((short >> 32) as usize);
        let tag = short as u32;
        let tags = self.tags.get(range.clone()).unwrap_or_default();
        let first = tags.partition_point(|&t| t < tag);
        let last = first
            + tags
                .get(first..)
                .unwrap_or_default()
                .partition_point(|&t| t == tag);
        range.start + first..range.start + last
    }

    fn base_candidates(&self, short: u64) -> impl Iterator<Item = u64> + '_ {
        self.base_matches(short)
            .filter_map(|at| self.base_position(at))
    }

    /// Forgets that `id` is at `position` (a scavenge removed the event).
    pub(crate) fn forget(&mut self, id: Uuid, position: u64) {
        if self.overflow.get(&id) == Some(&position) {
            self.overflow.remove(&id);
            return;
        }
        let key = id_key(id);
        if self.recent.get(&key) == Some(&position) {
            self.recent.remove(&key);
            return;
        }
        let found = self
            .base_matches(short_key(key))
            .find(|&at| self.base_position(at) == Some(position));
        if let Some(at) = found
            && let (Some(low), Some(high)) = (self.low.get_mut(at), self.high.get_mut(at))
        {
            *low = POSITION_LIMIT as u32;
            *high = (POSITION_LIMIT >> 32) as u16;
        }
    }

    /// Merges every recent id into the base (see the module documentation), dropping
    /// forgotten entries.
    pub(crate) fn merge(&mut self) {
        self.merge_with(Vec::new());
    }

    /// Merges every recent id and the ids in `more` (event id key, position; none of them
    /// already here) into the base: how a replay of the log adds its ids in one go.
    pub(crate) fn merge_with(&mut self, more: Vec<(u64, u64)>) {
        let mut fresh = more;
        fresh.reserve_exact(self.recent.len() + self.overflow.len());
        let mut kept = RecentMap::default();
        fresh.retain_mut(|(key, position)| {
            if *position < POSITION_LIMIT {
                *key = short_key(*key);
                true
            } else {
                kept.insert(*key, *position);
                false
            }
        });
        for (key, position) in self.recent.drain() {
            if position < POSITION_LIMIT {
                fresh.push((short_key(key), position));
            } else {
                kept.insert(key, position);
            }
        }
        let mut kept_overflow = HashMap::new();
        for (id, position) in self.overflow.drain() {
            if position < POSITION_LIMIT {
                fresh.push((short_key(id_key(id)), position));
            } else {
                kept_overflow.insert(id, position);
            }
        }
        let fresh = sort_by_short_key(fresh);
        let this = &*self;
        let base = (0..BUCKETS).flat_map(|bucket| {
            this.bucket(bucket).filter_map(move |at| {
                let tag = *this.tags.get(at)?;
                let position = this.base_position(at)?;
                Some((((bucket as u64) << 32) | u64::from(tag), position))
            })
        });
        let total = self.tags.len() + fresh.len();
        let mut merged = Base::with_capacity(total);
        let mut fresh = fresh.into_iter().peekable();
        for entry in base {
            while let Some(&next) = fresh.peek()
                && next < entry
            {
                merged.push(next);
                fresh.next();
            }
            merged.push(entry);
        }
        for entry in fresh {
            merged.push(entry);
        }
        let Base {
            counts,
            tags,
            low,
            high,
        } = merged;
        let mut dir = Vec::with_capacity(BUCKETS + 1);
        let mut offset = 0u32;
        dir.push(0);
        for count in counts {
            offset += count;
            dir.push(offset);
        }
        self.dir = dir;
        self.tags = tags;
        self.low = low;
        self.high = high;
        self.recent = kept;
        self.overflow = kept_overflow;
    }

    /// The base arrays: directory, tags, low and high position halves.
    pub(crate) fn base_parts(&self) -> (&[u32], &[u32], &[u32], &[u16]) {
        (&self.dir, &self.tags, &self.low, &self.high)
    }

    /// The recent entries: (full key, position) and (id, position).
    pub(crate) fn recent_parts(&self) -> (&RecentMap, &HashMap<Uuid, u64>) {
        (&self.recent, &self.overflow)
    }

    /// An index from parts a snapshot recorded, checked for consistency.
    pub(crate) fn from_parts(
        dir: Vec<u32>,
        tags: Vec<u32>,
        low: Vec<u32>,
        high: Vec<u16>,
        recent: impl IntoIterator<Item = (u64, u64)>,
        overflow: impl IntoIterator<Item = (Uuid, u64)>,
    ) -> Option<Self> {
        let len = tags.len();
        if low.len() != len || high.len() != len {
            return None;
        }
        if !(dir.is_empty() && len == 0) {
            let ordered = dir.windows(2).all(|w| matches!(w, [a, b] if a <= b));
            if dir.len() != BUCKETS + 1
                || dir.first() != Some(&0)
                || dir.last().map(|&end| end as usize) != Some(len)
                || !ordered
            {
                return None;
            }
            let sorted = (0..BUCKETS).all(|bucket| {
                let range = match (dir.get(bucket), dir.get(bucket + 1)) {
                    (Some(&start), Some(&end)) => start as usize..end as usize,
                    _ => 0..0,
                };
                tags.get(range)
                    .is_some_and(|t| t.windows(2).all(|w| matches!(w, [a, b] if a <= b)))
            });
            if !sorted {
                return None;
            }
        }
        Some(Self {
            dir,
            tags,
            low,
            high,
            recent: recent.into_iter().collect(),
            overflow: overflow.into_iter().collect(),
        })
    }
}

/// The base arrays being built by a merge, in short key order.
struct Base {
    counts: Vec<u32>,
    tags: Vec<u32>,
    low: Vec<u32>,
    high: Vec<u16>,
}

impl Base {
    fn with_capacity(len: usize) -> Self {
        Self {
            counts: vec![0; BUCKETS],
            tags: Vec::with_capacity(len),
            low: Vec::with_capacity(len),
            high: Vec::with_capacity(len),
        }
    }

    fn push(&mut self, (short, position): (u64, u64)) {
        if let Some(count) = self.counts.get_mut((short >> 32) as usize) {
            *count += 1;
        }
        self.tags.push(short as u32);
        self.low.push(position as u32);
        self.high.push((position >> 32) as u16);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn candidates(index: &IdIndex, id: Uuid) -> Vec<u64> {
        let mut found: Vec<u64> = index.candidates(id).collect();
        found.sort_unstable();
        found
    }

    #[test]
    fn every_id_is_found_before_and_after_merges() {
        let mut index = IdIndex::default();
        let ids: Vec<Uuid> = (0..(MIN_MERGE * 3 + 17)).map(|_| Uuid::now_v7()).collect();
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64 * 100);
        }
        assert!(index.tags.len() >= MIN_MERGE, "some merges happened");
        assert!(!index.recent.is_empty(), "and some ids are still recent");
        for (n, &id) in ids.iter().enumerate() {
            assert!(
                index.candidates(id).any(|p| p == n as u64 * 100),
                "id {n} lost"
            );
        }
        index.merge();
        assert!(index.recent.is_empty());
        assert_eq!(index.len(), ids.len());
        for (n, &id) in ids.iter().enumerate() {
            assert!(index.candidates(id).any(|p| p == n as u64 * 100));
        }
        // An id never inserted almost never gets a candidate.
        let strangers = (0..10_000)
            .filter(|_| index.candidates(Uuid::now_v7()).next().is_some())
            .count();
        assert!(strangers < 10, "{strangers} false candidates in 10,000");
    }

    #[test]
    fn an_id_whose_key_was_taken_is_offered_and_merged() {
        let mut index = IdIndex::default();
        let id = Uuid::now_v7();
        index.insert(id, 7);
        // Two ids cannot be made to share a 64-bit key on purpose, so put the second where
        // `insert` puts an id whose key is taken.
        let other = Uuid::now_v7();
        index.overflow.insert(other, 9);
        assert_eq!(candidates(&index, other), vec![9]);
        index.merge();
        assert!(index.overflow.is_empty());
        assert_eq!(candidates(&index, id), vec![7]);
        assert_eq!(candidates(&index, other), vec![9]);
    }

    #[test]
    fn ids_merged_in_bulk_join_those_already_held() {
        let mut index = IdIndex::default();
        let held: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
        for (n, &id) in held.iter().enumerate() {
            index.insert(id, n as u64);
        }
        index.merge();
        index.insert(Uuid::now_v7(), 999_999);
        let bulk: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
        index.merge_with(
            bulk.iter()
                .enumerate()
                .map(|(n, &id)| (id_key(id), 1000 + n as u64))
                .collect(),
        );
        assert_eq!(index.len(), 1001);
        assert!(index.recent.is_empty());
        for (n, &id) in held.iter().enumerate() {
            assert_eq!(candidates(&index, id), vec![n as u64]);
        }
        for (n, &id) in bulk.iter().enumerate() {
            assert_eq!(candidates(&index, id), vec![1000 + n as u64]);
        }
    }

    #[test]
    fn large_merges_sort_like_a_comparison_sort() {
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let entries: Vec<(u64, u64)> = (0..BUCKETS * 3)
            .map(|_| (short_key(next()), next() % 1000))
            .collect();
        let mut expected = entries.clone();
        expected.sort_unstable();
        assert_eq!(sort_by_short_key(entries), expected);
    }

    #[test]
    fn forgotten_ids_are_no_longer_offered() {
        let mut index = IdIndex::default();
        let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
        index.insert(old, 1);
        index.merge();
        index.insert(new, 2);
        index.forget(old, 1);
        index.forget(new, 2);
        assert!(candidates(&index, old).is_empty());
        assert!(candidates(&index, new).is_empty());
        index.merge();
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn parts_round_trip_and_bad_parts_are_refused() {
        let mut index = IdIndex::default();
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64);
        }
        index.merge();
        index.insert(Uuid::now_v7(), 5000);
        let (dir, tags, low, high) = index.base_parts();
        let (recent, overflow) = index.recent_parts();
        let restored = IdIndex::from_parts(
            dir.to_vec(),
            tags.to_vec(),
            low.to_vec(),
            high.to_vec(),
            recent.iter().map(|(&k, &p)| (k, p)),
            overflow.iter().map(|(&i, &p)| (i, p)),
        )
        .unwrap();
        for (n, &id) in ids.iter().enumerate() {
            assert!(restored.candidates(id).any(|p| p == n as u64));
        }
        let mut short_dir = dir.to_vec();
        short_dir.pop();
        assert!(
            IdIndex::from_parts(
                short_dir,
                tags.to_vec(),
                low.to_vec(),
                high.to_vec(),
                [],
                []
            )
            .is_none()
        );
    }
}
