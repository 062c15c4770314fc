//! The [`EventStore`] trait: the contract every backend implements and
//! `cairn-conformance` checks.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{ReadError, WriteError};
use crate::event::{EventData, MAX_EVENT_TYPE_LEN};
use crate::lifecycle::{StreamInfo, StreamMetadata};
use crate::name::StreamName;
use crate::position::{ExpectedRevision, Position, Revision};
use crate::read::{AllPage, ReadAll, ReadStream, StreamPage};
use crate::subscription::{SubscribeAll, SubscribeStream, Subscription};
use uuid::Uuid;

/// The default largest event accepted, in bytes as [`EventData::size`] counts them: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

/// The most streams one [`EventStore::list_streams`] call returns.
pub const MAX_LIST_STREAMS: usize = 4096;

/// Limits a store enforces on what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLimits {
    /// The largest event accepted, in bytes as [`EventData::size`] counts them.
    pub max_event_size: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
        }
    }
}

/// One stream's part of an append: the stream, what its revision is expected to be, and
/// the events to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream to append to.
    pub stream: StreamName,
    /// What its current revision must be.
    pub expected: ExpectedRevision,
    /// The events, in order; at least one.
    pub events: Vec<EventData>,
}

impl StreamAppend {
    /// Appends `events` to `stream` if it is at `expected`.
    pub fn new(stream: StreamName, expected: ExpectedRevision, events: Vec<EventData>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendResult {
    /// The revision of the last event written: pass it as
    /// [`ExpectedRevision::Exact`] to append after it.
    pub revision: Revision,
    /// The position of the last event written.
    pub position: Position,
}

/// An event store: streams of events, a global log over them, subscriptions, and the
/// lifecycle of streams.
///
/// Implementations are cheap handles (clone them to share) and are safe to use from many
/// tasks at once. Every implementation passes `cairn-conformance`; the rules below are
/// what that suite checks.
///
/// # Visibility
///
/// An event hidden by its stream's retention ([`StreamMetadata`]), by a soft delete or by a
/// tombstone is invisible to every read and subscription, of the stream and of `$all`, from
/// the moment the hiding change is acknowledged.
///
/// # Durability
///
/// An acknowledged write is on stable storage unless the store was configured with a
/// weaker durability mode, which its documentation names. Readers only ever see
/// acknowledged writes.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically, if its revision is `expected`.
    ///
    /// The events get consecutive revisions after the stream's last one (continuing after
    /// a soft delete) and consecutive positions in `$all`. Retrying an append whose events
    /// are all already recorded, with the same ids and content, in this stream and in this
    /// order, writes nothing and returns the first result, whatever the expectation.
    ///
    /// The default implementation calls [`append_multi`](Self::append_multi).
    ///
    /// # Errors
    ///
    /// - [`WriteError::WrongExpectedRevision`] with the actual revision when `expected`
    ///   does not hold;
    /// - [`WriteError::StreamDeleted`] when the stream is tombstoned;
    /// - [`WriteError::EventTooLarge`] when an event exceeds
    ///   [`StoreLimits::max_event_size`];
    /// - [`WriteError::EventIdReused`] when an event id is already recorded and this is not
    ///   a retry of that append;
    /// - [`WriteError::InvalidEvent`] / [`WriteError::InvalidRequest`] for malformed input
    ///   (see [`validate_appends`]);
    /// - [`WriteError::Storage`] when the storage failed; nothing of the append is visible.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, WriteError> {
        let mut results = self
            .append_multi(vec![StreamAppend::new(stream.clone(), expected, events)])
            .await?;
        results.pop().ok_or_else(|| WriteError::InvalidRequest {
            reason: "the store returned no result for the append".to_owned(),
        })
    }

    /// Appends to several streams in one atomic commit, each with its own expectation.
    /// Either every part is written or none is. Results come in the order of `appends`.
    ///
    /// A retry of an earlier multi-stream append (every event already recorded as that
    /// append recorded it) writes nothing and returns the first results.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append), for any part; also
    /// [`WriteError::InvalidRequest`] when `appends` is empty or names a stream twice.
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError>;

    /// Reads visible events of one stream from a revision, forwards or backwards.
    ///
    /// Reading a stream that does not exist, or is soft-deleted, returns an empty page.
    /// A page holds at most [`page_limit`](crate::page_limit)`(request.limit)` events and ends
    /// early once its payloads reach [`MAX_PAGE_BYTES`](crate::MAX_PAGE_BYTES).
    ///
    /// # Errors
    ///
    /// [`ReadError::StreamDeleted`] when the stream is tombstoned;
    /// [`ReadError::Storage`] when the storage failed.
    async fn read_stream(
        &self,
        stream: &StreamName,
        request: ReadStream,
    ) -> Result<StreamPage, ReadError>;

