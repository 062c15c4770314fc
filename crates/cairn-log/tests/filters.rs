//! Filtered `$all` reads over a log large enough for the category and event type indexes
//! to skip most of it: exactly the matching events, in order, page by page, whether the
//! index came from the running store, a snapshot, or a replay.

use std::path::Path;

use cairn_core::{
    EventData, EventFilter, EventStore, ExpectedRevision, Position, ReadAll, RecordedEvent,
    StreamName, Uuid,
};
use cairn_log::{LogOptions, LogStore};

fn options() -> LogOptions {
    LogOptions::default().segment_size(4 << 20)
}

async fn write(store: &LogStore) -> Vec<RecordedEvent> {
    let mut written = Vec::new();
    for n in 0..3000u32 {
        let (stream, event_type) = match n {
            n if n % 997 == 0 => (format!("rare-{}", n % 2), "RareHappened"),
            n if n % 499 == 0 => (format!("common-{}", n % 5), "RareHappened"),
            n if n % 601 == 0 => (format!("rare-{}", n % 2), "CommonHappened"),
            n => (format!("common-{}", n % 5), "CommonHappened"),
        };
        let stream = StreamName::new(stream).expect("name");
        store
            .append(
                &stream,
                ExpectedRevision::Any,
                vec![EventData::new(event_type, vec![b'x'; 1000])],
            )
            .await
            .expect("appends");
    }
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(ReadAll::forwards().from_position(from).limit(1000))
            .await
            .expect("reads");
        written.extend(page.events);
        from = page.next.expect("forwards");
        if page.end {
            break;
        }
    }
    written
}

async fn filtered(store: &LogStore, filter: &EventFilter, page_size: usize) -> Vec<RecordedEvent> {
    let mut found = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(
                ReadAll::forwards()
                    .from_position(from)
                    .limit(page_size)
                    .filter(filter.clone()),
            )
            .await
            .expect("reads");
        assert!(page.events.len() <= page_size);
        found.extend(page.events);
        let next = page.next.expect("forwards");
        assert!(next >= from, "next never goes back");
        from = next;
        if page.end {
            break;
        }
    }
    found
}

async fn check(store: &LogStore, all: &[RecordedEvent]) {
    let filters = [
        EventFilter::category("rare"),
        EventFilter::event_types(["RareHappened"]),
        EventFilter::category("rare").with_event_type("RareHappened"),
        EventFilter::category("common").with_event_type("RareHappened"),
        EventFilter::event_types(["RareHappened", "Missing"]),
        EventFilter::category("nothing"),
        EventFilter {
            stream_prefix: Some("rare-1".to_owned()),
            category: Some("rare".to_owned()),
            event_types: vec!["CommonHappened".to_owned()],
        },
    ];
    for filter in &filters {
        let expected: Vec<&RecordedEvent> =
            all.iter().filter(|e| filter.matches_event(e)).collect();
        for page_size in [1, 3, 1000] {
            let found = filtered(store, filter, page_size).await;
            let found: Vec<&RecordedEvent> = found.iter().collect();
            assert_eq!(found, expected, "filter {filter:?}, pages of {page_size}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_filters_return_exactly_the_matching_events() {
    let dir = std::env::temp_dir().join(format!("cairn-filters-{}", Uuid::now_v7().simple()));
    let all = {
        let store = LogStore::open(&dir, options()).expect("opens");
        let all = write(&store).await;
        check(&store, &all).await;
        store.close().await.expect("closes");
        all
    };
    {
        let store = LogStore::open(&dir, options()).expect("opens from the snapshot");
        check(&store, &all).await;
    }
    std::fs::remove_file(dir.join("index/snapshot")).expect("a snapshot was written");
    {
        let store = LogStore::open(&dir, options()).expect("opens by replaying the log");
        check(&store, &all).await;
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
