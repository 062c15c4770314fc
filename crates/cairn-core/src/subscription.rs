//! Subscriptions: catch up from a starting point, then follow the live log, as a
//! [`futures::Stream`] of [`SubscriptionMessage`]s.
//!
//! A subscription never holds more than one page ([`SubscriptionOptions::buffer`] events)
//! in memory: it pulls pages from the store at the subscriber's pace and, when it has
//! reached the end, waits for a commit signal. Catch-up and live are the same reads, so
//! the hand-over can neither skip nor repeat an event. A subscriber that was live and then
//! found a full page (a buffer's worth or more) waiting is told
//! [`SubscriptionMessage::FellBehind`] and catches up from storage (or ends with
//! [`SubscriptionError::FellBehind`], if it asked to).
//!
//! Backends build their subscriptions with [`catch_up_all`] and [`catch_up_stream`],
//! giving them a [`CommitSignal`]; this module depends on no runtime.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::error::{StorageError, SubscriptionError};
use crate::event::RecordedEvent;
use crate::name::StreamName;
use crate::position::{Position, Revision};
use crate::read::{EventFilter, ReadAll, ReadStream, page_limit};
use crate::store::EventStore;

/// The buffer a subscription gets when it names none, in events.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 256;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStart<P> {
    /// From the first event.
    Start,
    /// From the first event after this one (a checkpoint: the last event processed).
    After(P),
    /// From the first event committed after the subscription started (live only).
    End,
}

/// What a subscriber does when it falls behind the live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnFallingBehind {
    /// Say so ([`SubscriptionMessage::FellBehind`]) and catch up from storage.
    #[default]
    CatchUp,
    /// End the subscription with [`SubscriptionError::FellBehind`].
    End,
}

/// How a subscription buffers and what it does when it falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// The most events held in memory for the subscriber (one page), at least 1.
    pub buffer: usize,
    /// What to do when the subscriber falls behind.
    pub on_falling_behind: OnFallingBehind,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            on_falling_behind: OnFallingBehind::CatchUp,
        }
    }
}

/// A subscription to `$all`.
///
/// # Examples
///
/// ```
/// use cairn_core::{EventFilter, Position, SubscribeAll};
///
/// let from_checkpoint = SubscribeAll::after(Position(41)).filter(EventFilter::category("order"));
/// # let _ = from_checkpoint;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeAll {
    /// Where to start.
    pub from: SubscriptionStart<Position>,
    /// Which events to deliver.
    pub filter: EventFilter,
    /// Buffering and falling behind.
    pub options: SubscriptionOptions,
}

impl SubscribeAll {
    /// From the first event of the log.
    pub fn from_start() -> Self {
        Self::starting(SubscriptionStart::Start)
    }

    /// From the first event after `position`.
    pub fn after(position: Position) -> Self {
        Self::starting(SubscriptionStart::After(position))
    }

    /// From the first event committed after the subscription started.
    pub fn from_end() -> Self {
        Self::starting(SubscriptionStart::End)
    }

    fn starting(from: SubscriptionStart<Position>) -> Self {
        Self {
            from,
            filter: EventFilter::all(),
            options: SubscriptionOptions::default(),
        }
    }

    /// Delivers only events that pass `filter`.
    #[must_use]
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets buffering and what happens when the subscriber falls behind.
    #[must_use]
    pub fn options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }
}

/// A subscription to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeStream {
    /// Where to start.
    pub from: SubscriptionStart<Revision>,
    /// Buffering and falling behind.
    pub options: SubscriptionOptions,
}

impl SubscribeStream {
    /// From the stream's first event.
    pub fn from_start() -> Self {
        Self::starting(SubscriptionStart::Start)
    }

    /// From the first event after `revision`.
    pub fn after(revision: Revision) -> Self {
        Self::starting(SubscriptionStart::After(revision))
    }

    /// From the first event appended after the subscription started.
    pub fn from_end() -> Self {
        Self::starting(SubscriptionStart::End)
    }

