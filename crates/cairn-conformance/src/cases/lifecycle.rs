//! Stream lifecycle: soft delete (reads as absent, recreated with continuing revisions)
//! and tombstones (every later read, write and subscription refused).

use cairn_core::{
    CurrentRevision, EventFilter, EventStore, ExpectedRevision, ReadError, ReadStream, Revision,
    StreamAppend, StreamMetadata, StreamName, StreamState, SubscribeAll, SubscribeStream,
    Subscription, SubscriptionError, SubscriptionMessage,
};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{
    Snapshot, all_events, data_ids, events, events_until_caught_up, expect_conflict,
    expect_write_deleted, name, next_message, read_stream_fully, show, show_all,
};

async fn state_of<S: EventStore>(store: &S, stream: &StreamName) -> Result<StreamState, Failure> {
    Ok(store
        .stream_info(stream)
        .await
        .context(format!("stream_info({stream})"))?
        .state)
}

async fn expect_state<S: EventStore>(
    store: &S,
    stream: &StreamName,
    expected: StreamState,
    when: &str,
) -> Result<(), Failure> {
    let state = state_of(store, stream).await?;
    ensure!(
        state == expected,
        "{when}: stream_info({stream}) reports {state:?}, expected {expected:?}"
    );
    Ok(())
}

/// Soft delete: NoStream → Active → Deleted → Active, old events hidden everywhere,
/// revisions continuing, expectations treating the deleted stream as absent.
pub(crate) async fn soft_delete<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, Exact, NoStream, StreamExists};
    let store = factory.create().await;
    let stream = name("soft-1")?;
    let other = name("soft-other")?;
    store
        .append(&other, NoStream, events("Other", 2))
        .await
        .context("appending to soft-other")?;

    // Deleting an absent stream.
    expect_state(&store, &stream, StreamState::NoStream, "before any write").await?;
    for expected in [NoStream, Any] {
        store
            .delete_stream(&stream, expected)
            .await
            .context(format!("deleting an absent stream with {expected}"))?;
    }
    expect_state(
        &store,
        &stream,
        StreamState::NoStream,
        "after deleting an absent stream",
    )
    .await?;
    for expected in [Exact(0), StreamExists] {
        let result = store.delete_stream(&stream, expected).await;
        expect_conflict(
            &format!("deleting an absent stream with {expected}"),
            result,
            &stream,
            expected,
            CurrentRevision::NoStream,
        )?;
    }

    // Write, then delete.
    let first = events("First", 3);
    store
        .append(&stream, NoStream, first.clone())
        .await
        .context("creating soft-1")?;
    let active = StreamState::Active {
        last_revision: Revision(2),
    };
    expect_state(&store, &stream, active, "after 3 events").await?;
    let metadata = StreamMetadata::default().with_max_count(100);
    store
        .set_stream_metadata(&stream, metadata)
        .await
        .context("setting metadata")?;
    let at_2 = CurrentRevision::Revision(Revision(2));
    for expected in [Exact(1), NoStream] {
        let result = store.delete_stream(&stream, expected).await;
        expect_conflict(
            &format!("deleting soft-1 (at 2) with {expected}"),
            result,
            &stream,
            expected,
            at_2,
        )?;
        expect_state(&store, &stream, active, "after a refused delete").await?;
    }
    store
        .delete_stream(&stream, Exact(2))
        .await
        .context("deleting soft-1 with Exact(2)")?;
    let deleted = StreamState::Deleted {
        last_revision: Revision(2),
    };
    expect_state(&store, &stream, deleted, "after the delete").await?;
    let info = store.stream_info(&stream).await.context("stream_info")?;
    ensure!(
        info.metadata == metadata,
        "a soft delete keeps the stream's metadata {metadata:?}; stream_info says {:?}",
        info.metadata
    );
    store
        .delete_stream(&stream, NoStream)
        .await
        .context("deleting an already deleted stream with NoStream")?;
    expect_state(&store, &stream, deleted, "after deleting it again").await?;

    // It reads as absent, everywhere.
    for request in [ReadStream::forwards(), ReadStream::backwards()] {
        let page = store
            .read_stream(&stream, request.clone())
            .await
            .context("reading a deleted stream")?;
        ensure!(
            page.events.is_empty() && page.next.is_none(),
            "a soft-deleted stream read with {request:?} should be empty with no next; got {} \
             and next {:?}",
            show_all(&page.events),
            page.next
        );
    }
    hidden_everywhere(&store, &stream, &[], "after the soft delete").await?;
    let other_events = read_stream_fully(&store, &other).await?;
    ensure!(
        other_events.len() == 2,
        "deleting soft-1 changed soft-other: {}",
        show_all(&other_events)
    );

    // Expectations see it as absent.
    let before = Snapshot::take(&store).await?;
    for expected in [StreamExists, Exact(2), Exact(0)] {
        let result = store.append(&stream, expected, events("Refused", 1)).await;
        expect_conflict(
            &format!("appending to a soft-deleted stream with {expected}"),
            result,
            &stream,
            expected,
            CurrentRevision::NoStream,
        )?;
    }
    before
        .unchanged(&store, "appends refused by a soft-deleted stream")
        .await?;

    // Recreate: revisions continue.
    let second = events("Second", 2);
    let result = store
        .append(&stream, NoStream, second.clone())
        .await
        .context("recreating soft-1 with NoStream")?;
    ensure!(
        result.revision == Revision(4),
        "recreating a stream deleted at revision 2 with 2 events should end at revision 4; \
         the result says {}",
        result.revision
    );
    expect_state(
        &store,
        &stream,
        StreamState::Active {
            last_revision: Revision(4),
        },
        "after recreating",
    )
    .await?;
    let read = read_stream_fully(&store, &stream).await?;
    ensure!(
        read.iter().map(|e| e.id).eq(data_ids(&second))
            && read.iter().map(|e| e.revision.0).eq([3, 4]),
        "the recreated stream should read as just its new events at revisions 3 and 4; it \
         reads {}",
        show_all(&read)
    );
    hidden_everywhere(&store, &stream, &read, "after recreating").await?;
    let result = store
        .append(&stream, Exact(4), events("Third", 1))
        .await
        .context("appending to the recreated stream with Exact(4)")?;
    ensure!(
        result.revision == Revision(5),
        "the next append to the recreated stream should be at revision 5, got {}",
        result.revision
    );
    Ok(())
}

