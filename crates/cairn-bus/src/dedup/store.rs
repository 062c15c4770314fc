//! The [`Inbox`] contract and [`MemoryInbox`], its in-process implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use uuid::Uuid;

use super::InboxError;
use super::window::Window;
use crate::hash::KeyedHash;

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

    /// Removes the record of `id` that `record_now` made, so that `id` is new again (an
    /// id not recorded stays so). It cannot fail: the de-duplication middleware records
    /// an id when its message starts and relies on this to take the record back when the
    /// message fails or is cancelled.
    fn forget_now(&self, consumer: &str, id: Uuid);
}

/// An [`Inbox`] in this process's memory, bounded: it remembers at least the last
/// [`window`](Self::window) ids recorded per consumer and forgets the oldest first, in
/// generations.
///
/// **The window is the guarantee:** an id is recognized as long as fewer than `window`
/// newer ids were recorded for its consumer (an id recorded and then removed again with
/// [`forget_now`](ImmediateInbox::forget_now) does not count). Ids are forgotten a
/// generation (a quarter of the window, rounded up) at a time, so an id older than the
/// window may still be recognized for a while; once [`forgets_after`](Self::forgets_after)
/// newer ids were recorded (the window plus less than two generations; less than one when
/// 4 divides the window, as it does the default) it is forgotten, and a duplicate of it
/// runs again. Nothing survives a restart. Size the window above the number of messages
/// the broker may redeliver late (its de-dup window, or its unacknowledged backlog).
///
/// Each generation keeps its ids in a table of 16-byte slots at most 70 % full (about 23
/// bytes per id), and the generations share a Bloom filter of 10 bits per id, so the
/// default window takes about 30 MB per consumer once its tables have grown (they grow as
/// ids come, and keep their memory when their generation is forgotten). Asking about a new
/// id costs one cache line of the filter (1.7 MB for the default window, small enough to
/// stay in the CPU's cache) rather than a cache miss in a table of a million ids, plus a
/// table lookup for the few in a hundred the filter wrongly says a generation may hold.
/// Recording one moves it into its generation's table with the 127 recorded before it,
/// so that their cache misses overlap.
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
    /// Ids recorded per generation.
    generation: usize,
    /// Full generations kept besides the one filling: `generation * kept >= window`.
    kept: usize,
    consumers: Arc<Mutex<HashMap<String, Window, KeyedHash>>>,
}

/// Full generations kept at most besides the one filling, so that a generation is a
/// quarter of the window.
const GENERATIONS: usize = 4;

impl MemoryInbox {
    /// The default number of ids remembered per consumer.
    pub const DEFAULT_WINDOW: usize = 1_000_000;

    /// An empty inbox with the [default window](Self::DEFAULT_WINDOW).
    pub fn new() -> Self {
        Self::with_window(Self::DEFAULT_WINDOW)
    }

    /// An empty inbox that remembers at least the last `window` ids per consumer (at
    /// least 1).
    pub fn with_window(window: usize) -> Self {
        let window = window.max(1);
        let generation = window.div_ceil(GENERATIONS);
        let kept = window.div_ceil(generation);
        Self {
            window,
            generation,
            kept,
            consumers: Arc::default(),
        }
    }

    /// How many ids it remembers per consumer at least: an id is recognized as long as
    /// fewer newer ones were recorded for its consumer.
    pub fn window(&self) -> usize {
        self.window
    }

    /// After how many newer ids recorded for its consumer an id is forgotten at the
    /// latest: the window plus less than two generations (a generation is a quarter of the
    /// window, rounded up), less than one when 4 divides the window (1,249,999 for the
    /// default), and exactly the window for windows of up to 4 ids.
    pub fn forgets_after(&self) -> usize {
        self.generation * self.kept + self.generation - 1
    }

    /// How many ids it remembers now for `consumer`.
    pub fn remembered(&self, consumer: &str) -> usize {
        self.lock().get(consumer).map_or(0, Window::len)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Window, KeyedHash>> {
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
            .is_some_and(|window| window.contains(id)))
    }

    fn record_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        let mut consumers = self.lock();
        let window = match consumers.get_mut(consumer) {
            Some(window) => window,
            None => consumers
                .entry(consumer.to_owned())
                .or_insert_with(|| Window::new(self.generation, self.kept)),
        };
        Ok(window.record(id))
    }

    fn forget_now(&self, consumer: &str, id: Uuid) {
        if let Some(window) = self.lock().get_mut(consumer) {
            window.forget(id);
        }
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