    /// Reads visible events of the global log that pass the request's filter, in position
    /// order, from a position, forwards or backwards.
    ///
    /// A forwards page ends only when it is full, when its payloads reach
    /// [`MAX_PAGE_BYTES`](crate::MAX_PAGE_BYTES), or at the end of the log (then
    /// [`AllPage::end`] is set). It never returns a position below which an event could
    /// still appear.
    ///
    /// # Errors
    ///
    /// [`ReadError::Storage`] when the storage failed.
    async fn read_all(&self, request: ReadAll) -> Result<AllPage, ReadError>;

    /// Subscribes to the global log: catch-up from the request's start, then live, with no
    /// gap and no duplicate at the hand-over, filtered, holding at most one buffer of
    /// events in memory.
    ///
    /// Errors arrive as the subscription's last item ([`SubscriptionError`](crate::SubscriptionError)).
    fn subscribe_all(&self, request: SubscribeAll) -> Subscription;

    /// Subscribes to one stream, as [`subscribe_all`](Self::subscribe_all) does to the
    /// global log. A stream that does not exist yet is waited for.
    ///
    /// The subscription ends with
    /// [`SubscriptionError::StreamDeleted`](crate::SubscriptionError::StreamDeleted) when the
    /// stream is or becomes tombstoned.
    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription;

    /// The state and metadata of one stream (a stream never written is
    /// [`StreamState::NoStream`](crate::StreamState::NoStream)).
    ///
    /// # Errors
    ///
    /// [`ReadError::Storage`] when the storage failed.
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, ReadError>;

    /// Lists known streams (written, deleted or tombstoned) in name order, starting after
    /// `after`, at most `limit` (clamped to 1..=[`MAX_LIST_STREAMS`]).
    ///
    /// # Errors
    ///
    /// [`ReadError::Storage`] when the storage failed.
    async fn list_streams(
        &self,
        after: Option<StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReadError>;

    /// Replaces the stream's retention metadata; the events it hides become invisible at
    /// once. Allowed before the stream's first event.
    ///
    /// # Errors
    ///
    /// [`WriteError::StreamDeleted`] when the stream is tombstoned;
    /// [`WriteError::Storage`] when the storage failed.
    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<(), WriteError>;

    /// Soft-deletes the stream, if its revision is `expected`: its events become invisible
    /// and it reads as absent; appending again recreates it with revisions continuing after
    /// the deleted ones. Its metadata is kept. Deleting an absent stream is a no-op when the
    /// expectation allows it.
    ///
    /// # Errors
    ///
    /// [`WriteError::WrongExpectedRevision`], [`WriteError::StreamDeleted`] (tombstoned),
    /// [`WriteError::Storage`].
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError>;

    /// Deletes the stream for good, if its revision is `expected`: its events become
    /// invisible, and every later read, subscription and write of it is refused with a
    /// stream-deleted error. Tombstoning a stream never written reserves its name.
    ///
    /// # Errors
    ///
    /// [`WriteError::WrongExpectedRevision`], [`WriteError::StreamDeleted`] (already
    /// tombstoned), [`WriteError::Storage`].
    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError>;

    /// The position of the last event committed, `None` for an empty log.
    ///
    /// # Errors
    ///
    /// [`ReadError::Storage`] when the storage failed.
    async fn head_position(&self) -> Result<Option<Position>, ReadError>;

    /// The limits this store enforces.
    fn limits(&self) -> StoreLimits;
}

/// Checks what every backend must check before writing: a non-empty request, no stream
/// twice, non-empty batches, no id twice, well-formed events within the size limit.
///
/// # Errors
///
/// [`WriteError::InvalidRequest`], [`WriteError::InvalidEvent`] or
/// [`WriteError::EventTooLarge`] for the first problem found.
pub fn validate_appends(appends: &[StreamAppend], limits: StoreLimits) -> Result<(), WriteError> {
    if appends.is_empty() {
        return Err(invalid_request("an append names no stream"));
    }
    for append in appends {
        if append.events.is_empty() {
            return Err(invalid_request(format!(
                "the append to stream {} has no events",
                append.stream
            )));
        }
        let mut previous: Option<&EventData> = None;
        for event in &append.events {
            validate_event(event, limits, previous)?;
            previous = Some(event);
        }
    }
    // Duplicates, found by sorting: most appends name one stream and a few events, and
    // this costs them nothing beyond one small allocation.
    if appends.len() > 1 {
        let mut streams: Vec<&str> = appends.iter().map(|a| a.stream.as_str()).collect();
        streams.sort_unstable();
        if let Some(twice) = streams.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid_request(format!(
                "stream {} appears twice in one append",
                twice[0]
            )));
        }
    }
    // Ids that strictly increase (those of one generator, as `new_id` makes them) are
    // distinct without a sort or an allocation.
    let mut ids = appends.iter().flat_map(|a| a.events.iter().map(|e| e.id));
    let increasing = ids.next().is_none_or(|first| {
        ids.try_fold(first, |last, id| (id > last).then_some(id))
            .is_some()
    });
    if !increasing {
        let mut ids: Vec<Uuid> = appends
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.id))
            .collect();
        ids.sort_unstable();
        if let Some(twice) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid_request(format!(
                "event id {} appears twice in one append",
                twice[0]
            )));
        }
    }
    Ok(())
}

