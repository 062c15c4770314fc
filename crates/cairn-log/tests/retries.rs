//! Retries sent the moment their first attempt is acknowledged, while other writers keep
//! the writer's pipeline full: each must be recognised as a retry (the first result, nothing
//! written twice), although the index may not hold the first attempt's ids yet when the
//! retry arrives.

use cairn_core::{EventData, EventStore, ExpectedRevision, ReadStream, Revision, StreamName, Uuid};
use cairn_log::{LogOptions, LogStore};

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
                    .map(|n| {
                        EventData::new("Tried", format!("{writer}/{round}/{n}").into_bytes())
                            .with_id(Uuid::now_v7())
                    })
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
