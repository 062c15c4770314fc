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
//! bounded number of times on average. The writer runs that merge on a thread of its own
//! ([`IdIndex::start_merge`], [`MergeJob::run`], [`IdIndex::finish_merge`]): recent is
//! frozen and still looked up while a new one fills, and the base is shared with the merge
//! (an id forgotten meanwhile is forgotten again in its result). Opening a store and
//! closing it merge everything in place, so a store at rest holds only the compact base.
//!
//! It also keeps its **ceiling**, the greatest id it was ever given (ids compare as 128-bit
//! numbers). An id above it was never recorded, which takes no lookup at all: ids made by
//! one generator as UUID v7 (time first, then a counter) increase, so a new event's id is
//! almost always above every id recorded before it. The ceiling never comes down (a
//! scavenge's forgotten ids stay under it), and a snapshot keeps it.
//!
//! It is not a set of ids: it never answers "absent" for an id it holds, but it may offer
//! positions of other ids, and a scavenge's forgotten ids simply stop being offered.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Ids outside the base arrays: (full key, position) and, for ids whose key another took,
/// (id, position).
pub(crate) type RecentParts = (Vec<(u64, u64)>, Vec<(Uuid, u64)>);

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
    /// The sorted arrays, shared with a merge running in the background.
    base: Arc<Sorted>,
    /// Ids since the last merge.
    recent: Recent,
    /// Ids a merge in the background is folding into the base; looked up like recent ones
    /// until its result lands ([`IdIndex::finish_merge`]).
    frozen: Option<Arc<Recent>>,
    /// Entries forgotten while the base or `frozen` were shared with a merge: no longer
    /// offered, and forgotten in the merge's result when it lands.
    forgotten: Vec<(Uuid, u64)>,
    /// Merges started, so that the result of one that a later merge overtook is dropped.
    merges: u64,
    /// Whether a recent id lies beyond what the arrays hold (a log past 256 TiB): such
    /// ids stay recent, so merges then run in place only.
    huge: bool,
    /// The greatest id ever recorded here (nil while none was): no id above it was.
    ceiling: Uuid,
}

/// The base: every older id in sorted arrays (see the module documentation).
#[derive(Debug, Default, Clone)]
struct Sorted {
    /// `BUCKETS + 1` offsets into the arrays (bucket `b` is `dir[b]..dir[b + 1]`), or
    /// empty while the base is.
    dir: Vec<u32>,
    /// The low 32 bits of each entry's short key, sorted within each bucket.
    tags: Vec<u32>,
    /// The low 32 bits of each entry's position.
    low: Vec<u32>,
    /// The high 16 bits of each entry's position.
    high: Vec<u16>,
}

/// Ids not yet merged into the base.
#[derive(Debug, Default, Clone)]
struct Recent {
    /// Full key → position.
    keys: RecentMap,
    /// Ids whose full key another id here already took: id → position.
    overflow: HashMap<Uuid, u64>,
}

impl Recent {
    fn len(&self) -> usize {
        self.keys.len() + self.overflow.len()
    }

    fn candidates(&self, id: Uuid, key: u64) -> impl Iterator<Item = u64> + '_ {
        let overflow = if self.overflow.is_empty() {
            None
        } else {
            self.overflow.get(&id).copied()
        };
        overflow.into_iter().chain(self.keys.get(&key).copied())
    }

    /// The entries, as the arguments of [`Sorted::merged`] take them.
    fn parts(&self) -> RecentParts {
        (
            self.keys.iter().map(|(&key, &p)| (key, p)).collect(),
            self.overflow.iter().map(|(&id, &p)| (id, p)).collect(),
        )
    }
}

impl Sorted {
    fn bucket(&self, bucket: usize) -> std::ops::Range<usize> {
        match (self.dir.get(bucket), self.dir.get(bucket + 1)) {
            (Some(&start), Some(&end)) => start as usize..end as usize,
            _ => 0..0,
        }
    }

    fn position(&self, at: usize) -> Option<u64> {
        let low = u64::from(*self.low.get(at)?);
        let high = u64::from(*self.high.get(at)?);
        let position = (high << 32) | low;
        (position != POSITION_LIMIT).then_some(position)
    }

    /// The entries whose short key is `short`.
    fn matches(&self, short: u64) -> std::ops::Range<usize> {
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

    fn candidates(&self, short: u64) -> impl Iterator<Item = u64> + '_ {
        self.matches(short).filter_map(|at| self.position(at))
    }