/// Checks that `$all` reads and subscriptions show exactly `visible` of `stream`.
async fn hidden_everywhere<S: EventStore>(
    store: &S,
    stream: &StreamName,
    visible: &[cairn_core::RecordedEvent],
    when: &str,
) -> Result<(), Failure> {
    let ids: Vec<_> = visible.iter().map(|e| e.id).collect();
    let in_all: Vec<_> = all_events(store)
        .await?
        .into_iter()
        .filter(|e| e.stream == *stream)
        .collect();
    ensure!(
        in_all.iter().map(|e| e.id).eq(ids.iter().copied()),
        "{when}: $all should show exactly {} of {stream}; it shows {}",
        show_all(visible),
        show_all(&in_all)
    );
    let mut subscription = store.subscribe_all(
        SubscribeAll::from_start().filter(EventFilter::stream_prefix(stream.as_str())),
    );
    let delivered = events_until_caught_up(&mut subscription, when).await?;
    ensure!(
        delivered.iter().map(|e| e.id).eq(ids.iter().copied()),
        "{when}: a $all subscription should deliver exactly {} of {stream}; it delivered {}",
        show_all(visible),
        show_all(&delivered)
    );
    let mut subscription = store.subscribe_stream(stream.clone(), SubscribeStream::from_start());
    let delivered = events_until_caught_up(&mut subscription, when).await?;
    ensure!(
        delivered.iter().map(|e| e.id).eq(ids.iter().copied()),
        "{when}: a subscription to {stream} should deliver exactly {}; it delivered {}",
        show_all(visible),
        show_all(&delivered)
    );
    Ok(())
}

