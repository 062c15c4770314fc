//! How segment files get their blocks: a segment that was not zero-filled ahead of time (a
//! new store's first) is zero-filled by the writer a little ahead of its data, unless the
//! store keeps its segments sparse or its flushes are large; either way the log reads back
//! exactly what was written.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use cairn_core::{EventData, EventStore, ExpectedRevision, ReadAll, StreamName};
use cairn_log::{LogOptions, LogStore, Preallocation};

mod common;
use common::temp_dir;

const SEGMENT_SIZE: u64 = 1 << 20;

/// What the writer zero-fills ahead of its data at a time.
const ZERO_STEP: u64 = 256 << 10;

/// The bytes the file system allocated to the store's first segment.
fn first_segment_allocated(dir: &Path) -> u64 {
    segment_allocated(dir, 0)
}

/// The bytes the file system allocated to the segment based at `base`.
fn segment_allocated(dir: &Path, base: u64) -> u64 {
    let segment = dir.join("log").join(format!("{base:020}.seg"));
    std::fs::metadata(&segment).expect("segment").blocks() * 512
}

/// Appends `events` one per append and returns what `$all` then holds.
async fn append_and_read(dir: &Path, preallocation: Preallocation, events: usize) -> usize {
    let options = LogOptions::default()
        .segment_size(SEGMENT_SIZE)
        .limits(cairn_core::StoreLimits {
            max_event_size: 16 << 10,
        })
        .preallocation(preallocation);
    let store = LogStore::open(dir, options.clone()).expect("open");
    let stream = StreamName::new("account-1").expect("name");
    for n in 0..events {
        store
            .append(
                &stream,
                ExpectedRevision::Any,
                vec![EventData::new(
                    "Deposited",
                    format!("{{\"n\":{n}}}").into_bytes(),
                )],
            )
            .await
            .expect("append");
    }
    store.close().await.expect("close");
    drop(store);
    let store = LogStore::open(dir, options).expect("reopen");
    let read = store
        .read_all(ReadAll::forwards().limit(10_000))
        .await
        .expect("read $all");
    store.close().await.expect("close");
    for (n, event) in read.events.iter().enumerate() {
        assert_eq!(
            event.payload,
            format!("{{\"n\":{n}}}").as_bytes(),
            "event {n}"
        );
    }
    read.events.len()
}

#[tokio::test]
async fn the_writer_zero_fills_a_new_stores_first_segment_ahead_of_its_data() {
    let dir = temp_dir("zero-ahead");
    assert_eq!(append_and_read(&dir, Preallocation::Zeroed, 3).await, 3);
    let allocated = first_segment_allocated(&dir);
    assert!(
        allocated >= ZERO_STEP,
        "{allocated} bytes allocated: the zeros ahead of the data are missing"
    );
    assert!(
        allocated < SEGMENT_SIZE,
        "{allocated} bytes allocated: the whole segment was zero-filled at creation"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn zeros_ahead_move_with_the_data_and_never_cover_it() {
    let dir = temp_dir("zero-ahead-moves");
    // About 2,000 appends of some 150 bytes: past the first steps of zeros.
    assert_eq!(
        append_and_read(&dir, Preallocation::Zeroed, 2_000).await,
        2_000
    );
    assert!(first_segment_allocated(&dir) >= 2 * ZERO_STEP);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sparse_store_writes_no_zeros() {
    let dir = temp_dir("sparse");
    assert_eq!(append_and_read(&dir, Preallocation::Sparse, 3).await, 3);
    let allocated = first_segment_allocated(&dir);
    assert!(
        allocated < ZERO_STEP / 2,
        "{allocated} bytes allocated to a sparse segment holding three events"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn large_flushes_get_no_zeros_ahead() {
    let dir = temp_dir("large-flushes");
    let options =
        LogOptions::default()
            .segment_size(SEGMENT_SIZE)
            .limits(cairn_core::StoreLimits {
                max_event_size: 16 << 10,
            });
    let store = LogStore::open(&dir, options.clone()).expect("open");
    let stream = StreamName::new("account-1").expect("name");
    // Seven appends of 100 events of about 2 KB, each flushed on its own (some 200 KB a
    // flush, past `LARGE_FLUSH`): five fill the first segment, two go to the second.
    let payload = |append: usize, n: usize| {
        let mut bytes = format!("{append}-{n}-").into_bytes();
        bytes.resize(1_900, b'x');
        bytes
    };
    for append in 0..7 {
        let events = (0..100)
            .map(|n| EventData::new("Deposited", payload(append, n)))
            .collect();
        store
            .append(&stream, ExpectedRevision::Any, events)
            .await
            .expect("append");
    }
    store.close().await.expect("close");
    drop(store);
    let second = segment_allocated(&dir, SEGMENT_SIZE);
    // Two appends' data (about 400 KB) and nothing more: neither the filler nor the writer
    // zero-filled the second segment, as they would for small flushes (the whole segment, or
    // 256 KiB ahead of the data).
    assert!(
        second < SEGMENT_SIZE / 2,
        "{second} bytes allocated to a segment holding two large appends"
    );
    assert!(second >= 2 * 190_000, "{second} bytes: the data is missing");
    let store = LogStore::open(&dir, options).expect("reopen");
    let read = store
        .read_all(ReadAll::forwards().limit(10_000))
        .await
        .expect("read $all");
    store.close().await.expect("close");
    assert_eq!(read.events.len(), 700);
    for (number, event) in read.events.iter().enumerate() {
        assert_eq!(
            event.payload,
            payload(number / 100, number % 100),
            "event {number}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
