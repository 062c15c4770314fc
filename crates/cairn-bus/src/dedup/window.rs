//! [`Window`]: the ids one consumer recorded in a [`MemoryInbox`](super::MemoryInbox),
//! kept in generations behind one filter small enough to stay in the CPU's cache.
//!
//! Nearly every id a consumer asks about is new. A hash table of a million ids is far
//! larger than the cache, so answering "not recorded" from it costs a cache miss (and a
//! TLB miss) for every message. Here a Bloom filter of about [`BITS_PER_ID`] bits per id
//! sits in front of the generations' tables; only a generation the filter may hold an id
//! for is looked up, so a new id costs one cache line of filter and rarely a table lookup.
//! The filter keeps each generation's bits apart, side by side in each line, so that one
//! line answers for every generation and a generation's bits can be cleared alone. A
//! recorded id goes into the filter and into a short list of recent ids, which moves into
//! the current generation's table [`FLUSH`] ids at a time: the misses of those inserts
//! then overlap instead of stalling one message each.
//!
//! Forgetting the oldest generation clears its bits and its table, which keeps its memory
//! for the generation that fills it next. The filter cannot forget one id: an id removed
//! again ([`Window::forget`]) keeps its bits until its generation's bits are rebuilt or
//! cleared, and only costs a table lookup when asked about.

use std::hash::BuildHasher;

use uuid::Uuid;

use super::ids::IdSet;
use cairn_core::KeyedHash;

/// Filter bits per id a generation may take before the filter grows: a new id then finds
/// a false "maybe" for a given generation in about 1.6 % of lookups.
const BITS_PER_ID: usize = 10;
/// Ids per generation the filter is sized for at first; it grows (doubling) up to a
/// generation's size.
const MIN_FILTER_IDS: usize = 1_024;
/// Recent ids moved into the current generation's table at once.
const FLUSH: usize = 128;
/// Generations a filter line has room for: `kept + 1` is at most 5.
const MAX_GENERATIONS: usize = 5;

/// One consumer's remembered ids, in `kept + 1` generations of `generation` ids: the
/// one filling (`current`) and the last `kept` full ones.
#[derive(Debug)]
pub(super) struct Window {
    /// A ring: `current` fills, the ones after it (wrapping) are older, the oldest next
    /// to be cleared.
    generations: Box<[Generation]>,
    current: usize,
    filter: Filter,
    /// Ids (with their hashes) recorded into the current generation not yet moved into
    /// its table.
    recent: Vec<(Uuid, u64)>,
    /// Ids recorded in the current generation, less the ids removed since it began
    /// (wherever they were recorded): an id removed from an older generation makes the
    /// current one take one more, so that removing ids never shortens the window of the
    /// ids older than them. May go below zero.
    filled: i64,
    /// Ids per generation.
    generation: usize,
    hash: KeyedHash,
}

#[derive(Debug)]
struct Generation {
    table: IdSet,
    /// Ids put into the filter for this generation since its bits were last cleared or
    /// rebuilt.
    inserted: usize,
}

/// Where [`Window::find`] found an id.
enum Place {
    Recent(usize),
    Table(usize),
}