/// Checks one event; labels equal to those of `previous` (already checked) are not
/// checked again, which spares most events of a batch the scan of their type.
fn validate_event(
    event: &EventData,
    limits: StoreLimits,
    previous: Option<&EventData>,
) -> Result<(), WriteError> {
    let invalid = |reason: String| WriteError::InvalidEvent {
        id: event.id,
        reason,
    };
    if previous.is_none_or(|p| p.event_type != event.event_type) {
        check_label("event type", &event.event_type, MAX_EVENT_TYPE_LEN).map_err(invalid)?;
    }
    if previous.is_none_or(|p| p.content_type != event.content_type) {
        check_label("content type", &event.content_type, MAX_EVENT_TYPE_LEN).map_err(invalid)?;
    }
    for (key, _) in event.metadata.iter() {
        check_label("metadata key", key, MAX_EVENT_TYPE_LEN).map_err(invalid)?;
    }
    let size = event.size();
    if size > limits.max_event_size {
        return Err(WriteError::EventTooLarge {
            id: event.id,
            size,
            limit: limits.max_event_size,
        });
    }
    Ok(())
}

fn check_label(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > max {
        return Err(format!(
            "the {what} is {} bytes; the limit is {max}",
            text.len()
        ));
    }
    let control = if text.is_ascii() {
        text.bytes().any(|b| b < 0x20 || b == 0x7F)
    } else {
        text.chars().any(char::is_control)
    };
    if control {
        return Err(format!("the {what} contains a control character"));
    }
    Ok(())
}

fn invalid_request(reason: impl Into<String>) -> WriteError {
    WriteError::InvalidRequest {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    #[test]
    fn validation_refuses_malformed_requests() {
        let limits = StoreLimits::default();
        let ok = EventData::new("T", &b"{}"[..]);
        assert!(matches!(
            validate_appends(&[], limits),
            Err(WriteError::InvalidRequest { .. })
        ));
        let empty = StreamAppend::new(stream("a"), ExpectedRevision::Any, vec![]);
        assert!(matches!(
            validate_appends(&[empty], limits),
            Err(WriteError::InvalidRequest { .. })
        ));
        let twice = vec![
            StreamAppend::new(stream("a"), ExpectedRevision::Any, vec![ok.clone()]),
            StreamAppend::new(
                stream("a"),
                ExpectedRevision::Any,
                vec![EventData::new("T", &b"{}"[..])],
            ),
        ];
        assert!(matches!(
            validate_appends(&twice, limits),
            Err(WriteError::InvalidRequest { .. })
        ));
        let same_id = StreamAppend::new(
            stream("a"),
            ExpectedRevision::Any,
            vec![ok.clone(), ok.clone()],
        );
        assert!(matches!(
            validate_appends(&[same_id], limits),
            Err(WriteError::InvalidRequest { .. })
        ));
        // Increasing up to the repeat, and across streams.
        let later = EventData::new("T", &b"{}"[..]);
        let apart = vec![
            StreamAppend::new(stream("a"), ExpectedRevision::Any, vec![ok.clone()]),
            StreamAppend::new(
                stream("b"),
                ExpectedRevision::Any,
                vec![later.clone(), ok.clone()],
            ),
        ];
        assert!(matches!(
            validate_appends(&apart, limits),
            Err(WriteError::InvalidRequest { .. })
        ));
        // Distinct ids in any order are fine.
        let third = EventData::new("T", &b"{}"[..]);
        let backwards =
            StreamAppend::new(stream("a"), ExpectedRevision::Any, vec![third, later, ok]);
        assert!(validate_appends(&[backwards], limits).is_ok());
        let no_type = StreamAppend::new(
            stream("a"),
            ExpectedRevision::Any,
            vec![EventData::new("", &b""[..])],
        );
        assert!(matches!(
            validate_appends(&[no_type], limits),
            Err(WriteError::InvalidEvent { .. })
        ));
    }

    #[test]
    fn validation_enforces_the_size_limit_exactly() {
        let limits = StoreLimits { max_event_size: 64 };
        let fits = EventData::new("T", vec![0u8; 64 - 1 - 16]);
        assert_eq!(fits.size(), 64);
        let append = |e: EventData| {
            [StreamAppend::new(
                stream("a"),
                ExpectedRevision::Any,
                vec![e],
            )]
        };
        assert!(validate_appends(&append(fits), limits).is_ok());
        let over = EventData::new("T", vec![0u8; 64 - 16]);
        assert!(matches!(
            validate_appends(&append(over), limits),
            Err(WriteError::EventTooLarge {
                size: 65,
                limit: 64,
                ..
            })
        ));
    }
}
