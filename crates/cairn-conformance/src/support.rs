//! Helpers the cases share: building events, reading whole streams and `$all` through the
//! paging API, checking typed errors, waiting on subscriptions and joining tasks, each
//! turning a surprise into a [`Failure`] that says what was expected.

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::Duration;

use cairn_core::{
    AllPage, CurrentRevision, EventData, EventFilter, EventStore, ExpectedRevision, Position,
    ReadAll, ReadStream, RecordedEvent, StreamName, Subscription, SubscriptionError,
    SubscriptionMessage, Uuid, WriteError,
};
use futures::StreamExt;
use tokio::task::JoinSet;

use crate::failure::{Context, Failure, ensure, fail, panic_text, within};

/// How long a case waits for one answer from a store or a subscription before it calls
/// the wait a hang.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// The most pages a helper reads before it decides the store's paging never ends.
const MAX_PAGES: usize = 1_000_000;

/// A stream name the case knows to be valid.
pub(crate) fn name(text: &str) -> Result<StreamName, Failure> {
    StreamName::new(text).map_err(|error| {
        Failure::new(format!(
            "the case's own stream name {text:?} is invalid: {error}"
        ))
    })
}

/// An event of `event_type` with a small JSON payload carrying `n` and a fresh id.
pub(crate) fn event(event_type: &str, n: usize) -> EventData {
    EventData::new(event_type, format!("{{\"n\":{n}}}").into_bytes())
}

/// `count` events of `event_type`, numbered from 0.
pub(crate) fn events(event_type: &str, count: usize) -> Vec<EventData> {
    (0..count).map(|n| event(event_type, n)).collect()
}

/// The ids of events written or read.
pub(crate) fn ids_of(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|event| event.id).collect()
}

/// The ids of events to write.
pub(crate) fn data_ids(events: &[EventData]) -> Vec<Uuid> {
    events.iter().map(|event| event.id).collect()
}

/// One event, briefly: `stream@revision#position type`.
pub(crate) fn show(event: &RecordedEvent) -> String {
    format!(
        "{}@{}#{} {}",
        event.stream, event.revision, event.position, event.event_type
    )
}

/// A list of events, briefly, eliding the middle of long lists.
pub(crate) fn show_all(events: &[RecordedEvent]) -> String {
    const EDGE: usize = 8;
    let len = events.len();
    let parts: Vec<String> = if len > 2 * EDGE + 1 {
        events[..EDGE]
            .iter()
            .map(show)
            .chain(std::iter::once(format!("... {} more ...", len - 2 * EDGE)))
            .chain(events[len - EDGE..].iter().map(show))
            .collect()
    } else {
        events.iter().map(show).collect()
    };
    format!("[{}] ({len} events)", parts.join(", "))
}

/// Every visible event of `stream`, read forwards page by page (checking that each page's
/// `next` advances).
pub(crate) async fn read_stream_fully<S: EventStore>(
    store: &S,
    stream: &StreamName,
) -> Result<Vec<RecordedEvent>, Failure> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut request = ReadStream::forwards().limit(500);
    for _ in 0..MAX_PAGES {
        let page = store
            .read_stream(stream, request.clone())
            .await
            .context(format!(
                "reading stream {stream} forwards from {:?}",
                request.from
            ))?;
        let last = page.events.last().map(|event| event.revision);
        events.extend(page.events);
        match page.next {
            None => return Ok(events),
            Some(next) => {
                ensure!(
                    last.is_some_and(|last| next > last),
                    "reading stream {stream} forwards from {:?}: the page ended at {last:?} \
                     but its next cursor {next} does not lie after it",
                    request.from
                );
                request = request.from_revision(next);
            }
        }
    }
    fail!("reading stream {stream} forwards: the pages never ended")
}

