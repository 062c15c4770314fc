//! [`Window`]: the ids one consumer recorded in a [`MemoryInbox`](super::MemoryInbox),
//! kept in generations, each behind a filter small enough to stay in the CPU's cache.
//!
//! Nearly every id a consumer asks about is new. A hash table of a million ids is far
//! larger than the cache, so answering "not recorded" from it costs a cache miss (and a
//! TLB miss) for every message. Here each generation has a Bloom filter of about
//! [`BITS_PER_ID`] bits per id; only a generation whose filter may hold an id is looked
//! up, so a new id costs a probe of each filter (loads that overlap, not one after the
//! other) and rarely a table lookup. A recorded id goes into the current generation's
//! filter and into a short list of recent ids, which moves into the generation's table
//! [`FLUSH`] ids at a time: the misses of those inserts then overlap instead of stalling
//! one message each.
//!
//! Forgetting the oldest generation clears its filter and its table, which keep their
//! memory for the generation that fills them next. A filter cannot forget one id: an id
//! removed again ([`Window::forget`]) stays in its filter until the generation is
//! cleared, and only costs a table lookup when asked about.

use std::collections::HashSet;
use std::hash::BuildHasher;

use uuid::Uuid;

use crate::hash::KeyedHash;

/// Filter bits per id a generation's filter is sized for: about one lookup in a hundred
/// of a new id finds a false "maybe" in one filter.
const BITS_PER_ID: usize = 10;
/// Ids a filter is sized for at first; it grows (doubling) with its generation.
const MIN_FILTER_IDS: usize = 1_024;
/// Recent ids moved into the current generation's table at once.
const FLUSH: usize = 128;

/// One consumer's remembered ids, in `kept + 1` generations of `generation` ids: the
/// one filling (`current`) and the last `kept` full ones.
#[derive(Debug)]
pub(super) struct Window {
    /// A ring: `current` fills, the ones after it (wrapping) are older, the oldest next
    /// to be cleared.
    generations: Box<[Generation]>,
    current: usize,
    /// Ids recorded into `recent` not yet moved into the current generation's table.
    recent: Vec<Uuid>,
    /// Ids recorded in the current generation, less the ids removed since it began
    /// (wherever they were recorded): an id removed from an older generation makes the
    /// current one take one more, so that removing ids never shortens the window of the
    /// ids older than them. May go below zero.
    filled: i64,
    /// Ids per generation.
    generation: usize,
    hash: KeyedHash,
}

#[derive(Debug, Default)]
struct Generation {
    filter: Filter,
    table: HashSet<Uuid, KeyedHash>,
}

/// Where [`Window::find`] found an id.
enum Place {
    Recent(usize),
    Table(usize),
}

impl Window {
    /// An empty window of `kept` full generations of `generation` ids besides the one
    /// filling.
    pub(super) fn new(generation: usize, kept: usize) -> Self {
        Self {
            generations: (0..=kept).map(|_| Generation::default()).collect(),
            current: 0,
            recent: Vec::new(),
            filled: 0,
            generation: generation.max(1),
            hash: KeyedHash::default(),
        }
    }

    /// Whether `id` is remembered.
    pub(super) fn contains(&self, id: Uuid) -> bool {
        self.find(id, self.hash.hash_one(id)).is_some()
    }

    /// Records `id` in the current generation: `false` when it is remembered already.
    /// When the generation is full, the oldest one is forgotten and cleared to be the
    /// next current one.
    pub(super) fn record(&mut self, id: Uuid) -> bool {
        let hash = self.hash.hash_one(id);
        if self.find(id, hash).is_some() {
            return false;
        }
        let generation = self.generation;
        let live = self.live_in_current();
        let Some(current) = self.generations.get_mut(self.current) else {
            return false;
        };
        if current.filter.is_full() {
            current.rebuild_filter(&self.recent, live, generation, &self.hash);
        }
        current.filter.insert(hash);
        self.recent.push(id);
        if self.recent.len() >= FLUSH {
            current.table.extend(self.recent.drain(..));
        }
        self.filled += 1;
        if self.filled >= i64::try_from(generation).unwrap_or(i64::MAX) {
            self.next_generation();
        }
        true
    }

