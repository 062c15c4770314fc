//! Durability and recovery of the embedded engine under injected faults: power cuts at
//! random points of random concurrent histories, failed flushes, torn tails, damage at rest,
//! a second opener, and a child process killed with SIGKILL while it appends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{
    EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadError, ReadStream,
    RecordedEvent, Revision, StorageErrorKind, StreamAppend, StreamName, Uuid, WriteError,
};
use cairn_log::faulty::FaultyStorage;
use cairn_log::{Durability, LogOptions, LogStore, OpenError, Storage};
use rand::prelude::*;

mod common;
use common::temp_dir;

fn name(text: &str) -> StreamName {
    StreamName::new(text).expect("valid stream name")
}

fn event(rng: &mut StdRng) -> EventData {
    let len = rng.random_range(0..300);
    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    EventData::new(format!("T{}", rng.random_range(0..4)), payload)
        .with_metadata("k", format!("{}", rng.random::<u32>()))
}

/// Every event of the store: `$all` in order, checked against each stream's reads.
async fn everything(store: &LogStore) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(ReadAll::forwards().from_position(from).limit(1000))
            .await
            .expect("$all reads");
        events.extend(page.events);
        from = page.next.expect("forwards pages have a next position");
        if page.end {
            break;
        }
    }
    let positions: Vec<u64> = events.iter().map(|e| e.position.0).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "$all positions strictly increase"
    );
    let mut by_stream: BTreeMap<StreamName, Vec<&RecordedEvent>> = BTreeMap::new();
    for event in &events {
        by_stream
            .entry(event.stream.clone())
            .or_default()
            .push(event);
    }
    for (stream, in_all) in by_stream {
        let mut read = Vec::new();
        let mut from = Revision(0);
        loop {
            let page = store
                .read_stream(
                    &stream,
                    ReadStream::forwards().from_revision(from).limit(1000),
                )
                .await
                .expect("stream reads");
            read.extend(page.events);
            match page.next {
                Some(next) => from = next,
                None => break,
            }
        }
        let revisions: Vec<u64> = read.iter().map(|e| e.revision.0).collect();
        let first = revisions.first().copied().unwrap_or(0);
        let expected: Vec<u64> = (first..first + revisions.len() as u64).collect();
        assert_eq!(revisions, expected, "stream {stream} is gapless");
        let ids: Vec<Uuid> = read.iter().map(|e| e.id).collect();
        let all_ids: Vec<Uuid> = in_all.iter().map(|e| e.id).collect();
        assert_eq!(ids, all_ids, "stream {stream} and $all agree");
    }
    events
}

/// What a writer was told about one attempted append.
#[derive(Debug, Clone)]
struct Attempt {
    /// Per stream: the ids appended, in order.
    parts: Vec<(StreamName, Vec<Uuid>)>,
    /// Per stream: the revision and position of the last event, if acknowledged.
    acknowledged: Option<Vec<(Revision, Position)>>,
}

/// Checks the recovered store against every attempt: each acknowledged append is present
/// exactly as acknowledged; each other append is entirely present or entirely absent.
async fn check_against(store: &LogStore, attempts: &[Attempt]) -> usize {
    let events = everything(store).await;
    let mut seen: HashMap<Uuid, &RecordedEvent> = HashMap::new();
    for event in &events {
        assert!(
            seen.insert(event.id, event).is_none(),
            "event {} is present twice",
            event.id
        );
    }
    let mut acknowledged = 0;
    for attempt in attempts {
        let present = attempt
            .parts
            .iter()
            .flat_map(|(_, ids)| ids)
            .filter(|id| seen.contains_key(id))
            .count();
        let total: usize = attempt.parts.iter().map(|(_, ids)| ids.len()).sum();
        match &attempt.acknowledged {
            Some(results) => {
                acknowledged += 1;
                assert_eq!(
                    present, total,
                    "an acknowledged append lost events: {attempt:?}"
                );
                for ((stream, ids), (revision, position)) in attempt.parts.iter().zip(results) {
                    let last = seen[ids.last().expect("non-empty part")];
                    assert_eq!(&last.stream, stream);
                    assert_eq!(last.revision, *revision, "acknowledged revision moved");
                    assert_eq!(last.position, *position, "acknowledged position moved");
                    for (offset, id) in ids.iter().rev().enumerate() {
                        assert_eq!(seen[id].revision.0, revision.0 - offset as u64);
                    }
                }
            }
            None => assert!(
                present == 0 || present == total,
                "an unacknowledged append is half visible ({present} of {total}): {attempt:?}"
            ),
        }
    }
    acknowledged
}