/// Every visible event of `$all` that passes `filter`, read forwards page by page until a
/// page says it reached the end (checking that `next` is always set and advances).
pub(crate) async fn read_all_fully<S: EventStore>(
    store: &S,
    filter: &EventFilter,
) -> Result<Vec<RecordedEvent>, Failure> {
    let mut events: Vec<RecordedEvent> = Vec::new();
    let mut request = ReadAll::forwards().limit(500).filter(filter.clone());
    for _ in 0..MAX_PAGES {
        let page = read_all_page(store, &request).await?;
        events.extend(page.events);
        if page.end {
            return Ok(events);
        }
        match page.next {
            Some(next) if request.from.is_none_or(|from| next > from) => {
                request = request.from_position(next);
            }
            next => fail!(
                "reading $all forwards with {filter:?} from {:?}: a page that is not the \
                 end returned next = {next:?}, which does not advance",
                request.from
            ),
        }
    }
    fail!("reading $all forwards with {filter:?}: the pages never reached the end")
}

/// One `$all` page, with the request in any error.
pub(crate) async fn read_all_page<S: EventStore>(
    store: &S,
    request: &ReadAll,
) -> Result<AllPage, Failure> {
    store
        .read_all(request.clone())
        .await
        .context(format!("read_all({request:?})"))
}

/// The events of `$all` (unfiltered), as [`read_all_fully`] reads them.
pub(crate) async fn all_events<S: EventStore>(store: &S) -> Result<Vec<RecordedEvent>, Failure> {
    read_all_fully(store, &EventFilter::all()).await
}

/// Checks that `result` is a conflict on `stream` reporting `expected` and `actual`.
pub(crate) fn expect_conflict<T: Debug>(
    what: &str,
    result: Result<T, WriteError>,
    stream: &StreamName,
    expected: ExpectedRevision,
    actual: CurrentRevision,
) -> Result<(), Failure> {
    match result {
        Err(WriteError::WrongExpectedRevision {
            stream: ref s,
            expected: e,
            actual: a,
        }) if s == stream && e == expected && a == actual => Ok(()),
        other => fail!(
            "{what}: expected WrongExpectedRevision {{ stream: {stream}, expected: {expected}, \
             actual: {actual} }}, got {other:?}"
        ),
    }
}

/// Checks that `result` is `StreamDeleted` for `stream`.
pub(crate) fn expect_write_deleted<T: Debug>(
    what: &str,
    result: Result<T, WriteError>,
    stream: &StreamName,
) -> Result<(), Failure> {
    match result {
        Err(WriteError::StreamDeleted { stream: ref s }) if s == stream => Ok(()),
        other => fail!("{what}: expected WriteError::StreamDeleted {{ {stream} }}, got {other:?}"),
    }
}

/// Checks that `result` is `InvalidRequest`.
pub(crate) fn expect_invalid_request<T: Debug>(
    what: &str,
    result: Result<T, WriteError>,
) -> Result<(), Failure> {
    match result {
        Err(WriteError::InvalidRequest { .. }) => Ok(()),
        other => fail!("{what}: expected WriteError::InvalidRequest, got {other:?}"),
    }
}

/// Checks that `result` is `EventIdReused` for `id`.
pub(crate) fn expect_id_reused<T: Debug>(
    what: &str,
    result: Result<T, WriteError>,
    id: Uuid,
) -> Result<(), Failure> {
    match result {
        Err(WriteError::EventIdReused { id: reused }) if reused == id => Ok(()),
        other => fail!("{what}: expected WriteError::EventIdReused {{ id: {id} }}, got {other:?}"),
    }
}

/// A snapshot of what the whole store shows, to prove a refused write changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    head: Option<Position>,
    all: Vec<Uuid>,
}

impl Snapshot {
    /// Takes the snapshot: the head position and the ids of every event in `$all`.
    pub(crate) async fn take<S: EventStore>(store: &S) -> Result<Self, Failure> {
        Ok(Self {
            head: store.head_position().await.context("head_position()")?,
            all: ids_of(&all_events(store).await?),
        })
    }

