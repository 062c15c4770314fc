//! Retention metadata: `max_count`, `max_age` and `truncate_before` hide what they name
//! from stream reads (both ways), `$all` reads and subscriptions; metadata can be set
//! before a stream exists and reads back from `stream_info`.

use std::time::{Duration, Instant};

use cairn_core::{
    EventFilter, EventStore, ExpectedRevision, ReadStream, RecordedEvent, Revision, StreamMetadata,
    StreamName, StreamState, SubscribeAll, SubscribeStream, Timestamp, Uuid,
};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{
    all_events, data_ids, events, events_until_caught_up, name, read_all_fully, show_all,
};

/// `max_count` keeps the last n events visible, also as the stream grows.
pub(crate) async fn max_count<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("count-1")?;
    let other = name("other-1")?;
    for count in [6, 4] {
        store
            .append(&stream, ExpectedRevision::Any, events("Counted", count))
            .await
            .context("appending to count-1")?;
        store
            .append(&other, ExpectedRevision::Any, events("Other", 1))
            .await
            .context("appending to other-1")?;
    }
    let metadata = StreamMetadata::default().with_max_count(3);
    set_and_check_metadata(&store, &stream, metadata).await?;
    check_visible(&store, &stream, &[7, 8, 9], "max_count 3 on 10 events").await?;
    store
        .append(&stream, ExpectedRevision::Exact(9), events("Counted", 2))
        .await
        .context("appending after max_count was set")?;
    check_visible(&store, &stream, &[9, 10, 11], "max_count 3 on 12 events").await?;
    check_visible(&store, &other, &[0, 1], "a stream without metadata").await?;
    let info = store.stream_info(&stream).await.context("stream_info")?;
    ensure!(
        info.state
            == StreamState::Active {
                last_revision: Revision(11)
            },
        "a stream whose old events are hidden by max_count is still active at its last \
         revision 11; stream_info says {:?}",
        info.state
    );
    Ok(())
}

/// `truncate_before` hides revisions below it, also when it lies past the end.
pub(crate) async fn truncate_before<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("trunc-1")?;
    store
        .append(&stream, ExpectedRevision::NoStream, events("Truncated", 10))
        .await
        .context("appending to trunc-1")?;
    let metadata = StreamMetadata::default().with_truncate_before(Revision(4));
    set_and_check_metadata(&store, &stream, metadata).await?;
    check_visible(&store, &stream, &[4, 5, 6, 7, 8, 9], "truncate_before 4").await?;
    let metadata = StreamMetadata::default().with_truncate_before(Revision(12));
    set_and_check_metadata(&store, &stream, metadata).await?;
    check_visible(&store, &stream, &[], "truncate_before 12 on 10 events").await?;
    store
        .append(&stream, ExpectedRevision::Exact(9), events("Truncated", 3))
        .await
        .context("appending with Exact(9) to a stream whose events are all truncated")?;
    check_visible(&store, &stream, &[12], "truncate_before 12 on 13 events").await?;
    Ok(())
}

/// Metadata set before the stream's first event applies once it is written.
pub(crate) async fn metadata_before_stream<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("pre-1")?;
    let metadata = StreamMetadata::default().with_max_count(2);
    store
        .set_stream_metadata(&stream, metadata)
        .await
        .context("setting metadata of a stream not yet written")?;
    let info = store.stream_info(&stream).await.context("stream_info")?;
    ensure!(
        info.state == StreamState::NoStream && info.metadata == metadata,
        "a stream with metadata but no events should report NoStream and the metadata \
         {metadata:?}; stream_info says {info:?}"
    );
    store
        .append(&stream, ExpectedRevision::NoStream, events("Early", 5))
        .await
        .context("the first append to a stream with metadata (NoStream)")?;
    check_visible(
        &store,
        &stream,
        &[3, 4],
        "max_count 2 set before the stream existed",
    )
    .await?;
    let info = store.stream_info(&stream).await.context("stream_info")?;
    ensure!(
        info.state
            == StreamState::Active {
                last_revision: Revision(4)
            }
            && info.metadata == metadata,
        "after 5 appends stream_info should report Active at 4 with {metadata:?}; it says \
         {info:?}"
    );
    Ok(())
}

