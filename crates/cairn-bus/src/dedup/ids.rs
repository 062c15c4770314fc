//! [`IdSet`]: the exact ids of one generation of a [`Window`](super::window::Window).
//!
//! Open addressing with linear probing over 16-byte slots, four to a cache line; an
//! all-zero slot is empty (the nil id is kept apart). The caller gives each id's hash,
//! which it computed once for its filter.
//!
//! A set grows by doubling, at most [`MAX_LOAD`] full, except that its last step lands on
//! exactly the slots the `limit` ids its generation holds need (rather than the next
//! power of two, up to twice as many).

use std::hash::BuildHasher;

use uuid::Uuid;

use cairn_core::KeyedHash;

/// How full a set gets before it grows, as a fraction: 7 in 10.
const MAX_LOAD: (usize, usize) = (7, 10);
/// Slots of a set's first table.
const MIN_SLOTS: usize = 64;

/// A set of ids; see the [module docs](self).
#[derive(Debug)]
pub(super) struct IdSet {
    /// Each id as a number, 0 for an empty slot. Its length is never zero once an id was
    /// inserted, and never full.
    slots: Vec<u128>,
    /// Ids in `slots`.
    len: usize,
    /// Whether the nil id is in the set (it cannot be told from an empty slot).
    nil: bool,
    /// The ids the set is meant to hold: its growth stops at their slots while they fit.
    limit: usize,
    /// The hasher the caller's hashes come from, to place ids again when it grows or
    /// removes.
    hash: KeyedHash,
}

