//! The [`Inbox`] contract and [`MemoryInbox`], its in-process implementation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use uuid::Uuid;

use super::InboxError;

/// The ids of the messages each consumer has processed, keyed by (consumer name, message
/// id).
///
/// Implementations must be safe to call concurrently; `record` of one (consumer, id) pair
/// from two callers at once returns `true` to exactly one of them.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether `consumer` has recorded `id`.
    ///
    /// # Errors
    ///
    /// [`InboxError::InvalidConsumer`] for a name the store refuses;
    /// [`InboxError::Unavailable`] when the store failed.
    async fn contains(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError>;

    /// Records that `consumer` processed `id`: `true` the first time, `false` when it was
    /// already recorded.
    ///
    /// # Errors
    ///
    /// As [`contains`](Self::contains).
    async fn record(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError>;

    /// The same store answering without waiting, when it can (an in-memory store can): the
    /// de-duplication middleware then checks and records a message without allocating a
    /// future for it. Must give the same answer every time. The default is `None`.
    fn as_immediate(&self) -> Option<&dyn ImmediateInbox> {
        None
    }
}

/// The synchronous side of an [`Inbox`] that never waits; see [`Inbox::as_immediate`].
pub trait ImmediateInbox: Send + Sync {
    /// As [`Inbox::contains`], without waiting.
    ///
    /// # Errors
    ///
    /// As [`Inbox::contains`].
    fn contains_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError>;

    /// As [`Inbox::record`], without waiting.
    ///
    /// # Errors
    ///
    /// As [`Inbox::record`].
    fn record_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError>;
}

/// An [`Inbox`] in this process's memory, bounded: it remembers the last
/// [`window`](Self::window) ids recorded per consumer and forgets the oldest first.
///
/// **The window is the guarantee:** a duplicate delivered after more than `window` newer
/// ids were recorded for its consumer is not recognized and runs again; nothing survives a
/// restart. Size the window above the number of messages the broker may redeliver late
/// (its de-dup window, or its unacknowledged backlog). Each remembered id costs about 40
/// bytes, so the default window of 1,000,000 ids holds about 40 MB per consumer.
///
/// Clones share the same memory.
///
/// # Examples
///
/// ```
/// use cairn_bus::dedup::{ImmediateInbox, MemoryInbox};
/// use uuid::Uuid;
///
/// let inbox = MemoryInbox::with_window(2);
/// let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
/// for id in [a, b, c] {
///     assert!(inbox.record_now("billing", id)?);
/// }
/// assert!(!inbox.contains_now("billing", a)?, "the oldest was forgotten");
/// assert!(inbox.contains_now("billing", c)?);
/// # Ok::<(), cairn_bus::dedup::InboxError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemoryInbox {
    window: usize,
    consumers: Arc<Mutex<HashMap<String, Window>>>,
}

/// One consumer's remembered ids, and the order they were recorded in.
#[derive(Debug, Default)]
struct Window {
    ids: HashSet<Uuid, IdHash>,
    order: VecDeque<Uuid>,
}

/// Hashes message ids for the inbox's set: a folded multiply of the id's two halves with
/// two random keys per set. Ids are random already (a UUID's low bits are), so this is
/// enough to spread them, several times cheaper than SipHash on the hot path, and the
/// random keys keep ids chosen by a hostile publisher from being made to collide.
#[derive(Debug, Clone, Copy)]
struct IdHash {
    keys: (u64, u64),
}

impl Default for IdHash {
    fn default() -> Self {
        Self {
            keys: (rand::random(), rand::random()),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            keys: self.keys,
            state: 0,
        }
    }
}

/// The hasher of [`IdHash`]; other inputs than a UUID's bytes (the length prefix) fold in
/// the same way.
#[derive(Debug)]
struct IdHasher {
    keys: (u64, u64),
    state: u64,
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut halves = [0u8; 16];
            halves[..chunk.len()].copy_from_slice(chunk);
            let (high, low) = halves.split_at(8);
            let high = u64::from_le_bytes(high.try_into().unwrap_or_default());
            let low = u64::from_le_bytes(low.try_into().unwrap_or_default());
            self.state = folded_multiply(high ^ self.keys.0 ^ self.state, low ^ self.keys.1);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.state = self.state.rotate_left(5) ^ n as u64;
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

impl MemoryInbox {
    /// The default number of ids remembered per consumer.
    pub const DEFAULT_WINDOW: usize = 1_000_000;

    /// An empty inbox with the [default window](Self::DEFAULT_WINDOW).
    pub fn new() -> Self {
        Self::with_window(Self::DEFAULT_WINDOW)
    }

    /// An empty inbox that remembers the last `window` ids per consumer (at least 1).
    pub fn with_window(window: usize) -> Self {
        Self {
            window: window.max(1),
            consumers: Arc::default(),
        }
    }

    /// How many ids it remembers per consumer.
    pub fn window(&self) -> usize {
        self.window
    }

    /// How many ids it remembers now for `consumer`.
    pub fn remembered(&self, consumer: &str) -> usize {
        self.lock()
            .get(consumer)
            .map_or(0, |window| window.order.len())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Window>> {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl ImmediateInbox for MemoryInbox {
    fn contains_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        Ok(self
            .lock()
            .get(consumer)
            .is_some_and(|window| window.ids.contains(&id)))
    }

    fn record_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        let mut consumers = self.lock();
        let window = match consumers.get_mut(consumer) {
            Some(window) => window,
            None => consumers.entry(consumer.to_owned()).or_default(),
        };
        if !window.ids.insert(id) {
            return Ok(false);
        }
        window.order.push_back(id);
        if window.order.len() > self.window
            && let Some(oldest) = window.order.pop_front()
        {
            window.ids.remove(&oldest);
        }
        Ok(true)
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn contains(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        self.contains_now(consumer, id)
    }

    async fn record(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        self.record_now(consumer, id)
    }

    fn as_immediate(&self) -> Option<&dyn ImmediateInbox> {
        Some(self)
    }
}

#[cfg(test)]
mod id_hash_tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn ids_hash_apart_and_the_same_id_hashes_the_same() {
        let hash = IdHash::default();
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
        // Another set's keys give other hashes.
        assert_ne!(IdHash::default().hash_one(ids[0]), hash.hash_one(ids[0]));
    }
}
