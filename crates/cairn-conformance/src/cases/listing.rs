//! Listing streams (name order, paging, every state, metadata) and the head position.

use cairn_core::{
    EventStore, ExpectedRevision, MAX_LIST_STREAMS, Position, StreamAppend, StreamInfo,
    StreamMetadata, StreamName, StreamState,
};
use tokio::task::JoinSet;

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure};
use crate::settings::Settings;
use crate::support::{all_events, events, join_all, name};

/// `list_streams` returns every written, deleted or tombstoned stream in name order with
/// its state and metadata, paging with `after` and `limit`.
pub(crate) async fn list_streams<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    use ExpectedRevision::{Any, NoStream};
    let store = factory.create().await;
    let listed = store
        .list_streams(None, 100)
        .await
        .context("list_streams on an empty store")?;
    ensure!(listed.is_empty(), "an empty store lists {listed:?}");

    let metadata = StreamMetadata::default().with_max_count(5);
    // Written in an order unlike name order.
    let plan: [(&str, usize); 6] = [
        ("e", 3),
        ("b-1", 1),
        ("a-1", 2),
        ("d-1", 1),
        ("ab", 1),
        ("c-1", 1),
    ];
    for (text, count) in plan {
        store
            .append(&name(text)?, NoStream, events("Listed", count))
            .await
            .context(format!("appending to {text}"))?;
    }
    store
        .set_stream_metadata(&name("b-1")?, metadata)
        .await
        .context("setting metadata of b-1")?;
    store
        .delete_stream(&name("c-1")?, Any)
        .await
        .context("deleting c-1")?;
    store
        .tombstone_stream(&name("d-1")?, Any)
        .await
        .context("tombstoning d-1")?;

    let active = |last: u64| StreamState::Active {
        last_revision: cairn_core::Revision(last),
    };
    let info =
        |text: &str, state: StreamState, metadata: StreamMetadata| -> Result<StreamInfo, Failure> {
            Ok(StreamInfo {
                stream: name(text)?,
                state,
                metadata,
            })
        };
    let none = StreamMetadata::default();
    let expected = vec![
        info("a-1", active(1), none)?,
        info("ab", active(0), none)?,
        info("b-1", active(0), metadata)?,
        info(
            "c-1",
            StreamState::Deleted {
                last_revision: cairn_core::Revision(0),
            },
            none,
        )?,
        info("d-1", StreamState::Tombstoned, none)?,
        info("e", active(2), none)?,
    ];
    let listed = store
        .list_streams(None, MAX_LIST_STREAMS)
        .await
        .context("list_streams")?;
    ensure!(
        listed == expected,
        "list_streams should give every stream in name order with state and metadata:\n  \
         expected {expected:?}\n  found    {listed:?}"
    );
    for entry in &expected {
        let from_info = store
            .stream_info(&entry.stream)
            .await
            .context("stream_info")?;
        if entry.state == StreamState::Tombstoned {
            ensure!(
                from_info.state == StreamState::Tombstoned,
                "stream_info({}) says {from_info:?}, list_streams says Tombstoned",
                entry.stream
            );
        } else {
            ensure!(
                from_info == *entry,
                "stream_info({}) says {from_info:?}, but list_streams says {entry:?}",
                entry.stream
            );
        }
    }

    // Paging.
    for limit in [1, 2, 4] {
        let mut after: Option<StreamName> = None;
        let mut paged = Vec::new();
        for _ in 0..=expected.len() {
            let page = store
                .list_streams(after.clone(), limit)
                .await
                .context(format!("list_streams(after {after:?}, limit {limit})"))?;
            ensure!(
                page.len() <= limit,
                "list_streams with limit {limit} returned {} streams",
                page.len()
            );
            let Some(last) = page.last() else { break };
            after = Some(last.stream.clone());
            paged.extend(page);
        }
        ensure!(
            paged == expected,
            "paging list_streams by {limit} should give the same list as one call; got \
             {paged:?}"
        );
    }
    let names = |infos: &[StreamInfo]| {
        infos
            .iter()
            .map(|i| i.stream.to_string())
            .collect::<Vec<_>>()
    };
    let page = store
        .list_streams(Some(name("b")?), 100)
        .await
        .context("list_streams after b")?;
    ensure!(
        names(&page) == ["b-1", "c-1", "d-1", "e"],
        "list_streams after \"b\" (not itself a stream) should start at b-1; got {:?}",
        names(&page)
    );
    let page = store
        .list_streams(Some(name("e")?), 100)
        .await
        .context("list_streams after e")?;
    ensure!(
        page.is_empty(),
        "list_streams after the last stream gave {:?}",
        names(&page)
    );
    let page = store
        .list_streams(None, 0)
        .await
        .context("list_streams with limit 0")?;
    ensure!(
        names(&page) == ["a-1"],
        "list_streams with limit 0 is clamped to 1 and should give just a-1; got {:?}",
        names(&page)
    );
    Ok(())
}

/// `head_position` is None for an empty log and then the position of the last commit,
/// unmoved by refused writes.
pub(crate) async fn head_position<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let head =
        |store: F::Store| async move { store.head_position().await.context("head_position()") };
    let found = head(store.clone()).await?;
    ensure!(
        found.is_none(),
        "an empty store reports head position {found:?}"
    );

    let stream = name("head-1")?;
    let result = store
        .append(&stream, ExpectedRevision::NoStream, events("Headed", 3))
        .await
        .context("appending")?;
    let found = head(store.clone()).await?;
    ensure!(
        found == Some(result.position),
        "after an append acknowledged at {}, head_position is {found:?}",
        result.position
    );
    let refused = store
        .append(&stream, ExpectedRevision::NoStream, events("Refused", 1))
        .await;
    ensure!(
        refused.is_err(),
        "an append with NoStream to an existing stream succeeded"
    );
    let after_refusal = head(store.clone()).await?;
    ensure!(
        after_refusal == found,
        "a refused append moved head_position from {found:?} to {after_refusal:?}"
    );
    let results = store
        .append_multi(vec![
            StreamAppend::new(name("head-2")?, ExpectedRevision::Any, events("Multi", 2)),
            StreamAppend::new(stream.clone(), ExpectedRevision::Any, events("Multi", 1)),
        ])
        .await
        .context("a multi-stream append")?;
    let highest = results.iter().map(|r| r.position).max();
    let found = head(store.clone()).await?;
    ensure!(
        found == highest,
        "after a multi-stream append acknowledged at {results:?}, head_position is {found:?}"
    );

    let mut tasks = JoinSet::new();
    for task in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let stream = name(&format!("head-task-{task}"))?;
            let mut last = Position::START;
            for _ in 0..20 {
                let result = store
                    .append(&stream, ExpectedRevision::Any, events("Concurrent", 1))
                    .await
                    .context("a concurrent append")?;
                let head = store.head_position().await.context("head_position()")?;
                ensure!(
                    head.is_some_and(|head| head >= result.position),
                    "right after an append acknowledged at {}, head_position is {head:?}, \
                     behind it",
                    result.position
                );
                last = result.position;
            }
            Ok(last)
        });
    }
    join_all(tasks, "the concurrent appenders").await?;
    let last = all_events(&store).await?.last().map(|e| e.position);
    let found = head(store.clone()).await?;
    ensure!(
        found == last,
        "after concurrent appends, head_position is {found:?} but the last event of $all is at \
         {last:?}"
    );
    Ok(())
}
