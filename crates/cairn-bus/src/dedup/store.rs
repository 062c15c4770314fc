//! The [`Inbox`] contract and [`MemoryInbox`], its in-process implementation.

use std::collections::{HashMap, HashSet, VecDeque};
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
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
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