    /// Marks the entry of `short` at `position` forgotten; whether it was here.
    fn forget(&mut self, short: u64, position: u64) -> bool {
        let found = self
            .matches(short)
            .find(|&at| self.position(at) == Some(position));
        if let Some(at) = found
            && let (Some(low), Some(high)) = (self.low.get_mut(at), self.high.get_mut(at))
        {
            *low = POSITION_LIMIT as u32;
            *high = (POSITION_LIMIT >> 32) as u16;
            return true;
        }
        false
    }

    /// Every live entry as (short key, position), in short key order.
    fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..BUCKETS).flat_map(move |bucket| {
            self.bucket(bucket).filter_map(move |at| {
                let tag = *self.tags.get(at)?;
                let position = self.position(at)?;
                Some((((bucket as u64) << 32) | u64::from(tag), position))
            })
        })
    }

    /// `self` with `fresh` entries (full key, position) and `overflow` entries (id,
    /// position) added, forgotten ones dropped; entries whose position the arrays cannot
    /// hold are returned apart.
    fn merged(&self, fresh: Vec<(u64, u64)>, overflow: Vec<(Uuid, u64)>) -> (Sorted, Recent) {
        let mut fresh = fresh;
        let mut kept = Recent::default();
        fresh.retain_mut(|(key, position)| {
            if *position < POSITION_LIMIT {
                *key = short_key(*key);
                true
            } else {
                kept.keys.insert(*key, *position);
                false
            }
        });
        for (id, position) in overflow {
            if position < POSITION_LIMIT {
                fresh.push((short_key(id_key(id)), position));
            } else {
                kept.overflow.insert(id, position);
            }
        }
        let fresh = sort_by_short_key(fresh);
        let mut merged = Base::with_capacity(self.tags.len() + fresh.len());
        let mut fresh = fresh.into_iter().peekable();
        for entry in self.entries() {
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
        (
            Sorted {
                dir,
                tags,
                low,
                high,
            },
            kept,
        )
    }
}

/// A merge to run away from the index's lock: the base and the frozen recent ids as they
/// were when it started.
pub(crate) struct MergeJob {
    base: Arc<Sorted>,
    frozen: Arc<Recent>,
    number: u64,
}

/// What a [`MergeJob`] made, for [`IdIndex::finish_merge`].
pub(crate) struct Merged {
    base: Sorted,
    number: u64,
}

impl MergeJob {
    /// Builds the merged base: the long part of a merge, needing no lock.
    pub(crate) fn run(self) -> Merged {
        let (keys, overflow) = self.frozen.parts();
        // Frozen ids all fit the arrays (see `IdIndex::merge_due`): nothing is kept apart.
        let (base, _) = self.base.merged(keys, overflow);
        Merged {
            base,
            number: self.number,
        }
    }
}

impl IdIndex {
    /// How many ids it holds (forgotten base entries included until the next merge).
    pub(crate) fn len(&self) -> usize {
        self.base.tags.len()
            + self.recent.len()
            + self.frozen.as_ref().map_or(0, |frozen| frozen.len())
    }

    /// Records that event `id` is at `position`. The log never holds an id twice, so the
    /// caller never inserts one that is already here.
    ///
    /// Merging is the caller's: [`IdIndex::merge_due`] says when, and a merge runs either
    /// here ([`IdIndex::merge`]) or away from the index ([`IdIndex::start_merge`]). Only
    /// when nothing merges for long does an insert merge by itself.
    pub(crate) fn insert(&mut self, id: Uuid, position: u64) {
        self.raise_ceiling(id);
        match self.recent.keys.entry(id_key(id)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.recent.overflow.insert(id, position);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
        self.huge |= position >= POSITION_LIMIT;
        if self.frozen.is_none() && self.recent.len() >= 4 * self.merge_threshold() {
            self.merge();
        }
    }

    /// How many recent ids make a merge worth its pass over the base.
    fn merge_threshold(&self) -> usize {
        MIN_MERGE.max(self.base.tags.len() / 4)
    }

    /// Whether enough ids are recent for a merge away from the index
    /// ([`IdIndex::start_merge`]), and none is running.
    pub(crate) fn merge_due(&self) -> bool {
        self.frozen.is_none() && !self.huge && self.recent.len() >= self.merge_threshold()
    }

    /// Raises the ceiling to `id` if it is above: `id` is being recorded where this index
    /// does not see it yet (a replay gathers ids apart and merges them at its end).
    pub(crate) fn raise_ceiling(&mut self, id: Uuid) {
        self.ceiling = self.ceiling.max(id);
    }

    /// Every position where `id` may be recorded: the caller checks each. None, without a
    /// lookup, for an id above the ceiling.
    pub(crate) fn candidates(&self, id: Uuid) -> impl Iterator<Item = u64> + '_ {
        (id <= self.ceiling)
            .then(|| {
                let key = id_key(id);
                self.recent
                    .candidates(id, key)
                    .chain(
                        self.frozen
                            .iter()
                            .flat_map(move |frozen| frozen.candidates(id, key)),
                    )
                    .chain(self.base.candidates(short_key(key)))
                    .filter(move |&position| {
                        self.forgotten.is_empty() || !self.forgotten.contains(&(id, position))
                    })
            })
            .into_iter()
            .flatten()
    }

