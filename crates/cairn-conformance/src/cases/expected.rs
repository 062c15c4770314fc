//! Optimistic concurrency, one writer at a time: every [`ExpectedRevision`] against absent
//! and existing streams, the conflict error's contents, and that a refused append leaves
//! no trace while an accepted one lands where its [`AppendResult`] says.

use cairn_core::{
    AppendResult, CurrentRevision, EventData, EventStore, ExpectedRevision, Revision, StreamName,
    StreamState,
};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure};
use crate::settings::Settings;
use crate::support::{
    Snapshot, all_events, data_ids, events, expect_conflict, name, read_stream_fully, show_all,
};

/// Every expectation against absent and existing streams, accepted and refused.
pub(crate) async fn expectations_hold_or_conflict<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, Exact, NoStream, StreamExists};
    let store = factory.create().await;

    // Against absent streams.
    let absent = name("expect-absent")?;
    for expected in [StreamExists, Exact(0), Exact(5)] {
        refused(&store, &absent, expected, CurrentRevision::NoStream).await?;
    }
    let created = name("expect-created")?;
    accepted(&store, &created, NoStream, 2, Revision(1)).await?;
    let any = name("expect-any")?;
    accepted(&store, &any, Any, 1, Revision(0)).await?;

    // Against a stream at revision 1.
    let at = |n| CurrentRevision::Revision(Revision(n));
    for expected in [NoStream, Exact(0), Exact(2), Exact(100)] {
        refused(&store, &created, expected, at(1)).await?;
    }
    accepted(&store, &created, Exact(1), 3, Revision(4)).await?;
    accepted(&store, &created, StreamExists, 1, Revision(5)).await?;
    accepted(&store, &created, Any, 1, Revision(6)).await?;
    accepted(&store, &created, Exact(6), 1, Revision(7)).await?;
    // The same expectation again is now stale.
    refused(&store, &created, Exact(6), at(7)).await?;
    refused(&store, &created, NoStream, at(7)).await?;
    // An absent stream stays absent after all the refusals.
    let info = store
        .stream_info(&absent)
        .await
        .context("stream_info of a stream only refused appends touched")?;
    ensure!(
        info.state == StreamState::NoStream,
        "a stream that only refused appends touched reports state {:?}, expected NoStream",
        info.state
    );
    Ok(())
}

/// Appends `count` events with `expected` and checks the result and where they landed.
async fn accepted<S: EventStore>(
    store: &S,
    stream: &StreamName,
    expected: ExpectedRevision,
    count: usize,
    last_revision: Revision,
) -> Result<(), Failure> {
    let what = format!("append of {count} events to {stream} with expectation {expected}");
    let head = store.head_position().await.context("head_position()")?;
    let batch = events("Expected", count);
    let result = store
        .append(stream, expected, batch.clone())
        .await
        .context(&what)?;
    ensure!(
        result.revision == last_revision,
        "{what}: the result says revision {}, expected {last_revision}",
        result.revision
    );
    ensure!(
        head.is_none_or(|head| result.position > head),
        "{what}: the result's position {} is not after the head {head:?} before the append",
        result.position
    );
    check_landed(store, stream, &batch, result, &what).await?;
    let info = store.stream_info(stream).await.context("stream_info")?;
    ensure!(
        info.state == StreamState::Active { last_revision },
        "{what}: stream_info reports {:?}, expected Active {{ last_revision: {last_revision} }}",
        info.state
    );
    Ok(())
}

/// Checks that `batch` is the tail of `stream` ending at `result`, and in `$all` at the
/// positions the stream read reports.
pub(crate) async fn check_landed<S: EventStore>(
    store: &S,
    stream: &StreamName,
    batch: &[EventData],
    result: AppendResult,
    what: &str,
) -> Result<(), Failure> {
    let read = read_stream_fully(store, stream).await?;
    let ids = data_ids(batch);
    let Some(start) = read.len().checked_sub(batch.len()) else {
        return Err(Failure::new(format!(
            "{what}: the stream holds {} events, fewer than the batch of {}",
            read.len(),
            batch.len()
        )));
    };
    let tail = &read[start..];
    ensure!(
        tail.iter().map(|event| event.id).eq(ids.iter().copied()),
        "{what}: the stream does not end with the appended events; it reads {}",
        show_all(&read)
    );
    for (offset, (event, data)) in tail.iter().zip(batch).enumerate() {
        let revision = result.revision.0 + 1 + offset as u64 - batch.len() as u64;
        ensure!(
            event.revision == Revision(revision) && event.stream == *stream,
            "{what}: event {} reads at {}@{}, expected {stream}@{revision}",
            event.id,
            event.stream,
            event.revision
        );
        ensure!(
            data.same_content_as(event),
            "{what}: event {} reads back with different content: wrote {data:?}, read {event:?}",
            event.id
        );
    }
    let last = tail.last().map(|event| event.position);
    ensure!(
        last == Some(result.position),
        "{what}: the result says position {}, the last event reads at {last:?}",
        result.position
    );
    ensure!(
        tail.windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "{what}: the batch's positions do not increase: {}",
        show_all(tail)
    );
    let all = all_events(store).await?;
    for event in tail {
        let in_all: Vec<_> = all.iter().filter(|e| e.id == event.id).collect();
        ensure!(
            in_all.len() == 1 && in_all[0].position == event.position,
            "{what}: event {} is at position {} in its stream but $all holds {} copies at \
             {:?}",
            event.id,
            event.position,
            in_all.len(),
            in_all.iter().map(|e| e.position).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Appends with an expectation that does not hold and checks the conflict and that nothing
/// was written.
async fn refused<S: EventStore>(
    store: &S,
    stream: &StreamName,
    expected: ExpectedRevision,
    actual: CurrentRevision,
) -> Result<(), Failure> {
    let what = format!("append to {stream} (at {actual}) with expectation {expected}");
    let before = Snapshot::take(store).await?;
    let stream_before = read_stream_fully(store, stream).await?;
    let result = store.append(stream, expected, events("Refused", 2)).await;
    expect_conflict(&what, result, stream, expected, actual)?;
    before
        .unchanged(store, &format!("the refused {what}"))
        .await?;
    let stream_after = read_stream_fully(store, stream).await?;
    ensure!(
        stream_after == stream_before,
        "after the refused {what}: the stream changed from {} to {}",
        show_all(&stream_before),
        show_all(&stream_after)
    );
    Ok(())
}