/// `max_age` hides events older than it, judged with margins so that clock granularity
/// and scheduling never decide the outcome: events whose age is ambiguous during a check
/// are not asserted either way.
pub(crate) async fn max_age<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const MAX_AGE: Duration = Duration::from_secs(1);
    // Allowance for the store's clock and the moment inside a read it takes the time.
    const MARGIN: Duration = Duration::from_millis(250);
    let store = factory.create().await;
    let stream = name("age-1")?;
    let metadata = StreamMetadata::default().with_max_age(MAX_AGE);
    set_and_check_metadata(&store, &stream, metadata).await?;

    // Old events: appended, then read while still young.
    let old = events("Old", 5);
    let old_started = Timestamp::now();
    store
        .append(&stream, ExpectedRevision::NoStream, old.clone())
        .await
        .context("appending the events that will grow old")?;
    let old_acked = Timestamp::now();
    let old_acked_at = Instant::now();
    let read = crate::support::read_stream_fully(&store, &stream).await?;
    ensure!(
        read.iter().map(|e| e.id).eq(data_ids(&old)),
        "right after the append, 5 events younger than max_age should all be visible; read \
         {}",
        show_all(&read)
    );
    for event in &read {
        ensure!(
            event.recorded >= old_started.saturating_sub(MARGIN)
                && event.recorded.0 <= old_acked.0 + MARGIN.as_micros() as u64,
            "event {} is recorded at {}, outside the append call ({old_started} .. \
             {old_acked}) by more than {MARGIN:?}",
            event.id,
            event.recorded
        );
    }

    // Let them grow definitely old, then add young ones.
    let old_enough = MAX_AGE + MARGIN + Duration::from_millis(100);
    tokio::time::sleep(old_enough.saturating_sub(old_acked_at.elapsed())).await;
    let young = events("Young", 3);
    let young_started = Timestamp::now();
    store
        .append(&stream, ExpectedRevision::Any, young.clone())
        .await
        .context("appending young events")?;

    let aged = Aged {
        old: data_ids(&old),
        old_acked,
        young: data_ids(&young),
        young_started,
        max_age: MAX_AGE,
        margin: MARGIN,
    };
    let window = Timestamp::now();
    let forwards = store
        .read_stream(&stream, ReadStream::forwards())
        .await
        .context("reading age-1 forwards")?;
    aged.check("age-1 read forwards", window, &forwards.events)?;
    let window = Timestamp::now();
    let mut backwards = store
        .read_stream(&stream, ReadStream::backwards())
        .await
        .context("reading age-1 backwards")?
        .events;
    backwards.reverse();
    aged.check("age-1 read backwards", window, &backwards)?;
    let window = Timestamp::now();
    let all = read_all_fully(&store, &EventFilter::stream_prefix("age-1")).await?;
    aged.check("$all read filtered to age-1", window, &all)?;
    let window = Timestamp::now();
    let mut subscription = store.subscribe_stream(stream.clone(), SubscribeStream::from_start());
    let delivered = events_until_caught_up(&mut subscription, "subscription to age-1").await?;
    aged.check("a subscription to age-1 from the start", window, &delivered)?;
    let window = Timestamp::now();
    let mut subscription =
        store.subscribe_all(SubscribeAll::from_start().filter(EventFilter::stream_prefix("age-1")));
    let delivered =
        events_until_caught_up(&mut subscription, "$all subscription filtered to age-1").await?;
    aged.check("a $all subscription filtered to age-1", window, &delivered)?;
    Ok(())
}

/// What the max-age check knows about the events' ages, from the client's clock.
struct Aged {
    old: Vec<Uuid>,
    old_acked: Timestamp,
    young: Vec<Uuid>,
    young_started: Timestamp,
    max_age: Duration,
    margin: Duration,
}

impl Aged {
    /// Checks events read in a check that began at `began` (and ends now).
    fn check(&self, what: &str, began: Timestamp, found: &[RecordedEvent]) -> Result<(), Failure> {
        let ended = Timestamp::now();
        let micros = |d: Duration| d.as_micros() as u64;
        // Hidden for sure: recorded before the ack, which was max_age + margin before the
        // check began.
        let old_hidden = self.old_acked.0 + micros(self.max_age) + micros(self.margin) < began.0;
        // Visible for sure: recorded after the append started, and still younger than
        // max_age - margin when the check ended.
        let young_visible =
            self.young_started.0 + micros(self.max_age) > ended.0 + micros(self.margin);
        ensure!(
            old_hidden,
            "{what}: the case slept until the old events were older than max_age + margin, \
             but its clock says otherwise (acked {}, check began {began})",
            self.old_acked
        );
        let ids: Vec<Uuid> = found.iter().map(|e| e.id).collect();
        if let Some(shown) = self.old.iter().find(|id| ids.contains(id)) {
            fail!(
                "{what}: event {shown} is older than max_age {:?} (acknowledged at {}, read \
                 at {began}) but still visible: {}",
                self.max_age,
                self.old_acked,
                show_all(found)
            );
        }
        if young_visible {
            ensure!(
                ids == self.young,
                "{what}: the events appended at {} are younger than max_age {:?} at {ended} \
                 and must all be visible, in order, alone; found {}",
                self.young_started,
                self.max_age,
                show_all(found)
            );
        }
        Ok(())
    }
}