    /// The greatest id ever recorded (nil while none was).
    pub(crate) fn ceiling(&self) -> Uuid {
        self.ceiling
    }

    /// Forgets that `id` is at `position` (a scavenge removed the event).
    pub(crate) fn forget(&mut self, id: Uuid, position: u64) {
        if self.recent.overflow.get(&id) == Some(&position) {
            self.recent.overflow.remove(&id);
            return;
        }
        let key = id_key(id);
        if self.recent.keys.get(&key) == Some(&position) {
            self.recent.keys.remove(&key);
            return;
        }
        if self.frozen.is_some() {
            // The base or the frozen ids, shared with a running merge: forgotten in its
            // result, and no longer offered meanwhile.
            self.forgotten.push((id, position));
            return;
        }
        Arc::make_mut(&mut self.base).forget(short_key(key), position);
    }

    /// Freezes the recent ids for a merge that runs away from the index's lock; lookups
    /// see them until [`IdIndex::finish_merge`] installs the result. `None` unless
    /// [`IdIndex::merge_due`].
    pub(crate) fn start_merge(&mut self) -> Option<MergeJob> {
        if !self.merge_due() {
            return None;
        }
        // The fresh map grows as ids come: sized for the next merge up front, it would
        // skip some rehashing but hold a quarter of the index's size in touched pages
        // from the start (random inserts reach every page soon), beside the frozen map
        // and the merge's new arrays.
        let frozen = Arc::new(std::mem::take(&mut self.recent));
        self.frozen = Some(Arc::clone(&frozen));
        self.merges += 1;
        Some(MergeJob {
            base: Arc::clone(&self.base),
            frozen,
            number: self.merges,
        })
    }

    /// Installs what a [`MergeJob`] made, unless a later merge overtook it.
    pub(crate) fn finish_merge(&mut self, merged: Merged) {
        if merged.number != self.merges || self.frozen.is_none() {
            return;
        }
        self.base = Arc::new(merged.base);
        self.frozen = None;
        for (id, position) in std::mem::take(&mut self.forgotten) {
            self.forget(id, position);
        }
    }

    /// Merges every recent id into the base here and now (see the module documentation),
    /// dropping forgotten entries; a merge running elsewhere is overtaken.
    pub(crate) fn merge(&mut self) {
        self.merge_with(Vec::new());
    }

    /// Merges every recent id and the ids in `more` (event id key, position; none of them
    /// already here) into the base: how a replay of the log adds its ids in one go. The
    /// caller raises the ceiling for each of them ([`IdIndex::raise_ceiling`]): only keys
    /// come here.
    pub(crate) fn merge_with(&mut self, more: Vec<(u64, u64)>) {
        let mut fresh = more;
        let (keys, mut overflow) = std::mem::take(&mut self.recent).parts();
        fresh.extend(keys);
        if let Some(frozen) = self.frozen.take() {
            let (keys, more_overflow) = frozen.parts();
            fresh.extend(keys);
            overflow.extend(more_overflow);
            // A result made without the ids since must not land.
            self.merges += 1;
        }
        let (base, kept) = self.base.merged(fresh, overflow);
        self.base = Arc::new(base);
        self.huge = kept.len() > 0;
        self.recent = kept;
        for (id, position) in std::mem::take(&mut self.forgotten) {
            self.forget(id, position);
        }
    }

