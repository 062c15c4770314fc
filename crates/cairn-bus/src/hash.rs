//! [`KeyedHash`]: the hasher of the maps on a message's path (the inbox's ids, the ids in
//! progress, the ordering keys' lanes, the router's routes).
//!
//! The standard library's SipHash is built to resist any input an attacker picks and costs
//! about a hundred instructions for a short key; a consumer hashes each message's id and
//! key several times. This is a folded multiply of each 16 bytes of input with two random
//! keys per map: a few instructions per word, spreading ids (random already) and short
//! strings well. The random keys keep ids or ordering keys chosen by a hostile publisher
//! from being made to collide, as far as a fast non-cryptographic hash can: it is not a
//! cryptographic hash and promises nothing against an attacker who can read the keys.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyedHasher`]s with two random keys drawn once per map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedHash {
    keys: (u64, u64),
}

impl Default for KeyedHash {
    fn default() -> Self {
        Self {
            keys: (rand::random(), rand::random()),
        }
    }
}

impl BuildHasher for KeyedHash {
    type Hasher = KeyedHasher;

    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            keys: self.keys,
            state: 0,
        }
    }
}

/// The hasher of [`KeyedHash`]: each write folds 16 bytes at a time into the state.
#[derive(Debug)]
pub(crate) struct KeyedHasher {
    keys: (u64, u64),
    state: u64,
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut halves = [0u8; 16];
            halves[..chunk.len()].copy_from_slice(chunk);
            let (high, low) = halves.split_at(8);
            let high = u64::from_le_bytes(high.try_into().unwrap_or_default());
            // The chunk's length keeps a short chunk apart from the same bytes padded.
            let low = u64::from_le_bytes(low.try_into().unwrap_or_default())
                ^ (chunk.len() as u64).rotate_left(56);
            self.state = folded_multiply(high ^ self.keys.0 ^ self.state, low ^ self.keys.1);
        }
    }

    fn write_u8(&mut self, n: u8) {
        // A string's terminator: one multiply.
        self.state = folded_multiply(
            self.state ^ self.keys.0,
            (u64::from(n) | 1 << 8) ^ self.keys.1,
        );
    }

    fn write_usize(&mut self, n: usize) {
        self.state = self.state.rotate_left(5) ^ n as u64;
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use uuid::Uuid;

    use super::*;

    #[test]
    fn ids_hash_apart_and_the_same_id_hashes_the_same() {
        let hash = KeyedHash::default();
        let ids: Vec<Uuid> = (0..100_000).map(|_| Uuid::now_v7()).collect();
        let mut hashes: Vec<u64> = ids.iter().map(|id| hash.hash_one(id)).collect();
        assert_eq!(hash.hash_one(ids[7]), hashes[7]);
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(
            hashes.len(),
            ids.len(),
            "64-bit hashes of distinct ids did not collide"
        );
        // The low bits (the table's buckets) spread too.
        let mut buckets = vec![0u32; 1 << 10];
        for id in &ids {
            buckets[(hash.hash_one(id) & 1023) as usize] += 1;
        }
        let fullest = buckets.iter().max().copied().unwrap_or_default();
        assert!(
            fullest < 200,
            "a bucket of 1,024 took {fullest} of 100,000 ids"
        );
        // Another map's keys give other hashes.
        assert_ne!(KeyedHash::default().hash_one(ids[0]), hash.hash_one(ids[0]));
    }

    #[test]
    fn short_strings_hash_apart_and_spread() {
        let hash = KeyedHash::default();
        let mut keys: Vec<String> = (0..100_000).map(|k| format!("key-{k}")).collect();
        // Prefixes of one another, and padding that a careless hash would confuse.
        keys.extend(["", "a", "a\0", "aa", "a\0\0", "\0"].map(String::from));
        let hashes: HashSet<u64> = keys.iter().map(|key| hash.hash_one(key)).collect();
        assert_eq!(hashes.len(), keys.len(), "distinct keys did not collide");
        let mut buckets = vec![0u32; 1 << 10];
        for key in &keys {
            buckets[(hash.hash_one(key) & 1023) as usize] += 1;
        }
        let fullest = buckets.iter().max().copied().unwrap_or_default();
        assert!(
            fullest < 200,
            "a bucket of 1,024 took {fullest} of 100,000 keys"
        );
        assert_eq!(hash.hash_one("key-7"), hash.hash_one(String::from("key-7")));
    }
}