/// A tombstoned stream refuses every write (with any expectation), read, metadata change
/// and delete, and its events vanish from `$all`; tombstoning an unwritten name reserves it.
pub(crate) async fn tombstone<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, Exact, NoStream, StreamExists};
    let store = factory.create().await;
    let stream = name("tomb-1")?;
    let other = name("tomb-other")?;
    store
        .append(&stream, NoStream, events("Doomed", 3))
        .await
        .context("appending to tomb-1")?;
    store
        .append(&other, NoStream, events("Other", 2))
        .await
        .context("appending to tomb-other")?;

    let result = store.tombstone_stream(&stream, Exact(1)).await;
    expect_conflict(
        "tombstoning tomb-1 (at 2) with Exact(1)",
        result,
        &stream,
        Exact(1),
        CurrentRevision::Revision(Revision(2)),
    )?;
    let read = read_stream_fully(&store, &stream).await?;
    ensure!(
        read.len() == 3,
        "a refused tombstone changed the stream: {}",
        show_all(&read)
    );
    store
        .tombstone_stream(&stream, Exact(2))
        .await
        .context("tombstoning tomb-1 with Exact(2)")?;

    let unwritten = name("tomb-unwritten")?;
    store
        .tombstone_stream(&unwritten, NoStream)
        .await
        .context("tombstoning a stream never written, with NoStream")?;

    for target in [&stream, &unwritten] {
        expect_state(
            &store,
            target,
            StreamState::Tombstoned,
            "after the tombstone",
        )
        .await?;
        let before = Snapshot::take(&store).await?;
        for expected in [Any, NoStream, StreamExists, Exact(2), Exact(0)] {
            let result = store.append(target, expected, events("Refused", 1)).await;
            expect_write_deleted(
                &format!("appending to tombstoned {target} with {expected}"),
                result,
                target,
            )?;
        }
        let result = store
            .append_multi(vec![
                StreamAppend::new(other.clone(), Any, events("Refused", 1)),
                StreamAppend::new(target.clone(), Any, events("Refused", 1)),
            ])
            .await;
        expect_write_deleted(
            &format!("a multi-stream append including tombstoned {target}"),
            result,
            target,
        )?;
        before
            .unchanged(&store, "writes refused by a tombstone")
            .await?;
        for request in [ReadStream::forwards(), ReadStream::backwards()] {
            match store.read_stream(target, request.clone()).await {
                Err(ReadError::StreamDeleted { stream: s }) if s == *target => {}
                other => fail!(
                    "reading tombstoned {target} with {request:?}: expected \
                     ReadError::StreamDeleted, got {other:?}"
                ),
            }
        }
        let result = store
            .set_stream_metadata(target, StreamMetadata::default().with_max_count(1))
            .await;
        expect_write_deleted(
            &format!("setting metadata of tombstoned {target}"),
            result,
            target,
        )?;
        for expected in [Any, NoStream] {
            let result = store.delete_stream(target, expected).await;
            expect_write_deleted(
                &format!("soft-deleting tombstoned {target} with {expected}"),
                result,
                target,
            )?;
            let result = store.tombstone_stream(target, expected).await;
            expect_write_deleted(
                &format!("tombstoning tombstoned {target} again with {expected}"),
                result,
                target,
            )?;
        }
        expect_state(
            &store,
            target,
            StreamState::Tombstoned,
            "after the refusals",
        )
        .await?;
    }

    let all = all_events(&store).await?;
    ensure!(
        all.iter().all(|e| e.stream == other) && all.len() == 2,
        "$all should show only tomb-other's 2 events after tomb-1 was tombstoned; it shows {}",
        show_all(&all)
    );
    let mut subscription = store.subscribe_all(SubscribeAll::from_start());
    let delivered = events_until_caught_up(&mut subscription, "$all subscription").await?;
    ensure!(
        delivered.iter().all(|e| e.stream == other) && delivered.len() == 2,
        "a $all subscription should deliver only tomb-other's 2 events after tomb-1 was \
         tombstoned; it delivered {}",
        show_all(&delivered)
    );
    Ok(())
}

/// A stream subscription ends with `StreamDeleted` when its stream is tombstoned while it
/// is subscribed, and at once when it was tombstoned before.
pub(crate) async fn tombstone_ends_subscriptions<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("tomb-sub-1")?;
    store
        .append(&stream, ExpectedRevision::NoStream, events("Doomed", 3))
        .await
        .context("appending to tomb-sub-1")?;
    let starts = [
        ("from the start", SubscribeStream::from_start()),
        ("after revision 0", SubscribeStream::after(Revision(0))),
        ("from the end", SubscribeStream::from_end()),
    ];
    let mut live = Vec::new();
    for (label, request) in starts {
        let mut subscription = store.subscribe_stream(stream.clone(), request);
        let what = format!("a subscription to tomb-sub-1 {label}");
        events_until_caught_up(&mut subscription, &what).await?;
        live.push((what, subscription));
    }
    store
        .tombstone_stream(&stream, ExpectedRevision::Any)
        .await
        .context("tombstoning tomb-sub-1")?;
    for (what, mut subscription) in live {
        expect_ends_deleted(
            &mut subscription,
            &stream,
            &format!("{what}, live when tombstoned"),
        )
        .await?;
    }
    let unwritten = name("tomb-sub-unwritten")?;
    store
        .tombstone_stream(&unwritten, ExpectedRevision::NoStream)
        .await
        .context("tombstoning an unwritten stream")?;
    for target in [&stream, &unwritten] {
        for (label, request) in starts {
            let mut subscription = store.subscribe_stream(target.clone(), request);
            let what = format!("a subscription {label} to {target}, tombstoned before");
            expect_ends_deleted(&mut subscription, target, &what).await?;
        }
    }
    Ok(())
}

async fn expect_ends_deleted(
    subscription: &mut Subscription,
    stream: &StreamName,
    what: &str,
) -> Result<(), Failure> {
    loop {
        match next_message(subscription, what).await? {
            Some(Err(SubscriptionError::StreamDeleted { stream: s })) if s == *stream => break,
            Some(Ok(SubscriptionMessage::Event(event))) => fail!(
                "{what}: delivered {} of a tombstoned stream; expected \
                 SubscriptionError::StreamDeleted",
                show(&event)
            ),
            Some(Ok(_)) => {}
            other => fail!(
                "{what}: expected SubscriptionError::StreamDeleted {{ {stream} }}, got {other:?}"
            ),
        }
    }
    match next_message(subscription, what).await? {
        None => Ok(()),
        Some(other) => fail!("{what}: after its error the subscription must end, got {other:?}"),
    }
}