/// Appends random batches from several tasks until the store fails; returns every attempt.
async fn random_history(
    store: &LogStore,
    seed: u64,
    writers: usize,
    max_appends: usize,
) -> Vec<Attempt> {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ ((writer as u64 + 1) * 0x9E37));
            for _ in 0..max_appends {
                let streams = if rng.random_bool(0.2) { 2 } else { 1 };
                let mut names: Vec<StreamName> = Vec::new();
                while names.len() < streams {
                    let candidate = name(&format!("s-{}", rng.random_range(0..6)));
                    if !names.contains(&candidate) {
                        names.push(candidate);
                    }
                }
                let appends: Vec<StreamAppend> = names
                    .iter()
                    .map(|stream| {
                        let count = rng.random_range(1..5);
                        let events = (0..count).map(|_| event(&mut rng)).collect();
                        StreamAppend::new(stream.clone(), ExpectedRevision::Any, events)
                    })
                    .collect();
                let parts = appends
                    .iter()
                    .map(|a| (a.stream.clone(), a.events.iter().map(|e| e.id).collect()))
                    .collect();
                let outcome = store.append_multi(appends).await;
                let failed = outcome.is_err();
                attempts.lock().expect("not poisoned").push(Attempt {
                    parts,
                    acknowledged: outcome
                        .ok()
                        .map(|r| r.into_iter().map(|r| (r.revision, r.position)).collect()),
                });
                if failed {
                    break;
                }
                if rng.random_bool(0.3) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    attempts.lock().expect("not poisoned").clone()
}

fn faulty_options(storage: &FaultyStorage) -> LogOptions {
    LogOptions::default()
        .segment_size(64 << 10)
        .limits(cairn_core::StoreLimits {
            max_event_size: 8 << 10,
        })
        .storage(Arc::new(storage.clone()))
}

fn cases() -> u64 {
    std::env::var("CAIRN_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_points_never_lose_or_half_apply_appends() {
    let dir = Path::new("/data");
    let base_seed: u64 = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xC0FFEE);
    for case in 0..cases() {
        let seed = base_seed.wrapping_add(case);
        let storage = FaultyStorage::new(seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut attempts = Vec::new();
        // Several crash cycles on the same disk: each history continues the last one.
        for cycle in 0..3 {
            let store = LogStore::open(dir, faulty_options(&storage))
                .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: reopen failed: {e}"));
            let recovered = check_against(&store, &attempts).await;
            let _ = recovered;
            storage.crash_after(rng.random_range(0..120));
            let history =
                random_history(&store, seed.wrapping_mul(31).wrapping_add(cycle), 4, 60).await;
            attempts.extend(history);
            if storage.power_cuts() <= cycle {
                storage.power_cut();
            }
            drop(store);
        }
        let store = LogStore::open(dir, faulty_options(&storage))
            .unwrap_or_else(|e| panic!("seed {seed}: final reopen failed: {e}"));
        let acknowledged = check_against(&store, &attempts).await;
        assert!(attempts.len() >= acknowledged);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_fails_the_batch_and_stops_the_writer_until_reopened() {
    let storage = FaultyStorage::new(11);
    let dir = Path::new("/data");
    let store = LogStore::open(dir, faulty_options(&storage)).expect("opens");
    let stream = name("a");
    let kept = EventData::new("T", &b"1"[..]);
    store
        .append(&stream, ExpectedRevision::NoStream, vec![kept.clone()])
        .await
        .expect("first append");
    storage.fail_flushes(true);
    let failed = store
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![EventData::new("T", &b"2"[..])],
        )
        .await;
    assert!(
        matches!(&failed, Err(WriteError::Storage(e)) if e.kind() == StorageErrorKind::Io),
        "the append whose flush failed is not acknowledged: {failed:?}"
    );
    // Even once the disk recovers, the writer stays stopped: the store must be reopened.
    storage.fail_flushes(false);
    let after = store
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![EventData::new("T", &b"3"[..])],
        )
        .await;
    assert!(
        matches!(&after, Err(WriteError::Storage(e)) if e.kind() == StorageErrorKind::Stopped),
        "{after:?}"
    );
    // Readers never saw the unflushed append.
    let page = store
        .read_stream(&stream, ReadStream::forwards())
        .await
        .expect("reads still work");
    assert_eq!(page.events.len(), 1);
    storage.power_cut();
    drop(store);
    let store = LogStore::open(dir, faulty_options(&storage)).expect("reopens");
    let page = store
        .read_stream(&stream, ReadStream::forwards())
        .await
        .expect("reads");
    assert_eq!(page.events.first().map(|e| e.id), Some(kept.id));
    store
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![EventData::new("T", &b"4"[..])],
        )
        .await
        .expect("the reopened store writes again");
}

