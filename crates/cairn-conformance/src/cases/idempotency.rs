//! Idempotent appends: a retry (same ids, same content, same stream, same order) returns
//! the first result and writes nothing, whatever its expectation; anything else that reuses
//! a recorded id is refused with `EventIdReused` and writes nothing.

use cairn_core::{Bytes, EventStore, ExpectedRevision, StreamAppend, WriteError};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{Snapshot, event, events, expect_id_reused, name};

/// Retrying an append returns the first result and writes nothing, with any expectation,
/// also after the stream has grown.
pub(crate) async fn retried_append<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, Exact, NoStream, StreamExists};
    let store = factory.create().await;
    let stream = name("idem-1")?;
    let other = name("idem-other")?;
    store
        .append(&other, NoStream, events("Other", 2))
        .await
        .context("an unrelated append")?;
    let batch = events("Idem", 3);
    let first = store
        .append(&stream, NoStream, batch.clone())
        .await
        .context("the first append of the batch")?;
    let single = vec![event("Single", 0)];
    let single_first = store
        .append(&other, Any, single.clone())
        .await
        .context("the first append of a single event")?;

    for round in ["right after the first append", "after both streams grew"] {
        let before = Snapshot::take(&store).await?;
        for expected in [NoStream, Exact(0), Exact(2), Exact(7), Any, StreamExists] {
            let what = format!("a retry ({round}) of the append with expectation {expected}");
            let retry = store.append(&stream, expected, batch.clone()).await;
            ensure!(
                matches!(retry, Ok(result) if result == first),
                "{what}: expected the first result {first:?}, got {retry:?}"
            );
            before.unchanged(&store, &what).await?;
        }
        let retry = store.append(&other, NoStream, single.clone()).await;
        ensure!(
            matches!(retry, Ok(result) if result == single_first),
            "a retry ({round}) of a single-event append: expected the first result \
             {single_first:?}, got {retry:?}"
        );
        before
            .unchanged(&store, "a retry of a single-event append")
            .await?;
        store
            .append(&stream, Any, events("Later", 2))
            .await
            .context("a later append to the retried stream")?;
        store
            .append(&other, Any, events("Later", 1))
            .await
            .context("a later append to another stream")?;
    }
    Ok(())
}

/// Retrying a multi-stream append returns the first results and writes nothing.
pub(crate) async fn retried_multi_append<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, NoStream};
    let store = factory.create().await;
    let a = name("idem-multi-a")?;
    let b = name("idem-multi-b")?;
    let parts = vec![
        StreamAppend::new(a.clone(), NoStream, events("A", 2)),
        StreamAppend::new(b.clone(), NoStream, events("B", 1)),
    ];
    let first = store
        .append_multi(parts.clone())
        .await
        .context("the first multi-stream append")?;
    for round in ["right after the first append", "after both streams grew"] {
        let before = Snapshot::take(&store).await?;
        let retry = store.append_multi(parts.clone()).await;
        ensure!(
            retry.as_ref().is_ok_and(|results| *results == first),
            "a retry ({round}) of a multi-stream append: expected the first results {first:?}, \
             got {retry:?}"
        );
        before
            .unchanged(
                &store,
                &format!("a retry ({round}) of a multi-stream append"),
            )
            .await?;
        for stream in [&a, &b] {
            store
                .append(stream, Any, events("Later", 1))
                .await
                .context("a later append")?;
        }
    }
    Ok(())
}

/// A recorded id reused with other content, in another stream, beside new events or in
/// another order is refused with `EventIdReused`, and nothing is written.
pub(crate) async fn reused_ids<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, NoStream};
    let store = factory.create().await;
    let stream = name("reuse-1")?;
    let other = name("reuse-2")?;
    let first = event("Reused", 1);
    let second = event("Reused", 2);
    store
        .append(&stream, NoStream, vec![first.clone(), second.clone()])
        .await
        .context("the first append")?;
    let before = Snapshot::take(&store).await?;

    let mut other_payload = first.clone();
    other_payload.payload = Bytes::from_static(b"{\"n\":\"different\"}");
    let other_type = {
        let mut changed = first.clone();
        changed.event_type = "Different".into();
        changed
    };
    let other_metadata = first.clone().with_correlation_id("different");
    let attempts = vec![
        (
            "the same id with another payload",
            stream.clone(),
            vec![other_payload],
        ),
        (
            "the same id with another type",
            stream.clone(),
            vec![other_type],
        ),
        (
            "the same id with other metadata",
            stream.clone(),
            vec![other_metadata],
        ),
        (
            "the same event in another stream",
            other.clone(),
            vec![first.clone()],
        ),
        (
            "a recorded event after a new one",
            stream.clone(),
            vec![event("New", 0), first.clone()],
        ),
        (
            "a recorded event before a new one",
            stream.clone(),
            vec![first.clone(), event("New", 0)],
        ),
    ];
    for (what, target, batch) in attempts {
        let what = format!("an append of {what}");
        expect_id_reused(&what, store.append(&target, Any, batch).await, first.id)?;
        before.unchanged(&store, &what).await?;
    }
    let what = "an append of the recorded events in another order";
    match store
        .append(&stream, Any, vec![second.clone(), first.clone()])
        .await
    {
        Err(WriteError::EventIdReused { id }) if id == first.id || id == second.id => {}
        other => fail!(
            "{what}: expected EventIdReused naming {} or {}, got {other:?}",
            first.id,
            second.id
        ),
    }
    before.unchanged(&store, what).await?;
    Ok(())
}