/// Sets metadata and checks that `stream_info` returns it.
async fn set_and_check_metadata<S: EventStore>(
    store: &S,
    stream: &StreamName,
    metadata: StreamMetadata,
) -> Result<(), Failure> {
    store
        .set_stream_metadata(stream, metadata)
        .await
        .context(format!("set_stream_metadata({stream}, {metadata:?})"))?;
    let info = store.stream_info(stream).await.context("stream_info")?;
    ensure!(
        info.metadata == metadata && info.stream == *stream,
        "after setting {metadata:?} on {stream}, stream_info returns {info:?}"
    );
    Ok(())
}

/// Checks that exactly the events at `revisions` of `stream` are visible to every reader:
/// stream reads both ways (whole and paged), `$all`, and subscriptions from the start.
pub(crate) async fn check_visible<S: EventStore>(
    store: &S,
    stream: &StreamName,
    revisions: &[u64],
    what: &str,
) -> Result<(), Failure> {
    let revisions_of =
        |events: &[RecordedEvent]| -> Vec<u64> { events.iter().map(|e| e.revision.0).collect() };
    let reversed: Vec<u64> = revisions.iter().rev().copied().collect();
    for (direction, wanted) in [("forwards", revisions), ("backwards", &reversed[..])] {
        let request = if direction == "forwards" {
            ReadStream::forwards()
        } else {
            ReadStream::backwards()
        };
        let page = store
            .read_stream(stream, request.clone())
            .await
            .context(format!("reading {stream} {direction}"))?;
        ensure!(
            revisions_of(&page.events) == wanted && page.next.is_none(),
            "{what}: {stream} read {direction} should show revisions {wanted:?} and no next; \
             it shows {} with next {:?}",
            show_all(&page.events),
            page.next
        );
        // Paged by two, starting from the first revision in that direction.
        let mut request = request.limit(2);
        if direction == "forwards" {
            request = request.from_revision(Revision(0));
        }
        for (index, chunk) in wanted.chunks(2).enumerate() {
            let page = store
                .read_stream(stream, request.clone())
                .await
                .context(format!("paging {stream} {direction}"))?;
            let next = wanted.get(2 * index + 2).copied().map(Revision);
            ensure!(
                revisions_of(&page.events) == chunk && page.next == next,
                "{what}: page {index} of {stream} read {direction} by two (from {:?}) should \
                 show {chunk:?} and next {next:?}; it shows {} and next {:?} (next must \
                 skip hidden events: None when no visible event lies beyond)",
                request.from,
                show_all(&page.events),
                page.next
            );
            if let Some(next) = page.next {
                request = request.from_revision(next);
            }
        }
    }
    let in_all: Vec<RecordedEvent> = all_events(store)
        .await?
        .into_iter()
        .filter(|e| e.stream == *stream)
        .collect();
    ensure!(
        revisions_of(&in_all) == revisions,
        "{what}: $all should show revisions {revisions:?} of {stream}; it shows {}",
        show_all(&in_all)
    );
    let mut subscription = store.subscribe_stream(stream.clone(), SubscribeStream::from_start());
    let delivered = events_until_caught_up(&mut subscription, what).await?;
    ensure!(
        revisions_of(&delivered) == revisions,
        "{what}: a subscription to {stream} from the start should deliver revisions \
         {revisions:?}; it delivered {}",
        show_all(&delivered)
    );
    let mut subscription = store.subscribe_all(SubscribeAll::from_start());
    let delivered: Vec<RecordedEvent> = events_until_caught_up(&mut subscription, what)
        .await?
        .into_iter()
        .filter(|e| e.stream == *stream)
        .collect();
    ensure!(
        revisions_of(&delivered) == revisions,
        "{what}: a $all subscription from the start should deliver revisions {revisions:?} \
         of {stream}; it delivered {}",
        show_all(&delivered)
    );
    Ok(())
}