#[tokio::test]
async fn a_second_opener_is_refused() {
    let store =
        LogStore::open_temporary(LogOptions::default().segment_size(4 << 20)).expect("opens");
    let second = LogStore::open(store.dir(), LogOptions::default().segment_size(4 << 20));
    assert!(
        matches!(second, Err(OpenError::Locked { .. })),
        "{second:?}"
    );
}

/// Writes three batches and returns the store's disk, closed.
async fn three_batches(storage: &FaultyStorage) -> Vec<EventData> {
    let store = LogStore::open("/data", faulty_options(storage)).expect("opens");
    let mut written = Vec::new();
    for n in 0..3u8 {
        let data = EventData::new("T", vec![n; 100]);
        written.push(data.clone());
        store
            .append(&name("s"), ExpectedRevision::Any, vec![data])
            .await
            .expect("appends");
    }
    store.close().await.expect("closes");
    written
}

/// Deletes the index snapshot a clean close wrote, as if the store had crashed instead: the
/// next open then replays (and checks) the whole log.
fn forget_snapshot(storage: &FaultyStorage) {
    storage
        .remove_file(Path::new("/data/index/snapshot"))
        .expect("a clean close wrote a snapshot");
}

fn first_segment(storage: &FaultyStorage) -> PathBuf {
    storage
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment exists")
}

/// The global offsets of the three one-event batches written by [`three_batches`].
fn batch_offsets(store_events: &[RecordedEvent]) -> Vec<u64> {
    store_events.iter().map(|e| e.position.0 - 32).collect()
}

