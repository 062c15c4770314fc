//! The in-memory event store: the reference implementation of Cairn's [`EventStore`]
//! contract.
//!
//! [`MemoryStore`] keeps everything in one process's memory behind a single lock: simple
//! enough to be obviously right, so it is the yardstick the other backends are measured
//! against by `cairn-conformance`, and a fast store for tests of code built on Cairn. It is
//! not durable: everything is gone when the last handle is dropped.
//!
//! # Examples
//!
//! ```
//! use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, StreamName};
//! use cairn_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! let stream = StreamName::new("order-1").unwrap();
//! let placed = EventData::new("OrderPlaced", &br#"{"total":42}"#[..]);
//! let result = store.append(&stream, ExpectedRevision::NoStream, vec![placed]).await.unwrap();
//! assert_eq!(result.revision.0, 0);
//!
//! let page = store.read_stream(&stream, ReadStream::forwards()).await.unwrap();
//! assert_eq!(page.events[0].event_type, "OrderPlaced");
//! # }
//! ```

mod checkpoints;

pub use checkpoints::MemoryCheckpoints;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use cairn_core::subscription::{CommitSignal, catch_up_all, catch_up_stream};
use cairn_core::{
    AllPage, AppendResult, CurrentRevision, Direction, EventStore, ExpectedRevision,
    MAX_LIST_STREAMS, MAX_PAGE_BYTES, Position, ReadAll, ReadError, ReadStream, RecordedEvent,
    Revision, StorageError, StorageErrorKind, StoreLimits, StreamAppend, StreamInfo,
    StreamMetadata, StreamName, StreamPage, StreamState, SubscribeAll, SubscribeStream,
    Subscription, Timestamp, Uuid, Visibility, WriteError, page_limit, validate_appends,
};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// An event store held in memory. Cheap to clone: clones share the same store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Everything the store holds. Writers take it exclusively for the whole check-and-commit
    /// of one request, which is what makes appends atomic and revisions gapless.
    state: RwLock<State>,
    /// Bumped by writers after every change that a subscription may need to see (events,
    /// deletions); subscriptions wait on it when they have caught up.
    changes: watch::Sender<u64>,
    limits: StoreLimits,
}

#[derive(Default)]
struct State {
    /// The global log; an event's position is its index.
    log: Vec<RecordedEvent>,
    streams: BTreeMap<StreamName, StreamEntry>,
    /// Event id → index in `log`, for idempotency.
    ids: HashMap<Uuid, usize>,
}

#[derive(Default)]
struct StreamEntry {
    /// Index in the log of each revision; revision `r` is `events[r]`, hidden or not.
    events: Vec<usize>,
    lifecycle: Lifecycle,
    /// The first revision after the events of the latest soft delete.
    deleted_before: Option<Revision>,
    metadata: StreamMetadata,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    #[default]
    Live,
    SoftDeleted,
    Tombstoned,
}

impl StreamEntry {
    fn last_revision(&self) -> Option<Revision> {
        self.events.len().checked_sub(1).map(|r| Revision(r as u64))
    }

    fn state(&self) -> StreamState {
        match (self.lifecycle, self.last_revision()) {
            (Lifecycle::Tombstoned, _) => StreamState::Tombstoned,
            (_, None) => StreamState::NoStream,
            (Lifecycle::Live, Some(last_revision)) => StreamState::Active { last_revision },
            (Lifecycle::SoftDeleted, Some(last_revision)) => StreamState::Deleted { last_revision },
        }
    }

    fn visibility(&self, now: Timestamp) -> Option<Visibility> {
        if self.lifecycle == Lifecycle::Tombstoned {
            return None;
        }
        let last = self.last_revision().unwrap_or_default();
        Some(Visibility::new(
            &self.metadata,
            self.deleted_before,
            last,
            now,
        ))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self::with_limits(StoreLimits::default())
    }

    /// An empty store enforcing `limits`.
    pub fn with_limits(limits: StoreLimits) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                changes,
                limits,
            }),
        }
    }

    /// The state, for reading. A poisoned lock is recovered: writers check everything
    /// before they change anything, so a panic cannot leave a half-applied write.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn signal_change(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
    }
}

impl State {
    fn entry(&self, stream: &StreamName) -> Option<&StreamEntry> {
        self.streams.get(stream)
    }

    fn stream_state(&self, stream: &StreamName) -> StreamState {
        self.entry(stream)
            .map_or(StreamState::NoStream, StreamEntry::state)
    }