    /// Removes `id` if it is remembered (it will then be recorded as new), returning
    /// whether it was.
    pub(super) fn forget(&mut self, id: Uuid) -> bool {
        let removed = match self.find(id, self.hash.hash_one(id)) {
            Some(Place::Recent(index)) => {
                self.recent.swap_remove(index);
                true
            }
            Some(Place::Table(index)) => self
                .generations
                .get_mut(index)
                .is_some_and(|generation| generation.table.remove(&id)),
            None => false,
        };
        if removed {
            self.filled -= 1;
        }
        removed
    }

    /// How many ids are remembered.
    pub(super) fn len(&self) -> usize {
        self.recent.len()
            + self
                .generations
                .iter()
                .map(|generation| generation.table.len())
                .sum::<usize>()
    }

    /// Where `id` (whose hash is `hash`) is remembered, if it is.
    fn find(&self, id: Uuid, hash: u64) -> Option<Place> {
        // Every filter first, without stopping at a "maybe", so that their loads overlap.
        let mut maybe = 0u32;
        for (index, generation) in self.generations.iter().enumerate() {
            maybe |= u32::from(generation.filter.may_hold(hash)) << index;
        }
        while maybe != 0 {
            let index = maybe.trailing_zeros() as usize;
            maybe &= maybe - 1;
            if index == self.current
                && let Some(at) = self.recent.iter().position(|recent| *recent == id)
            {
                return Some(Place::Recent(at));
            }
            if self
                .generations
                .get(index)
                .is_some_and(|generation| generation.table.contains(&id))
            {
                return Some(Place::Table(index));
            }
        }
        None
    }

    /// Ids in the current generation now.
    fn live_in_current(&self) -> usize {
        self.recent.len()
            + self
                .generations
                .get(self.current)
                .map_or(0, |generation| generation.table.len())
    }

    /// Closes the current generation and makes the oldest, cleared, the current one.
    fn next_generation(&mut self) {
        if let Some(current) = self.generations.get_mut(self.current) {
            current.table.extend(self.recent.drain(..));
        }
        self.current = (self.current + 1) % self.generations.len();
        if let Some(oldest) = self.generations.get_mut(self.current) {
            oldest.filter.clear();
            oldest.table.clear();
        }
        self.filled = 0;
    }
}

impl Generation {
    /// Makes the filter anew for the `live` ids now in the generation (its table and
    /// `recent`), larger when they fill more than half of it: about twice as many as
    /// are live, up to `generation` (more only when the generation took more than that,
    /// after removals). A filter never shrinks; rebuilding one of the same size drops the
    /// bits of removed ids.
    fn rebuild_filter(
        &mut self,
        recent: &[Uuid],
        live: usize,
        generation: usize,
        hash: &KeyedHash,
    ) {
        let wanted = live
            .saturating_mul(2)
            .max(MIN_FILTER_IDS)
            .min(generation.max(MIN_FILTER_IDS))
            .max(live + live / 4 + 1)
            .max(self.filter.capacity);
        self.filter.reset(wanted);
        for id in self.table.iter().chain(recent) {
            self.filter.insert(hash.hash_one(id));
        }
    }
}

/// One block of a [`Filter`]: 256 bits, an id sets one bit in each of its eight words.
/// Aligned so that a block never straddles two cache lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(32))]
struct Block([u32; 8]);

/// Odd multipliers that pick an id's bit in each word of its block from one 32-bit half
/// of its hash.
const SALTS: [u32; 8] = [
    0x9e37_79b1,
    0x85eb_ca77,
    0xc2b2_ae3d,
    0x27d4_eb2f,
    0x1656_67b1,
    0xd3a2_646d,
    0xfd70_46c5,
    0xb55a_4f09,
];