#[tokio::test]
async fn damage_in_the_middle_stops_open_naming_file_and_offset() {
    let storage = FaultyStorage::new(5);
    three_batches(&storage).await;
    let events = {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        everything(&store).await
    };
    let segment = first_segment(&storage);
    let mut bytes = storage.contents(&segment).expect("segment bytes");
    // Flip a payload byte of the second event.
    let damaged_at = events[1].position.0 as usize + 80;
    bytes[damaged_at] ^= 0x40;
    storage.overwrite(&segment, bytes).expect("overwrites");

    // After a clean close the snapshot spares the replay: the damage shows when read.
    {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        let read = store.read_stream(&name("s"), ReadStream::forwards()).await;
        match read {
            Err(ReadError::Storage(error)) => {
                assert_eq!(error.kind(), StorageErrorKind::Corruption);
                let offset = events[1].position.0.to_string();
                assert!(
                    error.message().contains("00000000000000000000.seg")
                        && error.message().contains(&offset),
                    "names the file and offset: {error}"
                );
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
    // After a crash the replay finds it and refuses to open.
    forget_snapshot(&storage);
    match LogStore::open("/data", faulty_options(&storage)) {
        Err(OpenError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, segment);
            assert_eq!(offset, events[1].position.0, "names the damaged record");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_log_continues() {
    let storage = FaultyStorage::new(9);
    let written = three_batches(&storage).await;
    let events = {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        everything(&store).await
    };
    let offsets = batch_offsets(&events);
    let segment = first_segment(&storage);
    let mut bytes = storage.contents(&segment).expect("segment bytes");
    // Tear the last batch: keep its first 50 bytes, zero the rest, and leave garbage
    // further on where a partly persisted write would.
    let tail = offsets[2] as usize;
    let end = events[2].position.0 as usize + 200;
    for byte in &mut bytes[tail + 50..end] {
        *byte = 0;
    }
    bytes[end - 20] = 0xAB;
    storage.overwrite(&segment, bytes).expect("overwrites");
    forget_snapshot(&storage);
    let store = LogStore::open("/data", faulty_options(&storage)).expect("a torn tail opens");
    let recovered = everything(&store).await;
    let ids: Vec<Uuid> = recovered.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![written[0].id, written[1].id]);
    let next = store
        .append(
            &name("s"),
            ExpectedRevision::Exact(1),
            vec![EventData::new("T", &b"x"[..])],
        )
        .await
        .expect("appends after the cut");
    assert_eq!(next.revision, Revision(2));
    assert_eq!(
        next.position.0,
        offsets[2] + 32,
        "the log continues where it was cut"
    );
    drop(store);
    let store = LogStore::open("/data", faulty_options(&storage)).expect("reopens");
    assert_eq!(everything(&store).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flips_and_truncations_never_panic_or_serve_a_wrong_event() {
    let storage = FaultyStorage::new(21);
    let original: HashMap<Uuid, RecordedEvent> = {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        let mut rng = StdRng::seed_from_u64(77);
        for n in 0..150 {
            let stream = name(&format!("s-{}", n % 7));
            let events = (0..rng.random_range(1..4))
                .map(|_| event(&mut rng))
                .collect();
            store
                .append(&stream, ExpectedRevision::Any, events)
                .await
                .expect("appends");
        }
        let events = everything(&store).await;
        store.close().await.expect("closes");
        events.into_iter().map(|e| (e.id, e)).collect()
    };
    let segments: Vec<PathBuf> = storage
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(segments.len() >= 2, "the history spans several segments");
    let mut rng = StdRng::seed_from_u64(1234);
    let mut refused = 0;
    for trial in 0..cases() * 5 {
        let damaged = storage.duplicate(trial);
        let segment = &segments[rng.random_range(0..segments.len())];
        let mut bytes = damaged.contents(segment).expect("bytes");
        if rng.random_bool(0.2) {
            let keep = rng.random_range(0..bytes.len());
            bytes.truncate(keep);
        } else {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
        }
        damaged.overwrite(segment, bytes).expect("overwrites");
        if trial % 2 == 0 {
            // Half the trials as after a crash: the whole log is replayed and checked.
            let _ = damaged.remove_file(Path::new("/data/index/snapshot"));
        }
        let store = match LogStore::open("/data", faulty_options(&damaged)) {
            Ok(store) => store,
            Err(OpenError::Corrupt { .. }) => {
                refused += 1;
                continue;
            }
            Err(other) => panic!("trial {trial}: unexpected error {other}"),
        };
        // Whatever is served must be exactly what was written.
        let mut from = Position::START;
        loop {
            let page = match store
                .read_all(ReadAll::forwards().from_position(from).limit(100))
                .await
            {
                Ok(page) => page,
                Err(_) => break,
            };
            for event in &page.events {
                let written = original
                    .get(&event.id)
                    .unwrap_or_else(|| panic!("trial {trial}: served an event never written"));
                assert_eq!(event, written, "trial {trial}: served a changed event");
            }
            from = page.next.expect("forwards");
            if page.end {
                break;
            }
        }
        for n in 0..7 {
            if let Ok(page) = store
                .read_stream(&name(&format!("s-{n}")), ReadStream::forwards().limit(1000))
                .await
            {
                for event in page.events {
                    assert_eq!(Some(&event), original.get(&event.id), "trial {trial}");
                }
            }
        }
    }
    assert!(refused > 0, "some damage was reported rather than repaired");
}

/// The environment variable that turns this test binary into the appending child of
/// [`a_process_killed_with_sigkill_loses_no_acknowledged_append`].
const CHILD_DIR: &str = "CAIRN_KILL9_CHILD_DIR";
const CHILD_ACKS: &str = "CAIRN_KILL9_CHILD_ACKS";

/// The child: appends from 8 tasks forever, logging every acknowledgement, until killed.
async fn kill9_child(dir: &Path, acks: &Path) {
    let store = LogStore::open(dir, LogOptions::default().segment_size(4 << 20))
        .expect("child opens the store");
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(acks)
            .expect("acks file"),
    ));
    for writer in 0..8u64 {
        let store = store.clone();
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(writer ^ u64::from(std::process::id()));
            loop {
                let stream = name(&format!("k-{}", rng.random_range(0..16)));
                let events: Vec<EventData> = (0..rng.random_range(1..6))
                    .map(|_| event(&mut rng))
                    .collect();
                let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                let result = store
                    .append(&stream, ExpectedRevision::Any, events)
                    .await
                    .expect("child append");
                let line = format!(
                    "{} {} {} {}\n",
                    stream,
                    result.revision,
                    result.position,
                    ids.join(",")
                );
                log.lock()
                    .expect("not poisoned")
                    .write_all(line.as_bytes())
                    .expect("ack logged");
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_with_sigkill_loses_no_acknowledged_append() {
    if let (Ok(dir), Ok(acks)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_ACKS)) {
        kill9_child(Path::new(&dir), Path::new(&acks)).await;
        return;
    }
    let cycles: u64 = std::env::var("CAIRN_KILL9_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let root = temp_dir("kill9");
    let dir = root.join("data");
    let acks = root.join("acks");
    let mut rng = StdRng::seed_from_u64(0x9);
    let exe = std::env::current_exe().expect("test binary");
    let mut total_acks = 0;
    for cycle in 0..cycles {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "a_process_killed_with_sigkill_loses_no_acknowledged_append",
                "--nocapture",
            ])
            .env(CHILD_DIR, &dir)
            .env(CHILD_ACKS, &acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child starts");
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..400))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("child reaped");

        let store = LogStore::open(&dir, LogOptions::default().segment_size(4 << 20))
            .unwrap_or_else(|e| panic!("cycle {cycle}: reopen after SIGKILL failed: {e}"));
        let events = everything(&store).await;
        let by_id: HashMap<Uuid, &RecordedEvent> = events.iter().map(|e| (e.id, e)).collect();
        assert_eq!(by_id.len(), events.len(), "no event twice");
        let text = std::fs::read_to_string(&acks).unwrap_or_default();
        let mut acknowledged = HashSet::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [stream, revision, position, ids] = fields[..] else {
                continue; // a line cut by the kill was never a complete acknowledgement
            };
            let ids: Vec<Uuid> = ids.split(',').filter_map(|i| i.parse().ok()).collect();
            let revision: u64 = revision.parse().expect("revision");
            let position: u64 = position.parse().expect("position");
            let last = ids.last().expect("ids");
            let recorded = by_id
                .get(last)
                .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged event {last} lost"));
            assert_eq!(recorded.stream.as_str(), stream);
            assert_eq!(recorded.revision.0, revision);
            assert_eq!(recorded.position.0, position);
            for (back, id) in ids.iter().rev().enumerate() {
                let event = by_id
                    .get(id)
                    .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged event {id} lost"));
                assert_eq!(event.revision.0, revision - back as u64);
                acknowledged.insert(*id);
            }
        }
        total_acks = acknowledged.len();
        drop(store);
    }
    assert!(total_acks > 0, "the children acknowledged appends");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn weaker_durability_modes_acknowledge_and_flush_on_close() {
    for durability in [
        Durability::None,
        Durability::Interval(Duration::from_millis(5)),
    ] {
        let root = temp_dir("durability");
        let options = || {
            LogOptions::default()
                .segment_size(4 << 20)
                .durability(durability)
        };
        let store = LogStore::open(&root, options()).expect("opens");
        for n in 0..50u8 {
            store
                .append(
                    &name("d"),
                    ExpectedRevision::Any,
                    vec![EventData::new("T", vec![n])],
                )
                .await
                .expect("appends");
        }
        store.close().await.expect("closes with a flush");
        drop(store);
        let store = LogStore::open(&root, options()).expect("reopens");
        assert_eq!(everything(&store).await.len(), 50, "{durability}");
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Appends each of `events` again, alone and as it was recorded: each is recognised as a
/// retry (its first result, nothing written), and its id with other content is refused.
async fn retries_are_recognised(store: &LogStore, events: &[RecordedEvent]) {
    for event in events {
        let data = EventData {
            id: event.id,
            event_type: event.event_type.clone(),
            payload: event.payload.clone(),
            content_type: event.content_type.clone(),
            metadata: event.metadata.clone(),
        };
        let again = store
            .append(&event.stream, ExpectedRevision::Any, vec![data.clone()])
            .await
            .expect("a retry is acknowledged");
        assert_eq!(
            (again.revision, again.position),
            (event.revision, event.position),
            "retry of {}",
            event.id
        );
        let other = EventData {
            payload: Vec::from(&b"other"[..]).into(),
            ..data
        };
        let reused = store
            .append(&event.stream, ExpectedRevision::Any, vec![other])
            .await;
        assert!(
            matches!(reused, Err(WriteError::EventIdReused { id }) if id == event.id),
            "{} with other content: {reused:?}",
            event.id
        );
    }
    assert_eq!(everything(store).await, events, "the retries wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_open_sees_exactly_what_a_full_replay_sees() {
    let storage = FaultyStorage::new(31);
    {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        let attempts = random_history(&store, 99, 4, 40).await;
        check_against(&store, &attempts).await;
        store
            .set_stream_metadata(
                &name("s-1"),
                cairn_core::StreamMetadata::default().with_max_count(2),
            )
            .await
            .expect("metadata");
        store
            .delete_stream(&name("s-2"), ExpectedRevision::Any)
            .await
            .expect("delete");
        store
            .tombstone_stream(&name("s-3"), ExpectedRevision::Any)
            .await
            .expect("tombstone");
        store.close().await.expect("closes");
    }
    let snapshot = Path::new("/data/index/snapshot");
    assert!(
        storage.contents(snapshot).is_some(),
        "a clean close writes a snapshot"
    );
    let (from_snapshot, crashed) = {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("opens");
        // Appended after the snapshot, in two streams, one of them new.
        for (stream, payload) in [("s-4", "tail"), ("s-1", "tail too"), ("s-4", "last")] {
            store
                .append(
                    &name(stream),
                    ExpectedRevision::Any,
                    vec![EventData::new("T", payload.as_bytes().to_vec())],
                )
                .await
                .expect("appends");
        }
        // A crash now, before the close that would write a snapshot covering the tail:
        // the next open loads the first snapshot and replays only the tail.
        let crashed = storage.duplicate(32);
        let infos = store.list_streams(None, 100).await.expect("lists");
        ((everything(&store).await, infos), crashed)
    };
    assert!(
        crashed.contents(snapshot).is_some(),
        "the crash left the first snapshot"
    );
    let after_crash = {
        let store = LogStore::open("/data", faulty_options(&crashed)).expect("reopens");
        let events = everything(&store).await;
        // Event ids too: those in the snapshot and those replayed after it.
        retries_are_recognised(&store, &events).await;
        (events, store.list_streams(None, 100).await.expect("lists"))
    };
    storage.power_cut();
    forget_snapshot(&storage);
    let full_replay = {
        let store = LogStore::open("/data", faulty_options(&storage)).expect("reopens");
        let events = everything(&store).await;
        retries_are_recognised(&store, &events).await;
        (events, store.list_streams(None, 100).await.expect("lists"))
    };
    assert_eq!(
        after_crash, full_replay,
        "snapshot plus tail equals a full replay"
    );
    assert_eq!(from_snapshot.0, full_replay.0);
    assert_eq!(
        from_snapshot.1, full_replay.1,
        "stream states and metadata survive the snapshot"
    );
}

#[tokio::test]
async fn a_log_keeps_its_segment_size_whatever_a_later_open_asks() {
    let storage = FaultyStorage::new(41);
    let first = faulty_options(&storage).segment_size(128 << 10);
    let written = {
        let store = LogStore::open("/data", first).expect("opens");
        let mut written = Vec::new();
        for n in 0..300u32 {
            let data = EventData::new("T", vec![0u8; 900]).with_metadata("n", n.to_string());
            written.push(data.id);
            store
                .append(&name("s"), ExpectedRevision::Any, vec![data])
                .await
                .expect("appends");
        }
        written
    };
    let store = LogStore::open("/data", faulty_options(&storage).segment_size(256 << 10))
        .expect("reopens with another segment size asked for");
    let ids: Vec<Uuid> = everything(&store).await.iter().map(|e| e.id).collect();
    assert_eq!(ids, written);
    store
        .append(
            &name("s"),
            ExpectedRevision::Exact(299),
            vec![EventData::new("T", &b"x"[..])],
        )
        .await
        .expect("appends in the existing layout");
    let segments = storage
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .count();
    assert!(
        segments >= 3,
        "the log still rolls at 128 KiB: {segments} segments"
    );
}
