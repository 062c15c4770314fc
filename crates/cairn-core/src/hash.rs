//! [`KeyedHash`]: the hasher of the maps on hot paths, keyed by ids and short names (a
//! message's id and ordering key in the bus, a stream's name in the embedded store's
//! index).
//!
//! The standard library's SipHash is built to resist any input an attacker picks and costs
//! about a hundred instructions for a short key, and these maps hash every message or
//! event several times. This is a folded multiply of each 16 bytes of input with two random
//! keys per map: a few instructions per word, spreading ids (random already) and short
//! strings well. The random keys keep ids, ordering keys or stream names chosen by a
//! hostile writer from being made to collide, as far as a fast non-cryptographic hash can:
//! it is not a cryptographic hash and promises nothing against an attacker who can read
//! the keys. Hashes are not stable across maps or processes: never persist them.

use std::hash::{BuildHasher, Hasher};

/// Builds [`KeyedHasher`]s with two random keys drawn once per map.
#[derive(Debug, Clone, Copy)]
pub struct KeyedHash {
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

/// The hasher of [`KeyedHash`]: each write folds 16 bytes at a time into the state, a
/// shorter last chunk read as two (overlapping) words.
#[derive(Debug)]
pub struct KeyedHasher {
    keys: (u64, u64),
    state: u64,
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The first `N` bytes of `bytes` (which has at least that many) as a little-endian word.
#[inline]
fn word<const N: usize>(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    if let (Some(to), Some(from)) = (word.get_mut(..N), bytes.get(..N)) {
        to.copy_from_slice(from);
    }
    u64::from_le_bytes(word)
}

/// Up to 16 bytes as two words, every byte in one of them, without a copy of variable
/// length: from 8 bytes on, the first and the last eight (overlapping below 16); from 4,
/// the first and the last four; below that, the first, middle and last byte. Which bytes
/// the words hold depends only on the length, which the caller mixes in as well.
#[inline]
fn words(bytes: &[u8]) -> (u64, u64) {
    let len = bytes.len();
    let tail = |n: usize| bytes.get(len.saturating_sub(n)..).unwrap_or_default();
    match len {
        8.. => (word::<8>(bytes), word::<8>(tail(8))),
        4..8 => (word::<4>(bytes), word::<4>(tail(4))),
        1..4 => {
            let byte = |at: usize| u64::from(bytes.get(at).copied().unwrap_or_default());
            ((byte(0) << 16) | (byte(len / 2) << 8) | byte(len - 1), 0)
        }
        0 => (0, 0),
    }
}

impl KeyedHasher {
    /// Folds one chunk of up to 16 bytes, given as its two words and its length.
    #[inline]
    fn fold(&mut self, (high, low): (u64, u64), len: usize) {
        // The chunk's length turns the second key, so that chunks of different lengths
        // whose words hold the same bytes (or bytes shifted to look alike) hash apart,
        // in a way that cannot be arranged without the key.
        let key = self.keys.1.rotate_left(len as u32);
        self.state = folded_multiply(high ^ self.keys.0 ^ self.state, low ^ key);
    }
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(16);
        for chunk in &mut chunks {
            self.fold(
                (
                    word::<8>(chunk),
                    word::<8>(chunk.get(8..).unwrap_or_default()),
                ),
                16,
            );
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.fold(words(rest), rest.len());
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        // A string's terminator: one multiply.
        self.state = folded_multiply(
            self.state ^ self.keys.0,
            (u64::from(n) | 1 << 8) ^ self.keys.1,
        );
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.state = self.state.rotate_left(5) ^ n as u64;
    }

    #[inline]
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

    #[test]
    fn every_byte_of_every_length_counts() {
        // For each length, the string of `a`s and each one-byte change of it: the short
        // chunk's words must take in every byte, the length keeps lengths apart.
        let hash = KeyedHash::default();
        let mut hashes = HashSet::new();
        let mut count = 0;
        for len in 0..=40 {
            let base = vec![b'a'; len];
            for at in 0..=len {
                let mut changed = base.clone();
                if let Some(byte) = changed.get_mut(at) {
                    *byte = b'b';
                }
                // As a slice (length first) and as a string (a terminator after).
                hashes.insert(hash.hash_one(&changed[..]));
                hashes.insert(hash.hash_one(String::from_utf8(changed).unwrap()));
                count += 2;
            }
        }
        assert_eq!(hashes.len(), count, "a byte or a length went unnoticed");
    }
}