    fn starting(from: SubscriptionStart<Revision>) -> Self {
        Self {
            from,
            options: SubscriptionOptions::default(),
        }
    }

    /// Sets buffering and what happens when the subscriber falls behind.
    #[must_use]
    pub fn options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    /// The next event, in log (or stream) order, exactly once.
    Event(RecordedEvent),
    /// Every event committed so far was delivered; what follows is live.
    CaughtUp,
    /// The subscriber was live and then found a full buffer or more waiting; it now catches
    /// up from storage and will say [`CaughtUp`](Self::CaughtUp) again.
    FellBehind,
}

/// A running subscription: a stream of messages that ends after an error.
///
/// Dropping it cancels it.
pub struct Subscription {
    inner: BoxStream<'static, Result<SubscriptionMessage, SubscriptionError>>,
}

impl Subscription {
    /// Wraps a backend's message stream.
    pub fn new(
        inner: impl Stream<Item = Result<SubscriptionMessage, SubscriptionError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: inner.boxed(),
        }
    }

    /// The next event, skipping [`CaughtUp`](SubscriptionMessage::CaughtUp) and
    /// [`FellBehind`](SubscriptionMessage::FellBehind); `None` when the subscription ended.
    pub async fn next_event(&mut self) -> Option<Result<RecordedEvent, SubscriptionError>> {
        loop {
            match self.inner.next().await? {
                Ok(SubscriptionMessage::Event(event)) => return Some(Ok(event)),
                Ok(_) => {}
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionMessage, SubscriptionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// How a backend tells its subscriptions that something new may have been committed.
///
/// The driver calls [`mark_seen`](Self::mark_seen) before each read and
/// [`changed`](Self::changed) when the read found nothing new, so a commit that lands
/// between the read and the wait is never missed.
pub trait CommitSignal: Send + 'static {
    /// Marks every commit signalled so far as seen.
    fn mark_seen(&mut self);

    /// Resolves once a commit was signalled after the last [`mark_seen`](Self::mark_seen),
    /// at once if one already was.
    ///
    /// # Errors
    ///
    /// Returns an error when no commit can come any more (the store stopped); the
    /// subscription then ends with it.
    fn changed(&mut self) -> BoxFuture<'_, Result<(), StorageError>>;
}

/// A source of pages for the driver: it keeps its own cursor.
trait PageSource: Send + 'static {
    /// Reads the next page of at most `limit` events; `true` when it reached the end.
    fn next_page(
        &mut self,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<RecordedEvent>, bool), SubscriptionError>>;
}

struct AllSource<S> {
    store: S,
    from: SubscriptionStart<Position>,
    cursor: Option<Position>,
    filter: EventFilter,
}

impl<S: EventStore + Clone> PageSource for AllSource<S> {
    fn next_page(
        &mut self,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<RecordedEvent>, bool), SubscriptionError>> {
        Box::pin(async move {
            let cursor = match self.cursor {
                Some(cursor) => cursor,
                None => {
                    let start = match self.from {
                        SubscriptionStart::Start => Position::START,
                        SubscriptionStart::After(position) => position.next(),
                        SubscriptionStart::End => self
                            .store
                            .head_position()
                            .await?
                            .map_or(Position::START, Position::next),
                    };
                    self.cursor = Some(start);
                    start
                }
            };
            let request = ReadAll::forwards()
                .from_position(cursor)
                .limit(limit)
                .filter(self.filter.clone());
            let page = self.store.read_all(request).await?;
            if let Some(next) = page.next {
                self.cursor = Some(next);
            } else if let Some(last) = page.events.last() {
                self.cursor = Some(last.position.next());
            }
            Ok((page.events, page.end))
        })
    }
}

struct StreamSource<S> {
    store: S,
    stream: StreamName,
    from: SubscriptionStart<Revision>,
    cursor: Option<Revision>,
}

impl<S: EventStore + Clone> PageSource for StreamSource<S> {
    fn next_page(
        &mut self,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<RecordedEvent>, bool), SubscriptionError>> {
        Box::pin(async move {
            let cursor = match self.cursor {
                Some(cursor) => cursor,
                None => {
                    let start = match self.from {
                        SubscriptionStart::Start => Revision(0),
                        SubscriptionStart::After(revision) => revision.next(),
                        SubscriptionStart::End => {
                            let info = self.store.stream_info(&self.stream).await?;
                            if info.state == crate::StreamState::Tombstoned {
                                return Err(SubscriptionError::StreamDeleted {
                                    stream: self.stream.clone(),
                                });
                            }
                            info.state.next_revision()
                        }
                    };
                    self.cursor = Some(start);
                    start
                }
            };
            let request = ReadStream::forwards().from_revision(cursor).limit(limit);
            let page = self.store.read_stream(&self.stream, request).await?;
            if let Some(last) = page.events.last() {
                self.cursor = Some(last.revision.next());
            }
            Ok((page.events, page.next.is_none()))
        })
    }
}

/// The subscription for [`EventStore::subscribe_all`], built from the store's own reads.
pub fn catch_up_all<S: EventStore + Clone>(
    store: S,
    request: SubscribeAll,
    signal: impl CommitSignal,
) -> Subscription {
    let source = AllSource {
        store,
        from: request.from,
        cursor: None,
        filter: request.filter,
    };
    drive(source, request.options, signal)
}

/// The subscription for [`EventStore::subscribe_stream`], built from the store's own reads.
pub fn catch_up_stream<S: EventStore + Clone>(
    store: S,
    stream: StreamName,
    request: SubscribeStream,
    signal: impl CommitSignal,
) -> Subscription {
    let source = StreamSource {
        store,
        stream,
        from: request.from,
        cursor: None,
    };
    drive(source, request.options, signal)
}

struct Driver<P, C> {
    source: P,
    signal: C,
    options: SubscriptionOptions,
    queue: VecDeque<Result<SubscriptionMessage, SubscriptionError>>,
    live: bool,
    finished: bool,
}

fn drive<P: PageSource, C: CommitSignal>(
    source: P,
    options: SubscriptionOptions,
    signal: C,
) -> Subscription {
    let driver = Driver {
        source,
        signal,
        options: SubscriptionOptions {
            buffer: page_limit(options.buffer),
            ..options
        },
        queue: VecDeque::new(),
        live: false,
        finished: false,
    };
    Subscription::new(futures::stream::unfold(driver, |mut driver| async move {
        let item = driver.next().await?;
        Some((item, driver))
    }))
}

impl<P: PageSource, C: CommitSignal> Driver<P, C> {
    async fn next(&mut self) -> Option<Result<SubscriptionMessage, SubscriptionError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            self.signal.mark_seen();
            let (events, end) = match self.source.next_page(self.options.buffer).await {
                Ok(page) => page,
                Err(error) => return Some(self.fail(error)),
            };
            if !end && self.live {
                self.live = false;
                match self.options.on_falling_behind {
                    OnFallingBehind::CatchUp => {
                        self.queue.push_back(Ok(SubscriptionMessage::FellBehind));
                    }
                    OnFallingBehind::End => {
                        return Some(self.fail(SubscriptionError::FellBehind {
                            buffer: self.options.buffer,
                        }));
                    }
                }
            }
            let found_any = !events.is_empty();
            self.queue.extend(
                events
                    .into_iter()
                    .map(|e| Ok(SubscriptionMessage::Event(e))),
            );
            if end {
                if !self.live {
                    self.live = true;
                    self.queue.push_back(Ok(SubscriptionMessage::CaughtUp));
                } else if !found_any && let Err(error) = self.signal.changed().await {
                    return Some(self.fail(error.into()));
                }
            }
        }
    }

    fn fail(&mut self, error: SubscriptionError) -> Result<SubscriptionMessage, SubscriptionError> {
        self.finished = true;
        self.queue.clear();
        Err(error)
    }
}
