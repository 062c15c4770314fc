//! Scavenging reclaims the space of hidden events, online, without moving or losing a live
//! event, and what it leaves replays to the same store after a restart or a crash.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadError, ReadStream,
    RecordedEvent, Revision, StreamInfo, StreamMetadata, StreamName, Uuid, WriteError,
};
use cairn_log::faulty::FaultyStorage;
use cairn_log::{LogOptions, LogStore};
use rand::prelude::*;

fn name(text: &str) -> StreamName {
    StreamName::new(text).expect("valid name")
}

fn options() -> LogOptions {
    LogOptions::default()
        .segment_size(256 << 10)
        .limits(cairn_core::StoreLimits {
            max_event_size: 16 << 10,
        })
}

/// Everything a reader can see: `$all`, and every stream's info and events.
#[derive(Debug, PartialEq)]
struct Visible {
    all: Vec<RecordedEvent>,
    streams: Vec<(StreamInfo, Result<Vec<RecordedEvent>, String>)>,
}

async fn visible(store: &LogStore) -> Visible {
    let mut all = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(ReadAll::forwards().from_position(from).limit(1000))
            .await
            .expect("$all reads");
        all.extend(page.events);
        from = page.next.expect("forwards");
        if page.end {
            break;
        }
    }
    let mut streams = Vec::new();
    for info in store.list_streams(None, 1000).await.expect("lists") {
        let mut events = Vec::new();
        let mut from = Revision(0);
        let read = loop {
            match store
                .read_stream(
                    &info.stream,
                    ReadStream::forwards().from_revision(from).limit(500),
                )
                .await
            {
                Ok(page) => {
                    events.extend(page.events);
                    match page.next {
                        Some(next) => from = next,
                        None => break Ok(std::mem::take(&mut events)),
                    }
                }
                Err(ReadError::StreamDeleted { .. }) => break Err("deleted".to_owned()),
                Err(other) => panic!("stream read failed: {other}"),
            }
        };
        streams.push((info, read));
    }
    Visible { all, streams }
}

/// A history in which most bytes end up hidden: deleted, tombstoned and capped streams
/// beside kept ones, interleaved across many segments.
async fn write_history(store: &LogStore, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    store
        .set_stream_metadata(&name("capped"), StreamMetadata::default().with_max_count(5))
        .await
        .expect("metadata");
    for round in 0..1500 {
        let stream = match rng.random_range(0..20) {
            0 => name(&format!("keep-{}", round % 3)),
            1..=6 => name(&format!("gone-{}", round % 4)),
            7..=12 => name("capped"),
            13..=15 => name("tomb"),
            _ => name(&format!("aged-{}", round % 2)),
        };
        let events = (0..rng.random_range(1..5))
            .map(|_| {
                EventData::new("T", vec![b'x'; rng.random_range(100..700)])
                    .with_metadata("n", round.to_string())
            })
            .collect();
        store
            .append(&stream, ExpectedRevision::Any, events)
            .await
            .expect("appends");
    }
    for n in 0..4 {
        store
            .delete_stream(&name(&format!("gone-{n}")), ExpectedRevision::Any)
            .await
            .expect("deletes");
    }
    store
        .tombstone_stream(&name("tomb"), ExpectedRevision::Any)
        .await
        .expect("tombstones");
    for n in 0..2 {
        store
            .set_stream_metadata(
                &name(&format!("aged-{n}")),
                StreamMetadata::default().with_max_age(Duration::from_millis(1)),
            )
            .await
            .expect("metadata");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").blocks() * 512)
        .sum()
}

fn temp_dir(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "cairn-scavenge-{label}-{}",
        Uuid::now_v7().simple()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scavenging_frees_hidden_bytes_and_keeps_every_live_event_in_place() {
    let dir = temp_dir("frees");
    let store = LogStore::open(&dir, options()).expect("opens");
    write_history(&store, 1).await;
    let before = visible(&store).await;
    let used_before = allocated(&dir);

    let report = store.scavenge().await.expect("scavenges");
    assert!(report.segments_rewritten > 0, "{report:?}");
    assert!(report.events_removed > 0, "{report:?}");
    assert_eq!(
        visible(&store).await,
        before,
        "readers see exactly the same store"
    );
    let used_after = allocated(&dir);
    assert!(
        used_after * 2 < used_before,
        "hidden bytes are freed: {used_before} → {used_after} bytes allocated"
    );

    // A second scavenge merges what the first left; still the same store.
    store.scavenge().await.expect("scavenges again");
    assert_eq!(visible(&store).await, before);

    // After a restart (no snapshot: scavenging removed it) the replay agrees, and every
    // stream's revisions continue where they were.
    store.close().await.expect("closes");
    drop(store);
    std::fs::remove_file(dir.join("index/snapshot")).expect("a clean close wrote a snapshot");
    let store = LogStore::open(&dir, options()).expect("reopens");
    assert_eq!(visible(&store).await, before);
    for (info, _) in &before.streams {
        let appended = store
            .append(
                &info.stream,
                ExpectedRevision::Any,
                vec![EventData::new("After", &b"{}"[..])],
            )
            .await;
        match info.state {
            cairn_core::StreamState::Tombstoned => {
                assert!(matches!(appended, Err(WriteError::StreamDeleted { .. })));
            }
            state => assert_eq!(
                appended.expect("appends").revision,
                state.next_revision(),
                "revisions of {} continue after the scavenge",
                info.stream
            ),
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_go_on_while_a_scavenge_runs() {
    let dir = temp_dir("online");
    let store = LogStore::open(&dir, options()).expect("opens");
    write_history(&store, 2).await;
    let before = visible(&store).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..300u32 {
                let event = EventData::new("During", n.to_le_bytes().to_vec());
                written.push(event.id);
                store
                    .append(&name("during"), ExpectedRevision::Any, vec![event])
                    .await
                    .expect("appends during the scavenge");
            }
            written
        })
    };
    let report = store.scavenge().await.expect("scavenges");
    assert!(report.segments_rewritten > 0);
    let written = writer.await.expect("writer");
    let after = visible(&store).await;
    let read = store
        .read_stream(&name("during"), ReadStream::forwards().limit(1000))
        .await
        .expect("reads");
    let ids: Vec<Uuid> = read.events.iter().map(|e| e.id).collect();
    assert_eq!(ids, written, "nothing appended during the scavenge is lost");
    let unchanged: Vec<&RecordedEvent> = after
        .all
        .iter()
        .filter(|e| e.stream.as_str() != "during")
        .collect();
    let expected: Vec<&RecordedEvent> = before.all.iter().collect();
    assert_eq!(unchanged, expected);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_scavenge_loses_no_live_event() {
    for seed in 0..12u64 {
        let storage = FaultyStorage::new(seed + 100);
        let options = || options().storage(Arc::new(storage.clone()));
        let before = {
            let store = LogStore::open("/data", options()).expect("opens");
            write_history(&store, seed).await;
            let before = visible(&store).await;
            storage.crash_after(StdRng::seed_from_u64(seed).random_range(0..40));
            let _ = store.scavenge().await;
            before
        };
        if storage.power_cuts() == 0 {
            storage.power_cut();
        }
        let store = LogStore::open("/data", options()).expect("reopens after the crash");
        let after = visible(&store).await;
        // max_age keeps hiding more as time passes; compare what must not change.
        let stable = |v: &Visible| -> Vec<RecordedEvent> {
            v.all
                .iter()
                .filter(|e| !e.stream.as_str().starts_with("aged-"))
                .cloned()
                .collect()
        };
        assert_eq!(stable(&after), stable(&before), "seed {seed}");
    }
}