impl IdSet {
    /// An empty set for up to `limit` ids, hashed by `hash`; it takes no memory yet.
    pub(super) fn new(limit: usize, hash: KeyedHash) -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
            nil: false,
            limit: limit.max(1),
            hash,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len + usize::from(self.nil)
    }

    /// The slot where the probe for `hash` starts.
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// Where `id` is, or the empty slot where it would go; `None` when there are no slots.
    fn probe(&self, id: u128, hash: u64) -> Option<(usize, bool)> {
        let len = self.slots.len();
        let mut at = self.home(hash);
        for _ in 0..len {
            match self.slots.get(at).copied() {
                Some(slot) if slot == id => return Some((at, true)),
                Some(0) => return Some((at, false)),
                Some(_) => at = if at + 1 == len { 0 } else { at + 1 },
                None => return None,
            }
        }
        None
    }

    pub(super) fn contains(&self, id: Uuid, hash: u64) -> bool {
        match id.as_u128() {
            0 => self.nil,
            id => matches!(self.probe(id, hash), Some((_, true))),
        }
    }

    /// Inserts `id`: `false` when it was in the set already.
    pub(super) fn insert(&mut self, id: Uuid, hash: u64) -> bool {
        let id = id.as_u128();
        if id == 0 {
            return !std::mem::replace(&mut self.nil, true);
        }
        self.reserve(1);
        match self.probe(id, hash) {
            Some((_, true)) => false,
            Some((at, false)) => {
                if let Some(slot) = self.slots.get_mut(at) {
                    *slot = id;
                    self.len += 1;
                }
                true
            }
            None => false,
        }
    }

    /// Inserts every id of `batch` (each with its hash).
    pub(super) fn insert_all(&mut self, batch: &[(Uuid, u64)]) {
        self.reserve(batch.len());
        for (id, hash) in batch {
            self.insert(*id, *hash);
        }
    }

    /// Removes `id`: `false` when it was not in the set.
    pub(super) fn remove(&mut self, id: Uuid, hash: u64) -> bool {
        let id = id.as_u128();
        if id == 0 {
            return std::mem::replace(&mut self.nil, false);
        }
        let Some((mut hole, true)) = self.probe(id, hash) else {
            return false;
        };
        // Backward shift: move later ids of the run into the hole when their probe
        // started at or before it, so that no probe meets an empty slot before its id.
        let len = self.slots.len();
        let mut at = hole;
        loop {
            at = if at + 1 == len { 0 } else { at + 1 };
            let Some(next) = self.slots.get(at).copied() else {
                break;
            };
            if next == 0 {
                break;
            }
            let home = self.home(self.hash.hash_one(Uuid::from_u128(next)));
            // Whether `home` lies cyclically in (hole, at]: then `next` stays.
            let stays = if hole <= at {
                hole < home && home <= at
            } else {
                hole < home || home <= at
            };
            if !stays {
                if let Some(slot) = self.slots.get_mut(hole) {
                    *slot = next;
                }
                hole = at;
            }
        }
        if let Some(slot) = self.slots.get_mut(hole) {
            *slot = 0;
        }
        self.len -= 1;
        true
    }

    /// Empties it, keeping its memory.
    pub(super) fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
        self.nil = false;
    }

    /// Every id in the set.
    pub(super) fn iter(&self) -> impl Iterator<Item = Uuid> + '_ {
        let nil = self.nil.then_some(Uuid::nil());
        self.slots
            .iter()
            .filter(|slot| **slot != 0)
            .map(|slot| Uuid::from_u128(*slot))
            .chain(nil)
    }

    /// Makes room for `more` ids, so that the slots stay at most [`MAX_LOAD`] full: the
    /// slots double, except that a set short of the slots its `limit` needs grows to
    /// exactly those when they are enough.
    fn reserve(&mut self, more: usize) {
        let (load, of) = MAX_LOAD;
        let needed = (self.len + more).saturating_mul(of);
        if needed <= self.slots.len().saturating_mul(load) {
            return;
        }
        let sized = (self.limit.saturating_mul(of) / load + 1).max(MIN_SLOTS);
        let mut slots = self.slots.len().max(MIN_SLOTS);
        while slots.saturating_mul(load) < needed {
            slots = slots.saturating_mul(2);
        }
        if self.slots.len() < sized && sized < slots && needed <= sized.saturating_mul(load) {
            slots = sized;
        }
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        self.len = 0;
        for id in old.into_iter().filter(|id| *id != 0) {
            let hash = self.hash.hash_one(Uuid::from_u128(id));
            if let Some((at, false)) = self.probe(id, hash) {
                if let Some(slot) = self.slots.get_mut(at) {
                    *slot = id;
                }
                self.len += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn it_agrees_with_a_hash_set_through_random_inserts_and_removals() {
        let hash = KeyedHash::default();
        let mut set = IdSet::new(3_000, hash);
        let mut model = HashSet::new();
        let pool: Vec<Uuid> = (0..4_000)
            .map(|n| if n == 0 { Uuid::nil() } else { Uuid::now_v7() })
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for step in 0..60_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = pool[(seed % pool.len() as u64) as usize];
            let hashed = hash.hash_one(id);
            if seed.is_multiple_of(3) {
                assert_eq!(set.remove(id, hashed), model.remove(&id), "step {step}");
            } else if seed % 11 == 1 {
                let batch: Vec<(Uuid, u64)> = pool
                    .iter()
                    .skip((seed % 100) as usize)
                    .step_by(97)
                    .map(|id| (*id, hash.hash_one(id)))
                    .collect();
                set.insert_all(&batch);
                model.extend(batch.iter().map(|(id, _)| *id));
            } else {
                assert_eq!(set.insert(id, hashed), model.insert(id), "step {step}");
            }
            assert_eq!(set.len(), model.len(), "step {step}");
        }
        assert!(
            pool.iter()
                .all(|id| set.contains(*id, hash.hash_one(id)) == model.contains(id))
        );
        let listed: HashSet<Uuid> = set.iter().collect();
        assert_eq!(listed, model);
        set.clear();
        assert_eq!(set.len(), 0);
        assert!(!pool.iter().any(|id| set.contains(*id, hash.hash_one(id))));
    }

    #[test]
    fn it_grows_to_the_slots_of_its_limit_and_beyond_only_when_more_come() {
        let hash = KeyedHash::default();
        let mut set = IdSet::new(1_000, hash);
        let ids: Vec<Uuid> = (0..2_000).map(|_| Uuid::now_v7()).collect();
        for id in &ids[..1_000] {
            assert!(set.insert(*id, hash.hash_one(id)));
        }
        assert_eq!(set.slots.len(), 1_000 * 10 / 7 + 1);
        for id in &ids[1_000..] {
            assert!(set.insert(*id, hash.hash_one(id)));
        }
        assert!(
            set.slots.len() * 7 / 10 >= 2_000,
            "past its limit it keeps its load"
        );
        assert!(ids.iter().all(|id| set.contains(*id, hash.hash_one(id))));
    }
}