    /// The base arrays: directory, tags, low and high position halves.
    pub(crate) fn base_parts(&self) -> (&[u32], &[u32], &[u32], &[u16]) {
        let base = &*self.base;
        (&base.dir, &base.tags, &base.low, &base.high)
    }

    /// The ids not in the base arrays: (full key, position) and (id, position), frozen
    /// ones included.
    pub(crate) fn recent_parts(&self) -> RecentParts {
        let mut keys: Vec<(u64, u64)> = self.recent.keys.iter().map(|(&k, &p)| (k, p)).collect();
        let mut overflow: Vec<(Uuid, u64)> =
            self.recent.overflow.iter().map(|(&i, &p)| (i, p)).collect();
        if let Some(frozen) = &self.frozen {
            keys.extend(frozen.keys.iter().map(|(&k, &p)| (k, p)));
            overflow.extend(frozen.overflow.iter().map(|(&i, &p)| (i, p)));
        }
        (keys, overflow)
    }

    /// An index from parts a snapshot recorded, checked for consistency.
    pub(crate) fn from_parts(
        dir: Vec<u32>,
        tags: Vec<u32>,
        low: Vec<u32>,
        high: Vec<u16>,
        recent: impl IntoIterator<Item = (u64, u64)>,
        overflow: impl IntoIterator<Item = (Uuid, u64)>,
        ceiling: Uuid,
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
        let recent = Recent {
            keys: recent.into_iter().collect(),
            overflow: overflow.into_iter().collect(),
        };
        let huge = recent
            .keys
            .values()
            .chain(recent.overflow.values())
            .any(|&position| position >= POSITION_LIMIT);
        if recent.overflow.keys().any(|&id| id > ceiling) {
            return None;
        }
        Some(Self {
            base: Arc::new(Sorted {
                dir,
                tags,
                low,
                high,
            }),
            recent,
            huge,
            ceiling,
            ..Self::default()
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

    /// Inserts as the writer does: a merge away from the index whenever one is due, its
    /// result landing `lag` inserts later.
    fn insert_all(index: &mut IdIndex, ids: &[Uuid], lag: usize) -> usize {
        let mut running: Option<(MergeJob, usize)> = None;
        let mut merges = 0;
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64 * 100);
            if let Some((_, started)) = &running
                && n >= started + lag
                && let Some((job, _)) = running.take()
            {
                index.finish_merge(job.run());
                merges += 1;
            }
            if running.is_none()
                && let Some(job) = index.start_merge()
            {
                running = Some((job, n));
            }
            // Every id inserted so far is offered, a merge running or not.
            if n % 997 == 0 {
                for (m, &earlier) in ids.iter().enumerate().take(n + 1).step_by(101) {
                    assert!(index.candidates(earlier).any(|p| p == m as u64 * 100));
                }
            }
        }
        if let Some((job, _)) = running {
            index.finish_merge(job.run());
            merges += 1;
        }
        merges
    }

    #[test]
    fn every_id_is_found_before_during_and_after_merges() {
        let mut index = IdIndex::default();
        let ids: Vec<Uuid> = (0..(MIN_MERGE * 3 + 17)).map(|_| Uuid::now_v7()).collect();
        let merges = insert_all(&mut index, &ids, 5000);
        assert!(merges >= 2, "{merges} merges");
        assert!(index.base.tags.len() >= MIN_MERGE, "merges landed");
        assert!(
            !index.recent.keys.is_empty(),
            "and some ids are still recent"
        );
        assert_eq!(index.len(), ids.len());
        for (n, &id) in ids.iter().enumerate() {
            assert!(
                index.candidates(id).any(|p| p == n as u64 * 100),
                "id {n} lost"
            );
        }
        index.merge();
        assert!(index.recent.keys.is_empty());
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
    fn a_merge_in_place_overtakes_one_running_away() {
        let mut index = IdIndex::default();
        let ids: Vec<Uuid> = (0..MIN_MERGE + 10).map(|_| Uuid::now_v7()).collect();
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64);
        }
        let job = index.start_merge().expect("a merge is due");
        assert!(index.start_merge().is_none(), "one merge runs at a time");
        let late = Uuid::now_v7();
        index.insert(late, 1 << 40);
        index.merge();
        // The stale result, made without `late`, does not land.
        index.finish_merge(job.run());
        assert_eq!(index.len(), ids.len() + 1);
        assert_eq!(candidates(&index, late), vec![1 << 40]);
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(candidates(&index, id), vec![n as u64]);
        }
    }

    #[test]
    fn an_id_whose_key_was_taken_is_offered_and_merged() {
        let mut index = IdIndex::default();
        let id = Uuid::now_v7();
        index.insert(id, 7);
        // Two ids cannot be made to share a 64-bit key on purpose, so put the second where
        // `insert` puts an id whose key is taken.
        let other = Uuid::now_v7();
        index.recent.overflow.insert(other, 9);
        index.raise_ceiling(other);
        assert_eq!(candidates(&index, other), vec![9]);
        index.merge();
        assert!(index.recent.overflow.is_empty());
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
        // As a replay does: the ceiling learns the ids as they are gathered.
        for &id in &bulk {
            index.raise_ceiling(id);
        }
        index.merge_with(
            bulk.iter()
                .enumerate()
                .map(|(n, &id)| (id_key(id), 1000 + n as u64))
                .collect(),
        );
        assert_eq!(index.len(), 1001);
        assert!(index.recent.keys.is_empty());
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
    fn ids_forgotten_while_a_merge_runs_stay_forgotten() {
        let mut index = IdIndex::default();
        let ids: Vec<Uuid> = (0..MIN_MERGE).map(|_| Uuid::now_v7()).collect();
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64);
        }
        let job = index.start_merge().expect("a merge is due");
        // One frozen id forgotten while the merge runs, then one of the base it made.
        index.forget(ids[7], 7);
        assert!(candidates(&index, ids[7]).is_empty());
        index.finish_merge(job.run());
        assert!(candidates(&index, ids[7]).is_empty());
        index.forget(ids[8], 8);
        assert!(candidates(&index, ids[8]).is_empty());
        assert_eq!(candidates(&index, ids[9]), vec![9]);
        index.merge();
        assert_eq!(index.len(), ids.len() - 2);
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
            recent,
            overflow,
            index.ceiling(),
        )
        .unwrap();
        assert_eq!(restored.ceiling(), index.ceiling());
        for (n, &id) in ids.iter().enumerate() {
            assert!(restored.candidates(id).any(|p| p == n as u64));
        }
        // An overflow id above the ceiling contradicts it.
        let above = Uuid::from_u128(index.ceiling().as_u128() + 1);
        assert!(
            IdIndex::from_parts(
                dir.to_vec(),
                tags.to_vec(),
                low.to_vec(),
                high.to_vec(),
                [],
                [(above, 7)],
                index.ceiling(),
            )
            .is_none()
        );
        let mut short_dir = dir.to_vec();
        short_dir.pop();
        assert!(
            IdIndex::from_parts(
                short_dir,
                tags.to_vec(),
                low.to_vec(),
                high.to_vec(),
                [],
                [],
                index.ceiling(),
            )
            .is_none()
        );
    }

    #[test]
    fn ids_above_the_ceiling_have_none_and_every_other_keeps_its_candidates() {
        let mut index = IdIndex::default();
        assert_eq!(index.ceiling(), Uuid::nil());
        // Out of order, through merges, with forgotten ids: the ceiling is the greatest.
        let mut ids: Vec<Uuid> = (0..5000u128)
            .map(|n| Uuid::from_u128(n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
            .collect();
        let greatest = *ids.iter().max().unwrap();
        ids.rotate_left(1234);
        for (n, &id) in ids.iter().enumerate() {
            index.insert(id, n as u64);
            if n == 3000 {
                index.merge();
            }
        }
        index.forget(
            greatest,
            ids.iter().position(|&id| id == greatest).unwrap() as u64,
        );
        index.merge();
        assert_eq!(index.ceiling(), greatest);
        for (n, &id) in ids.iter().enumerate() {
            if id != greatest {
                assert!(index.candidates(id).any(|p| p == n as u64), "id {n}");
            }
        }
        // An id above the ceiling has no candidates until it is recorded.
        let above = Uuid::from_u128(greatest.as_u128() + 1);
        assert_eq!(candidates(&index, above), Vec::<u64>::new());
        index.insert(above, 9999);
        assert_eq!(index.ceiling(), above);
        assert_eq!(candidates(&index, above), vec![9999]);
        // Raising it from outside (a replay's ids) works the same.
        let beyond = Uuid::from_u128(above.as_u128() + 5);
        index.raise_ceiling(beyond);
        index.raise_ceiling(greatest);
        assert_eq!(index.ceiling(), beyond);
    }
}
