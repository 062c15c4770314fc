//! Retries sent the moment their first attempt is acknowledged, while other writers keep
//! the writer's pipeline full: each must be recognised as a retry (the first result, nothing
//! written twice), although the index may not hold the first attempt's ids yet when the
//! retry arrives.

use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, Revision, StreamName, Uuid};
use cairn_log::{LogOptions, LogStore};

mod common;

const WRITERS: usize = 8;
const ROUNDS: usize = 150;
const EVENTS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_right_after_its_acknowledgement_writes_nothing() {
    let store = LogStore::open_temporary(LogOptions::default()).expect("a log store opens");
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let stream = StreamName::new(format!("retry-{writer}")).expect("stream name");
            let mut written = Vec::new();
            for round in 0..ROUNDS {
                let events: Vec<EventData> = (0..EVENTS)
                    .map(|n| EventData::new("Tried", format!("{writer}/{round}/{n}").into_bytes()))
                    .collect();
                written.extend(events.iter().map(|e| e.id));
                let first = store
                    .append(&stream, ExpectedRevision::Any, events.clone())
                    .await
                    .expect("the first attempt is acknowledged");
                let retry = store
                    .append(&stream, ExpectedRevision::Any, events)
                    .await
                    .expect("the retry is acknowledged");
                assert_eq!(retry, first, "writer {writer}, round {round}");
            }
            (stream, written)
        });
    }
    while let Some(joined) = writers.join_next().await {
        let (stream, written) = joined.expect("a writer finished");
        let page = store
            .read_stream(&stream, ReadStream::forwards().limit(ROUNDS * EVENTS))
            .await
            .expect("the stream reads");
        let ids: Vec<Uuid> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, written, "{stream} holds each event once, in order");
        let revisions: Vec<Revision> = page.events.iter().map(|e| e.revision).collect();
        let expected: Vec<Revision> = (0..written.len() as u64).map(Revision).collect();
        assert_eq!(revisions, expected, "{stream} has gapless revisions");
    }
}

/// Enough events for the id index to merge (away from the writer) twice while appends and
/// their retries go on, and retries after a reopen, which loads the merged ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recognised_across_id_index_merges_and_a_reopen() {
    const BATCHES: usize = 70;
    const BATCH: usize = 500;
    let dir = common::temp_dir("retries");
    let store = LogStore::open(&dir, LogOptions::default()).expect("a log store opens");
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            let stream = StreamName::new(format!("bulk-{writer}")).expect("stream name");
            let mut sent = Vec::new();
            for batch in 0..BATCHES {
                let events: Vec<EventData> = (0..BATCH)
                    .map(|n| EventData::new("Bulk", format!("{writer}/{batch}/{n}").into_bytes()))
                    .collect();
                let first = store
                    .append(&stream, ExpectedRevision::Any, events.clone())
                    .await
                    .expect("appended");
                // A retry of an earlier batch too, whose ids a merge may be folding in.
                if let Some((earlier, result)) = sent.get(batch / 2).cloned() {
                    let again = store
                        .append(&stream, ExpectedRevision::Any, earlier)
                        .await
                        .expect("an earlier batch's retry is acknowledged");
                    assert_eq!(again, result, "{stream}: batch {} again", batch / 2);
                }
                sent.push((events, first));
            }
            (stream, sent)
        });
    }
    let mut sent = Vec::new();
    while let Some(joined) = writers.join_next().await {
        sent.push(joined.expect("a writer finished"));
    }
    store.close().await.expect("closes");
    drop(store);
    let store = LogStore::open(&dir, LogOptions::default()).expect("reopens");
    for (stream, batches) in &sent {
        for (events, first) in batches.iter().step_by(7) {
            let again = store
                .append(stream, ExpectedRevision::Any, events.clone())
                .await
                .expect("a retry after the reopen is acknowledged");
            assert_eq!(&again, first, "{stream} after the reopen");
        }
        let info = store
            .read_stream(stream, ReadStream::backwards().limit(1))
            .await
            .expect("reads");
        let last = info.events.first().map(|e| e.revision);
        assert_eq!(
            last,
            Some(Revision((BATCHES * BATCH) as u64 - 1)),
            "{stream} holds each event once"
        );
    }
    drop(store);
    std::fs::remove_dir_all(&dir).expect("removes its directory");
}
