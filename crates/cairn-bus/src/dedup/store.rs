//! The [`Inbox`] contract and [`MemoryInbox`], its in-process implementation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use uuid::Uuid;

use super::InboxError;
use super::window::Window;
use cairn_core::KeyedHash;

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

    /// Checks `id` and, when it is new, records it and marks it as running, in one
    /// access: the answer says whether this caller now runs the message
    /// ([`Start::New`], and must then call [`finish_now`](Self::finish_now)), whether its
    /// effects are done ([`Start::Done`]), or whether a run that may still fail holds it
    /// ([`Start::Running`]), wherever that run is (another de-duplication layer over a
    /// clone of this inbox included).
    ///
    /// # Errors
    ///
    /// As [`Inbox::record`].
    fn start_now(&self, consumer: &str, id: Uuid) -> Result<Start, InboxError>;

    /// Ends the run of `id` that [`start_now`](Self::start_now) began: on success the id
    /// stays recorded; otherwise the record is removed, so that `id` is new again. Either
    /// way the id is no longer running. An id not running is left as it is. It cannot
    /// fail: the de-duplication middleware relies on it to take a record back when its
    /// message fails or is cancelled.
    fn finish_now(&self, consumer: &str, id: Uuid, succeeded: bool);
}

/// What [`ImmediateInbox::start_now`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The id was not recorded: it now is, and is running for the caller.
    New,
    /// The id is recorded and no run of it is going on: its effects are done.
    Done,
    /// The id is recorded by a run that has not finished and may still fail (and then
    /// take the record back): its effects are not known to be done.
    Running,
}

/// An [`Inbox`] in this process's memory, bounded: it remembers at least the last
/// [`window`](Self::window) ids recorded per consumer and forgets the oldest first, in
/// generations.
///
/// **The window is the guarantee:** an id is recognized as long as fewer than `window`
/// newer ids were recorded for its consumer (an id whose run failed, removed again with
/// [`finish_now`](ImmediateInbox::finish_now), does not count). Ids are forgotten a
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
/// Besides its window each consumer keeps the ids [started](ImmediateInbox::start_now)
/// and not yet [finished](ImmediateInbox::finish_now) (as many as run at once, a small
/// set behind the same lock), so that a copy of a running message is told
/// [`Start::Running`] rather than [`Start::Done`]. An id running when its generation is
/// forgotten is still answered as running.
///
/// Clones share the same memory, running ids included.
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
    consumers: Arc<Mutex<HashMap<String, Consumer, KeyedHash>>>,
}

/// One consumer's ids in a [`MemoryInbox`].
#[derive(Debug)]
struct Consumer {
    window: Window,
    /// Ids started and not finished: written by `start_now` and `finish_now`, under the
    /// inbox's lock.
    running: HashSet<Uuid, KeyedHash>,
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
        self.lock()
            .get(consumer)
            .map_or(0, |consumer| consumer.window.len())
    }

    /// How many ids are running now for `consumer`: started and not finished.
    pub fn running(&self, consumer: &str) -> usize {
        self.lock()
            .get(consumer)
            .map_or(0, |consumer| consumer.running.len())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Consumer, KeyedHash>> {
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

impl MemoryInbox {
    /// Runs `f` on `consumer`'s ids, made empty when the consumer is new.
    fn with_consumer<T>(&self, consumer: &str, f: impl FnOnce(&mut Consumer) -> T) -> T {
        let mut consumers = self.lock();
        let ids = match consumers.get_mut(consumer) {
            Some(ids) => ids,
            None => consumers
                .entry(consumer.to_owned())
                .or_insert_with(|| Consumer {
                    window: Window::new(self.generation, self.kept),
                    running: HashSet::default(),
                }),
        };
        f(ids)
    }
}

impl ImmediateInbox for MemoryInbox {
    fn contains_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        Ok(self
            .lock()
            .get(consumer)
            .is_some_and(|consumer| consumer.window.contains(id)))
    }

    fn record_now(&self, consumer: &str, id: Uuid) -> Result<bool, InboxError> {
        Ok(self.with_consumer(consumer, |ids| ids.window.record(id)))
    }

    fn start_now(&self, consumer: &str, id: Uuid) -> Result<Start, InboxError> {
        Ok(self.with_consumer(consumer, |ids| {
            // The small set first: a running id is answered without the window, even
            // when its generation was forgotten meanwhile.
            if ids.running.contains(&id) {
                Start::Running
            } else if ids.window.record(id) {
                ids.running.insert(id);
                Start::New
            } else {
                Start::Done
            }
        }))
    }

    fn finish_now(&self, consumer: &str, id: Uuid, succeeded: bool) {
        if let Some(ids) = self.lock().get_mut(consumer)
            && ids.running.remove(&id)
            && !succeeded
        {
            ids.window.forget(id);
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
