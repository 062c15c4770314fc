//! What a parked message is ([`Parked`], [`ParkingId`]), the [`DeadLetterStore`] contract
//! and [`MemoryDeadLetters`], its in-process implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreError;
use crate::message::Message;

/// The error code of a message parked only because an older message of its key is parked
/// ([`KeyPolicy::Block`](super::KeyPolicy::Block)); it was not handled.
pub const WAITING_BEHIND: &str = "waiting_behind";

/// The id of a parked message. Ids are UUID v7 made by this process in parking order, so
/// ordering ids orders parked messages by the time they were parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParkingId(Uuid);

impl ParkingId {
    /// A new id, after every id made before it in this process. `Uuid::now_v7` orders
    /// the ids of every thread of the process (one shared counter), where
    /// `cairn_core::new_id` orders those of each thread only: parking order is the order
    /// of ids made on any worker thread.
    pub(super) fn next() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for ParkingId {
    /// The parking id written as `uuid` (read back from a store, a URL, a command line).
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl fmt::Display for ParkingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parked message: the message as it was delivered, and why it was parked.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Its parking id.
    pub id: ParkingId,
    /// The topic it was delivered from.
    pub topic: Arc<str>,
    /// The message, headers included, as delivered.
    pub message: Arc<Message>,
    /// The [stable code](crate::HandlerError::code) of the last failure, or
    /// [`WAITING_BEHIND`].
    pub code: String,
    /// The last failure's text, or which parked message it waits behind.
    pub error: String,
    /// Attempts made so far, over the first handling and every replay (0 for a message
    /// that only waited behind its key).
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: SystemTime,
    /// The parked message of the same key it was parked behind without being handled;
    /// `None` once it has been handled and failed.
    pub behind: Option<ParkingId>,
}

impl Parked {
    /// The message's ordering key.
    pub fn key(&self) -> Option<&str> {
        self.message.key.as_deref()
    }
}

/// Which parked messages [`DeadLetterStore::list`] returns: those matching every field
/// set, in parking order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only messages from this topic.
    pub topic: Option<String>,
    /// Only messages with this key.
    pub key: Option<String>,
    /// Only messages parked after this one (a page's last id, to get the next page).
    pub after: Option<ParkingId>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Every parked message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only messages from `topic`.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only messages with `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only messages parked after `id`.
    #[must_use]
    pub fn after(mut self, id: ParkingId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit` messages.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `parked` matches the topic and key (not the page) of this filter.
    pub fn matches(&self, parked: &Parked) -> bool {
        self.topic.as_deref().is_none_or(|t| *parked.topic == *t)
            && self.key.as_deref().is_none_or(|k| parked.key() == Some(k))
    }
}

/// Where parked messages are kept. Implementations keep them ordered by [`ParkingId`]
/// (parking order) and must be safe to call concurrently.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Keeps `parked`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the store failed (nothing was kept).
    async fn park(&self, parked: &Parked) -> Result<(), StoreError>;

    /// The parked message `id`, if it is parked.
    ///
    /// # Errors
    ///
    /// As [`park`](Self::park).
    async fn get(&self, id: ParkingId) -> Result<Option<Parked>, StoreError>;

    /// The parked messages `filter` selects, in parking order.
    ///
    /// # Errors
    ///
    /// As [`park`](Self::park).
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Parked>, StoreError>;

    /// Replaces the failure of the parked message `id` (its code, text and attempts; it is
    /// no longer `behind` anything). Returns whether it was parked.
    ///
    /// # Errors
    ///
    /// As [`park`](Self::park).
    async fn record_failure(
        &self,
        id: ParkingId,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> Result<bool, StoreError>;

    /// Removes the parked message `id`, returning it if it was parked.
    ///
    /// # Errors
    ///
    /// As [`park`](Self::park).
    async fn remove(&self, id: ParkingId) -> Result<Option<Parked>, StoreError>;
}

/// A [`DeadLetterStore`] in this process's memory: parked messages are lost with the
/// process (the broker has already acknowledged them), so it suits tests and consumers
/// whose dead letters an operator handles while the process runs. Unbounded. Clones share
/// the same messages.
#[derive(Debug, Clone, Default)]
pub struct MemoryDeadLetters {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    by_id: BTreeMap<ParkingId, Parked>,
    by_key: HashMap<String, BTreeSet<ParkingId>>,
}

impl MemoryDeadLetters {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages are parked.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no message is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn after(id: Option<ParkingId>) -> (Bound<ParkingId>, Bound<ParkingId>) {
    match id {
        Some(id) => (Bound::Excluded(id), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn park(&self, parked: &Parked) -> Result<(), StoreError> {
        let mut memory = self.lock();
        if let Some(key) = parked.key() {
            memory
                .by_key
                .entry(key.to_owned())
                .or_default()
                .insert(parked.id);
        }
        memory.by_id.insert(parked.id, parked.clone());
        Ok(())
    }

    async fn get(&self, id: ParkingId) -> Result<Option<Parked>, StoreError> {
        Ok(self.lock().by_id.get(&id).cloned())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Parked>, StoreError> {
        let memory = self.lock();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let found = match filter.key.as_deref() {
            Some(key) => memory.by_key.get(key).map_or_else(Vec::new, |ids| {
                ids.range(after(filter.after))
                    .filter_map(|id| memory.by_id.get(id))
                    .filter(|parked| filter.matches(parked))
                    .take(limit)
                    .cloned()
                    .collect()
            }),
            None => memory
                .by_id
                .range(after(filter.after))
                .map(|(_, parked)| parked)
                .filter(|parked| filter.matches(parked))
                .take(limit)
                .cloned()
                .collect(),
        };
        Ok(found)
    }

    async fn record_failure(
        &self,
        id: ParkingId,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        let mut memory = self.lock();
        let Some(parked) = memory.by_id.get_mut(&id) else {
            return Ok(false);
        };
        code.clone_into(&mut parked.code);
        error.clone_into(&mut parked.error);
        parked.attempts = attempts;
        parked.behind = None;
        Ok(true)
    }

    async fn remove(&self, id: ParkingId) -> Result<Option<Parked>, StoreError> {
        let mut memory = self.lock();
        let Some(parked) = memory.by_id.remove(&id) else {
            return Ok(None);
        };
        if let Some(key) = parked.key()
            && let Some(ids) = memory.by_key.get_mut(key)
        {
            ids.remove(&id);
            if ids.is_empty() {
                memory.by_key.remove(key);
            }
        }
        Ok(Some(parked))
    }
}