/// A split-block Bloom filter: an id maps to one block (one cache line at most) and sets
/// one bit in each word of it. It may say "maybe" for an id never inserted, never "no"
/// for one inserted.
#[derive(Debug, Default)]
struct Filter {
    blocks: Vec<Block>,
    /// The ids it is sized for ([`BITS_PER_ID`] bits each).
    capacity: usize,
    /// The ids inserted since it was made or cleared.
    inserted: usize,
}

impl Filter {
    /// Whether as many ids were inserted as it is sized for (true for an unmade filter).
    fn is_full(&self) -> bool {
        self.inserted >= self.capacity
    }

    /// Empties it and sizes it for `capacity` ids.
    fn reset(&mut self, capacity: usize) {
        let blocks = capacity.saturating_mul(BITS_PER_ID).div_ceil(256).max(1);
        self.blocks.clear();
        self.blocks.resize(blocks, Block::default());
        self.capacity = capacity;
        self.inserted = 0;
    }

    /// Empties it, keeping its size.
    fn clear(&mut self) {
        self.blocks.fill(Block::default());
        self.inserted = 0;
    }

    /// The block of an id whose hash is `hash`, from the hash's upper half, and the bits
    /// it sets there, from the lower half.
    fn place(&self, hash: u64) -> (usize, [u32; 8]) {
        let block = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        let low = hash as u32;
        (
            block as usize,
            SALTS.map(|salt| 1 << (low.wrapping_mul(salt) >> 27)),
        )
    }

    fn insert(&mut self, hash: u64) {
        let (block, bits) = self.place(hash);
        if let Some(block) = self.blocks.get_mut(block) {
            for (word, bit) in block.0.iter_mut().zip(bits) {
                *word |= bit;
            }
        }
        self.inserted += 1;
    }

    fn may_hold(&self, hash: u64) -> bool {
        let (block, bits) = self.place(hash);
        self.blocks.get(block).is_some_and(|block| {
            block
                .0
                .iter()
                .zip(bits)
                .fold(true, |all, (word, bit)| all & (word & bit == bit))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_holds_what_was_inserted_and_rarely_says_maybe_for_the_rest() {
        let hash = KeyedHash::default();
        let mut filter = Filter::default();
        filter.reset(10_000);
        let inserted: Vec<Uuid> = (0..10_000).map(|_| Uuid::now_v7()).collect();
        for id in &inserted {
            filter.insert(hash.hash_one(id));
        }
        assert!(filter.is_full());
        assert!(inserted.iter().all(|id| filter.may_hold(hash.hash_one(id))));
        let false_maybes = (0..100_000)
            .filter(|_| filter.may_hold(hash.hash_one(Uuid::now_v7())))
            .count();
        // About 1 % at 10 bits per id; the bound leaves room for chance.
        assert!(
            false_maybes < 3_000,
            "{false_maybes} false maybes in 100,000"
        );
        filter.clear();
        assert!(!inserted.iter().any(|id| filter.may_hold(hash.hash_one(id))));
    }

    #[test]
    fn an_unmade_filter_holds_nothing() {
        let filter = Filter::default();
        assert!(!filter.may_hold(KeyedHash::default().hash_one(Uuid::now_v7())));
        assert!(filter.is_full());
    }

    #[test]
    fn a_window_grows_its_filters_and_forgets_and_records_again() {
        let mut window = Window::new(100_000, 4);
        let ids: Vec<Uuid> = (0..50_000).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert!(window.record(*id));
        }
        assert_eq!(window.len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| window.contains(*id) && !window.record(*id))
        );
        // Removed from the recent list and from the table alike.
        for id in [ids[0], ids[ids.len() - 1]] {
            assert!(window.forget(id));
            assert!(!window.contains(id));
            assert!(!window.forget(id));
            assert!(window.record(id));
        }
        assert_eq!(window.len(), ids.len());
    }
}