    /// Fails unless the store still shows exactly this snapshot.
    pub(crate) async fn unchanged<S: EventStore>(
        &self,
        store: &S,
        after: &str,
    ) -> Result<(), Failure> {
        let now = Self::take(store).await?;
        ensure!(
            now.head == self.head,
            "after {after}: head_position moved from {:?} to {:?}, but nothing should have \
             been written",
            self.head,
            now.head
        );
        let before: HashSet<_> = self.all.iter().collect();
        let new: Vec<_> = now.all.iter().filter(|id| !before.contains(id)).collect();
        ensure!(
            now.all == self.all,
            "after {after}: $all changed ({} events before, {} now; new ids {new:?}), but \
             nothing should have been written",
            self.all.len(),
            now.all.len()
        );
        Ok(())
    }
}

/// The next message of a subscription, failing if none comes within [`PATIENCE`].
pub(crate) async fn next_message(
    subscription: &mut Subscription,
    what: &str,
) -> Result<Option<Result<SubscriptionMessage, SubscriptionError>>, Failure> {
    within(PATIENCE, what, subscription.next()).await
}

/// Collects events until the subscription says it caught up. A `FellBehind` on the way is
/// accepted (the caller may have let it fall behind); an error or the end is a failure.
pub(crate) async fn events_until_caught_up(
    subscription: &mut Subscription,
    what: &str,
) -> Result<Vec<RecordedEvent>, Failure> {
    let mut events = Vec::new();
    loop {
        match next_message(subscription, what).await? {
            Some(Ok(SubscriptionMessage::Event(event))) => events.push(event),
            Some(Ok(SubscriptionMessage::CaughtUp)) => return Ok(events),
            Some(Ok(SubscriptionMessage::FellBehind)) => {}
            Some(Err(error)) => fail!(
                "{what}: the subscription ended with {error:?} after delivering {}",
                show_all(&events)
            ),
            None => fail!(
                "{what}: the subscription ended without an error before saying CaughtUp, \
                 after delivering {}",
                show_all(&events)
            ),
        }
    }
}

/// Checks that the subscription has nothing more to say for a moment (no event arrives
/// within `quiet`).
pub(crate) async fn expect_no_event(
    subscription: &mut Subscription,
    quiet: Duration,
    what: &str,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, subscription.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(SubscriptionMessage::Event(event)))) => {
                fail!("{what}: expected no further event, got {}", show(&event))
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => fail!("{what}: expected the subscription to keep waiting, got {other:?}"),
        }
    }
}

/// Checks that two event lists hold the same events (by id, stream, revision and
/// position), in the same order.
pub(crate) fn same_events(
    what: &str,
    found: &[RecordedEvent],
    expected: &[RecordedEvent],
) -> Result<(), Failure> {
    let key = |event: &RecordedEvent| {
        (
            event.id,
            event.stream.clone(),
            event.revision,
            event.position,
        )
    };
    let first_difference = found
        .iter()
        .zip(expected)
        .position(|(a, b)| key(a) != key(b));
    ensure!(
        found.len() == expected.len() && first_difference.is_none(),
        "{what}: expected {}, found {}{}",
        show_all(expected),
        show_all(found),
        match first_difference {
            Some(index) => format!(
                "; first difference at index {index}: expected {}, found {}",
                show(&expected[index]),
                show(&found[index])
            ),
            None => String::new(),
        }
    );
    Ok(())
}

/// Awaits every task of `tasks`, failing with the first failure or panic.
pub(crate) async fn join_all<T: 'static>(
    mut tasks: JoinSet<Result<T, Failure>>,
    what: &str,
) -> Result<Vec<T>, Failure> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = within(crate::CASE_TIMEOUT, what, tasks.join_next()).await? {
        match joined {
            Ok(Ok(value)) => results.push(value),
            Ok(Err(failure)) => return Err(failure),
            Err(error) if error.is_panic() => {
                fail!(
                    "{what}: a task panicked: {}",
                    panic_text(&*error.into_panic())
                )
            }
            Err(error) => fail!("{what}: a task did not finish: {error}"),
        }
    }
    Ok(results)
}