impl Window {
    /// An empty window of `kept` full generations (at most 4) of `generation` ids
    /// besides the one filling.
    pub(super) fn new(generation: usize, kept: usize) -> Self {
        let generations = (kept + 1).clamp(1, MAX_GENERATIONS);
        let generation = generation.max(1);
        let hash = KeyedHash::default();
        Self {
            generations: (0..generations)
                .map(|_| Generation {
                    table: IdSet::new(generation, hash),
                    inserted: 0,
                })
                .collect(),
            current: 0,
            filter: Filter::default(),
            recent: Vec::new(),
            filled: 0,
            generation,
            hash,
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
        let inserted = self
            .generations
            .get(self.current)
            .map_or(0, |current| current.inserted);
        if inserted >= self.filter.capacity {
            self.rebuild_filter();
        }
        self.filter.insert(hash, self.current);
        self.recent.push((id, hash));
        if let Some(current) = self.generations.get_mut(self.current) {
            current.inserted += 1;
            if self.recent.len() >= FLUSH {
                current.table.insert_all(&self.recent);
                self.recent.clear();
            }
        }
        self.filled += 1;
        if self.filled >= i64::try_from(self.generation).unwrap_or(i64::MAX) {
            self.next_generation();
        }
        true
    }

    /// Removes `id` if it is remembered (it will then be recorded as new), returning
    /// whether it was.
    pub(super) fn forget(&mut self, id: Uuid) -> bool {
        let hash = self.hash.hash_one(id);
        let removed = match self.find(id, hash) {
            Some(Place::Recent(index)) => {
                self.recent.swap_remove(index);
                true
            }
            Some(Place::Table(index)) => self
                .generations
                .get_mut(index)
                .is_some_and(|generation| generation.table.remove(id, hash)),
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
        let mut maybe = self.filter.may_hold(hash, self.generations.len());
        while maybe != 0 {
            let index = maybe.trailing_zeros() as usize;
            maybe &= maybe - 1;
            if index == self.current
                && let Some(at) = self.recent.iter().position(|(recent, _)| *recent == id)
            {
                return Some(Place::Recent(at));
            }
            if self
                .generations
                .get(index)
                .is_some_and(|generation| generation.table.contains(id, hash))
            {
                return Some(Place::Table(index));
            }
        }
        None
    }

    /// The ids of generation `index` now (the current one's include `recent`).
    fn ids(&self, index: usize) -> impl Iterator<Item = Uuid> {
        let recent: &[(Uuid, u64)] = if index == self.current {
            &self.recent
        } else {
            &[]
        };
        self.generations
            .get(index)
            .into_iter()
            .flat_map(|generation| generation.table.iter())
            .chain(recent.iter().map(|(id, _)| *id))
    }

    /// Called when the current generation put as many ids into the filter as it is sized
    /// for. When its live ids fill more than half of that, the filter grows to about
    /// twice as many as are live, up to a generation's size (more only when the
    /// generation took more than that, after removals), and every generation's ids are
    /// put into it again. Otherwise (ids were removed since) only the current
    /// generation's bits are made anew, which drops those of the removed ids. Either way
    /// the work is paid for by as many inserts.
    fn rebuild_filter(&mut self) {
        let live = self.ids(self.current).count();
        let wanted = live
            .saturating_mul(2)
            .max(MIN_FILTER_IDS)
            .min(self.generation.max(MIN_FILTER_IDS))
            .max(live + live / 4 + 1);
        let rebuilt: Vec<usize> = if wanted > self.filter.capacity {
            self.filter.reset(wanted);
            (0..self.generations.len()).collect()
        } else {
            self.filter.clear(self.current);
            vec![self.current]
        };
        for index in rebuilt {
            let hashes: Vec<u64> = self.ids(index).map(|id| self.hash.hash_one(id)).collect();
            for hash in &hashes {
                self.filter.insert(*hash, index);
            }
            if let Some(generation) = self.generations.get_mut(index) {
                generation.inserted = hashes.len();
            }
        }
    }

    /// Closes the current generation and makes the oldest, cleared, the current one.
    fn next_generation(&mut self) {
        if let Some(current) = self.generations.get_mut(self.current) {
            current.table.insert_all(&self.recent);
        }
        self.recent.clear();
        self.current = (self.current + 1) % self.generations.len();
        self.filter.clear(self.current);
        if let Some(oldest) = self.generations.get_mut(self.current) {
            oldest.table.clear();
            oldest.inserted = 0;
        }
        self.filled = 0;
    }
}

/// One line of a [`Filter`], 64 bytes, aligned to a cache line: three words for each
/// generation, in which an id of that generation sets two bits each.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Line([u32; 16]);

/// Odd multipliers that pick an id's six bits from one 32-bit half of its hash.
const SALTS: [u32; 6] = [
    0x9e37_79b1,
    0x85eb_ca77,
    0xc2b2_ae3d,
    0x27d4_eb2f,
    0x1656_67b1,
    0xd3a2_646d,
];

/// A blocked Bloom filter for up to [`MAX_GENERATIONS`] generations at once: an id maps
/// to one line, where it sets six bits in the three words of its generation. It may say
/// "maybe" for an id never inserted, never "no" for one inserted.
#[derive(Debug, Default)]
struct Filter {
    lines: Vec<Line>,
    /// The ids per generation it is sized for ([`BITS_PER_ID`] bits each).
    capacity: usize,
}

impl Filter {
    /// Empties it and sizes it for `capacity` ids per generation.
    fn reset(&mut self, capacity: usize) {
        let lines = capacity.saturating_mul(BITS_PER_ID).div_ceil(96).max(1);
        self.lines.clear();
        self.lines.resize(lines, Line::default());
        self.capacity = capacity;
    }

    /// Clears the bits of `generation`.
    fn clear(&mut self, generation: usize) {
        for line in &mut self.lines {
            if let Some(words) = line.0.get_mut(3 * generation..3 * generation + 3) {
                words.fill(0);
            }
        }
    }

    /// The line of an id whose hash is `hash`, from the hash's upper half, and the bits it
    /// sets in the three words of its generation there, from the lower half.
    fn place(&self, hash: u64) -> (usize, [u32; 3]) {
        let line = ((hash >> 32) * self.lines.len() as u64) >> 32;
        let low = hash as u32;
        let bit = |salt: u32| 1 << (low.wrapping_mul(salt) >> 27);
        let bits = [
            bit(SALTS[0]) | bit(SALTS[1]),
            bit(SALTS[2]) | bit(SALTS[3]),
            bit(SALTS[4]) | bit(SALTS[5]),
        ];
        (line as usize, bits)
    }

    fn insert(&mut self, hash: u64, generation: usize) {
        let (line, bits) = self.place(hash);
        if let Some(words) = self
            .lines
            .get_mut(line)
            .and_then(|line| line.0.get_mut(3 * generation..3 * generation + 3))
        {
            for (word, bits) in words.iter_mut().zip(bits) {
                *word |= bits;
            }
        }
    }

    /// Which of the first `generations` generations may hold the id whose hash is
    /// `hash`: bit `g` of the result for generation `g`.
    fn may_hold(&self, hash: u64, generations: usize) -> u32 {
        let (line, bits) = self.place(hash);
        let Some(line) = self.lines.get(line) else {
            return 0;
        };
        let mut maybe = 0;
        for (generation, words) in line.0.chunks_exact(3).take(generations).enumerate() {
            let held = words
                .iter()
                .zip(bits)
                .fold(true, |all, (word, bits)| all & (word & bits == bits));
            maybe |= u32::from(held) << generation;
        }
        maybe
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
        let generations: Vec<Vec<Uuid>> = (0..MAX_GENERATIONS)
            .map(|_| (0..10_000).map(|_| Uuid::now_v7()).collect())
            .collect();
        for (generation, ids) in generations.iter().enumerate() {
            for id in ids {
                filter.insert(hash.hash_one(id), generation);
            }
        }
        for (generation, ids) in generations.iter().enumerate() {
            assert!(ids.iter().all(|id| {
                filter.may_hold(hash.hash_one(id), MAX_GENERATIONS) & (1 << generation) != 0
            }));
        }
        let mut false_maybes = 0;
        for _ in 0..100_000 {
            false_maybes += filter
                .may_hold(hash.hash_one(Uuid::now_v7()), MAX_GENERATIONS)
                .count_ones();
        }
        // About 1 % per generation at 10 bits per id; the bound leaves room for chance.
        assert!(
            false_maybes < 3 * 1_000 * MAX_GENERATIONS as u32,
            "{false_maybes} false maybes in 100,000 lookups of 5 generations"
        );
        // Clearing one generation leaves the others.
        filter.clear(2);
        assert!(
            generations[2]
                .iter()
                .all(|id| { filter.may_hold(hash.hash_one(id), MAX_GENERATIONS) & (1 << 2) == 0 })
        );
        assert!(
            generations[3]
                .iter()
                .all(|id| { filter.may_hold(hash.hash_one(id), MAX_GENERATIONS) & (1 << 3) != 0 })
        );
    }

    #[test]
    fn an_unmade_filter_holds_nothing() {
        let filter = Filter::default();
        assert_eq!(
            filter.may_hold(KeyedHash::default().hash_one(Uuid::now_v7()), 5),
            0
        );
    }

    #[test]
    fn a_window_grows_its_filter_and_forgets_and_records_again() {
        let mut window = Window::new(100_000, 4);
        let ids: Vec<Uuid> = (0..250_000).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert!(window.record(*id));
        }
        assert_eq!(window.len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| window.contains(*id) && !window.record(*id))
        );
        // Removed from the recent list and from a table alike.
        for id in [ids[0], ids[ids.len() - 1]] {
            assert!(window.forget(id));
            assert!(!window.contains(id));
            assert!(!window.forget(id));
            assert!(window.record(id));
        }
        assert_eq!(window.len(), ids.len());
    }

    #[test]
    fn a_generation_whose_ids_keep_failing_keeps_its_filter_clean() {
        // Every id recorded then removed, as when every message fails: the generation
        // never fills, and its bits are made anew rather than piling up.
        let mut window = Window::new(1_000_000, 4);
        for _ in 0..20 * MIN_FILTER_IDS {
            let id = Uuid::now_v7();
            assert!(window.record(id));
            assert!(window.forget(id));
        }
        assert_eq!(window.len(), 0);
        assert_eq!(window.filter.capacity, MIN_FILTER_IDS);
        let maybes = (0..10_000)
            .filter(|_| {
                window
                    .filter
                    .may_hold(window.hash.hash_one(Uuid::now_v7()), 5)
                    != 0
            })
            .count();
        assert!(maybes < 500, "{maybes} maybes in 10,000 new ids");
    }
}