    /// Checks `expected` against the stream, refusing tombstoned streams.
    fn check_expected(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<CurrentRevision, WriteError> {
        let state = self.stream_state(stream);
        if state == StreamState::Tombstoned {
            return Err(WriteError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let actual = state.current_revision();
        if expected.is_satisfied_by(actual) {
            Ok(actual)
        } else {
            Err(WriteError::WrongExpectedRevision {
                stream: stream.clone(),
                expected,
                actual,
            })
        }
    }

    /// Decides whether `appends` is a retry of an earlier append. `Ok(Some(results))` when
    /// every event is already recorded exactly as this request would record it,
    /// `Ok(None)` when none is, an error when some are or differ.
    fn find_retry(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Option<Vec<AppendResult>>, WriteError> {
        let mut found = 0usize;
        let mut total = 0usize;
        let mut first_found = None;
        for event in appends.iter().flat_map(|a| &a.events) {
            total += 1;
            if self.ids.contains_key(&event.id) {
                found += 1;
                first_found.get_or_insert(event.id);
            }
        }
        let Some(first_found) = first_found else {
            return Ok(None);
        };
        if found < total {
            return Err(WriteError::EventIdReused { id: first_found });
        }
        let mut results = Vec::with_capacity(appends.len());
        for append in appends {
            let mut previous: Option<&RecordedEvent> = None;
            for data in &append.events {
                let recorded = self
                    .ids
                    .get(&data.id)
                    .and_then(|&index| self.log.get(index))
                    .ok_or(WriteError::EventIdReused { id: data.id })?;
                let in_place = recorded.stream == append.stream
                    && previous.is_none_or(|p| recorded.revision == p.revision.next())
                    && data.same_content_as(recorded);
                if !in_place {
                    return Err(WriteError::EventIdReused { id: data.id });
                }
                previous = Some(recorded);
            }
            if let Some(last) = previous {
                results.push(AppendResult {
                    revision: last.revision,
                    position: last.position,
                });
            }
        }
        Ok(Some(results))
    }

    fn visibility_of(&self, stream: &StreamName, now: Timestamp) -> Option<Visibility> {
        match self.entry(stream) {
            Some(entry) => entry.visibility(now),
            None => Some(Visibility::everything()),
        }
    }
}

/// Adds `event` to a page under construction; false once the page is full.
fn push_to_page(
    page: &mut Vec<RecordedEvent>,
    bytes: &mut usize,
    limit: usize,
    event: &RecordedEvent,
) -> bool {
    *bytes += event.payload.len();
    page.push(event.clone());
    page.len() < limit && *bytes < MAX_PAGE_BYTES
}

fn to_index(position: Position) -> usize {
    usize::try_from(position.0).unwrap_or(usize::MAX)
}

fn revision_index(revision: Revision) -> usize {
    usize::try_from(revision.0).unwrap_or(usize::MAX)
}

fn to_position(index: usize) -> Position {
    Position(index as u64)
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        validate_appends(&appends, self.inner.limits)?;
        let results = {
            let mut state = self.write();
            if let Some(results) = state.find_retry(&appends)? {
                return Ok(results);
            }
            for append in &appends {
                state.check_expected(&append.stream, append.expected)?;
            }
            // Every check passed: from here on nothing can fail, so the commit is atomic.
            let now = Timestamp::now();
            let mut results = Vec::with_capacity(appends.len());
            for append in appends {
                let state = &mut *state;
                let entry = state.streams.entry(append.stream.clone()).or_default();
                let mut revision = Revision(entry.events.len() as u64);
                let mut last = None;
                for data in append.events {
                    let index = state.log.len();
                    state.ids.insert(data.id, index);
                    entry.events.push(index);
                    let position = to_position(index);
                    state.log.push(RecordedEvent::from_data(
                        data,
                        append.stream.clone(),
                        revision,
                        position,
                        now,
                    ));
                    last = Some(AppendResult { revision, position });
                    revision = revision.next();
                }
                if entry.lifecycle == Lifecycle::SoftDeleted {
                    entry.lifecycle = Lifecycle::Live;
                }
                results.extend(last);
            }
            results
        };
        self.signal_change();
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        request: ReadStream,
    ) -> Result<StreamPage, ReadError> {
        let state = self.read();
        let Some(entry) = state.entry(stream) else {
            return Ok(StreamPage::default());
        };
        let Some(visibility) = entry.visibility(Timestamp::now()) else {
            return Err(ReadError::StreamDeleted {
                stream: stream.clone(),
            });
        };
        let limit = page_limit(request.limit);
        let event_at = |revision: usize| entry.events.get(revision).and_then(|&i| state.log.get(i));
        let visible = |event: &&RecordedEvent| visibility.shows(event.revision, event.recorded);
        let first = revision_index(visibility.first_visible());
        let mut events = Vec::new();
        let mut bytes = 0;
        let next = match request.direction {
            Direction::Forwards => {
                let start = request.from.map_or(0, revision_index).max(first);
                let mut revisions = (start..entry.events.len())
                    .filter_map(event_at)
                    .filter(visible);
                for event in revisions.by_ref() {
                    if !push_to_page(&mut events, &mut bytes, limit, event) {
                        break;
                    }
                }
                revisions.next().map(|e| e.revision)
            }
            Direction::Backwards => {
                let Some(last) = entry.events.len().checked_sub(1) else {
                    return Ok(StreamPage::default());
                };
                let start = request.from.map_or(last, |r| revision_index(r).min(last));
                if start < first {
                    return Ok(StreamPage::default());
                }
                let mut revisions = (first..=start).rev().filter_map(event_at).filter(visible);
                for event in revisions.by_ref() {
                    if !push_to_page(&mut events, &mut bytes, limit, event) {
                        break;
                    }
                }
                revisions.next().map(|e| e.revision)
            }
        };
        Ok(StreamPage { events, next })
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllPage, ReadError> {
        let state = self.read();
        let now = Timestamp::now();
        let limit = page_limit(request.limit);
        let mut visibilities: HashMap<StreamName, Option<Visibility>> = HashMap::new();
        let mut wanted = |event: &RecordedEvent| {
            if !request.filter.matches_event(event) {
                return false;
            }
            let visibility = *visibilities
                .entry(event.stream.clone())
                .or_insert_with(|| state.visibility_of(&event.stream, now));
            visibility.is_some_and(|v| v.shows(event.revision, event.recorded))
        };
        let mut events = Vec::new();
        let mut bytes = 0;
        let len = state.log.len();
        match request.direction {
            Direction::Forwards => {
                let mut index = to_index(request.from.unwrap_or(Position::START));
                while let Some(event) = state.log.get(index) {
                    index += 1;
                    if wanted(event) && !push_to_page(&mut events, &mut bytes, limit, event) {
                        break;
                    }
                }
                let next = index.max(to_index(request.from.unwrap_or(Position::START)));
                Ok(AllPage {
                    events,
                    next: Some(Position(next as u64)),
                    end: next >= len,
                })
            }
            Direction::Backwards => {
                let Some(last) = len.checked_sub(1) else {
                    return Ok(AllPage {
                        events,
                        next: None,
                        end: true,
                    });
                };
                let mut index = request.from.map_or(last, |p| to_index(p).min(last));
                let mut next = None;
                while let Some(event) = state.log.get(index) {
                    let before = index.checked_sub(1);
                    if wanted(event) && !push_to_page(&mut events, &mut bytes, limit, event) {
                        next = before.map(to_position);
                        break;
                    }
                    match before {
                        Some(before) => index = before,
                        None => break,
                    }
                }
                Ok(AllPage {
                    events,
                    end: next.is_none(),
                    next,
                })
            }
        }
    }

    fn subscribe_all(&self, request: SubscribeAll) -> Subscription {
        catch_up_all(
            self.clone(),
            request,
            WatchSignal(self.inner.changes.subscribe()),
        )
    }

    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription {
        catch_up_stream(
            self.clone(),
            stream,
            request,
            WatchSignal(self.inner.changes.subscribe()),
        )
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, ReadError> {
        let state = self.read();
        let (state, metadata) = state
            .entry(stream)
            .map_or((StreamState::NoStream, StreamMetadata::default()), |e| {
                (e.state(), e.metadata)
            });
        Ok(StreamInfo {
            stream: stream.clone(),
            state,
            metadata,
        })
    }

    async fn list_streams(
        &self,
        after: Option<StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReadError> {
        let state = self.read();
        let lower: Bound<&StreamName> = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        Ok(state
            .streams
            .range::<StreamName, _>((lower, Bound::Unbounded))
            .take(limit.clamp(1, MAX_LIST_STREAMS))
            .map(|(stream, entry)| StreamInfo {
                stream: stream.clone(),
                state: entry.state(),
                metadata: entry.metadata,
            })
            .collect())
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<(), WriteError> {
        {
            let mut state = self.write();
            state.check_expected(stream, ExpectedRevision::Any)?;
            state.streams.entry(stream.clone()).or_default().metadata = metadata;
        }
        self.signal_change();
        Ok(())
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        {
            let mut state = self.write();
            if let CurrentRevision::Revision(last) = state.check_expected(stream, expected)?
                && let Some(entry) = state.streams.get_mut(stream)
            {
                entry.lifecycle = Lifecycle::SoftDeleted;
                entry.deleted_before = Some(last.next());
            }
        }
        self.signal_change();
        Ok(())
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        {
            let mut state = self.write();
            state.check_expected(stream, expected)?;
            state.streams.entry(stream.clone()).or_default().lifecycle = Lifecycle::Tombstoned;
        }
        self.signal_change();
        Ok(())
    }

    async fn head_position(&self) -> Result<Option<Position>, ReadError> {
        Ok(self.read().log.len().checked_sub(1).map(to_position))
    }

    fn limits(&self) -> StoreLimits {
        self.inner.limits
    }
}

/// Wakes a subscription when the store's change generation moves.
struct WatchSignal(watch::Receiver<u64>);

impl CommitSignal for WatchSignal {
    fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    fn changed(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.0.changed().await.map_err(|_| {
                StorageError::new(StorageErrorKind::Stopped, "the memory store was dropped")
            })
        })
    }
}
